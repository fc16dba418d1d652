//! `concord` — the one binary. Subcommands arrive with the work that needs them; today:
//! `concord sim` (scenarios, run, sweep) drives the deterministic simulator.

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim { command } => sim::run(command),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}
