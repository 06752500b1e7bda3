//! Graph identifiers: labels, relation kinds and property keys end up as
//! Cypher identifiers, which cannot be passed as parameters, so every one is
//! checked before any backend sees it. Grants check the names they list,
//! the graph capability the names a plugin sends, and the Neo4j backend
//! checks again before splicing; all use [`check_identifier`].

use crate::limits::MAX_IDENTIFIER_BYTES;

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
