//! MariaDB/MySQL as a participant: `XA START … XA END; XA PREPARE`, `XA COMMIT`,
//! `XA ROLLBACK`, and `XA RECOVER` for recovery. InnoDB tables only (others ignore XA).
//!
//! XA statements take no placeholders, so the gid is a quoted literal (gids are quote-free).
//! A prepared XA branch belongs to the session that prepared it until that session ends;
//! another session gets "unknown XID" until then. So a branch is finished on its own
//! connection when possible, and an "unknown XID" answer is only believed once `XA RECOVER`
//! no longer lists the branch. `XA RECOVER` lists the whole server's branches, not one
//! schema's: callers that configure several schemas of one server rely on the log to say which
//! schema a branch (and its marker row) belongs to.

use concord_types::Decision;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Row};

use crate::database::{BranchState, Database, DbError, Finish, ListedBranch, OnePhase};
use crate::gid::Gid;

/// "XAER_NOTA: Unknown XID".
const ER_XAER_NOTA: u16 = 1397;

const MARKER_TABLE: &str = "CREATE TABLE IF NOT EXISTS concord_branch (
    gid VARCHAR(64) NOT NULL PRIMARY KEY,
    created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)) ENGINE=InnoDB";

#[derive(Debug)]
pub(crate) struct Mariadb {
    opts: Opts,
}

fn literal(gid: &str) -> String {
    assert!(Gid::parse(gid).is_some(), "only Concord gids are spliced into SQL: {gid:?}");
    format!("'{gid}'")
}

impl Mariadb {
    pub(crate) fn new(url: &str) -> Result<Mariadb, String> {
        let opts = Opts::from_url(url).map_err(|e| format!("url `{url}`: {e}"))?;
        Ok(Mariadb { opts })
    }

    pub(crate) async fn connect(&self, db: &Database) -> Result<Conn, DbError> {
        db.bounded("connect", Conn::new(self.opts.clone())).await
    }
}

pub(crate) async fn ensure_schema(db: &Database, conn: &mut Conn) -> Result<(), DbError> {
    db.bounded("create marker table", conn.query_drop(MARKER_TABLE)).await
}

/// `XA START` and the marker row in one message (one round trip; the gid is a validated
/// literal). A failed `XA START` stops the message before the insert.
pub(crate) async fn begin(db: &Database, conn: &mut Conn, gid: &str) -> Result<(), DbError> {
    let gid = literal(gid);
    let statement = format!("XA START {gid}; INSERT INTO concord_branch (gid) VALUES ({gid})");
    db.bounded("xa start and write marker", conn.query_drop(statement)).await
}

pub(crate) async fn execute(db: &Database, conn: &mut Conn, sql: &str) -> Result<u64, DbError> {
    db.bounded("statement", conn.query_drop(sql)).await?;
    Ok(conn.affected_rows())
}

/// `XA END` and `XA PREPARE` in one message: one round trip.
pub(crate) async fn prepare(db: &Database, conn: &mut Conn, gid: &str) -> Result<(), DbError> {
    let gid = literal(gid);
    db.bounded("xa end and prepare", conn.query_drop(format!("XA END {gid}; XA PREPARE {gid}")))
        .await
}

/// The one-phase commit of a branch that is the transaction's only one: `XA END` and
/// `XA COMMIT … ONE PHASE` in one message (the marker row was written at `XA START`). A server
/// error means nothing committed; a lost connection or a timeout leaves it to the marker row.
pub(crate) async fn commit_one_phase(db: &Database, conn: &mut Conn, gid: &str) -> OnePhase {
    let gid = literal(gid);
    let statement = format!("XA END {gid}; XA COMMIT {gid} ONE PHASE");
    match tokio::time::timeout(db.timeout(), conn.query_drop(statement)).await {
        Ok(Ok(())) => OnePhase::Committed,
        Ok(Err(mysql_async::Error::Server(e))) => {
            OnePhase::RolledBack(format!("{}: xa commit one phase: {e}", db.name))
        }
        Ok(Err(e)) => OnePhase::Unknown(format!("{}: xa commit one phase: {e}", db.name)),
        Err(_) => OnePhase::Unknown(format!(
            "{}: xa commit one phase: no answer within {} ms",
            db.name,
            db.timeout().as_millis()
        )),
    }
}

/// Whether the branch wrote nothing but its marker row (InnoDB counts the rows a transaction
/// modified, whatever statement or routine did it); if so it is rolled back, which releases its
/// locks, and the branch votes READ-ONLY. A server that will not say is taken to have written.
pub(crate) async fn end_if_read_only(
    db: &Database,
    conn: &mut Conn,
    gid: &str,
) -> Result<bool, DbError> {
    let modified: Option<Option<u64>> = db
        .bounded(
            "check for writes",
            conn.query_first(
                "SELECT trx_rows_modified FROM information_schema.innodb_trx \
                 WHERE trx_mysql_thread_id = CONNECTION_ID()",
            ),
        )
        .await
        .unwrap_or(None);
    if modified.flatten().is_none_or(|rows| rows > 1) {
        return Ok(false);
    }
    let gid = literal(gid);
    db.bounded("rollback read-only", conn.query_drop(format!("XA END {gid}; XA ROLLBACK {gid}")))
        .await?;
    Ok(true)
}

pub(crate) async fn finish(
    db: &Database,
    conn: &mut Conn,
    gid: &str,
    decision: Decision,
) -> Result<Finish, DbError> {
    let (statement, what) = match decision {
        Decision::Commit => (format!("XA COMMIT {}", literal(gid)), "xa commit"),
        Decision::Abort => (format!("XA ROLLBACK {}", literal(gid)), "xa rollback"),
    };
    let outcome = db
        .bounded(what, async {
            match conn.query_drop(statement).await {
                Ok(()) => Ok(Finish::Done),
                Err(mysql_async::Error::Server(e)) if e.code == ER_XAER_NOTA => {
                    Ok(Finish::NotPrepared)
                }
                Err(e) => Err(e),
            }
        })
        .await?;
    if outcome == Finish::NotPrepared && is_prepared(db, conn, gid).await? {
        return Err(DbError::Failed {
            database: db.name.clone(),
            what,
            reason: "the branch is prepared but still held by the session that prepared it; retried later".into(),
        });
    }
    Ok(outcome)
}

async fn recover(db: &Database, conn: &mut Conn) -> Result<Vec<String>, DbError> {
    let rows: Vec<Row> = db.bounded("xa recover", conn.query("XA RECOVER")).await?;
    let mut gids = Vec::with_capacity(rows.len());
    for row in rows {
        // Columns: formatID, gtrid_length, bqual_length, data (gtrid then bqual).
        let gtrid_length: Option<i64> = row.get(1);
        let data: Option<Vec<u8>> = row.get(3);
        let (Some(gtrid_length), Some(data)) = (gtrid_length, data) else { continue };
        let end = usize::try_from(gtrid_length).unwrap_or(0).min(data.len());
        gids.push(String::from_utf8_lossy(&data[..end]).into_owned());
    }
    Ok(gids)
}

async fn is_prepared(db: &Database, conn: &mut Conn, gid: &str) -> Result<bool, DbError> {
    Ok(recover(db, conn).await?.iter().any(|g| g == gid))
}

pub(crate) async fn branch_state(
    db: &Database,
    conn: &mut Conn,
    gid: &str,
) -> Result<BranchState, DbError> {
    if is_prepared(db, conn, gid).await? {
        return Ok(BranchState::Prepared);
    }
    let found: Option<i64> = db
        .bounded(
            "read marker",
            conn.exec_first("SELECT COUNT(*) FROM concord_branch WHERE gid = ?", (gid,)),
        )
        .await?;
    Ok(if found.unwrap_or(0) > 0 { BranchState::Committed } else { BranchState::Absent })
}

pub(crate) async fn list_prepared(
    db: &Database,
    conn: &mut Conn,
) -> Result<Vec<ListedBranch>, DbError> {
    Ok(recover(db, conn)
        .await?
        .into_iter()
        .map(|gid| ListedBranch { gid, age_ms: None, locks: None })
        .collect())
}

pub(crate) async fn forget_markers(
    db: &Database,
    conn: &mut Conn,
    keep: &[String],
    older_than_s: u64,
) -> Result<u64, DbError> {
    // A consistent (non-locking) read first: a scanning DELETE would wait on the rows of
    // prepared branches and lock gaps that new branches' markers need.
    let old: Vec<String> = db
        .bounded(
            "find old markers",
            conn.query(format!(
                "SELECT gid FROM concord_branch WHERE created_at < NOW(3) - INTERVAL {older_than_s} SECOND LIMIT 10000"
            )),
        )
        .await?;
    let doomed: Vec<String> = old
        .iter()
        .filter(|g| !keep.contains(g) && Gid::parse(g).is_some())
        .map(|g| literal(g))
        .collect();
    if doomed.is_empty() {
        return Ok(0);
    }
    let statement = format!("DELETE FROM concord_branch WHERE gid IN ({})", doomed.join(","));
    db.bounded("forget markers", conn.query_drop(statement)).await?;
    Ok(conn.affected_rows())
}
