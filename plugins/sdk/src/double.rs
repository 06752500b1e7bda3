//! A scripted [`Host`] for the SDK's own tests: it replays scan pages and
//! one injected error, and records every call and log line.

use std::collections::{HashSet, VecDeque};

use crate::cache::ScanPage;
use crate::graph::Value;
use crate::host::Host;
use crate::log::Level;
use crate::types::Error;

/// One log line: level, message, fields.
pub type Line = (Level, String, Vec<(String, String)>);

#[derive(Default)]
pub struct Scripted {
    pub config: Vec<(String, String)>,
    /// Replies to successive `scan` calls; then an empty last page.
    pub pages: VecDeque<ScanPage>,
    /// Keys that exist, for the counts of `delete` and `delete-matching`.
    pub existing: HashSet<String>,
    /// An error for the first call whose name matches.
    pub fail: Option<(&'static str, Error)>,
    pub calls: Vec<String>,
    pub logs: Vec<Line>,
}

impl Scripted {
    pub fn with_pages(pages: &[(u64, &[&str])]) -> Self {
        let pages = pages
            .iter()
            .map(|(cursor, keys)| ScanPage {
                cursor: *cursor,
                keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            })
            .collect();
        Self {
            pages,
            ..Self::default()
        }
    }

    pub fn existing(mut self, keys: &[&str]) -> Self {
        self.existing = keys.iter().map(|k| (*k).to_owned()).collect();
        self
    }

    pub fn failing(mut self, call: &'static str, error: Error) -> Self {
        self.fail = Some((call, error));
        self
    }

    pub fn log_field(&self, message: &str, name: &str) -> Option<String> {
        let (_, _, fields) = self.logs.iter().find(|(_, m, _)| m == message)?;
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    fn injected(&mut self, call: &'static str) -> Result<(), Error> {
        match self.fail.take() {
            Some((name, error)) if name == call => Err(error),
            other => {
                self.fail = other;
                Ok(())
            }
        }
    }
}

impl Host for Scripted {
    fn config(&mut self, key: &str) -> Option<String> {
        let (_, value) = self.config.iter().find(|(k, _)| k == key)?;
        Some(value.clone())
    }
    fn scan(&mut self, pattern: &str, cursor: u64, count: u32) -> Result<ScanPage, Error> {
        self.calls.push(format!("scan {pattern} {cursor} {count}"));
        self.injected("scan")?;
        Ok(self.pages.pop_front().unwrap_or(ScanPage {
            cursor: 0,
            keys: Vec::new(),
        }))
    }
    fn delete(&mut self, keys: &[String]) -> Result<u64, Error> {
        self.calls.push(format!("delete {}", keys.join(" ")));
        self.injected("delete")?;
        Ok(keys.iter().filter(|k| self.existing.remove(*k)).count() as u64)
    }
    fn delete_matching(&mut self, patterns: &[String]) -> Result<u64, Error> {
        self.calls
            .push(format!("delete-matching {}", patterns.join(" ")));
        self.injected("delete-matching")?;
        Ok(std::mem::take(&mut self.existing).len() as u64)
    }
    fn upsert_entity(&mut self, label: &str, id: &str, _: &[(String, Value)]) -> Result<(), Error> {
        self.calls.push(format!("upsert {label} {id}"));
        self.injected("upsert")
    }
    fn log(&mut self, level: Level, message: &str, fields: &[(String, String)]) {
        self.logs.push((level, message.to_owned(), fields.to_vec()));
    }
}
