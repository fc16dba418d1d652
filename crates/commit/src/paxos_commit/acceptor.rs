//! An acceptor: keeps every instance of a transaction (one per participant) and answers ballots.
//! It is also a leader candidate, so a transaction can finish with its coordinator gone.
//!
//! Everything it promises or accepts is durable before it says so. Ballot-0 acceptances are
//! bundled: each instance's is written lazily as it arrives, and the one that completes the set
//! (or any `Aborted`) is forced — covering the earlier ones — before one 2b carries them all.
//!
//! With switch `forget`, a coordinator's FORGET drops every instance below its mark, and the
//! acceptor then ignores every message about them: for those instances it is an acceptor that
//! stopped, which Paxos tolerates (module docs, "Forgetting").

use std::collections::BTreeMap;

use concord_types::{NodeId, TxnId, Write};

use super::leader::Leader;
use super::marks::{remove_range, Marks};
use super::{Ballot, Config, Msg, Record, Timer, Value};
use crate::{Checkpoint, Command, Core, Durability, Input};

type Out<C, S> = Vec<Command<Msg<C>, Record<C, S>, Timer>>;

/// `C` is the branch change the messages carry (an acceptor never looks at it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Acceptor<C = Vec<Write>, S = Vec<Write>> {
    id: NodeId,
    config: Config,
    /// This start's epoch (0 before the first restart); a checkpoint keeps it.
    epoch: u32,
    promised: BTreeMap<TxnId, Ballot>,
    accepted: BTreeMap<TxnId, BTreeMap<NodeId, (Ballot, Value)>>,
    participants: BTreeMap<TxnId, Vec<NodeId>>,
    /// Replies waiting for their record to be durable: (txn, ballot) → leader.
    awaiting_promise: BTreeMap<(TxnId, Ballot), NodeId>,
    awaiting_accept: BTreeMap<(TxnId, Ballot), NodeId>,
    /// Coordinators' forget marks: everything below is dropped and ignored.
    forgotten: Marks,
    leader: Leader,
    change: std::marker::PhantomData<(C, S)>,
}

impl<C: Clone + std::fmt::Debug, S: std::fmt::Debug> Acceptor<C, S> {
    pub fn new(id: NodeId, config: Config) -> Self {
        Acceptor {
            id,
            leader: Leader::new(id, config.clone()),
            config,
            epoch: 0,
            promised: BTreeMap::new(),
            accepted: BTreeMap::new(),
            participants: BTreeMap::new(),
            awaiting_promise: BTreeMap::new(),
            awaiting_accept: BTreeMap::new(),
            forgotten: Marks::default(),
            change: std::marker::PhantomData,
        }
    }

    /// A coordinator's FORGET: every participant below the mark has learned its outcome, so
    /// no ballot will be needed for those transactions again.
    /// Returns whether the mark moved.
    fn on_forget(&mut self, coordinator: NodeId, epoch: u32, below: u32) -> bool {
        let Some(range) = self.forgotten.raise(coordinator, epoch, below) else { return false };
        remove_range(&mut self.promised, &range);
        remove_range(&mut self.accepted, &range);
        remove_range(&mut self.participants, &range);
        self.awaiting_promise.retain(|(t, _), _| !range.contains(t));
        self.awaiting_accept.retain(|(t, _), _| !range.contains(t));
        self.leader.forget(&range);
        true
    }

    /// Transactions whose instances this acceptor keeps (below a forget mark, none).
    pub fn transactions_remembered(&self) -> usize {
        self.promised.len()
    }

    fn promised(&self, txn: TxnId) -> Ballot {
        self.promised.get(&txn).copied().unwrap_or(0)
    }

    fn restart(&mut self, records: Vec<Record<C, S>>, out: &mut Out<C, S>) {
        *self = Acceptor::new(self.id, self.config.clone());
        let mut highest_epoch = 0;
        for record in records {
            match record {
                Record::EpochStarted { epoch } => highest_epoch = highest_epoch.max(epoch),
                // Below a mark: dropped (a mark in the log is followed only by what it allows).
                Record::Promised { txn, .. } | Record::Accepted { txn, .. }
                    if self.forgotten.covers(txn) => {}
                Record::Promised { txn, ballot } => {
                    let p = self.promised.entry(txn).or_insert(0);
                    *p = (*p).max(ballot);
                }
                Record::Accepted { txn, ballot, values, participants } => {
                    self.accept(txn, ballot, &values, participants);
                }
                Record::Forgotten { coordinator, epoch, below } => {
                    self.on_forget(coordinator, epoch, below);
                }
                other => {
                    panic!("acceptor {} found a participant record in its log: {other:?}", self.id)
                }
            }
        }
        let epoch = highest_epoch.checked_add(1).expect("epoch space exhausted");
        self.epoch = epoch;
        out.push(Command::Persist {
            record: Record::EpochStarted { epoch },
            durability: Durability::Forced,
        });
    }

    fn accept(
        &mut self,
        txn: TxnId,
        ballot: Ballot,
        values: &[(NodeId, Value)],
        participants: Vec<NodeId>,
    ) {
        let promised = self.promised.entry(txn).or_insert(0);
        *promised = (*promised).max(ballot);
        let instances = self.accepted.entry(txn).or_default();
        for &(instance, value) in values {
            instances.insert(instance, (ballot, value));
        }
        self.participants.entry(txn).or_insert(participants);
    }

    fn on_phase2a(
        &mut self,
        txn: TxnId,
        ballot: Ballot,
        values: Vec<(NodeId, Value)>,
        leader: NodeId,
        participants: Vec<NodeId>,
        out: &mut Out<C, S>,
    ) {
        let promised = self.promised(txn);
        if ballot < promised {
            if ballot > 0 {
                out.push(Command::Send { to: leader, msg: Msg::Reject { txn, promised } });
            }
            return;
        }
        if ballot == 0 {
            // A ballot-0 value never replaces one accepted at a higher ballot.
            let higher = self.accepted.get(&txn).is_some_and(|a| a.values().any(|(b, _)| *b > 0));
            if higher {
                return;
            }
        }
        self.accept(txn, ballot, &values, participants.clone());
        let complete = ballot > 0
            || values.iter().any(|(_, v)| *v == Value::Aborted)
            || self.participants[&txn].iter().all(|p| self.accepted[&txn].contains_key(p));
        let durability = if complete { Durability::Forced } else { Durability::Lazy };
        out.push(Command::Persist {
            record: Record::Accepted { txn, ballot, values, participants },
            durability,
        });
        if complete {
            let leader = if ballot == 0 { txn.coordinator } else { leader };
            self.awaiting_accept.insert((txn, ballot), leader);
        }
    }

    fn on_accept_durable(&mut self, txn: TxnId, ballot: Ballot, out: &mut Out<C, S>) {
        let Some(leader) = self.awaiting_accept.remove(&(txn, ballot)) else { return };
        let values: Vec<(NodeId, Value)> = self.accepted[&txn]
            .iter()
            .filter(|(_, (b, _))| *b == ballot)
            .map(|(&instance, &(_, value))| (instance, value))
            .collect();
        out.push(Command::Send { to: leader, msg: Msg::Phase2b { txn, ballot, values } });
    }

    fn on_phase1a(&mut self, txn: TxnId, ballot: Ballot, leader: NodeId, out: &mut Out<C, S>) {
        let promised = self.promised(txn);
        if ballot <= promised {
            out.push(Command::Send { to: leader, msg: Msg::Reject { txn, promised } });
            return;
        }
        self.promised.insert(txn, ballot);
        out.push(Command::Persist {
            record: Record::Promised { txn, ballot },
            durability: Durability::Forced,
        });
        self.awaiting_promise.insert((txn, ballot), leader);
    }

    fn on_promise_durable(&mut self, txn: TxnId, ballot: Ballot, out: &mut Out<C, S>) {
        let Some(leader) = self.awaiting_promise.remove(&(txn, ballot)) else { return };
        let accepted = self
            .accepted
            .get(&txn)
            .map(|a| a.iter().map(|(&instance, &(b, v))| (instance, b, v)).collect())
            .unwrap_or_default();
        out.push(Command::Send { to: leader, msg: Msg::Phase1b { txn, ballot, accepted } });
    }
}

impl<C: Clone + std::fmt::Debug, S: std::fmt::Debug> Core for Acceptor<C, S> {
    type Msg = Msg<C>;
    type Record = Record<C, S>;
    type Timer = Timer;
    type Change = C;

    fn handle(&mut self, input: Input<Msg<C>, Record<C, S>, Timer, C>, out: &mut Out<C, S>) {
        match input {
            Input::Restart { records } => self.restart(records, out),
            Input::Persisted(Record::EpochStarted { epoch }) => self.leader.epoch_durable(epoch),
            Input::Persisted(Record::Promised { txn, ballot }) => {
                self.on_promise_durable(txn, ballot, out);
            }
            Input::Persisted(Record::Accepted { txn, ballot, .. }) => {
                self.on_accept_durable(txn, ballot, out);
            }
            Input::Persisted(other) => panic!("acceptor {} never forces {other:?}", self.id),
            Input::Timer(timer) => self.leader.on_timer(timer, out),
            Input::Begin { .. } | Input::Reservation(_) => {}
            // Below a forget mark: nothing to do, nobody waiting. Whoever still asks — a branch
            // that lost its lazy abort (INQUIRE), a leader whose ballot started before the mark
            // or after its own restart (1a, 2a) — is answered with the mark, so it stops too.
            Input::Message { from, msg }
                if msg_txn(&msg).is_some_and(|t| self.forgotten.covers(t)) =>
            {
                if let Msg::Inquire { txn, .. }
                | Msg::Phase1a { txn, .. }
                | Msg::Phase2a { txn, .. } = msg
                {
                    if let Some((coordinator, epoch, below)) = self.forgotten.mark_of(txn) {
                        let msg = Msg::Forget { coordinator, epoch, below };
                        out.push(Command::Send { to: from, msg });
                    }
                }
            }
            Input::Message { from, msg } => match msg {
                Msg::Phase2a { txn, ballot, values, leader, participants } => {
                    self.on_phase2a(txn, ballot, values, leader, participants, out);
                }
                Msg::Phase1a { txn, ballot, leader } => self.on_phase1a(txn, ballot, leader, out),
                // Leader-bound messages: this acceptor is leading a ballot.
                Msg::Phase1b { txn, ballot, accepted } => {
                    self.leader.on_phase1b(from, txn, ballot, accepted, out);
                }
                Msg::Phase2b { txn, ballot, values } => {
                    self.leader.on_phase2b(from, txn, ballot, values, out);
                }
                Msg::Reject { txn, promised } => self.leader.on_reject(txn, promised),
                Msg::Inquire { txn, participants } => {
                    self.leader.on_inquire(from, txn, participants, out);
                }
                Msg::Forget { coordinator, epoch, below } => {
                    if self.on_forget(coordinator, epoch, below) {
                        // Lazy: a crash that loses it replays instances — remembering is safe.
                        out.push(Command::Persist {
                            record: Record::Forgotten { coordinator, epoch, below },
                            durability: Durability::Lazy,
                        });
                    }
                }
                Msg::Prepare { .. }
                | Msg::Decision { .. }
                | Msg::CommitOnePhase { .. }
                | Msg::OnePhaseResult { .. }
                | Msg::Ack { .. }
                | Msg::Forgotten { .. } => {}
            },
        }
    }
}

impl<C: Clone + std::fmt::Debug, S: std::fmt::Debug> Checkpoint for Acceptor<C, S> {
    /// The epoch, the forget marks, and for every transaction above them its promise and what
    /// it accepted at which ballot.
    fn live_records(&self) -> Vec<Record<C, S>> {
        let mut live = Vec::new();
        if self.epoch > 0 {
            live.push(Record::EpochStarted { epoch: self.epoch });
        }
        live.extend(self.forgotten.iter().map(|(coordinator, epoch, below)| Record::Forgotten {
            coordinator,
            epoch,
            below,
        }));
        for (&txn, &promised) in &self.promised {
            let participants = self.participants.get(&txn).cloned().unwrap_or_default();
            let mut by_ballot: BTreeMap<Ballot, Vec<(NodeId, Value)>> = BTreeMap::new();
            for (&instance, &(ballot, value)) in self.accepted.get(&txn).into_iter().flatten() {
                by_ballot.entry(ballot).or_default().push((instance, value));
            }
            let highest_accepted = by_ballot.keys().next_back().copied().unwrap_or(0);
            for (ballot, values) in by_ballot {
                let participants = participants.clone();
                live.push(Record::Accepted { txn, ballot, values, participants });
            }
            if promised > highest_accepted {
                live.push(Record::Promised { txn, ballot: promised });
            }
        }
        live
    }
}

/// The transaction a message is about (`None` for FORGET, which is about many).
fn msg_txn<C>(msg: &Msg<C>) -> Option<TxnId> {
    match *msg {
        Msg::Prepare { txn, .. }
        | Msg::Phase2a { txn, .. }
        | Msg::Phase2b { txn, .. }
        | Msg::Phase1a { txn, .. }
        | Msg::Phase1b { txn, .. }
        | Msg::Reject { txn, .. }
        | Msg::Decision { txn, .. }
        | Msg::Inquire { txn, .. }
        | Msg::CommitOnePhase { txn, .. }
        | Msg::OnePhaseResult { txn, .. }
        | Msg::Ack { txn, .. }
        | Msg::Forgotten { txn } => Some(txn),
        Msg::Forget { .. } => None,
    }
}
