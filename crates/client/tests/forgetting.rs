//! A shard's remembered decisions stay bounded under load: its coordinator's FORGET (2PC, every
//! `forget_every` = 1,024 finished transactions) lets it drop them. Before FORGET they grew by
//! one per transaction for ever, and every checkpoint rewrote them all. An in-process cluster
//! of a gateway and one shard; 3,000 one-phase transactions; then the shard's health says how
//! many it remembers.

use std::time::{Duration, Instant};

use concord_client::KvClient;
use concord_node::config::{ClusterConfig, KvConfig};
use concord_node::proto::{self, node_client};

const TRANSACTIONS: u64 = 3_000;

fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
    listeners.iter().map(|l| l.local_addr().expect("bound").port()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_under_load_remembers_a_bounded_number_of_decisions() {
    let dir = std::env::temp_dir().join(format!("concord-client-forget-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = ClusterConfig::local("forget-test", 1, 0);
    config.kv = Some(KvConfig::default());
    for (node, port) in config.nodes.iter_mut().zip(free_ports(2)) {
        node.listen.set_port(port);
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    for node in &config.nodes {
        let (config, name, data) = (config.clone(), node.name.clone(), dir.join(&node.name));
        let stopped = stopped.clone();
        tokio::spawn(async move { concord_node::serve(config, &name, &data, stopped).await });
    }
    let kv = KvClient::connect(config.coordinator().listen);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut committed = 0;
    // Eight writers at a time, so the run takes seconds even in a debug build.
    while committed < TRANSACTIONS {
        let mut batch = tokio::task::JoinSet::new();
        for i in 0..8 {
            let kv = kv.clone();
            batch.spawn(async move {
                let mut txn = kv.begin().await?;
                txn.put(format!("k{i}"), committed.to_string()).await?;
                txn.commit().await
            });
        }
        while let Some(done) = batch.join_next().await {
            match done.expect("no panic") {
                Ok(_) => committed += 1,
                // Shards refuse writes for the clock's maximum offset after they start.
                Err(e) => assert!(Instant::now() < deadline, "writes keep failing: {e}"),
            }
        }
    }
    let shard = config.shards().next().expect("one shard").listen;
    let mut health = node_client::NodeClient::new(concord_node::channel(shard));
    let reply = health.health(proto::HealthRequest {}).await.expect("health").into_inner();
    assert!(
        reply.decisions_remembered < 1_024 + 100,
        "after {committed} transactions the shard remembers {} decisions",
        reply.decisions_remembered
    );
    let _ = stop.send(true);
    let _ = std::fs::remove_dir_all(&dir);
}
