//! Switchyard runs event handlers that live in WebAssembly components next
//! to a NATS JetStream stream.
//!
//! # Layout
//!
//! Dependencies point one way, top to bottom; a module imports only from
//! the layers below it.
//!
//! - [`service`]: the composition root: start-up, wiring, readiness;
//!   [`service::run`]. The binary's commands sit above it.
//! - Fleet parts, [`fleet`]: [`fleet::control`] (pushed versions on NATS),
//!   [`fleet::reload`] (hot swap), [`fleet::shadow`] (candidates run beside
//!   the live version), [`fleet::status`] (what each host reports).
//! - [`delivery`]: streams and durable consumers, order keys, holding and
//!   key queues, settling each attempt, dead letters, exclusive-handler
//!   leases, partitions spread over the hosts; its module doc follows one
//!   event through its files.
//! - [`http`] (`/metrics`, `/healthz`, `/readyz`), [`telemetry`] (OTLP
//!   export), [`isolation`] (a plugin over a list of events on in-memory
//!   backends: `switchyard test`, fixtures, the harness).
//! - [`handler`]: a configured handler with its live plugin, stats, reload
//!   history and shadow: what delivery runs and the fleet parts act on.
//! - [`metrics`] (the Prometheus registry) and [`health`] (readiness flags).
//! - [`runtime`]: the wasmtime engine, plugin loading by digest, and one
//!   fresh instance per event ([`runtime::Runtime::dispatch`]).
//! - [`capability`]: the host side of each import (`cache`, `graph`, `log`,
//!   `config`): checks, effect counting, error conversion.
//! - [`backend`]: where effects land: [`backend::memory`],
//!   [`backend::valkey`], [`backend::valkey_cluster`], [`backend::neo4j`]. Beside it, [`nats`]: every
//!   NATS connection the binary makes (servers, TLS, credentials, why a
//!   server refused).
//! - Data and rules everyone below may use, importing nothing above:
//!   [`config`] (the TOML configuration and its overrides), [`grant`]
//!   (what each handler may touch; scan-pattern containment), [`glob`]
//!   (Valkey's matcher), [`limits`] (every bound the host enforces),
//!   [`memory`] (whether the instance pool fits the process's memory),
//!   [`identifier`] (graph identifiers), [`partition`] (a subject mapped
//!   into partitions), [`pointer`](mod@pointer) (JSON pointers),
//!   [`process`] (hostname, user, clock), [`secret`] (credentials masked
//!   in what is printed, secrets read from files), [`tls`] (why a TLS
//!   handshake failed, in words), [`toolchain`] (building a plugin's
//!   component from its sources), [`bindings`] (the one
//!   `bindgen!` of the WIT world).

pub mod backend;
pub mod bindings;
pub mod capability;
pub mod config;
pub mod delivery;
pub mod fleet;
pub mod glob;
pub mod grant;
pub mod handler;
pub mod health;
pub mod http;
pub mod identifier;
pub mod isolation;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod nats;
pub mod partition;
pub mod pointer;
pub mod process;
pub mod runtime;
pub mod secret;
pub mod service;
pub mod telemetry;
pub mod tls;
pub mod toolchain;

/// Locks `mutex`, recovering it if a thread panicked while holding it.
/// Every mutex in the host guards state that a panic cannot leave half
/// updated (a map insert, a counter, a list push), so the data is still
/// sound to use, and one panicked event must not take the host down.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
