//! A configured handler: its settings, its environment, the plugin version
//! live now, its totals, and what the fleet parts attach to it.
//!
//! This is the type delivery runs events through and the fleet parts
//! (control plane, reload, shadow, status) act on, so it sits below both:
//! it imports the runtime, capabilities and metrics, never delivery or the
//! fleet.
//!
//! - [`Handler::dispatch`] runs one event on the live version; when a
//!   shadow candidate is attached it runs beside it ([`shadow`]), which the
//!   caller cannot tell apart.
//! - [`history`]: the versions offered to the handler and their results.

pub mod history;
pub mod shadow;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;

use crate::bindings::event::Event;
use crate::capability::HandlerEnv;
use crate::config::HandlerConfig;
use crate::metrics::Metrics;
use crate::runtime::{Dispatch, Plugin, Runtime};

use self::history::ReloadState;
use self::shadow::Shadow;

/// One configured handler: its settings, its environment and the plugin
/// version currently live.
pub struct Handler {
    pub config: HandlerConfig,
    pub env: Arc<HandlerEnv>,
    /// Swapped whole on reload; each event runs on the version it loaded.
    pub plugin: ArcSwap<Plugin>,
    pub stats: HandlerStats,
    /// Versions offered and their results; see [`history`].
    pub reload: Mutex<ReloadState>,
    /// A candidate running beside the live version; see [`shadow`].
    pub shadow: ArcSwapOption<Shadow>,
    /// For an exclusive handler, once its consumer started: whether this
    /// host holds the handler's lease.
    pub lease: OnceLock<watch::Receiver<bool>>,
    /// For a partitioned handler, once its consumers started: its
    /// partition count and the partitions this host pulls from.
    pub partitions: OnceLock<(u32, watch::Receiver<Vec<u32>>)>,
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
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

impl Handler {
    /// A handler serving `plugin`; `version` names it when it came from the
    /// control plane.
    pub fn new(
        config: HandlerConfig,
        env: Arc<HandlerEnv>,
        plugin: Arc<Plugin>,
        version: Option<String>,
        runtime: Arc<Runtime>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Handler {
            config,
            env,
            plugin: ArcSwap::new(plugin),
            stats: HandlerStats::default(),
            reload: Mutex::new(ReloadState {
                version,
                ..Default::default()
            }),
            shadow: ArcSwapOption::default(),
            lease: OnceLock::new(),
            partitions: OnceLock::new(),
            runtime,
            metrics,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The engine this handler's versions are compiled and run on.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Runs `event` on `plugin` (the live version the caller loaded), and
    /// on the shadow candidate first when one is attached. Returns the live
    /// run; only it may settle the event.
    pub async fn dispatch(&self, plugin: &Plugin, event: Event) -> Dispatch {
        match self.shadow.load_full() {
            None => self.runtime.dispatch(plugin, &self.env, event).await,
            Some(candidate) => {
                shadow::beside(
                    &self.runtime,
                    &self.env,
                    &self.metrics,
                    &candidate,
                    plugin,
                    event,
                )
                .await
            }
        }
    }

    /// Whether this host runs an exclusive handler (`Some(true)`), stands by
    /// (`Some(false)`), or the handler is not exclusive (`None`).
    pub fn lease_held(&self) -> Option<bool> {
        self.lease.get().map(|held| *held.borrow())
    }

    /// For a partitioned handler: its partition count and the partitions
    /// this host pulls from now.
    pub fn partitions_held(&self) -> Option<(u32, Vec<u32>)> {
        self.partitions
            .get()
            .map(|(count, held)| (*count, held.borrow().clone()))
    }
}
