//! The binary's commands, one file each. Every command that talks to NATS
//! takes its connection settings from [`nats_settings`]: a service
//! configuration (with its TLS and credentials) or a bare URL.

pub mod config;
pub mod dlq;
pub mod plugin;
pub mod publish;
pub mod record;
pub mod scaffold;
pub mod serve;
pub mod test;
pub mod wit;

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use switchyard::config::{Config, NatsConfig};

/// How long a command waits for NATS before it gives up.
pub const NATS_TIMEOUT: Duration = Duration::from_secs(5);

/// The NATS settings from the service configuration at `config`, or for
/// `url` with the default names and no TLS or credentials.
pub fn nats_settings(
    config: Option<&Path>,
    url: &str,
) -> anyhow::Result<(NatsConfig, Option<Config>)> {
    match config {
        Some(path) => {
            let config = Config::load(path)?;
            Ok((config.nats.clone(), Some(config)))
        }
        None => {
            let toml =
                format!("url = {url:?}\nstream = \"UNUSED\"\nstream_subjects = [\"unused.>\"]\n");
            let nats: NatsConfig = toml::from_str(&toml).context("building the NATS settings")?;
            Ok((nats, None))
        }
    }
}

/// A client for a command, named `name`: one attempt, an error naming the
/// server and the cause.
pub async fn connect(nats: &NatsConfig, name: &str) -> anyhow::Result<async_nats::Client> {
    switchyard::nats::connect_once(nats, name, NATS_TIMEOUT).await
}
