//! `concord bench kv`: interactive transactions on the key-value store, through a real cluster
//! on loopback (durable logs under `--dir`), with the physical floor measured in the same run.
//!
//! Workloads, each at every client count:
//! * `single` — read a key and write it back, one shard: commits in one phase.
//! * `cross` — read two keys on two shards and write both: commits through 2PC.
//! * `mixed` — 80% read-only transactions of two random keys (nothing to commit), 20%
//!   read-modify-writes of two random keys, all over 1,000 shared keys (conflicts happen and
//!   are counted as aborts).
//!
//! In `single` and `cross` every client has its own keys, so nothing conflicts: what is
//! measured is the transaction path. Clients and nodes share this machine's cores.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use concord_client::{KvClient, KvError};
use concord_node::config::{ClusterConfig, KvConfig};
use concord_sim::histogram::Histogram;
use concord_sim::rng::{run_seed, Rng};
use tokio::sync::watch;

use crate::cluster::runtime;

/// Keys per client in the conflict-free workloads (used in turn).
const KEYS_PER_CLIENT: usize = 8;
const SHARED_KEYS: u64 = 1_000;
/// Key prefixes that land on shards 1, 2 and 3 under the default splits (`i`, `r`).
const SHARD_PREFIX: [char; 3] = ['a', 'j', 's'];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Single,
    Cross,
    Mixed,
}

impl Workload {
    pub fn parse_list(text: &str) -> Result<Vec<Workload>, String> {
        text.split(',')
            .map(|w| match w.trim() {
                "single" => Ok(Workload::Single),
                "cross" => Ok(Workload::Cross),
                "mixed" => Ok(Workload::Mixed),
                other => Err(format!("unknown workload `{other}` (single, cross, mixed)")),
            })
            .collect()
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Single => "single",
            Workload::Cross => "cross",
            Workload::Mixed => "mixed",
        }
    }
}

#[derive(Debug)]
pub struct Options<'a> {
    pub dir: &'a Path,
    pub workloads: Vec<Workload>,
    pub clients: Vec<usize>,
    pub duration: Duration,
    pub json: bool,
}

struct Row {
    workload: Workload,
    clients: usize,
    committed: u64,
    aborted: u64,
    failed: u64,
    seconds: f64,
    latency: Histogram,
}

impl Row {
    fn tps(&self) -> f64 {
        self.committed as f64 / self.seconds
    }
}

pub fn run(options: &Options<'_>) -> Result<std::process::ExitCode, String> {
    let _ = std::fs::remove_dir_all(options.dir);
    std::fs::create_dir_all(options.dir)
        .map_err(|e| format!("cannot create {}: {e}", options.dir.display()))?;
    let fsync = crate::bench::fsync_floor(options.dir, 2_000)
        .map_err(|e| format!("fdatasync on {}: {e}", options.dir.display()))?;
    let rtt = crate::bench::loopback_round_trip(2_000).map_err(|e| format!("loopback TCP: {e}"))?;

    let ports = crate::crash_test::free_ports(4)?;
    let mut config = ClusterConfig::local("bench-kv", 3, 0);
    for (node, port) in config.nodes.iter_mut().zip(&ports) {
        node.listen.set_port(*port);
    }
    config.kv = Some(KvConfig::default());
    let rows = runtime()?.block_on(async {
        let (stop, stopped) = watch::channel(false);
        let mut nodes = tokio::task::JoinSet::new();
        for node in &config.nodes {
            let (config, name) = (config.clone(), node.name.clone());
            let dir = options.dir.join(&name);
            let stopped = stopped.clone();
            nodes.spawn(async move { concord_node::serve(config, &name, &dir, stopped).await });
        }
        let gateway = config.coordinator().listen;
        wait_up(gateway).await?;
        let mut rows = Vec::new();
        for &workload in &options.workloads {
            for &n in &options.clients {
                rows.push(measure(gateway, workload, n, options.duration).await);
            }
        }
        let _ = stop.send(true);
        while nodes.join_next().await.is_some() {}
        Ok::<_, String>(rows)
    })?;
    let _ = std::fs::remove_dir_all(options.dir);
    report(options, &rows, &fsync, &rtt);
    Ok(std::process::ExitCode::SUCCESS)
}

async fn wait_up(gateway: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let kv = KvClient::connect(gateway);
    loop {
        // After a start, shards refuse writes for the maximum clock offset: wait for a write.
        let probe = async {
            let mut txn = kv.begin().await?;
            txn.put("probe", "1").await?;
            txn.commit().await
        };
        if probe.await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the bench cluster did not accept a write within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn key(shard: usize, client: usize, i: usize) -> String {
    format!("{}/{client:04}/{}", SHARD_PREFIX[shard], i % KEYS_PER_CLIENT)
}

fn increment(value: Option<Vec<u8>>) -> String {
    let n: u64 = value.and_then(|v| String::from_utf8(v).ok()?.parse().ok()).unwrap_or(0);
    (n + 1).to_string()
}

/// One transaction of `workload` for client `c`, its `i`-th.
async fn transaction(
    kv: &KvClient,
    workload: Workload,
    c: usize,
    i: usize,
    rng: &mut Rng,
) -> Result<(), KvError> {
    let mut txn = kv.begin().await?;
    match workload {
        Workload::Single => {
            let k = key(i % 3, c, i);
            let v = txn.get(&k).await?;
            txn.put(&k, increment(v)).await?;
        }
        Workload::Cross => {
            let (a, b) = (key(i % 3, c, i), key((i + 1) % 3, c, i));
            let (va, vb) = (txn.get(&a).await?, txn.get(&b).await?);
            txn.put(&a, increment(va)).await?;
            txn.put(&b, increment(vb)).await?;
        }
        Workload::Mixed => {
            let shared = |rng: &mut Rng| {
                let n = rng.below(SHARED_KEYS);
                let prefix = SHARD_PREFIX[usize::try_from(n % 3).expect("small")];
                format!("{prefix}/shared/{n}")
            };
            let (a, b) = (shared(rng), shared(rng));
            let (va, vb) = (txn.get(&a).await?, txn.get(&b).await?);
            if rng.below(10) < 2 && a != b {
                txn.put(&a, increment(va)).await?;
                txn.put(&b, increment(vb)).await?;
            }
        }
    }
    txn.commit().await.map(|_| ())
}

async fn measure(
    gateway: SocketAddr,
    workload: Workload,
    clients: usize,
    duration: Duration,
) -> Row {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        tasks.spawn(async move {
            let kv = KvClient::connect(gateway);
            let mut rng = Rng::new(run_seed(7, c as u64));
            let mut latency = Histogram::default();
            let (mut committed, mut aborted, mut failed) = (0u64, 0u64, 0u64);
            let mut i = 0;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match transaction(&kv, workload, c, i, &mut rng).await {
                    Ok(()) => {
                        committed += 1;
                        latency.record(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX));
                    }
                    Err(KvError::Conflict(_)) => aborted += 1,
                    Err(_) => failed += 1,
                }
                i += 1;
            }
            (committed, aborted, failed, latency)
        });
    }
    let mut row = Row {
        workload,
        clients,
        committed: 0,
        aborted: 0,
        failed: 0,
        seconds: 0.0,
        latency: Histogram::default(),
    };
    while let Some(Ok((committed, aborted, failed, latency))) = tasks.join_next().await {
        row.committed += committed;
        row.aborted += aborted;
        row.failed += failed;
        row.latency.merge(&latency);
    }
    row.seconds = started.elapsed().as_secs_f64();
    row
}

fn report(options: &Options<'_>, rows: &[Row], fsync: &Histogram, rtt: &Histogram) {
    let (fsync_p50, rtt_p50) = (fsync.quantile(0.5), rtt.quantile(0.5));
    if options.json {
        let runs: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "workload": r.workload.name(), "clients": r.clients, "tps": r.tps(),
                    "committed": r.committed, "aborted": r.aborted, "failed": r.failed,
                    "seconds": r.seconds,
                    "p50_us": r.latency.quantile(0.5), "p99_us": r.latency.quantile(0.99),
                })
            })
            .collect();
        let value = serde_json::json!({
            "shards": 3, "durable": true, "isolation": "serializable",
            "floor": {
                "fsync_p50_us": fsync_p50, "fsync_p99_us": fsync.quantile(0.99),
                "rtt_p50_us": rtt_p50, "rtt_p99_us": rtt.quantile(0.99),
            },
            "runs": runs,
        });
        println!("{value}");
        return;
    }
    println!(
        "floor on {}: fdatasync p50 {fsync_p50} µs (p99 {}), loopback RTT p50 {rtt_p50} µs (p99 {})",
        options.dir.display(),
        fsync.quantile(0.99),
        rtt.quantile(0.99)
    );
    println!(
        "{:<8} {:<8} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10}",
        "workload", "clients", "txn/s", "committed", "aborted", "failed", "p50 µs", "p99 µs"
    );
    for r in rows {
        println!(
            "{:<8} {:<8} {:>10.0} {:>10} {:>8} {:>8} {:>10} {:>10}",
            r.workload.name(),
            r.clients,
            r.tps(),
            r.committed,
            r.aborted,
            r.failed,
            r.latency.quantile(0.5),
            r.latency.quantile(0.99),
        );
    }
}
