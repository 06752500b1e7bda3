//! `check_identifier` on arbitrary text: what it accepts is a plain Cypher
//! identifier (nothing that could close a backquote, a parenthesis or a
//! comment), and a grant naming it passes the configuration check exactly
//! when the identifier does.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::capability::graph::{MAX_IDENTIFIER_BYTES, check_identifier};
use switchyard::grant::GrantsConfig;

fuzz_target!(|name: &str| {
    let accepted = check_identifier("label", name).is_ok();
    if accepted {
        let mut bytes = name.bytes();
        let first = bytes.next().unwrap_or(b'0');
        assert!(first.is_ascii_alphabetic() || first == b'_', "{name:?}");
        assert!(
            bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "{name:?}"
        );
        assert!(name.len() <= MAX_IDENTIFIER_BYTES);
    }
    let config = GrantsConfig {
        graph_labels: vec![name.to_string()],
        graph_relations: vec![name.to_string()],
        ..GrantsConfig::default()
    };
    assert_eq!(config.check().is_ok(), accepted, "{name:?}");
});
