//! PostgreSQL as a participant: `BEGIN … PREPARE TRANSACTION 'gid'`, `COMMIT PREPARED`,
//! `ROLLBACK PREPARED`, and `pg_prepared_xacts` for recovery.
//!
//! Two PostgreSQL facts shape this file. `PREPARE TRANSACTION` on a transaction that already
//! failed reports success but rolls back, so a YES vote waits until the gid is listed in
//! `pg_prepared_xacts`. And the gid is a quoted literal, not a parameter (`PREPARE TRANSACTION
//! $1` is a syntax error), which is why gids are restricted to quote-free characters.
//! The server needs `max_prepared_transactions > 0` (scripts/setup-databases.sh sets it).

use concord_types::Decision;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use crate::database::{BranchState, Database, DbError, Finish, ListedBranch, OnePhase};
use crate::gid::Gid;

#[derive(Debug)]
pub(crate) struct Postgres {
    url: String,
}

/// The marker table: a branch's row commits or rolls back with the branch.
const MARKER_TABLE: &str = "CREATE TABLE IF NOT EXISTS concord_branch (
    gid text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now())";

/// The marker insert, parsed and planned once per connection (SQL `PREPARE`, not the
/// protocol's: `EXECUTE` can share one simple-query message with `COMMIT` or `PREPARE
/// TRANSACTION`, which keeps [`prepare`]'s guard and one round trip). Planning it per
/// transaction was most of the marker's cost: about a fifth of PostgreSQL's throughput at
/// saturation on the one-phase path (BENCHMARKS.md).
///
/// The guard: in the branch's own transaction `now()` is the earlier `BEGIN`'s time; in a
/// transaction begun by this very message `now()` equals `statement_timestamp()` (PostgreSQL
/// documents the two as equal exactly then), the gid is NULL and the insert fails.
const PREPARE_MARKER: &str = "PREPARE concord_marker (text) AS \
    INSERT INTO concord_branch (gid) VALUES (CASE WHEN now() <> statement_timestamp() THEN $1 END)";

fn literal(gid: &str) -> String {
    assert!(Gid::parse(gid).is_some(), "only Concord gids are spliced into SQL: {gid:?}");
    format!("'{gid}'")
}

impl Postgres {
    pub(crate) fn new(url: &str) -> Postgres {
        Postgres { url: url.to_string() }
    }

    pub(crate) async fn connect(&self, db: &Database) -> Result<Client, DbError> {
        let (client, connection) =
            db.bounded("connect", tokio_postgres::connect(&self.url, NoTls)).await?;
        // The connection future drives the socket; it ends when the client is dropped.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let planned = db
            .bounded("plan marker insert", async {
                match client.batch_execute(PREPARE_MARKER).await {
                    // A database that was down when the coordinator started: its table comes now.
                    Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(false),
                    other => other.map(|()| true),
                }
            })
            .await?;
        if !planned {
            ensure_schema(db, &client).await?;
            db.bounded("plan marker insert", client.batch_execute(PREPARE_MARKER)).await?;
        }
        Ok(client)
    }
}

pub(crate) async fn ensure_schema(db: &Database, client: &Client) -> Result<(), DbError> {
    db.bounded("create marker table", client.batch_execute(MARKER_TABLE)).await
}

pub(crate) async fn begin(db: &Database, client: &Client) -> Result<(), DbError> {
    db.bounded("begin", client.batch_execute("BEGIN")).await
}

/// `BEGIN` and the branch's first statement pipelined: both requests leave before either
/// answer comes back, and the server runs them in order. A `BEGIN` that failed would leave the
/// statement outside the transaction; a plain `BEGIN` fails only with its session (then the
/// statement never runs), and either failure fails the statement, which abandons the branch.
pub(crate) async fn begin_with(db: &Database, client: &Client, sql: &str) -> Result<u64, DbError> {
    db.bounded("statement", async {
        // `join!` polls in order, and each request is queued on its first poll.
        let (begun, done) = tokio::join!(client.batch_execute("BEGIN"), client.execute(sql, &[]));
        begun?;
        done
    })
    .await
}

/// The marker row and `PREPARE TRANSACTION` in one message: one round trip, and no query
/// afterwards to check that the branch really is prepared. That check is built into the
/// message instead, covering both ways `PREPARE TRANSACTION` reports success without preparing
/// the branch:
///
/// * the transaction had already failed (it then acts as `ROLLBACK`): the insert fails first
///   with "current transaction is aborted", and the rest of the message is skipped;
/// * no transaction is open any more (the application ended it on the branch's connection): the
///   message would run in an implicit transaction of its own, which `PREPARE TRANSACTION` would
///   prepare. The insert is that transaction's first command, so its guard
///   ([`PREPARE_MARKER`]) makes the gid NULL, the primary key refuses it, and the message stops.
pub(crate) async fn prepare(db: &Database, client: &Client, gid: &str) -> Result<(), DbError> {
    let gid = literal(gid);
    let statement = format!("EXECUTE concord_marker ({gid}); PREPARE TRANSACTION {gid}");
    let prepared = db
        .bounded("write marker and prepare", async {
            match client.batch_execute(&statement).await {
                Err(e) if e.code() == Some(&SqlState::NOT_NULL_VIOLATION) => Ok(false),
                other => other.map(|()| true),
            }
        })
        .await?;
    if prepared {
        Ok(())
    } else {
        Err(DbError::Failed {
            database: db.name.clone(),
            what: "prepare",
            reason:
                "no transaction is open on the branch's connection (it was ended outside Concord)"
                    .into(),
        })
    }
}

/// The one-phase commit of a branch that is the transaction's only one: the marker row (with the
/// same guard as [`prepare`]) and `COMMIT` in one message. A server error means nothing
/// committed (a failed statement skips the rest of the message; a failed `COMMIT` rolls back);
/// a lost connection or a timeout leaves the outcome to the marker row.
pub(crate) async fn commit_one_phase(db: &Database, client: &Client, gid: &str) -> OnePhase {
    let gid = literal(gid);
    let statement = format!("EXECUTE concord_marker ({gid}); COMMIT");
    match tokio::time::timeout(db.timeout(), client.batch_execute(&statement)).await {
        Ok(Ok(())) => OnePhase::Committed,
        Ok(Err(e)) if e.code() == Some(&SqlState::NOT_NULL_VIOLATION) => OnePhase::RolledBack(
            "no transaction is open on the branch's connection (it was ended outside Concord)"
                .into(),
        ),
        Ok(Err(e)) if e.as_db_error().is_some() => OnePhase::RolledBack(format!(
            "{}: commit: {}",
            db.name,
            crate::database::error_chain(&e)
        )),
        Ok(Err(e)) => {
            OnePhase::Unknown(format!("{}: commit: {}", db.name, crate::database::error_chain(&e)))
        }
        Err(_) => OnePhase::Unknown(format!(
            "{}: commit: no answer within {} ms",
            db.name,
            db.timeout().as_millis()
        )),
    }
}

/// Whether the branch's transaction wrote nothing (PostgreSQL assigns a transaction id at the
/// first write, whatever statement or function made it); if so it is rolled back, which
/// releases its locks, and the branch votes READ-ONLY.
pub(crate) async fn end_if_read_only(db: &Database, client: &Client) -> Result<bool, DbError> {
    let row = db
        .bounded(
            "check for writes",
            client.query_one("SELECT pg_current_xact_id_if_assigned() IS NULL", &[]),
        )
        .await?;
    if !row.get::<_, bool>(0) {
        return Ok(false);
    }
    db.bounded("rollback read-only", client.batch_execute("ROLLBACK")).await?;
    Ok(true)
}

async fn is_prepared(db: &Database, client: &Client, gid: &str) -> Result<bool, DbError> {
    let row = db
        .bounded(
            "read pg_prepared_xacts",
            client.query_one(
                "SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1 AND database = current_database()",
                &[&gid],
            ),
        )
        .await?;
    Ok(row.get::<_, i64>(0) > 0)
}

pub(crate) async fn finish(
    db: &Database,
    client: &Client,
    gid: &str,
    decision: Decision,
) -> Result<Finish, DbError> {
    let (statement, what) = match decision {
        Decision::Commit => (format!("COMMIT PREPARED {}", literal(gid)), "commit prepared"),
        Decision::Abort => (format!("ROLLBACK PREPARED {}", literal(gid)), "rollback prepared"),
    };
    db.bounded(what, async {
        match client.batch_execute(&statement).await {
            Ok(()) => Ok(Finish::Done),
            // "prepared transaction with identifier … does not exist"
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => Ok(Finish::NotPrepared),
            Err(e) => Err(e),
        }
    })
    .await
}

pub(crate) async fn branch_state(
    db: &Database,
    client: &Client,
    gid: &str,
) -> Result<BranchState, DbError> {
    if is_prepared(db, client, gid).await? {
        return Ok(BranchState::Prepared);
    }
    let row = db
        .bounded(
            "read marker",
            client.query_one("SELECT count(*) FROM concord_branch WHERE gid = $1", &[&gid]),
        )
        .await?;
    Ok(if row.get::<_, i64>(0) > 0 { BranchState::Committed } else { BranchState::Absent })
}

pub(crate) async fn list_prepared(
    db: &Database,
    client: &Client,
) -> Result<Vec<ListedBranch>, DbError> {
    let rows = db
        .bounded(
            "read pg_prepared_xacts",
            client.query(
                // A prepared transaction's locks keep their virtual transaction with no
                // backend (pid NULL): found through its transaction-id lock.
                "SELECT p.gid, (extract(epoch FROM now() - p.prepared) * 1000)::bigint,
                        ARRAY(SELECT DISTINCT l.mode || ' on ' || c.relname
                                FROM pg_locks x
                                JOIN pg_locks l ON l.virtualtransaction = x.virtualtransaction
                                               AND l.pid IS NULL AND l.locktype = 'relation'
                                JOIN pg_class c ON c.oid = l.relation AND c.relkind IN ('r', 'p')
                               WHERE x.locktype = 'transactionid' AND x.pid IS NULL
                                 AND x.transactionid = p.transaction
                               ORDER BY 1)
                   FROM pg_prepared_xacts p WHERE p.database = current_database()
                  ORDER BY p.prepared",
                &[],
            ),
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| ListedBranch {
            gid: row.get(0),
            age_ms: Some(u64::try_from(row.get::<_, i64>(1)).unwrap_or(0)),
            locks: Some(row.get(2)),
        })
        .collect())
}

pub(crate) async fn forget_markers(
    db: &Database,
    client: &Client,
    keep: &[String],
    older_than_s: u64,
) -> Result<u64, DbError> {
    let older_than_s = f64::from(u32::try_from(older_than_s).unwrap_or(u32::MAX));
    db.bounded(
        "forget markers",
        client.execute(
            "DELETE FROM concord_branch
              WHERE created_at < now() - make_interval(secs => $1) AND gid <> ALL($2)",
            &[&older_than_s, &keep],
        ),
    )
    .await
}
