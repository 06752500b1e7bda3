//! Shadow runs: a candidate version runs beside the live one, on the same
//! live events, with no side effects, and every difference is reported.
//!
//! For each event of a handler that has a candidate, [`beside`] first
//! runs the candidate on recording backends (cache scans read the real
//! cache; deletes and graph writes are recorded, never executed), then runs
//! the live version on backends that record what they execute. The
//! candidate goes first so both see the cache as it was before the event.
//! The two runs are compared on the outcome, the keys each deleted (or
//! would have), and the nodes and relations each wrote; the result is
//! counted in `switchyard_shadow_events_total{result}` and the last
//! difference is kept for `switchyard status`. Only the live run's outcome
//! settles the event.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Serialize;

use crate::backend::{
    BackendError, Backends, CacheBackend, GraphBackend, NodeKey, ScanPage, Swept,
};
use crate::bindings::event::Event;
use crate::bindings::graph::Value;
use crate::capability::HandlerEnv;
use crate::glob::Compiled;
use crate::lock;
use crate::metrics::Metrics;
use crate::runtime::{Dispatch, Plugin, Runtime};

/// A candidate version and how it compares so far.
pub struct Shadow {
    pub plugin: Arc<Plugin>,
    pub report: Mutex<ShadowReport>,
}

impl Shadow {
    pub fn new(plugin: Arc<Plugin>) -> Self {
        let report = ShadowReport {
            digest: plugin.digest().to_string(),
            ..ShadowReport::default()
        };
        Shadow {
            plugin,
            report: Mutex::new(report),
        }
    }
}

/// How a candidate compared with the live version.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ShadowReport {
    pub digest: String,
    pub compared: u64,
    pub differing: u64,
    pub last_difference: Option<String>,
}

#[derive(Debug, Default, PartialEq)]
struct Recorded {
    deleted: BTreeSet<String>,
    entities: BTreeMap<NodeKey, Vec<(String, Value)>>,
    relations: BTreeMap<(NodeKey, String, NodeKey), Vec<(String, Value)>>,
}

/// Backends that record writes, and execute them only when `execute`.
struct Recording {
    inner: Backends,
    execute: bool,
    log: Arc<Mutex<Recorded>>,
}

#[async_trait]
impl CacheBackend for Recording {
    fn kind(&self) -> &'static str {
        self.inner.cache.kind()
    }

    async fn scan(&self, pattern: &str, cursor: u64, count: u32) -> Result<ScanPage, BackendError> {
        self.inner.cache.scan(pattern, cursor, count).await
    }

    async fn delete(&self, keys: &[String]) -> Result<u64, BackendError> {
        let removed = if self.execute {
            self.inner.cache.delete(keys).await?
        } else {
            keys.iter().collect::<BTreeSet<_>>().len() as u64
        };
        lock(&self.log).deleted.extend(keys.iter().cloned());
        Ok(removed)
    }

    async fn delete_matching(&self, patterns: &[Compiled]) -> Result<Swept, BackendError> {
        let swept = if self.execute {
            self.inner.cache.delete_matching(patterns).await?
        } else {
            let keys = self.inner.cache.find_matching(patterns).await?;
            Swept {
                deleted: keys.len() as u64,
                keys,
            }
        };
        lock(&self.log).deleted.extend(
            swept
                .keys
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
        );
        Ok(swept)
    }

    async fn find_matching(&self, patterns: &[Compiled]) -> Result<Vec<Vec<u8>>, BackendError> {
        self.inner.cache.find_matching(patterns).await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.inner.cache.ping().await
    }
}

#[async_trait]
impl GraphBackend for Recording {
    fn kind(&self) -> &'static str {
        self.inner.graph.kind()
    }

    async fn upsert_entity(
        &self,
        node: &NodeKey,
        properties: &[(String, Value)],
    ) -> Result<(), BackendError> {
        if self.execute {
            self.inner.graph.upsert_entity(node, properties).await?;
        }
        lock(&self.log)
            .entities
            .entry(node.clone())
            .or_default()
            .extend(properties.iter().cloned());
        Ok(())
    }

    async fn upsert_relation(
        &self,
        source: &NodeKey,
        kind: &str,
        target: &NodeKey,
        properties: &[(String, Value)],
    ) -> Result<(), BackendError> {
        if self.execute {
            self.inner
                .graph
                .upsert_relation(source, kind, target, properties)
                .await?;
        }
        lock(&self.log)
            .relations
            .entry((source.clone(), kind.to_string(), target.clone()))
            .or_default()
            .extend(properties.iter().cloned());
        Ok(())
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.inner.graph.ping().await
    }
}

fn recording_env(env: &HandlerEnv, execute: bool) -> (Arc<HandlerEnv>, Arc<Mutex<Recorded>>) {
    let log = Arc::new(Mutex::new(Recorded::default()));
    let recording = Arc::new(Recording {
        inner: env.backends.clone(),
        execute,
        log: log.clone(),
    });
    let env = Arc::new(HandlerEnv {
        name: env.name.clone(),
        isolated: env.isolated,
        config: env.config.clone(),
        backends: Backends {
            cache: recording.clone(),
            graph: recording,
        },
        limits: env.limits.clone(),
        grants: env.grants.clone(),
    });
    (env, log)
}

/// Runs `event` on `candidate` first (its writes recorded, never executed),
/// then on the live `plugin` in `env` (its writes executed and recorded),
/// compares the two and reports the difference. Returns the live run.
pub async fn beside(
    runtime: &Runtime,
    env: &HandlerEnv,
    metrics: &Metrics,
    candidate: &Shadow,
    plugin: &Plugin,
    event: Event,
) -> Dispatch {
    let (shadow_env, shadow_log) = recording_env(env, false);
    let shadow_run = runtime
        .dispatch(&candidate.plugin, &shadow_env, event.clone())
        .await;
    let (live_env, live_log) = recording_env(env, true);
    let live = runtime.dispatch(plugin, &live_env, event).await;

    let difference = compare(&live, &lock(&live_log), &shadow_run, &lock(&shadow_log));
    metrics.shadow(&env.name, difference.is_none());
    let mut report = lock(&candidate.report);
    report.compared += 1;
    if let Some(difference) = difference {
        tracing::warn!(handler = %env.name, candidate = %candidate.plugin.digest().short(), %difference, "shadow run differs");
        report.differing += 1;
        report.last_difference = Some(difference);
    }
    live
}

fn compare(
    live: &Dispatch,
    live_log: &Recorded,
    candidate: &Dispatch,
    candidate_log: &Recorded,
) -> Option<String> {
    let mut differences = Vec::new();
    if live.outcome != candidate.outcome {
        differences.push(format!(
            "outcome: live {:?}, candidate {:?}",
            live.outcome, candidate.outcome
        ));
    }
    if live_log.deleted != candidate_log.deleted {
        let only_live: Vec<_> = live_log
            .deleted
            .difference(&candidate_log.deleted)
            .take(5)
            .collect();
        let only_candidate: Vec<_> = candidate_log
            .deleted
            .difference(&live_log.deleted)
            .take(5)
            .collect();
        differences.push(format!(
            "keys deleted: live {}, candidate {}; only live {only_live:?}, only candidate {only_candidate:?}",
            live_log.deleted.len(),
            candidate_log.deleted.len()
        ));
    }
    if live_log.entities != candidate_log.entities {
        let live_nodes: BTreeSet<_> = live_log
            .entities
            .keys()
            .map(|k| format!("({}:{})", k.label, k.id))
            .collect();
        let candidate_nodes: BTreeSet<_> = candidate_log
            .entities
            .keys()
            .map(|k| format!("({}:{})", k.label, k.id))
            .collect();
        differences.push(format!(
            "nodes written: live {live_nodes:?}, candidate {candidate_nodes:?}"
        ));
    }
    if live_log.relations != candidate_log.relations {
        differences.push(format!(
            "relations written: live {}, candidate {}",
            live_log.relations.len(),
            candidate_log.relations.len()
        ));
    }
    if differences.is_empty() {
        None
    } else {
        Some(differences.join("; "))
    }
}
