//! `concord crash-test`: real processes on loopback, transfers from several clients, SIGKILL of
//! a random node at random moments, restart, repeat; then check what survived.
//!
//! Each transfer i debits the client's own funding account on shard A and credits a key used by
//! no other transfer (its *marker*) on shard B. So after the run, for every transfer, the marker
//! says whether it was applied, and the funding accounts say whether every applied credit has
//! its debit. The checks:
//! * acknowledged COMMITTED ⇒ marker applied; acknowledged ABORTED ⇒ not applied;
//! * outcome lost with the connection ⇒ `Status` by id must now give a definite answer that
//!   matches the marker;
//! * each funding account = initial − Σ applied markers debited from it (no half-applied
//!   transfer), no value negative, the grand total unchanged;
//! * once every node is up, nothing stays prepared or locked;
//! * status honesty: after one more coordinator kill and restart (its table of recent
//!   transactions gone, so every answer comes from the shards), `Status` of every transfer
//!   that was named agrees with its marker — COMMITTED only if applied, ABORTED only if not;
//!   FORGOTTEN is allowed (and counted), a contradiction never.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_node::config::{ClusterConfig, LogConfig, Timeouts};

use crate::cluster::ProtocolChoice;
use concord_node::proto::{self, State};
use concord_sim::rng::{run_seed, Rng};

use crate::client::{client, read_shard, submit_named};
use crate::cluster::runtime;

const FUND: i64 = 1_000_000;
const MARKER_BASE: u64 = 1 << 32;

#[derive(Debug, Clone)]
pub struct Options {
    pub cycles: u32,
    pub clients: u32,
    pub seed: u64,
    pub dir: PathBuf,
    /// Run the key-value store's bank workload instead of the delta transfers.
    pub kv: bool,
    pub protocol: ProtocolChoice,
    /// Coordinator replicas (1, 3 or 5).
    pub coordinators: u32,
    /// Arm `concord_node::failpoint` in every coordinator process: it aborts right before
    /// sending a COMMIT decision that is already durable (after a random 20 to 80 of them).
    pub failpoints: bool,
}

#[derive(Debug, Clone)]
enum Known {
    Committed,
    Aborted,
    /// The connection dropped after the coordinator named it: resolved by id at the end.
    Lost(String),
    /// The connection dropped before the coordinator named it.
    Unnamed,
}

#[derive(Debug, Clone)]
struct Transfer {
    client: u32,
    from_shard: String,
    to_shard: String,
    marker: u64,
    amount: i64,
    known: Known,
    /// The id the coordinator gave it, if the client heard it.
    id: Option<String>,
}

/// `n` free loopback ports below the kernel's ephemeral range. A port the kernel hands out
/// (binding port 0) is in that range, and once its node is killed, any outgoing connection —
/// a client's, a peer's — may take it as its source port, and the restarted node cannot listen
/// ("address already in use"). Ports below the range are only ever taken by a bind.
pub fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (low, high) = (10_000u16, ephemeral_low.saturating_sub(1).max(10_001));
    let span = u64::from(high - low);
    let mut rng = Rng::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()) ^ d.as_secs())
            ^ u64::from(std::process::id()),
    );
    let mut held: Vec<TcpListener> = Vec::new();
    for _ in 0..10_000 {
        if held.len() == n {
            break;
        }
        let port = low + u16::try_from(rng.below(span)).expect("below the span");
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    if held.len() < n {
        return Err(format!("cannot find {n} free ports between {low} and {high}"));
    }
    held.iter().map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())).collect()
}

pub(crate) struct Cluster {
    pub config: ClusterConfig,
    pub config_path: PathBuf,
    pub dir: PathBuf,
    pub children: BTreeMap<String, Child>,
    /// Transfers acknowledged committed so far (the workers count them): how `kill_cycles`
    /// times a failover.
    pub commits: Arc<std::sync::atomic::AtomicU64>,
    /// From each SIGKILL of a replicated coordinator's leader to the next commit any client
    /// heard, and how long the leader stayed down.
    pub failovers: Arc<std::sync::Mutex<Vec<(Duration, Duration)>>>,
    /// While the kill cycles run with `--failpoints`: how many decisions each coordinator
    /// process started sends before it aborts (drawn at its start).
    pub failpoints: Option<Rng>,
    /// The port of each node that is down, bound here until it starts again: other tests on
    /// this machine pick free ports in the same range, and one took a killed replica's port
    /// while it was down ("address already in use" at its restart).
    pub held_ports: BTreeMap<String, TcpListener>,
}

impl Cluster {
    pub fn start_node(&mut self, name: &str) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.out")))
            .map_err(|e| e.to_string())?;
        self.held_ports.remove(name); // let go just before the node binds it
        let mut command =
            std::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
        let coordinator = self.config.coordinators().any(|n| n.name == name);
        if let (Some(rng), true) = (&mut self.failpoints, coordinator) {
            let after = 20 + rng.below(61);
            let armed = format!("abort-before-commit-send:{after}");
            command.env(concord_node::failpoint::VARIABLE, armed);
        }
        let child = command
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--node")
            .arg(name)
            .arg("--data-dir")
            .arg(self.dir.join(name))
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        self.children.insert(name.to_string(), child);
        Ok(())
    }

    pub fn kill(&mut self, name: &str) -> Result<(), String> {
        if let Some(mut child) = self.children.remove(name) {
            child.kill().map_err(|e| format!("SIGKILL {name}: {e}"))?; // SIGKILL on Unix
            child.wait().map_err(|e| e.to_string())?;
            self.hold_port(name);
        }
        Ok(())
    }

    /// Binds the port of `name`, which is down, until `start_node` starts it again (best
    /// effort: a port already taken is left to the restart's own error).
    fn hold_port(&mut self, name: &str) {
        if let Ok(listener) = TcpListener::bind(self.address(name)) {
            self.held_ports.insert(name.to_string(), listener);
        }
    }

    pub fn address(&self, name: &str) -> SocketAddr {
        self.config.node(name).expect("a configured node").listen
    }

    /// The coordinator's replicas' addresses (one, without replication).
    pub fn coordinators(&self) -> Coordinators {
        Coordinators {
            addresses: self.config.coordinators().map(|n| n.listen).collect(),
            current: 0,
        }
    }

    /// Waits (bounded) until `name` answers its health check; fails if it exited.
    pub async fn wait_healthy(&mut self, name: &str) -> Result<(), String> {
        let address = self.address(name);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.children.get_mut(name) {
                if let Ok(Some(status)) = child.try_wait() {
                    let out = std::fs::read_to_string(self.dir.join(format!("{name}.out")))
                        .unwrap_or_default();
                    let tail: Vec<&str> = out.lines().rev().take(5).collect();
                    return Err(format!("{name} exited with {status}: {}", tail.join(" | ")));
                }
            }
            let mut node = proto::node_client::NodeClient::new(crate::creds::channel(address));
            let mut request = tonic::Request::new(proto::HealthRequest {});
            request.set_timeout(Duration::from_millis(500));
            if node.health(request).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{name} did not become healthy within 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Cluster {
    /// `cycles` times: wait a random moment, SIGKILL a random node of `names`, wait a little,
    /// restart it and wait until it is healthy. Returns how often each node was killed.
    pub async fn kill_cycles(
        &mut self,
        names: &[String],
        cycles: u32,
        seed: u64,
    ) -> Result<BTreeMap<String, u32>, String> {
        let mut rng = Rng::new(seed);
        let mut kills: BTreeMap<String, u32> = BTreeMap::new();
        let replicated = self.config.replicated_coordinator();
        for cycle in 0..cycles {
            tokio::time::sleep(Duration::from_millis(50 + rng.below(300))).await;
            self.restart_aborted(&mut kills).await.map_err(|e| format!("cycle {cycle}: {e}"))?;
            let mut victim =
                names[usize::try_from(rng.below(names.len() as u64)).expect("small")].clone();
            // A replicated coordinator: half the kills aimed at the replica that leads.
            let mut leader = None;
            if replicated && rng.below(2) == 0 {
                leader = self.leader().await;
                if let Some(leader) = &leader {
                    victim.clone_from(leader);
                }
            }
            let replica = replicated && self.config.coordinators().any(|n| n.name == victim);
            let down = if replica { rng.below(800) } else { rng.below(150) };
            let (before, killed_at) = (self.commits.load(Ordering::Relaxed), Instant::now());
            self.kill(&victim)?;
            *kills.entry(victim.clone()).or_default() += 1;
            if leader.is_some() {
                // Timed in the background while the cycle goes on: bounded by the run.
                let (commits, failovers) = (Arc::clone(&self.commits), Arc::clone(&self.failovers));
                let down = Duration::from_millis(down);
                tokio::spawn(async move {
                    while killed_at.elapsed() < Duration::from_secs(30) {
                        if commits.load(Ordering::Relaxed) > before {
                            failovers
                                .lock()
                                .expect("not poisoned")
                                .push((killed_at.elapsed(), down));
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                });
            }
            // A replica back within the election timeout resumes its term; one down longer is
            // replaced: both, at random.
            tokio::time::sleep(Duration::from_millis(down)).await;
            self.start_node(&victim)?;
            self.wait_healthy(&victim).await.map_err(|e| format!("cycle {cycle}: {e}"))?;
        }
        if self.failpoints.is_some() {
            // The checks after the run need coordinators that stay up: each is restarted
            // unarmed, one at a time (a majority of replicas stays up).
            self.failpoints = None;
            self.restart_aborted(&mut kills).await?;
            let coordinators: Vec<String> =
                self.config.coordinators().map(|n| n.name.clone()).collect();
            for name in coordinators {
                self.kill(&name)?;
                self.start_node(&name)?;
                self.wait_healthy(&name).await?;
            }
        }
        Ok(kills)
    }

    /// Restarts every node that exited on its own (a coordinator at its failpoint), counting
    /// each as `NAME@failpoint` in `kills`; any other exit is an error.
    async fn restart_aborted(&mut self, kills: &mut BTreeMap<String, u32>) -> Result<(), String> {
        let mut exited = Vec::new();
        for (name, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                exited.push((name.clone(), status));
            }
        }
        for (name, status) in exited {
            let coordinator = self.config.coordinators().any(|n| n.name == name);
            // SIGABRT: 6 (the failpoint's abort).
            let aborted = std::os::unix::process::ExitStatusExt::signal(&status) == Some(6);
            if !(coordinator && aborted) {
                return Err(format!("{name} exited on its own ({status}); see {name}.out"));
            }
            *kills.entry(format!("{name}@failpoint")).or_default() += 1;
            self.children.remove(&name);
            self.start_node(&name)?;
            self.wait_healthy(&name).await?;
        }
        Ok(())
    }
}

impl Cluster {
    /// The coordinator replica that leads now, if one answers as leader (a standby refuses).
    pub async fn leader(&self) -> Option<String> {
        for node in self.config.coordinators() {
            let mut rpc = client(node.listen);
            let asked = rpc.list(proto::ListRequest { limit: 1, running_only: true });
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), asked).await {
                return Some(node.name.clone());
            }
        }
        None
    }
}

/// Kills and restarts the coordinator (so its table of recent transactions is gone), then asks
/// `Status` of every named transfer and checks each answer against its marker (`applied`).
/// Returns how many answers were COMMITTED, ABORTED and FORGOTTEN.
async fn status_honesty(
    cluster: &mut Cluster,
    transfers: &[Transfer],
    applied: &impl Fn(&str, u64) -> i64,
    violations: &mut Vec<String>,
) -> Result<[u32; 3], String> {
    restart_coordinator(cluster).await?;
    let mut coordinators = cluster.coordinators();
    let mut counts = [0u32; 3];
    for t in transfers {
        let Some(id) = &t.id else { continue };
        let was_applied = applied(&t.to_shard, t.marker) == t.amount;
        let state = match coordinators.status(id, |s| s != State::Unknown).await {
            Ok(state) => state,
            Err(why) => {
                violations.push(format!("status of {id}: {why}"));
                State::Unknown
            }
        };
        match (state, was_applied) {
            // A logged decision whose lazy end record was lost reads COMMITTING after a restart.
            (State::Committed | State::Committing, true) => counts[0] += 1,
            (State::Aborted, false) => counts[1] += 1,
            (State::Forgotten, _) => counts[2] += 1,
            (state, applied) => violations.push(format!(
                "status of {id} says {state:?}, but its transfer was {}applied (marker {} on {})",
                if applied { "" } else { "not " },
                t.marker,
                t.to_shard
            )),
        }
    }
    Ok(counts)
}

/// Kills and restarts the coordinator, so its table of recent transactions is gone and every
/// status answer comes from the shards.
/// A replicated coordinator's replicas all go: its next leader's table starts from the log.
pub(crate) async fn restart_coordinator(cluster: &mut Cluster) -> Result<(), String> {
    let replicas: Vec<String> = cluster.config.coordinators().map(|n| n.name.clone()).collect();
    for name in &replicas {
        cluster.kill(name)?;
    }
    for name in &replicas {
        cluster.start_node(name)?;
    }
    for name in &replicas {
        cluster.wait_healthy(name).await?;
    }
    Ok(())
}

/// `Status` of `id` at the coordinator (its leader, if replicated), asked until it is known,
/// bounded; a failure to get any answer is a violation.
pub(crate) async fn ask_status(
    coordinators: &mut Coordinators,
    id: &str,
    violations: &mut Vec<String>,
) -> State {
    match coordinators.status(id, |s| s != State::Unknown).await {
        Ok(state) => state,
        Err(why) => {
            violations.push(format!("status of {id}: {why}"));
            State::Unknown
        }
    }
}

/// Where a client finds the coordinator: one address, or a replicated coordinator's replicas,
/// of which it follows the one that leads.
#[derive(Debug, Clone)]
pub(crate) struct Coordinators {
    addresses: Vec<SocketAddr>,
    current: usize,
}

impl Coordinators {
    pub fn address(&self) -> SocketAddr {
        self.addresses[self.current % self.addresses.len()]
    }

    /// After a call failed at [`Self::address`]: the leader its refusal named, or else the next
    /// replica. Returns whether there is another replica to try.
    pub fn moved(&mut self, status: &tonic::Status) -> bool {
        if self.addresses.len() == 1 {
            return false;
        }
        match crate::client::leader_named(status)
            .and_then(|l| self.addresses.iter().position(|a| *a == l))
        {
            Some(leader) => self.current = leader,
            None => self.current += 1,
        }
        true
    }

    /// `submit_named` through the leader: a call that never ran (refused by a standby, or no
    /// reservation from a replica that is down) is tried again at the leader, bounded.
    pub async fn submit_named(
        &mut self,
        writes: Vec<proto::WriteOp>,
    ) -> (Option<String>, Result<proto::TransactionInfo, tonic::Status>) {
        let mut tries = 0;
        loop {
            let (id, outcome) = submit_named(&mut client(self.address()), writes.clone()).await;
            let never_ran = match &outcome {
                Err(status) => id.is_none() || crate::client::leader_named(status).is_some(),
                Ok(_) => false,
            };
            tries += 1;
            if let (Err(_), Some(named), false) = (&outcome, &id, never_ran) {
                if self.addresses.len() > 1 {
                    // Its coordinator replica went away with it in flight: the leader knows.
                    let definite = |s: State| matches!(s, State::Committed | State::Aborted);
                    if let Ok(state) = self.status(named, definite).await {
                        if definite(state) {
                            let info = proto::TransactionInfo {
                                txn: named.clone(),
                                state: state as i32,
                                ..Default::default()
                            };
                            return (id, Ok(info));
                        }
                    }
                }
            }
            if !never_ran || tries > 50 || !self.moved(outcome.as_ref().expect_err("failed")) {
                return (id, outcome);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `Status` of `id` at the leader, asked until `done` says the answer will do, bounded;
    /// the last answer, or why there was none.
    pub async fn status(&mut self, id: &str, done: fn(State) -> bool) -> Result<State, String> {
        let mut last = Err(String::from("no answer"));
        for _ in 0..60 {
            let mut rpc = client(self.address());
            let asked = rpc.status(proto::StatusRequest { txn: id.to_string() });
            match tokio::time::timeout(Duration::from_secs(10), asked).await {
                Ok(Ok(info)) => {
                    let state = State::try_from(info.into_inner().state).unwrap_or(State::Unknown);
                    last = Ok(state);
                    if done(state) {
                        return last;
                    }
                }
                Ok(Err(status)) => {
                    last = Err(status.message().to_string());
                    self.moved(&status);
                }
                Err(_) => last = Err("no answer within 10 s".into()),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        last
    }
}

/// "coordinator ×3, shard-1 ×2": how often each node was killed.
pub fn kills_summary(kills: &BTreeMap<String, u32>) -> String {
    kills.iter().map(|(n, k)| format!("{n} ×{k}")).collect::<Vec<_>>().join(", ")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn run(options: &Options) -> Result<ExitCode, String> {
    if options.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    let _ = std::fs::remove_dir_all(&options.dir);
    std::fs::create_dir_all(&options.dir)
        .map_err(|e| format!("cannot create {}: {e}", options.dir.display()))?;
    if !matches!(options.coordinators, 1 | 3 | 5) {
        return Err(format!("--coordinators {}: 1, 3 or 5", options.coordinators));
    }
    let mut config = options.protocol.apply(ClusterConfig::local("crash-test", 3, 0));
    for i in 1..options.coordinators {
        let id = config.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        config.nodes.push(concord_node::config::NodeConfig {
            name: format!("coordinator-{}", i + 1),
            id,
            role: concord_node::config::Role::Coordinator,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: None,
        });
    }
    let ports = free_ports(config.nodes.len())?;
    if options.kv {
        config.kv = Some(crate::crash_kv::kv_config());
    }
    for (node, port) in config.nodes.iter_mut().zip(&ports) {
        node.listen.set_port(*port);
    }
    // Short timeouts keep the run fast; frequent checkpoints put them under the knife too.
    config.timeouts = Timeouts {
        vote_ms: 500,
        resend_base_ms: 50,
        resend_max_ms: 500,
        inquiry_base_ms: 100,
        inquiry_max_ms: 500,
    };
    config.log = LogConfig { segment_bytes: 4_096, checkpoint_every: 64 };
    config.validate()?;
    let config_path = options.dir.join("concord.toml");
    std::fs::write(&config_path, config.to_toml()).map_err(|e| e.to_string())?;
    let mut cluster = Cluster {
        config,
        config_path,
        dir: options.dir.clone(),
        children: BTreeMap::new(),
        commits: Arc::default(),
        failovers: Arc::default(),
        failpoints: options.failpoints.then(|| Rng::new(run_seed(options.seed, 0xfa11))),
        held_ports: BTreeMap::new(),
    };
    if options.kv {
        return runtime()?.block_on(crate::crash_kv::run(&mut cluster, options));
    }
    runtime()?.block_on(run_cluster(&mut cluster, options))
}

async fn run_cluster(cluster: &mut Cluster, options: &Options) -> Result<ExitCode, String> {
    let names: Vec<String> = cluster.config.nodes.iter().map(|n| n.name.clone()).collect();
    let shards: Vec<String> = cluster.config.shards().map(|n| n.name.clone()).collect();
    for name in &names {
        cluster.start_node(name)?;
    }
    for name in &names {
        cluster.wait_healthy(name).await?;
    }
    let coordinators = cluster.coordinators();
    // Fund every client's account on every shard (one-phase each), before any fault.
    for c in 0..options.clients {
        for shard in &shards {
            let op = proto::WriteOp { shard: shard.clone(), key: u64::from(c), delta: FUND };
            let (_, outcome) = coordinators.clone().submit_named(vec![op]).await;
            match outcome {
                Ok(info) if info.state == State::Committed as i32 => {}
                other => return Err(format!("funding {shard}:{c} failed: {other:?}")),
            }
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for c in 0..options.clients {
        let (stop, shards) = (Arc::clone(&stop), shards.clone());
        let mut rng = Rng::new(run_seed(options.seed, u64::from(c) + 1));
        let mut coordinators = coordinators.clone();
        let commits = Arc::clone(&cluster.commits);
        workers.spawn(async move {
            let mut done = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let a = usize::try_from(rng.below(shards.len() as u64)).expect("small");
                let b =
                    (a + 1 + usize::try_from(rng.below(shards.len() as u64 - 1)).expect("small"))
                        % shards.len();
                let amount = i64::try_from(1 + rng.below(1_000)).expect("small");
                let marker = MARKER_BASE + (u64::from(c) << 24) + n;
                n += 1;
                let writes = vec![
                    proto::WriteOp { shard: shards[a].clone(), key: u64::from(c), delta: -amount },
                    proto::WriteOp { shard: shards[b].clone(), key: marker, delta: amount },
                ];
                let (id, outcome) = coordinators.submit_named(writes).await;
                let named = id.clone();
                let known = match (outcome, id) {
                    (Ok(info), _) if info.state == State::Committed as i32 => {
                        commits.fetch_add(1, Ordering::Relaxed);
                        Known::Committed
                    }
                    (Ok(_), _) => Known::Aborted,
                    // Refused before it began (e.g. overloaded). A transport failure or a timeout
                    // may have come after the coordinator began it: that one stays unnamed.
                    (Err(s), None)
                        if !matches!(
                            s.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::Unknown
                                | tonic::Code::Cancelled
                                | tonic::Code::DeadlineExceeded
                        ) =>
                    {
                        Known::Aborted
                    }
                    (Err(_), Some(id)) => Known::Lost(id),
                    (Err(_), None) => Known::Unnamed,
                };
                if matches!(known, Known::Lost(_) | Known::Unnamed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                done.push(Transfer {
                    client: c,
                    from_shard: shards[a].clone(),
                    to_shard: shards[b].clone(),
                    marker,
                    amount,
                    known,
                    id: named,
                });
            }
            done
        });
    }

    let started = Instant::now();
    let kills = cluster.kill_cycles(&names, options.cycles, options.seed).await?;
    stop.store(true, Ordering::Relaxed);
    let mut transfers = Vec::new();
    while let Some(done) = workers.join_next().await {
        transfers.extend(done.map_err(|e| format!("a client task failed: {e}"))?);
    }
    let run_time = started.elapsed();

    // Every node is up: in-doubt branches must resolve (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut reads = BTreeMap::new();
    loop {
        reads.clear();
        let mut unsettled = Vec::new();
        for shard in &shards {
            let reply = read_shard(cluster.address(shard), Vec::new()).await?;
            if reply.locked_keys > 0 || !reply.in_doubt.is_empty() {
                unsettled.push(format!(
                    "{shard}: {} locked, in doubt {:?}",
                    reply.locked_keys, reply.in_doubt
                ));
            }
            reads.insert(shard.clone(), reply);
        }
        if unsettled.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "still prepared 30 s after every node is up: {}",
                unsettled.join("; ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let value = |shard: &str, key: u64| -> i64 {
        reads[shard].values.iter().find(|kv| kv.key == key).map_or(0, |kv| kv.value)
    };

    let mut violations = Vec::new();
    let mut resolved = 0u32;
    let mut asking = coordinators.clone();
    for t in &mut transfers {
        if let Known::Lost(id) = &t.known {
            let id = id.clone();
            let definite = |s: State| matches!(s, State::Committed | State::Aborted);
            match asking.status(&id, definite).await {
                Ok(State::Committed) => {
                    resolved += 1;
                    t.known = Known::Committed;
                }
                Ok(State::Aborted) => {
                    resolved += 1;
                    t.known = Known::Aborted;
                }
                Ok(other) => violations
                    .push(format!("{id}: {other:?}, not a definite status once every node is up")),
                Err(why) => violations
                    .push(format!("{id}: no definite status once every node is up ({why})")),
            }
        }
    }
    let mut debited: BTreeMap<(u32, String), i64> = BTreeMap::new();
    let mut counts = [0u32; 3];
    for t in &transfers {
        let applied = value(&t.to_shard, t.marker);
        if applied != 0 && applied != t.amount {
            violations.push(format!(
                "marker {} on {} is {applied}, not 0 or {}",
                t.marker, t.to_shard, t.amount
            ));
        }
        match t.known {
            Known::Committed if applied != t.amount => violations.push(format!(
                "a transfer acknowledged COMMITTED is missing on {} (marker {})",
                t.to_shard, t.marker
            )),
            Known::Aborted if applied != 0 => violations.push(format!(
                "a transfer acknowledged ABORTED was applied on {} (marker {})",
                t.to_shard, t.marker
            )),
            _ => {}
        }
        counts[match t.known {
            Known::Committed => 0,
            Known::Aborted => 1,
            _ => 2,
        }] += 1;
        if applied == t.amount {
            *debited.entry((t.client, t.from_shard.clone())).or_default() += t.amount;
        }
    }
    let mut total = 0i64;
    for (shard, read) in &reads {
        for kv in &read.values {
            total += kv.value;
            if kv.value < 0 {
                violations.push(format!("{shard}:{} is negative ({})", kv.key, kv.value));
            }
        }
    }
    for c in 0..options.clients {
        for shard in &shards {
            let expected = FUND - debited.get(&(c, shard.clone())).copied().unwrap_or(0);
            let found = value(shard, u64::from(c));
            if found != expected {
                violations.push(format!(
                    "{shard}:{c} is {found}, but its applied transfers leave {expected}: a transfer was half-applied"
                ));
            }
        }
    }
    let expected_total = FUND * i64::from(options.clients) * shards.len() as i64;
    if total != expected_total {
        violations.push(format!("total balance {total}, expected {expected_total}"));
    }
    let honesty = status_honesty(cluster, &transfers, &value, &mut violations).await?;

    println!(
        "crash-test: {} kill/restart cycles in {:.1} s ({}), {} transfers: {} committed, {} aborted; {} outcomes learned by id after the connection dropped; {} never named",
        options.cycles,
        run_time.as_secs_f64(),
        kills_summary(&kills),
        transfers.len(),
        counts[0],
        counts[1],
        resolved,
        counts[2],
    );
    println!(
        "crash-test: total balance {total} (expected {expected_total}); nothing left prepared"
    );
    println!(
        "crash-test: status after a last coordinator restart: {} committed, {} aborted, {} forgotten — none contradicting what was applied",
        honesty[0], honesty[1], honesty[2]
    );
    let failovers = cluster.failovers.lock().expect("not poisoned").clone();
    if !failovers.is_empty() {
        println!("crash-test: {}", failover_summary(&failovers));
    }
    if violations.is_empty() {
        println!("crash-test: OK — every check held");
        Ok(ExitCode::SUCCESS)
    } else {
        for v in violations.iter().take(20) {
            println!("VIOLATION: {v}");
        }
        println!("crash-test: {} violations (logs in {})", violations.len(), cluster.dir.display());
        Ok(ExitCode::from(1))
    }
}

/// "leader SIGKILL to the next commit: …": p50 and max of all leader kills, and of those whose
/// leader stayed down past the election timeout (a new leader took over) and the rest (it came
/// back and resumed its term).
fn failover_summary(failovers: &[(Duration, Duration)]) -> String {
    let stats = |mut times: Vec<Duration>| -> String {
        if times.is_empty() {
            return "none".into();
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1_000.0;
        format!(
            "{} kills, p50 {:.0} ms, max {:.0} ms",
            times.len(),
            ms(times[(times.len() - 1) / 2]),
            ms(times[times.len() - 1])
        )
    };
    let replaced = Duration::from_millis(300);
    let all = failovers.iter().map(|f| f.0).collect();
    let long = failovers.iter().filter(|f| f.1 >= replaced).map(|f| f.0).collect();
    let short = failovers.iter().filter(|f| f.1 < replaced).map(|f| f.0).collect();
    format!(
        "leader SIGKILL to the next commit a client heard: {} (leader down ≥ 300 ms: {}; back sooner: {})",
        stats(all),
        stats(long),
        stats(short)
    )
}

pub fn default_dir() -> PathBuf {
    Path::new("./concord-data").join("crash-test")
}
