//! `switchyard test PLUGIN --events FILE [--cache FILE] [--set k=v]...
//! [--config FILE --handler NAME] [--json]`

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value as Json;
use switchyard::config::Config;
use switchyard::isolation::{EventResult, EventSpec, Isolation, Profile};

#[derive(Args)]
pub struct TestArgs {
    /// The plugin component (`.wasm`).
    plugin: PathBuf,
    /// Events as JSON lines: {"subject": "...", "payload": <JSON>, "headers": {...}};
    /// bytes that are not UTF-8 as "payload_base64": "<base64>" instead of "payload".
    #[arg(long)]
    events: PathBuf,
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
    let events = EventSpec::parse_lines(&events_text)
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

    let mut isolation = Isolation::load(&plugin, profile)
        .with_context(|| format!("plugin {}", args.plugin.display()))?;
    for (key, value) in seed {
        isolation.cache().set(key, value);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        for event in events {
            isolation.send(event).await;
        }
    });

    if args.json {
        println!("{}", isolation.report());
    } else {
        print!("{}", table(&isolation));
    }
    Ok(ExitCode::SUCCESS)
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
