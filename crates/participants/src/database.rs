//! One configured database as a 2PC participant, whatever its kind.
//!
//! A branch's life: [`Database::begin`] opens a local transaction and writes the branch's
//! marker row (`concord_branch`, keyed by gid) inside it; the application's statements run on
//! that connection ([`OpenBranch::execute`], or the raw client); [`OpenBranch::prepare`] makes it
//! durable and votes. After the decision, [`Database::finish`] commits or rolls back the
//! prepared branch — on the branch's own connection when it still has one (MariaDB only lets
//! another session finish an XA branch once the preparing session is gone).
//!
//! The marker row commits or rolls back with the branch, so once a branch is no longer
//! prepared, [`Database::branch_state`] tells which way it went. That is how a heuristic
//! outcome (someone ran `ROLLBACK PREPARED` by hand after a COMMIT decision) is detected
//! rather than mistaken for a branch already committed.
//!
//! Every call is bounded by the configured statement timeout.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_types::Decision;

use crate::config::{DatabaseConfig, Kind};
use crate::gid::Gid;
use crate::{mariadb, postgres, redis};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    #[error("{database}: {what}: {reason}")]
    Failed { database: String, what: &'static str, reason: String },
    #[error("{database}: {what}: no answer within {timeout_ms} ms")]
    Timeout { database: String, what: &'static str, timeout_ms: u64 },
    #[error("{database}: invalid configuration: {reason}")]
    Config { database: String, reason: String },
}

/// An error with its causes: tokio-postgres says only "db error" at the top level.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A participant's vote on its branch.
#[derive(Debug)]
pub enum Vote {
    Yes(PreparedBranch),
    /// The branch wrote nothing: its transaction was ended, nothing is prepared, and it needs
    /// no decision.
    ReadOnly,
    /// The branch is not prepared (a statement failed, the database refused, the connection was
    /// lost). It may still have reached the database as prepared if the connection broke during
    /// PREPARE, so an aborting coordinator rolls back every gid it tried.
    No(String),
}

/// A branch that voted YES: its gid and, while it lasts, the connection that prepared it.
#[derive(Debug)]
pub struct PreparedBranch {
    pub gid: String,
    pub(crate) connection: Option<Connection>,
}

impl PreparedBranch {
    /// A branch known by name only (recovery, operator actions).
    pub fn named(gid: &str) -> PreparedBranch {
        PreparedBranch { gid: gid.to_string(), connection: None }
    }
}

/// What a one-phase commit (no PREPARE: the transaction's only branch) came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnePhase {
    Committed,
    /// Nothing of the branch is applied (the database refused, or rolled back).
    RolledBack(String),
    /// The connection failed or timed out during the commit: the marker row will tell, once
    /// the database has settled ([`Database::settle_one_phase`]).
    Unknown(String),
}

/// What COMMIT PREPARED / ROLLBACK PREPARED found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Done,
    /// No prepared branch with that gid: it was finished before (by us, or by hand).
    NotPrepared,
}

/// Where a branch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchState {
    Prepared,
    Committed,
    /// Rolled back, or never prepared.
    Absent,
}

impl BranchState {
    pub fn name(self) -> &'static str {
        match self {
            BranchState::Prepared => "prepared",
            BranchState::Committed => "committed",
            BranchState::Absent => "rolled-back",
        }
    }
}

/// A prepared branch as the database lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedBranch {
    pub gid: String,
    /// Known for PostgreSQL (`pg_prepared_xacts.prepared`); MariaDB does not say.
    pub age_ms: Option<u64>,
    /// What the branch holds locked while it waits: PostgreSQL's table locks (`RowExclusiveLock
    /// on accounts`, from `pg_locks`; row locks live in the rows and are not listed), Redis's
    /// keys. `None`: the database does not say (MariaDB ties no lock to an XA branch).
    pub locks: Option<Vec<String>>,
}

/// A connection of either kind.
#[derive(Debug)]
pub(crate) enum Connection {
    Postgres(tokio_postgres::Client),
    Mariadb(mysql_async::Conn),
    Redis(redis::RedisConnection),
}

/// Commit markers (SQL marker rows, Redis `concord:done:` keys) are kept this long, unless
/// their transaction is unfinished: long enough for any recovery to read a branch's outcome.
pub const MARKER_RETENTION_S: u64 = 24 * 3600;

/// Idle connections kept for reuse. Enough for every concurrently running branch of a busy
/// coordinator: with 8, sixteen concurrent transactions closed and reopened connections (a
/// new PostgreSQL backend process each) on every other transaction.
const IDLE_CONNECTIONS: usize = 64;

#[derive(Debug)]
pub struct Database {
    pub name: String,
    pub kind: Kind,
    timeout: Duration,
    backend: Backend,
    idle: Mutex<Vec<Connection>>,
}

#[derive(Debug)]
enum Backend {
    Postgres(postgres::Postgres),
    Mariadb(mariadb::Mariadb),
    Redis(redis::Redis),
}

impl Database {
    pub fn new(config: &DatabaseConfig, timeout: Duration) -> Result<Database, DbError> {
        let backend = match config.kind {
            Kind::Postgres => Backend::Postgres(postgres::Postgres::new(&config.url)),
            Kind::Mariadb => Backend::Mariadb(
                mariadb::Mariadb::new(&config.url)
                    .map_err(|reason| DbError::Config { database: config.name.clone(), reason })?,
            ),
            Kind::Redis => Backend::Redis(
                redis::Redis::new(&config.url)
                    .map_err(|reason| DbError::Config { database: config.name.clone(), reason })?,
            ),
        };
        Ok(Database {
            name: config.name.clone(),
            kind: config.kind,
            timeout,
            backend,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The bound on every call to this database.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Checks a statement for this database before any branch opens: SQL must be one data
    /// statement (or one schema statement where `schema_changes` allows it); Redis takes its
    /// four writes (`crate::redis::parse`).
    pub fn check_statement(&self, statement: &str, schema_changes: bool) -> Result<(), String> {
        if self.kind == Kind::Redis {
            return redis::parse(statement).map(|_| ());
        }
        match crate::statements::classify(statement)? {
            crate::statements::Kind::Data => Ok(()),
            crate::statements::Kind::Schema if schema_changes => Ok(()),
            crate::statements::Kind::Schema => Err(
                "schema statements are not run here (schema_changes = true in its [[database]] allows them)".into(),
            ),
        }
    }

    /// Runs `fut` with this database's timeout, naming the database and the step on failure.
    pub(crate) async fn bounded<T, E: std::error::Error>(
        &self,
        what: &'static str,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, DbError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                Err(DbError::Failed { database: self.name.clone(), what, reason: error_chain(&e) })
            }
            Err(_) => Err(DbError::Timeout {
                database: self.name.clone(),
                what,
                timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    pub(crate) async fn connection(&self) -> Result<Connection, DbError> {
        loop {
            let idle = self.idle.lock().expect("the idle list's holders do not panic").pop();
            match idle {
                // Closed by the server (a restart) while idle: drop it, try the next.
                Some(Connection::Postgres(client)) if client.is_closed() => {}
                Some(connection) => return Ok(connection),
                None => break,
            }
        }
        match &self.backend {
            Backend::Postgres(pg) => pg.connect(self).await.map(Connection::Postgres),
            Backend::Mariadb(maria) => maria.connect(self).await.map(Connection::Mariadb),
            Backend::Redis(r) => r.connect(self).await.map(Connection::Redis),
        }
    }

    /// Returns a healthy connection for reuse. Callers drop connections that saw an error.
    pub(crate) fn release(&self, mut connection: Connection) {
        match &mut connection {
            Connection::Postgres(client) if client.is_closed() => return,
            // A connection comes back without a branch's staged writes.
            Connection::Redis(redis) => redis.staged.clear(),
            _ => {}
        }
        let mut idle = self.idle.lock().expect("the idle list's holders do not panic");
        if idle.len() < IDLE_CONNECTIONS {
            idle.push(connection);
        }
    }

    /// Creates the marker table if it is missing.
    pub async fn ensure_schema(&self) -> Result<(), DbError> {
        let mut connection = self.connection().await?;
        match &mut connection {
            Connection::Postgres(client) => postgres::ensure_schema(self, client).await?,
            Connection::Mariadb(conn) => mariadb::ensure_schema(self, conn).await?,
            // Nothing to create; say at once if this Redis cannot promise a prepare.
            Connection::Redis(redis) => {
                if let Some(problem) = redis::durability_problem(self, &mut redis.conn).await? {
                    eprintln!("concord: {}: {problem}", self.name);
                }
            }
        }
        self.release(connection);
        Ok(())
    }

    /// Opens branch `gid`: a local transaction (MariaDB: with the marker row written;
    /// PostgreSQL writes it with the prepare or the one-phase commit, and sends its `BEGIN`
    /// with the branch's first statement).
    pub async fn begin(self: &Arc<Self>, gid: &Gid) -> Result<OpenBranch, DbError> {
        let gid = gid.to_string();
        let mut connection = self.connection().await?;
        let begun = match &mut connection {
            Connection::Postgres(_) => false,
            Connection::Mariadb(conn) => {
                mariadb::begin(self, conn, &gid).await?;
                true
            }
            Connection::Redis(_) => true, // writes are staged until the prepare
        };
        Ok(OpenBranch {
            database: Arc::clone(self),
            gid,
            connection,
            may_be_read_only: true,
            begun,
        })
    }

    /// The outcome of a one-phase commit whose answer was lost: waits out twice the statement
    /// timeout (a commit the database had received by the time the connection was dropped has
    /// landed by then), then reads the branch's marker. A branch found prepared (Redis, whose
    /// one-phase commit is a prepare and a commit) is rolled back: nobody has decided it.
    pub async fn settle_one_phase(&self, gid: &str) -> Result<Decision, DbError> {
        tokio::time::sleep(self.timeout * 2).await;
        match self.branch_state(gid).await? {
            BranchState::Committed => Ok(Decision::Commit),
            BranchState::Absent => Ok(Decision::Abort),
            BranchState::Prepared => {
                self.finish(PreparedBranch::named(gid), Decision::Abort).await?;
                Ok(Decision::Abort)
            }
        }
    }

    /// Commits or rolls back a prepared branch, on the connection that prepared it if the
    /// branch still has it, else on any.
    pub async fn finish(
        &self,
        branch: PreparedBranch,
        decision: Decision,
    ) -> Result<Finish, DbError> {
        let PreparedBranch { gid, connection } = branch;
        if let Some(own) = connection {
            // The preparing connection may have died (a database restart): then any other
            // connection may finish the branch, which survives in the database.
            if let Ok(finished) = self.finish_on(own, &gid, decision).await {
                return Ok(finished);
            }
        }
        let fresh = self.connection().await?;
        self.finish_on(fresh, &gid, decision).await
    }

    async fn finish_on(
        &self,
        mut connection: Connection,
        gid: &str,
        decision: Decision,
    ) -> Result<Finish, DbError> {
        let result = match &mut connection {
            Connection::Postgres(client) => postgres::finish(self, client, gid, decision).await,
            Connection::Mariadb(conn) => mariadb::finish(self, conn, gid, decision).await,
            Connection::Redis(redis) => redis::finish(self, redis, gid, decision).await,
        };
        if result.is_ok() {
            self.release(connection);
        }
        result
    }

    /// Where branch `gid` stands: still prepared, committed (its marker row exists), or absent.
    pub async fn branch_state(&self, gid: &str) -> Result<BranchState, DbError> {
        let mut connection = self.connection().await?;
        let state = match &mut connection {
            Connection::Postgres(client) => postgres::branch_state(self, client, gid).await?,
            Connection::Mariadb(conn) => mariadb::branch_state(self, conn, gid).await?,
            Connection::Redis(redis) => redis::branch_state(self, redis, gid).await?,
        };
        self.release(connection);
        Ok(state)
    }

    /// Every prepared branch the database lists (Concord's and anyone else's).
    pub async fn list_prepared(&self) -> Result<Vec<ListedBranch>, DbError> {
        let mut connection = self.connection().await?;
        let listed = match &mut connection {
            Connection::Postgres(client) => postgres::list_prepared(self, client).await?,
            Connection::Mariadb(conn) => mariadb::list_prepared(self, conn).await?,
            Connection::Redis(redis) => redis::list_prepared(self, redis).await?,
        };
        self.release(connection);
        Ok(listed)
    }

    /// Deletes marker rows older than `older_than_s`, except those of `keep` (branches whose
    /// outcome may still need checking). Returns how many were deleted.
    pub async fn forget_markers(&self, keep: &[String], older_than_s: u64) -> Result<u64, DbError> {
        let mut connection = self.connection().await?;
        let deleted = match &mut connection {
            Connection::Postgres(client) => {
                postgres::forget_markers(self, client, keep, older_than_s).await?
            }
            Connection::Mariadb(conn) => {
                mariadb::forget_markers(self, conn, keep, older_than_s).await?
            }
            // Redis's commit markers expire on their own after the retention.
            Connection::Redis(_) => 0,
        };
        self.release(connection);
        Ok(deleted)
    }
}

/// A branch between `begin` and `prepare`: run the application's statements on it.
#[derive(Debug)]
pub struct OpenBranch {
    database: Arc<Database>,
    gid: String,
    connection: Connection,
    /// No statement that may write has run (only reads through [`OpenBranch::execute`], and
    /// the raw connection never handed out). The database itself has the last word at prepare.
    may_be_read_only: bool,
    /// The local transaction has been started. PostgreSQL's `BEGIN` waits for the branch's
    /// first statement and goes in the same flight ([`postgres::begin_with`]): one round trip
    /// fewer per branch.
    begun: bool,
}

/// A statement that only reads, as far as its text says (a function it calls may still write:
/// the database is asked before a branch is treated as read-only).
fn reads_only(sql: &str) -> bool {
    let text = sql.trim_start().to_ascii_lowercase();
    text.starts_with("select") && !text.contains(" into ")
}

impl OpenBranch {
    pub fn gid(&self) -> &str {
        &self.gid
    }

    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Whether nothing run on the branch so far may have written (see the field).
    pub fn may_be_read_only(&self) -> bool {
        self.may_be_read_only
    }

    /// Runs one statement; returns the rows it affected.
    pub async fn execute(&mut self, sql: &str) -> Result<u64, DbError> {
        let database = &*self.database;
        match &mut self.connection {
            Connection::Postgres(client) => {
                self.may_be_read_only &= reads_only(sql);
                if self.begun {
                    database.bounded("statement", client.execute(sql, &[])).await
                } else {
                    self.begun = true;
                    postgres::begin_with(database, client, sql).await
                }
            }
            Connection::Mariadb(conn) => {
                self.may_be_read_only &= reads_only(sql);
                mariadb::execute(database, conn, sql).await
            }
            Connection::Redis(redis) => {
                let op = redis::parse(sql).map_err(|reason| DbError::Failed {
                    database: database.name.clone(),
                    what: "statement",
                    reason,
                })?;
                self.may_be_read_only = false;
                redis.staged.push(op);
                Ok(1)
            }
        }
    }

    /// The PostgreSQL connection, for statements with parameters or queries, with the branch's
    /// transaction begun on it (`None`: another kind of database). What runs on it is not
    /// seen, so the branch is no longer taken as read-only.
    pub async fn postgres(&mut self) -> Result<Option<&tokio_postgres::Client>, DbError> {
        match &self.connection {
            Connection::Postgres(client) => {
                if !self.begun {
                    postgres::begin(&self.database, client).await?;
                    self.begun = true;
                }
                self.may_be_read_only = false;
                Ok(Some(client))
            }
            Connection::Mariadb(_) | Connection::Redis(_) => Ok(None),
        }
    }

    /// The MariaDB/MySQL connection, for statements with parameters or queries (as
    /// [`OpenBranch::postgres`]).
    pub fn mariadb(&mut self) -> Option<&mut mysql_async::Conn> {
        match &mut self.connection {
            Connection::Mariadb(conn) => {
                self.may_be_read_only = false;
                Some(conn)
            }
            Connection::Postgres(_) | Connection::Redis(_) => None,
        }
    }

    /// Prepares the branch and votes. YES only once the database has the branch prepared;
    /// READ-ONLY (the local transaction ended, nothing prepared) when the database confirms the
    /// branch wrote nothing.
    pub async fn prepare(self) -> Vote {
        let OpenBranch { database, gid, mut connection, may_be_read_only, begun } = self;
        if !begun {
            // Nothing ran on the branch: there is no transaction to end.
            database.release(connection);
            return Vote::ReadOnly;
        }
        if may_be_read_only {
            let read_only = match &mut connection {
                Connection::Postgres(client) => postgres::end_if_read_only(&database, client).await,
                Connection::Mariadb(conn) => mariadb::end_if_read_only(&database, conn, &gid).await,
                Connection::Redis(redis) => Ok(redis.staged.is_empty()),
            };
            match read_only {
                Ok(true) => {
                    database.release(connection);
                    return Vote::ReadOnly;
                }
                Ok(false) => {}
                Err(e) => return Vote::No(e.to_string()),
            }
        }
        let result = match &mut connection {
            Connection::Postgres(client) => postgres::prepare(&database, client, &gid).await,
            Connection::Mariadb(conn) => mariadb::prepare(&database, conn, &gid).await,
            Connection::Redis(redis) => redis::prepare(&database, redis, &gid).await,
        };
        match result {
            Ok(()) => Vote::Yes(PreparedBranch { gid, connection: Some(connection) }),
            Err(e) => Vote::No(e.to_string()),
        }
    }

    /// Commits the transaction's only branch without PREPARE. Its marker row commits with it,
    /// so a lost answer can be settled ([`Database::settle_one_phase`]). Redis has no plain
    /// commit of staged writes: there it is a prepare and a commit.
    pub async fn commit_one_phase(self) -> OnePhase {
        let OpenBranch { database, gid, mut connection, begun, .. } = self;
        let outcome = match &mut connection {
            Connection::Postgres(client) => {
                // Nothing ran: still a transaction, so the marker (and `txn show`) tells.
                if !begun {
                    if let Err(e) = postgres::begin(&database, client).await {
                        return OnePhase::RolledBack(e.to_string());
                    }
                }
                postgres::commit_one_phase(&database, client, &gid).await
            }
            Connection::Mariadb(conn) => mariadb::commit_one_phase(&database, conn, &gid).await,
            Connection::Redis(redis) => {
                if let Err(e) = redis::prepare(&database, redis, &gid).await {
                    // The prepare script may have run before its answer was lost: rolling back
                    // by name makes "nothing applied" certain.
                    let named = PreparedBranch::named(&gid);
                    return match database.finish(named, Decision::Abort).await {
                        Ok(_) => OnePhase::RolledBack(e.to_string()),
                        Err(_) => OnePhase::Unknown(e.to_string()),
                    };
                }
                match redis::finish(&database, redis, &gid, Decision::Commit).await {
                    Ok(Finish::Done) => OnePhase::Committed,
                    Ok(Finish::NotPrepared) => OnePhase::Unknown(format!(
                        "{}: the prepared record vanished before its commit",
                        database.name
                    )),
                    Err(e) => OnePhase::Unknown(e.to_string()),
                }
            }
        };
        if outcome == OnePhase::Committed {
            database.release(connection);
        }
        outcome
    }

    /// Abandons the branch before prepare (the connection is dropped, which rolls it back).
    pub fn abandon(self) {}
}
