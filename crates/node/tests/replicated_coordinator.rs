//! A coordinator replicated on three nodes, with two shards, in one process on loopback: one
//! replica leads and commits transfers; the others refuse clients naming the leader; when the
//! leader stops, another takes over and commits, and every transfer a client was told
//! committed is applied on both shards, none twice, nothing left prepared.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use concord_node::config::{ClusterConfig, NodeConfig, Role};
use concord_node::proto::{self, client_client::ClientClient, node_client::NodeClient};
use concord_node::tls::ClientCredentials;
use tokio::sync::watch;

/// Five free loopback ports in a row, below the ephemeral range; never the same base twice.
fn free_base_port() -> u16 {
    let offset = u16::try_from(std::process::id() % 400).unwrap() * 5;
    for base in (33_000 + offset..35_000).chain(33_000..33_000 + offset).step_by(5) {
        if (0..5).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free ports");
}

fn config(base: u16) -> ClusterConfig {
    let mut config = ClusterConfig::local("replicated", 2, base);
    for (i, name) in [(3u16, "coordinator-b"), (4, "coordinator-c")] {
        config.nodes.push(NodeConfig {
            name: name.into(),
            id: 10 + u32::from(i),
            role: Role::Coordinator,
            listen: SocketAddr::from(([127, 0, 0, 1], base + i)),
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], base + 100 + i))),
        });
    }
    config
}

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), concord_node::NodeError>>,
}

fn start(config: &ClusterConfig, name: &str, root: &std::path::Path) -> Running {
    let (stop, stopped) = watch::channel(false);
    let (config, name, dir) = (config.clone(), name.to_string(), root.join(name));
    let task = tokio::spawn(async move { concord_node::serve(config, &name, &dir, stopped).await });
    Running { stop, task }
}

enum Answer {
    Committed,
    Aborted,
    /// Refused before anything started: a standby (UNAVAILABLE, perhaps naming the leader).
    NotLeader(Option<String>),
    /// The outcome is not known (the replica stopped with the transfer in flight).
    Unknown,
}

async fn transfer(at: SocketAddr) -> Answer {
    let credentials = ClientCredentials::new(None, None).unwrap();
    let mut client = ClientClient::new(concord_node::client_channel(at, &credentials));
    let request = proto::SubmitRequest {
        writes: vec![
            proto::WriteOp { shard: "shard-1".into(), key: 1, delta: 5 },
            proto::WriteOp { shard: "shard-2".into(), key: 1, delta: 5 },
        ],
        txn: String::new(),
    };
    let reply = match tokio::time::timeout(Duration::from_secs(10), client.submit(request)).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
            let leader = status
                .metadata()
                .get(concord_node::LEADER_METADATA)
                .and_then(|v| v.to_str().ok().map(String::from));
            return Answer::NotLeader(leader);
        }
        Ok(Err(_)) | Err(_) => return Answer::Unknown,
    };
    let mut events = reply.into_inner();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.message()).await {
            Ok(Ok(Some(event))) => {
                if let Some(proto::submit_event::Event::Outcome(info)) = event.event {
                    return if info.state == proto::State::Committed as i32 {
                        Answer::Committed
                    } else {
                        Answer::Aborted
                    };
                }
            }
            _ => return Answer::Unknown,
        }
    }
}

/// Submits one transfer through whichever replica leads (following redirects), until one
/// commits; counts what committed and what ended unknown on the way.
async fn commit_one(coordinators: &[SocketAddr], tally: &mut Tally) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next = 0;
    loop {
        assert!(Instant::now() < deadline, "no replica committed a transfer in 30 s");
        let at = coordinators[next % coordinators.len()];
        match transfer(at).await {
            Answer::Committed => {
                tally.committed += 1;
                return at;
            }
            Answer::Aborted => tally.aborted += 1,
            Answer::Unknown => tally.unknown += 1,
            Answer::NotLeader(Some(leader)) => {
                tally.redirects += 1;
                if let Some(i) = coordinators.iter().position(|c| c.to_string() == leader) {
                    next = i;
                    continue;
                }
            }
            Answer::NotLeader(None) => {}
        }
        next += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Debug, Default)]
struct Tally {
    committed: i64,
    aborted: u32,
    unknown: i64,
    redirects: u32,
}

async fn read_key_1(at: SocketAddr) -> (i64, usize) {
    let mut node = NodeClient::new(concord_node::channel(at));
    let reply = node
        .read_shard(proto::ReadShardRequest { keys: vec![1] })
        .await
        .expect("the shard answers")
        .into_inner();
    (reply.values.first().map_or(0, |kv| kv.value), reply.in_doubt.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_coordinator_survives_its_leader_and_applies_every_commit_once() {
    let root = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let config = config(base);
    let names: Vec<String> = config.nodes.iter().map(|n| n.name.clone()).collect();
    let mut running: BTreeMap<String, Running> =
        names.iter().map(|n| (n.clone(), start(&config, n, root.path()))).collect();
    let coordinators: Vec<SocketAddr> = config.coordinators().map(|n| n.listen).collect();
    let name_at =
        |at: SocketAddr| config.nodes.iter().find(|n| n.listen == at).unwrap().name.clone();

    let mut tally = Tally::default();
    let mut leader = commit_one(&coordinators, &mut tally).await;
    for _ in 0..10 {
        leader = commit_one(&coordinators, &mut tally).await;
    }

    // The leader's metrics: its replicated log's series, every one the deploy files name.
    let metrics = config.nodes.iter().find(|n| n.listen == leader).unwrap().metrics.unwrap();
    let scraped = concord_http::call(metrics, "GET", "/metrics", &[], "", Duration::from_secs(5))
        .await
        .expect("the leader serves /metrics")
        .1;
    assert!(scraped.contains("concord_replica_leading{") && scraped.contains("} 1\n"), "{scraped}");
    let voters = scraped.lines().find(|l| l.starts_with("concord_replica_voters{"));
    assert!(voters.is_some_and(|l| l.ends_with(" 3")), "three voters: {scraped}");
    let mut named = 0;
    for (file, text) in concord_testkit::deploy_files() {
        for name in concord_testkit::metric_names(&text) {
            if name.starts_with("concord_replica_") {
                assert!(concord_testkit::serves_metric(&scraped, name), "{file} names `{name}`");
                named += 1;
            }
        }
    }
    assert!(named >= 3, "the alert rules watch the replicated log: {named}");

    // A standby refuses, naming the leader: never an outcome.
    let standby = *coordinators.iter().find(|c| **c != leader).unwrap();
    match transfer(standby).await {
        Answer::NotLeader(Some(named)) => assert_eq!(named, leader.to_string()),
        Answer::NotLeader(None) => panic!("the standby knows the leader"),
        _ => panic!("a standby answered a transfer"),
    }

    // The leader stops; another replica takes over.
    let old = name_at(leader);
    let stopped_at = Instant::now();
    let stopping = running.remove(&old).unwrap();
    let _ = stopping.stop.send(true);
    let ended = tokio::time::timeout(Duration::from_secs(20), stopping.task).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "the leader stopped cleanly: {ended:?}");
    eprintln!("the old leader stopped in {:?}", stopped_at.elapsed());
    let survivors: Vec<SocketAddr> =
        coordinators.iter().copied().filter(|c| *c != leader).collect();
    let new = commit_one(&survivors, &mut tally).await;
    eprintln!(
        "first commit through the new leader {} after {:?}",
        name_at(new),
        stopped_at.elapsed()
    );
    for _ in 0..10 {
        commit_one(&survivors, &mut tally).await;
    }

    // The old leader comes back as a standby and the cluster goes on.
    running.insert(old.clone(), start(&config, &old, root.path()));
    for _ in 0..5 {
        commit_one(&coordinators, &mut tally).await;
    }

    // Every transfer told committed is applied on both shards, none twice; those whose outcome
    // was unknown are applied on both or neither; nothing stays prepared.
    let shards: Vec<SocketAddr> = config.shards().map(|n| n.listen).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (one, in_doubt_1) = read_key_1(shards[0]).await;
        let (two, in_doubt_2) = read_key_1(shards[1]).await;
        let settled = in_doubt_1 == 0 && in_doubt_2 == 0 && one == two;
        if settled {
            let applied = one / 5;
            assert!(
                applied >= tally.committed && applied <= tally.committed + tally.unknown,
                "applied {applied}, told committed {}, unknown {}: {tally:?}",
                tally.committed,
                tally.unknown
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shards not settled: {one} / {two}, in doubt {in_doubt_1} / {in_doubt_2}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{tally:?}");
    for (_, r) in running {
        let _ = r.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(20), r.task).await;
    }
}
