//! `concord bench flood`: an honest client's throughput while another floods the gateway, against
//! the same client alone (issue 19: one abusive client must not lock the others out).
//!
//! A key-value cluster with TLS and two client tokens. The honest client runs cross-shard blind
//! writes in a closed loop, first alone, then while the flooder, from another loopback address:
//! * opens transactions without end on its own connections (each refused past its share);
//! * opens connections and holds them, sending nothing (each closed after the hello timeout,
//!   and refused past the per-address cap);
//! * sends most of a 16 MiB frame on many call links, then stops (refused past the node's
//!   budget for partly received frames).
//!
//! Rounds alternate alone / flooded, so the ratio compares neighbours in time.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_client::KvClient;
use concord_node::auth::{new_token, token_sha256, ClientRole, TokenConfig};
use concord_node::config::{KvConfig, TlsConfig};
use concord_node::tls::{CertFiles, ClientCredentials};
use tokio::io::AsyncWriteExt;

use crate::bench::{closed_loop, LocalCluster, Measured, Tally};
use crate::cluster::{runtime, ProtocolChoice};

/// Where the flooder connects from: not the honest client's address (a per-address cap is
/// meant to separate them).
const FLOODER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

pub struct Options<'a> {
    pub dir: &'a Path,
    pub clients: usize,
    pub duration: Duration,
    pub rounds: u32,
    /// Which floods run together: begins, connections, frames.
    pub floods: Floods,
}

/// Which floods run together.
#[derive(Debug, Clone, Copy)]
pub struct Floods {
    pub begins: bool,
    pub connections: bool,
    pub frames: bool,
}

impl Floods {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut floods = Floods { begins: false, connections: false, frames: false };
        for name in text.split(',') {
            match name.trim() {
                "begins" => floods.begins = true,
                "connections" => floods.connections = true,
                "frames" => floods.frames = true,
                other => {
                    return Err(format!(
                        "--floods takes begins, connections and frames, not `{other}`"
                    ))
                }
            }
        }
        Ok(floods)
    }
}

pub fn run(options: &Options<'_>) -> Result<std::process::ExitCode, String> {
    let mut config = LocalCluster::config("bench-flood", 3, ProtocolChoice::TWO_PHASE)?;
    config.kv = Some(KvConfig::default());
    let files = CertFiles { dir: options.dir.join("certs") };
    config.tls = Some(TlsConfig { dir: files.dir.clone() });
    let _ = std::fs::remove_dir_all(options.dir);
    concord_node::certs::issue(&config, &files, false)?;
    let (honest_token, flooder_token) = (new_token()?, new_token()?);
    for (name, token) in [("honest", &honest_token), ("flooder", &flooder_token)] {
        config.tokens.push(TokenConfig {
            name: name.into(),
            role: ClientRole::Client,
            sha256: token_sha256(token),
        });
    }
    let honest = ClientCredentials::new(Some(&files.ca()), Some(honest_token))?;
    let flooder = ClientCredentials::new(Some(&files.ca()), Some(flooder_token))?;
    let gateway = config.coordinator().listen;
    let rows = runtime()?.block_on(async {
        let cluster = LocalCluster::start(&config, &options.dir.join("data"));
        let kv = KvClient::connect_with(gateway, &honest);
        crate::bench_kv::warm_up_across(&[gateway], Some(&honest)).await?;
        let mut rows = Vec::new();
        for round in 1..=options.rounds.max(1) {
            let alone = measure(&kv, options.clients, options.duration).await;
            let stop = Arc::new(AtomicBool::new(false));
            let counts = Arc::new(FloodCounts::default());
            let flood = tokio::spawn(flood(
                gateway,
                flooder.clone(),
                options.floods,
                stop.clone(),
                counts.clone(),
            ));
            // The flood gets going before the measurement starts.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let flooded = measure(&kv, options.clients, options.duration).await;
            stop.store(true, Ordering::SeqCst);
            let _ = flood.await;
            rows.push((round, alone, flooded, counts));
            // Let what the flood left (connections in their hello timeout) end.
            tokio::time::sleep(Duration::from_secs(6)).await;
        }
        cluster.stop().await;
        Ok::<_, String>(rows)
    })?;
    let _ = std::fs::remove_dir_all(options.dir);
    println!(
        "honest client: {} closed-loop cross-shard blind writers over TLS, {} s per run; the flooder from {FLOODER}",
        options.clients,
        options.duration.as_secs()
    );
    println!(
        "{:>5} {:>12} {:>12} {:>9} {:>10} {:>10} {:>8} {:>12} {:>12} {:>12}",
        "round",
        "alone tps",
        "flooded tps",
        "ratio",
        "alone p50",
        "flood p50",
        "failed",
        "begins ok",
        "refused",
        "connections"
    );
    let mut ratios = Vec::new();
    for (round, alone, flooded, counts) in &rows {
        let ratio = flooded.tps() / alone.tps().max(1e-9);
        ratios.push(ratio);
        println!(
            "{:>5} {:>12.0} {:>12.0} {:>8.2}x {:>10} {:>10} {:>8} {:>12} {:>12} {:>12}",
            round,
            alone.tps(),
            flooded.tps(),
            ratio,
            alone.tally.latency.quantile(0.5),
            flooded.tally.latency.quantile(0.5),
            flooded.tally.failed,
            counts.begun.load(Ordering::Relaxed),
            counts.refused.load(Ordering::Relaxed),
            counts.connections.load(Ordering::Relaxed),
        );
        if let Some(why) = &flooded.tally.first_failure {
            println!("{:<6} first failure: {why}", "");
        }
    }
    ratios.sort_by(f64::total_cmp);
    println!("median flooded/alone: {:.2}x", ratios[ratios.len() / 2]);
    Ok(std::process::ExitCode::SUCCESS)
}

async fn measure(kv: &KvClient, clients: usize, duration: Duration) -> Measured {
    closed_loop(clients, duration, |c, deadline| {
        let kv = kv.clone();
        async move {
            let mut tally = Tally::default();
            let mut i = 0usize;
            while Instant::now() < deadline {
                let started = Instant::now();
                let attempt = async {
                    let mut txn = kv.begin().await?;
                    txn.put(format!("a/{c}/{}", i % 100), "1").await?;
                    txn.put(format!("z/{c}/{}", i % 100), "1").await?;
                    txn.commit().await
                };
                match attempt.await {
                    Ok(_) => tally.commit(started),
                    Err(e) => tally.fail(e),
                }
                i += 1;
            }
            tally
        }
    })
    .await
}

#[derive(Debug, Default)]
struct FloodCounts {
    begun: AtomicU64,
    refused: AtomicU64,
    connections: AtomicU64,
}

/// Connects from the flooder's address.
async fn connect_from_flooder(to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(FLOODER, 0))?;
    socket.connect(to).await
}

/// The three floods at once, until `stop`.
async fn flood(
    gateway: SocketAddr,
    credentials: ClientCredentials,
    floods: Floods,
    stop: Arc<AtomicBool>,
    counts: Arc<FloodCounts>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    // Transactions opened and never ended, on a few connections of its own.
    for _ in 0..if floods.begins { 4 } else { 0 } {
        let (stop, counts) = (stop.clone(), counts.clone());
        let kv = concord_node::call_client(gateway, &credentials);
        tasks.spawn(async move {
            let begin =
                concord_node::proto::KvBeginRequest { isolation: String::new(), reserve: false };
            while !stop.load(Ordering::Relaxed) {
                let begun: Result<concord_node::proto::KvBeginReply, _> = kv
                    .call(concord_node::call_link::Method::KvBegin, &begin, Duration::from_secs(5))
                    .await;
                let counter = if begun.is_ok() { &counts.begun } else { &counts.refused };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    // Connections held open, saying nothing.
    if floods.connections {
        let (stop, counts) = (stop.clone(), counts.clone());
        tasks.spawn(async move {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match connect_from_flooder(gateway).await {
                    Ok(stream) => {
                        counts.connections.fetch_add(1, Ordering::Relaxed);
                        held.push(stream);
                        if held.len() > 3_000 {
                            held.remove(0);
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
    }
    // Frames begun and never finished: the opener of a call link, then 15 of a 16 MiB frame.
    for _ in 0..if floods.frames { 32 } else { 0 } {
        let (stop, credentials) = (stop.clone(), credentials.clone());
        tasks.spawn(async move {
            let mut chunk = vec![0u8; 1 << 20];
            chunk[..4].copy_from_slice(&(16u32 << 20).to_le_bytes());
            while !stop.load(Ordering::Relaxed) {
                let Ok(stream) = connect_from_flooder(gateway).await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let Ok(mut link) = concord_node::tls::dial_call_link(&credentials, stream).await
                else {
                    continue;
                };
                for _ in 0..15 {
                    if stop.load(Ordering::Relaxed) || link.write_all(&chunk).await.is_err() {
                        break;
                    }
                    chunk[..4].fill(0); // only the first holds the frame's length
                }
                chunk[..4].copy_from_slice(&(16u32 << 20).to_le_bytes());
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
