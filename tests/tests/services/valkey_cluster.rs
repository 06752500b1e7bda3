//! The cache backend on a real three-primary Valkey cluster, started by
//! `scripts/clusters up valkey`, its seed nodes in
//! `SWITCHYARD_CLUSTER_VALKEY_URLS` (`eval "$(scripts/clusters env)"`). A
//! missing cluster fails these tests, as a missing server fails the others.
//!
//! Each test writes under a prefix of its own. Keys are spread over every
//! hash slot: one hash-tagged key per slot, beside keys without a tag. The
//! test that kills a primary holds [`FAULTS`] exclusively, so it never
//! lands in the middle of another test of this module.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt as _;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use switchyard::backend::valkey::ValkeyOptions;
use switchyard::backend::valkey_cluster::ValkeyClusterCache;
use switchyard::backend::{BackendError, CacheBackend, Swept};
use switchyard::glob::{self, Compiled};
use switchyard_tests::artifacts::built_plugin;
use switchyard_tests::services;

use crate::support::{HANDLER, Names, Options, TestService, service_config, transition};

const SLOTS: usize = 16384;
const SETTLE: Duration = Duration::from_secs(90);

/// Held shared by every test here, exclusively by the one killing a node.
static FAULTS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The cluster's seed node URLs, failing the test when they are not set.
fn seeds() -> Vec<String> {
    const VARIABLE: &str = "SWITCHYARD_CLUSTER_VALKEY_URLS";
    match std::env::var(VARIABLE) {
        Ok(value) if !value.trim().is_empty() => {
            value.split(',').map(|u| u.trim().to_string()).collect()
        }
        _ => panic!(
            "{VARIABLE} is not set: this test needs a real Valkey cluster. Start it with \
             `scripts/clusters up valkey` and export `scripts/clusters env` \
             (`eval \"$(scripts/clusters env)\"`)."
        ),
    }
}

/// Runs `scripts/clusters ACTION NODE` (`kill valkey-2`, `start valkey-2`).
fn clusters(action: &str, node: &str) {
    let script = std::env::var("SWITCHYARD_CLUSTERS").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/clusters").to_string()
    });
    let status = std::process::Command::new(&script)
        .args([action, node])
        .status()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(
        status.success(),
        "`{script} {action} {node}` failed: {status}"
    );
}

async fn backend() -> ValkeyClusterCache {
    ValkeyClusterCache::connect_with(&seeds(), &ValkeyOptions::default())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the cluster at {:?}: {e}", seeds()))
}

/// A client of the test's own, not the backend under test.
async fn client() -> ClusterConnection {
    redis::cluster::ClusterClient::new(seeds())
        .unwrap()
        .get_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the cluster at {:?}: {e}", seeds()))
}

/// A hash tag for each slot: `tags()[s]` hashes to slot `s`.
fn tags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        let mut by_slot: HashMap<Slot, String> = HashMap::new();
        let mut i = 0u64;
        while by_slot.len() < SLOTS {
            let tag = format!("t{i}");
            by_slot.entry(Slot::for_key(&tag)).or_insert(tag);
            i += 1;
        }
        (0..SLOTS as u16)
            .map(|s| by_slot.remove(&Slot::new(s).unwrap()).unwrap())
            .collect()
    })
}

/// `prefix` + one hash-tagged key per slot + `untagged` keys without a tag.
fn spread(prefix: &str, untagged: usize) -> Vec<String> {
    let mut keys: Vec<String> = tags().iter().map(|t| format!("{prefix}{{{t}}}")).collect();
    keys.extend((0..untagged).map(|i| format!("{prefix}u{i}")));
    keys
}

async fn set_all<K: AsRef<[u8]>>(connection: &ClusterConnection, keys: &[K]) {
    futures::stream::iter(keys)
        .map(|key| {
            let mut connection = connection.clone();
            async move {
                let () = redis::cmd("SET")
                    .arg(key.as_ref())
                    .arg(1)
                    .query_async(&mut connection)
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(256)
        .collect::<Vec<()>>()
        .await;
}

/// Every key under `prefix`, read from each seed node by its own `SCAN`
/// (the seeds are the cluster's primaries).
async fn keys_under(prefix: &str) -> BTreeSet<Vec<u8>> {
    try_keys_under(prefix)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn try_keys_under(prefix: &str) -> Result<BTreeSet<Vec<u8>>, String> {
    let mut pattern = glob::escape_bytes(prefix.as_bytes());
    pattern.push(b'*');
    let mut found = BTreeSet::new();
    for url in seeds() {
        let mut node = redis::Client::open(url.as_str())
            .map_err(|e| format!("{url}: {e}"))?
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern.as_slice())
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut node)
                .await
                .map_err(|e| format!("SCAN on {url}: {e}"))?;
            found.extend(keys);
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(found)
}

async fn delete_under(cache: &ValkeyClusterCache, prefix: &str) {
    let mut pattern = glob::escape_bytes(prefix.as_bytes());
    pattern.push(b'*');
    cache
        .delete_matching(&[Compiled::new(&pattern)])
        .await
        .unwrap();
}

fn escaped(text: &str) -> String {
    String::from_utf8(glob::escape_bytes(text.as_bytes())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_scan_cursor_returns_every_key_of_every_primary_exactly_once() {
    let _faults = FAULTS.read().await;
    let connection = client().await;
    let cache = backend().await;
    let prefix = services::unique("cl-scan-");
    let keys = spread(&prefix, 3000);
    set_all(&connection, &keys).await;
    assert_eq!(cache.primaries().len(), 3, "{:?}", cache.primaries());

    let pattern = format!("{}*", escaped(&prefix));
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut pages_per_primary = [0u32; 3];
    let mut cursor = 0u64;
    let mut steps = 0;
    loop {
        let page = cache.scan(&pattern, cursor, 1000).await.unwrap();
        pages_per_primary[(cursor >> 56) as usize] += u32::from(!page.keys.is_empty());
        for key in page.keys {
            *seen.entry(key).or_default() += 1;
        }
        steps += 1;
        assert!(steps < 10_000, "the scan never ended");
        if page.cursor == 0 {
            break;
        }
        cursor = page.cursor;
    }
    let expected: BTreeSet<String> = keys.iter().cloned().collect();
    let found: BTreeSet<String> = seen.keys().cloned().collect();
    let missing: Vec<_> = expected.difference(&found).take(5).collect();
    assert!(missing.is_empty(), "the scan missed keys, e.g. {missing:?}");
    let extra: Vec<_> = found.difference(&expected).take(5).collect();
    assert!(
        extra.is_empty(),
        "the scan returned keys never written: {extra:?}"
    );
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "keys returned more than once: {twice:?}");
    assert!(
        pages_per_primary.iter().all(|&n| n > 0),
        "every primary holds keys and gave pages: {pages_per_primary:?}"
    );
    delete_under(&cache, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_overlapping_delete_matching_counts_exactly_and_keeps_other_keys_while_clients_write()
 {
    let _faults = FAULTS.read().await;
    let connection = client().await;
    let cache = Arc::new(backend().await);
    let prefix = services::unique("cl-sweep-");

    // 200 stories: a bare key, 1-3 children (some hash-tagged, so they
    // share a slot), look-alike neighbours, and a background over every
    // slot that no call names.
    let stories = 200;
    let mut owned: Vec<Vec<String>> = Vec::new();
    let mut neighbours = Vec::new();
    for i in 0..stories {
        let story = format!("{prefix}S{i}");
        let mut keys = vec![story.clone()];
        for role in 0..=(i % 3) {
            keys.push(if i % 2 == 0 {
                format!("{story}:{{{story}}}role{role}")
            } else {
                format!("{story}:role{role}")
            });
        }
        owned.push(keys);
        neighbours.push(format!("{story}x"));
        neighbours.push(format!("{story}x:role"));
    }
    let background = spread(&format!("{prefix}BG-"), 0);
    let all_owned: Vec<String> = owned.iter().flatten().cloned().collect();
    set_all(&connection, &all_owned).await;
    set_all(&connection, &neighbours).await;
    set_all(&connection, &background).await;

    // Meanwhile another client sets and deletes keys no pattern matches
    // (they must end as it left them) and creates keys that do match, for
    // even stories only: the odd stories' counts are exact.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut connection, prefix, stop) = (connection.clone(), prefix.clone(), stop.clone());
        tokio::spawn(async move {
            let mut churn_left = BTreeSet::new();
            let mut late: Vec<BTreeSet<String>> = vec![BTreeSet::new(); stories];
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let churn = format!("{prefix}churn-{}", n % 200);
                if n.is_multiple_of(3) {
                    let _: u64 = redis::cmd("DEL")
                        .arg(&churn)
                        .query_async(&mut connection)
                        .await
                        .unwrap();
                    churn_left.remove(&churn);
                } else {
                    let () = redis::cmd("SET")
                        .arg(&churn)
                        .arg(n)
                        .query_async(&mut connection)
                        .await
                        .unwrap();
                    churn_left.insert(churn);
                }
                let story = (n * 2) % stories;
                let key = format!("{prefix}S{story}:late{n}");
                let () = redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .query_async(&mut connection)
                    .await
                    .unwrap();
                late[story].insert(key);
                n += 1;
            }
            (churn_left, late)
        })
    };

    // Every story twice at once (overlapping calls), the second time with
    // the child pattern as a class glob.
    let mut calls = Vec::new();
    for round in 0..2 {
        for i in 0..stories {
            let cache = cache.clone();
            let bare = escaped(&format!("{prefix}S{i}"));
            let child = if round == 0 {
                format!("{bare}:*")
            } else {
                format!("{bare}[:]*")
            };
            calls.push(tokio::spawn(async move {
                let patterns = [
                    Compiled::new(bare.as_bytes()),
                    Compiled::new(child.as_bytes()),
                ];
                (i, cache.delete_matching(&patterns).await.unwrap().deleted)
            }));
        }
    }
    let mut counted = vec![0u64; stories];
    for call in calls {
        let (story, deleted) = call.await.unwrap();
        counted[story] += deleted;
    }
    stop.store(true, Ordering::Relaxed);
    let (churn_left, late) = writer.await.unwrap();

    let left = keys_under(&prefix).await;
    let left_text: BTreeSet<String> = left
        .iter()
        .map(|k| String::from_utf8(k.clone()).unwrap())
        .collect();
    for (story, keys) in owned.iter().enumerate() {
        for key in keys {
            assert!(
                !left_text.contains(key),
                "{key} existed for the whole call but is left"
            );
        }
        let late_gone = late[story]
            .iter()
            .filter(|k| !left_text.contains(*k))
            .count() as u64;
        let (low, high) = (keys.len() as u64, keys.len() as u64 + late_gone);
        assert!(
            (low..=high).contains(&counted[story]),
            "story {story}: its two calls counted {}, but {low} of its keys and {late_gone} \
             created meanwhile were removed",
            counted[story]
        );
        if late[story].is_empty() {
            assert_eq!(
                counted[story], low,
                "story {story} had no key created meanwhile"
            );
        }
    }
    for kept in neighbours.iter().chain(&background).chain(&churn_left) {
        assert!(
            left_text.contains(kept),
            "{kept} matches no pattern but was deleted"
        );
    }
    for key in &left_text {
        let expected = neighbours.contains(key)
            || background.contains(key)
            || churn_left.contains(key)
            || late.iter().any(|l| l.contains(key));
        assert!(expected, "unexpected key {key}");
    }
    let sweeps = cache.sweeps().sweeps.load(Ordering::Relaxed);
    assert!(
        sweeps < 400,
        "calls were not coalesced: {sweeps} sweeps for 400 calls"
    );
    delete_under(&cache, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_keys_on_many_slots_are_deleted_in_one_call_each_counted_once() {
    let _faults = FAULTS.read().await;
    let connection = client().await;
    let cache = backend().await;
    let prefix = services::unique("cl-exact-");
    // Keys on every slot, several sharing a tag, and names that do not exist.
    let mut doomed = spread(&format!("{prefix}a"), 300);
    doomed.extend((0..20).map(|i| format!("{prefix}{{shared}}{i}")));
    let kept = spread(&format!("{prefix}b"), 300);
    set_all(&connection, &doomed).await;
    set_all(&connection, &kept).await;
    let mut named = doomed.clone();
    named.extend((0..50).map(|i| format!("{prefix}never-{i}")));
    named.push(doomed[0].clone());

    let deleted = cache.delete(&named).await.unwrap();
    assert_eq!(deleted, doomed.len() as u64);
    let left = keys_under(&prefix).await;
    assert_eq!(left.len(), kept.len(), "only the keys not named are left");
    assert_eq!(
        cache.delete(&named).await.unwrap(),
        0,
        "nothing left to delete"
    );

    // The same through delete-matching with exact patterns: each existing
    // key reported once.
    set_all(&connection, &doomed).await;
    let patterns: Vec<Compiled> = named
        .iter()
        .map(|k| Compiled::new(escaped(k).as_bytes()))
        .collect();
    let swept = cache.delete_matching(&patterns).await.unwrap();
    assert_eq!(swept.deleted, doomed.len() as u64);
    let reported: BTreeSet<String> = swept
        .keys
        .into_iter()
        .map(|k| String::from_utf8(k).unwrap())
        .collect();
    let expected: BTreeSet<String> = doomed.iter().cloned().collect();
    let wrong: Vec<_> = reported.difference(&expected).take(5).collect();
    assert!(wrong.is_empty(), "reported but not deleted: {wrong:?}");
    assert_eq!(
        reported.len(),
        expected.len().min(Swept::MAX_KEYS_KEPT),
        "the keys deleted are reported, up to the most kept"
    );
    assert_eq!(keys_under(&prefix).await.len(), kept.len());
    delete_under(&cache, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn story_transitions_on_the_cluster_deletes_every_story_key_over_every_slot_and_keeps_the_rest()
 {
    let _faults = FAULTS.read().await;
    let _servers = services::shared().await;
    let connection = client().await;

    // 64 stories; their child keys together cover every slot.
    let stories: Vec<String> = (0..64)
        .map(|i| services::unique(&format!("CL{i}-")))
        .collect();
    let mut story_keys = Vec::new();
    let mut background = Vec::new();
    for (i, story) in stories.iter().enumerate() {
        story_keys.push(format!("context:{story}"));
        for tag in &tags()[i * 256..(i + 1) * 256] {
            story_keys.push(format!("context:{story}:{{{tag}}}"));
        }
        background.push(format!("context:{story}x"));
        background.push(format!("context:{story}x:{{{}}}", tags()[i]));
        background.push(format!("context:other-{story}:developer"));
    }
    background.extend(spread(&services::unique("context:BG-"), 500));
    set_all(&connection, &story_keys).await;
    set_all(&connection, &background).await;

    let names = Names::new("cl");
    let options = Options {
        plugin: built_plugin("story_transitions"),
        ..Options::default()
    };
    let config = service_config(&names, &options, None)
        .set("cache", "url", seeds().join(","))
        .set("cache", "cluster", true)
        .parse();
    let service = TestService::run(names, HANDLER, config, None).await;
    let timestamp = services::unique("cluster#");
    for story in &stories {
        service.publish(transition(story, &timestamp)).await;
    }
    let exist = |keys: Vec<String>| {
        let connection = connection.clone();
        async move {
            let mut total = 0u64;
            for key in keys {
                let n: u64 = redis::cmd("EXISTS")
                    .arg(&key)
                    .query_async(&mut connection.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                total += n;
            }
            Ok::<u64, String>(total)
        }
    };
    services::eventually(SETTLE, "every story key deleted", || async {
        match exist(story_keys.clone()).await? {
            0 => Ok(()),
            left => Err(format!("{left} of {} story keys left", story_keys.len())),
        }
    })
    .await;
    service.settled(SETTLE).await;
    assert!(service.dead_letters().await.is_empty());
    assert_eq!(
        exist(background.clone()).await.unwrap(),
        background.len() as u64,
        "every key that is not a story's is kept"
    );
    service.stop().await;
    let cache = backend().await;
    let keys: Vec<String> = background.clone();
    assert_eq!(cache.delete(&keys).await.unwrap(), keys.len() as u64);
}

/// Starts the node again when dropped, so the cluster is whole after the
/// test, whatever happened in it.
struct Restart(&'static str);

impl Drop for Restart {
    fn drop(&mut self) {
        clusters("start", self.0);
    }
}

fn is_unavailable<T: std::fmt::Debug>(result: &Result<T, BackendError>) -> bool {
    matches!(result, Err(BackendError::Unavailable { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_fails_calls_unavailable_reports_nothing_undone_and_recovers_after_start()
{
    let _faults = FAULTS.write().await;
    let connection = client().await;
    let cache = Arc::new(backend().await);
    let prefix = services::unique("cl-fault-");
    let keys = spread(&prefix, 0);
    set_all(&connection, &keys).await;
    let pattern = Compiled::new(format!("{}*", escaped(&prefix)).as_bytes());

    clusters("kill", "valkey-2");
    let restart = Restart("valkey-2");
    // Every kind of call needs the killed primary, so each fails as
    // `unavailable`, the concurrent calls of one sweep all together.
    let sweeps: Vec<_> = (0..8)
        .map(|_| {
            let (cache, pattern) = (cache.clone(), pattern.clone());
            tokio::spawn(async move { cache.delete_matching(&[pattern]).await })
        })
        .collect();
    for sweep in sweeps {
        let result = sweep.await.unwrap();
        assert!(is_unavailable(&result), "delete-matching: {result:?}");
    }
    let deleted = cache.delete(&keys).await;
    assert!(is_unavailable(&deleted), "delete: {deleted:?}");
    let mut cursor = 0u64;
    let scanned = loop {
        match cache
            .scan(&format!("{}*", escaped(&prefix)), cursor, 1000)
            .await
        {
            Ok(page) if page.cursor == 0 => break Ok(page),
            Ok(page) => cursor = page.cursor,
            Err(error) => break Err(error),
        }
    };
    assert!(is_unavailable(&scanned), "scan: {scanned:?}");
    assert!(
        cache.ping().await.is_err(),
        "a cluster missing a primary is not ready"
    );

    drop(restart);
    // Calls work again once the node is back. The failed calls may have
    // deleted keys (their commands that reached a live node), and may
    // still be deleting some, but reported none: the first call that
    // succeeds counts at most what was left.
    let swept = services::eventually(SETTLE, "delete-matching works again", || async {
        let before = try_keys_under(&prefix).await?.len() as u64;
        let call = cache.delete_matching(std::slice::from_ref(&pattern));
        match tokio::time::timeout(Duration::from_secs(30), call).await {
            Ok(r) => r
                .map(|swept| (before, swept.deleted))
                .map_err(|e| e.to_string()),
            Err(_) => panic!("delete-matching did not return within 30 s"),
        }
    })
    .await;
    assert!(
        swept.1 <= swept.0,
        "the sweep counted {} but {} keys were left",
        swept.1,
        swept.0
    );
    assert!(keys_under(&prefix).await.is_empty());
    // With the cluster whole, exact counts again (on a client of the
    // test's own that did not see the node die).
    let connection = client().await;
    set_all(&connection, &keys).await;
    let swept = cache
        .delete_matching(std::slice::from_ref(&pattern))
        .await
        .unwrap();
    assert_eq!(swept.deleted, keys.len() as u64, "every key counted once");
    set_all(&connection, &keys).await;
    assert_eq!(cache.delete(&keys).await.unwrap(), keys.len() as u64);
    assert!(keys_under(&prefix).await.is_empty());
    cache.ping().await.unwrap();
}
