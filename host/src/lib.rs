//! Switchyard runs event handlers that live in WebAssembly components next
//! to a NATS JetStream stream.
//!
//! # Layout
//!
//! - [`bindings`]: the host side of the `switchyard:handler` WIT world (the
//!   one `bindgen!`); every other module takes WIT types from here.
//! - [`runtime`]: the wasmtime engine, limits, plugin loading by digest,
//!   and one fresh instance per event ([`runtime::Runtime::dispatch`]).
//! - [`capability`]: the host side of each import (`cache`, `graph`, `log`,
//!   `config`): checks, effect counting, error conversion.
//! - [`backend`]: where effects land: [`backend::memory`],
//!   [`backend::valkey`], [`backend::neo4j`].
//! - [`glob`]: Valkey's glob matcher, shared by the in-memory cache.
//! - [`grant`]: what each handler may touch, and scan-pattern containment.
//! - [`config`]: the service's TOML configuration and its overrides.
//! - [`service`]: start-up, handlers, readiness; [`service::run`].
//! - [`control`]: the control plane on NATS: pushed versions (Object Store
//!   and Key-Value) and host status (request/reply).
//! - [`reload`]: hot swap; validated versions replace the live one with a
//!   pointer exchange.
//! - [`shadow`]: a candidate version run beside the live one, compared,
//!   without side effects.
//! - [`metrics`]: the Prometheus registry; [`http`]: `/metrics`,
//!   `/healthz`, `/readyz`.
//! - [`source`]: [`source::jetstream`], the durable consumers and how each
//!   outcome is settled (ack, nak with delay, dead letter).
//! - [`lease`]: one active host per exclusive handler, through a NATS
//!   Key-Value lease.
//! - [`isolation`]: runs a plugin over a list of events on in-memory
//!   backends; behind `switchyard test` and the `switchyard-testing` harness.
//! - [`telemetry`]: OpenTelemetry (OTLP/HTTP) export of spans, when an endpoint is given.

pub mod backend;
pub mod bindings;
pub mod capability;
pub mod config;
pub mod control;
pub mod glob;
pub mod grant;
pub mod http;
pub mod isolation;
pub mod lease;
pub mod metrics;
pub mod reload;
pub mod runtime;
pub mod service;
pub mod shadow;
pub mod source;
pub mod telemetry;

/// Locks `mutex`, recovering it if a thread panicked while holding it.
/// Every mutex in the host guards state that a panic cannot leave half
/// updated (a map insert, a counter, a list push), so the data is still
/// sound to use, and one panicked event must not take the host down.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
