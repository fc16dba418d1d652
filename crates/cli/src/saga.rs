//! `concord saga`: run the orchestrator, start sagas, list them, show one's timeline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use serde_json::Value;

use crate::cluster::runtime;

pub const DEFAULT_ORCHESTRATOR: &str = "127.0.0.1:7800";

#[derive(Debug, Subcommand)]
pub enum SagaCommand {
    /// Run the saga orchestrator: its log under --data-dir, its API on --listen.
    Serve {
        #[arg(long, default_value = DEFAULT_ORCHESTRATOR)]
        listen: SocketAddr,
        #[arg(long, default_value = "./concord-data/orchestrator")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        checkpoint_every: u64,
        /// Keep saga state in this PostgreSQL database (`host=… user=… dbname=…`) instead of
        /// the log, so several orchestrators share the work and finish each other's sagas.
        #[arg(long)]
        postgres: Option<String>,
        /// This orchestrator's name in the shared store; keep it across restarts.
        #[arg(long, default_value = "orchestrator-1")]
        instance: String,
        /// How long a saga stays with an orchestrator that stopped renewing it.
        #[arg(long, default_value_t = 10_000)]
        lease_ms: u64,
        /// Comma-separated host:port the steps may call (e.g. 127.0.0.1:9000,pay.internal:443);
        /// a saga naming any other is refused. None given: every saga is refused.
        #[arg(long, value_delimiter = ',')]
        step_hosts: Vec<String>,
        /// A TOML file of `[[token]]` entries (as in concord.toml): with any, every request
        /// but /health needs a token (docs/security.md).
        #[arg(long)]
        tokens: Option<PathBuf>,
    },
    /// Start a saga described by a JSON file (or - for standard input); see docs/sagas.md.
    Start {
        file: PathBuf,
        /// Wait for the outcome and print the timeline.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = DEFAULT_ORCHESTRATOR)]
        orchestrator: SocketAddr,
    },
    /// Sagas the orchestrator remembers, newest id last.
    Ls {
        /// Only those still running, compensating or confirming.
        #[arg(long)]
        running: bool,
        #[arg(long, default_value = DEFAULT_ORCHESTRATOR)]
        orchestrator: SocketAddr,
        #[arg(long)]
        json: bool,
    },
    /// One saga: its state and a timeline of every call with attempts, times and results.
    Show {
        id: String,
        #[arg(long, default_value = DEFAULT_ORCHESTRATOR)]
        orchestrator: SocketAddr,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: SagaCommand) -> Result<ExitCode, String> {
    match command {
        SagaCommand::Serve {
            listen,
            data_dir,
            checkpoint_every,
            postgres,
            instance,
            lease_ms,
            step_hosts,
            tokens,
        } => {
            let tokens = match tokens {
                Some(path) => load_tokens(&path)?,
                None => Vec::new(),
            };
            if tokens.is_empty() && !listen.ip().is_loopback() {
                return Err(format!(
                    "refusing to listen on {listen}: it is not loopback and no --tokens are given, so anyone who reaches it could start sagas (docs/security.md)"
                ));
            }
            if step_hosts.is_empty() {
                eprintln!("concord: no --step-hosts: every saga will be refused");
            }
            match &postgres {
                Some(url) => println!("concord: saga orchestrator {instance} on {listen}, sagas in PostgreSQL ({url})"),
                None => println!("concord: saga orchestrator on {listen}, data in {}", data_dir.display()),
            }
            let postgres = postgres.map(|url| concord_orchestrator::PostgresOptions {
                url,
                instance,
                lease: Duration::from_millis(lease_ms.max(100)),
            });
            let options = concord_orchestrator::Options {
                postgres,
                listen,
                data_dir,
                checkpoint_every,
                step_hosts: concord_orchestrator::StepHosts::Only(step_hosts),
                tokens,
            };
            runtime()?.block_on(async move {
                let (stop, stopped) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    let _ = stop.send(true);
                });
                concord_orchestrator::serve(options, stopped).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        SagaCommand::Start { file, wait, orchestrator } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).map_err(|e| e.to_string())?
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?
            };
            let mut request: Value = serde_json::from_str(&text)
                .map_err(|e| format!("{}: not JSON: {e}", file.display()))?;
            if wait {
                request["wait"] = Value::Bool(true);
            }
            // Waiting is bounded by the saga's own deadline and compensations; allow for both.
            let timeout = Duration::from_secs(if wait { 600 } else { 10 });
            let answer =
                call(orchestrator, "POST", "/v1/sagas", Some(&request.to_string()), timeout)?;
            if wait {
                print_saga(&answer);
            } else {
                println!(
                    "{} {}",
                    answer["id"].as_str().unwrap_or("?"),
                    answer["state"].as_str().unwrap_or("?")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SagaCommand::Ls { running, orchestrator, json } => {
            let path = if running { "/v1/sagas?running" } else { "/v1/sagas" };
            let answer = call(orchestrator, "GET", path, None, Duration::from_secs(10))?;
            if json {
                println!("{answer}");
                return Ok(ExitCode::SUCCESS);
            }
            println!("{:<32} {:<14} {:<13} NOW", "SAGA", "NAME", "STATE");
            for saga in answer["sagas"].as_array().into_iter().flatten() {
                let now = saga["current"].as_object().map_or(String::new(), |c| {
                    format!(
                        "{} {} #{}",
                        c["step"].as_str().unwrap_or(""),
                        c["phase"].as_str().unwrap_or(""),
                        c["attempt"]
                    )
                });
                println!(
                    "{:<32} {:<14} {:<13} {now}",
                    saga["id"].as_str().unwrap_or(""),
                    saga["name"].as_str().unwrap_or(""),
                    saga["state"].as_str().unwrap_or("")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SagaCommand::Show { id, orchestrator, json } => {
            let answer = call(
                orchestrator,
                "GET",
                &format!("/v1/sagas/{id}"),
                None,
                Duration::from_secs(10),
            )?;
            if json {
                println!("{answer}");
            } else {
                print_saga(&answer);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn call(
    orchestrator: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Value, String> {
    let bearer = crate::creds::token().map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> =
        bearer.as_deref().map(|b| ("Authorization", b)).into_iter().collect();
    let (status, body) =
        concord_http::request_with(orchestrator, method, path, &headers, body, timeout)
            .map_err(|e| format!("saga orchestrator: {e} (is `concord saga serve` running?)"))?;
    let value: Value = serde_json::from_str(&body)
        .map_err(|_| format!("saga orchestrator answered {status}: {body}"))?;
    if !(200..300).contains(&status) {
        return Err(value["error"].as_str().map_or_else(|| body.clone(), str::to_string));
    }
    Ok(value)
}

fn print_saga(saga: &Value) {
    let reason = saga["reason"]
        .as_str()
        .filter(|r| !r.is_empty())
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    println!(
        "{} {} [{}] {}{reason}",
        saga["id"].as_str().unwrap_or(""),
        saga["name"].as_str().unwrap_or(""),
        saga["kind"].as_str().unwrap_or(""),
        saga["state"].as_str().unwrap_or("")
    );
    for entry in saga["timeline"].as_array().into_iter().flatten() {
        let took = entry["took_ms"].as_u64().map_or(String::new(), |ms| format!(" in {ms} ms"));
        println!(
            "  +{:>6} ms  {:<16} {:<13} #{:<3} {}{took}",
            entry["at_ms"].as_u64().unwrap_or(0),
            entry["step"].as_str().unwrap_or(""),
            entry["phase"].as_str().unwrap_or(""),
            entry["attempt"].as_u64().unwrap_or(0),
            entry["result"].as_str().unwrap_or("")
        );
    }
}

/// `[[token]]` entries from a TOML file (the same form as in `concord.toml`).
fn load_tokens(path: &std::path::Path) -> Result<Vec<concord_types::tokens::TokenConfig>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(rename = "token", default)]
        tokens: Vec<concord_types::tokens::TokenConfig>,
    }
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let file: File = toml::from_str(&text).map_err(|e| format!("{shown}: {e}"))?;
    concord_types::tokens::validate_all(&file.tokens).map_err(|e| format!("{shown}: {e}"))?;
    Ok(file.tokens)
}
