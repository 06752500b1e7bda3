//! The Valkey backend's shared sweeper: one `SCAN` sweep of the keyspace
//! serves every `delete_matching` call that is waiting for it.
//!
//! Finding the keys that match a pattern costs a walk over the whole
//! keyspace, whatever the pattern. Per event, that made the cost of an
//! event grow with the size of the cache. Here the cost is shared: calls
//! queue on one task per backend; when a sweep ends, every call that
//! arrived meanwhile joins the next one. A sweep:
//!
//! 1. indexes the waiting patterns: a literal prefix and `*` (the shape of
//!    every invalidation pattern) goes into a map from prefix to callers,
//!    looked up once per distinct prefix length; anything else is matched
//!    with Valkey's own glob semantics ([`crate::glob`]);
//! 2. walks the keyspace from cursor 0 back to 0 with `SCAN ... COUNT`
//!    [`SWEEP_COUNT`], with `MATCH` on the longest literal prefix all the
//!    patterns share, so Valkey filters what no caller can want. The
//!    keyspace is a [`Keyspace`]: one server, or every primary of a
//!    cluster, each walked with its own cursor, all of them at once;
//! 3. matches each key's bytes against the index, whatever the bytes are;
//! 4. `UNLINK`s the matches page by page, pipelined, one command per
//!    caller, while the next page is read. A key several callers match is
//!    unlinked (and counted) for the first of them only, so each count is
//!    exactly what that caller's own commands removed, and the counts of a
//!    sweep add up to the keys it removed.
//!
//! A call joins only a sweep that starts after it arrived, so a full
//! iteration covers every key that exists for the whole call (`SCAN`'s own
//! guarantee, on each node). Any Valkey error fails every call of that
//! sweep as `unavailable` or `other`, and no call reports a key deleted
//! that its commands did not remove.
//!
//! The nodes of a cluster are walked in parallel: each walk waits on its
//! own node's round trips, so the sweep lasts as long as the slowest node
//! instead of the sum of them, and a key lives on one node only, so the
//! walks never meet on a key.

use foldhash::HashMap;
use foldhash::HashMapExt as _;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{BackendError, Swept};
use crate::glob::{Compiled, escape_bytes};

/// Keys asked for per `SCAN` step of a sweep.
pub const SWEEP_COUNT: u32 = 5000;
/// Most keys named in one `UNLINK`.
pub const UNLINK_CHUNK: usize = 1000;

/// What a sweep walks: the nodes holding the keyspace, and how to scan
/// and unlink on them. One server, or the primaries of a cluster.
#[async_trait]
pub trait Keyspace: Clone + Send + Sync + 'static {
    /// A node walked with a cursor of its own.
    type Node: Send + Sync + 'static;

    /// The nodes holding every key now; a sweep walks each of them.
    async fn nodes(&self) -> Result<Vec<Self::Node>, BackendError>;

    /// One `SCAN cursor [MATCH pattern] COUNT count` step on `node`: the
    /// next cursor and the keys.
    async fn scan(
        &self,
        node: &Self::Node,
        cursor: u64,
        pattern: Option<&[u8]>,
        count: u32,
    ) -> Result<(u64, Vec<Vec<u8>>), BackendError>;

    /// `UNLINK`s each group's keys, in commands of at most
    /// [`UNLINK_CHUNK`] keys: how many of each group existed, in order.
    async fn unlink(&self, groups: &Groups) -> Result<Vec<u64>, BackendError>;
}

/// A handle on the sweeper task; cheap to clone. The task ends when the
/// last handle is dropped.
#[derive(Clone)]
pub struct Sweeper {
    requests: mpsc::UnboundedSender<Request>,
    stats: Arc<SweepStats>,
}

/// Running totals, for logs and benchmarks.
#[derive(Debug, Default)]
pub struct SweepStats {
    pub sweeps: std::sync::atomic::AtomicU64,
    pub callers: std::sync::atomic::AtomicU64,
    pub keys_visited: std::sync::atomic::AtomicU64,
}

struct Request {
    patterns: Vec<Compiled>,
    delete: bool,
    reply: oneshot::Sender<Result<Swept, BackendError>>,
}

impl Sweeper {
    /// Starts the sweeper task on `keyspace`.
    pub fn start<K: Keyspace>(keyspace: K) -> Self {
        let (requests, queue) = mpsc::unbounded_channel();
        let stats = Arc::new(SweepStats::default());
        tokio::spawn(run(keyspace, queue, stats.clone()));
        Sweeper { requests, stats }
    }

    /// Matches (and with `delete`, unlinks) every key matching one of
    /// `patterns` in the next sweep.
    pub async fn sweep(
        &self,
        patterns: Vec<Compiled>,
        delete: bool,
    ) -> Result<Swept, BackendError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || BackendError::Other {
            backend: "valkey",
            detail: "the sweeper stopped".into(),
        };
        self.requests
            .send(Request {
                patterns,
                delete,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    pub fn stats(&self) -> &SweepStats {
        &self.stats
    }

    /// The totals as of now.
    pub fn totals(&self) -> super::SweepTotals {
        use std::sync::atomic::Ordering::Relaxed;
        super::SweepTotals {
            sweeps: self.stats.sweeps.load(Relaxed),
            calls: self.stats.callers.load(Relaxed),
            keys_visited: self.stats.keys_visited.load(Relaxed),
        }
    }

    /// `delete_matching` on this sweeper's keyspace: exact keys are
    /// unlinked by name with `unlink` (no sweep), the other patterns by
    /// the next sweep, both at once. A key named exactly and also matched
    /// by a pattern is unlinked by one of the two and counted by it.
    pub async fn delete_matching<'p, F>(
        &self,
        patterns: &'p [Compiled],
        unlink: impl FnOnce(Vec<&'p [u8]>) -> F,
    ) -> Result<Swept, BackendError>
    where
        F: Future<Output = Result<Vec<Vec<u8>>, BackendError>>,
    {
        let (exact, swept) = split(patterns);
        let by_name = async {
            if exact.is_empty() {
                return Ok(Vec::new());
            }
            unlink(exact).await
        };
        let by_sweep = async {
            if swept.is_empty() {
                return Ok(Swept::default());
            }
            self.sweep(swept, true).await
        };
        let (by_name, by_sweep) = tokio::join!(by_name, by_sweep);
        let mut result = by_sweep?;
        let named = by_name?;
        result.deleted += named.len() as u64;
        result.keys.extend(named);
        result.keys.truncate(Swept::MAX_KEYS_KEPT);
        Ok(result)
    }

    /// The keys matching any of `patterns`, sorted, each once: exact keys
    /// through `exists` (no sweep), the others by the next sweep.
    pub async fn find_matching<'p, F>(
        &self,
        patterns: &'p [Compiled],
        exists: impl FnOnce(Vec<&'p [u8]>) -> F,
    ) -> Result<Vec<Vec<u8>>, BackendError>
    where
        F: Future<Output = Result<Vec<Vec<u8>>, BackendError>>,
    {
        let (exact, swept) = split(patterns);
        let mut keys = if swept.is_empty() {
            Vec::new()
        } else {
            self.sweep(swept, false).await?.keys
        };
        if !exact.is_empty() {
            keys.extend(exists(exact).await?);
        }
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }
}

/// Splits patterns into exact keys (sorted, each once) and the ones that
/// need a sweep.
fn split(patterns: &[Compiled]) -> (Vec<&[u8]>, Vec<Compiled>) {
    let mut exact = Vec::new();
    let mut swept = Vec::new();
    for pattern in patterns {
        match pattern {
            Compiled::Exact(key) => exact.push(key.as_slice()),
            other => swept.push(other.clone()),
        }
    }
    exact.sort_unstable();
    exact.dedup();
    (exact, swept)
}

async fn run<K: Keyspace>(
    keyspace: K,
    mut queue: mpsc::UnboundedReceiver<Request>,
    stats: Arc<SweepStats>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while let Ok(next) = queue.try_recv() {
            batch.push(next);
        }
        let started = Instant::now();
        let outcome = sweep_once(&keyspace, &batch).await;
        stats.sweeps.fetch_add(1, Relaxed);
        stats.callers.fetch_add(batch.len() as u64, Relaxed);
        match outcome {
            Ok((results, visited)) => {
                stats.keys_visited.fetch_add(visited, Relaxed);
                tracing::debug!(
                    callers = batch.len(),
                    visited,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "cache sweep"
                );
                for (request, result) in batch.into_iter().zip(results) {
                    let _ = request.reply.send(Ok(result));
                }
            }
            Err(error) => {
                tracing::warn!(callers = batch.len(), %error, "cache sweep failed; every call waiting for it fails");
                for request in batch {
                    let _ = request.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// The waiting patterns, indexed for matching many keys.
struct Index {
    /// Literal prefix (of `Prefix` patterns) → callers.
    prefixes: HashMap<Vec<u8>, Vec<u32>>,
    /// Distinct prefix lengths, to look each key up once per length.
    lengths: Vec<usize>,
    /// Exact keys (when a caller passed some) → callers.
    exact: HashMap<Vec<u8>, Vec<u32>>,
    /// Other patterns and their caller.
    globs: Vec<(Compiled, u32)>,
}

impl Index {
    fn new(batch: &[Request]) -> Self {
        let mut index = Index {
            prefixes: HashMap::new(),
            lengths: Vec::new(),
            exact: HashMap::new(),
            globs: Vec::new(),
        };
        for (caller, request) in batch.iter().enumerate() {
            let caller = caller as u32;
            for pattern in &request.patterns {
                let add = |map: &mut HashMap<Vec<u8>, Vec<u32>>, key: &Vec<u8>| {
                    let callers = map.entry(key.clone()).or_default();
                    if callers.last() != Some(&caller) {
                        callers.push(caller);
                    }
                };
                match pattern {
                    Compiled::Prefix(prefix) => add(&mut index.prefixes, prefix),
                    Compiled::Exact(key) => add(&mut index.exact, key),
                    Compiled::Glob(_) => index.globs.push((pattern.clone(), caller)),
                }
            }
        }
        index.lengths = index.prefixes.keys().map(Vec::len).collect();
        index.lengths.sort_unstable();
        index.lengths.dedup();
        index
    }

    /// The callers whose patterns match `key`, sorted, without repeats.
    fn callers(&self, key: &[u8], out: &mut Vec<u32>) {
        out.clear();
        for &length in &self.lengths {
            if length > key.len() {
                break;
            }
            if let Some(callers) = self.prefixes.get(&key[..length]) {
                out.extend_from_slice(callers);
            }
        }
        if let Some(callers) = self.exact.get(key) {
            out.extend_from_slice(callers);
        }
        for (pattern, caller) in &self.globs {
            if pattern.matches(key) {
                out.push(*caller);
            }
        }
        out.sort_unstable();
        out.dedup();
    }
}

/// The `MATCH` argument for a sweep: the longest literal prefix every
/// pattern shares, escaped, and `*`; `None` when they share none.
fn server_match(batch: &[Request]) -> Option<Vec<u8>> {
    let mut prefixes = batch
        .iter()
        .flat_map(|r| r.patterns.iter())
        .map(Compiled::literal_prefix);
    let mut common: &[u8] = prefixes.next()?;
    for prefix in prefixes {
        let shared = common
            .iter()
            .zip(prefix)
            .take_while(|(a, b)| a == b)
            .count();
        common = &common[..shared];
    }
    if common.is_empty() {
        return None;
    }
    let mut pattern = escape_bytes(common);
    pattern.push(b'*');
    Some(pattern)
}

/// Unlink commands of one page: the caller each is for, and its keys.
pub type Groups = Vec<(u32, Vec<Vec<u8>>)>;

/// A page's unlinks in flight: the groups sent, and what each deleted.
type Unlinking = JoinHandle<Result<(Groups, Vec<u64>), BackendError>>;

/// One sweep for `batch` over every node of `keyspace`, walked in
/// parallel: each caller's result, and the keys visited.
async fn sweep_once<K: Keyspace>(
    keyspace: &K,
    batch: &[Request],
) -> Result<(Vec<Swept>, u64), BackendError> {
    let index = Index::new(batch);
    let matching = server_match(batch);
    let nodes = keyspace.nodes().await?;
    let walks = nodes
        .iter()
        .map(|node| walk(keyspace, node, &index, matching.as_deref(), batch));
    let walked = futures::future::try_join_all(walks).await?;
    let mut results: Vec<Swept> = vec![Swept::default(); batch.len()];
    let mut visited = 0u64;
    for (node_results, node_visited) in walked {
        visited += node_visited;
        for (result, node) in results.iter_mut().zip(node_results) {
            result.deleted += node.deleted;
            let room = Swept::MAX_KEYS_KEPT.saturating_sub(result.keys.len());
            result.keys.extend(node.keys.into_iter().take(room));
        }
    }
    Ok((results, visited))
}

/// One node's walk from cursor 0 back to 0 for `batch`: each caller's
/// result on that node, and the keys visited.
async fn walk<K: Keyspace>(
    keyspace: &K,
    node: &K::Node,
    index: &Index,
    matching: Option<&[u8]>,
    batch: &[Request],
) -> Result<(Vec<Swept>, u64), BackendError> {
    let mut results: Vec<Swept> = vec![Swept::default(); batch.len()];
    let mut unlinks: Vec<Unlinking> = Vec::new();
    let mut callers = Vec::new();
    let mut visited = 0u64;
    let mut cursor = 0u64;
    loop {
        let (next, keys) = keyspace.scan(node, cursor, matching, SWEEP_COUNT).await?;
        visited += keys.len() as u64;
        let mut groups: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
        for key in keys {
            index.callers(&key, &mut callers);
            if callers.is_empty() {
                continue;
            }
            for &caller in &callers {
                let result = &mut results[caller as usize];
                if result.keys.len() < Swept::MAX_KEYS_KEPT {
                    result.keys.push(key.clone());
                }
                if !batch[caller as usize].delete {
                    result.deleted += 1;
                }
            }
            if let Some(&owner) = callers.iter().find(|&&c| batch[c as usize].delete) {
                groups.entry(owner).or_default().push(key);
            }
        }
        if !groups.is_empty() {
            let keyspace = keyspace.clone();
            let groups: Groups = groups.into_iter().collect();
            unlinks.push(tokio::spawn(async move {
                let counts = keyspace.unlink(&groups).await?;
                Ok((groups, counts))
            }));
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut failure = None;
    for task in unlinks {
        match task.await {
            Ok(Ok((groups, counts))) => {
                for ((caller, _), count) in groups.iter().zip(counts) {
                    results[*caller as usize].deleted += count;
                }
            }
            Ok(Err(error)) => failure = Some(error),
            Err(join) => {
                failure = Some(BackendError::Other {
                    backend: "valkey",
                    detail: format!("unlink task failed: {join}"),
                })
            }
        }
    }
    match failure {
        Some(error) => Err(error),
        None => Ok((results, visited)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(patterns: &[&[u8]]) -> Request {
        Request {
            patterns: patterns.iter().map(|p| Compiled::new(p)).collect(),
            delete: true,
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn index_finds_every_caller_whose_pattern_matches() {
        let batch = [
            request(&[b"ctx:S1", b"ctx:S1:*"]),
            request(&[b"ctx:S10:*"]),
            request(&[b"ctx:*:dev"]),
        ];
        let index = Index::new(&batch);
        let mut callers = Vec::new();
        let mut of = |key: &[u8]| {
            index.callers(key, &mut callers);
            callers.clone()
        };
        assert_eq!(of(b"ctx:S1"), [0]);
        assert_eq!(of(b"ctx:S1:dev"), [0, 2]);
        assert_eq!(of(b"ctx:S10:qa"), [1]);
        assert_eq!(of(b"ctx:S10"), Vec::<u32>::new());
        assert_eq!(of(b"ctx:S2:dev"), [2]);
        assert_eq!(of(b"ctx:S1\xff"), Vec::<u32>::new());
        assert_eq!(of(b"ctx:S1:\xff"), [0]);
    }

    #[test]
    fn server_side_match_is_the_shared_literal_prefix() {
        let batch = [request(&[b"ctx:S1:*"]), request(&[b"ctx:S2*"])];
        assert_eq!(server_match(&batch).as_deref(), Some(&b"ctx:S*"[..]));
        let batch = [request(&[b"ctx:S1:*"]), request(&[b"other:*"])];
        assert_eq!(server_match(&batch), None);
        let batch = [request(&[b"c[t]x:*"])];
        assert_eq!(server_match(&batch).as_deref(), Some(&b"c*"[..]));
        let batch = [request(&[b"a\\*b:*"])];
        assert_eq!(server_match(&batch).as_deref(), Some(&b"a\\*b:*"[..]));
    }
}
