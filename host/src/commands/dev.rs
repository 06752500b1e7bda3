//! `switchyard dev [DIR] [--config FILE [--handler NAME]] [--fixtures FILE]
//! [--once]`: the plugin team's loop.
//!
//! Each cycle builds the plugin ([`switchyard::toolchain`]), runs its
//! fixtures as `switchyard test` does (with the handler's configuration,
//! limits and grants when a configuration is given), and when they pass
//! and a configuration is given makes the build live on that handler:
//! pushed as a new version of its `plugin_object` (with the fixtures, which
//! every host runs again before it swaps), or written by rename over its
//! `plugin` file, which every host running from that file reloads. Then it
//! waits for the next save under the plugin's sources ([`toolchain::sources`],
//! polled: a save is seen within half a second, and an editor's
//! write-then-rename counts once).
//!
//! One line per cycle: what changed, how long the build took, whether the
//! fixtures passed, where the build went; the compiler's or the fixtures'
//! own words follow a failure. A failed cycle changes nothing anywhere.
//! `--once` runs one cycle and exits with its result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::Args;
use switchyard::config::{Config, HandlerConfig};
use switchyard::fleet::control::ControlPlane;
use switchyard::fleet::status::gather_status;
use switchyard::isolation::{Fixture, Profile};
use switchyard::toolchain::{self, Built, Output};

use super::test::{Verdict, check};

#[derive(Args)]
pub struct DevArgs {
    /// The plugin's directory.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// The events with expectations each build must pass (default:
    /// fixtures.jsonl in the plugin's directory).
    #[arg(long)]
    fixtures: Option<PathBuf>,
    /// A service configuration: each passing build goes live on its
    /// handler, and the fixtures run with that handler's configuration,
    /// limits and grants. Without it, builds are only tested.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// The handler of --config to swap (default: its only handler).
    #[arg(long, requires = "config")]
    handler: Option<String>,
    /// Run one cycle and exit: 0 when the build passed (and went live).
    #[arg(long)]
    once: bool,
}

/// Where a passing build goes.
enum Target {
    /// Tested only.
    Nowhere,
    /// A new version of a pushed plugin object.
    Object {
        config: Box<Config>,
        handler: String,
        object: String,
    },
    /// Written over the plugin file hosts watch.
    File { handler: String, path: PathBuf },
}

pub fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("{} is not a plugin directory", args.dir.display()))?;
    toolchain::Lang::detect(&dir)?;
    let fixtures_path = args
        .fixtures
        .clone()
        .unwrap_or_else(|| dir.join("fixtures.jsonl"));
    let (profile, target) = match &args.config {
        Some(path) => {
            let config = Config::load(path)?;
            let handler = pick(&config, args.handler.as_deref(), path)?;
            let profile = Profile::of(handler);
            let target = match (&handler.plugin_object, &handler.plugin) {
                (Some(object), _) => Target::Object {
                    handler: handler.name.clone(),
                    object: object.clone(),
                    config: Box::new(config.clone()),
                },
                (None, Some(path)) => Target::File {
                    handler: handler.name.clone(),
                    path: path.clone(),
                },
                (None, None) => bail!("handler `{}` names no plugin", handler.name),
            };
            (profile, target)
        }
        None => (Profile::unrestricted(BTreeMap::new()), Target::Nowhere),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;

    let mut seen = snapshot(&dir)?;
    let mut why = "start".to_string();
    let mut live: Option<String> = None;
    loop {
        let ok = cycle(
            &dir,
            &why,
            &fixtures_path,
            &profile,
            &target,
            &mut live,
            &runtime,
        );
        if args.once {
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        let (now, changed) = wait_for_change(&dir, &seen, &fixtures_path)?;
        seen = now;
        why = changed;
    }
}

/// The handler named, or the configuration's only one.
fn pick<'c>(
    config: &'c Config,
    name: Option<&str>,
    path: &Path,
) -> anyhow::Result<&'c HandlerConfig> {
    let names: Vec<&str> = config.handlers.iter().map(|h| h.name.as_str()).collect();
    match name {
        Some(name) => config
            .handlers
            .iter()
            .find(|h| h.name == name)
            .with_context(|| {
                format!(
                    "{} has no handler {name:?} (it has {})",
                    path.display(),
                    names.join(", ")
                )
            }),
        None => match config.handlers.as_slice() {
            [only] => Ok(only),
            _ => bail!(
                "{} has {} handlers ({}): say which with --handler",
                path.display(),
                names.len(),
                names.join(", ")
            ),
        },
    }
}

/// One build-test-swap cycle; prints its line and says whether it passed.
fn cycle(
    dir: &Path,
    why: &str,
    fixtures: &Path,
    profile: &Profile,
    target: &Target,
    live: &mut Option<String>,
    runtime: &tokio::runtime::Runtime,
) -> bool {
    let clock = chrono_like_now();
    let head = format!("[{clock}] {why}");
    let built = match toolchain::build(dir, Output::Captured) {
        Ok(built) => built,
        Err(error) => {
            println!("{head} · build failed\n{}", indent(&format!("{error:#}")));
            return false;
        }
    };
    let built_part = format!(
        "built in {:.1} s ({} bytes, {})",
        built.took.as_secs_f64(),
        built.bytes,
        built.digest
    );
    let (fixtures_part, fixtures_text) = match run_fixtures(&built, fixtures, profile) {
        Ok(FixturesRun::None) => ("no fixtures".to_string(), None),
        Ok(FixturesRun::Passed { summary, text }) => (summary, Some(text)),
        Ok(FixturesRun::Failed { summary, details }) => {
            println!(
                "{head} · {built_part} · {summary}; not swapped\n{}",
                indent(&details)
            );
            return false;
        }
        Err(error) => {
            println!("{head} · {built_part} · fixtures not run: {error:#}; not swapped");
            return false;
        }
    };
    let swap_part = if live.as_deref() == Some(built.digest.as_str()) {
        "unchanged: already live".to_string()
    } else {
        match runtime.block_on(swap(&built, fixtures_text.as_deref(), target)) {
            Ok(done) => {
                if !matches!(target, Target::Nowhere) {
                    *live = Some(built.digest.to_string());
                }
                done
            }
            Err(error) => {
                println!("{head} · {built_part} · {fixtures_part} · swap failed: {error:#}");
                return false;
            }
        }
    };
    println!("{head} · {built_part} · {fixtures_part} · {swap_part}");
    true
}

enum FixturesRun {
    None,
    Passed { summary: String, text: Vec<u8> },
    Failed { summary: String, details: String },
}

fn run_fixtures(built: &Built, path: &Path, profile: &Profile) -> anyhow::Result<FixturesRun> {
    if !path.exists() {
        return Ok(FixturesRun::None);
    }
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let lines =
        std::str::from_utf8(&text).with_context(|| format!("{} is not UTF-8", path.display()))?;
    let events =
        Fixture::parse_lines(lines).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let bytes = std::fs::read(&built.artifact)
        .with_context(|| format!("cannot read {}", built.artifact.display()))?;
    let verdict: Verdict = check(&bytes, events, profile.clone(), BTreeMap::new())?;
    let total = verdict.events.len();
    let failed = verdict.failed();
    let mut details = Vec::new();
    for (i, differences) in &failed {
        details.push(format!("#{} {}:", i + 1, verdict.events[*i].event.subject));
        details.extend(differences.iter().map(|d| format!("  {d}")));
    }
    for i in &verdict.unexpected {
        let result = &verdict.isolation.results()[*i];
        details.push(format!(
            "#{} {}: rejected with no expectation saying so: {}",
            i + 1,
            verdict.events[*i].event.subject,
            result.detail.as_deref().unwrap_or("")
        ));
    }
    if details.is_empty() {
        Ok(FixturesRun::Passed {
            summary: format!("fixtures {total}/{total} passed"),
            text,
        })
    } else {
        let bad = failed.len() + verdict.unexpected.len();
        Ok(FixturesRun::Failed {
            summary: format!("fixtures {}/{total} passed", total.saturating_sub(bad)),
            details: details.join("\n"),
        })
    }
}

/// Makes `built` live where `target` says; returns what happened, in words.
async fn swap(built: &Built, fixtures: Option<&[u8]>, target: &Target) -> anyhow::Result<String> {
    match target {
        Target::Nowhere => Ok("tested (no --config: nothing swapped)".into()),
        Target::Object {
            config,
            handler,
            object,
        } => {
            let bytes = std::fs::read(&built.artifact)
                .with_context(|| format!("cannot read {}", built.artifact.display()))?;
            let client = super::connect(&config.nats, "switchyard-dev").await?;
            let control =
                ControlPlane::open(&async_nats::jetstream::new(client.clone()), &config.nats)
                    .await?;
            let subject = format!("{}.status", config.nats.control_subject);
            if let Some(live) = control.live(object).await?
                && live.digest == built.digest.as_str()
            {
                let reach = wait_live(&client, &subject, handler, &live.digest).await?;
                return Ok(format!(
                    "unchanged: {} of `{object}` already; {reach}",
                    live.name()
                ));
            }
            let version = control
                .push_labelled(object, &bytes, fixtures, false, Some("dev"))
                .await?;
            let reach = wait_live(&client, &subject, handler, built.digest.as_str()).await?;
            Ok(format!("pushed {} to `{object}`; {reach}", version.name()))
        }
        Target::File { handler, path } => {
            let parent = path.parent().unwrap_or_else(|| Path::new("."));
            let staging = parent.join(format!(
                ".{}.switchyard-dev",
                path.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("plugin")
            ));
            std::fs::copy(&built.artifact, &staging)
                .with_context(|| format!("cannot write {}", staging.display()))?;
            std::fs::rename(&staging, path)
                .with_context(|| format!("cannot replace {}", path.display()))?;
            Ok(format!(
                "written to {} (hosts running `{handler}` from it reload it)",
                path.display()
            ))
        }
    }
}

/// Waits (up to 10 s) for every host that runs `handler` to run `digest`.
async fn wait_live(
    client: &async_nats::Client,
    subject: &str,
    handler: &str,
    digest: &str,
) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        let hosts = gather_status(client, subject, Duration::from_millis(300)).await?;
        let running: Vec<bool> = hosts
            .iter()
            .filter_map(|host| host.handlers.iter().find(|h| h.handler == handler))
            .map(|h| h.digest == digest)
            .collect();
        let on = running.iter().filter(|live| **live).count();
        if running.is_empty() {
            return Ok(format!("no running host runs `{handler}`"));
        }
        if on == running.len() {
            return Ok(format!(
                "live on {on} of {} host{} in {:.1} s",
                running.len(),
                if running.len() == 1 { "" } else { "s" },
                started.elapsed().as_secs_f64()
            ));
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Ok(format!(
                "live on {on} of {} hosts after 10 s (`switchyard status` shows why)",
                running.len()
            ));
        }
    }
}

/// Every source file's modification time and size.
type Snapshot = BTreeMap<PathBuf, (SystemTime, u64)>;

fn snapshot(dir: &Path) -> anyhow::Result<Snapshot> {
    let mut files = Snapshot::new();
    let mut pending = toolchain::sources(dir)?;
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
        } else {
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            files.insert(path, (modified, meta.len()));
        }
    }
    Ok(files)
}

/// Polls until the sources (or the fixtures) differ from `seen` and then
/// hold still for a moment; returns the new state and what changed.
fn wait_for_change(
    dir: &Path,
    seen: &Snapshot,
    fixtures: &Path,
) -> anyhow::Result<(Snapshot, String)> {
    let with_fixtures = |mut snap: Snapshot| {
        if let Ok(meta) = std::fs::metadata(fixtures) {
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            snap.insert(fixtures.to_path_buf(), (modified, meta.len()));
        }
        snap
    };
    let seen = with_fixtures(seen.clone());
    loop {
        std::thread::sleep(Duration::from_millis(400));
        let mut now = with_fixtures(snapshot(dir)?);
        if now == seen {
            continue;
        }
        // Let a burst of writes (a save, a formatter after it) settle.
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let again = with_fixtures(snapshot(dir)?);
            if again == now {
                break;
            }
            now = again;
        }
        let changed: Vec<String> = now
            .iter()
            .filter(|(path, state)| seen.get(*path) != Some(state))
            .map(|(path, _)| path)
            .chain(seen.keys().filter(|path| !now.contains_key(*path)))
            .map(|path| path.strip_prefix(dir).unwrap_or(path).display().to_string())
            .collect();
        let what = match changed.as_slice() {
            [] => "sources changed".to_string(),
            [one] => format!("{one} changed"),
            [first, rest @ ..] => format!("{first} and {} more changed", rest.len()),
        };
        now.remove(fixtures);
        return Ok((now, what));
    }
}

/// `HH:MM:SS` (UTC) for the cycle line.
fn chrono_like_now() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}
