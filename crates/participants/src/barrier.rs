//! The idempotency barrier in a saga step's own PostgreSQL database: marker rows written in the
//! same local transaction as the step's effect, so a marker exists exactly when its effect does.
//! The rule is [`concord_saga::Barrier`]'s (the simulator checks it); this is its SQL form.
//!
//! ```text
//!   BEGIN;
//!   verdict = barrier(&txn, saga, step, phase)   -- INSERT … ON CONFLICT DO NOTHING
//!   if verdict == Apply { the step's own UPDATEs }
//!   COMMIT;                                      -- marker and effect together, or neither
//! ```
//!
//! Concurrent calls for the same (saga, step) serialise on the primary key: the second
//! `INSERT` waits for the first transaction and then sees its row.

use std::time::Duration;

use concord_saga::{BarrierVerdict, Phase};
use tokio_postgres::{Client, GenericClient};

/// The marker table, created by [`ensure_table`]. `kind` is the phase marked, `origin` says
/// whether an action marker stands for a real action or was left by a null compensation.
pub const TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS concord_barrier (
    saga text NOT NULL,
    step text NOT NULL,
    kind text NOT NULL,
    origin text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga, step, kind))";

/// Creates the table and its index if needed. Services starting together would race on
/// `CREATE … IF NOT EXISTS` (PostgreSQL reports a duplicate type); an advisory lock orders them.
pub async fn ensure_table(client: &Client) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock(7336021);
             {TABLE_SQL};
             CREATE INDEX IF NOT EXISTS concord_barrier_created ON concord_barrier (created_at);
             COMMIT;"
        ))
        .await
}

/// Inserts a marker; true when it was not there yet.
async fn mark<C: GenericClient>(
    txn: &C,
    saga: &str,
    step: &str,
    kind: &str,
    origin: &str,
) -> Result<bool, tokio_postgres::Error> {
    let inserted = txn
        .execute(
            "INSERT INTO concord_barrier (saga, step, kind, origin) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
            &[&saga, &step, &kind, &origin],
        )
        .await?;
    Ok(inserted == 1)
}

async fn origin<C: GenericClient>(
    txn: &C,
    saga: &str,
    step: &str,
    kind: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    let row = txn
        .query_opt(
            "SELECT origin FROM concord_barrier WHERE saga = $1 AND step = $2 AND kind = $3",
            &[&saga, &step, &kind],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Decides a call inside the caller's transaction and writes its markers. Apply the step's
/// effect only on [`BarrierVerdict::Apply`]; commit either way (the markers of a null
/// compensation must stay), except after `Refused`, which wrote nothing that matters.
pub async fn barrier<C: GenericClient>(
    txn: &C,
    saga: &str,
    step: &str,
    phase: Phase,
) -> Result<BarrierVerdict, tokio_postgres::Error> {
    Ok(match phase {
        Phase::Action => {
            if mark(txn, saga, step, "action", "action").await? {
                BarrierVerdict::Apply
            } else if origin(txn, saga, step, "compensation").await?.is_some() {
                // Compensated already (for real, or as a null compensation): too late.
                BarrierVerdict::Hanging
            } else {
                BarrierVerdict::Duplicate
            }
        }
        Phase::Compensation => {
            if !mark(txn, saga, step, "compensation", "compensation").await? {
                BarrierVerdict::Duplicate
            } else if mark(txn, saga, step, "action", "null").await? {
                // The action never ran here: nothing to undo, and it may not run later.
                BarrierVerdict::NullCompensation
            } else {
                BarrierVerdict::Apply
            }
        }
        Phase::Confirm => {
            if origin(txn, saga, step, "confirm").await?.is_some() {
                return Ok(BarrierVerdict::Duplicate);
            }
            let tried = origin(txn, saga, step, "action").await?.as_deref() == Some("action");
            let cancelled = origin(txn, saga, step, "compensation").await?.is_some();
            if tried && !cancelled && mark(txn, saga, step, "confirm", "confirm").await? {
                BarrierVerdict::Apply
            } else if tried && !cancelled {
                BarrierVerdict::Duplicate // a concurrent confirm marked it first
            } else {
                BarrierVerdict::Refused
            }
        }
    })
}

/// Deletes markers older than `retention`: by then no call for them can still arrive (the
/// retention must exceed the longest saga deadline plus its compensations' retries).
pub async fn forget_older_than(
    client: &Client,
    retention: Duration,
) -> Result<u64, tokio_postgres::Error> {
    let seconds = retention.as_secs_f64();
    client
        .execute(
            "DELETE FROM concord_barrier WHERE created_at < now() - make_interval(secs => $1)",
            &[&seconds],
        )
        .await
}
