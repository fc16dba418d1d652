//! What this crate's integration tests share: a key-value cluster (a gateway and `shards`
//! shards) served in this process on free loopback ports.

use std::path::PathBuf;

use concord_node::config::{ClusterConfig, KvConfig};

/// A running in-process cluster. Dropping it stops its nodes and removes their data.
pub struct LocalKv {
    pub config: ClusterConfig,
    dir: PathBuf,
    stop: tokio::sync::watch::Sender<bool>,
}

impl LocalKv {
    /// Starts every node of a `shards`-shard KV cluster named `name` (data in a fresh
    /// temporary directory). Call it inside a tokio runtime.
    pub fn start(name: &str, shards: u32) -> LocalKv {
        let dir = std::env::temp_dir().join(format!("concord-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = ClusterConfig::local(name, shards, 0);
        config.kv = Some(KvConfig::default());
        let ports = free_ports(config.nodes.len());
        for (node, port) in config.nodes.iter_mut().zip(ports) {
            node.listen.set_port(port);
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        for node in &config.nodes {
            let (config, name, data) = (config.clone(), node.name.clone(), dir.join(&node.name));
            let stopped = stopped.clone();
            tokio::spawn(async move { concord_node::serve(config, &name, &data, stopped).await });
        }
        LocalKv { config, dir, stop }
    }
}

impl Drop for LocalKv {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    // Held together until all are chosen, so no port is handed out twice.
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
    listeners.iter().map(|l| l.local_addr().expect("bound").port()).collect()
}
