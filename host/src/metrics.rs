//! Prometheus metrics, one registry per service.
//!
//! Every series carries the handler's name as the `handler` label, so a
//! handler that acks while deleting nothing shows up as exactly that:
//! `switchyard_events_total{outcome="ack"}` rising while
//! `switchyard_cache_keys_deleted_total` stays flat.

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
pub struct ResultLabels {
    pub handler: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub handler: String,
    pub digest: String,
}

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    pub events: Family<OutcomeLabels, Counter>,
    pub duration: Family<HandlerLabel, Histogram>,
    pub redeliveries: Family<HandlerLabel, Counter>,
    pub dead_letters: Family<HandlerLabel, Counter>,
    pub keys_scanned: Family<HandlerLabel, Counter>,
    pub keys_deleted: Family<HandlerLabel, Counter>,
    pub graph_upserts: Family<KindLabels, Counter>,
    pub host_call_errors: Family<KindLabels, Counter>,
    pub faults: Family<KindLabels, Counter>,
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
        let mut registry = Registry::with_prefix("switchyard");
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
        let host_call_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "host_call_errors",
            "Cache and graph calls that failed, by kind (unavailable, denied, invalid, other)",
            host_call_errors.clone(),
        );
        let faults = Family::<KindLabels, Counter>::default();
        registry.register(
            "faults",
            "Events ended by the host (deadline, memory, host_call_limit, trap, instantiate)",
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
            "For an exclusive handler: 1 while this host runs it, 0 while it stands by",
            lease_held.clone(),
        );
        Metrics {
            registry,
            events,
            duration,
            redeliveries,
            dead_letters,
            keys_scanned,
            keys_deleted,
            graph_upserts,
            host_call_errors,
            faults,
            reloads,
            plugin,
            shadow,
            pending,
            ack_pending,
            lease_held,
        }
    }

    /// Creates every per-handler series at zero, so the first event, dead
    /// letter or reload of a process shows up in `rate()` and `increase()`.
    pub fn register_handler(&self, name: &str) {
        let label = handler(name);
        for outcome in ["ack", "retry", "reject"] {
            let _ = self.events.get_or_create(&OutcomeLabels {
                handler: name.to_string(),
                outcome: outcome.to_string(),
            });
        }
        let _ = self.redeliveries.get_or_create(&label);
        let _ = self.dead_letters.get_or_create(&label);
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
        if attempt > 1 {
            self.redeliveries.get_or_create(&label).inc();
        }
        self.record_effects(name, &dispatch.effects);
        if let Some(fault) = &dispatch.fault {
            self.faults.get_or_create(&kind(name, fault.kind())).inc();
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
        for (error_kind, count) in [
            ("unavailable", errors.unavailable),
            ("denied", errors.denied),
            ("invalid", errors.invalid),
            ("other", errors.other),
        ] {
            if count > 0 {
                self.host_call_errors
                    .get_or_create(&kind(name, error_kind))
                    .inc_by(count);
            }
        }
    }

    pub fn dead_lettered(&self, name: &str) {
        self.dead_letters.get_or_create(&handler(name)).inc();
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

    pub fn lease_held(&self, name: &str, held: bool) {
        self.lease_held
            .get_or_create(&handler(name))
            .set(i64::from(held));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}
