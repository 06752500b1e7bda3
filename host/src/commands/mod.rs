//! The binary's commands, one file each. Every command that talks to NATS
//! takes its connection settings from [`nats_settings`]: a service
//! configuration (with its TLS and credentials) or a bare URL.

pub mod config;
pub mod dev;
pub mod dlq;
pub mod plugin;
pub mod publish;
pub mod record;
pub mod scaffold;
pub mod serve;
pub mod test;
pub mod wit;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use switchyard::config::{Config, NatsConfig};

/// Where a command finds NATS: a service configuration (its servers, TLS
/// and credentials), or a bare URL.
#[derive(Args)]
pub struct NatsArgs {
    /// A service configuration: its NATS servers, TLS and credentials.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// The NATS server, when no --config is given.
    #[arg(
        long,
        default_value = "nats://127.0.0.1:4222",
        env = "SWITCHYARD_NATS__URL"
    )]
    pub nats: String,
}

impl NatsArgs {
    /// The NATS settings, and the configuration when one was given.
    pub fn resolve(&self) -> anyhow::Result<(NatsConfig, Option<Config>)> {
        nats_settings(self.config.as_deref(), &self.nats)
    }
}

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
