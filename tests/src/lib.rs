//! Shared pieces of Switchyard's integration tests.
//!
//! - [`artifacts`]: paths of the plugins and test guests, built for
//!   `wasm32-wasip2` by this crate's build script.
//! - [`config`]: service configurations with names of their own.
//! - [`services`]: addresses of the real NATS, Valkey and Neo4j servers
//!   started by `scripts/services`, and what to do when one is missing.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test support reports by panicking

pub mod config;
pub mod services;

/// Paths of the built components.
pub mod artifacts {
    include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

    /// The path of `plugins/dist/<name>.wasm`, a plugin `scripts/build-plugins`
    /// builds (the JavaScript and Python ones). Panics when it is missing:
    /// a test that needs it fails rather than passing without it.
    pub fn built_plugin(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../plugins/dist")
            .join(format!("{name}.wasm"));
        assert!(
            path.is_file(),
            "{} is missing: run scripts/build-plugins (scripts/test does)",
            path.display()
        );
        path.display().to_string()
    }

    /// The fixtures every story-transitions plugin must pass, whatever its
    /// language: `plugins/fixtures/story-transitions.jsonl`.
    pub fn story_transitions_fixtures() -> String {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../plugins/fixtures/story-transitions.jsonl"
        );
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
    }

    /// The story-transitions component with a custom section appended:
    /// the same behaviour under another digest, one per `tag`.
    pub fn story_transitions_variant(tag: u32) -> Vec<u8> {
        let mut bytes = std::fs::read(STORY_TRANSITIONS).expect("story-transitions is built");
        let name = b"switchyard-test-variant";
        let mut section = vec![name.len() as u8];
        section.extend_from_slice(name);
        section.extend_from_slice(&tag.to_le_bytes());
        bytes.push(0); // custom section id
        bytes.push(section.len() as u8); // fits one LEB128 byte
        bytes.extend_from_slice(&section);
        bytes
    }
}
