//! One active host per exclusive handler: a lease in a NATS Key-Value
//! bucket.
//!
//! A handler with `exclusive = true` pulls from its durable consumer only
//! while this host holds the lease named after the stream and durable; the
//! other hosts sharing the durable stand by. So the per-key order that
//! `order_key` gives within one host holds across the fleet.
//!
//! - The holder renews the lease every [`RENEW_EVERY`]. The bucket's
//!   `max_age` is [`LEASE_TTL`]: a holder that stops renewing (a crash, a
//!   lost connection) loses the lease when its last renewal ages out, and a
//!   standby takes it.
//! - A host that stops keeps renewing while it drains, and releases the
//!   lease once every message it held is settled, so a standby takes over
//!   at once and never runs an event of a key the old holder still runs.
//! - A new holder whose consumer still has messages waiting for an ack (a
//!   previous holder died with them) waits `ack_wait` before pulling, so
//!   those events come back, in order, before any later one. See
//!   [`super::flow::Flow::take_over`].
//!
//! The partitions of a partitioned handler are leases too, one per
//! partition, taken and given up by [`super::balance`] instead of
//! [`Lease::run`]. Giving one up is a hand-over: [`Lease::step_down`] stops
//! the pulling at once while the entry is still renewed, and
//! [`Lease::hand_over`] frees it once every event of the partition this
//! host held is settled, so the next holder starts at once and in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::Context;
use async_nats::jetstream::kv::{self, CreateErrorKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a lease lives without a renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// How often the holder renews, and a standby tries to take it.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);

/// Opens the lease bucket, creating it with `replicas` copies when
/// missing.
pub async fn open_bucket(js: &Context, bucket: &str, replicas: u32) -> anyhow::Result<kv::Store> {
    match js.get_key_value(bucket).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: bucket.to_string(),
                description: "Switchyard: which host runs each exclusive handler and partition"
                    .into(),
                history: 1,
                max_age: LEASE_TTL,
                num_replicas: replicas as usize,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create lease bucket {bucket}")),
    }
}

/// This host's claim on one exclusive handler.
pub struct Lease {
    store: kv::Store,
    key: String,
    /// Who this process is, as stored in the lease.
    holder: String,
    held: watch::Sender<bool>,
    /// The revision of the last write while held. Locked across each write
    /// so a renewal and the release never cross.
    revision: tokio::sync::Mutex<Option<u64>>,
    released: AtomicBool,
}

impl Lease {
    /// A lease on `key` (valid Key-Value key characters), not yet held.
    pub fn new(store: kv::Store, key: String) -> Arc<Self> {
        Self::with_holder(store, key, holder_id())
    }

    /// A lease on `key` held in the name of `holder`.
    pub fn with_holder(store: kv::Store, key: String, holder: String) -> Arc<Self> {
        Arc::new(Lease {
            store,
            key,
            holder,
            held: watch::channel(false).0,
            revision: tokio::sync::Mutex::new(None),
            released: AtomicBool::new(false),
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether this host owns the stored lease: held, or handing it over.
    pub async fn owns_entry(&self) -> bool {
        self.revision.lock().await.is_some()
    }

    /// Follows whether this host holds the lease.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.held.subscribe()
    }

    pub fn is_held(&self) -> bool {
        *self.held.borrow()
    }

    /// Returns once this host holds the lease.
    pub async fn acquired(&self) {
        let mut held = self.held.subscribe();
        let _ = held.wait_for(|held| *held).await;
    }

    /// Returns once this host no longer holds the lease.
    pub async fn lost(&self) {
        let mut held = self.held.subscribe();
        let _ = held.wait_for(|held| !*held).await;
    }

    /// Takes the lease when it is free and renews it while held, until
    /// [`Lease::release`]. After `shutdown` it no longer takes a free
    /// lease, but keeps renewing a held one so the drain finishes first.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(RENEW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.released.load(Ordering::Acquire) {
                return;
            }
            if self.owns_entry().await {
                self.renew().await;
            } else if shutdown.is_cancelled() {
                return;
            } else {
                self.try_take().await;
            }
        }
    }

    /// Takes the lease if it is free (or still this holder's); whether this
    /// host holds it now.
    pub async fn try_take(&self) -> bool {
        let mut held_revision = self.revision.lock().await;
        if held_revision.is_some() {
            return self.is_held();
        }
        if self.released.load(Ordering::Acquire) {
            return false;
        }
        match self
            .store
            .create(&self.key, self.holder.clone().into())
            .await
        {
            Ok(revision) => {
                *held_revision = Some(revision);
                tracing::info!(lease = %self.key, holder = %self.holder, "lease taken: this host runs the handler");
                self.held.send_replace(true);
            }
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {
                // Still ours from before a lost renewal (a connection blip):
                // take it back instead of waiting for it to expire.
                if let Ok(Some(entry)) = self.store.entry(self.key.clone()).await
                    && entry.operation == kv::Operation::Put
                    && entry.value.as_ref() == self.holder.as_bytes()
                {
                    *held_revision = Some(entry.revision);
                    tracing::info!(lease = %self.key, "lease taken back: this host runs the handler again");
                    self.held.send_replace(true);
                }
            }
            Err(error) => {
                tracing::warn!(lease = %self.key, %error, "cannot take the lease; trying again");
            }
        }
        held_revision.is_some()
    }

    /// Renews the stored lease if this host owns it; a renewal that fails
    /// (another host holds it now) loses it.
    pub async fn renew(&self) {
        let mut held_revision = self.revision.lock().await;
        let Some(revision) = *held_revision else {
            return; // released meanwhile
        };
        match self
            .store
            .update(&self.key, self.holder.clone().into(), revision)
            .await
        {
            Ok(revision) => *held_revision = Some(revision),
            Err(error) => {
                // A failed write may still have landed: the lease is ours if
                // the stored holder is this process.
                if let Ok(Some(entry)) = self.store.entry(self.key.clone()).await
                    && entry.operation == kv::Operation::Put
                    && entry.value.as_ref() == self.holder.as_bytes()
                {
                    *held_revision = Some(entry.revision);
                    return;
                }
                *held_revision = None;
                tracing::warn!(lease = %self.key, %error, "lease lost: this host stops pulling for the handler");
                self.held.send_replace(false);
            }
        }
    }

    /// Stops pulling under this lease while still owning it: the first half
    /// of a hand-over (see [`Lease::hand_over`]).
    pub fn step_down(&self) {
        if self.is_held() {
            tracing::info!(lease = %self.key, "handing the lease over: no more events taken under it");
            self.held.send_replace(false);
        }
    }

    /// Frees the stored lease for another host after a
    /// [`Lease::step_down`], once this host's events under it are settled.
    /// The lease can be taken again later.
    pub async fn hand_over(&self) {
        self.free("lease handed over").await;
    }

    /// Stops renewing and, when held, frees the lease for a standby.
    pub async fn release(&self) {
        self.released.store(true, Ordering::Release);
        self.free("lease released").await;
    }

    /// Deletes the stored lease if this host owns it.
    async fn free(&self, done: &str) {
        let revision = self.revision.lock().await.take();
        self.held.send_replace(false);
        let Some(revision) = revision else {
            return;
        };
        match self
            .store
            .delete_expect_revision(&self.key, Some(revision))
            .await
        {
            Ok(()) => tracing::info!(lease = %self.key, "{done}"),
            Err(error) => {
                tracing::warn!(lease = %self.key, %error, "cannot free the lease; it expires on its own")
            }
        }
    }
}

/// Who this process is, as stored in the leases it holds: host, process id
/// and a start-time nonce, so a restarted process is another holder.
pub fn holder_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{}/{}/{nanos:08x}",
        crate::process::hostname(),
        std::process::id()
    )
}
