//! `switchyard plugin new NAME` and `switchyard plugin build [DIR]`: a
//! plugin crate of a team's own, anywhere, and its component built.
//!
//! `new` writes a crate that builds for `wasm32-wasip2` against the SDK
//! (which carries the WIT): a handler that invalidates one entity's keys,
//! a fixtures file with expectations, a harness test and a README. `build`
//! runs cargo with the right target and profile and prints the artifact's
//! path, size and digest.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};
use switchyard::runtime::Digest;

/// Where this binary's SDK and harness crates are, when it runs from (or
/// was built in) a checkout of the host's repository.
fn repository_crate(relative: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    path.join("Cargo.toml")
        .is_file()
        .then(|| path.canonicalize().ok())
        .flatten()
}

/// `plugin new`: writes the crate into `dir` (default `./NAME`).
pub fn new(
    name: &str,
    dir: Option<&Path>,
    sdk: Option<&Path>,
    lang: &str,
) -> anyhow::Result<ExitCode> {
    if lang != "rust" {
        bail!("--lang {lang}: only rust plugins can be scaffolded by this version");
    }
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || !name.starts_with(|c: char| c.is_ascii_lowercase())
    {
        bail!(
            "plugin name {name:?}: use lower-case letters, digits and `-`, starting with a letter"
        );
    }
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if dir.exists() {
        bail!("{} already exists: nothing written", dir.display());
    }
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
    let files = [
        ("Cargo.toml", cargo_toml(name, &sdk, testing.as_deref())),
        ("src/lib.rs", LIB_RS.to_string()),
        ("fixtures.jsonl", FIXTURES.to_string()),
        (
            "tests/harness.rs",
            HARNESS_RS.replace("{crate}", &crate_name),
        ),
        (
            "README.md",
            README_MD
                .replace("{name}", name)
                .replace("{crate}", &crate_name),
        ),
        (".gitignore", "/target\n".to_string()),
    ];
    for (file, text) in &files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "created plugin `{name}` in {} (SDK {}); next: switchyard plugin build {}",
        dir.display(),
        sdk.display(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
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

const HARNESS_RS: &str = r#"//! The plugin in isolation, on in-memory backends: run
//! `switchyard plugin build` first, then `cargo test`.

use serde_json::json;
use switchyard_testing::Harness;

const COMPONENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/wasm32-wasip2/release/{crate}.wasm"
);

#[test]
fn an_update_invalidates_the_users_keys_and_no_other() {
    let mut plugin = Harness::load(COMPONENT).start();
    plugin.seed_keys(["user:42", "user:42:profile", "user:420"]);
    plugin
        .send_json("users.updated", json!({"user_id": "42"}))
        .assert_ack()
        .assert_deleted(2);
    plugin.assert_keys(["user:420"]);
}
"#;

const README_MD: &str = r#"# {name}

A Switchyard handler plugin: on `users.updated`, it invalidates the
user's cached keys (`user:<id>` and everything under `user:<id>:`).

```sh
switchyard plugin build .                      # the component, its size and digest
switchyard test target/wasm32-wasip2/release/{crate}.wasm --events fixtures.jsonl
cargo test                                     # the harness test, after a build
switchyard plugin push {name} target/wasm32-wasip2/release/{crate}.wasm \
    --fixtures fixtures.jsonl --config switchyard.toml
```

`fixtures.jsonl` says what must come of each event (outcome, keys gone
and kept); `switchyard test` fails on any difference, and `plugin push`
runs the same file before it stores a version. `switchyard record` turns
real traffic into more of them.
"#;

/// `plugin build`: the component of the plugin crate in `dir`.
pub fn build(dir: &Path) -> anyhow::Result<ExitCode> {
    let dir = &dir
        .canonicalize()
        .with_context(|| format!("{} is not a plugin crate", dir.display()))?;
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("{} is not a plugin crate", dir.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not TOML", manifest.display()))?;
    let Some(name) = table
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
    else {
        bail!("{} has no [package] name", manifest.display());
    };
    let started = std::time::Instant::now();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(&manifest)
        .env_remove("CARGO_TARGET_DIR")
        .current_dir(dir)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build of {} failed ({status})", dir.display());
    }
    let artifact = dir
        .join("target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    let bytes = std::fs::read(&artifact)
        .with_context(|| format!("the build left no component at {}", artifact.display()))?;
    println!(
        "built {} ({} bytes, {}) in {:.1} s",
        artifact.display(),
        bytes.len(),
        Digest::of(&bytes),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
