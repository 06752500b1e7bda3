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
//! A handler written against [`Host`] instead, to run natively as well,
//! is exported with [`export_handler!`].
//!
//! The generated modules are re-exported under short names: [`cache`],
//! [`graph`], [`log`], [`config`], [`event`], [`outcome`] and [`types`].
//! Beside them, what every cache-invalidating handler needs:
//!
//! - [`host`]: the imports as one trait, [`Host`], so the handler's logic
//!   is written against `&mut impl Host` and also runs natively (tests,
//!   a host with the handler compiled in); [`Imports`] is the component's;
//! - [`json`]: a payload read strictly and cheaply: only the fields the
//!   handler names, duplicates noted, everything else skipped unbuilt, and
//!   the reasons to reject with;
//! - [`glob`]: data into Valkey globs, escaped ([`glob::escape`],
//!   [`glob::under`]);
//! - [`invalidate`]: "these exact keys and every key under these
//!   prefixes" in one host call ([`invalidate::keys_and_prefixes`]), or
//!   with a scan followed to the end ([`invalidate::Method`]);
//! - [`settings`]: the handler's configuration, typed, with defaults;
//! - [`retry`]: the backoff before a redelivery, from the delivery attempt;
//! - [`failure`]: a failed host call named for its reason, and the outcome
//!   it makes (retry or reject, by the error's cause), logged;
//! - [`logging`]: one-line log calls with fields, and [`logging::quote`]
//!   for data in a log line or a reason.
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

pub mod failure;
pub mod glob;
pub mod host;
pub mod invalidate;
pub mod json;
pub mod retry;
pub mod settings;

#[cfg(test)]
mod double;

pub use bindings::Guest;
/// Exports a [`Guest`] implementation as the component's `handle`.
pub use bindings::export;

/// Exports `handle`, a `fn(&mut impl Host, &Event) -> Outcome`, as the
/// component's `handle`, called with [`Imports`]. The export exists only in
/// a `wasm32` build, so the same crate also builds natively (tests,
/// fuzzing, a host with the handler compiled in) with no such symbol.
///
/// ```ignore
/// pub fn handle(host: &mut impl Host, event: &Event) -> Outcome { … }
///
/// switchyard_plugin::export_handler!(handle);
/// ```
#[macro_export]
macro_rules! export_handler {
    ($handle:path) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)] // the generated export crosses the component ABI
        const _: () = {
            struct Handler;
            impl $crate::Guest for Handler {
                fn handle(event: $crate::event::Event) -> $crate::outcome::Outcome {
                    $handle(&mut $crate::Imports, &event)
                }
            }
            $crate::export!(Handler);
        };
    };
}
pub use bindings::switchyard::handler::{cache, config, event, graph, log, outcome, types};
pub use host::{Host, Imports};

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

    /// How much of a value [`quote`] keeps, in characters.
    pub const QUOTE_LIMIT: usize = 80;

    /// `value` quoted for a log line or a reason: escaped, so control
    /// characters cannot break the line (or a header it ends up in), and
    /// cut after [`QUOTE_LIMIT`] characters, marked with `…`.
    pub fn quote(value: &str) -> String {
        match value.char_indices().nth(QUOTE_LIMIT) {
            None => format!("{value:?}"),
            Some((cut, _)) => format!("{:?}…", &value[..cut]),
        }
    }

    fn emit(level: Level, message: &str, fields: &[(&str, String)]) {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect();
        log(level, message, &fields);
    }
}

#[cfg(test)]
mod tests {
    use super::logging::quote;

    #[test]
    fn quote_escapes_and_cuts_long_values() {
        assert_eq!(quote("a\"b\r\n\0"), r#""a\"b\r\n\0""#);
        let quoted = quote(&"é".repeat(500));
        assert_eq!(quoted, format!("{:?}…", "é".repeat(80)));
    }
}
