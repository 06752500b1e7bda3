//! The service: configuration in, running handlers out.
//!
//! [`run`] resolves everything before it consumes anything: it loads and
//! checks every plugin, connects NATS and the backends (retrying, with a
//! log line per attempt, while readiness stays false), makes sure the
//! streams and durable consumers exist, then starts one consumer task per
//! handler (see [`crate::source::jetstream`]). It returns when `shutdown`
//! resolves and every in-flight event has been settled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::backend::memory::{MemoryCache, MemoryGraph};
use crate::backend::neo4j::Neo4jGraph;
use crate::backend::valkey::ValkeyCache;
use crate::backend::{BackendError, Backends, CacheBackend, GraphBackend};
use crate::capability::HandlerEnv;
use crate::config::{Config, HandlerConfig};
use crate::control::{ControlPlane, HostStatus};
use crate::metrics::Metrics;
use crate::reload::{self, ReloadState};
use crate::runtime::{Plugin, Runtime, RuntimeConfig};
use crate::source::jetstream;
use anyhow::Context as _;

/// One configured handler: its settings, its environment and the plugin
/// version currently live.
pub struct Handler {
    pub config: HandlerConfig,
    pub env: Arc<HandlerEnv>,
    /// Swapped whole on reload; each event runs on the version it loaded.
    pub plugin: ArcSwap<Plugin>,
    pub stats: HandlerStats,
    /// Versions offered and their results; see [`crate::reload`].
    pub reload: std::sync::Mutex<ReloadState>,
    /// A candidate running beside the live version; see [`crate::shadow`].
    pub shadow: arc_swap::ArcSwapOption<crate::shadow::Shadow>,
    /// An exclusive handler's lease, once its consumer started.
    pub lease: std::sync::OnceLock<Arc<crate::lease::Lease>>,
}

impl Handler {
    pub fn name(&self) -> &str {
        &self.config.name
    }
}

/// Running totals for one handler.
#[derive(Default)]
pub struct HandlerStats {
    pub handled: AtomicU64,
    pub acked: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub keys_deleted: AtomicU64,
}

/// What `/readyz` reports: every dependency answering.
#[derive(Default)]
pub struct Health {
    pub nats: AtomicBool,
    pub cache: AtomicBool,
    pub graph: AtomicBool,
    pub consumers: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.nats.load(Ordering::Relaxed)
            && self.cache.load(Ordering::Relaxed)
            && self.graph.load(Ordering::Relaxed)
            && self.consumers.load(Ordering::Relaxed)
    }
}

/// Everything consumer tasks share.
pub struct Shared {
    pub config: Config,
    pub runtime: Arc<Runtime>,
    pub handlers: Vec<Arc<Handler>>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub backends: Backends,
    /// Set when the cache is `memory://`, to report what is left at exit.
    pub memory_cache: Option<MemoryCache>,
}

/// Runs the service until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: config.runtime.max_instances,
        ..RuntimeConfig::default()
    })?;
    let runtime = Arc::new(runtime);
    let metrics = Arc::new(Metrics::new());
    if !config.http.listen.is_empty() {
        crate::http::serve(
            &config.http.listen,
            health.clone(),
            metrics.clone(),
            shutdown.clone(),
        )
        .await?;
    }

    // Plugins before backends: a plugin that cannot load is a configuration
    // error and must stop start-up before any event is consumed.
    let nats = jetstream::connect(&config.nats, health.clone()).await?;
    let needs_control = config.handlers.iter().any(|h| h.plugin_object.is_some());
    let control = if needs_control {
        Some(ControlPlane::open(&nats, &config.nats).await?)
    } else {
        None
    };
    let mut plugins = Vec::new();
    for handler in &config.handlers {
        let (plugin, version) = initial_plugin(&runtime, control.as_ref(), handler).await?;
        tracing::info!(handler = %handler.name, plugin = %plugin.digest(), version = version.as_deref().unwrap_or("file"), "plugin loaded");
        metrics.register_handler(&handler.name);
        metrics.plugin_live(&handler.name, None, plugin.digest().as_str());
        plugins.push((plugin, version));
    }

    let (backends, memory_cache) = tokio::select! {
        backends = connect_backends(&config, &health) => backends?,
        () = shutdown.cancelled() => return Ok(()),
    };
    let handlers: Vec<Arc<Handler>> = config
        .handlers
        .iter()
        .zip(plugins)
        .map(|(handler, (plugin, version))| {
            Arc::new(Handler {
                env: HandlerEnv::with_grants(
                    handler.name.clone(),
                    handler.config.clone(),
                    backends.clone(),
                    handler.limits(),
                    crate::grant::Grants::new(&handler.grants),
                ),
                config: handler.clone(),
                plugin: ArcSwap::new(plugin),
                stats: HandlerStats::default(),
                reload: std::sync::Mutex::new(crate::reload::ReloadState {
                    version,
                    ..Default::default()
                }),
                shadow: Default::default(),
                lease: Default::default(),
            })
        })
        .collect();
    let shared = Arc::new(Shared {
        config,
        runtime,
        handlers,
        health: health.clone(),
        metrics,
        backends,
        memory_cache,
    });

    let consumers = jetstream::start(&nats, shared.clone(), shutdown.clone()).await?;
    health.consumers.store(true, Ordering::Relaxed);
    tokio::spawn(watch_backends(shared.clone(), shutdown.clone()));
    for handler in &shared.handlers {
        match (&handler.config.plugin, &control) {
            (Some(path), _) => {
                tokio::spawn(reload::watch_file(
                    shared.clone(),
                    handler.clone(),
                    path.clone(),
                    shutdown.clone(),
                ));
            }
            (None, Some(control)) => {
                tokio::spawn(reload::watch_object(
                    shared.clone(),
                    handler.clone(),
                    control.clone(),
                    shutdown.clone(),
                ));
                tokio::spawn(reload::watch_shadow(
                    shared.clone(),
                    handler.clone(),
                    control.clone(),
                    shutdown.clone(),
                ));
            }
            (None, None) => {}
        }
    }
    tokio::spawn(answer_status(
        nats.client(),
        shared.clone(),
        shutdown.clone(),
    ));
    tracing::info!(handlers = shared.handlers.len(), "switchyard is consuming");

    for consumer in consumers {
        if let Err(error) = consumer.await {
            tracing::error!(%error, "consumer task failed");
        }
    }
    health.consumers.store(false, Ordering::Relaxed);
    tracing::info!("all consumers stopped; every in-flight event is settled");
    for handler in &shared.handlers {
        let stats = &handler.stats;
        tracing::info!(
            handler = %handler.name(),
            handled = stats.handled.load(Ordering::Relaxed),
            acked = stats.acked.load(Ordering::Relaxed),
            retried = stats.retried.load(Ordering::Relaxed),
            dead_lettered = stats.dead_lettered.load(Ordering::Relaxed),
            keys_deleted = stats.keys_deleted.load(Ordering::Relaxed),
            "handler totals"
        );
    }
    if let Some(cache) = &shared.memory_cache {
        let keys = cache.keys();
        tracing::info!(keys_left = keys.len(), keys = ?keys.iter().take(20).collect::<Vec<_>>(), "memory cache at exit");
    }
    Ok(())
}

/// The plugin a handler starts with, and the name of its pushed version
/// when it comes from the control plane.
async fn initial_plugin(
    runtime: &Arc<Runtime>,
    control: Option<&ControlPlane>,
    handler: &HandlerConfig,
) -> anyhow::Result<(Arc<Plugin>, Option<String>)> {
    let (bytes, version) = match (&handler.plugin, &handler.plugin_object, control) {
        (Some(path), _, _) => {
            let bytes = tokio::fs::read(path).await.with_context(|| {
                format!(
                    "handler `{}`: cannot read plugin {}",
                    handler.name,
                    path.display()
                )
            })?;
            (bytes, None)
        }
        (None, Some(object), Some(control)) => {
            let version = control.live(object).await?.with_context(|| {
                format!(
                    "handler `{}`: no version of `{object}` has been pushed (switchyard plugin push {object} FILE)",
                    handler.name
                )
            })?;
            (
                control.fetch(object, &version).await?.0,
                Some(version.name()),
            )
        }
        _ => anyhow::bail!("handler `{}` has no plugin source", handler.name),
    };
    let rt = runtime.clone();
    let plugin = tokio::task::spawn_blocking(move || rt.load(&bytes))
        .await?
        .map_err(|e| anyhow::anyhow!("handler `{}`: {e}", handler.name))?;
    Ok((plugin, version))
}

/// Answers `<control_subject>.status` requests with this host's status.
async fn answer_status(
    client: async_nats::Client,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    use futures::StreamExt;
    let subject = format!("{}.status", shared.config.nats.control_subject);
    let mut requests = match client.subscribe(subject.clone()).await {
        Ok(requests) => requests,
        Err(error) => {
            tracing::warn!(%subject, %error, "cannot answer status requests");
            return;
        }
    };
    let started_at_ms = crate::control::now_ms();
    loop {
        let request = tokio::select! {
            request = requests.next() => request,
            () = shutdown.cancelled() => return,
        };
        let Some(request) = request else { return };
        let Some(reply) = request.reply else { continue };
        let status = HostStatus {
            host: crate::control::hostname(),
            pid: std::process::id(),
            started_at_ms,
            handlers: reload::status(&shared).iter().map(Into::into).collect(),
        };
        if let Ok(body) = serde_json::to_vec(&status)
            && let Err(error) = client.publish(reply, body.into()).await
        {
            tracing::warn!(%error, "cannot send status reply");
        }
    }
}

/// Connects the cache and graph named in the configuration, retrying each
/// until it answers. Never falls back to another backend.
pub async fn connect_backends(
    config: &Config,
    health: &Health,
) -> anyhow::Result<(Backends, Option<MemoryCache>)> {
    let mut memory_cache = None;
    let cache: Arc<dyn CacheBackend> = if config.cache.url.starts_with("memory://") {
        tracing::warn!("cache.url is memory://: cache effects stay in this process");
        let cache = MemoryCache::default();
        if let Some(seed) = &config.cache.seed {
            let count = seed_memory_cache(&cache, seed)?;
            tracing::info!(keys = count, seed = %seed.display(), "memory cache seeded");
        }
        memory_cache = Some(cache.clone());
        Arc::new(cache)
    } else {
        let url = config.cache.url.clone();
        Arc::new(retry_connect("cache", &url, || ValkeyCache::connect(&url)).await)
    };
    health.cache.store(true, Ordering::Relaxed);
    let graph: Arc<dyn GraphBackend> = if config.graph.url.starts_with("memory://") {
        tracing::warn!("graph.url is memory://: graph effects stay in this process");
        Arc::new(MemoryGraph::default())
    } else {
        let (url, user, password) = (
            &config.graph.url,
            &config.graph.user,
            &config.graph.password,
        );
        Arc::new(retry_connect("graph", url, || Neo4jGraph::connect(url, user, password)).await)
    };
    health.graph.store(true, Ordering::Relaxed);
    Ok((Backends { cache, graph }, memory_cache))
}

fn seed_memory_cache(cache: &MemoryCache, path: &std::path::Path) -> anyhow::Result<usize> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read cache.seed {}", path.display()))?;
    let entries: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&text).with_context(|| {
            format!(
                "cache.seed {} must be a JSON object of key to value",
                path.display()
            )
        })?;
    let count = entries.len();
    for (key, value) in entries {
        let value = match value {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        cache.set(key, value);
    }
    Ok(count)
}

async fn retry_connect<T, F, Fut>(what: &str, url: &str, mut connect: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BackendError>>,
{
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1u32;
    loop {
        match connect().await {
            Ok(backend) => {
                tracing::info!(backend = what, %url, "connected");
                return backend;
            }
            Err(error) => {
                tracing::warn!(backend = what, %url, attempt, %error, retry_in = ?delay, "backend not answering; not ready until it does");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
        }
    }
}

/// Keeps readiness in step with the backends after start-up.
async fn watch_backends(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let cache = shared.backends.cache.ping().await;
        let graph = shared.backends.graph.ping().await;
        report(&shared.health.cache, "cache", cache);
        report(&shared.health.graph, "graph", graph);
    }
}

fn report(flag: &AtomicBool, what: &str, result: Result<(), BackendError>) {
    let up = result.is_ok();
    let was = flag.swap(up, Ordering::Relaxed);
    match result {
        Err(error) if was => tracing::warn!(backend = what, %error, "backend stopped answering"),
        Ok(()) if !was => tracing::info!(backend = what, "backend answering again"),
        _ => {}
    }
}
