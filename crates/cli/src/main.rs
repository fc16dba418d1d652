//! `concord` — the one binary. Subcommands arrive with the work that needs them; today:
//! `concord sim` drives the deterministic simulator; `concord bench` measures this machine.

mod bench;
mod sim;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "concord",
    version,
    about = "Distributed transactions that stay all-or-nothing under failure"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The deterministic fault simulator: run the real protocol code under seeded faults.
    Sim {
        #[command(subcommand)]
        command: sim::SimCommand,
    },
    /// Measurements on this machine's disk and network.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim { command } => sim::run(command),
        Command::Bench { command } => bench::run(command),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}
