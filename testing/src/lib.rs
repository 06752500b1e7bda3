//! A test harness for Switchyard handler plugins.
//!
//! Load a built plugin (or build one: [`Harness::build`] takes a plugin
//! crate's directory), seed its in-memory cache, send events, and assert on
//! what happened: the outcome of each event, the keys left in the cache and
//! the nodes written to the graph. The plugin runs on the same runtime and
//! capabilities as in the service; the in-memory cache selects keys exactly
//! as Valkey does.
//!
//! ```ignore
//! use switchyard_testing::Harness;
//! use serde_json::json;
//!
//! let mut plugin = Harness::load("target/wasm32-wasip2/release/my_plugin.wasm")
//!     .config("key_prefix", "context:")
//!     .start();
//! plugin.seed_keys(["context:S1", "context:S1:dev", "context:S10"]);
//! plugin
//!     .send_json("planning.story.transitioned", json!({"story_id": "S1", "timestamp": "t1"}))
//!     .assert_ack();
//! plugin.assert_keys(["context:S10"]);
//! plugin.assert_node("PhaseTransition", "S1:t1");
//! ```
//!
//! Every assertion panics with a message that shows what was found instead,
//! so a failing test reads as a diagnosis.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test harness reports by panicking

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value as Json;
pub use switchyard::backend::memory::{StoredNode, StoredRelation};
pub use switchyard::bindings::graph::Value;
pub use switchyard::capability::Effects;
use switchyard::grant::{Grants, GrantsConfig};
pub use switchyard::isolation::EventSpec;
use switchyard::isolation::{Isolation, Profile};
pub use switchyard::limits::Limits;
pub use switchyard::runtime::{Dispatch, Fault, Outcome};
use switchyard::toolchain;

/// Configures a plugin before it starts. By default every key, label and
/// relation is granted and the default limits apply.
pub struct Builder {
    path: PathBuf,
    profile: Profile,
}

impl Builder {
    /// Sets one plugin configuration value.
    pub fn config(mut self, key: &str, value: &str) -> Self {
        self.profile
            .config
            .insert(key.to_string(), value.to_string());
        self
    }

    /// Replaces the default limits (deadline, memory, host calls).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.profile.limits = limits;
        self
    }

    /// Grants only what this `[handlers.grants]` table body grants, e.g.
    /// `cache_keys = ["context:*"]`. Panics, naming the problem, if it is
    /// not a valid grants table.
    pub fn grants(mut self, table: &str) -> Self {
        let config: GrantsConfig =
            toml::from_str(table).unwrap_or_else(|e| panic!("grants table {table:?} refused: {e}"));
        self.profile.grants = Grants::new(&config);
        self
    }

    /// Runs the plugin as handler `handler` of the service configuration
    /// at `path` does: its plugin configuration, limits and grants. Later
    /// [`Builder::config`] calls apply on top. Panics, naming the problem,
    /// if the file is refused or has no such handler.
    pub fn as_handler_of(mut self, path: impl AsRef<Path>, handler: &str) -> Self {
        let path = path.as_ref();
        let service = switchyard::config::Config::load(path)
            .unwrap_or_else(|e| panic!("service configuration {}: {e}", path.display()));
        let found = service
            .handlers
            .iter()
            .find(|h| h.name == handler)
            .unwrap_or_else(|| panic!("{} has no handler {handler:?}", path.display()));
        self.profile = Profile::of(found);
        self
    }

    /// Loads the plugin. Panics if it cannot be read or is refused.
    pub fn start(self) -> Harness {
        let bytes = std::fs::read(&self.path)
            .unwrap_or_else(|e| panic!("cannot read plugin {}: {e}", self.path.display()));
        self.start_bytes(&bytes)
    }

    /// Loads the plugin, returning the refusal instead of panicking.
    pub fn try_start(self) -> Result<Harness, String> {
        let bytes = std::fs::read(&self.path)
            .map_err(|e| format!("cannot read plugin {}: {e}", self.path.display()))?;
        let isolation = Isolation::load(&bytes, self.profile).map_err(|e| e.to_string())?;
        Ok(Harness::new(isolation))
    }

    fn start_bytes(self, bytes: &[u8]) -> Harness {
        let path = self.path;
        let isolation = Isolation::load(bytes, self.profile)
            .unwrap_or_else(|e| panic!("plugin {} refused: {e}", path.display()));
        Harness::new(isolation)
    }
}

/// A plugin running on in-memory backends.
pub struct Harness {
    isolation: Isolation,
    runtime: tokio::runtime::Runtime,
}

impl Harness {
    /// Starts configuring the plugin at `path`.
    pub fn load(path: impl AsRef<Path>) -> Builder {
        Builder {
            path: path.as_ref().to_path_buf(),
            profile: Profile::unrestricted(BTreeMap::new()),
        }
    }

    /// Builds the plugin in `dir` (as `switchyard plugin build` does: a
    /// Rust crate for `wasm32-wasip2` in release) and starts configuring
    /// its component. One build per directory per test process: the tests
    /// of one binary share it. A failed build panics with the compiler's
    /// last lines.
    pub fn build(dir: impl AsRef<Path>) -> Builder {
        static BUILT: std::sync::Mutex<BTreeMap<PathBuf, PathBuf>> =
            std::sync::Mutex::new(BTreeMap::new());
        let dir = dir.as_ref().to_path_buf();
        let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
        let artifact = built.entry(dir.clone()).or_insert_with(|| {
            match toolchain::build(&dir, toolchain::Output::Captured) {
                Ok(built) => built.artifact,
                Err(error) => panic!("building the plugin in {}: {error:#}", dir.display()),
            }
        });
        Harness::load(artifact.clone())
    }

    fn new(isolation: Isolation) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cannot start a tokio runtime for the harness");
        Harness { isolation, runtime }
    }

    /// Sets each key to a placeholder value.
    pub fn seed_keys<I, K>(&mut self, keys: I) -> &mut Self
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        for key in keys {
            self.isolation.cache().set(key, "cached");
        }
        self
    }

    /// Sets `key` to `value`.
    pub fn seed(&mut self, key: &str, value: &str) -> &mut Self {
        self.isolation.cache().set(key, value);
        self
    }

    /// Simulates a cache outage: while `down`, every cache call fails as
    /// `unavailable`.
    pub fn cache_unavailable(&mut self, down: bool) -> &mut Self {
        self.isolation.cache().set_unavailable(down);
        self
    }

    /// Simulates a graph outage: while `down`, every graph call fails as
    /// `unavailable`.
    pub fn graph_unavailable(&mut self, down: bool) -> &mut Self {
        self.isolation.graph().set_unavailable(down);
        self
    }

    /// Sends an event as a first delivery.
    pub fn send(&mut self, event: EventSpec) -> Sent {
        self.send_attempt(event, 1)
    }

    /// Sends an event as delivery number `attempt`.
    pub fn send_attempt(&mut self, event: EventSpec, attempt: u32) -> Sent {
        let dispatch = self
            .runtime
            .block_on(self.isolation.send_attempt(event, attempt));
        Sent { dispatch }
    }

    /// Sends `payload` serialised as JSON.
    pub fn send_json(&mut self, subject: &str, payload: Json) -> Sent {
        self.send(EventSpec::json(subject, &payload))
    }

    /// Sends raw payload bytes.
    pub fn send_raw(&mut self, subject: &str, payload: impl Into<Vec<u8>>) -> Sent {
        self.send(EventSpec::raw(subject, payload))
    }

    /// Every key in the cache, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.isolation.cache().keys()
    }

    /// Every node in the graph, sorted by label and id.
    pub fn nodes(&self) -> Vec<StoredNode> {
        self.isolation.graph().nodes()
    }

    /// Every relation in the graph.
    pub fn relations(&self) -> Vec<StoredRelation> {
        self.isolation.graph().relations()
    }

    /// The JSON report `switchyard test --json` prints.
    pub fn report(&self) -> Json {
        self.isolation.report()
    }

    /// Asserts the cache holds exactly `expected` (in any order).
    pub fn assert_keys<I, K>(&self, expected: I) -> &Self
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        let mut expected: Vec<String> = expected.into_iter().map(Into::into).collect();
        expected.sort();
        let found = self.keys();
        assert_eq!(found, expected, "cache keys differ from the expected ones");
        self
    }

    /// Asserts the node exists and returns it.
    pub fn assert_node(&self, label: &str, id: &str) -> StoredNode {
        match self.isolation.graph().node(label, id) {
            Some(node) => node,
            None => {
                let present: Vec<String> = self
                    .nodes()
                    .iter()
                    .map(|n| format!("({}:{})", n.label, n.id))
                    .collect();
                panic!("no node ({label}:{id}); the graph holds {present:?}")
            }
        }
    }

    /// Asserts how many nodes carry `label`.
    pub fn assert_node_count(&self, label: &str, expected: usize) -> &Self {
        let found = self.isolation.graph().count(label);
        assert_eq!(found, expected, "number of {label} nodes");
        self
    }
}

/// The result of one event, with assertions.
#[derive(Debug)]
pub struct Sent {
    pub dispatch: Dispatch,
}

impl Sent {
    pub fn outcome(&self) -> &Outcome {
        &self.dispatch.outcome
    }

    pub fn effects(&self) -> &Effects {
        &self.dispatch.effects
    }

    pub fn fault(&self) -> Option<&Fault> {
        self.dispatch.fault.as_ref()
    }

    /// Asserts the plugin acked.
    pub fn assert_ack(&self) -> &Self {
        assert_eq!(self.dispatch.outcome, Outcome::Ack, "{}", self.describe());
        self
    }

    /// Asserts a retry and returns its delay.
    pub fn assert_retry(&self) -> Option<Duration> {
        match &self.dispatch.outcome {
            Outcome::Retry { delay } => *delay,
            _ => panic!("expected retry; {}", self.describe()),
        }
    }

    /// Asserts a reject whose reason contains `needle`; returns the reason.
    pub fn assert_reject_containing(&self, needle: &str) -> String {
        match &self.dispatch.outcome {
            Outcome::Reject { reason } if reason.contains(needle) => reason.clone(),
            _ => panic!("expected reject containing {needle:?}; {}", self.describe()),
        }
    }

    /// Asserts the event ended on a host-detected fault and returns it.
    pub fn assert_fault(&self) -> Fault {
        match &self.dispatch.fault {
            Some(fault) => fault.clone(),
            None => panic!("expected a fault; {}", self.describe()),
        }
    }

    /// Asserts how many keys the event deleted.
    pub fn assert_deleted(&self, expected: u64) -> &Self {
        assert_eq!(
            self.dispatch.effects.keys_deleted,
            expected,
            "keys deleted; {}",
            self.describe()
        );
        self
    }

    /// Asserts the event had no effect on the cache or the graph.
    pub fn assert_no_effects(&self) -> &Self {
        let e = &self.dispatch.effects;
        assert!(
            e.keys_scanned == 0
                && e.keys_deleted == 0
                && e.entities_upserted == 0
                && e.relations_upserted == 0,
            "expected no effects; {}",
            self.describe()
        );
        self
    }

    fn describe(&self) -> String {
        let d = &self.dispatch;
        let mut text = format!("outcome {:?}, effects {:?}", d.outcome, d.effects);
        if let Some(fault) = &d.fault {
            text.push_str(&format!(", fault: {fault}"));
        }
        if !d.output.is_empty() {
            text.push_str(&format!(", guest output: {}", d.output.trim_end()));
        }
        text
    }
}
