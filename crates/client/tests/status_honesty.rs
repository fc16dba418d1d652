//! Status by id stays honest across restarts. After a coordinator restart its table of recent
//! transactions is gone and `Status` asks the shards; shards that had forgotten one-phase
//! commits (below their coordinator's FORGET mark) used to answer ABORT for them, so `concord
//! txn show` — the documented answer to an unknown outcome — said "aborted" about committed
//! work. Now a shard keeps recent outcomes for status queries (checkpointed) and otherwise
//! says FORGOTTEN: an answer may be COMMITTED or FORGOTTEN here, never ABORTED.
//!
//! An in-process cluster of a gateway and two shards with small checkpoints (so outcomes go
//! through the checkpoint and come back from it); transactions alternate one shard (one phase)
//! and two (2PC), more than two FORGET marks' worth; then the coordinator restarts, then
//! everything does, and every id is asked about each time.

use std::time::{Duration, Instant};

use concord_client::KvClient;
use concord_node::proto::{self, client_client, node_client, State};

mod common;

const TRANSACTIONS: usize = 2_600;

async fn status_of_all(
    client: &mut client_client::ClientClient<tonic::transport::Channel>,
    ids: &[String],
) -> (usize, usize) {
    let (mut committed, mut forgotten) = (0, 0);
    for id in ids {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let asked = client.status(proto::StatusRequest { txn: id.clone() }).await;
            let info = match asked {
                Ok(reply) => reply.into_inner(),
                Err(e) => {
                    // The coordinator may still be starting.
                    assert!(Instant::now() < deadline, "status of {id}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match State::try_from(info.state) {
                Ok(State::Committed) => committed += 1,
                Ok(State::Forgotten) => forgotten += 1,
                Ok(State::Unknown) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                other => panic!("{id} committed, but status says {other:?}: {info:?}"),
            }
            break;
        }
    }
    (committed, forgotten)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_never_calls_a_committed_transaction_aborted_across_restarts() {
    let cluster = common::LocalKv::start_with("status-test", 2, |config| {
        config.log.checkpoint_every = 500;
    });
    drop(status_stays_honest_across_restarts(cluster).await);
}

/// The same under Paxos Commit, whose shards and acceptors now forget too (once every shard
/// has acknowledged a decision): status stays honest, and what every shard and acceptor
/// remembers stays bounded (before, one decision and one set of instances per transaction,
/// for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paxos_commit_forgets_and_status_stays_honest_across_restarts() {
    let cluster = common::LocalKv::start_with("status-paxos-test", 2, |config| {
        config.log.checkpoint_every = 500;
        *config = config.clone().with_paxos_commit(3);
    });
    let mut nodes: Vec<(String, std::net::SocketAddr)> = Vec::new();
    for node in &cluster.config.nodes {
        if node.role != concord_node::config::Role::Coordinator {
            nodes.push((node.name.clone(), node.listen));
        }
    }
    let _running = status_stays_honest_across_restarts(cluster).await;
    for (name, listen) in nodes {
        let mut health = node_client::NodeClient::new(concord_node::channel(listen));
        let reply = health.health(proto::HealthRequest {}).await.expect("health").into_inner();
        assert!(
            reply.decisions_remembered < 1_024 + 200,
            "after {TRANSACTIONS} transactions {name} remembers {} of them",
            reply.decisions_remembered
        );
    }
}

/// Commits the transactions, restarts the coordinator, then every node, asking the status of
/// every id each time. Returns the cluster, still running.
async fn status_stays_honest_across_restarts(mut cluster: common::LocalKv) -> common::LocalKv {
    let gateway = cluster.config.coordinator().listen;
    let kv = KvClient::connect(gateway);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut ids = Vec::new();
    // Eight writers at a time; even-numbered transactions touch shard-1 only ("a…" keys),
    // odd-numbered ones shard-1 and shard-2 ("z…" keys land on the last shard).
    while ids.len() < TRANSACTIONS {
        let mut batch = tokio::task::JoinSet::new();
        for i in 0..8 {
            let (kv, n) = (kv.clone(), ids.len() + i);
            batch.spawn(async move {
                let mut txn = kv.begin().await?;
                txn.put(format!("a{}", n % 64), n.to_string()).await?;
                if n % 2 == 1 {
                    txn.put(format!("z{}", n % 64), n.to_string()).await?;
                }
                txn.commit().await
            });
        }
        while let Some(done) = batch.join_next().await {
            match done.expect("no panic") {
                Ok(Some(id)) => ids.push(id),
                Ok(None) => panic!("a write committed without an id"),
                // Conflicts between the writers, and the shards' start-up fence: retry.
                Err(e) => assert!(Instant::now() < deadline, "writes keep failing: {e}"),
            }
        }
    }

    cluster.restart("coordinator").await;
    let mut client = client_client::ClientClient::new(concord_node::channel(gateway));
    let (committed, forgotten) = status_of_all(&mut client, &ids).await;
    eprintln!("after a coordinator restart: {committed} committed, {forgotten} forgotten");
    assert_eq!(forgotten, 0, "every outcome is within what the shards keep for status queries");

    let others: Vec<String> = cluster
        .config
        .nodes
        .iter()
        .filter(|n| n.name != "coordinator")
        .map(|n| n.name.clone())
        .collect();
    for node in others.iter().map(String::as_str).chain(["coordinator"]) {
        cluster.restart(node).await;
    }
    let mut client = client_client::ClientClient::new(concord_node::channel(gateway));
    let (committed, forgotten) = status_of_all(&mut client, &ids).await;
    eprintln!("after every node restarted: {committed} committed, {forgotten} forgotten");
    assert_eq!(forgotten, 0, "the kept outcomes come back from the shards' checkpoints");
    cluster
}
