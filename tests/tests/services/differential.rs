//! The in-memory doubles against the real servers.
//!
//! `MemoryCache` (with `switchyard::glob`) stands in for Valkey and
//! `MemoryGraph` for Neo4j wherever plugins run without servers
//! (`switchyard test`, the `switchyard-testing` harness). These tests make
//! the same calls on both sides and require the same observable result: the
//! keys `SCAN ... MATCH` selects, what a sweep that deletes as it scans
//! leaves behind, what `UNLINK` counts, and the nodes, relations and
//! properties a sequence of upserts produces.
//!
//! Random inputs come from fixed seeds, printed with any disagreement;
//! `SWITCHYARD_TEST_SEED=<n>` reruns the random tests with another seed.
//!
//! Valkey keys go to database [`VALKEY_DB`] (not the one in the URL), each
//! test under its own unique prefix, and are deleted at the end. Neo4j nodes
//! carry labels unique to the test; they are deleted at the end together
//! with the uniqueness constraints the backend created for those labels.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test reports by panicking

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, stream};
use neo4rs::{BoltType, Graph, query};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use redis::aio::MultiplexedConnection;
use switchyard::backend::memory::{MemoryCache, MemoryGraph};
use switchyard::backend::neo4j::Neo4jGraph;
use switchyard::backend::valkey::ValkeyCache;
use switchyard::backend::{BackendError, CacheBackend, GraphBackend, NodeKey};
use switchyard::bindings::graph::Value;
use switchyard::glob;
use switchyard_tests::services::{self, neo4j_url, unique, valkey_url};

/// The Valkey database these tests write to, so that their full scans do
/// not walk every other test's keys.
const VALKEY_DB: u32 = 13;

const GLOB_SEED: u64 = 0x5157_c4ed;
const GLOB_KEYS: usize = 3_000;
const GLOB_PATTERNS: usize = 1_500;
const GRAPH_SEED: u64 = 0x6e04_1a2b;
const GRAPH_OPS: usize = 150;

/// The seed for a random test: `default`, or `SWITCHYARD_TEST_SEED` if set.
fn seed(default: u64) -> u64 {
    match std::env::var("SWITCHYARD_TEST_SEED") {
        Ok(value) if !value.is_empty() => value
            .parse()
            .unwrap_or_else(|e| panic!("SWITCHYARD_TEST_SEED={value:?} is not a u64: {e}")),
        _ => default,
    }
}

/// Bytes as a Rust-style escaped string, so any key or pattern can be
/// pasted back into a test.
fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

// --- Valkey -----------------------------------------------------------------

/// The test URL with its database replaced by [`VALKEY_DB`].
fn valkey_db_url() -> String {
    let url = valkey_url();
    let host = url.find("://").map_or(0, |i| i + 3);
    let end = url[host..].find(['/', '?']).map_or(url.len(), |i| host + i);
    format!("{}/{VALKEY_DB}", &url[..end])
}

async fn valkey_connection() -> MultiplexedConnection {
    let url = valkey_db_url();
    let client = redis::Client::open(url.as_str()).unwrap_or_else(|e| panic!("{url}: {e}"));
    client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

async fn valkey_set(connection: &MultiplexedConnection, keys: &[Vec<u8>]) {
    let mut connection = connection.clone();
    for chunk in keys.chunks(500) {
        let mut mset = redis::cmd("MSET");
        for key in chunk {
            mset.arg(key.as_slice()).arg("v");
        }
        let () = mset.query_async(&mut connection).await.unwrap();
    }
}

async fn valkey_unlink(connection: &MultiplexedConnection, keys: &[Vec<u8>]) {
    let mut connection = connection.clone();
    for chunk in keys.chunks(500) {
        let mut unlink = redis::cmd("UNLINK");
        for key in chunk {
            unlink.arg(key.as_slice());
        }
        let _: u64 = unlink.query_async(&mut connection).await.unwrap();
    }
}

/// Every key a full `SCAN 0 MATCH pattern COUNT count` loop returns.
async fn valkey_scan(
    connection: &MultiplexedConnection,
    pattern: &[u8],
    count: u32,
) -> BTreeSet<Vec<u8>> {
    let mut connection = connection.clone();
    let mut keys = BTreeSet::new();
    let mut cursor = 0u64;
    loop {
        let (next, page): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut connection)
            .await
            .unwrap_or_else(|e| panic!("SCAN {cursor} MATCH {}: {e}", show(pattern)));
        keys.extend(page);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// Every key a full `MemoryCache::scan_step` loop returns.
fn memory_scan(cache: &MemoryCache, pattern: &str, count: u32) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut cursor = 0;
    loop {
        let page = cache.scan_step(pattern, cursor, count);
        keys.extend(page.keys);
        if page.cursor == 0 {
            return keys;
        }
        assert!(
            page.cursor > cursor,
            "memory scan cursor went from {cursor} to {}",
            page.cursor
        );
        cursor = page.cursor;
    }
}

/// One cache, driven through the `CacheBackend` calls the runtime makes,
/// plus writes, which the trait does not offer.
enum Cache {
    Memory(MemoryCache),
    Valkey {
        backend: ValkeyCache,
        connection: MultiplexedConnection,
    },
}

impl Cache {
    /// A fresh memory cache and the Valkey test database.
    async fn both() -> [Cache; 2] {
        let url = valkey_db_url();
        let backend = ValkeyCache::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        [
            Cache::Memory(MemoryCache::default()),
            Cache::Valkey {
                backend,
                connection: valkey_connection().await,
            },
        ]
    }

    fn backend(&self) -> &dyn CacheBackend {
        match self {
            Cache::Memory(cache) => cache,
            Cache::Valkey { backend, .. } => backend,
        }
    }

    fn name(&self) -> &'static str {
        self.backend().kind()
    }

    async fn set(&self, keys: &[String]) {
        match self {
            Cache::Memory(cache) => keys.iter().for_each(|key| cache.set(key.as_str(), "v")),
            Cache::Valkey { connection, .. } => {
                let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
                valkey_set(connection, &keys).await;
            }
        }
    }

    /// Removes `keys` (cleanup, not under test).
    async fn remove(&self, keys: &[String]) {
        match self {
            Cache::Memory(cache) => {
                cache.unlink(keys);
            }
            Cache::Valkey { connection, .. } => {
                let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
                valkey_unlink(connection, &keys).await;
            }
        }
    }

    /// Every key a full scan through [`CacheBackend::scan`] returns, deduplicated.
    async fn scan_all(&self, pattern: &str, count: u32) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        let mut cursor = 0;
        loop {
            let page = self
                .backend()
                .scan(pattern, cursor, count)
                .await
                .unwrap_or_else(|e| panic!("{} scan {pattern:?} at {cursor}: {e}", self.name()));
            keys.extend(page.keys);
            if page.cursor == 0 {
                return keys;
            }
            cursor = page.cursor;
        }
    }
}

// --- Random keys and globs --------------------------------------------------

/// What keys and patterns are made of: the glob specials, the characters
/// special only inside a class, separators, DEL (the largest positive C
/// `char`) and multi-byte UTF-8, whose bytes are all >= 0x80 and so negative
/// as C `char`.
const ATOMS: &[&str] = &[
    "a", "b", "c", "x", "z", "A", "Z", "0", "1", "9", ":", "-", "]", "^", "_", " ", "~", "\u{7f}",
    "*", "?", "[", "\\", "é", "ß", "ÿ", "Ā", "中", "€", "😀",
];
/// Frequent atoms, so that random patterns select something.
const COMMON: &[&str] = &["a", "b", "c", "x", ":"];
/// Bytes that are not UTF-8 on their own. Keys and patterns holding them are
/// compared between Valkey and the glob matcher only: the memory cache holds
/// `String`s.
const RAW: &[u8] = &[0x80, 0xa9, 0xbf, 0xc3, 0xfe, 0xff];

fn atom(rng: &mut StdRng, raw: bool) -> Vec<u8> {
    if raw && rng.random_ratio(1, 4) {
        return vec![*RAW.choose(rng).unwrap()];
    }
    let atoms = if rng.random_bool(0.5) { COMMON } else { ATOMS };
    atoms.choose(rng).unwrap().as_bytes().to_vec()
}

fn random_key_tail(rng: &mut StdRng) -> Vec<u8> {
    let raw = rng.random_ratio(1, 5);
    let mut tail = Vec::new();
    for _ in 0..rng.random_range(0..=6) {
        tail.extend(atom(rng, raw));
    }
    tail
}

/// A random glob of up to five tokens.
fn random_glob(rng: &mut StdRng, raw: bool) -> Vec<u8> {
    let mut glob = Vec::new();
    for _ in 0..rng.random_range(0..=5) {
        push_token(rng, raw, &mut glob);
    }
    glob
}

fn push_token(rng: &mut StdRng, raw: bool, out: &mut Vec<u8>) {
    match rng.random_range(0..20) {
        0..=5 => out.extend(atom(rng, raw)),
        6..=8 => out.push(b'?'),
        9 | 10 => out.push(b'*'),
        11 => out.extend(b"**"),
        12..=15 => push_class(rng, raw, out),
        16 => {
            out.push(b'\\');
            out.extend(atom(rng, raw));
        }
        // A backslash escaping whatever follows, or trailing.
        17 => out.push(b'\\'),
        18 => out.push(b'^'),
        _ => out.extend(*[b"-".as_slice(), b"]", b":"].choose(rng).unwrap()),
    }
}

/// `[`, maybe `^`, up to four members (characters, ranges in either order
/// and across the 0x7f/0x80 boundary, escapes, a bare `-`, an early `]`),
/// and usually a closing `]`.
fn push_class(rng: &mut StdRng, raw: bool, out: &mut Vec<u8>) {
    out.push(b'[');
    if rng.random_ratio(1, 3) {
        out.push(b'^');
    }
    for _ in 0..rng.random_range(0..=4) {
        match rng.random_range(0..10) {
            0..=3 => out.extend(atom(rng, raw)),
            4..=6 => {
                out.extend(atom(rng, raw));
                out.push(b'-');
                out.extend(atom(rng, raw));
            }
            7 => {
                out.push(b'\\');
                out.extend(atom(rng, raw));
            }
            8 => out.push(b'-'),
            _ => out.push(b']'),
        }
    }
    if rng.random_ratio(9, 10) {
        out.push(b']');
    }
}

/// A glob made from `key_tail` by keeping, escaping, wildcarding or
/// dropping its characters, so that it selects that key or near misses.
fn derived_glob(rng: &mut StdRng, key_tail: &[u8]) -> Vec<u8> {
    let mut units: Vec<&[u8]> = Vec::new();
    for chunk in key_tail.utf8_chunks() {
        let valid = chunk.valid();
        for (i, c) in valid.char_indices() {
            units.push(&valid.as_bytes()[i..i + c.len_utf8()]);
        }
        units.extend(chunk.invalid().chunks(1));
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < units.len() {
        let unit = units[i];
        i += 1;
        let rest = unit.len() - 1;
        match rng.random_range(0..100) {
            0..=49 => push_literal(rng, unit, &mut out),
            50..=61 => out.extend(std::iter::repeat_n(b'?', unit.len())),
            62..=71 => {
                // A class naming the character (which, if multi-byte, lists
                // its bytes), then `?` for the bytes after the first.
                out.push(b'[');
                if rng.random_ratio(1, 5) {
                    out.extend(atom(rng, false));
                }
                if matches!(unit, b"]" | b"\\" | b"^" | b"-") && rng.random_ratio(4, 5) {
                    out.push(b'\\');
                }
                out.extend(unit);
                out.push(b']');
                out.extend(std::iter::repeat_n(b'?', rest));
            }
            72..=79 => {
                // A range around the first byte, possibly reversed.
                let first = unit[0];
                let (low, high) = if first < 0x80 {
                    (
                        first.saturating_sub(rng.random_range(0..3)).max(0x20),
                        first.saturating_add(rng.random_range(0..3)).min(0x7f),
                    )
                } else if unit.len() == 1 {
                    (
                        first.saturating_sub(rng.random_range(0..3)).max(0x80),
                        first.saturating_add(rng.random_range(0..3)),
                    )
                } else {
                    (first, first)
                };
                let (low, high) = if rng.random_bool(0.5) {
                    (low, high)
                } else {
                    (high, low)
                };
                out.push(b'[');
                if unit.len() > 1 {
                    // Whole characters keep the pattern UTF-8: `[é-é]` is the
                    // byte 0xc3, the range 0xa9..0xc3 and the byte 0xa9.
                    out.extend(unit);
                    out.push(b'-');
                    out.extend(unit);
                } else {
                    out.extend([low, b'-', high]);
                }
                out.push(b']');
                out.extend(std::iter::repeat_n(b'?', rest));
            }
            80..=89 => {
                out.push(b'*');
                i += rng.random_range(0..=2);
            }
            90..=94 => {}
            _ => {
                push_token(rng, false, &mut out);
                push_literal(rng, unit, &mut out);
            }
        }
    }
    if rng.random_ratio(1, 10) {
        push_token(rng, false, &mut out);
    }
    out
}

fn push_literal(rng: &mut StdRng, unit: &[u8], out: &mut Vec<u8>) {
    if matches!(unit, b"*" | b"?" | b"[" | b"\\") && rng.random_ratio(4, 5) {
        out.push(b'\\');
    }
    out.extend(unit);
}

/// What one side selects that the other does not, keys shown without `root`.
fn disagreement(
    root: &[u8],
    pattern: &[u8],
    (left, left_keys): (&str, &BTreeSet<Vec<u8>>),
    (right, right_keys): (&str, &BTreeSet<Vec<u8>>),
) -> String {
    let tail = |key: &[u8]| show(key.strip_prefix(root).unwrap_or(key));
    let only_left: Vec<String> = left_keys
        .difference(right_keys)
        .map(|k| tail(k.as_slice()))
        .collect();
    let only_right: Vec<String> = right_keys
        .difference(left_keys)
        .map(|k| tail(k.as_slice()))
        .collect();
    format!(
        "pattern {} ({} bytes): only {left} selects {only_left:?}, only {right} selects {only_right:?}",
        show(pattern),
        pattern.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_glob_agrees_with_valkey_on_random_patterns() {
    let _servers = services::shared().await;
    let seed = seed(GLOB_SEED);
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let root = format!("{}:", unique("glob"));
    let root_pattern = glob::escape(&root).into_bytes();

    let mut tails = BTreeSet::from([Vec::new()]);
    while tails.len() < GLOB_KEYS {
        tails.insert(random_key_tail(&mut rng));
    }
    let tails: Vec<Vec<u8>> = tails.into_iter().collect();
    let keys: Vec<Vec<u8>> = tails
        .iter()
        .map(|t| [root.as_bytes(), t].concat())
        .collect();
    let utf8_keys = keys
        .iter()
        .filter(|k| std::str::from_utf8(k).is_ok())
        .count();

    let mut pattern_tails = vec![Vec::new()];
    while pattern_tails.len() < GLOB_PATTERNS {
        let tail = if pattern_tails.len() % 2 == 0 {
            let key_tail = tails.choose(&mut rng).unwrap();
            derived_glob(&mut rng, key_tail)
        } else {
            let raw = rng.random_ratio(1, 5);
            random_glob(&mut rng, raw)
        };
        pattern_tails.push(tail);
    }
    let patterns: Vec<Vec<u8>> = pattern_tails
        .iter()
        .map(|t| [root_pattern.as_slice(), t].concat())
        .collect();

    let cache = MemoryCache::default();
    for key in &keys {
        if let Ok(key) = std::str::from_utf8(key) {
            cache.set(key, "v");
        }
    }
    let connection = valkey_connection().await;
    valkey_set(&connection, &keys).await;
    let from_valkey: Vec<BTreeSet<Vec<u8>>> = stream::iter(&patterns)
        .map(|pattern| valkey_scan(&connection, pattern, 1000))
        .buffered(16)
        .collect()
        .await;
    valkey_unlink(&connection, &keys).await;
    let valkey_done = started.elapsed();

    let known: BTreeSet<&Vec<u8>> = keys.iter().collect();
    let mut disagreements = Vec::new();
    let (mut selecting, mut utf8_patterns) = (0, 0);
    for (i, (pattern, valkey)) in patterns.iter().zip(&from_valkey).enumerate() {
        if let Some(foreign) = valkey.iter().find(|k| !known.contains(k)) {
            disagreements.push(format!(
                "pattern {}: Valkey returned {}, which this test did not write",
                show(pattern),
                show(foreign)
            ));
        }
        let by_glob: BTreeSet<Vec<u8>> = keys
            .iter()
            .filter(|key| glob::matches(pattern, key))
            .cloned()
            .collect();
        if &by_glob != valkey {
            disagreements.push(disagreement(
                root.as_bytes(),
                pattern,
                ("Valkey", valkey),
                ("glob::matches", &by_glob),
            ));
        }
        if let Ok(text) = std::str::from_utf8(pattern) {
            utf8_patterns += 1;
            let count = [1, 7, 100, 1000][i % 4];
            let memory: BTreeSet<Vec<u8>> = memory_scan(&cache, text, count)
                .into_iter()
                .map(String::into_bytes)
                .collect();
            let valkey_utf8: BTreeSet<Vec<u8>> = valkey
                .iter()
                .filter(|k| std::str::from_utf8(k).is_ok())
                .cloned()
                .collect();
            if memory != valkey_utf8 {
                disagreements.push(disagreement(
                    root.as_bytes(),
                    pattern,
                    ("Valkey", &valkey_utf8),
                    (&format!("MemoryCache (COUNT {count})"), &memory),
                ));
            }
        }
        if !valkey.is_empty() {
            selecting += 1;
        }
    }
    println!(
        "seed {seed}: {} keys ({utf8_keys} UTF-8), {} patterns ({utf8_patterns} UTF-8, \
         {selecting} selecting at least one key); Valkey part {valkey_done:?}, total {:?}",
        keys.len(),
        patterns.len(),
        started.elapsed()
    );
    assert!(
        disagreements.is_empty(),
        "seed {seed} (SWITCHYARD_TEST_SEED reruns it), keys and patterns under {root:?}: \
         {} disagreements, the first ones:\n{}",
        disagreements.len(),
        disagreements[..disagreements.len().min(20)].join("\n")
    );
    // Keep the comparison meaningful if the generators change.
    assert!(
        selecting >= patterns.len() / 4,
        "only {selecting} patterns select anything"
    );
    assert!(
        selecting < patterns.len(),
        "every pattern selects something"
    );
    assert!(
        utf8_patterns >= patterns.len() * 3 / 4,
        "only {utf8_patterns} UTF-8 patterns"
    );
    assert!(utf8_keys < keys.len(), "no key with non-UTF-8 bytes");
}

#[tokio::test]
async fn incident_patterns_select_the_same_keys_in_memory_and_valkey() {
    let _servers = services::shared().await;
    let root = format!("{}:", unique("incident"));
    let ids = [
        "context:S1",
        "context:S1:",
        "context:S1:dev",
        "context:S10",
        "context:S10:dev",
        "context:S1x",
        "context:a*b",
        "context:a*b:dev",
        "context:axb:dev",
        "context:aXYZb:dev",
        "context:q?[x]",
        "context:q?[x]:1",
        "context:q?x:1",
        "context:qZx:1",
        "context:back\\slash:1",
        "context:backslash:1",
    ];
    let keys: Vec<String> = ids.iter().map(|id| format!("{root}{id}")).collect();
    let literal = |id: &str| glob::escape(&format!("{root}{id}"));
    let cases: Vec<(String, Vec<&str>)> = vec![
        // A story's child keys: never the bare key, never another story's.
        (
            format!("{}:*", literal("context:S1")),
            vec!["context:S1:", "context:S1:dev"],
        ),
        // Without the separator, every story id starting with S1 matches.
        (
            format!("{}*", literal("context:S1")),
            vec![
                "context:S1",
                "context:S1:",
                "context:S1:dev",
                "context:S10",
                "context:S10:dev",
                "context:S1x",
            ],
        ),
        (literal("context:S1"), vec!["context:S1"]),
        // Ids holding glob specials, escaped and not.
        (
            format!("{}:*", literal("context:a*b")),
            vec!["context:a*b:dev"],
        ),
        (
            format!("{}context:a*b:*", glob::escape(&root)),
            vec!["context:a*b:dev", "context:aXYZb:dev", "context:axb:dev"],
        ),
        (
            format!("{}:*", literal("context:q?[x]")),
            vec!["context:q?[x]:1"],
        ),
        (
            format!("{}context:q?[x]:*", glob::escape(&root)),
            vec!["context:q?x:1", "context:qZx:1"],
        ),
        (
            format!("{}:*", literal("context:back\\slash")),
            vec!["context:back\\slash:1"],
        ),
        (
            format!("{}context:back\\slash:*", glob::escape(&root)),
            vec!["context:backslash:1"],
        ),
    ];

    let caches = Cache::both().await;
    for cache in &caches {
        cache.set(&keys).await;
    }
    let mut failures = Vec::new();
    for (pattern, expected) in &cases {
        let failed_before = failures.len();
        let expected: BTreeSet<String> = expected.iter().map(|id| format!("{root}{id}")).collect();
        let by_glob: BTreeSet<String> = keys
            .iter()
            .filter(|k| glob::matches(pattern.as_bytes(), k.as_bytes()))
            .cloned()
            .collect();
        if by_glob != expected {
            failures.push(format!("{pattern:?}: glob::matches selects {by_glob:?}"));
        }
        for cache in &caches {
            for count in [1, 1000] {
                let selected = cache.scan_all(pattern, count).await;
                if selected != expected {
                    failures.push(format!(
                        "{pattern:?}: {} (COUNT {count}) selects {selected:?}",
                        cache.name()
                    ));
                }
            }
        }
        if failures.len() > failed_before {
            failures.push(format!("{pattern:?}: expected {expected:?}"));
        }
    }
    for cache in &caches {
        cache.remove(&keys).await;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn star_alone_selects_the_empty_key_in_memory_and_valkey() {
    let _servers = services::shared().await;
    let key = format!("{}:k", unique("star"));
    let keys = vec![String::new(), key.clone()];
    let caches = Cache::both().await;
    let mut selected = Vec::new();
    for cache in &caches {
        cache.set(&keys).await;
        for pattern in ["*", "**", "?*", "*?"] {
            let found = cache.scan_all(pattern, 1000).await;
            selected.push((
                cache.name(),
                pattern,
                found.contains(""),
                found.contains(&key),
            ));
        }
    }
    for cache in &caches {
        cache.remove(&keys).await;
    }
    // SCAN treats the one-byte pattern `*` as "no pattern"; the matcher
    // itself never matches the empty key.
    assert!(!glob::matches(b"*", b""));
    for (backend, pattern, empty_key, other_key) in selected {
        assert_eq!(
            (empty_key, other_key),
            (pattern == "*", true),
            "{backend}: does {pattern:?} select the empty key, and {key:?}?"
        );
    }
}

// --- SCAN paging and UNLINK ---------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_scan_counts_return_every_matching_key_on_both_backends() {
    let _servers = services::shared().await;
    let root = format!("{}:", unique("paging"));
    let mut keys = Vec::new();
    for i in 0..600 {
        keys.push(format!("{root}ctx:{i}"));
        if i % 3 == 0 {
            keys.push(format!("{root}ctx:{i}:dev"));
        }
        if i < 300 {
            keys.push(format!("{root}other:{i}"));
        }
    }
    let escaped = glob::escape(&root);
    let patterns = [
        format!("{escaped}ctx:*"),
        format!("{escaped}ctx:*:dev"),
        format!("{escaped}*1?"),
        format!("{escaped}other:[0-4]*"),
    ];
    let caches = Cache::both().await;
    for cache in &caches {
        cache.set(&keys).await;
    }
    let mut failures = Vec::new();
    for count in [1, 7, 100] {
        for cache in &caches {
            let scans = patterns
                .iter()
                .map(|pattern| cache.scan_all(pattern, count));
            let results = futures::future::join_all(scans).await;
            for (pattern, selected) in patterns.iter().zip(results) {
                let expected: BTreeSet<String> = keys
                    .iter()
                    .filter(|k| glob::matches(pattern.as_bytes(), k.as_bytes()))
                    .cloned()
                    .collect();
                if selected != expected {
                    failures.push(format!(
                        "{} COUNT {count} {pattern:?}: {} selected, {} expected; missing {:?}, extra {:?}",
                        cache.name(),
                        selected.len(),
                        expected.len(),
                        expected.difference(&selected).take(10).collect::<Vec<_>>(),
                        selected.difference(&expected).take(10).collect::<Vec<_>>(),
                    ));
                }
            }
        }
    }
    for cache in &caches {
        cache.remove(&keys).await;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Scans `pattern` with `count`, unlinking each page's keys as it comes; if
/// `late` is given, writes a new key with that prefix every fifth page (at
/// most 40). Returns the total `UNLINK` count and the late keys written.
async fn sweep(cache: &Cache, pattern: &str, count: u32, late: Option<&str>) -> (u64, Vec<String>) {
    let backend = cache.backend();
    let (mut cursor, mut pages, mut deleted) = (0, 0, 0);
    let mut written = Vec::new();
    loop {
        let page = backend
            .scan(pattern, cursor, count)
            .await
            .unwrap_or_else(|e| panic!("{} scan: {e}", cache.name()));
        if !page.keys.is_empty() {
            deleted += backend
                .delete(&page.keys)
                .await
                .unwrap_or_else(|e| panic!("{} unlink: {e}", cache.name()));
        }
        pages += 1;
        if let Some(prefix) = late
            && pages % 5 == 0
            && written.len() < 40
        {
            let key = format!("{prefix}{pages}");
            cache.set(std::slice::from_ref(&key)).await;
            written.push(key);
        }
        if page.cursor == 0 {
            return (deleted, written);
        }
        cursor = page.cursor;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_with_deletes_misses_no_key_on_either_backend() {
    let _servers = services::shared().await;
    let caches = Cache::both().await;
    let mut failures = Vec::new();
    for (count, with_late_keys) in [(1, false), (7, false), (100, false), (7, true)] {
        for cache in &caches {
            let root = format!("{}:", unique("sweep"));
            let doomed: Vec<String> = (0..600).map(|i| format!("{root}del:{i}")).collect();
            let kept: Vec<String> = (0..300).map(|i| format!("{root}keep:{i}")).collect();
            cache.set(&doomed).await;
            cache.set(&kept).await;
            let escaped = glob::escape(&root);
            let late_prefix = format!("{root}del:late");
            let (deleted, late) = sweep(
                cache,
                &format!("{escaped}del:*"),
                count,
                with_late_keys.then_some(late_prefix.as_str()),
            )
            .await;
            let left = cache.scan_all(&format!("{escaped}*"), 1000).await;
            let late_left: Vec<&String> = late.iter().filter(|k| left.contains(*k)).collect();
            let mut expected_left: BTreeSet<String> = kept.iter().cloned().collect();
            expected_left.extend(late_left.iter().map(|k| (*k).clone()));
            let what = format!(
                "{} COUNT {count}{}",
                cache.name(),
                if with_late_keys {
                    ", keys added meanwhile"
                } else {
                    ""
                }
            );
            if left != expected_left {
                failures.push(format!(
                    "{what}: left {} keys, expected {}; doomed keys left {:?}, kept keys gone {:?}",
                    left.len(),
                    expected_left.len(),
                    doomed
                        .iter()
                        .filter(|k| left.contains(*k))
                        .take(10)
                        .collect::<Vec<_>>(),
                    kept.iter()
                        .filter(|k| !left.contains(*k))
                        .take(10)
                        .collect::<Vec<_>>(),
                ));
            }
            let expected_deleted = (doomed.len() + late.len() - late_left.len()) as u64;
            if deleted != expected_deleted {
                failures.push(format!(
                    "{what}: UNLINK counted {deleted}, {expected_deleted} keys were removed"
                ));
            }
            let mut all = doomed;
            all.extend(kept);
            all.extend(late);
            cache.remove(&all).await;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn unlink_counts_each_existing_key_once_on_both_backends() {
    let _servers = services::shared().await;
    // (keys that exist, keys named in one UNLINK, how many it removes)
    let cases: &[(&[&str], &[&str], u64)] = &[
        (&["a"], &["a"], 1),
        (&["a"], &["a", "a"], 1),
        (&["a"], &["a"; 10], 1),
        (&["a", "c"], &["a", "b", "a", "c", "b"], 2),
        (&[], &["b", "b"], 0),
        (&["a", "b", "c"], &["c", "b", "a", "a"], 3),
        // UNLINK names keys literally: `*` is not a glob here.
        (&["*", "x"], &["*"], 1),
        (&["a?", "ab"], &["a?", "a?"], 1),
        (&["ü", "u"], &["ü", "u", "ü"], 2),
    ];
    let root = format!("{}:", unique("unlink"));
    let caches = Cache::both().await;
    let mut failures = Vec::new();
    let mut written = Vec::new();
    for (i, (existing, named, removed)) in cases.iter().enumerate() {
        let case_root = format!("{root}{i}:");
        let existing: Vec<String> = existing.iter().map(|k| format!("{case_root}{k}")).collect();
        let named: Vec<String> = named.iter().map(|k| format!("{case_root}{k}")).collect();
        let mut outcomes = Vec::new();
        for cache in &caches {
            cache.set(&existing).await;
            let counted = cache
                .backend()
                .delete(&named)
                .await
                .unwrap_or_else(|e| panic!("{} unlink {named:?}: {e}", cache.name()));
            let left = cache
                .scan_all(&format!("{}*", glob::escape(&case_root)), 1000)
                .await;
            outcomes.push((cache.name(), counted, left));
        }
        let expected_left: BTreeSet<String> = existing
            .iter()
            .filter(|k| !named.contains(k))
            .cloned()
            .collect();
        for (backend, counted, left) in outcomes {
            if (counted, &left) != (*removed, &expected_left) {
                failures.push(format!(
                    "{backend}: with {existing:?}, UNLINK {named:?} counted {counted} and left \
                     {left:?}; expected {removed} and {expected_left:?}"
                ));
            }
        }
        written.extend(existing);
    }
    for cache in &caches {
        cache.remove(&written).await;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// --- Graph ------------------------------------------------------------------

/// One call of the `GraphBackend` trait.
#[derive(Debug, Clone)]
enum Op {
    Entity(NodeKey, Vec<(String, Value)>),
    Relation(NodeKey, String, NodeKey, Vec<(String, Value)>),
}

impl Op {
    async fn apply(&self, graph: &dyn GraphBackend) -> Result<(), BackendError> {
        match self {
            Op::Entity(node, properties) => graph.upsert_entity(node, properties).await,
            Op::Relation(source, kind, target, properties) => {
                graph
                    .upsert_relation(source, kind, target, properties)
                    .await
            }
        }
    }
}

type Properties = BTreeMap<String, Value>;
type Nodes = Vec<(NodeKey, Properties)>;
type Relations = Vec<(NodeKey, String, NodeKey, Properties)>;

fn node(label: &str, id: &str) -> NodeKey {
    NodeKey {
        label: label.to_string(),
        id: id.to_string(),
    }
}

fn props(pairs: &[(&str, Value)]) -> Vec<(String, Value)> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.clone()))
        .collect()
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn texts(items: &[&str]) -> Value {
    Value::TextList(items.iter().map(|s| s.to_string()).collect())
}

async fn neo4j_backend() -> Neo4jGraph {
    let url = neo4j_url();
    Neo4jGraph::connect(&url, "neo4j", "unused")
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

fn bolt_value(value: &BoltType) -> Value {
    match value {
        BoltType::Boolean(b) => Value::Boolean(b.value),
        BoltType::Integer(i) => Value::Integer(i.value),
        BoltType::Float(f) => Value::Float(f.value),
        BoltType::String(s) => Value::Text(s.value.clone()),
        BoltType::List(list) => Value::TextList(
            list.value
                .iter()
                .map(|item| match item {
                    BoltType::String(s) => s.value.clone(),
                    other => panic!("Neo4j holds a list item that is not text: {other:?}"),
                })
                .collect(),
        ),
        other => panic!("Neo4j holds a property value the backend never writes: {other:?}"),
    }
}

/// `properties(x)` as read back, with each integer taken from `toString`
/// (`ints`, pairs of key and decimal): neo4rs 0.8 decodes the one-byte
/// integers -16..=-1 as 240..=255, so the integers in `props` cannot be
/// trusted.
fn bolt_properties(props: &BoltType, ints: &BoltType) -> Properties {
    let BoltType::Map(map) = props else {
        panic!("properties(...) returned {props:?}");
    };
    let mut properties: Properties = map
        .value
        .iter()
        .filter(|(key, _)| key.value != "id")
        .map(|(key, value)| (key.value.clone(), bolt_value(value)))
        .collect();
    let BoltType::List(ints) = ints else {
        panic!("integer properties returned {ints:?}");
    };
    for pair in &ints.value {
        let BoltType::List(pair) = pair else {
            panic!("integer property returned {pair:?}");
        };
        let [BoltType::String(key), BoltType::String(decimal)] = pair.value.as_slice() else {
            panic!("integer property returned {pair:?}");
        };
        if key.value == "id" {
            continue;
        }
        let value: i64 = decimal.value.parse().unwrap();
        let slot = properties.get_mut(&key.value).unwrap();
        assert!(
            matches!(slot, Value::Integer(_)),
            "{} is {slot:?} and an integer",
            key.value
        );
        *slot = Value::Integer(value);
    }
    properties
}

/// Cypher for the properties of `x` as `props` and `ints`; see
/// [`bolt_properties`].
fn properties_of(x: &str) -> String {
    format!(
        "properties({x}) AS props, \
         [k IN keys({x}) WHERE {x}[k] IS :: INTEGER | [k, toString({x}[k])]] AS ints"
    )
}

fn row_properties(row: &neo4rs::Row) -> Properties {
    let props: BoltType = row.get("props").unwrap();
    let ints: BoltType = row.get("ints").unwrap();
    bolt_properties(&props, &ints)
}

async fn rows(graph: &Graph, cypher: &str) -> Vec<neo4rs::Row> {
    let mut stream = graph
        .execute(query(cypher))
        .await
        .unwrap_or_else(|e| panic!("{cypher}: {e}"));
    let mut rows = Vec::new();
    while let Some(row) = stream
        .next()
        .await
        .unwrap_or_else(|e| panic!("{cypher}: {e}"))
    {
        rows.push(row);
    }
    rows
}

/// Every node with one of `labels`, sorted, properties without `id`.
async fn neo4j_nodes(graph: &Graph, labels: &[&str]) -> Nodes {
    let mut nodes = Vec::new();
    for label in labels {
        let cypher = format!(
            "MATCH (n:`{label}`) RETURN n.id AS id, {}",
            properties_of("n")
        );
        for row in rows(graph, &cypher).await {
            let id: String = row.get("id").unwrap();
            nodes.push((node(label, &id), row_properties(&row)));
        }
    }
    nodes.sort_by(|a, b| a.0.cmp(&b.0));
    nodes
}

/// Every relation between nodes with `labels`, sorted; duplicates kept.
async fn neo4j_relations(graph: &Graph, labels: &[&str]) -> Relations {
    let mut relations = Vec::new();
    for source in labels {
        for target in labels {
            let cypher = format!(
                "MATCH (a:`{source}`)-[r]->(b:`{target}`) \
                 RETURN a.id AS source, type(r) AS kind, b.id AS target, {}",
                properties_of("r")
            );
            for row in rows(graph, &cypher).await {
                let source_id: String = row.get("source").unwrap();
                let kind: String = row.get("kind").unwrap();
                let target_id: String = row.get("target").unwrap();
                relations.push((
                    node(source, &source_id),
                    kind,
                    node(target, &target_id),
                    row_properties(&row),
                ));
            }
        }
    }
    relations.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
    relations
}

fn memory_nodes(graph: &MemoryGraph) -> Nodes {
    graph
        .nodes()
        .into_iter()
        .map(|n| (node(&n.label, &n.id), n.properties))
        .collect()
}

fn memory_relations(graph: &MemoryGraph) -> Relations {
    graph
        .relations()
        .into_iter()
        .map(|r| (r.source, r.kind, r.target, r.properties))
        .collect()
}

/// Deletes the nodes with `labels` and the constraints on those labels.
async fn drop_labels(graph: &Graph, labels: &[&str]) {
    for label in labels {
        graph
            .run(query(&format!("MATCH (n:`{label}`) DETACH DELETE n")))
            .await
            .unwrap();
        let constraints = rows(
            graph,
            &format!(
                "SHOW CONSTRAINTS YIELD name, labelsOrTypes \
                 WHERE '{label}' IN labelsOrTypes RETURN name"
            ),
        )
        .await;
        for row in constraints {
            let name: String = row.get("name").unwrap();
            graph
                .run(query(&format!("DROP CONSTRAINT `{name}` IF EXISTS")))
                .await
                .unwrap();
        }
    }
}

/// Where two graphs differ, entry by entry. Properties compare by `{:?}`,
/// which tells -0.0 from 0.0 and shows every float exactly.
fn graph_differences(memory: &(Nodes, Relations), neo4j: &(Nodes, Relations)) -> Vec<String> {
    fn group<K: Ord + Clone, I>(items: I) -> BTreeMap<K, Vec<String>>
    where
        I: IntoIterator<Item = (K, String)>,
    {
        let mut grouped: BTreeMap<K, Vec<String>> = BTreeMap::new();
        for (key, properties) in items {
            grouped.entry(key).or_default().push(properties);
        }
        grouped
    }
    fn compare<K: Ord + std::fmt::Debug>(
        what: &str,
        memory: &BTreeMap<K, Vec<String>>,
        neo4j: &BTreeMap<K, Vec<String>>,
        out: &mut Vec<String>,
    ) {
        let keys: BTreeSet<&K> = memory.keys().chain(neo4j.keys()).collect();
        for key in keys {
            let (left, right) = (memory.get(key), neo4j.get(key));
            if left != right {
                out.push(format!(
                    "{what} {key:?}: MemoryGraph {left:?}, Neo4j {right:?}"
                ));
            }
        }
    }
    let nodes = |graph: &(Nodes, Relations)| {
        group(
            graph
                .0
                .iter()
                .map(|(key, p)| (key.clone(), format!("{p:?}"))),
        )
    };
    let relations = |graph: &(Nodes, Relations)| {
        group(graph.1.iter().map(|(source, kind, target, p)| {
            (
                (source.clone(), kind.clone(), target.clone()),
                format!("{p:?}"),
            )
        }))
    };
    let mut out = Vec::new();
    compare("node", &nodes(memory), &nodes(neo4j), &mut out);
    compare("relation", &relations(memory), &relations(neo4j), &mut out);
    out
}

/// Applies `ops` in order to a fresh `MemoryGraph` and to Neo4j, then
/// compares every node and relation with `labels`.
async fn assert_same_graph(labels: &[&str], ops: &[Op], context: &str) {
    let memory = MemoryGraph::default();
    let neo4j = neo4j_backend().await;
    let reader = services::neo4j().await;
    let mut errors = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if let Err(e) = op.apply(&memory).await {
            errors.push(format!("op {i} {op:?}: memory: {e}"));
        }
        if let Err(e) = op.apply(&neo4j).await {
            errors.push(format!("op {i} {op:?}: neo4j: {e}"));
        }
    }
    let from_neo4j = (
        neo4j_nodes(&reader, labels).await,
        neo4j_relations(&reader, labels).await,
    );
    drop_labels(&reader, labels).await;
    assert!(errors.is_empty(), "{context}: {}", errors.join("\n"));
    let from_memory = (memory_nodes(&memory), memory_relations(&memory));
    let differences = graph_differences(&from_memory, &from_neo4j);
    assert!(
        differences.is_empty(),
        "{context}: MemoryGraph and Neo4j differ after {} operations ({} and {} nodes, {} and {} relations):\n{}",
        ops.len(),
        from_memory.0.len(),
        from_neo4j.0.len(),
        from_memory.1.len(),
        from_neo4j.1.len(),
        differences.join("\n")
    );
}

#[tokio::test]
async fn memory_graph_agrees_with_neo4j_on_upsert_sequences() {
    let _servers = services::shared().await;
    let (a, b) = (unique("DiffA"), unique("DiffB"));
    let (s1, odd) = (node(&a, "S1"), node(&a, "id with spaces/ü:*?[\\"));
    let (m1, m2, m3) = (node(&b, "M1"), node(&b, "M2"), node(&a, "M3"));
    let depends = "DEPENDS_ON".to_string();
    let ops = vec![
        Op::Entity(
            s1.clone(),
            props(&[
                ("phase", text("draft")),
                ("owner", text("ana")),
                ("points", Value::Integer(3)),
                ("ratio", Value::Float(0.5)),
                ("done", Value::Boolean(false)),
                ("tags", texts(&["a", "b"])),
            ]),
        ),
        // Merge: change some, remove one with null, keep the rest.
        Op::Entity(
            s1.clone(),
            props(&[
                ("phase", text("done")),
                ("owner", Value::Null),
                ("points", Value::Integer(-7)),
                ("done", Value::Boolean(true)),
            ]),
        ),
        Op::Entity(s1.clone(), vec![]),
        Op::Entity(node(&a, "S2"), vec![]),
        // Null on a property that does not exist, on a new node.
        Op::Entity(node(&a, "S3"), props(&[("gone", Value::Null)])),
        Op::Entity(
            odd.clone(),
            props(&[
                ("empty", text("")),
                ("unicode", text("中文 😀 \"q\" 'q' \\")),
                ("max", Value::Integer(i64::MAX)),
                ("min", Value::Integer(i64::MIN)),
                ("subnormal", Value::Float(5e-324)),
                ("negative_zero", Value::Float(-0.0)),
                ("huge", Value::Float(f64::MAX)),
                ("whole", Value::Float(2.0)),
                ("minus_one", Value::Integer(-1)),
                ("minus_sixteen", Value::Integer(-16)),
                ("minus_seventeen", Value::Integer(-17)),
                ("no_items", texts(&[])),
                ("odd_items", texts(&["", "中", "a,b"])),
            ]),
        ),
        // A property changing type.
        Op::Entity(
            s1.clone(),
            props(&[("points", text("three")), ("ratio", Value::Integer(1))]),
        ),
        // The same key twice in one call: the last one wins.
        Op::Entity(
            s1.clone(),
            props(&[("twice", text("first")), ("twice", text("second"))]),
        ),
        Op::Entity(
            s1.clone(),
            props(&[("tags", Value::Null), ("tags", texts(&["c"]))]),
        ),
        Op::Entity(
            odd.clone(),
            props(&[("empty", text("x")), ("empty", Value::Null)]),
        ),
        // Relations between nodes that do not exist yet.
        Op::Relation(
            s1.clone(),
            depends.clone(),
            m1.clone(),
            props(&[("weight", Value::Float(1.5))]),
        ),
        Op::Relation(m2.clone(), "OWNS".into(), m3.clone(), vec![]),
        // Re-upserting a relation merges its properties.
        Op::Relation(
            s1.clone(),
            depends.clone(),
            m1.clone(),
            props(&[("weight", Value::Null), ("since", Value::Integer(2024))]),
        ),
        Op::Relation(
            s1.clone(),
            depends.clone(),
            m1.clone(),
            props(&[("labels", texts(&["x", "y"]))]),
        ),
        // Another kind between the same pair, the reverse direction, a loop.
        Op::Relation(s1.clone(), "BLOCKS".into(), m1.clone(), vec![]),
        Op::Relation(
            m1.clone(),
            depends.clone(),
            s1.clone(),
            props(&[("back", Value::Boolean(true))]),
        ),
        Op::Relation(
            s1.clone(),
            depends.clone(),
            s1.clone(),
            props(&[("self", Value::Boolean(true))]),
        ),
        Op::Relation(
            odd.clone(),
            depends.clone(),
            m2.clone(),
            props(&[("gone", Value::Null)]),
        ),
        // Properties on nodes first created by a relation.
        Op::Entity(m1.clone(), props(&[("name", text("later"))])),
        Op::Entity(m3.clone(), props(&[("name", Value::Null)])),
        Op::Entity(
            s1.clone(),
            props(&[("phase", Value::Null), ("owner", Value::Null)]),
        ),
    ];
    assert_same_graph(&[&a, &b], &ops, "scripted sequence").await;
}

fn random_value(rng: &mut StdRng) -> Value {
    const TEXTS: &[&str] = &["", "draft", "done", "中文 😀", "a'b\"c", "x\\y", "null"];
    match rng.random_range(0..7) {
        0 | 1 => Value::Null,
        2 => Value::Boolean(rng.random()),
        3 => Value::Integer(if rng.random_bool(0.5) {
            *[0, 1, -1, i64::MAX, i64::MIN].choose(rng).unwrap()
        } else {
            rng.random()
        }),
        4 => Value::Float(if rng.random_bool(0.5) {
            *[0.0, -0.0, 0.5, 2.0, -2.5, 1e300, 5e-324, f64::MIN]
                .choose(rng)
                .unwrap()
        } else {
            rng.random_range(-1e6..1e6)
        }),
        5 => text(TEXTS.choose(rng).unwrap()),
        _ => Value::TextList(
            (0..rng.random_range(0..=3))
                .map(|_| TEXTS.choose(rng).unwrap().to_string())
                .collect(),
        ),
    }
}

#[tokio::test]
async fn memory_graph_agrees_with_neo4j_on_random_upserts() {
    let _servers = services::shared().await;
    let seed = seed(GRAPH_SEED);
    let mut rng = StdRng::seed_from_u64(seed);
    let labels = [unique("RandA"), unique("RandB")];
    let ids = ["s0", "s1", "s2", "s3", "with space", "ü-1", "a:b*"];
    let kinds = ["DEPENDS_ON", "BLOCKS"];
    let keys = ["phase", "owner", "points", "ratio", "tags", "done"];
    let random_node =
        |rng: &mut StdRng| node(labels.choose(rng).unwrap(), ids.choose(rng).unwrap());
    let random_props = |rng: &mut StdRng| -> Vec<(String, Value)> {
        (0..rng.random_range(0..=4))
            .map(|_| (keys.choose(rng).unwrap().to_string(), random_value(rng)))
            .collect()
    };
    let mut ops = Vec::with_capacity(GRAPH_OPS);
    for _ in 0..GRAPH_OPS {
        ops.push(if rng.random_bool(0.6) {
            Op::Entity(random_node(&mut rng), random_props(&mut rng))
        } else {
            Op::Relation(
                random_node(&mut rng),
                kinds.choose(&mut rng).unwrap().to_string(),
                random_node(&mut rng),
                random_props(&mut rng),
            )
        });
    }
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    assert_same_graph(
        &labels,
        &ops,
        &format!("seed {seed} (SWITCHYARD_TEST_SEED reruns it)"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_upserts_of_one_id_create_one_neo4j_node() {
    let _servers = services::shared().await;
    // A fresh backend and fresh labels: the 32 first writes also race to
    // create the labels' uniqueness constraints.
    let neo4j = Arc::new(neo4j_backend().await);
    let memory = MemoryGraph::default();
    let (a, b) = (unique("RaceA"), unique("RaceB"));
    let (story, other) = (node(&a, "S1"), node(&b, "T1"));
    let mut ops = Vec::new();
    for i in 0..32i64 {
        ops.push(Op::Entity(
            story.clone(),
            props(&[(&format!("w{i}"), Value::Boolean(true))]),
        ));
    }
    for i in 0..32i64 {
        ops.push(Op::Relation(
            story.clone(),
            "LINKS".into(),
            other.clone(),
            props(&[(&format!("w{i}"), Value::Integer(i))]),
        ));
    }
    let mut errors = Vec::new();
    // All entity upserts at once, then all relation upserts at once.
    for batch in ops.chunks(32) {
        let tasks: Vec<_> = batch
            .iter()
            .cloned()
            .map(|op| {
                let neo4j = neo4j.clone();
                tokio::spawn(async move {
                    op.apply(neo4j.as_ref())
                        .await
                        .map_err(|e| format!("{op:?}: {e}"))
                })
            })
            .collect();
        for task in tasks {
            if let Err(e) = task.await.unwrap() {
                errors.push(e);
            }
        }
        for op in batch {
            op.apply(&memory).await.unwrap();
        }
    }
    let reader = services::neo4j().await;
    let labels = [a.as_str(), b.as_str()];
    let from_neo4j = (
        neo4j_nodes(&reader, &labels).await,
        neo4j_relations(&reader, &labels).await,
    );
    drop_labels(&reader, &labels).await;
    assert!(
        errors.is_empty(),
        "concurrent upserts failed:\n{}",
        errors.join("\n")
    );
    assert_eq!(
        from_neo4j.0.iter().filter(|(key, _)| key == &story).count(),
        1,
        "nodes: {:#?}",
        from_neo4j.0
    );
    let from_memory = (memory_nodes(&memory), memory_relations(&memory));
    let differences = graph_differences(&from_memory, &from_neo4j);
    assert!(
        differences.is_empty(),
        "MemoryGraph and Neo4j differ after 32 concurrent entity and 32 concurrent relation \
         upserts:\n{}",
        differences.join("\n")
    );
}
