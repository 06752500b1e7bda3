//! `switchyard publish --events FILE [--config FILE | --nats URL]`: publishes an events
//! file (the `switchyard test` format) to JetStream, waiting for the
//! stream's acknowledgement of each event.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use switchyard::isolation::EventSpec;
use switchyard::secret::mask_urls;

#[derive(Args)]
pub struct PublishArgs {
    /// Events as JSON lines: {"subject": "...", "payload": <JSON>, "headers": {...}}.
    #[arg(long)]
    events: PathBuf,
    /// A service configuration: its NATS servers, TLS and credentials.
    #[arg(long, env = "SWITCHYARD_CONFIG", conflicts_with = "nats")]
    config: Option<PathBuf>,
    /// The NATS server, when no --config is given.
    #[arg(
        long,
        default_value = "nats://127.0.0.1:4222",
        env = "SWITCHYARD_NATS_URL"
    )]
    nats: String,
}

pub fn run(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.events)
        .with_context(|| format!("cannot read events file {}", args.events.display()))?;
    let events = EventSpec::parse_lines(&text)
        .map_err(|e| anyhow::anyhow!("events file {}: {e}", args.events.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let (nats, _) = super::nats_settings(args.config.as_deref(), &args.nats)?;
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
