//! `concord outbox relay`: publishes a service's outbox rows to NATS JetStream.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use crate::cluster::runtime;

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Publish unpublished `concord_outbox` rows (oldest first, `Nats-Msg-Id` = the row's
    /// msg_id) and mark them; several relays may run against one database.
    Relay {
        /// The service's database: `host=… user=… dbname=…` (options='-c search_path=…' for a schema).
        #[arg(long)]
        postgres: String,
        #[arg(long, default_value = "127.0.0.1:4222")]
        nats: SocketAddr,
        /// How long to wait between polls of an empty outbox.
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        #[arg(long, default_value_t = 100)]
        batch: i64,
    },
}

pub fn run(command: OutboxCommand) -> Result<ExitCode, String> {
    match command {
        OutboxCommand::Relay { postgres, nats, interval_ms, batch } => {
            println!("concord: outbox relay from {postgres} to NATS at {nats}");
            runtime()?.block_on(async move {
                let interval = Duration::from_millis(interval_ms.max(1));
                tokio::select! {
                    () = concord_participants::outbox::run_relay(&postgres, nats, interval, batch.max(1)) => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            });
            Ok(ExitCode::SUCCESS)
        }
    }
}
