//! Backends: where the capabilities' effects land.
//!
//! A capability (see [`crate::capability`]) checks what a plugin asks for;
//! a backend carries it out. Backends of one capability sit side by side and
//! report failures as one domain error, [`BackendError`], which the
//! capability layer turns into the WIT `error` variant.
//!
//! - [`memory`]: in-memory cache and graph, for `switchyard test`, the test
//!   harness and `memory://` URLs. The cache selects keys exactly as Valkey.
//! - [`valkey`]: Valkey/Redis over the `redis` crate, one server.
//! - [`valkey_cluster`]: a Valkey cluster: scans over every primary behind
//!   one cursor, deletes routed by hash slot.
//! - [`neo4j`]: Neo4j over Bolt with `neo4rs`.
//! - [`graph_batch`]: the Neo4j backend's batched writes: concurrent
//!   upserts share `UNWIND` transactions.
//! - [`sweep`]: the Valkey backends' shared sweeper: one `SCAN` sweep of
//!   the keyspace (the server, or every primary of a cluster) serves every
//!   `delete_matching` call waiting for it.
//!
//! Backends import only the bindings' value type and the leaf rules
//! (`glob`, `identifier`); never a capability, grants or anything above.

pub mod graph_batch;
pub mod memory;
pub mod neo4j;
pub mod sweep;
pub mod valkey;
pub mod valkey_cluster;

use std::sync::Arc;

use async_trait::async_trait;

use crate::bindings::graph::Value;
use crate::glob::Compiled;

/// Why a backend call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// The server could not be reached, or did not answer in time.
    #[error("{backend} unavailable: {detail}")]
    Unavailable {
        backend: &'static str,
        detail: String,
    },
    /// The request was malformed.
    #[error("invalid request to {backend}: {detail}")]
    Invalid {
        backend: &'static str,
        detail: String,
    },
    /// The server refused the connection in a way retrying cannot fix:
    /// credentials not accepted, or TLS failed (an untrusted certificate).
    #[error("{backend} refused the connection: {detail}")]
    Refused {
        backend: &'static str,
        detail: String,
    },
    /// The server refused or failed the request.
    #[error("{backend} error: {detail}")]
    Other {
        backend: &'static str,
        detail: String,
    },
}

/// One step of a cursor-driven scan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanPage {
    /// Where the next step starts; 0 when the scan is complete.
    pub cursor: u64,
    /// Keys matching the pattern among those this step visited.
    pub keys: Vec<String>,
}

/// What one `delete_matching` call did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Swept {
    /// Keys this call deleted (that existed when they were unlinked).
    pub deleted: u64,
    /// The keys that matched, as bytes (at most [`Swept::MAX_KEYS_KEPT`];
    /// `deleted` counts them all).
    pub keys: Vec<Vec<u8>>,
}

impl Swept {
    /// Matched keys kept for the caller to see; beyond, only counted.
    pub const MAX_KEYS_KEPT: usize = 10_000;
}

/// Running totals of a cache's shared sweeper, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepTotals {
    /// Sweeps of the keyspace started.
    pub sweeps: u64,
    /// `delete_matching`/`find_matching` calls those sweeps served.
    pub calls: u64,
    /// Keys the sweeps read from the server.
    pub keys_visited: u64,
}

/// Running totals of a graph's batched writes, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteTotals {
    /// Write transactions sent (a retry counts again).
    pub transactions: u64,
    /// Upserts committed in them.
    pub rows: u64,
}

/// A key-value cache with Valkey `SCAN` and `UNLINK` semantics.
#[async_trait]
pub trait CacheBackend: Send + Sync + 'static {
    /// Human-readable name for logs and errors, e.g. `valkey` or `memory`.
    fn kind(&self) -> &'static str;

    /// One `SCAN cursor MATCH pattern COUNT count` step.
    async fn scan(&self, pattern: &str, cursor: u64, count: u32) -> Result<ScanPage, BackendError>;

    /// `UNLINK keys...`: how many of them existed.
    async fn delete(&self, keys: &[String]) -> Result<u64, BackendError>;

    /// Deletes every key matching one of `patterns` (the WIT
    /// `delete-matching` promise: every key that matches and exists for the
    /// whole call is deleted, no other key is touched).
    async fn delete_matching(&self, patterns: &[Compiled]) -> Result<Swept, BackendError>;

    /// The keys `delete_matching` would delete now, deleting nothing.
    async fn find_matching(&self, patterns: &[Compiled]) -> Result<Vec<Vec<u8>>, BackendError>;

    /// Whether the backend answers right now.
    async fn ping(&self) -> Result<(), BackendError>;

    /// Its shared sweeper's totals; `None` for a backend without one.
    fn sweep_totals(&self) -> Option<SweepTotals> {
        None
    }
}

/// A node's identity: its label and its `id` property.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey {
    pub label: String,
    pub id: String,
}

/// A property graph with Neo4j `MERGE` semantics.
///
/// Labels, relation kinds and property keys reaching a backend have already
/// been validated as identifiers by the graph capability.
#[async_trait]
pub trait GraphBackend: Send + Sync + 'static {
    /// Human-readable name for logs and errors, e.g. `neo4j` or `memory`.
    fn kind(&self) -> &'static str;

    /// `MERGE (n:label {id}) SET n += properties`.
    async fn upsert_entity(
        &self,
        node: &NodeKey,
        properties: &[(String, Value)],
    ) -> Result<(), BackendError>;

    /// `MERGE` both nodes, then `MERGE (a)-[r:kind]->(b) SET r += properties`.
    async fn upsert_relation(
        &self,
        source: &NodeKey,
        kind: &str,
        target: &NodeKey,
        properties: &[(String, Value)],
    ) -> Result<(), BackendError>;

    /// Whether the backend answers right now.
    async fn ping(&self) -> Result<(), BackendError>;

    /// Its batched writes' totals; `None` for a backend that does not batch.
    fn write_totals(&self) -> Option<WriteTotals> {
        None
    }
}

/// The backends one handler's capabilities use.
#[derive(Clone)]
pub struct Backends {
    pub cache: Arc<dyn CacheBackend>,
    pub graph: Arc<dyn GraphBackend>,
}
