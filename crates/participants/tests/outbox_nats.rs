//! The transactional outbox end to end on PostgreSQL and NATS JetStream: only committed events
//! are published; a relay that crashed after publishing and before marking publishes again and
//! JetStream drops the copy; a consumer that sees a redelivery applies its effect once. Needs
//! both servers on their standard loopback ports (the setup scripts run here); without them
//! the tests skip loudly, except under `CI=true`, where they fail.

use std::time::Duration;

use concord_nats::Nats;
use concord_participants::outbox::{enqueue, ensure_tables, first_time, relay_once};
use concord_testkit::{servers_ready, Server};
use tokio_postgres::{Client, NoTls};

fn ready() -> bool {
    servers_ready(&[Server::Databases, Server::Nats], "the outbox tests")
}

/// A connection whose tables live in a schema of this run's own.
async fn connect(schema: &str) -> Client {
    let url = format!(
        "host=127.0.0.1 user=postgres dbname=concord_test options='-c search_path={schema}'"
    );
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).await.unwrap();
    ensure_tables(&client).await.unwrap();
    client
}

#[tokio::test]
async fn committed_events_are_published_once_and_consumed_once() {
    if !ready() {
        return;
    }
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let run = format!("outbox_{}_{nanos}", std::process::id());
    let mut db = connect(&run).await;
    let nats =
        Nats::connect("127.0.0.1:4222".parse().unwrap(), Duration::from_secs(5)).await.unwrap();
    let stream = run.to_uppercase();
    let subject = format!("{stream}.orders");
    nats.ensure_stream(&stream, &[&format!("{stream}.>")], Duration::from_secs(120)).await.unwrap();

    // Two committed events, one rolled back.
    for (id, commit) in [("e1", true), ("e2", false), ("e3", true)] {
        let txn = db.transaction().await.unwrap();
        enqueue(&txn, id, &subject, &format!("{{\"event\":\"{id}\"}}")).await.unwrap();
        if commit {
            txn.commit().await.unwrap();
        } else {
            txn.rollback().await.unwrap();
        }
    }
    // A relay that published e1 and crashed before marking it: the row is still unpublished.
    assert!(!nats
        .publish_once(&subject, "e1", b"{\"event\":\"e1\"}", Duration::from_secs(5))
        .await
        .unwrap());
    assert_eq!(relay_once(&mut db, &nats, 100).await.unwrap(), 2, "e1 again, and e3");
    assert_eq!(relay_once(&mut db, &nats, 100).await.unwrap(), 0, "nothing left");

    nats.ensure_consumer(&stream, "billing", &subject, Duration::from_millis(800)).await.unwrap();
    let first = nats.fetch(&stream, "billing", 2, Duration::from_secs(2)).await.unwrap();
    let ids: Vec<&str> = first.iter().map(|m| m.header("Nats-Msg-Id").unwrap()).collect();
    assert_eq!(ids, ["e1", "e3"], "e1 once despite two publishes; e2 never");
    // The consumer applies e1 and e3 but loses its ack for e3: it comes back.
    db.batch_execute("CREATE TABLE IF NOT EXISTS applied (msg_id text)").await.unwrap();
    for (i, message) in first.iter().enumerate() {
        let txn = db.transaction().await.unwrap();
        let id = message.header("Nats-Msg-Id").unwrap();
        if first_time(&txn, "billing", id).await.unwrap() {
            txn.execute("INSERT INTO applied VALUES ($1)", &[&id]).await.unwrap();
        }
        txn.commit().await.unwrap();
        if i == 0 {
            nats.ack(message).await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(900)).await;
    let again = nats.fetch(&stream, "billing", 1, Duration::from_secs(2)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].header("Nats-Msg-Id"), Some("e3"), "redelivered");
    let txn = db.transaction().await.unwrap();
    assert!(!first_time(&txn, "billing", "e3").await.unwrap(), "a duplicate: no effect");
    txn.commit().await.unwrap();
    nats.ack(&again[0]).await.unwrap();
    let applied: i64 = db.query_one("SELECT count(*) FROM applied", &[]).await.unwrap().get(0);
    assert_eq!(applied, 2);
    let _ = nats
        .request(&format!("$JS.API.STREAM.DELETE.{stream}"), &[], b"", Duration::from_secs(5))
        .await;
    db.batch_execute(&format!("DROP SCHEMA {run} CASCADE")).await.unwrap();
}
