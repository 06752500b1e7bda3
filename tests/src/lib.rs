//! Shared pieces of Switchyard's integration tests.
//!
//! - [`artifacts`]: paths of the plugins and test guests, built for
//!   `wasm32-wasip2` by this crate's build script.
//! - [`services`]: addresses of the real NATS, Valkey and Neo4j servers
//!   started by `scripts/services`, and what to do when one is missing.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test support reports by panicking

pub mod services;

/// Paths of the built components.
pub mod artifacts {
    include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
}
