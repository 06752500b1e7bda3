//! The Rust template: a crate of its own that builds for `wasm32-wasip2`
//! against the SDK (which carries the WIT).

use std::path::Path;

use anyhow::Context as _;

use super::repository_crate;

/// The template's files, and what it was written against.
pub fn files(
    name: &str,
    sdk: Option<&Path>,
) -> anyhow::Result<(Vec<(&'static str, String)>, String)> {
    let sdk = match sdk {
        Some(path) => path
            .canonicalize()
            .with_context(|| format!("--sdk {}", path.display()))?,
        None => repository_crate("plugins/sdk").context(
            "cannot find the plugin SDK next to this binary's sources; give its directory with --sdk",
        )?,
    };
    let testing = sdk
        .parent()
        .and_then(Path::parent)
        .map(|root| root.join("testing"))
        .filter(|t| t.join("Cargo.toml").is_file());
    let crate_name = name.replace('-', "_");
    let files = vec![
        ("Cargo.toml", cargo_toml(name, &sdk, testing.as_deref())),
        ("src/lib.rs", LIB_RS.to_string()),
        ("fixtures.jsonl", FIXTURES.to_string()),
        ("tests/harness.rs", HARNESS_RS.to_string()),
        (
            "README.md",
            README_MD
                .replace("{name}", name)
                .replace("{crate}", &crate_name),
        ),
        (".gitignore", "/target\n".to_string()),
    ];
    Ok((files, format!("SDK {}", sdk.display())))
}

fn cargo_toml(name: &str, sdk: &Path, testing: Option<&Path>) -> String {
    let dev = match testing {
        Some(path) => format!(
            "\n[dev-dependencies]\nswitchyard-testing = {{ path = {:?} }}\nserde_json = \"1\"\n",
            path.display().to_string()
        ),
        None => String::new(),
    };
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

# A crate of its own, not a member of any workspace around it.
[workspace]

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
switchyard-plugin = {{ path = {sdk:?} }}
serde_json = "1"
{dev}
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
debug = false
strip = "debuginfo"
"#,
        sdk = sdk.display().to_string(),
    )
}

const LIB_RS: &str = r#"//! On each event `{"user_id": "..."}`, invalidate the user's cached keys:
//! `<key_prefix><id>` and every key under `<key_prefix><id>:`.
//!
//! Configuration (`[handlers.config]`): `key_prefix`, default `user:`.
//! A payload without a `user_id` is rejected (dead-lettered with the
//! reason) before any cache call; an unavailable cache retries the event.

use switchyard_plugin::event::Event;
use switchyard_plugin::outcome::Outcome;
use switchyard_plugin::types::Error;
use switchyard_plugin::{Guest, invalidate, logging, settings};

struct Handler;

impl Guest for Handler {
    fn handle(event: Event) -> Outcome {
        let payload: serde_json::Value = match serde_json::from_slice(&event.payload) {
            Ok(value) => value,
            Err(error) => return Outcome::Reject(format!("payload is not JSON: {error}")),
        };
        let Some(id) = payload.get("user_id").and_then(|v| v.as_str()) else {
            return Outcome::Reject("missing `user_id`".into());
        };
        let prefix = settings::get_or("key_prefix", "user:");
        let key = format!("{prefix}{id}");
        match invalidate::keys_and_prefixes(&[&key], &[format!("{key}:")]) {
            Ok(deleted) => {
                logging::info("invalidated", &[("user_id", id.to_string()), ("keys_deleted", deleted.to_string())]);
                Outcome::Ack
            }
            Err(Error::Unavailable(reason)) | Err(Error::Other(reason)) => {
                logging::warn("cache call failed; retrying", &[("reason", reason)]);
                Outcome::Retry(None)
            }
            Err(Error::Denied(reason)) | Err(Error::Invalid(reason)) => Outcome::Reject(reason),
        }
    }
}

switchyard_plugin::export!(Handler);
"#;

const FIXTURES: &str = r#"{"subject": "users.updated", "payload": {"user_id": "42"}, "cache": {"user:42": "v", "user:42:profile": "v", "user:420": "another user"}, "expect": {"outcome": "ack", "keys_gone": ["user:42", "user:42:profile"], "keys_kept": ["user:420"]}}
{"subject": "users.updated", "payload": {"user_id": "4*"}, "cache": {"user:42": "v"}, "expect": {"outcome": "ack", "keys_kept": ["user:42"]}}
{"subject": "users.updated", "payload": {"name": "no id"}, "expect": {"outcome": "reject", "detail": "user_id"}}
"#;

const HARNESS_RS: &str = r#"//! The plugin in isolation, on in-memory backends. `Harness::build` builds
//! this crate for wasm32-wasip2 (as `switchyard plugin build` does) and
//! loads the component, so `cargo test` is all it takes.

use serde_json::json;
use switchyard_testing::Harness;

fn plugin() -> switchyard_testing::Harness {
    Harness::build(env!("CARGO_MANIFEST_DIR")).start()
}

#[test]
fn an_update_invalidates_the_users_keys_and_no_other() {
    let mut plugin = plugin();
    plugin.seed_keys(["user:42", "user:42:profile", "user:420"]);
    plugin
        .send_json("users.updated", json!({"user_id": "42"}))
        .assert_ack()
        .assert_deleted(2);
    plugin.assert_keys(["user:420"]);
}

#[test]
fn a_payload_without_an_id_is_rejected_before_any_cache_call() {
    let mut plugin = plugin();
    let sent = plugin.send_json("users.updated", json!({"name": "no id"}));
    sent.assert_reject_containing("user_id");
    sent.assert_no_effects();
}
"#;

const README_MD: &str = r#"# {name}

A Switchyard handler plugin: on `users.updated`, it invalidates the
user's cached keys (`user:<id>` and everything under `user:<id>:`).

```sh
switchyard plugin build .                      # the component, its size and digest
switchyard test target/wasm32-wasip2/release/{crate}.wasm --events fixtures.jsonl
cargo test                                     # the harness tests (they build the plugin)
switchyard dev . --config switchyard.toml      # rebuild, test and hot-swap on every save
switchyard plugin push {name} target/wasm32-wasip2/release/{crate}.wasm \
    --fixtures fixtures.jsonl --config switchyard.toml
```

`fixtures.jsonl` says what must come of each event (outcome, keys gone
and kept); `switchyard test` fails on any difference, and `plugin push`
runs the same file before it stores a version. `switchyard record` turns
real traffic into more of them.
"#;
