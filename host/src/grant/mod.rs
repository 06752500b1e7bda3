//! Per-handler grants: which cache keys, graph labels and relation kinds a
//! handler may touch.
//!
//! A handler's `[handlers.grants]` table ([`GrantsConfig`]) lists what it
//! may reach; everything else is denied, and a handler without the table is
//! granted nothing. [`Grants`] is the checked form the capabilities consult
//! on every call:
//!
//! - a `delete` is granted when every key is one that `SCAN MATCH` with
//!   some pattern of `cache_keys` would return ([`containment::scanned_by`]: Valkey's
//!   matcher, and `*` alone for every key), and there are at most
//!   `max_delete_keys` of them;
//! - a `scan` is granted when every key its pattern could match is matched
//!   by some pattern of `cache_keys`: pattern containment, [`containment::containment`];
//! - an upsert is granted when each node's label is in `graph_labels` and a
//!   relation's kind is in `graph_relations`.
//!
//! [`containment`] decides whether a scan pattern stays inside the grants.
//!
//! Grants are rules, not wiring: they import the bounds, identifier checks
//! and the glob matcher, nothing that runs.

pub mod containment;

use std::collections::BTreeSet;
use std::fmt;

use serde::Deserialize;

use crate::glob::Compiled;
use crate::identifier::check_identifier;
use crate::limits::{MAX_DELETE_KEYS, MAX_KEY_BYTES};

use self::containment::{
    Containment, MAX_GRANT_STARS, Token, containment_of, parse, scanned_by, star_runs,
};

/// The `[handlers.grants]` table. Every list defaults to empty: nothing is
/// granted that is not named.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsConfig {
    /// Valkey glob patterns of the keys the handler may scan and delete.
    #[serde(default)]
    pub cache_keys: Vec<String>,
    /// Most keys one `delete` call may name.
    #[serde(default = "default_max_delete_keys")]
    pub max_delete_keys: u32,
    /// Node labels the handler may upsert (and use as relation ends).
    #[serde(default)]
    pub graph_labels: Vec<String>,
    /// Relation kinds the handler may upsert.
    #[serde(default)]
    pub graph_relations: Vec<String>,
}

fn default_max_delete_keys() -> u32 {
    1000
}

impl Default for GrantsConfig {
    fn default() -> Self {
        GrantsConfig {
            cache_keys: Vec::new(),
            max_delete_keys: default_max_delete_keys(),
            graph_labels: Vec::new(),
            graph_relations: Vec::new(),
        }
    }
}

impl GrantsConfig {
    /// Checks the table; an error names the field and the problem.
    pub fn check(&self) -> Result<(), (String, String)> {
        for (index, pattern) in self.cache_keys.iter().enumerate() {
            let field = || format!("cache_keys[{index}]");
            if pattern.is_empty() || pattern.len() > MAX_KEY_BYTES {
                return Err((
                    field(),
                    format!("pattern {pattern:?} must be 1 to {MAX_KEY_BYTES} bytes"),
                ));
            }
            if let Some(problem) = crate::glob::malformed(pattern.as_bytes()) {
                return Err((field(), format!("pattern {pattern:?} {problem}")));
            }
            if star_runs(&parse(pattern.as_bytes())) > MAX_GRANT_STARS {
                return Err((
                    field(),
                    format!("pattern {pattern:?} has more than {MAX_GRANT_STARS} `*`"),
                ));
            }
        }
        if self.max_delete_keys == 0 || self.max_delete_keys as usize > MAX_DELETE_KEYS {
            return Err((
                "max_delete_keys".into(),
                format!("must be between 1 and {MAX_DELETE_KEYS}"),
            ));
        }
        for label in &self.graph_labels {
            check_identifier("label", label).map_err(|e| ("graph_labels".into(), e))?;
        }
        for kind in &self.graph_relations {
            check_identifier("relation kind", kind).map_err(|e| ("graph_relations".into(), e))?;
        }
        Ok(())
    }
}

/// Why a call was refused: what it named outside the grant, and the message
/// the plugin gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The key, pattern, label or relation kind that is not granted (or the
    /// number of keys, for an oversized delete).
    pub offending: String,
    pub message: String,
}

/// Either everything, or only what is listed.
#[derive(Debug, Clone)]
enum Scope<T> {
    Everything,
    Only(T),
}

/// A granted cache pattern, parsed once.
#[derive(Debug, Clone)]
struct GrantedPattern {
    text: String,
    tokens: Vec<Token>,
    /// For a literal prefix and `*`: the prefix, which proves a scan
    /// pattern inside the grant without a search.
    prefix: Option<Vec<u8>>,
}

/// The checked grants of one handler.
#[derive(Debug, Clone)]
pub struct Grants {
    cache: Scope<Vec<GrantedPattern>>,
    max_delete_keys: usize,
    labels: Scope<BTreeSet<String>>,
    relations: Scope<BTreeSet<String>>,
}

impl Grants {
    /// The grants of a configured handler. `config` should have passed
    /// [`GrantsConfig::check`]; a pattern it would refuse is still safe
    /// here, only harder to prove scans against.
    pub fn new(config: &GrantsConfig) -> Self {
        Grants {
            cache: Scope::Only(
                config
                    .cache_keys
                    .iter()
                    .map(|text| GrantedPattern {
                        text: text.clone(),
                        tokens: parse(text.as_bytes()),
                        prefix: match Compiled::new(text.as_bytes()) {
                            Compiled::Prefix(prefix) => Some(prefix),
                            _ => None,
                        },
                    })
                    .collect(),
            ),
            max_delete_keys: config.max_delete_keys as usize,
            labels: Scope::Only(config.graph_labels.iter().cloned().collect()),
            relations: Scope::Only(config.graph_relations.iter().cloned().collect()),
        }
    }

    /// Everything granted: for plugins run in isolation on in-memory
    /// backends (`switchyard test`, the testing harness), never for a
    /// configured handler.
    pub fn unrestricted() -> Self {
        Grants {
            cache: Scope::Everything,
            max_delete_keys: MAX_DELETE_KEYS,
            labels: Scope::Everything,
            relations: Scope::Everything,
        }
    }

    /// Whether nothing at all is granted on the cache and the graph.
    pub fn is_empty(&self) -> bool {
        let empty =
            |scope: &Scope<BTreeSet<String>>| matches!(scope, Scope::Only(set) if set.is_empty());
        matches!(&self.cache, Scope::Only(p) if p.is_empty())
            && empty(&self.labels)
            && empty(&self.relations)
    }

    /// Checks a `scan` pattern: every key it could match must be granted.
    pub fn check_scan(&self, pattern: &str) -> Result<(), Denial> {
        self.check_compiled(pattern, &Compiled::new(pattern.as_bytes()))
    }

    /// Checks one pattern of a `delete-matching` call (`compiled` is
    /// `text` read as a pattern): every key it could match must be granted.
    pub fn check_compiled(&self, pattern: &str, compiled: &Compiled) -> Result<(), Denial> {
        let patterns = match &self.cache {
            Scope::Everything => return Ok(()),
            Scope::Only(patterns) => patterns,
        };
        // Every key the pattern matches starts with its literal prefix; a
        // grant `<prefix>*` whose prefix that starts with covers them all.
        let literal = compiled.literal_prefix();
        let covered = |p: &GrantedPattern| {
            p.prefix
                .as_ref()
                .is_some_and(|prefix| literal.starts_with(prefix))
        };
        if patterns.iter().any(covered) {
            return Ok(());
        }
        if let Compiled::Exact(key) = compiled
            && patterns.iter().any(|p| scanned_by(p.text.as_bytes(), key))
        {
            return Ok(());
        }
        let grants: Vec<(&[u8], &[Token])> = patterns
            .iter()
            .map(|p| (p.text.as_bytes(), p.tokens.as_slice()))
            .collect();
        let why = match containment_of(&grants, pattern.as_bytes()) {
            Containment::Inside => return Ok(()),
            Containment::Outside { example } => {
                format!("it can match {:?}", String::from_utf8_lossy(&example))
            }
            Containment::Unknown => {
                "it is too complex to prove inside the grant (use a literal prefix and a trailing `*`)"
                    .to_string()
            }
        };
        Err(Denial {
            offending: pattern.to_string(),
            message: format!(
                "scan pattern {pattern:?} is outside this handler's cache grant ({}): {why}",
                self.describe_cache()
            ),
        })
    }

    /// Checks the size of a `delete-matching` call: at most
    /// `max_delete_keys` patterns.
    pub fn check_pattern_count(&self, count: usize) -> Result<(), Denial> {
        if count > self.max_delete_keys {
            return Err(Denial {
                offending: format!("{count} patterns"),
                message: format!(
                    "delete-matching names {count} patterns, more than the {} this handler's grant allows in one call (max_delete_keys)",
                    self.max_delete_keys
                ),
            });
        }
        Ok(())
    }

    /// Checks a `delete`: at most `max_delete_keys` keys, each granted.
    pub fn check_delete(&self, keys: &[String]) -> Result<(), Denial> {
        if keys.len() > self.max_delete_keys {
            return Err(Denial {
                offending: format!("{} keys", keys.len()),
                message: format!(
                    "delete names {} keys, more than the {} this handler's grant allows in one call (max_delete_keys)",
                    keys.len(),
                    self.max_delete_keys
                ),
            });
        }
        let patterns = match &self.cache {
            Scope::Everything => return Ok(()),
            Scope::Only(patterns) => patterns,
        };
        let granted = |key: &String| {
            patterns
                .iter()
                .any(|p| scanned_by(p.text.as_bytes(), key.as_bytes()))
        };
        match keys.iter().find(|key| !granted(key)) {
            None => Ok(()),
            Some(key) => Err(Denial {
                offending: key.clone(),
                message: format!(
                    "key {key:?} is outside this handler's cache grant ({})",
                    self.describe_cache()
                ),
            }),
        }
    }

    /// Checks a node label.
    pub fn check_label(&self, label: &str) -> Result<(), Denial> {
        check_name(&self.labels, "label", "graph_labels", label)
    }

    /// Checks a relation kind.
    pub fn check_relation(&self, kind: &str) -> Result<(), Denial> {
        check_name(&self.relations, "relation kind", "graph_relations", kind)
    }

    fn describe_cache(&self) -> String {
        match &self.cache {
            Scope::Everything => "every key".to_string(),
            Scope::Only(patterns) => format!(
                "cache_keys = {:?}",
                patterns.iter().map(|p| p.text.as_str()).collect::<Vec<_>>()
            ),
        }
    }
}

impl fmt::Display for Grants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn names(scope: &Scope<BTreeSet<String>>) -> String {
            match scope {
                Scope::Everything => "everything".into(),
                Scope::Only(set) => format!("{:?}", set.iter().collect::<Vec<_>>()),
            }
        }
        write!(
            f,
            "{}, max_delete_keys = {}, graph_labels = {}, graph_relations = {}",
            self.describe_cache(),
            self.max_delete_keys,
            names(&self.labels),
            names(&self.relations)
        )
    }
}

fn check_name(
    scope: &Scope<BTreeSet<String>>,
    what: &str,
    field: &str,
    name: &str,
) -> Result<(), Denial> {
    match scope {
        Scope::Everything => Ok(()),
        Scope::Only(set) if set.contains(name) => Ok(()),
        Scope::Only(set) => Err(Denial {
            offending: name.to_string(),
            message: format!(
                "{what} {name:?} is outside this handler's graph grant ({field} = {:?})",
                set.iter().collect::<Vec<_>>()
            ),
        }),
    }
}

#[cfg(test)]
mod tests;
