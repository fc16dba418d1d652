//! The 3PC participant, and the termination leader it becomes when its term comes up.
//!
//! ```text
//!  CANCOMMIT ─► Preparing ─durable─► Uncertain ──PRECOMMIT(k)──► PreCommitting ─durable─► PreCommitted
//!                                       │                                                     │
//!                                       └──────────── DECISION ─► Committing / aborted ◄──────┘
//!  no news for a term ─► next term; if I lead it: STATE? to all, decide from the reports
//! ```

use std::collections::{BTreeMap, BTreeSet};

use concord_types::{Decision, NodeId, TxnId, Vote, Write};

use super::{term_leader, Config, Msg, Record, State, Timer};
use crate::backoff_us;
use crate::store::Store;
use crate::{Command, Core, Durability, Input, ParticipantView};

type Out = Vec<Command<Msg, Record, Timer>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Branch {
    Preparing {
        participants: Vec<NodeId>,
        writes: Vec<Write>,
        abort_requested: bool,
    },
    Voted {
        participants: Vec<NodeId>,
        writes: Vec<Write>,
        term: u32,
        precommitted: bool,
    },
    /// PRE-COMMITTED written, not yet durable; acknowledge `ack_to` once it is.
    PreCommitting {
        participants: Vec<NodeId>,
        writes: Vec<Write>,
        term: u32,
        ack_to: NodeId,
        ack_term: u32,
    },
    Committing {
        writes: Vec<Write>,
    },
    /// Never voted; a termination leader asked; ABORTED is being forced before the answer.
    Refusing {
        asked_by: NodeId,
        term: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Leading {
    Collecting {
        term: u32,
        reports: BTreeMap<NodeId, State>,
    },
    PreCommitting {
        term: u32,
        waiting: BTreeSet<NodeId>,
    },
    /// The decision record is being forced.
    Deciding {
        term: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Participant {
    id: NodeId,
    config: Config,
    store: Store,
    branches: BTreeMap<TxnId, Branch>,
    leading: BTreeMap<TxnId, Leading>,
    decided: BTreeMap<TxnId, Decision>,
}

impl Participant {
    pub fn new(id: NodeId, config: Config) -> Self {
        Participant {
            id,
            config,
            store: Store::default(),
            branches: BTreeMap::new(),
            leading: BTreeMap::new(),
            decided: BTreeMap::new(),
        }
    }

    fn send(out: &mut Out, to: NodeId, msg: Msg) {
        out.push(Command::Send { to, msg });
    }

    fn set_termination_timer(&self, txn: TxnId, term: u32, out: &mut Out) {
        let after_us = backoff_us(
            self.config.termination_timeout_us,
            self.config.termination_timeout_max_us,
            term,
        );
        out.push(Command::SetTimer { timer: Timer::Termination { txn, term }, after_us });
    }

    /// What this participant would report about `txn` (None while a record is in flight).
    fn state(&self, txn: TxnId) -> Option<State> {
        match self.decided.get(&txn) {
            Some(Decision::Commit) => return Some(State::Committed),
            Some(Decision::Abort) => return Some(State::Aborted),
            None => {}
        }
        match self.branches.get(&txn)? {
            Branch::Voted { precommitted: false, .. } => Some(State::Uncertain),
            Branch::Voted { precommitted: true, .. } => Some(State::PreCommitted),
            Branch::Committing { .. } => Some(State::Committed),
            Branch::Preparing { .. } | Branch::PreCommitting { .. } | Branch::Refusing { .. } => {
                None
            }
        }
    }

    fn restart(&mut self, records: Vec<Record>, out: &mut Out) {
        *self = Participant::new(self.id, self.config.clone());
        for record in records {
            match record {
                Record::Prepared { txn, participants, writes } => {
                    self.store.lock(txn, &writes);
                    let branch =
                        Branch::Voted { participants, writes, term: 0, precommitted: false };
                    self.branches.insert(txn, branch);
                }
                Record::PreCommitted { txn } => {
                    if let Some(Branch::Voted { precommitted, .. }) = self.branches.get_mut(&txn) {
                        *precommitted = true;
                    }
                }
                Record::Committed { txn } => {
                    let Some(Branch::Voted { writes, .. }) = self.branches.remove(&txn) else {
                        panic!("{}: log commits {txn} without a prepare record before it", self.id);
                    };
                    self.store.unlock(txn, &writes);
                    self.store.apply(&writes);
                    self.decided.insert(txn, Decision::Commit);
                }
                Record::Aborted { txn } => {
                    if let Some(Branch::Voted { writes, .. }) = self.branches.remove(&txn) {
                        self.store.unlock(txn, &writes);
                    }
                    self.decided.insert(txn, Decision::Abort);
                }
                // A leader's decision is applied by the branch record that follows it; if that
                // record was lost, the decision is re-learned from the others.
                Record::TerminationDecided { .. } => {}
                other => panic!("participant {} found a coordinator record: {other:?}", self.id),
            }
        }
        // Undecided branches run the termination protocol.
        for &txn in self.branches.keys() {
            self.set_termination_timer(txn, 0, out);
        }
    }

    fn on_can_commit(
        &mut self,
        txn: TxnId,
        participants: Vec<NodeId>,
        writes: Vec<Write>,
        out: &mut Out,
    ) {
        if let Some(&decision) = self.decided.get(&txn) {
            if decision == Decision::Abort {
                Self::send(out, txn.coordinator, Msg::Vote { txn, vote: Vote::No });
            }
            return;
        }
        if let Some(branch) = self.branches.get(&txn) {
            if matches!(branch, Branch::Voted { .. }) {
                Self::send(out, txn.coordinator, Msg::Vote { txn, vote: Vote::Yes });
            }
            return;
        }
        if self.branches.len() >= self.config.max_in_flight
            || self.store.check(txn, &writes).is_err()
        {
            self.decided.insert(txn, Decision::Abort);
            out.push(Command::Outcome { txn, decision: Decision::Abort });
            return Self::send(out, txn.coordinator, Msg::Vote { txn, vote: Vote::No });
        }
        self.store.lock(txn, &writes);
        out.push(Command::Persist {
            record: Record::Prepared {
                txn,
                participants: participants.clone(),
                writes: writes.clone(),
            },
            durability: Durability::Forced,
        });
        self.branches
            .insert(txn, Branch::Preparing { participants, writes, abort_requested: false });
    }

    fn on_precommit(&mut self, from: NodeId, txn: TxnId, term: u32, out: &mut Out) {
        match self.branches.get(&txn) {
            Some(Branch::Voted { term: mine, precommitted, .. }) if term >= *mine => {
                if *precommitted {
                    return Self::send(out, from, Msg::PreCommitAck { txn, term });
                }
                let Some(Branch::Voted { participants, writes, .. }) = self.branches.remove(&txn)
                else {
                    unreachable!("matched Voted just above")
                };
                out.push(Command::Persist {
                    record: Record::PreCommitted { txn },
                    durability: Durability::Forced,
                });
                let branch = Branch::PreCommitting {
                    participants,
                    writes,
                    term,
                    ack_to: from,
                    ack_term: term,
                };
                self.branches.insert(txn, branch);
            }
            _ => {} // stale term, not voted, or decided
        }
    }

    fn on_decision(&mut self, txn: TxnId, decision: Decision, out: &mut Out) {
        if let Some(&known) = self.decided.get(&txn) {
            if known == Decision::Commit && decision == Decision::Commit {
                Self::send(out, txn.coordinator, Msg::Ack { txn });
            }
            return;
        }
        self.leading.remove(&txn);
        let writes = match self.branches.get(&txn) {
            Some(Branch::Voted { writes, .. } | Branch::PreCommitting { writes, .. }) => {
                writes.clone()
            }
            Some(Branch::Preparing { .. }) if decision == Decision::Abort => {
                if let Some(Branch::Preparing { abort_requested, .. }) = self.branches.get_mut(&txn)
                {
                    *abort_requested = true;
                }
                return;
            }
            None if decision == Decision::Abort => {
                self.decided.insert(txn, Decision::Abort);
                return;
            }
            _ => return,
        };
        self.branches.remove(&txn);
        match decision {
            Decision::Commit => {
                out.push(Command::Persist {
                    record: Record::Committed { txn },
                    durability: Durability::Forced,
                });
                self.branches.insert(txn, Branch::Committing { writes });
            }
            Decision::Abort => self.abort_voted(txn, &writes, out),
        }
    }

    fn abort_voted(&mut self, txn: TxnId, writes: &[Write], out: &mut Out) {
        self.store.unlock(txn, writes);
        self.decided.insert(txn, Decision::Abort);
        out.push(Command::Persist {
            record: Record::Aborted { txn },
            durability: Durability::Lazy,
        });
        out.push(Command::Outcome { txn, decision: Decision::Abort });
    }

    fn on_persisted(&mut self, record: Record, out: &mut Out) {
        match record {
            Record::Prepared { txn, .. } => {
                let Some(Branch::Preparing { participants, writes, abort_requested }) =
                    self.branches.remove(&txn)
                else {
                    panic!(
                        "{}: prepare record of {txn} durable, but it was not preparing",
                        self.id
                    );
                };
                if abort_requested {
                    return self.abort_voted(txn, &writes, out);
                }
                Self::send(out, txn.coordinator, Msg::Vote { txn, vote: Vote::Yes });
                self.set_termination_timer(txn, 0, out);
                self.branches.insert(
                    txn,
                    Branch::Voted { participants, writes, term: 0, precommitted: false },
                );
            }
            Record::PreCommitted { txn } => {
                if !matches!(self.branches.get(&txn), Some(Branch::PreCommitting { .. })) {
                    return; // a decision overtook it
                }
                let Some(Branch::PreCommitting { participants, writes, term, ack_to, ack_term }) =
                    self.branches.remove(&txn)
                else {
                    unreachable!("matched PreCommitting just above")
                };
                Self::send(out, ack_to, Msg::PreCommitAck { txn, term: ack_term });
                self.set_termination_timer(txn, term, out);
                self.branches
                    .insert(txn, Branch::Voted { participants, writes, term, precommitted: true });
                // A leader pre-committing itself counts its own ack.
                if ack_to == self.id {
                    self.on_precommit_ack(self.id, txn, ack_term, out);
                }
            }
            Record::Committed { txn } => {
                let Some(Branch::Committing { writes }) = self.branches.remove(&txn) else {
                    panic!(
                        "{}: commit record of {txn} durable, but it was not committing",
                        self.id
                    );
                };
                self.store.unlock(txn, &writes);
                self.store.apply(&writes);
                self.decided.insert(txn, Decision::Commit);
                out.push(Command::Outcome { txn, decision: Decision::Commit });
                Self::send(out, txn.coordinator, Msg::Ack { txn });
            }
            Record::Aborted { txn } => {
                if !matches!(self.branches.get(&txn), Some(Branch::Refusing { .. })) {
                    return;
                }
                let Some(Branch::Refusing { asked_by, term }) = self.branches.remove(&txn) else {
                    unreachable!("matched Refusing just above")
                };
                self.decided.insert(txn, Decision::Abort);
                out.push(Command::Outcome { txn, decision: Decision::Abort });
                Self::send(out, asked_by, Msg::StateReport { txn, term, state: State::Aborted });
            }
            Record::TerminationDecided { txn, decision } => {
                if !matches!(self.leading.get(&txn), Some(Leading::Deciding { .. })) {
                    return;
                }
                self.leading.remove(&txn);
                let participants = match self.branches.get(&txn) {
                    Some(Branch::Voted { participants, .. }) => participants.clone(),
                    _ => return,
                };
                for &p in participants.iter().filter(|&&p| p != self.id) {
                    Self::send(out, p, Msg::Decision { txn, decision });
                }
                // The coordinator may still be alive and undecided: it must not decide otherwise.
                Self::send(out, txn.coordinator, Msg::Decision { txn, decision });
                self.on_decision(txn, decision, out);
            }
            other => panic!("participant {} never forces {other:?}", self.id),
        }
    }

    /// No news in `term`: move on to the next term, and lead it if it is ours.
    fn on_termination_timer(&mut self, txn: TxnId, term: u32, out: &mut Out) {
        let Some(Branch::Voted { participants, term: mine, .. }) = self.branches.get_mut(&txn)
        else {
            return;
        };
        if *mine != term {
            return;
        }
        let next = term.checked_add(1).expect("terms are bounded by the timer's backoff");
        *mine = next;
        let participants = participants.clone();
        self.set_termination_timer(txn, next, out);
        if term_leader(&participants, next) != self.id {
            return;
        }
        for &p in participants.iter().filter(|&&p| p != self.id) {
            let msg = Msg::StateRequest { txn, term: next, participants: participants.clone() };
            Self::send(out, p, msg);
        }
        let mut reports = BTreeMap::new();
        if let Some(state) = self.state(txn) {
            reports.insert(self.id, state);
        }
        self.leading.insert(txn, Leading::Collecting { term: next, reports });
        out.push(Command::SetTimer {
            timer: Timer::Collect { txn, term: next },
            after_us: self.config.collect_timeout_us,
        });
    }

    fn on_state_request(&mut self, from: NodeId, txn: TxnId, term: u32, out: &mut Out) {
        if let Some(&decision) = self.decided.get(&txn) {
            let state =
                if decision == Decision::Commit { State::Committed } else { State::Aborted };
            return Self::send(out, from, Msg::StateReport { txn, term, state });
        }
        match self.branches.get_mut(&txn) {
            Some(Branch::Voted { term: mine, precommitted, .. }) if term >= *mine => {
                if term > *mine {
                    *mine = term;
                    self.leading.remove(&txn); // a later term supersedes ours
                }
                let state = if *precommitted { State::PreCommitted } else { State::Uncertain };
                Self::send(out, from, Msg::StateReport { txn, term, state });
                self.set_termination_timer(txn, term, out);
            }
            None => {
                // Never voted: abort unilaterally, durably, then say so.
                out.push(Command::Persist {
                    record: Record::Aborted { txn },
                    durability: Durability::Forced,
                });
                self.branches.insert(txn, Branch::Refusing { asked_by: from, term });
            }
            _ => {} // stale term, or a record in flight: the leader asks again next term
        }
    }

    fn on_state_report(
        &mut self,
        from: NodeId,
        txn: TxnId,
        term: u32,
        state: State,
        out: &mut Out,
    ) {
        let Some(Leading::Collecting { term: leading, reports }) = self.leading.get_mut(&txn)
        else {
            return;
        };
        if *leading != term {
            return;
        }
        reports.insert(from, state);
        let everyone = match self.branches.get(&txn) {
            Some(Branch::Voted { participants, .. }) => participants.len(),
            _ => return,
        };
        if reports.len() == everyone {
            self.decide_from_reports(txn, out);
        }
    }

    /// The termination rule, on the reports collected so far.
    fn decide_from_reports(&mut self, txn: TxnId, out: &mut Out) {
        let Some(Leading::Collecting { term, reports }) = self.leading.get(&txn).cloned() else {
            return;
        };
        let any = |s: State| reports.values().any(|r| *r == s);
        if any(State::Committed) {
            return self.force_decision(txn, term, Decision::Commit, out);
        }
        if any(State::Aborted) || !any(State::PreCommitted) {
            return self.force_decision(txn, term, Decision::Abort, out);
        }
        // Someone pre-committed: bring the uncertain up to pre-committed, then commit.
        let waiting: BTreeSet<NodeId> =
            reports.iter().filter(|(_, s)| **s == State::Uncertain).map(|(n, _)| *n).collect();
        if waiting.is_empty() {
            return self.force_decision(txn, term, Decision::Commit, out);
        }
        for &p in &waiting {
            if p == self.id {
                self.on_precommit(self.id, txn, term, out);
            } else {
                Self::send(out, p, Msg::PreCommit { txn, term });
            }
        }
        self.leading.insert(txn, Leading::PreCommitting { term, waiting });
        out.push(Command::SetTimer {
            timer: Timer::Collect { txn, term },
            after_us: self.config.collect_timeout_us,
        });
    }

    fn on_precommit_ack(&mut self, from: NodeId, txn: TxnId, term: u32, out: &mut Out) {
        let Some(Leading::PreCommitting { term: leading, waiting }) = self.leading.get_mut(&txn)
        else {
            return;
        };
        if *leading != term {
            return;
        }
        waiting.remove(&from);
        if waiting.is_empty() {
            self.force_decision(txn, term, Decision::Commit, out);
        }
    }

    fn force_decision(&mut self, txn: TxnId, term: u32, decision: Decision, out: &mut Out) {
        out.push(Command::Persist {
            record: Record::TerminationDecided { txn, decision },
            durability: Durability::Forced,
        });
        self.leading.insert(txn, Leading::Deciding { term });
    }

    fn on_collect_timer(&mut self, txn: TxnId, term: u32, out: &mut Out) {
        match self.leading.get(&txn) {
            Some(Leading::Collecting { term: t, .. }) if *t == term => {
                self.decide_from_reports(txn, out);
            }
            // Those that did not acknowledge are taken to have failed (fail-stop): commit.
            Some(Leading::PreCommitting { term: t, .. }) if *t == term => {
                self.force_decision(txn, term, Decision::Commit, out);
            }
            _ => {}
        }
    }
}

impl Core for Participant {
    type Msg = Msg;
    type Record = Record;
    type Timer = Timer;
    type Change = Vec<concord_types::Write>;

    fn handle(&mut self, input: Input<Msg, Record, Timer>, out: &mut Out) {
        match input {
            Input::Restart { records } => self.restart(records, out),
            Input::Persisted(record) => self.on_persisted(record, out),
            Input::Timer(Timer::Termination { txn, term }) => {
                self.on_termination_timer(txn, term, out);
            }
            Input::Timer(Timer::Collect { txn, term }) => self.on_collect_timer(txn, term, out),
            Input::Timer(_) | Input::Begin { .. } | Input::Reservation(_) => {}
            Input::Message { from, msg } => match msg {
                Msg::CanCommit { txn, participants, writes } => {
                    self.on_can_commit(txn, participants, writes, out);
                }
                Msg::PreCommit { txn, term } => self.on_precommit(from, txn, term, out),
                Msg::PreCommitAck { txn, term } => self.on_precommit_ack(from, txn, term, out),
                Msg::Decision { txn, decision } => self.on_decision(txn, decision, out),
                Msg::StateRequest { txn, term, .. } => self.on_state_request(from, txn, term, out),
                Msg::StateReport { txn, term, state } => {
                    self.on_state_report(from, txn, term, state, out);
                }
                Msg::Vote { .. } | Msg::Ack { .. } => {}
            },
        }
    }
}

impl ParticipantView for Participant {
    fn in_doubt(&self) -> Vec<TxnId> {
        self.branches
            .iter()
            .filter(|(_, b)| matches!(b, Branch::Voted { .. } | Branch::PreCommitting { .. }))
            .map(|(&t, _)| t)
            .collect()
    }
    fn store(&self) -> &Store {
        &self.store
    }
}
