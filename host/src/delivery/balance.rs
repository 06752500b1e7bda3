//! Partitions spread over the live hosts: one lease per partition, and a
//! membership record per host, in the lease bucket.
//!
//! Each host running a partitioned handler keeps a member key
//! (`members.<stream>.<durable>.<host>`) alive, and every
//! [`lease::RENEW_EVERY`] counts the members `M`. Its share is
//! `ceil(N / M)` of the handler's `N` partitions:
//!
//! - below its share, it takes free partition leases, its own first (the
//!   partitions `p` with `p mod M` equal to its rank among the members by
//!   name), then any;
//! - above it, it hands partitions over, others' first: the partition stops
//!   taking events at once, hands back the ones waiting behind their keys,
//!   lets the running ones settle, and only then frees its lease (see
//!   [`super::flow::Flow::take_over`]), so the next holder starts at once
//!   and never runs an event of a key the old holder still runs.
//!
//! A host that joins is counted on the next tick and the others hand it
//! their extra partitions. A host that stops deletes its member key, drains
//! and frees its leases. A host that dies stops renewing: its member key
//! and leases age out after [`lease::LEASE_TTL`], the others take the
//! partitions, and a taker whose consumer still shows unsettled events
//! waits `ack_wait` for them to come back first, as an exclusive handler
//! does. No partition ever has two holders; a partition may have none for
//! up to the TTL after its holder died.

use std::sync::Arc;

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::lease::{self, Lease};

/// One host's side of a partitioned handler: the leases of every partition
/// and this host's member key.
pub struct Balancer {
    store: kv::Store,
    /// `members.<stream>.<durable>.`: every host's key starts so.
    members_prefix: String,
    /// This host's member key.
    member: String,
    /// Partition `p`'s lease at index `p`.
    leases: Vec<Arc<Lease>>,
    /// The partitions this host pulls from, for status and metrics.
    held: watch::Sender<Vec<u32>>,
}

impl Balancer {
    /// The balancer of the handler reading `durable` from `stream`, with
    /// `count` partitions, for the process `holder` (see
    /// [`lease::holder_id`]).
    pub fn new(store: kv::Store, stream: &str, durable: &str, count: u32, holder: &str) -> Self {
        let leases = (0..count)
            .map(|p| {
                let key = format!("{stream}.{durable}.p{p}");
                Lease::with_holder(store.clone(), key, holder.to_string())
            })
            .collect();
        let members_prefix = format!("members.{stream}.{durable}.");
        Balancer {
            member: format!("{members_prefix}{}", key_token(holder)),
            members_prefix,
            store,
            leases,
            held: watch::channel(Vec::new()).0,
        }
    }

    /// Partition `p`'s lease.
    pub fn lease(&self, partition: u32) -> Arc<Lease> {
        self.leases[partition as usize].clone()
    }

    /// Follows the partitions this host pulls from.
    pub fn watch(&self) -> watch::Receiver<Vec<u32>> {
        self.held.subscribe()
    }

    /// Keeps the membership and the leases until `shutdown`; then stops
    /// taking, leaves the membership and keeps renewing what it still owns
    /// until each partition's drain has freed it.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(lease::RENEW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Be counted before taking anything, so hosts started together do
        // not first take every partition each.
        if let Err(error) = self.store.put(&self.member, "".into()).await {
            tracing::warn!(member = %self.member, %error, "cannot join the partition membership");
        }
        tick.tick().await;
        let mut left = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled(), if !left => {}
            }
            if shutdown.is_cancelled() {
                if !left {
                    left = true;
                    if let Err(error) = self.store.delete(&self.member).await {
                        tracing::warn!(member = %self.member, %error, "cannot leave the partition membership; it ages out");
                    }
                }
                let mut owned = 0;
                for lease in &self.leases {
                    if lease.owns_entry().await {
                        lease.renew().await;
                        owned += 1;
                    }
                }
                self.publish_held();
                if owned == 0 {
                    return;
                }
                continue;
            }
            self.balance().await;
            self.publish_held();
        }
    }

    /// One tick: renew, count the members, take or hand over partitions.
    async fn balance(&self) {
        if let Err(error) = self.store.put(&self.member, "".into()).await {
            tracing::warn!(member = %self.member, %error, "cannot renew the partition membership");
        }
        let mut owned = Vec::new();
        for (p, lease) in self.leases.iter().enumerate() {
            if lease.owns_entry().await {
                lease.renew().await;
                if lease.owns_entry().await {
                    owned.push(p);
                }
            }
        }
        let members = match self.members().await {
            Ok(members) => members,
            Err(error) => {
                tracing::warn!(%error, "cannot read the partition membership; keeping the partitions held");
                return;
            }
        };
        let (rank, total) = match members.iter().position(|m| *m == self.member) {
            Some(rank) => (rank, members.len()),
            // Not listed yet (the put above failed or is not visible): count
            // this host anyway.
            None => (members.len(), members.len() + 1),
        };
        let leaving: Vec<usize> = owned
            .iter()
            .copied()
            .filter(|p| !self.leases[*p].is_held())
            .collect();
        let plan = plan(self.leases.len(), &owned, &leaving, rank, total);
        for p in plan.hand_over {
            tracing::info!(
                partition = p,
                share = plan.share,
                hosts = total,
                "handing a partition over to balance the hosts"
            );
            self.leases[p].step_down();
        }
        let mut taken = owned.len();
        for p in plan.take {
            if taken >= plan.share {
                break;
            }
            if self.leases[p].try_take().await {
                tracing::info!(
                    partition = p,
                    share = plan.share,
                    hosts = total,
                    "partition taken"
                );
                taken += 1;
            }
        }
    }

    /// Every live member key of this handler, sorted.
    async fn members(&self) -> Result<Vec<String>, String> {
        let mut keys = self.store.keys().await.map_err(|e| e.to_string())?;
        let mut members = Vec::new();
        while let Some(key) = keys.next().await {
            match key {
                Ok(key) if key.starts_with(&self.members_prefix) => members.push(key),
                Ok(_) => {}
                Err(error) => tracing::debug!(%error, "skipping an unreadable member key"),
            }
        }
        members.sort();
        Ok(members)
    }

    fn publish_held(&self) {
        let held: Vec<u32> = (0..self.leases.len() as u32)
            .filter(|p| self.leases[*p as usize].is_held())
            .collect();
        self.held.send_if_modified(|current| {
            let changed = *current != held;
            *current = held;
            changed
        });
    }
}

/// What one host does on a tick.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    /// `ceil(count / hosts)`.
    share: usize,
    /// Partitions to hand over now.
    hand_over: Vec<usize>,
    /// Free partitions to try, in order, until the share is reached.
    take: Vec<usize>,
}

/// The host of rank `rank` among `total` owns `owned` of `count`
/// partitions, `leaving` of them already being handed over. Above its
/// share it hands over others' partitions first (those `p` whose
/// `p mod total` is not its rank), highest first; below, it tries its own
/// first, lowest first, then any.
fn plan(count: usize, owned: &[usize], leaving: &[usize], rank: usize, total: usize) -> Plan {
    let share = count.div_ceil(total.max(1));
    let ours = |p: usize| p % total.max(1) == rank;
    let mut hand_over = Vec::new();
    let mut take = Vec::new();
    if owned.len() > share {
        let excess = (owned.len() - share).saturating_sub(leaving.len());
        let mut candidates: Vec<usize> = owned
            .iter()
            .copied()
            .filter(|p| !leaving.contains(p))
            .collect();
        candidates.sort_by_key(|p| (ours(*p), std::cmp::Reverse(*p)));
        hand_over = candidates.into_iter().take(excess).collect();
    } else if owned.len() < share {
        take = (0..count).filter(|p| !owned.contains(p)).collect();
        take.sort_by_key(|p| (!ours(*p), *p));
    }
    Plan {
        share,
        hand_over,
        take,
    }
}

/// `holder` as one Key-Value key token: anything outside `[A-Za-z0-9_=-]`
/// becomes `_`.
fn key_token(holder: &str) -> String {
    holder
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_below_its_share_tries_its_own_partitions_first() {
        let planned = plan(6, &[], &[], 1, 3);
        assert_eq!(planned.share, 2);
        assert_eq!(planned.take, vec![1, 4, 0, 2, 3, 5]);
        assert!(planned.hand_over.is_empty());
    }

    #[test]
    fn a_host_above_its_share_hands_over_others_partitions_first() {
        // Alone it took all six; a second host joined: keep 0, 2, 4.
        let planned = plan(6, &[0, 1, 2, 3, 4, 5], &[], 0, 2);
        assert_eq!(planned.share, 3);
        assert_eq!(planned.hand_over, vec![5, 3, 1]);
        assert!(planned.take.is_empty());
    }

    #[test]
    fn partitions_already_leaving_count_as_handed_over() {
        let planned = plan(6, &[0, 1, 2, 3, 4, 5], &[5, 3], 0, 2);
        assert_eq!(planned.hand_over, vec![1]);
        let planned = plan(6, &[0, 2, 4, 5], &[5], 0, 2);
        assert!(planned.hand_over.is_empty());
    }

    #[test]
    fn every_partition_has_room_whatever_the_host_count() {
        for count in 1..=16 {
            for total in 1..=8 {
                let share = plan(count, &[], &[], 0, total).share;
                assert!(share * total >= count, "{count} over {total}");
                assert!(share >= 1);
            }
        }
    }

    #[test]
    fn holder_ids_become_one_key_token() {
        assert_eq!(key_token("web-1.local/4242/00ab"), "web-1_local_4242_00ab");
    }
}
