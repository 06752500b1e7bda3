//! `switchyard record --stream S [--subject SUBJECT] [--last N | --since
//! TIME] --out FILE [--config FILE | --nats URL]`: copies real events from
//! a JetStream stream into the `switchyard test` events format.
//!
//! It reads through an ephemeral ordered consumer (no acknowledgements, no
//! durable touched: what every handler consumes is left as it was) up to
//! the last message there when it started. Each line keeps the subject and
//! the headers; a payload is kept byte for byte: as JSON when that is
//! exactly its text, else as a string when it is UTF-8, else as
//! `payload_base64`.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::Args;
use futures::StreamExt as _;
use serde_json::{Map, Value as Json, json};

#[derive(Args)]
pub struct RecordArgs {
    /// The stream to read from.
    #[arg(long)]
    stream: String,
    /// Only messages on this subject (wildcards allowed).
    #[arg(long)]
    subject: Option<String>,
    /// Only the last N matching messages.
    #[arg(long, conflicts_with = "since")]
    last: Option<usize>,
    /// Only messages stored since TIME: a duration back from now (`15m`,
    /// `2h`) or an RFC 3339 time (`2026-12-04T10:00:00Z`).
    #[arg(long, value_parser = since)]
    since: Option<SystemTime>,
    /// Where to write the events (`-` for standard output).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    connection: super::NatsArgs,
}

fn since(value: &str) -> Result<SystemTime, String> {
    if let Ok(ago) = humantime::parse_duration(value) {
        return SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("{value} reaches before the epoch"));
    }
    humantime::parse_rfc3339_weak(value)
        .map_err(|_| format!("expected a duration (15m) or an RFC 3339 time, got {value:?}"))
}

/// How long to wait for the next message before deciding the stream has
/// no more of what was there at the start.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(args: RecordArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let lines = runtime.block_on(read(&args))?;
    if lines.is_empty() {
        bail!(
            "no messages{} in stream {}{}: nothing recorded",
            args.subject
                .as_deref()
                .map(|s| format!(" on {s}"))
                .unwrap_or_default(),
            args.stream,
            if args.since.is_some() {
                " in that time"
            } else {
                ""
            }
        );
    }
    let mut text = String::new();
    for line in &lines {
        text.push_str(&line.to_string());
        text.push('\n');
    }
    if args.out.as_os_str() == "-" {
        std::io::stdout()
            .write_all(text.as_bytes())
            .context("cannot write to standard output")?;
    } else {
        std::fs::write(&args.out, &text)
            .with_context(|| format!("cannot write {}", args.out.display()))?;
        println!(
            "recorded {} events from stream {} to {}",
            lines.len(),
            args.stream,
            args.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn read(args: &RecordArgs) -> anyhow::Result<Vec<Json>> {
    let (nats, _) = args.connection.resolve()?;
    let client = super::connect(&nats, "switchyard-record").await?;
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(&args.stream)
        .await
        .with_context(|| format!("cannot open stream {}", args.stream))?;
    let deliver_policy = match args.since {
        Some(time) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from(time),
        },
        None => DeliverPolicy::All,
    };
    let mut consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: args.subject.clone().unwrap_or_default(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot read stream {}", args.stream))?;
    let mut remaining = consumer
        .info()
        .await
        .context("cannot read the consumer's state")?
        .num_pending;
    let mut kept: VecDeque<Json> = VecDeque::new();
    if remaining == 0 {
        return Ok(Vec::new());
    }
    let mut messages = consumer
        .messages()
        .await
        .with_context(|| format!("cannot read stream {}", args.stream))?;
    while remaining > 0 {
        let message = match tokio::time::timeout(READ_TIMEOUT, messages.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(error))) => bail!("cannot read stream {}: {error}", args.stream),
            Ok(None) | Err(_) => break,
        };
        remaining = message.info().map(|i| i.pending).unwrap_or_default();
        kept.push_back(line(&message.message));
        if args.last.is_some_and(|last| kept.len() > last) {
            kept.pop_front();
        }
    }
    Ok(kept.into())
}

/// One message as an events-file line.
fn line(message: &async_nats::Message) -> Json {
    let mut object = Map::new();
    object.insert("subject".into(), json!(message.subject.as_str()));
    let payload = &message.payload[..];
    match std::str::from_utf8(payload) {
        Ok(text) => match serde_json::from_str::<Json>(text) {
            // Structured only when that is exactly the bytes sent.
            Ok(value)
                if !value.is_string() && serde_json::to_string(&value).is_ok_and(|t| t == text) =>
            {
                object.insert("payload".into(), value);
            }
            _ => {
                object.insert("payload".into(), json!(text));
            }
        },
        Err(_) => {
            object.insert("payload_base64".into(), json!(BASE64.encode(payload)));
        }
    }
    if let Some(headers) = &message.headers {
        let mut kept = Map::new();
        for (name, values) in headers.iter() {
            if let Some(value) = values.first() {
                kept.insert(name.to_string(), json!(value.as_str()));
            }
        }
        if !kept.is_empty() {
            object.insert("headers".into(), Json::Object(kept));
        }
    }
    Json::Object(object)
}
