//! The transactional outbox, and de-duplication for consumers.
//!
//! ```text
//!  service txn: UPDATE its state; enqueue(event) ── one local commit ──► concord_outbox row
//!  relay:       rows not yet published ─► JetStream publish, Nats-Msg-Id = msg_id ─► mark published
//!  consumer:    first_time(consumer, msg_id) + its effect ── one local commit (duplicates: no-op)
//! ```
//!
//! The relay publishes before it marks: a crash between the two publishes the row again, and
//! JetStream drops the copy within the stream's duplicate window (same message id). Consumers
//! still see a redelivery when they fail to ack in time, so they de-duplicate too: a
//! processed-events row written in the same transaction as the effect.

use std::time::Duration;

use concord_nats::Nats;
use tokio_postgres::{Client, GenericClient};

const TABLES_SQL: &str = "
  CREATE TABLE IF NOT EXISTS concord_outbox (
    id bigserial PRIMARY KEY,
    msg_id text NOT NULL UNIQUE,
    subject text NOT NULL,
    payload text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz);
  CREATE INDEX IF NOT EXISTS concord_outbox_unpublished ON concord_outbox (id) WHERE published_at IS NULL;
  CREATE TABLE IF NOT EXISTS concord_processed (
    consumer text NOT NULL,
    msg_id text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, msg_id));";

/// Creates the outbox and processed-events tables if needed (in the connection's schema).
pub async fn ensure_tables(client: &Client) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock(7336024); {TABLES_SQL} COMMIT;"
        ))
        .await
}

/// Queues an event inside the caller's transaction: it is published iff that commits.
/// `msg_id` must be unique per event (it is JetStream's de-duplication key).
pub async fn enqueue<C: GenericClient>(
    txn: &C,
    msg_id: &str,
    subject: &str,
    payload: &str,
) -> Result<(), tokio_postgres::Error> {
    txn.execute(
        "INSERT INTO concord_outbox (msg_id, subject, payload) VALUES ($1, $2, $3)",
        &[&msg_id, &subject, &payload],
    )
    .await
    .map(|_| ())
}

/// Inside the consumer's transaction: true the first time `consumer` sees `msg_id` (apply the
/// effect, commit), false for a duplicate (skip the effect; ack it).
pub async fn first_time<C: GenericClient>(
    txn: &C,
    consumer: &str,
    msg_id: &str,
) -> Result<bool, tokio_postgres::Error> {
    let inserted = txn
        .execute(
            "INSERT INTO concord_processed (consumer, msg_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&consumer, &msg_id],
        )
        .await?;
    Ok(inserted == 1)
}

/// Publishes up to `batch` unpublished rows, oldest first, and marks them. Rows another relay
/// holds are skipped (`FOR UPDATE SKIP LOCKED`), so several relays can run. Returns how many
/// were published.
pub async fn relay_once(client: &mut Client, nats: &Nats, batch: i64) -> Result<usize, String> {
    let e = |e: tokio_postgres::Error| e.to_string();
    let txn = client.transaction().await.map_err(e)?;
    let rows = txn
        .query(
            "SELECT id, msg_id, subject, payload FROM concord_outbox WHERE published_at IS NULL
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
            &[&batch],
        )
        .await
        .map_err(e)?;
    let mut published = Vec::with_capacity(rows.len());
    for row in &rows {
        let (id, msg_id, subject, payload): (i64, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        nats.publish_once(&subject, &msg_id, payload.as_bytes(), Duration::from_secs(5)).await?;
        published.push(id);
    }
    if !published.is_empty() {
        txn.execute(
            "UPDATE concord_outbox SET published_at = now() WHERE id = ANY($1)",
            &[&published],
        )
        .await
        .map_err(e)?;
    }
    txn.commit().await.map_err(e)?;
    Ok(published.len())
}

/// `concord outbox relay`: relays forever — polling every `interval` while idle — and
/// reconnects (after a pause) whenever PostgreSQL or NATS fails, printing why.
pub async fn run_relay(
    url: &str,
    nats_address: std::net::SocketAddr,
    interval: Duration,
    batch: i64,
) {
    loop {
        let Err(e) = relay_session(url, nats_address, interval, batch).await;
        eprintln!("concord outbox relay: {e}; reconnecting in 1 s");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One connection's worth of relaying; ends only with the error that broke it.
async fn relay_session(
    url: &str,
    nats_address: std::net::SocketAddr,
    interval: Duration,
    batch: i64,
) -> Result<std::convert::Infallible, String> {
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(connection);
    ensure_tables(&client).await.map_err(|e| e.to_string())?;
    let nats = Nats::connect(nats_address, Duration::from_secs(5)).await?;
    loop {
        if relay_once(&mut client, &nats, batch).await? == 0 {
            tokio::time::sleep(interval).await;
        }
    }
}
