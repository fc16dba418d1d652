//! Client commands: `concord txn submit|ls|show`, `concord transfer`, `concord shard read`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use concord_node::proto::{
    self, client_client::ClientClient, node_client::NodeClient, submit_event, State,
    TransactionInfo,
};
use concord_node::ClientChannel as Channel;

use crate::cluster::runtime;

pub const DEFAULT_COORDINATOR: &str = "127.0.0.1:7700";

#[derive(Debug, Subcommand)]
pub enum TxnCommand {
    /// Run one transaction: each write is SHARD:KEY=DELTA, e.g. shard-1:7=+100 shard-2:9=-100.
    Submit {
        #[arg(required = true)]
        writes: Vec<String>,
        #[arg(long, default_value = DEFAULT_COORDINATOR)]
        coordinator: SocketAddr,
        #[arg(long)]
        json: bool,
    },
    /// Recent and running transactions, newest first; with --in-doubt, the database
    /// coordinator's transactions with a prepared branch or an unapplied decision.
    Ls {
        /// Only transactions not yet finished.
        #[arg(long)]
        running: bool,
        /// In-doubt transactions of the database coordinator (--db).
        #[arg(long)]
        in_doubt: bool,
        /// With --in-doubt: also transactions with a recorded heuristic outcome.
        #[arg(long, requires = "in_doubt")]
        heuristic: bool,
        /// The database coordinator's address (default with --in-doubt: 127.0.0.1:7800).
        #[arg(long)]
        db: Option<SocketAddr>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long, default_value = DEFAULT_COORDINATOR)]
        coordinator: SocketAddr,
        #[arg(long)]
        json: bool,
    },
    /// One transaction: state, each shard's vote and acknowledgement, age. With --db, a
    /// database transaction: every branch with its database, state and age.
    Show {
        id: String,
        /// Ask the database coordinator at this address.
        #[arg(long)]
        db: Option<SocketAddr>,
        #[arg(long, default_value = DEFAULT_COORDINATOR)]
        coordinator: SocketAddr,
        #[arg(long)]
        json: bool,
    },
    /// Decide an in-doubt database transaction by hand. Refuses to contradict the logged
    /// decision (or presumed abort) unless --force, which records a heuristic outcome.
    Resolve {
        id: String,
        #[arg(long, conflicts_with = "abort", required_unless_present = "abort")]
        commit: bool,
        #[arg(long)]
        abort: bool,
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = crate::databases::DEFAULT_DB_COORDINATOR)]
        db: SocketAddr,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ShardCommand {
    /// A shard's values (all, or the keys given), locked keys and in-doubt transactions.
    Read {
        shard: String,
        keys: Vec<u64>,
        #[arg(long, default_value = DEFAULT_COORDINATOR)]
        coordinator: SocketAddr,
        #[arg(long)]
        json: bool,
    },
}

/// Parses `SHARD:KEY=DELTA`.
pub fn parse_write(text: &str) -> Result<proto::WriteOp, String> {
    let bad = || format!("`{text}` is not a write; expected SHARD:KEY=DELTA, e.g. shard-1:7=+100");
    let (shard, rest) = text.rsplit_once(':').ok_or_else(bad)?;
    let (key, delta) = rest.split_once('=').ok_or_else(bad)?;
    let key = key.parse().map_err(|_| bad())?;
    let delta = delta.trim_start_matches('+').parse().map_err(|_| bad())?;
    if shard.is_empty() {
        return Err(bad());
    }
    Ok(proto::WriteOp { shard: shard.to_string(), key, delta })
}

fn status_error(what: &str, status: &tonic::Status) -> String {
    match status.code() {
        tonic::Code::Unavailable if standby(status) => format!("{what}: {}", status.message()),
        tonic::Code::Unavailable => {
            format!("{what}: the node is unreachable ({})", status.message())
        }
        _ => format!("{what}: {}", status.message()),
    }
}

pub fn client(address: SocketAddr) -> ClientClient<Channel> {
    ClientClient::new(crate::creds::channel(address))
        .max_decoding_message_size(concord_node::MAX_MESSAGE_BYTES)
}

pub fn state_name(state: i32) -> &'static str {
    match State::try_from(state).unwrap_or(State::Unspecified) {
        State::Unspecified => "?",
        State::CollectingVotes => "collecting-votes",
        State::Deciding => "deciding",
        State::Committing => "committing",
        State::Committed => "committed",
        State::Aborted => "aborted",
        State::Unknown => "unknown",
        State::Forgotten => "forgotten",
    }
}

fn info_json(info: &TransactionInfo) -> serde_json::Value {
    serde_json::json!({
        "txn": info.txn,
        "state": state_name(info.state),
        "age_ms": info.age_ms,
        "source": info.source,
        "detail": info.detail,
        "branches": info.branches.iter().map(|b| serde_json::json!({
            "shard": b.shard, "vote": b.vote, "acknowledged": b.acknowledged, "writes": b.writes,
        })).collect::<Vec<_>>(),
    })
}

fn print_info(info: &TransactionInfo) {
    println!("transaction {}", info.txn);
    println!("  state    {}", state_name(info.state));
    println!("  age      {} ms", info.age_ms);
    println!("  source   {}", info.source);
    if !info.detail.is_empty() {
        println!("  detail   {}", info.detail);
    }
    for b in &info.branches {
        let vote = if b.vote.is_empty() { "-" } else { &b.vote };
        println!(
            "  branch   {:<10} writes {:<3} vote {:<9} ack {}",
            b.shard,
            b.writes,
            vote,
            if b.acknowledged { "yes" } else { "no" }
        );
    }
}

/// How long a client waits for an outcome. The coordinator's vote timeout bounds it on the
/// server side; this bounds it when the coordinator itself stops answering.
const SUBMIT_DEADLINE: Duration = Duration::from_secs(30);

/// Submits and waits for the outcome; returns the transaction id (if named) and the outcome.
pub async fn submit(
    client: &mut ClientClient<Channel>,
    writes: Vec<proto::WriteOp>,
) -> (Option<String>, Result<TransactionInfo, tonic::Status>) {
    let mut id = None;
    let waited = tokio::time::timeout(
        SUBMIT_DEADLINE,
        submit_stream(client, writes, String::new(), &mut id),
    )
    .await;
    match waited {
        Ok(outcome) => (id, outcome),
        Err(_) => (id, Err(tonic::Status::deadline_exceeded("no outcome within 30 s"))),
    }
}

/// How long a client whose reply was lost asks `Status` before it gives up: past the 12 s after
/// which an id reserved but never submitted is given back (and then reads ABORTED: it never ran).
const RESOLVE_FOR: Duration = Duration::from_secs(15);

/// Names the transaction first (`Reserve`), submits under that name, and if the reply is lost
/// (a dropped connection, a coordinator restart) asks `Status` by the name, bounded, for a
/// definite outcome. Returns the id and the outcome; an error only when the outcome is unknown
/// (or the request was refused).
pub async fn submit_named(
    client: &mut ClientClient<Channel>,
    writes: Vec<proto::WriteOp>,
) -> (Option<String>, Result<TransactionInfo, tonic::Status>) {
    let reserve = tokio::time::timeout(SUBMIT_DEADLINE, client.reserve(proto::ReserveRequest {}));
    let id = match reserve.await {
        Ok(Ok(reply)) => reply.into_inner().txn,
        Ok(Err(status)) => return (None, Err(status)),
        Err(_) => {
            let status = tonic::Status::deadline_exceeded("no reservation within 30 s");
            return (None, Err(status)); // nothing was submitted
        }
    };
    let mut begun = None;
    let waited = tokio::time::timeout(
        SUBMIT_DEADLINE,
        submit_stream(client, writes, id.clone(), &mut begun),
    )
    .await;
    let lost = match waited {
        Ok(Ok(info)) => return (Some(id), Ok(info)),
        Ok(Err(status)) => status,
        Err(_) => tonic::Status::deadline_exceeded("no outcome within 30 s"),
    };
    if is_refusal(&lost) {
        return (Some(id), Err(lost)); // it never ran
    }
    match resolve(client, &id).await {
        Some(info) => (Some(id), Ok(info)),
        None => (Some(id), Err(lost)),
    }
}

/// A Submit the coordinator refused (malformed, or its reserved id no longer held, or sent to
/// a coordinator replica that does not lead): it never ran, so there is no outcome to resolve.
fn is_refusal(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition)
        || standby(status)
}

/// A coordinator replica that does not lead refused the call (it ran nothing, and knows no
/// outcome), whether or not it could name the leader.
pub fn standby(status: &tonic::Status) -> bool {
    status.metadata().get(concord_node::STANDBY_METADATA).is_some()
        || leader_named(status).is_some()
}

/// The leader a standby coordinator replica named in its refusal.
pub fn leader_named(status: &tonic::Status) -> Option<SocketAddr> {
    let named = status.metadata().get(concord_node::LEADER_METADATA)?;
    named.to_str().ok()?.parse().ok()
}

/// Redirects a client follows at most, one call: a leader named by one replica may have lost
/// its leadership by the time the client gets there, but not over and over.
pub const MAX_REDIRECTS: usize = 3;

/// Asks every coordinator replica in turn (as the topology at `at` lists them) for `id`'s
/// outcome until one gives it, for at most [`RESOLVE_FOR`]: the replica that took the
/// transaction may have lost its leadership, or be cut off from the others, and only the
/// leader knows the outcome. None if no replica gave one, or the coordinator is not replicated.
pub async fn resolve_at_replicas(at: SocketAddr, id: &str) -> Option<TransactionInfo> {
    let mut first = client(at);
    let asked = first.topology(proto::TopologyRequest {});
    let nodes =
        tokio::time::timeout(Duration::from_secs(2), asked).await.ok()?.ok()?.into_inner().nodes;
    let replicas: Vec<SocketAddr> = nodes
        .iter()
        .filter(|n| n.role == "coordinator")
        .filter_map(|n| n.address.parse().ok())
        .collect();
    if replicas.len() < 2 {
        return None;
    }
    let deadline = tokio::time::Instant::now() + RESOLVE_FOR;
    loop {
        for &replica in &replicas {
            let mut replica = client(replica);
            let asked = replica.status(proto::StatusRequest { txn: id.to_string() });
            let bounded = tokio::time::Instant::now() + Duration::from_secs(1);
            if let Ok(Ok(reply)) = tokio::time::timeout_at(bounded.min(deadline), asked).await {
                let info = reply.into_inner();
                if info.state == State::Committed as i32 || info.state == State::Aborted as i32 {
                    return Some(info);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asks `Status` of `id` until it is committed or aborted, for at most [`RESOLVE_FOR`].
async fn resolve(client: &mut ClientClient<Channel>, id: &str) -> Option<TransactionInfo> {
    let deadline = tokio::time::Instant::now() + RESOLVE_FOR;
    loop {
        // Each question bounded too: a paused coordinator must not hold the client past it.
        let asked = client.status(proto::StatusRequest { txn: id.to_string() });
        match tokio::time::timeout_at(deadline, asked).await {
            Ok(Ok(reply)) => {
                let info = reply.into_inner();
                if info.state == State::Committed as i32 || info.state == State::Aborted as i32 {
                    return Some(info);
                }
            }
            // A coordinator replica that no longer leads: the answer is at the leader, which
            // this client (bound to one address) cannot ask; its caller can
            // ([`resolve_at_replicas`]).
            Ok(Err(status)) if standby(&status) => return None,
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn submit_stream(
    client: &mut ClientClient<Channel>,
    writes: Vec<proto::WriteOp>,
    txn: String,
    id: &mut Option<String>,
) -> Result<TransactionInfo, tonic::Status> {
    let mut stream = client.submit(proto::SubmitRequest { writes, txn }).await?.into_inner();
    loop {
        match stream.message().await? {
            Some(proto::SubmitEvent { event: Some(submit_event::Event::Begun(txn)) }) => {
                *id = Some(txn);
            }
            Some(proto::SubmitEvent { event: Some(submit_event::Event::Outcome(info)) }) => {
                return Ok(info);
            }
            Some(proto::SubmitEvent { event: None }) => {}
            None => return Err(tonic::Status::unavailable("the coordinator closed the stream")),
        }
    }
}

pub fn run_txn(command: TxnCommand) -> Result<ExitCode, String> {
    let default_db = || crate::databases::DEFAULT_DB_COORDINATOR.parse().expect("a valid address");
    match command {
        TxnCommand::Ls { in_doubt, heuristic, db, json, .. } if in_doubt || db.is_some() => {
            return crate::databases::ls_in_doubt(db.unwrap_or_else(default_db), heuristic, json);
        }
        TxnCommand::Show { id, db: Some(db), json, .. } => {
            return crate::databases::show(db, &id, json);
        }
        TxnCommand::Resolve { id, commit, force, db, json, .. } => {
            return crate::databases::resolve(db, &id, commit, force, json);
        }
        _ => {}
    }
    runtime()?.block_on(async move {
        match command {
            TxnCommand::Submit { writes, coordinator, json } => {
                let writes = writes.iter().map(|w| parse_write(w)).collect::<Result<Vec<_>, _>>()?;
                let mut at = coordinator;
                let (mut id, mut outcome) = submit_named(&mut client(at), writes.clone()).await;
                // A standby replica refuses before anything runs, naming the leader.
                for _ in 0..MAX_REDIRECTS {
                    let Some(leader) = outcome.as_ref().err().and_then(leader_named) else { break };
                    if leader == at {
                        break;
                    }
                    at = leader;
                    (id, outcome) = submit_named(&mut client(at), writes.clone()).await;
                }
                // Ran, outcome not heard from the replica that took it: ask the others.
                if let (Err(status), Some(txn)) = (&outcome, &id) {
                    if !is_refusal(status) {
                        if let Some(info) = resolve_at_replicas(at, txn).await {
                            outcome = Ok(info);
                        }
                    }
                }
                match outcome {
                    Ok(info) => {
                        if json {
                            println!("{}", info_json(&info));
                        } else {
                            println!("{} {}", info.txn, state_name(info.state));
                        }
                        Ok(if info.state == State::Committed as i32 {
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::from(1)
                        })
                    }
                    Err(status) => Err(match id {
                        // Refused before it ran (`submit_named` resolves everything else).
                        Some(_) if is_refusal(&status) => status_error("submit", &status),
                        Some(id) => format!(
                            "{}; outcome unknown: the transaction is {id}, and `concord txn show {id}` will give its outcome",
                            status_error("submit", &status)
                        ),
                        None => status_error("submit", &status),
                    }),
                }
            }
            TxnCommand::Resolve { .. } => unreachable!("handled above"),
            TxnCommand::Ls { running, limit, coordinator, json, .. } => {
                let reply = client(coordinator)
                    .list(proto::ListRequest { limit, running_only: running })
                    .await
                    .map_err(|s| status_error("txn ls", &s))?
                    .into_inner();
                if json {
                    let all: Vec<_> = reply.transactions.iter().map(info_json).collect();
                    println!("{}", serde_json::Value::Array(all));
                } else {
                    println!("{:<16} {:<17} {:>9}  branches (shard:vote/ack)", "TXN", "STATE", "AGE");
                    for t in &reply.transactions {
                        let branches: Vec<String> = t
                            .branches
                            .iter()
                            .map(|b| {
                                let vote = if b.vote.is_empty() { "-" } else { &b.vote };
                                format!("{}:{vote}/{}", b.shard, if b.acknowledged { "ack" } else { "-" })
                            })
                            .collect();
                        println!(
                            "{:<16} {:<17} {:>7}ms  {}",
                            t.txn,
                            state_name(t.state),
                            t.age_ms,
                            branches.join(" ")
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            TxnCommand::Show { id, coordinator, json, .. } => {
                let info = client(coordinator)
                    .status(proto::StatusRequest { txn: id.clone() })
                    .await
                    .map_err(|s| status_error(&format!("txn show {id}"), &s))?
                    .into_inner();
                if json {
                    println!("{}", info_json(&info));
                } else {
                    print_info(&info);
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

pub fn run_transfer(
    from: &str,
    to: &str,
    amount: i64,
    coordinator: SocketAddr,
) -> Result<ExitCode, String> {
    if amount <= 0 {
        return Err("--amount must be positive".into());
    }
    let debit = parse_write(&format!("{from}=-{amount}"))
        .map_err(|_| format!("--from `{from}`: expected SHARD:KEY, e.g. shard-1:7"))?;
    let credit = parse_write(&format!("{to}=+{amount}"))
        .map_err(|_| format!("--to `{to}`: expected SHARD:KEY, e.g. shard-2:9"))?;
    run_txn(TxnCommand::Submit {
        writes: vec![
            format!("{}:{}={}", debit.shard, debit.key, debit.delta),
            format!("{}:{}=+{}", credit.shard, credit.key, credit.delta),
        ],
        coordinator,
        json: false,
    })
}

/// The address of node `name`, from the coordinator's topology.
pub async fn node_address(coordinator: SocketAddr, name: &str) -> Result<SocketAddr, String> {
    let topology = client(coordinator)
        .topology(proto::TopologyRequest {})
        .await
        .map_err(|s| status_error("topology", &s))?
        .into_inner();
    let node = topology.nodes.iter().find(|n| n.name == name).ok_or_else(|| {
        let names: Vec<&str> = topology.nodes.iter().map(|n| n.name.as_str()).collect();
        format!("no node `{name}`; the cluster has {}", names.join(", "))
    })?;
    node.address.parse().map_err(|_| format!("bad address `{}` for {name}", node.address))
}

pub async fn read_shard(
    address: SocketAddr,
    keys: Vec<u64>,
) -> Result<proto::ReadShardReply, String> {
    let mut request = tonic::Request::new(proto::ReadShardRequest { keys });
    request.set_timeout(Duration::from_secs(10));
    Ok(NodeClient::new(crate::creds::channel(address))
        .max_decoding_message_size(concord_node::MAX_MESSAGE_BYTES)
        .read_shard(request)
        .await
        .map_err(|s| status_error("read", &s))?
        .into_inner())
}

pub fn run_shard(command: ShardCommand) -> Result<ExitCode, String> {
    let ShardCommand::Read { shard, keys, coordinator, json } = command;
    runtime()?.block_on(async move {
        let address = node_address(coordinator, &shard).await?;
        let reply = read_shard(address, keys).await?;
        if json {
            let values: serde_json::Map<String, serde_json::Value> =
                reply.values.iter().map(|kv| (kv.key.to_string(), kv.value.into())).collect();
            println!(
                "{}",
                serde_json::json!({"shard": shard, "values": values, "locked_keys": reply.locked_keys, "in_doubt": reply.in_doubt})
            );
        } else {
            println!("{shard}: {} keys, {} locked, {} in doubt", reply.values.len(), reply.locked_keys, reply.in_doubt.len());
            for kv in &reply.values {
                println!("  {:>12} = {}", kv.key, kv.value);
            }
            for txn in &reply.in_doubt {
                println!("  in doubt: {txn}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_parse_with_signs_and_refuse_the_rest() {
        let w = parse_write("shard-1:7=+100").unwrap();
        assert_eq!((w.shard.as_str(), w.key, w.delta), ("shard-1", 7, 100));
        assert_eq!(parse_write("s:1=-5").unwrap().delta, -5);
        for bad in ["shard-1:7", "shard-1=5", ":1=5", "s:x=1", "s:1=y"] {
            assert!(parse_write(bad).is_err(), "{bad}");
        }
    }
}
