//! `switchyard test PLUGIN --events FILE [--cache FILE] [--set k=v]...
//! [--config FILE --handler NAME] [--allow-rejects] [--json]`
//!
//! The offline gate: every event line may say what must come of it
//! (`expect`, see `switchyard::isolation::fixture`); the command exits 1
//! when any event differs from its expectation, printing expected against
//! got, and when an event without one is rejected (unless
//! `--allow-rejects`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value as Json;
use switchyard::config::Config;
use switchyard::isolation::{EventResult, Fixture, Isolation, Profile};

#[derive(Args)]
pub struct TestArgs {
    /// The plugin component (`.wasm`).
    plugin: PathBuf,
    /// Events as JSON lines: {"subject": "...", "payload": <JSON>, "headers": {...}};
    /// bytes that are not UTF-8 as "payload_base64": "<base64>" instead of "payload";
    /// optionally "cache": {key: value} seeded first and "expect": what must come of it.
    #[arg(long)]
    events: PathBuf,
    /// Exit 0 even when an event that carries no expectation is rejected.
    #[arg(long)]
    allow_rejects: bool,
    /// A JSON object of key to value seeding the cache.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Plugin configuration, repeatable: --set key_prefix=context:
    /// (applied over the handler's, with --config).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_pair)]
    config: Vec<(String, String)>,
    /// A `serve` configuration: run with the configuration, limits and
    /// grants its handler --handler has, as a push to it would be checked.
    /// (Not read from SWITCHYARD_CONFIG: `test` runs without one.)
    #[arg(
        long = "config",
        alias = "service",
        value_name = "FILE",
        requires = "handler"
    )]
    service: Option<PathBuf>,
    /// The handler of --config to run as.
    #[arg(long, value_name = "NAME", requires = "service")]
    handler: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let events_text = std::fs::read_to_string(&args.events)
        .with_context(|| format!("cannot read events file {}", args.events.display()))?;
    let events = Fixture::parse_event_lines(&events_text)
        .map_err(|e| anyhow::anyhow!("events file {}: {e}", args.events.display()))?;
    let seed = match &args.cache {
        Some(path) => read_seed(path)?,
        None => BTreeMap::new(),
    };
    let plugin = std::fs::read(&args.plugin)
        .with_context(|| format!("cannot read plugin {}", args.plugin.display()))?;
    let mut profile = match (&args.service, &args.handler) {
        (Some(path), Some(name)) => {
            let service = Config::load(path)?;
            let handler = service
                .handlers
                .iter()
                .find(|h| &h.name == name)
                .with_context(|| {
                    let names: Vec<&str> =
                        service.handlers.iter().map(|h| h.name.as_str()).collect();
                    format!(
                        "{} has no handler {name:?} (it has {})",
                        path.display(),
                        names.join(", ")
                    )
                })?;
            Profile::of(handler)
        }
        _ => Profile::unrestricted(BTreeMap::new()),
    };
    profile.config.extend(args.config);

    let verdict = check(&plugin, events, profile, seed)
        .with_context(|| format!("plugin {}", args.plugin.display()))?;
    let Verdict {
        isolation,
        events,
        unexpected,
        ..
    } = &verdict;
    let failed = verdict.failed();
    let checked = verdict.checked();

    if args.json {
        let mut report = isolation.report();
        report["expectations"] = serde_json::json!({
            "checked": checked,
            "differing": failed.iter().map(|(i, d)| serde_json::json!({"event": i + 1, "differences": d})).collect::<Vec<_>>(),
            "unexpected_rejects": unexpected.iter().map(|i| i + 1).collect::<Vec<_>>(),
        });
        println!("{report}");
    } else {
        print!("{}", table(isolation));
        if checked > 0 {
            println!(
                "expectations: {checked} checked, {} as expected, {} differ",
                checked - failed.len(),
                failed.len()
            );
        }
        for (i, differences) in &failed {
            println!("  #{} {}:", i + 1, events[*i].event.subject);
            for difference in differences.iter() {
                println!("    {difference}");
            }
        }
    }
    if !failed.is_empty() {
        eprintln!(
            "switchyard: {} of the events differ from what they expect",
            failed.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    if !unexpected.is_empty() && !args.allow_rejects {
        let list: Vec<String> = unexpected.iter().map(|i| format!("#{}", i + 1)).collect();
        eprintln!(
            "switchyard: {} rejected with no expectation saying so ({}): add \"expect\": \
             \"reject\" to those lines, or pass --allow-rejects",
            if unexpected.len() == 1 {
                "1 event was".to_string()
            } else {
                format!("{} events were", unexpected.len())
            },
            list.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// What came of running events through a plugin on in-memory backends.
pub struct Verdict {
    pub isolation: Isolation,
    pub events: Vec<Fixture>,
    /// Per event, how it differs from its expectation (empty: as expected).
    pub differences: Vec<Vec<String>>,
    /// The events rejected with no expectation saying so.
    pub unexpected: Vec<usize>,
}

impl Verdict {
    /// How many events carry an expectation.
    pub fn checked(&self) -> usize {
        self.events.iter().filter(|e| e.expect.is_some()).count()
    }

    /// The events that differ, with how.
    pub fn failed(&self) -> Vec<(usize, &Vec<String>)> {
        self.differences
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.is_empty())
            .collect()
    }
}

/// Runs `events` through `plugin` (seeded with `seed` first) and compares
/// each with its expectation.
pub fn check(
    plugin: &[u8],
    events: Vec<Fixture>,
    profile: Profile,
    seed: BTreeMap<String, String>,
) -> anyhow::Result<Verdict> {
    let mut isolation = Isolation::load(plugin, profile)?;
    for (key, value) in seed {
        isolation.cache().set(key, value);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let differences: Vec<Vec<String>> = runtime.block_on(async {
        let mut all = Vec::new();
        for event in &events {
            all.push(isolation.check(event).await);
        }
        all
    });
    // Rejections nobody expected: the incident was a consumer that reported
    // success while its work failed.
    let unexpected: Vec<usize> = events
        .iter()
        .zip(isolation.results())
        .enumerate()
        .filter(|(_, (event, result))| event.expect.is_none() && result.outcome == "reject")
        .map(|(i, _)| i)
        .collect();
    Ok(Verdict {
        isolation,
        events,
        differences,
        unexpected,
    })
}

fn read_seed(path: &PathBuf) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read cache file {}", path.display()))?;
    let value: Json = serde_json::from_str(&text)
        .with_context(|| format!("cache file {} is not JSON", path.display()))?;
    let Json::Object(map) = value else {
        bail!(
            "cache file {}: expected a JSON object of key to value",
            path.display()
        );
    };
    map.into_iter()
        .map(|(key, value)| {
            let value = match value {
                Json::String(s) => s,
                other => other.to_string(),
            };
            Ok((key, value))
        })
        .collect()
}

fn table(isolation: &Isolation) -> String {
    let mut out = String::new();
    let results = isolation.results();
    let _ = writeln!(out, "plugin {}", isolation.plugin().digest());
    let _ = writeln!(
        out,
        "{:>4}  {:<32}  {:<7}  {:>8}  {:>7}  {:>7}  detail",
        "#", "subject", "outcome", "scanned", "deleted", "upserts"
    );
    for (i, result) in results.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:>4}  {:<32}  {:<7}  {:>8}  {:>7}  {:>7}  {}",
            i + 1,
            result.subject,
            result.outcome,
            result.effects.keys_scanned,
            result.effects.keys_deleted,
            result.effects.entities_upserted + result.effects.relations_upserted,
            detail(result),
        );
    }
    let count = |kind: &str| results.iter().filter(|r| r.outcome == kind).count();
    let _ = writeln!(
        out,
        "\n{} events: {} ack, {} retry, {} reject",
        results.len(),
        count("ack"),
        count("retry"),
        count("reject")
    );
    let deleted: u64 = results.iter().map(|r| r.effects.keys_deleted).sum();
    let keys = isolation.cache().keys();
    let _ = writeln!(
        out,
        "cache: {deleted} keys deleted, {} keys left",
        keys.len()
    );
    for key in keys.iter().take(20) {
        let _ = writeln!(out, "  {key}");
    }
    if keys.len() > 20 {
        let _ = writeln!(out, "  … {} more", keys.len() - 20);
    }
    let nodes = isolation.graph().nodes();
    let relations = isolation.graph().relations();
    let _ = writeln!(
        out,
        "graph: {} nodes, {} relations",
        nodes.len(),
        relations.len()
    );
    for node in nodes.iter().take(20) {
        let _ = writeln!(out, "  ({}:{})", node.label, node.id);
    }
    if nodes.len() > 20 {
        let _ = writeln!(out, "  … {} more", nodes.len() - 20);
    }
    out
}

fn detail(result: &EventResult) -> String {
    let mut detail = result.detail.clone().unwrap_or_default();
    if let Some(ms) = result.retry_after_ms {
        detail = format!("after {ms} ms {detail}").trim_end().to_string();
    }
    detail
}
