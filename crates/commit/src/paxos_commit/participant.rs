//! The Paxos Commit participant (the paper's resource manager). Like a 2PC participant, but it
//! sends its vote as a ballot-0 phase 2a message to the acceptors, forces its vote either way
//! first, and when in doubt asks the leader candidates in turn. It acknowledges decisions only
//! with switch `forget`, which lets everyone forget them (module docs, "Forgetting").

use std::collections::{BTreeMap, BTreeSet};

use concord_types::{Decision, NodeId, TxnId};

use super::marks::Marks;
use super::{Config, Msg, Record, Timer, Value};
use crate::backoff_us;
use crate::resource::Refusals;
use crate::store::Store;
use crate::{Checkpoint, Command, Core, Durability, Input, ParticipantView, Resource};

type Rec<R> = Record<<R as Resource>::Change, <R as Resource>::Snapshot>;
type Out<R> = Vec<Command<Msg<<R as Resource>::Change>, Rec<R>, Timer>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Branch<C> {
    Preparing {
        participants: Vec<NodeId>,
        writes: C,
        abort_requested: bool,
        /// The vote goes to every acceptor, not only the normal case's (the PREPARE said so).
        wide: bool,
    },
    Prepared {
        participants: Vec<NodeId>,
        writes: C,
        inquiry_attempt: u32,
    },
    /// Refused: the ABORTED vote is being forced before it is sent.
    VotingAbort {
        participants: Vec<NodeId>,
        wide: bool,
    },
    Committing {
        writes: C,
    },
    /// Never prepared here, and its coordinator asked for the outcome: an ABORTED record is
    /// being forced — a promise never to prepare it — before the answer goes to `to`.
    PromisingAbort {
        to: NodeId,
    },
    /// One phase: the outcome is being forced before it is answered (the coordinator may
    /// resend, and every answer must be the same).
    OnePhaseCommitting {
        writes: C,
    },
    OnePhaseAborting,
}

/// A Paxos Commit participant over resource `R` (the simulator's [`Store`] by default).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Participant<R: Resource = Store> {
    id: NodeId,
    config: Config,
    store: R,
    branches: BTreeMap<TxnId, Branch<R::Change>>,
    committed: BTreeSet<TxnId>,
    aborted: BTreeSet<TxnId>,
    /// Switch `forget`: per coordinator epoch, below which every decision is forgotten here.
    forgotten: Marks,
    /// Forgotten outcomes kept, the newest `switches.forgotten_kept`, only to answer status
    /// queries (a late PREPARE below the mark is still ignored).
    kept: crate::status::KeptOutcomes,
    refusals: Refusals<R::Refusal>,
    /// Set after an accepted loss of part of the log: what must not be presumed (module
    /// `amnesia`). Not in the log: the driver sets it from the data directory at every start.
    amnesia: Option<crate::amnesia::Amnesia>,
}

impl<R: Resource> Participant<R> {
    pub fn new(id: NodeId, config: Config) -> Self {
        Self::with_resource(id, config, R::default())
    }

    /// A participant over a resource the driver made.
    pub fn with_resource(id: NodeId, config: Config, resource: R) -> Self {
        Participant {
            id,
            config,
            store: resource,
            branches: BTreeMap::new(),
            committed: BTreeSet::new(),
            aborted: BTreeSet::new(),
            forgotten: Marks::default(),
            kept: crate::status::KeptOutcomes::default(),
            refusals: Refusals::default(),
            amnesia: None,
        }
    }

    /// No record here, and there may have been one before an accepted loss: presume nothing.
    /// Its ballot-0 vote may be among the acceptors' already; a second one could differ (two
    /// values in one ballot), so it does not vote: the leader's higher ballot finds the lost
    /// vote, or chooses ABORT.
    fn possibly_forgotten(&self, txn: TxnId) -> bool {
        self.amnesia.as_ref().is_some_and(|a| a.may_have_forgotten(txn))
            && self.decided(txn).is_none()
            && !self.branches.contains_key(&txn)
            && !self.forgotten.covers(txn)
    }

    /// Tells `txn`'s coordinator this participant learned `decision` (switch `forget`).
    fn acknowledge(&self, txn: TxnId, decision: Decision, out: &mut Out<R>) {
        if self.config.switches.forget {
            out.push(Command::Send { to: txn.coordinator, msg: Msg::Ack { txn, decision } });
        }
    }

    /// A FORGET: drop the decisions it covers, keeping the newest for status queries. A branch
    /// still prepared below it lost its lazy ABORTED record in a crash — a committed
    /// transaction was acknowledged by every participant, and a commit only once durable — so
    /// it aborts.
    fn on_forget(&mut self, coordinator: NodeId, epoch: u32, below: u32, out: &mut Out<R>) {
        if self.forget_decisions(coordinator, epoch, below).is_some() {
            // Lazy: a crash that loses it replays decisions that are remembered again — harmless.
            out.push(Command::Persist {
                record: Record::Forgotten { coordinator, epoch, below },
                durability: Durability::Lazy,
            });
        }
        // Also when the mark did not move: a candidate answering an inquiry repeats it.
        let from = TxnId { coordinator, epoch, sequence: 0 };
        let prepared: Vec<TxnId> = self
            .branches
            .range(from..TxnId { coordinator, epoch, sequence: below })
            .filter(|(_, b)| matches!(b, Branch::Prepared { .. }))
            .map(|(&t, _)| t)
            .collect();
        for txn in prepared {
            let Some(Branch::Prepared { writes, .. }) = self.branches.remove(&txn) else {
                unreachable!("listed as prepared just above")
            };
            self.abort_prepared(txn, &writes, out);
            // Its decision is below the mark too: keep it only for status.
            self.aborted.remove(&txn);
            self.keep(txn, Decision::Abort);
        }
    }

    /// Raises the mark and moves the decisions it covers to the kept outcomes. Returns the
    /// ids newly covered.
    fn forget_decisions(
        &mut self,
        coordinator: NodeId,
        epoch: u32,
        below: u32,
    ) -> Option<std::ops::Range<TxnId>> {
        let range = self.forgotten.raise(coordinator, epoch, below)?;
        let committed: Vec<TxnId> = self.committed.range(range.clone()).copied().collect();
        for txn in committed {
            self.committed.remove(&txn);
            self.keep(txn, Decision::Commit);
        }
        let aborted: Vec<TxnId> = self.aborted.range(range.clone()).copied().collect();
        for txn in aborted {
            self.aborted.remove(&txn);
            self.keep(txn, Decision::Abort);
        }
        Some(range)
    }

    fn keep(&mut self, txn: TxnId, decision: Decision) {
        self.kept.keep(txn, decision, self.config.switches.forgotten_kept);
    }

    /// The resource, for reads a driver serves outside the protocol.
    pub fn resource(&self) -> &R {
        &self.store
    }

    /// The resource, for drivers that feed it what the protocol does not carry (a clock).
    pub fn resource_mut(&mut self) -> &mut R {
        &mut self.store
    }

    /// Why this participant voted `Aborted` on `txn`, if it still remembers.
    pub fn refusal(&self, txn: TxnId) -> Option<&R::Refusal> {
        self.refusals.find(txn)
    }

    /// Branches prepared here whose outcome this participant has not learned.
    pub fn in_doubt(&self) -> Vec<TxnId> {
        self.branches
            .iter()
            .filter(|(_, b)| matches!(b, Branch::Prepared { .. }))
            .map(|(&t, _)| t)
            .collect()
    }

    /// Every decision this participant knows, commits first.
    pub fn decisions(&self) -> impl Iterator<Item = (TxnId, Decision)> + '_ {
        let commits = self.committed.iter().map(|&t| (t, Decision::Commit));
        commits.chain(self.aborted.iter().map(|&t| (t, Decision::Abort)))
    }

    /// A reader is blocked on `txn`'s prepared write: asks a leader candidate for the outcome
    /// now (the coordinator first) instead of at the next inquiry timer. Returns whether `txn`
    /// is prepared here.
    pub fn inquire_now(&mut self, txn: TxnId, out: &mut Out<R>) -> bool {
        let Some(Branch::Prepared { participants, .. }) = self.branches.get(&txn) else {
            return false;
        };
        for to in self.config.candidates(txn) {
            let msg = Msg::Inquire { txn, participants: participants.clone() };
            out.push(Command::Send { to, msg });
        }
        true
    }

    fn decided(&self, txn: TxnId) -> Option<Decision> {
        if self.committed.contains(&txn) {
            Some(Decision::Commit)
        } else if self.aborted.contains(&txn) {
            Some(Decision::Abort)
        } else {
            None
        }
    }

    /// The ballot-0 vote, to the acceptors that take the normal case — or, `wide`, to every
    /// acceptor (the coordinator found one of the normal case's silent; `mod.rs`).
    fn send_vote(
        &self,
        txn: TxnId,
        value: Value,
        participants: &[NodeId],
        wide: bool,
        out: &mut Out<R>,
    ) {
        for &acceptor in self.config.vote_acceptors(wide) {
            let msg = Msg::Phase2a {
                txn,
                ballot: 0,
                values: vec![(self.id, value)],
                leader: txn.coordinator,
                participants: participants.to_vec(),
            };
            out.push(Command::Send { to: acceptor, msg });
        }
    }

    fn restart(&mut self, records: Vec<Rec<R>>, out: &mut Out<R>) {
        // Forget everything volatile; the resource keeps the configuration its driver gave it.
        self.store.reset();
        self.branches.clear();
        self.committed.clear();
        self.aborted.clear();
        self.forgotten.clear();
        self.kept.clear();
        for record in records {
            match record {
                Record::Snapshot { values, committed, aborted } => {
                    self.store.restore(values);
                    self.committed.extend(committed);
                    self.aborted.extend(aborted);
                }
                Record::Decisions { committed, aborted } => {
                    self.committed.extend(committed);
                    self.aborted.extend(aborted);
                }
                Record::Prepared { txn, participants, writes } => {
                    self.store.lock(txn, &writes);
                    self.branches
                        .insert(txn, Branch::Prepared { participants, writes, inquiry_attempt: 0 });
                }
                Record::Committed { txn } => {
                    let Some(Branch::Prepared { writes, .. }) = self.branches.remove(&txn) else {
                        panic!("{}: log commits {txn} without a prepare record before it", self.id);
                    };
                    self.store.unlock(txn, &writes);
                    self.store.apply(txn, &writes);
                    self.committed.insert(txn);
                }
                Record::Aborted { txn } => {
                    let prepared = self.branches.remove(&txn);
                    if let Some(Branch::Prepared { writes, .. }) = &prepared {
                        self.store.unlock(txn, writes);
                    }
                    if !self.forgotten.covers(txn) {
                        self.aborted.insert(txn);
                    } else if prepared.is_some() {
                        // The abort of a branch a mark found prepared (`on_forget`).
                        self.keep(txn, Decision::Abort);
                    }
                }
                Record::OnePhaseCommitted { txn, writes } => {
                    self.store.apply(txn, &writes);
                    self.committed.insert(txn);
                }
                Record::Forgotten { coordinator, epoch, below } => {
                    self.forget_decisions(coordinator, epoch, below);
                }
                Record::KeptOutcomes { kept } => {
                    for (txn, decision) in kept {
                        self.keep(txn, decision);
                    }
                }
                other => panic!("participant {} found {other:?} in its log", self.id),
            }
        }
        // A branch the log still has prepared below a mark it also has (a crash lost its lazy
        // ABORTED record after the checkpoint): aborted, by the mark's promise.
        let stale: Vec<TxnId> =
            self.branches.keys().copied().filter(|&t| self.forgotten.covers(t)).collect();
        for txn in stale {
            if let Some(Branch::Prepared { writes, .. }) = self.branches.remove(&txn) {
                self.store.unlock(txn, &writes);
                self.keep(txn, Decision::Abort);
                out.push(Command::Persist {
                    record: Record::Aborted { txn },
                    durability: Durability::Lazy,
                });
            }
        }
        // Repeat the vote (the same value: it is durable) and ask at once.
        let prepared: Vec<(TxnId, Vec<NodeId>)> = self
            .branches
            .iter()
            .filter_map(|(&txn, b)| match b {
                Branch::Prepared { participants, .. } => Some((txn, participants.clone())),
                _ => None,
            })
            .collect();
        for (txn, participants) in prepared {
            // Wide: whichever acceptors are down now, a majority of the others gets it.
            self.send_vote(txn, Value::Prepared, &participants, true, out);
            out.push(Command::SetTimer {
                timer: Timer::Inquire { txn, attempt: 0 },
                after_us: self.config.inquiry_base_us,
            });
        }
    }

    /// Checks a new branch against the in-flight limit and the resource, remembering why a
    /// refused one was refused.
    fn admit(&mut self, txn: TxnId, change: &R::Change) -> bool {
        let limits = (self.branches.len(), self.config.max_in_flight);
        self.refusals.admit(&self.store, txn, change, limits)
    }

    fn on_prepare(
        &mut self,
        txn: TxnId,
        participants: Vec<NodeId>,
        writes: R::Change,
        wide: bool,
        out: &mut Out<R>,
    ) {
        if self.decided(txn).is_some() || self.branches.contains_key(&txn) {
            return; // a duplicate: the vote is already on its way or decided
        }
        if self.forgotten.covers(txn) {
            return; // a late duplicate of a finished transaction: it must not prepare again
        }
        if self.possibly_forgotten(txn) {
            return; // no second ballot-0 vote (see `possibly_forgotten`)
        }
        if !self.admit(txn, &writes) {
            out.push(Command::Persist {
                record: Record::Aborted { txn },
                durability: Durability::Forced,
            });
            self.branches.insert(txn, Branch::VotingAbort { participants, wide });
            return;
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
        let abort_requested = false;
        self.branches
            .insert(txn, Branch::Preparing { participants, writes, abort_requested, wide });
    }

    fn on_decision(&mut self, txn: TxnId, decision: Decision, out: &mut Out<R>) {
        if let Some(known) = self.decided(txn) {
            // Decisions are final; the coordinator resends until it hears this.
            return self.acknowledge(txn, known, out);
        }
        if self.forgotten.covers(txn) {
            return self.acknowledge(txn, decision, out); // learned, acknowledged, forgotten
        }
        if decision == Decision::Commit && self.possibly_forgotten(txn) {
            // Its lost vote was YES and the transaction committed: the outcome is known now,
            // the writes went with the data. Say so, and acknowledge.
            self.committed.insert(txn);
            if let Some(amnesia) = &mut self.amnesia {
                amnesia.lost_commit(txn);
            }
            return self.acknowledge(txn, decision, out);
        }
        match (self.branches.remove(&txn), decision) {
            (Some(Branch::Prepared { writes, .. }), Decision::Commit) => {
                out.push(Command::Persist {
                    record: Record::Committed { txn },
                    durability: Durability::Forced,
                });
                self.branches.insert(txn, Branch::Committing { writes });
            }
            (Some(Branch::Prepared { writes, .. }), Decision::Abort) => {
                self.abort_prepared(txn, &writes, out);
            }
            (Some(Branch::Preparing { participants, writes, wide, .. }), Decision::Abort) => {
                let abort_requested = true;
                self.branches
                    .insert(txn, Branch::Preparing { participants, writes, abort_requested, wide });
            }
            (None, Decision::Abort) => {
                self.aborted.insert(txn);
                self.acknowledge(txn, Decision::Abort, out);
            }
            (Some(other), _) => {
                // Committing, voting abort, or COMMIT before our vote was durable (impossible:
                // commit needs our Prepared chosen). Leave it as it is.
                self.branches.insert(txn, other);
            }
            (None, Decision::Commit) => {}
        }
    }

    /// The only participant: decide alone. Either outcome is forced before it is answered.
    fn on_commit_one_phase(&mut self, txn: TxnId, writes: R::Change, out: &mut Out<R>) {
        if let Some(decision) = self.decided(txn) {
            let msg = Msg::OnePhaseResult { txn, decision };
            return out.push(Command::Send { to: txn.coordinator, msg });
        }
        if self.branches.contains_key(&txn) {
            return; // answered once the pending record is durable
        }
        if self.forgotten.covers(txn) {
            return; // the coordinator had the result before it passed the mark
        }
        if self.possibly_forgotten(txn) {
            return; // it may have been applied before the loss: neither again nor refused
        }
        if !self.admit(txn, &writes) {
            out.push(Command::Persist {
                record: Record::Aborted { txn },
                durability: Durability::Forced,
            });
            self.branches.insert(txn, Branch::OnePhaseAborting);
            return;
        }
        self.store.lock(txn, &writes);
        out.push(Command::Persist {
            record: Record::OnePhaseCommitted { txn, writes: writes.clone() },
            durability: Durability::Forced,
        });
        self.branches.insert(txn, Branch::OnePhaseCommitting { writes });
    }

    fn abort_prepared(&mut self, txn: TxnId, writes: &R::Change, out: &mut Out<R>) {
        self.store.unlock(txn, writes);
        self.aborted.insert(txn);
        out.push(Command::Persist {
            record: Record::Aborted { txn },
            durability: Durability::Lazy,
        });
        out.push(Command::Outcome { txn, decision: Decision::Abort });
        self.acknowledge(txn, Decision::Abort, out);
    }

    fn on_persisted(&mut self, record: Rec<R>, out: &mut Out<R>) {
        match record {
            Record::Prepared { txn, .. } => {
                let Some(Branch::Preparing { participants, writes, abort_requested, wide }) =
                    self.branches.remove(&txn)
                else {
                    panic!(
                        "{}: prepare record of {txn} durable, but it was not preparing",
                        self.id
                    );
                };
                if abort_requested {
                    return self.abort_prepared(txn, &writes, out);
                }
                self.send_vote(txn, Value::Prepared, &participants, wide, out);
                out.push(Command::SetTimer {
                    timer: Timer::Inquire { txn, attempt: 0 },
                    after_us: self.config.inquiry_base_us,
                });
                self.branches
                    .insert(txn, Branch::Prepared { participants, writes, inquiry_attempt: 0 });
            }
            Record::Aborted { txn } => match self.branches.remove(&txn) {
                Some(Branch::VotingAbort { participants, wide }) => {
                    self.aborted.insert(txn);
                    out.push(Command::Outcome { txn, decision: Decision::Abort });
                    self.send_vote(txn, Value::Aborted, &participants, wide, out);
                }
                Some(Branch::PromisingAbort { to }) => {
                    self.aborted.insert(txn);
                    out.push(Command::Send {
                        to,
                        msg: Msg::Decision { txn, decision: Decision::Abort },
                    });
                }
                Some(Branch::OnePhaseAborting) => {
                    self.aborted.insert(txn);
                    out.push(Command::Outcome { txn, decision: Decision::Abort });
                    let msg = Msg::OnePhaseResult { txn, decision: Decision::Abort };
                    out.push(Command::Send { to: txn.coordinator, msg });
                }
                _ => panic!("{}: forced abort of {txn} durable in another state", self.id),
            },
            Record::Committed { txn } => {
                let Some(Branch::Committing { writes }) = self.branches.remove(&txn) else {
                    panic!(
                        "{}: commit record of {txn} durable, but it was not committing",
                        self.id
                    );
                };
                self.store.unlock(txn, &writes);
                self.store.apply(txn, &writes);
                self.committed.insert(txn);
                out.push(Command::Outcome { txn, decision: Decision::Commit });
                self.acknowledge(txn, Decision::Commit, out);
            }
            Record::OnePhaseCommitted { txn, .. } => {
                let Some(Branch::OnePhaseCommitting { writes }) = self.branches.remove(&txn) else {
                    panic!(
                        "{}: one-phase record of {txn} durable, but it was not committing",
                        self.id
                    );
                };
                self.store.unlock(txn, &writes);
                self.store.apply(txn, &writes);
                self.committed.insert(txn);
                out.push(Command::Outcome { txn, decision: Decision::Commit });
                let msg = Msg::OnePhaseResult { txn, decision: Decision::Commit };
                out.push(Command::Send { to: txn.coordinator, msg });
            }
            other => panic!("participant {} never forces {other:?}", self.id),
        }
    }

    /// The transaction's coordinator asks for the outcome (a client's status query after the
    /// coordinator forgot it). A decided branch answers; a prepared one cannot yet; one never
    /// seen here promises, durably, never to prepare — without this participant's Prepared
    /// the transaction cannot commit, so ABORT is then its final answer.
    fn on_status_inquiry(&mut self, from: NodeId, txn: TxnId, out: &mut Out<R>) {
        if from != txn.coordinator {
            return;
        }
        if let Some(decision) = self.decided(txn) {
            out.push(Command::Send { to: from, msg: Msg::Decision { txn, decision } });
        } else if self.forgotten.covers(txn) {
            // Finished and forgotten: the outcome if it is kept, else say so — never ABORT,
            // which would misstate a transaction that committed.
            let msg = match self.kept.get(txn) {
                Some(decision) => Msg::Decision { txn, decision },
                None => Msg::Forgotten { txn },
            };
            out.push(Command::Send { to: from, msg });
        } else if self.possibly_forgotten(txn) {
            // It may have voted YES before the loss: no promise of ABORT; the coordinator's
            // ballots find the outcome without this answer.
        } else if let std::collections::btree_map::Entry::Vacant(entry) = self.branches.entry(txn) {
            entry.insert(Branch::PromisingAbort { to: from });
            out.push(Command::Persist {
                record: Record::Aborted { txn },
                durability: Durability::Forced,
            });
        }
    }

    fn on_inquiry_timer(&mut self, txn: TxnId, attempt: u32, out: &mut Out<R>) {
        let Some(Branch::Prepared { participants, inquiry_attempt, .. }) =
            self.branches.get_mut(&txn)
        else {
            return;
        };
        if *inquiry_attempt != attempt {
            return;
        }
        *inquiry_attempt += 1;
        let candidates = self.config.candidates(txn);
        let to = candidates[attempt as usize % candidates.len()];
        out.push(Command::Send {
            to,
            msg: Msg::Inquire { txn, participants: participants.clone() },
        });
        let after_us =
            backoff_us(self.config.inquiry_base_us, self.config.inquiry_max_us, attempt + 1);
        out.push(Command::SetTimer {
            timer: Timer::Inquire { txn, attempt: attempt + 1 },
            after_us,
        });
    }
}

impl<R: Resource> Core for Participant<R> {
    type Msg = Msg<R::Change>;
    type Record = Rec<R>;
    type Timer = Timer;
    type Change = R::Change;

    fn handle(
        &mut self,
        input: Input<Self::Msg, Self::Record, Timer, R::Change>,
        out: &mut Out<R>,
    ) {
        match input {
            Input::Restart { records } => self.restart(records, out),
            Input::Persisted(record) => self.on_persisted(record, out),
            Input::Timer(Timer::Inquire { txn, attempt }) => {
                self.on_inquiry_timer(txn, attempt, out);
            }
            Input::Timer(_) | Input::Begin { .. } | Input::Reservation(_) => {}
            Input::Message { from, msg } => match msg {
                Msg::Prepare { txn, participants, writes, wide } => {
                    self.on_prepare(txn, participants, writes, wide, out);
                }
                Msg::Decision { txn, decision } => self.on_decision(txn, decision, out),
                Msg::Inquire { txn, .. } => self.on_status_inquiry(from, txn, out),
                Msg::CommitOnePhase { txn, writes } => self.on_commit_one_phase(txn, writes, out),
                Msg::Forget { coordinator, epoch, below } => {
                    self.on_forget(coordinator, epoch, below, out);
                }
                _ => {}
            },
        }
    }
}

impl<R: Resource> Checkpoint for Participant<R> {
    /// The applied state and the decisions, then what every open branch needs after a crash.
    fn live_records(&self) -> Vec<Rec<R>> {
        // The decisions in chunks: the first ones ride in the snapshot, the rest follow it.
        let committed: Vec<TxnId> = self.committed.iter().copied().collect();
        let aborted: Vec<TxnId> = self.aborted.iter().copied().collect();
        let chunk = |list: &[TxnId], i: usize| -> Vec<TxnId> {
            list.chunks(crate::CHECKPOINT_CHUNK).nth(i).map(<[_]>::to_vec).unwrap_or_default()
        };
        let chunks = committed.len().max(aborted.len()).div_ceil(crate::CHECKPOINT_CHUNK).max(1);
        let mut live = vec![Record::Snapshot {
            values: self.store.snapshot(),
            committed: chunk(&committed, 0),
            aborted: chunk(&aborted, 0),
        }];
        live.extend((1..chunks).map(|i| Record::Decisions {
            committed: chunk(&committed, i),
            aborted: chunk(&aborted, i),
        }));
        live.extend(self.forgotten.iter().map(|(coordinator, epoch, below)| Record::Forgotten {
            coordinator,
            epoch,
            below,
        }));
        live.extend(self.kept.chunks().into_iter().map(|kept| Record::KeptOutcomes { kept }));
        for (&txn, branch) in &self.branches {
            match branch {
                Branch::Preparing { participants, writes, .. }
                | Branch::Prepared { participants, writes, .. } => {
                    let (participants, writes) = (participants.clone(), writes.clone());
                    live.push(Record::Prepared { txn, participants, writes });
                }
                // Its commit record is already on its way to the log, ahead of this checkpoint.
                Branch::Committing { writes } => {
                    let writes = writes.clone();
                    live.push(Record::Prepared { txn, participants: Vec::new(), writes });
                    live.push(Record::Committed { txn });
                }
                Branch::VotingAbort { .. }
                | Branch::PromisingAbort { .. }
                | Branch::OnePhaseAborting => {
                    live.push(Record::Aborted { txn });
                }
                Branch::OnePhaseCommitting { writes } => {
                    live.push(Record::OnePhaseCommitted { txn, writes: writes.clone() });
                }
            }
        }
        live
    }
}

impl ParticipantView for Participant<Store> {
    fn in_doubt(&self) -> Vec<TxnId> {
        Participant::in_doubt(self)
    }
    fn store(&self) -> &Store {
        &self.store
    }
}

impl<R: Resource> crate::ResourceParticipant for Participant<R> {
    type Resource = R;

    fn resource(&self) -> &R {
        Participant::resource(self)
    }
    fn resource_mut(&mut self) -> &mut R {
        Participant::resource_mut(self)
    }
    fn in_doubt(&self) -> Vec<TxnId> {
        Participant::in_doubt(self)
    }
    fn refusal(&self, txn: TxnId) -> Option<&R::Refusal> {
        Participant::refusal(self, txn)
    }
    fn inquire_now(&mut self, txn: TxnId, out: &mut Out<R>) -> bool {
        Participant::inquire_now(self, txn, out)
    }
    fn decided(&self) -> Vec<(TxnId, Decision)> {
        self.decisions().collect()
    }
}

impl<R: Resource> crate::amnesia::AfterDataLoss for Participant<R> {
    fn amnesia(&self) -> Option<&crate::amnesia::Amnesia> {
        self.amnesia.as_ref()
    }
    fn amnesia_slot(&mut self) -> &mut Option<crate::amnesia::Amnesia> {
        &mut self.amnesia
    }
}
