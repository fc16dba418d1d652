//! The Paxos Commit coordinator: names transactions, sends PREPARE, and leads ballot 0. It
//! writes no decision record — the decision is chosen at the acceptors — only its epoch.

use std::collections::VecDeque;

use concord_types::{NodeId, RequestId};

use super::leader::Leader;
use super::{Config, Msg, Record, Timer};
use crate::epoch::{EpochClock, Issue};
use crate::{Branch, Command, Core, Durability, Input, Rejection};

type Out = Vec<Command<Msg, Record, Timer>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Coordinator {
    id: NodeId,
    config: Config,
    clock: Option<EpochClock>,
    leader: Leader,
    queued: VecDeque<(RequestId, Vec<Branch>)>,
}

impl Coordinator {
    pub fn new(id: NodeId, config: Config) -> Self {
        Coordinator {
            id,
            leader: Leader::new(id, config.clone()),
            config,
            clock: None,
            queued: VecDeque::new(),
        }
    }

    fn clock(&mut self) -> &mut EpochClock {
        self.clock.as_mut().expect("drivers deliver Restart before any other input")
    }

    fn begin(&mut self, request: RequestId, branches: Vec<Branch>, out: &mut Out) {
        let mut nodes: Vec<NodeId> = branches.iter().map(|b| b.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        if branches.is_empty()
            || nodes.len() != branches.len()
            || branches.len() > self.config.max_participants
        {
            return out.push(Command::Rejected { request, reason: Rejection::Invalid });
        }
        if self.leader.in_flight() >= self.config.max_in_flight {
            return out.push(Command::Rejected { request, reason: Rejection::Overloaded });
        }
        match self.clock().issue() {
            Issue::Txn(txn) => {
                out.push(Command::Begun { request, txn });
                let participants: Vec<NodeId> = branches.iter().map(|b| b.node).collect();
                for b in branches {
                    let msg =
                        Msg::Prepare { txn, participants: participants.clone(), writes: b.writes };
                    out.push(Command::Send { to: b.node, msg });
                }
                self.leader.begin(txn, participants, out);
            }
            Issue::Wait | Issue::PersistEpoch(_)
                if self.queued.len() >= self.config.max_queued_begins =>
            {
                out.push(Command::Rejected { request, reason: Rejection::Overloaded });
            }
            Issue::Wait => self.queued.push_back((request, branches)),
            Issue::PersistEpoch(epoch) => {
                out.push(Command::Persist {
                    record: Record::EpochStarted { epoch },
                    durability: Durability::Forced,
                });
                self.queued.push_back((request, branches));
            }
        }
    }

    fn emit_outcome(
        out: &mut Out,
        decided: Option<concord_types::Decision>,
        txn: concord_types::TxnId,
    ) {
        if let Some(decision) = decided {
            out.push(Command::Outcome { txn, decision });
        }
    }
}

impl Core for Coordinator {
    type Msg = Msg;
    type Record = Record;
    type Timer = Timer;

    fn handle(&mut self, input: Input<Msg, Record, Timer>, out: &mut Out) {
        match input {
            Input::Restart { records } => {
                let highest = records
                    .iter()
                    .map(|r| match r {
                        Record::EpochStarted { epoch } => *epoch,
                        other => panic!("coordinator {} found {other:?} in its log", self.id),
                    })
                    .max();
                let (clock, epoch) = EpochClock::recover(self.id, highest);
                self.clock = Some(clock);
                self.leader.restart();
                self.queued.clear();
                out.push(Command::Persist {
                    record: Record::EpochStarted { epoch },
                    durability: Durability::Forced,
                });
            }
            Input::Persisted(Record::EpochStarted { epoch }) => {
                self.clock().on_persisted(epoch);
                self.leader.epoch_durable(epoch);
                while self.clock().is_ready() {
                    let Some((request, branches)) = self.queued.pop_front() else { break };
                    self.begin(request, branches, out);
                }
            }
            Input::Persisted(other) => panic!("coordinator {} never forces {other:?}", self.id),
            Input::Begin { request, branches } => self.begin(request, branches, out),
            Input::Timer(timer) => {
                let before = out.len();
                self.leader.on_timer(timer, out);
                debug_assert!(out[before..].iter().all(|c| !matches!(c, Command::Outcome { .. })));
            }
            Input::Message { from, msg } => match msg {
                Msg::Phase2b { txn, ballot, values } => {
                    let decided = self.leader.on_phase2b(from, txn, ballot, values, out);
                    Self::emit_outcome(out, decided, txn);
                }
                Msg::Phase1b { txn, ballot, accepted } => {
                    self.leader.on_phase1b(from, txn, ballot, accepted, out);
                }
                Msg::Reject { txn, promised } => self.leader.on_reject(txn, promised),
                Msg::Inquire { txn, participants } => {
                    self.leader.on_inquire(from, txn, participants, out);
                }
                Msg::Prepare { .. }
                | Msg::Phase2a { .. }
                | Msg::Phase1a { .. }
                | Msg::Decision { .. } => {}
            },
        }
    }
}
