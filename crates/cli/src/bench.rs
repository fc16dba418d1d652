//! `concord bench …`: measurements on real hardware (never asserted in tests).
//!
//! * `floor` — the physical floor every commit protocol pays: fdatasync on the data directory's
//!   disk, and a loopback TCP round trip.
//! * `log` — the durable log's append throughput and latency with N concurrent writers, with
//!   group commit and, as the same-run baseline, one fdatasync per append.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Subcommand;
use concord_node::config::ClusterConfig;

use crate::cluster::ProtocolChoice;
use concord_sim::histogram::Histogram;
use concord_wal::{FileLog, GroupCommit};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// fdatasync p50/p99 on the data directory and loopback TCP round trip p50/p99.
    Floor {
        #[arg(long, default_value = "./concord-data/bench")]
        dir: PathBuf,
        #[arg(long, default_value_t = 2_000)]
        samples: u32,
        #[arg(long)]
        json: bool,
    },
    /// Saga throughput with empty HTTP steps (DTM's benchmark workload: two steps with
    /// compensations) through the orchestrator on a durable log, against the floor.
    Saga {
        #[arg(long, default_value = "./concord-data/bench")]
        dir: PathBuf,
        /// Comma-separated client counts.
        #[arg(long, default_value = "1,16,64")]
        clients: String,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long)]
        json: bool,
    },
    /// Interactive transactions on the key-value store (3 shards, durable): single-shard,
    /// cross-shard and a mixed read/write workload, against the same run's floor.
    Kv {
        #[arg(long, default_value = "./concord-data/bench")]
        dir: PathBuf,
        /// Comma-separated: single, cross, single-blind, cross-blind (the writes alone, one
        /// call), mixed.
        #[arg(long, default_value = "single,cross,mixed")]
        workloads: String,
        /// Comma-separated client counts.
        #[arg(long, default_value = "1,16,64")]
        clients: String,
        /// Comma-separated: 2pc, 2pc-early-ack, paxos-commit. Several: one cluster each, runs
        /// interleaved; each is reported against 2pc's latency.
        #[arg(long, default_value = "2pc")]
        protocols: String,
        /// Comma-separated: buffered (writes travel with the commit), per-call (a call per
        /// write, the baseline). Several: interleaved.
        #[arg(long, default_value = "buffered")]
        writes: String,
        /// Client connections to the gateway, shared round-robin by the clients (as the tasks
        /// of one application share its client). Default: one per client, as if each client
        /// were a process of its own.
        #[arg(long)]
        connections: Option<usize>,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Repeat every run this many times, interleaved; the report adds each figure's median
        /// and spread over the rounds (ratios worth quoting need at least 5).
        #[arg(long, default_value_t = 1)]
        rounds: u32,
        /// Comma-separated: `none` (every node up) and node names (e.g. acceptor-1) to leave
        /// down for the whole run, one cluster each — a row per failed node, against `none`.
        #[arg(long, default_value = "none")]
        down: String,
        /// Comma-separated: ahead (clients name each transaction before its commit, the
        /// default), none (they do not: the baseline that measures naming's cost).
        #[arg(long, default_value = "ahead")]
        ids: String,
        /// Comma-separated: plain (TCP), tls (every link TLS, clients trusting the cluster's
        /// CA). Several: one cluster each, reported against plain.
        #[arg(long, default_value = "plain")]
        links: String,
        /// Comma-separated coordinator replica counts (1, 3, 5): one cluster each, reported
        /// against one coordinator (the price of a replicated coordinator and gateway).
        #[arg(long, default_value = "1")]
        coordinators: String,
        #[arg(long)]
        json: bool,
    },
    /// An honest client's throughput while another floods the gateway (transactions opened
    /// without end, idle connections, frames begun and never finished), against the client
    /// alone; TLS and tokens, as in production.
    Flood {
        #[arg(long, default_value = "./concord-data/bench-flood")]
        dir: PathBuf,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Comma-separated, run together: begins, connections, frames.
        #[arg(long, default_value = "begins,connections,frames")]
        floods: String,
    },
    /// The coordinator's tax over real databases: transfers across two PostgreSQL databases and
    /// across PostgreSQL + MariaDB through Concord, against the databases' own PREPARE/COMMIT
    /// PREPARED (or XA) driven directly, and one database alone (Concord's one-phase path)
    /// against a plain COMMIT, interleaved. Run scripts/setup-databases.sh first.
    Databases {
        #[arg(long, default_value = "./concord-data/bench")]
        dir: PathBuf,
        /// Comma-separated: pg-pg, pg-mariadb, pg (one database: one phase).
        #[arg(long, default_value = "pg-pg,pg-mariadb,pg")]
        pairs: String,
        /// Comma-separated client counts (each client holds a connection per database).
        #[arg(long, default_value = "1,4,16,32")]
        clients: String,
        /// Comma-separated: direct, concord (one alone: to profile it).
        #[arg(long, default_value = "direct,concord")]
        ways: String,
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        duration: Duration,
        /// libpq-style connection string, without dbname.
        #[arg(long, default_value = "host=127.0.0.1 user=postgres")]
        postgres: String,
        /// MariaDB/MySQL server URL, without the database.
        #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
        mariadb: String,
        #[arg(long)]
        json: bool,
    },
    /// Durable cross-shard transfers through a cluster on loopback, against the same run's floor.
    Transfer {
        #[arg(long, default_value = "./concord-data/bench")]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        shards: u32,
        /// Comma-separated client counts.
        #[arg(long, default_value = "1,16,64")]
        clients: String,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long)]
        json: bool,
        /// Comma-separated coordinator replica counts to compare, e.g. 1,3: each client count
        /// on a fresh cluster per count, back to back (the price of replication).
        #[arg(long, default_value = "1")]
        coordinators: String,
        /// With --coordinators: 2pc, or 2pc-early-ack (the client hears COMMIT once every
        /// prepare is durable, without waiting for the coordinator's decision record).
        #[arg(long, default_value = "2pc")]
        protocol: crate::cluster::ProtocolChoice,
    },
    /// Durable appends per second with group commit against one fdatasync per append.
    Log {
        #[arg(long, default_value = "./concord-data/bench")]
        dir: PathBuf,
        /// Comma-separated writer counts.
        #[arg(long, default_value = "1,16,64")]
        clients: String,
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        duration: Duration,
        /// Bytes per record.
        #[arg(long, default_value_t = 64)]
        record_bytes: usize,
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) =
        text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 =
        number.parse().map_err(|_| format!("'{text}' is not a duration like 3s or 500ms"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        _ => Err(format!("'{text}' is not a duration like 3s or 500ms")),
    }
}

fn parse_clients(text: &str) -> Result<Vec<usize>, String> {
    text.split(',')
        .map(|c| c.trim().parse::<usize>().ok().filter(|&n| (1..=4_096).contains(&n)))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("--clients takes numbers from 1 to 4096 like 1,16,64, not '{text}'"))
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn fresh_dir(dir: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

pub fn run(command: BenchCommand) -> Result<ExitCode, String> {
    match command {
        BenchCommand::Floor { dir, samples, json } => {
            if samples == 0 {
                return Err("--samples must be at least 1".to_string());
            }
            fresh_dir(&dir)?;
            let fsync = fsync_floor(&dir, samples)
                .map_err(|e| format!("fdatasync on {}: {e}", dir.display()))?;
            let rtt = loopback_round_trip(samples).map_err(|e| format!("loopback TCP: {e}"))?;
            let _ = std::fs::remove_dir_all(&dir);
            let q = |h: &Histogram, p| h.quantile(p);
            if json {
                let value = serde_json::json!({
                    "dir": dir.display().to_string(),
                    "samples": samples,
                    "fsync_p50_us": q(&fsync, 0.5), "fsync_p99_us": q(&fsync, 0.99),
                    "rtt_p50_us": q(&rtt, 0.5), "rtt_p99_us": q(&rtt, 0.99),
                });
                println!("{value}");
            } else {
                println!(
                    "fdatasync on {} ({samples} samples): p50 {} µs, p99 {} µs",
                    dir.display(),
                    q(&fsync, 0.5),
                    q(&fsync, 0.99)
                );
                println!(
                    "loopback TCP round trip ({samples} samples): p50 {} µs, p99 {} µs",
                    q(&rtt, 0.5),
                    q(&rtt, 0.99)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Saga { dir, clients, duration, json } => {
            crate::bench_saga::run(&crate::bench_saga::Options {
                dir: &dir,
                clients: parse_clients(&clients)?,
                duration,
                json,
            })
        }
        BenchCommand::Flood { dir, clients, duration, rounds, floods } => {
            crate::bench_flood::run(&crate::bench_flood::Options {
                dir: &dir,
                clients,
                duration,
                rounds,
                floods: crate::bench_flood::Floods::parse(&floods)?,
            })
        }
        BenchCommand::Kv {
            dir,
            workloads,
            clients,
            protocols,
            writes,
            connections,
            duration,
            rounds,
            down,
            ids,
            links,
            coordinators,
            json,
        } => {
            let tls = links
                .split(',')
                .map(|l| match l.trim() {
                    "plain" => Ok(false),
                    "tls" => Ok(true),
                    other => Err(format!("--links takes plain and tls, not '{other}'")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let ids_ahead = ids
                .split(',')
                .map(|i| match i.trim() {
                    "ahead" => Ok(true),
                    "none" => Ok(false),
                    other => Err(format!("--ids takes ahead and none, not '{other}'")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let down = down
                .split(',')
                .map(|d| match d.trim() {
                    "none" => None,
                    node => Some(node.to_string()),
                })
                .collect();
            let buffering = writes
                .split(',')
                .map(|w| match w.trim() {
                    "buffered" => Ok(true),
                    "per-call" => Ok(false),
                    other => Err(format!("--writes takes buffered and per-call, not '{other}'")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            crate::bench_kv::run(&crate::bench_kv::Options {
                dir: &dir,
                workloads: crate::bench_kv::Workload::parse_list(&workloads)?,
                clients: parse_clients(&clients)?,
                protocols: protocols
                    .split(',')
                    .map(|p| p.trim().parse())
                    .collect::<Result<_, _>>()?,
                buffering,
                connections,
                duration,
                rounds,
                down,
                ids_ahead,
                tls,
                coordinators: parse_clients(&coordinators)?
                    .into_iter()
                    .map(|n| u32::try_from(n).map_err(|_| format!("--coordinators: {n}")))
                    .collect::<Result<_, _>>()?,
                json,
            })
        }
        BenchCommand::Databases {
            dir,
            pairs,
            clients,
            ways,
            duration,
            postgres,
            mariadb,
            json,
        } => {
            let ways: Vec<&str> = ways.split(',').map(str::trim).collect();
            if let Some(bad) = ways.iter().find(|w| !["direct", "concord"].contains(w)) {
                return Err(format!("--ways takes direct and concord, not '{bad}'"));
            }
            crate::bench_databases::run(&crate::bench_databases::Options {
                dir: &dir,
                pairs: crate::bench_databases::Pair::parse_list(&pairs)?,
                clients: parse_clients(&clients)?,
                direct: ways.contains(&"direct"),
                concord: ways.contains(&"concord"),
                duration,
                postgres,
                mariadb,
                json,
            })
        }
        BenchCommand::Transfer { dir, shards, clients, duration, json, coordinators, protocol } => {
            let clients = parse_clients(&clients)?;
            let coordinators = parse_clients(&coordinators)?
                .into_iter()
                .map(|n| u32::try_from(n).map_err(|_| format!("--coordinators: {n}")))
                .collect::<Result<Vec<u32>, String>>()?;
            crate::bench_transfer::run(&crate::bench_transfer::Options {
                dir: &dir,
                shards,
                clients,
                duration,
                json,
                coordinators,
                protocol,
            })
        }
        BenchCommand::Log { dir, clients, duration, record_bytes, json } => {
            let clients = parse_clients(&clients)?;
            let mut rows = Vec::new();
            for &n in &clients {
                // Interleaved: the baselines and the group-commit run back to back per client
                // count — one fdatasync per append, and group commit without keeping the
                // manifest's durable floor current (what that costs).
                for mode in [LogMode::SyncEach, LogMode::GroupNoManifest, LogMode::Group] {
                    fresh_dir(&dir)?;
                    let row = log_run(&dir, n, duration, record_bytes, mode)
                        .map_err(|e| format!("log bench: {e}"))?;
                    rows.push(row);
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
            if json {
                let rows: Vec<serde_json::Value> = rows.iter().map(LogRow::json).collect();
                println!(
                    "{}",
                    serde_json::json!({ "record_bytes": record_bytes, "seconds": duration.as_secs_f64(), "runs": rows })
                );
            } else {
                println!(
                    "{:<8} {:<19} {:>12} {:>11} {:>13} {:>10} {:>10}",
                    "clients", "mode", "appends/s", "syncs/s", "appends/sync", "p50 µs", "p99 µs"
                );
                for r in &rows {
                    println!(
                        "{:<8} {:<19} {:>12.0} {:>11.0} {:>13.1} {:>10} {:>10}",
                        r.clients,
                        r.mode,
                        r.appends_per_s,
                        r.syncs_per_s,
                        r.appends_per_sync,
                        r.p50_us,
                        r.p99_us
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A run's physical floor, measured on the bench directory before the cluster loads the
/// machine: fdatasync latency (one file alone, and two files synced at once on the same device,
/// as two shards' logs are: the slower of the pair), and the loopback TCP round trip.
#[derive(Debug)]
pub struct Floor {
    pub fsync: Histogram,
    pub fsync_parallel2: Histogram,
    pub rtt: Histogram,
}

impl Floor {
    /// Empties and creates `dir`, then measures.
    pub fn measure(dir: &Path) -> Result<Floor, String> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let io = |e: std::io::Error| format!("fdatasync on {}: {e}", dir.display());
        let fsync = fsync_floor(dir, 2_000).map_err(io)?;
        let fsync_parallel2 = parallel_fsync_floor(dir, 2, 1_000).map_err(io)?;
        let rtt = loopback_round_trip(2_000).map_err(|e| format!("loopback TCP: {e}"))?;
        Ok(Floor { fsync, fsync_parallel2, rtt })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "fsync_p50_us": self.fsync.quantile(0.5), "fsync_p99_us": self.fsync.quantile(0.99),
            "fsync_parallel2_p50_us": self.fsync_parallel2.quantile(0.5),
            "rtt_p50_us": self.rtt.quantile(0.5), "rtt_p99_us": self.rtt.quantile(0.99),
        })
    }

    pub fn describe(&self, dir: &Path) -> String {
        format!(
            "floor on {}: fdatasync p50 {} µs (p99 {}), two at once on one device p50 {} µs, loopback RTT p50 {} µs (p99 {})",
            dir.display(),
            self.fsync.quantile(0.5),
            self.fsync.quantile(0.99),
            self.fsync_parallel2.quantile(0.5),
            self.rtt.quantile(0.5),
            self.rtt.quantile(0.99)
        )
    }

    /// The p50 floor of one cross-shard commit of blind writes (the whole transaction is the
    /// commit call), path by path, with every durable step on this run's device:
    /// * 2PC: client → gateway, PREPARE, VOTE, reply (2 round trips); the two shards' prepare
    ///   records synced at once, then the coordinator's decision record;
    /// * 2PC with early acknowledgement: the same messages; only the two prepares are synced
    ///   before the reply;
    /// * Paxos Commit: client → gateway, PREPARE, 2a to the acceptors, 2b, reply (2.5 round
    ///   trips); the two prepares synced at once, then the acceptors' accepts, at once.
    pub fn cross_commit_us(&self, protocol: ProtocolChoice) -> u64 {
        let (fsync, par2, rtt) =
            (self.fsync.quantile(0.5), self.fsync_parallel2.quantile(0.5), self.rtt.quantile(0.5));
        match (protocol.protocol, protocol.early_ack) {
            (concord_node::config::CommitProtocol::PaxosCommit, _) => 2 * par2 + rtt * 5 / 2,
            (_, true) => par2 + 2 * rtt,
            (_, false) => par2 + fsync + 2 * rtt,
        }
    }

    /// The same for a single-shard blind commit (one phase): 2 round trips, one sync.
    pub fn single_commit_us(&self) -> u64 {
        self.fsync.quantile(0.5) + 2 * self.rtt.quantile(0.5)
    }
}

/// A bench cluster in this process: every node of `config` as a task, data under `dir`.
pub struct LocalCluster {
    stop: tokio::sync::watch::Sender<bool>,
    pub nodes: tokio::task::JoinSet<Result<(), concord_node::NodeError>>,
}

impl LocalCluster {
    /// `ClusterConfig::local` on free loopback ports (with three acceptors under Paxos Commit).
    pub fn config(
        name: &str,
        shards: u32,
        protocol: crate::cluster::ProtocolChoice,
    ) -> Result<ClusterConfig, String> {
        let mut config = protocol.apply(ClusterConfig::local(name, shards, 0));
        let ports = crate::crash_test::free_ports(config.nodes.len())?;
        for (node, port) in config.nodes.iter_mut().zip(&ports) {
            node.listen.set_port(*port);
        }
        Ok(config)
    }

    /// Starts every node (inside a tokio runtime).
    pub fn start(config: &ClusterConfig, dir: &Path) -> LocalCluster {
        Self::start_without(config, dir, &[])
    }

    /// Starts every node but those named in `down` (as if they had failed before the run).
    pub fn start_without(config: &ClusterConfig, dir: &Path, down: &[String]) -> LocalCluster {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut nodes = tokio::task::JoinSet::new();
        for node in config.nodes.iter().filter(|n| !down.contains(&n.name)) {
            let (config, name) = (config.clone(), node.name.clone());
            let (dir, stopped) = (dir.join(&name), stopped.clone());
            nodes.spawn(async move { concord_node::serve(config, &name, &dir, stopped).await });
        }
        LocalCluster { stop, nodes }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.nodes.join_next().await.is_some() {}
    }
}

/// One measured load: how many clients, for how long, and what they did.
#[derive(Debug)]
pub struct Measured {
    pub clients: usize,
    pub seconds: f64,
    pub tally: Tally,
}

impl Measured {
    /// Committed transactions per second.
    pub fn tps(&self) -> f64 {
        self.tally.committed as f64 / self.seconds
    }
}

/// Runs `clients` closed-loop clients until `duration` has passed and totals what they did.
/// `client(i, deadline)` is client `i`'s loop: it runs transactions one after another until
/// `deadline` and returns its tally.
pub async fn closed_loop<Fut>(
    clients: usize,
    duration: Duration,
    mut client: impl FnMut(usize, Instant) -> Fut,
) -> Measured
where
    Fut: std::future::Future<Output = Tally> + Send + 'static,
{
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        tasks.spawn(client(i, deadline));
    }
    let tally = Tally::join(&mut tasks).await;
    Measured { clients, seconds: started.elapsed().as_secs_f64(), tally }
}

/// What a set of benchmark clients did: outcomes, and the latency of the committed ones.
#[derive(Debug, Default)]
pub struct Tally {
    pub committed: u64,
    pub aborted: u64,
    pub failed: u64,
    /// What the first failure said, so a report with failures says why.
    pub first_failure: Option<String>,
    pub latency: Histogram,
}

impl Tally {
    /// Counts a commit that took `started.elapsed()`.
    pub fn commit(&mut self, started: std::time::Instant) {
        self.committed += 1;
        self.latency.record(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    }

    /// Counts a failure (neither committed nor a conflict), keeping the first one's words.
    pub fn fail(&mut self, why: impl std::fmt::Display) {
        self.failed += 1;
        if self.first_failure.is_none() {
            self.first_failure = Some(why.to_string());
        }
    }

    /// Adds the tallies of finished client tasks.
    pub async fn join(tasks: &mut tokio::task::JoinSet<Tally>) -> Tally {
        let mut total = Tally::default();
        while let Some(Ok(t)) = tasks.join_next().await {
            total.committed += t.committed;
            total.aborted += t.aborted;
            total.failed += t.failed;
            total.first_failure = total.first_failure.or(t.first_failure);
            total.latency.merge(&t.latency);
        }
        total
    }
}

pub fn fsync_floor(dir: &Path, samples: u32) -> std::io::Result<Histogram> {
    let mut file =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.join("fsync.bin"))?;
    let mut h = Histogram::default();
    let block = [0u8; 64];
    for _ in 0..samples {
        file.write_all(&block)?;
        let started = Instant::now();
        file.sync_data()?;
        h.record(us(started.elapsed()));
    }
    Ok(h)
}

/// `files` files on `dir`'s device, each appended to and synced by its own thread at the same
/// moment, `samples` times: how long until the slowest of them is durable (the wait of a
/// commit whose branches sync their logs in parallel).
pub fn parallel_fsync_floor(dir: &Path, files: usize, samples: u32) -> std::io::Result<Histogram> {
    let start = std::sync::Arc::new(std::sync::Barrier::new(files + 1));
    let done = std::sync::Arc::new(std::sync::Barrier::new(files + 1));
    let mut workers = Vec::new();
    for i in 0..files {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("fsync-{i}.bin")))?;
        let (start, done) = (std::sync::Arc::clone(&start), std::sync::Arc::clone(&done));
        workers.push(std::thread::spawn(move || -> std::io::Result<()> {
            let block = [0u8; 64];
            // Every round is taken even after a failure, so no barrier waits for this thread.
            let mut failed = Ok(());
            for _ in 0..samples {
                start.wait();
                let result = file.write_all(&block).and_then(|()| file.sync_data());
                done.wait();
                if failed.is_ok() {
                    failed = result;
                }
            }
            failed
        }));
    }
    let mut h = Histogram::default();
    for _ in 0..samples {
        start.wait();
        let started = Instant::now();
        done.wait();
        h.record(us(started.elapsed()));
    }
    for worker in workers {
        worker.join().expect("an fsync thread does not panic")?;
    }
    Ok(h)
}

pub fn loopback_round_trip(samples: u32) -> std::io::Result<Histogram> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut byte = [0u8; 1];
        while stream.read_exact(&mut byte).is_ok() {
            stream.write_all(&byte)?;
        }
        Ok(())
    });
    let mut client = TcpStream::connect(addr)?;
    client.set_nodelay(true)?;
    client.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut h = Histogram::default();
    let mut byte = [7u8; 1];
    for _ in 0..samples {
        let started = Instant::now();
        client.write_all(&byte)?;
        client.read_exact(&mut byte)?;
        h.record(us(started.elapsed()));
    }
    drop(client);
    echo.join().map_err(|_| std::io::Error::other("echo thread panicked"))??;
    Ok(h)
}

struct LogRow {
    clients: usize,
    mode: &'static str,
    appends_per_s: f64,
    syncs_per_s: f64,
    appends_per_sync: f64,
    p50_us: u64,
    p99_us: u64,
}

impl LogRow {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "clients": self.clients, "mode": self.mode, "appends_per_s": self.appends_per_s,
            "syncs_per_s": self.syncs_per_s, "appends_per_sync": self.appends_per_sync,
            "p50_us": self.p50_us, "p99_us": self.p99_us,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LogMode {
    /// Each append takes a shared lock, writes and syncs alone.
    SyncEach,
    /// Group commit, as nodes run it (the manifest's durable floor kept current).
    Group,
    /// Group commit without the manifest refreshes between rolls.
    GroupNoManifest,
}

/// `clients` writers append for `duration`, in `mode`.
fn log_run(
    dir: &Path,
    clients: usize,
    duration: Duration,
    record_bytes: usize,
    mode: LogMode,
) -> std::io::Result<LogRow> {
    let (log, _) = FileLog::open(dir, 64 << 20).map_err(std::io::Error::other)?;
    let grouped = mode != LogMode::SyncEach;
    let log = if mode == LogMode::GroupNoManifest { log.without_manifest_refresh() } else { log };
    let record = vec![0xAB; record_bytes];
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let (group, single) = if grouped {
        (Some(Arc::new(GroupCommit::start(log)?)), None)
    } else {
        (None, Some(Arc::new(std::sync::Mutex::new(FileLogSync { log, appends: 0, syncs: 0 }))))
    };
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (group, single, record) = (group.clone(), single.clone(), record.clone());
            std::thread::spawn(move || -> std::io::Result<Histogram> {
                let mut h = Histogram::default();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match (&group, &single) {
                        (Some(g), _) => g.append(record.clone())?,
                        (None, Some(s)) => s
                            .lock()
                            .map_err(|_| std::io::Error::other("poisoned"))?
                            .append(&record)?,
                        (None, None) => unreachable!("one of the two modes is set"),
                    }
                    h.record(us(t.elapsed()));
                }
                Ok(h)
            })
        })
        .collect();
    let mut latency = Histogram::default();
    for handle in handles {
        latency.merge(&handle.join().map_err(|_| std::io::Error::other("writer panicked"))??);
    }
    let seconds = started.elapsed().as_secs_f64();
    let (appends, syncs) = match (group, single) {
        (Some(g), _) => {
            let counts = g.counts();
            drop(Arc::into_inner(g).map(GroupCommit::stop));
            counts
        }
        (_, Some(s)) => {
            let s = s.lock().map_err(|_| std::io::Error::other("poisoned"))?;
            (s.appends, s.syncs)
        }
        (None, None) => unreachable!("one of the two modes is set"),
    };
    Ok(LogRow {
        clients,
        mode: match mode {
            LogMode::SyncEach => "sync each",
            LogMode::Group => "group commit",
            LogMode::GroupNoManifest => "group, no manifest",
        },
        appends_per_s: appends as f64 / seconds,
        syncs_per_s: syncs as f64 / seconds,
        appends_per_sync: if syncs == 0 { 0.0 } else { appends as f64 / syncs as f64 },
        p50_us: latency.quantile(0.5),
        p99_us: latency.quantile(0.99),
    })
}

/// The baseline: the same file log, one fdatasync per append, appends serialised by a lock.
struct FileLogSync {
    log: FileLog,
    appends: u64,
    syncs: u64,
}

impl FileLogSync {
    fn append(&mut self, record: &[u8]) -> std::io::Result<()> {
        self.log.append(record)?;
        self.log.sync()?;
        self.appends += 1;
        self.syncs += 1;
        Ok(())
    }
}
