//! Service configuration: a TOML file, then `SWITCHYARD_...` overrides.
//!
//! Everything is resolved and checked before anything connects: an unknown
//! key, a wrong type or an out-of-range value refuses start-up with a
//! message naming the key (and the variable, for overrides).
//!
//! Overrides: a variable `SWITCHYARD_<SECTION>__<KEY>` sets `<section>.<key>`
//! (lower-cased; `__` separates levels, a number indexes an array), e.g.
//! `SWITCHYARD_NATS__URL`, `SWITCHYARD_GRAPH__PASSWORD`,
//! `SWITCHYARD_HANDLERS__0__CONCURRENCY`. The value is read as TOML when it
//! parses as a number, boolean or array, and as a string otherwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::runtime::Limits;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {variable}: {message}")]
    Override { variable: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub nats: NatsConfig,
    pub cache: CacheConfig,
    pub graph: GraphConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub runtime: RuntimeSection,
    #[serde(default)]
    pub handlers: Vec<HandlerConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    pub url: String,
    /// The source stream, created when missing.
    pub stream: String,
    /// Subjects of the source stream, used when creating it.
    pub stream_subjects: Vec<String>,
    /// The dead-letter stream, created when missing.
    #[serde(default = "default_dead_letter_stream")]
    pub dead_letter_stream: String,
    /// Dead letters of handler `h` go to `<dead_letter_subject>.<h>`.
    #[serde(default = "default_dead_letter_subject")]
    pub dead_letter_subject: String,
    /// Object Store bucket holding pushed plugin versions.
    #[serde(default = "default_plugin_bucket")]
    pub plugin_bucket: String,
    /// Key-Value bucket holding each handler's live version.
    #[serde(default = "default_plugin_kv")]
    pub plugin_kv: String,
    /// Hosts answer `<control_subject>.status` requests.
    #[serde(default = "default_control_subject")]
    pub control_subject: String,
    /// Key-Value bucket holding the leases of exclusive handlers.
    #[serde(default = "default_lease_kv")]
    pub lease_kv: String,
}

fn default_lease_kv() -> String {
    "switchyard-leases".into()
}

fn default_plugin_bucket() -> String {
    "switchyard-plugins".into()
}

fn default_plugin_kv() -> String {
    "switchyard-plugin-live".into()
}

fn default_control_subject() -> String {
    "switchyard.control".into()
}

fn default_dead_letter_stream() -> String {
    "SWITCHYARD_DEAD_LETTERS".into()
}

fn default_dead_letter_subject() -> String {
    "switchyard.dead".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// `redis://host:port/db` or `memory://`.
    pub url: String,
    /// With `memory://` only: a JSON object of key to value loaded at
    /// start-up, relative to the config file.
    #[serde(default)]
    pub seed: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphConfig {
    /// `bolt://host:port` or `memory://`.
    pub url: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub password: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` are served; empty to disable.
    #[serde(default = "default_http_listen")]
    pub listen: String,
}

fn default_http_listen() -> String {
    "127.0.0.1:9464".into()
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_http_listen(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    /// Most Wasm instances alive at once, across handlers; a dispatch
    /// beyond it waits for a free instance.
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
}

fn default_max_instances() -> u32 {
    128
}

impl Default for RuntimeSection {
    fn default() -> Self {
        RuntimeSection {
            max_instances: default_max_instances(),
        }
    }
}

/// One handler: a plugin bound to subjects through a durable consumer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    pub name: String,
    /// Path to the plugin component, relative to the config file. The file
    /// is watched: a new version goes live without a restart.
    #[serde(default)]
    pub plugin: Option<PathBuf>,
    /// Instead of `plugin`: take versions from the control plane (pushed
    /// with `switchyard plugin push <name>`) under this name.
    #[serde(default)]
    pub plugin_object: Option<String>,
    /// Events with expected outcomes (the fixtures format) a new version
    /// must pass before it goes live; relative to the config file.
    #[serde(default)]
    pub fixtures: Option<PathBuf>,
    pub subjects: Vec<String>,
    pub durable: String,
    /// Deliveries before an event is dead-lettered.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: u32,
    /// How long the server waits for a settlement before redelivering.
    #[serde(default = "default_ack_wait", with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Events handled at once by this host.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Unsettled events the server lets all hosts of this consumer hold.
    #[serde(default = "default_max_ack_pending")]
    pub max_ack_pending: u32,
    /// Wall-clock limit for one event.
    #[serde(default = "default_deadline", with = "humantime_serde")]
    pub deadline: Duration,
    /// Linear memory cap per instance, in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// Host calls allowed per event.
    #[serde(default = "default_max_host_calls")]
    pub max_host_calls: u64,
    /// Backoff for a `retry` without a delay (and for faults).
    #[serde(default)]
    pub retry: RetryConfig,
    /// Handed to the plugin through the `config` import. Numbers and
    /// booleans are passed as their text.
    #[serde(default, deserialize_with = "string_map")]
    pub config: BTreeMap<String, String>,
    /// The cache keys, graph labels and relations the handler may touch;
    /// without the table, none. See [`crate::grant`].
    #[serde(default)]
    pub grants: crate::grant::GrantsConfig,
    /// Per-key ordering: JSON pointers into the payload (a string or a
    /// list; the first that resolves gives the key). Events with the same
    /// key run one at a time, in stream order.
    #[serde(default, deserialize_with = "one_or_many")]
    pub order_key: Vec<String>,
    /// Per-key ordering by a subject token instead (0-based).
    #[serde(default)]
    pub order_key_subject_token: Option<u32>,
    /// One host at a time pulls from the durable; the others sharing it
    /// stand by and take over when it stops. With an order key, per-key
    /// order then holds across hosts. See [`crate::lease`].
    #[serde(default)]
    pub exclusive: bool,
    /// At shutdown, how long in-flight events may still run before they are
    /// stopped and nak'ed.
    #[serde(default = "default_drain_grace", with = "humantime_serde")]
    pub drain_grace: Duration,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

fn string_map<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Integer(i64),
        Float(f64),
        Boolean(bool),
    }
    let raw = BTreeMap::<String, Scalar>::deserialize(deserializer)?;
    Ok(raw
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                Scalar::Text(s) => s,
                Scalar::Integer(i) => i.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Boolean(b) => b.to_string(),
            };
            (key, text)
        })
        .collect())
}

fn default_max_deliver() -> u32 {
    20
}
fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_concurrency() -> u32 {
    16
}
fn default_max_ack_pending() -> u32 {
    1024
}
fn default_deadline() -> Duration {
    Duration::from_secs(5)
}
fn default_memory_mib() -> u32 {
    64
}
fn default_max_host_calls() -> u64 {
    10_000
}
fn default_drain_grace() -> Duration {
    Duration::from_secs(20)
}

/// Exponential backoff with jitter: `base * 2^(attempt-1)`, capped at `max`,
/// then scaled by a random factor in `[1 - jitter, 1]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(default = "default_retry_base", with = "humantime_serde")]
    pub base: Duration,
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub max: Duration,
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

fn default_retry_base() -> Duration {
    Duration::from_millis(500)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(60)
}
fn default_jitter() -> f64 {
    0.2
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            base: default_retry_base(),
            max: default_retry_max(),
            jitter: default_jitter(),
        }
    }
}

impl RetryConfig {
    /// The delay before delivery `attempt + 1`, given delivery `attempt`
    /// (1-based) failed.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let raw = self.base.saturating_mul(1u32 << exponent).min(self.max);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 - jitter * rand::random::<f64>();
        raw.mul_f64(factor)
    }
}

impl HandlerConfig {
    /// The runtime limits for this handler's events.
    pub fn limits(&self) -> Limits {
        Limits {
            deadline: self.deadline,
            memory_bytes: (self.memory_mib as usize) << 20,
            max_host_calls: self.max_host_calls,
        }
    }
}

impl Config {
    /// Reads `path`, applies `SWITCHYARD_...` overrides from the process
    /// environment, and checks the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Self::parse(&text, &path.display().to_string(), std::env::vars())?;
        // Plugin paths are relative to the config file, not to where the
        // service happens to be started.
        let base = path.parent().unwrap_or(Path::new("."));
        for handler in &mut config.handlers {
            if let Some(plugin) = &mut handler.plugin
                && plugin.is_relative()
            {
                *plugin = base.join(&*plugin);
            }
            if let Some(fixtures) = &mut handler.fixtures
                && fixtures.is_relative()
            {
                *fixtures = base.join(&*fixtures);
            }
        }
        if let Some(seed) = &mut config.cache.seed
            && seed.is_relative()
        {
            *seed = base.join(&*seed);
        }
        Ok(config)
    }

    /// Parses `text` (named `origin` in errors) with overrides from `env`.
    pub fn parse(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut document: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.message().to_string() + &location(text, e.span()),
        })?;
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with("SWITCHYARD_") && name.contains("__"))
            .collect();
        overrides.sort();
        for (variable, value) in overrides {
            apply_override(&mut document, &variable, &value)?;
        }
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(document))
            .map_err(|e| {
                let key = e.path().to_string();
                let message = e.into_inner().message().to_string();
                if key == "." {
                    ConfigError::Parse {
                        path: origin.to_string(),
                        message,
                    }
                } else {
                    invalid(key, message)
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_url("nats.url", &self.nats.url, &["nats", "tls"])?;
        check_url("cache.url", &self.cache.url, &["redis", "rediss", "memory"])?;
        check_url("graph.url", &self.graph.url, &["bolt", "neo4j", "memory"])?;
        if self.cache.seed.is_some() && !self.cache.url.starts_with("memory://") {
            return Err(invalid(
                "cache.seed",
                "only a memory:// cache can be seeded",
            ));
        }
        check_name("nats.stream", &self.nats.stream)?;
        check_name("nats.dead_letter_stream", &self.nats.dead_letter_stream)?;
        if self.nats.stream == self.nats.dead_letter_stream {
            return Err(invalid(
                "nats.dead_letter_stream",
                "must differ from nats.stream",
            ));
        }
        if self.nats.stream_subjects.is_empty() {
            return Err(invalid(
                "nats.stream_subjects",
                "needs at least one subject",
            ));
        }
        check_subject_prefix("nats.dead_letter_subject", &self.nats.dead_letter_subject)?;
        check_subject_prefix("nats.control_subject", &self.nats.control_subject)?;
        check_name("nats.plugin_bucket", &self.nats.plugin_bucket)?;
        check_name("nats.plugin_kv", &self.nats.plugin_kv)?;
        check_name("nats.lease_kv", &self.nats.lease_kv)?;
        for subject in &self.nats.stream_subjects {
            let dead_letter = format!("{}.x", self.nats.dead_letter_subject);
            if subject_matches(subject, &dead_letter) {
                return Err(invalid(
                    "nats.dead_letter_subject",
                    format!(
                        "dead letters would land in the source stream: `{subject}` covers `{dead_letter}`"
                    ),
                ));
            }
            let status = format!("{}.status", self.nats.control_subject);
            if subject_matches(subject, &status) {
                return Err(invalid(
                    "nats.control_subject",
                    format!(
                        "status requests would land in the source stream: `{subject}` covers `{status}`"
                    ),
                ));
            }
        }
        if self.runtime.max_instances == 0 {
            return Err(invalid("runtime.max_instances", "must be at least 1"));
        }
        if self.handlers.is_empty() {
            return Err(invalid(
                "handlers",
                "configure at least one [[handlers]] entry",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, handler) in self.handlers.iter().enumerate() {
            let key = |field: &str| format!("handlers[{i}].{field}");
            check_name(&key("name"), &handler.name)?;
            if !names.insert(handler.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!("handler `{}` is configured twice", handler.name),
                ));
            }
            check_name(&key("durable"), &handler.durable)?;
            match (&handler.plugin, &handler.plugin_object) {
                (Some(_), None) => {}
                (None, Some(object)) => check_name(&key("plugin_object"), object)?,
                _ => {
                    return Err(invalid(
                        key("plugin"),
                        "set exactly one of `plugin` (a file) and `plugin_object` (pushed versions)",
                    ));
                }
            }
            if handler.subjects.is_empty() {
                return Err(invalid(key("subjects"), "needs at least one subject"));
            }
            for subject in &handler.subjects {
                if !self.nats.stream_subjects.iter().any(|s| covers(s, subject)) {
                    return Err(invalid(
                        key("subjects"),
                        format!(
                            "`{subject}` is not inside nats.stream_subjects {:?}",
                            self.nats.stream_subjects
                        ),
                    ));
                }
            }
            if handler.max_deliver == 0 {
                return Err(invalid(key("max_deliver"), "must be at least 1"));
            }
            if handler.concurrency == 0 || handler.concurrency > 4096 {
                return Err(invalid(key("concurrency"), "must be between 1 and 4096"));
            }
            if handler.max_ack_pending < handler.concurrency {
                return Err(invalid(
                    key("max_ack_pending"),
                    "must be at least concurrency",
                ));
            }
            if handler.ack_wait < Duration::from_secs(1) {
                return Err(invalid(key("ack_wait"), "must be at least 1s"));
            }
            if handler.deadline.is_zero() || handler.deadline >= handler.ack_wait {
                return Err(invalid(
                    key("deadline"),
                    format!(
                        "must be above 0 and below ack_wait ({:?})",
                        handler.ack_wait
                    ),
                ));
            }
            if handler.memory_mib == 0 || handler.memory_mib > 1024 {
                return Err(invalid(key("memory_mib"), "must be between 1 and 1024"));
            }
            if handler.max_host_calls == 0 {
                return Err(invalid(key("max_host_calls"), "must be at least 1"));
            }
            if !(0.0..=1.0).contains(&handler.retry.jitter) {
                return Err(invalid(key("retry.jitter"), "must be between 0 and 1"));
            }
            if handler.retry.base.is_zero() || handler.retry.base > handler.retry.max {
                return Err(invalid(
                    key("retry.base"),
                    "must be above 0 and at most retry.max",
                ));
            }
            if let Err((field, message)) = handler.grants.check() {
                return Err(invalid(key(&format!("grants.{field}")), message));
            }
            check_order_key(handler).map_err(|(field, message)| invalid(key(field), message))?;
            if handler.drain_grace > Duration::from_secs(3600) {
                return Err(invalid(key("drain_grace"), "must be at most 1h"));
            }
        }
        Ok(())
    }
}

fn check_order_key(handler: &HandlerConfig) -> Result<(), (&'static str, String)> {
    if handler.order_key_subject_token.is_some() && !handler.order_key.is_empty() {
        return Err((
            "order_key",
            "set either order_key or order_key_subject_token, not both".into(),
        ));
    }
    if handler
        .order_key_subject_token
        .is_some_and(|token| token > 255)
    {
        return Err((
            "order_key_subject_token",
            "must be between 0 and 255".into(),
        ));
    }
    for pointer in &handler.order_key {
        crate::source::jetstream::Pointer::parse(pointer)
            .map_err(|message| ("order_key", message))?;
        if pointer.is_empty() {
            return Err((
                "order_key",
                "the empty pointer (the whole payload) is not a key".into(),
            ));
        }
    }
    Ok(())
}

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

fn apply_override(
    document: &mut toml::Table,
    variable: &str,
    raw: &str,
) -> Result<(), ConfigError> {
    let fail = |message: String| ConfigError::Override {
        variable: variable.to_string(),
        message,
    };
    let path: Vec<String> = variable["SWITCHYARD_".len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(fail("empty path segment".into()));
    }
    let value = parse_override_value(raw);
    let mut table = document;
    for (depth, segment) in path.iter().enumerate() {
        let last = depth + 1 == path.len();
        if last {
            table.insert(segment.clone(), value);
            return Ok(());
        }
        let next = table
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match next {
            toml::Value::Table(t) => t,
            toml::Value::Array(items) => {
                let index: usize = path[depth + 1].parse().map_err(|_| {
                    fail(format!("`{segment}` is a list; expected an index after it"))
                })?;
                let Some(toml::Value::Table(item)) = items.get_mut(index) else {
                    return Err(fail(format!("`{segment}` has no entry {index}")));
                };
                if depth + 2 == path.len() {
                    return Err(fail(format!(
                        "cannot replace `{segment}[{index}]` as a whole"
                    )));
                }
                // Skip the index segment: continue from the item's table.
                return apply_rest(item, &path[depth + 2..], value).map_err(fail);
            }
            _ => return Err(fail(format!("`{segment}` is not a table"))),
        };
    }
    Ok(())
}

fn apply_rest(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Err("empty path".into()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [head, rest @ ..] => match table
            .entry(head.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(inner) => apply_rest(inner, rest, value),
            _ => Err(format!("`{head}` is not a table")),
        },
    }
}

fn parse_override_value(raw: &str) -> toml::Value {
    // Numbers, booleans and arrays as TOML; anything else as a plain string,
    // so `SWITCHYARD_GRAPH__PASSWORD=secret` needs no quoting.
    let wrapped = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&wrapped) {
        Ok(mut table) => match table.remove("v") {
            Some(
                value @ (toml::Value::Integer(_)
                | toml::Value::Float(_)
                | toml::Value::Boolean(_)
                | toml::Value::Array(_)),
            ) => value,
            _ => toml::Value::String(raw.to_string()),
        },
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn check_url(key: &str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some(s) if schemes.contains(&s) => Ok(()),
        _ => Err(invalid(
            key,
            format!(
                "`{url}` must start with one of {}",
                schemes
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("`{name}` must be 1 to 64 of A-Z, a-z, 0-9, `-`, `_`"),
        ))
    }
}

fn check_subject_prefix(key: &str, subject: &str) -> Result<(), ConfigError> {
    let ok = !subject.is_empty()
        && subject
            .split('.')
            .all(|t| !t.is_empty() && !t.contains(['*', '>', ' ']));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("`{subject}` must be dot-separated literal tokens"),
        ))
    }
}

/// Whether the subject filter `filter` matches the literal subject `subject`.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut filter = filter.split('.');
    let mut subject = subject.split('.');
    loop {
        match (filter.next(), subject.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(f), Some(s)) if f == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every subject `inner` matches is also matched by `outer`.
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut outer = outer.split('.');
    let mut inner = inner.split('.');
    loop {
        match (outer.next(), inner.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(i)) if i != ">" => {}
            (Some(o), Some(i)) if o == i => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[nats]
url = "nats://127.0.0.1:4222"
stream = "PLANNING_EVENTS"
stream_subjects = ["planning.>"]

[cache]
url = "redis://127.0.0.1:6379/0"

[graph]
url = "bolt://127.0.0.1:7687"
user = "neo4j"
password = "secret"

[[handlers]]
name = "story-transitions"
plugin = "story_transitions.wasm"
subjects = ["planning.story.transitioned"]
durable = "context-planning-story-transitions"
max_deliver = 20

[handlers.config]
key_prefix = "context:"
"#;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::parse(
            text,
            "test.toml",
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn accepts_the_documented_shape_with_defaults() {
        let config = parse(MINIMAL, &[]).unwrap();
        let handler = &config.handlers[0];
        assert_eq!(handler.max_deliver, 20);
        assert_eq!(handler.concurrency, 16);
        assert_eq!(handler.ack_wait, Duration::from_secs(30));
        assert_eq!(handler.config["key_prefix"], "context:");
        assert_eq!(config.nats.dead_letter_stream, "SWITCHYARD_DEAD_LETTERS");
    }

    #[test]
    fn refuses_unknown_key_naming_it() {
        let text = MINIMAL.replace("[cache]", "[cache]\nurll = \"x\"");
        let error = parse(&text, &[]).unwrap_err().to_string();
        assert!(error.starts_with("config key `cache"), "{error}");
        assert!(error.contains("unknown field `urll`"), "{error}");
    }

    #[test]
    fn refuses_wrong_type_naming_the_key() {
        let text = MINIMAL.replace("max_deliver = 20", "max_deliver = \"lots\"");
        let error = parse(&text, &[]).unwrap_err().to_string();
        assert!(
            error.starts_with("config key `handlers[0].max_deliver`: invalid type"),
            "{error}"
        );
    }

    #[test]
    fn refuses_out_of_range_value_naming_the_key() {
        let text = MINIMAL.replace("max_deliver = 20", "concurrency = 0");
        let error = parse(&text, &[]).unwrap_err().to_string();
        assert_eq!(
            error,
            "config key `handlers[0].concurrency`: must be between 1 and 4096"
        );
    }

    #[test]
    fn environment_overrides_values_at_any_depth() {
        let config = parse(
            MINIMAL,
            &[
                ("SWITCHYARD_NATS__URL", "nats://10.0.0.1:4222"),
                ("SWITCHYARD_GRAPH__PASSWORD", "from-env"),
                ("SWITCHYARD_HANDLERS__0__CONCURRENCY", "4"),
                ("SWITCHYARD_HANDLERS__0__CONFIG__KEY_PREFIX", "ctx:"),
                ("SWITCHYARD_TEST_NATS_URL", "ignored: no double underscore"),
            ],
        )
        .unwrap();
        assert_eq!(config.nats.url, "nats://10.0.0.1:4222");
        assert_eq!(config.graph.password, "from-env");
        assert_eq!(config.handlers[0].concurrency, 4);
        assert_eq!(config.handlers[0].config["key_prefix"], "ctx:");
    }

    #[test]
    fn refuses_bad_override_naming_the_variable() {
        let error = parse(MINIMAL, &[("SWITCHYARD_CACHE__PORT", "1")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `port`"), "{error}");
        let error = parse(MINIMAL, &[("SWITCHYARD_HANDLERS__7__NAME", "x")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("SWITCHYARD_HANDLERS__7__NAME"), "{error}");
    }

    #[test]
    fn refuses_handler_subject_outside_the_stream() {
        let text = MINIMAL.replace(
            "subjects = [\"planning.story.transitioned\"]",
            "subjects = [\"billing.x\"]",
        );
        let error = parse(&text, &[]).unwrap_err().to_string();
        assert!(
            error.starts_with("config key `handlers[0].subjects`"),
            "{error}"
        );
    }

    #[test]
    fn refuses_dead_letters_inside_the_source_stream() {
        let text = MINIMAL.replace(
            "stream_subjects = [\"planning.>\"]",
            "stream_subjects = [\">\"]",
        );
        let error = parse(&text, &[]).unwrap_err().to_string();
        assert!(error.contains("nats.dead_letter_subject"), "{error}");
    }

    #[test]
    fn refuses_a_control_subject_inside_the_source_stream() {
        let text = MINIMAL.replace(
            "stream_subjects = [\"planning.>\"]",
            "stream_subjects = [\"planning.>\"]\ncontrol_subject = \"planning.control\"",
        );
        let error = parse(&text, &[]).unwrap_err().to_string();
        assert!(
            error.starts_with("config key `nats.control_subject`")
                && error.contains("`planning.>` covers `planning.control.status`"),
            "{error}"
        );
    }

    #[test]
    fn refuses_unknown_url_scheme() {
        let text = MINIMAL.replace("redis://127.0.0.1:6379/0", "memcached://x");
        let error = parse(&text, &[]).unwrap_err().to_string();
        assert!(error.starts_with("config key `cache.url`"), "{error}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let retry = RetryConfig {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: 0.0,
        };
        assert_eq!(retry.delay(1), Duration::from_millis(100));
        assert_eq!(retry.delay(3), Duration::from_millis(400));
        assert_eq!(retry.delay(40), Duration::from_secs(1));
    }

    #[test]
    fn grants_default_to_nothing_and_are_read_from_the_table() {
        let config = parse(MINIMAL, &[]).unwrap();
        assert_eq!(
            config.handlers[0].grants,
            crate::grant::GrantsConfig::default()
        );
        assert!(config.handlers[0].grants.cache_keys.is_empty());
        let text = format!(
            "{MINIMAL}\n[handlers.grants]\ncache_keys = [\"context:*\"]\nmax_delete_keys = 500\ngraph_labels = [\"PhaseTransition\"]\n"
        );
        let grants = &parse(&text, &[]).unwrap().handlers[0].grants;
        assert_eq!(grants.cache_keys, ["context:*"]);
        assert_eq!(grants.max_delete_keys, 500);
        assert_eq!(grants.graph_labels, ["PhaseTransition"]);
        assert!(grants.graph_relations.is_empty());
        let overridden = parse(
            MINIMAL,
            &[(
                "SWITCHYARD_HANDLERS__0__GRANTS__CACHE_KEYS",
                "[\"ctx:*\", \"x\"]",
            )],
        )
        .unwrap();
        assert_eq!(overridden.handlers[0].grants.cache_keys, ["ctx:*", "x"]);
    }

    #[test]
    fn refuses_bad_grants_naming_the_key() {
        let text =
            format!("{MINIMAL}\n[handlers.grants]\ngraph_labels = [\"A`) DETACH DELETE n //\"]\n");
        let error = parse(&text, &[]).unwrap_err().to_string();
        assert!(
            error.starts_with("config key `handlers[0].grants.graph_labels`: label"),
            "{error}"
        );
        let text = format!("{MINIMAL}\n[handlers.grants]\nmax_delete_keys = 0\n");
        let error = parse(&text, &[]).unwrap_err().to_string();
        assert!(
            error.starts_with("config key `handlers[0].grants.max_delete_keys`"),
            "{error}"
        );
        let text = format!("{MINIMAL}\n[handlers.grants]\ncache_key = [\"x\"]\n");
        let error = parse(&text, &[]).unwrap_err().to_string();
        assert!(error.contains("unknown field `cache_key`"), "{error}");
    }

    #[test]
    fn order_key_is_one_pointer_or_a_list_and_drain_grace_has_a_default() {
        let config = parse(MINIMAL, &[]).unwrap();
        assert!(config.handlers[0].order_key.is_empty());
        assert_eq!(config.handlers[0].order_key_subject_token, None);
        assert_eq!(config.handlers[0].drain_grace, Duration::from_secs(20));
        let text = MINIMAL.replace(
            "max_deliver = 20",
            "order_key = \"/story_id\"\ndrain_grace = \"3s\"",
        );
        let handler = &parse(&text, &[]).unwrap().handlers[0];
        assert_eq!(handler.order_key, ["/story_id"]);
        assert_eq!(handler.drain_grace, Duration::from_secs(3));
        let text = MINIMAL.replace(
            "max_deliver = 20",
            "order_key = [\"/payload/story_id\", \"/story_id\"]",
        );
        assert_eq!(
            parse(&text, &[]).unwrap().handlers[0].order_key,
            ["/payload/story_id", "/story_id"]
        );
        let text = MINIMAL.replace("max_deliver = 20", "order_key_subject_token = 2");
        assert_eq!(
            parse(&text, &[]).unwrap().handlers[0].order_key_subject_token,
            Some(2)
        );
        let overridden = parse(
            MINIMAL,
            &[("SWITCHYARD_HANDLERS__0__ORDER_KEY", "/story_id")],
        )
        .unwrap();
        assert_eq!(overridden.handlers[0].order_key, ["/story_id"]);
    }

    #[test]
    fn refuses_bad_order_keys_and_drain_grace_naming_the_key() {
        let cases = [
            (
                "order_key = \"story_id\"",
                "config key `handlers[0].order_key`: JSON pointer `story_id` must start with `/`",
            ),
            ("order_key = \"/a~2\"", "config key `handlers[0].order_key`"),
            (
                "order_key = \"\"",
                "config key `handlers[0].order_key`: the empty pointer",
            ),
            (
                "order_key = \"/a\"\norder_key_subject_token = 1",
                "config key `handlers[0].order_key`: set either",
            ),
            (
                "order_key_subject_token = 256",
                "config key `handlers[0].order_key_subject_token`",
            ),
            (
                "order_key_subject_token = -1",
                "config key `handlers[0].order_key_subject_token`",
            ),
            (
                "drain_grace = \"2h\"",
                "config key `handlers[0].drain_grace`: must be at most 1h",
            ),
            (
                "drain_grace = \"soon\"",
                "config key `handlers[0].drain_grace`",
            ),
        ];
        for (line, expected) in cases {
            let text = MINIMAL.replace("max_deliver = 20", line);
            let error = parse(&text, &[]).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{line}: {error}");
        }
    }

    #[test]
    fn subject_filters_cover_and_match() {
        assert!(covers("planning.>", "planning.story.transitioned"));
        assert!(covers("planning.*.x", "planning.a.x"));
        assert!(!covers("planning.*", "planning.>"));
        assert!(subject_matches(">", "switchyard.dead.x"));
        assert!(!subject_matches("planning.>", "switchyard.dead.x"));
    }
}
