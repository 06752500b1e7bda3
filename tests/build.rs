//! Builds every plugin and test guest for `wasm32-wasip2` and exposes each
//! artifact's path as a constant in `switchyard_tests::artifacts`.
//!
//! The nested cargo uses its own target directory (`target/wasm`) so it
//! never waits on the lock of the build that runs this script.

use std::env;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

/// (package, artifact stem, constant name)
const ARTIFACTS: &[(&str, &str, &str)] = &[
    (
        "story-transitions",
        "story_transitions",
        "STORY_TRANSITIONS",
    ),
    ("guest-hostile", "guest_hostile", "HOSTILE"),
    ("guest-wrong-world", "guest_wrong_world", "WRONG_WORLD"),
    ("guest-recorder", "guest_recorder", "RECORDER"),
    ("guest-v010", "guest_v010", "V010"),
];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let root = manifest.parent().map(PathBuf::from).unwrap_or_default();
    let target_dir = root.join("target").join("wasm");
    for dir in ["wit", "plugins", "tests/guests"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&root)
        .args([
            "build",
            "--profile",
            "wasm",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir)
        // Flags meant for the host build must not leak into the guest build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR");
    for (package, _, _) in ARTIFACTS {
        command.args(["-p", package]);
    }
    let status = command.status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => panic!(
            "building the wasm32-wasip2 plugins and test guests failed ({status}); \
             is the target installed? `rustup target add wasm32-wasip2`"
        ),
        Err(error) => panic!("cannot run cargo to build the test guests: {error}"),
    }

    let mut constants = String::new();
    for (package, stem, name) in ARTIFACTS {
        let path = target_dir
            .join("wasm32-wasip2")
            .join("wasm")
            .join(format!("{stem}.wasm"));
        assert!(
            path.exists(),
            "{package} built but {} is missing",
            path.display()
        );
        let _ = writeln!(
            constants,
            "/// `{package}`, built for wasm32-wasip2.\npub const {name}: &str = {:?};",
            path.display().to_string()
        );
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("artifacts.rs");
    if let Err(error) = std::fs::write(&out, constants) {
        panic!("cannot write {}: {error}", out.display());
    }
}
