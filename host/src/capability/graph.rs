//! `graph`: entity and relation upserts against the handler's graph backend.
//!
//! Labels, relation kinds and property keys end up as Cypher identifiers,
//! which cannot be passed as parameters. They are checked here, before any
//! backend sees them, so no backend ever splices an unchecked name.

use tracing::instrument;

use crate::backend::NodeKey;
use crate::bindings::graph::{Host, NodeRef, Value};
use crate::bindings::types::Error as WitError;
use crate::capability::HostState;

/// Longest identifier accepted.
pub const MAX_IDENTIFIER_BYTES: usize = 128;
/// Most properties one upsert may set.
pub const MAX_PROPERTIES: usize = 256;

/// Checks that `name` is an identifier: an ASCII letter or `_`, then ASCII
/// letters, digits or `_`. `what` names the role in the error message.
pub fn check_identifier(what: &str, name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let valid_start = matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_');
    let valid_rest = bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid_start || !valid_rest || name.len() > MAX_IDENTIFIER_BYTES {
        return Err(format!(
            "{what} {name:?} is not an identifier (a letter or `_`, then letters, digits or `_`, at most {MAX_IDENTIFIER_BYTES} bytes)"
        ));
    }
    Ok(())
}

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
            return Err(format!("property {key:?} is {f}, which a graph cannot store"));
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

impl Host for HostState {
    #[instrument(skip(self, properties), fields(handler = %self.env.name, backend = self.env.backends.graph.kind()))]
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
        let graph = self.env.backends.graph.clone();
        match graph.upsert_entity(&node, &properties).await {
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

    #[instrument(skip(self, source, target, properties), fields(handler = %self.env.name, backend = self.env.backends.graph.kind()))]
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
        let graph = self.env.backends.graph.clone();
        match graph
            .upsert_relation(&source, &kind, &target, &properties)
            .await
        {
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
        assert!(error.contains("label \"A`) DETACH DELETE n //\" is not an identifier"), "{error}");
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
