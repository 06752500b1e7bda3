//! Service configurations for tests: names of their own on the shared
//! servers, rendered to the TOML `switchyard serve` reads.
//!
//! ```ignore
//! let names = Names::new("ops");
//! let handler = Handler::new("story-transitions", Plugin::File(STORY_TRANSITIONS.into()), &names)
//!     .set("concurrency", 8)
//!     .config("key_prefix", "context:")
//!     .grant("cache_keys", ["context:*"]);
//! let text = Service::new(&names).handler(handler).to_toml();
//! ```
//!
//! Values go through `toml`, so a test never writes a configuration that
//! fails to parse for a quoting slip.

use toml::{Table, Value};

use crate::services;

/// A stream, subjects, dead-letter stream and control-plane names no other
/// test uses.
#[derive(Debug, Clone)]
pub struct Names {
    /// Unique among the tests run on these servers; the subjects' root.
    pub id: String,
    pub stream: String,
    /// The subject the handlers consume (`<id>.story.transitioned`).
    pub subject: String,
    pub dead_letter_stream: String,
    pub dead_letter_subject: String,
    pub plugin_bucket: String,
    pub plugin_kv: String,
    pub control_subject: String,
}

impl Names {
    /// Names starting with `tag` (letters only keep them valid everywhere).
    pub fn new(tag: &str) -> Self {
        let id = services::unique(tag);
        Names {
            stream: format!("EVENTS_{id}"),
            subject: format!("{id}.story.transitioned"),
            dead_letter_stream: format!("DEAD_{id}"),
            dead_letter_subject: format!("dead.{id}"),
            plugin_bucket: format!("plugins-{id}"),
            plugin_kv: format!("live-{id}"),
            control_subject: format!("control.{id}"),
            id,
        }
    }

    /// The durable consumer name for `handler`.
    pub fn durable(&self, handler: &str) -> String {
        format!("{}-{handler}", self.id)
    }
}

/// Where a handler's versions come from.
#[derive(Debug, Clone)]
pub enum Plugin {
    /// A component file, watched.
    File(String),
    /// Versions pushed to the control plane under this name.
    Object(String),
}

/// One `[[handlers]]` table.
#[derive(Debug, Clone)]
pub struct Handler {
    table: Table,
}

impl Handler {
    /// A handler consuming `names.subject` on durable `names.durable(name)`,
    /// retrying from 100 ms up to 2 s, with no grants.
    pub fn new(name: &str, plugin: Plugin, names: &Names) -> Self {
        let mut table = Table::new();
        table.insert("name".into(), name.into());
        match plugin {
            Plugin::File(path) => table.insert("plugin".into(), path.into()),
            Plugin::Object(object) => table.insert("plugin_object".into(), object.into()),
        };
        table.insert(
            "subjects".into(),
            Value::Array(vec![names.subject.clone().into()]),
        );
        table.insert("durable".into(), names.durable(name).into());
        let mut retry = Table::new();
        retry.insert("base".into(), "100ms".into());
        retry.insert("max".into(), "2s".into());
        table.insert("retry".into(), retry.into());
        for section in ["config", "grants"] {
            table.insert(section.into(), Table::new().into());
        }
        Handler { table }
    }

    /// Sets a handler key (`concurrency`, `ack_wait`, `retry` ...).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.table.insert(key.into(), value.into());
        self
    }

    /// Sets a `[handlers.retry]` key.
    pub fn retry(self, key: &str, value: impl Into<Value>) -> Self {
        self.section("retry", key, value.into())
    }

    /// Sets a `[handlers.config]` key: what the plugin reads.
    pub fn config(self, key: &str, value: impl Into<Value>) -> Self {
        self.section("config", key, value.into())
    }

    /// Sets a `[handlers.grants]` key (`cache_keys`, `graph_labels` ...).
    pub fn grant<P: AsRef<str>>(self, key: &str, patterns: impl IntoIterator<Item = P>) -> Self {
        let list = Value::Array(
            patterns
                .into_iter()
                .map(|p| Value::from(p.as_ref()))
                .collect(),
        );
        self.section("grants", key, list)
    }

    fn section(mut self, section: &str, key: &str, value: Value) -> Self {
        if let Some(Value::Table(table)) = self.table.get_mut(section) {
            table.insert(key.into(), value);
        }
        self
    }
}

/// A whole `switchyard serve` configuration on the test servers.
#[derive(Debug, Clone)]
pub struct Service {
    table: Table,
    handlers: Vec<Value>,
}

impl Service {
    /// NATS, Valkey and Neo4j from [`services`], the streams and
    /// control-plane names of `names`, no HTTP listener, 32 instances.
    pub fn new(names: &Names) -> Self {
        let toml = format!(
            r#"
[nats]
url = {nats:?}
stream = {stream:?}
stream_subjects = ["{id}.>"]
dead_letter_stream = {dead_stream:?}
dead_letter_subject = {dead_subject:?}
plugin_bucket = {plugin_bucket:?}
plugin_kv = {plugin_kv:?}
control_subject = {control_subject:?}

[cache]
url = {valkey:?}

[graph]
url = {neo4j:?}
user = "neo4j"
password = "switchyard"

[http]
listen = ""

[runtime]
max_instances = 32
"#,
            nats = services::nats_url(),
            valkey = services::valkey_url(),
            neo4j = services::neo4j_url(),
            stream = names.stream,
            id = names.id,
            dead_stream = names.dead_letter_stream,
            dead_subject = names.dead_letter_subject,
            plugin_bucket = names.plugin_bucket,
            plugin_kv = names.plugin_kv,
            control_subject = names.control_subject,
        );
        Service {
            table: toml.parse().expect("the base test configuration is TOML"),
            handlers: Vec::new(),
        }
    }

    /// Sets `[section] key = value`.
    pub fn set(mut self, section: &str, key: &str, value: impl Into<Value>) -> Self {
        if let Some(Value::Table(table)) = self.table.get_mut(section) {
            table.insert(key.into(), value.into());
        }
        self
    }

    /// Adds a `[[handlers]]` table.
    pub fn handler(mut self, handler: Handler) -> Self {
        self.handlers.push(handler.table.into());
        self
    }

    /// The configuration as `switchyard serve --config` reads it.
    pub fn to_toml(&self) -> String {
        let mut table = self.table.clone();
        table.insert("handlers".into(), Value::Array(self.handlers.clone()));
        toml::to_string(&table).expect("a test configuration serializes")
    }

    /// The configuration, parsed and validated as the service would.
    pub fn parse(&self) -> switchyard::config::Config {
        switchyard::config::Config::parse(&self.to_toml(), "test configuration", std::iter::empty())
            .unwrap_or_else(|e| panic!("test configuration refused: {e:#}\n{}", self.to_toml()))
    }
}
