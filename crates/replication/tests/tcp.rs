//! Three replicas on real sockets (loopback TCP, `tcp.rs`): writes commit and survive the
//! leader's death; a replica restarted on its port catches up; strangers — another cluster,
//! bytes that are not a replica link, a frame announcing gigabytes, garbage requests — are
//! refused without disturbing anyone.

use std::collections::BTreeMap;
use std::time::Duration;

mod common;

use common::{commands, Ledger};
use concord_replication::tcp::{self, MAGIC};
use concord_replication::{Options, Replica, TcpWire, Wire};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

struct Running {
    replica: Replica<Ledger>,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

struct Cluster {
    root: tempfile::TempDir,
    members: BTreeMap<u64, String>,
    running: BTreeMap<u64, Running>,
}

const CLUSTER: &str = "tcp-cluster";

/// Free loopback ports, found by binding and letting go.
async fn free_addresses(n: u64) -> BTreeMap<u64, String> {
    let mut members = BTreeMap::new();
    for id in 1..=n {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.insert(id, listener.local_addr().unwrap().to_string());
    }
    members
}

impl Cluster {
    async fn start(n: u64) -> Cluster {
        let mut cluster = Cluster {
            root: tempfile::tempdir().unwrap(),
            members: free_addresses(n).await,
            running: BTreeMap::new(),
        };
        for id in 1..=n {
            cluster.start_replica(id).await;
        }
        cluster
    }

    async fn start_replica(&mut self, id: u64) {
        let dir = self.root.path().join(format!("replica-{id}"));
        let mut options = Options::new(CLUSTER, id, dir, self.members.clone());
        common::patient(&mut options);
        // The port was just let go by a stopped replica, or by free_addresses: bind it again
        // (bounded) before anyone is told to call it.
        let mut listener = None;
        for _ in 0..100 {
            if let Ok(l) = TcpListener::bind(&self.members[&id]).await {
                listener = Some(l);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let listener = listener.expect("the replica's port is free again");
        let replica = Replica::start(options, Ledger::default(), TcpWire::new(CLUSTER))
            .await
            .expect("starts");
        let (stop, stopped) = watch::channel(false);
        let server =
            tokio::spawn(tcp::serve(listener, replica.raft().clone(), CLUSTER.into(), stopped));
        self.running.insert(id, Running { replica, stop, server });
    }

    /// Its process dies: its port closes, its Raft stops.
    async fn kill(&mut self, id: u64) {
        let running = self.running.remove(&id).expect("running");
        let _ = running.stop.send(true);
        running.server.await.unwrap();
        running.replica.shutdown().await;
    }

    async fn leader(&self) -> u64 {
        for _ in 0..750 {
            let leaders: Vec<Option<u64>> =
                self.running.values().map(|r| r.replica.status().leader).collect();
            if let Some(Some(leader)) = leaders.first() {
                if leaders.iter().all(|l| *l == Some(*leader))
                    && self.running.get(leader).is_some_and(|r| r.replica.status().is_leader)
                {
                    return *leader;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no leader agreed on in 15 s");
    }

    async fn write(&self, command: Vec<u8>) {
        let leader = self.leader().await;
        self.running[&leader].replica.write(command).await.expect("the leader commits it");
    }

    async fn all_applied(&self, expected: &[Vec<u8>]) {
        for _ in 0..500 {
            if self
                .running
                .values()
                .all(|r| commands(&r.replica.machine().lock().unwrap()) == expected)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the replicas did not converge in 10 s");
    }
}

fn command(i: usize) -> Vec<u8> {
    format!("decision {i}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tcp_writes_survive_the_leaders_death_and_a_restart_catches_up() {
    let mut cluster = Cluster::start(3).await;
    let mut expected = Vec::new();
    for i in 0..100 {
        cluster.write(command(i)).await;
        expected.push(command(i));
    }
    cluster.all_applied(&expected).await;

    let old = cluster.leader().await;
    cluster.kill(old).await;
    let new = cluster.leader().await;
    assert_ne!(new, old);
    for i in 100..150 {
        cluster.write(command(i)).await;
        expected.push(command(i));
    }
    cluster.all_applied(&expected).await;

    cluster.start_replica(old).await;
    cluster.all_applied(&expected).await;
    for id in cluster.running.keys().copied().collect::<Vec<_>>() {
        cluster.kill(id).await;
    }
}

/// Reads until the peer closes (bounded): what a refused connection gets.
async fn closed_after(mut stream: TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the replica closed the connection");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_and_the_replicas_go_on() {
    let mut cluster = Cluster::start(3).await;
    cluster.write(b"before".to_vec()).await;
    let target = cluster.members[&1].clone();

    // Not a replica link at all (an HTTP client, say).
    let mut http = TcpStream::connect(&target).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(closed_after(http).await.is_empty(), "nothing answered");

    // A replica of another cluster: told no, then closed.
    let mut other = TcpStream::connect(&target).await.unwrap();
    let mut hello = MAGIC.to_vec();
    hello.push(5);
    hello.extend_from_slice(b"other");
    other.write_all(&hello).await.unwrap();
    assert_eq!(closed_after(other).await, vec![0], "refused");
    let wire = TcpWire::new("other");
    let refused = wire.call(1, &target, vec![1, 2, 3], Duration::from_secs(2)).await;
    assert_eq!(refused.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);

    // One of ours that announces a 4 GiB frame: closed, nothing allocated.
    let mut huge = TcpStream::connect(&target).await.unwrap();
    let mut hello = MAGIC.to_vec();
    hello.push(u8::try_from(CLUSTER.len()).unwrap());
    hello.extend_from_slice(CLUSTER.as_bytes());
    huge.write_all(&hello).await.unwrap();
    huge.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    assert_eq!(closed_after(huge).await, vec![1], "accepted the hello, then closed");

    // Garbage requests in well-formed frames: each refused with a reason, the link kept.
    let wire = TcpWire::new(CLUSTER);
    for garbage in [vec![], vec![0xff; 3], vec![0; 64], b"\x01\x02\x03\x04\x05".to_vec()] {
        let reply = wire.call(1, &target, garbage, Duration::from_secs(2)).await.unwrap();
        let decoded = concord_replication::codec::decode_reply(&reply).expect("a reply");
        assert!(
            matches!(decoded, concord_replication::codec::Reply::Refused(_)),
            "refused: {decoded:?}"
        );
    }

    cluster.write(b"after".to_vec()).await;
    cluster.all_applied(&[b"before".to_vec(), b"after".to_vec()]).await;
    for id in cluster.running.keys().copied().collect::<Vec<_>>() {
        cluster.kill(id).await;
    }
}
