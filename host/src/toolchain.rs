//! Building a plugin's component from its source directory: what
//! `switchyard plugin build`, `switchyard dev` and the harness's
//! `Harness::build` share.
//!
//! A directory's language is told by what it holds ([`Lang::detect`]): a
//! `Cargo.toml` is a Rust crate, built with cargo for `wasm32-wasip2` in
//! release; its component is `target/wasm32-wasip2/release/<crate>.wasm`.
//! A `package.json` is JavaScript: npm installs its pinned
//! `@bytecodealliance/componentize-js` (from its `package-lock.json` when
//! there is one), which builds `src/index.js` into `dist/<name>.wasm`. A
//! `requirements.txt` beside `src/app.py` is Python: its pinned
//! `componentize-py` goes into `.venv`, which builds the `app` module into
//! `dist/<name>.wasm`. Both build against the WIT in the plugin's `wit/`.
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
    JavaScript,
    Python,
}

impl Lang {
    /// The language of the plugin in `dir`, from the files it holds.
    pub fn detect(dir: &Path) -> anyhow::Result<Lang> {
        if dir.join("Cargo.toml").is_file() {
            return Ok(Lang::Rust);
        }
        if dir.join("package.json").is_file() {
            return Ok(Lang::JavaScript);
        }
        if dir.join("requirements.txt").is_file() && dir.join("src/app.py").is_file() {
            return Ok(Lang::Python);
        }
        if !dir.is_dir() {
            bail!("{} is not a directory", dir.display());
        }
        bail!(
            "{} holds no plugin this version can build (a Rust plugin has a Cargo.toml, a \
             JavaScript one a package.json, a Python one a requirements.txt and src/app.py)",
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
        Lang::JavaScript => javascript(&dir, output)?,
        Lang::Python => python(&dir, output)?,
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
        Lang::JavaScript => Ok(["package.json", "package-lock.json", "src", "wit"]
            .iter()
            .map(|p| dir.join(p))
            .filter(|p| p.exists())
            .collect()),
        Lang::Python => Ok(["requirements.txt", "pyproject.toml", "src", "wit"]
            .iter()
            .map(|p| dir.join(p))
            .filter(|p| p.exists())
            .collect()),
    }
}

/// `dist/<name>.wasm` of a plugin, `-` in its name as `_`.
fn dist(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dist = dir.join("dist");
    std::fs::create_dir_all(&dist).with_context(|| format!("cannot create {}", dist.display()))?;
    Ok(dist.join(format!("{}.wasm", name.replace('-', "_"))))
}

fn require_wit(dir: &Path) -> anyhow::Result<PathBuf> {
    let wit = dir.join("wit");
    if !wit.join("world.wit").is_file() {
        bail!(
            "{} has no WIT contract: write it with `switchyard wit --out {}`",
            dir.display(),
            wit.display()
        );
    }
    Ok(wit)
}

fn javascript(dir: &Path, output: Output) -> anyhow::Result<PathBuf> {
    let manifest = dir.join("package.json");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let package: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", manifest.display()))?;
    let Some(name) = package.get("name").and_then(|n| n.as_str()) else {
        bail!("{} has no \"name\"", manifest.display());
    };
    if !dir.join("src/index.js").is_file() {
        bail!(
            "{} has no src/index.js, the module that exports `handle`",
            dir.display()
        );
    }
    let wit = require_wit(dir)?;
    let componentize = dir.join("node_modules/.bin/componentize-js");
    if !componentize.is_file() {
        // The lockfile, when there is one, is installed exactly.
        let install = if dir.join("package-lock.json").is_file() {
            "ci"
        } else {
            "install"
        };
        let mut npm = Command::new("npm");
        npm.args([install, "--no-audit", "--no-fund"])
            .current_dir(dir);
        run(npm, output, &format!("npm {install} in {}", dir.display()))?;
        if !componentize.is_file() {
            bail!(
                "{} does not depend on @bytecodealliance/componentize-js",
                manifest.display()
            );
        }
    }
    let artifact = dist(dir, name)?;
    let mut command = Command::new(&componentize);
    command
        .arg("--wit")
        .arg(&wit)
        .args(["--world-name", "event-handler"])
        // The world imports no HTTP: leave wasi:http out of the component.
        .args(["--disable", "http", "fetch-event", "--out"])
        .arg(&artifact)
        .arg("src/index.js")
        .current_dir(dir);
    run(
        command,
        output,
        &format!("componentize-js of {}", dir.display()),
    )?;
    Ok(artifact)
}

fn python(dir: &Path, output: Output) -> anyhow::Result<PathBuf> {
    let name = match std::fs::read_to_string(dir.join("pyproject.toml")) {
        Ok(text) => toml::from_str::<toml::Table>(&text)
            .ok()
            .and_then(|t| t.get("project")?.get("name")?.as_str().map(str::to_string)),
        Err(_) => None,
    }
    .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
    .unwrap_or_else(|| "plugin".into());
    let wit = require_wit(dir)?;
    let venv = dir.join(".venv");
    let componentize = venv.join("bin/componentize-py");
    if !componentize.is_file() {
        let mut create = Command::new("python3");
        create.args(["-m", "venv"]).arg(&venv).current_dir(dir);
        run(
            create,
            output,
            &format!("python3 -m venv in {}", dir.display()),
        )?;
        let mut pip = Command::new(venv.join("bin/pip"));
        pip.args([
            "install",
            "--disable-pip-version-check",
            "-r",
            "requirements.txt",
        ])
        .current_dir(dir);
        run(
            pip,
            output,
            &format!("pip install -r requirements.txt in {}", dir.display()),
        )?;
        if !componentize.is_file() {
            bail!(
                "{}/requirements.txt does not install componentize-py",
                dir.display()
            );
        }
    }
    // componentize-py copies WIT doc comments into Python docstrings without
    // escaping them (a `\x` in one is then a syntax error): it is given the
    // contract without its comments, which leaves the types as they are.
    let bare = venv.join("wit-undocumented");
    std::fs::create_dir_all(&bare).with_context(|| format!("cannot create {}", bare.display()))?;
    for entry in
        std::fs::read_dir(&wit).with_context(|| format!("cannot read {}", wit.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wit") {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let kept: Vec<&str> = text
                .lines()
                .filter(|line| !line.trim_start().starts_with("///"))
                .collect();
            let target = bare.join(path.file_name().unwrap_or_default());
            std::fs::write(&target, kept.join("\n"))
                .with_context(|| format!("cannot write {}", target.display()))?;
        }
    }
    let artifact = dist(dir, &name)?;
    let mut command = Command::new(&componentize);
    command
        .arg("--wit-path")
        .arg(&bare)
        .args([
            "--world",
            "event-handler",
            "componentize",
            "--python-path",
            "src",
            "app",
            "--output",
        ])
        .arg(&artifact)
        .env_remove("VIRTUAL_ENV")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(dir);
    run(
        command,
        output,
        &format!("componentize-py of {}", dir.display()),
    )?;
    Ok(artifact)
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
