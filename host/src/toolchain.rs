//! Building a plugin's component from its source directory: what
//! `switchyard plugin build`, `switchyard dev` and the harness's
//! `Harness::build` share.
//!
//! A directory's language is told by what it holds ([`Lang::detect`]): a
//! `Cargo.toml` is a Rust crate, built with cargo for `wasm32-wasip2` in
//! release; its component is `target/wasm32-wasip2/release/<crate>.wasm`.
//! [`build`] returns where the component is, its size and digest, and how
//! long the build took; a failed build is an error carrying the
//! toolchain's own last lines. [`sources`] lists what a rebuild depends
//! on, for watching.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::runtime::Digest;

/// A plugin's source language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Rust,
}

impl Lang {
    /// The language of the plugin in `dir`, from the files it holds.
    pub fn detect(dir: &Path) -> anyhow::Result<Lang> {
        if dir.join("Cargo.toml").is_file() {
            return Ok(Lang::Rust);
        }
        if !dir.is_dir() {
            bail!("{} is not a directory", dir.display());
        }
        bail!(
            "{} holds no plugin this version can build (a Rust plugin has a Cargo.toml)",
            dir.display()
        )
    }
}

/// A built component.
#[derive(Clone, Debug)]
pub struct Built {
    pub artifact: PathBuf,
    pub bytes: u64,
    pub digest: Digest,
    pub took: Duration,
}

impl std::fmt::Display for Built {
    /// `PATH (N bytes, sha256:…)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} bytes, {})",
            self.artifact.display(),
            self.bytes,
            self.digest
        )
    }
}

/// How a build's own output is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Passed through to this process's terminal, as it comes.
    Shown,
    /// Kept; on failure the error carries its last lines.
    Captured,
}

/// Builds the plugin in `dir`.
pub fn build(dir: &Path, output: Output) -> anyhow::Result<Built> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("{} is not a plugin directory", dir.display()))?;
    let started = Instant::now();
    let artifact = match Lang::detect(&dir)? {
        Lang::Rust => rust(&dir, output)?,
    };
    let bytes = std::fs::read(&artifact)
        .with_context(|| format!("the build left no component at {}", artifact.display()))?;
    Ok(Built {
        artifact,
        bytes: bytes.len() as u64,
        digest: Digest::of(&bytes),
        took: started.elapsed(),
    })
}

/// What a rebuild of the plugin in `dir` depends on: its manifest and
/// sources (not its build output).
pub fn sources(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    match Lang::detect(dir)? {
        Lang::Rust => Ok(["Cargo.toml", "src", "wit", "build.rs"]
            .iter()
            .map(|p| dir.join(p))
            .filter(|p| p.exists())
            .collect()),
    }
}

fn rust(dir: &Path, output: Output) -> anyhow::Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not TOML", manifest.display()))?;
    let Some(name) = table
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
    else {
        bail!("{} has no [package] name", manifest.display());
    };
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(&manifest)
        // The plugin's own target directory, whatever the caller builds in;
        // flags meant for the caller's build stay out of the guest's.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .current_dir(dir);
    run(
        command,
        output,
        &format!("cargo build of {}", dir.display()),
    )?;
    Ok(dir
        .join("target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_"))))
}

/// Runs a toolchain command; its failure names `what` and, when the output
/// was captured, ends with its last lines.
fn run(mut command: Command, output: Output, what: &str) -> anyhow::Result<()> {
    match output {
        Output::Shown => {
            let status = command
                .status()
                .with_context(|| format!("{what}: cannot start {:?}", command.get_program()))?;
            if !status.success() {
                bail!("{what} failed ({status})");
            }
        }
        Output::Captured => {
            let out = command
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("{what}: cannot start {:?}", command.get_program()))?;
            if !out.status.success() {
                let text = String::from_utf8_lossy(&out.stderr);
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                bail!("{what} failed ({}):\n{tail}", out.status);
            }
        }
    }
    Ok(())
}
