//! `concord dev` and `concord serve`: running nodes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use concord_node::config::{ClusterConfig, CommitProtocol};

/// What `--protocol` / `--protocols` name: a commit protocol and, for 2PC, whether it
/// acknowledges early (`2pc-early-ack`: `protocol = "2pc"` with `early_ack = true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolChoice {
    pub protocol: CommitProtocol,
    pub early_ack: bool,
}

impl ProtocolChoice {
    /// Plain 2PC, the default.
    pub const TWO_PHASE: ProtocolChoice =
        ProtocolChoice { protocol: CommitProtocol::TwoPhase, early_ack: false };

    /// Acceptor nodes this choice adds to a local cluster.
    pub fn acceptors(self) -> u32 {
        match self.protocol {
            CommitProtocol::TwoPhase => 0,
            CommitProtocol::PaxosCommit => 3,
        }
    }

    /// `config` on this protocol (acceptors after its last node under Paxos Commit).
    pub fn apply(self, config: ClusterConfig) -> ClusterConfig {
        let mut config = match self.protocol {
            CommitProtocol::TwoPhase => config,
            CommitProtocol::PaxosCommit => config.with_paxos_commit(self.acceptors()),
        };
        config.early_ack = self.early_ack;
        config
    }
}

impl std::fmt::Display for ProtocolChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.protocol, if self.early_ack { "-early-ack" } else { "" })
    }
}

impl std::str::FromStr for ProtocolChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "2pc-early-ack" => Ok(ProtocolChoice { early_ack: true, ..Self::TWO_PHASE }),
            other => other
                .parse()
                .map(|protocol| ProtocolChoice { protocol, early_ack: false })
                .map_err(|e: String| format!("{e}, or 2pc-early-ack")),
        }
    }
}
use tokio::sync::watch;

/// The tokio runtime every networked command runs on.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// A watch that turns true on Ctrl-C or SIGTERM.
fn shutdown_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
    });
    rx
}

/// `concord serve --config FILE --node NAME`: one node in this process.
pub fn serve(
    config: &Path,
    node: &str,
    data_dir: Option<PathBuf>,
    options: concord_node::StartOptions,
    insecure: bool,
) -> Result<ExitCode, String> {
    let config = ClusterConfig::load(config).map_err(|e| e.to_string())?;
    let me = config.node(node).ok_or_else(|| {
        let names: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
        format!("--node {node}: no such node; the configuration has {}", names.join(", "))
    })?;
    // Without [tls] every port accepts anyone who can reach it: off loopback that is a choice
    // the operator must make out loud.
    let exposed = !me.listen.ip().is_loopback();
    let tls = config.tls.is_some();
    if exposed && !tls && !insecure {
        return Err(format!(
            "refusing to listen on {}: it is not loopback, and without a [tls] section links are \
             neither authenticated nor encrypted (anyone who reaches the port can send protocol \
             messages; docs/security.md). Add [tls] and run `concord certs init`, listen on \
             127.0.0.1, or pass --insecure to accept that",
            me.listen
        ));
    }
    let data_dir = data_dir.unwrap_or_else(|| PathBuf::from("./concord-data").join(&me.name));
    let warning =
        if exposed && !tls { "INSECURE (unauthenticated links off loopback): " } else { "" };
    let links = if tls { "TLS" } else { "plain TCP" };
    println!(
        "concord: {warning}{} ({}) on {} ({links}), data in {}",
        me.name,
        me.role,
        me.listen,
        data_dir.display()
    );
    let name = node.to_string();
    runtime()?.block_on(async move {
        let shutdown = shutdown_on_signal();
        concord_node::serve_with(config, &name, &data_dir, shutdown, options)
            .await
            .map_err(|e| e.to_string())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The configuration a dev directory already holds (its nodes' data must keep their names),
/// or a new one, written there.
fn dev_config(path: &Path, new: impl FnOnce() -> ClusterConfig) -> Result<ClusterConfig, String> {
    if path.exists() {
        return ClusterConfig::load(path).map_err(|e| e.to_string());
    }
    let config = new();
    std::fs::write(path, config.to_toml())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(config)
}

/// Each node of a new dev cluster serves `/metrics` on loopback, from `base` on (in node order).
fn with_metrics(mut config: ClusterConfig, base: u16) -> ClusterConfig {
    for (port, node) in (base..).zip(config.nodes.iter_mut()) {
        node.metrics = Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    config
}

fn shown_metrics(node: &concord_node::config::NodeConfig) -> String {
    let console = node.role == concord_node::config::Role::Coordinator;
    node.metrics.map_or(String::new(), |m| {
        let ui = if console { format!("   console http://{m}/ui") } else { String::new() };
        format!("   metrics http://{m}/metrics{ui}")
    })
}

/// `concord dev`: a coordinator and shards on loopback, in this process.
/// Where `concord dev --tls` put what clients need.
struct DevTls {
    ca: PathBuf,
    client: PathBuf,
    monitor: PathBuf,
}

/// TLS for both dev clusters under `DATA/certs`: one CA (its certificate and key copied into
/// each cluster's directory), node certificates, and a client and a monitor token, all made
/// once and reused by later starts.
fn dev_tls(
    data_dir: &Path,
    config: &mut ClusterConfig,
    kv_config: &mut ClusterConfig,
) -> Result<DevTls, String> {
    use concord_node::auth::{new_token, token_sha256, ClientRole, TokenConfig};
    use concord_node::tls::CertFiles;
    let certs = data_dir.join("certs");
    let delta = CertFiles { dir: certs.join(&config.cluster) };
    let kv = CertFiles { dir: certs.join(&kv_config.cluster) };
    concord_node::certs::issue(config, &delta, false)?;
    std::fs::create_dir_all(&kv.dir).map_err(|e| format!("{}: {e}", kv.dir.display()))?;
    for (from, to) in [(delta.ca(), kv.ca()), (delta.ca_key(), kv.ca_key())] {
        if !to.exists() {
            std::fs::copy(&from, &to).map_err(|e| format!("{}: {e}", to.display()))?;
        }
    }
    concord_node::certs::issue(kv_config, &kv, false)?;
    config.tls = Some(concord_node::config::TlsConfig { dir: delta.dir.clone() });
    kv_config.tls = Some(concord_node::config::TlsConfig { dir: kv.dir.clone() });
    let mut files = Vec::new();
    for (name, role) in [("client", ClientRole::Client), ("monitor", ClientRole::Monitor)] {
        let file = certs.join(format!("{name}.token"));
        let token = match std::fs::read_to_string(&file) {
            Ok(text) => text.trim().to_string(),
            Err(_) => {
                let token = new_token()?;
                concord_node::certs::write_secret(&file, &format!("{token}\n"))?;
                token
            }
        };
        let entry = TokenConfig { name: format!("dev-{name}"), role, sha256: token_sha256(&token) };
        config.tokens.push(entry.clone());
        kv_config.tokens.push(entry);
        files.push(file);
    }
    let monitor = files.pop().expect("two tokens");
    let client = files.pop().expect("two tokens");
    Ok(DevTls { ca: delta.ca(), client, monitor })
}

/// `replicas - 1` more coordinator nodes, on the ports after the cluster's other nodes: a
/// replicated coordinator.
fn with_coordinator_replicas(mut config: ClusterConfig, replicas: u32, port: u16) -> ClusterConfig {
    let next_id = config.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
    let next_port = port + u16::try_from(config.nodes.len()).expect("a handful of dev nodes");
    for i in 1..replicas {
        config.nodes.push(concord_node::config::NodeConfig {
            name: format!("coordinator-{}", i + 1),
            id: next_id + i - 1,
            role: concord_node::config::Role::Coordinator,
            listen: std::net::SocketAddr::from((
                [127, 0, 0, 1],
                next_port + u16::try_from(i - 1).expect("at most five replicas"),
            )),
            metrics: None,
        });
    }
    config
}

pub fn dev(
    data_dir: &Path,
    shards: u32,
    port: u16,
    protocol: ProtocolChoice,
    options: concord_node::StartOptions,
    tls: bool,
    coordinators: u32,
) -> Result<ExitCode, String> {
    // The key-value store's ports start at --port + 10; Paxos Commit's acceptors follow the
    // shards of each cluster, and coordinator replicas follow them.
    let acceptors = protocol.acceptors();
    if !matches!(coordinators, 1 | 3 | 5) {
        return Err(format!(
            "--coordinators {coordinators}: 1, 3 or 5 (replicas decide by majority)"
        ));
    }
    let extra = coordinators - 1;
    if shards < 1 || shards + acceptors + extra > 9 {
        return Err(format!(
            "--shards must be between 1 and {} with {protocol} and {coordinators} coordinators",
            9 - acceptors - extra
        ));
    }
    let on_protocol = |config: ClusterConfig| protocol.apply(config);
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let config = dev_config(&data_dir.join("concord.toml"), || {
        let config = on_protocol(ClusterConfig::local("dev", shards, port));
        with_metrics(with_coordinator_replicas(config, coordinators, port), port + 200)
    })?;
    if config.coordinators().count() != coordinators as usize && coordinators != 1 {
        return Err(format!(
            "{} holds a cluster with {} coordinator(s); --coordinators applies to a new data directory",
            data_dir.display(),
            config.coordinators().count()
        ));
    }
    let kv_dir = data_dir.join("kv");
    std::fs::create_dir_all(&kv_dir)
        .map_err(|e| format!("cannot create {}: {e}", kv_dir.display()))?;
    let kv_config = dev_config(&kv_dir.join("concord.toml"), || {
        let mut config = ClusterConfig::local("dev-kv", shards, port + 10);
        config.kv = Some(concord_node::config::KvConfig::default());
        let config = with_coordinator_replicas(on_protocol(config), coordinators, port + 10);
        with_metrics(config, port + 210)
    })?;
    if kv_config.coordinators().count() != coordinators as usize && coordinators != 1 {
        return Err(format!(
            "{} holds a key-value cluster with {} coordinator(s); --coordinators applies to a new data directory",
            kv_dir.display(),
            kv_config.coordinators().count()
        ));
    }
    let (mut config, mut kv_config) = (config, kv_config);
    let secured = if tls { Some(dev_tls(data_dir, &mut config, &mut kv_config)?) } else { None };
    let coordinator = config.coordinator().listen;
    let gateway = kv_config.coordinator().listen;
    runtime()?.block_on(async move {
        let shutdown = shutdown_on_signal();
        let mut nodes = tokio::task::JoinSet::new();
        for (config, dir) in [(&config, data_dir), (&kv_config, kv_dir.as_path())] {
            for node in &config.nodes {
                let (config, name, dir) = (config.clone(), node.name.clone(), dir.join(&node.name));
                let shutdown = shutdown.clone();
                nodes.spawn(async move {
                    concord_node::serve_with(config, &name, &dir, shutdown, options)
                        .await
                        .map_err(|e| format!("{name}: {e}"))
                });
            }
        }
        println!("Concord dev cluster `{}` ({}, durable logs under {})", config.cluster, config.protocol, data_dir.display());
        for node in &config.nodes {
            println!("  {:<12} {:<12} {}{}", node.name, node.role.to_string(), node.listen, shown_metrics(node));
        }
        println!("Key-value store `{}` (MVCC shards, serializable, {}; data under {})", kv_config.cluster, kv_config.protocol, kv_dir.display());
        for node in &kv_config.nodes {
            let role = if node.role == concord_node::config::Role::Coordinator { "gateway".to_string() } else { node.role.to_string() };
            println!("  {:<12} {:<12} {}{}", node.name, role, node.listen, shown_metrics(node));
        }
        let first = config.shards().next().map_or("shard-1", |n| n.name.as_str()).to_string();
        let second = config.shards().nth(1).map_or(first.as_str(), |n| n.name.as_str()).to_string();
        println!("\nTry, in another terminal (add --coordinator {coordinator} if you changed the port):");
        println!("  concord txn submit {first}:1=+100            # deposit 100 into account 1 of {first}");
        println!("  concord transfer --from {first}:1 --to {second}:2 --amount 30");
        println!("  concord txn ls");
        println!("  concord txn show <ID>");
        println!("  concord shard read {first}");
        println!("  concord bench transfer --shards 3 --clients 1,16 --duration 5s");
        println!("  concord kv put greeting hello       # add --gateway {gateway} if you changed the port");
        println!("  concord kv txn 'get greeting; put counter 1; scan'");
        if let Some(secured) = &secured {
            println!("\nEvery link is TLS and clients need a token; for the commands above:");
            println!("  export CONCORD_CA={} CONCORD_TOKEN_FILE={}", secured.ca.display(), secured.client.display());
            println!("  (txn ls and shard read are a monitor's: CONCORD_TOKEN_FILE={})", secured.monitor.display());
        }
        println!("\nCtrl-C stops the cluster; its data stays in {}.", data_dir.display());
        while let Some(ended) = nodes.join_next().await {
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(error),
                Err(panic) => return Err(format!("a node panicked: {panic}")),
            }
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
