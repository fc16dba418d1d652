//! Two-phase commit over resource managers that answer calls — the X/Open XA model: databases
//! (PostgreSQL's `PREPARE TRANSACTION`, MariaDB's XA, Redis scripts) never send a message; they
//! answer the transaction manager's calls, and a prepared branch waits, silently, for ever.
//!
//! [`Coordinator`] is the 2PC core ([`crate::two_phase::Coordinator`], unchanged) plus the
//! translation between its messages and such calls, sans IO, so the database coordinator
//! (`concord db serve`) and the simulator run the same code:
//!
//! ```text
//!   core says                      call                         answer → core hears
//!   PREPARE                        Prepare (wrote nothing?        Voted YES / NO / READ-ONLY
//!                                  the RM ends it, READ-ONLY)
//!   COMMIT-ONE-PHASE (one branch)  CommitOnePhase                 OnePhase(decision) → ONE-PHASE RESULT;
//!                                                                 lost → SettleOnePhase on the core's retry
//!   DECISION d                     Finish(d)                      Done / Heuristic → ACK (a COMMIT);
//!                                                                 StillPrepared / Failed → the core resends
//! ```
//!
//! A resource manager that votes NO has rolled its branch back (or tried: reconciliation finds
//! what is left). A resource manager never inquires: its driver asks [`Coordinator::inquiry_answer`]
//! for every prepared branch it lists, and carries the answer out with `Finish`.
//!
//! Ids are reserved before branches open ([`crate::Reservation`]): a branch's name in its
//! database carries the transaction id, so the id exists before the first statement runs.
//!
//! The client hears [`Effect::Settled`] once the outcome is known and every branch has ended
//! its first attempt (committed, rolled back, read-only, or left prepared for the core's
//! resends) — so an answer can say where each branch stands.

pub mod model;

use std::collections::{BTreeMap, BTreeSet};

use concord_types::codec::{DecodeError, Encode, Reader, Writer};
use concord_types::{Decision, NodeId, RequestId, TxnId, Vote};

use crate::two_phase::{self, Msg, Timer};
use crate::{Branch, Change, Checkpoint, Command, Core, Durability, Input, Rejection, Reservation};

/// What a branch changes, as the core sees it: whether it may have written. A branch that may
/// not is asked at prepare; its resource manager votes READ-ONLY if it confirms nothing was
/// written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Work {
    pub wrote: bool,
}

impl Encode for Work {
    fn encode(&self, w: &mut Writer<'_>) {
        w.u8(u8::from(self.wrote));
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8()? {
            0 => Ok(Work { wrote: false }),
            1 => Ok(Work { wrote: true }),
            tag => Err(DecodeError::UnknownTag { what: "branch work", tag }),
        }
    }
}

impl Change for Work {
    fn write_count(&self) -> usize {
        usize::from(self.wrote)
    }
}

/// The core's records (the snapshot type is unused: a coordinator never writes one).
pub type Record = two_phase::Record<Work, Work>;

/// A call to the resource manager of one branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// Prepare the branch (or, if it wrote nothing, end it and vote READ-ONLY).
    Prepare,
    /// Commit the transaction's only branch without PREPARE.
    CommitOnePhase,
    /// A one-phase commit's answer was lost: find out how it ended.
    SettleOnePhase,
    /// Finish the prepared branch the decided way (`COMMIT PREPARED`, `ROLLBACK PREPARED`); if
    /// it is not prepared any more, find out how it ended.
    Finish(Decision),
}

/// How finishing a branch came out.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Completion {
    Done,
    /// The branch had ended the other way (finished by hand): a heuristic outcome, which the
    /// caller has recorded.
    Heuristic(Decision),
    StillPrepared,
    Failed(String),
}

/// A resource manager's answer to a [`Call`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Answer {
    Voted {
        vote: Vote,
        reason: Option<String>,
    },
    /// `Err`: the outcome is not known (yet).
    OnePhase(Result<(Decision, Option<String>), String>),
    Finished(Completion),
}

/// How a branch ended, as the client's answer shows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BranchEnd {
    pub node: NodeId,
    /// "committed", "rolled-back", "read-only", or "prepared" (not finished yet: the core's
    /// resends finish it).
    pub state: &'static str,
    pub detail: Option<String>,
}

/// What the driver must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Call {
        txn: TxnId,
        node: NodeId,
        call: Call,
    },
    Persist {
        record: Record,
        durability: Durability,
    },
    SetTimer {
        timer: Timer,
        after_us: u64,
    },
    Reserved {
        request: RequestId,
        txn: TxnId,
    },
    Rejected {
        request: RequestId,
        reason: Rejection,
    },
    /// A transaction's outcome for its client, once every branch has settled.
    Settled {
        txn: TxnId,
        decision: Decision,
        reason: Option<String>,
        branches: Vec<BranchEnd>,
    },
    /// A decision carried out on a branch no client waits for (re-driven after a restart, or a
    /// resend), for the operators' log.
    Recovered {
        txn: TxnId,
        node: NodeId,
        decision: Decision,
        completion: Completion,
    },
    /// The core's epoch is durable: ids can be reserved.
    Ready,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Slot {
    /// Statements ran; waiting for PREPARE or COMMIT-ONE-PHASE.
    Open,
    /// A call for it is in flight.
    Busy,
    Prepared,
    /// A one-phase commit whose answer was lost.
    Unknown,
    Settled {
        state: &'static str,
        detail: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Txn {
    slots: BTreeMap<NodeId, Slot>,
    outcome: Option<Decision>,
    reason: Option<String>,
}

/// The 2PC coordinator for resource managers that answer calls (module docs).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Coordinator {
    core: two_phase::Coordinator<Work, Work>,
    /// Transactions a client began, until their answer.
    txns: BTreeMap<TxnId, Txn>,
    /// Ids reserved by clients whose branches are open (statements running).
    reserved: BTreeSet<TxnId>,
    /// Branches with a `Finish` in flight, and which way: a resend finds them busy.
    busy: BTreeMap<(TxnId, NodeId), Decision>,
    next_request: u64,
    ready: bool,
}

/// The core's configuration for resource managers: no peers (they never talk to each other),
/// no forgetting (they never forget a prepared branch), no early acknowledgement.
pub fn config(
    vote_timeout_us: u64,
    resend_base_us: u64,
    resend_max_us: u64,
    max_in_flight: usize,
    max_branches: usize,
) -> two_phase::Config {
    two_phase::Config {
        switches: crate::Switches {
            read_only: true,
            one_phase: true,
            cooperative_termination: false,
            early_ack: false,
            forget: false,
            forgotten_kept: 0,
        },
        vote_timeout_us,
        resend_base_us,
        resend_max_us: resend_max_us.max(resend_base_us),
        inquiry_base_us: resend_max_us,
        inquiry_max_us: resend_max_us,
        max_in_flight,
        max_queued_begins: max_in_flight,
        max_participants: max_branches,
        forget_every: u32::MAX,
    }
}

fn ended(decision: Decision) -> &'static str {
    match decision {
        Decision::Commit => "committed",
        Decision::Abort => "rolled-back",
    }
}

impl Coordinator {
    pub fn new(id: NodeId, config: two_phase::Config) -> Self {
        Coordinator {
            core: two_phase::Coordinator::new(id, config),
            txns: BTreeMap::new(),
            reserved: BTreeSet::new(),
            busy: BTreeMap::new(),
            next_request: 0,
            ready: false,
        }
    }

    /// (Re)starts from the log's records, in order: re-drives every logged COMMIT and makes a
    /// new epoch durable ([`Effect::Ready`] once it is).
    pub fn restart(&mut self, records: Vec<Record>) -> Vec<Effect> {
        self.txns.clear();
        self.reserved.clear();
        self.busy.clear();
        self.ready = false;
        self.step(Input::Restart { records })
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The epoch ids are issued in (`None` before the first restart).
    pub fn epoch(&self) -> Option<u32> {
        self.core.epoch()
    }

    /// Transactions the core is running (deciding, or completing a COMMIT).
    pub fn in_flight(&self) -> usize {
        self.core.in_flight()
    }

    /// Reserves an id for a transaction whose branches are about to open. `request` names the
    /// answer ([`Effect::Reserved`] or [`Effect::Rejected`]).
    pub fn reserve(&mut self) -> (RequestId, Vec<Effect>) {
        self.next_request += 1;
        let request = RequestId(self.next_request);
        (request, self.step(Input::Reservation(Reservation::Reserve { request })))
    }

    /// Commits reserved `txn` over its open branches.
    pub fn begin(&mut self, txn: TxnId, branches: Vec<(NodeId, Work)>) -> (RequestId, Vec<Effect>) {
        self.next_request += 1;
        let request = RequestId(self.next_request);
        self.reserved.remove(&txn);
        let slots = branches.iter().map(|(node, _)| (*node, Slot::Open)).collect();
        let core_branches =
            branches.into_iter().map(|(node, writes)| Branch { node, writes }).collect();
        let previous = self.txns.insert(txn, Txn { slots, outcome: None, reason: None });
        assert!(previous.is_none(), "{txn} begun twice");
        let effects = self.step(Input::Reservation(Reservation::Begin {
            request,
            txn,
            branches: core_branches,
        }));
        // Refused: the transaction never runs.
        if effects.iter().any(|e| matches!(e, Effect::Rejected { request: r, .. } if *r == request))
        {
            self.txns.remove(&txn);
        }
        (request, effects)
    }

    /// The reserved `txn` will not run (its client ended it before commit).
    pub fn release(&mut self, txn: TxnId) -> Vec<Effect> {
        self.reserved.remove(&txn);
        self.step(Input::Reservation(Reservation::Release { txn }))
    }

    /// What the core answers an inquiry about `txn` — COMMIT once the decision is durable,
    /// ABORT with no record (presumed abort) — and nothing while it is undecided or a client
    /// still holds it.
    pub fn inquiry_answer(&self, txn: TxnId) -> Option<Decision> {
        if self.txns.contains_key(&txn) || self.reserved.contains(&txn) {
            return None;
        }
        self.core.inquiry_answer(txn)
    }

    /// The records a checkpoint keeps (the core's: its epoch and every COMMIT not yet
    /// acknowledged by all its branches).
    pub fn live_records(&self) -> Vec<Record> {
        self.core.live_records()
    }

    /// Where a held transaction's branches stand, for a failure report.
    pub fn debug_txn(&self, txn: TxnId) -> String {
        format!(
            "{:?}; busy {:?}; core running: {}",
            self.txns.get(&txn),
            self.busy.iter().filter(|((t, _), _)| *t == txn).collect::<Vec<_>>(),
            self.core.is_running(txn)
        )
    }

    /// Whether a client holds `txn` (reserved, or begun and not answered).
    pub fn is_held(&self, txn: TxnId) -> bool {
        self.txns.contains_key(&txn) || self.reserved.contains(&txn)
    }

    /// Someone else (reconciliation, an operator) finished branch `node` of `txn` the committed
    /// way: it counts as that branch's acknowledgement.
    pub fn acked(&mut self, txn: TxnId, node: NodeId) -> Vec<Effect> {
        self.step(Input::Message { from: node, msg: Msg::Ack { txn } })
    }

    /// A forced record is durable.
    pub fn persisted(&mut self, record: Record) -> Vec<Effect> {
        let epoch = matches!(record, Record::EpochStarted { .. });
        let mut effects = self.step(Input::Persisted(record));
        if epoch && !self.ready {
            self.ready = true;
            effects.push(Effect::Ready);
        }
        effects
    }

    pub fn timer(&mut self, timer: Timer) -> Vec<Effect> {
        self.step(Input::Timer(timer))
    }

    /// A resource manager answered a call.
    pub fn answer(&mut self, txn: TxnId, node: NodeId, answer: Answer) -> Vec<Effect> {
        let mut effects = self.on_answer(txn, node, answer);
        // The outcome may have been known before this branch settled (a NO elsewhere aborted
        // the transaction while this one was still preparing): its answer may be the last.
        if !effects.iter().any(|e| matches!(e, Effect::Settled { txn: t, .. } if *t == txn)) {
            effects.extend(self.settle(txn));
        }
        effects
    }

    fn on_answer(&mut self, txn: TxnId, node: NodeId, answer: Answer) -> Vec<Effect> {
        match answer {
            Answer::Voted { vote, reason } => self.on_voted(txn, node, vote, reason),
            Answer::OnePhase(Ok((decision, reason))) => {
                if let Some(t) = self.txns.get_mut(&txn) {
                    t.slots.insert(
                        node,
                        Slot::Settled { state: ended(decision), detail: reason.clone() },
                    );
                    if t.reason.is_none() {
                        t.reason = reason;
                    }
                }
                self.step(Input::Message { from: node, msg: Msg::OnePhaseResult { txn, decision } })
            }
            Answer::OnePhase(Err(_)) => {
                if let Some(slot) = self.txns.get_mut(&txn).and_then(|t| t.slots.get_mut(&node)) {
                    *slot = Slot::Unknown;
                }
                Vec::new()
            }
            Answer::Finished(completion) => self.on_finished(txn, node, completion),
        }
    }

    fn on_voted(
        &mut self,
        txn: TxnId,
        node: NodeId,
        vote: Vote,
        reason: Option<String>,
    ) -> Vec<Effect> {
        if let Some(t) = self.txns.get_mut(&txn) {
            let slot = match vote {
                Vote::Yes => Slot::Prepared,
                Vote::ReadOnly => Slot::Settled { state: "read-only", detail: None },
                Vote::No => {
                    if t.reason.is_none() {
                        t.reason = reason.clone();
                    }
                    Slot::Settled { state: "rolled-back", detail: reason }
                }
            };
            t.slots.insert(node, slot);
        }
        // A vote of a transaction no client holds any more (the core aborted it on a vote
        // timeout): a late YES is answered ABORT by the core and finished below.
        self.step(Input::Message { from: node, msg: Msg::Vote { txn, vote } })
    }

    fn on_finished(&mut self, txn: TxnId, node: NodeId, completion: Completion) -> Vec<Effect> {
        // One `Finish` per branch is in flight at a time; its entry says which way.
        let Some(decision) = self.busy.remove(&(txn, node)) else {
            panic!("{txn}: a Finish answered for branch {node}, which has none in flight");
        };
        let mut effects = Vec::new();
        let complete = matches!(completion, Completion::Done | Completion::Heuristic(_));
        match self.txns.get_mut(&txn) {
            Some(t) => {
                let (state, detail) = match &completion {
                    Completion::Done => (ended(decision), None),
                    Completion::Heuristic(actual) => (
                        ended(*actual),
                        Some(format!("HEURISTIC: found {} against the decision", ended(*actual))),
                    ),
                    Completion::StillPrepared => {
                        ("prepared", Some("still prepared; finished by a later attempt".into()))
                    }
                    Completion::Failed(e) => {
                        ("prepared", Some(format!("{e}; finished by a later attempt")))
                    }
                };
                t.slots.insert(node, Slot::Settled { state, detail });
            }
            None => effects.push(Effect::Recovered { txn, node, decision, completion }),
        }
        if complete && decision == Decision::Commit {
            effects.extend(self.step(Input::Message { from: node, msg: Msg::Ack { txn } }));
        }
        effects.extend(self.settle(txn));
        effects
    }

    fn step(&mut self, input: Input<Msg<Work>, Record, Timer, Work>) -> Vec<Effect> {
        let mut commands = Vec::new();
        self.core.handle(input, &mut commands);
        let mut effects = Vec::new();
        for command in commands {
            self.translate(command, &mut effects);
        }
        effects
    }

    fn translate(&mut self, command: Command<Msg<Work>, Record, Timer>, effects: &mut Vec<Effect>) {
        match command {
            Command::Send { to, msg } => match msg {
                Msg::Prepare { txn, .. } => self.call_open(txn, to, Call::Prepare, effects),
                Msg::CommitOnePhase { txn, .. } => self.one_phase(txn, to, effects),
                Msg::Decision { txn, decision } => self.finish(txn, to, decision, effects),
                // Switched off for resource managers, or never sent to a participant.
                Msg::Forget { .. }
                | Msg::Inquire { .. }
                | Msg::Vote { .. }
                | Msg::Ack { .. }
                | Msg::OnePhaseResult { .. }
                | Msg::Forgotten { .. } => {}
            },
            Command::Persist { record, durability } => {
                effects.push(Effect::Persist { record, durability });
            }
            Command::SetTimer { timer, after_us } => {
                effects.push(Effect::SetTimer { timer, after_us });
            }
            Command::Begun { .. } => {}
            Command::Reserved { request, txn } => {
                self.reserved.insert(txn);
                effects.push(Effect::Reserved { request, txn });
            }
            Command::Rejected { request, reason } => {
                effects.push(Effect::Rejected { request, reason });
            }
            Command::Outcome { txn, decision } => {
                if let Some(t) = self.txns.get_mut(&txn) {
                    t.outcome = Some(decision);
                }
                effects.extend(self.settle(txn));
            }
        }
    }

    /// PREPARE for an open branch. Anything else cannot happen (the core prepares only what it
    /// was given, once); voting NO for it is always safe.
    fn call_open(&mut self, txn: TxnId, node: NodeId, call: Call, effects: &mut Vec<Effect>) {
        let slot = self.txns.get_mut(&txn).and_then(|t| t.slots.get_mut(&node));
        match slot {
            Some(slot @ Slot::Open) => {
                *slot = Slot::Busy;
                effects.push(Effect::Call { txn, node, call });
            }
            _ => {
                let msg = Msg::Vote { txn, vote: Vote::No };
                let mut commands = Vec::new();
                self.core.handle(Input::Message { from: node, msg }, &mut commands);
                for command in commands {
                    self.translate(command, effects);
                }
            }
        }
    }

    fn one_phase(&mut self, txn: TxnId, node: NodeId, effects: &mut Vec<Effect>) {
        let Some(slot) = self.txns.get_mut(&txn).and_then(|t| t.slots.get_mut(&node)) else {
            return;
        };
        let call = match slot {
            Slot::Open => Call::CommitOnePhase,
            // The core's retry after a lost answer.
            Slot::Unknown => Call::SettleOnePhase,
            // Still running, or answered: the retry is stale.
            Slot::Busy | Slot::Prepared | Slot::Settled { .. } => return,
        };
        *slot = Slot::Busy;
        effects.push(Effect::Call { txn, node, call });
    }

    fn finish(&mut self, txn: TxnId, node: NodeId, decision: Decision, effects: &mut Vec<Effect>) {
        if self.busy.contains_key(&(txn, node)) {
            return;
        }
        if let Some(slot) = self.txns.get_mut(&txn).and_then(|t| t.slots.get_mut(&node)) {
            match slot {
                Slot::Prepared => *slot = Slot::Busy,
                // Preparing still: its vote comes back to the core, which answers it. Ended
                // already: voted NO or READ-ONLY, or finished.
                Slot::Busy | Slot::Open | Slot::Unknown | Slot::Settled { .. } => return,
            }
        }
        self.busy.insert((txn, node), decision);
        effects.push(Effect::Call { txn, node, call: Call::Finish(decision) });
    }

    /// The client's answer, once the outcome is known and every branch has settled.
    fn settle(&mut self, txn: TxnId) -> Vec<Effect> {
        let Some(t) = self.txns.get(&txn) else { return Vec::new() };
        let Some(decision) = t.outcome else { return Vec::new() };
        if !t.slots.values().all(|s| matches!(s, Slot::Settled { .. })) {
            return Vec::new();
        }
        let t = self.txns.remove(&txn).expect("looked up above");
        let branches = t
            .slots
            .into_iter()
            .map(|(node, slot)| match slot {
                Slot::Settled { state, detail } => BranchEnd { node, state, detail },
                _ => unreachable!("every slot is settled"),
            })
            .collect();
        vec![Effect::Settled { txn, decision, reason: t.reason, branches }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: NodeId = NodeId(9);
    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    fn ready() -> Coordinator {
        let mut c = Coordinator::new(ME, config(1_000, 100, 1_000, 100, 8));
        let effects = c.restart(Vec::new());
        let epoch = effects
            .into_iter()
            .find_map(|e| match e {
                Effect::Persist { record, durability: Durability::Forced } => Some(record),
                _ => None,
            })
            .expect("a new epoch is forced");
        assert!(c.persisted(epoch).contains(&Effect::Ready));
        c
    }

    fn reserve(c: &mut Coordinator) -> TxnId {
        let (_, effects) = c.reserve();
        match effects.as_slice() {
            [Effect::Reserved { txn, .. }] => *txn,
            other => panic!("{other:?}"),
        }
    }

    fn calls(effects: &[Effect]) -> Vec<(NodeId, Call)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Call { node, call, .. } => Some((*node, *call)),
                _ => None,
            })
            .collect()
    }

    fn forced(effects: &[Effect]) -> Option<Record> {
        effects.iter().find_map(|e| match e {
            Effect::Persist { record, durability: Durability::Forced } => Some(record.clone()),
            _ => None,
        })
    }

    fn settled(effects: &[Effect]) -> Option<(Decision, Vec<&'static str>)> {
        effects.iter().find_map(|e| match e {
            Effect::Settled { decision, branches, .. } => {
                Some((*decision, branches.iter().map(|b| b.state).collect()))
            }
            _ => None,
        })
    }

    fn yes() -> Answer {
        Answer::Voted { vote: Vote::Yes, reason: None }
    }

    const WROTE: Work = Work { wrote: true };

    #[test]
    fn two_writers_prepare_decide_durably_then_finish_and_end() {
        let mut c = ready();
        let txn = reserve(&mut c);
        assert_eq!(c.inquiry_answer(txn), None, "held by its client");
        let (_, effects) = c.begin(txn, vec![(A, WROTE), (B, WROTE)]);
        assert_eq!(calls(&effects), vec![(A, Call::Prepare), (B, Call::Prepare)]);
        assert!(c.answer(txn, A, yes()).is_empty());
        let effects = c.answer(txn, B, yes());
        let decision = forced(&effects).expect("the COMMIT is forced");
        assert!(calls(&effects).is_empty(), "nothing is finished before the decision is durable");
        let effects = c.persisted(decision);
        assert_eq!(
            calls(&effects),
            vec![(A, Call::Finish(Decision::Commit)), (B, Call::Finish(Decision::Commit))]
        );
        assert_eq!(c.inquiry_answer(txn), None, "still held: its client has no answer yet");
        assert!(settled(&c.answer(txn, A, Answer::Finished(Completion::Done))).is_none());
        let effects = c.answer(txn, B, Answer::Finished(Completion::Done));
        assert_eq!(settled(&effects), Some((Decision::Commit, vec!["committed", "committed"])));
        assert!(effects.iter().any(|e| matches!(
            e,
            Effect::Persist { record: Record::Ended { .. }, durability: Durability::Lazy }
        )));
        assert_eq!(c.inquiry_answer(txn), Some(Decision::Abort), "ended: presumed from here");
    }

    #[test]
    fn one_branch_commits_in_one_phase_and_a_lost_answer_is_settled_on_the_retry() {
        let mut c = ready();
        let txn = reserve(&mut c);
        let (_, effects) = c.begin(txn, vec![(A, WROTE)]);
        assert_eq!(calls(&effects), vec![(A, Call::CommitOnePhase)]);
        assert!(forced(&effects).is_none(), "one phase: nothing logged");
        let retry = effects
            .iter()
            .find_map(|e| match e {
                Effect::SetTimer { timer, .. } => Some(*timer),
                _ => None,
            })
            .expect("a retry timer");
        assert!(c.answer(txn, A, Answer::OnePhase(Err("connection lost".into()))).is_empty());
        let effects = c.timer(retry);
        assert_eq!(calls(&effects), vec![(A, Call::SettleOnePhase)]);
        let effects = c.answer(txn, A, Answer::OnePhase(Ok((Decision::Commit, None))));
        assert_eq!(settled(&effects), Some((Decision::Commit, vec!["committed"])));
    }

    #[test]
    fn a_read_only_branch_skips_phase_two() {
        let mut c = ready();
        let txn = reserve(&mut c);
        let (_, effects) = c.begin(txn, vec![(A, WROTE), (B, Work { wrote: false })]);
        assert_eq!(calls(&effects).len(), 2);
        c.answer(txn, B, Answer::Voted { vote: Vote::ReadOnly, reason: None });
        let decision = forced(&c.answer(txn, A, yes())).expect("forced");
        assert_eq!(decision, Record::CommitDecided { txn, participants: vec![A] });
        let effects = c.persisted(decision);
        assert_eq!(calls(&effects), vec![(A, Call::Finish(Decision::Commit))]);
        let effects = c.answer(txn, A, Answer::Finished(Completion::Done));
        assert_eq!(settled(&effects), Some((Decision::Commit, vec!["committed", "read-only"])));
    }

    #[test]
    fn a_no_vote_aborts_and_the_yes_voter_is_rolled_back() {
        let mut c = ready();
        let txn = reserve(&mut c);
        c.begin(txn, vec![(A, WROTE), (B, WROTE)]);
        c.answer(txn, A, yes());
        let effects =
            c.answer(txn, B, Answer::Voted { vote: Vote::No, reason: Some("full".into()) });
        assert!(forced(&effects).is_none(), "presumed abort: nothing forced");
        assert_eq!(calls(&effects), vec![(A, Call::Finish(Decision::Abort))]);
        let effects = c.answer(txn, A, Answer::Finished(Completion::Done));
        let reason = effects.iter().find_map(|e| match e {
            Effect::Settled { reason, .. } => reason.clone(),
            _ => None,
        });
        assert_eq!(settled(&effects), Some((Decision::Abort, vec!["rolled-back", "rolled-back"])));
        assert_eq!(reason.as_deref(), Some("full"));
    }

    #[test]
    fn an_abort_is_answered_when_the_last_branch_settles_even_without_news_for_the_core() {
        let mut c = ready();
        let txn = reserve(&mut c);
        c.begin(txn, vec![(A, WROTE), (B, WROTE)]);
        let no = || Answer::Voted { vote: Vote::No, reason: Some("refused".into()) };
        // A's NO aborts the transaction while B is still preparing; B's NO then tells the core
        // nothing new, but it is the last branch to settle.
        assert!(settled(&c.answer(txn, A, no())).is_none());
        let effects = c.answer(txn, B, no());
        assert_eq!(settled(&effects), Some((Decision::Abort, vec!["rolled-back", "rolled-back"])));
    }

    #[test]
    fn a_vote_timeout_waits_for_the_late_prepare_and_rolls_it_back() {
        let mut c = ready();
        let txn = reserve(&mut c);
        let (_, effects) = c.begin(txn, vec![(A, WROTE), (B, WROTE)]);
        let timeout = effects
            .iter()
            .find_map(|e| match e {
                Effect::SetTimer { timer: t @ Timer::VoteTimeout { .. }, .. } => Some(*t),
                _ => None,
            })
            .expect("a vote timeout");
        c.answer(txn, A, yes());
        let effects = c.timer(timeout);
        assert_eq!(calls(&effects), vec![(A, Call::Finish(Decision::Abort))]);
        assert!(
            settled(&c.answer(txn, A, Answer::Finished(Completion::Done))).is_none(),
            "B is still preparing"
        );
        // B's prepare lands after the abort: the core answers its YES with ABORT.
        let effects = c.answer(txn, B, yes());
        assert_eq!(calls(&effects), vec![(B, Call::Finish(Decision::Abort))]);
        let effects = c.answer(txn, B, Answer::Finished(Completion::Done));
        assert_eq!(settled(&effects), Some((Decision::Abort, vec!["rolled-back", "rolled-back"])));
    }

    #[test]
    fn a_restart_re_drives_logged_commits_and_presumes_abort_for_the_rest() {
        let mut first = ready();
        let committed = reserve(&mut first);
        first.begin(committed, vec![(A, WROTE), (B, WROTE)]);
        first.answer(committed, A, yes());
        let decision = forced(&first.answer(committed, B, yes())).unwrap();
        let undecided = reserve(&mut first);
        let epoch = Record::EpochStarted { epoch: first.epoch().unwrap() };

        let mut c = Coordinator::new(ME, config(1_000, 100, 1_000, 100, 8));
        let effects = c.restart(vec![epoch, decision]);
        assert_eq!(
            calls(&effects),
            vec![(A, Call::Finish(Decision::Commit)), (B, Call::Finish(Decision::Commit))]
        );
        assert_eq!(c.inquiry_answer(committed), Some(Decision::Commit));
        assert_eq!(c.inquiry_answer(undecided), Some(Decision::Abort));
        let effects =
            c.answer(committed, A, Answer::Finished(Completion::Heuristic(Decision::Abort)));
        assert!(matches!(
            effects.as_slice(),
            [Effect::Recovered { completion: Completion::Heuristic(_), .. }]
        ));
        // A failed attempt is retried by the core's resend timer, not acknowledged.
        let effects = c.answer(committed, B, Answer::Finished(Completion::Failed("down".into())));
        assert!(matches!(effects.as_slice(), [Effect::Recovered { .. }]));
        assert_eq!(c.inquiry_answer(committed), Some(Decision::Commit), "B still owes its ack");
        let effects = c.acked(committed, B);
        assert!(effects
            .iter()
            .any(|e| matches!(e, Effect::Persist { record: Record::Ended { .. }, .. })));
    }

    #[test]
    fn a_resend_finds_a_branch_busy_and_does_not_call_twice() {
        let mut c = ready();
        let txn = reserve(&mut c);
        c.begin(txn, vec![(A, WROTE), (B, WROTE)]);
        c.answer(txn, A, yes());
        let decision = forced(&c.answer(txn, B, yes())).unwrap();
        let effects = c.persisted(decision);
        let resend = effects
            .iter()
            .find_map(|e| match e {
                Effect::SetTimer { timer: t @ Timer::ResendCommit { .. }, .. } => Some(*t),
                _ => None,
            })
            .expect("a resend timer");
        assert!(calls(&c.timer(resend)).is_empty(), "both finishes are still in flight");
    }
}
