//! `switchyard dlq list|replay HANDLER`: the dead letters of one handler.
//!
//! Where they are comes from `--config FILE` (the `serve` configuration,
//! with its `SWITCHYARD_...` overrides) or from `--nats`, `--stream` and
//! `--subject`. A handler's dead letters are the messages on
//! `<subject>.<handler>` in the dead-letter stream.
//!
//! - `list` prints, oldest first: the dead letter's sequence, its age, the
//!   delivery count, the plugin digest, the original subject and the reason.
//! - `replay` republishes each (matching) dead letter's payload with its
//!   original headers (minus `Switchyard-*`, `Nats-Msg-Id` and
//!   `Nats-Expected-*`) to its original subject, waits for the stream's
//!   acknowledgement, and only then deletes it from the dead-letter stream.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use switchyard::config::NatsConfig;
use switchyard::delivery::dead_letter::DeadLetterSource;
use switchyard::delivery::dead_letter::read::{DeadLetter, DeadLetterReader};
use switchyard::delivery::dead_letter::replay::replay_dead_letters;
use switchyard::fleet::status::gather_status;

#[derive(Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Print a handler's dead letters: age, deliveries, plugin, subject, reason.
    List {
        #[command(flatten)]
        target: Target,
        /// Only dead letters whose reason, subject, plugin digest or payload contains this.
        #[arg(long)]
        filter: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Republish a handler's dead letters to their original subjects, then delete them.
    Replay {
        #[command(flatten)]
        target: Target,
        /// Only dead letters whose reason, subject, plugin digest or payload contains this.
        #[arg(long)]
        filter: Option<String>,
        /// Replay at most this many (oldest first).
        #[arg(long)]
        limit: Option<u64>,
    },
}

#[derive(Args)]
struct Target {
    /// The handler whose dead letters these are.
    handler: String,
    /// The `serve` configuration: NATS URL, dead-letter stream and subject.
    #[arg(long, env = "SWITCHYARD_CONFIG", conflicts_with_all = ["stream", "subject"])]
    config: Option<PathBuf>,
    /// The NATS server (without --config).
    #[arg(
        long,
        default_value = "nats://127.0.0.1:4222",
        env = "SWITCHYARD_NATS__URL"
    )]
    nats: String,
    /// The dead-letter stream (without --config).
    #[arg(long, default_value = "SWITCHYARD_DEAD_LETTERS")]
    stream: String,
    /// The dead-letter subject prefix (without --config).
    #[arg(long, default_value = "switchyard.dead")]
    subject: String,
}

/// Where a handler's dead letters are, and whether the handler is known.
struct Resolved {
    nats: NatsConfig,
    source: DeadLetterSource,
    /// `Some(true)` when the configuration names the handler, `Some(false)`
    /// when it does not, `None` without a configuration.
    configured: Option<bool>,
}

impl Target {
    /// The NATS settings and where the handler's dead letters are.
    fn resolve(&self) -> anyhow::Result<Resolved> {
        let (nats, config) = super::nats_settings(self.config.as_deref(), &self.nats)?;
        Ok(match config {
            Some(config) => Resolved {
                source: DeadLetterSource::new(
                    &nats.dead_letter_stream,
                    &nats.dead_letter_subject,
                    &self.handler,
                ),
                configured: Some(config.handlers.iter().any(|h| h.name == self.handler)),
                nats,
            },
            None => Resolved {
                source: DeadLetterSource::new(&self.stream, &self.subject, &self.handler),
                configured: None,
                nats,
            },
        })
    }

    /// With no dead letter found: an error when nothing says the handler
    /// exists (the configuration, else a running host), so a mistyped name
    /// does not pass for an empty queue.
    async fn check_known(
        &self,
        resolved: &Resolved,
        client: &async_nats::Client,
    ) -> anyhow::Result<()> {
        let handler = &self.handler;
        match resolved.configured {
            Some(true) => Ok(()),
            Some(false) => bail!(
                "no handler `{handler}` in {} and no dead letters for it in stream {}",
                self.config
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                resolved.source.stream
            ),
            None => {
                let subject = format!("{}.status", resolved.nats.control_subject);
                let hosts = gather_status(client, &subject, HOSTS_WAIT).await?;
                if hosts
                    .iter()
                    .any(|host| host.handlers.iter().any(|h| &h.handler == handler))
                {
                    return Ok(());
                }
                bail!(
                    "no dead letters for `{handler}` in stream {}, and none of the {} hosts \
                     answering on {subject} runs a handler by that name (is the name right? \
                     `switchyard status` lists them)",
                    resolved.source.stream,
                    hosts.len()
                )
            }
        }
    }
}

/// How long `dlq` waits for hosts to say which handlers they run.
const HOSTS_WAIT: Duration = Duration::from_millis(500);

pub fn run(args: DlqArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match args.command {
            DlqCommand::List {
                target,
                filter,
                json,
            } => list(&target, filter.as_deref(), json).await,
            DlqCommand::Replay {
                target,
                filter,
                limit,
            } => replay(&target, filter.as_deref(), limit).await,
        }
    })
}

async fn list(target: &Target, filter: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let resolved = target.resolve()?;
    let source = &resolved.source;
    let client = super::connect(&resolved.nats, "switchyard-dlq").await?;
    let js = async_nats::jetstream::new(client.clone());
    let mut reader = DeadLetterReader::open(&js, source).await?;
    if !json {
        println!(
            "{:>8}  {:>9}  {:>10}  {:<19}  {:<32}  reason",
            "seq", "age", "deliveries", "plugin", "original subject"
        );
    }
    let (mut seen, mut shown) = (0u64, 0u64);
    while let Some(letter) = reader.next().await? {
        seen += 1;
        if filter.is_some_and(|text| !letter.matches(text)) {
            continue;
        }
        shown += 1;
        if json {
            println!("{}", as_json(&letter));
        } else {
            println!(
                "{:>8}  {:>9}  {:>10}  {:<19}  {:<32}  {}",
                letter.sequence,
                age(letter.dead_lettered_at),
                letter
                    .delivery_count
                    .map_or_else(|| "?".to_string(), |n| n.to_string()),
                short_digest(&letter.plugin_digest),
                letter.original_subject,
                clip(&letter.reason, REASON_COLUMN),
            );
        }
    }
    if seen == 0 {
        target.check_known(&resolved, &client).await?;
    } else if resolved.configured == Some(false) {
        eprintln!(
            "switchyard: note: no handler `{}` in the configuration; these are the dead \
             letters it left",
            target.handler
        );
    }
    if !json {
        let matching = filter
            .map(|f| format!(" ({shown} matching {f:?})"))
            .unwrap_or_default();
        println!(
            "\n{seen} dead letters of handler `{}`{matching} in stream {} on {}",
            target.handler, source.stream, source.subject
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn replay(
    target: &Target,
    filter: Option<&str>,
    limit: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let resolved = target.resolve()?;
    let client = super::connect(&resolved.nats, "switchyard-dlq").await?;
    let js = async_nats::jetstream::new(client.clone());
    let report =
        replay_dead_letters(
            &js,
            &resolved.source,
            filter,
            limit,
            |letter, result| match result {
                Ok(sequence) => println!(
                    "replayed dead letter {} to {} (sequence {sequence}); deleted",
                    letter.sequence, letter.original_subject
                ),
                Err(line) => eprintln!("switchyard: {line}"),
            },
        )
        .await?;
    println!(
        "{} replayed, {} failed, {} replayed but not deleted; {} read, {} matching",
        report.replayed,
        report.failures.len() as u64 - report.not_deleted,
        report.not_deleted,
        report.seen,
        report.matched,
    );
    if report.seen == 0 {
        target.check_known(&resolved, &client).await?;
        bail!("no dead letters of `{}`: nothing replayed", target.handler);
    }
    if report.matched == 0 {
        bail!(
            "none of the {} dead letters of `{}` matches {:?}: nothing replayed",
            report.seen,
            target.handler,
            filter.unwrap_or_default()
        );
    }
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Longest reason the table shows; `--json` has them whole.
const REASON_COLUMN: usize = 160;

fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

fn short_digest(digest: &str) -> &str {
    // `sha256:` and 12 hex digits are enough to tell versions apart.
    digest.get(..19).unwrap_or(digest)
}

fn age(at: SystemTime) -> String {
    let seconds = SystemTime::now()
        .duration_since(at)
        .unwrap_or_default()
        .as_secs();
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        3600..86400 => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{:02}h", seconds / 86400, seconds % 86400 / 3600),
    }
}

fn as_json(letter: &DeadLetter) -> serde_json::Value {
    let millis = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default()
    };
    serde_json::json!({
        "sequence": letter.sequence,
        "handler": letter.handler,
        "reason": letter.reason,
        "delivery_count": letter.delivery_count,
        "plugin_digest": letter.plugin_digest,
        "original_subject": letter.original_subject,
        "original_stream": letter.original_stream,
        "original_sequence": letter.original_sequence,
        "dead_lettered_at_ms": millis(letter.dead_lettered_at),
        "age_seconds": SystemTime::now().duration_since(letter.dead_lettered_at).unwrap_or_default().as_secs(),
        "payload_bytes": letter.payload_omitted.unwrap_or(letter.payload.len() as u64),
        "payload_omitted": letter.payload_omitted.is_some(),
        "headers": letter.original_headers,
    })
}
