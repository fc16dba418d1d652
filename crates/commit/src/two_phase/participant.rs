//! The 2PC participant.
//!
//! Per branch:
//!
//! ```text
//!  PREPARE ─check+lock─► Preparing ──Persisted──► Prepared ──COMMIT──► Committing ──Persisted──► committed
//!     │ refused             │ ABORT arrived           │ ABORT             (ACK sent after)
//!     ▼                     ▼ (abort once durable)    ▼
//!  VOTE NO, aborted     aborted                    aborted (lazy record)
//!
//!  COMMIT-ONE-PHASE ─► OnePhaseCommitting / OnePhaseAborting ──Persisted──► result sent
//!  INQUIRE from a peer, never voted ─► Refusing ──Persisted(ABORTED)──► answer ABORT
//!
//!  early acknowledgement: refused ─► VotingNo ──Persisted(ABORTED)──► VOTE NO
//!                         Prepared: INQUIRE (peer or coordinator) ─► answer VOTE YES;
//!                                   asks the peers, not the coordinator; YES from every peer ─► commit
//! ```
//!
//! Decisions are final: once a branch is decided, later messages about it are answered from
//! `decided` and never change it. `decided` mirrors every decision in the log, so a duplicate
//! PREPARE that arrives long after the decision is answered, not re-executed. A checkpoint
//! keeps it (a few bytes per transaction, against a full record per write before): forgetting
//! a commit would let a peer's inquiry be answered with a forced ABORT, so bounding it needs
//! the coordinator to say which transactions every participant has acknowledged.

use std::collections::BTreeMap;

use concord_types::{Decision, NodeId, TxnId, Vote};

use super::{Config, Msg, Record, Timer};
use crate::backoff_us;
use crate::resource::Refusals;
use crate::store::Store;
use crate::{Change, Command, Core, Durability, Input, ParticipantView, Resource};

type Out<R> = Vec<
    Command<
        Msg<<R as Resource>::Change>,
        Record<<R as Resource>::Change, <R as Resource>::Snapshot>,
        Timer,
    >,
>;
type Rec<R> = Record<<R as Resource>::Change, <R as Resource>::Snapshot>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Branch<C> {
    /// PREPARED written, not yet durable; locks held. `abort_requested`: ABORT arrived meanwhile.
    Preparing {
        peers: Vec<NodeId>,
        writes: C,
        abort_requested: bool,
        early_ack: bool,
    },
    /// Voted YES; locks held until the decision arrives.
    Prepared {
        peers: Vec<NodeId>,
        writes: C,
        inquiry_attempt: u32,
        /// The prepares decide the outcome (the `two_phase` module docs).
        early_ack: bool,
        /// Early acknowledgement: peers that answered YES (each is durably prepared, for good).
        confirmed: Vec<NodeId>,
    },
    /// COMMITTED written, not yet durable.
    Committing {
        writes: C,
    },
    OnePhaseCommitting {
        writes: C,
    },
    /// One-phase branch refused; its ABORTED record is being forced before the answer.
    OnePhaseAborting,
    /// A peer asked about a transaction this node never voted on; ABORTED is being forced
    /// before answering, so the promise survives a crash.
    Refusing {
        asked_by: NodeId,
    },
    /// Early acknowledgement: a refused branch forces ABORTED before it votes NO, so it can
    /// never prepare later (after a crash, a late PREPARE) and complete the set of prepares.
    VotingNo,
}

/// A 2PC participant over resource `R` (the simulator's [`Store`] by default).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Participant<R: Resource = Store> {
    id: NodeId,
    config: Config,
    store: R,
    branches: BTreeMap<TxnId, Branch<R::Change>>,
    decided: BTreeMap<TxnId, Decision>,
    /// Per coordinator and epoch, the sequence below which every transaction has finished and
    /// its decision here is forgotten (the coordinator's latest FORGET; module docs).
    forgotten: BTreeMap<(NodeId, u32), u32>,
    /// Decisions forgotten by the protocol but kept, the newest `switches.forgotten_kept`, for
    /// one purpose: to answer a status query with the outcome rather than FORGOTTEN. Nothing
    /// else reads them (a late PREPARE or COMMIT below the mark is still ignored).
    kept: crate::status::KeptOutcomes,
    /// Why recent NO votes were cast, newest last (bounded), so a driver can tell its client.
    refusals: Refusals<R::Refusal>,
    /// Set after an accepted loss of part of the log: what must not be presumed (module
    /// `amnesia`). Not in the log: the driver sets it from the data directory at every start.
    amnesia: Option<crate::amnesia::Amnesia>,
}

impl<R: Resource> Participant<R> {
    pub fn new(id: NodeId, config: Config) -> Self {
        Self::with_resource(id, config, R::default())
    }

    /// A participant over a resource the driver made (e.g. one configured with limits).
    pub fn with_resource(id: NodeId, config: Config, resource: R) -> Self {
        Participant {
            id,
            config,
            store: resource,
            branches: BTreeMap::new(),
            decided: BTreeMap::new(),
            forgotten: BTreeMap::new(),
            kept: crate::status::KeptOutcomes::default(),
            refusals: Refusals::default(),
            amnesia: None,
        }
    }

    /// No record here, and there may have been one before an accepted loss: presume nothing.
    /// (Below the coordinator's FORGET mark every participant acknowledged: nothing is owed.)
    fn possibly_forgotten(&self, txn: TxnId) -> bool {
        self.amnesia.as_ref().is_some_and(|a| a.may_have_forgotten(txn))
            && !self.decided.contains_key(&txn)
            && !self.branches.contains_key(&txn)
            && !self.is_forgotten(txn)
    }

    /// The resource, for reads a driver serves outside the protocol.
    pub fn resource(&self) -> &R {
        &self.store
    }

    /// The resource, for drivers that feed it what the protocol does not carry (a clock).
    pub fn resource_mut(&mut self) -> &mut R {
        &mut self.store
    }

    /// Why this participant voted NO on `txn`, if it still remembers.
    pub fn refusal(&self, txn: TxnId) -> Option<&R::Refusal> {
        self.refusals.find(txn)
    }

    /// Whether `txn` is below its coordinator's low-water mark: finished, and forgotten here.
    fn is_forgotten(&self, txn: TxnId) -> bool {
        self.forgotten.get(&(txn.coordinator, txn.epoch)).is_some_and(|&below| txn.sequence < below)
    }

    /// FORGET from `coordinator`: drop the decisions below its new mark. Open branches stay
    /// (a prepared branch below the mark belongs to an aborted transaction whose ABORT was
    /// lost: it still asks, and is answered from the mark).
    fn on_forget(&mut self, coordinator: NodeId, epoch: u32, below: u32) {
        let mark = self.forgotten.entry((coordinator, epoch)).or_insert(0);
        if below <= *mark {
            return; // an older or repeated FORGET
        }
        *mark = below;
        let from = TxnId { coordinator, epoch, sequence: 0 };
        let to = TxnId { coordinator, epoch, sequence: below };
        let finished: Vec<TxnId> = self.decided.range(from..to).map(|(&txn, _)| txn).collect();
        for txn in finished {
            let decision = self.decided.remove(&txn).expect("listed just above");
            self.keep(txn, decision);
        }
    }

    /// Keeps a forgotten decision for status queries, dropping the oldest beyond the bound.
    fn keep(&mut self, txn: TxnId, decision: Decision) {
        self.kept.keep(txn, decision, self.config.switches.forgotten_kept);
    }

    /// Transactions this participant voted YES on and has not yet learned the outcome of.
    pub fn in_doubt(&self) -> Vec<TxnId> {
        self.branches
            .iter()
            .filter(|(_, b)| matches!(b, Branch::Prepared { .. }))
            .map(|(&txn, _)| txn)
            .collect()
    }

    /// Checks a new branch against the in-flight limit and the resource, remembering why a
    /// refused one was refused.
    fn admit(&mut self, txn: TxnId, change: &R::Change) -> bool {
        let limits = (self.branches.len(), self.config.max_in_flight);
        self.refusals.admit(&self.store, txn, change, limits)
    }

    /// A reader is blocked on `txn`'s prepared write: asks for the outcome now instead of at the
    /// next inquiry timer — the termination protocol on demand, so a reader never waits longer
    /// than one round trip to a live coordinator (or a peer that knows). Returns whether `txn`
    /// is prepared here (otherwise nothing is sent).
    pub fn inquire_now(&mut self, txn: TxnId, out: &mut Out<R>) -> bool {
        let Some(Branch::Prepared { peers, early_ack, .. }) = self.branches.get(&txn) else {
            return false;
        };
        self.ask_for_outcome(txn, peers, *early_ack, out);
        true
    }

    /// A prepared branch asks who may know. Early-acknowledged ones ask only their peers: the
    /// coordinator, having lost its lazy decision record in a crash, would presume abort.
    fn ask_for_outcome(&self, txn: TxnId, peers: &[NodeId], early_ack: bool, out: &mut Out<R>) {
        if !early_ack {
            out.push(Command::Send { to: txn.coordinator, msg: Msg::Inquire { txn } });
        }
        if early_ack || self.config.switches.cooperative_termination {
            for &peer in peers.iter().filter(|&&p| p != self.id) {
                out.push(Command::Send { to: peer, msg: Msg::Inquire { txn } });
            }
        }
    }

    /// Every decision this participant remembers (aborts include NO votes it never logged).
    pub fn decisions(&self) -> &BTreeMap<TxnId, Decision> {
        &self.decided
    }

    fn restart(&mut self, records: Vec<Rec<R>>, out: &mut Out<R>) {
        self.store.reset();
        self.branches.clear();
        self.decided.clear();
        self.forgotten.clear();
        self.kept.clear();
        for record in records {
            match record {
                Record::Prepared { txn, peers, writes, early_ack } => {
                    self.store.lock(txn, &writes);
                    let confirmed = Vec::new();
                    let branch = Branch::Prepared {
                        peers,
                        writes,
                        inquiry_attempt: 0,
                        early_ack,
                        confirmed,
                    };
                    self.branches.insert(txn, branch);
                }
                Record::Committed { txn } => {
                    let Some(Branch::Prepared { writes, .. }) = self.branches.remove(&txn) else {
                        panic!("{}: log commits {txn} without a prepare record before it", self.id);
                    };
                    self.store.unlock(txn, &writes);
                    self.store.apply(txn, &writes);
                    self.decided.insert(txn, Decision::Commit);
                }
                Record::OnePhaseCommitted { txn, writes } => {
                    self.store.apply(txn, &writes);
                    self.decided.insert(txn, Decision::Commit);
                }
                Record::Aborted { txn } => {
                    if let Some(Branch::Prepared { writes, .. }) = self.branches.remove(&txn) {
                        self.store.unlock(txn, &writes);
                    }
                    self.decided.insert(txn, Decision::Abort);
                }
                Record::Snapshot { values, decided } => {
                    self.store.restore(values);
                    self.decided.extend(decided);
                }
                Record::Decisions { decided } => self.decided.extend(decided),
                Record::Forgotten { coordinator, epoch, below } => {
                    self.on_forget(coordinator, epoch, below);
                }
                Record::KeptOutcomes { kept } => {
                    for (txn, decision) in kept {
                        self.keep(txn, decision);
                    }
                }
                other => panic!(
                    "participant {} found a coordinator record in its log: {other:?}",
                    self.id
                ),
            }
        }
        // Every branch still prepared asks for its outcome at once.
        for &txn in self.branches.keys() {
            out.push(Command::SetTimer { timer: Timer::Inquire { txn, attempt: 0 }, after_us: 0 });
        }
    }

    fn send(out: &mut Out<R>, to: NodeId, msg: Msg<R::Change>) {
        out.push(Command::Send { to, msg });
    }

    fn on_prepare(
        &mut self,
        txn: TxnId,
        peers: Vec<NodeId>,
        writes: R::Change,
        early_ack: bool,
        out: &mut Out<R>,
    ) {
        let coordinator = txn.coordinator;
        match self.decided.get(&txn) {
            Some(Decision::Abort) => {
                return Self::send(out, coordinator, Msg::Vote { txn, vote: Vote::No })
            }
            Some(Decision::Commit) => return, // a stale duplicate: the coordinator already decided
            None => {}
        }
        match self.branches.get(&txn) {
            Some(Branch::Prepared { .. }) => {
                return Self::send(out, coordinator, Msg::Vote { txn, vote: Vote::Yes });
            }
            Some(Branch::Refusing { .. }) => {
                return Self::send(out, coordinator, Msg::Vote { txn, vote: Vote::No });
            }
            Some(_) => return, // the vote follows once the pending record is durable
            None => {}
        }
        if self.is_forgotten(txn) {
            // A late duplicate of a finished transaction: it must not prepare again, and nobody
            // waits for a vote (a NO would also misstate a transaction that committed).
            return;
        }
        if self.possibly_forgotten(txn) {
            // It may have voted before the loss; a second vote could contradict the first. No
            // vote: the coordinator decides without it (its vote timeout aborts, unless the
            // lost vote was a YES it already counted).
            return;
        }
        let refused = if writes.is_read_only() && self.config.switches.read_only {
            match self.store.finish_read_only(txn, &writes) {
                Ok(()) => {
                    return Self::send(out, coordinator, Msg::Vote { txn, vote: Vote::ReadOnly })
                }
                Err(refusal) => {
                    self.refusals.remember(txn, refusal);
                    true
                }
            }
        } else {
            !self.admit(txn, &writes)
        };
        if refused && early_ack {
            // The refusal must outlive a crash: the prepares alone decide this transaction.
            out.push(Command::Persist {
                record: Record::Aborted { txn },
                durability: Durability::Forced,
            });
            self.branches.insert(txn, Branch::VotingNo);
            return;
        }
        if refused {
            // Voting NO aborts the branch at once. Nothing is logged: the coordinator cannot
            // commit without this vote, and a repeated PREPARE is answered from `decided`.
            self.decided.insert(txn, Decision::Abort);
            out.push(Command::Outcome { txn, decision: Decision::Abort });
            return Self::send(out, coordinator, Msg::Vote { txn, vote: Vote::No });
        }
        self.store.lock(txn, &writes);
        out.push(Command::Persist {
            record: Record::Prepared {
                txn,
                peers: peers.clone(),
                writes: writes.clone(),
                early_ack,
            },
            durability: Durability::Forced,
        });
        let branch = Branch::Preparing { peers, writes, abort_requested: false, early_ack };
        self.branches.insert(txn, branch);
    }

    fn on_prepare_durable(&mut self, txn: TxnId, out: &mut Out<R>) {
        let Some(Branch::Preparing { peers, writes, abort_requested, early_ack }) =
            self.branches.remove(&txn)
        else {
            panic!("{}: prepare record of {txn} became durable, but it was not preparing", self.id);
        };
        if abort_requested {
            self.abort_prepared(txn, &writes, out);
            return;
        }
        let confirmed = Vec::new();
        let branch = Branch::Prepared { peers, writes, inquiry_attempt: 0, early_ack, confirmed };
        self.branches.insert(txn, branch);
        Self::send(out, txn.coordinator, Msg::Vote { txn, vote: Vote::Yes });
        out.push(Command::SetTimer {
            timer: Timer::Inquire { txn, attempt: 0 },
            after_us: self.config.inquiry_base_us,
        });
    }

    /// Aborts a branch whose prepare record is durable: release, and record lazily — should the
    /// record be lost, recovery finds the branch prepared, asks, and is told ABORT.
    fn abort_prepared(&mut self, txn: TxnId, writes: &R::Change, out: &mut Out<R>) {
        self.store.unlock(txn, writes);
        self.decided.insert(txn, Decision::Abort);
        out.push(Command::Persist {
            record: Record::Aborted { txn },
            durability: Durability::Lazy,
        });
        out.push(Command::Outcome { txn, decision: Decision::Abort });
    }

    fn on_decision(&mut self, from: NodeId, txn: TxnId, decision: Decision, out: &mut Out<R>) {
        if let Some(&known) = self.decided.get(&txn) {
            // Decisions are final. A repeated COMMIT from the coordinator is acknowledged again
            // (its first ACK may have been lost) and applied no second time. A contradicting
            // message can only be stale (e.g. the coordinator answering a duplicate vote after
            // it forgot the transaction) and is ignored.
            if known == Decision::Commit && decision == Decision::Commit && from == txn.coordinator
            {
                Self::send(out, txn.coordinator, Msg::Ack { txn });
            }
            return;
        }
        let forgotten = self.is_forgotten(txn);
        let amnesiac = self.possibly_forgotten(txn);
        match (self.branches.get_mut(&txn), decision) {
            (Some(Branch::Prepared { .. }), Decision::Commit) => self.commit_prepared(txn, out),
            (Some(Branch::Prepared { .. }), Decision::Abort) => {
                let Some(Branch::Prepared { writes, .. }) = self.branches.remove(&txn) else {
                    unreachable!("matched Prepared just above")
                };
                self.abort_prepared(txn, &writes, out);
            }
            (Some(Branch::Preparing { abort_requested, .. }), Decision::Abort) => {
                *abort_requested = true;
            }
            // Only a YES voter can be told COMMIT, and this branch has not voted: the message
            // is forged or from a broken sender. Nothing changes (it must not crash the shard:
            // it is input, not an invariant of this core).
            (Some(Branch::Preparing { .. }), Decision::Commit) => {}
            // Commit record already on its way; the ACK follows it.
            (Some(Branch::Committing { .. }), _) => {}
            // One-phase and refusing branches decide themselves; they take no decision messages.
            (
                Some(
                    Branch::OnePhaseCommitting { .. }
                    | Branch::OnePhaseAborting
                    | Branch::Refusing { .. }
                    | Branch::VotingNo,
                ),
                _,
            ) => {}
            // A late duplicate about a finished transaction: nothing to remember.
            (None, _) if forgotten => {}
            (None, Decision::Abort) => {
                // ABORT before PREPARE (a vote timeout, reordering): remember it, so a late
                // PREPARE is answered NO. Volatile is enough: after a crash a late PREPARE would
                // get YES, and the coordinator, having forgotten the transaction, answers ABORT.
                self.decided.insert(txn, Decision::Abort);
            }
            (None, Decision::Commit) if amnesiac => {
                // It voted YES before the loss and its coordinator committed: the outcome is
                // known now, but the writes went with the data. Say so, and acknowledge (the
                // coordinator must not wait forever for writes nobody has).
                if from == txn.coordinator {
                    self.decided.insert(txn, Decision::Commit);
                    if let Some(amnesia) = &mut self.amnesia {
                        amnesia.lost_commit(txn);
                    }
                    Self::send(out, txn.coordinator, Msg::Ack { txn });
                }
            }
            (None, Decision::Commit) => {
                // Only a participant that voted YES can be told COMMIT, and a YES vote implies a
                // durable record, which `decided` or `branches` would show. Leave it unanswered:
                // the liveness checker reports the coordinator still waiting.
            }
        }
    }

    /// A prepared branch learned COMMIT: force the record; apply and acknowledge once durable.
    fn commit_prepared(&mut self, txn: TxnId, out: &mut Out<R>) {
        let Some(Branch::Prepared { writes, .. }) = self.branches.remove(&txn) else {
            unreachable!("commit_prepared is called only for prepared branches")
        };
        out.push(Command::Persist {
            record: Record::Committed { txn },
            durability: Durability::Forced,
        });
        self.branches.insert(txn, Branch::Committing { writes });
    }

    /// Early acknowledgement: a peer says it is durably prepared. Once every peer has, every
    /// prepare is durable — the transaction is committed, whoever else knows it.
    fn on_peer_vote(&mut self, from: NodeId, txn: TxnId, vote: Vote, out: &mut Out<R>) {
        let me = self.id;
        let Some(Branch::Prepared { peers, early_ack: true, confirmed, .. }) =
            self.branches.get_mut(&txn)
        else {
            return;
        };
        if vote != Vote::Yes || from == me || !peers.contains(&from) {
            return;
        }
        if !confirmed.contains(&from) {
            confirmed.push(from);
        }
        if peers.iter().all(|p| *p == me || confirmed.contains(p)) {
            self.commit_prepared(txn, out);
        }
    }

    fn on_commit_durable(&mut self, txn: TxnId, out: &mut Out<R>) {
        let Some(Branch::Committing { writes }) = self.branches.remove(&txn) else {
            panic!("{}: commit record of {txn} became durable, but it was not committing", self.id);
        };
        self.store.unlock(txn, &writes);
        self.store.apply(txn, &writes);
        self.decided.insert(txn, Decision::Commit);
        out.push(Command::Outcome { txn, decision: Decision::Commit });
        Self::send(out, txn.coordinator, Msg::Ack { txn });
    }

    fn on_commit_one_phase(&mut self, txn: TxnId, writes: R::Change, out: &mut Out<R>) {
        if let Some(&decision) = self.decided.get(&txn) {
            return Self::send(out, txn.coordinator, Msg::OnePhaseResult { txn, decision });
        }
        if self.branches.contains_key(&txn) {
            return; // answered once the pending record is durable
        }
        if self.is_forgotten(txn) {
            return; // a late duplicate: applying it would apply it twice; nobody waits for it
        }
        if self.possibly_forgotten(txn) {
            // It may have been applied before the loss: neither apply it again nor refuse it.
            return;
        }
        // Either outcome is forced before the answer: the coordinator may resend, and the
        // participant must give the same answer every time.
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

    fn on_one_phase_commit_durable(&mut self, txn: TxnId, out: &mut Out<R>) {
        let Some(Branch::OnePhaseCommitting { writes }) = self.branches.remove(&txn) else {
            panic!(
                "{}: one-phase record of {txn} became durable, but it was not committing",
                self.id
            );
        };
        self.store.unlock(txn, &writes);
        self.store.apply(txn, &writes);
        self.decided.insert(txn, Decision::Commit);
        out.push(Command::Outcome { txn, decision: Decision::Commit });
        Self::send(out, txn.coordinator, Msg::OnePhaseResult { txn, decision: Decision::Commit });
    }

    fn on_abort_durable(&mut self, txn: TxnId, out: &mut Out<R>) {
        match self.branches.remove(&txn) {
            Some(Branch::OnePhaseAborting) => {
                self.decided.insert(txn, Decision::Abort);
                out.push(Command::Outcome { txn, decision: Decision::Abort });
                let msg = Msg::OnePhaseResult { txn, decision: Decision::Abort };
                Self::send(out, txn.coordinator, msg);
            }
            Some(Branch::Refusing { asked_by }) => {
                self.decided.insert(txn, Decision::Abort);
                out.push(Command::Outcome { txn, decision: Decision::Abort });
                Self::send(out, asked_by, Msg::Decision { txn, decision: Decision::Abort });
            }
            Some(Branch::VotingNo) => {
                self.decided.insert(txn, Decision::Abort);
                out.push(Command::Outcome { txn, decision: Decision::Abort });
                Self::send(out, txn.coordinator, Msg::Vote { txn, vote: Vote::No });
            }
            other => panic!("{}: forced abort of {txn} became durable in state {other:?}", self.id),
        }
    }

    /// Cooperative termination: a peer asks what we know.
    fn on_inquire(&mut self, from: NodeId, txn: TxnId, out: &mut Out<R>) {
        if let Some(&decision) = self.decided.get(&txn) {
            return Self::send(out, from, Msg::Decision { txn, decision });
        }
        match self.branches.get(&txn) {
            Some(Branch::Committing { .. }) => {
                Self::send(out, from, Msg::Decision { txn, decision: Decision::Commit });
            }
            // Early acknowledgement: "I am durably prepared" is half of the answer the asker
            // needs (a coordinator counts it as the vote it missed).
            Some(Branch::Prepared { early_ack: true, .. }) => {
                Self::send(out, from, Msg::Vote { txn, vote: Vote::Yes });
            }
            Some(_) => {} // uncertain ourselves, or an answer is being made durable
            // Finished and forgotten. The outcome, if it is still kept; otherwise say so — not
            // ABORT: a status query may be asking about a transaction that committed (a peer in
            // doubt reads FORGOTTEN as ABORT itself, by the mark's promise).
            None if self.is_forgotten(txn) => match self.kept.get(txn) {
                Some(decision) => Self::send(out, from, Msg::Decision { txn, decision }),
                None => Self::send(out, from, Msg::Forgotten { txn }),
            },
            // It may have voted YES before the loss: no answer, presumed nothing. The asker
            // asks the coordinator (or the others) instead.
            None if self.possibly_forgotten(txn) => {}
            None => {
                // Never voted: we may abort unilaterally — but only once that is durable, or a
                // crash followed by a late PREPARE could make us vote YES after all.
                out.push(Command::Persist {
                    record: Record::Aborted { txn },
                    durability: Durability::Forced,
                });
                self.branches.insert(txn, Branch::Refusing { asked_by: from });
            }
        }
    }

    /// A peer asked about `txn` says it finished and was forgotten. A committed transaction
    /// below the mark was acknowledged by every branch, this one included; so if this branch is
    /// still prepared, the transaction aborted.
    fn on_peer_forgot(&mut self, txn: TxnId, out: &mut Out<R>) {
        if matches!(self.branches.get(&txn), Some(Branch::Prepared { .. })) {
            let Some(Branch::Prepared { writes, .. }) = self.branches.remove(&txn) else {
                unreachable!("matched Prepared just above")
            };
            self.abort_prepared(txn, &writes, out);
        }
    }

    fn on_inquiry_timer(&mut self, txn: TxnId, attempt: u32, out: &mut Out<R>) {
        let Some(Branch::Prepared { inquiry_attempt, .. }) = self.branches.get_mut(&txn) else {
            return;
        };
        if *inquiry_attempt != attempt {
            return; // a stale timer chain
        }
        *inquiry_attempt += 1;
        let next = *inquiry_attempt;
        if let Some(Branch::Prepared { peers, early_ack, .. }) = self.branches.get(&txn) {
            self.ask_for_outcome(txn, peers, *early_ack, out);
        }
        out.push(Command::SetTimer {
            timer: Timer::Inquire { txn, attempt: next },
            after_us: backoff_us(self.config.inquiry_base_us, self.config.inquiry_max_us, next),
        });
    }

    fn on_persisted(&mut self, record: Rec<R>, out: &mut Out<R>) {
        match record {
            Record::Prepared { txn, .. } => self.on_prepare_durable(txn, out),
            Record::Committed { txn } => self.on_commit_durable(txn, out),
            Record::OnePhaseCommitted { txn, .. } => self.on_one_phase_commit_durable(txn, out),
            Record::Aborted { txn } => self.on_abort_durable(txn, out),
            other => panic!(
                "participant {} was told {other:?} is durable; it never writes that",
                self.id
            ),
        }
    }
}

impl<R: Resource> Core for Participant<R> {
    type Msg = Msg<R::Change>;
    type Record = Rec<R>;
    type Timer = Timer;
    type Change = R::Change;

    fn handle(&mut self, input: Input<Self::Msg, Rec<R>, Timer, R::Change>, out: &mut Out<R>) {
        match input {
            Input::Restart { records } => self.restart(records, out),
            Input::Persisted(record) => self.on_persisted(record, out),
            Input::Timer(Timer::Inquire { txn, attempt }) => {
                self.on_inquiry_timer(txn, attempt, out);
            }
            Input::Timer(_) | Input::Begin { .. } | Input::Reservation(_) => {}
            Input::Message { from, msg } => match msg {
                Msg::Prepare { txn, peers, writes, early_ack } => {
                    self.on_prepare(txn, peers, writes, early_ack, out);
                }
                Msg::Decision { txn, decision } => self.on_decision(from, txn, decision, out),
                Msg::CommitOnePhase { txn, writes } => self.on_commit_one_phase(txn, writes, out),
                Msg::Inquire { txn } => self.on_inquire(from, txn, out),
                Msg::Vote { txn, vote } => self.on_peer_vote(from, txn, vote, out),
                Msg::Forget { epoch, below } => self.on_forget(from, epoch, below),
                Msg::Forgotten { txn } => self.on_peer_forgot(txn, out),
                Msg::Ack { .. } | Msg::OnePhaseResult { .. } => {}
            },
        }
    }
}

impl<R: Resource> crate::Checkpoint for Participant<R> {
    /// The snapshot, then every branch still open as the records that rebuild it.
    fn live_records(&self) -> Vec<Rec<R>> {
        let values = self.store.snapshot();
        let decided: Vec<(TxnId, Decision)> =
            self.decided.iter().map(|(&txn, &d)| (txn, d)).collect();
        let mut chunks = decided.chunks(crate::CHECKPOINT_CHUNK);
        let first = chunks.next().map(<[_]>::to_vec).unwrap_or_default();
        let mut live = vec![Record::Snapshot { values, decided: first }];
        live.extend(chunks.map(|chunk| Record::Decisions { decided: chunk.to_vec() }));
        live.extend(self.forgotten.iter().map(|(&(coordinator, epoch), &below)| {
            Record::Forgotten { coordinator, epoch, below }
        }));
        live.extend(self.kept.chunks().into_iter().map(|kept| Record::KeptOutcomes { kept }));
        for (&txn, branch) in &self.branches {
            match branch {
                Branch::Preparing { peers, writes, early_ack, .. }
                | Branch::Prepared { peers, writes, early_ack, .. } => {
                    live.push(Record::Prepared {
                        txn,
                        peers: peers.clone(),
                        writes: writes.clone(),
                        early_ack: *early_ack,
                    });
                }
                Branch::Committing { writes } => {
                    let peers = Vec::new();
                    let writes = writes.clone();
                    live.push(Record::Prepared { txn, peers, writes, early_ack: false });
                    live.push(Record::Committed { txn });
                }
                Branch::OnePhaseCommitting { writes } => {
                    live.push(Record::OnePhaseCommitted { txn, writes: writes.clone() });
                }
                Branch::OnePhaseAborting | Branch::Refusing { .. } | Branch::VotingNo => {
                    live.push(Record::Aborted { txn });
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
        self.decisions().iter().map(|(&t, &d)| (t, d)).collect()
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
