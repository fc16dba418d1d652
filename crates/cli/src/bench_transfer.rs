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
}

pub fn run(options: &Options<'_>) -> Result<std::process::ExitCode, String> {
    if !(2..=16).contains(&options.shards) {
        return Err("--shards must be between 2 and 16 (a transfer spans two shards)".into());
    }
    // The floor first, on the same disk, before the cluster loads the machine.
    let floor = Floor::measure(options.dir)?;
    let config =
        LocalCluster::config("bench", options.shards, crate::cluster::ProtocolChoice::TWO_PHASE)?;
    let max_clients = options.clients.iter().copied().max().unwrap_or(1);
    let rows = runtime()?.block_on(async {
        let mut cluster = LocalCluster::start(&config, options.dir);
        let coordinator = config.coordinator().listen;
        let shards: Vec<String> = config.shards().map(|n| n.name.clone()).collect();
        wait_up(coordinator, &mut cluster.nodes).await?;
        // Every client's account on every shard, one transaction per shard.
        let keys: Vec<u64> = (0..(max_clients * KEYS_PER_CLIENT) as u64).collect();
        for shard in &shards {
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
                    Err(_) => tally.failed += 1,
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
