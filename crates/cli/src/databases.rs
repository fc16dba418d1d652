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
use serde_json::{json, Value};

use crate::cluster::runtime;

pub const DEFAULT_DB_COORDINATOR: &str = "127.0.0.1:7800";
/// Operator calls list and read every database; a transaction waits for its prepares.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

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
        DbCommand::Serve { config, data_dir, fault } => serve(&config, data_dir, fault),
        DbCommand::Exec { statements, db, json } => exec(&statements, db, json),
    }
}

fn serve(
    config_path: &Path,
    data_dir: Option<PathBuf>,
    fault: Option<FaultPoint>,
) -> Result<ExitCode, String> {
    let config = DatabasesConfig::load(config_path).map_err(|e| e.to_string())?;
    // Without tokens the API runs statements and resolves transactions for anyone who reaches
    // it: only on loopback.
    if config.tokens.is_empty() && !config.listen.ip().is_loopback() {
        return Err(format!(
            "refusing to listen on {}: it is not loopback and {} has no [[token]] entries, so anyone who reaches it could run statements and resolve transactions (docs/security.md). Add tokens (`concord certs token`), or listen on 127.0.0.1",
            config.listen,
            config_path.display()
        ));
    }
    let data_dir = data_dir
        .unwrap_or_else(|| PathBuf::from("./concord-data").join(format!("db-n{}", config.node_id)));
    let fault = fault.map(|point| Fault { point, resume_file: data_dir.join("RESUME") });
    runtime()?.block_on(async move {
        let coordinator =
            Coordinator::open(&config, &data_dir, fault).await.map_err(|e| e.to_string())?;
        println!(
            "concord: database coordinator n{} (cluster {}, epoch {}) on {}, data in {}",
            config.node_id,
            config.cluster,
            coordinator.epoch(),
            config.listen,
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
        let _recovery =
            coordinator.spawn_recovery(Duration::from_millis(config.recovery.interval_ms));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        println!("concord: ready");
        let tokens = concord_types::tokens::TokenTable::new(&config.tokens);
        tokio::select! {
            () = http::serve(Arc::clone(&coordinator), listener, tokens) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok::<_, String>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn call(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let body = body.map(Value::to_string);
    let token = crate::creds::token();
    let (status, text) =
        http::request(address, method, path, body.as_deref(), token.as_deref(), REQUEST_TIMEOUT)?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| format!("unreadable answer ({status}): {e}: {text}"))?;
    Ok((status, value))
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
