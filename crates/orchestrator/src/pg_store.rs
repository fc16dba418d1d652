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
//!
//! The row also holds what operators list by — the saga's name, state and start time — so
//! `saga ls` on any instance reads every saga from here, filtered and paged on the server.
//! Each saga's calls (its timeline, bounded) are rows of `concord_saga_calls`, written lazily
//! in batches by one task ([`PgStore::write_calls`]).

use std::time::Duration;

use concord_saga::{Phase, Record, SagaId, SagaView};
use tokio_postgres::{Client, NoTls};

use crate::api::Listing;
use crate::timeline::{Call, CallId, Change};

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
  CREATE INDEX IF NOT EXISTS concord_sagas_lease ON concord_sagas (lease_until) WHERE NOT finished;
  ALTER TABLE concord_sagas ADD COLUMN IF NOT EXISTS name text,
    ADD COLUMN IF NOT EXISTS state text,
    ADD COLUMN IF NOT EXISTS started_us bigint,
    ADD COLUMN IF NOT EXISTS parked text;
  CREATE INDEX IF NOT EXISTS concord_sagas_started ON concord_sagas (started_us, id);
  CREATE TABLE IF NOT EXISTS concord_saga_calls (
    saga text NOT NULL,
    instance text NOT NULL,
    run bigint NOT NULL,
    seq bigint NOT NULL,
    at_us bigint NOT NULL,
    step text NOT NULL,
    phase text NOT NULL,
    attempt integer NOT NULL,
    result text,
    took_ms bigint,
    PRIMARY KEY (saga, instance, run, seq));";

/// The columns a listing or a view reads.
const VIEW_COLUMNS: &str = "id, started, turned, position, outcome, owner, parked, started_us";

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

/// Microseconds as PostgreSQL's bigint (saturating: a time past 2262 is not a real one).
fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
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
        let store = PgStore { client, sweeper, instance, lease_secs };
        store.backfill().await?;
        Ok(store)
    }

    /// Writes `record`, which leads its saga to `state` (committed when this returns
    /// `Durable`).
    pub(crate) async fn write(
        &self,
        record: &Record,
        state: &str,
    ) -> Result<Written, tokio_postgres::Error> {
        let (saga, me, text) = (record.saga(), &self.instance, json(record));
        let rows = match record {
            Record::Started { def, deadline_at_us, .. } => {
                let started = as_i64(deadline_at_us.saturating_sub(def.deadline_us));
                self.client
                    .execute(
                        "INSERT INTO concord_sagas (id, started, owner, lease_until, name, state, started_us)
                         VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5, $6, $7)
                         ON CONFLICT DO NOTHING",
                        &[saga, &text, me, &self.lease_secs, &def.name, &state, &started],
                    )
                    .await?
            }
            Record::StepDone { .. } => {
                self.client
                    .execute(
                        "UPDATE concord_sagas SET position = $2, state = $4, updated_at = now()
                         WHERE id = $1 AND owner = $3",
                        &[saga, &text, me, &state],
                    )
                    .await?
            }
            Record::Compensating { .. } => {
                self.client
                    .execute(
                        "UPDATE concord_sagas SET turned = $2, position = NULL, state = $4, updated_at = now()
                         WHERE id = $1 AND owner = $3",
                        &[saga, &text, me, &state],
                    )
                    .await?
            }
            Record::Ended { .. } => {
                self.client
                    .execute(
                        "UPDATE concord_sagas SET outcome = $2, finished = true, state = $4, updated_at = now()
                         WHERE id = $1 AND owner = $3",
                        &[saga, &text, me, &state],
                    )
                    .await?
            }
        };
        Ok(if rows == 1 { Written::Durable } else { Written::NotOurs })
    }

    /// A row's records, in the order the core replays them: `started, turned, position`
    /// from column `first` on (and `outcome` after them when `with_outcome`).
    fn records_from(
        row: &tokio_postgres::Row,
        first: usize,
        with_outcome: bool,
    ) -> Result<Vec<Record>, String> {
        let mut records = vec![parse(row.get::<_, &str>(first))?];
        let last = if with_outcome { first + 3 } else { first + 2 };
        for column in first + 1..=last {
            if let Some(text) = row.get::<_, Option<&str>>(column) {
                records.push(parse(text)?);
            }
        }
        Ok(records)
    }

    fn records(row: &tokio_postgres::Row) -> Result<Vec<Record>, String> {
        Self::records_from(row, 0, false)
    }

    /// A row of [`VIEW_COLUMNS`] as a saga's view, with the instance that holds it.
    fn view(row: &tokio_postgres::Row) -> (SagaView, String) {
        let id: String = row.get(0);
        let owner: String = row.get(5);
        let parked: Option<String> = row.get(6);
        let unreadable = |why: String| SagaView {
            saga: id.clone(),
            name: String::new(),
            kind: concord_saga::Kind::Saga,
            state: concord_saga::SagaState::FailedToDrive { reason: why },
            current: None,
            steps: Vec::new(),
            started_at_us: 0,
        };
        let mut view = match Self::records_from(row, 1, true) {
            Ok(records) => concord_saga::view_of_records(&records)
                .unwrap_or_else(|| unreadable("its start record is missing".into())),
            Err(why) => unreadable(why),
        };
        if let Some(reason) = parked {
            view.state = concord_saga::SagaState::FailedToDrive { reason };
        }
        (view, owner)
    }

    /// Rows written before the store kept name, state and start time get them, read from
    /// their records (the same replay the core does), so listings filter them too.
    async fn backfill(&self) -> Result<(), String> {
        loop {
            let rows = self
                .client
                .query(
                    &format!(
                        "SELECT {VIEW_COLUMNS} FROM concord_sagas WHERE state IS NULL LIMIT 1000"
                    ),
                    &[],
                )
                .await
                .map_err(|e| describe(&e))?;
            if rows.is_empty() {
                return Ok(());
            }
            for row in &rows {
                let (view, _) = Self::view(row);
                let state = crate::api::state_json(&view.state).0;
                self.client
                    .execute(
                        "UPDATE concord_sagas SET name = $2, state = $3, started_us = $4 WHERE id = $1",
                        &[&view.saga, &view.name, &state, &as_i64(view.started_at_us)],
                    )
                    .await
                    .map_err(|e| describe(&e))?;
            }
        }
    }

    /// Marks a saga this instance set aside as failed-to-drive, so every listing shows it so.
    pub(crate) async fn park(&self, saga: &str, reason: &str) -> Result<(), String> {
        self.client
            .execute(
                "UPDATE concord_sagas SET parked = $2, state = 'failed-to-drive', updated_at = now()
                 WHERE id = $1 AND owner = $3",
                &[&saga, &reason, &self.instance],
            )
            .await
            .map(|_| ())
            .map_err(|e| describe(&e))
    }

    /// One page of the sagas `listing` asks for, newest first, with the cursor of the next
    /// page (if there is more).
    pub(crate) async fn list(
        &self,
        listing: &Listing,
    ) -> Result<(Vec<(SagaView, String)>, Option<String>), String> {
        let states: Option<Vec<&str>> = listing.states.clone();
        let before = listing.started_before_us.map(as_i64);
        let since = listing.started_since_us.map(as_i64);
        let (after_at, after_id) = match &listing.after {
            Some((at, id)) => (Some(as_i64(*at)), Some(id.as_str())),
            None => (None, None),
        };
        let limit = i64::try_from(listing.limit + 1).unwrap_or(i64::MAX);
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT {VIEW_COLUMNS} FROM concord_sagas
                     WHERE ($1::text[] IS NULL OR state = ANY($1))
                       AND ($2::int8 IS NULL OR started_us < $2)
                       AND ($3::int8 IS NULL OR started_us >= $3)
                       AND ($4::text IS NULL OR owner = $4)
                       AND ($5::int8 IS NULL OR (started_us, id) < ($5, $6::text))
                     ORDER BY started_us DESC, id DESC LIMIT $7"
                ),
                &[&states, &before, &since, &listing.instance, &after_at, &after_id, &limit],
            )
            .await
            .map_err(|e| describe(&e))?;
        let mut sagas: Vec<(SagaView, String)> = rows.iter().map(Self::view).collect();
        let more = sagas.len() > listing.limit;
        sagas.truncate(listing.limit);
        // The cursor is the row's stored start (the view's own is the same, read from the
        // same record), so the next page's comparison is exact.
        let next = if more {
            rows.get(listing.limit - 1).map(|row| {
                let at: Option<i64> = row.get(7);
                crate::api::cursor(at.map_or(0, |a| a.max(0).unsigned_abs()), row.get(0))
            })
        } else {
            None
        };
        Ok((sagas, next))
    }

    /// One saga as the store holds it (whichever orchestrator started or drives it), with
    /// the instance that holds it and its timeline.
    pub(crate) async fn show(
        &self,
        saga: &str,
    ) -> Result<Option<(SagaView, String, Vec<Call>)>, String> {
        let row = self
            .client
            .query_opt(&format!("SELECT {VIEW_COLUMNS} FROM concord_sagas WHERE id = $1"), &[&saga])
            .await
            .map_err(|e| describe(&e))?;
        let Some(row) = row else { return Ok(None) };
        let (view, owner) = Self::view(&row);
        let calls = self.calls(&[saga.to_string()]).await?;
        Ok(Some((view, owner, calls)))
    }

    /// The stored timelines of `sagas`, oldest call first.
    pub(crate) async fn calls(&self, sagas: &[String]) -> Result<Vec<Call>, String> {
        let rows = self
            .client
            .query(
                "SELECT saga, instance, run, seq, at_us, step, phase, attempt, result, took_ms
                 FROM concord_saga_calls WHERE saga = ANY($1) ORDER BY saga, at_us, instance, run, seq",
                &[&sagas],
            )
            .await
            .map_err(|e| describe(&e))?;
        let mut calls = Vec::with_capacity(rows.len());
        for row in rows {
            let phase: String = row.get(6);
            let Some(phase) = [Phase::Action, Phase::Compensation, Phase::Confirm]
                .into_iter()
                .find(|p| p.name() == phase)
            else {
                continue; // written by a later version: not this one's to show
            };
            let unsigned = |v: i64| v.max(0).unsigned_abs();
            calls.push(Call {
                saga: row.get(0),
                id: CallId {
                    instance: row.get(1),
                    run: unsigned(row.get(2)),
                    seq: unsigned(row.get(3)),
                },
                at_us: unsigned(row.get(4)),
                step: row.get(5),
                phase,
                attempt: u32::try_from(row.get::<_, i32>(7)).unwrap_or(0),
                result: row.get(8),
                took_ms: row.get::<_, Option<i64>>(9).map(unsigned),
            });
        }
        Ok(calls)
    }

    /// Writes a batch of timeline changes: the last change of each call wins (a call and its
    /// answer in one batch become one row), in one statement for the puts and one for the
    /// drops.
    pub(crate) async fn write_calls(&self, changes: Vec<Change>) -> Result<(), String> {
        let mut last: std::collections::HashMap<(String, CallId), Change> = Default::default();
        for change in changes {
            let key = match &change {
                Change::Put(call) => (call.saga.clone(), call.id.clone()),
                Change::Drop { saga, id } => (saga.clone(), id.clone()),
            };
            last.insert(key, change);
        }
        let (mut puts, mut drops) = (Vec::new(), Vec::new());
        for change in last.into_values() {
            match change {
                Change::Put(call) => puts.push(call),
                Change::Drop { saga, id } => drops.push((saga, id)),
            }
        }
        let e = |e: tokio_postgres::Error| describe(&e);
        if !puts.is_empty() {
            let column = |f: &dyn Fn(&Call) -> i64| puts.iter().map(f).collect::<Vec<i64>>();
            let sagas: Vec<&str> = puts.iter().map(|c| c.saga.as_str()).collect();
            let instances: Vec<&str> = puts.iter().map(|c| c.id.instance.as_str()).collect();
            let steps: Vec<&str> = puts.iter().map(|c| c.step.as_str()).collect();
            let phases: Vec<&str> = puts.iter().map(|c| c.phase.name()).collect();
            let results: Vec<Option<&str>> = puts.iter().map(|c| c.result.as_deref()).collect();
            let attempts: Vec<i32> =
                puts.iter().map(|c| i32::try_from(c.attempt).unwrap_or(i32::MAX)).collect();
            let took: Vec<Option<i64>> = puts.iter().map(|c| c.took_ms.map(as_i64)).collect();
            self.client
                .execute(
                    "INSERT INTO concord_saga_calls
                       (saga, instance, run, seq, at_us, step, phase, attempt, result, took_ms)
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[],
                                          $6::text[], $7::text[], $8::int4[], $9::text[], $10::int8[])
                     ON CONFLICT (saga, instance, run, seq)
                     DO UPDATE SET result = EXCLUDED.result, took_ms = EXCLUDED.took_ms",
                    &[
                        &sagas,
                        &instances,
                        &column(&|c| as_i64(c.id.run)),
                        &column(&|c| as_i64(c.id.seq)),
                        &column(&|c| as_i64(c.at_us)),
                        &steps,
                        &phases,
                        &attempts,
                        &results,
                        &took,
                    ],
                )
                .await
                .map_err(e)?;
        }
        if !drops.is_empty() {
            let sagas: Vec<&str> = drops.iter().map(|(s, _)| s.as_str()).collect();
            let instances: Vec<&str> = drops.iter().map(|(_, id)| id.instance.as_str()).collect();
            let runs: Vec<i64> = drops.iter().map(|(_, id)| as_i64(id.run)).collect();
            let seqs: Vec<i64> = drops.iter().map(|(_, id)| as_i64(id.seq)).collect();
            self.client
                .execute(
                    "DELETE FROM concord_saga_calls c
                     USING UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[]) AS d(saga, instance, run, seq)
                     WHERE c.saga = d.saga AND c.instance = d.instance AND c.run = d.run AND c.seq = d.seq",
                    &[&sagas, &instances, &runs, &seqs],
                )
                .await
                .map_err(e)?;
        }
        Ok(())
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
