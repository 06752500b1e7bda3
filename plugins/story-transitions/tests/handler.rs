//! `handle` against a scripted host: it replays the scan pages and errors
//! a test sets up and records every call. These tests check what the
//! handler asks of the host and what it returns; how a real cache matches
//! patterns is for `keys`' tests and the integration tests against a real
//! server.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test reports by panicking

use std::collections::{HashMap, HashSet, VecDeque};

use story_transitions::{DEFAULT_RETRY_BASE_MS, Host, handle};
use switchyard_plugin::cache::ScanPage;
use switchyard_plugin::event::Event;
use switchyard_plugin::graph::Value;
use switchyard_plugin::log::Level;
use switchyard_plugin::outcome::Outcome;
use switchyard_plugin::types::Error;

type Properties = Vec<(String, Value)>;
type LogFields = Vec<(String, String)>;

#[derive(Default)]
struct Scripted {
    config: HashMap<String, String>,
    /// Replies to successive `scan` calls.
    pages: VecDeque<ScanPage>,
    /// Keys that exist, for `delete`'s count.
    existing: HashSet<String>,
    /// An error for the first call whose name (`scan`, `delete`, `upsert`) matches.
    fail: Option<(&'static str, Error)>,
    calls: Vec<String>,
    deleted: Vec<Vec<String>>,
    upserts: Vec<(String, String, Properties)>,
    logs: Vec<(Level, String, LogFields)>,
    expected_cursor: u64,
}

impl Scripted {
    fn with_pages(pages: &[(u64, &[&str])]) -> Self {
        let pages = pages
            .iter()
            .map(|(cursor, keys)| ScanPage {
                cursor: *cursor,
                keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            })
            .collect();
        Self {
            pages,
            ..Self::default()
        }
    }

    fn existing(mut self, keys: &[&str]) -> Self {
        self.existing = keys.iter().map(|k| (*k).to_owned()).collect();
        self
    }

    fn failing(mut self, call: &'static str, error: Error) -> Self {
        self.fail = Some((call, error));
        self
    }

    fn configured(mut self, key: &str, value: &str) -> Self {
        self.config.insert(key.to_owned(), value.to_owned());
        self
    }

    fn injected(&mut self, call: &'static str) -> Result<(), Error> {
        match self.fail.take() {
            Some((name, error)) if name == call => Err(error),
            other => {
                self.fail = other;
                Ok(())
            }
        }
    }

    fn effect_calls(&self) -> Vec<&str> {
        self.calls
            .iter()
            .map(String::as_str)
            .filter(|c| !c.starts_with("config"))
            .collect()
    }

    fn log_field(&self, message: &str, name: &str) -> Option<String> {
        self.logs
            .iter()
            .find(|(_, m, _)| m == message)
            .and_then(|(_, _, fields)| fields.iter().find(|(k, _)| k == name))
            .map(|(_, v)| v.clone())
    }
}

impl Host for Scripted {
    fn config(&mut self, key: &str) -> Option<String> {
        self.calls.push(format!("config {key}"));
        // Most of these tests follow the per-event scan; the
        // delete-matching ones configure it.
        match self.config.get(key) {
            None if key == "invalidation" => Some("scan".to_owned()),
            value => value.cloned(),
        }
    }
    fn scan(&mut self, pattern: &str, cursor: u64, count: u32) -> Result<ScanPage, Error> {
        self.calls.push(format!("scan {pattern} {cursor} {count}"));
        assert_eq!(
            cursor, self.expected_cursor,
            "scan must continue from the last cursor"
        );
        self.injected("scan")?;
        let page = self.pages.pop_front().unwrap_or(ScanPage {
            cursor: 0,
            keys: Vec::new(),
        });
        self.expected_cursor = page.cursor;
        Ok(page)
    }
    fn delete(&mut self, keys: &[String]) -> Result<u64, Error> {
        self.calls.push(format!("delete {}", keys.join(" ")));
        self.injected("delete")?;
        self.deleted.push(keys.to_vec());
        Ok(keys.iter().filter(|k| self.existing.remove(*k)).count() as u64)
    }
    fn delete_matching(&mut self, patterns: &[String]) -> Result<u64, Error> {
        self.calls
            .push(format!("delete-matching {}", patterns.join(" ")));
        self.injected("delete-matching")?;
        Ok(self.existing.len() as u64)
    }
    fn upsert_entity(
        &mut self,
        label: &str,
        id: &str,
        properties: &[(String, Value)],
    ) -> Result<(), Error> {
        self.calls.push(format!("upsert {label} {id}"));
        self.injected("upsert")?;
        self.upserts
            .push((label.to_owned(), id.to_owned(), properties.to_vec()));
        Ok(())
    }
    fn log(&mut self, level: Level, message: &str, fields: &[(String, String)]) {
        self.logs.push((level, message.to_owned(), fields.to_vec()));
    }
}

fn event(payload: &str, delivery_attempt: u32) -> Event {
    Event {
        subject: "planning.story.transitioned".to_owned(),
        payload: payload.as_bytes().to_vec(),
        headers: Vec::new(),
        stream_sequence: 7,
        delivery_attempt,
        published_at_ms: 1_700_000_000_000,
    }
}

const FLAT: &str = r#"{"story_id":"S-1","from_phase":"design","to_phase":"build","timestamp":"2025-01-01T00:00:00Z"}"#;

fn is_ack(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Ack)
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::Text(t) => Some(t),
        _ => None,
    }
}

#[test]
fn upserts_node_then_deletes_bare_key_then_scanned_children() {
    let mut host = Scripted::with_pages(&[(0, &["context:S-1:dev", "context:S-1:qa"])])
        .existing(&["context:S-1", "context:S-1:dev", "context:S-1:qa"]);
    let outcome = handle(&mut host, &event(FLAT, 1));
    assert!(is_ack(&outcome), "{outcome:?}");
    assert_eq!(
        host.effect_calls(),
        [
            "upsert PhaseTransition S-1:2025-01-01T00:00:00Z",
            "delete context:S-1",
            "scan context:S-1:* 0 500",
            "delete context:S-1:dev context:S-1:qa",
        ]
    );
    assert_eq!(
        host.log_field("invalidated story context", "keys_deleted")
            .as_deref(),
        Some("3")
    );
    assert_eq!(
        host.log_field("invalidated story context", "node_id")
            .as_deref(),
        Some("S-1:2025-01-01T00:00:00Z")
    );
    assert_eq!(
        host.log_field("invalidated story context", "from_phase")
            .as_deref(),
        Some("design")
    );
}

#[test]
fn records_transition_properties_with_null_for_a_missing_phase() {
    let mut host = Scripted::default();
    let outcome = handle(
        &mut host,
        &event(
            r#"{"payload":{"story_id":"S-2","to_state":"done"},"timestamp":1700}"#,
            1,
        ),
    );
    assert!(is_ack(&outcome));
    let [(label, id, props)] = host.upserts.as_slice() else {
        panic!("one upsert expected: {:?}", host.upserts)
    };
    assert_eq!(
        (label.as_str(), id.as_str()),
        ("PhaseTransition", "S-2:1700")
    );
    let names: Vec<&str> = props.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["story_id", "from_phase", "to_phase", "timestamp"]);
    assert_eq!(text(&props[0].1), Some("S-2"));
    assert!(matches!(props[1].1, Value::Null));
    assert_eq!(text(&props[2].1), Some("done"));
    assert_eq!(text(&props[3].1), Some("1700"));
}

#[test]
fn follows_the_cursor_until_it_returns_to_zero() {
    let mut host =
        Scripted::with_pages(&[(17, &[]), (42, &["context:S-1:a"]), (0, &["context:S-1:b"])])
            .existing(&["context:S-1:a", "context:S-1:b"]);
    assert!(is_ack(&handle(&mut host, &event(FLAT, 1))));
    let scans: Vec<&str> = host
        .effect_calls()
        .into_iter()
        .filter(|c| c.starts_with("scan"))
        .collect();
    assert_eq!(
        scans,
        [
            "scan context:S-1:* 0 500",
            "scan context:S-1:* 17 500",
            "scan context:S-1:* 42 500"
        ]
    );
    assert_eq!(
        host.log_field("invalidated story context", "keys_deleted")
            .as_deref(),
        Some("2")
    );
}

#[test]
fn deletes_each_key_once_when_scan_repeats_it() {
    let mut host = Scripted::with_pages(&[
        (5, &["context:S-1:a", "context:S-1:a"]),
        (0, &["context:S-1:a", "context:S-1:b"]),
    ]);
    assert!(is_ack(&handle(&mut host, &event(FLAT, 1))));
    assert_eq!(
        host.deleted,
        [
            vec!["context:S-1".to_owned()],
            vec!["context:S-1:a".to_owned()],
            vec!["context:S-1:b".to_owned()]
        ]
    );
}

#[test]
fn never_deletes_scanned_keys_outside_the_story() {
    let mut host = Scripted::with_pages(&[(
        0,
        &[
            "context:S-10",
            "context:S-10:dev",
            "context:S-1",
            "context:S-1:ok",
        ],
    )]);
    assert!(is_ack(&handle(&mut host, &event(FLAT, 1))));
    assert_eq!(
        host.deleted,
        [
            vec!["context:S-1".to_owned()],
            vec!["context:S-1:ok".to_owned()]
        ]
    );
    let skipped = host
        .logs
        .iter()
        .filter(|(l, m, _)| *l == Level::Warn && m.contains("outside its prefix"))
        .count();
    assert_eq!(skipped, 3);
}

#[test]
fn counts_only_keys_that_existed() {
    let mut host = Scripted::with_pages(&[(0, &["context:S-1:a", "context:S-1:gone"])])
        .existing(&["context:S-1:a"]);
    assert!(is_ack(&handle(&mut host, &event(FLAT, 1))));
    assert_eq!(
        host.log_field("invalidated story context", "keys_deleted")
            .as_deref(),
        Some("1")
    );
}

#[test]
fn escapes_story_id_in_scan_pattern() {
    let mut host = Scripted::default();
    let payload = r#"{"story_id":"S*[1]?\\","timestamp":"t"}"#;
    assert!(is_ack(&handle(&mut host, &event(payload, 1))));
    assert!(
        host.calls
            .contains(&r"scan context:S\*\[1\]\?\\:* 0 500".to_owned()),
        "{:?}",
        host.calls
    );
    assert!(
        host.calls.contains(&r"delete context:S*[1]?\".to_owned()),
        "{:?}",
        host.calls
    );
}

#[test]
fn uses_configured_key_prefix() {
    let mut host = Scripted::default().configured("key_prefix", "ctx:v2:");
    assert!(is_ack(&handle(&mut host, &event(FLAT, 1))));
    assert_eq!(
        host.effect_calls()[1..],
        ["delete ctx:v2:S-1", "scan ctx:v2:S-1:* 0 500"]
    );
}

#[test]
fn rejects_unparseable_payload_without_cache_or_graph_calls() {
    for payload in [
        "",
        "not json",
        "[]",
        r#"{"timestamp":"t"}"#,
        r#"{"story_id":"S"}"#,
    ] {
        let mut host = Scripted::default();
        let outcome = handle(&mut host, &event(payload, 1));
        assert!(
            matches!(&outcome, Outcome::Reject(_)),
            "{payload}: {outcome:?}"
        );
        assert!(
            host.effect_calls().is_empty(),
            "{payload}: {:?}",
            host.calls
        );
        assert!(
            host.calls.is_empty(),
            "no host call at all before a parse reject: {:?}",
            host.calls
        );
        assert_eq!(
            host.logs.first().map(|(l, m, _)| (*l, m.as_str())),
            Some((Level::Warn, "rejected event"))
        );
    }
    let mut host = Scripted::default();
    let Outcome::Reject(reason) = handle(&mut host, &event(r#"{"timestamp":"t"}"#, 1)) else {
        panic!()
    };
    assert_eq!(reason, "missing `story_id`");
}

#[test]
fn rejects_an_id_whose_escaped_pattern_exceeds_the_key_limit_before_any_effect() {
    // 2,100 bytes of id, 4,200 once escaped: under the limit as a key,
    // over it as a pattern.
    let story_id = "*".repeat(2_100);
    let payload = format!(r#"{{"story_id":"{story_id}","timestamp":"t"}}"#);
    for invalidation in ["delete-matching", "scan"] {
        let mut host = Scripted::default().configured("invalidation", invalidation);
        let Outcome::Reject(reason) = handle(&mut host, &event(&payload, 1)) else {
            panic!("{invalidation}: not rejected")
        };
        assert!(reason.contains("over the 4096-byte limit"), "{reason}");
        assert!(
            host.effect_calls().is_empty(),
            "{invalidation}: effects before the reject: {:?}",
            host.calls
        );
    }
}

#[test]
fn rejects_a_story_id_with_the_separator_before_any_effect() {
    let mut host = Scripted::default().existing(&["context:S-1:dev", "context:S-1:dev:x"]);
    let outcome = handle(
        &mut host,
        &event(r#"{"story_id":"S-1:dev","timestamp":"t"}"#, 1),
    );
    let Outcome::Reject(reason) = outcome else {
        panic!("not rejected: {outcome:?}")
    };
    assert!(reason.contains("contains `:`"), "{reason}");
    assert!(host.effect_calls().is_empty(), "{:?}", host.calls);
}

#[test]
fn retries_unavailable_cache_with_exponential_backoff() {
    for (attempt, delay) in [
        (0, 500),
        (1, 500),
        (2, 1000),
        (3, 2000),
        (6, 16_000),
        (7, 30_000),
        (1000, 30_000),
    ] {
        let mut host = Scripted::default()
            .failing("scan", Error::Unavailable("connection refused".to_owned()));
        let outcome = handle(&mut host, &event(FLAT, attempt));
        assert!(
            matches!(outcome, Outcome::Retry(Some(d)) if d == delay),
            "attempt {attempt}: {outcome:?}"
        );
    }
    let mut host =
        Scripted::default().failing("scan", Error::Unavailable("connection refused".to_owned()));
    handle(&mut host, &event(FLAT, 2));
    let error = host
        .log_field("retrying event", "error")
        .unwrap_or_default();
    assert_eq!(
        error,
        r#"cache.scan of pattern "context:S-1:*" failed (unavailable): connection refused"#
    );
    assert_eq!(
        host.log_field("retrying event", "delay_ms").as_deref(),
        Some("1000")
    );
}

#[test]
fn retries_other_errors_with_the_same_backoff() {
    let mut host = Scripted::default().failing("upsert", Error::Other("deadlock".to_owned()));
    let outcome = handle(&mut host, &event(FLAT, 3));
    assert!(matches!(outcome, Outcome::Retry(Some(2000))), "{outcome:?}");
    // Nothing after the failed call.
    assert_eq!(
        host.effect_calls(),
        ["upsert PhaseTransition S-1:2025-01-01T00:00:00Z"]
    );
}

#[test]
fn retries_when_a_delete_fails_midway() {
    // The bare-key delete succeeds; the page's delete fails.
    let host = Scripted::with_pages(&[(0, &["context:S-1:a"])])
        .existing(&["context:S-1", "context:S-1:a"]);
    let mut host = FailSecondDelete(host);
    let outcome = handle(&mut host, &event(FLAT, 1));
    assert!(matches!(outcome, Outcome::Retry(Some(500))), "{outcome:?}");
    assert!(
        host.0
            .logs
            .iter()
            .all(|(_, m, _)| m != "invalidated story context")
    );
}

/// Fails the second `delete` call with `unavailable`.
struct FailSecondDelete(Scripted);

impl Host for FailSecondDelete {
    fn config(&mut self, key: &str) -> Option<String> {
        self.0.config(key)
    }
    fn scan(&mut self, pattern: &str, cursor: u64, count: u32) -> Result<ScanPage, Error> {
        self.0.scan(pattern, cursor, count)
    }
    fn delete(&mut self, keys: &[String]) -> Result<u64, Error> {
        if self.0.deleted.len() == 1 {
            return Err(Error::Unavailable("timeout".to_owned()));
        }
        self.0.delete(keys)
    }
    fn delete_matching(&mut self, patterns: &[String]) -> Result<u64, Error> {
        self.0.delete_matching(patterns)
    }
    fn upsert_entity(
        &mut self,
        label: &str,
        id: &str,
        properties: &[(String, Value)],
    ) -> Result<(), Error> {
        self.0.upsert_entity(label, id, properties)
    }
    fn log(&mut self, level: Level, message: &str, fields: &[(String, String)]) {
        self.0.log(level, message, fields);
    }
}

#[test]
fn rejects_denied_cache_call_naming_the_call_and_key() {
    let mut host =
        Scripted::default().failing("delete", Error::Denied("key outside grant".to_owned()));
    let outcome = handle(&mut host, &event(FLAT, 1));
    let Outcome::Reject(reason) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        reason,
        r#"cache.delete of key "context:S-1" failed (denied): key outside grant"#
    );
    assert_eq!(
        host.log_field("rejected event", "reason").as_deref(),
        Some(reason.as_str())
    );
}

#[test]
fn rejects_invalid_graph_call_naming_the_call_and_node() {
    let mut host = Scripted::default().failing("upsert", Error::Invalid("bad label".to_owned()));
    let outcome = handle(&mut host, &event(FLAT, 1));
    let Outcome::Reject(reason) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        reason,
        r#"graph.upsert-entity of PhaseTransition "S-1:2025-01-01T00:00:00Z" failed (invalid): bad label"#
    );
    assert!(host.deleted.is_empty());
}

#[test]
fn uses_configured_retry_settings() {
    let mut host = Scripted::default()
        .configured("retry_base_ms", "100")
        .configured("retry_max_ms", "250")
        .failing("scan", Error::Unavailable("down".to_owned()));
    assert!(matches!(
        handle(&mut host, &event(FLAT, 2)),
        Outcome::Retry(Some(200))
    ));
    let mut host = Scripted::default()
        .configured("retry_base_ms", "100")
        .configured("retry_max_ms", "250")
        .failing("scan", Error::Unavailable("down".to_owned()));
    assert!(matches!(
        handle(&mut host, &event(FLAT, 3)),
        Outcome::Retry(Some(250))
    ));
}

#[test]
fn falls_back_to_default_retry_settings_when_invalid() {
    let mut host = Scripted::default()
        .configured("retry_base_ms", "soon")
        .failing("scan", Error::Unavailable("down".to_owned()));
    assert!(matches!(
        handle(&mut host, &event(FLAT, 1)),
        Outcome::Retry(Some(500))
    ));
    assert!(
        host.logs
            .iter()
            .any(|(l, m, _)| *l == Level::Error && m.starts_with("invalid retry setting"))
    );
}

#[test]
fn retries_a_scan_whose_cursor_never_returns_to_zero() {
    struct Endless(Scripted);
    impl Host for Endless {
        fn config(&mut self, key: &str) -> Option<String> {
            self.0.config(key)
        }
        fn scan(&mut self, _: &str, _: u64, _: u32) -> Result<ScanPage, Error> {
            Ok(ScanPage {
                cursor: 1,
                keys: Vec::new(),
            })
        }
        fn delete(&mut self, keys: &[String]) -> Result<u64, Error> {
            self.0.delete(keys)
        }
        fn delete_matching(&mut self, patterns: &[String]) -> Result<u64, Error> {
            self.0.delete_matching(patterns)
        }
        fn upsert_entity(
            &mut self,
            label: &str,
            id: &str,
            properties: &[(String, Value)],
        ) -> Result<(), Error> {
            self.0.upsert_entity(label, id, properties)
        }
        fn log(&mut self, level: Level, message: &str, fields: &[(String, String)]) {
            self.0.log(level, message, fields);
        }
    }
    let mut host = Endless(Scripted::default());
    assert!(matches!(
        handle(&mut host, &event(FLAT, 1)),
        Outcome::Retry(Some(500))
    ));
}

#[test]
fn invalidates_with_one_delete_matching_call_after_the_graph_write() {
    let mut host = Scripted::default()
        .configured("invalidation", "delete-matching")
        .existing(&["context:S*1", "context:S*1:dev"]);
    let outcome = handle(&mut host, &event(PAYLOAD_S_STAR_1, 1));
    assert!(matches!(outcome, Outcome::Ack), "{outcome:?}");
    assert_eq!(
        host.effect_calls(),
        [
            "upsert PhaseTransition S*1:2026-01-01T00:00:00Z",
            "delete-matching context:S\\*1 context:S\\*1:*",
        ]
    );
    assert_eq!(
        host.log_field("invalidated story context", "keys_deleted")
            .as_deref(),
        Some("2")
    );
}

#[test]
fn retries_or_rejects_a_failed_delete_matching_by_its_error() {
    let mut host = Scripted::default()
        .configured("invalidation", "delete-matching")
        .failing("delete-matching", Error::Unavailable("down".to_owned()));
    let outcome = handle(&mut host, &event(PAYLOAD_S_STAR_1, 1));
    assert!(
        matches!(outcome, Outcome::Retry(Some(DEFAULT_RETRY_BASE_MS))),
        "{outcome:?}"
    );
    let mut host = Scripted::default()
        .configured("invalidation", "delete-matching")
        .failing("delete-matching", Error::Denied("outside".to_owned()));
    let Outcome::Reject(reason) = handle(&mut host, &event(PAYLOAD_S_STAR_1, 1)) else {
        panic!("a denied call rejects the event");
    };
    assert!(
        reason.starts_with("cache.delete-matching of \"context:S\\\\*1\""),
        "{reason}"
    );
}

const PAYLOAD_S_STAR_1: &str = r#"{"story_id": "S*1", "from_phase": "a", "to_phase": "b", "timestamp": "2026-01-01T00:00:00Z"}"#;

#[test]
fn falls_back_to_delete_matching_when_invalidation_is_invalid() {
    let mut host = Scripted::default().configured("invalidation", "sweep");
    assert!(is_ack(&handle(&mut host, &event(FLAT, 1))));
    assert_eq!(
        host.effect_calls()[1..],
        ["delete-matching context:S-1 context:S-1:*"]
    );
    let message = "invalid invalidation setting, using the default";
    assert_eq!(
        host.log_field(message, "value").as_deref(),
        Some("\"sweep\"")
    );
    assert_eq!(
        host.log_field(message, "default").as_deref(),
        Some("delete-matching")
    );
}
