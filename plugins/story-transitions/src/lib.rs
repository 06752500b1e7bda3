//! `story-transitions`: on each `planning.story.transitioned` event,
//! invalidate the story's cached context and record the transition as a
//! `PhaseTransition` node.
//!
//! Map of the code:
//!
//! - [`transition`] (pure): payload bytes → [`transition::Transition`] or a
//!   [`transition::Rejection`] naming the problem.
//! - [`keys`] (pure): which cache keys a story owns and the escaped
//!   patterns that select exactly them.
//! - this file: [`handle`], the effect orchestration, written against the
//!   [`Host`] trait; [`Imports`], the `Host` that calls the component's
//!   imports; and the `Guest` export that joins the two.
//!
//! What one event does:
//!
//! 1. Parse the payload. A rejection dead-letters the event before any
//!    cache or graph call is made.
//! 2. Read the configuration: `key_prefix` (default `context:`),
//!    `retry_base_ms` (default 500), `retry_max_ms` (default 30000),
//!    `invalidation` (`delete-matching`, the default, or `scan`).
//! 3. Upsert `(:PhaseTransition {id: "<story_id>:<timestamp>"})` with the
//!    properties `story_id`, `from_phase`, `to_phase` and `timestamp`.
//! 4. Invalidate with one `delete-matching` call naming the escaped bare
//!    key `<prefix><story_id>` and the escaped `<prefix><story_id>:*`: the
//!    host sweeps the keyspace once for many events. With
//!    `invalidation = "scan"` (the per-event design this plugin used before
//!    0.1.1, kept for comparison), delete the bare key by name, then scan
//!    the pattern page by page, deleting each page's keys after checking
//!    they belong to the story, until the cursor is 0.
//! 5. Ack, logging how many keys were deleted.
//!
//! The graph goes before the cache, as with any source of truth and its
//! cache: a reader that misses the cache after step 4 re-renders from a
//! graph that already holds the transition, while cache-first would let a
//! reader in between re-cache context rendered from the old graph after the
//! invalidation. Both steps are idempotent, so a retry after a failure in
//! either just runs them again. With the cache step last, a retry after a
//! graph failure has deleted nothing yet, so the `keys_deleted` logged on
//! the ack counts all the story's keys (after a failure midway through the
//! invalidation, only those that were left).
//!
//! Host errors: `unavailable` and `other` retry the event after an
//! exponential backoff (`retry_base_ms * 2^(delivery_attempt - 1)`, capped at
//! `retry_max_ms`); `denied` and `invalid` reject it with a reason naming
//! the call and its key or node. The event is acked only when every call
//! succeeded.

pub mod keys;
pub mod transition;

use std::collections::HashSet;

use switchyard_plugin::cache::{self, ScanPage};
use switchyard_plugin::event::Event;
use switchyard_plugin::graph::{self, Value};
use switchyard_plugin::log::{self, Level};
use switchyard_plugin::outcome::Outcome;
use switchyard_plugin::types::Error;
use switchyard_plugin::{Guest, config};

use keys::StoryKeys;
use transition::{Transition, quote};

/// Label of the node recording a transition.
pub const NODE_LABEL: &str = "PhaseTransition";
/// Key prefix used when `key_prefix` is not configured.
pub const DEFAULT_KEY_PREFIX: &str = "context:";
/// First retry delay, in milliseconds, when `retry_base_ms` is not configured.
pub const DEFAULT_RETRY_BASE_MS: u64 = 500;
/// Longest retry delay, in milliseconds, when `retry_max_ms` is not configured.
pub const DEFAULT_RETRY_MAX_MS: u64 = 30_000;
/// Keys asked for per `SCAN` call.
pub const SCAN_COUNT: u32 = 500;
/// Scan pages after which a scan that has not finished is abandoned and the
/// event retried: a guard against a cursor that never returns to 0.
pub const MAX_SCAN_PAGES: u32 = 100_000;

/// What the handler needs from its host. [`Imports`] implements it with
/// the component's imports; tests implement it with scripted doubles.
pub trait Host {
    fn config(&mut self, key: &str) -> Option<String>;
    fn scan(&mut self, pattern: &str, cursor: u64, count: u32) -> Result<ScanPage, Error>;
    fn delete(&mut self, keys: &[String]) -> Result<u64, Error>;
    fn delete_matching(&mut self, patterns: &[String]) -> Result<u64, Error>;
    fn upsert_entity(
        &mut self,
        label: &str,
        id: &str,
        properties: &[(String, Value)],
    ) -> Result<(), Error>;
    fn log(&mut self, level: Level, message: &str, fields: &[(String, String)]);
}

/// The [`Host`] backed by the component's imports (only callable inside a
/// Switchyard host; natively the imports are stubs).
pub struct Imports;

impl Host for Imports {
    fn config(&mut self, key: &str) -> Option<String> {
        config::get(key)
    }
    fn scan(&mut self, pattern: &str, cursor: u64, count: u32) -> Result<ScanPage, Error> {
        cache::scan(pattern, cursor, count)
    }
    fn delete(&mut self, keys: &[String]) -> Result<u64, Error> {
        cache::delete(keys)
    }
    fn delete_matching(&mut self, patterns: &[String]) -> Result<u64, Error> {
        cache::delete_matching(patterns)
    }
    fn upsert_entity(
        &mut self,
        label: &str,
        id: &str,
        properties: &[(String, Value)],
    ) -> Result<(), Error> {
        graph::upsert_entity(label, id, properties)
    }
    fn log(&mut self, level: Level, message: &str, fields: &[(String, String)]) {
        log::log(level, message, fields);
    }
}

/// The component export.
pub struct StoryTransitions;

impl Guest for StoryTransitions {
    fn handle(event: Event) -> Outcome {
        handle(&mut Imports, &event)
    }
}

/// The export glue; only the component build has it, so native builds
/// (tests, fuzzing) define no `handle` symbol.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // the generated export crosses the component ABI
mod component {
    use super::StoryTransitions;
    switchyard_plugin::export!(StoryTransitions);
}

/// The handler's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub key_prefix: String,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub invalidation: Invalidation,
}

/// How the story's keys are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// One `delete-matching` call; the host shares one sweep between events.
    DeleteMatching,
    /// A `scan` of the story's pattern per event, and `delete`s.
    Scan,
}

impl Settings {
    /// Reads the configuration. A retry setting that is not a whole number
    /// of milliseconds is logged as an error and replaced by its default:
    /// it shapes only the backoff, never what the event does.
    pub fn load(host: &mut impl Host) -> Self {
        let key_prefix = host
            .config("key_prefix")
            .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned());
        let retry_base_ms = millis(host, "retry_base_ms", DEFAULT_RETRY_BASE_MS);
        let retry_max_ms = millis(host, "retry_max_ms", DEFAULT_RETRY_MAX_MS);
        let invalidation = match host.config("invalidation").as_deref() {
            Some("scan") => Invalidation::Scan,
            None | Some("delete-matching") => Invalidation::DeleteMatching,
            Some(other) => {
                let fields = fields(&[
                    ("key", "invalidation".to_owned()),
                    ("value", quote(other)),
                    ("default", "delete-matching".to_owned()),
                ]);
                host.log(
                    Level::Error,
                    "invalid invalidation setting, using the default",
                    &fields,
                );
                Invalidation::DeleteMatching
            }
        };
        Self {
            key_prefix,
            retry_base_ms,
            retry_max_ms,
            invalidation,
        }
    }

    /// The retry delay for a delivery: `base * 2^(attempt - 1)`, capped at
    /// the maximum (attempt 0 counts as 1).
    pub fn backoff_ms(&self, delivery_attempt: u32) -> u64 {
        let doublings = delivery_attempt.saturating_sub(1);
        let factor = 1u64.checked_shl(doublings).unwrap_or(u64::MAX);
        self.retry_base_ms
            .saturating_mul(factor)
            .min(self.retry_max_ms)
    }
}

fn millis(host: &mut impl Host, key: &str, default: u64) -> u64 {
    match host.config(key) {
        None => default,
        Some(text) => text.trim().parse().unwrap_or_else(|_| {
            let fields = fields(&[
                ("key", key.to_owned()),
                ("value", quote(&text)),
                ("default", default.to_string()),
            ]);
            host.log(
                Level::Error,
                "invalid retry setting, using the default",
                &fields,
            );
            default
        }),
    }
}

/// A failed host call, named for the reason it produces.
struct Failure {
    /// The call and what it was about, e.g. `cache.delete of key "context:S-1"`.
    call: String,
    error: Error,
}

/// Handles one event against `host`. See the crate docs for the steps.
pub fn handle(host: &mut impl Host, event: &Event) -> Outcome {
    let transition = match transition::parse(&event.payload) {
        Ok(transition) => transition,
        Err(rejection) => {
            let reason = rejection.to_string();
            host.log(
                Level::Warn,
                "rejected event",
                &fields(&[("reason", reason.clone())]),
            );
            return Outcome::Reject(reason);
        }
    };
    let settings = Settings::load(host);
    let node_id = transition.node_id();
    let keys = StoryKeys::new(&settings.key_prefix, &transition.story_id);
    // Everything the effects need is checked before the first one, so an
    // event is either handled or rejected with nothing done.
    if let Err(reason) = keys.check_lengths() {
        host.log(
            Level::Warn,
            "rejected event",
            &fields(&[("reason", reason.clone())]),
        );
        return Outcome::Reject(reason);
    }
    match apply(host, &settings, &transition, &node_id, &keys) {
        Ok(keys_deleted) => {
            host.log(
                // Per event: at debug, so a busy host at `info` does not
                // spend more on the line than on the event. The host's
                // metrics count every key deleted.
                Level::Debug,
                "invalidated story context",
                &fields(&[
                    ("story_id", transition.story_id.clone()),
                    ("keys_deleted", keys_deleted.to_string()),
                    (
                        "from_phase",
                        transition.from_phase.clone().unwrap_or_default(),
                    ),
                    ("to_phase", transition.to_phase.clone().unwrap_or_default()),
                    ("node_id", node_id),
                ]),
            );
            Outcome::Ack
        }
        Err(failure) => settle_failure(host, &settings, event, &transition, failure),
    }
}

/// Runs the effects: the graph upsert, then the invalidation. Returns how
/// many keys were deleted.
fn apply(
    host: &mut impl Host,
    settings: &Settings,
    transition: &Transition,
    node_id: &str,
    keys: &StoryKeys,
) -> Result<u64, Failure> {
    let properties = vec![
        (
            "story_id".to_owned(),
            Value::Text(transition.story_id.clone()),
        ),
        (
            "from_phase".to_owned(),
            text_or_null(&transition.from_phase),
        ),
        ("to_phase".to_owned(), text_or_null(&transition.to_phase)),
        (
            "timestamp".to_owned(),
            Value::Text(transition.timestamp.clone()),
        ),
    ];
    host.upsert_entity(NODE_LABEL, node_id, &properties)
        .map_err(|error| Failure {
            call: format!("graph.upsert-entity of {NODE_LABEL} {}", quote(node_id)),
            error,
        })?;
    match settings.invalidation {
        Invalidation::DeleteMatching => delete_matching(host, keys),
        Invalidation::Scan => invalidate(host, keys),
    }
}

/// Deletes the story's bare key and every `<bare>:…` key in one call;
/// returns how many existed.
fn delete_matching(host: &mut impl Host, keys: &StoryKeys) -> Result<u64, Failure> {
    let patterns = [keys.bare_pattern(), keys.scan_pattern().to_owned()];
    host.delete_matching(&patterns).map_err(|error| Failure {
        call: format!(
            "cache.delete-matching of {} and {}",
            quote(&patterns[0]),
            quote(&patterns[1])
        ),
        error,
    })
}

/// Deletes the story's bare key and every `<bare>:…` key with a scan of its
/// own; returns how many existed.
fn invalidate(host: &mut impl Host, keys: &StoryKeys) -> Result<u64, Failure> {
    let bare = keys.bare_key().to_owned();
    let mut deleted = host
        .delete(std::slice::from_ref(&bare))
        .map_err(|error| Failure {
            call: format!("cache.delete of key {}", quote(&bare)),
            error,
        })?;

    // SCAN may return a key more than once; each is deleted once.
    let mut seen: HashSet<String> = HashSet::new();
    let mut cursor = 0;
    for _ in 0..MAX_SCAN_PAGES {
        let page = host
            .scan(keys.scan_pattern(), cursor, SCAN_COUNT)
            .map_err(|error| Failure {
                call: format!("cache.scan of pattern {}", quote(keys.scan_pattern())),
                error,
            })?;
        let mut batch = Vec::new();
        for key in page.keys {
            if !keys.is_child(&key) {
                // The pattern should make this impossible; never delete outside the story.
                host.log(
                    Level::Warn,
                    "scan returned a key outside the story, skipped",
                    &fields(&[
                        ("key", quote(&key)),
                        ("pattern", keys.scan_pattern().to_owned()),
                    ]),
                );
            } else if seen.insert(key.clone()) {
                batch.push(key);
            }
        }
        if !batch.is_empty() {
            deleted += host.delete(&batch).map_err(|error| Failure {
                call: format!(
                    "cache.delete of {} key(s) matching {} (first {})",
                    batch.len(),
                    quote(keys.scan_pattern()),
                    quote(batch.first().map_or("", String::as_str)),
                ),
                error,
            })?;
        }
        cursor = page.cursor;
        if cursor == 0 {
            return Ok(deleted);
        }
    }
    Err(Failure {
        call: format!("cache.scan of pattern {}", quote(keys.scan_pattern())),
        error: Error::Other(format!("no end after {MAX_SCAN_PAGES} pages")),
    })
}

/// Maps a failed call onto the event's outcome, and logs it.
fn settle_failure(
    host: &mut impl Host,
    settings: &Settings,
    event: &Event,
    transition: &Transition,
    failure: Failure,
) -> Outcome {
    let (kind, message) = match &failure.error {
        Error::Unavailable(m) => ("unavailable", m),
        Error::Denied(m) => ("denied", m),
        Error::Invalid(m) => ("invalid", m),
        Error::Other(m) => ("other", m),
    };
    let error = format!("{} failed ({kind}): {message}", failure.call);
    match failure.error {
        Error::Denied(_) | Error::Invalid(_) => {
            host.log(
                Level::Warn,
                "rejected event",
                &fields(&[
                    ("reason", error.clone()),
                    ("story_id", transition.story_id.clone()),
                ]),
            );
            Outcome::Reject(error)
        }
        Error::Unavailable(_) | Error::Other(_) => {
            let delay_ms = settings.backoff_ms(event.delivery_attempt);
            host.log(
                Level::Warn,
                "retrying event",
                &fields(&[
                    ("error", error),
                    ("story_id", transition.story_id.clone()),
                    ("delivery_attempt", event.delivery_attempt.to_string()),
                    ("delay_ms", delay_ms.to_string()),
                ]),
            );
            Outcome::Retry(Some(delay_ms))
        }
    }
}

fn text_or_null(value: &Option<String>) -> Value {
    value
        .as_ref()
        .map_or(Value::Null, |v| Value::Text(v.clone()))
}

fn fields(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    //! Orchestration tests against a scripted host: it replays the scan pages
    //! and errors a test sets up and records every call. They check what the
    //! handler asks of the host and what it returns; they make no claim about
    //! how a real cache matches patterns (that is [`keys`]'s job, and the
    //! integration tests' against a real server).

    use std::collections::{HashMap, VecDeque};

    use super::*;

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
            .filter(|(l, m, _)| *l == Level::Warn && m.contains("outside the story"))
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
        let mut host = Scripted::default()
            .failing("scan", Error::Unavailable("connection refused".to_owned()));
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
        let mut host =
            Scripted::default().failing("upsert", Error::Invalid("bad label".to_owned()));
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
    fn backoff_saturates_instead_of_overflowing() {
        let settings = Settings {
            key_prefix: String::new(),
            retry_base_ms: u64::MAX / 2,
            retry_max_ms: u64::MAX,
            invalidation: Invalidation::DeleteMatching,
        };
        assert_eq!(settings.backoff_ms(u32::MAX), u64::MAX);
        assert_eq!(settings.backoff_ms(3), u64::MAX);
        let settings = Settings {
            key_prefix: String::new(),
            retry_base_ms: 500,
            retry_max_ms: 30_000,
            invalidation: Invalidation::DeleteMatching,
        };
        assert_eq!(settings.backoff_ms(64), 30_000);
        assert_eq!(settings.backoff_ms(65), 30_000);
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
}
