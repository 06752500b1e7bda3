//! One `[[handlers]]` entry: a plugin bound to subjects through a durable
//! consumer, with its delivery settings, limits, grants and configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::grant::GrantsConfig;
use crate::limits::Limits;

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
    pub grants: GrantsConfig,
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
    /// order then holds across hosts. See [`crate::delivery::lease`].
    #[serde(default)]
    pub exclusive: bool,
    /// Ordered parallelism across hosts: the handler's subject is mapped
    /// into this many partitions by NATS (`partition(N, …)` over the
    /// subject token named by `order_key_subject_token`), one durable per
    /// partition, spread over the live hosts by leases. See
    /// [`crate::partition`] and [`crate::delivery::balance`].
    #[serde(default)]
    pub partitions: Option<u32>,
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
    use serde::de::Error as _;
    let raw = BTreeMap::<String, toml::Value>::deserialize(deserializer)?;
    raw.into_iter()
        .map(|(key, value)| {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(D::Error::custom(format!(
                        "`{key}` is {}; a config value must be a string, integer, float or boolean",
                        other.type_str()
                    )));
                }
            };
            Ok((key, text))
        })
        .collect()
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
/// then scaled by a random factor in `[1 - jitter, 1]`. A delay a plugin
/// asks for is capped at `max` too.
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

    /// The delay for a plugin's `retry(some(ms))`: at most `max`, so a huge
    /// request cannot overflow the server's nanosecond delay into an
    /// immediate redelivery.
    pub fn requested(&self, millis: Duration) -> Duration {
        millis.min(self.max)
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
