//! `concord bench transfer`: durable cross-shard transfers through a real cluster on loopback,
//! with the physical floor (fdatasync on the same disk, loopback round trip) measured in the
//! same run, so the result is a ratio and not only a number.
//!
//! The cluster runs in this process (one tokio runtime, one log per node under `--dir`), so
//! clients and nodes share the machine's cores — as they would on one host. Each client moves
//! one unit between its own accounts on two different shards, so transfers never conflict
//! and never overdraw: what is measured is the commit path, not lock contention.

use std::path::Path;
use std::time::{Duration, Instant};

use concord_node::proto::{self, State};

use crate::bench::{closed_loop, Floor, LocalCluster, Measured, Tally};

use crate::client::{client, submit};
use crate::cluster::runtime;

const FUND: i64 = 1 << 40;
/// Accounts per client per shard, used in turn: a shard releases a key's lock when the COMMIT
/// reaches it, a little after the client has its answer, and a prepare that meets a held lock
/// is refused at once — so back-to-back transfers on one key would measure that race.
const KEYS_PER_CLIENT: usize = 8;

#[derive(Debug)]
pub struct Options<'a> {
    pub dir: &'a Path,
    pub shards: u32,
    pub clients: Vec<usize>,
    pub duration: Duration,
    pub json: bool,
    /// Coordinator replicas to compare (e.g. [1, 3]): each client count is measured on a
    /// fresh cluster per count, back to back. [1] alone: one cluster for every client count.
    pub coordinators: Vec<u32>,
    /// 2pc or 2pc-early-ack (with `coordinators` other than [1]).
    pub protocol: crate::cluster::ProtocolChoice,
}

pub fn run(options: &Options<'_>) -> Result<std::process::ExitCode, String> {
    if !(2..=16).contains(&options.shards) {
        return Err("--shards must be between 2 and 16 (a transfer spans two shards)".into());
    }
    // The floor first, on the same disk, before the cluster loads the machine.
    let floor = Floor::measure(options.dir)?;
    if options.coordinators != [1] {
        return run_replicated(options, &floor);
    }
    let config = LocalCluster::config("bench", options.shards, options.protocol)?;
    let max_clients = options.clients.iter().copied().max().unwrap_or(1);
    let rows = runtime()?.block_on(async {
        let mut cluster = LocalCluster::start(&config, options.dir);
        let coordinator = config.coordinator().listen;
        let shards: Vec<String> = config.shards().map(|n| n.name.clone()).collect();
        wait_up(coordinator, &mut cluster.nodes).await?;
        fund(coordinator, &shards, max_clients).await?;
        let mut rows = Vec::new();
        for &n in &options.clients {
            rows.push(measure(coordinator, &shards, n, options.duration).await);
        }
        cluster.stop().await;
        Ok::<_, String>(rows)
    })?;
    let _ = std::fs::remove_dir_all(options.dir);
    report(options, &rows, &floor);
    Ok(std::process::ExitCode::SUCCESS)
}

/// The price of a replicated coordinator: for each client count, a fresh cluster per
/// coordinator count (1, 3, …), measured back to back, so the machine's drift hits each alike.
fn run_replicated(options: &Options<'_>, floor: &Floor) -> Result<std::process::ExitCode, String> {
    for &n in &options.coordinators {
        if !matches!(n, 1 | 3 | 5) {
            return Err(format!("--coordinators: {n} is not 1, 3 or 5"));
        }
    }
    let mut rows: Vec<(u32, Measured)> = Vec::new();
    for &clients in &options.clients {
        for &replicas in &options.coordinators {
            let config = LocalCluster::config("bench", options.shards, options.protocol)?;
            let config = with_replicas(config, replicas)?;
            let dir = options.dir.join(format!("c{replicas}-n{clients}"));
            let measured = runtime()?.block_on(async {
                let mut cluster = LocalCluster::start(&config, &dir);
                let first = config.coordinator().listen;
                wait_up(first, &mut cluster.nodes).await?;
                let coordinator = leader(&config).await?;
                let shards: Vec<String> = config.shards().map(|n| n.name.clone()).collect();
                fund(coordinator, &shards, clients).await?;
                let measured = measure(coordinator, &shards, clients, options.duration).await;
                cluster.stop().await;
                Ok::<_, String>(measured)
            })?;
            let _ = std::fs::remove_dir_all(&dir);
            rows.push((replicas, measured));
        }
    }
    let _ = std::fs::remove_dir_all(options.dir);
    println!("{}", floor.describe(options.dir));
    println!(
        "{:<8} {:>12} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10} {:>14}",
        "clients",
        "coordinators",
        "tps",
        "committed",
        "aborted",
        "failed",
        "p50 µs",
        "p99 µs",
        "tps vs one"
    );
    for (replicas, r) in &rows {
        let one =
            rows.iter().find(|(c, m)| *c == 1 && m.clients == r.clients).map(|(_, m)| m.tps());
        println!(
            "{:<8} {:>12} {:>10.0} {:>10} {:>8} {:>8} {:>10} {:>10} {:>14}",
            r.clients,
            replicas,
            r.tps(),
            r.tally.committed,
            r.tally.aborted,
            r.tally.failed,
            r.tally.latency.quantile(0.5),
            r.tally.latency.quantile(0.99),
            one.map_or_else(|| "-".into(), |one| format!("{:.2}x", r.tps() / one.max(1.0)))
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `config` with `replicas - 1` more coordinator nodes on free ports.
pub(crate) fn with_replicas(
    mut config: concord_node::config::ClusterConfig,
    replicas: u32,
) -> Result<concord_node::config::ClusterConfig, String> {
    let ports = crate::crash_test::free_ports(replicas as usize)?;
    let first_id = config.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
    for (i, port) in (1..replicas).zip(ports) {
        config.nodes.push(concord_node::config::NodeConfig {
            name: format!("coordinator-{}", i + 1),
            id: first_id + i - 1,
            role: concord_node::config::Role::Coordinator,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            metrics: None,
        });
    }
    config.validate()?;
    Ok(config)
}

/// The coordinator replica that leads (the only one that answers a listing), waited for.
async fn leader(
    config: &concord_node::config::ClusterConfig,
) -> Result<std::net::SocketAddr, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for node in config.coordinators() {
            let listed =
                client(node.listen).list(proto::ListRequest { limit: 1, running_only: true }).await;
            if listed.is_ok() {
                return Ok(node.listen);
            }
        }
        if Instant::now() > deadline {
            return Err("no coordinator replica led within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every client's accounts on every shard, one transaction per chunk of keys.
async fn fund(
    coordinator: std::net::SocketAddr,
    shards: &[String],
    clients: usize,
) -> Result<(), String> {
    let keys: Vec<u64> = (0..(clients * KEYS_PER_CLIENT) as u64).collect();
    for shard in shards {
        for chunk in keys.chunks(concord_node::config::MAX_WRITES_PER_TXN) {
            let writes = chunk
                .iter()
                .map(|&key| proto::WriteOp { shard: shard.clone(), key, delta: FUND })
                .collect();
            let (_, outcome) = submit(&mut client(coordinator), writes).await;
            if !matches!(&outcome, Ok(info) if info.state == State::Committed as i32) {
                return Err(format!("funding {shard} failed: {outcome:?}"));
            }
        }
    }
    Ok(())
}

async fn wait_up(
    coordinator: std::net::SocketAddr,
    nodes: &mut tokio::task::JoinSet<Result<(), concord_node::NodeError>>,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(Ok(Err(e))) = nodes.try_join_next() {
            return Err(format!("a node failed to start: {e}"));
        }
        if client(coordinator).topology(proto::TopologyRequest {}).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the bench cluster did not start within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn measure(
    coordinator: std::net::SocketAddr,
    shards: &[String],
    clients: usize,
    duration: Duration,
) -> Measured {
    closed_loop(clients, duration, |c, deadline| {
        let shards = shards.to_vec();
        async move {
            let mut rpc = client(coordinator);
            let mut tally = Tally::default();
            let mut i = 0;
            while Instant::now() < deadline {
                let a = i % shards.len();
                let b = (a + 1) % shards.len();
                let key = (c * KEYS_PER_CLIENT + i % KEYS_PER_CLIENT) as u64;
                i += 1;
                let writes = vec![
                    proto::WriteOp { shard: shards[a].clone(), key, delta: -1 },
                    proto::WriteOp { shard: shards[b].clone(), key, delta: 1 },
                ];
                let t0 = Instant::now();
                match submit(&mut rpc, writes).await.1 {
                    Ok(info) if info.state == State::Committed as i32 => {
                        tally.commit(t0);
                    }
                    Ok(_) => tally.aborted += 1,
                    Err(status) => {
                        // A replicated coordinator's leader moved (an election at start, say):
                        // counted as a failure, and the next one goes to the new leader.
                        if let Some(leader) = crate::client::leader_named(&status) {
                            rpc = client(leader);
                        }
                        tally.failed += 1;
                    }
                }
            }
            tally
        }
    })
    .await
}

fn report(options: &Options<'_>, rows: &[Measured], floor: &Floor) {
    let (fsync_p50, rtt_p50) = (floor.fsync.quantile(0.5), floor.rtt.quantile(0.5));
    // 2PC's unavoidable cost per transaction: two forced writes in sequence (the shard's
    // prepare, the coordinator's decision) and two round trips (prepare/vote, submit/outcome).
    let floor_us = 2 * fsync_p50 + 2 * rtt_p50;
    let best = rows.iter().map(Measured::tps).fold(0.0, f64::max);
    let one_client_ratio = rows
        .iter()
        .find(|r| r.clients == 1)
        .map(|r| r.tally.latency.quantile(0.5) as f64 / floor_us.max(1) as f64);
    if options.json {
        let runs: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "clients": r.clients, "tps": r.tps(), "committed": r.tally.committed,
                    "aborted": r.tally.aborted, "failed": r.tally.failed, "seconds": r.seconds,
                    "p50_us": r.tally.latency.quantile(0.5), "p99_us": r.tally.latency.quantile(0.99),
                    "p50_over_floor": r.tally.latency.quantile(0.5) as f64 / floor_us.max(1) as f64,
                })
            })
            .collect();
        let mut floor_json = floor.json();
        floor_json["two_fsyncs_two_rtts_us"] = floor_us.into();
        let value = serde_json::json!({
            "protocol": "2pc", "shards": options.shards, "durable": true,
            "tps": best,
            "floor": floor_json,
            "one_client_p50_over_floor": one_client_ratio,
            "runs": runs,
        });
        println!("{value}");
        return;
    }
    println!("{}; 2 fsyncs + 2 RTTs = {floor_us} µs", floor.describe(options.dir));
    println!(
        "{:<8} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10} {:>12}",
        "clients", "tps", "committed", "aborted", "failed", "p50 µs", "p99 µs", "p50/floor"
    );
    for r in rows {
        println!(
            "{:<8} {:>10.0} {:>10} {:>8} {:>8} {:>10} {:>10} {:>12.2}",
            r.clients,
            r.tps(),
            r.tally.committed,
            r.tally.aborted,
            r.tally.failed,
            r.tally.latency.quantile(0.5),
            r.tally.latency.quantile(0.99),
            r.tally.latency.quantile(0.5) as f64 / floor_us.max(1) as f64
        );
    }
    println!("best throughput: {best:.0} transfers/s (durable 2PC over {} shards)", options.shards);
}
