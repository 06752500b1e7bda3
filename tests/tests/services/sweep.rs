//! `delete-matching` on a real Valkey: the promise in `wit/cache.wit`,
//! kept by the backend's shared sweeper while other clients write.
//!
//! Keys go to database [`VALKEY_DB`], each test under its own prefix, so a
//! sweep walks only what these tests wrote.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redis::aio::MultiplexedConnection;
use switchyard::backend::CacheBackend;
use switchyard::backend::valkey::ValkeyCache;
use switchyard::glob::{self, Compiled};
use switchyard_tests::services::{unique, valkey_url};

/// The database these tests use.
const VALKEY_DB: u32 = 12;

fn db_url() -> String {
    let url = valkey_url();
    let host = url.find("://").map_or(0, |i| i + 3);
    let end = url[host..].find(['/', '?']).map_or(url.len(), |i| host + i);
    format!("{}/{VALKEY_DB}", &url[..end])
}

async fn raw() -> MultiplexedConnection {
    let url = db_url();
    redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

async fn set_all(connection: &MultiplexedConnection, keys: &[Vec<u8>]) {
    let mut connection = connection.clone();
    for chunk in keys.chunks(500) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("SET").arg(key.as_slice()).arg(1).ignore();
        }
        let () = pipe.query_async(&mut connection).await.unwrap();
    }
}

/// Every key under `prefix`, by a full `SCAN MATCH` iteration.
async fn keys_under(connection: &MultiplexedConnection, prefix: &[u8]) -> BTreeSet<Vec<u8>> {
    let mut pattern = glob::escape_bytes(prefix);
    pattern.push(b'*');
    valkey_match(connection, &pattern).await
}

/// What Valkey's own `SCAN MATCH pattern` returns over a full iteration.
async fn valkey_match(connection: &MultiplexedConnection, pattern: &[u8]) -> BTreeSet<Vec<u8>> {
    let mut connection = connection.clone();
    let mut found = BTreeSet::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
            .unwrap();
        found.extend(keys);
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

async fn delete_under(connection: &MultiplexedConnection, prefix: &[u8]) {
    let keys: Vec<Vec<u8>> = keys_under(connection, prefix).await.into_iter().collect();
    let mut connection = connection.clone();
    for chunk in keys.chunks(500) {
        let _: u64 = redis::cmd("UNLINK")
            .arg(chunk)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
}

fn key(prefix: &str, rest: &str) -> Vec<u8> {
    format!("{prefix}{rest}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_matching_deletes_every_matching_key_and_touches_no_other_while_clients_write() {
    let connection = raw().await;
    let prefix = unique("sweep-promise-");
    let cache = Arc::new(ValkeyCache::connect(&db_url()).await.unwrap());

    // 300 stories with 1-3 keys each, their look-alike neighbours, and a
    // background that no call names.
    let stories = 300;
    let mut owned = Vec::new();
    let mut neighbours = Vec::new();
    for i in 0..stories {
        owned.push(key(&prefix, &format!("S{i}")));
        for role in 0..(i % 3) {
            owned.push(key(&prefix, &format!("S{i}:role{role}")));
        }
        neighbours.push(key(&prefix, &format!("S{i}x")));
        neighbours.push(key(&prefix, &format!("S{i}x:role")));
    }
    let background: Vec<Vec<u8>> = (0..3000)
        .map(|i| key(&prefix, &format!("BG-{i}")))
        .collect();
    set_all(&connection, &owned).await;
    set_all(&connection, &neighbours).await;
    set_all(&connection, &background).await;

    // While the calls run, another client sets and deletes keys that match
    // no pattern (they must end as the writer left them) and creates keys
    // that do (they may or may not be deleted).
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (connection, prefix, stop) = (connection.clone(), prefix.clone(), stop.clone());
        tokio::spawn(async move {
            let mut connection = connection;
            let mut churn_left = BTreeSet::new();
            let mut appeared = BTreeSet::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let churn = key(&prefix, &format!("churn-{}", n % 200));
                if n.is_multiple_of(3) {
                    let _: u64 = redis::cmd("DEL")
                        .arg(churn.as_slice())
                        .query_async(&mut connection)
                        .await
                        .unwrap();
                    churn_left.remove(&churn);
                } else {
                    let () = redis::cmd("SET")
                        .arg(churn.as_slice())
                        .arg(n)
                        .query_async(&mut connection)
                        .await
                        .unwrap();
                    churn_left.insert(churn);
                }
                let late = key(&prefix, &format!("S{}:late{n}", n % stories));
                let () = redis::cmd("SET")
                    .arg(late.as_slice())
                    .arg(1)
                    .query_async(&mut connection)
                    .await
                    .unwrap();
                appeared.insert(late);
                n += 1;
            }
            (churn_left, appeared)
        })
    };

    // 600 calls at once: every story twice (overlapping calls), the second
    // time with the child pattern written as a class glob.
    let escaped = |s: &str| String::from_utf8(glob::escape_bytes(s.as_bytes())).unwrap();
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
                cache.delete_matching(&patterns).await.unwrap().deleted
            }));
        }
    }
    let mut counted = 0u64;
    for call in calls {
        counted += call.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (churn_left, appeared) = writer.await.unwrap();

    let left = keys_under(&connection, prefix.as_bytes()).await;
    let owned_left: Vec<_> = owned.iter().filter(|k| left.contains(*k)).collect();
    assert!(
        owned_left.is_empty(),
        "{} story keys that existed for the whole call were not deleted, e.g. {:?}",
        owned_left.len(),
        owned_left.first().map(|k| String::from_utf8_lossy(k))
    );
    for kept in neighbours.iter().chain(&background).chain(&churn_left) {
        assert!(
            left.contains(kept),
            "{} matches no pattern but was deleted",
            String::from_utf8_lossy(kept)
        );
    }
    for key in &left {
        let is_expected = neighbours.contains(key)
            || background.contains(key)
            || churn_left.contains(key)
            || appeared.contains(key);
        assert!(
            is_expected,
            "unexpected key {}",
            String::from_utf8_lossy(key)
        );
    }
    // Counts: each removed key counted once, by one call.
    let appeared_gone = appeared.iter().filter(|k| !left.contains(*k)).count() as u64;
    assert!(
        counted >= owned.len() as u64 && counted <= owned.len() as u64 + appeared_gone,
        "calls counted {counted}; {} story keys and {appeared_gone} keys created meanwhile were removed",
        owned.len()
    );
    let stats = cache.sweeps();
    let sweeps = stats.sweeps.load(Ordering::Relaxed);
    println!("600 calls served by {sweeps} sweeps");
    assert!(
        sweeps < 600,
        "calls were not coalesced: {sweeps} sweeps for 600 calls"
    );
    delete_under(&connection, prefix.as_bytes()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_matching_selects_what_valkey_match_selects_on_tricky_patterns() {
    let connection = raw().await;
    let prefix = unique("sweep-match-");
    let cache = ValkeyCache::connect(&db_url()).await.unwrap();
    let tails: &[&[u8]] = &[
        b"",
        b"a",
        b"ab",
        b"abc",
        b"a:b",
        b"a:",
        b":",
        b"*",
        b"?",
        b"[",
        b"]",
        b"\\",
        b"a*b",
        b"a?b",
        b"a[b",
        b"a]b",
        b"a\\b",
        b"\xff",
        b"a:\xff",
        b"\xff\xfe",
        b"A",
        b"z",
        b"-",
        b"^",
        b"a-z",
        b"aa:bb:cc",
        b"\x00",
        b"a b",
        b"\x7f",
        b"\x80",
    ];
    let keys: Vec<Vec<u8>> = tails
        .iter()
        .map(|t| [prefix.as_bytes(), t].concat())
        .collect();
    set_all(&connection, &keys).await;
    let p = glob::escape_bytes(prefix.as_bytes());
    let patterns: Vec<Vec<u8>> = [
        &b"*"[..],
        b"a*",
        b"a:*",
        b"a\\:*",
        b"a\\*b",
        b"a\\?b",
        b"a\\[b",
        b"a]b",
        b"a\\\\b",
        b"a?b",
        b"[a-c]*",
        b"[^a]*",
        b"[z-a]",
        b"[\\]]*",
        b"a[:*",
        b"a\\",
        b"\\",
        b"a[b",
        b"[\x80-\xff]*",
        b"[\x00-\x7f]",
        b"*:*",
        b"a*:*",
        b"?",
        b"??",
        b"[]",
        b"[^]]",
    ]
    .iter()
    .map(|tail| [p.as_slice(), tail].concat())
    .collect();
    for pattern in &patterns {
        let expected = valkey_match(&connection, pattern).await;
        let compiled = Compiled::new(pattern);
        let found: BTreeSet<Vec<u8>> = cache
            .find_matching(std::slice::from_ref(&compiled))
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(
            found,
            expected,
            "pattern {} ({compiled:?}): host sweep and Valkey's MATCH disagree",
            pattern.escape_ascii()
        );
        let by_matcher: BTreeSet<Vec<u8>> = keys
            .iter()
            .filter(|k| compiled.matches(k))
            .cloned()
            .collect();
        assert_eq!(by_matcher, expected, "pattern {}", pattern.escape_ascii());
    }
    delete_under(&connection, prefix.as_bytes()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_utf8_neither_blocks_a_scan_nor_survives_delete_matching() {
    let connection = raw().await;
    let prefix = unique("sweep-bytes-");
    let cache = ValkeyCache::connect(&db_url()).await.unwrap();
    let story = [prefix.as_bytes(), b"S-1"].concat();
    let keys = vec![
        story.clone(),
        [story.as_slice(), b":dev"].concat(),
        [story.as_slice(), b":\xff"].concat(),
    ];
    set_all(&connection, &keys).await;
    let mut pattern = glob::escape_bytes(&story);
    pattern.extend_from_slice(b":*");
    let pattern_text = String::from_utf8(pattern.clone()).unwrap();

    // A scan hands back what a string can carry and skips the rest.
    let page = cache.scan(&pattern_text, 0, 1000).await.unwrap();
    assert_eq!(page.cursor, 0);
    assert_eq!(page.keys, [format!("{prefix}S-1:dev")]);

    let swept = cache
        .delete_matching(&[
            Compiled::new(&glob::escape_bytes(&story)),
            Compiled::new(&pattern),
        ])
        .await
        .unwrap();
    assert_eq!(swept.deleted, 3);
    assert!(keys_under(&connection, prefix.as_bytes()).await.is_empty());
}
