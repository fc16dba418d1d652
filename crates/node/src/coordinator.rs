//! The coordinator node: the protocol's coordinator core, plus what its clients need around it —
//! replies to waiting requests, a table of recent transactions (`concord txn ls/show`), and
//! status answers for transactions it no longer remembers, found by asking the shards.
//!
//! Status of a transaction the table does not hold (evicted, or from before a restart; under
//! Paxos Commit the coordinator logs no decisions, so after a restart that is every one):
//! * never issued by this coordinator ⇒ "no such transaction";
//! * otherwise every shard is asked (INQUIRE), and `concord_commit::status` reads the answers:
//!   a shard that committed says COMMIT; a shard that never saw it forces an ABORTED record
//!   first, so its answer is a promise; a shard that finished it and no longer keeps the
//!   outcome says FORGOTTEN. One COMMIT ⇒ committed; ABORT from every shard ⇒ aborted; every
//!   shard answered but one forgot ⇒ FORGOTTEN ("finished; the outcome is no longer kept" —
//!   never a guessed ABORT); silence ⇒ UNKNOWN, ask again later. This is what makes one-phase
//!   transactions (which the coordinator never logs) answerable.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use concord_console::trace::{Step, Traces};

use concord_commit::status::{Answer, StatusQuery, Verdict};
use concord_commit::{Branch, Change as _, Command, Input, Rejection};
use concord_types::{Decision, NodeId, RequestId, TxnId, Vote};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::driver::{Event, Io, Node, RoleState};
use crate::engine::{Engine, Logged, Seen, Sent};
use crate::model::Change;
use crate::proto::{self, submit_event, State, TransactionInfo};

/// Finished transactions kept in memory for `txn ls` / `txn show`.
const FINISHED_KEPT: usize = 100_000;
/// How long a status query waits for the shards.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a status query asks its silent shards again. A prepared shard stays silent until
/// it knows the outcome, and does not remember it was asked: once its own inquiry is answered
/// (after a failover, say, by the new leader's presumed abort) only a new question gets the
/// outcome out of it before the query times out.
const RESOLVE_AGAIN: Duration = Duration::from_millis(250);

pub(crate) type SubmitReply = mpsc::Sender<Result<proto::SubmitEvent, Status>>;
type PendingSubmit<E> = (SubmitReply, Vec<Branch<Change<<E as Engine>::Model>>>);

struct BranchEntry {
    node: NodeId,
    writes: u32,
    vote: Option<Vote>,
    acknowledged: bool,
}

struct Entry {
    started: Instant,
    state: State,
    branches: Vec<BranchEntry>,
    source: &'static str,
    /// The outcome, once the core gave it.
    decision: Option<Decision>,
}

impl Entry {
    /// Why an aborted transaction aborted, read from its votes: a branch voted NO, or some
    /// branch never voted before the vote timeout (its shard down, slow or partitioned).
    fn abort_reason(&self) -> &'static str {
        if self.branches.iter().any(|b| b.vote == Some(Vote::No)) {
            "voted-no"
        } else if self.branches.iter().any(|b| b.vote.is_none()) {
            "vote-timeout"
        } else {
            "aborted"
        }
    }
}

struct Resolver {
    query: StatusQuery,
    waiters: Vec<oneshot::Sender<Result<TransactionInfo, Status>>>,
}

pub(crate) struct CoordinatorRole<E: Engine> {
    pub core: E::Coordinator,
    me: NodeId,
    shards: BTreeMap<NodeId, String>,
    next_request: u64,
    /// Requests not yet named by the core, with where to answer and what they asked.
    submits: HashMap<RequestId, PendingSubmit<E>>,
    /// Reservations asked for and not yet answered.
    reserving: HashMap<RequestId, oneshot::Sender<Result<TxnId, Status>>>,
    waiting: HashMap<TxnId, SubmitReply>,
    table: HashMap<TxnId, Entry>,
    finished: VecDeque<TxnId>,
    resolving: HashMap<TxnId, Resolver>,
    /// Outcomes since this node started, for `/metrics`.
    pub(crate) outcomes: crate::metrics::Outcomes,
    /// Recent transactions step by step, for the console (`/ui`, `GET /v1/transactions`).
    pub(crate) traces: Traces,
}

/// Wall-clock milliseconds, for the console's timelines.
fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// A state as the console's JSON names it.
pub(crate) fn state_word(state: State) -> &'static str {
    match state {
        State::Unspecified => "unknown",
        State::CollectingVotes => "collecting-votes",
        State::Deciding => "deciding",
        State::Committing => "committing",
        State::Committed => "committed",
        State::Aborted => "aborted",
        State::Unknown => "unknown",
        State::Forgotten => "forgotten",
    }
}

fn vote_word(vote: Vote) -> &'static str {
    match vote {
        Vote::Yes => "yes",
        Vote::No => "no",
        Vote::ReadOnly => "read-only",
    }
}

fn vote_name(vote: Option<Vote>) -> &'static str {
    match vote {
        None => "",
        Some(Vote::Yes) => "YES",
        Some(Vote::No) => "NO",
        Some(Vote::ReadOnly) => "READ-ONLY",
    }
}

impl<E: Engine> CoordinatorRole<E> {
    pub fn new(me: NodeId, core: E::Coordinator, shards: BTreeMap<NodeId, String>) -> Self {
        CoordinatorRole {
            core,
            me,
            shards,
            next_request: 0,
            submits: HashMap::new(),
            reserving: HashMap::new(),
            waiting: HashMap::new(),
            table: HashMap::new(),
            finished: VecDeque::new(),
            outcomes: crate::metrics::Outcomes::default(),
            resolving: HashMap::new(),
            traces: Traces::new(FINISHED_KEPT),
        }
    }

    /// Seeds the table from the log replayed at start: logged decisions are commits.
    pub fn recovered(&mut self, records: &[E::Record]) {
        for record in records {
            match E::logged(record) {
                Logged::CommitDecided { txn, participants } => {
                    let branches = participants
                        .iter()
                        .map(|&node| BranchEntry {
                            node,
                            writes: 0,
                            vote: Some(Vote::Yes),
                            acknowledged: false,
                        })
                        .collect();
                    let entry = Entry {
                        started: Instant::now(),
                        state: State::Committing,
                        branches,
                        source: "log",
                        decision: Some(Decision::Commit),
                    };
                    self.table.insert(txn, entry);
                    let at = now_ms();
                    self.traces.recovered(txn, at, participants.clone());
                    let found = Some("found in the log at start; the decision is sent again");
                    self.traces.step(txn, None, at, Step::DecisionLogged(Decision::Commit), found);
                }
                Logged::Ended { txn } => {
                    // Ended is written once every participant acknowledged.
                    if let Some(entry) = self.table.get_mut(&txn) {
                        entry.state = State::Committed;
                        entry.branches.iter_mut().for_each(|b| b.acknowledged = true);
                        self.finished.push_back(txn);
                        self.traces.settled(txn, now_ms(), Decision::Commit, None);
                    }
                }
                Logged::Nothing => {}
            }
        }
    }

    fn info(&self, txn: TxnId, entry: &Entry) -> TransactionInfo {
        TransactionInfo {
            txn: txn.to_string(),
            state: entry.state.into(),
            branches: entry
                .branches
                .iter()
                .map(|b| proto::BranchInfo {
                    shard: self.shards.get(&b.node).cloned().unwrap_or_else(|| b.node.to_string()),
                    vote: vote_name(b.vote).to_string(),
                    acknowledged: b.acknowledged,
                    writes: b.writes,
                })
                .collect(),
            age_ms: u64::try_from(entry.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            source: entry.source.to_string(),
            detail: String::new(),
        }
    }

    fn finish(&mut self, txn: TxnId, state: State) {
        let Some(entry) = self.table.get_mut(&txn) else { return };
        let was_finished = matches!(entry.state, State::Committed | State::Aborted);
        entry.state = state;
        if !was_finished {
            self.finished.push_back(txn);
            let (decision, reason) = match state {
                State::Aborted => (Decision::Abort, Some(entry.abort_reason())),
                _ => (Decision::Commit, None),
            };
            self.traces.settled(txn, now_ms(), decision, reason);
        }
        while self.finished.len() > FINISHED_KEPT {
            if let Some(old) = self.finished.pop_front() {
                self.table.remove(&old);
            }
        }
    }

    /// A coordinator command meant for the client side.
    pub fn on_client_command(&mut self, command: &Command<E::Msg, E::Record, E::Timer>) {
        match *command {
            Command::Begun { request, txn } => {
                let Some((reply, branches)) = self.submits.remove(&request) else { return };
                let entry = Entry {
                    started: Instant::now(),
                    state: State::CollectingVotes,
                    branches: branches
                        .iter()
                        .map(|b| BranchEntry {
                            node: b.node,
                            writes: u32::try_from(b.writes.write_count()).unwrap_or(u32::MAX),
                            vote: None,
                            acknowledged: false,
                        })
                        .collect(),
                    source: "coordinator",
                    decision: None,
                };
                let nodes = entry.branches.iter().map(|b| b.node).collect();
                self.traces.opened(txn, now_ms(), nodes);
                self.table.insert(txn, entry);
                let begun =
                    proto::SubmitEvent { event: Some(submit_event::Event::Begun(txn.to_string())) };
                if reply.try_send(Ok(begun)).is_ok() {
                    self.waiting.insert(txn, reply);
                }
            }
            Command::Reserved { request, txn } => {
                if let Some(reply) = self.reserving.remove(&request) {
                    let _ = reply.send(Ok(txn));
                }
            }
            Command::Rejected { request, reason } => {
                let status = match reason {
                    Rejection::Overloaded => Status::resource_exhausted(
                        "the coordinator is at its in-flight limit (or starting); retry later",
                    ),
                    Rejection::Invalid => Status::invalid_argument(
                        "the transaction names the same shard twice or too many shards",
                    ),
                    Rejection::NotReserved => Status::failed_precondition(
                        "the transaction's reserved id is no longer held (it expired, or the coordinator restarted): it did not run; begin again",
                    ),
                };
                if let Some(reply) = self.reserving.remove(&request) {
                    let _ = reply.send(Err(status));
                } else if let Some((reply, _)) = self.submits.remove(&request) {
                    let _ = reply.try_send(Err(status));
                }
            }
            Command::Outcome { txn, decision } => {
                let took = self.table.get(&txn).map(|e| e.started.elapsed());
                self.outcomes.record(decision, took);
                if decision == Decision::Abort {
                    let reason = self.table.get(&txn).map_or("aborted", Entry::abort_reason);
                    self.outcomes.record_abort(reason);
                }
                if let Some(entry) = self.table.get_mut(&txn) {
                    entry.decision = Some(decision);
                }
                self.traces.answered(txn, now_ms(), decision);
                let state = match decision {
                    Decision::Abort => State::Aborted,
                    // Without acknowledgements (Paxos Commit) a chosen decision is the end.
                    Decision::Commit if !E::ACKNOWLEDGED => State::Committed,
                    Decision::Commit => {
                        let all_acked = self.table.get(&txn).is_none_or(|e| {
                            e.branches.iter().all(|b| b.vote != Some(Vote::Yes) || b.acknowledged)
                        });
                        if all_acked {
                            State::Committed
                        } else {
                            State::Committing
                        }
                    }
                };
                if matches!(state, State::Committed | State::Aborted) {
                    self.finish(txn, state);
                } else if let Some(entry) = self.table.get_mut(&txn) {
                    entry.state = state;
                }
                if let Some(reply) = self.waiting.remove(&txn) {
                    let mut info = self.table.get(&txn).map_or_else(
                        || TransactionInfo { txn: txn.to_string(), ..TransactionInfo::default() },
                        |e| self.info(txn, e),
                    );
                    // To the client a durable COMMIT decision is the outcome.
                    info.state = if decision == Decision::Commit {
                        State::Committed
                    } else {
                        State::Aborted
                    }
                    .into();
                    let outcome =
                        proto::SubmitEvent { event: Some(submit_event::Event::Outcome(info)) };
                    let _ = reply.try_send(Ok(outcome));
                }
            }
            Command::Send { .. } | Command::Persist { .. } | Command::SetTimer { .. } => {
                unreachable!("the driver carries these out itself")
            }
        }
    }

    /// A record the core asked to persist (`forced`: the core waits for it to be durable,
    /// [`CoordinatorRole::observe_durable`] follows).
    pub fn observe_record(&mut self, record: &E::Record, forced: bool) {
        match E::logged(record) {
            Logged::CommitDecided { txn, .. } => {
                if !forced {
                    let lazy = Some("written lazily: under early acknowledgement the prepares decided, the record only saves resending");
                    self.traces.step(
                        txn,
                        None,
                        now_ms(),
                        Step::DecisionLogged(Decision::Commit),
                        lazy,
                    );
                }
                // Under early acknowledgement the record follows the outcome (and is lazy):
                // the transaction is committing already, not deciding.
                if let Some(entry) = self.table.get_mut(&txn) {
                    if entry.state == State::CollectingVotes {
                        entry.state = State::Deciding;
                    }
                }
            }
            Logged::Ended { txn } => self.finish(txn, State::Committed),
            Logged::Nothing => {}
        }
    }

    /// A forced record is durable: for a commit decision, the moment it counts.
    pub fn observe_durable(&mut self, record: &E::Record) {
        if let Logged::CommitDecided { txn, .. } = E::logged(record) {
            self.traces.step(txn, None, now_ms(), Step::DecisionLogged(Decision::Commit), None);
        }
    }

    /// A message the core sends to `to`: prepares, one-phase commits and decisions are steps
    /// of their branch (resends included: the timeline shows each).
    pub fn observe_sent(&mut self, to: NodeId, msg: &E::Msg) {
        let (txn, step) = match E::sent(msg) {
            Sent::Prepare { txn } => (txn, Step::PrepareSent),
            Sent::OnePhase { txn } => (txn, Step::OnePhaseSent),
            Sent::Decision { txn, decision } => (txn, Step::DecisionSent(decision)),
            Sent::Nothing => return,
        };
        // A decision answering an old transaction's inquiry is not worth a timeline of its own.
        if self.traces.contains(txn) {
            self.traces.step(txn, Some(to), now_ms(), step, None);
        }
    }

    pub fn observe_message(&mut self, from: NodeId, msg: &E::Msg) {
        match E::seen(from, msg) {
            Seen::Votes { txn, votes } => {
                for (node, vote) in votes {
                    // Under Paxos Commit each acceptor relays the votes: trace the first.
                    let mut first = false;
                    self.with_branch(txn, node, |b| {
                        first = b.vote.is_none();
                        b.vote = Some(vote);
                    });
                    if first {
                        let step = Step::Voted(vote_word(vote));
                        self.traces.step(txn, Some(node), now_ms(), step, None);
                    }
                }
            }
            Seen::Acknowledged { txn } => {
                let mut first = false;
                self.with_branch(txn, from, |b| {
                    first = !b.acknowledged;
                    b.acknowledged = true;
                });
                if first {
                    // A shard acknowledges a decision once it is durable in its own log and
                    // applied to its store: "applied" and "acknowledged" are one moment here.
                    let at = now_ms();
                    let decision = self.table.get(&txn).and_then(|e| e.decision);
                    if let Some(decision) = decision {
                        self.traces.step(txn, Some(from), at, Step::Applied(decision), None);
                    }
                    self.traces.step(txn, Some(from), at, Step::Acknowledged, None);
                }
            }
            Seen::OnePhase { txn, decision } => {
                self.with_branch(txn, from, |b| {
                    b.vote = Some(if decision == Decision::Commit { Vote::Yes } else { Vote::No });
                    b.acknowledged = true;
                });
                if self.traces.contains(txn) {
                    self.traces.step(
                        txn,
                        Some(from),
                        now_ms(),
                        Step::OnePhaseEnded(decision),
                        None,
                    );
                }
            }
            Seen::Answer { txn, answer } => self.on_shard_answer(from, txn, answer),
            Seen::Nothing => {}
        }
    }

    fn with_branch(&mut self, txn: TxnId, node: NodeId, change: impl FnOnce(&mut BranchEntry)) {
        if let Some(branch) =
            self.table.get_mut(&txn).and_then(|e| e.branches.iter_mut().find(|b| b.node == node))
        {
            change(branch);
        }
    }

    /// Status by id: from the table, else from the shards.
    pub fn status(
        &mut self,
        txn: TxnId,
        reply: oneshot::Sender<Result<TransactionInfo, Status>>,
        io: &mut Io<E>,
    ) {
        if let Some(entry) = self.table.get(&txn) {
            let _ = reply.send(Ok(self.info(txn, entry)));
            return;
        }
        if txn.coordinator != self.me || !E::has_issued(&self.core, txn) {
            let _ = reply.send(Err(Status::not_found(format!(
                "no transaction {txn}: this coordinator ({}) never issued that id",
                self.me
            ))));
            return;
        }
        let inquiry = E::status_inquiry(txn);
        if let Some(resolver) = self.resolving.get_mut(&txn) {
            resolver.waiters.push(reply);
            return;
        }
        for &shard in self.shards.keys() {
            io.send(shard, &inquiry);
        }
        let query = StatusQuery::new(self.shards.keys().copied());
        self.resolving.insert(txn, Resolver { query, waiters: vec![reply] });
        let internal = io.internal.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            while started.elapsed() + RESOLVE_AGAIN < RESOLVE_TIMEOUT {
                tokio::time::sleep(RESOLVE_AGAIN).await;
                let call: crate::driver::Call<E> = Box::new(move |node: &mut Node<E>| {
                    if let RoleState::Coordinator(c) = &mut node.role {
                        c.ask_silent_again(txn, &mut node.io);
                    }
                });
                if internal.send(Event::Call(call)).is_err() {
                    return;
                }
            }
            tokio::time::sleep(RESOLVE_TIMEOUT.saturating_sub(started.elapsed())).await;
            let call: crate::driver::Call<E> = Box::new(move |node: &mut Node<E>| {
                if let RoleState::Coordinator(c) = &mut node.role {
                    c.resolve_timed_out(txn);
                }
            });
            let _ = internal.send(Event::Call(call));
        });
    }

    /// A status query still open: its silent shards are asked again.
    fn ask_silent_again(&mut self, txn: TxnId, io: &mut Io<E>) {
        let Some(resolver) = self.resolving.get(&txn) else { return };
        let inquiry = E::status_inquiry(txn);
        for shard in resolver.query.silent() {
            io.send(shard, &inquiry);
        }
    }

    fn on_shard_answer(&mut self, from: NodeId, txn: TxnId, answer: Answer) {
        let Some(resolver) = self.resolving.get_mut(&txn) else { return };
        let Some(verdict) = resolver.query.answer(from, answer) else { return };
        let resolver = self.resolving.remove(&txn).expect("just found");
        let (state, detail) = match verdict {
            Verdict::Committed => (State::Committed, String::new()),
            Verdict::Aborted => (State::Aborted, String::new()),
            Verdict::Forgotten => {
                let names: Vec<&str> = resolver.query.forgetful().map(|n| self.name(n)).collect();
                let detail = format!(
                    "finished long enough ago that {} no longer keep(s) its outcome, and no shard remembers it: it may have committed or aborted",
                    names.join(", ")
                );
                (State::Forgotten, detail)
            }
        };
        // A forgotten outcome is not cached: a later question gets the shards' answer afresh.
        if state != State::Forgotten {
            let decision = (state == State::Committed).then_some(Decision::Commit);
            let entry = Entry {
                started: Instant::now(),
                state,
                branches: Vec::new(),
                source: "shards",
                decision: decision.or((state == State::Aborted).then_some(Decision::Abort)),
            };
            self.table.insert(txn, entry);
            self.finished.push_back(txn);
        }
        let info = TransactionInfo {
            txn: txn.to_string(),
            state: state.into(),
            source: "shards".into(),
            detail,
            ..TransactionInfo::default()
        };
        for waiter in resolver.waiters {
            let _ = waiter.send(Ok(info.clone()));
        }
    }

    /// A node's configured name (`shard-1`), or its id if it has none.
    fn name(&self, node: NodeId) -> &str {
        self.shards.get(&node).map_or("an unknown node", String::as_str)
    }

    fn resolve_timed_out(&mut self, txn: TxnId) {
        let Some(resolver) = self.resolving.remove(&txn) else { return };
        let silent: Vec<&str> = resolver.query.silent().map(|n| self.name(n)).collect();
        let info = TransactionInfo {
            txn: txn.to_string(),
            state: State::Unknown.into(),
            source: "shards".into(),
            detail: format!("no answer from {}; ask again once they are up", silent.join(", ")),
            ..TransactionInfo::default()
        };
        for waiter in resolver.waiters {
            let _ = waiter.send(Ok(info.clone()));
        }
    }

    /// `GET /v1/transactions?recent=true`: one page of the recent transactions, newest first.
    pub fn console_page(
        &self,
        filter: &concord_console::trace::Filter,
        before: Option<u64>,
        limit: usize,
    ) -> serde_json::Value {
        let name_of = |node: NodeId| self.name(node).to_string();
        let (transactions, next) = self.traces.page(filter, before, limit, &name_of);
        serde_json::json!({
            "transactions": transactions,
            "next": next,
            "kept": self.traces.len(),
            "capacity": self.traces.capacity(),
            "traced_since_start": self.traces.traced(),
        })
    }

    /// `GET /v1/transactions/ID`: the transaction's branch steps and timeline, if it is among
    /// the recent ones; else what the table holds; else `None` (ask the shards).
    pub fn console_detail(&self, txn: TxnId) -> Option<serde_json::Value> {
        let name_of = |node: NodeId| self.name(node).to_string();
        if let Some(mut detail) = self.traces.detail(txn, &name_of) {
            if let Some(entry) = self.table.get(&txn) {
                detail["branches"] = serde_json::json!(self.branches_now(txn, entry));
            }
            return Some(detail);
        }
        let entry = self.table.get(&txn)?;
        Some(serde_json::json!({
            "txn": txn.to_string(),
            "state": state_word(entry.state),
            "branches": self.branches_now(txn, entry),
            "reason": (entry.state == State::Aborted).then(|| entry.abort_reason()),
        }))
    }

    /// Each branch as the coordinator knows it now.
    fn branches_now(&self, txn: TxnId, entry: &Entry) -> Vec<serde_json::Value> {
        let age_ms = u64::try_from(entry.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        entry
            .branches
            .iter()
            .map(|b| {
                let state = match (b.vote, b.acknowledged, entry.decision) {
                    (_, true, Some(Decision::Commit)) => "committed",
                    // Prepared, decided, the decision on its way or its acknowledgement.
                    (Some(Vote::Yes), false, Some(Decision::Commit)) => "commit-sent",
                    (Some(Vote::Yes), false, Some(Decision::Abort)) => "abort-sent",
                    (Some(Vote::Yes), false, None) => "prepared",
                    (Some(Vote::No), ..) => "voted-no",
                    (Some(Vote::ReadOnly), ..) => "read-only",
                    (None, _, Some(Decision::Abort)) => "rolled-back",
                    _ => "preparing",
                };
                serde_json::json!({
                    "database": self.name(b.node),
                    "gid": txn.to_string(),
                    "state": state,
                    "age_ms": age_ms,
                    "detail": format!("{} write(s)", b.writes),
                })
            })
            .collect()
    }

    /// `GET /v1/transactions?in_doubt=true`: every transaction with a branch prepared at its
    /// shard (voted YES) that has not acknowledged the outcome: waiting for the other votes,
    /// for the decision to be durable, or for the decision to reach it. Oldest first.
    /// A shard's own count is its `concord_in_doubt_branches` (the cluster page shows it).
    pub fn in_doubt(&self) -> Vec<serde_json::Value> {
        let mut waiting: Vec<(&TxnId, &Entry)> = self
            .table
            .iter()
            .filter(|(_, e)| !matches!(e.state, State::Committed | State::Aborted))
            .filter(|(_, e)| {
                e.branches.iter().any(|b| b.vote == Some(Vote::Yes) && !b.acknowledged)
            })
            .collect();
        waiting.sort_by_key(|(_, e)| e.started);
        waiting
            .into_iter()
            .map(|(&txn, entry)| {
                let branches: Vec<serde_json::Value> = self
                    .branches_now(txn, entry)
                    .into_iter()
                    .filter(|b| {
                        matches!(b["state"].as_str(), Some("prepared" | "commit-sent" | "abort-sent"))
                    })
                    .collect();
                serde_json::json!({
                    "txn": txn.to_string(),
                    "state": state_word(entry.state),
                    "age_ms": u64::try_from(entry.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "branches": branches,
                    "heuristics": [],
                })
            })
            .collect()
    }

    /// For the charts: transactions with a branch in doubt, and the oldest one's age.
    pub fn in_doubt_summary(&self) -> (usize, Duration) {
        self.table
            .values()
            .filter(|e| !matches!(e.state, State::Committed | State::Aborted))
            .filter(|e| e.branches.iter().any(|b| b.vote == Some(Vote::Yes) && !b.acknowledged))
            .fold((0, Duration::ZERO), |(n, oldest), e| (n + 1, oldest.max(e.started.elapsed())))
    }

    /// Newest first.
    pub fn list(&self, limit: usize, running_only: bool) -> Vec<TransactionInfo> {
        let mut txns: Vec<(&TxnId, &Entry)> = self
            .table
            .iter()
            .filter(|(_, e)| !running_only || !matches!(e.state, State::Committed | State::Aborted))
            .collect();
        txns.sort_by(|a, b| b.0.cmp(a.0));
        txns.into_iter().take(limit).map(|(&txn, e)| self.info(txn, e)).collect()
    }
}

impl<E: Engine> Node<E> {
    pub(crate) fn coordinator(&mut self) -> Option<&mut CoordinatorRole<E>> {
        match &mut self.role {
            RoleState::Coordinator(c) => Some(c),
            RoleState::Shard(_) | RoleState::Acceptor(_) | RoleState::Standby => None,
        }
    }

    /// Starts a client's transaction; its events go to `reply`. With `reserved`, it runs under
    /// that id, reserved earlier ([`Node::reserve`]).
    pub(crate) fn submit(
        &mut self,
        branches: Vec<Branch<Change<E::Model>>>,
        reserved: Option<TxnId>,
        reply: SubmitReply,
    ) {
        let Some(c) = self.coordinator() else {
            let _ = reply.try_send(Err(Status::failed_precondition("this node is a shard")));
            return;
        };
        c.next_request += 1;
        let request = RequestId(c.next_request);
        c.submits.insert(request, (reply, branches.clone()));
        match reserved {
            None => self.step(Input::Begin { request, branches }),
            Some(txn) => {
                let begin = concord_commit::Reservation::Begin { request, txn, branches };
                self.step(Input::Reservation(begin));
            }
        }
    }

    /// Reserves a transaction id for a transaction that will run later (the client knows its
    /// id before it commits: `concord_commit::Reservation`).
    pub(crate) fn reserve(&mut self, reply: oneshot::Sender<Result<TxnId, Status>>) {
        let Some(c) = self.coordinator() else {
            let _ = reply.send(Err(Status::failed_precondition("this node is a shard")));
            return;
        };
        c.next_request += 1;
        let request = RequestId(c.next_request);
        c.reserving.insert(request, reply);
        self.step(Input::Reservation(concord_commit::Reservation::Reserve { request }));
    }

    /// Gives back a reserved id whose transaction will not run.
    pub(crate) fn release(&mut self, txn: TxnId) {
        if self.coordinator().is_some() {
            self.step(Input::Reservation(concord_commit::Reservation::Release { txn }));
        }
    }
}
