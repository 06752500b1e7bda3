//! The `switchyard` command: `serve` runs the service, `test` runs a plugin
//! in isolation. Each subcommand lives in its own file under `commands/`.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "switchyard", version, about = "Runs event-handler WebAssembly components next to a NATS JetStream stream")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "SWITCHYARD_LOG_FORMAT")]
    log_format: LogFormat,
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
    /// Publish an events file (the `test` format) to JetStream.
    Publish(commands::publish::PublishArgs),
    /// Run a plugin over events on in-memory backends and report outcomes and effects.
    Test(commands::test::TestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => commands::serve::run(args),
        Command::Publish(args) => commands::publish::run(args),
        Command::Test(args) => commands::test::run(args),
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

/// Logs go to stderr; `SWITCHYARD_LOG` (or `RUST_LOG`) filters them, `info`
/// by default.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SWITCHYARD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
