//! A Switchyard service running in-process against the real servers, on a
//! stream, dead-letter stream and durable of its own so tests do not meet.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Context;
use switchyard::health::Health;
use switchyard::service;
use switchyard_tests::artifacts::STORY_TRANSITIONS;
pub use switchyard_tests::config::Names;
use switchyard_tests::config::{Handler, Plugin, Service};
use switchyard_tests::services;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const HANDLER: &str = "story-transitions";

/// Settings a test may change.
pub struct Options {
    pub plugin: String,
    /// Take versions from the control plane under this name instead of
    /// the `plugin` file.
    pub plugin_object: Option<String>,
    pub max_deliver: u32,
    pub concurrency: u32,
    pub deadline: Option<&'static str>,
    /// Fixtures every new version must pass before it goes live.
    pub fixtures: Option<String>,
    /// The handler's `[handlers.grants]` as (key, patterns); by default
    /// what story-transitions needs.
    pub grants: Vec<(&'static str, Vec<String>)>,
    /// Serve `/metrics` on a free loopback port.
    pub http: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            plugin: STORY_TRANSITIONS.to_string(),
            plugin_object: None,
            max_deliver: 20,
            concurrency: 16,
            deadline: None,
            fixtures: None,
            grants: story_transitions_grants(),
            http: false,
        }
    }
}

/// The grants story-transitions needs, as in the example configurations.
pub fn story_transitions_grants() -> Vec<(&'static str, Vec<String>)> {
    vec![
        ("cache_keys", vec!["context:*".to_string()]),
        ("graph_labels", vec!["PhaseTransition".to_string()]),
    ]
}

/// One grant: `key = [pattern]`.
pub fn grant(key: &'static str, pattern: impl Into<String>) -> Vec<(&'static str, Vec<String>)> {
    vec![(key, vec![pattern.into()])]
}

/// The service configuration `options` describe, on `names`, serving HTTP
/// on `listen` when one is given.
pub fn service_config(names: &Names, options: &Options, listen: Option<&str>) -> Service {
    let plugin = match &options.plugin_object {
        Some(object) => Plugin::Object(object.clone()),
        None => Plugin::File(options.plugin.clone()),
    };
    let mut handler = Handler::new(HANDLER, plugin, names)
        .set("max_deliver", options.max_deliver)
        .set("concurrency", options.concurrency)
        .set("ack_wait", "10s")
        .config("key_prefix", "context:");
    if let Some(deadline) = options.deadline {
        handler = handler.set("deadline", deadline);
    }
    if let Some(fixtures) = &options.fixtures {
        handler = handler.set("fixtures", fixtures.as_str());
    }
    for (key, patterns) in &options.grants {
        handler = handler.grant(key, patterns);
    }
    Service::new(names)
        .set("runtime", "max_instances", 64)
        .set("http", "listen", listen.unwrap_or(""))
        .handler(handler)
}

/// The configuration a default service on `names` runs.
pub fn default_config(names: &Names) -> switchyard::config::Config {
    service_config(names, &Options::default(), None).parse()
}

/// A running in-process service.
pub struct TestService {
    pub names: Names,
    /// The one handler it runs.
    pub handler: String,
    /// Where `/metrics` is served, when the options asked for it.
    pub listen: Option<String>,
    pub health: Arc<Health>,
    pub js: Context,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestService {
    pub async fn start(options: Options) -> Self {
        Self::start_named(Names::new("t"), options).await
    }

    pub async fn start_named(names: Names, options: Options) -> Self {
        let listen = options.http.then(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.to_string())
                .expect("a free loopback port")
        });
        let config = service_config(&names, &options, listen.as_deref()).parse();
        Self::run(names, HANDLER, config, listen).await
    }

    /// Runs `config`, whose one handler is `handler`, and waits until it
    /// is ready.
    pub async fn run(
        names: Names,
        handler: &str,
        config: switchyard::config::Config,
        listen: Option<String>,
    ) -> Self {
        let health = Arc::new(Health::default());
        let shutdown = CancellationToken::new();
        let js = jetstream_for(&config.nats).await;
        let task = tokio::spawn(service::run(config, health.clone(), shutdown.clone()));
        let service = TestService {
            names,
            handler: handler.to_string(),
            listen,
            health,
            js,
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
        self.publish_with_headers(payload, &[]).await
    }

    /// [`TestService::publish`] with headers.
    pub async fn publish_with_headers(
        &self,
        payload: impl Into<bytes::Bytes>,
        headers: &[(&str, &str)],
    ) -> u64 {
        let payload = payload.into();
        let mut map = async_nats::HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, *value);
        }
        for _ in 0..100 {
            let attempt = async {
                self.js
                    .publish_with_headers(self.names.subject.clone(), map.clone(), payload.clone())
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
            .consumer_info(&self.names.durable(&self.handler))
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
        let listen = self.listen.as_ref()?;
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

    /// Where the handler's dead letters go.
    pub fn dead_letter_source(&self) -> switchyard::delivery::dead_letter::DeadLetterSource {
        switchyard::delivery::dead_letter::DeadLetterSource::new(
            &self.names.dead_letter_stream,
            &self.names.dead_letter_subject,
            &self.handler,
        )
    }

    /// Stops the service, letting in-flight events settle; how long that
    /// took.
    pub async fn stop(self) -> Duration {
        let started = std::time::Instant::now();
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(40), self.task).await {
            Ok(Ok(Ok(()))) => started.elapsed(),
            Ok(Ok(Err(error))) => panic!("service failed: {error:#}"),
            Ok(Err(join)) => panic!("service task panicked: {join}"),
            Err(_) => panic!("service did not stop within 40 s"),
        }
    }
}

/// A client on the NATS `nats` names: the shared test server, or a secure
/// one with the same TLS and credentials the service uses.
async fn jetstream_for(nats: &switchyard::config::NatsConfig) -> Context {
    if nats.url == services::nats_url() {
        return services::jetstream().await;
    }
    let client = switchyard::nats::connect_once(nats, "test-publisher", Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    async_nats::jetstream::new(client)
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
