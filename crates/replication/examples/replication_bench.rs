//! What the replicated log costs and how fast it recovers (BENCHMARKS.md, issue 21):
//!
//! * **latency**: one writer, each command awaited — the local durable log (one fdatasync per
//!   append, the single coordinator's `Persist`), a one-replica Raft group on that log, and
//!   three replicas over loopback TCP; rounds interleaved, so the machine's drift hits all
//!   three alike;
//! * **throughput**: commands submitted without waiting (as the node loop does), committed per
//!   second, the same three setups;
//! * **failover**: three replicas over TCP with the default timing; the leader is stopped
//!   (its port closed, its Raft shut down: to the others, exactly a SIGKILL — no goodbye) and
//!   the time to the first command committed through a new leader is measured; the stopped
//!   replica restarts and catches up before the next round.
//!
//! `cargo run --release -p concord-replication --example replication_bench -- [rounds]`
//! Data goes under `./target/replication-bench` (a real disk, not tmpfs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_replication::records::record_command;
use concord_replication::tcp;
use concord_replication::{Options, RecordLog, Replica, TcpWire, WriteError};
use concord_wal::{FileLog, GroupCommit};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

const CLUSTER: &str = "bench";
const LATENCY_WRITES: usize = 500;
const THROUGHPUT_WRITES: usize = 20_000;

/// The sample at `per_mille`/1000 of the way through `sorted`.
fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    sorted[(sorted.len() - 1) * per_mille / 1_000]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

struct Running {
    replica: Replica<RecordLog>,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

struct Group {
    root: PathBuf,
    members: BTreeMap<u64, String>,
    running: BTreeMap<u64, Running>,
}

impl Group {
    async fn start(root: &Path, n: u64) -> Group {
        let mut members = BTreeMap::new();
        for id in 1..=n {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            members.insert(id, listener.local_addr().unwrap().to_string());
        }
        let mut group = Group { root: root.to_path_buf(), members, running: BTreeMap::new() };
        for id in 1..=n {
            group.start_replica(id).await;
        }
        group
    }

    async fn start_replica(&mut self, id: u64) {
        let dir = self.root.join(format!("replica-{id}"));
        let options = Options::new(CLUSTER, id, dir, self.members.clone());
        let mut listener = None;
        for _ in 0..200 {
            if let Ok(l) = TcpListener::bind(&self.members[&id]).await {
                listener = Some(l);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let listener = listener.expect("the port is free again");
        let replica =
            Replica::start(options, RecordLog::default(), TcpWire::new(CLUSTER)).await.unwrap();
        let (stop, stopped) = watch::channel(false);
        let server =
            tokio::spawn(tcp::serve(listener, replica.raft().clone(), CLUSTER.into(), stopped));
        self.running.insert(id, Running { replica, stop, server });
    }

    async fn kill(&mut self, id: u64) {
        let running = self.running.remove(&id).unwrap();
        let _ = running.stop.send(true);
        let _ = running.server.await;
        running.replica.shutdown().await;
    }

    async fn leader(&self) -> u64 {
        loop {
            for (id, r) in &self.running {
                if r.replica.status().is_leader {
                    return *id;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Writes through whichever replica leads until one write commits.
    async fn write_somewhere(&self, command: &[u8]) -> u64 {
        loop {
            for r in self.running.values() {
                if !r.replica.status().is_leader {
                    continue;
                }
                match r.replica.write(command.to_vec()).await {
                    Ok(index) => return index,
                    Err(WriteError::NotLeader(_) | WriteError::Unknown(_)) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn caught_up(&self) {
        loop {
            let applied: Vec<u64> = self
                .running
                .values()
                .map(|r| r.replica.machine().lock().unwrap().last_index())
                .collect();
            if applied.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop_all(&mut self) {
        for id in self.running.keys().copied().collect::<Vec<_>>() {
            self.kill(id).await;
        }
    }
}

async fn latency_local(dir: &Path) -> Vec<Duration> {
    let (log, _) = FileLog::open(dir, 64 << 20).unwrap();
    let log = Arc::new(GroupCommit::start(log).unwrap());
    let mut samples = Vec::with_capacity(LATENCY_WRITES);
    for i in 0..LATENCY_WRITES {
        let started = Instant::now();
        let log = Arc::clone(&log);
        let record = record_command(format!("decision {i}").as_bytes());
        tokio::task::spawn_blocking(move || log.append(record)).await.unwrap().unwrap();
        samples.push(started.elapsed());
    }
    drop(Arc::into_inner(log).map(GroupCommit::stop));
    samples
}

async fn latency_raft(dir: &Path, replicas: u64) -> Vec<Duration> {
    let mut group = Group::start(dir, replicas).await;
    let leader = group.leader().await;
    group.write_somewhere(b"warm").await;
    let mut samples = Vec::with_capacity(LATENCY_WRITES);
    for i in 0..LATENCY_WRITES {
        let record = record_command(format!("decision {i}").as_bytes());
        let started = Instant::now();
        group.running[&leader].replica.write(record).await.expect("no election mid-run");
        samples.push(started.elapsed());
    }
    group.stop_all().await;
    samples
}

async fn throughput_local(dir: &Path) -> f64 {
    let (log, _) = FileLog::open(dir, 64 << 20).unwrap();
    let log = GroupCommit::start(log).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    for i in 0..THROUGHPUT_WRITES {
        let tx = tx.clone();
        let record = record_command(format!("decision {i}").as_bytes());
        log.submit(
            record,
            Some(Box::new(move |r| {
                let _ = tx.send(r.is_ok());
            })),
        )
        .unwrap();
    }
    for _ in 0..THROUGHPUT_WRITES {
        assert!(rx.recv().await.unwrap());
    }
    let rate = THROUGHPUT_WRITES as f64 / started.elapsed().as_secs_f64();
    drop(log.stop());
    rate
}

/// Commits per second, and the leader changes the run caused (its writes then fail, and the
/// rate counts only what committed).
async fn throughput_raft(dir: &Path, replicas: u64) -> (f64, u64) {
    let mut group = Group::start(dir, replicas).await;
    let leader = group.leader().await;
    group.write_somewhere(b"warm").await;
    let term = group.running[&leader].replica.status().term;
    let submitter = group.running[&leader].replica.submitter();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    for i in 0..THROUGHPUT_WRITES {
        let tx = tx.clone();
        let record = record_command(format!("decision {i}").as_bytes());
        submitter.submit(
            record,
            Some(Box::new(move |r| {
                let _ = tx.send(r.is_ok());
            })),
        );
    }
    let mut committed = 0;
    for _ in 0..THROUGHPUT_WRITES {
        committed += u32::from(rx.recv().await.unwrap());
    }
    let rate = f64::from(committed) / started.elapsed().as_secs_f64();
    let terms = group.running.values().map(|r| r.replica.status().term).max().unwrap_or(term);
    group.stop_all().await;
    (rate, terms - term)
}

async fn failover(dir: &Path, kills: usize) -> Vec<Duration> {
    let mut group = Group::start(dir, 3).await;
    group.write_somewhere(b"warm").await;
    let mut samples = Vec::with_capacity(kills);
    for round in 0..kills {
        let leader = group.leader().await;
        group.write_somewhere(format!("before {round}").as_bytes()).await;
        let killed_at = Instant::now();
        group.kill(leader).await;
        group.write_somewhere(format!("after {round}").as_bytes()).await;
        samples.push(killed_at.elapsed());
        group.start_replica(leader).await;
        group.caught_up().await;
    }
    group.stop_all().await;
    samples
}

fn fresh(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let root = PathBuf::from("target/replication-bench");
    let mut latency: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut throughput: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut elections: BTreeMap<&str, u64> = BTreeMap::new();
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        let l = latency_local(&fresh(&root, "local")).await;
        latency.entry("1 local log").or_default().extend(l);
        let l = latency_raft(&fresh(&root, "raft1"), 1).await;
        latency.entry("2 raft, 1 replica").or_default().extend(l);
        let l = latency_raft(&fresh(&root, "raft3"), 3).await;
        latency.entry("3 raft, 3 replicas").or_default().extend(l);
        throughput
            .entry("1 local log")
            .or_default()
            .push(throughput_local(&fresh(&root, "local")).await);
        for (name, n) in [("2 raft, 1 replica", 1), ("3 raft, 3 replicas", 3)] {
            let (rate, new_terms) = throughput_raft(&fresh(&root, &format!("raft{n}")), n).await;
            throughput.entry(name).or_default().push(rate);
            *elections.entry(name).or_default() += new_terms;
        }
    }
    println!("one writer, {LATENCY_WRITES} awaited writes x {rounds} rounds (interleaved):");
    let local_p50 = {
        let mut s = latency["1 local log"].clone();
        s.sort();
        percentile(&s, 500)
    };
    for (name, samples) in &mut latency {
        samples.sort();
        let p50 = percentile(samples, 500);
        println!(
            "  {name:<20} p50 {:>7.3} ms  p99 {:>7.3} ms  ({:.2}x the local log's p50)",
            ms(p50),
            ms(percentile(samples, 990)),
            p50.as_secs_f64() / local_p50.as_secs_f64()
        );
    }
    println!("submitted without waiting, {THROUGHPUT_WRITES} writes x {rounds} rounds:");
    let local_rate = throughput["1 local log"].iter().sum::<f64>() / rounds as f64;
    for (name, rates) in &throughput {
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        println!(
            "  {name:<20} {mean:>9.0} commits/s  ({:.2}x the local log)  rounds: {:?}  \
             terms started mid-run: {}",
            mean / local_rate,
            rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
            elections.get(name).copied().unwrap_or(0)
        );
    }
    let kills = 20;
    let mut samples = failover(&fresh(&root, "failover"), kills).await;
    samples.sort();
    println!(
        "failover, {kills} leader kills (heartbeat 50 ms, election timeout 150-300 ms): \
         p50 {:.0} ms, max {:.0} ms, min {:.0} ms",
        ms(percentile(&samples, 500)),
        ms(*samples.last().unwrap()),
        ms(samples[0])
    );
    let _ = std::fs::remove_dir_all(&root);
}
