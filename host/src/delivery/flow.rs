//! One handler's consumer state, shared by its pull loop and its event
//! tasks: the run and hold semaphores, the per-key queues, and how one held
//! message is run to its settlement.
//!
//! Without an order key a host holds at most `concurrency` messages, all
//! running; with one it holds up to [`HOLD_PER_SLOT`] × `concurrency` (at
//! most `max_ack_pending`), the extra ones waiting in per-key queues. A
//! `retry` of a keyed event is retried in place: the host keeps the message
//! (sending in-progress acks), waits the delay, and runs it again, so later
//! events of the key wait for it.
//!
//! For an exclusive handler without the lease, [`Flow::take_over`] stands
//! by; a lost lease hands the events queued behind their keys back to the
//! stream so the new holder runs them in order. Each partition of a
//! partitioned handler is a flow of its own under its partition's lease;
//! the partitions of one handler share its `concurrency`.
//!
//! A keyed event's successor starts only once its ack is confirmed (or the
//! lease is lost), and a copy the server redelivers after this host
//! settled it is acked without running ([`super::recent`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::jetstream::Context;
use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::PullConsumer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::hold::{Held, enqueue};
use super::lease::Lease;
use super::order::OrderKey;
use super::recent::Settled;
use super::settle::{GiveUp, Settler, Step, confirmed_ack};
use crate::config::NatsConfig;
use crate::handler::Handler;
use crate::lock;

/// With an order key, messages held per concurrency slot (running or queued
/// behind their key).
pub const HOLD_PER_SLOT: u32 = 8;

/// How long a take-over waits for the consumer's counts before assuming
/// the previous holder left events unsettled.
const CONSUMER_INFO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// One handler's consumer state, shared by the pull loop and event tasks.
pub struct Flow {
    pub js: Context,
    pub handler: Arc<Handler>,
    settler: Settler,
    order: Option<OrderKey>,
    /// Events running at once: `concurrency`.
    run: Arc<Semaphore>,
    /// Messages in this host's hands, settled or not yet: see [`super::hold`].
    pub hold: Arc<Semaphore>,
    hold_capacity: u32,
    /// Per key, the events waiting behind the one running. A key is present
    /// exactly while a task runs its events.
    queues: Mutex<HashMap<String, VecDeque<Held>>>,
    /// Keyed events settled here lately.
    settled: Mutex<Settled>,
    /// Set when a take-over waited for a previous holder's events: the
    /// next pull request's messages are started together, in stream order.
    pub gather_next: AtomicBool,
    pub shutdown: CancellationToken,
    /// Cancelled when the drain grace period is over: running events stop.
    pub abort: CancellationToken,
    pub drain: DrainCounts,
    /// For an exclusive handler: pull only while this is held.
    pub lease: Option<Arc<Lease>>,
}

/// What a drain did, for its report.
#[derive(Default)]
pub struct DrainCounts {
    /// Nak'ed at shutdown without having started.
    pub unstarted: AtomicU64,
    /// Stopped after the grace period and nak'ed.
    pub stopped: AtomicU64,
}

impl Flow {
    /// `run` is the handler's `concurrency` semaphore, shared by its
    /// partitions; `None` makes one for this flow alone.
    pub fn new(
        js: Context,
        handler: Arc<Handler>,
        nats: Arc<NatsConfig>,
        shutdown: CancellationToken,
        lease: Option<Arc<Lease>>,
        run: Option<Arc<Semaphore>>,
    ) -> Arc<Self> {
        let order = OrderKey::of(&handler.config);
        let concurrency = handler.config.concurrency;
        let run = run.unwrap_or_else(|| Arc::new(Semaphore::new(concurrency as usize)));
        let hold_capacity = match order {
            None => concurrency,
            Some(_) => concurrency
                .saturating_mul(HOLD_PER_SLOT)
                .min(handler.config.max_ack_pending)
                .max(concurrency),
        };
        Arc::new(Flow {
            settler: Settler {
                js: js.clone(),
                handler: handler.clone(),
                nats,
            },
            js,
            handler,
            order,
            run,
            hold: Arc::new(Semaphore::new(hold_capacity as usize)),
            hold_capacity,
            queues: Mutex::new(HashMap::new()),
            settled: Mutex::new(Settled::default()),
            gather_next: AtomicBool::new(false),
            shutdown,
            abort: CancellationToken::new(),
            drain: DrainCounts::default(),
            lease,
        })
    }

    /// For an exclusive handler without the lease: stands by until this
    /// host takes it; then, if a previous holder left messages waiting for
    /// an ack, waits `ack_wait` so they come back before any later event.
    /// False when shut down first.
    pub async fn take_over(&self, consumer: &mut PullConsumer) -> bool {
        let Some(lease) = &self.lease else {
            return true;
        };
        if lease.is_held() {
            return true;
        }
        // Events waiting behind their key go back to the stream, so the
        // holder runs them in order; what is running finishes here.
        let handed_back = self.nak_queued().await;
        if handed_back > 0 {
            tracing::warn!(handler = %self.name(), handed_back, "lease lost: queued events handed back");
        }
        if lease.owns_entry().await && !self.hand_over(lease).await {
            return false;
        }
        tracing::info!(handler = %self.name(), lease = %lease.key(), "standing by: another host runs this handler");
        tokio::select! {
            () = lease.acquired() => {}
            () = self.shutdown.cancelled() => return false,
        }
        // Unsettled messages this host holds itself (after a lost lease) are
        // not a previous holder's.
        let ours = (self.hold_capacity as usize).saturating_sub(self.hold.available_permits());
        // When the consumer cannot be read, assume the worst and wait.
        let info = tokio::time::timeout(CONSUMER_INFO_TIMEOUT, consumer.info()).await;
        let unacked = match info {
            Ok(Ok(info)) => Some(info.num_ack_pending.saturating_sub(ours)),
            Ok(Err(error)) => {
                tracing::warn!(handler = %self.name(), %error, "cannot read the consumer after taking the lease");
                None
            }
            Err(_) => {
                tracing::warn!(handler = %self.name(), timeout = ?CONSUMER_INFO_TIMEOUT, "the consumer did not answer after taking the lease");
                None
            }
        };
        if unacked != Some(0) {
            let wait = self.handler.config.ack_wait;
            tracing::info!(handler = %self.name(), ?unacked, ?wait, "took over with events a previous holder may not have settled; waiting for them to come back first");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.shutdown.cancelled() => return false,
            }
            // The server redelivers them in no particular order, and may
            // send later events along: the first request's messages start
            // together, in stream order.
            self.gather_next.store(true, Ordering::Relaxed);
        }
        true
    }

    /// A partition this host gives up: once every message it holds is
    /// settled and the settlements have left, frees the lease. False when
    /// shut down first (the drain then frees it).
    async fn hand_over(&self, lease: &Lease) -> bool {
        let started = std::time::Instant::now();
        let all = tokio::select! {
            all = self.hold.acquire_many(self.hold_capacity) => all,
            () = self.shutdown.cancelled() => return false,
        };
        drop(all);
        let flushed =
            tokio::time::timeout(std::time::Duration::from_secs(5), self.js.client().flush()).await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!(handler = %self.name(), lease = %lease.key(), "settlements not confirmed flushed; the lease is freed anyway, the next holder waits ack_wait if the server still counts them");
        }
        lease.hand_over().await;
        tracing::info!(handler = %self.name(), lease = %lease.key(), settled_in_ms = started.elapsed().as_millis() as u64, "partition handed over");
        true
    }

    /// Returns when an exclusive handler's lease is lost; never otherwise.
    pub async fn lease_lost(&self) {
        match &self.lease {
            Some(lease) => lease.lost().await,
            None => std::future::pending().await,
        }
    }

    pub fn name(&self) -> &str {
        self.handler.name()
    }

    /// Wraps a received message in its hold slot; see [`Held::receive`].
    pub async fn hold_message(
        &self,
        message: Message,
        permit: OwnedSemaphorePermit,
    ) -> Option<Held> {
        Held::receive(self.name(), message, permit, self.handler.config.ack_wait).await
    }

    /// The order key as configured, for the start-up log line.
    pub fn order_key_text(&self) -> String {
        self.order
            .as_ref()
            .map_or_else(|| "none".to_string(), ToString::to_string)
    }

    pub fn hold_capacity(&self) -> u32 {
        self.hold_capacity
    }

    /// Starts a received message: on its key's queue, or on its own.
    pub fn dispatch(self: &Arc<Self>, held: Held) {
        let key = self
            .order
            .as_ref()
            .and_then(|order| order.extract(held.message.subject.as_str(), &held.message.payload));
        let Some(key) = key else {
            let flow = self.clone();
            tokio::spawn(async move {
                process(flow, &held, false).await;
            });
            return;
        };
        let mut queues = lock(&self.queues);
        match queues.get_mut(&key) {
            Some(queue) => enqueue(queue, held),
            None => {
                queues.insert(key.clone(), VecDeque::new());
                tokio::spawn(run_key(self.clone(), key, held));
            }
        }
    }

    /// Takes every event waiting behind its key out of the queues: none of
    /// them will start here.
    pub fn take_queued(&self) -> Vec<Held> {
        let mut queues = lock(&self.queues);
        queues.values_mut().flat_map(std::mem::take).collect()
    }

    /// Naks, without delay, every event waiting behind its key; how many.
    pub async fn nak_queued(&self) -> u64 {
        let mut waiting = self.take_queued();
        waiting.sort_by_key(|held| held.sequence);
        let count = waiting.len() as u64;
        for held in waiting {
            held.nak(None).await;
        }
        count
    }

    /// At shutdown: [`Flow::nak_queued`], counted for the drain report.
    pub async fn nak_queued_at_shutdown(&self) {
        let count = self.nak_queued().await;
        self.drain.unstarted.fetch_add(count, Ordering::Relaxed);
    }
}

/// Runs a key's events one after the other until its queue is empty.
async fn run_key(flow: Arc<Flow>, key: String, first: Held) {
    let mut next = Some(first);
    while let Some(held) = next.take() {
        let stale = lock(&flow.settled).is_stale(held.sequence, held.delivered);
        if stale {
            flow.ack_stale(&held).await;
        } else if process(flow.clone(), &held, true).await {
            lock(&flow.settled).record(held.sequence);
        }
        drop(held);
        let mut queues = lock(&flow.queues);
        match queues.get_mut(&key).and_then(VecDeque::pop_front) {
            Some(held) => next = Some(held),
            None => {
                queues.remove(&key);
            }
        }
    }
}

impl Flow {
    /// A keyed event redelivered after this host settled it: acked (with
    /// a confirmation, like any keyed ack) without running it again.
    async fn ack_stale(&self, held: &Held) {
        tracing::warn!(
            handler = %self.name(),
            subject = %held.message.subject,
            sequence = held.sequence,
            attempt = held.delivered,
            "redelivered after this host settled it (the server lost its ack); acked without running it again"
        );
        self.handler.metrics().stale_redelivery(self.name());
        let until = GiveUp {
            abort: &self.abort,
            lease: self.lease.as_deref(),
        };
        confirmed_ack(&self.js, &held.message, &until).await;
        held.keepalive.stop();
    }
}

/// Runs one held message to its settlement: waits for a slot, runs it,
/// and (keyed events) retries it in place. True when it was acked or
/// dead-lettered here; false when it was handed back to the stream.
async fn process(flow: Arc<Flow>, held: &Held, in_place: bool) -> bool {
    let mut local_retries = 0u32;
    loop {
        let permit = tokio::select! {
            biased;
            () = flow.shutdown.cancelled() => None,
            permit = flow.run.clone().acquire_owned() => permit.ok(),
        };
        let Some(permit) = permit else {
            flow.drain.unstarted.fetch_add(1, Ordering::Relaxed);
            held.nak(None).await;
            return false;
        };
        // A lease lost while the key's previous event settled: the new
        // holder runs this one, after the previous one if that comes back.
        if in_place && flow.lease.as_ref().is_some_and(|lease| !lease.is_held()) {
            drop(permit);
            held.nak(None).await;
            return false;
        }
        let attempt = held.delivered.saturating_add(local_retries);
        let until = GiveUp {
            abort: &flow.abort,
            lease: flow.lease.as_deref(),
        };
        let step = flow.settler.run(held, attempt, in_place, &until).await;
        drop(permit);
        match step {
            Step::Settled => return true,
            Step::HandedBack => return false,
            Step::Stopped => {
                flow.drain.stopped.fetch_add(1, Ordering::Relaxed);
                held.nak(None).await;
                return false;
            }
            Step::RetryIn(delay) => {
                tokio::select! {
                    () = tokio::time::sleep(delay) => local_retries += 1,
                    () = flow.shutdown.cancelled() => {
                        // Another host retries it; no point waiting here.
                        held.nak(None).await;
                        return false;
                    }
                    () = flow.lease_lost() => {
                        // Another host runs the handler or partition now,
                        // after this event: back to the stream, before the
                        // key's later events handed back behind it.
                        held.nak(None).await;
                        return false;
                    }
                }
            }
        }
    }
}
