//! `switchyard config check|show [FILE]`: a configuration checked, or
//! shown as the service reads it, without starting anything.
//!
//! `check` validates what `serve` validates before it connects: the file,
//! its `SWITCHYARD_...` overrides, every key and range; then what it can
//! offline: each secret and certificate file is readable, each plugin file
//! loads and passes its handler's fixtures. Every problem found past the
//! configuration itself is listed, and any one fails the command.
//!
//! `show` prints the document after overrides and unsets, secrets masked.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use switchyard::config::{Config, HandlerConfig};
use switchyard::isolation::{Profile, run_fixtures};
use switchyard::runtime::{Runtime, RuntimeConfig};
use switchyard::secret::mask_urls;

#[derive(Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration offline: keys, ranges, secret files, plugins and fixtures.
    Check(FileArg),
    /// Print the configuration after SWITCHYARD_... overrides, secrets masked.
    Show(FileArg),
}

#[derive(Args)]
struct FileArg {
    /// The TOML configuration (or --config / SWITCHYARD_CONFIG).
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
    /// The TOML configuration.
    #[arg(long, env = "SWITCHYARD_CONFIG", conflicts_with = "file")]
    config: Option<PathBuf>,
}

impl FileArg {
    fn path(&self) -> anyhow::Result<&Path> {
        match self.file.as_deref().or(self.config.as_deref()) {
            Some(path) => Ok(path),
            None => bail!("no configuration given: name a FILE, --config or SWITCHYARD_CONFIG"),
        }
    }
}

pub fn run(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ConfigCommand::Check(file) => check(file.path()?),
        ConfigCommand::Show(file) => show(file.path()?),
    }
}

fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let mut problems = files(&config);
    match switchyard::memory::check(&config, switchyard::process::memory_limit_mib()) {
        switchyard::memory::Fit::Fits => {}
        switchyard::memory::Fit::Warn(message) => eprintln!("switchyard: warning: {message}"),
        switchyard::memory::Fit::Refuse(message) => problems.push(message),
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let engine = Arc::new(Runtime::new(RuntimeConfig {
        max_instances: 4,
        ..RuntimeConfig::default()
    })?);
    let mut plugins = 0;
    for handler in &config.handlers {
        if handler.plugin.is_none() {
            continue;
        }
        plugins += 1;
        if let Err(problem) = runtime.block_on(plugin(&engine, handler)) {
            problems.push(format!("handler `{}`: {problem:#}", handler.name));
        }
    }
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("switchyard: {problem}");
        }
        bail!("{}: {} problems", path.display(), problems.len());
    }
    let pushed = config.handlers.len() - plugins;
    println!(
        "{}: ok ({} handlers; {plugins} plugin files loaded and checked against their fixtures{})",
        path.display(),
        config.handlers.len(),
        if pushed > 0 {
            format!("; {pushed} take pushed versions, checked by each host when it loads them")
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Every secret and certificate file the configuration names that cannot
/// be read (their contents are never shown).
fn files(config: &Config) -> Vec<String> {
    let nats = &config.nats;
    let cache = &config.cache;
    let graph = &config.graph;
    [
        ("nats.ca_file", &nats.ca_file),
        ("nats.cert_file", &nats.cert_file),
        ("nats.key_file", &nats.key_file),
        ("nats.password_file", &nats.password_file),
        ("nats.token_file", &nats.token_file),
        ("nats.nkey_seed_file", &nats.nkey_seed_file),
        ("nats.creds_file", &nats.creds_file),
        ("cache.password_file", &cache.password_file),
        ("cache.ca_file", &cache.ca_file),
        ("cache.cert_file", &cache.cert_file),
        ("cache.key_file", &cache.key_file),
        ("graph.password_file", &graph.password_file),
        ("graph.ca_file", &graph.ca_file),
    ]
    .into_iter()
    .filter_map(|(key, file)| {
        let path = file.as_ref()?;
        std::fs::File::open(path).err().map(|error| {
            format!(
                "config key `{key}`: cannot read {}: {error}",
                path.display()
            )
        })
    })
    .collect()
}

/// Loads a handler's plugin file and runs its fixtures, as `serve` does
/// before it consumes anything.
async fn plugin(runtime: &Arc<Runtime>, handler: &HandlerConfig) -> anyhow::Result<()> {
    let Some(path) = &handler.plugin else {
        return Ok(());
    };
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read plugin {}", path.display()))?;
    let fixtures = switchyard::fleet::reload::load_fixtures(handler.fixtures.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let loaded = {
        let runtime = runtime.clone();
        tokio::task::spawn_blocking(move || runtime.load(&bytes)).await??
    };
    if !fixtures.is_empty() {
        run_fixtures(
            runtime.clone(),
            loaded.clone(),
            Profile::of(handler),
            &fixtures,
        )
        .await
        .map_err(|reason| {
            anyhow::anyhow!("plugin {} fails its fixtures: {reason}", loaded.digest())
        })?;
    }
    Ok(())
}

fn show(path: &Path) -> anyhow::Result<ExitCode> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read configuration {origin}"))?;
    let mut document = Config::document(&text, &origin, std::env::vars())?;
    // What `serve` would refuse is refused here too, after the document is
    // known to be whole.
    Config::from_document(document.clone(), &origin)?;
    mask(&mut document);
    print!(
        "{}",
        toml::to_string(&document).context("cannot print the configuration")?
    );
    Ok(ExitCode::SUCCESS)
}

/// Keys whose values are secrets.
const SECRET_KEYS: [&str; 3] = ["password", "token", "nkey_seed"];

/// Replaces every secret value with `***` and the credentials in every URL.
fn mask(table: &mut toml::Table) {
    for (key, value) in table.iter_mut() {
        match value {
            toml::Value::String(text) if SECRET_KEYS.contains(&key.as_str()) => {
                *text = "***".into();
            }
            toml::Value::String(text) if key == "url" => *text = mask_urls(text),
            toml::Value::Table(inner) => mask(inner),
            toml::Value::Array(items) => {
                for item in items {
                    if let toml::Value::Table(inner) = item {
                        mask(inner);
                    }
                }
            }
            _ => {}
        }
    }
}
