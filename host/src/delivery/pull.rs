//! The pull loop and the drain of one handler's consumer task.
//!
//! The task owns its pull requests: each asks the server for as many
//! messages as this host has room to hold, and stays open for at most
//! [`PULL_EXPIRES`]. Every message received therefore already has its hold
//! slot ([`super::hold`]). After a take-over that waited for a previous
//! holder's unsettled events, the first request's messages are started
//! together, in stream order: the server redelivers them in no particular
//! order, and may send later events of their keys in the same request.
//!
//! # Draining
//!
//! When `shutdown` is cancelled the task stops asking for messages; queued
//! events that have not started are taken off their queues at once and,
//! with the messages that arrive on the last open pull request, nak'ed (no
//! delay, in stream order) when it closes, so another host takes them;
//! in-flight events get `drain_grace`, after which they are stopped and
//! nak'ed. The task returns once every held message is settled and the
//! connection has flushed the settlements. A lost lease hands back the same
//! way, without stopping the task.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;

use super::flow::Flow;
use super::hold::Held;

/// How long one pull request stays open at the server. Also the longest a
/// drain waits for the last request to close.
pub const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// How long after [`PULL_EXPIRES`] a pull request is given up on when the
/// server has not closed it (a server that restarted forgot it): its
/// messages all arrive before the server expires it, so none can come later.
const PULL_SLACK: Duration = Duration::from_secs(2);

/// After the grace period, how long a drain waits for stopped events to be
/// settled before giving up on them (they come back after `ack_wait`).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The pull loop, then the drain.
pub async fn consume(flow: Arc<Flow>, mut consumer: PullConsumer) {
    let name = flow.name().to_string();
    let mut stopping_at: Option<Instant> = None;
    'pull: while stopping_at.is_none() {
        if !flow.take_over(&mut consumer).await {
            break 'pull;
        }
        // Room for at least one message; then ask for as many as there is room.
        let first = tokio::select! {
            biased;
            () = flow.shutdown.cancelled() => break 'pull,
            permit = flow.hold.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break 'pull,
            },
        };
        let mut room = vec![first];
        while let Ok(permit) = flow.hold.clone().try_acquire_owned() {
            room.push(permit);
        }
        let batch = consumer
            .batch()
            .max_messages(room.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                drop(room);
                tracing::warn!(handler = %name, %error, "cannot pull messages; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue 'pull,
                    () = flow.shutdown.cancelled() => break 'pull,
                }
            }
        };
        // Messages that arrive after the shutdown signal, nak'ed once the
        // request is closed (a nak while it is open could bring them back
        // to this same request, behind later events of their key). Events
        // taken out of the key queues at shutdown or a lost lease wait here
        // too; all are nak'ed in stream order, so whoever runs them next
        // gets each key's events in order.
        let mut late: Vec<Held> = Vec::new();
        // After a take-over: this request's messages, started in stream
        // order once it is over (see `Flow::take_over`).
        let gather = flow.gather_next.swap(false, Ordering::Relaxed);
        let mut gathered: Vec<Held> = Vec::new();
        // The lease was lost during this request: what it still brings is
        // handed back like `late`.
        let mut handing_over = false;
        let mut failed = false;
        let give_up = tokio::time::Instant::now() + PULL_EXPIRES + PULL_SLACK;
        let mut connection = tokio::time::interval(Duration::from_millis(100));
        let mut disconnected = false;
        loop {
            let next = tokio::select! {
                biased;
                () = flow.shutdown.cancelled(), if stopping_at.is_none() => {
                    stopping_at = Some(Instant::now());
                    late.extend(flow.take_queued());
                    continue;
                }
                // Another host runs the handler now: hand back what waits
                // behind its key, then what this request still brings.
                () = flow.lease_lost(), if stopping_at.is_none() && !handing_over => {
                    handing_over = true;
                    late.extend(flow.take_queued());
                    tracing::warn!(handler = %name, "lease lost: stopped taking events; handing back the ones not started");
                    continue;
                }
                next = batch.next() => next,
                () = tokio::time::sleep_until(give_up) => break,
                _ = connection.tick() => {
                    // After a reconnect the request may be gone with the
                    // old connection: ask again rather than wait it out.
                    let connected = flow.js.client().connection_state() == async_nats::connection::State::Connected;
                    if !connected {
                        disconnected = true;
                    } else if disconnected {
                        break;
                    }
                    continue;
                }
            };
            match next {
                Some(Ok(message)) => {
                    let Some(permit) = room.pop() else {
                        // More than asked for: cannot happen; never hold it unaccounted.
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                        continue;
                    };
                    let Some(held) = flow.hold_message(message, permit).await else {
                        continue;
                    };
                    if stopping_at.is_some() || handing_over {
                        late.push(held);
                    } else if gather {
                        gathered.push(held);
                        if room.is_empty() {
                            break;
                        }
                    } else {
                        flow.dispatch(held);
                    }
                }
                Some(Err(error)) => {
                    failed = true;
                    tracing::warn!(handler = %name, %error, "pull interrupted; resuming");
                }
                None => break,
            }
        }
        drop(batch);
        drop(room);
        gathered.sort_by_key(|held| held.sequence);
        if stopping_at.is_some() || handing_over {
            late.append(&mut gathered);
        } else {
            if !gathered.is_empty() {
                tracing::info!(handler = %name, events = gathered.len(), "after the take-over: starting the first events in stream order");
            }
            for held in gathered {
                flow.dispatch(held);
            }
        }
        late.sort_by_key(|held| held.sequence);
        let handed_back = late.len();
        for held in late {
            if stopping_at.is_some() {
                flow.drain.unstarted.fetch_add(1, Ordering::Relaxed);
            }
            held.nak(None).await;
        }
        if handing_over {
            tracing::warn!(handler = %name, handed_back, "lease lost: events not started handed back");
        }
        if failed && stopping_at.is_none() {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                () = flow.shutdown.cancelled() => {}
            }
        }
    }
    let stopping_at = stopping_at.unwrap_or_else(Instant::now);
    if flow.shutdown.is_cancelled() {
        flow.nak_queued_at_shutdown().await;
    }

    // Drain: every hold slot back means every held message was settled.
    let grace = flow.handler.config.drain_grace;
    let all = flow.hold_capacity();
    let drained =
        tokio::time::timeout_at((stopping_at + grace).into(), flow.hold.acquire_many(all)).await;
    let drained = match drained {
        Ok(_) => true,
        Err(_) => {
            tracing::warn!(handler = %name, ?grace, "drain grace period over; stopping the events still running and nak'ing them");
            flow.abort.cancel();
            tokio::time::timeout(SETTLE_TIMEOUT, flow.hold.acquire_many(all))
                .await
                .is_ok()
        }
    };
    // Settlements are publishes: make sure they left this process.
    let flushed = tokio::time::timeout(Duration::from_secs(5), flow.js.client().flush()).await;
    let flushed = matches!(flushed, Ok(Ok(())));
    // Only now may a standby take over: nothing of ours is in flight.
    if let Some(lease) = &flow.lease {
        lease.release().await;
    }
    tracing::info!(
        handler = %name,
        nak_unstarted = flow.drain.unstarted.load(Ordering::Relaxed),
        nak_after_grace = flow.drain.stopped.load(Ordering::Relaxed),
        settled = drained,
        flushed,
        elapsed_ms = stopping_at.elapsed().as_millis() as u64,
        "consumer drained"
    );
}
