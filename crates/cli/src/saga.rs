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
        /// How often the console's charts (/ui) sample the counters; an hour is kept.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
        console_sample_ms: u64,
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
    /// Sagas, newest first, a page at a time; with --postgres on the orchestrator, every saga
    /// in the shared store (any instance's, finished ones included).
    Ls {
        /// Only those not finished (running, compensating, confirming or failed-to-drive).
        #[arg(long)]
        running: bool,
        /// Only these states, comma-separated: running, compensating, confirming, completed,
        /// compensated, failed-to-drive, unfinished, finished.
        #[arg(long)]
        state: Option<String>,
        /// Only sagas started longer ago than this (90s, 15m, 2h, 7d).
        #[arg(long)]
        older_than: Option<String>,
        /// Only sagas started within this (90s, 15m, 2h, 7d).
        #[arg(long)]
        newer_than: Option<String>,
        /// Only sagas held by this orchestrator instance (a shared PostgreSQL store).
        #[arg(long)]
        instance: Option<String>,
        /// Sagas per page (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Continue after this cursor (printed at the end of the page before).
        #[arg(long)]
        after: Option<String>,
        /// Every page, not only the first.
        #[arg(long)]
        all: bool,
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
            console_sample_ms,
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
                console_sample: Duration::from_millis(console_sample_ms),
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
        SagaCommand::Ls {
            running,
            state,
            older_than,
            newer_than,
            instance,
            limit,
            after,
            all,
            orchestrator,
            json,
        } => {
            let mut query = vec![format!("limit={limit}")];
            if running {
                query.push("running".into());
            }
            for (name, value) in [
                ("state", state),
                ("older_than", older_than),
                ("newer_than", newer_than),
                ("instance", instance),
            ] {
                if let Some(value) = value {
                    query.push(format!("{name}={value}"));
                }
            }
            let mut after = after;
            if !json {
                println!(
                    "{:<32} {:<14} {:<15} {:<19} {:<14} NOW",
                    "SAGA", "NAME", "STATE", "STARTED (UTC)", "INSTANCE"
                );
            }
            loop {
                let mut page = query.clone();
                page.extend(after.as_ref().map(|a| format!("after={a}")));
                let path = format!("/v1/sagas?{}", page.join("&"));
                let answer = call(orchestrator, "GET", &path, None, Duration::from_secs(30))?;
                let next = answer["next"].as_str().map(str::to_string);
                if json {
                    println!("{answer}");
                } else {
                    print_listing(&answer);
                }
                match next {
                    Some(next) if all => after = Some(next),
                    Some(next) => {
                        if !json {
                            println!("(more: --after {next}, or --all)");
                        }
                        break;
                    }
                    None => break,
                }
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

fn print_listing(answer: &Value) {
    for saga in answer["sagas"].as_array().into_iter().flatten() {
        let now = saga["current"].as_object().map_or(String::new(), |c| {
            format!(
                "{} {} #{}",
                c["step"].as_str().unwrap_or(""),
                c["phase"].as_str().unwrap_or(""),
                c["attempt"]
            )
        });
        let started = saga["started_unix_ms"].as_u64().map_or("?".to_string(), utc);
        println!(
            "{:<32} {:<14} {:<15} {:<19} {:<14} {now}",
            saga["id"].as_str().unwrap_or(""),
            saga["name"].as_str().unwrap_or(""),
            saga["state"].as_str().unwrap_or(""),
            started,
            saga["instance"].as_str().unwrap_or("")
        );
    }
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1_000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

fn print_saga(saga: &Value) {
    let reason = saga["reason"]
        .as_str()
        .filter(|r| !r.is_empty())
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let started = saga["started_unix_ms"]
        .as_u64()
        .map_or(String::new(), |ms| format!(", started {} UTC", utc(ms)));
    let held = saga["instance"].as_str().map_or(String::new(), |i| format!(", held by {i}"));
    println!(
        "{} {} [{}] {}{reason}{started}{held}",
        saga["id"].as_str().unwrap_or(""),
        saga["name"].as_str().unwrap_or(""),
        saga["kind"].as_str().unwrap_or(""),
        saga["state"].as_str().unwrap_or("")
    );
    for entry in saga["timeline"].as_array().into_iter().flatten() {
        let took = entry["took_ms"].as_u64().map_or(String::new(), |ms| format!(" in {ms} ms"));
        println!(
            "  +{:>6} ms  {:<16} {:<13} #{:<3} {}{took}  [{}]",
            entry["at_ms"].as_u64().unwrap_or(0),
            entry["step"].as_str().unwrap_or(""),
            entry["phase"].as_str().unwrap_or(""),
            entry["attempt"].as_u64().unwrap_or(0),
            entry["result"].as_str().unwrap_or(""),
            entry["instance"].as_str().unwrap_or("")
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

#[cfg(test)]
mod tests {
    #[test]
    fn unix_milliseconds_print_as_utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_700_000_000_999), "2023-11-14 22:13:20");
        assert_eq!(super::utc(4_107_542_399_000), "2100-02-28 23:59:59");
    }
}
