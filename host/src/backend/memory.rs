//! In-memory cache and graph.
//!
//! The cache keeps Valkey's contract for `SCAN`: a key present for the whole
//! scan is returned at least once, whatever is added or removed meanwhile
//! (including the keys the scan itself deletes), and `COUNT` bounds the work
//! of one step, not the number of matches. Keys are visited in the order of
//! a fixed hash, and the cursor is the next hash to visit, so deleting
//! visited keys cannot shift unvisited ones past the cursor.
//!
//! The graph mirrors Neo4j's `MERGE ... SET n += props`: properties are
//! merged, and a `null` value removes the property.
//!
//! Both use a std `Mutex`: every critical section is a short map operation
//! and none is held across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{BackendError, Backends, CacheBackend, GraphBackend, NodeKey, ScanPage, Swept};
use crate::bindings::graph::Value;
use crate::glob;
use crate::glob::Compiled;
use crate::lock;

/// An in-memory key-value cache. Clones share the same data.
#[derive(Clone, Default)]
pub struct MemoryCache {
    // (scan order, key) -> value
    entries: Arc<Mutex<BTreeMap<(u64, String), String>>>,
    outage: Outage,
}

/// A switchable outage, so tests can see what a plugin does when its
/// backend is down. Off by default.
#[derive(Clone, Default)]
struct Outage(Arc<Mutex<bool>>);

impl Outage {
    fn set(&self, down: bool) {
        *lock(&self.0) = down;
    }

    fn check(&self) -> Result<(), BackendError> {
        if *lock(&self.0) {
            return Err(BackendError::Unavailable {
                backend: "memory",
                detail: "simulated outage".into(),
            });
        }
        Ok(())
    }
}

// The scan order of a key. The top bit is cleared so that `order + 1` never
// wraps to 0, which would read as "scan complete".
fn scan_order(key: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish() >> 1
}

impl MemoryCache {
    /// Sets `key` to `value`.
    pub fn set(&self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        lock(&self.entries).insert((scan_order(&key), key), value.into());
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<String> {
        lock(&self.entries)
            .get(&(scan_order(key), key.to_string()))
            .cloned()
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = lock(&self.entries)
            .keys()
            .map(|(_, key)| key.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    /// Whether the cache holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// While `down`, every call fails as `unavailable`.
    pub fn set_unavailable(&self, down: bool) {
        self.outage.set(down);
    }

    /// Synchronous `SCAN` step; see [`CacheBackend::scan`].
    pub fn scan_step(&self, pattern: &str, cursor: u64, count: u32) -> ScanPage {
        let entries = lock(&self.entries);
        let budget = count.max(1) as usize;
        let match_all = pattern == "*";
        let mut keys = Vec::new();
        let mut last_order = None;
        let start = (cursor, String::new());
        for (visited, ((order, key), _)) in entries.range(start..).enumerate() {
            // Keys sharing a scan order are visited together so the cursor
            // never splits them.
            if visited >= budget && last_order != Some(*order) {
                return ScanPage {
                    cursor: *order,
                    keys,
                };
            }
            last_order = Some(*order);
            if match_all || glob::matches(pattern.as_bytes(), key.as_bytes()) {
                keys.push(key.clone());
            }
        }
        ScanPage { cursor: 0, keys }
    }

    /// Synchronous [`CacheBackend::delete_matching`] (or, without
    /// `delete`, [`CacheBackend::find_matching`]).
    pub fn sweep(&self, patterns: &[Compiled], delete: bool) -> Swept {
        let mut entries = lock(&self.entries);
        let matched: Vec<(u64, String)> = entries
            .keys()
            .filter(|(_, key)| patterns.iter().any(|p| p.matches(key.as_bytes())))
            .cloned()
            .collect();
        if delete {
            for entry in &matched {
                entries.remove(entry);
            }
        }
        Swept {
            deleted: matched.len() as u64,
            keys: matched
                .into_iter()
                .take(Swept::MAX_KEYS_KEPT)
                .map(|(_, key)| key.into_bytes())
                .collect(),
        }
    }

    /// Synchronous `UNLINK`; see [`CacheBackend::delete`].
    pub fn unlink(&self, keys: &[String]) -> u64 {
        let mut entries = lock(&self.entries);
        let mut removed = 0;
        for key in keys {
            if entries.remove(&(scan_order(key), key.clone())).is_some() {
                removed += 1;
            }
        }
        removed
    }
}

#[async_trait]
impl CacheBackend for MemoryCache {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn scan(&self, pattern: &str, cursor: u64, count: u32) -> Result<ScanPage, BackendError> {
        self.outage.check()?;
        Ok(self.scan_step(pattern, cursor, count))
    }

    async fn delete(&self, keys: &[String]) -> Result<u64, BackendError> {
        self.outage.check()?;
        Ok(self.unlink(keys))
    }

    async fn delete_matching(&self, patterns: &[Compiled]) -> Result<Swept, BackendError> {
        self.outage.check()?;
        Ok(self.sweep(patterns, true))
    }

    async fn find_matching(&self, patterns: &[Compiled]) -> Result<Vec<Vec<u8>>, BackendError> {
        self.outage.check()?;
        Ok(self.sweep(patterns, false).keys)
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.outage.check()
    }
}

/// A node as stored by [`MemoryGraph`].
#[derive(Debug, Clone, PartialEq)]
pub struct StoredNode {
    pub label: String,
    pub id: String,
    pub properties: BTreeMap<String, Value>,
}

/// A relation as stored by [`MemoryGraph`].
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRelation {
    pub source: NodeKey,
    pub kind: String,
    pub target: NodeKey,
    pub properties: BTreeMap<String, Value>,
}

#[derive(Default)]
struct GraphState {
    nodes: HashMap<NodeKey, BTreeMap<String, Value>>,
    relations: HashMap<(NodeKey, String, NodeKey), BTreeMap<String, Value>>,
}

/// An in-memory property graph. Clones share the same data.
#[derive(Clone, Default)]
pub struct MemoryGraph {
    state: Arc<Mutex<GraphState>>,
    outage: Outage,
}

fn merge_properties(target: &mut BTreeMap<String, Value>, properties: &[(String, Value)]) {
    for (key, value) in properties {
        match value {
            // `SET n += {k: null}` removes `k` in Neo4j.
            Value::Null => {
                target.remove(key);
            }
            value => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
}

impl MemoryGraph {
    /// While `down`, every call fails as `unavailable`.
    pub fn set_unavailable(&self, down: bool) {
        self.outage.set(down);
    }

    /// Every node, sorted by label then id.
    pub fn nodes(&self) -> Vec<StoredNode> {
        let state = lock(&self.state);
        let mut nodes: Vec<StoredNode> = state
            .nodes
            .iter()
            .map(|(key, properties)| StoredNode {
                label: key.label.clone(),
                id: key.id.clone(),
                properties: properties.clone(),
            })
            .collect();
        nodes.sort_by(|a, b| (&a.label, &a.id).cmp(&(&b.label, &b.id)));
        nodes
    }

    /// Every relation, sorted by source, kind, target.
    pub fn relations(&self) -> Vec<StoredRelation> {
        let state = lock(&self.state);
        let mut relations: Vec<StoredRelation> = state
            .relations
            .iter()
            .map(|((source, kind, target), properties)| StoredRelation {
                source: source.clone(),
                kind: kind.clone(),
                target: target.clone(),
                properties: properties.clone(),
            })
            .collect();
        relations
            .sort_by(|a, b| (&a.source, &a.kind, &a.target).cmp(&(&b.source, &b.kind, &b.target)));
        relations
    }

    /// The node `label`/`id`, if present.
    pub fn node(&self, label: &str, id: &str) -> Option<StoredNode> {
        let key = NodeKey {
            label: label.to_string(),
            id: id.to_string(),
        };
        lock(&self.state)
            .nodes
            .get(&key)
            .map(|properties| StoredNode {
                label: key.label.clone(),
                id: key.id.clone(),
                properties: properties.clone(),
            })
    }

    /// Number of nodes with `label`.
    pub fn count(&self, label: &str) -> usize {
        lock(&self.state)
            .nodes
            .keys()
            .filter(|key| key.label == label)
            .count()
    }
}

#[async_trait]
impl GraphBackend for MemoryGraph {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn upsert_entity(
        &self,
        node: &NodeKey,
        properties: &[(String, Value)],
    ) -> Result<(), BackendError> {
        self.outage.check()?;
        let mut state = lock(&self.state);
        merge_properties(state.nodes.entry(node.clone()).or_default(), properties);
        Ok(())
    }

    async fn upsert_relation(
        &self,
        source: &NodeKey,
        kind: &str,
        target: &NodeKey,
        properties: &[(String, Value)],
    ) -> Result<(), BackendError> {
        self.outage.check()?;
        let mut state = lock(&self.state);
        state.nodes.entry(source.clone()).or_default();
        state.nodes.entry(target.clone()).or_default();
        let relation = state
            .relations
            .entry((source.clone(), kind.to_string(), target.clone()))
            .or_default();
        merge_properties(relation, properties);
        Ok(())
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.outage.check()
    }
}

/// Fresh in-memory backends, and handles on them to seed and inspect.
pub fn backends() -> (Backends, MemoryCache, MemoryGraph) {
    let cache = MemoryCache::default();
    let graph = MemoryGraph::default();
    let backends = Backends {
        cache: std::sync::Arc::new(cache.clone()),
        graph: std::sync::Arc::new(graph.clone()),
    };
    (backends, cache, graph)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_scan(cache: &MemoryCache, pattern: &str, count: u32) -> Vec<String> {
        let mut cursor = 0;
        let mut keys = Vec::new();
        loop {
            let page = cache.scan_step(pattern, cursor, count);
            keys.extend(page.keys);
            cursor = page.cursor;
            if cursor == 0 {
                break;
            }
        }
        keys.sort();
        keys
    }

    #[test]
    fn scan_pages_cover_every_matching_key_once() {
        let cache = MemoryCache::default();
        for i in 0..1000 {
            cache.set(format!("context:S{i}"), "v");
            cache.set(format!("other:S{i}"), "v");
        }
        let keys = full_scan(&cache, "context:*", 7);
        assert_eq!(keys.len(), 1000);
        keys.windows(2).for_each(|w| assert!(w[0] < w[1]));
    }

    #[test]
    fn deleting_while_scanning_skips_no_key() {
        let cache = MemoryCache::default();
        for i in 0..500 {
            cache.set(format!("k:{i}"), "v");
        }
        let mut cursor = 0;
        let mut deleted = 0;
        loop {
            let page = cache.scan_step("k:*", cursor, 10);
            deleted += cache.unlink(&page.keys);
            cursor = page.cursor;
            if cursor == 0 {
                break;
            }
        }
        assert_eq!(deleted, 500);
        assert!(cache.is_empty());
    }

    #[test]
    fn count_bounds_work_not_matches() {
        let cache = MemoryCache::default();
        for i in 0..100 {
            cache.set(format!("noise:{i}"), "v");
        }
        cache.set("needle", "v");
        let page = cache.scan_step("needle", 0, 10);
        assert!(page.keys.len() <= 1);
        assert_ne!(
            page.cursor, 0,
            "ten of 101 keys visited, so the scan is not over"
        );
    }

    #[test]
    fn unlink_counts_only_existing_keys() {
        let cache = MemoryCache::default();
        cache.set("a", "1");
        assert_eq!(cache.unlink(&["a".into(), "b".into(), "a".into()]), 1);
    }

    #[tokio::test]
    async fn upsert_merges_properties_and_null_removes() {
        let graph = MemoryGraph::default();
        let node = NodeKey {
            label: "Story".into(),
            id: "S1".into(),
        };
        graph
            .upsert_entity(
                &node,
                &[
                    ("phase".into(), Value::Text("draft".into())),
                    ("owner".into(), Value::Text("ana".into())),
                ],
            )
            .await
            .unwrap();
        graph
            .upsert_entity(
                &node,
                &[
                    ("phase".into(), Value::Text("done".into())),
                    ("owner".into(), Value::Null),
                ],
            )
            .await
            .unwrap();
        let stored = graph.node("Story", "S1").unwrap();
        assert_eq!(stored.properties.len(), 1);
        assert_eq!(stored.properties["phase"], Value::Text("done".into()));
        assert_eq!(graph.count("Story"), 1);
    }
}
