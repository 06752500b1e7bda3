//! `graph`: entity and relation upserts against the handler's graph backend.
//!
//! Labels, relation kinds and property keys end up as Cypher identifiers,
//! which cannot be passed as parameters. They are checked here, before any
//! backend sees them, so no backend ever splices an unchecked name. A name
//! that is not an identifier is `invalid`; an identifier outside the
//! handler's `graph_labels` / `graph_relations` grant is `denied`.

use tracing::instrument;

use crate::backend::NodeKey;
use crate::bindings::graph::{Host, NodeRef, Value};
use crate::bindings::types::Error as WitError;
use crate::capability::HostState;
use crate::grant::Denial;
use crate::identifier::check_identifier;
use crate::limits::MAX_PROPERTIES;

fn check_properties(properties: &[(String, Value)]) -> Result<(), String> {
    if properties.len() > MAX_PROPERTIES {
        return Err(format!(
            "{} properties given, more than the {MAX_PROPERTIES} allowed",
            properties.len()
        ));
    }
    for (key, value) in properties {
        check_identifier("property key", key)?;
        if key == "id" {
            return Err("property key \"id\" is the node's identity and cannot be set".into());
        }
        if let Value::Float(f) = value
            && !f.is_finite()
        {
            return Err(format!(
                "property {key:?} is {f}, which a graph cannot store"
            ));
        }
    }
    Ok(())
}

fn check_node(node: &NodeRef) -> Result<NodeKey, String> {
    check_identifier("label", &node.label)?;
    if node.id.is_empty() {
        return Err(format!("node of label {:?} has an empty id", node.label));
    }
    Ok(NodeKey {
        label: node.label.clone(),
        id: node.id.clone(),
    })
}

impl HostState {
    /// Logs and records a graph call outside the grants.
    fn graph_denied(&mut self, call: &str, denial: Denial) -> WitError {
        tracing::warn!(handler = %self.env.name, subject = %self.subject, sequence = self.sequence, name = ?denial.offending, "graph {call} denied: {}", denial.message);
        self.denied(denial.message)
    }
}

impl Host for HostState {
    #[instrument(level = "debug", skip(self, properties), fields(handler = %self.env.name, backend = self.env.backends.graph.kind()))]
    async fn upsert_entity(
        &mut self,
        label: String,
        id: String,
        properties: Vec<(String, Value)>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        self.charge_call()?;
        let checked = check_node(&NodeRef { label, id })
            .and_then(|node| check_properties(&properties).map(|()| node));
        let node = match checked {
            Ok(node) => node,
            Err(message) => return Ok(Err(self.invalid(message))),
        };
        if let Err(denial) = self.env.grants.check_label(&node.label) {
            return Ok(Err(self.graph_denied("upsert-entity", denial)));
        }
        let graph = self.env.backends.graph.clone();
        let started = std::time::Instant::now();
        let result = graph.upsert_entity(&node, &properties).await;
        self.effects.timed("graph.upsert-entity", started);
        match result {
            Ok(()) => {
                self.effects.entities_upserted += 1;
                Ok(Ok(()))
            }
            Err(error) => {
                tracing::warn!(handler = %self.env.name, label = %node.label, id = %node.id, %error, "graph upsert failed");
                Ok(Err(self.backend_error(error)))
            }
        }
    }

    #[instrument(level = "debug", skip(self, source, target, properties), fields(handler = %self.env.name, backend = self.env.backends.graph.kind()))]
    async fn upsert_relation(
        &mut self,
        source: NodeRef,
        kind: String,
        target: NodeRef,
        properties: Vec<(String, Value)>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        self.charge_call()?;
        let checked = (|| {
            let source = check_node(&source)?;
            let target = check_node(&target)?;
            check_identifier("relation kind", &kind)?;
            check_properties(&properties)?;
            Ok::<_, String>((source, target))
        })();
        let (source, target) = match checked {
            Ok(nodes) => nodes,
            Err(message) => return Ok(Err(self.invalid(message))),
        };
        let grants = &self.env.grants;
        let granted = grants
            .check_label(&source.label)
            .and_then(|()| grants.check_label(&target.label))
            .and_then(|()| grants.check_relation(&kind));
        if let Err(denial) = granted {
            return Ok(Err(self.graph_denied("upsert-relation", denial)));
        }
        let graph = self.env.backends.graph.clone();
        let started = std::time::Instant::now();
        let result = graph
            .upsert_relation(&source, &kind, &target, &properties)
            .await;
        self.effects.timed("graph.upsert-relation", started);
        match result {
            Ok(()) => {
                self.effects.relations_upserted += 1;
                Ok(Ok(()))
            }
            Err(error) => {
                tracing::warn!(handler = %self.env.name, %kind, %error, "graph relation upsert failed");
                Ok(Err(self.backend_error(error)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_identifiers() {
        for name in ["PhaseTransition", "_x", "a1_b2"] {
            assert!(check_identifier("label", name).is_ok(), "{name}");
        }
    }

    #[test]
    fn rejects_cypher_injection_in_label() {
        let error = check_identifier("label", "A`) DETACH DELETE n //").unwrap_err();
        assert!(
            error.contains("label \"A`) DETACH DELETE n //\" is not an identifier"),
            "{error}"
        );
    }

    #[test]
    fn rejects_empty_digit_leading_and_non_ascii_identifiers() {
        for name in ["", "1abc", "a-b", "ñandú", "a b", &"x".repeat(129)] {
            assert!(check_identifier("label", name).is_err(), "{name}");
        }
    }

    #[test]
    fn refuses_to_overwrite_the_id_property() {
        let error = check_properties(&[("id".into(), Value::Text("x".into()))]).unwrap_err();
        assert!(error.contains("identity"), "{error}");
    }
}

#[cfg(test)]
mod grant_tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::backend::memory::MemoryGraph;
    use crate::capability::HandlerEnv;
    use crate::grant::{Grants, GrantsConfig};
    use crate::limits::Limits;

    fn granted() -> (HostState, MemoryGraph) {
        let (backends, _, graph) = crate::backend::memory::backends();
        let grants = Grants::new(&GrantsConfig {
            graph_labels: vec!["PhaseTransition".into(), "Story".into()],
            graph_relations: vec!["OF".into()],
            ..GrantsConfig::default()
        });
        let env =
            HandlerEnv::with_grants("h", BTreeMap::new(), backends, Limits::default(), grants);
        (HostState::new(env, "s".into(), 1), graph)
    }

    fn node(label: &str, id: &str) -> NodeRef {
        NodeRef {
            label: label.into(),
            id: id.into(),
        }
    }

    #[tokio::test]
    async fn granted_labels_and_kinds_are_written() {
        let (mut state, graph) = granted();
        assert_eq!(
            state
                .upsert_entity("PhaseTransition".into(), "S1:t".into(), vec![])
                .await
                .unwrap(),
            Ok(())
        );
        let relation = state
            .upsert_relation(
                node("PhaseTransition", "S1:t"),
                "OF".into(),
                node("Story", "S1"),
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(relation, Ok(()));
        assert_eq!(graph.count("PhaseTransition"), 1);
    }

    #[tokio::test]
    async fn labels_and_kinds_outside_the_grant_are_denied() {
        let (mut state, graph) = granted();
        let entity = state
            .upsert_entity("Secret".into(), "x".into(), vec![])
            .await
            .unwrap();
        assert!(
            matches!(entity, Err(WitError::Denied(ref m)) if m.contains("\"Secret\"")),
            "{entity:?}"
        );
        let kind = state
            .upsert_relation(
                node("PhaseTransition", "a"),
                "OWNS".into(),
                node("Story", "b"),
                vec![],
            )
            .await
            .unwrap();
        assert!(
            matches!(kind, Err(WitError::Denied(ref m)) if m.contains("\"OWNS\"")),
            "{kind:?}"
        );
        let end = state
            .upsert_relation(
                node("PhaseTransition", "a"),
                "OF".into(),
                node("Secret", "b"),
                vec![],
            )
            .await
            .unwrap();
        assert!(matches!(end, Err(WitError::Denied(_))), "{end:?}");
        assert_eq!(state.effects.errors.denied, 3);
        assert!(graph.nodes().is_empty());
    }

    #[tokio::test]
    async fn an_injected_label_is_invalid_before_any_grant_check() {
        let (mut state, graph) = granted();
        let result = state
            .upsert_entity("A`) DETACH DELETE n //".into(), "x".into(), vec![])
            .await
            .unwrap();
        assert!(matches!(result, Err(WitError::Invalid(_))), "{result:?}");
        assert_eq!(state.effects.errors.invalid, 1);
        assert!(graph.nodes().is_empty());
    }
}
