//! Saga state in PostgreSQL, shared by several orchestrators (`concord saga serve --postgres`).
//!
//! One row per saga: its start, its turn-around, its last step done and its outcome — the same
//! records the log would hold, each written (committed) before the core moves on. A row has an
//! owner and a lease: the owner renews the leases of the sagas it drives; a sweeper in every
//! orchestrator claims sagas whose lease ran out (`FOR UPDATE SKIP LOCKED`, so two sweepers
//! never claim the same row) and resumes them, forward or compensating. Every write is
//! conditional on ownership: an orchestrator that lost a saga (it paused past its lease) finds
//! out at its next write and drops it. Two owners for a moment are harmless — the services'
//! barriers absorb repeated calls.

use std::time::Duration;

use concord_saga::{Record, SagaId};
use tokio_postgres::{Client, NoTls};

const TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS concord_sagas (
    id text PRIMARY KEY,
    started text NOT NULL,
    turned text,
    position text,
    outcome text,
    finished bool NOT NULL DEFAULT false,
    owner text NOT NULL,
    lease_until timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now());
  CREATE INDEX IF NOT EXISTS concord_sagas_lease ON concord_sagas (lease_until) WHERE NOT finished;";

pub(crate) struct PgStore {
    /// Single-statement writes (each its own transaction), shared by concurrent tasks.
    client: Client,
    /// The sweeper's transactions need a connection of their own.
    sweeper: tokio::sync::Mutex<Client>,
    instance: String,
    lease_secs: f64,
}

async fn open(url: &str) -> Result<Client, String> {
    let (client, connection) =
        tokio_postgres::connect(url, NoTls).await.map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// The outcome of a write.
pub(crate) enum Written {
    Durable,
    /// Another orchestrator owns the saga (or, for a start, already has one with this id).
    NotOurs,
}

/// A database error with the server's own message ("db error" alone says nothing).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

fn json(record: &Record) -> String {
    serde_json::to_string(record).expect("records serialise")
}

fn parse(text: &str) -> Result<Record, String> {
    serde_json::from_str(text).map_err(|e| format!("a saga row cannot be read: {e}"))
}

impl PgStore {
    pub(crate) async fn connect(
        url: &str,
        instance: &str,
        lease: Duration,
    ) -> Result<Self, String> {
        let client = open(url).await?;
        client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock(7336023); {TABLE_SQL} COMMIT;"
            ))
            .await
            .map_err(|e| format!("the sagas table: {}", describe(&e)))?;
        let sweeper = tokio::sync::Mutex::new(open(url).await?);
        let (instance, lease_secs) = (instance.to_string(), lease.as_secs_f64());
        Ok(PgStore { client, sweeper, instance, lease_secs })
    }

    /// Writes `record` (committed when this returns `Durable`).
    pub(crate) async fn write(&self, record: &Record) -> Result<Written, tokio_postgres::Error> {
        let (saga, me, text) = (record.saga(), &self.instance, json(record));
        let rows = match record {
            Record::Started { .. } => {
                self.client
                    .execute(
                        "INSERT INTO concord_sagas (id, started, owner, lease_until)
                         VALUES ($1, $2, $3, now() + make_interval(secs => $4)) ON CONFLICT DO NOTHING",
                        &[saga, &text, me, &self.lease_secs],
                    )
                    .await?
            }
            Record::StepDone { .. } => {
                self.client
                    .execute(
                        "UPDATE concord_sagas SET position = $2, updated_at = now() WHERE id = $1 AND owner = $3",
                        &[saga, &text, me],
                    )
                    .await?
            }
            Record::Compensating { .. } => {
                self.client
                    .execute(
                        "UPDATE concord_sagas SET turned = $2, position = NULL, updated_at = now()
                         WHERE id = $1 AND owner = $3",
                        &[saga, &text, me],
                    )
                    .await?
            }
            Record::Ended { .. } => {
                self.client
                    .execute(
                        "UPDATE concord_sagas SET outcome = $2, finished = true, updated_at = now()
                         WHERE id = $1 AND owner = $3",
                        &[saga, &text, me],
                    )
                    .await?
            }
        };
        Ok(if rows == 1 { Written::Durable } else { Written::NotOurs })
    }

    /// A row's records, in the order the core replays them.
    fn records(row: &tokio_postgres::Row) -> Result<Vec<Record>, String> {
        let mut records = vec![parse(row.get::<_, &str>(0))?];
        for column in 1..=2 {
            if let Some(text) = row.get::<_, Option<&str>>(column) {
                records.push(parse(text)?);
            }
        }
        Ok(records)
    }

    /// This instance's unfinished sagas (at its start: what it owned before a restart).
    pub(crate) async fn own(&self) -> Result<Vec<Record>, String> {
        let rows = self
            .client
            .query(
                "SELECT started, turned, position FROM concord_sagas WHERE owner = $1 AND NOT finished ORDER BY id",
                &[&self.instance],
            )
            .await
            .map_err(|e| describe(&e))?;
        let mut records = Vec::new();
        for row in &rows {
            records.extend(Self::records(row)?);
        }
        Ok(records)
    }

    /// Extends the leases of the sagas this instance still drives.
    pub(crate) async fn renew(&self, sagas: &[SagaId]) -> Result<u64, tokio_postgres::Error> {
        self.client
            .execute(
                "UPDATE concord_sagas SET lease_until = now() + make_interval(secs => $3)
                 WHERE owner = $1 AND id = ANY($2) AND NOT finished",
                &[&self.instance, &sagas, &self.lease_secs],
            )
            .await
    }

    /// The sweeper: claims up to `limit` unfinished sagas whose lease ran out, and returns their
    /// records to adopt.
    pub(crate) async fn claim_stuck(&self, limit: i64) -> Result<Vec<Record>, String> {
        let e = |e: tokio_postgres::Error| describe(&e);
        let mut sweeper = self.sweeper.lock().await;
        let txn = sweeper.transaction().await.map_err(e)?;
        let stuck: Vec<String> = txn
            .query(
                "SELECT id FROM concord_sagas WHERE NOT finished AND lease_until < now()
                 ORDER BY lease_until LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&limit],
            )
            .await
            .map_err(e)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if stuck.is_empty() {
            txn.commit().await.map_err(e)?;
            return Ok(Vec::new());
        }
        let rows = txn
            .query(
                "UPDATE concord_sagas SET owner = $1, lease_until = now() + make_interval(secs => $3)
                 WHERE id = ANY($2) RETURNING started, turned, position",
                &[&self.instance, &stuck, &self.lease_secs],
            )
            .await
            .map_err(e)?;
        txn.commit().await.map_err(e)?;
        let mut records = Vec::new();
        for row in &rows {
            records.extend(Self::records(row)?);
        }
        Ok(records)
    }
}
