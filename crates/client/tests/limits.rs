//! The key-value store's limits suite: every documented limit (docs/kv.md, "Limits") at the
//! limit (works) and just past it (a clear INVALID_ARGUMENT naming the limit), through the Rust
//! client and through clients that skip its checks (gRPC, a raw call link) — and after each
//! refusal the cluster keeps serving. One transaction of 70 writes of 256 KiB used to trip an
//! assert in the link's outbox and take the whole process down; a scan reply over 16 MiB
//! panicked a shard's reply task.

use std::time::{Duration, Instant};

use concord_client::{KvClient, KvError};
use concord_kv::Limits;
use concord_node::call_link::{CallClient, Method};
use concord_node::proto::{self, kv_client};
use tonic::Code;

mod common;

const VALUE: usize = 256 << 10;

/// Waits out the shards' start-up write fence: a first write that commits.
async fn first_write(kv: &KvClient) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            // A key on each shard: each refuses writes for a moment after it starts.
            let mut txn = kv.begin().await?;
            txn.put("a-warm", "up").await?;
            txn.put("warm", "up").await?;
            txn.commit().await
        };
        match attempt.await {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "no write within 30 s: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Commits `writes` in one transaction through the Rust client.
async fn commit(kv: &KvClient, writes: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Option<String>, KvError> {
    let mut txn = kv.begin().await?;
    for (key, value) in writes {
        txn.put(key, value).await?;
    }
    txn.commit().await
}

fn invalid_naming(result: Result<impl std::fmt::Debug, KvError>, words: &str) {
    match result {
        Err(KvError::Invalid(message)) => {
            assert!(message.contains(words), "{message}");
            assert!(message.is_ascii(), "messages reach gRPC clients unencoded: {message}");
        }
        other => panic!("expected Invalid naming `{words}`, got {other:?}"),
    }
}

fn big_writes(count: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..count).map(|i| (format!("big{i:03}").into_bytes(), vec![b'v'; VALUE])).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kv_limit_holds_at_the_limit_and_is_refused_just_past_it() {
    let cluster = common::LocalKv::start("limits-test", 2);
    let gateway = cluster.config.coordinator().listen;
    let kv = KvClient::connect(gateway);
    first_write(&kv).await;
    let limits = Limits::default();

    // Keys: 4 KiB, not empty.
    let key = vec![b'k'; limits.max_key_bytes];
    commit(&kv, vec![(key.clone(), b"1".to_vec())]).await.expect("a key at the limit");
    let long = vec![b'k'; limits.max_key_bytes + 1];
    invalid_naming(commit(&kv, vec![(long, b"1".to_vec())]).await, "exceeds the limit of 4096");
    invalid_naming(commit(&kv, vec![(Vec::new(), b"1".to_vec())]).await, "empty");

    // Values: 256 KiB.
    commit(&kv, vec![(b"v".to_vec(), vec![1; limits.max_value_bytes])]).await.expect("at limit");
    let over = vec![1; limits.max_value_bytes + 1];
    invalid_naming(commit(&kv, vec![(b"v".to_vec(), over)]).await, "exceeds the limit of 262144");

    // A transaction's size: 8 MiB. 31 values of 256 KiB fit, 32 do not; 70 (the crash) neither.
    commit(&kv, big_writes(31)).await.expect("31 values of 256 KiB");
    invalid_naming(commit(&kv, big_writes(32)).await, "per transaction");
    invalid_naming(commit(&kv, big_writes(70)).await, "per transaction");

    // The same 70 from clients that do not check first. gRPC refuses a message over 16 MiB…
    let mut grpc = kv_client::KvClient::new(concord_node::channel(gateway))
        .max_decoding_message_size(concord_node::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(usize::MAX);
    let kv_writes = |n| -> Vec<proto::KvWrite> {
        big_writes(n)
            .into_iter()
            .map(|(key, value)| proto::KvWrite { key, value, delete: false })
            .collect()
    };
    let begin = || Some(proto::KvBeginRequest::default());
    let seventy = proto::KvCommitRequest {
        session: 0,
        writes: kv_writes(70),
        begin: begin(),
        reserve_next: false,
    };
    let refused = grpc.commit(seventy.clone()).await.expect_err("17.5 MiB over gRPC");
    assert_ne!(refused.code(), Code::Ok);
    // …the gateway refuses 40 (10 MiB: within gRPC's message, past the transaction)…
    let forty = proto::KvCommitRequest {
        session: 0,
        writes: kv_writes(40),
        begin: begin(),
        reserve_next: false,
    };
    let refused = grpc.commit(forty).await.expect_err("10 MiB in one transaction");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("per transaction"), "{}", refused.message());
    // …and a raw call link refuses to frame a request over its frame.
    let calls = CallClient::new(gateway);
    let refused = calls
        .call::<proto::KvCommitReply>(Method::KvCommit, &seventy, Duration::from_secs(10))
        .await
        .expect_err("17.5 MiB on a call link");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("frame limit"), "{}", refused.message());
    // Put by Put over gRPC: the 32nd value of a transaction is refused, naming the limit.
    let session = grpc.begin(proto::KvBeginRequest::default()).await.unwrap().into_inner().session;
    let mut refused_at = None;
    for (i, (key, value)) in big_writes(40).into_iter().enumerate() {
        if let Err(e) = grpc.put(proto::KvPutRequest { session, key, value }).await {
            assert_eq!(e.code(), Code::InvalidArgument);
            refused_at = Some(i);
            break;
        }
    }
    assert_eq!(refused_at, Some(31), "the 32nd write is the one over 8 MiB");

    // Keys per transaction: 10,000.
    let small =
        |n: usize| (0..n).map(|i| (format!("s{i:05}").into_bytes(), b"x".to_vec())).collect();
    commit(&kv, small(limits.max_keys_per_txn)).await.expect("10,000 keys");
    invalid_naming(commit(&kv, small(limits.max_keys_per_txn + 1)).await, "more than 10000 keys");

    // Scans: 10,000 rows; and at most 4 MiB of keys and values per reply, the rest on asking.
    let mut txn = kv.begin().await.unwrap();
    let (rows, _) = txn.scan("s", None, 10_000).await.expect("a scan at the row limit");
    assert_eq!(rows.len(), 10_000);
    invalid_naming(txn.scan("s", None, 10_001).await, "exceeds the maximum of 10000");
    let mut txn = kv.begin().await.unwrap();
    let mut start = b"big".to_vec();
    let mut seen = 0;
    loop {
        let (rows, more) = txn.scan(&start, Some(b"bih"), 100).await.expect("a scan of big rows");
        let bytes: usize = rows.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(bytes <= limits.max_scan_bytes, "{bytes} bytes in one reply");
        seen += rows.len();
        if !more {
            break;
        }
        let last = rows.last().expect("a reply that says more has rows").0.clone();
        start = last.into_iter().chain([0]).collect();
    }
    assert_eq!(seen, 31, "every big row, a few megabytes at a time");

    // Still serving: a plain write and read.
    commit(&kv, vec![(b"after".to_vec(), b"ok".to_vec())]).await.expect("still serving");
    let mut txn = kv.begin().await.unwrap();
    assert_eq!(txn.get("after").await.unwrap(), Some(b"ok".to_vec()));
}

/// The transaction lifetime (`txn_lifetime_ms`, 3 s here): a transaction used well within it
/// works; one used past it is refused as too old, and the gateway keeps serving — including
/// the Rust client's sessions opened ahead, whose lifetime starts at their first operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_lives_for_its_lifetime_and_is_refused_after_it() {
    let cluster = common::LocalKv::start_with("lifetime-test", 1, |config| {
        if let Some(kv) = config.kv.as_mut() {
            kv.txn_lifetime_ms = 3_000;
        }
    });
    let gateway = cluster.config.coordinator().listen;
    let kv = KvClient::connect(gateway);
    first_write(&kv).await; // also leaves a session opened ahead in the client's pool
    let mut grpc = kv_client::KvClient::new(concord_node::channel(gateway));
    let within = grpc.begin(proto::KvBeginRequest::default()).await.unwrap().into_inner().session;
    let past = grpc.begin(proto::KvBeginRequest::default()).await.unwrap().into_inner().session;
    let put = |session: u64, key: &str| proto::KvPutRequest {
        session,
        key: key.as_bytes().to_vec(),
        value: b"1".to_vec(),
    };
    grpc.put(put(within, "within")).await.expect("a put well within the lifetime");
    grpc.put(put(past, "past")).await.expect("a put well within the lifetime");
    let commit = |session: u64| proto::KvCommitRequest {
        session,
        writes: Vec::new(),
        begin: None,
        reserve_next: false,
    };
    grpc.commit(commit(within)).await.expect("a commit within the lifetime");

    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let refused = grpc.commit(commit(past)).await.expect_err("a commit past the lifetime");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let message = refused.message();
    assert!(message.contains("lifetime") || message.contains("expired"), "{message}");

    // Still serving; the pooled session (opened ahead over 4 s ago) starts its life now.
    let id = commit_one(&kv).await.expect("a transaction on a session opened ahead");
    assert!(id.is_some(), "named ahead");
    let mut txn = kv.begin().await.unwrap();
    assert_eq!(txn.get("after").await.unwrap(), Some(b"ok".to_vec()));
}

async fn commit_one(kv: &KvClient) -> Result<Option<String>, KvError> {
    commit(kv, vec![(b"after".to_vec(), b"ok".to_vec())]).await
}
