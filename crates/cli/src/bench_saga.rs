//! `concord bench saga`: saga throughput with empty HTTP steps — the workload of DTM's
//! published benchmark (a two-branch saga, TransOut and TransIn, each with a compensation) —
//! through the orchestrator service on a durable log, in this process, against the floor.
//!
//! Each client starts a saga and waits for its outcome (`"wait": true`), then the next. A saga
//! is four forced log records (started, two steps done, ended) and two HTTP step calls. Every
//! client count runs twice, interleaved: with HTTP keep-alive (the default) and with a new
//! connection per call (the baseline it replaced).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use concord_http::{Request, Response};
use serde_json::json;

use crate::bench::{closed_loop, Floor, Measured, Tally};
use crate::cluster::runtime;

#[derive(Debug)]
pub struct Options<'a> {
    pub dir: &'a Path,
    pub clients: Vec<usize>,
    pub duration: Duration,
    pub json: bool,
}

/// A service whose every step succeeds at once.
async fn empty_service() -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(concord_http::serve(listener, |_: Request| async {
        Response::json(200, &json!({}))
    }));
    Ok(address)
}

fn saga(service: SocketAddr) -> String {
    let step = |name: &str| {
        json!({ "name": name, "action": format!("http://{service}/{name}"),
                "compensation": format!("http://{service}/{name}-compensate"), "timeout_ms": 5_000 })
    };
    json!({ "name": "transfer", "steps": [step("trans-out"), step("trans-in")],
            "payload": { "amount": 30 }, "wait": true })
    .to_string()
}

async fn measure(
    orchestrator: SocketAddr,
    body: &str,
    clients: usize,
    duration: Duration,
    keep_alive: bool,
) -> Measured {
    concord_http::set_keep_alive(keep_alive);
    closed_loop(clients, duration, |_, deadline| {
        let body = body.to_string();
        async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let answer = concord_http::call(
                    orchestrator,
                    "POST",
                    "/v1/sagas",
                    &[],
                    &body,
                    Duration::from_secs(30),
                )
                .await;
                match answer {
                    Ok((200, text)) if text.contains("\"completed\"") => tally.commit(t0),
                    Ok(_) => tally.aborted += 1,
                    Err(_) => tally.failed += 1,
                }
            }
            tally
        }
    })
    .await
}

pub fn run(options: &Options<'_>) -> Result<std::process::ExitCode, String> {
    let floor = Floor::measure(options.dir)?;
    let data_dir = options.dir.join("orchestrator");
    let _ = std::fs::remove_dir_all(&data_dir);
    let rows = runtime()?.block_on(async {
        let service = empty_service().await?;
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let orchestrator = concord_orchestrator::Options {
            listen,
            data_dir: data_dir.clone(),
            checkpoint_every: 10_000,
            postgres: None,
            // The step server takes a port of the moment.
            step_hosts: concord_orchestrator::StepHosts::Any,
            tokens: Vec::new(),
            console_sample: std::time::Duration::from_secs(10),
        };
        let task = tokio::spawn(concord_orchestrator::serve(orchestrator, stopped));
        let deadline = Instant::now() + Duration::from_secs(10);
        while concord_http::call(listen, "GET", "/health", &[], "", Duration::from_secs(1))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                return Err("the orchestrator did not come up".to_string());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let body = saga(service);
        let mut rows = Vec::new();
        for &n in &options.clients {
            for keep_alive in [false, true] {
                rows.push((
                    keep_alive,
                    measure(listen, &body, n, options.duration, keep_alive).await,
                ));
            }
        }
        concord_http::set_keep_alive(true);
        let _ = stop.send(true);
        let _ = task.await;
        Ok::<_, String>(rows)
    })?;
    let _ = std::fs::remove_dir_all(&data_dir);
    if options.json {
        let runs: Vec<serde_json::Value> = rows
            .iter()
            .map(|(keep_alive, r)| {
                json!({ "keep_alive": keep_alive, "clients": r.clients, "sagas_per_s": r.tps(), "completed": r.tally.committed,
                        "failed": r.tally.failed + r.tally.aborted, "seconds": r.seconds,
                        "p50_us": r.tally.latency.quantile(0.5), "p99_us": r.tally.latency.quantile(0.99) })
            })
            .collect();
        println!(
            "{}",
            json!({ "workload": "two empty HTTP steps", "durable": true, "floor": floor.json(), "runs": runs })
        );
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!("{}", floor.describe(options.dir));
    println!(
        "{:<11} {:<8} {:>10} {:>10} {:>8} {:>10} {:>10}",
        "http", "clients", "sagas/s", "completed", "failed", "p50 µs", "p99 µs"
    );
    for (keep_alive, r) in &rows {
        println!(
            "{:<11} {:<8} {:>10.0} {:>10} {:>8} {:>10} {:>10}",
            if *keep_alive { "keep-alive" } else { "close" },
            r.clients,
            r.tps(),
            r.tally.committed,
            r.tally.failed + r.tally.aborted,
            r.tally.latency.quantile(0.5),
            r.tally.latency.quantile(0.99)
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}
