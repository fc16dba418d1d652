//! The key-value store on a replicated coordinator (three replicas, two shards, in this
//! process): the gateway is whichever replica leads. A standby refuses over gRPC naming the
//! leader; a client given every replica's address — the first of them dead — finds the
//! leader, commits, and after the leader stops goes on through the new one, reading what the
//! old one committed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use concord_client::KvClient;
use concord_node::config::{NodeConfig, Role};
use concord_node::proto::{self, kv_client, node_client};

mod common;

/// Commits `key` = `value`, retrying (bounded) while the cluster starts or changes leader.
async fn put(kv: &KvClient, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let mut txn = kv.begin().await?;
            txn.put(key, value).await?;
            txn.put(format!("z-{key}"), value).await?; // the other shard: a 2PC commit
            txn.commit().await
        };
        match attempt.await {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "{key} never committed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get(kv: &KvClient, key: &str) -> Option<String> {
    kv.transact(async |txn| txn.get_str(key).await).await.expect("a read")
}

/// The replica whose core runs.
async fn leader(replicas: &[SocketAddr]) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for &replica in replicas {
            let mut node = node_client::NodeClient::new(concord_node::channel(replica));
            if let Ok(reply) = node.health(proto::HealthRequest {}).await {
                if reply.into_inner().replica.is_some_and(|r| r.leading) {
                    return replica;
                }
            }
        }
        assert!(Instant::now() < deadline, "no replica led");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_follows_the_leader_of_a_replicated_coordinator() {
    let mut cluster = common::LocalKv::start_with("replicated-gateway", 2, |config| {
        for name in ["coordinator-b", "coordinator-c"] {
            let id = config.nodes.iter().map(|n| n.id).max().unwrap() + 1;
            config.nodes.push(NodeConfig {
                name: name.into(),
                id,
                role: Role::Coordinator,
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                metrics: None,
            });
        }
    });
    let replicas: Vec<SocketAddr> = cluster.config.coordinators().map(|n| n.listen).collect();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut addresses = vec![dead];
    addresses.extend(&replicas);
    let kv = KvClient::connect_replicas(&addresses);
    put(&kv, "a", "1").await;

    // Many clients at once: the timestamp bound is raised under them as they go, and the
    // leader's clock must stay within the maximum offset of real time (a bound raised by
    // every caller queued behind a raise once ran it minutes ahead, and every shard refused).
    let mut load = tokio::task::JoinSet::new();
    for c in 0..32 {
        let kv = kv.clone();
        load.spawn(async move {
            for i in 0..20 {
                let key = format!("load-{c}-{i}");
                let written = async {
                    let mut txn = kv.begin().await?;
                    txn.put(&key, "x").await?;
                    txn.put(format!("z-{key}"), "x").await?;
                    txn.commit().await
                };
                written.await.map_err(|e| format!("{key}: {e}"))?;
            }
            Ok::<_, String>(())
        });
    }
    while let Some(done) = load.join_next().await {
        done.unwrap().unwrap();
    }
    let first = leader(&replicas).await;
    let mut grpc = kv_client::KvClient::new(concord_node::channel(first));
    let begun = grpc.begin(proto::KvBeginRequest::default()).await.unwrap().into_inner();
    let start = begun.start.expect("a start timestamp").wall;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let max_offset_us = 500_000;
    assert!(
        start <= u64::try_from(now.as_micros()).unwrap() + max_offset_us,
        "the leader's clock ran {} us ahead of real time",
        start.saturating_sub(u64::try_from(now.as_micros()).unwrap())
    );

    // A standby refuses over gRPC before anything runs, naming the leader.
    let standby = replicas.iter().copied().find(|r| *r != first).unwrap();
    let mut grpc = kv_client::KvClient::new(concord_node::channel(standby));
    let refused = grpc.begin(proto::KvBeginRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let named = refused.metadata().get(concord_node::LEADER_METADATA).map(|v| v.to_str().unwrap());
    assert_eq!(named, Some(first.to_string().as_str()), "{refused:?}");

    // The leader stops: the same client goes on through the new one and reads the old writes.
    let name = cluster.config.nodes.iter().find(|n| n.listen == first).unwrap().name.clone();
    cluster.stop(&name).await;
    put(&kv, "b", "2").await;
    assert_ne!(leader(&replicas).await, first);
    assert_eq!(get(&kv, "a").await.as_deref(), Some("1"));
    assert_eq!(get(&kv, "z-a").await.as_deref(), Some("1"));
    assert_eq!(get(&kv, "b").await.as_deref(), Some("2"));
}
