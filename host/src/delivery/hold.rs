//! Holding: a message this host has received and not yet settled.
//!
//! Every message received has a hold slot, taken before the pull request
//! asked for it ([`super::pull`]), so nothing sits in a client buffer
//! unaccounted for. While a message is held (queued, running or waiting to
//! be retried), an in-progress ack goes to the server every `ack_wait / 2`,
//! so an event that waits for its key or runs long is not redelivered
//! behind its back.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{AckKind, Message};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::AbortHandle;

/// A message this host holds, from receipt to settlement.
pub struct Held {
    pub message: Message,
    pub sequence: u64,
    /// The server's delivery count.
    pub delivered: u32,
    pub published: SystemTime,
    pub keepalive: KeepAlive,
    _hold: OwnedSemaphorePermit,
}

impl Held {
    /// Wraps a received message in its hold slot and starts its in-progress
    /// acks (every `ack_wait / 2`), or terms it when it carries no JetStream
    /// metadata (it could never be acked).
    pub async fn receive(
        handler: &str,
        message: Message,
        permit: OwnedSemaphorePermit,
        ack_wait: Duration,
    ) -> Option<Held> {
        let (sequence, delivered, published) = match message.info() {
            Ok(info) => (
                info.stream_sequence,
                u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
                SystemTime::from(info.published),
            ),
            Err(error) => {
                tracing::error!(handler, subject = %message.subject, %error, "message without JetStream metadata; terminating it");
                let _ = message.ack_with(AckKind::Term).await;
                return None;
            }
        };
        let period = (ack_wait / 2).max(Duration::from_millis(100));
        let keepalive = KeepAlive::start(&message, period);
        Some(Held {
            message,
            sequence,
            delivered,
            published,
            keepalive,
            _hold: permit,
        })
    }

    /// Naks (after stopping the in-progress acks).
    pub async fn nak(&self, delay: Option<Duration>) {
        self.keepalive.stop();
        if let Err(error) = self.message.ack_with(AckKind::Nak(delay)).await {
            tracing::warn!(%error, sequence = self.sequence, "nak failed; the event will be redelivered after ack_wait");
        }
    }
}

/// Sends an in-progress ack every `period` until stopped or dropped.
pub struct KeepAlive(AbortHandle);

impl KeepAlive {
    fn start(message: &Message, period: Duration) -> Self {
        let client = message.context.client();
        let reply = message.reply.clone();
        let task = tokio::spawn(async move {
            let Some(reply) = reply else { return };
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match client
                    .publish(reply.clone(), bytes::Bytes::from_static(b"+WPI"))
                    .await
                {
                    Ok(()) => tracing::debug!(reply = %reply, "in-progress ack sent"),
                    Err(error) => tracing::debug!(%error, "in-progress ack not sent"),
                }
            }
        });
        KeepAlive(task.abort_handle())
    }

    pub fn stop(&self) {
        self.0.abort();
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Puts `held` behind the queued events of its key with a lower stream
/// sequence (a redelivery goes before later events that are still waiting).
/// A second delivery of a message already queued replaces the first.
pub fn enqueue(queue: &mut VecDeque<Held>, held: Held) {
    if let Some(same) = queue.iter_mut().find(|h| h.sequence == held.sequence) {
        *same = held;
        return;
    }
    let at = queue
        .iter()
        .rposition(|h| h.sequence < held.sequence)
        .map_or(0, |i| i + 1);
    queue.insert(at, held);
}
