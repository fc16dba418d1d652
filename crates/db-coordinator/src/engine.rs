//! The engine: one task that owns the protocol — `concord_commit::xa::Coordinator`, the 2PC
//! core with its translation to resource-manager calls, the same code the simulator runs — and
//! does its effects: database calls (in tasks of their own, whose answers come back here), log
//! writes, timers, and clients' answers.
//!
//! ```text
//!   call            PostgreSQL                         MariaDB                    Redis
//!   Prepare         wrote? pg_current_xact_id…;        wrote? innodb_trx rows;    staged writes?
//!                   marker + PREPARE TRANSACTION       XA END; XA PREPARE         Lua prepare
//!   CommitOnePhase  marker + COMMIT                    XA END; XA COMMIT ONE PHASE  prepare + commit
//!   SettleOnePhase  (after 2 × statement timeout) the marker: committed or not
//!   Finish(d)       COMMIT / ROLLBACK PREPARED; "not prepared" → the marker → done or heuristic
//! ```
//!
//! The open branches (connections with the application's statements on them) and the prepared
//! ones (connections that prepared them) wait here, by transaction and database node, for the
//! call that takes them.
//!
//! Channels: client requests come through a bounded queue (back-pressure); the answers to the
//! engine's own work (database calls, log syncs) through an unbounded one, bounded by
//! construction — each answers something a transaction admitted by the core (at most
//! `max_in_flight`) started — and drained first. The core's timers (two per two-phase
//! transaction, one per one-phase) wait in the engine's own queue under one sleep, not as a
//! task each: a spawned task per timer was a measurable share of the coordinator's CPU.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use concord_commit::two_phase::Timer;
use concord_commit::xa::{self, Answer, BranchEnd, Call, Completion, Effect};
use concord_commit::{Durability, Rejection};
use concord_types::{Decision, NodeId, RequestId, TimerHeap, TxnId, Vote as CoreVote};
use tokio::sync::{mpsc, oneshot};

use concord_participants::database::{OnePhase, OpenBranch, PreparedBranch, Vote};

use crate::coordinator::{now_ms, FaultPoint, Shared};
use crate::log::{CoreRecord, Record, Work};
use crate::reconcile::{plan, Action, Knowledge, Listed};
use crate::trace::Step;

/// Client requests waiting for the engine.
pub(crate) const REQUEST_QUEUE: usize = 1_024;
/// Transactions the core runs at once (beyond: refused as overloaded).
const MAX_IN_FLIGHT: usize = 10_000;

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
    /// What the core would answer an inquiry (`None`: undecided or held by a client).
    Answer {
        txn: TxnId,
        reply: oneshot::Sender<Option<Decision>>,
    },
    /// Reconciliation or an operator finished a committed branch by name.
    Acked {
        txn: TxnId,
        node: NodeId,
    },
    /// This replica no longer leads: tell every waiting client its outcome is unknown here,
    /// and end (the new leader recovers what the log holds).
    Stop(String),
}

enum Event {
    /// A forced record is durable (or the log failed).
    Durable(CoreRecord, Result<(), String>),
    /// A PREPARE came back; a YES brings the connection that prepared the branch.
    Voted {
        txn: TxnId,
        node: NodeId,
        vote: Vote,
    },
    Answered {
        txn: TxnId,
        node: NodeId,
        answer: Answer,
    },
    /// The `pause-after-prepare` fault let these votes go.
    Released(TxnId, Vec<(NodeId, Answer)>),
    /// The `pause-after-decision` fault let this decision go.
    Decided(CoreRecord),
}

/// The core's configuration for database branches.
pub(crate) fn core_config(
    statement: Duration,
    resend_max: Duration,
    max_branches: usize,
) -> concord_commit::two_phase::Config {
    let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    xa::config(
        // A prepare is two database calls at most (the read-only check and PREPARE), each
        // bounded by the statement timeout.
        us(statement * 2 + Duration::from_secs(1)),
        200_000,
        us(resend_max),
        MAX_IN_FLIGHT,
        max_branches,
    )
}

pub(crate) struct Engine {
    shared: Arc<Shared>,
    xa: xa::Coordinator,
    internal: mpsc::UnboundedSender<Event>,
    reserving: HashMap<RequestId, oneshot::Sender<Result<TxnId, String>>>,
    /// Commit requests the core has not answered yet, by request (a refusal names only that).
    beginning: HashMap<RequestId, TxnId>,
    replies: HashMap<TxnId, oneshot::Sender<Result<Settled, String>>>,
    open: HashMap<(TxnId, NodeId), OpenBranch>,
    prepared: HashMap<(TxnId, NodeId), PreparedBranch>,
    /// Under `pause-after-prepare`: each transaction's branch count and the votes in so far.
    held_votes: HashMap<TxnId, (usize, Vec<(NodeId, Answer)>)>,
    ready: Option<Result<(), String>>,
    ready_waiters: Vec<oneshot::Sender<Result<(), String>>>,
    /// The core's timers, soonest first. Bounded by time, not by `max_in_flight`: a timer
    /// stays until due even after its transaction ended (the core then ignores it), so it
    /// holds at most the transactions of the last vote timeout (about 2 × the statement
    /// timeout + 1 s), a few words each — what the sleeping task per timer it replaces held.
    timers: TimerHeap<tokio::time::Instant, Timer>,
}

impl Engine {
    /// Starts the engine task on `records` (the core's records of the log, in order).
    pub(crate) fn start(
        shared: Arc<Shared>,
        config: concord_commit::two_phase::Config,
        records: Vec<CoreRecord>,
    ) -> mpsc::Sender<Request> {
        let (requests, request_inbox) = mpsc::channel(REQUEST_QUEUE);
        let (internal, internal_inbox) = mpsc::unbounded_channel();
        let mut engine = Engine {
            xa: xa::Coordinator::new(shared.node, config),
            shared,
            internal,
            reserving: HashMap::new(),
            beginning: HashMap::new(),
            replies: HashMap::new(),
            open: HashMap::new(),
            prepared: HashMap::new(),
            held_votes: HashMap::new(),
            ready: None,
            ready_waiters: Vec::new(),
            timers: TimerHeap::default(),
        };
        let effects = engine.xa.restart(records);
        engine.execute(effects);
        tokio::spawn(engine.run(request_inbox, internal_inbox));
        requests
    }

    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut internal: mpsc::UnboundedReceiver<Event>,
    ) {
        // One sleep for every timer, moved to the earliest; idle (and never polled) when none
        // is set.
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        loop {
            let earliest = self.timers.next_deadline();
            if let Some(at) = earliest {
                if sleep.deadline() != at {
                    sleep.as_mut().reset(at);
                }
            }
            tokio::select! {
                biased;
                Some(event) = internal.recv() => self.on_event(event),
                () = &mut sleep, if earliest.is_some() => {
                    let now = tokio::time::Instant::now();
                    while let Some(timer) = self.timers.pop_due(now) {
                        let effects = self.xa.timer(timer);
                        self.execute(effects);
                    }
                }
                request = requests.recv() => match request {
                    Some(Request::Stop(reason)) => {
                        self.end_all(&reason);
                        return;
                    }
                    Some(request) => self.on_request(request),
                    // The coordinator is gone; work in flight ends with the process.
                    None => return,
                },
            }
            let xa = &self.xa;
            self.shared.checkpoint_if_due(|| xa.live_records());
        }
    }

    fn failed(&self) -> Option<String> {
        match &self.ready {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        }
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
                if let Some(e) = self.failed() {
                    let _ = reply.send(Err(e));
                    return;
                }
                let (request, effects) = self.xa.reserve();
                self.reserving.insert(request, reply);
                self.execute(effects);
            }
            Request::Commit { txn, branches, reply } => {
                if let Some(e) = self.failed() {
                    let _ = reply.send(Err(e));
                    return;
                }
                let work: Vec<(NodeId, Work)> = branches
                    .iter()
                    .map(|(node, b)| (*node, Work { wrote: !b.may_be_read_only() }))
                    .collect();
                if self.shared.fault_at(FaultPoint::AfterPrepare) {
                    self.held_votes.insert(txn, (branches.len(), Vec::new()));
                }
                for (node, branch) in branches {
                    self.open.insert((txn, node), branch);
                }
                self.replies.insert(txn, reply);
                let (request, effects) = self.xa.begin(txn, work);
                self.beginning.insert(request, txn);
                self.execute(effects);
                self.beginning.remove(&request);
            }
            Request::Release(txn) => {
                self.shared.state().running.remove(&txn);
                let effects = self.xa.release(txn);
                self.execute(effects);
            }
            Request::Plan { listed, reply } => {
                let _ = reply.send(self.plan(&listed));
            }
            Request::Answer { txn, reply } => {
                let _ = reply.send(self.xa.inquiry_answer(txn));
            }
            Request::Acked { txn, node } => {
                let effects = self.xa.acked(txn, node);
                self.execute(effects);
            }
            Request::Stop(_) => unreachable!("the run loop ends on Stop"),
        }
    }

    fn plan(&self, listed: &[Listed]) -> Vec<Action> {
        let state = self.shared.state();
        let nodes = state.ledger.nodes().clone();
        // The listing was taken before this plan: a branch listed as prepared may have been
        // committed since, its transaction acknowledged and forgotten by the core, which now
        // presumes abort. The ledger still knows the COMMIT (it keeps finished transactions a
        // while), and a COMMIT PREPARED of a committed branch finds it done. Without this, a
        // new leader re-driving a decision raced its own first reconciliation into a
        // heuristic rollback (`db_replicated_cli.rs` caught it).
        let logged_commit =
            |txn: TxnId| state.ledger.get(txn).is_some_and(|d| d.decision == Decision::Commit);
        let answer = |txn: TxnId| match self.xa.inquiry_answer(txn) {
            Some(Decision::Abort) if logged_commit(txn) => Some(Decision::Commit),
            answer => answer,
        };
        let database_of = |node: NodeId| nodes.get(&node).cloned();
        let know = Knowledge {
            node: self.shared.node,
            cluster: &self.shared.cluster,
            epoch: self.xa.epoch().unwrap_or(0),
            answer: &answer,
            database_of: &database_of,
        };
        plan(&know, listed)
    }

    fn on_event(&mut self, event: Event) {
        let effects = match event {
            Event::Durable(record, Ok(())) => {
                if let CoreRecord::CommitDecided { txn, .. } = &record {
                    let txn = *txn;
                    self.shared.trace(|t, now| {
                        t.step(txn, None, now, Step::DecisionLogged(Decision::Commit), None);
                    });
                }
                if matches!(record, CoreRecord::CommitDecided { .. })
                    && self.shared.fault_at(FaultPoint::AfterDecision)
                {
                    let CoreRecord::CommitDecided { txn, .. } = record else { unreachable!() };
                    let shared = Arc::clone(&self.shared);
                    let internal = self.internal.clone();
                    tokio::spawn(async move {
                        shared.pause(FaultPoint::AfterDecision, txn).await;
                        let _ = internal.send(Event::Decided(record));
                    });
                    return;
                }
                self.xa.persisted(record)
            }
            Event::Decided(record) => self.xa.persisted(record),
            Event::Durable(_, Err(reason)) => {
                self.log_failed(&reason);
                return;
            }
            Event::Voted { txn, node, vote } => {
                let (said, why) = match &vote {
                    Vote::Yes(_) => ("yes", None),
                    Vote::ReadOnly => ("read-only", None),
                    Vote::No(reason) => ("no", Some(reason.to_string())),
                };
                self.shared.trace(|t, now| {
                    t.step(txn, Some(node), now, Step::Voted(said), why.as_deref());
                });
                let answer = match vote {
                    Vote::Yes(prepared) => {
                        self.prepared.insert((txn, node), prepared);
                        Answer::Voted { vote: CoreVote::Yes, reason: None }
                    }
                    Vote::ReadOnly => Answer::Voted { vote: CoreVote::ReadOnly, reason: None },
                    Vote::No(reason) => {
                        let database = self.shared.database_name(node);
                        let reason = Some(format!("{database} voted NO: {reason}"));
                        Answer::Voted { vote: CoreVote::No, reason }
                    }
                };
                if self.hold_vote(txn, node, &answer) {
                    return;
                }
                self.xa.answer(txn, node, answer)
            }
            Event::Answered { txn, node, answer } => {
                match &answer {
                    Answer::OnePhase(Ok((decision, reason))) => self.shared.trace(|t, now| {
                        t.step(
                            txn,
                            Some(node),
                            now,
                            Step::OnePhaseEnded(*decision),
                            reason.as_deref(),
                        );
                    }),
                    Answer::Finished(Completion::Done | Completion::Heuristic(_)) => {
                        self.shared.trace(|t, now| {
                            t.step(txn, Some(node), now, Step::Acknowledged, None);
                        });
                    }
                    _ => {}
                }
                self.xa.answer(txn, node, answer)
            }
            Event::Released(txn, votes) => {
                let mut effects = Vec::new();
                for (node, answer) in votes {
                    effects.extend(self.xa.answer(txn, node, answer));
                }
                effects
            }
        };
        self.execute(effects);
    }

    /// Under `pause-after-prepare`, holds every vote of a transaction until all are in, then
    /// pauses before letting them go (a test kills the coordinator in between).
    fn hold_vote(&mut self, txn: TxnId, node: NodeId, answer: &Answer) -> bool {
        let Some((branches, votes)) = self.held_votes.get_mut(&txn) else { return false };
        votes.push((node, answer.clone()));
        if votes.len() == *branches {
            let (_, votes) = self.held_votes.remove(&txn).expect("looked up above");
            let shared = Arc::clone(&self.shared);
            let internal = self.internal.clone();
            tokio::spawn(async move {
                shared.pause(FaultPoint::AfterPrepare, txn).await;
                let _ = internal.send(Event::Released(txn, votes));
            });
        }
        true
    }

    /// A log that cannot make records durable ends the coordinator's usefulness: nothing more
    /// can be decided. Every waiting client is told its outcome is unknown.
    fn log_failed(&mut self, reason: &str) {
        eprintln!("concord: the log failed: {reason}; no transaction can be decided any more");
        self.end_all(&format!("the log failed: {reason}"));
    }

    /// Answers everyone waiting with `failure` (an outcome unknown, never a guess), and every
    /// later request too.
    fn end_all(&mut self, failure: &str) {
        let failure = failure.to_string();
        for waiter in self.ready_waiters.drain(..) {
            let _ = waiter.send(Err(failure.clone()));
        }
        self.ready = Some(Err(failure.clone()));
        for (_, reply) in self.replies.drain() {
            let _ = reply.send(Err(failure.clone()));
        }
        for (_, reply) in self.reserving.drain() {
            let _ = reply.send(Err(failure.clone()));
        }
    }

    fn execute(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Call { txn, node, call } => self.call(txn, node, call),
                Effect::Persist { record, durability } => self.persist(record, durability),
                Effect::SetTimer { timer, after_us } => {
                    let at = tokio::time::Instant::now() + Duration::from_micros(after_us);
                    self.timers.push(at, timer);
                }
                Effect::Reserved { request, txn } => self.reserved(request, txn),
                Effect::Rejected { request, reason } => self.rejected(request, reason),
                Effect::Settled { txn, decision, reason, branches } => {
                    self.shared.state().running.remove(&txn);
                    self.shared.trace(|t, now| t.ended(txn, now, decision, reason.as_deref()));
                    // Whatever the calls left behind (a prepared branch of an aborted
                    // transaction whose vote came too late) is reconciliation's.
                    self.open.retain(|(t, _), _| *t != txn);
                    self.prepared.retain(|(t, _), _| *t != txn);
                    if let Some(reply) = self.replies.remove(&txn) {
                        let _ = reply.send(Ok(Settled { decision, reason, branches }));
                    }
                }
                Effect::Recovered { txn, node, decision, completion } => {
                    self.recovered(txn, node, decision, &completion);
                }
                Effect::Ready => {
                    if self.ready.is_none() {
                        self.ready = Some(Ok(()));
                    }
                    for waiter in self.ready_waiters.drain(..) {
                        let _ = waiter.send(Ok(()));
                    }
                }
            }
        }
    }

    fn reserved(&mut self, request: RequestId, txn: TxnId) {
        let Some(reply) = self.reserving.remove(&request) else { return };
        self.shared.state().running.insert(txn, now_ms());
        if reply.send(Ok(txn)).is_err() {
            // The client went away: its id will not run.
            self.shared.state().running.remove(&txn);
            let effects = self.xa.release(txn);
            self.execute(effects);
        }
    }

    fn rejected(&mut self, request: RequestId, reason: Rejection) {
        let why = match reason {
            Rejection::Invalid => "invalid transaction (no branch, a database twice, or too many)",
            Rejection::Overloaded => "overloaded: too many transactions in flight; retry later",
            Rejection::NotReserved => "the transaction id is no longer reserved; begin again",
        };
        if let Some(reply) = self.reserving.remove(&request) {
            let _ = reply.send(Err(why.to_string()));
        }
        if let Some(txn) = self.beginning.get(&request).copied() {
            self.shared.state().running.remove(&txn);
            self.open.retain(|(t, _), _| *t != txn);
            self.held_votes.remove(&txn);
            if let Some(reply) = self.replies.remove(&txn) {
                let _ = reply.send(Err(why.to_string()));
            }
        }
    }

    fn recovered(&self, txn: TxnId, node: NodeId, decision: Decision, completion: &Completion) {
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
        eprintln!(
            "concord: recovery: {verb} {} in {} — {result}",
            self.shared.gid(txn, node),
            self.shared.database_name(node)
        );
        if matches!(completion, Completion::Done | Completion::Heuristic(_)) {
            self.shared.metrics.record_recovery(decision == Decision::Commit);
        }
    }

    fn persist(&mut self, record: CoreRecord, durability: Durability) {
        if let CoreRecord::CommitDecided { txn, .. } = &record {
            // Rides on the decision's own sync.
            let note = Record::DecidedAt { txn: *txn, at_ms: now_ms() };
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

    /// Makes one call to a database, in a task; its answer comes back as an event.
    fn call(&mut self, txn: TxnId, node: NodeId, call: Call) {
        let sent = match call {
            Call::Prepare => Some(Step::PrepareSent),
            Call::CommitOnePhase => Some(Step::OnePhaseSent),
            Call::SettleOnePhase => None,
            // Traced by `complete_branch`, which reconciliation and operators call too.
            Call::Finish(_) => None,
        };
        if let Some(step) = sent {
            self.shared.trace(|t, now| t.step(txn, Some(node), now, step, None));
        }
        let internal = self.internal.clone();
        let shared = Arc::clone(&self.shared);
        let answered = move |answer: Answer| {
            let _ = internal.send(Event::Answered { txn, node, answer });
        };
        match call {
            Call::Prepare => {
                let Some(branch) = self.open.remove(&(txn, node)) else {
                    answered(Answer::Voted {
                        vote: CoreVote::No,
                        reason: Some("no open branch to prepare".into()),
                    });
                    return;
                };
                let internal = self.internal.clone();
                tokio::spawn(async move {
                    let gid = branch.gid().to_string();
                    let vote = branch.prepare().await;
                    if matches!(vote, Vote::No(_)) {
                        // A NO voter aborts its own branch. Its PREPARE may have reached the
                        // database before the connection failed: roll back by name too
                        // (reconciliation finds whatever this cannot reach).
                        if let Some(db) = shared.databases.get(&node) {
                            let _ = db.finish(PreparedBranch::named(&gid), Decision::Abort).await;
                        }
                    }
                    let _ = internal.send(Event::Voted { txn, node, vote });
                });
            }
            Call::CommitOnePhase => {
                let Some(branch) = self.open.remove(&(txn, node)) else {
                    answered(Answer::OnePhase(Ok((
                        Decision::Abort,
                        Some("no open branch to commit".into()),
                    ))));
                    return;
                };
                let Some(db) = shared.databases.get(&node).cloned() else { return };
                tokio::spawn(async move {
                    let gid = branch.gid().to_string();
                    let result = match branch.commit_one_phase().await {
                        OnePhase::Committed => Ok((Decision::Commit, None)),
                        OnePhase::RolledBack(reason) => Ok((Decision::Abort, Some(reason))),
                        OnePhase::Unknown(reason) => {
                            eprintln!("concord: {txn}: {reason}; reading its marker");
                            settle(&db, &gid).await
                        }
                    };
                    answered(Answer::OnePhase(result));
                });
            }
            Call::SettleOnePhase => {
                let Some(db) = shared.databases.get(&node).cloned() else { return };
                let gid = shared.gid(txn, node);
                tokio::spawn(async move { answered(Answer::OnePhase(settle(&db, &gid).await)) });
            }
            Call::Finish(decision) => {
                let branch = self
                    .prepared
                    .remove(&(txn, node))
                    .unwrap_or_else(|| PreparedBranch::named(&shared.gid(txn, node)));
                tokio::spawn(async move {
                    let completion = shared.complete_branch(txn, node, branch, decision).await;
                    answered(Answer::Finished(completion));
                });
            }
        }
    }
}

/// A one-phase outcome from the branch's marker (`Err`: not readable yet).
async fn settle(
    db: &concord_participants::database::Database,
    gid: &str,
) -> Result<(Decision, Option<String>), String> {
    db.settle_one_phase(gid).await.map(|d| (d, None)).map_err(|e| e.to_string())
}
