//! The database coordinator: two-phase commit over real databases, recovery, operator actions.
//!
//! A transaction ([`Coordinator::begin`] → statements → [`Transaction::commit`]):
//!
//! ```text
//!   begin      issue txn id (epoch durable), open one branch per database (marker row written)
//!   prepare    every branch in parallel; YES only once the database holds it prepared
//!   decide     all YES ⇒ force Decided{COMMIT} to the log            ← nothing commits before this
//!              any NO  ⇒ roll back every branch tried; nothing logged (presumed abort)
//!   complete   COMMIT PREPARED each branch; "not prepared" ⇒ read its marker: committed, or a
//!              heuristic rollback, recorded and counted; all done ⇒ Finished (lazy)
//! ```
//!
//! Reconciliation ([`Coordinator::reconcile`]) runs at start and periodically: it lists the
//! databases' prepared branches, asks [`crate::reconcile::plan`] what to do, and does it. A
//! transaction this process is running is never touched by it (the `running` set), and an
//! undecided branch of this run is only presumed aborted after the grace period.
//!
//! The ledger reflects records as they are queued to the log, so a checkpoint (which replaces
//! the log with the ledger's live records, queued behind them) never drops one. A queued but not
//! yet durable decision is only ever acted on by the transaction that wrote it, which waits for
//! durability first: reconciliation leaves running transactions alone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use concord_commit::epoch::{EpochClock, Issue};
use concord_types::codec::Encode;
use concord_types::{Decision, NodeId, TxnId};
use concord_wal::{FileLog, GroupCommit, OnDurable};
use futures_util::future::join_all;
use serde::Serialize;

use crate::config::DatabasesConfig;
use crate::log::{BranchRef, DecisionSource, Ledger, Record};
use crate::metrics::{Gauges, Metrics, Outcome};
use crate::reconcile::{plan, Action, Knowledge, Listed};
use concord_participants::database::{
    BranchState, Database, DbError, Finish, OpenBranch, PreparedBranch, Vote,
};
use concord_participants::gid::Gid;

/// Log records appended between checkpoints.
pub const CHECKPOINT_EVERY: u64 = 10_000;
/// Log segment size.
const SEGMENT_BYTES: u64 = 64 << 20;
/// Marker rows are kept this long (unless their transaction is unfinished).
pub use concord_participants::database::MARKER_RETENTION_S;
/// Most branches (databases) one transaction may span.
pub const MAX_BRANCHES: usize = crate::config::MAX_DATABASES;
/// Longest a `begin` waits for another task to make a new epoch durable.
const EPOCH_WAIT_LIMIT: Duration = Duration::from_secs(10);
/// Longest a fault-injection pause waits for its resume file.
const FAULT_PAUSE_LIMIT: Duration = Duration::from_secs(120);

fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

fn decision_name(decision: Decision) -> &'static str {
    match decision {
        Decision::Commit => "commit",
        Decision::Abort => "abort",
    }
}

/// Where a test may stop the coordinator, to kill it (SIGKILL) or act behind its back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// Every branch voted; no decision logged yet.
    AfterPrepare,
    /// The COMMIT decision is durable; no branch committed yet.
    AfterDecision,
}

impl std::str::FromStr for FaultPoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pause-after-prepare" => Ok(FaultPoint::AfterPrepare),
            "pause-after-decision" => Ok(FaultPoint::AfterDecision),
            _ => Err(format!("unknown fault `{s}`: pause-after-prepare or pause-after-decision")),
        }
    }
}

/// A fault-injection pause: at `point`, wait until `resume_file` exists (then delete it).
#[derive(Debug, Clone)]
pub struct Fault {
    pub point: FaultPoint,
    pub resume_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: {reason}")]
    DataDir { path: PathBuf, reason: String },
    #[error(transparent)]
    Log(#[from] concord_wal::OpenError),
    #[error("log record {index}: {reason}")]
    Record { index: usize, reason: String },
    #[error("{0}")]
    Database(#[from] DbError),
    #[error("the log failed: {0}")]
    LogWrite(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BeginError {
    #[error("no database named `{0}` is configured")]
    UnknownDatabase(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("the log failed: {0}")]
    Log(String),
}

/// The outcome could not be established: the COMMIT decision may or may not be durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("outcome of {txn} unknown: {reason}; ask `concord txn show {txn}` after the coordinator restarts")]
pub struct OutcomeUnknown {
    pub txn: TxnId,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("{0} belongs to another coordinator; resolve it there")]
    NotOurs(TxnId),
    #[error("{0} is running; the coordinator decides it within its timeouts")]
    Running(TxnId),
    #[error("{txn}: the log says {}{}; resolving it to {} would contradict that. Use --force to do it anyway (recorded as a heuristic outcome)", decision_name(*.logged).to_uppercase(), if *.presumed { " (presumed abort: no decision was logged)" } else { "" }, decision_name(*.requested).to_uppercase())]
    Contradicts { txn: TxnId, logged: Decision, presumed: bool, requested: Decision },
    #[error("{0}: no decision logged and no prepared branch found")]
    Unknown(TxnId),
    #[error("the log failed: {0}")]
    Log(String),
}

/// One branch as reported to clients and operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BranchView {
    pub database: String,
    pub gid: String,
    /// "prepared", "committed", "rolled-back", "not-prepared" (not listed; not checked),
    /// "unknown" (the database did not answer), or for a running vote: "voted-no".
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeuristicView {
    pub database: String,
    pub gid: String,
    pub logged: String,
    pub actual: String,
    pub forced_by_operator: bool,
    pub age_ms: u64,
}

/// A transaction as reported to clients and operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TxnView {
    pub txn: String,
    /// "committed", "aborted", "committing", "aborting", "running", "undecided",
    /// "heuristic-mixed", "heuristic-commit", "heuristic-rollback".
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub branches: Vec<BranchView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub heuristics: Vec<HeuristicView>,
}

/// What one reconciliation pass did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoveryReport {
    pub dry_run: bool,
    pub actions: Vec<ActionReport>,
    /// Databases that could not be listed (their branches wait for the next pass).
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionReport {
    pub txn: Option<String>,
    pub action: String,
    pub result: String,
}

#[derive(Debug)]
struct State {
    ledger: Ledger,
    clock: EpochClock,
    /// Transactions begun by this process and not yet over, with their start time.
    running: HashMap<TxnId, u64>,
    /// When reconciliation first saw each gid listed as prepared.
    first_seen: HashMap<String, u64>,
    appended_since_checkpoint: u64,
    markers_forgotten_at_ms: u64,
}

#[derive(Debug)]
pub struct Coordinator {
    cluster: String,
    node: NodeId,
    grace_ms: u64,
    databases: Vec<Database>,
    /// The databases whose configuration allows schema statements through `run`.
    schema_changes: std::collections::BTreeSet<String>,
    log: GroupCommit,
    state: Mutex<State>,
    metrics: Metrics,
    fault: Option<Fault>,
}

fn check_data_dir(dir: &Path, config: &DatabasesConfig) -> Result<concord_wal::DirLock, OpenError> {
    let expected = format!(
        "format = 1\nrole = database-coordinator\ncluster = {}\nnode_id = {}\n",
        config.cluster, config.node_id
    );
    concord_wal::claim_data_dir(dir, &expected)
        .map_err(|reason| OpenError::DataDir { path: dir.to_path_buf(), reason })
}

impl Coordinator {
    /// Opens the log in `data_dir`, makes a new epoch durable, and connects to the databases
    /// (a database that is down now is retried by each reconciliation pass).
    pub async fn open(
        config: &DatabasesConfig,
        data_dir: &Path,
        fault: Option<Fault>,
    ) -> Result<Arc<Coordinator>, OpenError> {
        let mut dir_lock = check_data_dir(data_dir, config)?;
        let (file_log, payloads) =
            FileLog::open_claimed(&mut dir_lock, &data_dir.join("log"), SEGMENT_BYTES)?;
        let mut records = Vec::with_capacity(payloads.len());
        for (index, payload) in payloads.iter().enumerate() {
            let record = Record::from_bytes(payload)
                .map_err(|e| OpenError::Record { index, reason: e.to_string() })?;
            records.push(record);
        }
        let ledger = Ledger::replay(records);
        let node = NodeId(config.node_id);
        let (clock, epoch) = EpochClock::recover(node, ledger.epoch());
        // The log thread holds the directory's lock until it has written all it was given.
        let log = GroupCommit::start_holding(file_log, dir_lock)
            .map_err(|e| OpenError::LogWrite(e.to_string()))?;
        let timeout = Duration::from_millis(config.timeouts.statement_ms);
        let databases = config
            .databases
            .iter()
            .map(|d| Database::new(d, timeout))
            .collect::<Result<Vec<_>, _>>()?;
        let coordinator = Coordinator {
            cluster: config.cluster.clone(),
            node,
            grace_ms: config.recovery.grace_ms,
            databases,
            schema_changes: config
                .databases
                .iter()
                .filter(|d| d.schema_changes)
                .map(|d| d.name.clone())
                .collect(),
            log,
            state: Mutex::new(State {
                ledger,
                clock,
                running: HashMap::new(),
                first_seen: HashMap::new(),
                appended_since_checkpoint: 0,
                // The first clean-up waits an interval: nothing is old right after a start.
                markers_forgotten_at_ms: now_ms(),
            }),
            metrics: Metrics::default(),
            fault,
        };
        coordinator.persist(Record::Epoch(epoch), true).await.map_err(OpenError::LogWrite)?;
        coordinator.state().clock.on_persisted(epoch);
        for db in &coordinator.databases {
            if let Err(e) = db.ensure_schema().await {
                eprintln!("concord: {e}; retried at each reconciliation");
            }
        }
        Ok(Arc::new(coordinator))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("state holders do not panic")
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn epoch(&self) -> u32 {
        self.state().clock.epoch()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn database_names(&self) -> Vec<String> {
        self.databases.iter().map(|d| d.name.clone()).collect()
    }

    fn database(&self, name: &str) -> Option<&Database> {
        self.databases.iter().find(|d| d.name == name)
    }

    /// Queues `record` (applying it to the ledger in queue order) and, if `forced`, waits
    /// until it is durable.
    async fn persist(&self, record: Record, forced: bool) -> Result<(), String> {
        let durable = {
            let mut state = self.state();
            state.ledger.apply(&record);
            let (done, durable) = tokio::sync::oneshot::channel();
            let callback: Option<OnDurable> = forced.then(|| {
                Box::new(move |result: Result<(), String>| {
                    let _ = done.send(result);
                }) as OnDurable
            });
            self.log.submit(record.to_bytes(), callback).map_err(|e| e.to_string())?;
            state.appended_since_checkpoint += 1;
            if state.appended_since_checkpoint >= CHECKPOINT_EVERY {
                let live = state.ledger.live_records().iter().map(Encode::to_bytes).collect();
                self.log.checkpoint(live).map_err(|e| e.to_string())?;
                state.appended_since_checkpoint = 0;
            }
            durable
        };
        if forced {
            durable.await.map_err(|_| "the log thread stopped".to_string())??;
        }
        Ok(())
    }

    async fn pause(&self, point: FaultPoint, txn: TxnId) {
        let Some(fault) = &self.fault else { return };
        if fault.point != point {
            return;
        }
        eprintln!(
            "concord: fault: paused {point:?} of {txn}; create {} to resume",
            fault.resume_file.display()
        );
        let deadline = Instant::now() + FAULT_PAUSE_LIMIT;
        while Instant::now() < deadline {
            if std::fs::remove_file(&fault.resume_file).is_ok() {
                eprintln!("concord: fault: resumed {txn}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("concord: fault: no resume file after {FAULT_PAUSE_LIMIT:?}; going on");
    }

    /// Starts a transaction with one branch in each named database.
    pub async fn begin(&self, databases: &[&str]) -> Result<Transaction<'_>, BeginError> {
        if databases.is_empty() || databases.len() > MAX_BRANCHES {
            return Err(BeginError::Invalid(format!(
                "a transaction needs 1 to {MAX_BRANCHES} databases, not {}",
                databases.len()
            )));
        }
        let mut seen = HashSet::new();
        let mut chosen = Vec::with_capacity(databases.len());
        for name in databases {
            let db =
                self.database(name).ok_or_else(|| BeginError::UnknownDatabase((*name).into()))?;
            if !seen.insert(*name) {
                return Err(BeginError::Invalid(format!(
                    "database `{name}` appears twice; put all its statements in one branch"
                )));
            }
            chosen.push(db);
        }
        let txn = self.issue().await?;
        let started = Instant::now();
        // Owns the id from here: whatever happens next, dropping it ends "running".
        let mut transaction = Transaction { coordinator: self, txn, started, branches: Vec::new() };
        let opened = join_all(chosen.iter().enumerate().map(|(index, db)| {
            let index = u16::try_from(index).expect("at most MAX_BRANCHES branches");
            let gid = Gid::new(&self.cluster, txn, index);
            async move { db.begin(&gid).await }
        }))
        .await;
        let mut branches = Vec::with_capacity(opened.len());
        for branch in opened {
            match branch {
                Ok(open) => branches.push(open),
                Err(e) => {
                    let latency = elapsed_us(started);
                    self.metrics.record_transaction(Outcome::Aborted, latency);
                    return Err(BeginError::Database(e));
                }
            }
        }
        transaction.branches = branches;
        Ok(transaction)
    }

    async fn issue(&self) -> Result<TxnId, BeginError> {
        let deadline = Instant::now() + EPOCH_WAIT_LIMIT;
        loop {
            let issued = {
                let mut state = self.state();
                let issued = state.clock.issue();
                if let Issue::Txn(txn) = issued {
                    state.running.insert(txn, now_ms());
                }
                issued
            };
            match issued {
                Issue::Txn(txn) => return Ok(txn),
                Issue::PersistEpoch(epoch) => {
                    self.persist(Record::Epoch(epoch), true).await.map_err(BeginError::Log)?;
                    self.state().clock.on_persisted(epoch);
                }
                // Another task is making the new epoch durable.
                Issue::Wait if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Issue::Wait => {
                    return Err(BeginError::Log(format!(
                        "the new epoch is not durable after {EPOCH_WAIT_LIMIT:?}"
                    )))
                }
            }
        }
    }

    /// Runs `statements` in each named database as one atomic transaction. Each statement must
    /// be one data statement, or one schema statement where the database allows them
    /// (`concord_participants::statements`); otherwise nothing runs.
    pub async fn run(&self, branches: &[(String, Vec<String>)]) -> Result<TxnView, RunError> {
        for (name, statements) in branches {
            for sql in statements {
                let refused = |why: String| {
                    let shown: String = sql.chars().take(60).collect();
                    RunError::Begin(BeginError::Invalid(format!("{name}: `{shown}`: {why}")))
                };
                // An unknown database is refused by `begin`, naming it.
                if let Some(db) = self.databases.iter().find(|d| &d.name == name) {
                    db.check_statement(sql, self.schema_changes.contains(name)).map_err(refused)?;
                }
            }
        }
        let names: Vec<&str> = branches.iter().map(|(name, _)| name.as_str()).collect();
        let mut transaction = self.begin(&names).await?;
        for (name, statements) in branches {
            for sql in statements {
                let branch = transaction.branch(name).expect("begin opened a branch per name");
                if let Err(e) = branch.execute(sql).await {
                    return Ok(transaction.abort(&e.to_string()).await);
                }
            }
        }
        Ok(transaction.commit().await?)
    }

    /// Records a heuristic outcome (once per branch) and counts it.
    async fn record_heuristic(
        &self,
        txn: TxnId,
        branch: &BranchRef,
        logged: Decision,
        actual: Decision,
        forced: bool,
    ) -> Result<(), String> {
        let known = self.state().ledger.get(txn).is_some_and(|d| {
            d.heuristics.iter().any(|h| h.branch == *branch && h.actual == actual)
        });
        if known {
            return Ok(());
        }
        eprintln!(
            "concord: HEURISTIC outcome: {txn} branch {} in {} is {} but the log says {}",
            branch.gid,
            branch.database,
            decision_name(actual),
            decision_name(logged)
        );
        self.metrics.record_heuristic(forced);
        let record = Record::Heuristic {
            txn,
            branch: branch.clone(),
            logged,
            actual,
            forced,
            at_ms: now_ms(),
        };
        self.persist(record, true).await?;
        let count = self.state().ledger.heuristic_count() as u64;
        self.metrics.set_heuristic_transactions(count);
        Ok(())
    }

    /// After a branch of a decided transaction was found not prepared: was it finished the
    /// decided way? Records a heuristic outcome if not. `Ok(true)`: the branch is complete.
    async fn verify(
        &self,
        txn: TxnId,
        branch: &BranchRef,
        expected: Decision,
    ) -> Result<bool, String> {
        let db = self
            .database(&branch.database)
            .ok_or_else(|| format!("database `{}` is no longer configured", branch.database))?;
        let actual = match db.branch_state(&branch.gid).await.map_err(|e| e.to_string())? {
            BranchState::Prepared => return Ok(false),
            BranchState::Committed => Decision::Commit,
            BranchState::Absent => Decision::Abort,
        };
        if actual != expected {
            self.record_heuristic(txn, branch, expected, actual, false).await?;
        }
        Ok(true)
    }

    /// Finishes one branch of a decided transaction the decided way. `Ok(true)`: complete.
    async fn drive(
        &self,
        txn: TxnId,
        branch: &BranchRef,
        decision: Decision,
        prepared: PreparedBranch,
    ) -> Result<bool, String> {
        let db = self
            .database(&branch.database)
            .ok_or_else(|| format!("database `{}` is no longer configured", branch.database))?;
        match db.finish(prepared, decision).await.map_err(|e| e.to_string())? {
            Finish::Done => Ok(true),
            Finish::NotPrepared => self.verify(txn, branch, decision).await,
        }
    }

    /// One reconciliation pass. `dry_run`: plan only.
    pub async fn reconcile(&self, dry_run: bool) -> RecoveryReport {
        let mut report = RecoveryReport { dry_run, ..RecoveryReport::default() };
        let listings = join_all(self.databases.iter().map(|db| async move {
            if !dry_run {
                // A database that was down at start gets its marker table now.
                let _ = db.ensure_schema().await;
            }
            (db, db.list_prepared().await)
        }))
        .await;
        let now = now_ms();
        let mut listed = Vec::new();
        let mut listed_databases = HashSet::new();
        let mut ages: HashMap<String, Option<u64>> = HashMap::new();
        let mut up = BTreeMap::new();
        for (db, listing) in listings {
            up.insert(db.name.clone(), listing.is_ok());
            match listing {
                Ok(branches) => {
                    listed_databases.insert(db.name.clone());
                    for b in branches {
                        ages.insert(b.gid.clone(), b.age_ms);
                        listed.push(Listed { database: db.name.clone(), gid: b.gid });
                    }
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        let actions = {
            let mut state = self.state();
            if !dry_run {
                let still: HashSet<&str> = listed.iter().map(|l| l.gid.as_str()).collect();
                state.first_seen.retain(|gid, _| still.contains(gid.as_str()));
                for l in &listed {
                    state.first_seen.entry(l.gid.clone()).or_insert(now);
                }
            }
            let running: HashSet<TxnId> = state.running.keys().copied().collect();
            let know = Knowledge {
                node: self.node,
                cluster: &self.cluster,
                epoch: state.clock.epoch(),
                ledger: &state.ledger,
                running: &running,
                listed_databases: &listed_databases,
            };
            let actions = plan(&know, &listed, &state.first_seen, now, self.grace_ms);
            if !dry_run {
                self.update_gauges(&state, &listed, &ages, up, now);
            }
            actions
        };
        // Per decided transaction: did every branch this pass looked at complete?
        let mut complete: BTreeMap<TxnId, bool> = BTreeMap::new();
        for action in &actions {
            let txn = action.txn().map(|t| t.to_string());
            if dry_run {
                if !matches!(action, Action::Leave { .. }) {
                    report.actions.push(ActionReport {
                        txn,
                        action: action.to_string(),
                        result: "would do".into(),
                    });
                }
                continue;
            }
            let result = match action {
                Action::Leave { .. } => continue,
                Action::Commit { txn, branch, .. } | Action::Rollback { txn, branch, .. } => {
                    let commit = matches!(action, Action::Commit { .. });
                    let decision = if commit { Decision::Commit } else { Decision::Abort };
                    let decided = self.state().ledger.get(*txn).is_some();
                    let result = if decided {
                        self.drive(*txn, branch, decision, PreparedBranch::named(&branch.gid)).await
                    } else {
                        // Presumed abort: no decision, so "not prepared" needs no checking.
                        let db = self
                            .database(&branch.database)
                            .expect("listed by a configured database");
                        db.finish(PreparedBranch::named(&branch.gid), Decision::Abort)
                            .await
                            .map(|_| true)
                            .map_err(|e| e.to_string())
                    };
                    if result.is_ok() {
                        self.metrics.record_recovery(commit);
                    }
                    if decided {
                        let entry = complete.entry(*txn).or_insert(true);
                        *entry &= result.as_ref().is_ok_and(|done| *done);
                    }
                    result
                }
                Action::Verify { txn, branch, expected } => {
                    let result = self.verify(*txn, branch, *expected).await;
                    let entry = complete.entry(*txn).or_insert(true);
                    *entry &= result.as_ref().is_ok_and(|done| *done);
                    result
                }
            };
            let result = match result {
                Ok(true) => "done".to_string(),
                Ok(false) => "still prepared; next pass".to_string(),
                Err(e) => format!("failed: {e}"),
            };
            report.actions.push(ActionReport { txn, action: action.to_string(), result });
        }
        if !dry_run {
            for (txn, done) in complete {
                let covers_all = {
                    let state = self.state();
                    state.ledger.get(txn).is_some_and(|d| !d.finished)
                        && Self::all_branches_seen(&state.ledger, txn, &actions)
                };
                if done && covers_all {
                    if let Err(e) = self.persist(Record::Finished { txn }, false).await {
                        report.errors.push(format!("log: {e}"));
                    }
                }
            }
            self.forget_markers_if_due().await;
        }
        report
    }

    /// Whether this pass acted on or verified every branch of `txn`.
    fn all_branches_seen(ledger: &Ledger, txn: TxnId, actions: &[Action]) -> bool {
        let Some(decided) = ledger.get(txn) else { return false };
        decided.branches.iter().all(|b| {
            actions.iter().any(|a| match a {
                Action::Commit { branch, .. }
                | Action::Rollback { branch, .. }
                | Action::Verify { branch, .. } => branch.gid == b.gid,
                Action::Leave { .. } => false,
            })
        })
    }

    fn update_gauges(
        &self,
        state: &State,
        listed: &[Listed],
        ages: &HashMap<String, Option<u64>>,
        database_up: BTreeMap<String, bool>,
        now: u64,
    ) {
        let mut prepared: BTreeMap<String, (u64, f64)> =
            self.databases.iter().map(|d| (d.name.clone(), (0, 0.0))).collect();
        let mut in_doubt: HashSet<TxnId> = state.ledger.unfinished().map(|(t, _)| t).collect();
        for l in listed {
            let Some(gid) = Gid::parse(&l.gid) else { continue };
            if gid.cluster != self.cluster || gid.txn.coordinator != self.node {
                continue;
            }
            in_doubt.insert(gid.txn);
            let age_ms = ages.get(&l.gid).copied().flatten().unwrap_or_else(|| {
                now.saturating_sub(state.first_seen.get(&l.gid).copied().unwrap_or(now))
            });
            let entry = prepared.entry(l.database.clone()).or_insert((0, 0.0));
            entry.0 += 1;
            #[allow(clippy::cast_precision_loss)] // milliseconds of age, far below 2^52
            let age_s = age_ms as f64 / 1000.0;
            entry.1 = entry.1.max(age_s);
        }
        self.metrics.set_gauges(Gauges {
            prepared,
            in_doubt_transactions: in_doubt.len() as u64,
            heuristic_transactions: state.ledger.heuristic_count() as u64,
            database_up,
        });
    }

    async fn forget_markers_if_due(&self) {
        let now = now_ms();
        let keep: Vec<String> = {
            let mut state = self.state();
            if now.saturating_sub(state.markers_forgotten_at_ms) < 3_600_000 {
                return;
            }
            state.markers_forgotten_at_ms = now;
            let mut keep: Vec<String> = state
                .ledger
                .unfinished()
                .flat_map(|(_, d)| d.branches.iter().map(|b| b.gid.clone()))
                .collect();
            keep.extend(state.first_seen.keys().cloned());
            keep
        };
        for db in &self.databases {
            if let Err(e) = db.forget_markers(&keep, MARKER_RETENTION_S).await {
                eprintln!("concord: {e}");
            }
        }
    }

    /// Lists every database's prepared branches that belong to this coordinator, by transaction.
    async fn own_prepared(&self) -> (BTreeMap<TxnId, Vec<BranchView>>, Vec<String>) {
        let listings =
            join_all(self.databases.iter().map(|db| async move { (db, db.list_prepared().await) }))
                .await;
        let mut by_txn: BTreeMap<TxnId, Vec<BranchView>> = BTreeMap::new();
        let mut errors = Vec::new();
        let first_seen = self.state().first_seen.clone();
        let now = now_ms();
        let mut seen_gids = HashSet::new();
        for (db, listing) in listings {
            match listing {
                Ok(branches) => {
                    for b in branches {
                        let Some(gid) = Gid::parse(&b.gid) else { continue };
                        if gid.cluster != self.cluster
                            || gid.txn.coordinator != self.node
                            || !seen_gids.insert(b.gid.clone())
                        {
                            continue;
                        }
                        let age_ms = b
                            .age_ms
                            .or_else(|| first_seen.get(&b.gid).map(|t| now.saturating_sub(*t)));
                        by_txn.entry(gid.txn).or_default().push(BranchView {
                            database: db.name.clone(),
                            gid: b.gid,
                            state: "prepared".into(),
                            age_ms,
                            detail: None,
                        });
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        (by_txn, errors)
    }

    fn view_of(state: &State, txn: TxnId, prepared: &[BranchView], now: u64) -> TxnView {
        let mut branches: Vec<BranchView> = prepared.to_vec();
        let (label, decided_by, age_ms, heuristics) = match state.ledger.get(txn) {
            Some(d) => {
                for b in &d.branches {
                    if !branches.iter().any(|v| v.gid == b.gid) {
                        branches.push(BranchView {
                            database: b.database.clone(),
                            gid: b.gid.clone(),
                            state: "not-prepared".into(),
                            age_ms: None,
                            detail: None,
                        });
                    }
                }
                let by = match d.source {
                    DecisionSource::Protocol => "protocol",
                    DecisionSource::Operator => "operator",
                };
                let heuristics = d
                    .heuristics
                    .iter()
                    .map(|h| HeuristicView {
                        database: h.branch.database.clone(),
                        gid: h.branch.gid.clone(),
                        logged: decision_name(h.logged).into(),
                        actual: decision_name(h.actual).into(),
                        forced_by_operator: h.forced,
                        age_ms: now.saturating_sub(h.at_ms),
                    })
                    .collect();
                let label = if state.running.contains_key(&txn) && d.heuristics.is_empty() {
                    "committing"
                } else {
                    d.state_name()
                };
                (
                    label.to_string(),
                    Some(by.to_string()),
                    Some(now.saturating_sub(d.at_ms)),
                    heuristics,
                )
            }
            None if state.running.contains_key(&txn) => {
                let age = state.running.get(&txn).map(|t| now.saturating_sub(*t));
                ("running".to_string(), None, age, Vec::new())
            }
            None if !branches.is_empty() => ("undecided".to_string(), None, None, Vec::new()),
            None => ("aborted".to_string(), None, None, Vec::new()),
        };
        let reason = (label == "undecided").then(|| {
            "no decision logged: presumed abort; reconciliation rolls it back (older epoch at once, this epoch after the grace period)".to_string()
        });
        TxnView {
            txn: txn.to_string(),
            state: label,
            decided_by,
            age_ms,
            reason,
            branches,
            heuristics,
        }
    }

    /// Transactions of this coordinator with a branch prepared or a decision not yet applied
    /// (and, with `heuristic`, every transaction with a heuristic outcome). Oldest first.
    pub async fn in_doubt(&self, heuristic: bool) -> (Vec<TxnView>, Vec<String>) {
        let (prepared, errors) = self.own_prepared().await;
        let state = self.state();
        let now = now_ms();
        let mut txns: HashSet<TxnId> = prepared.keys().copied().collect();
        txns.extend(state.ledger.unfinished().map(|(t, _)| t));
        if heuristic {
            txns.extend(
                state.ledger.iter().filter(|(_, d)| !d.heuristics.is_empty()).map(|(t, _)| t),
            );
        }
        let mut txns: Vec<TxnId> = txns.into_iter().collect();
        txns.sort();
        let views = txns
            .into_iter()
            .map(|t| Self::view_of(&state, t, prepared.get(&t).map_or(&[][..], Vec::as_slice), now))
            .collect();
        (views, errors)
    }

    /// One transaction with each branch's actual state read from its database.
    pub async fn show(&self, txn: TxnId) -> TxnView {
        let (prepared, _) = self.own_prepared().await;
        let mut view = {
            let state = self.state();
            Self::view_of(&state, txn, prepared.get(&txn).map_or(&[][..], Vec::as_slice), now_ms())
        };
        for branch in &mut view.branches {
            if branch.state != "not-prepared" {
                continue;
            }
            match self.database(&branch.database) {
                Some(db) => match db.branch_state(&branch.gid).await {
                    Ok(state) => branch.state = state.name().into(),
                    Err(e) => {
                        branch.state = "unknown".into();
                        branch.detail = Some(e.to_string());
                    }
                },
                None => branch.state = "unknown".into(),
            }
        }
        view
    }

    /// An operator's decision for an in-doubt transaction. Refuses to contradict the log
    /// (a logged decision, or presumed abort) unless `force`, which records a heuristic outcome
    /// on every branch it finishes the other way.
    pub async fn resolve(
        &self,
        txn: TxnId,
        requested: Decision,
        force: bool,
    ) -> Result<Vec<ActionReport>, ResolveError> {
        if txn.coordinator != self.node {
            return Err(ResolveError::NotOurs(txn));
        }
        if self.state().running.contains_key(&txn) {
            return Err(ResolveError::Running(txn));
        }
        let (prepared, _) = self.own_prepared().await;
        let prepared: Vec<BranchRef> = prepared
            .get(&txn)
            .map(|v| {
                v.iter()
                    .map(|b| BranchRef { database: b.database.clone(), gid: b.gid.clone() })
                    .collect()
            })
            .unwrap_or_default();
        let logged =
            self.state().ledger.get(txn).map(|d| (d.decision, d.branches.clone(), d.finished));
        if logged.is_none() && prepared.is_empty() {
            return Err(ResolveError::Unknown(txn));
        }
        let effective = logged.as_ref().map_or(Decision::Abort, |(d, _, _)| *d);
        if requested != effective && !force {
            return Err(ResolveError::Contradicts {
                txn,
                logged: effective,
                presumed: logged.is_none(),
                requested,
            });
        }
        if logged.is_none() && requested == Decision::Abort {
            let record = Record::Decided {
                txn,
                decision: Decision::Abort,
                source: DecisionSource::Operator,
                at_ms: now_ms(),
                branches: prepared.clone(),
            };
            self.persist(record, true).await.map_err(ResolveError::Log)?;
        }
        let mut reports = Vec::new();
        let mut all_done = true;
        for branch in &prepared {
            let db = self.database(&branch.database).expect("listed by a configured database");
            let result = match db.finish(PreparedBranch::named(&branch.gid), requested).await {
                Ok(Finish::Done) if requested != effective => self
                    .record_heuristic(txn, branch, effective, requested, true)
                    .await
                    .map(|()| "done (recorded as a heuristic outcome)".to_string())
                    .map_err(ResolveError::Log)?,
                Ok(Finish::Done) => "done".to_string(),
                Ok(Finish::NotPrepared) => "no longer prepared".to_string(),
                Err(e) => {
                    all_done = false;
                    format!("failed: {e}")
                }
            };
            let verb = if requested == Decision::Commit { "commit" } else { "rollback" };
            reports.push(ActionReport {
                txn: Some(txn.to_string()),
                action: format!("{verb:<8} {} in {}", branch.gid, branch.database),
                result,
            });
        }
        // Branches the log names that were not prepared: check how they ended.
        if let Some((decision, branches, false)) = &logged {
            for branch in branches.iter().filter(|b| !prepared.contains(b)) {
                let result = match self.verify(txn, branch, *decision).await {
                    Ok(true) => "verified".to_string(),
                    Ok(false) => {
                        all_done = false;
                        "still prepared".to_string()
                    }
                    Err(e) => {
                        all_done = false;
                        format!("failed: {e}")
                    }
                };
                reports.push(ActionReport {
                    txn: Some(txn.to_string()),
                    action: format!("verify   {} in {}", branch.gid, branch.database),
                    result,
                });
            }
        }
        let unfinished = self.state().ledger.get(txn).is_some_and(|d| !d.finished);
        if all_done && unfinished {
            self.persist(Record::Finished { txn }, false).await.map_err(ResolveError::Log)?;
        }
        Ok(reports)
    }

    /// Runs [`Coordinator::reconcile`] every `interval` until the coordinator is dropped.
    pub fn spawn_recovery(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(coordinator) = weak.upgrade() else { return };
                let report = coordinator.reconcile(false).await;
                for action in &report.actions {
                    eprintln!("concord: recovery: {} — {}", action.action, action.result);
                }
            }
        })
    }
}

fn elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Begin(#[from] BeginError),
    #[error(transparent)]
    Unknown(#[from] OutcomeUnknown),
}

/// A transaction between begin and commit: one open branch per database.
#[derive(Debug)]
pub struct Transaction<'c> {
    coordinator: &'c Coordinator,
    txn: TxnId,
    started: Instant,
    branches: Vec<OpenBranch<'c>>,
}

impl Drop for Transaction<'_> {
    /// However the transaction ends (commit, abort, or dropped midway), it is no longer
    /// running; dropped open branches roll back with their connections.
    fn drop(&mut self) {
        self.coordinator.state().running.remove(&self.txn);
    }
}

impl<'c> Transaction<'c> {
    pub fn id(&self) -> TxnId {
        self.txn
    }

    /// The open branch in `database`, to run statements on.
    pub fn branch(&mut self, database: &str) -> Option<&mut OpenBranch<'c>> {
        self.branches.iter_mut().find(|b| b.database().name == database)
    }

    /// Abandons every branch before prepare.
    pub async fn abort(mut self, reason: &str) -> TxnView {
        let branches = std::mem::take(&mut self.branches);
        let views = branches
            .into_iter()
            .map(|b| {
                let view = BranchView {
                    database: b.database().name.clone(),
                    gid: b.gid().to_string(),
                    state: "rolled-back".into(),
                    age_ms: None,
                    detail: None,
                };
                b.abandon();
                view
            })
            .collect();
        self.coordinator.metrics.record_transaction(Outcome::Aborted, elapsed_us(self.started));
        TxnView {
            txn: self.txn.to_string(),
            state: "aborted".into(),
            decided_by: None,
            age_ms: None,
            reason: Some(reason.to_string()),
            branches: views,
            heuristics: Vec::new(),
        }
    }

    /// Prepares every branch, decides, and completes. The answer is the decision; a branch
    /// that could not be completed now is completed by reconciliation.
    pub async fn commit(mut self) -> Result<TxnView, OutcomeUnknown> {
        let c = self.coordinator;
        let txn = self.txn;
        let branches = std::mem::take(&mut self.branches);
        let refs: Vec<BranchRef> = branches
            .iter()
            .map(|b| BranchRef { database: b.database().name.clone(), gid: b.gid().to_string() })
            .collect();
        let votes = join_all(branches.into_iter().map(OpenBranch::prepare)).await;
        c.pause(FaultPoint::AfterPrepare, txn).await;
        let no = votes.iter().zip(&refs).find_map(|(v, r)| match v {
            Vote::No(reason) => Some(format!("{} voted NO: {reason}", r.database)),
            Vote::Yes(_) => None,
        });
        if let Some(reason) = no {
            return Ok(self.roll_back(refs, votes, reason).await);
        }
        let record = Record::Decided {
            txn,
            decision: Decision::Commit,
            source: DecisionSource::Protocol,
            at_ms: now_ms(),
            branches: refs.clone(),
        };
        if let Err(reason) = c.persist(record, true).await {
            c.metrics.record_transaction(Outcome::Unknown, elapsed_us(self.started));
            return Err(OutcomeUnknown { txn, reason });
        }
        c.pause(FaultPoint::AfterDecision, txn).await;
        let results = join_all(votes.into_iter().zip(&refs).map(|(vote, branch)| async move {
            let Vote::Yes(prepared) = vote else { unreachable!("every vote is YES here") };
            c.drive(txn, branch, Decision::Commit, prepared).await
        }))
        .await;
        let mut views = Vec::with_capacity(refs.len());
        let mut all_done = true;
        for (branch, result) in refs.iter().zip(results) {
            let (state, detail) = match result {
                Ok(true) => ("committed", None),
                Ok(false) => {
                    ("prepared", Some("still prepared; reconciliation completes it".to_string()))
                }
                Err(e) => ("prepared", Some(format!("{e}; reconciliation completes it"))),
            };
            all_done &= state == "committed";
            views.push(BranchView {
                database: branch.database.clone(),
                gid: branch.gid.clone(),
                state: state.into(),
                age_ms: None,
                detail,
            });
        }
        if all_done {
            // Lazy: if lost, reconciliation finds the branches done and writes it again.
            let _ = c.persist(Record::Finished { txn }, false).await;
        }
        c.metrics.record_transaction(Outcome::Committed, elapsed_us(self.started));
        let mut view = {
            let state = c.state();
            Coordinator::view_of(&state, txn, &[], now_ms())
        };
        // The ledger's branches are `refs`, in order; show what completing them found.
        view.branches = views;
        if view.heuristics.is_empty() {
            view.state = "committed".into();
        }
        Ok(view)
    }

    async fn roll_back(&self, refs: Vec<BranchRef>, votes: Vec<Vote>, reason: String) -> TxnView {
        let c = self.coordinator;
        let results = join_all(votes.into_iter().zip(&refs).map(|(vote, branch)| async move {
            let db = c.database(&branch.database).expect("branches name configured databases");
            // A NO voter's PREPARE may still have reached the database: roll back by name too.
            let prepared = match vote {
                Vote::Yes(prepared) => prepared,
                Vote::No(_) => PreparedBranch::named(&branch.gid),
            };
            db.finish(prepared, Decision::Abort).await
        }))
        .await;
        let branches = refs
            .into_iter()
            .zip(results)
            .map(|(branch, result)| {
                let detail = result
                    .err()
                    .map(|e| format!("{e}; reconciliation rolls it back after the grace period"));
                BranchView {
                    database: branch.database,
                    gid: branch.gid,
                    state: "rolled-back".into(),
                    age_ms: None,
                    detail,
                }
            })
            .collect();
        c.metrics.record_transaction(Outcome::Aborted, elapsed_us(self.started));
        TxnView {
            txn: self.txn.to_string(),
            state: "aborted".into(),
            decided_by: Some("protocol".into()),
            age_ms: None,
            reason: Some(reason),
            branches,
            heuristics: Vec::new(),
        }
    }
}
