//! The Paxos Commit coordinator: names transactions, sends PREPARE, and leads ballot 0. It
//! writes no decision record — the decision is chosen at the acceptors — only its epoch.
//!
//! A transaction of one participant (switch `one_phase`) skips the instances altogether: with
//! one participant its vote is the outcome, so the coordinator sends COMMIT-ONE-PHASE and the
//! participant decides alone, forcing its outcome before it answers (as 2PC's one-phase path).
//! Nothing here can block it: the participant never waits for anyone, and a coordinator that
//! crashed meanwhile learns the outcome by the status query like any other.
//!
//! With switch `forget` it also keeps each decided transaction until every participant has
//! acknowledged the decision, resending it, and sends FORGET below the lowest unfinished id
//! (module docs, "Forgetting").

use std::collections::{BTreeMap, BTreeSet};

use concord_types::{Decision, NodeId, RequestId, TxnId, Write};

use super::leader::Leader;
use super::{Config, Msg, Record, Timer};
use crate::admission::{Admission, Limits};
use crate::{backoff_us, Branch, Checkpoint, Command, Core, Durability, Input};

type Out<C, S> = Vec<Command<Msg<C>, Record<C, S>, Timer>>;

/// `C` is a branch's change, routed to its participant unopened.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Coordinator<C = Vec<Write>, S = Vec<Write>> {
    id: NodeId,
    admission: Admission<C>,
    leader: Leader,
    /// One-phase transactions waiting for their participant's result: the branch, the attempt.
    one_phase: BTreeMap<TxnId, (Branch<C>, u32)>,
    /// Ballot 0 goes to every acceptor (`mod.rs`, "Losing an acceptor of the normal case"):
    /// since a ballot 0 timed out, until every acceptor has answered one of a transaction
    /// begun since (`wide_from`, the first such).
    wide: bool,
    wide_from: Option<TxnId>,
    /// Per acceptor, the newest transaction it sent a ballot-0 2b for.
    heard: BTreeMap<NodeId, TxnId>,
    /// Switch `forget`: decided transactions whose participants have not all acknowledged:
    /// the decision, who has not, and the resend attempt.
    unacknowledged: BTreeMap<TxnId, (Decision, BTreeSet<NodeId>, u32)>,
    /// Every participant of this epoch's transactions: who hears FORGET.
    participants: BTreeSet<NodeId>,
    /// The last FORGET sent: (epoch, below).
    forgotten: (u32, u32),
    snapshot: std::marker::PhantomData<S>,
}

impl<C: Clone + std::fmt::Debug, S> Coordinator<C, S> {
    pub fn new(id: NodeId, config: Config) -> Self {
        let limits = Limits {
            max_participants: config.max_participants,
            max_in_flight: config.max_in_flight,
            max_queued: config.max_queued_begins,
        };
        Coordinator {
            id,
            admission: Admission::new(id, limits),
            leader: Leader::new(id, config),
            one_phase: BTreeMap::new(),
            wide: false,
            wide_from: None,
            heard: BTreeMap::new(),
            unacknowledged: BTreeMap::new(),
            participants: BTreeSet::new(),
            forgotten: (0, 0),
            snapshot: std::marker::PhantomData,
        }
    }

    fn forgetting(&self) -> bool {
        self.leader.config().switches.forget
    }

    /// `txn` was decided here: with forgetting, wait for every participant to acknowledge.
    fn decided(
        &mut self,
        txn: TxnId,
        decision: Decision,
        participants: Vec<NodeId>,
        out: &mut Out<C, S>,
    ) {
        out.push(Command::Outcome { txn, decision });
        if !self.forgetting() {
            return;
        }
        self.unacknowledged.insert(txn, (decision, participants.into_iter().collect(), 0));
        self.set_decision_timer(txn, 0, out);
    }

    fn set_decision_timer(&self, txn: TxnId, attempt: u32, out: &mut Out<C, S>) {
        let config = self.leader.config();
        let after_us = backoff_us(config.ballot_timeout_us, config.ballot_timeout_max_us, attempt);
        out.push(Command::SetTimer { timer: Timer::DecisionRetry { txn, attempt }, after_us });
    }

    fn on_decision_retry(&mut self, txn: TxnId, attempt: u32, out: &mut Out<C, S>) {
        let Some((decision, waiting, current)) = self.unacknowledged.get_mut(&txn) else {
            return;
        };
        if *current != attempt {
            return; // a stale timer chain
        }
        *current += 1;
        let (decision, next) = (*decision, *current);
        for &to in waiting.iter() {
            out.push(Command::Send { to, msg: Msg::Decision { txn, decision } });
        }
        self.set_decision_timer(txn, next, out);
    }

    /// `from` learned `decision` for `txn`. A transaction still undecided here takes it (it was
    /// chosen: an acceptor led the ballot that chose it).
    fn on_ack(&mut self, from: NodeId, txn: TxnId, decision: Decision, out: &mut Out<C, S>) {
        if !self.forgetting() {
            return;
        }
        if let Some(participants) = self.leader.participants_of(txn).map(<[_]>::to_vec) {
            if let Some(new) = self.leader.learn(txn, decision, out) {
                self.decided(txn, new, participants, out);
            }
        }
        let Some((known, waiting, _)) = self.unacknowledged.get_mut(&txn) else { return };
        // Two decisions for one transaction would be a broken protocol; the simulator's
        // checkers catch that at its source. Here a contradicting ack only does not count.
        debug_assert_eq!(*known, decision, "{from} acknowledged {decision} for {txn}");
        if *known != decision {
            return;
        }
        waiting.remove(&from);
        if waiting.is_empty() {
            self.unacknowledged.remove(&txn);
            self.maybe_forget(out);
        }
    }

    /// Sends FORGET once the current epoch's mark — every id below it handed out, decided and
    /// learned by all its participants — has moved `forget_every` since the last one.
    fn maybe_forget(&mut self, out: &mut Out<C, S>) {
        if !self.forgetting() {
            return;
        }
        let Some((epoch, next)) = self.admission.next_id() else { return };
        let lowest = |map: Option<TxnId>| {
            map.filter(|t| t.coordinator == self.id && t.epoch == epoch).map(|t| t.sequence)
        };
        let start = TxnId { coordinator: self.id, epoch, sequence: 0 };
        let waiting = lowest(self.unacknowledged.range(start..).next().map(|(&t, _)| t));
        let one_phase = lowest(self.one_phase.range(start..).next().map(|(&t, _)| t));
        let low = [
            Some(next),
            waiting,
            one_phase,
            self.leader.lowest_round(self.id, epoch),
            self.admission.lowest_reserved(epoch),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("next is always there");
        let (last_epoch, last_below) = self.forgotten;
        let since = if last_epoch == epoch { last_below } else { 1 };
        if low < since.saturating_add(self.leader.config().forget_every) {
            return;
        }
        self.forgotten = (epoch, low);
        let msg = Msg::Forget { coordinator: self.id, epoch, below: low };
        let acceptors = self.leader.config().acceptors.clone();
        for to in self.participants.iter().copied().chain(acceptors) {
            out.push(Command::Send { to, msg: msg.clone() });
        }
    }

    /// Whether `txn` is below the mark this coordinator last sent.
    fn below_mark(&self, txn: TxnId) -> Option<Msg<C>> {
        let (epoch, below) = self.forgotten;
        let covered = txn.coordinator == self.id && txn.epoch == epoch && txn.sequence < below;
        covered.then_some(Msg::Forget { coordinator: self.id, epoch, below })
    }

    /// Transactions this coordinator is still working on: collecting a decision, or (switch
    /// `forget`) resending one until every participant acknowledges it. Admission counts them
    /// all, so a shard that never acknowledges holds back at most `max_in_flight` of them, as
    /// under 2PC, rather than an unbounded table.
    pub fn in_flight(&self) -> usize {
        self.leader.in_flight() + self.one_phase.len() + self.unacknowledged.len()
    }

    /// Whether `txn` is an id this coordinator has handed out.
    pub fn has_issued(&self, txn: concord_types::TxnId) -> bool {
        self.admission.has_issued(txn)
    }

    fn begin(&mut self, request: RequestId, branches: Vec<Branch<C>>, out: &mut Out<C, S>) {
        let epoch_record = |epoch| Record::EpochStarted { epoch };
        let in_flight = self.in_flight();
        let admitted = self.admission.admit(request, branches, in_flight, epoch_record, out);
        let Some((txn, branches)) = admitted else { return };
        self.start(txn, branches, out);
    }

    fn on_reservation(&mut self, reservation: crate::Reservation<C>, out: &mut Out<C, S>) {
        match reservation {
            crate::Reservation::Reserve { request } => {
                let epoch_record = |epoch| Record::EpochStarted { epoch };
                self.admission.reserve(request, epoch_record, out);
            }
            crate::Reservation::Begin { request, txn, branches } => {
                let in_flight = self.in_flight();
                let admitted =
                    self.admission.admit_reserved(request, txn, branches, in_flight, out);
                if let Some((txn, branches)) = admitted {
                    self.start(txn, branches, out);
                }
            }
            crate::Reservation::Release { txn } => self.admission.release(txn),
        }
    }

    fn start(&mut self, txn: TxnId, branches: Vec<Branch<C>>, out: &mut Out<C, S>) {
        if branches.len() == 1 && self.leader.config().switches.one_phase {
            let branch = branches.into_iter().next().expect("checked: exactly one branch");
            self.send_one_phase(txn, &branch, 0, out);
            self.one_phase.insert(txn, (branch, 0));
            return;
        }
        let participants: Vec<NodeId> = branches.iter().map(|b| b.node).collect();
        if self.forgetting() {
            self.participants.extend(participants.iter().copied());
        }
        let wide = self.wide;
        if wide && self.wide_from.is_none() {
            self.wide_from = Some(txn);
        }
        for b in branches {
            let participants = participants.clone();
            let msg = Msg::Prepare { txn, participants, writes: b.writes, wide };
            out.push(Command::Send { to: b.node, msg });
        }
        self.leader.begin(txn, participants, out);
    }

    /// A ballot 0 timed out: some acceptor of the normal case may be down. Go wide.
    fn ballot_zero_timed_out(&mut self) {
        if !self.wide {
            self.wide = true;
            self.wide_from = None;
        }
    }

    /// `from` answered a ballot-0 vote of `txn`. Once every acceptor has answered one of a
    /// transaction begun wide, all of them are up: back to the normal case.
    fn heard_from(&mut self, from: NodeId, txn: TxnId) {
        let newest = self.heard.entry(from).or_insert(txn);
        *newest = (*newest).max(txn);
        let Some(first_wide) = self.wide_from else { return };
        let acceptors = &self.leader.config().acceptors;
        if acceptors.iter().all(|a| self.heard.get(a).is_some_and(|&t| t >= first_wide)) {
            self.wide = false;
            self.wide_from = None;
        }
    }

    fn send_one_phase(&self, txn: TxnId, branch: &Branch<C>, attempt: u32, out: &mut Out<C, S>) {
        let msg = Msg::CommitOnePhase { txn, writes: branch.writes.clone() };
        out.push(Command::Send { to: branch.node, msg });
        let config = self.leader.config();
        let after_us = backoff_us(config.ballot_timeout_us, config.ballot_timeout_max_us, attempt);
        out.push(Command::SetTimer { timer: Timer::OnePhaseRetry { txn, attempt }, after_us });
    }

    fn on_one_phase_retry(&mut self, txn: TxnId, attempt: u32, out: &mut Out<C, S>) {
        let Some((branch, current)) = self.one_phase.get_mut(&txn) else { return };
        if *current != attempt {
            return; // a stale timer chain
        }
        *current += 1;
        let (branch, next) = (branch.clone(), *current);
        self.send_one_phase(txn, &branch, next, out);
    }

    fn on_one_phase_result(
        &mut self,
        from: NodeId,
        txn: TxnId,
        decision: Decision,
        out: &mut Out<C, S>,
    ) {
        if self.one_phase.get(&txn).is_some_and(|(branch, _)| branch.node == from) {
            self.one_phase.remove(&txn);
            out.push(Command::Outcome { txn, decision });
            self.maybe_forget(out);
        }
    }
}

impl<C: Clone + std::fmt::Debug, S: std::fmt::Debug> Core for Coordinator<C, S> {
    type Msg = Msg<C>;
    type Record = Record<C, S>;
    type Timer = Timer;
    type Change = C;

    fn handle(&mut self, input: Input<Msg<C>, Record<C, S>, Timer, C>, out: &mut Out<C, S>) {
        match input {
            Input::Restart { records } => {
                let highest = records
                    .iter()
                    .map(|r| match r {
                        Record::EpochStarted { epoch } => *epoch,
                        other => panic!("coordinator {} found {other:?} in its log", self.id),
                    })
                    .max();
                let epoch = self.admission.restart(highest);
                self.leader.restart();
                self.one_phase.clear();
                self.wide = false;
                self.wide_from = None;
                self.heard.clear();
                self.unacknowledged.clear();
                self.participants.clear();
                self.forgotten = (0, 0);
                out.push(Command::Persist {
                    record: Record::EpochStarted { epoch },
                    durability: Durability::Forced,
                });
            }
            Input::Persisted(Record::EpochStarted { epoch }) => {
                self.leader.epoch_durable(epoch);
                for (request, branches) in self.admission.epoch_durable(epoch) {
                    self.begin(request, branches, out);
                }
            }
            Input::Persisted(other) => panic!("coordinator {} never forces {other:?}", self.id),
            Input::Begin { request, branches } => self.begin(request, branches, out),
            Input::Reservation(reservation) => self.on_reservation(reservation, out),
            Input::Timer(Timer::OnePhaseRetry { txn, attempt }) => {
                self.on_one_phase_retry(txn, attempt, out);
            }
            Input::Timer(Timer::DecisionRetry { txn, attempt }) => {
                self.on_decision_retry(txn, attempt, out);
            }
            Input::Timer(timer) => {
                if let Timer::BallotZero { txn } = timer {
                    if self.leader.in_ballot_zero(txn) {
                        self.ballot_zero_timed_out();
                    }
                }
                let before = out.len();
                self.leader.on_timer(timer, out);
                debug_assert!(out[before..].iter().all(|c| !matches!(c, Command::Outcome { .. })));
            }
            Input::Message { from, msg } => match msg {
                Msg::Phase2b { txn, ballot, values } => {
                    if ballot == 0 {
                        self.heard_from(from, txn);
                    }
                    let participants = self.leader.participants_of(txn).map(<[_]>::to_vec);
                    if let Some(decision) = self.leader.on_phase2b(from, txn, ballot, values, out) {
                        let participants = participants.expect("a round decided here");
                        self.decided(txn, decision, participants, out);
                    }
                }
                Msg::Phase1b { txn, ballot, accepted } => {
                    self.leader.on_phase1b(from, txn, ballot, accepted, out);
                }
                Msg::Reject { txn, promised } => self.leader.on_reject(txn, promised),
                Msg::Inquire { txn, participants } => match self.below_mark(txn) {
                    // Finished and learned by every participant; this one lost a lazy abort.
                    Some(mark) => out.push(Command::Send { to: from, msg: mark }),
                    None => self.leader.on_inquire(from, txn, participants, out),
                },
                Msg::OnePhaseResult { txn, decision } => {
                    self.on_one_phase_result(from, txn, decision, out);
                }
                Msg::Ack { txn, decision } => self.on_ack(from, txn, decision, out),
                // An acceptor's answer to a ballot below a mark of ours — one from before our
                // restart, started by a late inquiry: nobody waits for those transactions.
                Msg::Forget { coordinator, epoch, below } if coordinator == self.id => {
                    let from = TxnId { coordinator, epoch, sequence: 0 };
                    self.leader.forget(&(from..TxnId { coordinator, epoch, sequence: below }));
                }
                Msg::Prepare { .. }
                | Msg::Phase2a { .. }
                | Msg::Phase1a { .. }
                | Msg::Decision { .. }
                | Msg::CommitOnePhase { .. }
                | Msg::Forget { .. }
                | Msg::Forgotten { .. } => {}
            },
        }
    }
}

impl<C: Clone + std::fmt::Debug, S: std::fmt::Debug> Checkpoint for Coordinator<C, S> {
    /// Only the epoch: the decisions are at the acceptors.
    fn live_records(&self) -> Vec<Record<C, S>> {
        self.admission.epoch().map(|epoch| Record::EpochStarted { epoch }).into_iter().collect()
    }
}
