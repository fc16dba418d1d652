//! A shard's remembered decisions stay bounded under load: its coordinator's FORGET (2PC, every
//! `forget_every` = 1,024 finished transactions) lets it drop them. Before FORGET they grew by
//! one per transaction for ever, and every checkpoint rewrote them all. An in-process cluster
//! of a gateway and one shard; 3,000 one-phase transactions; then the shard's health says how
//! many it remembers.

use std::time::{Duration, Instant};

use concord_client::KvClient;
use concord_node::proto::{self, node_client};

mod common;

const TRANSACTIONS: u64 = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_under_load_remembers_a_bounded_number_of_decisions() {
    let cluster = common::LocalKv::start("forget-test", 1);
    let config = &cluster.config;
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
}
