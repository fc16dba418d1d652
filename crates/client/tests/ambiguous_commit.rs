//! A commit whose reply is lost is resolved by its id, which the client knew before it sent
//! the commit. A proxy between the client and the gateway cuts the connection at the worst
//! moment — after the commit reached the gateway (it committed; the reply is lost), or before
//! (it never ran) — and the client must say what happened: committed (and applied once), or
//! aborted and safe to retry (and `transact` retries it: applied once too). Before ids were
//! reserved, a blind-write commit that lost its reply had no id to ask about at all.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_client::KvClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;

/// What the proxy does to the next commit it sees (then it passes everything again).
const PASS: u8 = 0;
/// Forwards the commit, lets the gateway act on it, then cuts the connection: reply lost.
const CUT_AFTER: u8 = 1;
/// Cuts the connection instead of forwarding the commit: it never runs.
const CUT_BEFORE: u8 = 2;

const KV_COMMIT: u8 = 6;

async fn proxy(gateway: SocketAddr, mode: Arc<AtomicU8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (client, _) = listener.accept().await.unwrap();
            // The gateway may not be up yet: the client's connection then fails, as it would.
            let Ok(server) = TcpStream::connect(gateway).await else { continue };
            tokio::spawn(relay(client, server, Arc::clone(&mode)));
        }
    });
    address
}

/// Relays one connection, reading the client's side frame by frame (magic and token, then
/// `[length u32][id u64][method u8][body]`) so it can act on a commit.
async fn relay(client: TcpStream, server: TcpStream, mode: Arc<AtomicU8>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    });
    // The opener: the magic, and the token (`len: u16 LE`, then its bytes).
    let mut opener = [0u8; 10];
    if client_read.read_exact(&mut opener).await.is_err() {
        return;
    }
    let mut token = vec![0u8; usize::from(u16::from_le_bytes([opener[8], opener[9]]))];
    if client_read.read_exact(&mut token).await.is_err() {
        return;
    }
    if server_write.write_all(&opener).await.is_err()
        || server_write.write_all(&token).await.is_err()
    {
        return;
    }
    loop {
        let mut length = [0u8; 4];
        if client_read.read_exact(&mut length).await.is_err() {
            break;
        }
        let mut body = vec![0u8; u32::from_le_bytes(length) as usize];
        if client_read.read_exact(&mut body).await.is_err() {
            break;
        }
        let commit = body.get(8) == Some(&KV_COMMIT);
        let action = if commit { mode.swap(PASS, Ordering::SeqCst) } else { PASS };
        if action == CUT_BEFORE {
            break;
        }
        if server_write.write_all(&length).await.is_err()
            || server_write.write_all(&body).await.is_err()
        {
            break;
        }
        if action == CUT_AFTER {
            tokio::time::sleep(Duration::from_millis(300)).await;
            break;
        }
    }
    back.abort();
}

async fn counter(kv: &KvClient, key: &str) -> u64 {
    // (transact: the first call after a cut may meet the broken connection and retry.)
    let value = kv.transact(async |txn| txn.get_str(key).await).await.unwrap();
    value.map_or(0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_reply_is_resolved_by_the_id_known_before_the_commit() {
    let cluster = common::LocalKv::start("ambiguous-test", 2);
    let mode = Arc::new(AtomicU8::new(PASS));
    let through_proxy = proxy(cluster.config.coordinator().listen, Arc::clone(&mode)).await;
    let kv = KvClient::connect(through_proxy);
    // Shards refuse writes for the clock's maximum offset after they start.
    let deadline = Instant::now() + Duration::from_secs(30);
    while kv.transact(async |txn| txn.put("warm", "1").await).await.is_err() {
        assert!(Instant::now() < deadline, "no write within 30 s");
    }

    // The reply of a blind write (one call: its id came with the previous commit's reply) is
    // lost after the gateway committed it: the client finds out it committed.
    mode.store(CUT_AFTER, Ordering::SeqCst);
    let mut txn = kv.begin().await.unwrap();
    let id = txn.id().expect("a session opened ahead names the transaction").to_string();
    txn.put("a", "1").await.unwrap();
    txn.put("z", "1").await.unwrap();
    let committed = txn.commit().await.expect("resolved as committed");
    assert_eq!(committed.as_deref(), Some(id.as_str()));
    assert_eq!(counter(&kv, "a").await, 1);

    // The commit is lost before it reaches the gateway: the id never ran, the status says
    // aborted, and that is a retryable answer — `transact` runs it again, once.
    mode.store(CUT_BEFORE, Ordering::SeqCst);
    let mut tries = 0;
    kv.transact(async |txn| {
        tries += 1;
        let n = txn.get_str("b").await?.map_or(0, |v| v.parse::<u64>().unwrap_or(0));
        txn.put("b", (n + 1).to_string()).await
    })
    .await
    .expect("retried after the lost commit was found aborted");
    assert_eq!(tries, 2, "the first attempt's commit was lost, the second went through");
    assert_eq!(counter(&kv, "b").await, 1, "applied exactly once");
}
