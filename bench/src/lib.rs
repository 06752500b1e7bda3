//! Fixtures shared by the `overhead` benchmark and the `rss` binary.
//!
//! - [`native`]: the same handler compiled into the host, for the
//!   `native` variant of `scripts/bench`.
//! - [`NativeHost`]: the `story-transitions` [`Host`] trait implemented
//!   natively over the in-memory backends, so the handler's own logic can
//!   be timed without the Wasm runtime.
//! - [`WasmFixture`]: a [`Runtime`] with a plugin loaded, dispatching
//!   events on a fresh instance each, exactly as the service does, against
//!   in-memory backends.
//! - The event both paths handle ([`TRANSITION_PAYLOAD`]) and the keys it
//!   deletes ([`SEEDED_KEYS`]), which are seeded before every event so each
//!   iteration does the same work.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark reports by panicking

pub mod native;

use native::host_value;

use std::collections::BTreeMap;
use std::sync::Arc;

use story_transitions::Host;
use switchyard::backend::memory::{MemoryCache, MemoryGraph};
use switchyard::backend::{BackendError, Backends, GraphBackend, NodeKey};
use switchyard::bindings::graph::Value as HostValue;
use switchyard::capability::HandlerEnv;
use switchyard::glob::Compiled;
use switchyard::limits::{Limits, MAX_SCAN_COUNT};
use switchyard::runtime::{Dispatch, Plugin, Runtime, RuntimeConfig};
use switchyard_plugin::cache::ScanPage;
use switchyard_plugin::graph::Value;
use switchyard_plugin::log::Level;
use switchyard_plugin::types::Error;

/// Subject of the story-transition event.
pub const TRANSITION_SUBJECT: &str = "planning.story.transitioned";
/// The event: story `S1` moves from `dev` to `review`.
pub const TRANSITION_PAYLOAD: &str = r#"{"story_id":"S1","from_phase":"dev","to_phase":"review","timestamp":"2025-01-01T00:00:00Z"}"#;
/// The keys the event deletes: the bare key (deleted by name) and one child
/// (found by the scan, then deleted).
pub const SEEDED_KEYS: [&str; 2] = ["context:S1", "context:S1:dev"];
/// An unrelated key left in the cache, so the scan has something to skip.
pub const OTHER_KEY: &str = "context:S2";

/// A cache holding [`SEEDED_KEYS`] and [`OTHER_KEY`].
pub fn seeded_cache() -> MemoryCache {
    let cache = MemoryCache::default();
    seed(&cache);
    cache
}

/// (Re)writes [`SEEDED_KEYS`] and [`OTHER_KEY`].
pub fn seed(cache: &MemoryCache) {
    for key in SEEDED_KEYS {
        cache.set(key, "rendered context");
    }
    cache.set(OTHER_KEY, "rendered context");
}

/// The event as the plugin SDK sees it (native path).
pub fn native_event() -> switchyard_plugin::event::Event {
    switchyard_plugin::event::Event {
        subject: TRANSITION_SUBJECT.to_owned(),
        payload: TRANSITION_PAYLOAD.as_bytes().to_vec(),
        headers: Vec::new(),
        stream_sequence: 1,
        delivery_attempt: 1,
        published_at_ms: 1_735_689_600_000,
    }
}

/// An event as the host passes it to a component (Wasm path).
pub fn wasm_event(subject: &str, payload: &[u8]) -> switchyard::bindings::event::Event {
    switchyard::bindings::event::Event {
        subject: subject.to_owned(),
        payload: payload.to_vec(),
        headers: Vec::new(),
        stream_sequence: 1,
        delivery_attempt: 1,
        published_at_ms: 1_735_689_600_000,
    }
}

/// The story-transitions [`Host`] implemented natively.
///
/// Each call goes to the same in-memory backend the Wasm path reaches
/// through its capabilities: `scan` to [`MemoryCache::scan_step`], `delete`
/// to [`MemoryCache::unlink`], `upsert_entity` to
/// [`GraphBackend::upsert_entity`] on a [`MemoryGraph`] (driven by
/// `futures::executor::block_on`; the future never waits, so this only adds
/// a poll), `config` to a `BTreeMap`, and `log` formats its fields as the
/// host's `log` capability does and emits a `tracing` event. What is left
/// out is exactly the runtime's share: instantiation, the component ABI,
/// the capability checks (identifiers, sizes, host-call budget), effect
/// counting and the async plumbing.
pub struct NativeHost {
    pub config: BTreeMap<String, String>,
    pub cache: MemoryCache,
    pub graph: MemoryGraph,
}

impl NativeHost {
    pub fn new(cache: MemoryCache, graph: MemoryGraph) -> Self {
        NativeHost {
            config: BTreeMap::new(),
            cache,
            graph,
        }
    }
}

fn guest_error(error: BackendError) -> Error {
    let message = error.to_string();
    match error {
        BackendError::Unavailable { .. } => Error::Unavailable(message),
        BackendError::Invalid { .. } => Error::Invalid(message),
        BackendError::Other { .. } | BackendError::Refused { .. } => Error::Other(message),
    }
}

impl Host for NativeHost {
    fn config(&mut self, key: &str) -> Option<String> {
        self.config.get(key).cloned()
    }

    fn scan(&mut self, pattern: &str, cursor: u64, count: u32) -> Result<ScanPage, Error> {
        let page = self
            .cache
            .scan_step(pattern, cursor, count.clamp(1, MAX_SCAN_COUNT));
        Ok(ScanPage {
            cursor: page.cursor,
            keys: page.keys,
        })
    }

    fn delete(&mut self, keys: &[String]) -> Result<u64, Error> {
        Ok(self.cache.unlink(keys))
    }

    fn delete_matching(&mut self, patterns: &[String]) -> Result<u64, Error> {
        let compiled: Vec<Compiled> = patterns
            .iter()
            .map(|p| Compiled::new(p.as_bytes()))
            .collect();
        Ok(self.cache.sweep(&compiled, true).deleted)
    }

    fn upsert_entity(
        &mut self,
        label: &str,
        id: &str,
        properties: &[(String, Value)],
    ) -> Result<(), Error> {
        let node = NodeKey {
            label: label.to_owned(),
            id: id.to_owned(),
        };
        let properties: Vec<(String, HostValue)> = properties
            .iter()
            .map(|(k, v)| (k.clone(), host_value(v)))
            .collect();
        futures::executor::block_on(self.graph.upsert_entity(&node, &properties))
            .map_err(guest_error)
    }

    fn log(&mut self, level: Level, message: &str, fields: &[(String, String)]) {
        let fields = fields
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join(" ");
        match level {
            Level::Trace => {
                tracing::trace!(target: "switchyard::plugin", fields = %fields, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "switchyard::plugin", fields = %fields, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "switchyard::plugin", fields = %fields, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "switchyard::plugin", fields = %fields, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "switchyard::plugin", fields = %fields, "{message}")
            }
        }
    }
}

/// A runtime with one plugin loaded, and the backends its events use.
pub struct WasmFixture {
    pub runtime: Runtime,
    pub plugin: Arc<Plugin>,
    /// The graph every event writes to (shared, so repeated events merge
    /// into the same node, as redeliveries do in the service).
    pub graph: MemoryGraph,
    /// A handler environment over a cache of its own, for events that make
    /// no cache calls or that reseed it themselves.
    pub env: Arc<HandlerEnv>,
    pub cache: MemoryCache,
}

impl WasmFixture {
    /// Loads the component at `path` into a runtime sized as `Isolation`
    /// sizes it (16 instance slots), with the default handler limits.
    pub fn load(path: &str) -> Self {
        Self::load_with(path, RuntimeConfig::default().keep_resident_bytes)
    }

    /// [`WasmFixture::load`] with pooled memories reset in place up to
    /// `keep_resident_bytes` (0: every page given back to the kernel).
    pub fn load_with(path: &str, keep_resident_bytes: usize) -> Self {
        let runtime = Runtime::new(RuntimeConfig {
            max_instances: 16,
            keep_resident_bytes,
            ..RuntimeConfig::default()
        })
        .expect("start the Wasm runtime");
        let bytes = std::fs::read(path).expect("read the component");
        let plugin = runtime.load(&bytes).expect("load the component");
        let graph = MemoryGraph::default();
        let cache = MemoryCache::default();
        let env = env_over(cache.clone(), graph.clone());
        WasmFixture {
            runtime,
            plugin,
            graph,
            env,
            cache,
        }
    }

    /// A handler environment over `cache` and the fixture's graph.
    pub fn env_with_cache(&self, cache: MemoryCache) -> Arc<HandlerEnv> {
        env_over(cache, self.graph.clone())
    }

    /// Runs one event on a fresh instance.
    pub async fn dispatch(
        &self,
        env: &Arc<HandlerEnv>,
        event: switchyard::bindings::event::Event,
    ) -> Dispatch {
        self.runtime.dispatch(&self.plugin, env, event).await
    }
}

fn env_over(cache: MemoryCache, graph: MemoryGraph) -> Arc<HandlerEnv> {
    HandlerEnv::new(
        "bench",
        BTreeMap::new(),
        Backends {
            cache: Arc::new(cache),
            graph: Arc::new(graph),
        },
        Limits::default(),
    )
}

/// A current-thread tokio runtime (the dispatch deadline needs its timer).
pub fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}
