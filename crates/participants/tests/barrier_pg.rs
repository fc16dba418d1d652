//! The PostgreSQL barrier against the pure rule it implements (`concord_saga::Barrier`):
//! random call sequences give the same verdicts; two concurrent first calls apply once; old
//! markers are forgotten. Needs PostgreSQL on its standard loopback port
//! (`scripts/setup-databases.sh`, run here); without it the tests skip loudly, except under
//! `CI=true`, where they fail.

use std::time::Duration;

use concord_participants::barrier::{barrier, ensure_table, forget_older_than};
use concord_saga::{Barrier, BarrierVerdict, Phase};
use concord_testkit::{servers_ready, Server};
use tokio_postgres::{Client, NoTls};

fn postgres_ready() -> bool {
    servers_ready(&[Server::Databases], "the PostgreSQL barrier tests")
}

async fn connect() -> Client {
    let (client, connection) =
        tokio_postgres::connect("host=127.0.0.1 user=postgres dbname=concord_test", NoTls)
            .await
            .expect("connecting to PostgreSQL");
    tokio::spawn(connection);
    ensure_table(&client).await.expect("the barrier table");
    client
}

/// A name no other run or test uses.
fn unique(test: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{test}-{}-{nanos}", std::process::id())
}

#[tokio::test]
async fn random_call_sequences_get_the_pure_rules_verdicts() {
    if !postgres_ready() {
        return;
    }
    let mut client = connect().await;
    let run = unique("random");
    let mut model: Barrier<(String, String)> = Barrier::default();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..400 {
        let saga = format!("{run}-{}", next(6));
        let step = format!("s{}", next(2));
        let phase =
            [Phase::Action, Phase::Compensation, Phase::Confirm][usize::try_from(next(3)).unwrap()];
        let txn = client.transaction().await.unwrap();
        let verdict = barrier(&txn, &saga, &step, phase).await.unwrap();
        txn.commit().await.unwrap();
        let expected = model.decide((saga.clone(), step.clone()), phase);
        assert_eq!(verdict, expected, "{saga} {step} {phase}");
        seen.insert(format!("{verdict:?}"));
    }
    assert_eq!(seen.len(), 5, "every verdict came up: {seen:?}");
}

#[tokio::test]
async fn two_concurrent_first_calls_apply_once() {
    if !postgres_ready() {
        return;
    }
    let (mut a, mut b) = (connect().await, connect().await);
    let saga = unique("race");
    let ta = a.transaction().await.unwrap();
    assert_eq!(barrier(&ta, &saga, "pay", Phase::Action).await.unwrap(), BarrierVerdict::Apply);
    // B's insert waits on A's uncommitted row; A commits shortly.
    let saga_b = saga.clone();
    let second = tokio::spawn(async move {
        let tb = b.transaction().await.unwrap();
        let verdict = barrier(&tb, &saga_b, "pay", Phase::Action).await.unwrap();
        tb.commit().await.unwrap();
        verdict
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!second.is_finished(), "the second call waits for the first transaction");
    ta.commit().await.unwrap();
    assert_eq!(second.await.unwrap(), BarrierVerdict::Duplicate);
}

#[tokio::test]
async fn a_rolled_back_call_leaves_no_marker() {
    if !postgres_ready() {
        return;
    }
    let mut client = connect().await;
    let saga = unique("rollback");
    let txn = client.transaction().await.unwrap();
    assert_eq!(barrier(&txn, &saga, "pay", Phase::Action).await.unwrap(), BarrierVerdict::Apply);
    txn.rollback().await.unwrap(); // the step's effect failed: its marker goes with it
    let txn = client.transaction().await.unwrap();
    assert_eq!(barrier(&txn, &saga, "pay", Phase::Action).await.unwrap(), BarrierVerdict::Apply);
    txn.commit().await.unwrap();
    let count: i64 = client
        .query_one("SELECT count(*) FROM concord_barrier WHERE saga = $1", &[&saga])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
    client
        .execute(
            "UPDATE concord_barrier SET created_at = now() - interval '2 days' WHERE saga = $1",
            &[&saga],
        )
        .await
        .unwrap();
    let forgotten = forget_older_than(&client, Duration::from_secs(86_400)).await.unwrap();
    assert!(forgotten >= 1);
    let count: i64 = client
        .query_one("SELECT count(*) FROM concord_barrier WHERE saga = $1", &[&saga])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
}
