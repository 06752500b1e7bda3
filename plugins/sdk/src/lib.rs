//! Guest-side SDK for Switchyard handler plugins.
//!
//! It generates the bindings for the `switchyard:handler` world once, so a
//! plugin only implements [`Guest`] and calls [`export!`]:
//!
//! ```ignore
//! use switchyard_plugin::{Guest, event::Event, outcome::Outcome};
//!
//! struct Handler;
//!
//! impl Guest for Handler {
//!     fn handle(event: Event) -> Outcome {
//!         Outcome::Ack
//!     }
//! }
//!
//! switchyard_plugin::export!(Handler);
//! ```
//!
//! The generated modules are re-exported under short names: [`cache`],
//! [`graph`], [`log`], [`config`], [`event`], [`outcome`] and [`types`].
//! Beside them, what every cache-invalidating handler needs:
//!
//! - [`glob`]: data into Valkey globs, escaped ([`glob::escape`],
//!   [`glob::under`]);
//! - [`invalidate`]: "these exact keys and every key under these
//!   prefixes" in one host call ([`invalidate::keys_and_prefixes`]);
//! - [`settings`]: the handler's configuration, typed, with defaults;
//! - [`logging`]: one-line log calls with fields.
//!
//! The contract is in `wit/` inside this crate, so a plugin outside the
//! host's repository depends on this crate by path or git and builds.

#![allow(unsafe_code)] // generated bindings cross the component ABI

/// The generated bindings. `export!` is exported at the crate root.
#[allow(clippy::too_many_arguments)] // generated signatures follow the WIT
pub mod bindings {
    wit_bindgen::generate!({
        world: "event-handler",
        path: "wit",
        pub_export_macro: true,
        default_bindings_module: "switchyard_plugin::bindings",
    });
}

pub mod glob;
pub mod invalidate;
pub mod settings;

pub use bindings::Guest;
/// Exports a [`Guest`] implementation as the component's `handle`.
pub use bindings::export;
pub use bindings::switchyard::handler::{cache, config, event, graph, log, outcome, types};

/// Shorthands for logging through the host.
pub mod logging {
    use super::log::{Level, log};

    /// Logs at `info` with the given fields.
    pub fn info(message: &str, fields: &[(&str, String)]) {
        emit(Level::Info, message, fields);
    }

    /// Logs at `warn` with the given fields.
    pub fn warn(message: &str, fields: &[(&str, String)]) {
        emit(Level::Warn, message, fields);
    }

    /// Logs at `error` with the given fields.
    pub fn error(message: &str, fields: &[(&str, String)]) {
        emit(Level::Error, message, fields);
    }

    /// Logs at `debug` with the given fields.
    pub fn debug(message: &str, fields: &[(&str, String)]) {
        emit(Level::Debug, message, fields);
    }

    fn emit(level: Level, message: &str, fields: &[(&str, String)]) {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect();
        log(level, message, &fields);
    }
}
