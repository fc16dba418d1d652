//! The 3PC coordinator: CANCOMMIT, then PRECOMMIT once every vote is YES, then — with every
//! PRECOMMIT acknowledged, or after the ack timeout — a forced commit decision and DoCommit.
//! It presumes nothing on restart: it re-drives logged commits, and leaves the rest to the
//! participants' termination protocol.

use std::collections::{BTreeMap, BTreeSet};

use concord_types::{Decision, NodeId, RequestId, TxnId, Vote};

use super::{Config, Msg, Record, Timer};
use crate::admission::{Admission, Limits};
use crate::backoff_us;
use crate::{Branch, Command, Core, Durability, Input};

type Out = Vec<Command<Msg, Record, Timer>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Txn {
    Collecting { participants: Vec<NodeId>, votes: BTreeMap<NodeId, Vote> },
    PreCommitting { participants: Vec<NodeId>, acked: BTreeSet<NodeId> },
    ForcingCommit { participants: Vec<NodeId> },
    Committing { pending: Vec<NodeId>, attempt: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Coordinator {
    id: NodeId,
    config: Config,
    admission: Admission,
    txns: BTreeMap<TxnId, Txn>,
}

impl Coordinator {
    pub fn new(id: NodeId, config: Config) -> Self {
        let limits = Limits {
            max_participants: config.max_participants,
            max_in_flight: config.max_in_flight,
            max_queued: config.max_queued_begins,
        };
        Coordinator { id, admission: Admission::new(id, limits), config, txns: BTreeMap::new() }
    }

    fn restart(&mut self, records: Vec<Record>, out: &mut Out) {
        self.txns.clear();
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
                other => panic!("coordinator {} found a participant record: {other:?}", self.id),
            }
        }
        for (txn, participants) in decided {
            Self::send_commit(txn, &participants, out);
            self.set_resend(txn, 0, out);
            self.txns.insert(txn, Txn::Committing { pending: participants, attempt: 0 });
        }
        let epoch = self.admission.restart(highest_epoch);
        out.push(Command::Persist {
            record: Record::EpochStarted { epoch },
            durability: Durability::Forced,
        });
    }

    fn send_commit(txn: TxnId, to: &[NodeId], out: &mut Out) {
        for &p in to {
            out.push(Command::Send {
                to: p,
                msg: Msg::Decision { txn, decision: Decision::Commit },
            });
        }
    }

    fn set_resend(&self, txn: TxnId, attempt: u32, out: &mut Out) {
        let after_us = backoff_us(self.config.resend_base_us, self.config.resend_max_us, attempt);
        out.push(Command::SetTimer { timer: Timer::ResendCommit { txn, attempt }, after_us });
    }

    fn begin(&mut self, request: RequestId, branches: Vec<Branch>, out: &mut Out) {
        let epoch_record = |epoch| Record::EpochStarted { epoch };
        let admitted = self.admission.admit(request, branches, self.txns.len(), epoch_record, out);
        let Some((txn, branches)) = admitted else { return };
        let participants: Vec<NodeId> = branches.iter().map(|b| b.node).collect();
        for b in branches {
            let msg = Msg::CanCommit { txn, participants: participants.clone(), writes: b.writes };
            out.push(Command::Send { to: b.node, msg });
        }
        out.push(Command::SetTimer {
            timer: Timer::VoteTimeout { txn },
            after_us: self.config.vote_timeout_us,
        });
        self.txns.insert(txn, Txn::Collecting { participants, votes: BTreeMap::new() });
    }

    fn abort(&mut self, txn: TxnId, out: &mut Out) {
        let Some(Txn::Collecting { participants, votes }) = self.txns.remove(&txn) else {
            unreachable!("abort is called only for collecting transactions")
        };
        for p in participants.iter().filter(|p| votes.get(p) != Some(&Vote::No)) {
            out.push(Command::Send {
                to: *p,
                msg: Msg::Decision { txn, decision: Decision::Abort },
            });
        }
        out.push(Command::Outcome { txn, decision: Decision::Abort });
    }

    fn on_vote(&mut self, from: NodeId, txn: TxnId, vote: Vote, out: &mut Out) {
        let Some(Txn::Collecting { participants, votes }) = self.txns.get_mut(&txn) else { return };
        if !participants.contains(&from) {
            return;
        }
        votes.insert(from, vote);
        if vote != Vote::Yes {
            return self.abort(txn, out);
        }
        if votes.len() < participants.len() {
            return;
        }
        let participants = participants.clone();
        for &p in &participants {
            out.push(Command::Send { to: p, msg: Msg::PreCommit { txn, term: 0 } });
        }
        out.push(Command::SetTimer {
            timer: Timer::PreCommitAckTimeout { txn },
            after_us: self.config.precommit_ack_timeout_us,
        });
        self.txns.insert(txn, Txn::PreCommitting { participants, acked: BTreeSet::new() });
    }

    fn force_commit(&mut self, txn: TxnId, out: &mut Out) {
        if !matches!(self.txns.get(&txn), Some(Txn::PreCommitting { .. })) {
            return; // already forcing or committing: a late timeout
        }
        let Some(Txn::PreCommitting { participants, .. }) = self.txns.remove(&txn) else {
            unreachable!("matched PreCommitting just above")
        };
        out.push(Command::Persist {
            record: Record::CommitDecided { txn, participants: participants.clone() },
            durability: Durability::Forced,
        });
        self.txns.insert(txn, Txn::ForcingCommit { participants });
    }
}

impl Core for Coordinator {
    type Msg = Msg;
    type Record = Record;
    type Timer = Timer;
    type Change = Vec<concord_types::Write>;

    fn handle(&mut self, input: Input<Msg, Record, Timer>, out: &mut Out) {
        match input {
            Input::Restart { records } => self.restart(records, out),
            Input::Begin { request, branches } => self.begin(request, branches, out),
            Input::Reservation(r) => r.refuse(out),
            Input::Persisted(Record::EpochStarted { epoch }) => {
                for (request, branches) in self.admission.epoch_durable(epoch) {
                    self.begin(request, branches, out);
                }
            }
            Input::Persisted(Record::CommitDecided { txn, .. }) => {
                let Some(Txn::ForcingCommit { participants }) = self.txns.remove(&txn) else {
                    panic!("commit decision of {txn} durable, but it was not being forced");
                };
                Self::send_commit(txn, &participants, out);
                out.push(Command::Outcome { txn, decision: Decision::Commit });
                self.set_resend(txn, 0, out);
                self.txns.insert(txn, Txn::Committing { pending: participants, attempt: 0 });
            }
            Input::Persisted(other) => panic!("coordinator {} never forces {other:?}", self.id),
            Input::Timer(Timer::VoteTimeout { txn }) => {
                if matches!(self.txns.get(&txn), Some(Txn::Collecting { .. })) {
                    self.abort(txn, out);
                }
            }
            Input::Timer(Timer::PreCommitAckTimeout { txn }) => self.force_commit(txn, out),
            Input::Timer(Timer::ResendCommit { txn, attempt }) => {
                let Some(Txn::Committing { pending, attempt: current }) = self.txns.get_mut(&txn)
                else {
                    return;
                };
                if *current != attempt {
                    return;
                }
                *current += 1;
                let (pending, next) = (pending.clone(), *current);
                Self::send_commit(txn, &pending, out);
                self.set_resend(txn, next, out);
            }
            Input::Timer(Timer::Termination { .. } | Timer::Collect { .. }) => {}
            Input::Message { from, msg } => match msg {
                Msg::Vote { txn, vote } => self.on_vote(from, txn, vote, out),
                Msg::PreCommitAck { txn, term: 0 } => {
                    let Some(Txn::PreCommitting { participants, acked }) = self.txns.get_mut(&txn)
                    else {
                        return;
                    };
                    acked.insert(from);
                    if acked.len() == participants.len() {
                        self.force_commit(txn, out);
                    }
                }
                Msg::Ack { txn } => {
                    let Some(Txn::Committing { pending, .. }) = self.txns.get_mut(&txn) else {
                        return;
                    };
                    pending.retain(|&p| p != from);
                    if pending.is_empty() {
                        self.txns.remove(&txn);
                        out.push(Command::Persist {
                            record: Record::Ended { txn },
                            durability: Durability::Lazy,
                        });
                    }
                }
                // A termination leader decided while we were still undecided: adopt its decision.
                Msg::Decision { txn, decision } => match (self.txns.get(&txn), decision) {
                    (Some(Txn::Collecting { .. }), Decision::Abort) => self.abort(txn, out),
                    (Some(Txn::PreCommitting { participants, .. }), Decision::Abort) => {
                        for &p in participants {
                            out.push(Command::Send { to: p, msg: Msg::Decision { txn, decision } });
                        }
                        self.txns.remove(&txn);
                        out.push(Command::Outcome { txn, decision: Decision::Abort });
                    }
                    (Some(Txn::PreCommitting { .. }), Decision::Commit) => {
                        self.force_commit(txn, out);
                    }
                    _ => {}
                },
                Msg::PreCommitAck { .. }
                | Msg::CanCommit { .. }
                | Msg::PreCommit { .. }
                | Msg::StateRequest { .. }
                | Msg::StateReport { .. } => {}
            },
        }
    }
}
