//! Prometheus metrics, one registry per service.
//!
//! Every per-handler series carries the handler's name as the `handler`
//! label, so a handler that acks while deleting nothing shows up as exactly
//! that: `switchyard_events_total{outcome="ack"}` rising while
//! `switchyard_cache_keys_deleted_total` stays flat. Each series of a
//! configured handler exists from start-up, at zero, so `rate()` and
//! `absent()` mean what they say. Each label name means one thing:
//! `outcome`, `kind` (graph write: entity, relation), `error` (host-call
//! error), `fault` (why the host ended an event), `result`, `call` (a
//! backend call, `cache.scan`), `digest`. Times are in seconds.
//!
//! Beside them: `switchyard_build_info`, the instance pool
//! (`switchyard_instances_in_use`, `_max`, wait time per handler), how the
//! backends share their work (sweeps, write transactions: [`batching`]),
//! and the standard `process_*` series, read from `/proc` at each scrape.

mod batching;
mod process;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::capability::Effects;
use crate::runtime::Dispatch;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabel {
    pub handler: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub handler: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub handler: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub handler: String,
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    pub handler: String,
    pub fault: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub handler: String,
    pub call: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub target: String,
}

/// The host-call error kinds, as `error` labels.
pub const ERRORS: [&str; 4] = ["unavailable", "denied", "invalid", "other"];
/// Why the host ends an event, as `fault` labels (see `Fault::kind`).
pub const FAULTS: [&str; 5] = [
    "deadline",
    "memory",
    "host_call_limit",
    "trap",
    "instantiate",
];
/// The backend calls a guest makes, as `call` labels.
pub const CALLS: [&str; 5] = [
    "cache.scan",
    "cache.delete",
    "cache.delete-matching",
    "graph.upsert-entity",
    "graph.upsert-relation",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub handler: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub handler: String,
    pub digest: String,
}

type Scrape = Box<dyn Fn(&Metrics) + Send + Sync>;

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    pub events: Family<OutcomeLabels, Counter>,
    pub duration: Family<HandlerLabel, Histogram>,
    pub redeliveries: Family<HandlerLabel, Counter>,
    pub dead_letters: Family<HandlerLabel, Counter>,
    pub stale_redeliveries: Family<HandlerLabel, Counter>,
    pub keys_scanned: Family<HandlerLabel, Counter>,
    pub keys_deleted: Family<HandlerLabel, Counter>,
    pub graph_upserts: Family<KindLabels, Counter>,
    pub host_call_errors: Family<ErrorLabels, Counter>,
    pub host_call_duration: Family<CallLabels, Histogram>,
    pub faults: Family<FaultLabels, Counter>,
    pub instance_wait: Family<HandlerLabel, Histogram>,
    pub instances_in_use: Gauge,
    pub instances_max: Gauge,
    process: process::Process,
    batching: batching::Batching,
    /// Run before each scrape, to read what lives elsewhere (the pool).
    on_scrape: std::sync::Mutex<Vec<Scrape>>,
    pub reloads: Family<ResultLabels, Counter>,
    pub plugin: Family<PluginLabels, Gauge>,
    pub shadow: Family<ResultLabels, Counter>,
    pub pending: Family<HandlerLabel, Gauge>,
    pub ack_pending: Family<HandlerLabel, Gauge>,
    pub lease_held: Family<HandlerLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn handler(name: &str) -> HandlerLabel {
    HandlerLabel {
        handler: name.to_string(),
    }
}

fn kind(name: &str, kind: &str) -> KindLabels {
    KindLabels {
        handler: name.to_string(),
        kind: kind.to_string(),
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        let process = process::Process::register(&mut root);
        let registry = root.sub_registry_with_prefix("switchyard");
        let batching = batching::Batching::register(registry);
        let build = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "The running build (value 1): its version and target",
            build.clone(),
        );
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                target: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
            })
            .set(1);
        let instances_in_use = Gauge::default();
        registry.register(
            "instances_in_use",
            "Wasm instances running an event now, of switchyard_instances_max",
            instances_in_use.clone(),
        );
        let instances_max = Gauge::default();
        registry.register(
            "instances_max",
            "Wasm instances that may run at once (runtime.max_instances)",
            instances_max.clone(),
        );
        let instance_wait = Family::<HandlerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_01, 2.0, 24))
        });
        registry.register(
            "instance_wait_seconds",
            "Time an event waited for a free instance slot before it ran",
            instance_wait.clone(),
        );
        let host_call_duration = Family::<CallLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
        });
        registry.register(
            "host_call_duration_seconds",
            "Time of each cache and graph call a handler made, by call",
            host_call_duration.clone(),
        );
        let events = Family::<OutcomeLabels, Counter>::default();
        registry.register("events", "Events handled, by outcome", events.clone());
        let duration = Family::<HandlerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_1, 1.5, 30))
        });
        registry.register(
            "event_duration_seconds",
            "Time to run one event through its handler, instantiation included",
            duration.clone(),
        );
        let redeliveries = Family::<HandlerLabel, Counter>::default();
        registry.register(
            "redeliveries",
            "Events received on a delivery after the first",
            redeliveries.clone(),
        );
        let dead_letters = Family::<HandlerLabel, Counter>::default();
        registry.register(
            "dead_letters",
            "Events published to the dead-letter stream",
            dead_letters.clone(),
        );
        let stale_redeliveries = Family::<HandlerLabel, Counter>::default();
        registry.register(
            "stale_redeliveries",
            "Keyed events redelivered after this host had settled them (the server lost the ack), acked without running again",
            stale_redeliveries.clone(),
        );
        let keys_scanned = Family::<HandlerLabel, Counter>::default();
        registry.register(
            "cache_keys_scanned",
            "Keys returned to handlers by cache scans",
            keys_scanned.clone(),
        );
        let keys_deleted = Family::<HandlerLabel, Counter>::default();
        registry.register(
            "cache_keys_deleted",
            "Keys that existed and were deleted by handlers",
            keys_deleted.clone(),
        );
        let graph_upserts = Family::<KindLabels, Counter>::default();
        registry.register(
            "graph_upserts",
            "Successful graph upserts, by kind (entity, relation)",
            graph_upserts.clone(),
        );
        let host_call_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "host_call_errors",
            "Cache and graph calls that failed, by error (unavailable, denied, invalid, other)",
            host_call_errors.clone(),
        );
        let faults = Family::<FaultLabels, Counter>::default();
        registry.register(
            "faults",
            "Events ended by the host, by fault (deadline, memory, host_call_limit, trap, instantiate)",
            faults.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "plugin_reloads",
            "Plugin versions offered, by result (ok, refused)",
            reloads.clone(),
        );
        let plugin = Family::<PluginLabels, Gauge>::default();
        registry.register(
            "plugin_info",
            "The live plugin version of each handler (value 1)",
            plugin.clone(),
        );
        let shadow = Family::<ResultLabels, Counter>::default();
        registry.register(
            "shadow_events",
            "Events run by a shadow candidate too, by result (same, differ)",
            shadow.clone(),
        );
        let pending = Family::<HandlerLabel, Gauge>::default();
        registry.register(
            "consumer_pending",
            "Events in the stream not yet delivered to the consumer",
            pending.clone(),
        );
        let ack_pending = Family::<HandlerLabel, Gauge>::default();
        registry.register(
            "consumer_ack_pending",
            "Events delivered and not yet settled",
            ack_pending.clone(),
        );
        let lease_held = Family::<HandlerLabel, Gauge>::default();
        registry.register(
            "lease_held",
            "For an exclusive handler: 1 while this host runs it, 0 while it stands by; for a partitioned one: how many of its partitions this host runs",
            lease_held.clone(),
        );
        Metrics {
            registry: root,
            events,
            duration,
            redeliveries,
            dead_letters,
            stale_redeliveries,
            keys_scanned,
            keys_deleted,
            graph_upserts,
            host_call_errors,
            host_call_duration,
            faults,
            instance_wait,
            instances_in_use,
            instances_max,
            process,
            batching,
            on_scrape: std::sync::Mutex::new(Vec::new()),
            reloads,
            plugin,
            shadow,
            pending,
            ack_pending,
            lease_held,
        }
    }

    /// Runs `refresh` before every scrape.
    pub fn on_scrape(&self, refresh: impl Fn(&Metrics) + Send + Sync + 'static) {
        crate::lock(&self.on_scrape).push(Box::new(refresh));
    }

    /// Creates every per-handler series at zero, so the first event, dead
    /// letter or reload of a process shows up in `rate()` and `increase()`;
    /// `exclusive` and partitioned handlers get `lease_held` too (0 until a
    /// lease is won).
    pub fn register_handler(&self, name: &str, exclusive: bool) {
        let label = handler(name);
        let _ = self.duration.get_or_create(&label);
        let _ = self.instance_wait.get_or_create(&label);
        let _ = self.pending.get_or_create(&label);
        let _ = self.ack_pending.get_or_create(&label);
        if exclusive {
            let _ = self.lease_held.get_or_create(&label);
        }
        for error in ERRORS {
            let _ = self.host_call_errors.get_or_create(&ErrorLabels {
                handler: name.to_string(),
                error: error.to_string(),
            });
        }
        for fault in FAULTS {
            let _ = self.faults.get_or_create(&FaultLabels {
                handler: name.to_string(),
                fault: fault.to_string(),
            });
        }
        for call in CALLS {
            let _ = self.host_call_duration.get_or_create(&CallLabels {
                handler: name.to_string(),
                call: call.to_string(),
            });
        }
        for result in ["same", "differ"] {
            let _ = self.shadow.get_or_create(&ResultLabels {
                handler: name.to_string(),
                result: result.to_string(),
            });
        }
        for outcome in ["ack", "retry", "reject"] {
            let _ = self.events.get_or_create(&OutcomeLabels {
                handler: name.to_string(),
                outcome: outcome.to_string(),
            });
        }
        let _ = self.redeliveries.get_or_create(&label);
        let _ = self.dead_letters.get_or_create(&label);
        let _ = self.stale_redeliveries.get_or_create(&label);
        let _ = self.keys_scanned.get_or_create(&label);
        let _ = self.keys_deleted.get_or_create(&label);
        for kind_name in ["entity", "relation"] {
            let _ = self.graph_upserts.get_or_create(&kind(name, kind_name));
        }
        for result in ["ok", "refused"] {
            let _ = self.reloads.get_or_create(&ResultLabels {
                handler: name.to_string(),
                result: result.to_string(),
            });
        }
    }

    /// Records one dispatched event.
    pub fn record(&self, name: &str, attempt: u32, dispatch: &Dispatch) {
        let label = handler(name);
        self.events
            .get_or_create(&OutcomeLabels {
                handler: name.to_string(),
                outcome: dispatch.outcome.kind().to_string(),
            })
            .inc();
        self.duration
            .get_or_create(&label)
            .observe(dispatch.elapsed.as_secs_f64());
        self.instance_wait
            .get_or_create(&label)
            .observe(dispatch.waited.as_secs_f64());
        if attempt > 1 {
            self.redeliveries.get_or_create(&label).inc();
        }
        self.record_effects(name, &dispatch.effects);
        if let Some(fault) = &dispatch.fault {
            self.faults
                .get_or_create(&FaultLabels {
                    handler: name.to_string(),
                    fault: fault.kind().to_string(),
                })
                .inc();
        }
    }

    fn record_effects(&self, name: &str, effects: &Effects) {
        let label = handler(name);
        self.keys_scanned
            .get_or_create(&label)
            .inc_by(effects.keys_scanned);
        self.keys_deleted
            .get_or_create(&label)
            .inc_by(effects.keys_deleted);
        self.graph_upserts
            .get_or_create(&kind(name, "entity"))
            .inc_by(effects.entities_upserted);
        self.graph_upserts
            .get_or_create(&kind(name, "relation"))
            .inc_by(effects.relations_upserted);
        let errors = &effects.errors;
        for (error, count) in [
            ("unavailable", errors.unavailable),
            ("denied", errors.denied),
            ("invalid", errors.invalid),
            ("other", errors.other),
        ] {
            if count > 0 {
                self.host_call_errors
                    .get_or_create(&ErrorLabels {
                        handler: name.to_string(),
                        error: error.to_string(),
                    })
                    .inc_by(count);
            }
        }
        for (call, took) in &effects.call_times.0 {
            self.host_call_duration
                .get_or_create(&CallLabels {
                    handler: name.to_string(),
                    call: (*call).to_string(),
                })
                .observe(took.as_secs_f64());
        }
    }

    pub fn dead_lettered(&self, name: &str) {
        self.dead_letters.get_or_create(&handler(name)).inc();
    }

    pub fn stale_redelivery(&self, name: &str) {
        self.stale_redeliveries.get_or_create(&handler(name)).inc();
    }

    /// Marks `digest` as the live plugin of `name`, clearing the previous one.
    pub fn plugin_live(&self, name: &str, previous: Option<&str>, digest: &str) {
        if let Some(previous) = previous {
            self.plugin.remove(&PluginLabels {
                handler: name.to_string(),
                digest: previous.to_string(),
            });
        }
        self.plugin
            .get_or_create(&PluginLabels {
                handler: name.to_string(),
                digest: digest.to_string(),
            })
            .set(1);
    }

    pub fn reload(&self, name: &str, ok: bool) {
        self.reloads
            .get_or_create(&ResultLabels {
                handler: name.to_string(),
                result: if ok { "ok" } else { "refused" }.to_string(),
            })
            .inc();
    }

    pub fn shadow(&self, name: &str, same: bool) {
        self.shadow
            .get_or_create(&ResultLabels {
                handler: name.to_string(),
                result: if same { "same" } else { "differ" }.to_string(),
            })
            .inc();
    }

    pub fn consumer_state(&self, name: &str, pending: u64, ack_pending: usize) {
        self.pending
            .get_or_create(&handler(name))
            .set(pending as i64);
        self.ack_pending
            .get_or_create(&handler(name))
            .set(ack_pending as i64);
    }

    /// Leases this host holds for the handler: 0 or 1 for an exclusive
    /// one, its partitions for a partitioned one.
    pub fn lease_held(&self, name: &str, held: usize) {
        self.lease_held
            .get_or_create(&handler(name))
            .set(held as i64);
    }

    /// The backends' shared work as of now.
    pub fn backends(
        &self,
        sweeps: Option<crate::backend::SweepTotals>,
        writes: Option<crate::backend::WriteTotals>,
    ) {
        self.batching.refresh(sweeps, writes);
    }

    /// The instance pool as of now: `in_use` of `max` slots taken.
    pub fn instances(&self, in_use: usize, max: u32) {
        self.instances_in_use.set(in_use as i64);
        self.instances_max.set(i64::from(max));
    }

    /// The Prometheus text exposition of every metric, the process series
    /// read fresh.
    pub fn render(&self) -> String {
        self.process.refresh();
        for refresh in crate::lock(&self.on_scrape).iter() {
            refresh(self);
        }
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}
