//! Clients from the outside, with tokens (issue 19): each role is refused outside its rights, a
//! key-value session answers only to the caller and the connection that opened it, and one
//! client flooding `Begin` fills its own share of open transactions, not everyone's — another
//! client keeps committing throughout.

use std::time::{Duration, Instant};

use concord_client::KvClient;
use concord_node::auth::{token_sha256, ClientRole, TokenConfig};
use concord_node::proto::{self, client_client::ClientClient, kv_client};
use concord_node::tls::ClientCredentials;
use tonic::Code;

mod common;

const ALICE: &str = "concord_alice_token";
const BOB: &str = "concord_bob_token";
const WATCH: &str = "concord_watch_token";

fn credentials(token: Option<&str>) -> ClientCredentials {
    ClientCredentials::new(None, token.map(Into::into)).unwrap()
}

fn grpc(
    address: std::net::SocketAddr,
    token: Option<&str>,
) -> kv_client::KvClient<concord_node::ClientChannel> {
    kv_client::KvClient::new(concord_node::client_channel(address, &credentials(token)))
}

fn begin() -> proto::KvBeginRequest {
    proto::KvBeginRequest { isolation: String::new(), reserve: false }
}

/// Whether `result` failed with `code`.
fn refused<T>(code: Code) -> impl Fn(Result<T, tonic::Status>) -> bool {
    move |result| result.err().is_some_and(|status| status.code() == code)
}

fn put(session: u64, key: &str) -> proto::KvPutRequest {
    proto::KvPutRequest { session, key: key.as_bytes().to_vec(), value: b"1".to_vec() }
}

/// Commits with retries while the cluster starts (shards refuse writes for a moment after).
async fn commit_one(kv: &KvClient, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let mut txn = kv.begin().await?;
            txn.put(key, "1").await?;
            txn.commit().await
        };
        match attempt.await {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "no commit of {key}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_sessions_and_a_begin_flood_are_bounded_per_client() {
    let cluster = common::LocalKv::start_with("tokens-test", 2, |config| {
        for (name, role, token) in [
            ("alice", ClientRole::Client, ALICE),
            ("bob", ClientRole::Client, BOB),
            ("watch", ClientRole::Monitor, WATCH),
        ] {
            config.tokens.push(TokenConfig {
                name: name.into(),
                role,
                sha256: token_sha256(token),
            });
        }
    });
    let gateway = cluster.config.coordinator().listen;
    let bob = KvClient::connect_with(gateway, &credentials(Some(BOB)));
    commit_one(&bob, "b/0").await;

    // Without a token, with a wrong one, and as a monitor: no transaction.
    assert!(refused(Code::Unauthenticated)(grpc(gateway, None).begin(begin()).await));
    assert!(refused(Code::Unauthenticated)(
        grpc(gateway, Some("concord_nobody")).begin(begin()).await
    ));
    assert!(refused(Code::PermissionDenied)(grpc(gateway, Some(WATCH)).begin(begin()).await));
    let anonymous = KvClient::connect(gateway);
    let tried = async {
        let mut txn = anonymous.begin().await?;
        txn.put("a/0", "1").await?;
        txn.commit().await
    };
    assert!(tried.await.is_err(), "a call link without a token was served");
    // A monitor lists; a client may not.
    let list = proto::ListRequest { limit: 5, running_only: false };
    let mut as_monitor =
        ClientClient::new(concord_node::client_channel(gateway, &credentials(Some(WATCH))));
    assert!(as_monitor.list(list).await.is_ok());
    let mut as_client =
        ClientClient::new(concord_node::client_channel(gateway, &credentials(Some(ALICE))));
    assert!(refused(Code::PermissionDenied)(as_client.list(list).await));

    // Alice's session is hers, on her connection.
    let mut alice = grpc(gateway, Some(ALICE));
    let session = alice.begin(begin()).await.unwrap().into_inner().session;
    let not_yours = |r: Result<tonic::Response<proto::KvWriteReply>, tonic::Status>| {
        r.unwrap_err().message().contains("no open transaction")
    };
    assert!(
        not_yours(grpc(gateway, Some(BOB)).put(put(session, "a/1")).await),
        "bob wrote in alice's"
    );
    assert!(
        not_yours(grpc(gateway, Some(ALICE)).put(put(session, "a/1")).await),
        "another connection"
    );
    let aborted = grpc(gateway, Some(BOB)).abort(proto::KvAbortRequest { session }).await;
    assert!(aborted.is_ok(), "an abort of a session not one's own is a no-op, not an error");
    alice.put(put(session, "a/1")).await.expect("alice writes in her own session");
    let commit =
        proto::KvCommitRequest { session, writes: vec![], begin: None, reserve_next: false };
    alice.commit(commit).await.expect("bob's abort did not end alice's transaction");

    // Alice floods Begin on one connection: her share fills, and is refused past it...
    let flood = grpc(gateway, Some(ALICE));
    let mut opened = 0usize;
    let exhausted = loop {
        let mut batch = Vec::new();
        for _ in 0..200 {
            let mut client = flood.clone();
            batch.push(tokio::spawn(async move { client.begin(begin()).await }));
        }
        let mut refusal = None;
        for begun in batch {
            match begun.await.unwrap() {
                Ok(_) => opened += 1,
                Err(status) => refusal = Some(status),
            }
        }
        if let Some(status) = refusal {
            break status;
        }
        assert!(opened <= 20_000, "alice opened {opened} transactions without a refusal");
    };
    assert_eq!(exhausted.code(), Code::ResourceExhausted, "{exhausted:?}");
    assert!(exhausted.message().contains("alice"), "{}", exhausted.message());
    assert_eq!(opened, 10_000, "one client's share is a tenth of the gateway's 100,000");
    // ...while bob still commits.
    for i in 0..20 {
        commit_one(&bob, &format!("b/{i}")).await;
    }
    drop(cluster);
}
