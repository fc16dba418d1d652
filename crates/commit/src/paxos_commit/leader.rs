//! The leader role: collects ballot-0 votes, and runs full Paxos for undecided instances.
//! The coordinator runs it for its own transactions; every acceptor runs it as a candidate.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use concord_types::{Decision, NodeId, TxnId};

use super::marks::remove_range;
use super::{Ballot, Config, Msg, Record, Timer, Value};
use crate::backoff_us;
use crate::Command;

type Out<C, S> = Vec<Command<Msg<C>, Record<C, S>, Timer>>;

/// Decisions remembered to answer inquiries without a new ballot. Forgetting is safe: the
/// decision is chosen at the acceptors, and a new ballot finds it again.
const REMEMBERED_DECISIONS: usize = 4_096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Round {
    /// The initial leader waits for participants' ballot-0 votes via the acceptors.
    BallotZero { participants: Vec<NodeId>, reports: BTreeMap<NodeId, BTreeMap<NodeId, Value>> },
    Phase1 {
        ballot: Ballot,
        participants: Vec<NodeId>,
        promises: BTreeMap<NodeId, Vec<(NodeId, Ballot, Value)>>,
        attempt: u32,
    },
    Phase2 {
        ballot: Ballot,
        participants: Vec<NodeId>,
        values: Vec<(NodeId, Value)>,
        accepted_by: BTreeSet<NodeId>,
        attempt: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Leader {
    id: NodeId,
    config: Config,
    /// This node's durable epoch; no ballot is issued before it is durable.
    epoch: Option<u32>,
    rounds: BTreeMap<TxnId, Round>,
    decided: BTreeMap<TxnId, Decision>,
    decided_order: VecDeque<TxnId>,
    highest_seen: BTreeMap<TxnId, Ballot>,
}

impl Leader {
    pub(super) fn config(&self) -> &Config {
        &self.config
    }

    pub(super) fn new(id: NodeId, config: Config) -> Self {
        Leader {
            id,
            config,
            epoch: None,
            rounds: BTreeMap::new(),
            decided: BTreeMap::new(),
            decided_order: VecDeque::new(),
            highest_seen: BTreeMap::new(),
        }
    }

    /// Volatile state is gone; ballots wait for the new epoch to be durable.
    pub(super) fn restart(&mut self) {
        *self = Leader::new(self.id, self.config.clone());
    }

    pub(super) fn epoch_durable(&mut self, epoch: u32) {
        self.epoch = Some(epoch);
    }

    pub(super) fn in_flight(&self) -> usize {
        self.rounds.len()
    }

    /// The lowest sequence of `coordinator`'s `epoch` still undecided here.
    pub(super) fn lowest_round(&self, coordinator: NodeId, epoch: u32) -> Option<u32> {
        let from = TxnId { coordinator, epoch, sequence: 0 };
        let (txn, _) = self.rounds.range(from..).next()?;
        (txn.coordinator == coordinator && txn.epoch == epoch).then_some(txn.sequence)
    }

    /// The participants of an undecided round.
    pub(super) fn participants_of(&self, txn: TxnId) -> Option<&[NodeId]> {
        match self.rounds.get(&txn)? {
            Round::BallotZero { participants, .. }
            | Round::Phase1 { participants, .. }
            | Round::Phase2 { participants, .. } => Some(participants),
        }
    }

    /// Transactions in `range` are below a forget mark: nobody waits for them any more.
    pub(super) fn forget(&mut self, range: &std::ops::Range<TxnId>) {
        remove_range(&mut self.rounds, range);
        remove_range(&mut self.highest_seen, range);
        remove_range(&mut self.decided, range);
        self.decided_order.retain(|t| !range.contains(t));
    }

    /// A participant acknowledged `decision` for `txn`: it was chosen (a participant learns
    /// only chosen decisions), so a round still open here can finish with it. Returns it if
    /// it is new here.
    pub(super) fn learn<C, S>(
        &mut self,
        txn: TxnId,
        decision: Decision,
        out: &mut Out<C, S>,
    ) -> Option<Decision> {
        let participants = self.participants_of(txn)?.to_vec();
        self.decide(txn, &participants, decision, out)
    }

    /// Whether `txn` still waits for its ballot-0 votes.
    pub(super) fn in_ballot_zero(&self, txn: TxnId) -> bool {
        matches!(self.rounds.get(&txn), Some(Round::BallotZero { .. }))
    }

    /// The initial leader starts a transaction: wait for ballot-0 votes, up to the vote timeout.
    pub(super) fn begin<C, S>(
        &mut self,
        txn: TxnId,
        participants: Vec<NodeId>,
        out: &mut Out<C, S>,
    ) {
        out.push(Command::SetTimer {
            timer: Timer::BallotZero { txn },
            after_us: self.config.vote_timeout_us,
        });
        self.rounds.insert(txn, Round::BallotZero { participants, reports: BTreeMap::new() });
    }

    /// A ballot of this candidate's, above every ballot seen for `txn`; `None` if this node is
    /// not a candidate for `txn` or its epoch is not durable yet.
    fn next_ballot(&self, txn: TxnId) -> Option<Ballot> {
        let candidates = self.config.candidates(txn);
        let index = candidates.iter().position(|&n| n == self.id)? as u64;
        let k = candidates.len() as u64;
        let epoch_floor = u64::from(self.epoch?) << 32;
        let seen = self.highest_seen.get(&txn).copied().unwrap_or(0);
        let round = (seen / k + 1).max(epoch_floor);
        Some(
            round
                .checked_mul(k)
                .and_then(|b| b.checked_add(index + 1))
                .expect("ballot space is 64 bits"),
        )
    }

    fn see(&mut self, txn: TxnId, ballot: Ballot) {
        let seen = self.highest_seen.entry(txn).or_insert(0);
        *seen = (*seen).max(ballot);
    }

    fn start_phase1<C, S>(
        &mut self,
        txn: TxnId,
        participants: Vec<NodeId>,
        attempt: u32,
        out: &mut Out<C, S>,
    ) {
        let Some(ballot) = self.next_ballot(txn) else { return };
        self.see(txn, ballot);
        for &acceptor in &self.config.acceptors {
            out.push(Command::Send {
                to: acceptor,
                msg: Msg::Phase1a { txn, ballot, leader: self.id },
            });
        }
        self.set_ballot_timer(txn, ballot, attempt, out);
        self.rounds.insert(
            txn,
            Round::Phase1 { ballot, participants, promises: BTreeMap::new(), attempt },
        );
    }

    fn set_ballot_timer<C, S>(
        &self,
        txn: TxnId,
        ballot: Ballot,
        attempt: u32,
        out: &mut Out<C, S>,
    ) {
        let after_us =
            backoff_us(self.config.ballot_timeout_us, self.config.ballot_timeout_max_us, attempt);
        out.push(Command::SetTimer { timer: Timer::Ballot { txn, ballot }, after_us });
    }

    /// Sends the decision to every participant and forgets the round. Returns it if it is new.
    fn decide<C, S>(
        &mut self,
        txn: TxnId,
        participants: &[NodeId],
        decision: Decision,
        out: &mut Out<C, S>,
    ) -> Option<Decision> {
        self.rounds.remove(&txn);
        for &p in participants {
            out.push(Command::Send { to: p, msg: Msg::Decision { txn, decision } });
        }
        if self.decided.insert(txn, decision).is_some() {
            return None;
        }
        self.decided_order.push_back(txn);
        if self.decided_order.len() > REMEMBERED_DECISIONS {
            if let Some(old) = self.decided_order.pop_front() {
                self.decided.remove(&old);
            }
        }
        Some(decision)
    }

    fn decision_of(values: &[(NodeId, Value)]) -> Decision {
        if values.iter().all(|(_, v)| *v == Value::Prepared) {
            Decision::Commit
        } else {
            Decision::Abort
        }
    }

    pub(super) fn on_phase2b<C, S>(
        &mut self,
        from: NodeId,
        txn: TxnId,
        ballot: Ballot,
        values: Vec<(NodeId, Value)>,
        out: &mut Out<C, S>,
    ) -> Option<Decision> {
        self.see(txn, ballot);
        let majority = self.config.majority();
        match self.rounds.get_mut(&txn)? {
            Round::BallotZero { participants, reports } if ballot == 0 => {
                reports.entry(from).or_default().extend(values);
                let count = |p: NodeId, v: Value| {
                    reports.values().filter(|r| r.get(&p) == Some(&v)).count()
                };
                let participants = participants.clone();
                if participants.iter().any(|&p| count(p, Value::Aborted) >= majority) {
                    return self.decide(txn, &participants, Decision::Abort, out);
                }
                if participants.iter().all(|&p| count(p, Value::Prepared) >= majority) {
                    return self.decide(txn, &participants, Decision::Commit, out);
                }
                None
            }
            Round::Phase2 {
                ballot: current, participants, values: proposed, accepted_by, ..
            } if *current == ballot => {
                accepted_by.insert(from);
                if accepted_by.len() < majority {
                    return None;
                }
                let (participants, decision) = (participants.clone(), Self::decision_of(proposed));
                self.decide(txn, &participants, decision, out)
            }
            _ => None,
        }
    }

    pub(super) fn on_phase1b<C, S>(
        &mut self,
        from: NodeId,
        txn: TxnId,
        ballot: Ballot,
        accepted: Vec<(NodeId, Ballot, Value)>,
        out: &mut Out<C, S>,
    ) {
        self.see(txn, ballot);
        let majority = self.config.majority();
        let Some(Round::Phase1 { ballot: current, participants, promises, attempt }) =
            self.rounds.get_mut(&txn)
        else {
            return;
        };
        if *current != ballot {
            return;
        }
        promises.insert(from, accepted);
        if promises.len() < majority {
            return;
        }
        // Per instance, the value accepted at the highest ballot among the promises; where no
        // acceptor of the majority accepted anything, no value can have been chosen: Aborted.
        let values: Vec<(NodeId, Value)> = participants
            .iter()
            .map(|&p| {
                let best = promises
                    .values()
                    .flatten()
                    .filter(|(instance, _, _)| *instance == p)
                    .max_by_key(|(_, b, _)| *b)
                    .map_or(Value::Aborted, |(_, _, v)| *v);
                (p, best)
            })
            .collect();
        let (participants, attempt) = (participants.clone(), *attempt);
        for &acceptor in &self.config.acceptors {
            let msg = Msg::Phase2a {
                txn,
                ballot,
                values: values.clone(),
                leader: self.id,
                participants: participants.clone(),
            };
            out.push(Command::Send { to: acceptor, msg });
        }
        self.rounds.insert(
            txn,
            Round::Phase2 { ballot, participants, values, accepted_by: BTreeSet::new(), attempt },
        );
    }

    pub(super) fn on_reject(&mut self, txn: TxnId, promised: Ballot) {
        self.see(txn, promised);
    }

    /// A participant asks: answer from memory, or find out with a ballot of our own.
    pub(super) fn on_inquire<C, S>(
        &mut self,
        from: NodeId,
        txn: TxnId,
        participants: Vec<NodeId>,
        out: &mut Out<C, S>,
    ) {
        if let Some(&decision) = self.decided.get(&txn) {
            out.push(Command::Send { to: from, msg: Msg::Decision { txn, decision } });
            return;
        }
        if !self.rounds.contains_key(&txn) && participants.len() <= self.config.max_participants {
            self.start_phase1(txn, participants, 0, out);
        }
    }

    pub(super) fn on_timer<C, S>(&mut self, timer: Timer, out: &mut Out<C, S>) {
        match timer {
            Timer::BallotZero { txn } => {
                if let Some(Round::BallotZero { participants, .. }) = self.rounds.get(&txn) {
                    let participants = participants.clone();
                    self.start_phase1(txn, participants, 0, out);
                }
            }
            Timer::Ballot { txn, ballot } => {
                let (participants, attempt) = match self.rounds.get(&txn) {
                    Some(Round::Phase1 { ballot: b, participants, attempt, .. })
                    | Some(Round::Phase2 { ballot: b, participants, attempt, .. })
                        if *b == ballot =>
                    {
                        (participants.clone(), *attempt)
                    }
                    _ => return,
                };
                self.start_phase1(txn, participants, attempt + 1, out);
            }
            Timer::Inquire { .. } | Timer::OnePhaseRetry { .. } | Timer::DecisionRetry { .. } => {}
        }
    }
}
