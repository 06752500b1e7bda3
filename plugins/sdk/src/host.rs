//! The seam between a handler's logic and the host: every import a handler
//! calls per event, as one trait.
//!
//! [`Imports`] is the component's own implementation. Written against
//! `&mut impl Host`, the same logic also runs natively: under test with a
//! scripted double, or compiled into a host over its capabilities.

use crate::cache::{self, ScanPage};
use crate::config;
use crate::graph::{self, NodeRef, Value};
use crate::log::{self, Level};
use crate::types::Error;

/// What a handler asks of its host. The required methods mirror the WIT
/// imports one to one; the provided ones are shorthands built on them.
pub trait Host {
    /// `config.get`.
    fn config(&mut self, key: &str) -> Option<String>;
    /// `cache.scan`.
    fn scan(&mut self, pattern: &str, cursor: u64, count: u32) -> Result<ScanPage, Error>;
    /// `cache.delete`.
    fn delete(&mut self, keys: &[String]) -> Result<u64, Error>;
    /// `cache.delete-matching`.
    fn delete_matching(&mut self, patterns: &[String]) -> Result<u64, Error>;
    /// `graph.upsert-entity`.
    fn upsert_entity(
        &mut self,
        label: &str,
        id: &str,
        properties: &[(String, Value)],
    ) -> Result<(), Error>;
    /// `graph.upsert-relation`. A host that does not provide relations
    /// (a double written for a handler that writes none) denies the call.
    fn upsert_relation(
        &mut self,
        source: &NodeRef,
        kind: &str,
        target: &NodeRef,
        properties: &[(String, Value)],
    ) -> Result<(), Error> {
        let _ = (source, kind, target, properties);
        Err(Error::Denied(
            "upsert-relation is not provided by this host".to_owned(),
        ))
    }
    /// `log.log`.
    fn log(&mut self, level: Level, message: &str, fields: &[(String, String)]);

    /// Logs at `debug` with the given fields.
    fn debug(&mut self, message: &str, fields: &[(&str, String)]) {
        self.log(Level::Debug, message, &owned(fields));
    }
    /// Logs at `info` with the given fields.
    fn info(&mut self, message: &str, fields: &[(&str, String)]) {
        self.log(Level::Info, message, &owned(fields));
    }
    /// Logs at `warn` with the given fields.
    fn warn(&mut self, message: &str, fields: &[(&str, String)]) {
        self.log(Level::Warn, message, &owned(fields));
    }
    /// Logs at `error` with the given fields.
    fn error(&mut self, message: &str, fields: &[(&str, String)]) {
        self.log(Level::Error, message, &owned(fields));
    }
}

fn owned(fields: &[(&str, String)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// The [`Host`] backed by the component's imports. Only callable inside a
/// Switchyard host: in a native build the imports are stubs.
pub struct Imports;

impl Host for Imports {
    fn config(&mut self, key: &str) -> Option<String> {
        config::get(key)
    }
    fn scan(&mut self, pattern: &str, cursor: u64, count: u32) -> Result<ScanPage, Error> {
        cache::scan(pattern, cursor, count)
    }
    fn delete(&mut self, keys: &[String]) -> Result<u64, Error> {
        cache::delete(keys)
    }
    fn delete_matching(&mut self, patterns: &[String]) -> Result<u64, Error> {
        cache::delete_matching(patterns)
    }
    fn upsert_entity(
        &mut self,
        label: &str,
        id: &str,
        properties: &[(String, Value)],
    ) -> Result<(), Error> {
        graph::upsert_entity(label, id, properties)
    }
    fn upsert_relation(
        &mut self,
        source: &NodeRef,
        kind: &str,
        target: &NodeRef,
        properties: &[(String, Value)],
    ) -> Result<(), Error> {
        graph::upsert_relation(source, kind, target, properties)
    }
    fn log(&mut self, level: Level, message: &str, fields: &[(String, String)]) {
        log::log(level, message, fields);
    }
}
