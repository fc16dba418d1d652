//! `concord` — the one binary: `dev` and `serve` run nodes; `txn`, `transfer` and `shard` talk
//! to them; `sim` drives the deterministic simulator; `bench` measures; `crash-test` kills
//! real processes and checks what survives.

mod bench;
mod bench_databases;
mod bench_flood;
mod bench_kv;
mod bench_saga;
mod bench_transfer;
mod certs;
mod client;
mod cluster;
mod crash_kv;
mod crash_test;
mod creds;
mod data;
mod databases;
mod kv;
mod outbox;
mod replicas;
mod saga;
mod sim;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc's per-thread free lists instead of glibc malloc: the nodes allocate and free a
/// message's buffers on different threads all the time, and malloc/free were a fifth of the
/// CPU at saturation (BENCHMARKS.md, "Where the CPU goes at saturation").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "concord",
    version,
    about = "Distributed transactions that stay all-or-nothing under failure"
)]
struct Cli {
    /// The cluster's CA certificate: client commands then talk TLS to the nodes and check
    /// they reached one of the cluster's (docs/security.md).
    #[arg(long, env = "CONCORD_CA", global = true)]
    ca: Option<PathBuf>,
    /// A file holding the bearer token client commands present (`concord certs token` makes
    /// one).
    #[arg(long, env = "CONCORD_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Two clusters on loopback in this process, data under ./concord-data: the delta cluster
    /// (coordinator on --port, shards after it) and the key-value store (gateway on --port + 10).
    Dev {
        #[arg(long, default_value = "./concord-data")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        shards: u32,
        /// The coordinator's port; shards take the next ones.
        #[arg(long, default_value_t = 7700)]
        port: u16,
        /// How transactions commit in new clusters: 2pc, 2pc-early-ack (answers once every
        /// prepare is durable), or paxos-commit (adds three acceptor nodes after the shards).
        /// An existing data directory keeps its own configuration.
        #[arg(long, default_value = "2pc")]
        protocol: cluster::ProtocolChoice,
        /// Shards whose data is refused as damaged start from what is readable instead, and
        /// presume nothing about what they may have forgotten (docs/log-format.md). Run
        /// `concord data check` first.
        #[arg(long)]
        accept_data_loss: bool,
        /// Every link TLS, with a CA, node certificates and client tokens made under
        /// DATA/certs (once; later starts reuse them). Client commands then need --ca and
        /// --token-file, which the start prints.
        #[arg(long)]
        tls: bool,
        /// Coordinator replicas of both clusters: 1 (one coordinator, the default) or 3 or 5
        /// (a replicated coordinator and key-value gateway: one leads, any one may be lost;
        /// ports after the shards). A new data directory only.
        #[arg(long, default_value_t = 1)]
        coordinators: u32,
    },
    /// One node of a cluster described by a configuration file (see docs/configuration.md).
    Serve {
        #[arg(long, default_value = "concord.toml")]
        config: PathBuf,
        /// Which node of the file this process is.
        #[arg(long)]
        node: String,
        /// Default: ./concord-data/NODE.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// If this shard's data is refused as damaged, start from what is readable, presuming
        /// nothing about what it may have forgotten (docs/log-format.md). Refused for
        /// coordinators and acceptors. Run `concord data check` first.
        #[arg(long)]
        accept_data_loss: bool,
        /// Listen on an address other than loopback without a [tls] section, although every
        /// link is then unauthenticated and unencrypted (docs/security.md). Without it such an
        /// address is refused.
        #[arg(long)]
        insecure: bool,
        /// A coordinator replica joining a running replicated coordinator (a new machine, or
        /// one whose data was lost): it waits to be added (`concord cluster add-replica NODE`)
        /// instead of starting a cluster of its own (docs/configuration.md).
        #[arg(long)]
        join: bool,
    },
    /// Certificates for TLS: `init` makes the cluster's CA and each node's certificate.
    Certs {
        #[command(subcommand)]
        command: certs::CertsCommand,
    },
    /// Data directories: `check` reads everything in one (or every node's under it) and
    /// reports what a start would refuse, changing nothing.
    Data {
        #[command(subcommand)]
        command: data::DataCommand,
    },
    /// Transactions: submit one, list recent ones, show one by id.
    Txn {
        #[command(subcommand)]
        command: client::TxnCommand,
    },
    /// The transactional key-value store: get, put, del, scan, or a script run atomically.
    Kv {
        #[arg(long, default_value = kv::DEFAULT_GATEWAY, global = true)]
        gateway: SocketAddr,
        /// serializable (default) or snapshot.
        #[arg(long, default_value = "serializable", global = true)]
        isolation: String,
        #[command(subcommand)]
        command: kv::KvCommand,
    },
    /// Move an amount between two accounts (SHARD:KEY), atomically.
    Transfer {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        amount: i64,
        #[arg(long, default_value = client::DEFAULT_COORDINATOR)]
        coordinator: SocketAddr,
    },
    /// Kill random nodes (real processes, SIGKILL) under load, restart them, check atomicity.
    CrashTest {
        #[arg(long, default_value_t = 50)]
        cycles: u32,
        /// A long run for manual use: 1000 cycles unless --cycles says otherwise.
        #[arg(long)]
        soak: bool,
        #[arg(long, default_value_t = 4)]
        clients: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Working directory (emptied first); node logs stay here.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The key-value store's bank workload: transfers and full-table audits through
        /// interactive transactions; every audit must see the constant total.
        #[arg(long)]
        kv: bool,
        /// 2pc, 2pc-early-ack, or paxos-commit (three acceptor processes, killed like the
        /// others).
        #[arg(long, default_value = "2pc")]
        protocol: cluster::ProtocolChoice,
        /// Coordinator replicas: 1, or 3 or 5 (a replicated coordinator; its replicas, the
        /// leader included, are killed like the others). Either workload, either protocol.
        #[arg(long, default_value_t = 1)]
        coordinators: u32,
        /// Also let each coordinator process abort on its own right before sending a COMMIT
        /// decision that is already durable (after a random 20 to 80 of them; restarted like a
        /// killed node): the window between a decision's commit and its delivery.
        #[arg(long)]
        failpoints: bool,
    },
    /// Real databases (PostgreSQL, MariaDB/MySQL) as 2PC participants: run the database
    /// coordinator, run a transaction across databases.
    Db {
        #[command(subcommand)]
        command: databases::DbCommand,
    },
    /// Reconcile the databases' prepared branches with the database coordinator's log now;
    /// --dry-run prints what it would do without doing it.
    Recover {
        #[arg(long)]
        dry_run: bool,
        #[arg(long, default_value = databases::DEFAULT_DB_COORDINATOR)]
        db: SocketAddr,
        #[arg(long)]
        json: bool,
    },
    /// Sagas and TCC: run the orchestrator, start a saga, list them, show one's timeline.
    Saga {
        #[command(subcommand)]
        command: saga::SagaCommand,
    },
    /// The transactional outbox: relay a service's outbox table to NATS JetStream.
    Outbox {
        #[command(subcommand)]
        command: outbox::OutboxCommand,
    },
    /// A replicated coordinator's replicas: `status`, `transfer-leader NODE`.
    Cluster {
        #[command(subcommand)]
        command: replicas::ClusterCommand,
    },
    /// Read a shard's values.
    Shard {
        #[command(subcommand)]
        command: client::ShardCommand,
    },
    /// The deterministic fault simulator: run the real protocol code under seeded faults.
    Sim {
        #[command(subcommand)]
        command: sim::SimCommand,
    },
    /// Check a list-append history in Elle's JSON format (from `concord sim kv --history` or
    /// any other system) for G0, G1a, G1b, G1c, G-single and G2.
    Check { history: PathBuf },
    /// Measurements on this machine's disk and network.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(message) = creds::init(cli.ca.as_deref(), cli.token_file.as_deref()) {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Dev { data_dir, shards, port, protocol, accept_data_loss, tls, coordinators } => {
            let options = concord_node::StartOptions { accept_data_loss, join: false };
            cluster::dev(&data_dir, shards, port, protocol, options, tls, coordinators)
        }
        Command::Serve { config, node, data_dir, accept_data_loss, insecure, join } => {
            let options = concord_node::StartOptions { accept_data_loss, join };
            cluster::serve(&config, &node, data_dir, options, insecure)
        }
        Command::Certs { command } => certs::run(command),
        Command::Data { command } => data::run(command),
        Command::Txn { command } => client::run_txn(command),
        Command::Kv { gateway, isolation, command } => kv::run(gateway, &isolation, command),
        Command::Transfer { from, to, amount, coordinator } => {
            client::run_transfer(&from, &to, amount, coordinator)
        }
        Command::Shard { command } => client::run_shard(command),
        Command::Cluster { command } => replicas::run(command),
        Command::Saga { command } => saga::run(command),
        Command::Outbox { command } => outbox::run(command),
        Command::Db { command } => databases::run(command),
        Command::Recover { dry_run, db, json } => databases::recover(db, dry_run, json),
        Command::CrashTest {
            cycles,
            soak,
            clients,
            seed,
            dir,
            kv,
            protocol,
            coordinators,
            failpoints,
        } => {
            let cycles = if soak && cycles == 50 { 1_000 } else { cycles };
            let dir = dir.unwrap_or_else(crash_test::default_dir);
            let options = crash_test::Options {
                cycles,
                clients,
                seed,
                dir,
                kv,
                protocol,
                coordinators,
                failpoints,
            };
            crash_test::run(&options)
        }
        Command::Sim { command } => sim::run(command),
        Command::Check { history } => check_history(&history),
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

/// `concord check FILE`: the list-append checker on a recorded history.
fn check_history(path: &std::path::Path) -> Result<ExitCode, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let history = concord_check::History::from_elle_json(&text)
        .map_err(|e| format!("{}: not an Elle list-append history: {e}", path.display()))?;
    let report = concord_check::check(&history);
    println!("{report}");
    Ok(if report.is_valid() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
