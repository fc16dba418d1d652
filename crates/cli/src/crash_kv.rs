//! `concord crash-test --kv`: the bank workload on the key-value store, on real processes,
//! with SIGKILL of random nodes (gateway or shards) under load.
//!
//! Accounts `acct/00`…`acct/15` are spread over three shards; each starts at 100 (an absent key
//! holds 100). Clients move amounts between random accounts in interactive serializable
//! transactions (read both balances, write both if the source covers it); an auditor scans all
//! accounts in read-only transactions. Every audit must see the constant total and no
//! negative balance ([`concord_check::bank`]); once every node is up again, a final audit must
//! succeed within a bounded time (nothing left prepared) and hold too. Each transfer also
//! increments its client's own counter key, so durability is checked as well: a counter must
//! be at least the client's acknowledged commits, and at most those plus its unknown outcomes
//! (a checkpoint that lost versions would bring counters — and balances — back to zero).
//!
//! Status honesty: every transfer has its id before its commit is sent (the client names it
//! ahead). After the run the coordinator is killed once more and restarted, so its table is
//! gone, and `Status` of every transfer is asked: an acknowledged one must never read ABORTED,
//! and the unknown outcomes that read COMMITTED must be exactly what the client's counter holds
//! beyond its acknowledged commits (FORGOTTEN ones may be either).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_check::bank::{check_bank, BankRead};
use concord_client::{KvError, Txn};
use concord_node::config::KvConfig;
use concord_sim::rng::{run_seed, Rng};

use crate::crash_test::{Cluster, Options};

const ACCOUNTS: usize = 16;
const INITIAL: i64 = 100;

fn account(i: usize) -> String {
    format!("acct/{i:02}")
}

fn counter(client: u32) -> String {
    format!("count/{client:02}")
}

/// Three shards, the accounts split between them.
pub(crate) fn kv_config() -> KvConfig {
    KvConfig { splits: vec![account(5), account(11)], ..KvConfig::default() }
}

fn balance(value: Option<String>) -> Result<i64, KvError> {
    value.map_or(Ok(INITIAL), |v| v.parse().map_err(|_| KvError::Invalid(format!("balance `{v}`"))))
}

async fn audit(txn: &mut Txn) -> Result<BankRead, KvError> {
    let (rows, more) = txn.scan("acct/", Some(b"acct0".as_slice()), 100).await?;
    if more {
        return Err(KvError::Invalid("more accounts than expected".into()));
    }
    let mut read = BankRead { balances: Default::default() };
    for i in 0..ACCOUNTS {
        read.balances.insert(account(i), INITIAL);
    }
    for (key, value) in rows {
        let key = String::from_utf8_lossy(&key).into_owned();
        let value = balance(Some(String::from_utf8_lossy(&value).into_owned()))?;
        read.balances.insert(key, value);
    }
    Ok(read)
}

/// What one worker did.
struct Work {
    /// The transfer client's number; `None` for the auditor.
    client: Option<u32>,
    committed: u64,
    failed: u64,
    unknown: u64,
    reads: Vec<BankRead>,
    /// Ids of the acknowledged commits, and of the commits whose outcome is unknown.
    committed_ids: Vec<String>,
    unknown_ids: Vec<String>,
}

/// One transfer client's record, for the checks after the run.
struct ClientRecord {
    client: u32,
    acknowledged: u64,
    unknown: u64,
    committed_ids: Vec<String>,
    unknown_ids: Vec<String>,
}

pub(crate) async fn run(cluster: &mut Cluster, options: &Options) -> Result<ExitCode, String> {
    // `transact` takes an async closure, whose futures Rust cannot yet prove `Send`: the
    // clients run as local tasks on this thread.
    tokio::task::LocalSet::new().run_until(run_local(cluster, options)).await
}

async fn run_local(cluster: &mut Cluster, options: &Options) -> Result<ExitCode, String> {
    let names: Vec<String> = cluster.config.nodes.iter().map(|n| n.name.clone()).collect();
    for name in &names {
        cluster.start_node(name)?;
    }
    for name in &names {
        cluster.wait_healthy(name).await?;
    }
    // Every replica of a replicated coordinator: the clients follow the leader, and move on
    // when the one they use is down.
    let gateways: Arc<[std::net::SocketAddr]> =
        cluster.config.coordinators().map(|n| n.listen).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for c in 0..options.clients {
        let stop = Arc::clone(&stop);
        let mut rng = Rng::new(run_seed(options.seed, u64::from(c) + 1));
        let gateways = Arc::clone(&gateways);
        workers.spawn_local(async move {
            let kv = crate::creds::kv_client_replicas(&gateways);
            let (mut committed, mut failed, mut unknown) = (0u64, 0u64, 0u64);
            let (mut committed_ids, mut unknown_ids) = (Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let n = ACCOUNTS as u64;
                let from = usize::try_from(rng.below(n)).expect("small");
                let to = (from + 1 + usize::try_from(rng.below(n - 1)).expect("small")) % ACCOUNTS;
                let amount = i64::try_from(1 + rng.below(40)).expect("small");
                let result = kv
                    .transact(async |txn| {
                        let a = balance(txn.get_str(account(from)).await?)?;
                        let b = balance(txn.get_str(account(to)).await?)?;
                        if a >= amount {
                            txn.put(account(from), (a - amount).to_string()).await?;
                            txn.put(account(to), (b + amount).to_string()).await?;
                        }
                        let n = txn.get_str(counter(c)).await?.map_or(Ok(0), |v| {
                            v.parse::<u64>().map_err(|_| KvError::Invalid(format!("counter `{v}`")))
                        })?;
                        txn.put(counter(c), (n + 1).to_string()).await?;
                        // Named before the commit is sent (its first read opened the session).
                        Ok(txn.id().map(str::to_owned))
                    })
                    .await;
                match result {
                    Ok(id) => {
                        committed += 1;
                        committed_ids.extend(id);
                    }
                    Err(KvError::OutcomeUnknown(id)) => {
                        unknown += 1;
                        unknown_ids.push(id);
                    }
                    Err(_) => {
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            let reads = Vec::new();
            Work { client: Some(c), committed, failed, unknown, reads, committed_ids, unknown_ids }
        });
    }
    {
        let stop = Arc::clone(&stop);
        let gateways = Arc::clone(&gateways);
        workers.spawn_local(async move {
            let kv = crate::creds::kv_client_replicas(&gateways);
            let mut reads = Vec::new();
            let mut failed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match kv.transact(async |txn| audit(txn).await).await {
                    Ok(read) => reads.push(read),
                    Err(_) => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let (committed_ids, unknown_ids) = (Vec::new(), Vec::new());
            Work {
                client: None,
                committed: 0,
                failed,
                unknown: 0,
                reads,
                committed_ids,
                unknown_ids,
            }
        });
    }

    let started = Instant::now();
    let kills = cluster.kill_cycles(&names, options.cycles, options.seed).await?;
    stop.store(true, Ordering::Relaxed);
    let (mut committed, mut failed, mut reads) = (0, 0, Vec::new());
    let mut clients = Vec::new();
    while let Some(done) = workers.join_next().await {
        let work = done.map_err(|e| format!("a client task failed: {e}"))?;
        committed += work.committed;
        failed += work.failed;
        reads.extend(work.reads);
        if let Some(client) = work.client {
            clients.push(ClientRecord {
                client,
                acknowledged: work.committed,
                unknown: work.unknown,
                committed_ids: work.committed_ids,
                unknown_ids: work.unknown_ids,
            });
        }
    }
    let run_time = started.elapsed();
    let audits = reads.len();

    // Every node is up: a final audit must get through (nothing left prepared) and hold.
    let kv = crate::creds::kv_client_replicas(&gateways);
    let deadline = Instant::now() + Duration::from_secs(30);
    let final_read = loop {
        match kv.transact(async |txn| audit(txn).await).await {
            Ok(read) => break read,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("no audit succeeded 30 s after every node is up: {e}")),
        }
    };
    reads.push(final_read.clone());
    let total = INITIAL * ACCOUNTS as i64;
    let mut violations: Vec<String> =
        check_bank(&reads, ACCOUNTS, total).iter().map(|v| format!("{v:?}")).collect();
    // Durability: every acknowledged commit survived the kills (and nothing more than the
    // unknown outcomes was applied on top).
    let mut counters = Vec::new();
    for record in &clients {
        let (c, acknowledged, unknown) = (record.client, record.acknowledged, record.unknown);
        let count = kv
            .transact(async |txn| txn.get_str(counter(c)).await)
            .await
            .map_err(|e| format!("reading client {c}'s counter: {e}"))?
            .map_or(0, |v| v.parse::<u64>().unwrap_or(u64::MAX));
        if count < acknowledged || count > acknowledged + unknown {
            violations.push(format!(
                "client {c}: counter {count}, but {acknowledged} commits were acknowledged and {unknown} outcomes unknown"
            ));
        }
        counters.push(count);
    }
    let honesty = status_honesty(cluster, &clients, &counters, &mut violations).await?;
    println!(
        "crash-test --kv: {} kill/restart cycles in {:.1} s ({}); {committed} transfers committed, {failed} given up after retries; {audits} audits during the run",
        options.cycles,
        run_time.as_secs_f64(),
        crate::crash_test::kills_summary(&kills),
    );
    let final_total: i64 = final_read.balances.values().sum();
    println!(
        "crash-test --kv: final total {final_total} (expected {total}); nothing left prepared"
    );
    println!(
        "crash-test --kv: status after a last coordinator restart: {} committed, {} aborted, {} forgotten, {} unknown — none contradicting what was applied",
        honesty[0], honesty[1], honesty[2], honesty[3]
    );
    if violations.is_empty() && audits > 0 {
        println!(
            "crash-test --kv: OK — every audit saw the total, no balance went negative, every acknowledged commit survived"
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for v in violations.iter().take(20) {
            println!("VIOLATION: {v}");
        }
        if audits == 0 {
            println!("VIOLATION: no audit succeeded during the run");
        }
        println!("crash-test --kv: failed (logs in {})", cluster.dir.display());
        Ok(ExitCode::from(1))
    }
}

/// Restarts the coordinator (its table gone), then asks `Status` of every transfer the clients
/// named: an acknowledged commit must not read ABORTED (nor anything but COMMITTED or
/// FORGOTTEN), and per client, the unknown outcomes that read COMMITTED must account for its
/// counter beyond the acknowledged commits (FORGOTTEN ones may go either way). Returns how many
/// answers were COMMITTED, ABORTED, FORGOTTEN and still UNKNOWN.
async fn status_honesty(
    cluster: &mut Cluster,
    clients: &[ClientRecord],
    counters: &[u64],
    violations: &mut Vec<String>,
) -> Result<[u32; 4], String> {
    use concord_node::proto::State;
    crate::crash_test::restart_coordinator(cluster).await?;
    let mut rpc = cluster.coordinators();
    let mut counts = [0u32; 4];
    let mut tally = |state: State| match state {
        State::Committed | State::Committing => counts[0] += 1,
        State::Aborted => counts[1] += 1,
        State::Forgotten => counts[2] += 1,
        _ => counts[3] += 1,
    };
    for (record, &count) in clients.iter().zip(counters) {
        for id in &record.committed_ids {
            let state = crate::crash_test::ask_status(&mut rpc, id, violations).await;
            tally(state);
            if !matches!(state, State::Committed | State::Committing | State::Forgotten) {
                violations.push(format!("{id} was acknowledged committed; status says {state:?}"));
            }
        }
        let (mut committed, mut open) = (0u64, 0u64);
        for id in &record.unknown_ids {
            let state = crate::crash_test::ask_status(&mut rpc, id, violations).await;
            tally(state);
            match state {
                State::Committed | State::Committing => committed += 1,
                State::Aborted => {}
                // Forgotten, or still undecided after the retries: either way.
                _ => open += 1,
            }
        }
        let low = record.acknowledged + committed;
        if count < low || count > low + open {
            violations.push(format!(
                "client {}: counter {count}, but {} acknowledged + {committed} unknown outcomes whose status says committed (+ up to {open} forgotten or unknown)",
                record.client, record.acknowledged
            ));
        }
    }
    Ok(counts)
}
