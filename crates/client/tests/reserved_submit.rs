//! The delta API names a transaction before it runs, too: `Client.Reserve` returns an id and
//! `Submit` under it commits under that id, so a client that loses the Submit's reply already
//! knows what to ask `Status` about (`concord txn submit` does, bounded). Before, the id came
//! only in the Submit's first reply, which a dropped connection could take with it.
//!
//! An in-process delta cluster (a coordinator and two shards): a Submit whose reply is never
//! read still commits under its reserved id, and Status says so; an id can be used once; an
//! id never reserved is refused and never runs.

use std::time::{Duration, Instant};

use concord_node::proto::{self, client_client, State};
use tonic::Code;

mod common;

fn writes() -> Vec<proto::WriteOp> {
    ["shard-1", "shard-2"]
        .iter()
        .map(|shard| proto::WriteOp { shard: (*shard).to_string(), key: 7, delta: 1 })
        .collect()
}

async fn status(
    client: &mut client_client::ClientClient<tonic::transport::Channel>,
    id: &str,
) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let asked = client.status(proto::StatusRequest { txn: id.to_string() }).await;
        if let Ok(info) = asked {
            let state = info.into_inner().state;
            if state == State::Committed as i32 || state == State::Aborted as i32 {
                return state;
            }
        }
        assert!(Instant::now() < deadline, "no definite status for {id} within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_runs_under_the_id_reserved_for_it_and_a_lost_reply_is_answered_by_it() {
    let cluster = common::LocalKv::start_with("reserve-test", 2, |config| config.kv = None);
    let coordinator = cluster.config.coordinator().listen;
    let mut client = client_client::ClientClient::new(concord_node::channel(coordinator));
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        match client.reserve(proto::ReserveRequest {}).await {
            Ok(reply) => break reply.into_inner().txn,
            Err(e) => assert!(Instant::now() < deadline, "no reservation within 30 s: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!id.is_empty());

    // Submit under it on a connection of its own, and drop it without reading a reply.
    let mut other = client_client::ClientClient::new(concord_node::channel(coordinator));
    let stream = other
        .submit(proto::SubmitRequest { writes: writes(), txn: id.clone() })
        .await
        .expect("submitted");
    drop(stream);
    drop(other);
    assert_eq!(status(&mut client, &id).await, State::Committed as i32, "{id} ran and committed");

    // Once only: the reservation is used up.
    let again = client.submit(proto::SubmitRequest { writes: writes(), txn: id.clone() }).await;
    let refused = match again {
        Err(status) => status,
        Ok(stream) => {
            let mut stream = stream.into_inner();
            stream.message().await.expect_err("a second Submit under a used id is refused")
        }
    };
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    // An id nobody reserved: refused, and it never runs.
    let made_up = format!("{}.{}@n0", id.split('.').next().unwrap(), 999_999);
    let asked =
        client.submit(proto::SubmitRequest { writes: writes(), txn: made_up.clone() }).await;
    let refused = match asked {
        Err(status) => status,
        Ok(stream) => stream.into_inner().message().await.expect_err("an unreserved id"),
    };
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let malformed = client.submit(proto::SubmitRequest { writes: writes(), txn: "x".into() }).await;
    assert_eq!(malformed.map(|_| ()).unwrap_err().code(), Code::InvalidArgument);
}
