//! Writes sent one call each (write buffering off, the benchmark's baseline) on sessions the
//! gateway opened ahead: the first operation of such a session takes its snapshot, whether it
//! is a read or a write, and a read after a write in the same transaction sees the write.
//! (A write that skipped the snapshot left the session marked fresh, and the read after it
//! tripped the gateway's "snapshot only before the first operation" assertion.)

use std::time::{Duration, Instant};

use concord_client::KvClient;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_then_a_read_on_a_session_opened_ahead_commit() {
    let cluster = common::LocalKv::start("per-call-writes", 2);
    let kv = KvClient::connect(cluster.config.coordinator().listen).with_write_buffering(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    // Each commit opens the next transaction's session ahead; the later rounds run on those.
    for round in 0..5 {
        loop {
            let attempt = async {
                let mut txn = kv.begin().await?;
                txn.put("a", round.to_string()).await?;
                txn.put("z", round.to_string()).await?;
                let read = txn.get_str("a").await?;
                txn.commit().await?;
                Ok::<_, concord_client::KvError>(read)
            };
            match attempt.await {
                Ok(read) => {
                    assert_eq!(read, Some(round.to_string()), "round {round} reads its own write");
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "round {round}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let last = kv.transact(async |txn| txn.get_str("z").await).await.unwrap();
    assert_eq!(last.as_deref(), Some("4"));
}
