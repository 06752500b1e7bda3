//! `switchyard-native serve --config FILE`: the `switchyard serve` service
//! with the story-transitions handler compiled in, for the `native` variant
//! of `scripts/bench`. A handler whose plugin file holds
//! `native:story-transitions` runs natively; any other plugin loads as a
//! component, as in `switchyard serve`. Not a product: it exists to weigh
//! the sandbox against no sandbox on the same host and delivery.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use switchyard::config::Config;
use switchyard::health::Health;
use switchyard::service;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// The allocator `switchyard` uses, so the two differ only in the handler.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("switchyard-native: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_path() -> anyhow::Result<PathBuf> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [serve, flag, path] if serve == "serve" && flag == "--config" => Ok(PathBuf::from(path)),
        _ => anyhow::bail!("usage: switchyard-native serve --config FILE"),
    }
}

fn run() -> anyhow::Result<()> {
    let path = config_path()?;
    let filter =
        EnvFilter::try_from_env("SWITCHYARD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let config = Config::load(&path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("switchyard")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            if let Ok(mut term) = signal(SignalKind::terminate()) {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                on_signal.cancel();
            }
        });
        service::run_with(
            config,
            Arc::new(Health::default()),
            shutdown,
            switchyard_bench::native::natives(),
        )
        .await
    })
}
