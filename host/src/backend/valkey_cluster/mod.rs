//! Valkey cluster cache backend over the `redis` crate's cluster client.
//!
//! The client keeps a connection to every node, follows `MOVED`/`ASK`
//! redirections and reconnects on its own. On top of it:
//!
//! - `scan` covers every primary behind the one cursor the plugin sees:
//!   its top byte is the primary's index in the primaries sorted by
//!   address, the other 56 bits that node's own `SCAN` cursor. 0 starts
//!   at the first primary; a primary's last step moves to the next one,
//!   and the last primary's ends the whole iteration at 0. Each step is
//!   one `SCAN` sent to one node by address. The primaries are read from
//!   `CLUSTER SLOTS` when an iteration starts; a topology change in the
//!   middle of one may make it miss or repeat keys, as `SCAN` does across
//!   a resharding.
//! - `delete` and the exact keys of `delete_matching` are unlinked by hash
//!   slot (`{hash tags}` honoured): a multi-key `UNLINK` never spans two
//!   slots, and the client sends each to the primary serving its slot.
//! - `delete_matching` goes through the shared [`Sweeper`]: one sweep
//!   walks every primary, in parallel, reading `CLUSTER SLOTS` first; a
//!   cluster whose slots are not all served fails the sweep, since keys
//!   could hide in the missing ones. Its `UNLINK`s are split by slot too.
//!
//! Any error on any node fails the call: `unavailable` for a node that
//! does not answer (down, unreachable, the cluster failing over), and
//! nothing is reported deleted that was not. Commands in flight are
//! bounded, and a client whose every command times out is replaced from
//! the seeds (see [`Nodes::replace`]).
//!
//! [`topology`] reads `CLUSTER SLOTS` and holds the cursor arithmetic and
//! the grouping of keys by slot.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{StreamExt as _, TryStreamExt as _};
use redis::cluster::{ClusterClient, ClusterClientBuilder, TlsMode};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{ClientTlsConfig, RedisError, TlsCertificates, Value};
use tokio::sync::Semaphore;

mod topology;

pub use topology::Primary;
use topology::{by_slot, join_cursor, primaries, split_cursor};

use super::sweep::{Groups, Keyspace, Sweeper, UNLINK_CHUNK};
use super::valkey::{COMMAND_TIMEOUT, ValkeyOptions, classify, refused, utf8_keys};
use super::{BackendError, CacheBackend, ScanPage, Swept};
use crate::glob::Compiled;

const BACKEND: &str = "valkey";

/// Most commands of one call in flight at once, and of the whole backend:
/// enough to keep every node's connection busy, few enough that a node
/// going down meets a bounded number of them (thousands of commands
/// failing at once leave the cluster client unable to recover).
const IN_FLIGHT: usize = 64;
const MAX_IN_FLIGHT: usize = 256;
/// Least time between two replacements of the cluster connection.
const REPLACE_EVERY: Duration = Duration::from_secs(2);

/// A Valkey cluster, reached through any of its nodes.
#[derive(Clone)]
pub struct ValkeyClusterCache {
    nodes: Nodes,
    sweeper: Sweeper,
}

/// The cluster's connection and the primaries last read, sorted: the
/// order scan cursors count in.
#[derive(Clone)]
struct Nodes {
    client: ClusterClient,
    connection: Arc<Mutex<ClusterConnection>>,
    /// When the connection was last replaced; held while replacing it.
    replaced: Arc<tokio::sync::Mutex<Option<Instant>>>,
    primaries: Arc<Mutex<Arc<Vec<Primary>>>>,
    /// Commands in flight, over every call: [`MAX_IN_FLIGHT`] permits.
    in_flight: Arc<Semaphore>,
}

impl ValkeyClusterCache {
    /// Connects to the cluster through `seeds` (`redis://host:port` or
    /// `rediss://`, all of one scheme) with credentials and TLS settings.
    /// Fails if no node answers or the slots are not all served now; later
    /// outages are retried per command.
    pub async fn connect_with(
        seeds: &[String],
        options: &ValkeyOptions,
    ) -> Result<Self, BackendError> {
        let mut builder = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
            .connection_timeout(COMMAND_TIMEOUT)
            .response_timeout(COMMAND_TIMEOUT)
            .overall_response_timeout(Some(COMMAND_TIMEOUT))
            .retries(2)
            .max_retry_wait(500);
        if let Some(user) = &options.user {
            builder = builder.username(user);
        }
        if let Some(password) = &options.password {
            builder = builder.password(password);
        }
        if options.insecure {
            builder = builder.tls(TlsMode::Insecure);
        }
        if options.ca.is_some() || options.client_cert.is_some() {
            builder = builder.certs(TlsCertificates {
                client_tls: options
                    .client_cert
                    .clone()
                    .map(|(client_cert, client_key)| ClientTlsConfig {
                        client_cert,
                        client_key,
                    }),
                root_cert: options.ca.clone(),
            });
        }
        let client = builder.build().map_err(|e| BackendError::Invalid {
            backend: BACKEND,
            detail: format!(
                "cluster seeds {}: {e}",
                crate::secret::mask_urls(&seeds.join(","))
            ),
        })?;
        let connection = client
            .get_async_connection()
            .await
            .map_err(|e| refused(&e).unwrap_or_else(|| classify_cluster(&e)))?;
        let nodes = Nodes {
            client,
            connection: Arc::new(Mutex::new(connection)),
            replaced: Arc::default(),
            primaries: Arc::default(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        };
        nodes.refresh().await?;
        let sweeper = Sweeper::start(nodes.clone());
        Ok(ValkeyClusterCache { nodes, sweeper })
    }

    /// The sweeper's running totals.
    pub fn sweeps(&self) -> &super::sweep::SweepStats {
        self.sweeper.stats()
    }

    /// The primaries as last read from `CLUSTER SLOTS`, in cursor order.
    pub fn primaries(&self) -> Vec<Primary> {
        crate::lock(&self.nodes.primaries).to_vec()
    }

    /// `command KEY` for each key, each sent to its slot's primary, all at
    /// once: the keys it answered non-zero for.
    async fn per_key(&self, command: &str, keys: &[&[u8]]) -> Result<Vec<Vec<u8>>, BackendError> {
        let commands = keys
            .iter()
            .map(|key| {
                let mut cmd = redis::cmd(command);
                cmd.arg(*key);
                (cmd, Slot::for_key(key))
            })
            .collect();
        let answers = self.nodes.on_slots(commands).await?;
        Ok(keys
            .iter()
            .zip(answers)
            .filter(|(_, n)| *n > 0)
            .map(|(k, _)| k.to_vec())
            .collect())
    }
}

impl Nodes {
    /// `cmd` sent where `route` says, once a command in flight is allowed.
    async fn route(
        &self,
        cmd: redis::Cmd,
        route: SingleNodeRoutingInfo,
    ) -> Result<Value, RedisError> {
        let _permit = self.in_flight.acquire().await;
        let mut connection = crate::lock(&self.connection).clone();
        connection
            .route_command(cmd, RoutingInfo::SingleNode(route))
            .await
    }

    /// Replaces the connection with a new one from the seeds, when one
    /// connects, at most once per [`REPLACE_EVERY`]. The cluster client can
    /// stop answering for good after a node went down under load (every
    /// command times out, on every node, after the node is back); a fresh
    /// one does not carry that state.
    async fn replace(&self) {
        let Ok(mut replaced) = self.replaced.try_lock() else {
            return;
        };
        if replaced.is_some_and(|at| at.elapsed() < REPLACE_EVERY) {
            return;
        }
        *replaced = Some(Instant::now());
        let fresh = tokio::time::timeout(COMMAND_TIMEOUT, self.client.get_async_connection());
        match fresh.await {
            Ok(Ok(fresh)) => {
                *crate::lock(&self.connection) = fresh;
                tracing::warn!("the cache cluster's connection stopped answering; replaced it");
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "the cache cluster's connection could not be replaced");
            }
            Err(_) => {
                tracing::debug!("the cache cluster's connection could not be replaced in time");
            }
        }
    }

    /// Reads the primaries from `CLUSTER SLOTS` and keeps them for scans.
    async fn refresh(&self) -> Result<Arc<Vec<Primary>>, BackendError> {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        let answer = match self.route(cmd, SingleNodeRoutingInfo::Random).await {
            Ok(answer) => answer,
            Err(error) => {
                // Any node would do: none answering in time is the sign of a
                // client that stopped (or of a cluster out of reach).
                if error.is_timeout() {
                    self.replace().await;
                }
                return Err(classify_cluster(&error));
            }
        };
        let primaries = Arc::new(primaries(answer)?);
        *crate::lock(&self.primaries) = primaries.clone();
        Ok(primaries)
    }

    /// The primaries last read, reading them when none are known.
    async fn known(&self) -> Result<Arc<Vec<Primary>>, BackendError> {
        let primaries = crate::lock(&self.primaries).clone();
        if primaries.is_empty() {
            return self.refresh().await;
        }
        Ok(primaries)
    }

    /// `command` sent to the primary serving `slot`, answering a count.
    async fn on_slot(&self, cmd: redis::Cmd, slot: Slot) -> Result<u64, BackendError> {
        let route = SingleNodeRoutingInfo::SpecificNode(Route::with_slot(slot, SlotAddr::Master));
        let answer = self
            .route(cmd, route)
            .await
            .map_err(|e| classify_cluster(&e))?;
        redis::from_redis_value(answer).map_err(|e| classify_cluster(&e.into()))
    }

    /// Each command sent to the primary serving its slot, at most
    /// [`IN_FLIGHT`] at once, stopping at the first error: the counts they
    /// answered, in order.
    async fn on_slots(&self, commands: Vec<(redis::Cmd, Slot)>) -> Result<Vec<u64>, BackendError> {
        futures::stream::iter(commands)
            .map(|(cmd, slot)| self.on_slot(cmd, slot))
            .buffered(IN_FLIGHT)
            .try_collect()
            .await
    }

    /// `command` sent to `primary` by its address.
    async fn on_node(&self, cmd: redis::Cmd, primary: &Primary) -> Result<Value, BackendError> {
        let route = SingleNodeRoutingInfo::ByAddress {
            host: primary.host.clone(),
            port: primary.port,
        };
        self.route(cmd, route).await.map_err(|e| {
            let mut error = classify_cluster(&e);
            if let BackendError::Unavailable { detail, .. } | BackendError::Other { detail, .. } =
                &mut error
            {
                *detail = format!("primary {primary}: {detail}");
            }
            error
        })
    }
}

#[async_trait]
impl Keyspace for Nodes {
    type Node = Primary;

    /// Every primary, read afresh: a sweep must not miss one.
    async fn nodes(&self) -> Result<Vec<Primary>, BackendError> {
        Ok(self.refresh().await?.to_vec())
    }

    async fn scan(
        &self,
        node: &Primary,
        cursor: u64,
        pattern: Option<&[u8]>,
        count: u32,
    ) -> Result<(u64, Vec<Vec<u8>>), BackendError> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor);
        if let Some(pattern) = pattern {
            cmd.arg("MATCH").arg(pattern);
        }
        cmd.arg("COUNT").arg(count);
        let answer = self.on_node(cmd, node).await?;
        redis::from_redis_value(answer).map_err(|e| classify_cluster(&e.into()))
    }

    /// Each group split by slot, in commands of at most [`UNLINK_CHUNK`]
    /// keys, all sent at once; each group's counts summed back.
    async fn unlink(&self, groups: &Groups) -> Result<Vec<u64>, BackendError> {
        let mut commands = Vec::new();
        let mut group_of = Vec::new();
        for (group, (_, keys)) in groups.iter().enumerate() {
            for (slot, keys) in by_slot(keys) {
                for chunk in keys.chunks(UNLINK_CHUNK) {
                    let mut cmd = redis::cmd("UNLINK");
                    cmd.arg(chunk);
                    commands.push((cmd, slot));
                    group_of.push(group);
                }
            }
        }
        let mut counts = vec![0; groups.len()];
        for (group, count) in group_of.into_iter().zip(self.on_slots(commands).await?) {
            counts[group] += count;
        }
        Ok(counts)
    }
}

/// [`classify`], with what the cluster client reports when a node is down
/// or the cluster is failing over also `unavailable`.
fn classify_cluster(error: &RedisError) -> BackendError {
    let down = matches!(
        error.kind(),
        redis::ErrorKind::ClusterConnectionNotFound
            | redis::ErrorKind::Server(
                redis::ServerErrorKind::ClusterDown
                    | redis::ServerErrorKind::TryAgain
                    | redis::ServerErrorKind::MasterDown
                    | redis::ServerErrorKind::BusyLoading
            )
    ) || error.is_cluster_error();
    if down {
        BackendError::Unavailable {
            backend: BACKEND,
            detail: error.to_string(),
        }
    } else {
        classify(error)
    }
}

#[async_trait]
impl CacheBackend for ValkeyClusterCache {
    fn kind(&self) -> &'static str {
        "valkey-cluster"
    }

    async fn scan(&self, pattern: &str, cursor: u64, count: u32) -> Result<ScanPage, BackendError> {
        let primaries = if cursor == 0 {
            self.nodes.refresh().await?
        } else {
            self.nodes.known().await?
        };
        let (index, node_cursor) = split_cursor(cursor);
        let Some(primary) = primaries.get(index) else {
            return Err(BackendError::Invalid {
                backend: BACKEND,
                detail: format!(
                    "scan cursor {cursor} names primary {index}, but the cluster has {} \
                     (its topology changed, or the cursor is not one a scan returned)",
                    primaries.len()
                ),
            });
        };
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(node_cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        let answer = self.nodes.on_node(cmd, primary).await?;
        let (next, raw_keys): (u64, Vec<Vec<u8>>) =
            redis::from_redis_value(answer).map_err(|e| classify_cluster(&e.into()))?;
        let cursor = join_cursor(index, next, primaries.len(), primary)?;
        Ok(ScanPage {
            cursor,
            keys: utf8_keys(raw_keys, pattern),
        })
    }

    async fn delete(&self, keys: &[String]) -> Result<u64, BackendError> {
        let mut commands = Vec::new();
        for (slot, keys) in by_slot(keys) {
            for chunk in keys.chunks(UNLINK_CHUNK) {
                let mut cmd = redis::cmd("UNLINK");
                cmd.arg(chunk);
                commands.push((cmd, slot));
            }
        }
        Ok(self.nodes.on_slots(commands).await?.into_iter().sum())
    }

    async fn delete_matching(&self, patterns: &[Compiled]) -> Result<Swept, BackendError> {
        self.sweeper
            .delete_matching(patterns, |exact| async move {
                self.per_key("UNLINK", &exact).await
            })
            .await
    }

    async fn find_matching(&self, patterns: &[Compiled]) -> Result<Vec<Vec<u8>>, BackendError> {
        self.sweeper
            .find_matching(patterns, |exact| async move {
                self.per_key("EXISTS", &exact).await
            })
            .await
    }

    /// Every primary answers `PING`.
    async fn ping(&self) -> Result<(), BackendError> {
        let primaries = self.nodes.refresh().await?;
        let pings = primaries
            .iter()
            .map(|primary| self.nodes.on_node(redis::cmd("PING"), primary));
        futures::future::try_join_all(pings).await?;
        Ok(())
    }

    fn sweep_totals(&self) -> Option<super::SweepTotals> {
        Some(self.sweeper.totals())
    }
}
