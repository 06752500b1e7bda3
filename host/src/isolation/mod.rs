//! Running a plugin in isolation, on in-memory backends.
//!
//! [`Isolation`] is what `switchyard test` and the `switchyard-testing`
//! harness stand on: load a plugin, seed the cache, send events, then read
//! back the outcomes, the keys left and the graph written. The plugin runs
//! on the same runtime, limits and capabilities as in the service; only the
//! backends are in memory, and the in-memory cache selects keys exactly as
//! Valkey does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;
use serde_json::{Map, Value as Json, json};

pub mod fixture;

pub use self::fixture::{Expectation, Fixture};

use crate::backend::memory::{MemoryCache, MemoryGraph};
use crate::bindings::event::Event;
use crate::bindings::graph::Value;
use crate::capability::{Effects, HandlerEnv};
use crate::config::HandlerConfig;
use crate::grant::Grants;
use crate::limits::Limits;
use crate::runtime::{Dispatch, Fault, LoadError, Outcome, Plugin, Runtime, RuntimeConfig};

/// One event to send, as written in an events file.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSpec {
    pub subject: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl EventSpec {
    /// An event whose payload is `payload` serialised as JSON.
    pub fn json(subject: impl Into<String>, payload: &Json) -> Self {
        EventSpec {
            subject: subject.into(),
            payload: payload.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }

    /// An event with raw payload bytes.
    pub fn raw(subject: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        EventSpec {
            subject: subject.into(),
            payload: payload.into(),
            headers: Vec::new(),
        }
    }

    /// Parses one line of an events file:
    /// `{"subject": "...", "payload": <JSON>, "headers": {"name": "value"}}`.
    /// A JSON string payload is sent as its raw bytes; any other JSON value
    /// is sent serialised. Bytes that are not UTF-8 (anything the stream can
    /// carry) are given as `"payload_base64": "<standard base64>"` instead
    /// of `payload`.
    pub fn parse_line(line: &str) -> Result<Self, String> {
        let value: Json = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let Json::Object(object) = value else {
            return Err("an event must be a JSON object".into());
        };
        Self::from_object(object)
    }

    fn from_object(mut object: Map<String, Json>) -> Result<Self, String> {
        let subject = match object.remove("subject") {
            Some(Json::String(s)) if !s.is_empty() => s,
            Some(_) => return Err("\"subject\" must be a non-empty string".into()),
            None => return Err("missing \"subject\"".into()),
        };
        let payload = match (object.remove("payload"), object.remove("payload_base64")) {
            (Some(_), Some(_)) => {
                return Err("give \"payload\" or \"payload_base64\", not both".into());
            }
            (Some(Json::String(raw)), None) => raw.into_bytes(),
            (Some(value), None) => value.to_string().into_bytes(),
            (None, Some(Json::String(encoded))) => BASE64
                .decode(encoded.trim())
                .map_err(|e| format!("\"payload_base64\" is not standard base64: {e}"))?,
            (None, Some(_)) => return Err("\"payload_base64\" must be a string".into()),
            (None, None) => return Err("missing \"payload\" (or \"payload_base64\")".into()),
        };
        let headers = match object.remove("headers") {
            None | Some(Json::Null) => Vec::new(),
            Some(Json::Object(map)) => map
                .into_iter()
                .map(|(name, value)| match value {
                    Json::String(v) => Ok((name, v)),
                    _ => Err(format!("header {name:?} must be a string")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("\"headers\" must be an object of strings".into()),
        };
        if let Some(unknown) = object.keys().next() {
            return Err(format!(
                "unknown field {unknown:?} (expected subject, payload or payload_base64, headers)"
            ));
        }
        Ok(EventSpec {
            subject,
            payload,
            headers,
        })
    }

    /// Parses an events file: one event per line, blank lines skipped.
    /// Errors name the 1-based line.
    pub fn parse_lines(text: &str) -> Result<Vec<Self>, String> {
        parse_json_lines(text, Self::parse_line)
    }
}

/// The configuration, limits and grants a plugin runs with in isolation.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Who the plugin runs as, in its log records: the handler, or
    /// `isolated` for a plugin tried on its own.
    pub name: String,
    pub config: BTreeMap<String, String>,
    pub limits: Limits,
    pub grants: Grants,
}

impl Profile {
    /// Every key, label and relation granted and the default limits: a
    /// plugin tried on its own.
    pub fn unrestricted(config: BTreeMap<String, String>) -> Self {
        Profile {
            name: "isolated".into(),
            config,
            limits: Limits::default(),
            grants: Grants::unrestricted(),
        }
    }

    /// Exactly the configuration, limits and grants `handler` runs with,
    /// so a version its grants would deny fails here, not in production.
    pub fn of(handler: &HandlerConfig) -> Self {
        Profile {
            name: handler.name.clone(),
            config: handler.config.clone(),
            limits: handler.limits(),
            grants: Grants::new(&handler.grants),
        }
    }
}

/// Runs `fixtures` through `plugin` with `profile` on fresh in-memory
/// backends, each after its keys are seeded; the first fixture that does
/// not come out as expected is the error, with every difference in it.
pub async fn run_fixtures(
    runtime: Arc<Runtime>,
    plugin: Arc<Plugin>,
    profile: Profile,
    fixtures: &[Fixture],
) -> Result<(), String> {
    let mut isolation = Isolation::on(runtime, plugin, profile);
    for (i, fixture) in fixtures.iter().enumerate() {
        let differences = isolation.check(fixture).await;
        if !differences.is_empty() {
            return Err(format!(
                "fixture {} ({}): {}",
                i + 1,
                fixture.event.subject,
                differences.join("; ")
            ));
        }
    }
    Ok(())
}

/// Parses one item per non-blank line; errors name the 1-based line.
pub(crate) fn parse_json_lines<T>(
    text: &str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| parse(line).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// The result of one event, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct EventResult {
    pub subject: String,
    pub outcome: &'static str,
    /// The reject reason, or the fault behind a host-chosen retry.
    pub detail: Option<String>,
    pub retry_after_ms: Option<u64>,
    pub effects: Effects,
    pub fault: Option<Fault>,
}

impl EventResult {
    fn new(subject: String, dispatch: &Dispatch) -> Self {
        let (detail, retry_after_ms) = match &dispatch.outcome {
            Outcome::Ack => (None, None),
            Outcome::Retry { delay } => (
                dispatch.fault.as_ref().map(|f| f.to_string()),
                delay.map(|d| d.as_millis() as u64),
            ),
            Outcome::Reject { reason } => (Some(reason.clone()), None),
        };
        EventResult {
            subject,
            outcome: dispatch.outcome.kind(),
            detail,
            retry_after_ms,
            effects: dispatch.effects.clone(),
            fault: dispatch.fault.clone(),
        }
    }
}

/// A plugin loaded on in-memory backends.
pub struct Isolation {
    runtime: Arc<Runtime>,
    plugin: Arc<Plugin>,
    env: Arc<HandlerEnv>,
    cache: MemoryCache,
    graph: MemoryGraph,
    next_sequence: u64,
    results: Vec<EventResult>,
}

impl Isolation {
    /// Loads `plugin` (component bytes) with the given configuration and
    /// the default limits, every key granted.
    pub fn new(plugin: &[u8], config: BTreeMap<String, String>) -> Result<Self, IsolationError> {
        Self::load(plugin, Profile::unrestricted(config))
    }

    /// Loads `plugin` with explicit limits, every key granted.
    pub fn with_limits(
        plugin: &[u8],
        config: BTreeMap<String, String>,
        limits: Limits,
    ) -> Result<Self, IsolationError> {
        Self::load(
            plugin,
            Profile {
                limits,
                ..Profile::unrestricted(config)
            },
        )
    }

    /// Loads `plugin` to run with `profile`.
    pub fn load(plugin: &[u8], profile: Profile) -> Result<Self, IsolationError> {
        let runtime = Arc::new(
            Runtime::new(RuntimeConfig {
                max_instances: 16,
                ..RuntimeConfig::default()
            })
            .map_err(|e| IsolationError::Runtime(format!("{e:#}")))?,
        );
        let plugin = runtime.load(plugin)?;
        Ok(Self::on(runtime, plugin, profile))
    }

    /// A loaded plugin on an existing runtime, with fresh in-memory backends.
    pub fn on(runtime: Arc<Runtime>, plugin: Arc<Plugin>, profile: Profile) -> Self {
        let (backends, cache, graph) = crate::backend::memory::backends();
        let env = Arc::new(HandlerEnv {
            name: profile.name,
            isolated: true,
            config: profile.config,
            backends,
            limits: profile.limits,
            grants: profile.grants,
        });
        Isolation {
            runtime,
            plugin,
            env,
            cache,
            graph,
            next_sequence: 1,
            results: Vec::new(),
        }
    }

    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// The in-memory cache, to seed or inspect.
    pub fn cache(&self) -> &MemoryCache {
        &self.cache
    }

    /// The in-memory graph, to inspect.
    pub fn graph(&self) -> &MemoryGraph {
        &self.graph
    }

    /// Seeds `fixture`'s keys, sends its event, and returns how the result
    /// differs from its expectation (nothing when it has none).
    pub async fn check(&mut self, fixture: &Fixture) -> Vec<String> {
        fixture::seed(&self.cache, fixture);
        self.send(fixture.event.clone()).await;
        let (Some(expect), Some(result)) = (&fixture.expect, self.results.last()) else {
            return Vec::new();
        };
        expect.differences(result, &self.cache, &self.graph)
    }

    /// Sends one event as a first delivery.
    pub async fn send(&mut self, event: EventSpec) -> Dispatch {
        self.send_attempt(event, 1).await
    }

    /// Sends one event as delivery number `attempt` (1-based).
    pub async fn send_attempt(&mut self, event: EventSpec, attempt: u32) -> Dispatch {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let published_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let subject = event.subject.clone();
        let dispatch = self
            .runtime
            .dispatch(
                &self.plugin,
                &self.env,
                Event {
                    subject: event.subject,
                    payload: event.payload,
                    headers: event.headers,
                    stream_sequence: sequence,
                    delivery_attempt: attempt.max(1),
                    published_at_ms,
                },
            )
            .await;
        self.results.push(EventResult::new(subject, &dispatch));
        dispatch
    }

    /// Every result so far, in send order.
    pub fn results(&self) -> &[EventResult] {
        &self.results
    }

    /// The report `switchyard test --json` prints: results, keys left,
    /// nodes and relations.
    pub fn report(&self) -> Json {
        let nodes: Vec<Json> = self
            .graph
            .nodes()
            .into_iter()
            .map(|node| {
                json!({
                    "label": node.label,
                    "id": node.id,
                    "properties": properties_json(&node.properties),
                })
            })
            .collect();
        let relations: Vec<Json> = self
            .graph
            .relations()
            .into_iter()
            .map(|relation| {
                json!({
                    "from": {"label": relation.source.label, "id": relation.source.id},
                    "type": relation.kind,
                    "to": {"label": relation.target.label, "id": relation.target.id},
                    "properties": properties_json(&relation.properties),
                })
            })
            .collect();
        json!({
            "plugin": self.plugin.digest(),
            "results": self.results,
            "cache_keys": self.cache.keys(),
            "graph_nodes": nodes,
            "graph_relations": relations,
        })
    }
}

/// A property value as JSON.
pub fn value_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) => Json::from(*i),
        Value::Float(f) => Json::from(*f),
        Value::Text(s) => Json::String(s.clone()),
        Value::TextList(items) => Json::from(items.clone()),
    }
}

fn properties_json(properties: &BTreeMap<String, Value>) -> Json {
    Json::Object(
        properties
            .iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect::<Map<_, _>>(),
    )
}

/// Why an isolated run could not start.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error("cannot start the Wasm runtime: {0}")]
    Runtime(String),
    #[error(transparent)]
    Load(#[from] LoadError),
}
