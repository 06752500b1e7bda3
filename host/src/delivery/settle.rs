//! Settling one delivery attempt: the handler's outcome becomes what the
//! server hears.
//!
//! | outcome           | settlement                                         |
//! |-------------------|----------------------------------------------------|
//! | `ack`             | ack; with an order key, an ack the server confirms before the key's next event |
//! | `retry(d)`        | nak with delay `d`, at most `retry.max` (the handler's backoff if none); with an order key, retried in place |
//! | `reject(reason)`  | publish to the dead-letter stream, then term       |
//! | any, at the last delivery | dead-letter as above, the reason starting with the last cause (`guest panicked: <message>`, `stack overflow`, ...) |
//!
//! The host counts deliveries itself (the server's `max_deliver` is
//! unlimited), so an event whose every delivery crashed its host is still
//! dead-lettered, on the delivery after `max_deliver`, without running it
//! again. A dead letter that cannot be published is not termed: the event
//! is nak'ed and comes back, so nothing is lost.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{AckKind, Context, Message};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::dead_letter::write::dead_letter;
use super::hold::Held;
use super::lease::Lease;
use crate::bindings::event::Event;
use crate::config::NatsConfig;
use crate::handler::Handler;
use crate::process::millis_since_epoch;
use crate::runtime::Outcome;

/// What settling an attempt needs: the handler, and where dead letters go.
pub struct Settler {
    pub js: Context,
    pub handler: Arc<Handler>,
    pub nats: Arc<NatsConfig>,
}

/// What one run of an event left to do.
pub enum Step {
    /// Acked or dead-lettered: done here, whether or not the server
    /// confirmed it.
    Settled,
    /// Nak'ed: the server delivers it again.
    HandedBack,
    /// Retry in place after this delay (keyed events only).
    RetryIn(Duration),
    /// The drain grace period ended while it ran; not settled yet.
    Stopped,
}

fn event_headers(headers: Option<&HeaderMap>) -> Vec<(String, String)> {
    let Some(headers) = headers else {
        return Vec::new();
    };
    let mut pairs: Vec<(String, String)> = headers
        .iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |value| (name.to_string(), value.as_str().to_string()))
        })
        .collect();
    pairs.sort();
    pairs
}

/// Runs one delivery attempt of a held message through its handler and
/// settles it, unless it is to be retried in place or was stopped.
impl Settler {
    pub async fn run(&self, held: &Held, attempt: u32, in_place: bool, until: &GiveUp<'_>) -> Step {
        let (handler, nats, js) = (&*self.handler, &*self.nats, &self.js);
        let message = &held.message;
        let sequence = held.sequence;
        let span = tracing::info_span!(
            "event",
            handler = %handler.name(),
            subject = %message.subject,
            sequence,
            attempt,
            plugin = tracing::field::Empty,
            outcome = tracing::field::Empty,
            keys_deleted = tracing::field::Empty,
        );
        async {
        let max_deliver = handler.config.max_deliver;
        let plugin = handler.plugin.load_full();
        if attempt > max_deliver {
            let reason = format!(
                "delivered {attempt} times, more than max_deliver {max_deliver}, without being settled (host crash or lost acks)"
            );
            let kept = dead_letter(js, handler, nats, held, attempt, plugin.digest().as_str(), &reason).await;
            return self.after_dead_letter(held, kept, in_place).await;
        }
        let event = Event {
            subject: message.subject.to_string(),
            payload: message.payload.to_vec(),
            headers: event_headers(message.headers.as_ref()),
            stream_sequence: sequence,
            delivery_attempt: attempt,
            published_at_ms: millis_since_epoch(held.published),
        };
        let dispatch = tokio::select! {
            dispatch = handler.dispatch(&plugin, event) => dispatch,
            () = until.abort.cancelled() => {
                tracing::warn!("still running after the drain grace period; stopped, will be nak'ed");
                return Step::Stopped;
            }
        };
        handler.metrics().record(handler.name(), attempt, &dispatch);
        let span = tracing::Span::current();
        span.record("plugin", plugin.digest().as_str());
        span.record("outcome", dispatch.outcome.kind());
        span.record("keys_deleted", dispatch.effects.keys_deleted);
        let stats = &handler.stats;
        stats.handled.fetch_add(1, Ordering::Relaxed);
        stats.keys_deleted.fetch_add(dispatch.effects.keys_deleted, Ordering::Relaxed);
        // Per event, so at debug: at thousands of events a second an info
        // line each would cost more than the handler. The `event` span and
        // the metrics carry the same figures.
        tracing::debug!(
            outcome = dispatch.outcome.kind(),
            keys_deleted = dispatch.effects.keys_deleted,
            keys_scanned = dispatch.effects.keys_scanned,
            upserts = dispatch.effects.entities_upserted + dispatch.effects.relations_upserted,
            elapsed_ms = dispatch.elapsed.as_millis() as u64,
            plugin = %plugin.digest().short(),
            "event handled"
        );
        match dispatch.outcome {
            Outcome::Ack => {
                stats.acked.fetch_add(1, Ordering::Relaxed);
                if in_place {
                    confirmed_ack(js, message, until).await;
                    held.keepalive.stop();
                } else {
                    held.keepalive.stop();
                    if let Err(error) = message.ack().await {
                        tracing::warn!(%error, "ack failed; the event will be redelivered");
                    }
                }
            }
            Outcome::Retry { delay } if attempt < max_deliver => {
                stats.retried.fetch_add(1, Ordering::Relaxed);
                let retry = &handler.config.retry;
                let delay = match delay {
                    Some(requested) => retry.requested(requested),
                    None => retry.delay(attempt),
                };
                if in_place {
                    tracing::debug!(retry_in = ?delay, "retrying in place; later events of the key wait");
                    return Step::RetryIn(delay);
                }
                held.keepalive.stop();
                if let Err(error) = message.ack_with(AckKind::Nak(Some(delay))).await {
                    tracing::warn!(%error, "nak failed; the event will be redelivered after ack_wait");
                }
                return Step::HandedBack;
            }
            Outcome::Retry { .. } => {
                let last = dispatch
                    .fault
                    .map(|f| f.to_string())
                    .unwrap_or_else(|| "the handler asked to retry".into());
                // The cause first: a reason is often cut short where it is shown.
                let reason = format!("{last}; gave up after {attempt} deliveries (max_deliver {max_deliver})");
                let kept = dead_letter(js, handler, nats, held, attempt, plugin.digest().as_str(), &reason).await;
                return self.after_dead_letter(held, kept, in_place).await;
            }
            Outcome::Reject { reason } => {
                let kept = dead_letter(js, handler, nats, held, attempt, plugin.digest().as_str(), &reason).await;
                return self.after_dead_letter(held, kept, in_place).await;
            }
        }
        Step::Settled
    }
    .instrument(span)
    .await
    }
}

impl Settler {
    /// A dead letter that could not be published keeps the event: a keyed
    /// one is retried in place (its key's later events wait, the next
    /// attempt dead-letters again), any other is nak'ed.
    async fn after_dead_letter(&self, held: &Held, kept: Option<Duration>, in_place: bool) -> Step {
        match kept {
            None => Step::Settled,
            Some(delay) if in_place => Step::RetryIn(delay),
            Some(delay) => {
                held.nak(Some(delay)).await;
                Step::HandedBack
            }
        }
    }
}

/// When a keyed event stops waiting for its ack's confirmation: the drain
/// grace period is over, or (exclusive and partitioned handlers) the lease
/// is lost, so another host runs the key's later events.
pub struct GiveUp<'a> {
    pub abort: &'a CancellationToken,
    pub lease: Option<&'a Lease>,
}

impl GiveUp<'_> {
    async fn reached(&self) {
        let lost = async {
            match self.lease {
                Some(lease) => lease.lost().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = self.abort.cancelled() => {}
            () = lost => {}
        }
    }
}

/// An ack the server confirms, for an event with an order key: the key's
/// next event starts only once this one cannot come back. A plain ack lost
/// with a server (killed, or failed over mid-stream) would let the server
/// redeliver the event after its successor ran. Asked again until
/// confirmed or `until` is reached, however long the cluster takes to
/// answer; the in-progress acks keep the event meanwhile, and a copy the
/// server redelivers anyway is acked without running
/// ([`super::flow`]). Acking twice is harmless. True when confirmed.
pub async fn confirmed_ack(js: &Context, message: &Message, until: &GiveUp<'_>) -> bool {
    let Some(reply) = message.reply.clone() else {
        return false;
    };
    let client = js.client();
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    let mut warned = false;
    loop {
        let asked = client.request(reply.clone(), AckKind::Ack.into());
        let error = tokio::select! {
            answer = tokio::time::timeout(CONFIRM_TIMEOUT, asked) => match answer {
                Ok(Ok(_)) => {
                    if warned {
                        tracing::info!(waited_ms = started.elapsed().as_millis() as u64, "ack confirmed; the key's next event starts");
                    }
                    return true;
                }
                Ok(Err(error)) => Some(error.to_string()),
                Err(_) => Some(format!("no confirmation within {CONFIRM_TIMEOUT:?}")),
            },
            // A lease given up meanwhile (a hand-over) lets the answer
            // in flight arrive; only the end of the drain grace cuts it.
            () = until.abort.cancelled() => None,
        };
        let Some(error) = error else {
            tracing::warn!(
                "ack not confirmed before giving up the key; the event may run again on the host that takes it over"
            );
            return false;
        };
        if !warned && started.elapsed() >= CONFIRM_WARN_AFTER {
            warned = true;
            tracing::warn!(%error, "ack not confirmed yet; the key's next event waits, asking again");
        } else {
            tracing::debug!(%error, retry_in = ?pause, "ack not confirmed yet; asking again");
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = until.reached() => {
                tracing::warn!(%error, "ack not confirmed before giving up the key; the event may run again on the host that takes it over");
                return false;
            }
        }
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// After this long unconfirmed, one warning (then debug lines).
const CONFIRM_WARN_AFTER: Duration = Duration::from_secs(2);

/// How long one confirmed ack waits for the server's answer.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);
