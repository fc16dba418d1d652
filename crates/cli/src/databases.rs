//! Real databases as participants: `concord db serve|exec`, and the operator tools
//! `concord txn ls --in-doubt`, `txn show --db`, `txn resolve`, `concord recover`.
//!
//! The database coordinator is its own process (`concord db serve --config databases.toml`);
//! these commands speak its small HTTP API (see `concord_db_coordinator::http`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use concord_db_coordinator::config::DatabasesConfig;
use concord_db_coordinator::coordinator::{Coordinator, Fault, FaultPoint};
use concord_db_coordinator::http;
use concord_db_coordinator::replicated::ReplicatedCoordinator;
use serde_json::{json, Value};

use crate::cluster::runtime;

pub const DEFAULT_DB_COORDINATOR: &str = "127.0.0.1:7800";
/// Operator calls list and read every database; a transaction waits for its prepares.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Redirects and retries one call follows before giving up (a leader changing meanwhile).
const MAX_REDIRECTS: usize = 50;
/// How long one call waits for a replicated coordinator to elect a leader.
const ELECTION_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Run the database coordinator: 2PC over PostgreSQL/MariaDB, recovery, HTTP API and
    /// /metrics on the configured address (see docs/database-participants.md).
    Serve {
        #[arg(long, default_value = "databases.toml")]
        config: PathBuf,
        /// Default: ./concord-data/db-nNODE_ID.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Test hook: pause-after-prepare or pause-after-decision; the coordinator waits at
        /// that point until DATA_DIR/RESUME exists.
        #[arg(long, hide = true)]
        fault: Option<FaultPoint>,
        /// Run as this replica of a replicated coordinator (the configuration's `[[replica]]`
        /// entries): the replicas elect a leader, which runs the coordinator; the others
        /// redirect clients to it. Default data directory: ./concord-data/db-nNODE_ID-rID.
        #[arg(long)]
        replica: Option<u32>,
        /// With --replica, on an empty data directory: join the running replicas instead of
        /// starting a new cluster. The replica votes for no one until the leader adds it
        /// (`concord db add-replica ID`). How a replica whose directory was lost comes back.
        #[arg(long, requires = "replica")]
        join: bool,
        /// With --replica and no `[tls]`: allow replica links on addresses other than
        /// loopback, as plain TCP (anyone who reaches them could rewrite decisions).
        #[arg(long, requires = "replica")]
        insecure: bool,
    },
    /// Add replica ID (a `[[replica]]` of the configuration, started with `--join`) to a
    /// replicated coordinator's voters: the leader catches it up, then adds it.
    AddReplica {
        id: u32,
        #[arg(long, default_value = DEFAULT_DB_COORDINATOR)]
        db: SocketAddr,
    },
    /// Take replica ID out of a replicated coordinator's voters (before replacing a replica
    /// whose directory was lost, say).
    RemoveReplica {
        id: u32,
        #[arg(long, default_value = DEFAULT_DB_COORDINATOR)]
        db: SocketAddr,
    },
    /// Run statements atomically across databases: each argument is DATABASE=STATEMENT,
    /// e.g. ledger="UPDATE accounts SET balance = balance - 10 WHERE id = 1".
    Exec {
        #[arg(required = true)]
        statements: Vec<String>,
        #[arg(long, default_value = DEFAULT_DB_COORDINATOR)]
        db: SocketAddr,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: DbCommand) -> Result<ExitCode, String> {
    match command {
        DbCommand::Serve { config, data_dir, fault, replica, join, insecure } => {
            let replica = replica.map(|id| Replicated { id, join, insecure, fault: None });
            serve(&config, data_dir, fault, replica)
        }
        DbCommand::AddReplica { id, db } => change_replicas(db, id, "add"),
        DbCommand::RemoveReplica { id, db } => change_replicas(db, id, "remove"),
        DbCommand::Exec { statements, db, json } => exec(&statements, db, json),
    }
}

fn serve(
    config_path: &Path,
    data_dir: Option<PathBuf>,
    fault: Option<FaultPoint>,
    replica: Option<Replicated>,
) -> Result<ExitCode, String> {
    let config = DatabasesConfig::load(config_path).map_err(|e| e.to_string())?;
    let listen = config.listen_of(replica.as_ref().map(|r| r.id))?;
    // Without tokens the API runs statements and resolves transactions for anyone who reaches
    // it: only on loopback.
    if config.tokens.is_empty() && !listen.ip().is_loopback() {
        return Err(format!(
            "refusing to listen on {listen}: it is not loopback and {} has no [[token]] entries, so anyone who reaches it could run statements and resolve transactions (docs/security.md). Add tokens (`concord certs token`), or listen on 127.0.0.1",
            config_path.display()
        ));
    }
    let data_dir = data_dir.unwrap_or_else(|| {
        let name = match &replica {
            Some(r) => format!("db-n{}-r{}", config.node_id, r.id),
            None => format!("db-n{}", config.node_id),
        };
        PathBuf::from("./concord-data").join(name)
    });
    let fault = fault.map(|point| Fault { point, resume_file: data_dir.join("RESUME") });
    let tokens = concord_types::tokens::TokenTable::new(&config.tokens);
    match replica {
        Some(replica) => {
            let replica = Replicated { fault, ..replica };
            runtime()?.block_on(serve_replica(config, replica, listen, &data_dir, tokens))
        }
        None => runtime()?.block_on(serve_single(config, listen, &data_dir, fault, tokens)),
    }?;
    Ok(ExitCode::SUCCESS)
}

async fn serve_single(
    config: DatabasesConfig,
    listen: SocketAddr,
    data_dir: &Path,
    fault: Option<Fault>,
    tokens: concord_types::tokens::TokenTable,
) -> Result<(), String> {
    let coordinator =
        Coordinator::open(&config, data_dir, fault).await.map_err(|e| e.to_string())?;
    println!(
        "concord: database coordinator n{} (cluster {}, epoch {}) on {listen}, data in {}",
        config.node_id,
        config.cluster,
        coordinator.epoch(),
        data_dir.display()
    );
    for db in &config.databases {
        println!("  {:<12} {:?}", db.name, db.kind);
    }
    let report = coordinator.reconcile(false).await;
    for error in &report.errors {
        eprintln!("concord: recovery: {error}");
    }
    for action in &report.actions {
        println!("concord: recovery: {} — {}", action.action, action.result);
    }
    let _recovery = coordinator.spawn_recovery(Duration::from_millis(config.recovery.interval_ms));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    println!("concord: ready");
    tokio::select! {
        () = http::serve(Arc::clone(&coordinator), listener, tokens) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// One replica of a replicated coordinator: its replica link, its HTTP API, and the loop that
/// starts the coordinator whenever it leads.
/// Which replica this process is, and how it starts.
struct Replicated {
    id: u32,
    /// Join running replicas (an empty directory, waiting to be added) instead of starting a
    /// new cluster.
    join: bool,
    /// Plain replica links off loopback allowed (no `[tls]`).
    insecure: bool,
    fault: Option<Fault>,
}

/// How replica `id`'s links are dialled and let in: mutual TLS under `[tls]` (only the
/// configured replicas' certificates); otherwise plain TCP, refused on any address but
/// loopback unless `insecure` — whoever reaches a replica link can vote and append entries.
fn replica_links(
    config: &DatabasesConfig,
    id: u32,
    insecure: bool,
) -> Result<Option<concord_node::tls::ReplicaLinks>, String> {
    let Some(tls) = &config.tls else {
        let exposed = config.replicas.iter().find(|r| !r.raft.ip().is_loopback());
        if let (Some(exposed), false) = (exposed, insecure) {
            return Err(format!(
                "replica {}'s replica link {} is not loopback and there is no [tls]: anyone who \
                 reaches it could vote and rewrite decisions. Add [tls] (`concord certs init \
                 --db CONFIG`), keep the links on 127.0.0.1, or pass --insecure to accept that",
                exposed.id, exposed.raft
            ));
        }
        return Ok(None);
    };
    let files = concord_node::tls::CertFiles { dir: tls.dir.clone() };
    let name = DatabasesConfig::replica_cert_name(id);
    let loaded = concord_node::tls::NodeTls::load(
        &files,
        &config.replica_cluster(),
        &name,
        concord_types::NodeId(id),
    )
    .map_err(|why| format!("[tls]: {why}"))?;
    let replicas = config.replicas.iter().map(|r| concord_types::NodeId(r.id));
    Ok(Some(concord_node::tls::ReplicaLinks::new(Arc::new(loaded), replicas)))
}

async fn serve_replica(
    config: DatabasesConfig,
    replica: Replicated,
    listen: SocketAddr,
    data_dir: &Path,
    tokens: concord_types::tokens::TokenTable,
) -> Result<(), String> {
    let Replicated { id, join, insecure, fault } = replica;
    config.replica(id)?;
    let links = replica_links(&config, id, insecure)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (node_id, cluster) = (config.node_id, config.cluster.clone());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("replica {id}: cannot listen on {listen}: {e}"))?;
    let watch = stopped.clone();
    let replica = match links {
        Some(tls) => {
            ReplicatedCoordinator::start(config, id, join, data_dir, (fault, tls), watch).await?
        }
        None => {
            let plain = concord_replication::PlainTcp;
            ReplicatedCoordinator::start(config, id, join, data_dir, (fault, plain), watch).await?
        }
    };
    println!(
        "concord: database coordinator n{node_id} (cluster {cluster}), replica {id} on {listen}, data in {}",
        data_dir.display()
    );
    let following = tokio::spawn(Arc::clone(&replica).follow(stopped));
    println!("concord: ready");
    tokio::select! {
        () = http::serve_replica(Arc::clone(&replica), listener, tokens) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = stop.send(true);
    let _ = following.await;
    replica.shutdown().await;
    Ok(())
}

/// Calls the database coordinator at `address`, following a standby replica's redirect to
/// the leader (307) and waiting out an election (503 from a standby), bounded: a standby ran
/// nothing, so the same request goes on.
fn call(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let body = body.map(Value::to_string);
    let token = crate::creds::token();
    let mut address = address;
    let deadline = std::time::Instant::now() + ELECTION_WAIT;
    for _ in 0..MAX_REDIRECTS {
        let (status, text) = http::request(
            address,
            method,
            path,
            body.as_deref(),
            token.as_deref(),
            REQUEST_TIMEOUT,
        )?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| format!("unreadable answer ({status}): {e}: {text}"))?;
        let standby = value["standby"] == true;
        match status {
            307 if standby => {
                address = value["leader"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| format!("a redirect without a leader's address: {value}"))?;
            }
            503 if standby && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            _ => return Ok((status, value)),
        }
    }
    Err(format!("no leader answered after {MAX_REDIRECTS} redirects (last asked {address})"))
}

fn refused(status: u16, value: &Value) -> Option<String> {
    (status != 200).then(|| value["error"].as_str().unwrap_or("request failed").to_string())
}

fn exec(statements: &[String], address: SocketAddr, json: bool) -> Result<ExitCode, String> {
    let mut branches: Vec<(String, Vec<String>)> = Vec::new();
    for item in statements {
        let (database, sql) =
            item.split_once('=').ok_or_else(|| format!("`{item}` is not DATABASE=STATEMENT"))?;
        match branches.iter_mut().find(|(d, _)| d == database) {
            Some((_, list)) => list.push(sql.to_string()),
            None => branches.push((database.to_string(), vec![sql.to_string()])),
        }
    }
    let body = json!({
        "branches": branches.iter().map(|(d, s)| json!({"database": d, "statements": s})).collect::<Vec<_>>()
    });
    let (status, value) = call(address, "POST", "/v1/transactions", Some(&body))?;
    if let Some(error) = refused(status, &value) {
        return Err(error);
    }
    if json {
        println!("{value}");
    } else {
        print_txn(&value);
    }
    Ok(if value["state"] == "committed" { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn age(value: &Value) -> String {
    value.as_u64().map_or_else(String::new, |ms| {
        #[allow(clippy::cast_precision_loss)] // display only
        let seconds = ms as f64 / 1000.0;
        format!("{seconds:.1} s")
    })
}

fn print_txn(t: &Value) {
    let txn = t["txn"].as_str().unwrap_or("-");
    println!("transaction {txn}");
    println!("  state      {}", t["state"].as_str().unwrap_or("?"));
    if let Some(by) = t["decided_by"].as_str() {
        println!("  decided by {by}");
    }
    if !t["age_ms"].is_null() {
        println!("  age        {}", age(&t["age_ms"]));
    }
    if let Some(reason) = t["reason"].as_str() {
        println!("  reason     {reason}");
    }
    for b in t["branches"].as_array().into_iter().flatten() {
        println!(
            "  branch     {:<12} {:<32} {:<12} {}{}",
            b["database"].as_str().unwrap_or(""),
            b["gid"].as_str().unwrap_or(""),
            b["state"].as_str().unwrap_or(""),
            if b["age_ms"].is_null() {
                String::new()
            } else {
                format!("age {}", age(&b["age_ms"]))
            },
            b["detail"].as_str().map(|d| format!(" ({d})")).unwrap_or_default(),
        );
    }
    for h in t["heuristics"].as_array().into_iter().flatten() {
        println!(
            "  HEURISTIC  {} {}: {} although the log says {}{}",
            h["database"].as_str().unwrap_or(""),
            h["gid"].as_str().unwrap_or(""),
            h["actual"].as_str().unwrap_or(""),
            h["logged"].as_str().unwrap_or(""),
            if h["forced_by_operator"].as_bool() == Some(true) {
                " (forced by an operator)"
            } else {
                " (detected)"
            },
        );
    }
}

/// `concord txn ls --in-doubt [--heuristic]`.
pub fn ls_in_doubt(address: SocketAddr, heuristic: bool, json: bool) -> Result<ExitCode, String> {
    let path = if heuristic {
        "/v1/transactions?in_doubt=true&heuristic=true"
    } else {
        "/v1/transactions?in_doubt=true"
    };
    let (status, value) = call(address, "GET", path, None)?;
    if let Some(error) = refused(status, &value) {
        return Err(error);
    }
    if json {
        println!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    for error in value["errors"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", error.as_str().unwrap_or_default());
    }
    let txns = value["transactions"].as_array().cloned().unwrap_or_default();
    if txns.is_empty() {
        println!("no in-doubt transactions");
    } else {
        println!("{:<18} {:<20} {:>10}  branches (database:state)", "TXN", "STATE", "AGE");
    }
    for t in &txns {
        let branches: Vec<String> = t["branches"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| {
                format!(
                    "{}:{}",
                    b["database"].as_str().unwrap_or(""),
                    b["state"].as_str().unwrap_or("")
                )
            })
            .collect();
        let oldest = t["branches"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["age_ms"].as_u64())
            .max();
        let shown_age = if t["age_ms"].is_null() {
            oldest.map(Value::from).unwrap_or(Value::Null)
        } else {
            t["age_ms"].clone()
        };
        println!(
            "{:<18} {:<20} {:>10}  {}",
            t["txn"].as_str().unwrap_or(""),
            t["state"].as_str().unwrap_or(""),
            age(&shown_age),
            branches.join(" ")
        );
        // What each prepared branch holds locked while it waits (where its database says).
        for b in t["branches"].as_array().into_iter().flatten() {
            let locks: Vec<&str> =
                b["locks"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            if !locks.is_empty() {
                println!(
                    "{:>20} {} holds {}",
                    "",
                    b["database"].as_str().unwrap_or(""),
                    locks.join(", ")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `concord txn show ID --db ADDR`.
pub fn show(address: SocketAddr, id: &str, json: bool) -> Result<ExitCode, String> {
    let (status, value) = call(address, "GET", &format!("/v1/transactions/{id}"), None)?;
    if let Some(error) = refused(status, &value) {
        return Err(error);
    }
    if json {
        println!("{value}");
    } else {
        print_txn(&value);
    }
    Ok(ExitCode::SUCCESS)
}

/// `concord txn resolve ID --commit|--abort [--force]`.
pub fn resolve(
    address: SocketAddr,
    id: &str,
    commit: bool,
    force: bool,
    json: bool,
) -> Result<ExitCode, String> {
    let body = json!({ "decision": if commit { "commit" } else { "abort" }, "force": force });
    let (status, value) =
        call(address, "POST", &format!("/v1/transactions/{id}/resolve"), Some(&body))?;
    if let Some(error) = refused(status, &value) {
        return Err(error);
    }
    if json {
        println!("{value}");
    } else {
        print_actions(&value["actions"]);
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks the leader (found by following redirects from `address`) to add or remove replica
/// `id`; says the voters afterwards.
fn change_replicas(address: SocketAddr, id: u32, change: &str) -> Result<ExitCode, String> {
    let body = json!({ "id": id });
    let (status, value) = call(address, "POST", &format!("/v1/replicas/{change}"), Some(&body))?;
    if let Some(error) = refused(status, &value) {
        return Err(error);
    }
    let voters: Vec<String> = value["voters"]
        .as_array()
        .map(|v| v.iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    let done = if change == "add" { "added" } else { "removed" };
    println!("replica {id} {done}; the voting replicas are now {}", voters.join(", "));
    Ok(ExitCode::SUCCESS)
}

fn print_actions(actions: &Value) {
    let actions = actions.as_array().cloned().unwrap_or_default();
    if actions.is_empty() {
        println!("nothing to do");
    }
    for a in &actions {
        println!("{} — {}", a["action"].as_str().unwrap_or(""), a["result"].as_str().unwrap_or(""));
    }
}

/// `concord recover [--dry-run]`.
pub fn recover(address: SocketAddr, dry_run: bool, json: bool) -> Result<ExitCode, String> {
    let (status, value) =
        call(address, "POST", "/v1/recover", Some(&json!({ "dry_run": dry_run })))?;
    if let Some(error) = refused(status, &value) {
        return Err(error);
    }
    if json {
        println!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    for error in value["errors"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", error.as_str().unwrap_or_default());
    }
    if dry_run {
        println!("dry run: nothing was changed");
    }
    print_actions(&value["actions"]);
    Ok(ExitCode::SUCCESS)
}
