//! Capabilities: the host side of each WIT import, one file per interface.
//!
//! Every call a plugin makes lands on [`HostState`], the data of the store
//! that runs one event. A capability checks the request (identifiers,
//! patterns, the handler's limits and [`Grants`]), hands it to a backend,
//! records the effect in [`Effects`], and turns a [`BackendError`] into the
//! WIT `error` variant. A call outside the handler's grants is the `denied`
//! error, logged with the handler and what it named, and counted. A trap is
//! used only for an exceeded host limit.
//!
//! - [`cache`]: `scan` and `delete`.
//! - [`graph`]: `upsert-entity` and `upsert-relation`.
//! - [`log`]: guest logs into `tracing`.
//! - [`config`]: the handler's configuration.
//!
//! Capabilities import backends, grants, limits and the bindings; never the
//! runtime (which imports them), delivery, the fleet or the service.

pub mod cache;
pub mod config;
pub mod graph;
pub mod log;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::backend::{BackendError, Backends};
use crate::bindings::types::Error as WitError;
use crate::grant::Grants;
use crate::limits::Limits;

/// What every instance of one handler may reach: its name, configuration,
/// backends, limits and grants. Shared by all events of the handler.
pub struct HandlerEnv {
    pub name: String,
    /// A plugin run in isolation (`switchyard test`, fixtures before a
    /// version goes live): the guest's log records go out at debug level,
    /// since the outcomes they describe are reported and expected.
    pub isolated: bool,
    pub config: BTreeMap<String, String>,
    pub backends: Backends,
    pub limits: Limits,
    pub grants: Grants,
}

impl HandlerEnv {
    /// An environment with every key, label and relation granted: for a
    /// plugin run in isolation on in-memory backends. A configured handler
    /// uses [`HandlerEnv::with_grants`].
    pub fn new(
        name: impl Into<String>,
        config: BTreeMap<String, String>,
        backends: Backends,
        limits: Limits,
    ) -> Arc<Self> {
        Self::build(
            name.into(),
            config,
            backends,
            limits,
            Grants::unrestricted(),
        )
    }

    /// An environment limited to `grants`; logs them once.
    pub fn with_grants(
        name: impl Into<String>,
        config: BTreeMap<String, String>,
        backends: Backends,
        limits: Limits,
        grants: Grants,
    ) -> Arc<Self> {
        let name = name.into();
        if grants.is_empty() {
            tracing::warn!(handler = %name, "handler has no [handlers.grants]: every cache and graph call it makes will be denied");
        } else {
            tracing::info!(handler = %name, %grants, "handler grants");
        }
        Self::build(name, config, backends, limits, grants)
    }

    /// An environment limited to `grants`, without logging them.
    pub(crate) fn build(
        name: String,
        config: BTreeMap<String, String>,
        backends: Backends,
        limits: Limits,
        grants: Grants,
    ) -> Arc<Self> {
        Arc::new(HandlerEnv {
            name,
            isolated: false,
            config,
            backends,
            limits,
            grants,
        })
    }
}

/// Host-call errors of one event, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    pub unavailable: u64,
    pub denied: u64,
    pub invalid: u64,
    pub other: u64,
}

/// What one event did to the world, as counted by the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Effects {
    /// Keys returned by `scan` calls.
    pub keys_scanned: u64,
    /// Keys that existed and were removed by `delete` calls.
    pub keys_deleted: u64,
    /// Successful `upsert-entity` calls.
    pub entities_upserted: u64,
    /// Successful `upsert-relation` calls.
    pub relations_upserted: u64,
    /// Every import call, including logs and config reads.
    pub host_calls: u64,
    /// Failed cache and graph calls, by kind.
    pub errors: ErrorCounts,
    /// How long each backend call took, for the latency histograms.
    #[serde(skip)]
    pub call_times: CallTimes,
}

impl Effects {
    /// Records that a backend `call` (`cache.scan`, `graph.upsert-entity`,
    /// ...) started at `started` has returned.
    pub fn timed(&mut self, call: &'static str, started: std::time::Instant) {
        self.call_times.0.push((call, started.elapsed()));
    }
}

/// How long each cache and graph call of one event took. Not an effect:
/// two runs that did the same things compare equal however long they took.
#[derive(Debug, Clone, Default)]
pub struct CallTimes(pub Vec<(&'static str, std::time::Duration)>);

impl PartialEq for CallTimes {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for CallTimes {}

/// A host limit the guest ran into. Raised as a trap, so the event ends.
#[derive(Debug, thiserror::Error)]
#[error("handler made more than {limit} host calls in one event")]
pub struct HostCallLimitExceeded {
    pub limit: u64,
}

/// The data of the store that runs one event.
pub struct HostState {
    pub(crate) env: Arc<HandlerEnv>,
    pub(crate) effects: Effects,
    pub(crate) subject: String,
    pub(crate) sequence: u64,
    pub(crate) output: MemoryOutputPipe,
    /// Built on the guest's first WASI call: most events make none, and
    /// the context (three random generators among the rest) is a few
    /// percent of a no-op event.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    pub(crate) limits: StoreLimits,
}

/// Bytes of guest stdout/stderr kept per event, for trap reports.
const OUTPUT_CAPTURE_BYTES: usize = 16 * 1024;

impl HostState {
    pub(crate) fn new(env: Arc<HandlerEnv>, subject: String, sequence: u64) -> Self {
        let output = MemoryOutputPipe::new(OUTPUT_CAPTURE_BYTES);
        let limits = wasmtime::StoreLimitsBuilder::new()
            .memory_size(env.limits.memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        HostState {
            env,
            effects: Effects::default(),
            subject,
            sequence,
            output,
            wasi: None,
            table: ResourceTable::new(),
            limits,
        }
    }

    pub(crate) fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limits
    }

    /// Counts one import call, trapping past the handler's limit.
    pub(crate) fn charge_call(&mut self) -> wasmtime::Result<()> {
        self.effects.host_calls += 1;
        let limit = self.env.limits.max_host_calls;
        if self.effects.host_calls > limit {
            return Err(HostCallLimitExceeded { limit }.into());
        }
        Ok(())
    }

    /// Records a failed backend call and converts it for the guest.
    pub(crate) fn backend_error(&mut self, error: BackendError) -> WitError {
        let message = error.to_string();
        match error {
            BackendError::Unavailable { .. } => {
                self.effects.errors.unavailable += 1;
                WitError::Unavailable(message)
            }
            BackendError::Invalid { .. } => {
                self.effects.errors.invalid += 1;
                WitError::Invalid(message)
            }
            BackendError::Other { .. } | BackendError::Refused { .. } => {
                self.effects.errors.other += 1;
                WitError::Other(message)
            }
        }
    }

    /// Records a request the capability itself refused as malformed.
    pub(crate) fn invalid(&mut self, message: String) -> WitError {
        self.effects.errors.invalid += 1;
        WitError::Invalid(message)
    }

    /// Records a request outside the handler's grants.
    pub(crate) fn denied(&mut self, message: String) -> WitError {
        self.effects.errors.denied += 1;
        WitError::Denied(message)
    }
}

/// The guest's WASI context. WASI is there because `std` on wasm32-wasip2
/// links against it. The guest gets no files, no environment, no network,
/// no arguments: only clocks, randomness and a capture of its
/// stdout/stderr in `output`.
fn wasi_ctx(output: &MemoryOutputPipe) -> WasiCtx {
    wasmtime_wasi::WasiCtxBuilder::new()
        .stdout(output.clone())
        .stderr(output.clone())
        .allow_blocking_current_thread(false)
        .build()
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let output = &self.output;
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(|| wasi_ctx(output)),
            table: &mut self.table,
        }
    }
}

impl crate::bindings::types::Host for HostState {}
impl crate::bindings::event::Host for HostState {}
impl crate::bindings::outcome::Host for HostState {}
