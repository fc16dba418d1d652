//! The database coordinator: two-phase commit over real databases, recovery, operator actions.
//!
//! The protocol is the 2PC core's (`concord_commit::two_phase`), driven by [`crate::engine`];
//! this module is the supervisor around it — what the core does not know:
//!
//! ```text
//!   begin      reserve a txn id from the core (its epoch durable), open one branch per
//!              database under gid concord:CLUSTER:TXN:NODE (statements run on them)
//!   commit     hand the open branches to the engine: the core prepares (or commits one
//!              branch in one phase), decides, and drives the decision; the answer comes once
//!              every branch has settled
//!   reconcile  list the databases' prepared branches; each of ours is an inquiry the core
//!              answers (reconcile.rs), and the answer is carried out here
//!   operators  views of transactions (the ledger, a read model of the log, and the
//!              databases' listings), resolve with the core's answer as the log's word,
//!              heuristic outcomes recorded and counted
//! ```
//!
//! Every record goes through [`Shared::submit`], which applies it to the ledger in queue order;
//! checkpoints are taken by the engine (it alone knows the core's live records), so no record
//! is queued between a checkpoint's snapshot and its place in the log.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use concord_types::codec::Encode;
use concord_types::{Decision, NodeId, TxnId};
use concord_wal::{FileLog, GroupCommit, OnDurable};
use futures_util::future::join_all;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::DatabasesConfig;
use crate::engine::{Engine, Request, Settled};
use crate::log::{BranchRef, CoreRecord, DecisionSource, Ledger, Record, MAX_DATABASE_NODES};
use crate::metrics::{Gauges, Metrics, Outcome};
use crate::reconcile::{Action, Listed};
use crate::trace::{Filter, Step, Traces};
use concord_commit::xa::Completion;
use concord_console::History;
use concord_participants::database::{
    BranchState, Database, DbError, Finish, OpenBranch, PreparedBranch,
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
/// Longest a start waits for the core's epoch to be durable.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// Longest a fault-injection pause waits for its resume file.
const FAULT_PAUSE_LIMIT: Duration = Duration::from_secs(120);

pub(crate) fn now_ms() -> u64 {
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
    #[error("{0}")]
    Refused(String),
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
    #[error("the coordinator is not running: {0}")]
    Stopped(String),
    #[error("the log failed: {0}")]
    Log(String),
}

/// One branch as reported to clients and operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BranchView {
    pub database: String,
    pub gid: String,
    /// "prepared", "committed", "rolled-back", "read-only" (wrote nothing: ended without
    /// PREPARE), "not-prepared" (not listed; not checked), or "unknown" (the database did not
    /// answer).
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// A prepared branch's locks, as its database tells them: PostgreSQL the tables and lock
    /// modes (`RowExclusiveLock on accounts`; the rows it wrote stay locked in the rows
    /// themselves), Redis the keys; `None` where the database does not say (MariaDB does not
    /// tie a lock to an XA branch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locks: Option<Vec<String>>,
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

/// Where the coordinator's records go: its own log, or — on the leader of a replicated
/// coordinator — the replicated log, where a record is durable once a majority has it.
#[derive(Debug)]
pub(crate) enum RecordSink {
    Local(GroupCommit),
    Replicated(ReplicatedSink),
}

/// The leader's way into the replicated log, refused once it stops leading.
#[derive(Debug, Clone)]
pub(crate) struct ReplicatedSink {
    pub submitter: concord_replication::Submitter,
    /// Set when this replica stops leading: its coordinator may still be running down, and a
    /// record of its queued after the next leader's barrier would contradict that leader.
    pub retired: Arc<std::sync::atomic::AtomicBool>,
}

impl RecordSink {
    fn submit(&self, record: Vec<u8>, on_durable: Option<OnDurable>) -> Result<(), String> {
        match self {
            RecordSink::Local(log) => log.submit(record, on_durable).map_err(|e| e.to_string()),
            RecordSink::Replicated(sink) => {
                if sink.retired.load(std::sync::atomic::Ordering::Acquire) {
                    return Err("this replica no longer leads the coordinator".into());
                }
                let on_committed = on_durable.map(|on_durable| {
                    Box::new(move |result: Result<u64, concord_replication::WriteError>| {
                        on_durable(result.map(|_| ()).map_err(|e| e.to_string()));
                    }) as concord_replication::OnCommitted
                });
                let command = concord_replication::records::record_command(&record);
                sink.submitter.submit(command, on_committed);
                Ok(())
            }
        }
    }

    fn checkpoint(&self, live: Vec<Vec<u8>>) -> Result<(), String> {
        match self {
            RecordSink::Local(log) => log.checkpoint(live).map_err(|e| e.to_string()),
            RecordSink::Replicated(sink) => {
                if sink.retired.load(std::sync::atomic::Ordering::Acquire) {
                    return Err("this replica no longer leads the coordinator".into());
                }
                let command = concord_replication::records::checkpoint_command(&live);
                sink.submitter.submit(command, None);
                Ok(())
            }
        }
    }
}

/// The read model and bookkeeping shared by the engine, its tasks and the operator calls.
#[derive(Debug)]
pub(crate) struct State {
    pub ledger: Ledger,
    /// Transactions reserved by a client of this run and not yet over, with their start time.
    pub running: HashMap<TxnId, u64>,
    /// When reconciliation first saw each gid listed as prepared.
    pub first_seen: HashMap<String, u64>,
    appended_since_checkpoint: u64,
    markers_forgotten_at_ms: u64,
}

/// What the engine's tasks and the public calls share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cluster: String,
    pub node: NodeId,
    /// The configured databases by branch node.
    pub databases: BTreeMap<NodeId, Arc<Database>>,
    log: RecordSink,
    state: Mutex<State>,
    pub metrics: Metrics,
    fault: Option<Fault>,
    /// Recent transactions' timelines, for the console.
    pub traces: Mutex<Traces>,
    /// The last hour of the metrics, for the console's charts.
    pub history: Arc<History>,
    pub data_dir: PathBuf,
    pub started_ms: u64,
}

impl Shared {
    /// Records a step of a transaction's timeline (a short lock; never awaited under).
    pub fn trace(&self, step: impl FnOnce(&mut Traces, u64)) {
        step(&mut self.traces.lock().unwrap_or_else(PoisonError::into_inner), now_ms());
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("state holders do not panic")
    }

    pub fn gid(&self, txn: TxnId, node: NodeId) -> String {
        let index = u16::try_from(node.0).expect("database nodes fit a gid's branch number");
        Gid::new(&self.cluster, txn, index).to_string()
    }

    pub fn database_name(&self, node: NodeId) -> String {
        self.databases.get(&node).map_or_else(|| format!("node {node}"), |d| d.name.clone())
    }

    /// Queues `record`, applying it to the ledger in queue order.
    pub fn submit(&self, record: &Record, on_durable: Option<OnDurable>) -> Result<(), String> {
        let mut state = self.state();
        self.log.submit(record.to_bytes(), on_durable)?;
        state.ledger.apply(record);
        state.appended_since_checkpoint += 1;
        Ok(())
    }

    /// This coordinator writes nothing more (a replica that stopped leading): every later
    /// submission is refused. Under the lock that orders submissions, so a record is either
    /// queued before the next leader's barrier or never.
    pub fn retire(&self) {
        let _state = self.state();
        if let RecordSink::Replicated(sink) = &self.log {
            sink.retired.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Queues `record` and waits until it is durable.
    pub async fn persist(&self, record: Record) -> Result<(), String> {
        let (done, durable) = oneshot::channel();
        let callback: OnDurable = Box::new(move |result: Result<(), String>| {
            let _ = done.send(result);
        });
        self.submit(&record, Some(callback))?;
        durable.await.map_err(|_| "the log thread stopped".to_string())?
    }

    /// Replaces the log with the live records once enough were appended: the supervisor's,
    /// then the core's (`core_live`), under the lock that orders every submission.
    pub fn checkpoint_if_due(&self, core_live: impl FnOnce() -> Vec<CoreRecord>) {
        let mut state = self.state();
        if state.appended_since_checkpoint < CHECKPOINT_EVERY {
            return;
        }
        let mut live: Vec<Vec<u8>> =
            state.ledger.live_records().iter().map(Encode::to_bytes).collect();
        live.extend(core_live().into_iter().map(|r| Record::Core(r).to_bytes()));
        match self.log.checkpoint(live) {
            Ok(()) => state.appended_since_checkpoint = 0,
            Err(e) => eprintln!("concord: checkpoint not queued: {e}"),
        }
    }

    pub fn fault_at(&self, point: FaultPoint) -> bool {
        self.fault.as_ref().is_some_and(|f| f.point == point)
    }

    pub async fn pause(&self, point: FaultPoint, txn: TxnId) {
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

    /// Records a heuristic outcome (once per branch and direction) and counts it.
    async fn record_heuristic(
        &self,
        txn: TxnId,
        node: NodeId,
        logged: Decision,
        actual: Decision,
        forced: bool,
    ) -> Result<(), String> {
        let gid = self.gid(txn, node);
        let known = self.state().ledger.get(txn).is_some_and(|d| {
            d.heuristics.iter().any(|h| h.branch.gid == gid && h.actual == actual)
        });
        if known {
            return Ok(());
        }
        eprintln!(
            "concord: HEURISTIC outcome: {txn} branch {gid} in {} is {} but the log says {}",
            self.database_name(node),
            decision_name(actual),
            decision_name(logged)
        );
        self.metrics.record_heuristic(forced);
        let at_ms = now_ms();
        self.persist(Record::Heuristic { txn, branch: node, logged, actual, forced, at_ms })
            .await?;
        let count = self.state().ledger.heuristic_count() as u64;
        self.metrics.set_heuristic_transactions(count);
        Ok(())
    }

    /// Completes one branch the decided way: COMMIT/ROLLBACK PREPARED, and when the database
    /// says it is not prepared, its marker tells how it ended — a contradiction is a heuristic
    /// outcome, recorded before this returns.
    pub async fn complete_branch(
        &self,
        txn: TxnId,
        node: NodeId,
        branch: PreparedBranch,
        decision: Decision,
    ) -> Completion {
        self.trace(|t, now| t.step(txn, Some(node), now, Step::DecisionSent(decision), None));
        let completion = self.finish_branch(txn, node, branch, decision).await;
        let (step, detail) = match &completion {
            Completion::Done => (Step::Applied(decision), None),
            Completion::Heuristic(actual) => {
                let actual = match actual {
                    Decision::Commit => "committed",
                    Decision::Abort => "rolled back",
                };
                (Step::Heuristic, Some(format!("found {actual} in its database")))
            }
            Completion::StillPrepared => (Step::NotApplied, Some("still prepared".to_string())),
            Completion::Failed(e) => (Step::NotApplied, Some(e.clone())),
        };
        self.trace(|t, now| t.step(txn, Some(node), now, step, detail.as_deref()));
        completion
    }

    async fn finish_branch(
        &self,
        txn: TxnId,
        node: NodeId,
        branch: PreparedBranch,
        decision: Decision,
    ) -> Completion {
        let Some(db) = self.databases.get(&node) else {
            return Completion::Failed(format!("no database is configured for branch node {node}"));
        };
        let gid = branch.gid.clone();
        match db.finish(branch, decision).await {
            Ok(Finish::Done) => Completion::Done,
            Ok(Finish::NotPrepared) => {
                let actual = match db.branch_state(&gid).await {
                    Ok(BranchState::Prepared) => return Completion::StillPrepared,
                    Ok(BranchState::Committed) => Decision::Commit,
                    Ok(BranchState::Absent) => Decision::Abort,
                    Err(e) => return Completion::Failed(e.to_string()),
                };
                if actual == decision {
                    return Completion::Done;
                }
                match self.record_heuristic(txn, node, decision, actual, false).await {
                    Ok(()) => Completion::Heuristic(actual),
                    Err(e) => Completion::Failed(format!("the log failed: {e}")),
                }
            }
            Err(e) => Completion::Failed(e.to_string()),
        }
    }
}

#[derive(Debug)]
pub struct Coordinator {
    shared: Arc<Shared>,
    requests: mpsc::Sender<Request>,
    /// The databases whose configuration allows schema statements through `run`.
    schema_changes: std::collections::BTreeSet<String>,
    /// Longest a client waits for its transaction's outcome: the vote timeout, a commit and a
    /// lost one-phase answer's settling, each bounded by the statement timeout, with room to
    /// spare. Past it the answer is "unknown" (`txn show` tells later), never a guess.
    answer_limit: Duration,
}

fn check_data_dir(dir: &Path, config: &DatabasesConfig) -> Result<concord_wal::DirLock, OpenError> {
    // Format 2: the records of the 2PC core, branches named by database node.
    let expected = format!(
        "format = 2\nrole = database-coordinator\ncluster = {}\nnode_id = {}\n",
        config.cluster, config.node_id
    );
    concord_wal::claim_data_dir(dir, &expected)
        .map_err(|reason| OpenError::DataDir { path: dir.to_path_buf(), reason })
}

impl Coordinator {
    /// Opens the log in `data_dir`, starts the 2PC core on it, waits for its new epoch to be
    /// durable, and connects to the databases (a database that is down now is retried by each
    /// reconciliation pass).
    pub async fn open(
        config: &DatabasesConfig,
        data_dir: &Path,
        fault: Option<Fault>,
    ) -> Result<Arc<Coordinator>, OpenError> {
        let mut dir_lock = check_data_dir(data_dir, config)?;
        let (file_log, payloads) =
            FileLog::open_claimed(&mut dir_lock, &data_dir.join("log"), SEGMENT_BYTES)?;
        // The log thread holds the directory's lock until it has written all it was given.
        let log = GroupCommit::start_holding(file_log, dir_lock)
            .map_err(|e| OpenError::LogWrite(e.to_string()))?;
        Self::start(config, &payloads, RecordSink::Local(log), data_dir, fault).await
    }

    /// Starts the 2PC core as the leader of a replicated coordinator, on the records the
    /// replicated log holds (`records`, in log order), writing through `sink`: exactly a
    /// restart — a new epoch, logged decisions re-driven, the undecided presumed aborted.
    pub(crate) async fn lead(
        config: &DatabasesConfig,
        records: &[Vec<u8>],
        sink: ReplicatedSink,
        data_dir: &Path,
        fault: Option<Fault>,
    ) -> Result<Arc<Coordinator>, OpenError> {
        Self::start(config, records, RecordSink::Replicated(sink), data_dir, fault).await
    }

    async fn start(
        config: &DatabasesConfig,
        payloads: &[Vec<u8>],
        log: RecordSink,
        data_dir: &Path,
        fault: Option<Fault>,
    ) -> Result<Arc<Coordinator>, OpenError> {
        if let Some(warning) = config.recovery.ignored() {
            eprintln!("concord: {warning}");
        }
        let mut records = Vec::with_capacity(payloads.len());
        for (index, payload) in payloads.iter().enumerate() {
            let record = Record::from_bytes(payload)
                .map_err(|e| OpenError::Record { index, reason: e.to_string() })?;
            records.push(record);
        }
        let core_records: Vec<CoreRecord> = records
            .iter()
            .filter_map(|r| match r {
                Record::Core(core) => Some(core.clone()),
                _ => None,
            })
            .collect();
        let ledger = Ledger::replay(&config.cluster, records);
        // Each database keeps its branch node for ever; a new name gets the next one.
        let mut next_node = ledger.nodes().keys().map(|n| n.0).max().unwrap_or(0) + 1;
        let mut new_nodes = Vec::new();
        let mut databases = BTreeMap::new();
        let timeout = Duration::from_millis(config.timeouts.statement_ms);
        for d in &config.databases {
            let node = match ledger.node_of(&d.name) {
                Some(node) => node,
                None => {
                    if next_node > MAX_DATABASE_NODES {
                        return Err(OpenError::LogWrite(format!(
                            "no branch node left for database `{}`: {MAX_DATABASE_NODES} were allocated",
                            d.name
                        )));
                    }
                    let node = NodeId(next_node);
                    next_node += 1;
                    new_nodes.push(Record::Database { node, name: d.name.clone() });
                    node
                }
            };
            databases.insert(node, Arc::new(Database::new(d, timeout)?));
        }
        let shared = Arc::new(Shared {
            cluster: config.cluster.clone(),
            node: NodeId(config.node_id),
            databases,
            log,
            state: Mutex::new(State {
                ledger,
                running: HashMap::new(),
                first_seen: HashMap::new(),
                appended_since_checkpoint: 0,
                // The first clean-up waits an interval: nothing is old right after a start.
                markers_forgotten_at_ms: now_ms(),
            }),
            metrics: Metrics::default(),
            fault,
            traces: Mutex::new(Traces::new(config.console.recent_transactions)),
            history: History::new(
                Duration::from_millis(config.console.sample_ms),
                crate::metrics::charts(),
            ),
            data_dir: data_dir.to_path_buf(),
            started_ms: now_ms(),
        });
        // A node's name is durable before any gid carries it.
        for record in new_nodes {
            shared.persist(record).await.map_err(OpenError::LogWrite)?;
        }
        let core = crate::engine::core_config(
            timeout,
            Duration::from_millis(config.recovery.interval_ms),
            MAX_BRANCHES,
        );
        let requests = Engine::start(Arc::clone(&shared), core, core_records);
        let (ready, is_ready) = oneshot::channel();
        let _ = requests.send(Request::Ready(ready)).await;
        match tokio::time::timeout(READY_LIMIT, is_ready).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(OpenError::LogWrite(e)),
            Ok(Err(_)) => return Err(OpenError::LogWrite("the engine stopped".into())),
            Err(_) => {
                return Err(OpenError::LogWrite(format!(
                    "the new epoch is not durable after {READY_LIMIT:?}"
                )))
            }
        }
        let coordinator = Coordinator {
            shared,
            requests,
            answer_limit: timeout * 6 + Duration::from_secs(5),
            schema_changes: config
                .databases
                .iter()
                .filter(|d| d.schema_changes)
                .map(|d| d.name.clone())
                .collect(),
        };
        for db in coordinator.shared.databases.values() {
            if let Err(e) = db.ensure_schema().await {
                eprintln!("concord: {e}; retried at each reconciliation");
            }
        }
        let coordinator = Arc::new(coordinator);
        coordinator.spawn_history();
        Ok(coordinator)
    }

    /// Stops this coordinator: its replica no longer leads. Nothing more is written; clients
    /// waiting for an outcome are told it is unknown here (the new leader knows it).
    pub(crate) async fn stand_down(&self) {
        self.shared.retire();
        let reason = "this coordinator replica stopped leading; ask the leader for the \
                      transaction's outcome (concord txn show ID)";
        let _ = self.requests.send(Request::Stop(reason.into())).await;
    }

    /// Samples the metrics for the console's charts until the coordinator is dropped.
    fn spawn_history(&self) {
        let weak = Arc::downgrade(&self.shared);
        let mut before = self.shared.metrics.snapshot();
        self.shared.history.spawn_sampler(move |since| {
            let Some(shared) = weak.upgrade() else { return Vec::new() };
            let after = shared.metrics.snapshot();
            let gauges = shared.metrics.gauges();
            let values =
                crate::metrics::chart_values(&before, &after, since.as_secs_f64(), &gauges);
            before = after;
            values
        });
    }

    /// `GET /v1/history`: the charts' samples.
    pub fn history(&self) -> serde_json::Value {
        self.shared.history.json()
    }

    /// One page of recent transactions, newest first (see [`crate::trace`]).
    pub fn recent(&self, filter: &Filter, before: Option<u64>, limit: usize) -> serde_json::Value {
        let traces = self.shared.traces.lock().unwrap_or_else(PoisonError::into_inner);
        let name_of = |node: NodeId| self.shared.database_name(node);
        let (page, next) = traces.page(filter, before, limit, &name_of);
        serde_json::json!({
            "transactions": page,
            "next": next.map(|n| n.to_string()),
            "kept": traces.len(),
            "capacity": traces.capacity(),
            "traced_since_start": traces.traced(),
        })
    }

    /// The branch node of a configured database.
    pub fn database_node(&self, name: &str) -> Option<NodeId> {
        self.database(name).map(|(node, _)| node)
    }

    /// A transaction's timeline and each branch's milestones, if it is among the recent ones.
    pub fn timeline(&self, txn: TxnId) -> Option<serde_json::Value> {
        let traces = self.shared.traces.lock().unwrap_or_else(PoisonError::into_inner);
        traces.detail(txn, &|node| self.shared.database_name(node))
    }

    /// `GET /v1/cluster`: this node, its log, its databases, what it is doing.
    pub fn cluster(&self) -> serde_json::Value {
        let gauges = self.shared.metrics.gauges();
        let databases: Vec<serde_json::Value> = self
            .shared
            .databases
            .iter()
            .map(|(node, db)| {
                let (prepared, oldest) = gauges.prepared.get(&db.name).copied().unwrap_or((0, 0.0));
                serde_json::json!({
                    "name": db.name,
                    "kind": format!("{:?}", db.kind).to_lowercase(),
                    "branch_node": node.0,
                    "up": gauges.database_up.get(&db.name),
                    "prepared_branches": prepared,
                    "oldest_prepared_s": oldest,
                })
            })
            .collect();
        let log_files = concord_console::log_files(&self.shared.data_dir.join("log"));
        let log_bytes: u64 = log_files.iter().map(|(_, size)| size).sum();
        let (running, epoch) = {
            let state = self.state();
            (state.running.len(), state.ledger.epoch().unwrap_or(0))
        };
        let (kept, capacity) = {
            let traces = self.shared.traces.lock().unwrap_or_else(PoisonError::into_inner);
            (traces.len(), traces.capacity())
        };
        let now = now_ms();
        serde_json::json!({
            "role": "database-coordinator",
            "cluster": self.shared.cluster,
            "node": self.shared.node.to_string(),
            "epoch": epoch,
            "version": env!("CARGO_PKG_VERSION"),
            "started_unix_ms": self.shared.started_ms,
            "uptime_s": now.saturating_sub(self.shared.started_ms) / 1_000,
            "data_dir": self.shared.data_dir.display().to_string(),
            "log_bytes": log_bytes,
            "log_files": log_files.iter().map(|(name, size)| serde_json::json!({ "name": name, "bytes": size })).collect::<Vec<_>>(),
            "checkpoint_every_records": CHECKPOINT_EVERY,
            "transactions_running": running,
            "in_doubt_transactions": gauges.in_doubt_transactions,
            "heuristic_transactions": gauges.heuristic_transactions,
            "recent_transactions_kept": kept,
            "recent_transactions_capacity": capacity,
            "databases": databases,
            // One coordinator holds the decisions: no replica, no leader to show.
            "replication": serde_json::Value::Null,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state()
    }

    pub fn node(&self) -> NodeId {
        self.shared.node
    }

    pub fn epoch(&self) -> u32 {
        self.state().ledger.epoch().unwrap_or(0)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub fn database_names(&self) -> Vec<String> {
        self.shared.databases.values().map(|d| d.name.clone()).collect()
    }

    fn database(&self, name: &str) -> Option<(NodeId, &Arc<Database>)> {
        self.shared.databases.iter().find(|(_, d)| d.name == name).map(|(n, d)| (*n, d))
    }

    /// Sends `request` to the engine and waits for its answer.
    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, String> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(request(reply)).await.map_err(|_| "the engine stopped".to_string())?;
        answer.await.map_err(|_| "the engine stopped".to_string())
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
        let started = Instant::now();
        let txn = self
            .ask(Request::Reserve)
            .await
            .map_err(BeginError::Log)?
            .map_err(BeginError::Refused)?;
        let nodes: Vec<NodeId> = chosen.iter().map(|(node, _)| *node).collect();
        self.shared.trace(|t, now| t.opened(txn, now, nodes));
        // Owns the id from here: however it ends, the engine hears of it.
        let mut transaction = Transaction {
            coordinator: self,
            txn,
            started,
            branches: Vec::new(),
            handed_over: false,
        };
        let opened = join_all(chosen.iter().map(|(node, db)| {
            let index = u16::try_from(node.0).expect("database nodes fit a gid's branch number");
            let gid = Gid::new(&self.shared.cluster, txn, index);
            async move { (*node, db.begin(&gid).await) }
        }))
        .await;
        for (node, branch) in opened {
            match branch {
                Ok(open) => transaction.branches.push((node, open)),
                Err(e) => {
                    self.shared.metrics.record_transaction(Outcome::Aborted, elapsed_us(started));
                    self.shared.metrics.record_abort("begin-failed");
                    let why = format!("a branch could not begin: {e}");
                    self.shared.trace(|t, now| t.abandoned(txn, now, &why));
                    return Err(BeginError::Database(e));
                }
            }
        }
        Ok(transaction)
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
                if let Some((_, db)) = self.database(name) {
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

    /// One reconciliation pass: every prepared branch of ours the databases list is an
    /// inquiry; the core's answer is carried out. `dry_run`: plan only.
    pub async fn reconcile(&self, dry_run: bool) -> RecoveryReport {
        let mut report = RecoveryReport { dry_run, ..RecoveryReport::default() };
        let listings = join_all(self.shared.databases.values().map(|db| async move {
            if !dry_run {
                // A database that was down at start gets its marker table now.
                let _ = db.ensure_schema().await;
            }
            (db, db.list_prepared().await)
        }))
        .await;
        let now = now_ms();
        let mut listed = Vec::new();
        let mut ages: HashMap<String, Option<u64>> = HashMap::new();
        let mut up = BTreeMap::new();
        for (db, listing) in listings {
            up.insert(db.name.clone(), listing.is_ok());
            match listing {
                Ok(branches) => {
                    for b in branches {
                        ages.insert(b.gid.clone(), b.age_ms);
                        listed.push(Listed { database: db.name.clone(), gid: b.gid });
                    }
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        if !dry_run {
            let mut state = self.state();
            let still: HashSet<&str> = listed.iter().map(|l| l.gid.as_str()).collect();
            state.first_seen.retain(|gid, _| still.contains(gid.as_str()));
            for l in &listed {
                state.first_seen.entry(l.gid.clone()).or_insert(now);
            }
            self.update_gauges(&state, &listed, &ages, up, now);
        }
        let actions = match self.ask(|reply| Request::Plan { listed, reply }).await {
            Ok(actions) => actions,
            Err(e) => {
                report.errors.push(e);
                return report;
            }
        };
        for action in &actions {
            let txn = action.txn().map(|t| t.to_string());
            let (txn_id, node, branch, decision) = match action {
                Action::Leave { .. } => continue,
                Action::Commit { txn, node, branch, .. } => (*txn, *node, branch, Decision::Commit),
                Action::Rollback { txn, node, branch, .. } => {
                    (*txn, *node, branch, Decision::Abort)
                }
            };
            if dry_run {
                report.actions.push(ActionReport {
                    txn,
                    action: action.to_string(),
                    result: "would do".into(),
                });
                continue;
            }
            let result = self.carry_out(txn_id, node, branch, decision).await;
            report.actions.push(ActionReport { txn, action: action.to_string(), result });
        }
        if !dry_run {
            self.forget_markers_if_due().await;
        }
        report
    }

    /// Finishes a listed branch the way the core answered, through the database that listed it.
    async fn carry_out(
        &self,
        txn: TxnId,
        node: NodeId,
        branch: &BranchRef,
        decision: Decision,
    ) -> String {
        let Some((listed_node, db)) = self.database(&branch.database) else {
            return format!("failed: database `{}` is not configured", branch.database);
        };
        let shared = &self.shared;
        let by = Some("by reconciliation");
        shared.trace(|t, now| t.step(txn, Some(node), now, Step::DecisionSent(decision), by));
        let finished = db.finish(PreparedBranch::named(&branch.gid), decision).await;
        match &finished {
            Ok(Finish::Done) => {
                shared.trace(|t, now| t.step(txn, Some(node), now, Step::Applied(decision), by));
            }
            Err(e) => shared.trace(|t, now| {
                t.step(txn, Some(node), now, Step::NotApplied, Some(&e.to_string()));
            }),
            Ok(Finish::NotPrepared) => {}
        }
        let completion = match finished {
            Ok(Finish::Done) => Completion::Done,
            // Not prepared any more: whoever finished it, its own database's marker tells how.
            Ok(Finish::NotPrepared) if listed_node == node => {
                self.shared
                    .complete_branch(txn, node, PreparedBranch::named(&branch.gid), decision)
                    .await
            }
            Ok(Finish::NotPrepared) => Completion::Done,
            Err(e) => Completion::Failed(e.to_string()),
        };
        let done = matches!(completion, Completion::Done | Completion::Heuristic(_));
        if done {
            self.shared.metrics.record_recovery(decision == Decision::Commit);
            if decision == Decision::Commit {
                let _ = self.requests.send(Request::Acked { txn, node }).await;
            }
        }
        match completion {
            Completion::Done => "done".into(),
            Completion::Heuristic(_) => "done (heuristic outcome recorded)".into(),
            Completion::StillPrepared => "still prepared; next pass".into(),
            Completion::Failed(e) => format!("failed: {e}"),
        }
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
            self.shared.databases.values().map(|d| (d.name.clone(), (0, 0.0))).collect();
        let mut in_doubt: HashSet<TxnId> = state.ledger.unfinished().map(|(t, _)| t).collect();
        for l in listed {
            let Some(gid) = Gid::parse(&l.gid) else { continue };
            if gid.cluster != self.shared.cluster || gid.txn.coordinator != self.shared.node {
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
        self.shared.metrics.set_gauges(Gauges {
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
        for db in self.shared.databases.values() {
            if let Err(e) = db.forget_markers(&keep, MARKER_RETENTION_S).await {
                eprintln!("concord: {e}");
            }
        }
    }
    /// Lists every database's prepared branches that belong to this coordinator, by transaction.
    async fn own_prepared(&self) -> (BTreeMap<TxnId, Vec<BranchView>>, Vec<String>) {
        let listings = join_all(
            self.shared.databases.values().map(|db| async move { (db, db.list_prepared().await) }),
        )
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
                        if gid.cluster != self.shared.cluster
                            || gid.txn.coordinator != self.shared.node
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
                            locks: b.locks,
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
                            locks: None,
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
            "no decision logged: presumed abort; reconciliation rolls it back at its next pass"
                .to_string()
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
                Some((_, db)) => match db.branch_state(&branch.gid).await {
                    Ok(state) => branch.state = state.name().into(),
                    Err(e) => {
                        branch.state = "unknown".into();
                        branch.detail = Some(e.to_string());
                    }
                },
                None => branch.state = "unknown".into(),
            }
        }
        if view.state == "aborted"
            && view.branches.is_empty()
            && txn.coordinator == self.shared.node
        {
            self.one_phase_outcome(txn, &mut view).await;
        }
        // Every branch committed in its database: whatever acknowledgement is still on its
        // way, the transaction is committed.
        if view.state == "committing"
            && !view.branches.is_empty()
            && view.branches.iter().all(|b| b.state == "committed")
        {
            view.state = "committed".into();
        }
        view
    }

    /// A transaction the log knows nothing of is aborted — unless it committed in one phase,
    /// which logs nothing: its only branch's marker says so. Every configured database is
    /// asked for its marker of the transaction.
    async fn one_phase_outcome(&self, txn: TxnId, view: &mut TxnView) {
        for (node, db) in &self.shared.databases {
            let gid = self.shared.gid(txn, *node);
            match db.branch_state(&gid).await {
                Ok(BranchState::Committed) => {
                    view.state = "committed".into();
                    view.decided_by = Some("protocol".into());
                    view.reason = Some("one phase: committed in its only database".into());
                    view.branches = vec![BranchView {
                        database: db.name.clone(),
                        gid,
                        state: "committed".into(),
                        age_ms: None,
                        detail: None,
                        locks: None,
                    }];
                    return;
                }
                Ok(_) => {}
                Err(e) => view.branches.push(BranchView {
                    database: db.name.clone(),
                    gid,
                    state: "unknown".into(),
                    age_ms: None,
                    detail: Some(e.to_string()),
                    locks: None,
                }),
            }
        }
    }

    /// An operator's decision for an in-doubt transaction. The log's word is the ledger's
    /// decision or, with none, the core's answer (presumed abort). Refuses to contradict it
    /// unless `force`, which records a heuristic outcome on every branch it finishes the other
    /// way; refuses a transaction still undecided (running).
    pub async fn resolve(
        &self,
        txn: TxnId,
        requested: Decision,
        force: bool,
    ) -> Result<Vec<ActionReport>, ResolveError> {
        if txn.coordinator != self.shared.node {
            return Err(ResolveError::NotOurs(txn));
        }
        let answer = self
            .ask(|reply| Request::Answer { txn, reply })
            .await
            .map_err(ResolveError::Stopped)?;
        let Some(answer) = answer else { return Err(ResolveError::Running(txn)) };
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
        let effective = logged.as_ref().map_or(answer, |(d, _, _)| *d);
        if requested != effective && !force {
            return Err(ResolveError::Contradicts {
                txn,
                logged: effective,
                presumed: logged.is_none(),
                requested,
            });
        }
        let node_of =
            |b: &BranchRef| Gid::parse(&b.gid).map_or(NodeId(0), |g| NodeId(u32::from(g.branch)));
        if logged.is_none() && requested == Decision::Abort {
            let record = Record::OperatorAborted {
                txn,
                at_ms: now_ms(),
                branches: prepared.iter().map(node_of).collect(),
            };
            self.shared.persist(record).await.map_err(ResolveError::Log)?;
        }
        let mut reports = Vec::new();
        for branch in &prepared {
            let (_, db) = self.database(&branch.database).expect("listed by a configured database");
            let node = node_of(branch);
            let result = match db.finish(PreparedBranch::named(&branch.gid), requested).await {
                Ok(Finish::Done) if requested != effective => self
                    .shared
                    .record_heuristic(txn, node, effective, requested, true)
                    .await
                    .map(|()| "done (recorded as a heuristic outcome)".to_string())
                    .map_err(ResolveError::Log)?,
                Ok(Finish::Done) => {
                    if requested == Decision::Commit {
                        let _ = self.requests.send(Request::Acked { txn, node }).await;
                    }
                    "done".to_string()
                }
                Ok(Finish::NotPrepared) => "no longer prepared".to_string(),
                Err(e) => format!("failed: {e}"),
            };
            let verb = if requested == Decision::Commit { "commit" } else { "rollback" };
            reports.push(ActionReport {
                txn: Some(txn.to_string()),
                action: format!("{verb:<8} {} in {}", branch.gid, branch.database),
                result,
            });
        }
        // Branches of a logged decision that are not prepared any more: check how they ended.
        if let Some((decision, branches, false)) = &logged {
            for branch in branches.iter().filter(|b| !prepared.contains(b)) {
                let node = node_of(branch);
                let named = PreparedBranch::named(&branch.gid);
                let result = match self.shared.complete_branch(txn, node, named, *decision).await {
                    Completion::Done | Completion::Heuristic(_) => {
                        if *decision == Decision::Commit {
                            let _ = self.requests.send(Request::Acked { txn, node }).await;
                        }
                        "verified".to_string()
                    }
                    Completion::StillPrepared => "still prepared".to_string(),
                    Completion::Failed(e) => format!("failed: {e}"),
                };
                reports.push(ActionReport {
                    txn: Some(txn.to_string()),
                    action: format!("verify   {} in {}", branch.gid, branch.database),
                    result,
                });
            }
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

/// The class of an abort the core settled, for `concord_db_aborts_total{reason}`.
fn abort_reason(reason: Option<&str>) -> &'static str {
    match reason {
        Some(r) if r.contains("voted NO") => "voted-no",
        // A one-phase commit its database rolled back (a constraint, a serialization failure).
        Some(_) => "database-refused",
        // The core aborts without a reason when votes did not come in time.
        None => "vote-timeout",
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
    branches: Vec<(NodeId, OpenBranch)>,
    /// The engine has the transaction (commit): it ends it.
    handed_over: bool,
}

impl Drop for Transaction<'_> {
    /// Ended before commit (aborted, or dropped midway): the reserved id will not run. Dropped
    /// open branches roll back with their connections.
    fn drop(&mut self) {
        if !self.handed_over {
            // A full queue drops the release: the core forgets its oldest reservations anyway.
            let _ = self.coordinator.requests.try_send(Request::Release(self.txn));
        }
    }
}

impl Transaction<'_> {
    pub fn id(&self) -> TxnId {
        self.txn
    }

    /// The open branch in `database`, to run statements on.
    pub fn branch(&mut self, database: &str) -> Option<&mut OpenBranch> {
        self.branches.iter_mut().map(|(_, b)| b).find(|b| b.database().name == database)
    }

    /// Abandons every branch before prepare.
    pub async fn abort(mut self, reason: &str) -> TxnView {
        let branches = std::mem::take(&mut self.branches);
        let views = branches
            .into_iter()
            .map(|(_, b)| {
                let view = BranchView {
                    database: b.database().name.clone(),
                    gid: b.gid().to_string(),
                    state: "rolled-back".into(),
                    age_ms: None,
                    detail: None,
                    locks: None,
                };
                b.abandon();
                view
            })
            .collect();
        let shared = &self.coordinator.shared;
        shared.metrics.record_transaction(Outcome::Aborted, elapsed_us(self.started));
        shared.metrics.record_abort("abandoned");
        shared.trace(|t, now| t.abandoned(self.txn, now, reason));
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

    /// Hands the branches to the 2PC core, which prepares them (or commits the only one in one
    /// phase), decides and completes. The answer is the decision once every branch has
    /// settled; a branch that could not be completed now is completed by the core's resends.
    pub async fn commit(mut self) -> Result<TxnView, OutcomeUnknown> {
        let c = self.coordinator;
        let txn = self.txn;
        let branches = std::mem::take(&mut self.branches);
        let names: BTreeMap<NodeId, (String, String)> = branches
            .iter()
            .map(|(node, b)| (*node, (b.database().name.clone(), b.gid().to_string())))
            .collect();
        self.handed_over = true;
        let commit = c.ask(|reply| Request::Commit { txn, branches, reply });
        let answer = tokio::time::timeout(c.answer_limit, commit).await.unwrap_or_else(|_| {
            Err(format!("no outcome within {:?} (a database does not answer)", c.answer_limit))
        });
        let settled: Settled = match answer {
            Ok(Ok(settled)) => settled,
            Ok(Err(reason)) | Err(reason) => {
                c.shared.metrics.record_transaction(Outcome::Unknown, elapsed_us(self.started));
                c.shared.trace(|t, now| {
                    t.step(txn, None, now, Step::AnsweredUnknown, Some(&reason));
                });
                return Err(OutcomeUnknown { txn, reason });
            }
        };
        let outcome = match settled.decision {
            Decision::Commit => Outcome::Committed,
            Decision::Abort => Outcome::Aborted,
        };
        c.shared.metrics.record_transaction(outcome, elapsed_us(self.started));
        if settled.decision == Decision::Abort {
            c.shared.metrics.record_abort(abort_reason(settled.reason.as_deref()));
        }
        let mut view = {
            let state = c.state();
            Coordinator::view_of(&state, txn, &[], now_ms())
        };
        view.branches = settled
            .branches
            .into_iter()
            .map(|end| {
                let (database, gid) = names.get(&end.node).cloned().unwrap_or_default();
                BranchView {
                    database,
                    gid,
                    state: end.state.into(),
                    age_ms: None,
                    detail: end.detail,
                    locks: None,
                }
            })
            .collect();
        if view.heuristics.is_empty() {
            view.state = match settled.decision {
                Decision::Commit => "committed",
                Decision::Abort => "aborted",
            }
            .into();
            if settled.decision == Decision::Abort {
                view.decided_by = Some("protocol".into());
            }
        }
        view.reason = settled.reason;
        Ok(view)
    }
}
