//! The client against a real NATS server with JetStream: de-duplication by message id, a
//! durable pull consumer, explicit acks and redelivery of what was not acknowledged. Needs
//! NATS on 127.0.0.1:4222 (`scripts/setup-nats.sh`, run here); without it the tests skip
//! loudly, except under `CI=true`, where they fail.

use std::time::Duration;

use concord_nats::Nats;
use concord_testkit::{servers_ready, Server};

fn nats_ready() -> bool {
    servers_ready(&[Server::Nats], "the NATS tests")
}

fn unique(name: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{name}_{}_{nanos}", std::process::id())
}

#[tokio::test]
async fn a_message_id_is_stored_once_and_unacked_messages_come_back() {
    if !nats_ready() {
        return;
    }
    let nats =
        Nats::connect("127.0.0.1:4222".parse().unwrap(), Duration::from_secs(5)).await.unwrap();
    let stream = unique("TEST");
    let subject = format!("{stream}.events");
    nats.ensure_stream(&stream, &[&format!("{stream}.>")], Duration::from_secs(60)).await.unwrap();
    nats.ensure_stream(&stream, &[&format!("{stream}.>")], Duration::from_secs(60)).await.unwrap();
    let timeout = Duration::from_secs(5);
    assert!(!nats.publish_once(&subject, "m1", b"one", timeout).await.unwrap());
    assert!(nats.publish_once(&subject, "m1", b"one again", timeout).await.unwrap(), "a duplicate");
    assert!(!nats.publish_once(&subject, "m2", b"two", timeout).await.unwrap());

    nats.ensure_consumer(&stream, "reader", &subject, Duration::from_secs(2)).await.unwrap();
    let first = nats.fetch(&stream, "reader", 2, Duration::from_millis(500)).await.unwrap();
    let payloads: Vec<&[u8]> = first.iter().map(|m| m.payload.as_slice()).collect();
    assert_eq!(payloads, [b"one".as_slice(), b"two".as_slice()], "m1 stored once");
    nats.ack(&first[0]).await.unwrap(); // "two" is not acknowledged
    let empty = nats.fetch(&stream, "reader", 10, Duration::from_millis(200)).await.unwrap();
    assert!(empty.is_empty(), "nothing new before the ack wait");
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let again = nats.fetch(&stream, "reader", 1, Duration::from_millis(1_000)).await.unwrap();
    assert_eq!(again.len(), 1, "the unacknowledged one is redelivered");
    assert_eq!(again[0].payload, b"two");
    nats.ack(&again[0]).await.unwrap();
    let _ = nats.request(&format!("$JS.API.STREAM.DELETE.{stream}"), &[], b"", timeout).await;
}
