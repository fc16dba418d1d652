//! `concord bench kv`: interactive transactions on the key-value store, through a real cluster
//! on loopback (durable logs under `--dir`), with the physical floor measured in the same run.
//!
//! Workloads, each at every client count:
//! * `single` — read a key and write it back, one shard: commits in one phase.
//! * `cross` — read two keys on two shards and write both: commits through 2PC (or Paxos
//!   Commit).
//! * `single-blind`, `cross-blind` — the same writes without the reads (a counter bumped
//!   blindly, a transfer whose amounts the client already knows): the whole transaction is
//!   one call, the commit, so at one client its latency is the commit path alone, the one to
//!   hold against the floor of two fsyncs and two round trips.
//! * `mixed` — 80% read-only transactions of two random keys (nothing to commit), 20%
//!   read-modify-writes of two random keys, all over 1,000 shared keys (conflicts happen and
//!   are counted as aborts).
//!
//! In `single` and `cross` every client has its own keys, so nothing conflicts: what is
//! measured is the transaction path. Clients and nodes share this machine's cores.
//!
//! With several `--protocols`, one cluster per protocol runs (the others idle), and each
//! workload × client count is measured on every protocol back to back, so drift in the machine
//! hits them alike; the report gives each one's p50 latency as a ratio of plain 2PC's
//! (`2pc-early-ack` is 2PC answering once every prepare is durable).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use concord_client::{KvClient, KvError};
use concord_node::config::KvConfig;
use concord_node::tls::{CertFiles, ClientCredentials};

use crate::cluster::ProtocolChoice;

use crate::bench::{closed_loop, Floor, LocalCluster, Measured, Tally};
use concord_sim::rng::{run_seed, Rng};

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
    SingleBlind,
    CrossBlind,
    Mixed,
}

impl Workload {
    pub fn parse_list(text: &str) -> Result<Vec<Workload>, String> {
        text.split(',')
            .map(|w| match w.trim() {
                "single" => Ok(Workload::Single),
                "cross" => Ok(Workload::Cross),
                "single-blind" => Ok(Workload::SingleBlind),
                "cross-blind" => Ok(Workload::CrossBlind),
                "mixed" => Ok(Workload::Mixed),
                other => Err(format!(
                    "unknown workload `{other}` (single, cross, single-blind, cross-blind, mixed)"
                )),
            })
            .collect()
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Single => "single",
            Workload::Cross => "cross",
            Workload::SingleBlind => "single-blind",
            Workload::CrossBlind => "cross-blind",
            Workload::Mixed => "mixed",
        }
    }
}

#[derive(Debug)]
pub struct Options<'a> {
    pub dir: &'a Path,
    pub workloads: Vec<Workload>,
    pub clients: Vec<usize>,
    pub protocols: Vec<ProtocolChoice>,
    /// Client write buffering to measure (`true`: writes travel with the commit; `false`: a
    /// call per write, the baseline before buffering). Several: interleaved.
    pub buffering: Vec<bool>,
    /// Gateway connections the clients share (`None`: one per client).
    pub connections: Option<usize>,
    pub duration: Duration,
    /// Times the whole set of runs is repeated, interleaved (round 1 of everything, then round
    /// 2, …): the report gives each ratio's spread over the rounds, not one round's.
    pub rounds: u32,
    /// Clusters to run with a node left down (`None`: all up), each protocol with each.
    pub down: Vec<Option<String>>,
    /// Whether clients name each transaction before its commit (`true`, the default), or not
    /// (the baseline that measures its cost). Several: interleaved.
    pub ids_ahead: Vec<bool>,
    /// Links to measure: `false` plain TCP, `true` TLS everywhere (one cluster each).
    pub tls: Vec<bool>,
    /// Coordinator replicas to measure (1, 3, 5; one cluster each): the price of a replicated
    /// coordinator and gateway, against one.
    pub coordinators: Vec<u32>,
    pub json: bool,
}

struct Row {
    round: u32,
    protocol: ProtocolChoice,
    /// The node left down for the run, if any.
    down: Option<String>,
    tls: bool,
    coordinators: u32,
    ids_ahead: bool,
    buffered: bool,
    workload: Workload,
    run: Measured,
}

impl Row {
    fn p50(&self) -> u64 {
        self.run.tally.latency.quantile(0.5)
    }

    /// The protocol, and the node left down if one was.
    fn label(&self) -> String {
        let ids = if self.ids_ahead { "" } else { " no-ids" };
        let tls = if self.tls { " tls" } else { "" };
        let replicas =
            if self.coordinators > 1 { format!(" x{}", self.coordinators) } else { String::new() };
        match &self.down {
            None => format!("{}{replicas}{tls}{ids}", self.protocol),
            Some(node) => format!("{}{replicas}{tls}{ids} w/o {node}", self.protocol),
        }
    }

    /// The floor of this row's commit path, where the transaction is the commit alone (the
    /// blind workloads) at one client; `None` elsewhere.
    fn floor_us(&self, floor: &Floor) -> Option<u64> {
        if self.run.clients != 1 {
            return None;
        }
        match self.workload {
            Workload::CrossBlind => Some(floor.cross_commit_us(self.protocol)),
            Workload::SingleBlind => Some(floor.single_commit_us()),
            _ => None,
        }
    }
}

pub fn run(options: &Options<'_>) -> Result<std::process::ExitCode, String> {
    if options.protocols.is_empty() {
        return Err("--protocols names none".into());
    }
    let floor = Floor::measure(options.dir)?;
    let mut configs = Vec::new();
    for &protocol in &options.protocols {
        for down in &options.down {
            for (&tls, &replicas) in
                options.tls.iter().flat_map(|t| options.coordinators.iter().map(move |c| (t, c)))
            {
                if !matches!(replicas, 1 | 3 | 5) {
                    return Err(format!("--coordinators: {replicas} is not 1, 3 or 5"));
                }
                let name = format!("bench-kv-{protocol}");
                let mut config = LocalCluster::config(&name, 3, protocol)?;
                config.kv = Some(KvConfig::default());
                let mut config = crate::bench_transfer::with_replicas(config, replicas)?;
                if let Some(node) = down {
                    if config.node(node).is_none() {
                        return Err(format!(
                            "--down {node}: {protocol}'s cluster has no such node"
                        ));
                    }
                }
                let i = configs.len();
                let credentials = if tls {
                    let files = CertFiles { dir: options.dir.join(format!("certs-{i}")) };
                    config.tls = Some(concord_node::config::TlsConfig { dir: files.dir.clone() });
                    concord_node::certs::issue(&config, &files, false)?;
                    // Under TLS clients need a token: the bench's own.
                    let token = concord_node::auth::new_token()?;
                    config.tokens.push(concord_node::auth::TokenConfig {
                        name: "bench".into(),
                        role: concord_node::auth::ClientRole::Client,
                        sha256: concord_node::auth::token_sha256(&token),
                    });
                    Some(ClientCredentials::new(Some(&files.ca()), Some(token))?)
                } else {
                    None
                };
                configs.push((protocol, down.clone(), (tls, replicas), credentials, config));
            }
        }
    }
    let rows = runtime()?.block_on(async {
        let mut clusters = Vec::new();
        for (i, (protocol, down, tls, credentials, config)) in configs.iter().enumerate() {
            let dir = options.dir.join(format!("{protocol}-{i}"));
            let cluster = LocalCluster::start_without(config, &dir, down.as_slice());
            // Every replica's gateway: the clients find the one that leads.
            let gateways: Vec<SocketAddr> = config.coordinators().map(|n| n.listen).collect();
            wait_up(&gateways, credentials.as_ref()).await?;
            if down.is_some() {
                // The failure has been noticed (a first cross-shard commit may wait out a
                // timeout) before anything is measured: the rows are the steady state.
                warm_up_across(&gateways, credentials.as_ref()).await?;
            }
            clusters.push((*protocol, down.clone(), *tls, credentials.clone(), gateways, cluster));
        }
        let mut rows = Vec::new();
        for round in 1..=options.rounds.max(1) {
            for &workload in &options.workloads {
                for &n in &options.clients {
                    for &buffered in &options.buffering {
                        for &ids_ahead in &options.ids_ahead {
                            for (protocol, down, (tls, replicas), credentials, gateways, _) in
                                &clusters
                            {
                                let connections = options.connections.unwrap_or(n).clamp(1, n);
                                let client = (buffered, ids_ahead);
                                let run = measure(
                                    gateways,
                                    credentials.as_ref(),
                                    workload,
                                    n,
                                    connections,
                                    client,
                                    options.duration,
                                )
                                .await;
                                let (protocol, down) = (*protocol, down.clone());
                                rows.push(Row {
                                    round,
                                    protocol,
                                    down,
                                    tls: *tls,
                                    coordinators: *replicas,
                                    ids_ahead,
                                    buffered,
                                    workload,
                                    run,
                                });
                            }
                        }
                    }
                }
            }
        }
        for (.., cluster) in clusters {
            cluster.stop().await;
        }
        Ok::<_, String>(rows)
    })?;
    let _ = std::fs::remove_dir_all(options.dir);
    report(options, &rows, &floor);
    Ok(std::process::ExitCode::SUCCESS)
}

/// One cross-shard commit through, however long the first takes (bounded).
/// A client of `gateways` (a replicated coordinator's, or the one), over TLS when the cluster
/// has credentials.
fn client_of(gateways: &[SocketAddr], credentials: Option<&ClientCredentials>) -> KvClient {
    match credentials {
        Some(credentials) => KvClient::connect_replicas_with(gateways, credentials),
        None => KvClient::connect_replicas(gateways),
    }
}

pub(crate) async fn warm_up_across(
    gateways: &[SocketAddr],
    credentials: Option<&ClientCredentials>,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let kv = client_of(gateways, credentials);
    loop {
        let attempt = async {
            let mut txn = kv.begin().await?;
            txn.put(key(0, 9_999, 0), "1").await?;
            txn.put(key(1, 9_999, 0), "1").await?;
            txn.commit().await
        };
        match attempt.await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("no cross-shard commit within 60 s: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn wait_up(
    gateways: &[SocketAddr],
    credentials: Option<&ClientCredentials>,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let kv = client_of(gateways, credentials);
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
        Workload::SingleBlind => txn.put(&key(i % 3, c, i), i.to_string()).await?,
        Workload::CrossBlind => {
            txn.put(&key(i % 3, c, i), i.to_string()).await?;
            txn.put(&key((i + 1) % 3, c, i), i.to_string()).await?;
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
    gateways: &[SocketAddr],
    credentials: Option<&ClientCredentials>,
    workload: Workload,
    clients: usize,
    connections: usize,
    (buffered, ids_ahead): (bool, bool),
    duration: Duration,
) -> Measured {
    let pool: Vec<KvClient> = (0..connections)
        .map(|_| {
            client_of(gateways, credentials)
                .with_write_buffering(buffered)
                .with_ids_ahead(ids_ahead)
        })
        .collect();
    closed_loop(clients, duration, |c, deadline| {
        let kv = pool[c % connections].clone();
        async move {
            let mut rng = Rng::new(run_seed(7, c as u64));
            let mut tally = Tally::default();
            let mut i = 0;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match transaction(&kv, workload, c, i, &mut rng).await {
                    Ok(()) => {
                        tally.commit(t0);
                    }
                    Err(KvError::Conflict(_)) => tally.aborted += 1,
                    Err(error) => tally.fail(error),
                }
                i += 1;
            }
            tally
        }
    })
    .await
}

fn report(options: &Options<'_>, rows: &[Row], floor: &Floor) {
    let same_run = |a: &Row, b: &Row| {
        a.round == b.round
            && a.ids_ahead == b.ids_ahead
            && a.buffered == b.buffered
            && a.workload == b.workload
            && a.run.clients == b.run.clients
    };
    let two_pc_of = |r: &Row| {
        rows.iter().find(|o| {
            o.protocol == ProtocolChoice::TWO_PHASE
                && o.tls == r.tls
                && o.coordinators == r.coordinators
                && same_run(o, r)
        })
    };
    // A run with a node down against the same protocol with every node up, same round.
    let all_up_of = |r: &Row| {
        rows.iter().find(|o| {
            o.protocol == r.protocol
                && o.down.is_none()
                && o.tls == r.tls
                && o.coordinators == r.coordinators
                && same_run(o, r)
        })
    };
    // The baseline: a run over TLS or with replicated coordinators against the same cluster
    // over plain TCP with one coordinator, same round.
    let plain_of = |r: &Row| {
        rows.iter().find(|o| {
            o.protocol == r.protocol
                && o.down == r.down
                && !o.tls
                && o.coordinators == 1
                && same_run(o, r)
        })
    };
    let has_base = |r: &Row| r.tls || r.coordinators > 1;
    if options.json {
        let runs: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "round": r.round,
                    "protocol": r.protocol.to_string(), "down": r.down, "tls": r.tls,
                    "coordinators": r.coordinators,
                    "ids_ahead": r.ids_ahead,
                    "writes_buffered": r.buffered,
                    "workload": r.workload.name(), "clients": r.run.clients, "tps": r.run.tps(),
                    "committed": r.run.tally.committed, "aborted": r.run.tally.aborted,
                    "failed": r.run.tally.failed, "first_failure": r.run.tally.first_failure,
                    "seconds": r.run.seconds,
                    "p50_us": r.p50(),
                    "p99_us": r.run.tally.latency.quantile(0.99),
                    "floor_us": r.floor_us(floor),
                })
            })
            .collect();
        let value = serde_json::json!({
            "shards": 3, "durable": true, "isolation": "serializable",
            "connections": options.connections, "rounds": options.rounds,
            "floor": floor.json(), "runs": runs,
        });
        println!("{value}");
        return;
    }
    println!("{}", floor.describe(options.dir));
    match options.connections {
        None => println!("connections to the gateway: one per client"),
        Some(n) => println!("connections to the gateway: {n}, shared by the clients"),
    }
    println!("base: the same protocol over plain TCP with one coordinator (for tls and xN rows)");
    println!(
        "{:>5} {:<26} {:<11} {:<12} {:<8} {:>10} {:>10} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9}",
        "round",
        "protocol",
        "writes",
        "workload",
        "clients",
        "txn/s",
        "committed",
        "aborted",
        "failed",
        "p50 us",
        "p99 us",
        "p50/floor",
        "p50/2pc",
        "tps/up",
        "tps/base",
        "p50/base"
    );
    for r in rows {
        let (tps_plain, p50_plain) = match (has_base(r), plain_of(r)) {
            (true, Some(plain)) => (
                format!("{:.2}x", r.run.tps() / plain.run.tps().max(1e-9)),
                format!("{:.2}x", r.p50() as f64 / plain.p50().max(1) as f64),
            ),
            _ => (String::new(), String::new()),
        };
        let to_up = match (&r.down, all_up_of(r)) {
            (Some(_), Some(up)) => format!("{:.2}x", r.run.tps() / up.run.tps().max(1e-9)),
            _ => String::new(),
        };
        let ratio = match two_pc_of(r) {
            Some(o) if r.protocol != ProtocolChoice::TWO_PHASE || r.down.is_some() => {
                format!("{:.2}x", r.p50() as f64 / o.p50().max(1) as f64)
            }
            _ => String::new(),
        };
        let to_floor = r
            .floor_us(floor)
            .map_or(String::new(), |f| format!("{:.2}x", r.p50() as f64 / f.max(1) as f64));
        println!(
            "{:>5} {:<26} {:<11} {:<12} {:<8} {:>10.0} {:>10} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9}",
            r.round,
            r.label(),
            if r.buffered { "buffered" } else { "per call" },
            r.workload.name(),
            r.run.clients,
            r.run.tps(),
            r.run.tally.committed,
            r.run.tally.aborted,
            r.run.tally.failed,
            r.p50(),
            r.run.tally.latency.quantile(0.99),
            to_floor,
            ratio,
            to_up,
            tps_plain,
            p50_plain,
        );
        if let Some(why) = &r.run.tally.first_failure {
            println!("{:<13} first failure: {why}", "");
        }
    }
    if options.rounds > 1 {
        summary(rows, floor, &two_pc_of, &all_up_of, &plain_of);
    }
}

/// Over the rounds, per protocol, workload and client count: the median and the spread
/// (lowest to highest) of throughput, p50, p50 against the floor and against plain 2PC.
fn summary<'a>(
    rows: &'a [Row],
    floor: &Floor,
    two_pc_of: &dyn Fn(&Row) -> Option<&'a Row>,
    all_up_of: &dyn Fn(&Row) -> Option<&'a Row>,
    plain_of: &dyn Fn(&Row) -> Option<&'a Row>,
) {
    println!(
        "\nover {} rounds: median [lowest - highest]",
        rows.iter().map(|r| r.round).max().unwrap_or(1)
    );
    println!(
        "{:<26} {:<11} {:<12} {:<8} {:>24} {:>24} {:>24} {:>24} {:>24} {:>24} {:>24}",
        "protocol",
        "writes",
        "workload",
        "clients",
        "txn/s",
        "p50 us",
        "p50/floor",
        "p50/2pc",
        "tps/all up",
        "tps/base",
        "p50/base"
    );
    let spread = |mut values: Vec<f64>, unit: &str, digits: usize| -> String {
        if values.is_empty() {
            return String::new();
        }
        values.sort_by(f64::total_cmp);
        let median = values[values.len() / 2];
        let (low, high) = (values[0], values[values.len() - 1]);
        format!("{median:.digits$}{unit} [{low:.digits$} - {high:.digits$}]")
    };
    let mut seen = Vec::new();
    for r in rows.iter().filter(|r| r.round == 1) {
        let key = (r.label(), r.buffered, r.workload, r.run.clients);
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let mine: Vec<&Row> = rows
            .iter()
            .filter(|o| {
                o.protocol == r.protocol
                    && o.down == r.down
                    && o.tls == r.tls
                    && o.coordinators == r.coordinators
                    && o.ids_ahead == r.ids_ahead
                    && o.buffered == r.buffered
                    && o.workload == r.workload
                    && o.run.clients == r.run.clients
            })
            .collect();
        let tps = mine.iter().map(|o| o.run.tps()).collect();
        let p50 = mine.iter().map(|o| o.p50() as f64).collect();
        let to_floor = mine
            .iter()
            .filter_map(|o| o.floor_us(floor).map(|f| o.p50() as f64 / f.max(1) as f64))
            .collect();
        let to_2pc = if r.protocol == ProtocolChoice::TWO_PHASE && r.down.is_none() {
            Vec::new()
        } else {
            mine.iter()
                .filter_map(|o| two_pc_of(o).map(|t| o.p50() as f64 / t.p50().max(1) as f64))
                .collect()
        };
        let to_up = if r.down.is_none() {
            Vec::new()
        } else {
            mine.iter()
                .filter_map(|o| all_up_of(o).map(|u| o.run.tps() / u.run.tps().max(1e-9)))
                .collect()
        };
        let (tps_plain, p50_plain): (Vec<f64>, Vec<f64>) = if r.tls || r.coordinators > 1 {
            mine.iter()
                .filter_map(|o| {
                    plain_of(o).map(|p| {
                        (
                            o.run.tps() / p.run.tps().max(1e-9),
                            o.p50() as f64 / p.p50().max(1) as f64,
                        )
                    })
                })
                .unzip()
        } else {
            (Vec::new(), Vec::new())
        };
        println!(
            "{:<26} {:<11} {:<12} {:<8} {:>24} {:>24} {:>24} {:>24} {:>24} {:>24} {:>24}",
            r.label(),
            if r.buffered { "buffered" } else { "per call" },
            r.workload.name(),
            r.run.clients,
            spread(tps, "", 0),
            spread(p50, "", 0),
            spread(to_floor, "x", 2),
            spread(to_2pc, "x", 2),
            spread(to_up, "x", 2),
            spread(tps_plain, "x", 2),
            spread(p50_plain, "x", 2),
        );
    }
}
