//! The 2PC coordinator.
//!
//! Per transaction:
//!
//! ```text
//!  Begin ─► Collecting ──all YES──► ForcingCommit ──Persisted──► Committing ──all ACK──► (ENDED)
//!     │         │ NO / vote timeout                                   ▲ resend with backoff
//!     │         └──► send ABORT, forget (presumed abort: nothing logged)
//!     └─ one branch ─► OnePhase ──result──► (forgotten; nothing logged)
//!
//!  early acknowledgement (every branch writes, switch on):
//!  Begin ─► Collecting ──all YES──► tell the client COMMIT, send COMMIT, lazy COMMIT-DECIDED ─► Committing
//!               │ NO (forced at the voter) / a silent branch refuses when asked ─► send ABORT, forget
//!               └ vote timeout ─► ask the silent branches (INQUIRE), again every vote timeout
//! ```

use std::collections::{BTreeMap, BTreeSet};

use concord_types::{Decision, NodeId, RequestId, TxnId, Vote, Write};

use super::{Config, Msg, Record, Timer};
use crate::admission::{Admission, Limits};
use crate::backoff_us;
use crate::{Branch, Change, Command, Core, Durability, Input, Reservation};

type Out<C, S> = Vec<Command<Msg<C>, Record<C, S>, Timer>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Txn<C> {
    Collecting {
        branches: Vec<Branch<C>>,
        votes: Vec<Option<Vote>>,
        /// The prepares decide the outcome (the module docs of `two_phase`).
        early_ack: bool,
    },
    /// The commit decision is written but not yet durable: nothing may be sent.
    ForcingCommit {
        participants: Vec<NodeId>,
    },
    Committing {
        pending: Vec<NodeId>,
        attempt: u32,
    },
    OnePhase {
        branch: Branch<C>,
        attempt: u32,
    },
}

/// `C` is a branch's change and `S` a participant's snapshot (only so that one record type
/// serves both roles); the simulator's deltas by default.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Coordinator<C = Vec<Write>, S = Vec<Write>> {
    id: NodeId,
    config: Config,
    admission: Admission<C>,
    txns: BTreeMap<TxnId, Txn<C>>,
    /// The first epoch of this incarnation: ids below it were issued before the last restart,
    /// and of those this coordinator knows only what its log kept.
    first_epoch: Option<u32>,
    /// Every node that has been a branch of this incarnation's transactions: who hears FORGET.
    participants: BTreeSet<NodeId>,
    /// The last FORGET sent: (epoch, below).
    forgotten: (u32, u32),
    snapshot: std::marker::PhantomData<S>,
}

impl<C: Change, S: std::fmt::Debug> Coordinator<C, S> {
    pub fn new(id: NodeId, config: Config) -> Self {
        let limits = Limits {
            max_participants: config.max_participants,
            max_in_flight: config.max_in_flight,
            max_queued: config.max_queued_begins,
        };
        Coordinator {
            id,
            admission: Admission::new(id, limits),
            config,
            txns: BTreeMap::new(),
            first_epoch: None,
            participants: BTreeSet::new(),
            forgotten: (0, 0),
            snapshot: std::marker::PhantomData,
        }
    }

    /// Transactions in flight (for drivers' status pages).
    pub fn in_flight(&self) -> usize {
        self.txns.len()
    }

    /// The epoch this incarnation issues ids in (`None` before its first restart).
    pub fn epoch(&self) -> Option<u32> {
        self.admission.epoch()
    }

    /// Whether `txn` is an id this coordinator has handed out (in this or an earlier epoch).
    pub fn has_issued(&self, txn: TxnId) -> bool {
        self.admission.has_issued(txn)
    }

    /// Whether `txn` is still running here (collecting votes, or committing until every ack).
    pub fn is_running(&self, txn: TxnId) -> bool {
        self.txns.contains_key(&txn)
    }

    fn restart(&mut self, records: Vec<Record<C, S>>, out: &mut Out<C, S>) {
        self.txns.clear();
        self.participants.clear();
        self.forgotten = (0, 0);
        let mut highest_epoch = None;
        let mut decided: BTreeMap<TxnId, Vec<NodeId>> = BTreeMap::new();
        for record in records {
            match record {
                Record::EpochStarted { epoch } => highest_epoch = highest_epoch.max(Some(epoch)),
                Record::CommitDecided { txn, participants } => {
                    decided.insert(txn, participants);
                }
                Record::Ended { txn } => {
                    decided.remove(&txn);
                }
                other => panic!(
                    "coordinator {} found a participant record in its log: {other:?}",
                    self.id
                ),
            }
        }
        // Re-drive every logged decision; everything undecided is aborted by presumption.
        for (txn, participants) in decided {
            for &to in &participants {
                out.push(Command::Send {
                    to,
                    msg: Msg::Decision { txn, decision: Decision::Commit },
                });
            }
            self.set_resend_timer(txn, 0, out);
            self.txns.insert(txn, Txn::Committing { pending: participants, attempt: 0 });
        }
        let epoch = self.admission.restart(highest_epoch);
        self.first_epoch = Some(epoch);
        out.push(Command::Persist {
            record: Record::EpochStarted { epoch },
            durability: Durability::Forced,
        });
    }

    fn begin(&mut self, request: RequestId, branches: Vec<Branch<C>>, out: &mut Out<C, S>) {
        let epoch_record = |epoch| Record::EpochStarted { epoch };
        let admitted = self.admission.admit(request, branches, self.txns.len(), epoch_record, out);
        if let Some((txn, branches)) = admitted {
            self.start(txn, branches, out);
        }
    }

    fn on_reservation(&mut self, reservation: Reservation<C>, out: &mut Out<C, S>) {
        match reservation {
            Reservation::Reserve { request } => {
                let epoch_record = |epoch| Record::EpochStarted { epoch };
                self.admission.reserve(request, epoch_record, out);
            }
            Reservation::Begin { request, txn, branches } => {
                let in_flight = self.txns.len();
                let admitted =
                    self.admission.admit_reserved(request, txn, branches, in_flight, out);
                if let Some((txn, branches)) = admitted {
                    self.start(txn, branches, out);
                }
            }
            Reservation::Release { txn } => self.admission.release(txn),
        }
    }

    /// Sends FORGET once the current epoch's low-water mark — every id below it handed out
    /// and no longer running — has moved `forget_every` transactions since the last one.
    fn maybe_forget(&mut self, out: &mut Out<C, S>) {
        if !self.config.switches.forget {
            return;
        }
        let Some((epoch, next)) = self.admission.next_id() else { return };
        let epoch_start = TxnId { coordinator: self.id, epoch, sequence: 0 };
        let running = self
            .txns
            .range(epoch_start..)
            .next()
            .filter(|(t, _)| t.epoch == epoch)
            .map_or(next, |(t, _)| t.sequence);
        // A reserved id has not finished either: it may still run (and its PREPARE must not
        // meet a participant that already forgot it).
        let low = self.admission.lowest_reserved(epoch).map_or(running, |r| r.min(running));
        // Sequences start at 1: nothing of a new epoch has been forgotten yet.
        let (last_epoch, last_below) = self.forgotten;
        let since = if last_epoch == epoch { last_below } else { 1 };
        if low < since.saturating_add(self.config.forget_every) {
            return;
        }
        self.forgotten = (epoch, low);
        for &to in &self.participants {
            out.push(Command::Send { to, msg: Msg::Forget { epoch, below: low } });
        }
    }

    fn start(&mut self, txn: TxnId, branches: Vec<Branch<C>>, out: &mut Out<C, S>) {
        self.participants.extend(branches.iter().map(|b| b.node));
        if branches.len() == 1 && self.config.switches.one_phase {
            let branch = branches.into_iter().next().expect("checked: exactly one branch");
            out.push(Command::Send {
                to: branch.node,
                msg: Msg::CommitOnePhase { txn, writes: branch.writes.clone() },
            });
            out.push(Command::SetTimer {
                timer: Timer::OnePhaseRetry { txn, attempt: 0 },
                after_us: self.config.resend_base_us,
            });
            self.txns.insert(txn, Txn::OnePhase { branch, attempt: 0 });
            return;
        }
        let peers: Vec<NodeId> =
            branches.iter().filter(|b| !b.writes.is_read_only()).map(|b| b.node).collect();
        // Early acknowledgement needs every branch among the peers: a read-only branch forgets
        // the transaction after voting, so its vote could not be recovered from the branches.
        let early_ack =
            self.config.switches.early_ack && branches.len() >= 2 && peers.len() == branches.len();
        for b in &branches {
            let msg =
                Msg::Prepare { txn, peers: peers.clone(), writes: b.writes.clone(), early_ack };
            out.push(Command::Send { to: b.node, msg });
        }
        out.push(Command::SetTimer {
            timer: Timer::VoteTimeout { txn },
            after_us: self.config.vote_timeout_us,
        });
        let votes = vec![None; branches.len()];
        self.txns.insert(txn, Txn::Collecting { branches, votes, early_ack });
    }

    fn on_vote(&mut self, from: NodeId, txn: TxnId, vote: Vote, out: &mut Out<C, S>) {
        let Some(Txn::Collecting { branches, votes, early_ack }) = self.txns.get_mut(&txn) else {
            if !self.txns.contains_key(&txn) && vote == Vote::Yes && self.may_presume_abort(txn) {
                // Presumed abort: a YES for a transaction we have no record of gets ABORT, so
                // the voter need not wait for its inquiry timer.
                out.push(Command::Send {
                    to: from,
                    msg: Msg::Decision { txn, decision: Decision::Abort },
                });
            }
            return;
        };
        let Some(index) = branches.iter().position(|b| b.node == from) else { return };
        votes[index] = Some(vote);
        if vote == Vote::No {
            self.abort_collecting(txn, out);
            return;
        }
        if votes.iter().any(Option::is_none) {
            return;
        }
        let early_ack = *early_ack;
        let participants: Vec<NodeId> = branches
            .iter()
            .zip(votes.iter())
            .filter(|(_, v)| **v == Some(Vote::Yes))
            .map(|(b, _)| b.node)
            .collect();
        if early_ack {
            // Every prepare is durable: the transaction is committed, whatever crashes now.
            self.commit_early(txn, participants, out);
            return;
        }
        if participants.is_empty() {
            // Every branch was read-only: nothing to decide durably, nobody to tell.
            self.txns.remove(&txn);
            out.push(Command::Outcome { txn, decision: Decision::Commit });
            return;
        }
        out.push(Command::Persist {
            record: Record::CommitDecided { txn, participants: participants.clone() },
            durability: Durability::Forced,
        });
        self.txns.insert(txn, Txn::ForcingCommit { participants });
    }

    /// Early acknowledgement: the client hears COMMIT now, the participants at once, and the
    /// decision record rides on a later sync — it only saves the participants asking each other
    /// after a coordinator crash; their prepare records already decide the outcome.
    fn commit_early(&mut self, txn: TxnId, participants: Vec<NodeId>, out: &mut Out<C, S>) {
        out.push(Command::Outcome { txn, decision: Decision::Commit });
        for &to in &participants {
            out.push(Command::Send { to, msg: Msg::Decision { txn, decision: Decision::Commit } });
        }
        out.push(Command::Persist {
            record: Record::CommitDecided { txn, participants: participants.clone() },
            durability: Durability::Lazy,
        });
        self.set_resend_timer(txn, 0, out);
        self.txns.insert(txn, Txn::Committing { pending: participants, attempt: 0 });
    }

    /// Whether a YES for a transaction this coordinator has no record of may be answered ABORT
    /// at once: only if this incarnation issued it, so it was aborted or has ended. One issued
    /// before the last restart may have run with early acknowledgement — committed by its
    /// prepares, its lazy decision record lost — and whether it did is not in the log, whatever
    /// the switch says now (it may have been on before the restart). A classic voter loses
    /// little: its INQUIRE is answered by presumption (`on_inquire`) one inquiry interval later.
    fn may_presume_abort(&self, txn: TxnId) -> bool {
        self.first_epoch.is_some_and(|e| txn.epoch >= e)
    }

    /// Early acknowledgement, on a vote timeout: ask every branch that has not voted. A branch
    /// that never prepared refuses durably and answers ABORT; a prepared one repeats YES.
    fn ask_silent_branches(&self, txn: TxnId, out: &mut Out<C, S>) {
        let Some(Txn::Collecting { branches, votes, .. }) = self.txns.get(&txn) else { return };
        for (b, v) in branches.iter().zip(votes.iter()) {
            if v.is_none() {
                out.push(Command::Send { to: b.node, msg: Msg::Inquire { txn } });
            }
        }
        out.push(Command::SetTimer {
            timer: Timer::VoteTimeout { txn },
            after_us: self.config.vote_timeout_us,
        });
    }

    /// A branch answered the coordinator's inquiry with ABORT: it refused durably (early
    /// acknowledgement), so the transaction can never have every prepare.
    fn on_branch_refused(&mut self, from: NodeId, txn: TxnId, out: &mut Out<C, S>) {
        let Some(Txn::Collecting { branches, votes, early_ack: true }) = self.txns.get_mut(&txn)
        else {
            return;
        };
        if let Some(i) = branches.iter().position(|b| b.node == from) {
            votes[i] = Some(Vote::No); // it has aborted already: no ABORT for it
            self.abort_collecting(txn, out);
        }
    }

    /// Aborts a transaction still collecting votes: tell every branch that may be prepared.
    fn abort_collecting(&mut self, txn: TxnId, out: &mut Out<C, S>) {
        let Some(Txn::Collecting { branches, votes, .. }) = self.txns.remove(&txn) else {
            unreachable!("abort_collecting is called only for collecting transactions")
        };
        for (b, v) in branches.iter().zip(votes.iter()) {
            if !matches!(v, Some(Vote::No | Vote::ReadOnly)) {
                out.push(Command::Send {
                    to: b.node,
                    msg: Msg::Decision { txn, decision: Decision::Abort },
                });
            }
        }
        out.push(Command::Outcome { txn, decision: Decision::Abort });
    }

    fn on_commit_durable(&mut self, txn: TxnId, out: &mut Out<C, S>) {
        let Some(Txn::ForcingCommit { participants }) = self.txns.remove(&txn) else {
            panic!("commit decision for {txn} became durable, but it was not being forced");
        };
        for &to in &participants {
            out.push(Command::Send { to, msg: Msg::Decision { txn, decision: Decision::Commit } });
        }
        out.push(Command::Outcome { txn, decision: Decision::Commit });
        self.set_resend_timer(txn, 0, out);
        self.txns.insert(txn, Txn::Committing { pending: participants, attempt: 0 });
    }

    fn set_resend_timer(&self, txn: TxnId, attempt: u32, out: &mut Out<C, S>) {
        out.push(Command::SetTimer {
            timer: Timer::ResendCommit { txn, attempt },
            after_us: backoff_us(self.config.resend_base_us, self.config.resend_max_us, attempt),
        });
    }

    fn on_ack(&mut self, from: NodeId, txn: TxnId, out: &mut Out<C, S>) {
        let Some(Txn::Committing { pending, .. }) = self.txns.get_mut(&txn) else { return };
        pending.retain(|&p| p != from);
        if pending.is_empty() {
            self.txns.remove(&txn);
            out.push(Command::Persist {
                record: Record::Ended { txn },
                durability: Durability::Lazy,
            });
        }
    }

    /// What an INQUIRE about `txn` is answered now: COMMIT once the decision is durable, ABORT
    /// for a transaction with no record (presumed abort), nothing while it is undecided (the
    /// participant asks again later) or when it is not this coordinator's. Drivers that speak
    /// for participants which never ask (databases' prepared branches) ask this on their behalf.
    pub fn inquiry_answer(&self, txn: TxnId) -> Option<Decision> {
        if txn.coordinator != self.id {
            return None;
        }
        match self.txns.get(&txn) {
            Some(Txn::Committing { .. }) => Some(Decision::Commit),
            // Not decided yet (or decided but not durable).
            Some(Txn::Collecting { .. } | Txn::ForcingCommit { .. } | Txn::OnePhase { .. }) => None,
            // Presumed abort. Safe under early acknowledgement too: its participants never ask
            // the coordinator (they ask each other), so whoever asks is in a classic transaction.
            None => Some(Decision::Abort),
        }
    }

    fn on_inquire(&self, from: NodeId, txn: TxnId, out: &mut Out<C, S>) {
        if let Some(decision) = self.inquiry_answer(txn) {
            out.push(Command::Send { to: from, msg: Msg::Decision { txn, decision } });
        }
    }

    fn on_one_phase_result(
        &mut self,
        from: NodeId,
        txn: TxnId,
        decision: Decision,
        out: &mut Out<C, S>,
    ) {
        if matches!(self.txns.get(&txn), Some(Txn::OnePhase { branch, .. }) if branch.node == from)
        {
            self.txns.remove(&txn);
            out.push(Command::Outcome { txn, decision });
        }
    }

    fn on_timer(&mut self, timer: Timer, out: &mut Out<C, S>) {
        match timer {
            Timer::VoteTimeout { txn } => match self.txns.get(&txn) {
                Some(Txn::Collecting { early_ack: true, .. }) => {
                    self.ask_silent_branches(txn, out);
                }
                Some(Txn::Collecting { early_ack: false, .. }) => self.abort_collecting(txn, out),
                _ => {}
            },
            Timer::ResendCommit { txn, attempt } => {
                let Some(Txn::Committing { pending, attempt: current }) = self.txns.get_mut(&txn)
                else {
                    return;
                };
                if *current != attempt {
                    return;
                }
                *current += 1;
                let next = *current;
                for &to in pending.iter() {
                    out.push(Command::Send {
                        to,
                        msg: Msg::Decision { txn, decision: Decision::Commit },
                    });
                }
                self.set_resend_timer(txn, next, out);
            }
            Timer::OnePhaseRetry { txn, attempt } => {
                let Some(Txn::OnePhase { branch, attempt: current }) = self.txns.get_mut(&txn)
                else {
                    return;
                };
                if *current != attempt {
                    return;
                }
                *current += 1;
                out.push(Command::Send {
                    to: branch.node,
                    msg: Msg::CommitOnePhase { txn, writes: branch.writes.clone() },
                });
                out.push(Command::SetTimer {
                    timer: Timer::OnePhaseRetry { txn, attempt: *current },
                    after_us: backoff_us(
                        self.config.resend_base_us,
                        self.config.resend_max_us,
                        *current,
                    ),
                });
            }
            Timer::Inquire { .. } => {}
        }
    }

    fn on_persisted(&mut self, record: Record<C, S>, out: &mut Out<C, S>) {
        match record {
            Record::EpochStarted { epoch } => {
                for (request, branches) in self.admission.epoch_durable(epoch) {
                    self.begin(request, branches, out);
                }
            }
            Record::CommitDecided { txn, .. } => self.on_commit_durable(txn, out),
            other => panic!(
                "coordinator {} was told {other:?} is durable; it never forces that",
                self.id
            ),
        }
    }
}

impl<C: Change, S: std::fmt::Debug> crate::Checkpoint for Coordinator<C, S> {
    /// The current epoch, and every commit decision not yet acknowledged by all participants.
    /// Everything else is presumed aborted or finished.
    fn live_records(&self) -> Vec<Record<C, S>> {
        let mut live: Vec<Record<C, S>> = self
            .admission
            .epoch()
            .map(|epoch| Record::EpochStarted { epoch })
            .into_iter()
            .collect();
        for (&txn, state) in &self.txns {
            match state {
                Txn::ForcingCommit { participants } => {
                    live.push(Record::CommitDecided { txn, participants: participants.clone() });
                }
                Txn::Committing { pending, .. } => {
                    live.push(Record::CommitDecided { txn, participants: pending.clone() });
                }
                Txn::Collecting { .. } | Txn::OnePhase { .. } => {}
            }
        }
        live
    }
}

impl<C: Change, S: std::fmt::Debug> Core for Coordinator<C, S> {
    type Msg = Msg<C>;
    type Record = Record<C, S>;
    type Timer = Timer;
    type Change = C;

    fn handle(&mut self, input: Input<Msg<C>, Record<C, S>, Timer, C>, out: &mut Out<C, S>) {
        match input {
            Input::Restart { records } => self.restart(records, out),
            Input::Begin { request, branches } => self.begin(request, branches, out),
            Input::Reservation(reservation) => self.on_reservation(reservation, out),
            Input::Persisted(record) => self.on_persisted(record, out),
            Input::Timer(timer) => self.on_timer(timer, out),
            Input::Message { from, msg } => match msg {
                Msg::Vote { txn, vote } => self.on_vote(from, txn, vote, out),
                Msg::Ack { txn } => self.on_ack(from, txn, out),
                Msg::Inquire { txn } => self.on_inquire(from, txn, out),
                Msg::OnePhaseResult { txn, decision } => {
                    self.on_one_phase_result(from, txn, decision, out);
                }
                // Answers to the inquiry of an early-acknowledged transaction's silent branches.
                Msg::Decision { txn, decision: Decision::Abort } => {
                    self.on_branch_refused(from, txn, out);
                }
                Msg::Decision { txn, decision: Decision::Commit } => {
                    // The branch learned the outcome from its peers: it was prepared, so this
                    // stands for its lost YES.
                    if matches!(self.txns.get(&txn), Some(Txn::Collecting { early_ack: true, .. }))
                    {
                        self.on_vote(from, txn, Vote::Yes, out);
                    }
                }
                // Participant-bound messages reaching a coordinator are ignored. FORGOTTEN answers
                // a status query (the driver's); a transaction still running here is never
                // below the mark, so no running transaction can be meant.
                Msg::Prepare { .. }
                | Msg::CommitOnePhase { .. }
                | Msg::Forget { .. }
                | Msg::Forgotten { .. } => {}
            },
        }
        self.maybe_forget(out);
    }
}
