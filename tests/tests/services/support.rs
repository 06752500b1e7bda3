//! A Switchyard service running in-process against the real servers, on a
//! stream, dead-letter stream and durable of its own so tests do not meet.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Context;
use switchyard::config::Config;
use switchyard::service::{self, Health};
use switchyard_tests::artifacts::STORY_TRANSITIONS;
use switchyard_tests::services;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const HANDLER: &str = "story-transitions";

/// Names this test's service uses.
#[derive(Clone)]
pub struct Names {
    pub stream: String,
    pub subject_root: String,
    pub subject: String,
    pub dead_letter_stream: String,
    pub dead_letter_subject: String,
    pub durable: String,
    /// A loopback address free when the names were made, for `/metrics`.
    pub listen: Option<String>,
    pub plugin_bucket: String,
    pub plugin_kv: String,
    pub control_subject: String,
}

impl Names {
    pub fn new() -> Self {
        let id = services::unique("t");
        Names {
            stream: format!("EVENTS_{id}"),
            subject_root: format!("{id}"),
            subject: format!("{id}.story.transitioned"),
            dead_letter_stream: format!("DEAD_{id}"),
            dead_letter_subject: format!("dead.{id}"),
            durable: format!("durable-{id}"),
            plugin_bucket: format!("plugins-{id}"),
            plugin_kv: format!("live-{id}"),
            control_subject: format!("control.{id}"),
            listen: std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.to_string())
                .ok(),
        }
    }
}

/// Settings a test may change.
pub struct Options {
    pub plugin: String,
    pub max_deliver: u32,
    pub concurrency: u32,
    pub retry_base: &'static str,
    pub extra_handler_toml: String,
    /// The body of the handler's `[handlers.grants]` table; by default what
    /// story-transitions needs.
    pub grants_toml: String,
    /// Serve `/metrics` on a free loopback port.
    pub http: bool,
    /// Take versions from the control plane under this name instead of
    /// the `plugin` file.
    pub plugin_object: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            plugin: STORY_TRANSITIONS.to_string(),
            max_deliver: 20,
            concurrency: 16,
            retry_base: "100ms",
            extra_handler_toml: String::new(),
            grants_toml: STORY_TRANSITIONS_GRANTS.to_string(),
            http: false,
            plugin_object: None,
        }
    }
}

/// The grants story-transitions needs, as in the example configurations.
pub const STORY_TRANSITIONS_GRANTS: &str =
    "cache_keys = [\"context:*\"]\ngraph_labels = [\"PhaseTransition\"]";

pub fn config_toml(names: &Names, options: &Options) -> String {
    format!(
        r#"
[nats]
url = "{nats}"
stream = "{stream}"
stream_subjects = ["{root}.>"]
dead_letter_stream = "{dead_stream}"
dead_letter_subject = "{dead_subject}"
plugin_bucket = "{plugin_bucket}"
plugin_kv = "{plugin_kv}"
control_subject = "{control_subject}"

[cache]
url = "{valkey}"

[graph]
url = "{neo4j}"
user = "neo4j"
password = "switchyard"

[http]
listen = "{listen}"

[runtime]
max_instances = 64

[[handlers]]
name = "{handler}"
{plugin_source}
subjects = ["{subject}"]
durable = "{durable}"
max_deliver = {max_deliver}
concurrency = {concurrency}
ack_wait = "10s"
{extra}

[handlers.retry]
base = "{retry_base}"
max = "2s"

[handlers.config]
key_prefix = "context:"

[handlers.grants]
{grants}
"#,
        nats = services::nats_url(),
        valkey = services::valkey_url(),
        neo4j = services::neo4j_url(),
        stream = names.stream,
        root = names.subject_root,
        dead_stream = names.dead_letter_stream,
        dead_subject = names.dead_letter_subject,
        handler = HANDLER,
        plugin_source = match &options.plugin_object {
            Some(object) => format!("plugin_object = {object:?}"),
            None => format!("plugin = {:?}", options.plugin),
        },
        plugin_bucket = names.plugin_bucket,
        plugin_kv = names.plugin_kv,
        control_subject = names.control_subject,
        subject = names.subject,
        durable = names.durable,
        max_deliver = options.max_deliver,
        concurrency = options.concurrency,
        retry_base = options.retry_base,
        extra = options.extra_handler_toml,
        grants = options.grants_toml,
        listen = names
            .listen
            .as_deref()
            .filter(|_| options.http)
            .unwrap_or(""),
    )
}

/// A running in-process service.
pub struct TestService {
    pub names: Names,
    pub health: Arc<Health>,
    pub js: Context,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestService {
    pub async fn start(options: Options) -> Self {
        Self::start_named(Names::new(), options).await
    }

    pub async fn start_named(names: Names, options: Options) -> Self {
        let config = Config::parse(
            &config_toml(&names, &options),
            "test config",
            std::iter::empty(),
        )
        .expect("test configuration is valid");
        let health = Arc::new(Health::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(service::run(config, health.clone(), shutdown.clone()));
        let service = TestService {
            names,
            health,
            js: services::jetstream().await,
            shutdown,
            task,
        };
        let health = service.health.clone();
        services::eventually(Duration::from_secs(30), "service ready", || {
            let health = health.clone();
            async move {
                if health.ready() {
                    Ok(())
                } else {
                    Err("not ready".to_string())
                }
            }
        })
        .await;
        service
    }

    /// Publishes `payload` to the handler's subject and waits for the
    /// stream's acknowledgement, retrying while NATS is unreachable.
    pub async fn publish(&self, payload: impl Into<bytes::Bytes>) -> u64 {
        let payload = payload.into();
        for _ in 0..100 {
            let attempt = async {
                self.js
                    .publish(self.names.subject.clone(), payload.clone())
                    .await?
                    .await
                    .map_err(async_nats::Error::from)
            };
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(ack)) => return ack.sequence,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        panic!("could not publish to {} for 20 s", self.names.subject);
    }

    /// (pending, ack pending, redelivered) of the handler's consumer.
    pub async fn consumer_state(&self) -> Result<(u64, usize, usize), String> {
        let mut stream = self
            .js
            .get_stream(&self.names.stream)
            .await
            .map_err(|e| e.to_string())?;
        let info = stream
            .consumer_info(&self.names.durable)
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.info().await;
        Ok((info.num_pending, info.num_ack_pending, info.num_redelivered))
    }

    /// Waits until the consumer has nothing pending and nothing unacked.
    pub async fn settled(&self, timeout: Duration) {
        services::eventually(
            timeout,
            "consumer settled (0 pending, 0 unacked)",
            || async {
                match self.consumer_state().await? {
                    (0, 0, _) => Ok(()),
                    (pending, ack_pending, _) => {
                        Err(format!("{pending} pending, {ack_pending} unacked"))
                    }
                }
            },
        )
        .await;
    }

    /// Every message in the dead-letter stream.
    pub async fn dead_letters(&self) -> Vec<async_nats::jetstream::message::StreamMessage> {
        let mut stream = match self.js.get_stream(&self.names.dead_letter_stream).await {
            Ok(stream) => stream,
            Err(_) => return Vec::new(),
        };
        let state = stream
            .info()
            .await
            .expect("dead-letter stream info")
            .state
            .clone();
        let mut messages = Vec::new();
        if state.messages == 0 {
            return messages;
        }
        for sequence in state.first_sequence..=state.last_sequence {
            if let Ok(message) = stream.get_raw_message(sequence).await {
                messages.push(message);
            }
        }
        messages
    }

    /// The value of one `/metrics` series (the exact text before the value),
    /// when the service serves metrics.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let listen = self.names.listen.as_ref()?;
        let text = http_get(listen, "/metrics").await.ok()?;
        text.lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            if name == series {
                value.parse().ok()
            } else {
                None
            }
        })
    }

    /// Stops the service, letting in-flight events settle.
    pub async fn stop(self) {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(30), self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => panic!("service failed: {error:#}"),
            Ok(Err(join)) => panic!("service task panicked: {join}"),
            Err(_) => panic!("service did not stop within 30 s"),
        }
    }
}

/// A flat transition event for `story` at `timestamp`.
pub fn transition(story: &str, timestamp: &str) -> Vec<u8> {
    serde_json::json!({
        "story_id": story,
        "from_phase": "DESIGN",
        "to_phase": "BUILD",
        "timestamp": timestamp,
    })
    .to_string()
    .into_bytes()
}

/// How many `PhaseTransition` nodes have a `timestamp` equal to `timestamp`.
pub async fn transitions_at(graph: &neo4rs::Graph, timestamp: &str) -> Result<i64, String> {
    let mut rows = graph
        .execute(
            neo4rs::query("MATCH (n:PhaseTransition {timestamp: $t}) RETURN count(n) AS c")
                .param("t", timestamp),
        )
        .await
        .map_err(|e| e.to_string())?;
    let row = rows
        .next()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no row")?;
    row.get::<i64>("c").map_err(|e| e.to_string())
}

/// How many of `keys` exist in Valkey.
pub async fn existing(
    valkey: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
) -> Result<u64, String> {
    redis::cmd("EXISTS")
        .arg(keys)
        .query_async(valkey)
        .await
        .map_err(|e| e.to_string())
}

/// A minimal HTTP/1.1 GET, enough for `/metrics`.
pub async fn http_get(address: &str, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}
