//! A test guest that records each delivery it runs as a graph node, so a
//! test can read back which events ran, how often, in what order and for
//! how long.
//!
//! The payload is a JSON object:
//!
//! - `run` (string): a name of the test's own, part of every node id.
//! - `key` (string), `n` (integer): the event's ordering key and its
//!   position among the events of that key.
//! - `sleep_ms` (integer, optional): how long to sleep before recording.
//! - `retry_until` (integer, optional): return `retry(20 ms)` while the
//!   delivery attempt is below this.
//! - `reject` (string, optional): reject with this reason, recording
//!   nothing, unless the handler's configuration has `accept_rejects`.
//!
//! The object may also sit in an envelope's `payload` field.
//! Each delivery that gets past `retry_until` upserts
//! `(:Handled {id: "<run>:<key>:<n>:<attempt>"})` with the properties
//! `run`, `key`, `n`, `attempt`, `started_ns` and `finished_ns` (wall clock,
//! nanoseconds since the Unix epoch), and `trace`, the event's `Trace-Id`
//! header (empty without one). A payload that is not such an object
//! is rejected with a reason naming the problem.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value as Json;
use switchyard_plugin::event::Event;
use switchyard_plugin::graph::{self, Value};
use switchyard_plugin::outcome::Outcome;
use switchyard_plugin::types::Error;
use switchyard_plugin::{Guest, config};

struct Recorder;

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

impl Guest for Recorder {
    fn handle(event: Event) -> Outcome {
        let started_ns = now_ns();
        let Ok(Json::Object(mut fields)) = serde_json::from_slice::<Json>(&event.payload) else {
            return Outcome::Reject("payload is not a JSON object".into());
        };
        if let Some(Json::Object(inner)) = fields.remove("payload") {
            fields = inner;
        }
        if let Some(reason) = fields.get("reject").and_then(Json::as_str)
            && config::get("accept_rejects").is_none()
        {
            return Outcome::Reject(reason.to_string());
        }
        let (Some(run), Some(key), Some(n)) = (
            fields.get("run").and_then(Json::as_str),
            fields.get("key").and_then(Json::as_str),
            fields.get("n").and_then(Json::as_i64),
        ) else {
            return Outcome::Reject(
                "payload needs `run` (string), `key` (string) and `n` (integer)".into(),
            );
        };
        let attempt = event.delivery_attempt;
        if let Some(until) = fields.get("retry_until").and_then(Json::as_u64)
            && u64::from(attempt) < until
        {
            return Outcome::Retry(Some(20));
        }
        if let Some(ms) = fields.get("sleep_ms").and_then(Json::as_u64) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let trace = event
            .headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("Trace-Id"))
            .map(|(_, value)| value.clone())
            .unwrap_or_default();
        let properties = vec![
            ("run".to_string(), Value::Text(run.to_string())),
            ("key".to_string(), Value::Text(key.to_string())),
            ("n".to_string(), Value::Integer(n)),
            ("attempt".to_string(), Value::Integer(i64::from(attempt))),
            ("started_ns".to_string(), Value::Integer(started_ns)),
            ("finished_ns".to_string(), Value::Integer(now_ns())),
            ("trace".to_string(), Value::Text(trace)),
        ];
        let id = format!("{run}:{key}:{n}:{attempt}");
        match graph::upsert_entity("Handled", &id, &properties) {
            Ok(()) => Outcome::Ack,
            Err(Error::Unavailable(_) | Error::Other(_)) => Outcome::Retry(None),
            Err(error) => Outcome::Reject(format!("upsert of {id} refused: {error:?}")),
        }
    }
}

switchyard_plugin::export!(Recorder);
