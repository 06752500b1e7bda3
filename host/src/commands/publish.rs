//! `switchyard publish --events FILE|- | --subject S --payload TEXT [--header
//! NAME=VALUE]... [--config FILE | --nats URL]`: publishes an events file
//! (the `switchyard test` format; `-` is standard input) or one message to
//! JetStream, waiting for the stream's acknowledgement of each event.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use switchyard::isolation::{EventSpec, Fixture};
use switchyard::secret::mask_urls;

#[derive(Args)]
pub struct PublishArgs {
    /// Events as JSON lines: {"subject": "...", "payload": <JSON>, "headers": {...}};
    /// `-` reads them from standard input.
    #[arg(long, required_unless_present = "subject", conflicts_with = "subject")]
    events: Option<PathBuf>,
    /// Publish one message to this subject instead of an events file.
    #[arg(long, requires = "payload")]
    subject: Option<String>,
    /// The one message's payload, byte for byte as given.
    #[arg(long, requires = "subject")]
    payload: Option<String>,
    /// A header of the one message, NAME=VALUE; repeat for more.
    #[arg(long = "header", value_name = "NAME=VALUE", requires = "subject", value_parser = header)]
    headers: Vec<(String, String)>,
    #[command(flatten)]
    connection: super::NatsArgs,
}

fn header(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("expected NAME=VALUE, got {value:?}")),
    }
}

/// The events to publish: the file's (or standard input's) lines, or the
/// one message of `--subject`.
fn events(args: &PublishArgs) -> anyhow::Result<Vec<EventSpec>> {
    if let Some(subject) = &args.subject {
        let headers: serde_json::Map<String, serde_json::Value> = args
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), value.clone().into()))
            .collect();
        let line = serde_json::json!({
            "subject": subject,
            "payload": args.payload.clone().unwrap_or_default(),
            "headers": headers,
        });
        return EventSpec::parse_lines(&line.to_string())
            .map_err(|e| anyhow::anyhow!("the message for {subject}: {e}"));
    }
    let path = args.events.as_deref().unwrap_or(std::path::Path::new("-"));
    let (text, origin) = if path == std::path::Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("cannot read events from standard input")?;
        (text, "standard input".to_string())
    } else {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read events file {}", path.display()))?;
        (text, format!("events file {}", path.display()))
    };
    // Fixture lines publish as their events; `cache` and `expect` are for
    // `switchyard test`.
    let events: Vec<EventSpec> = Fixture::parse_event_lines(&text)
        .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?
        .into_iter()
        .map(|fixture| fixture.event)
        .collect();
    if events.is_empty() {
        bail!("{origin} holds no events: nothing published");
    }
    Ok(events)
}

pub fn run(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let events = events(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let (nats, _) = args.connection.resolve()?;
        let client = super::connect(&nats, "switchyard-publish").await?;
        let js = async_nats::jetstream::new(client);
        for (i, event) in events.iter().enumerate() {
            let mut headers = async_nats::HeaderMap::new();
            for (name, value) in &event.headers {
                headers.append(name.as_str(), value.as_str());
            }
            let ack = js
                .publish_with_headers(event.subject.clone(), headers, event.payload.clone().into())
                .await
                .with_context(|| format!("event {} ({})", i + 1, event.subject))?
                .await;
            if let Err(error) = ack {
                bail!(
                    "event {} ({}) was not stored: {error}; is there a stream covering this subject? \
                     `switchyard serve` creates the one in its configuration",
                    i + 1,
                    event.subject
                );
            }
        }
        println!(
            "published {} events to {}",
            events.len(),
            mask_urls(&nats.url)
        );
        Ok(ExitCode::SUCCESS)
    })
}
