//! The `switchyard` command: `serve` runs the service, `test` runs a plugin
//! in isolation. Each subcommand lives in its own file under `commands/`.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "switchyard", version, about = "Runs event-handler WebAssembly components next to a NATS JetStream stream")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a plugin over events on in-memory backends and report outcomes and effects.
    Test(commands::test::TestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
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
