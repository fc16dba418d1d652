//! The gateway serves the key-value store twice: to this crate's client over a call link, and
//! as the gRPC `Kv` service (the public contract for other languages). Both must be one store:
//! what one commits, the other reads. An in-process cluster of a gateway and two shards.

use std::time::{Duration, Instant};

use concord_client::KvClient;
use concord_node::proto::{self, kv_client};

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_service_and_the_call_link_are_one_store() {
    let cluster = common::LocalKv::start("client-test", 2);
    let gateway = cluster.config.coordinator().listen;

    // Over the call link; shards refuse writes for the clock's maximum offset after they start.
    let kv = KvClient::connect(gateway);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let mut txn = kv.begin().await?;
            txn.put("a", "1").await?;
            txn.put("z", "26").await?;
            txn.commit().await
        };
        match attempt.await {
            Ok(txn) => {
                assert!(txn.is_some(), "a committed write has a transaction id");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "no write committed within 30 s: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Over gRPC: read what the call link wrote (both shards), write something of its own.
    let mut grpc = kv_client::KvClient::new(concord_node::channel(gateway));
    let begun = grpc.begin(proto::KvBeginRequest::default()).await.unwrap().into_inner();
    for (key, value) in [("a", "1"), ("z", "26")] {
        let get = proto::KvGetRequest { session: begun.session, key: key.into(), begin: None };
        let got = grpc.get(get).await.unwrap().into_inner();
        assert!(got.found, "{key}");
        assert_eq!(got.value, value.as_bytes());
    }
    let put = proto::KvPutRequest { session: begun.session, key: "b".into(), value: "2".into() };
    grpc.put(put).await.unwrap();
    let commit = proto::KvCommitRequest {
        session: begun.session,
        writes: vec![],
        begin: None,
        reserve_next: false,
    };
    let committed = grpc.commit(commit).await.unwrap().into_inner();
    assert!(!committed.txn.is_empty());

    // And back: the call link reads what gRPC wrote.
    let mut txn = kv.begin().await.unwrap();
    assert_eq!(txn.get("b").await.unwrap(), Some(b"2".to_vec()));
    let (rows, more) = txn.scan("", None, 10).await.unwrap();
    let keys: Vec<&[u8]> = rows.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!((keys, more), (vec![&b"a"[..], b"b", b"z"], false));
    txn.commit().await.unwrap();
}
