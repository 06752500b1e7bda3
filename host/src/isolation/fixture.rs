//! Fixtures: events with what must come of them. A fixture line is an
//! event line (see [`EventSpec`]) with, optionally, `cache` (keys to seed
//! before the event) and `expect`:
//!
//! ```json
//! {"subject": "planning.story.transitioned", "payload": {...},
//!  "cache": {"context:S1": "v", "context:S10": "v"},
//!  "expect": {"outcome": "ack", "keys_gone": ["context:S1"],
//!             "keys_kept": ["context:S10"],
//!             "nodes": [{"label": "PhaseTransition", "id": "t1"}],
//!             "relations": [{"source": {"label": "Story", "id": "S1"},
//!                            "kind": "MOVED_TO",
//!                            "target": {"label": "Phase", "id": "BUILD"}}]}}
//! ```
//!
//! `expect` may also be just the outcome: `"ack"`, `"retry"`, `"reject"`;
//! `detail` is text the reject reason (or retry's fault) must contain. A
//! fixtures file (`plugin push --fixtures`, a handler's `fixtures`) needs
//! an `expect` on every line; `switchyard test` takes lines with or without.

use serde_json::{Map, Value as Json};

use super::{EventResult, EventSpec};
use crate::backend::memory::{MemoryCache, MemoryGraph};

/// A relation by its ends: ((source label, id), kind, (target label, id)).
pub type Relation = ((String, String), String, (String, String));

/// What must come of one event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Expectation {
    pub outcome: String,
    pub detail: Option<String>,
    /// Keys that must not exist after the event.
    pub keys_gone: Vec<String>,
    /// Keys that must still exist after the event.
    pub keys_kept: Vec<String>,
    /// Nodes (label, id) that must exist in the graph after the event.
    pub nodes: Vec<(String, String)>,
    /// Relations (source, kind, target) that must exist after the event.
    pub relations: Vec<Relation>,
}

/// An event, the keys seeded before it, and what must come of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fixture {
    pub event: EventSpec,
    pub cache: Vec<(String, String)>,
    pub expect: Option<Expectation>,
}

impl Fixture {
    /// One line of a fixtures file: `expect` is required.
    pub fn parse_line(line: &str) -> Result<Self, String> {
        let fixture = Self::parse_event_line(line)?;
        if fixture.expect.is_none() {
            return Err(
                "missing \"expect\" (ack, retry, reject, or {\"outcome\", \"detail\", \
                 \"keys_gone\", \"keys_kept\", \"nodes\"})"
                    .into(),
            );
        }
        Ok(fixture)
    }

    /// One line of an events file, which may carry `cache` and `expect`.
    pub fn parse_event_line(line: &str) -> Result<Self, String> {
        let value: Json = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let Json::Object(mut object) = value else {
            return Err("an event must be a JSON object".into());
        };
        let expect = object
            .remove("expect")
            .map(Expectation::parse)
            .transpose()?;
        let cache = match object.remove("cache") {
            None => Vec::new(),
            Some(Json::Object(keys)) => keys_of(keys),
            Some(_) => return Err("\"cache\" must be an object of key to value".into()),
        };
        Ok(Fixture {
            event: EventSpec::from_object(object)?,
            cache,
            expect,
        })
    }

    /// A fixtures file: every line needs `expect`; errors name the line.
    pub fn parse_lines(text: &str) -> Result<Vec<Self>, String> {
        super::parse_json_lines(text, Self::parse_line)
    }

    /// An events file whose lines may carry `cache` and `expect`.
    pub fn parse_event_lines(text: &str) -> Result<Vec<Self>, String> {
        super::parse_json_lines(text, Self::parse_event_line)
    }
}

impl Expectation {
    fn parse(value: Json) -> Result<Self, String> {
        let mut expect = match value {
            Json::String(outcome) => Expectation {
                outcome,
                ..Expectation::default()
            },
            Json::Object(mut object) => {
                let outcome = match object.remove("outcome") {
                    Some(Json::String(o)) => o,
                    _ => return Err("\"expect\" needs an \"outcome\" string".into()),
                };
                let detail = match object.remove("detail") {
                    None => None,
                    Some(Json::String(d)) => Some(d),
                    Some(_) => return Err("\"expect.detail\" must be a string".into()),
                };
                let expect = Expectation {
                    outcome,
                    detail,
                    keys_gone: strings(object.remove("keys_gone"), "keys_gone")?,
                    keys_kept: strings(object.remove("keys_kept"), "keys_kept")?,
                    nodes: nodes(object.remove("nodes"))?,
                    relations: relations(object.remove("relations"))?,
                };
                if let Some(unknown) = object.keys().next() {
                    return Err(format!(
                        "unknown field \"expect.{unknown}\" (expected outcome, detail, \
                         keys_gone, keys_kept, nodes or relations)"
                    ));
                }
                expect
            }
            _ => return Err("\"expect\" must be an outcome or an object".into()),
        };
        expect.outcome = expect.outcome.trim().to_string();
        if !matches!(expect.outcome.as_str(), "ack" | "retry" | "reject") {
            return Err(format!(
                "expected outcome {:?} is not ack, retry or reject",
                expect.outcome
            ));
        }
        Ok(expect)
    }

    /// Every way `result`, and the cache and graph after it, differ from
    /// this expectation, each as "expected …, got …".
    pub fn differences(
        &self,
        result: &EventResult,
        cache: &MemoryCache,
        graph: &MemoryGraph,
    ) -> Vec<String> {
        let mut differences = Vec::new();
        let detail = result.detail.as_deref().unwrap_or_default();
        let detail_ok = self
            .detail
            .as_ref()
            .is_none_or(|d| detail.contains(d.as_str()));
        if result.outcome != self.outcome || !detail_ok {
            differences.push(format!(
                "expected {}{}, got {}{}",
                self.outcome,
                self.detail
                    .as_ref()
                    .map(|d| format!(" containing {d:?}"))
                    .unwrap_or_default(),
                result.outcome,
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                },
            ));
        }
        for key in &self.keys_gone {
            if cache.get(key).is_some() {
                differences.push(format!("expected {key:?} gone, got it still there"));
            }
        }
        for key in &self.keys_kept {
            if cache.get(key).is_none() {
                differences.push(format!("expected {key:?} kept, got it deleted"));
            }
        }
        if !self.nodes.is_empty() {
            let stored = graph.nodes();
            for (label, id) in &self.nodes {
                if !stored.iter().any(|n| &n.label == label && &n.id == id) {
                    differences.push(format!("expected node ({label}:{id}), got no such node"));
                }
            }
        }
        if !self.relations.is_empty() {
            let stored = graph.relations();
            for ((source_label, source_id), kind, (target_label, target_id)) in &self.relations {
                let found = stored.iter().any(|r| {
                    &r.kind == kind
                        && &r.source.label == source_label
                        && &r.source.id == source_id
                        && &r.target.label == target_label
                        && &r.target.id == target_id
                });
                if !found {
                    differences.push(format!(
                        "expected relation ({source_label}:{source_id})-[{kind}]->\
                         ({target_label}:{target_id}), got no such relation"
                    ));
                }
            }
        }
        differences
    }
}

fn strings(value: Option<Json>, field: &str) -> Result<Vec<String>, String> {
    match value {
        None => Ok(Vec::new()),
        Some(Json::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Json::String(s) => Ok(s),
                _ => Err(format!("\"expect.{field}\" must be a list of strings")),
            })
            .collect(),
        Some(_) => Err(format!("\"expect.{field}\" must be a list of strings")),
    }
}

/// `{"label": "...", "id": "..."}`.
fn node(value: Json) -> Option<(String, String)> {
    let Json::Object(mut node) = value else {
        return None;
    };
    match (node.remove("label"), node.remove("id")) {
        (Some(Json::String(label)), Some(Json::String(id))) => Some((label, id)),
        _ => None,
    }
}

fn nodes(value: Option<Json>) -> Result<Vec<(String, String)>, String> {
    let bad = || "\"expect.nodes\" must be a list of {\"label\", \"id\"}".to_string();
    match value {
        None => Ok(Vec::new()),
        Some(Json::Array(items)) => items
            .into_iter()
            .map(|item| node(item).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

fn relations(value: Option<Json>) -> Result<Vec<Relation>, String> {
    let bad = || {
        "\"expect.relations\" must be a list of {\"source\": {\"label\", \"id\"}, \
         \"kind\", \"target\": {\"label\", \"id\"}}"
            .to_string()
    };
    let one = |item: Json| -> Option<Relation> {
        let Json::Object(mut relation) = item else {
            return None;
        };
        let source = node(relation.remove("source")?)?;
        let target = node(relation.remove("target")?)?;
        let Json::String(kind) = relation.remove("kind")? else {
            return None;
        };
        Some((source, kind, target))
    };
    match value {
        None => Ok(Vec::new()),
        Some(Json::Array(items)) => items
            .into_iter()
            .map(|item| one(item).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// Sets the keys `fixture` seeds before its event.
pub fn seed(cache: &MemoryCache, fixture: &Fixture) {
    for (key, value) in &fixture.cache {
        cache.set(key.clone(), value.clone());
    }
}

/// A JSON object of key to value (non-string values as their JSON text).
pub fn keys_of(object: Map<String, Json>) -> Vec<(String, String)> {
    object
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                Json::String(s) => s,
                other => other.to_string(),
            };
            (key, value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixture_line_takes_keys_nodes_and_a_seed() {
        let line = r#"{"subject": "s", "payload": {}, "cache": {"k:1": "v"},
            "expect": {"outcome": "ack", "keys_gone": ["k:1"], "keys_kept": ["k:2"],
                       "nodes": [{"label": "L", "id": "i"}]}}"#
            .replace('\n', " ");
        let fixture = Fixture::parse_line(&line).unwrap();
        assert_eq!(fixture.cache, [("k:1".to_string(), "v".to_string())]);
        let expect = fixture.expect.unwrap();
        assert_eq!(expect.keys_gone, ["k:1"]);
        assert_eq!(expect.keys_kept, ["k:2"]);
        assert_eq!(expect.nodes, [("L".to_string(), "i".to_string())]);
    }

    #[test]
    fn an_expected_relation_is_checked_against_the_graph() {
        use crate::backend::{GraphBackend, NodeKey};

        let line = r#"{"subject": "s", "payload": {}, "expect": {"outcome": "ack",
            "relations": [{"source": {"label": "Story", "id": "S1"}, "kind": "MOVED_TO",
                           "target": {"label": "Phase", "id": "BUILD"}}]}}"#
            .replace('\n', " ");
        let expect = Fixture::parse_line(&line).unwrap().expect.unwrap();
        let (cache, graph) = (MemoryCache::default(), MemoryGraph::default());
        let result = EventResult {
            subject: "s".into(),
            outcome: "ack",
            detail: None,
            retry_after_ms: None,
            effects: Default::default(),
            fault: None,
        };
        let missing = expect.differences(&result, &cache, &graph);
        assert_eq!(
            missing,
            ["expected relation (Story:S1)-[MOVED_TO]->(Phase:BUILD), got no such relation"]
        );
        let key = |label: &str, id: &str| NodeKey {
            label: label.into(),
            id: id.into(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime
            .block_on(graph.upsert_relation(
                &key("Story", "S1"),
                "MOVED_TO",
                &key("Phase", "BUILD"),
                &[],
            ))
            .unwrap();
        assert!(expect.differences(&result, &cache, &graph).is_empty());
        let error = Fixture::parse_line(
            r#"{"subject": "s", "payload": {}, "expect": {"outcome": "ack", "relations": [{"kind": "K"}]}}"#,
        )
        .unwrap_err();
        assert!(error.contains("expect.relations"), "{error}");
    }

    #[test]
    fn a_misspelt_expectation_is_refused_naming_it() {
        let error = Fixture::parse_line(
            r#"{"subject": "s", "payload": {}, "expect": {"outcome": "ack", "key_gone": []}}"#,
        )
        .unwrap_err();
        assert!(error.contains("expect.key_gone"), "{error}");
        let error = Fixture::parse_line(r#"{"subject": "s", "payload": {}}"#).unwrap_err();
        assert!(error.contains("missing \"expect\""), "{error}");
        assert!(Fixture::parse_event_line(r#"{"subject": "s", "payload": {}}"#).is_ok());
    }
}
