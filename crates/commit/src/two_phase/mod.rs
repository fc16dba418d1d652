//! Two-phase commit with presumed abort.
//!
//! ```text
//!  coordinator                         participant
//!     │── PREPARE(txn, peers, writes) ──▶│  check + lock, force PREPARED
//!     │◀──────────── VOTE YES ───────────│  (only once PREPARED is durable)
//!     │  force COMMIT-DECIDED             │
//!     │── DECISION COMMIT ───────────────▶│  force COMMITTED, apply, unlock
//!     │◀──────────── ACK ─────────────────│
//!     │  lazy ENDED                        │
//! ```
//!
//! * **Presumed abort**: the coordinator logs nothing for an abort and needs no acks for it; a
//!   transaction it has no record of is aborted. So it forces exactly one record per committed
//!   transaction, and none per aborted one.
//! * **Read-only**: a branch with no writes votes READ-ONLY, forgets the transaction and gets no
//!   decision. A transaction whose every branch is read-only commits with no log write.
//! * **One phase**: with one participant the coordinator sends COMMIT-ONE-PHASE; the participant
//!   decides alone and forces its outcome (either one) before answering, so a retried request
//!   gets the same answer. The coordinator writes nothing.
//! * **Termination**: a prepared participant that hears nothing asks the coordinator
//!   (INQUIRE), with exponential backoff; with cooperative termination it asks its peers too. A
//!   peer that knows the decision tells it; a peer that has not voted forces an ABORTED record
//!   and answers ABORT — after which it will vote NO. A prepared participant never decides alone.
//!
//! * **Early acknowledgement** (switch `early_ack`, for transactions whose every branch writes):
//!   the transaction is committed the moment every branch's prepare record is durable, so the
//!   coordinator tells the client at the last YES, sends COMMIT at once and logs its decision
//!   lazily — the client waits for one round of fsyncs, not two. The outcome can always be
//!   recovered from the participants: a prepared branch asks its peers (never the coordinator,
//!   whose presumed abort would be a lie here), a peer that is prepared answers YES, and once
//!   every peer has, the asker commits. Abort therefore has to be made *impossible to undo*
//!   before anyone acts on it: a branch votes NO, or refuses a peer's or the coordinator's
//!   inquiry, only after a forced ABORTED record, and the coordinator never aborts on a vote
//!   timeout — it asks the silent branches instead (a branch that never saw PREPARE refuses,
//!   durably; a prepared one repeats YES). So "every branch durably prepared" and "some branch
//!   durably refused" exclude each other, and exactly one of them fixes the outcome. The price:
//!   a coordinator can no longer abort alone while a branch is unreachable before voting.
//!
//! * **Forgetting.** A participant's remembered decisions answer duplicates (a repeated COMMIT
//!   is acknowledged, not applied twice), late PREPAREs (an aborted transaction stays aborted)
//!   and peers' inquiries. Kept forever they grow with every transaction. The coordinator knows
//!   when none of that can matter any more: every transaction of its current epoch below its
//!   low-water mark (the lowest one still running) has finished — committed and acknowledged
//!   by every branch, aborted, or answered in one phase. Once the mark has moved
//!   `forget_every` transactions it sends FORGET(epoch, below) to its participants, which then
//!   drop those decisions and answer from the promise instead: a PREPARE, COMMIT-ONE-PHASE,
//!   COMMIT or ABORT below the mark is a late duplicate of something finished and is ignored
//!   (preparing or applying it again would do it twice; nobody waits for it), and a peer's INQUIRE is
//!   answered ABORT — only an aborted transaction can still have a prepared branch below the
//!   mark, since a committed one was acknowledged by all. Open branches are never forgotten.
//!   The mark is written in every checkpoint, so after a restart each transaction is covered by
//!   its decision (in the log since the checkpoint, or in it) or by the checkpoint's mark.
//!   Earlier epochs are never announced: after a coordinator restart nobody can tell when
//!   their transactions finished.
//!
//! * **Status answers are honest** ([`crate::status`]). INQUIRE about a transaction below the
//!   mark is answered from the outcomes a participant still keeps for status queries (the
//!   newest `forgotten_kept` of those it forgot, checkpointed), else with FORGOTTEN — never
//!   with ABORT, which would claim a knowledge it dropped: a one-phase commit is forgotten like
//!   any other transaction. A prepared branch told FORGOTTEN by a peer aborts, by the mark's
//!   promise (a committed transaction below it was acknowledged by every branch, so a branch
//!   still prepared there belongs to an aborted one).
//!
//! Messages, records and timers are shared by both roles, so one driver can run either.

mod coordinator;
mod participant;
#[cfg(test)]
mod tests;

use std::fmt;

use concord_types::codec::{DecodeError, Encode, Reader, Writer};
use concord_types::{Decision, NodeId, TxnId, Vote, Write};

pub use coordinator::Coordinator;
pub use participant::Participant;

use crate::{MessageKind, NoRole, NodeRole, Protocol, RecordKind, Switches, Topology};

/// The two-phase commit protocol.
#[derive(Debug, Clone, Copy)]
pub struct TwoPhase;

/// `C` is a branch's change in the participant resource's terms (the simulator's deltas by
/// default; the KV store's intents and read set in `concord-kv`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Msg<C = Vec<Write>> {
    /// Coordinator → participant. `peers` are the branches with writes, for cooperative
    /// termination (read-only branches are never asked: they forget the transaction).
    /// `early_ack`: the prepares decide the outcome (module docs); every branch writes.
    Prepare {
        txn: TxnId,
        peers: Vec<NodeId>,
        writes: C,
        early_ack: bool,
    },
    Vote {
        txn: TxnId,
        vote: Vote,
    },
    /// Coordinator → participant, or a peer's answer to INQUIRE.
    Decision {
        txn: TxnId,
        decision: Decision,
    },
    Ack {
        txn: TxnId,
    },
    /// Participant → coordinator or peer: what was decided?
    Inquire {
        txn: TxnId,
    },
    CommitOnePhase {
        txn: TxnId,
        writes: C,
    },
    OnePhaseResult {
        txn: TxnId,
        decision: Decision,
    },
    /// Coordinator → participants: every transaction of the sender's `epoch` with a sequence
    /// below `below` has finished (committed and acknowledged by every branch, aborted, or
    /// answered in one phase). A participant forgets its decisions on them and answers
    /// anything about them from this promise (the module docs, "Forgetting").
    Forget {
        epoch: u32,
        below: u32,
    },
    /// Participant → asker (a peer, or a status query): `txn` finished (it is below its
    /// coordinator's mark) and its outcome is no longer kept here.
    Forgotten {
        txn: TxnId,
    },
}

/// `C` as in [`Msg`]; `S` is the resource's applied state as a checkpoint writes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Record<C = Vec<Write>, S = Vec<Write>> {
    /// Coordinator: ids of this epoch may be issued.
    EpochStarted { epoch: u32 },
    /// Coordinator: the decision to commit, with the participants that must learn it.
    CommitDecided { txn: TxnId, participants: Vec<NodeId> },
    /// Coordinator: every participant acknowledged; the transaction can be forgotten.
    Ended { txn: TxnId },
    /// Participant: prepared, with what it needs to commit after a crash (and, for an
    /// early-acknowledged transaction, to find the outcome from its peers).
    Prepared { txn: TxnId, peers: Vec<NodeId>, writes: C, early_ack: bool },
    /// Participant: a prepared branch committed.
    Committed { txn: TxnId },
    /// Participant: a one-phase branch committed.
    OnePhaseCommitted { txn: TxnId, writes: C },
    /// Participant: the branch aborted.
    Aborted { txn: TxnId },
    /// Participant, written only by a checkpoint: the applied values and the decisions it
    /// still remembers, standing for every record it replaces.
    Snapshot { values: S, decided: Vec<(TxnId, Decision)> },
    /// Participant, written only by a checkpoint, after its `Snapshot`: more remembered
    /// decisions (a checkpoint writes them [`crate::CHECKPOINT_CHUNK`] to a record, so no record
    /// outgrows the log's frame however many it remembers).
    Decisions { decided: Vec<(TxnId, Decision)> },
    /// Participant, written only by a checkpoint: the transactions of `coordinator`'s `epoch`
    /// below sequence `below` are finished and forgotten (its latest FORGET).
    Forgotten { coordinator: NodeId, epoch: u32, below: u32 },
    /// Participant, written only by a checkpoint: outcomes of forgotten transactions still kept
    /// to answer status queries (chunked like `Decisions`).
    KeptOutcomes { kept: Vec<(TxnId, Decision)> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Timer {
    VoteTimeout { txn: TxnId },
    ResendCommit { txn: TxnId, attempt: u32 },
    OnePhaseRetry { txn: TxnId, attempt: u32 },
    Inquire { txn: TxnId, attempt: u32 },
}

/// Timeouts, limits and switches. Times are in microseconds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    pub switches: Switches,
    /// The coordinator aborts a transaction whose votes are not all in by then.
    pub vote_timeout_us: u64,
    /// First delay before the coordinator re-sends COMMIT (or COMMIT-ONE-PHASE); doubles per try.
    pub resend_base_us: u64,
    pub resend_max_us: u64,
    /// A prepared participant first asks for the outcome after this long; doubles per try.
    pub inquiry_base_us: u64,
    pub inquiry_max_us: u64,
    /// The coordinator refuses new transactions beyond this many in flight; a participant votes
    /// NO on a new branch beyond this many undecided ones.
    pub max_in_flight: usize,
    /// Requests held while the coordinator's epoch becomes durable.
    pub max_queued_begins: usize,
    pub max_participants: usize,
    /// The coordinator sends FORGET once its low-water mark has moved this many transactions
    /// since the last one (1: after every finished transaction, as the simulator runs it).
    pub forget_every: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            switches: Switches::default(),
            vote_timeout_us: 50_000,
            resend_base_us: 10_000,
            resend_max_us: 1_000_000,
            inquiry_base_us: 20_000,
            inquiry_max_us: 1_000_000,
            max_in_flight: 10_000,
            max_queued_begins: 1_024,
            max_participants: 64,
            forget_every: 1_024,
        }
    }
}

/// Who sends what in 2PC ([`Protocol::may_send`]): only a transaction's coordinator prepares
/// it, commits it in one phase or decides it, except that a peer participant may answer an
/// INQUIRE with the decision (cooperative termination) and any participant may answer a
/// status query; only participants vote (to the coordinator, and under early acknowledgement
/// to each other) and acknowledge.
pub fn may_send<C>(msg: &Msg<C>, from: NodeId, from_role: NodeRole, to_role: NodeRole) -> bool {
    use NodeRole::{Coordinator as C, Participant as P};
    let own = |txn: &TxnId| from_role == C && txn.coordinator == from;
    match msg {
        Msg::Prepare { txn, .. } | Msg::CommitOnePhase { txn, .. } => own(txn) && to_role == P,
        Msg::Forget { .. } => from_role == C && to_role == P,
        Msg::Decision { txn, .. } => (own(txn) && to_role == P) || from_role == P,
        // Under early acknowledgement a vote also goes to the peer branches.
        Msg::Vote { .. } => from_role == P,
        Msg::Ack { .. } | Msg::OnePhaseResult { .. } => from_role == P && to_role == C,
        Msg::Inquire { txn } => from_role == P || (own(txn) && to_role == P),
        Msg::Forgotten { .. } => from_role == P,
    }
}

impl Protocol for TwoPhase {
    const NAME: &'static str = "2pc";
    type Msg = Msg;
    type Record = Record;
    type Timer = Timer;
    type Config = Config;
    type Coordinator = Coordinator;
    type Participant = Participant;

    fn may_send(msg: &Msg, from: NodeId, from_role: NodeRole, to_role: NodeRole) -> bool {
        may_send(msg, from, from_role, to_role)
    }

    const RUNS_AFTER_DATA_LOSS: bool = true;
    fn set_amnesia(participant: &mut Participant, amnesia: crate::amnesia::Amnesia) {
        crate::amnesia::AfterDataLoss::set_amnesia(participant, amnesia);
    }
    type Acceptor = NoRole<Msg, Record, Timer>;

    fn config(switches: Switches, _topology: &Topology) -> Config {
        // Forget after every finished transaction: the simulator and the model checker see
        // FORGET racing every late message there is.
        Config { switches, forget_every: 1, ..Config::default() }
    }
    fn coordinator(id: NodeId, config: &Config) -> Coordinator {
        Coordinator::new(id, config.clone())
    }
    fn participant(id: NodeId, config: &Config) -> Participant {
        Participant::new(id, config.clone())
    }
    fn message_kind(msg: &Msg) -> MessageKind {
        match *msg {
            Msg::Vote { txn, vote } => MessageKind::Vote { txn, vote },
            Msg::Decision { txn, decision } => MessageKind::Decision { txn, decision },
            Msg::Ack { txn } => MessageKind::Ack { txn },
            Msg::Forget { .. } => MessageKind::Housekeeping,
            _ => MessageKind::Other,
        }
    }
    fn status_inquiry(txn: TxnId) -> Option<Msg> {
        Some(Msg::Inquire { txn })
    }
    fn status_answer(msg: &Msg) -> Option<(TxnId, crate::status::Answer)> {
        status_answer(msg)
    }
    fn record_kind(record: &Record) -> RecordKind {
        match *record {
            Record::Prepared { txn, early_ack, .. } => RecordKind::Prepared { txn, early_ack },
            Record::CommitDecided { txn, .. } => {
                RecordKind::Decided { txn, decision: Decision::Commit }
            }
            Record::Committed { txn } | Record::OnePhaseCommitted { txn, .. } => {
                RecordKind::BranchDecided { txn, decision: Decision::Commit }
            }
            Record::Aborted { txn } => RecordKind::BranchDecided { txn, decision: Decision::Abort },
            Record::EpochStarted { .. }
            | Record::Ended { .. }
            | Record::Snapshot { .. }
            | Record::Decisions { .. }
            | Record::Forgotten { .. }
            | Record::KeptOutcomes { .. } => RecordKind::Other,
        }
    }
}

/// A participant's answer to an INQUIRE, as a status query reads it (for every change type:
/// the runtime's engines read their messages with it too).
pub fn status_answer<C>(msg: &Msg<C>) -> Option<(TxnId, crate::status::Answer)> {
    match *msg {
        Msg::Decision { txn, decision } => Some((txn, crate::status::Answer::Decided(decision))),
        Msg::Forgotten { txn } => Some((txn, crate::status::Answer::Forgotten)),
        _ => None,
    }
}

impl<C> fmt::Display for Msg<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Msg::Prepare { txn, early_ack: false, .. } => write!(f, "PREPARE {txn}"),
            Msg::Prepare { txn, early_ack: true, .. } => write!(f, "PREPARE-EARLY-ACK {txn}"),
            Msg::Vote { txn, vote } => write!(f, "VOTE {vote} {txn}"),
            Msg::Decision { txn, decision } => write!(f, "{decision} {txn}"),
            Msg::Ack { txn } => write!(f, "ACK {txn}"),
            Msg::Inquire { txn } => write!(f, "INQUIRE {txn}"),
            Msg::CommitOnePhase { txn, .. } => write!(f, "COMMIT-1PC {txn}"),
            Msg::OnePhaseResult { txn, decision } => write!(f, "1PC {decision} {txn}"),
            Msg::Forget { epoch, below } => write!(f, "FORGET {epoch}.<{below}"),
            Msg::Forgotten { txn } => write!(f, "FORGOTTEN {txn}"),
        }
    }
}

impl fmt::Display for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Timer::VoteTimeout { txn } => write!(f, "vote timeout {txn}"),
            Timer::ResendCommit { txn, attempt } => write!(f, "resend COMMIT #{attempt} {txn}"),
            Timer::OnePhaseRetry { txn, attempt } => write!(f, "retry one-phase #{attempt} {txn}"),
            Timer::Inquire { txn, attempt } => write!(f, "inquiry #{attempt} {txn}"),
        }
    }
}

impl<C, S> fmt::Display for Record<C, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::EpochStarted { epoch } => write!(f, "epoch {epoch}"),
            Record::CommitDecided { txn, .. } => write!(f, "commit-decided {txn}"),
            Record::Ended { txn } => write!(f, "ended {txn}"),
            Record::Prepared { txn, .. } => write!(f, "prepared {txn}"),
            Record::Committed { txn } => write!(f, "committed {txn}"),
            Record::OnePhaseCommitted { txn, .. } => write!(f, "1pc-committed {txn}"),
            Record::Aborted { txn } => write!(f, "aborted {txn}"),
            Record::Snapshot { decided, .. } => {
                write!(f, "snapshot with {} decisions", decided.len())
            }
            Record::Decisions { decided } => write!(f, "{} more decisions", decided.len()),
            Record::Forgotten { coordinator, epoch, below } => {
                write!(f, "forgotten {epoch}.*@{coordinator} below {below}")
            }
            Record::KeptOutcomes { kept } => write!(f, "{} kept outcomes", kept.len()),
        }
    }
}

impl<C: Encode, S: Encode> Encode for Record<C, S> {
    fn encode(&self, w: &mut Writer<'_>) {
        match self {
            Record::EpochStarted { epoch } => {
                w.u8(1);
                w.u32(*epoch);
            }
            Record::CommitDecided { txn, participants } => {
                w.u8(2);
                w.txn(*txn);
                w.nodes(participants);
            }
            Record::Ended { txn } => {
                w.u8(3);
                w.txn(*txn);
            }
            Record::Prepared { txn, peers, writes, early_ack } => {
                // A tag of its own for the early-acknowledged form keeps older logs readable.
                w.u8(if *early_ack { 9 } else { 4 });
                w.txn(*txn);
                w.nodes(peers);
                writes.encode(w);
            }
            Record::Committed { txn } => {
                w.u8(5);
                w.txn(*txn);
            }
            Record::OnePhaseCommitted { txn, writes } => {
                w.u8(6);
                w.txn(*txn);
                writes.encode(w);
            }
            Record::Aborted { txn } => {
                w.u8(7);
                w.txn(*txn);
            }
            Record::Snapshot { values, decided } => {
                w.u8(8);
                values.encode(w);
                encode_decisions(w, decided);
            }
            Record::Decisions { decided } => {
                w.u8(10);
                encode_decisions(w, decided);
            }
            Record::Forgotten { coordinator, epoch, below } => {
                w.u8(11);
                w.node(*coordinator);
                w.u32(*epoch);
                w.u32(*below);
            }
            Record::KeptOutcomes { kept } => {
                w.u8(12);
                encode_decisions(w, kept);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8()? {
            1 => Record::EpochStarted { epoch: r.u32()? },
            2 => Record::CommitDecided { txn: r.txn()?, participants: r.nodes()? },
            3 => Record::Ended { txn: r.txn()? },
            tag @ (4 | 9) => Record::Prepared {
                txn: r.txn()?,
                peers: r.nodes()?,
                writes: C::decode(r)?,
                early_ack: tag == 9,
            },
            5 => Record::Committed { txn: r.txn()? },
            6 => Record::OnePhaseCommitted { txn: r.txn()?, writes: C::decode(r)? },
            7 => Record::Aborted { txn: r.txn()? },
            8 => Record::Snapshot { values: S::decode(r)?, decided: decode_decisions(r)? },
            10 => Record::Decisions { decided: decode_decisions(r)? },
            11 => Record::Forgotten { coordinator: r.node()?, epoch: r.u32()?, below: r.u32()? },
            12 => Record::KeptOutcomes { kept: decode_decisions(r)? },
            tag => return Err(DecodeError::UnknownTag { what: "2pc record", tag }),
        })
    }
}

fn encode_decisions(w: &mut Writer<'_>, decided: &[(TxnId, Decision)]) {
    w.sequence_len(decided.len());
    for &(txn, decision) in decided {
        w.txn(txn);
        w.decision(decision);
    }
}

fn decode_decisions(r: &mut Reader<'_>) -> Result<Vec<(TxnId, Decision)>, DecodeError> {
    let len = r.sequence_len()?;
    let mut decided = Vec::with_capacity(len);
    for _ in 0..len {
        decided.push((r.txn()?, r.decision()?));
    }
    Ok(decided)
}

/// Messages cross real networks in this form (the runtime's peer frames).
impl<C: Encode> Encode for Msg<C> {
    fn encode(&self, w: &mut Writer<'_>) {
        match self {
            Msg::Prepare { txn, peers, writes, early_ack } => {
                w.u8(if *early_ack { 8 } else { 1 });
                w.txn(*txn);
                w.nodes(peers);
                writes.encode(w);
            }
            Msg::Vote { txn, vote } => {
                w.u8(2);
                w.txn(*txn);
                w.vote(*vote);
            }
            Msg::Decision { txn, decision } => {
                w.u8(3);
                w.txn(*txn);
                w.decision(*decision);
            }
            Msg::Ack { txn } => {
                w.u8(4);
                w.txn(*txn);
            }
            Msg::Inquire { txn } => {
                w.u8(5);
                w.txn(*txn);
            }
            Msg::CommitOnePhase { txn, writes } => {
                w.u8(6);
                w.txn(*txn);
                writes.encode(w);
            }
            Msg::OnePhaseResult { txn, decision } => {
                w.u8(7);
                w.txn(*txn);
                w.decision(*decision);
            }
            Msg::Forget { epoch, below } => {
                w.u8(9);
                w.u32(*epoch);
                w.u32(*below);
            }
            Msg::Forgotten { txn } => {
                w.u8(10);
                w.txn(*txn);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8()? {
            tag @ (1 | 8) => Msg::Prepare {
                txn: r.txn()?,
                peers: r.nodes()?,
                writes: C::decode(r)?,
                early_ack: tag == 8,
            },
            2 => Msg::Vote { txn: r.txn()?, vote: r.vote()? },
            3 => Msg::Decision { txn: r.txn()?, decision: r.decision()? },
            4 => Msg::Ack { txn: r.txn()? },
            5 => Msg::Inquire { txn: r.txn()? },
            6 => Msg::CommitOnePhase { txn: r.txn()?, writes: C::decode(r)? },
            7 => Msg::OnePhaseResult { txn: r.txn()?, decision: r.decision()? },
            9 => Msg::Forget { epoch: r.u32()?, below: r.u32()? },
            10 => Msg::Forgotten { txn: r.txn()? },
            tag => return Err(DecodeError::UnknownTag { what: "2pc message", tag }),
        })
    }
}
