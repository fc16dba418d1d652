//! What this crate's integration tests share: a key-value cluster (a gateway and `shards`
//! shards) served in this process on free loopback ports, each node stoppable and restartable
//! on its own data (as a process killed and started again would be, minus the kill).

#![allow(dead_code)] // each test binary uses its own part

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use concord_node::config::{ClusterConfig, KvConfig};

/// A running in-process cluster. Dropping it stops its nodes and removes their data.
pub struct LocalKv {
    pub config: ClusterConfig,
    dir: PathBuf,
    nodes: HashMap<String, Running>,
}

struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    served: tokio::task::JoinHandle<()>,
}

impl LocalKv {
    /// Starts every node of a `shards`-shard KV cluster named `name` (data in a fresh
    /// temporary directory). Call it inside a tokio runtime.
    pub fn start(name: &str, shards: u32) -> LocalKv {
        Self::start_with(name, shards, |_| {})
    }

    /// As [`LocalKv::start`], with the configuration adjusted by `adjust` first.
    pub fn start_with(name: &str, shards: u32, adjust: impl FnOnce(&mut ClusterConfig)) -> LocalKv {
        let dir = std::env::temp_dir().join(format!("concord-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = ClusterConfig::local(name, shards, 0);
        config.kv = Some(KvConfig::default());
        // Ports last: `adjust` may add nodes (acceptors).
        adjust(&mut config);
        let ports = free_ports(config.nodes.len());
        for (node, port) in config.nodes.iter_mut().zip(ports) {
            node.listen.set_port(port);
        }
        let mut cluster = LocalKv { config, dir, nodes: HashMap::new() };
        let names: Vec<String> = cluster.config.nodes.iter().map(|n| n.name.clone()).collect();
        for name in names {
            cluster.run(&name);
        }
        cluster
    }

    fn run(&mut self, name: &str) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (config, node, data) = (self.config.clone(), name.to_string(), self.dir.join(name));
        let served = tokio::spawn(async move {
            if let Err(e) = concord_node::serve(config, &node, &data, stopped).await {
                eprintln!("{node}: {e}");
            }
        });
        self.nodes.insert(name.to_string(), Running { stop, served });
    }

    /// Stops node `name`, waiting until it has let go of its data.
    pub async fn stop(&mut self, name: &str) {
        let running = self.nodes.remove(name).expect("a node of this cluster");
        let _ = running.stop.send(true);
        tokio::time::timeout(Duration::from_secs(30), running.served)
            .await
            .expect("the node stops within 30 s")
            .expect("the node's task does not panic");
    }

    /// Stops node `name` (waiting until it has let go of its data) and starts it again.
    pub async fn restart(&mut self, name: &str) {
        self.stop(name).await;
        self.run(name);
    }
}

impl Drop for LocalKv {
    fn drop(&mut self) {
        for running in self.nodes.values() {
            let _ = running.stop.send(true);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    // Below the kernel's ephemeral range (32768 and up here): a node stopped for a restart must
    // find its port free again, and an ephemeral port can be taken meanwhile as some
    // connection's source port (an acceptor's restart failed so, "Address already in use").
    // Spread by process, clock and a counter, as tests run in parallel; held together until all
    // are chosen, and never handed out twice in one process: a port a test's stopped node will
    // bind again on its restart probes free meanwhile, and another test took it so once
    // ("acceptor-2: cannot listen … Address already in use").
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = u64::from(std::process::id())
        ^ u64::from(now.subsec_nanos())
        ^ call.wrapping_mul(0x9e37_79b9);
    let mut held = Vec::new();
    for attempt in 0..100_000u64 {
        if held.len() == n {
            break;
        }
        let port = 10_000 + u16::try_from((seed.wrapping_add(attempt * 7_919)) % 22_000).unwrap();
        if given.contains(&port) {
            continue;
        }
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    assert_eq!(held.len(), n, "no {n} free ports below the ephemeral range");
    let ports: Vec<u16> = held.iter().map(|l| l.local_addr().expect("bound").port()).collect();
    given.extend(&ports);
    ports
}
