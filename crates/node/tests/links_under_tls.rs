//! Under `[tls]`, a peer frame is accepted only from the node it claims to be, and a protocol
//! message only from a role that sends it. A cluster of a coordinator and two shards runs on
//! loopback sockets; an attacker then opens peer links to shard-1 and forges a one-phase
//! commit that would create money (the attack issue 19 found): over plain TCP, with another
//! cluster's certificate, with a certificate of this cluster's CA naming another cluster's
//! node, with shard-2's real certificate claiming to be the coordinator, and with shard-2's
//! certificate as itself (a shard never sends a one-phase commit). Each is refused, and the
//! shard's balance is exactly what honest transactions made it.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_commit::two_phase::Msg;
use concord_node::auth::{token_sha256, ClientRole, TokenConfig};
use concord_node::config::{ClusterConfig, TlsConfig};
use concord_node::proto::{self, client_client::ClientClient, node_client::NodeClient};
use concord_node::tls::{node_name, CertFiles, ClientCredentials};
use concord_types::codec::Encode;
use concord_types::{NodeId, TxnId, Write};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: u64 = 7;

/// How an attacker dials: TLS with this configuration and server name, or plain TCP.
type Dial = Option<(Arc<rustls::ClientConfig>, String)>;

fn free_base_port() -> u16 {
    for base in (20_000..30_000).step_by(7) {
        if (0..3).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free ports");
}

/// The honest client's token, and a monitor's (which may look but not transact).
const CLIENT_TOKEN: &str = "concord_test_client_token";
const MONITOR_TOKEN: &str = "concord_test_monitor_token";

fn cluster(name: &str, certs: &Path, base: u16) -> ClusterConfig {
    let mut config = ClusterConfig::local(name, 2, base);
    config.tls = Some(TlsConfig { dir: certs.to_path_buf() });
    for (who, role, token) in
        [("app", ClientRole::Client, CLIENT_TOKEN), ("watch", ClientRole::Monitor, MONITOR_TOKEN)]
    {
        config.tokens.push(TokenConfig { name: who.into(), role, sha256: token_sha256(token) });
    }
    config
}

/// A peer link's opening: magic, the claimed node id, the cluster's name.
fn hello(from: u32, cluster: &str) -> Vec<u8> {
    let mut bytes = b"CNCRDPL1".to_vec();
    bytes.extend_from_slice(&from.to_le_bytes());
    bytes.extend_from_slice(&u16::try_from(cluster.len()).unwrap().to_le_bytes());
    bytes.extend_from_slice(cluster.as_bytes());
    bytes
}

/// A one-phase commit that adds a million to `KEY`: nobody submitted it.
fn forged_commit(sequence: u32) -> Vec<u8> {
    let txn = TxnId { coordinator: NodeId(0), epoch: 1, sequence };
    let msg: Msg = Msg::CommitOnePhase { txn, writes: vec![Write { key: KEY, delta: 1_000_000 }] };
    let body = msg.to_bytes();
    let mut frame = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// A TLS client presenting `node`'s certificate from `certs` (trusting `trusted`'s CA), or
/// none.
fn attacker(trusted: &CertFiles, certs: Option<(&CertFiles, &str)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(trusted.ca()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match certs {
        Some((files, node)) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(files.node_cert(node))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(files.node_key(node)).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"concord".to_vec()];
    Arc::new(config)
}

/// Sends `bytes` to `to` over `tls` (plain TCP without), then waits for the node to close the
/// connection: it refused. Returns whether it closed within a few seconds.
async fn send_and_see_refused(to: SocketAddr, tls: Dial, bytes: &[u8]) -> bool {
    let tcp = TcpStream::connect(to).await.unwrap();
    let mut buf = Vec::new();
    match tls {
        None => {
            let mut tcp = tcp;
            let _ = tcp.write_all(bytes).await;
            // The node may answer with a TLS alert before it closes: read to the end.
            let read = tokio::time::timeout(Duration::from_secs(8), tcp.read_to_end(&mut buf));
            read.await.is_ok()
        }
        Some((config, name)) => {
            let connector = tokio_rustls::TlsConnector::from(config);
            let server = ServerName::try_from(name).unwrap();
            let Ok(mut stream) = connector.connect(server, tcp).await else {
                return true; // the handshake itself was refused
            };
            let _ = stream.write_all(bytes).await;
            let _ = stream.flush().await;
            let read = tokio::time::timeout(Duration::from_secs(8), stream.read_to_end(&mut buf));
            read.await.is_ok()
        }
    }
}

async fn balance(shard: SocketAddr, credentials: &ClientCredentials) -> i64 {
    let mut node = NodeClient::new(concord_node::client_channel(shard, credentials));
    let reply = node.read_shard(proto::ReadShardRequest { keys: vec![KEY] }).await.unwrap();
    reply.into_inner().values.iter().find(|kv| kv.key == KEY).map_or(0, |kv| kv.value)
}

/// Waits (bounded) until `KEY` on `shard` reads `expected`: a client hears COMMIT once the
/// decision is durable at the coordinator, and the shard applies it when the decision reaches
/// it, a moment later.
async fn balance_becomes(shard: SocketAddr, credentials: &ClientCredentials, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = balance(shard, credentials).await;
        if now == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{shard} holds {now}, never {expected}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Adds 100 to `KEY` on both shards, as an honest client over TLS.
async fn honest_transfer(coordinator: SocketAddr, credentials: &ClientCredentials) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut client = ClientClient::new(concord_node::client_channel(coordinator, credentials));
        let request = proto::SubmitRequest {
            writes: vec![
                proto::WriteOp { shard: "shard-1".into(), key: KEY, delta: 100 },
                proto::WriteOp { shard: "shard-2".into(), key: KEY, delta: 100 },
            ],
            txn: String::new(),
        };
        if let Ok(reply) = client.submit(request).await {
            let mut events = reply.into_inner();
            while let Ok(Some(event)) = events.message().await {
                if let Some(proto::submit_event::Event::Outcome(info)) = event.event {
                    assert_eq!(info.state, proto::State::Committed as i32, "{info:?}");
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "the cluster never committed an honest transfer");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_peer_frames_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let files = CertFiles { dir: dir.path().join("certs") };
    let config = cluster("bank", &files.dir, base);
    concord_node::certs::issue(&config, &files, false).unwrap();

    // Another cluster with its own CA, and another cluster under this cluster's CA.
    let foreign = CertFiles { dir: dir.path().join("foreign") };
    concord_node::certs::issue(&cluster("bank", &foreign.dir, base), &foreign, false).unwrap();
    let sibling = CertFiles { dir: dir.path().join("sibling") };
    std::fs::create_dir_all(&sibling.dir).unwrap();
    std::fs::copy(files.ca(), sibling.ca()).unwrap();
    std::fs::copy(files.ca_key(), sibling.ca_key()).unwrap();
    concord_node::certs::issue(&cluster("bank-test", &sibling.dir, base), &sibling, false).unwrap();

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut nodes = Vec::new();
    for node in &config.nodes {
        let data = dir.path().join(&node.name);
        let (config, name, stopped) = (config.clone(), node.name.clone(), stopped.clone());
        nodes.push(tokio::spawn(async move {
            concord_node::serve(config, &name, &data, stopped).await
        }));
    }
    let coordinator = config.node("coordinator").unwrap().listen;
    let shard_1 = config.node("shard-1").unwrap().listen;
    let client = ClientCredentials::new(Some(&files.ca()), Some(CLIENT_TOKEN.into())).unwrap();
    let monitor = ClientCredentials::new(Some(&files.ca()), Some(MONITOR_TOKEN.into())).unwrap();

    honest_transfer(coordinator, &client).await;
    balance_becomes(shard_1, &monitor, 100).await;

    let shard_1_name = node_name("bank", NodeId(1));
    let as_shard_2 = attacker(&files, Some((&files, "shard-2")));
    let attacks: Vec<(&str, Dial, u32)> = vec![
        ("plain TCP, claiming the coordinator", None, 0),
        ("TLS without a certificate", Some((attacker(&files, None), shard_1_name.clone())), 0),
        (
            "another cluster's CA",
            Some((attacker(&files, Some((&foreign, "coordinator"))), shard_1_name.clone())),
            0,
        ),
        (
            "this CA, another cluster's coordinator",
            Some((attacker(&files, Some((&sibling, "coordinator"))), shard_1_name.clone())),
            0,
        ),
        ("shard-2 claiming the coordinator", Some((as_shard_2.clone(), shard_1_name.clone())), 0),
        ("shard-2 as itself", Some((as_shard_2, shard_1_name.clone())), 2),
    ];
    for (i, (what, tls, claimed)) in attacks.into_iter().enumerate() {
        let mut bytes = hello(claimed, "bank");
        bytes.extend(forged_commit(1_000_000 + u32::try_from(i).unwrap()));
        assert!(send_and_see_refused(shard_1, tls, &bytes).await, "{what}: not refused");
        assert_eq!(balance(shard_1, &monitor).await, 100, "{what}: the forged commit applied");
    }

    // The cluster still works, and its balance is what honest transactions made it.
    honest_transfer(coordinator, &client).await;
    balance_becomes(shard_1, &monitor, 200).await;

    // A client without the cluster's CA cannot even reach it: the node is not who it trusts.
    let stranger = ClientCredentials::load(&foreign.ca()).unwrap();
    let mut node = NodeClient::new(concord_node::client_channel(shard_1, &stranger));
    let asked = node.read_shard(proto::ReadShardRequest { keys: vec![KEY] }).await;
    assert!(asked.is_err(), "a client trusting another CA talked to the node");

    stop.send(true).unwrap();
    for node in nodes {
        let _ = tokio::time::timeout(Duration::from_secs(10), node).await;
    }
}

/// Opens a replica link (its magic and the cluster's name) to `to` over `tls`; whether the
/// replica answered ACCEPTED rather than closing.
async fn replica_link_accepted(
    to: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    name: String,
) -> bool {
    let tcp = TcpStream::connect(to).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls);
    let Ok(mut stream) = connector.connect(ServerName::try_from(name).unwrap(), tcp).await else {
        return false;
    };
    let mut hello = concord_replication::tcp::MAGIC.to_vec();
    hello.push(4);
    hello.extend_from_slice(b"bank");
    if stream.write_all(&hello).await.is_err() {
        return false;
    }
    let mut answer = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(8), stream.read_exact(&mut answer)).await;
    matches!(read, Ok(Ok(_))) && answer[0] == 1
}

/// Which of `replicas` leads (its core running), asked over TLS.
async fn leader_of(replicas: &[SocketAddr], credentials: &ClientCredentials) -> Option<SocketAddr> {
    for &replica in replicas {
        let mut node = NodeClient::new(concord_node::client_channel(replica, credentials));
        let asked = node.health(proto::HealthRequest {});
        if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(2), asked).await {
            if reply.into_inner().replica.is_some_and(|r| r.leading) {
                return Some(replica);
            }
        }
    }
    None
}

/// Adds 100 to `KEY` on both shards through whichever replica leads.
async fn honest_transfer_replicated(replicas: &[SocketAddr], credentials: &ClientCredentials) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(leader) = leader_of(replicas, credentials).await {
            let transfer = honest_transfer(leader, credentials);
            if tokio::time::timeout(Duration::from_secs(10), transfer).await.is_ok() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "no replica led and committed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A coordinator replicated on three nodes under `[tls]`: the replicas' links (openraft's
/// AppendEntries and votes) and the shards' links to whichever replica leads run over mutual
/// TLS, each replica proving itself with its own certificate while it speaks as the
/// coordinator. A shard's certificate — the cluster's own — cannot open a replica link (a
/// forged AppendEntries from it would rewrite the coordinator's decisions); a replica's can.
/// The leader stops, another takes over, and the balance is what the honest transfers made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_coordinator_runs_over_mutual_tls_and_refuses_replica_links_from_shards() {
    let dir = tempfile::tempdir().unwrap();
    let base = (21_000..31_000)
        .step_by(11)
        .find(|b| (0..5).all(|i| TcpListener::bind(("127.0.0.1", b + i)).is_ok()))
        .expect("free ports");
    let files = CertFiles { dir: dir.path().join("certs") };
    let mut config = cluster("bank", &files.dir, base);
    for (i, name) in [(3u16, "coordinator-b"), (4, "coordinator-c")] {
        config.nodes.push(concord_node::config::NodeConfig {
            name: name.into(),
            id: u32::from(i) + 10,
            role: concord_node::config::Role::Coordinator,
            listen: SocketAddr::from(([127, 0, 0, 1], base + i)),
            metrics: None,
        });
    }
    config.validate().expect("a replicated coordinator under [tls]");
    concord_node::certs::issue(&config, &files, false).unwrap();

    let mut nodes = Vec::new();
    for node in &config.nodes {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let data = dir.path().join(&node.name);
        let (config, name) = (config.clone(), node.name.clone());
        let task =
            tokio::spawn(async move { concord_node::serve(config, &name, &data, stopped).await });
        nodes.push((node.listen, stop, task));
    }
    let replicas: Vec<SocketAddr> = config.coordinators().map(|n| n.listen).collect();
    let shard_1 = config.node("shard-1").unwrap().listen;
    let client = ClientCredentials::new(Some(&files.ca()), Some(CLIENT_TOKEN.into())).unwrap();
    let monitor = ClientCredentials::new(Some(&files.ca()), Some(MONITOR_TOKEN.into())).unwrap();
    honest_transfer_replicated(&replicas, &client).await;
    balance_becomes(shard_1, &monitor, 100).await;

    // At every replica: a shard's certificate is refused a replica link, a replica's is not.
    for (replica, node) in replicas.iter().zip(config.coordinators()) {
        let name = node_name("bank", NodeId(node.id));
        let as_shard = attacker(&files, Some((&files, "shard-2")));
        assert!(
            !replica_link_accepted(*replica, as_shard, name.clone()).await,
            "{}: took a replica link from shard-2's certificate",
            node.name
        );
        let other = config.coordinators().find(|n| n.id != node.id).unwrap();
        let as_replica = attacker(&files, Some((&files, other.name.as_str())));
        assert!(
            replica_link_accepted(*replica, as_replica, name).await,
            "{}: refused {}'s replica link",
            node.name,
            other.name
        );
        let mut plain = concord_replication::tcp::MAGIC.to_vec();
        plain.extend_from_slice(b"\x04bank");
        assert!(send_and_see_refused(*replica, None, &plain).await, "{}: plain TCP", node.name);
    }

    // The leader stops; the others elect over TLS and go on.
    let leader = leader_of(&replicas, &monitor).await.expect("a leader");
    let at = nodes.iter().position(|(listen, ..)| *listen == leader).unwrap();
    let (_, stop, task) = nodes.remove(at);
    stop.send(true).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    let others: Vec<SocketAddr> = replicas.iter().copied().filter(|r| *r != leader).collect();
    honest_transfer_replicated(&others, &client).await;
    balance_becomes(shard_1, &monitor, 200).await;
    assert_eq!(balance(config.node("shard-2").unwrap().listen, &monitor).await, 200);

    for (_, stop, task) in nodes {
        let _ = stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
}
