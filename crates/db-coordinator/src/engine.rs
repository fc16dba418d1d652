//! The driver of the 2PC core (`concord_commit::two_phase::Coordinator`) for database branches.
//!
//! One task owns the core and feeds it one input at a time; what the core asks for is done
//! here or by tasks spawned for the database calls, whose results come back as inputs. Each
//! configured database is a participant node, and this driver speaks for it:
//!
//! ```text
//!   core says                      driver does (for the branch of that database)          core hears
//!   PREPARE                        wrote nothing? (asked of the database) → end it          VOTE READ-ONLY
//!                                  else PREPARE TRANSACTION / XA PREPARE / Lua prepare      VOTE YES | NO
//!   COMMIT-ONE-PHASE (one branch)  marker row + plain COMMIT (lost answer: read the marker) ONE-PHASE RESULT
//!   DECISION COMMIT                COMMIT PREPARED; "not prepared" → read the marker:        ACK
//!                                  committed, or a heuristic rollback (recorded)
//!   DECISION ABORT                 ROLLBACK PREPARED (a NO voter rolls back by itself)      —
//!   PERSIST / SET-TIMER            the log (group commit) / a sleeping task                 PERSISTED / TIMER
//! ```
//!
//! Ids are reserved before a transaction's statements run (`Reservation::Reserve`): a branch's
//! gid carries its transaction id, so the id must exist before the branch opens. Databases
//! never inquire; reconciliation inquires for them ([`crate::reconcile`]).
//!
//! Channels: client requests come through a bounded queue (back-pressure); results of the
//! engine's own work (database calls, timers, log syncs) through an unbounded one, bounded by
//! construction — each is the answer to something a transaction admitted by the core (at most
//! `max_in_flight`) started, and the engine drains them first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use concord_commit::two_phase::{self, Msg, Timer};
use concord_commit::{Branch, Command, Core, Durability, Input, Rejection, Reservation, Switches};
use concord_types::{Decision, NodeId, RequestId, TxnId, Vote as CoreVote};
use tokio::sync::{mpsc, oneshot};

use concord_participants::database::{OnePhase, OpenBranch, PreparedBranch, Vote};

use crate::coordinator::{Completion, FaultPoint, Shared};
use crate::log::{CoreRecord, Record, Work};
use crate::reconcile::{plan, Action, Knowledge, Listed};

type CoreMsg = Msg<Work>;
type CoreInput = Input<CoreMsg, CoreRecord, Timer, Work>;
type CoreCommand = Command<CoreMsg, CoreRecord, Timer>;

/// Client requests waiting for the engine.
pub(crate) const REQUEST_QUEUE: usize = 1_024;

/// How a branch ended, as the client's answer shows it.
#[derive(Debug, Clone)]
pub(crate) struct BranchEnd {
    pub node: NodeId,
    /// "committed", "rolled-back", "read-only", or "prepared" (completion failed for now; the
    /// core's resends or reconciliation complete it).
    pub state: &'static str,
    pub detail: Option<String>,
}

/// A transaction's outcome, once every branch has settled.
#[derive(Debug)]
pub(crate) struct Settled {
    pub decision: Decision,
    pub reason: Option<String>,
    pub branches: Vec<BranchEnd>,
}

pub(crate) enum Request {
    /// Answered once the core's epoch is durable (the coordinator is ready).
    Ready(oneshot::Sender<Result<(), String>>),
    Reserve(oneshot::Sender<Result<TxnId, String>>),
    Commit {
        txn: TxnId,
        branches: Vec<(NodeId, OpenBranch)>,
        reply: oneshot::Sender<Result<Settled, String>>,
    },
    /// The reserved transaction will not run (aborted or dropped before commit).
    Release(TxnId),
    /// What reconciliation should do with these listed branches.
    Plan {
        listed: Vec<Listed>,
        reply: oneshot::Sender<Vec<Action>>,
    },
    /// What the core would answer an inquiry (`None`: undecided or running here).
    Answer {
        txn: TxnId,
        reply: oneshot::Sender<Option<Decision>>,
    },
    /// Reconciliation or an operator completed a committed branch by name.
    Acked {
        txn: TxnId,
        node: NodeId,
    },
}

enum Event {
    Input(CoreInput),
    /// A forced record is durable (or the log failed).
    Durable(CoreRecord, Result<(), String>),
    Voted {
        txn: TxnId,
        node: NodeId,
        vote: Vote,
    },
    OnePhaseDone {
        txn: TxnId,
        node: NodeId,
        result: Result<(Decision, Option<String>), String>,
    },
    Completed {
        txn: TxnId,
        node: NodeId,
        decision: Decision,
        completion: Completion,
    },
}

enum Slot {
    /// Statements ran; waiting for PREPARE or COMMIT-ONE-PHASE.
    Open(OpenBranch),
    /// A database call for it is in flight.
    Busy,
    Prepared(PreparedBranch),
    /// A one-phase commit whose answer was lost: settled by reading the marker.
    Unknown,
    Settled {
        state: &'static str,
        detail: Option<String>,
    },
}

struct Txn {
    reply: Option<oneshot::Sender<Result<Settled, String>>>,
    slots: BTreeMap<NodeId, Slot>,
    outcome: Option<Decision>,
    reason: Option<String>,
    /// Votes held back by the `pause-after-prepare` fault until every branch has voted.
    held_votes: Vec<(NodeId, CoreVote)>,
}

pub(crate) struct Engine {
    shared: Arc<Shared>,
    core: two_phase::Coordinator<Work, Work>,
    internal: mpsc::UnboundedSender<Event>,
    next_request: u64,
    reserving: HashMap<RequestId, oneshot::Sender<Result<TxnId, String>>>,
    /// Commit requests the core has not begun or refused yet.
    beginning: HashMap<RequestId, TxnId>,
    txns: HashMap<TxnId, Txn>,
    /// Branches with a completion in flight (a resend finds them busy).
    busy: HashSet<(TxnId, NodeId)>,
    ready: Option<Result<(), String>>,
    ready_waiters: Vec<oneshot::Sender<Result<(), String>>>,
}

/// The core's configuration for database branches.
pub(crate) fn core_config(
    statement: Duration,
    resend_max: Duration,
    max_branches: usize,
) -> two_phase::Config {
    let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    two_phase::Config {
        switches: Switches {
            read_only: true,
            one_phase: true,
            // Databases never ask each other, and never forget what they prepared.
            cooperative_termination: false,
            early_ack: false,
            forget: false,
            forgotten_kept: 0,
        },
        // A prepare is two database calls at most (the read-only check and PREPARE), each
        // bounded by the statement timeout.
        vote_timeout_us: us(statement * 2 + Duration::from_secs(1)),
        resend_base_us: 200_000,
        resend_max_us: us(resend_max).max(200_000),
        inquiry_base_us: 1_000_000,
        inquiry_max_us: 1_000_000,
        max_in_flight: 10_000,
        max_queued_begins: REQUEST_QUEUE,
        max_participants: max_branches,
        forget_every: u32::MAX,
    }
}

impl Engine {
    /// Starts the engine task on `records` (the core's records of the log, in order).
    pub(crate) fn start(
        shared: Arc<Shared>,
        config: two_phase::Config,
        records: Vec<CoreRecord>,
    ) -> mpsc::Sender<Request> {
        let (requests, request_inbox) = mpsc::channel(REQUEST_QUEUE);
        let (internal, internal_inbox) = mpsc::unbounded_channel();
        let mut engine = Engine {
            core: two_phase::Coordinator::new(shared.node, config),
            shared,
            internal,
            next_request: 0,
            reserving: HashMap::new(),
            beginning: HashMap::new(),
            txns: HashMap::new(),
            busy: HashSet::new(),
            ready: None,
            ready_waiters: Vec::new(),
        };
        engine.step(Input::Restart { records });
        tokio::spawn(engine.run(request_inbox, internal_inbox));
        requests
    }

    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut internal: mpsc::UnboundedReceiver<Event>,
    ) {
        loop {
            tokio::select! {
                biased;
                Some(event) = internal.recv() => self.on_event(event),
                request = requests.recv() => match request {
                    Some(request) => self.on_request(request),
                    // The coordinator is gone; work in flight ends with the process.
                    None => return,
                },
            }
            let live = || self.core_live_records();
            self.shared.checkpoint_if_due(live);
        }
    }

    fn core_live_records(&self) -> Vec<CoreRecord> {
        concord_commit::Checkpoint::live_records(&self.core)
    }

    fn request_id(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }

    fn on_request(&mut self, request: Request) {
        match request {
            Request::Ready(reply) => match &self.ready {
                Some(result) => {
                    let _ = reply.send(result.clone());
                }
                None => self.ready_waiters.push(reply),
            },
            Request::Reserve(reply) => {
                if let Some(Err(e)) = &self.ready {
                    let _ = reply.send(Err(e.clone()));
                    return;
                }
                let request = self.request_id();
                self.reserving.insert(request, reply);
                self.step(Input::Reservation(Reservation::Reserve { request }));
            }
            Request::Commit { txn, branches, reply } => {
                if let Some(Err(e)) = &self.ready {
                    let _ = reply.send(Err(e.clone()));
                    return;
                }
                let request = self.request_id();
                let core_branches = branches
                    .iter()
                    .map(|(node, b)| Branch {
                        node: *node,
                        writes: Work { wrote: !b.may_be_read_only() },
                    })
                    .collect();
                let slots = branches.into_iter().map(|(node, b)| (node, Slot::Open(b))).collect();
                self.txns.insert(
                    txn,
                    Txn {
                        reply: Some(reply),
                        slots,
                        outcome: None,
                        reason: None,
                        held_votes: Vec::new(),
                    },
                );
                self.beginning.insert(request, txn);
                self.step(Input::Reservation(Reservation::Begin {
                    request,
                    txn,
                    branches: core_branches,
                }));
            }
            Request::Release(txn) => {
                self.shared.state().running.remove(&txn);
                self.step(Input::Reservation(Reservation::Release { txn }));
            }
            Request::Plan { listed, reply } => {
                let _ = reply.send(self.plan(&listed));
            }
            Request::Answer { txn, reply } => {
                let _ = reply.send(self.answer(txn));
            }
            Request::Acked { txn, node } => {
                self.step(Input::Message { from: node, msg: Msg::Ack { txn } });
            }
        }
    }

    /// What the core answers an inquiry about `txn`; nothing while a client of this run still
    /// holds it (its statements are running, or it is being committed).
    fn answer(&self, txn: TxnId) -> Option<Decision> {
        if self.txns.contains_key(&txn) || self.shared.state().running.contains_key(&txn) {
            return None;
        }
        self.core.inquiry_answer(txn)
    }

    fn plan(&self, listed: &[Listed]) -> Vec<Action> {
        let nodes = self.shared.state().ledger.nodes().clone();
        let answer = |txn: TxnId| self.answer(txn);
        let database_of = |node: NodeId| nodes.get(&node).cloned();
        let know = Knowledge {
            node: self.shared.node,
            cluster: &self.shared.cluster,
            epoch: self.core.epoch().unwrap_or(0),
            answer: &answer,
            database_of: &database_of,
        };
        plan(&know, listed)
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Input(input) => self.step(input),
            Event::Durable(record, Ok(())) => {
                let decided = matches!(record, CoreRecord::CommitDecided { .. });
                if decided && self.shared.fault_at(FaultPoint::AfterDecision) {
                    let CoreRecord::CommitDecided { txn, .. } = record else { unreachable!() };
                    let shared = Arc::clone(&self.shared);
                    let internal = self.internal.clone();
                    tokio::spawn(async move {
                        shared.pause(FaultPoint::AfterDecision, txn).await;
                        let _ = internal.send(Event::Input(Input::Persisted(record)));
                    });
                    return;
                }
                let epoch = matches!(record, CoreRecord::EpochStarted { .. });
                self.step(Input::Persisted(record));
                if epoch && self.ready.is_none() {
                    // Ids can be issued: the coordinator is ready.
                    self.ready = Some(Ok(()));
                    for waiter in self.ready_waiters.drain(..) {
                        let _ = waiter.send(Ok(()));
                    }
                }
            }
            Event::Durable(_, Err(reason)) => self.log_failed(&reason),
            Event::Voted { txn, node, vote } => self.on_voted(txn, node, vote),
            Event::OnePhaseDone { txn, node, result } => match result {
                Ok((decision, reason)) => {
                    if let Some(t) = self.txns.get_mut(&txn) {
                        let state = match decision {
                            Decision::Commit => "committed",
                            Decision::Abort => "rolled-back",
                        };
                        t.slots.insert(node, Slot::Settled { state, detail: reason.clone() });
                        if t.reason.is_none() {
                            t.reason = reason;
                        }
                    }
                    let msg = Msg::OnePhaseResult { txn, decision };
                    self.step(Input::Message { from: node, msg });
                }
                Err(reason) => {
                    eprintln!("concord: {txn}: one-phase outcome not known yet: {reason}");
                    if let Some(t) = self.txns.get_mut(&txn) {
                        t.slots.insert(node, Slot::Unknown);
                    }
                }
            },
            Event::Completed { txn, node, decision, completion } => {
                self.on_completed(txn, node, decision, &completion);
            }
        }
    }

    /// A log that cannot make records durable ends the coordinator's usefulness: nothing more
    /// can be decided. Every waiting client is told its outcome is unknown.
    fn log_failed(&mut self, reason: &str) {
        eprintln!("concord: the log failed: {reason}; no transaction can be decided any more");
        let failure = format!("the log failed: {reason}");
        if self.ready.is_none() {
            for waiter in self.ready_waiters.drain(..) {
                let _ = waiter.send(Err(failure.clone()));
            }
        }
        self.ready = Some(Err(failure.clone()));
        for (_, mut txn) in self.txns.drain() {
            if let Some(reply) = txn.reply.take() {
                let _ = reply.send(Err(failure.clone()));
            }
        }
        for (_, reply) in self.reserving.drain() {
            let _ = reply.send(Err(failure.clone()));
        }
    }

    fn step(&mut self, input: CoreInput) {
        let mut out = Vec::new();
        self.core.handle(input, &mut out);
        for command in out {
            self.execute(command);
        }
    }

    fn execute(&mut self, command: CoreCommand) {
        match command {
            Command::Send { to, msg } => match msg {
                Msg::Prepare { txn, .. } => self.prepare(txn, to),
                Msg::CommitOnePhase { txn, .. } => self.one_phase(txn, to),
                Msg::Decision { txn, decision } => self.complete(txn, to, decision),
                // Forgetting and peers' inquiries are switched off for databases.
                Msg::Forget { .. }
                | Msg::Inquire { .. }
                | Msg::Vote { .. }
                | Msg::Ack { .. }
                | Msg::OnePhaseResult { .. }
                | Msg::Forgotten { .. } => {}
            },
            Command::Persist { record, durability } => self.persist(record, durability),
            Command::SetTimer { timer, after_us } => {
                let internal = self.internal.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros(after_us)).await;
                    let _ = internal.send(Event::Input(Input::Timer(timer)));
                });
            }
            Command::Begun { request, .. } => {
                self.beginning.remove(&request);
            }
            Command::Reserved { request, txn } => {
                if let Some(reply) = self.reserving.remove(&request) {
                    self.shared.state().running.insert(txn, crate::coordinator::now_ms());
                    if reply.send(Ok(txn)).is_err() {
                        // The client went away: its id will not run.
                        self.shared.state().running.remove(&txn);
                        self.step(Input::Reservation(Reservation::Release { txn }));
                    }
                }
            }
            Command::Rejected { request, reason } => {
                let why = match reason {
                    Rejection::Invalid => {
                        "invalid transaction (no branch, a database twice, or too many)"
                    }
                    Rejection::Overloaded => {
                        "overloaded: too many transactions in flight; retry later"
                    }
                    Rejection::NotReserved => {
                        "the transaction id is no longer reserved; begin again"
                    }
                };
                if let Some(reply) = self.reserving.remove(&request) {
                    let _ = reply.send(Err(why.to_string()));
                }
                if let Some(txn) = self.beginning.remove(&request) {
                    self.shared.state().running.remove(&txn);
                    if let Some(mut t) = self.txns.remove(&txn) {
                        if let Some(reply) = t.reply.take() {
                            let _ = reply.send(Err(why.to_string()));
                        }
                    }
                }
            }
            Command::Outcome { txn, decision } => {
                if let Some(t) = self.txns.get_mut(&txn) {
                    t.outcome = Some(decision);
                }
                self.maybe_settle(txn);
            }
        }
    }

    fn persist(&mut self, record: CoreRecord, durability: Durability) {
        if let CoreRecord::CommitDecided { txn, .. } = &record {
            // Rides on the decision's own sync.
            let note = Record::DecidedAt { txn: *txn, at_ms: crate::coordinator::now_ms() };
            if let Err(e) = self.shared.submit(&note, None) {
                self.log_failed(&e);
                return;
            }
        }
        let on_durable: Option<concord_wal::OnDurable> = match durability {
            Durability::Forced => {
                let internal = self.internal.clone();
                let durable = record.clone();
                Some(Box::new(move |result: Result<(), String>| {
                    let _ = internal.send(Event::Durable(durable, result));
                }))
            }
            Durability::Lazy => None,
        };
        if let Err(e) = self.shared.submit(&Record::Core(record), on_durable) {
            self.log_failed(&e);
        }
    }

    fn prepare(&mut self, txn: TxnId, node: NodeId) {
        let slot = self.txns.get_mut(&txn).and_then(|t| t.slots.get_mut(&node));
        let Some(slot) = slot else {
            // No open branch to prepare (cannot happen: the core prepares only what it was
            // given). Voting NO is always safe.
            let msg = Msg::Vote { txn, vote: CoreVote::No };
            self.step(Input::Message { from: node, msg });
            return;
        };
        let Slot::Open(branch) = std::mem::replace(slot, Slot::Busy) else { return };
        let internal = self.internal.clone();
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let gid = branch.gid().to_string();
            let vote = branch.prepare().await;
            if matches!(vote, Vote::No(_)) {
                // A NO voter aborts its own branch. Its PREPARE may have reached the database
                // before the connection failed, so roll back by name too (reconciliation would
                // otherwise find it and roll it back later).
                if let Some(db) = shared.databases.get(&node) {
                    let _ = db.finish(PreparedBranch::named(&gid), Decision::Abort).await;
                }
            }
            let _ = internal.send(Event::Voted { txn, node, vote });
        });
    }

    fn on_voted(&mut self, txn: TxnId, node: NodeId, vote: Vote) {
        let (core_vote, slot) = match vote {
            Vote::Yes(prepared) => (CoreVote::Yes, Slot::Prepared(prepared)),
            Vote::ReadOnly => {
                (CoreVote::ReadOnly, Slot::Settled { state: "read-only", detail: None })
            }
            Vote::No(reason) => {
                if let Some(t) = self.txns.get_mut(&txn) {
                    let database = self.shared.database_name(node);
                    t.reason.get_or_insert_with(|| format!("{database} voted NO: {reason}"));
                }
                (CoreVote::No, Slot::Settled { state: "rolled-back", detail: Some(reason) })
            }
        };
        let Some(t) = self.txns.get_mut(&txn) else {
            // The client's answer is out (the core aborted on a vote timeout): a late YES is
            // answered ABORT by the core and rolled back by name.
            self.step(Input::Message { from: node, msg: Msg::Vote { txn, vote: core_vote } });
            return;
        };
        t.slots.insert(node, slot);
        if self.shared.fault_at(FaultPoint::AfterPrepare) {
            t.held_votes.push((node, core_vote));
            if t.held_votes.len() == t.slots.len() {
                let votes = std::mem::take(&mut t.held_votes);
                let shared = Arc::clone(&self.shared);
                let internal = self.internal.clone();
                tokio::spawn(async move {
                    shared.pause(FaultPoint::AfterPrepare, txn).await;
                    for (from, vote) in votes {
                        let msg = Msg::Vote { txn, vote };
                        let _ = internal.send(Event::Input(Input::Message { from, msg }));
                    }
                });
            }
            return;
        }
        self.step(Input::Message { from: node, msg: Msg::Vote { txn, vote: core_vote } });
    }

    fn one_phase(&mut self, txn: TxnId, node: NodeId) {
        let Some(slot) = self.txns.get_mut(&txn).and_then(|t| t.slots.get_mut(&node)) else {
            return;
        };
        let Some(db) = self.shared.databases.get(&node).cloned() else { return };
        let internal = self.internal.clone();
        match std::mem::replace(slot, Slot::Busy) {
            Slot::Open(branch) => {
                tokio::spawn(async move {
                    let gid = branch.gid().to_string();
                    let result = match branch.commit_one_phase().await {
                        OnePhase::Committed => Ok((Decision::Commit, None)),
                        OnePhase::RolledBack(reason) => Ok((Decision::Abort, Some(reason))),
                        OnePhase::Unknown(reason) => {
                            eprintln!("concord: {txn}: {reason}; reading its marker");
                            db.settle_one_phase(&gid)
                                .await
                                .map(|d| (d, None))
                                .map_err(|e| e.to_string())
                        }
                    };
                    let _ = internal.send(Event::OnePhaseDone { txn, node, result });
                });
            }
            // The core's retry: read the marker again.
            Slot::Unknown => {
                let gid = self.shared.gid(txn, node);
                tokio::spawn(async move {
                    let result = db
                        .settle_one_phase(&gid)
                        .await
                        .map(|d| (d, None))
                        .map_err(|e| e.to_string());
                    let _ = internal.send(Event::OnePhaseDone { txn, node, result });
                });
            }
            // Still running, or already answered: the retry is stale.
            other => *slot = other,
        }
    }

    /// Carries out a decision on one branch.
    fn complete(&mut self, txn: TxnId, node: NodeId, decision: Decision) {
        if self.busy.contains(&(txn, node)) {
            return;
        }
        let live = self.txns.get_mut(&txn).and_then(|t| t.slots.get_mut(&node));
        let branch = match live {
            Some(slot) => match std::mem::replace(slot, Slot::Busy) {
                Slot::Prepared(prepared) => prepared,
                // Preparing still: its vote comes back to the core, which answers it.
                Slot::Busy => return,
                // Ended already (voted NO or READ-ONLY, or its abort was carried out).
                other @ (Slot::Settled { .. } | Slot::Open(_) | Slot::Unknown) => {
                    *slot = other;
                    return;
                }
            },
            None => PreparedBranch::named(&self.shared.gid(txn, node)),
        };
        self.busy.insert((txn, node));
        let shared = Arc::clone(&self.shared);
        let internal = self.internal.clone();
        tokio::spawn(async move {
            let completion = shared.complete_branch(txn, node, branch, decision).await;
            let _ = internal.send(Event::Completed { txn, node, decision, completion });
        });
    }

    fn on_completed(
        &mut self,
        txn: TxnId,
        node: NodeId,
        decision: Decision,
        completion: &Completion,
    ) {
        self.busy.remove(&(txn, node));
        let (state, detail, complete) = match completion {
            Completion::Done => (decision_state(decision), None, true),
            Completion::Heuristic(actual) => (
                decision_state(*actual),
                Some(format!("HEURISTIC: found {} against the decision", decision_state(*actual))),
                true,
            ),
            Completion::StillPrepared => {
                ("prepared", Some("still prepared; completed by a later attempt".into()), false)
            }
            Completion::Failed(e) => {
                ("prepared", Some(format!("{e}; completed by a later attempt")), false)
            }
        };
        match self.txns.get_mut(&txn) {
            Some(t) => {
                t.slots.insert(node, Slot::Settled { state, detail });
            }
            None => {
                // Nobody waits: a decision re-driven after a restart, or a resend.
                let gid = self.shared.gid(txn, node);
                let database = self.shared.database_name(node);
                let verb = match decision {
                    Decision::Commit => "commit",
                    Decision::Abort => "rollback",
                };
                let result = match completion {
                    Completion::Done => "done".to_string(),
                    Completion::Heuristic(_) => "done (heuristic outcome recorded)".to_string(),
                    Completion::StillPrepared => "still prepared; retried".to_string(),
                    Completion::Failed(e) => format!("failed: {e}; retried"),
                };
                eprintln!("concord: recovery: {verb} {gid} in {database} — {result}");
                if complete {
                    self.shared.metrics.record_recovery(decision == Decision::Commit);
                }
            }
        }
        if complete && decision == Decision::Commit {
            self.step(Input::Message { from: node, msg: Msg::Ack { txn } });
        }
        self.maybe_settle(txn);
    }

    /// Answers the client once the outcome is known and every branch has settled.
    fn maybe_settle(&mut self, txn: TxnId) {
        let Some(t) = self.txns.get(&txn) else { return };
        let Some(decision) = t.outcome else { return };
        let settled = t.slots.values().all(|s| match s {
            Slot::Settled { .. } => true,
            // A prepared branch of an aborted transaction the core sent no ABORT (it voted
            // YES after the abort): its late vote is answered ABORT and rolled back by name.
            Slot::Prepared(_) => decision == Decision::Abort,
            Slot::Open(_) | Slot::Busy | Slot::Unknown => false,
        });
        if !settled {
            return;
        }
        let mut t = self.txns.remove(&txn).expect("looked up above");
        self.shared.state().running.remove(&txn);
        let branches = std::mem::take(&mut t.slots)
            .into_iter()
            .map(|(node, slot)| match slot {
                Slot::Settled { state, detail } => BranchEnd { node, state, detail },
                _ => BranchEnd { node, state: "rolled-back", detail: None },
            })
            .collect();
        if let Some(reply) = t.reply.take() {
            let _ = reply.send(Ok(Settled { decision, reason: t.reason.take(), branches }));
        }
    }
}

fn decision_state(decision: Decision) -> &'static str {
    match decision {
        Decision::Commit => "committed",
        Decision::Abort => "rolled-back",
    }
}
