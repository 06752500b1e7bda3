//! The `switchyard` command: `serve` runs the service, `test` runs a plugin
//! in isolation. Each subcommand lives in its own file under `commands/`.

mod commands;

/// Every event allocates (its message, the keys a sweep returns, its
/// instance's host state) on whichever worker runs it; mimalloc's
/// thread-local heaps keep that off a shared lock.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Runs event-handler WebAssembly components next to a NATS JetStream stream"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "SWITCHYARD_LOG_FORMAT")]
    log_format: LogFormat,
    /// Export spans to this OpenTelemetry collector (OTLP over HTTP/protobuf,
    /// base URL such as http://127.0.0.1:4318; traces go to <URL>/v1/traces).
    /// Without it nothing of OpenTelemetry is started.
    #[arg(long, global = true, value_name = "URL", env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_parser = otlp_endpoint)]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Consume events from NATS JetStream and run them through the configured handlers.
    Serve(commands::serve::ServeArgs),
    /// Push, list, roll back and promote plugin versions for every host.
    Plugin(commands::plugin::PluginArgs),
    /// Every running host with its handlers, plugin digests and last reload.
    Status(commands::plugin::StatusArgs),
    /// Publish an events file (the `test` format), standard input or one message to JetStream.
    Publish(commands::publish::PublishArgs),
    /// Run a plugin over events on in-memory backends and report outcomes and effects.
    Test(commands::test::TestArgs),
    /// List a handler's dead letters, or replay them to their original subjects.
    Dlq(commands::dlq::DlqArgs),
    /// Copy events from a stream into the `test` events format, consuming nothing.
    Record(commands::record::RecordArgs),
    /// Rebuild a plugin on every save, run its fixtures, and hot-swap passing builds.
    Dev(commands::dev::DevArgs),
    /// Print (or write out) the WIT contract this binary serves.
    Wit(commands::wit::WitArgs),
    /// Check a configuration offline, or show it after overrides.
    Config(commands::config::ConfigArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Kept until `main` returns: dropping it flushes the spans still batched.
    // The one-shot commands print their results on stdout; their logs are
    // for problems only, unless SWITCHYARD_LOG asks for more.
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let _telemetry = init_logging(cli.log_format, cli.otlp_endpoint.as_deref(), default_level);
    let result = match cli.command {
        Command::Serve(args) => commands::serve::run(args),
        Command::Publish(args) => commands::publish::run(args),
        Command::Plugin(args) => commands::plugin::run(args),
        Command::Status(args) => commands::plugin::status(args),
        Command::Test(args) => commands::test::run(args),
        Command::Dlq(args) => commands::dlq::run(args),
        Command::Config(args) => commands::config::run(args),
        Command::Record(args) => commands::record::run(args),
        Command::Wit(args) => commands::wit::run(args),
        Command::Dev(args) => commands::dev::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            // One line, naming what failed: the chain joined by colons.
            eprintln!("switchyard: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; `SWITCHYARD_LOG` (or `RUST_LOG`) filters them,
/// `default_level` otherwise. With an OTLP endpoint, spans are also exported (see
/// `switchyard::telemetry`); the returned guard flushes them when dropped.
fn init_logging(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    default_level: &str,
) -> Option<switchyard::telemetry::Telemetry> {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("SWITCHYARD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_level));
    let (otel, telemetry) = match otlp_endpoint.filter(|endpoint| !endpoint.trim().is_empty()) {
        None => (None, None),
        Some(endpoint) => match switchyard::telemetry::layer(endpoint) {
            Ok((layer, telemetry)) => (Some(layer), Some(telemetry)),
            Err(error) => {
                eprintln!("switchyard: {error}");
                std::process::exit(2);
            }
        },
    };
    // Colour only for a person at a terminal: never in a file, a pipe or a
    // journal, and never when NO_COLOR is set (https://no-color.org).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let logs = match format {
        LogFormat::Human => fmt::layer()
            .with_ansi(colour)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    tracing_subscriber::registry()
        .with(otel)
        .with(logs.with_filter(filter))
        .init();
    if let Some(telemetry) = &telemetry {
        tracing::info!(
            url = telemetry.traces_url(),
            "exporting spans over OTLP/HTTP"
        );
    }
    telemetry
}

/// Checks `--otlp-endpoint` when the command line is parsed.
fn otlp_endpoint(value: &str) -> Result<String, String> {
    use switchyard::telemetry::{TelemetryError, traces_endpoint};
    // An empty value (e.g. `OTEL_EXPORTER_OTLP_ENDPOINT=`) means no export.
    if value.trim().is_empty() {
        return Ok(String::new());
    }
    match traces_endpoint(value) {
        Ok(_) => Ok(value.to_string()),
        Err(TelemetryError::Endpoint { reason, .. }) => Err(reason),
        Err(error) => Err(error.to_string()),
    }
}
