//! `switchyard plugin push|list|history|rollback|promote` and `switchyard
//! status`: the fleet's plugin versions and hosts, through NATS.
//!
//! A command that finds nothing to act on fails: `status` when no host
//! answers, `history` of a name nothing was pushed to, `push` to a name no
//! running host follows (unless `--allow-no-hosts`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use switchyard::config::{Config, NatsConfig};
use switchyard::fleet::control::{ControlPlane, Version};
use switchyard::fleet::status::{HostStatus, gather_status};
use switchyard::isolation::{Fixture, Profile, run_fixtures};
use switchyard::process::now_ms;
use switchyard::runtime::{Runtime, RuntimeConfig};

/// Where the control plane is: a service configuration, or a NATS URL with
/// the default bucket names.
#[derive(Args)]
pub struct Connection {
    /// A service configuration file: its NATS URL and bucket names are used.
    #[arg(long, global = true, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// The NATS server, when no --config is given.
    #[arg(
        long,
        global = true,
        default_value = "nats://127.0.0.1:4222",
        env = "SWITCHYARD_NATS__URL"
    )]
    nats: String,
}

impl Connection {
    fn resolve(&self) -> anyhow::Result<(NatsConfig, Option<Config>)> {
        super::nats_settings(self.config.as_deref(), &self.nats)
    }
}

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Create a plugin crate: a handler, fixtures with expectations, a harness test, a README.
    New {
        /// The plugin's name (lower-case letters, digits, `-`).
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The SDK crate's directory (default: the one beside this binary's sources).
        #[arg(long)]
        sdk: Option<PathBuf>,
        /// The plugin's language.
        #[arg(long, default_value = "rust")]
        lang: String,
    },
    /// Build a plugin crate's component for wasm32-wasip2; print its path, size and digest.
    Build {
        /// The plugin crate's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Validate a component and make it the live version of NAME on every host.
    Push {
        /// The plugin object: what hosts name in `plugin_object`.
        name: String,
        /// The component (.wasm) to push.
        file: PathBuf,
        /// Events with expected outcomes the version must pass, here and on every host.
        #[arg(long)]
        fixtures: Option<PathBuf>,
        /// Push as a shadow candidate instead of making it live.
        #[arg(long)]
        shadow: bool,
        /// Shown beside the version number in history and status (a
        /// release, a commit).
        #[arg(long)]
        label: Option<String>,
        /// Store it even though no running host follows NAME (the first
        /// version, before the hosts that will use it start).
        #[arg(long)]
        allow_no_hosts: bool,
        /// How long to wait for hosts to say what they follow.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Every plugin object with its live version, and the hosts running each.
    List {
        /// How long to wait for hosts to answer.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// The versions that were live for NAME, oldest first.
    History {
        /// The plugin object.
        name: String,
    },
    /// Make an earlier version live again (the one before the current, or --to).
    Rollback {
        /// The plugin object.
        name: String,
        /// A version from the history: its number (`#2`), digest, or a
        /// unique prefix of the digest's hex.
        #[arg(long)]
        to: Option<String>,
    },
    /// Make the shadow candidate of NAME live.
    Promote {
        /// The plugin object.
        name: String,
    },
}

#[derive(Args)]
pub struct PluginArgs {
    #[command(subcommand)]
    command: PluginCommand,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    connection: Connection,
    /// How long to wait for hosts to answer.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// Print the replies as JSON.
    #[arg(long)]
    json: bool,
}

fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(future)
}

async fn connect(nats: &NatsConfig) -> anyhow::Result<async_nats::Client> {
    super::connect(nats, "switchyard-cli").await
}

fn describe(version: &Version) -> String {
    let age = Duration::from_millis(now_ms().saturating_sub(version.pushed_at_ms));
    format!(
        "{:<4} {}  {:>8} bytes  {}  {} ago by {}{}",
        format!("#{}", version.number),
        version.digest,
        version.size,
        if version.fixtures {
            "fixtures"
        } else {
            "        "
        },
        humantime::format_duration(Duration::from_secs(age.as_secs())),
        version.pushed_by,
        version
            .label
            .as_ref()
            .map(|label| format!("  ({label})"))
            .unwrap_or_default()
    )
}

pub fn run(args: PluginArgs) -> anyhow::Result<ExitCode> {
    // The plugin kit's commands work offline.
    match &args.command {
        PluginCommand::New {
            name,
            dir,
            sdk,
            lang,
        } => return super::scaffold::new(name, dir.as_deref(), sdk.as_deref(), lang),
        PluginCommand::Build { dir } => return super::scaffold::build(dir),
        _ => {}
    }
    let (nats, config) = args.connection.resolve()?;
    block_on(async move {
        // A push is checked offline first (compile, world, fixtures), before
        // anything connects: a version that would be refused never leaves
        // the machine.
        let prepared = match &args.command {
            PluginCommand::Push {
                name,
                file,
                fixtures,
                ..
            } => Some(prepare(name, file, fixtures.as_deref(), config.as_ref()).await?),
            _ => None,
        };
        let client = connect(&nats).await?;
        let control =
            ControlPlane::open(&async_nats::jetstream::new(client.clone()), &nats).await?;
        let status_subject = format!("{}.status", nats.control_subject);
        match args.command {
            PluginCommand::Push {
                name,
                shadow,
                label,
                allow_no_hosts,
                wait,
                ..
            } => {
                let Some((bytes, fixtures_text)) = prepared else {
                    bail!("the push was not prepared");
                };
                let hosts = gather_status(&client, &status_subject, wait).await?;
                let following = hosts
                    .iter()
                    .filter(|host| {
                        host.handlers
                            .iter()
                            .any(|h| h.plugin_object.as_deref() == Some(name.as_str()))
                    })
                    .count();
                if following == 0 && !allow_no_hosts {
                    bail!(
                        "no running host follows plugin object `{name}` ({} hosts answered \
                         on {status_subject} within {wait:?}), so nothing would run it; \
                         nothing was stored. Check the name against `plugin_object` in the \
                         hosts' configuration, or pass --allow-no-hosts to store it for \
                         hosts that start later",
                        hosts.len()
                    );
                }
                let version = control
                    .push_labelled(
                        &name,
                        &bytes,
                        fixtures_text.as_deref(),
                        shadow,
                        label.as_deref(),
                    )
                    .await?;
                let role = if shadow {
                    "shadow candidate"
                } else {
                    "live version"
                };
                let reach = match following {
                    0 => "no running host follows it yet".to_string(),
                    1 => "1 host follows it".to_string(),
                    n => format!("{n} hosts follow it"),
                };
                println!(
                    "{name}: {} {} is now the {role}; {reach}",
                    version.name(),
                    version.digest
                );
            }
            PluginCommand::List { wait } => {
                let hosts = gather_status(&client, &status_subject, wait).await?;
                return list(&control, &hosts).await;
            }
            PluginCommand::History { name } => {
                let history = control.history(&name).await?;
                if history.is_empty() {
                    bail!(
                        "no version of `{name}` was ever pushed (`switchyard plugin list` \
                         shows the names there are)"
                    );
                }
                for version in &history {
                    println!("{}", describe(version));
                }
                if let Some(shadow) = control.shadow(&name).await? {
                    println!("shadow candidate: {}", describe(&shadow));
                }
            }
            PluginCommand::Rollback { name, to } => {
                let version = control.rollback(&name, to.as_deref()).await?;
                println!(
                    "{name}: rolled back to {} {}",
                    version.name(),
                    version.digest
                );
            }
            PluginCommand::Promote { name } => {
                let version = control.promote(&name).await?;
                println!(
                    "{name}: {} {} promoted to live",
                    version.name(),
                    version.digest
                );
            }
            PluginCommand::New { .. } | PluginCommand::Build { .. } => {
                unreachable!("handled before connecting")
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `plugin list`: every name with a live version, then each handler the
/// hosts run from a file, with how many hosts run which version.
async fn list(control: &ControlPlane, hosts: &[HostStatus]) -> anyhow::Result<ExitCode> {
    let names = control.names().await?;
    // (object or file handler) -> version shown -> hosts running it
    let mut running: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for host in hosts {
        for handler in &host.handlers {
            let key = match &handler.plugin_object {
                Some(object) => object.clone(),
                None => format!("{} (file)", handler.handler),
            };
            let version = match &handler.version {
                Some(version) => format!("{version} {}", handler.digest),
                None => handler.digest.clone(),
            };
            *running.entry(key).or_default().entry(version).or_default() += 1;
        }
    }
    if names.is_empty() && running.is_empty() {
        bail!(
            "no plugin version was pushed and no host answered: nothing to list \
             (is --config or --nats the fleet's?)"
        );
    }
    for name in &names {
        let live = control
            .live(name)
            .await?
            .map(|v| format!("{} {}", v.name(), v.digest))
            .unwrap_or_else(|| "no live version".into());
        println!("{name}: live {live}; {}", hosts_on(running.remove(name)));
        if let Some(shadow) = control.shadow(name).await? {
            println!("  shadow candidate {} {}", shadow.name(), shadow.digest);
        }
    }
    for (name, versions) in running {
        println!("{name}: {}", hosts_on(Some(versions)));
    }
    Ok(ExitCode::SUCCESS)
}

/// `2 hosts on #3 sha256:…, 1 host on #2 sha256:…`, or `no host runs it`.
fn hosts_on(versions: Option<BTreeMap<String, usize>>) -> String {
    let versions = versions.unwrap_or_default();
    if versions.is_empty() {
        return "no host runs it".into();
    }
    versions
        .iter()
        .map(|(version, n)| {
            let hosts = if *n == 1 { "host" } else { "hosts" };
            format!("{n} {hosts} on {version}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads a version and its fixtures and checks them as every host will:
/// with the configuration, limits and grants of the handler in `config`
/// that uses `name`, else unrestricted. Returns the bytes to store.
async fn prepare(
    name: &str,
    file: &std::path::Path,
    fixtures: Option<&std::path::Path>,
    config: Option<&Config>,
) -> anyhow::Result<(Vec<u8>, Option<Vec<u8>>)> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let fixtures_text = match fixtures {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?)
        }
        None => None,
    };
    let profile = config
        .and_then(|c| {
            c.handlers
                .iter()
                .find(|h| h.plugin_object.as_deref() == Some(name) || h.name == name)
        })
        .map(Profile::of)
        .unwrap_or_else(|| Profile::unrestricted(BTreeMap::new()));
    validate(&bytes, fixtures_text.as_deref(), profile).await?;
    Ok((bytes, fixtures_text))
}

/// What every host will check, checked before anything is stored: the
/// component compiles, fits the world and passes its fixtures.
async fn validate(bytes: &[u8], fixtures: Option<&[u8]>, profile: Profile) -> anyhow::Result<()> {
    let runtime = Arc::new(Runtime::new(RuntimeConfig {
        max_instances: 4,
        ..RuntimeConfig::default()
    })?);
    let plugin = {
        let runtime = runtime.clone();
        let bytes = bytes.to_vec();
        tokio::task::spawn_blocking(move || runtime.load(&bytes)).await??
    };
    if let Some(fixtures) = fixtures {
        let text = std::str::from_utf8(fixtures).context("fixtures file is not UTF-8")?;
        let fixtures = Fixture::parse_lines(text).map_err(|e| anyhow::anyhow!("fixtures: {e}"))?;
        if let Err(reason) = run_fixtures(runtime, plugin, profile, &fixtures).await {
            bail!("refused: {reason}");
        }
    }
    Ok(())
}

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (nats, _) = args.connection.resolve()?;
    block_on(async move {
        let client = connect(&nats).await?;
        let hosts = gather_status(
            &client,
            &format!("{}.status", nats.control_subject),
            args.wait,
        )
        .await?;
        if args.json {
            println!("{}", serde_json::to_string(&hosts)?);
        }
        if hosts.is_empty() {
            bail!(
                "no hosts answered on {}.status within {:?} (are they running, on this \
                 NATS, with this control_subject?)",
                nats.control_subject,
                args.wait
            );
        }
        if args.json {
            return Ok(ExitCode::SUCCESS);
        }
        for host in &hosts {
            println!("{} (pid {})", host.host, host.pid);
            for handler in &host.handlers {
                let last = handler
                    .last_reload
                    .as_ref()
                    .map(|r| {
                        let ok = r.get("ok").and_then(|v| v.as_bool()).unwrap_or(false);
                        let digest = r.get("digest").and_then(|v| v.as_str()).unwrap_or("?");
                        let reason = r.get("reason").and_then(|v| v.as_str()).unwrap_or("");
                        if ok {
                            format!("last reload ok ({digest})")
                        } else {
                            format!("last reload REFUSED ({digest}): {reason}")
                        }
                    })
                    .unwrap_or_else(|| "no reload yet".into());
                println!(
                    "  {:<24} {} {}  {}handled {} (ack {}, retry {}, dead {}), keys deleted {}; {last}",
                    handler.handler,
                    handler.version.as_deref().unwrap_or("file"),
                    handler.digest,
                    handler
                        .lease
                        .as_ref()
                        .map(|lease| format!("{lease}, "))
                        .unwrap_or_default(),
                    handler.handled,
                    handler.acked,
                    handler.retried,
                    handler.dead_lettered,
                    handler.keys_deleted,
                );
                if let Some(shadow) = &handler.shadow {
                    println!(
                        "  {:<24} shadow {}: {} compared, {} differing{}",
                        "",
                        shadow.digest,
                        shadow.compared,
                        shadow.differing,
                        shadow
                            .last_difference
                            .as_ref()
                            .map(|d| format!("; last: {d}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
