//! `switchyard plugin new NAME` and `switchyard plugin build [DIR]`: a
//! plugin of a team's own, anywhere, and its component built.
//!
//! `new` checks the name and the directory, then writes the language's
//! template: one file per language beside this one ([`rust`], [`js`], [`python`]), each a
//! handler that invalidates one entity's keys, a fixtures file with
//! expectations, a harness test and a README. `build` is
//! [`switchyard::toolchain::build`] with its result printed: the
//! artifact's path, size and digest.

mod js;
mod python;
mod rust;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use switchyard::toolchain::{self, Output};

/// The languages `plugin new --lang` knows.
pub const LANGS: &[&str] = &["rust", "js", "python"];

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

/// `plugin new`: writes the plugin into `dir` (default `./NAME`).
pub fn new(
    name: &str,
    dir: Option<&Path>,
    sdk: Option<&Path>,
    lang: &str,
) -> anyhow::Result<ExitCode> {
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
    let (files, uses) = match lang {
        "rust" => {
            let (files, uses) = rust::files(name, sdk)?;
            let files = files.into_iter().map(|(f, t)| (f.to_string(), t)).collect();
            (files, uses)
        }
        "js" => js::files(name),
        "python" => python::files(name),
        other => bail!(
            "--lang {other}: this version scaffolds {}",
            LANGS.join(", ")
        ),
    };
    for (file, text) in &files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "created plugin `{name}` in {} ({uses}); next: switchyard plugin build {}",
        dir.display(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `plugin build`: the component of the plugin in `dir`.
pub fn build(dir: &Path) -> anyhow::Result<ExitCode> {
    let built = toolchain::build(dir, Output::Shown)?;
    println!("built {built} in {:.1} s", built.took.as_secs_f64());
    Ok(ExitCode::SUCCESS)
}
