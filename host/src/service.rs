//! The service: configuration in, running handlers out.
//!
//! [`run`] resolves everything before it consumes anything: it loads and
//! checks every plugin, connects NATS and the backends (retrying, with a
//! log line per attempt, while readiness stays false), makes sure the
//! streams and durable consumers exist, then starts one consumer task per
//! handler (see [`crate::delivery`]). It returns when `shutdown`
//! resolves and every in-flight event has been settled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::backend::memory::{MemoryCache, MemoryGraph};
use crate::backend::neo4j::{Neo4jGraph, Neo4jOptions};
use crate::backend::valkey::{ValkeyCache, ValkeyOptions};
use crate::backend::valkey_cluster::ValkeyClusterCache;
use crate::backend::{BackendError, Backends, CacheBackend, GraphBackend};
use crate::capability::HandlerEnv;
use crate::config::{CacheConfig, Config, HandlerConfig};
use crate::delivery;
use crate::fleet::control::ControlPlane;
use crate::fleet::{reload, shadow, status};
use crate::grant::Grants;
use crate::handler::Handler;
use crate::health::Health;
use crate::isolation::{Profile, run_fixtures};
use crate::metrics::Metrics;
use crate::runtime::{Natives, Plugin, Runtime, RuntimeConfig};
use crate::secret::mask_url;

/// Runs the service until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with(config, health, shutdown, Natives::new()).await
}

/// [`run`] with handlers compiled in, for `native:<name>` plugins (a
/// benchmark build).
pub async fn run_with(
    config: Config,
    health: Arc<Health>,
    shutdown: CancellationToken,
    natives: Natives,
) -> anyhow::Result<()> {
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: config.runtime.max_instances,
        ..RuntimeConfig::default()
    })?
    .with_natives(natives);
    let runtime = Arc::new(runtime);
    match crate::memory::check(&config, crate::process::memory_limit_mib()) {
        crate::memory::Fit::Fits => {}
        crate::memory::Fit::Warn(message) => tracing::warn!("{message}"),
        crate::memory::Fit::Refuse(message) => anyhow::bail!("{message}"),
    }
    let metrics = Arc::new(Metrics::new());
    for handler in &config.handlers {
        metrics.register_handler(
            &handler.name,
            handler.exclusive || handler.partitions.is_some(),
        );
    }
    {
        let runtime = runtime.clone();
        metrics.on_scrape(move |metrics| {
            metrics.instances(runtime.instances_in_use(), runtime.config().max_instances);
        });
    }
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
    let Some(nats) = delivery::connect(&config.nats, health.clone(), &shutdown).await? else {
        return Ok(());
    };
    if !delivery::wait_for_jetstream(&nats, &config.nats, &shutdown).await {
        return Ok(());
    }
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
        metrics.plugin_live(&handler.name, None, plugin.digest().as_str());
        plugins.push((plugin, version));
    }

    let (backends, memory_cache) = tokio::select! {
        backends = connect_backends(&config, &health) => backends?,
        () = shutdown.cancelled() => return Ok(()),
    };
    {
        let backends = backends.clone();
        metrics.on_scrape(move |metrics| {
            metrics.backends(backends.cache.sweep_totals(), backends.graph.write_totals());
        });
    }
    let handlers: Vec<Arc<Handler>> = config
        .handlers
        .iter()
        .zip(plugins)
        .map(|(handler, (plugin, version))| {
            let env = HandlerEnv::with_grants(
                handler.name.clone(),
                handler.config.clone(),
                backends.clone(),
                handler.limits(),
                Grants::new(&handler.grants),
            );
            Handler::new(
                handler.clone(),
                env,
                plugin,
                version,
                runtime.clone(),
                metrics.clone(),
            )
        })
        .collect();

    let consumers = delivery::start(&nats, &config.nats, &handlers, shutdown.clone()).await?;
    health.consumers.store(true, Ordering::Relaxed);
    tokio::spawn(watch_backends(backends, health.clone(), shutdown.clone()));
    for handler in &handlers {
        match (&handler.config.plugin, &control) {
            (Some(path), _) => {
                tokio::spawn(reload::watch_file(
                    handler.clone(),
                    path.clone(),
                    shutdown.clone(),
                ));
            }
            (None, Some(control)) => {
                tokio::spawn(reload::watch_object(
                    handler.clone(),
                    control.clone(),
                    shutdown.clone(),
                ));
                tokio::spawn(shadow::watch_shadow(
                    handler.clone(),
                    control.clone(),
                    shutdown.clone(),
                ));
            }
            (None, None) => {}
        }
    }
    tokio::spawn(status::answer_status(
        nats.client(),
        config.nats.control_subject.clone(),
        handlers.clone(),
        shutdown.clone(),
    ));
    tracing::info!(handlers = handlers.len(), "switchyard is consuming");

    for consumer in consumers {
        if let Err(error) = consumer.await {
            tracing::error!(%error, "consumer task failed");
        }
    }
    health.consumers.store(false, Ordering::Relaxed);
    tracing::info!("all consumers stopped; every in-flight event is settled");
    for handler in &handlers {
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
    if let Some(cache) = &memory_cache {
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
    let (bytes, version, fixtures) = match (&handler.plugin, &handler.plugin_object, control) {
        (Some(path), _, _) => {
            let bytes = tokio::fs::read(path).await.with_context(|| {
                format!(
                    "handler `{}`: cannot read plugin {}",
                    handler.name,
                    path.display()
                )
            })?;
            let fixtures = reload::load_fixtures(handler.fixtures.as_deref())
                .map_err(|e| anyhow::anyhow!("handler `{}`: {e}", handler.name))?;
            (bytes, None, fixtures)
        }
        (None, Some(object), Some(control)) => {
            let version = control.live(object).await?.with_context(|| {
                format!(
                    "handler `{}`: no version of `{object}` has been pushed (the first one: switchyard plugin push {object} FILE --allow-no-hosts)",
                    handler.name
                )
            })?;
            let (bytes, fixtures) = control.fetch(object, &version).await?;
            (bytes, Some(version.name()), fixtures)
        }
        _ => anyhow::bail!("handler `{}` has no plugin source", handler.name),
    };
    let rt = runtime.clone();
    let plugin = tokio::task::spawn_blocking(move || rt.load(&bytes))
        .await?
        .map_err(|e| anyhow::anyhow!("handler `{}`: {e}", handler.name))?;
    // The same gate as a reload: a version that fails its fixtures does
    // not serve, at start-up either.
    if !fixtures.is_empty() {
        run_fixtures(runtime.clone(), plugin.clone(), Profile::of(handler), &fixtures)
            .await
            .map_err(|reason| {
                anyhow::anyhow!(
                    "handler `{}`: plugin {} failed its fixtures, so it does not serve and the host does not start: {reason}",
                    handler.name,
                    plugin.digest()
                )
            })?;
    }
    Ok((plugin, version))
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
        let options = valkey_options(&config.cache)?;
        if options.insecure {
            tracing::warn!(
                url = %crate::secret::mask_urls(&url),
                "cache.insecure is set: the cache server's certificate is NOT verified, so \
                 anyone on the path to it can read and change its traffic; for testing only"
            );
        }
        if config.cache.cluster {
            let seeds: Vec<String> = url.split(',').map(|u| u.trim().to_string()).collect();
            let shown = crate::secret::mask_urls(&url);
            Arc::new(
                retry_connect("cache", &shown, || {
                    ValkeyClusterCache::connect_with(&seeds, &options)
                })
                .await?,
            )
        } else {
            Arc::new(
                retry_connect("cache", &url, || ValkeyCache::connect_with(&url, &options)).await?,
            )
        }
    };
    health.cache.store(true, Ordering::Relaxed);
    let graph: Arc<dyn GraphBackend> = if config.graph.url.starts_with("memory://") {
        tracing::warn!("graph.url is memory://: graph effects stay in this process");
        Arc::new(MemoryGraph::default())
    } else {
        let password = crate::secret::read(
            "graph.password_file",
            Some(&config.graph.password),
            &config.graph.password_file,
        )?
        .unwrap_or_default();
        let (url, user, password) = (&config.graph.url, &config.graph.user, &password);
        let options = Neo4jOptions {
            ca_file: config.graph.ca_file.as_deref(),
            write_transactions: config.graph.write_transactions,
        };
        Arc::new(
            retry_connect("graph", url, || {
                Neo4jGraph::connect_with(url, user, password, &options)
            })
            .await?,
        )
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

/// The cache's credentials and certificates, read from their files.
fn valkey_options(cache: &CacheConfig) -> anyhow::Result<ValkeyOptions> {
    let read = |key: &str, path: &Option<std::path::PathBuf>| -> anyhow::Result<Option<Vec<u8>>> {
        path.as_ref()
            .map(|path| {
                std::fs::read(path)
                    .with_context(|| format!("config key `{key}`: cannot read {}", path.display()))
            })
            .transpose()
    };
    let client_cert = match (
        read("cache.cert_file", &cache.cert_file)?,
        read("cache.key_file", &cache.key_file)?,
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        _ => None,
    };
    Ok(ValkeyOptions {
        user: cache.user.clone(),
        password: crate::secret::read(
            "cache.password_file",
            cache.password.as_deref(),
            &cache.password_file,
        )?,
        ca: read("cache.ca_file", &cache.ca_file)?,
        client_cert,
        insecure: cache.insecure,
    })
}

/// Connects, retrying what retrying can fix with one warning per attempt;
/// a refusal (credentials, TLS) ends start-up with an error naming the
/// server and the cause.
async fn retry_connect<T, F, Fut>(what: &str, url: &str, mut connect: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BackendError>>,
{
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1u32;
    loop {
        match connect().await {
            Ok(backend) => {
                tracing::info!(backend = what, url = %mask_url(url), "connected");
                return Ok(backend);
            }
            Err(error @ BackendError::Refused { .. }) => {
                anyhow::bail!("{what} at {}: {error}", mask_url(url));
            }
            Err(error) => {
                tracing::warn!(backend = what, url = %mask_url(url), attempt, %error, retry_in = ?delay, "backend not answering; not ready until it does");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
        }
    }
}

/// Keeps readiness in step with the backends after start-up.
async fn watch_backends(backends: Backends, health: Arc<Health>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let cache = backends.cache.ping().await;
        let graph = backends.graph.ping().await;
        report(&health.cache, "cache", cache);
        report(&health.graph, "graph", graph);
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
