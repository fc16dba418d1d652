//! `concord kv`: the key-value store from the command line. Every command is one transaction,
//! retried on conflicts; `txn` runs a small script of operations atomically.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Subcommand;
use concord_client::{Isolation, KvError, Txn};

/// Where `concord dev` serves the key-value store.
pub const DEFAULT_GATEWAY: &str = "127.0.0.1:7710";

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print a key's value.
    Get { key: String },
    /// Set a key.
    Put { key: String, value: String },
    /// Delete a key.
    Del { key: String },
    /// Print keys from START (inclusive) to END (exclusive; default: to the end).
    Scan {
        #[arg(default_value = "")]
        start: String,
        end: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Run operations atomically, e.g. "get a; put a 2; del b; scan a c". `-` reads the
    /// script from standard input (one operation per line or `;`-separated).
    Txn { script: String },
}

#[derive(Debug, PartialEq, Eq)]
enum Op {
    Get(String),
    Put(String, String),
    Del(String),
    Scan(String, Option<String>),
}

fn parse_script(script: &str) -> Result<Vec<Op>, String> {
    let mut ops = Vec::new();
    for (i, part) in script.split([';', '\n']).enumerate() {
        let words: Vec<&str> = part.split_whitespace().collect();
        let op = match words.as_slice() {
            [] => continue,
            ["get", key] => Op::Get((*key).to_string()),
            ["put", key, value @ ..] if !value.is_empty() => {
                Op::Put((*key).to_string(), value.join(" "))
            }
            ["del", key] => Op::Del((*key).to_string()),
            ["scan"] => Op::Scan(String::new(), None),
            ["scan", start] => Op::Scan((*start).to_string(), None),
            ["scan", start, end] => Op::Scan((*start).to_string(), Some((*end).to_string())),
            _ => {
                return Err(format!(
                    "operation {} `{}`: expected get KEY | put KEY VALUE | del KEY | scan [START [END]]",
                    i + 1,
                    part.trim()
                ))
            }
        };
        ops.push(op);
    }
    if ops.is_empty() {
        return Err("the script has no operations".into());
    }
    Ok(ops)
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the operations in `txn`, returning the lines to print.
async fn run_ops(txn: &mut Txn, ops: &[Op]) -> Result<Vec<String>, KvError> {
    let mut lines = Vec::new();
    for op in ops {
        match op {
            Op::Get(key) => match txn.get(key).await? {
                Some(value) => lines.push(format!("{key} = {}", show(&value))),
                None => lines.push(format!("{key} (not found)")),
            },
            Op::Put(key, value) => {
                txn.put(key, value).await?;
                lines.push(format!("put {key}"));
            }
            Op::Del(key) => {
                txn.delete(key).await?;
                lines.push(format!("deleted {key}"));
            }
            Op::Scan(start, end) => {
                let (rows, more) = txn.scan(start, end.as_deref().map(str::as_bytes), 100).await?;
                for (key, value) in rows {
                    lines.push(format!("{} = {}", show(&key), show(&value)));
                }
                if more {
                    lines.push("… (more; narrow the range)".into());
                }
            }
        }
    }
    Ok(lines)
}

pub fn run(gateway: SocketAddr, isolation: &str, command: KvCommand) -> Result<ExitCode, String> {
    let isolation = match isolation {
        "serializable" => Isolation::Serializable,
        "snapshot" => Isolation::Snapshot,
        other => return Err(format!("--isolation {other}: expected serializable or snapshot")),
    };
    let (ops, verbose) = match command {
        KvCommand::Get { key } => (vec![Op::Get(key)], false),
        KvCommand::Put { key, value } => (vec![Op::Put(key, value)], false),
        KvCommand::Del { key } => (vec![Op::Del(key)], false),
        KvCommand::Scan { start, end, limit } => {
            return scan(gateway, isolation, &start, end.as_deref(), limit);
        }
        KvCommand::Txn { script } => {
            let script = if script == "-" {
                std::io::read_to_string(std::io::stdin()).map_err(|e| format!("stdin: {e}"))?
            } else {
                script
            };
            (parse_script(&script)?, true)
        }
    };
    let result = crate::cluster::runtime()?.block_on(async {
        let client = crate::creds::kv_client(gateway).with_isolation(isolation);
        client
            .transact(async |txn| run_ops(txn, &ops).await)
            .await
            .map_err(|e| explain(&e, gateway))
    })?;
    let quiet = !verbose && matches!(ops.as_slice(), [Op::Put(..) | Op::Del(_)]);
    for line in result {
        if !quiet {
            println!("{line}");
        }
    }
    // A write says it happened: silence on success read as "did anything happen?".
    if verbose || quiet {
        println!("committed");
    }
    Ok(ExitCode::SUCCESS)
}

fn scan(
    gateway: SocketAddr,
    isolation: Isolation,
    start: &str,
    end: Option<&str>,
    limit: u32,
) -> Result<ExitCode, String> {
    let (rows, more) = crate::cluster::runtime()?.block_on(async {
        let client = crate::creds::kv_client(gateway).with_isolation(isolation);
        client
            .transact(async |txn| txn.scan(start, end.map(str::as_bytes), limit).await)
            .await
            .map_err(|e| explain(&e, gateway))
    })?;
    for (key, value) in rows {
        println!("{} = {}", show(&key), show(&value));
    }
    if more {
        println!("… (more than {limit}; use --limit or narrow the range)");
    }
    Ok(ExitCode::SUCCESS)
}

fn explain(error: &KvError, gateway: SocketAddr) -> String {
    match error {
        KvError::Unavailable(_) => format!(
            "{error}\n(is a key-value cluster serving at {gateway}? `concord dev` starts one there)"
        ),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_parse_and_errors_name_the_operation() {
        assert_eq!(
            parse_script("put a hello world; get a\ndel b; scan; scan a c").unwrap(),
            vec![
                Op::Put("a".into(), "hello world".into()),
                Op::Get("a".into()),
                Op::Del("b".into()),
                Op::Scan(String::new(), None),
                Op::Scan("a".into(), Some("c".into())),
            ]
        );
        let error = parse_script("get a; frob b").unwrap_err();
        assert!(error.contains("operation 2 `frob b`"), "{error}");
        assert!(parse_script(" ; ").is_err());
    }
}
