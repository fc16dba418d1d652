//! Paxos Commit (Gray & Lamport, "Consensus on Transaction Commit", ACM TODS 2006).
//!
//! One Paxos instance per participant decides that participant's vote, `Prepared` or
//! `Aborted`; the transaction commits iff every instance chooses `Prepared`. 2F + 1 acceptors
//! keep the instances, so the decision survives the coordinator and up to F acceptors failing:
//! the coordinator keeps no log at all.
//!
//! ```text
//!  leader (coordinator)     participant i            acceptors 1..F+1        acceptors F+2..2F+1
//!     │── PREPARE ─────────────▶│ check, lock, force PREPARED
//!     │                         │── 2a(ballot 0, i, Prepared) ──▶│ accept; force once all
//!     │◀───────────────────── 2b(ballot 0, all instances) ───────│ instances are in (bundled)
//!     │ every instance chosen Prepared by F+1 acceptors ⇒ COMMIT
//!     │── DECISION ────────────▶│ force COMMITTED, apply
//! ```
//!
//! * **Ballot 0 is the participant's own**: it sends its vote straight to the acceptors, with no
//!   phase 1 — the fast path. It forces its vote either way first, so it can never send two
//!   different ballot-0 values for its instance (even across a crash).
//! * **Normal case on F + 1 acceptors.** A value is chosen once F + 1 acceptors (a majority of
//!   2F + 1) accept it, so in the normal case participants send phase 2a to the first F + 1
//!   acceptors only; the other F are needed only when one of those fails. This reproduces the
//!   paper's message counts (docs/paxos-commit.md).
//! * **Any leader may finish.** The coordinator and every acceptor are leader candidates. A
//!   leader that finds instances undecided (vote timeout, or a participant asking) runs full
//!   Paxos for all of them at a ballot of its own: phase 1 on all 2F + 1 acceptors, then phase 2
//!   proposing, per instance, the value accepted at the highest ballot — or `Aborted` where none
//!   was. With more than F acceptors down there is no majority and the transaction blocks until
//!   they return.
//! * **Losing an acceptor of the normal case.** With only F + 1 acceptors taking ballot 0, one
//!   of them down leaves every transaction without a majority at ballot 0: each would wait
//!   for the vote timeout and a full ballot (throughput fell twentyfold with acceptor 1 or 2
//!   down, not at all with acceptor 3). So a coordinator whose ballot 0 times out goes *wide*:
//!   its PREPAREs say so, and participants send their ballot-0 vote to all 2F + 1 acceptors,
//!   of which any F + 1 choose. It returns to the normal case once every acceptor has answered
//!   a ballot-0 vote of a transaction begun since it went wide — evidence that the normal
//!   case's acceptors are all back. A participant repeating its vote after a restart votes
//!   wide. Safety does not depend on any of this: a ballot-0 value is the participant's own,
//!   the same whichever acceptors receive it.
//! * **Unique ballots across restarts.** Ballot `((epoch · 2^32 + round) · K) + index + 1` for
//!   candidate `index` of K, where `epoch` is bumped durably at every start of the node.
//!
//! ## Forgetting (switch `forget`)
//!
//! Without it, every participant remembers every decision and every acceptor every instance,
//! forever. With it, memory is bounded as 2PC's is, by a low-water mark per coordinator epoch:
//!
//! * A participant that learns a decision **acknowledges** it to the transaction's
//!   coordinator (a commit once its `committed` record is durable; an abort at once: a
//!   participant that loses a lazy `aborted` record comes back prepared and is answered by the
//!   mark, below). The coordinator resends the decision to a participant until it acknowledges.
//!   An acknowledgement carries the decision, so a coordinator that has not decided yet — an
//!   acceptor led the ballot — learns it from there.
//! * Every `forget_every` transactions the coordinator sends FORGET(epoch, below) to its
//!   participants and to every acceptor, `below` being the lowest id of its epoch that is not
//!   finished: reserved, undecided, waiting for an acknowledgement, or a one-phase branch
//!   waiting for its result. Below it, **every participant has learned the decision**.
//! * An acceptor drops every instance below the mark and then ignores every message about
//!   them. To the transaction's Paxos instances it is now an acceptor that stopped forever,
//!   which Paxos tolerates in any number for safety; liveness no longer needs them, since no
//!   participant below the mark is waiting for an outcome. (A crash before a checkpoint has
//!   written the mark replays the instances: remembering is always safe.)
//! * A participant drops its decisions below the mark (keeping the newest `forgotten_kept`
//!   only to answer status queries), ignores a late PREPARE or COMMIT-ONE-PHASE below it, and
//!   acknowledges a late decision. A status query below the mark is answered with the kept
//!   outcome or FORGOTTEN — never a presumed ABORT (`crate::status`).
//! * A branch still prepared below the mark (its lazy `aborted` record was lost in a crash)
//!   belongs to an aborted transaction: a committed one was acknowledged by every participant,
//!   and a commit is acknowledged only once durable. It aborts. A leader candidate asked about
//!   a transaction below the mark it knows answers with the mark.

mod acceptor;
mod coordinator;
mod leader;
mod marks;
mod participant;
#[cfg(test)]
mod tests;

use std::fmt;

use concord_types::codec::{DecodeError, Encode, Reader, Writer};
use concord_types::{Decision, NodeId, TxnId, Vote, Write};

pub use acceptor::Acceptor;
pub use coordinator::Coordinator;
pub use participant::Participant;

use crate::{MessageKind, NodeRole, Protocol, RecordKind, Switches, Topology};

/// The Paxos Commit protocol.
#[derive(Debug, Clone, Copy)]
pub struct PaxosCommit;

/// The value an instance decides: its participant's vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    Prepared,
    Aborted,
}

/// A ballot number. 0 belongs to each instance's participant; others to leader candidates.
pub type Ballot = u64;

/// A ballot as people read it: `b0` for the participant's, else `b{high}:{low}` — the 64-bit
/// number's two halves (a candidate's ballots start at its epoch times the candidate count in
/// the high half, so `b3:2` is epoch 1's first ballot of candidate 2 of three; each later round
/// adds the candidate count to the low half). Order is kept: compare high, then low.
#[derive(Debug, Clone, Copy)]
pub struct ShowBallot(pub Ballot);

impl fmt::Display for ShowBallot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => write!(f, "b0"),
            b => write!(f, "b{}:{}", b >> 32, b & 0xFFFF_FFFF),
        }
    }
}

/// `C` is a branch's change, as in the 2PC messages (the simulator's deltas by default).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Msg<C = Vec<Write>> {
    /// Leader → participant. `wide`: vote to every acceptor, not only the normal case's F + 1
    /// (the coordinator found one of those silent; see "Losing an acceptor" above).
    Prepare { txn: TxnId, participants: Vec<NodeId>, writes: C, wide: bool },
    /// Participant (ballot 0) or leader → acceptor: accept these instances' values. `leader`
    /// gets the 2b; `participants` lets any acceptor lead later.
    Phase2a {
        txn: TxnId,
        ballot: Ballot,
        values: Vec<(NodeId, Value)>,
        leader: NodeId,
        participants: Vec<NodeId>,
    },
    /// Acceptor → leader: accepted (bundled over instances).
    Phase2b { txn: TxnId, ballot: Ballot, values: Vec<(NodeId, Value)> },
    /// Leader → acceptors: promise not to accept lower ballots for this transaction.
    Phase1a { txn: TxnId, ballot: Ballot, leader: NodeId },
    /// Acceptor → leader: promised; here is what I accepted, per instance: (instance, ballot, value).
    Phase1b { txn: TxnId, ballot: Ballot, accepted: Vec<(NodeId, Ballot, Value)> },
    /// Acceptor → leader: your ballot is stale; I promised this one.
    Reject { txn: TxnId, promised: Ballot },
    /// Leader → participant.
    Decision { txn: TxnId, decision: Decision },
    /// Participant → leader candidate: I am prepared and have heard nothing. Also a
    /// coordinator → participant status query (a runtime client asking about a transaction
    /// the coordinator forgot), with no participants.
    Inquire { txn: TxnId, participants: Vec<NodeId> },
    /// Coordinator → the only participant: decide alone (no instance, no acceptor: with one
    /// participant its vote is the outcome).
    CommitOnePhase { txn: TxnId, writes: C },
    /// Participant → coordinator: the one-phase outcome (forced before it is sent).
    OnePhaseResult { txn: TxnId, decision: Decision },
    /// Participant → coordinator (switch `forget`): learned `decision` (a commit durably).
    Ack { txn: TxnId, decision: Decision },
    /// Coordinator → participants and acceptors (switch `forget`): every transaction of
    /// `coordinator`'s `epoch` below sequence `below` has finished and is learned by all its
    /// participants. Also a leader candidate's answer to an inquiry below the mark.
    Forget { coordinator: NodeId, epoch: u32, below: u32 },
    /// Participant → status asker: finished and below the mark; the outcome is not kept.
    Forgotten { txn: TxnId },
}

/// `C` as in [`Msg`]; `S` is a participant resource's applied state as a checkpoint writes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Record<C = Vec<Write>, S = Vec<Write>> {
    /// Coordinator and acceptors: transaction ids and ballots of this epoch may be issued.
    EpochStarted { epoch: u32 },
    /// Participant: prepared (its ballot-0 vote is Prepared).
    Prepared { txn: TxnId, participants: Vec<NodeId>, writes: C },
    /// Participant: committed a prepared branch.
    Committed { txn: TxnId },
    /// Participant: aborted (forced when it is its ballot-0 vote, lazy after a decision).
    Aborted { txn: TxnId },
    /// Acceptor: promised `ballot` for every instance of `txn`.
    Promised { txn: TxnId, ballot: Ballot },
    /// Acceptor: accepted these values at `ballot`.
    Accepted { txn: TxnId, ballot: Ballot, values: Vec<(NodeId, Value)>, participants: Vec<NodeId> },
    /// Participant, written only by a checkpoint: the applied values and the decisions it
    /// remembers, standing for every record it replaces.
    Snapshot { values: S, committed: Vec<TxnId>, aborted: Vec<TxnId> },
    /// Participant, written only by a checkpoint, after its `Snapshot`: more remembered
    /// decisions ([`crate::CHECKPOINT_CHUNK`] to a record at most, in all).
    Decisions { committed: Vec<TxnId>, aborted: Vec<TxnId> },
    /// Participant: a one-phase branch committed (forced before the result is sent).
    OnePhaseCommitted { txn: TxnId, writes: C },
    /// Participant and acceptor, written only by a checkpoint: the coordinator's mark
    /// (`Msg::Forget`). Written before the records it stands for are dropped.
    Forgotten { coordinator: NodeId, epoch: u32, below: u32 },
    /// Participant, written only by a checkpoint: forgotten outcomes kept for status queries.
    KeptOutcomes { kept: Vec<(TxnId, Decision)> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Timer {
    /// The initial leader gives ballot 0 this long, then runs full Paxos (the vote timeout).
    BallotZero { txn: TxnId },
    /// A leader's ballot got no majority in time: try a higher one.
    Ballot { txn: TxnId, ballot: Ballot },
    /// A prepared participant asks a leader candidate (rotating with each attempt).
    Inquire { txn: TxnId, attempt: u32 },
    /// The coordinator resends COMMIT-ONE-PHASE (doubling, capped).
    OnePhaseRetry { txn: TxnId, attempt: u32 },
    /// Switch `forget`: the coordinator resends the decision to participants that have not
    /// acknowledged it (doubling, capped).
    DecisionRetry { txn: TxnId, attempt: u32 },
}

/// Timeouts, limits, and where the acceptors are. Times in microseconds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    pub switches: Switches,
    /// 2F + 1 acceptors, in order; the first F + 1 take the normal case.
    pub acceptors: Vec<NodeId>,
    pub vote_timeout_us: u64,
    /// A leader's ballot is retried after this long, doubling per attempt, capped.
    pub ballot_timeout_us: u64,
    pub ballot_timeout_max_us: u64,
    pub inquiry_base_us: u64,
    pub inquiry_max_us: u64,
    pub max_in_flight: usize,
    pub max_queued_begins: usize,
    pub max_participants: usize,
    /// Switch `forget`: the coordinator sends FORGET once its mark has moved this many
    /// transactions since the last one.
    pub forget_every: u32,
}

impl Config {
    pub fn new(acceptors: Vec<NodeId>) -> Self {
        assert!(
            acceptors.len() % 2 == 1,
            "Paxos Commit needs 2F + 1 acceptors, got {}",
            acceptors.len()
        );
        Config {
            switches: Switches::default(),
            acceptors,
            vote_timeout_us: 50_000,
            ballot_timeout_us: 20_000,
            ballot_timeout_max_us: 1_000_000,
            inquiry_base_us: 20_000,
            inquiry_max_us: 1_000_000,
            max_in_flight: 10_000,
            max_queued_begins: 1_024,
            max_participants: 64,
            forget_every: 1_024,
        }
    }

    /// F: how many acceptor failures the protocol tolerates.
    pub fn fault_tolerance(&self) -> usize {
        self.acceptors.len() / 2
    }

    /// F + 1: acceptors whose agreement chooses a value.
    pub fn majority(&self) -> usize {
        self.fault_tolerance() + 1
    }

    /// The acceptors that take ballot 0 in the normal case.
    pub fn normal_case_acceptors(&self) -> &[NodeId] {
        &self.acceptors[..self.majority()]
    }

    /// Where a participant sends its ballot-0 vote: the normal case's acceptors, or (`wide`)
    /// every one.
    pub fn vote_acceptors(&self, wide: bool) -> &[NodeId] {
        if wide {
            &self.acceptors
        } else {
            self.normal_case_acceptors()
        }
    }

    /// Leader candidates for a transaction: its coordinator, then every acceptor.
    pub fn candidates(&self, txn: TxnId) -> Vec<NodeId> {
        std::iter::once(txn.coordinator).chain(self.acceptors.iter().copied()).collect()
    }
}

/// Who sends what in Paxos Commit ([`Protocol::may_send`]): only a transaction's coordinator
/// prepares it or commits it in one phase; only acceptors answer phase 1 and 2; a participant
/// proposes only its own instance's value at ballot 0; ballots above 0 and decisions come from
/// leaders (the coordinator or an acceptor), and a participant tells a decision only to the
/// coordinator or an acceptor asking it.
pub fn may_send<C>(msg: &Msg<C>, from: NodeId, from_role: NodeRole, to_role: NodeRole) -> bool {
    use NodeRole::{Acceptor as A, Coordinator as C, Participant as P};
    let own = |txn: &TxnId| from_role == C && txn.coordinator == from;
    match msg {
        Msg::Prepare { txn, .. } | Msg::CommitOnePhase { txn, .. } => own(txn) && to_role == P,
        Msg::Phase2a { ballot, values, .. } => {
            to_role == A
                && match from_role {
                    P => *ballot == 0 && values.iter().all(|(instance, _)| *instance == from),
                    C | A => true,
                }
        }
        Msg::Phase1a { .. } => from_role != P && to_role == A,
        Msg::Phase2b { .. } | Msg::Phase1b { .. } | Msg::Reject { .. } => from_role == A,
        Msg::Decision { .. } => from_role != P || to_role != P,
        Msg::Inquire { txn, .. } => (from_role == P && to_role != P) || (own(txn) && to_role == P),
        Msg::OnePhaseResult { .. } | Msg::Ack { .. } => from_role == P && to_role == C,
        Msg::Forget { coordinator, .. } => {
            (from_role == C && *coordinator == from) || from_role == A
        }
        Msg::Forgotten { .. } => from_role == P,
    }
}

impl Protocol for PaxosCommit {
    const NAME: &'static str = "paxos-commit";
    const COORDINATOR_LOGS_DECISION: bool = false;
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
    type Acceptor = Acceptor;

    fn acceptor_count(fault_tolerance: u32) -> u32 {
        2 * fault_tolerance.max(1) + 1
    }
    fn config(switches: Switches, topology: &Topology) -> Config {
        // Forget after every finished transaction, as 2PC does there: FORGET then races every
        // late message there is.
        Config { switches, forget_every: 1, ..Config::new(topology.acceptors.clone()) }
    }
    fn coordinator(id: NodeId, config: &Config) -> Coordinator {
        Coordinator::new(id, config.clone())
    }
    fn participant(id: NodeId, config: &Config) -> Participant {
        Participant::new(id, config.clone())
    }
    fn acceptor(id: NodeId, config: &Config) -> Acceptor {
        Acceptor::new(id, config.clone())
    }
    fn message_kind(msg: &Msg) -> MessageKind {
        match msg {
            Msg::Phase2a { txn, ballot: 0, values, .. } => match values.as_slice() {
                [(_, Value::Prepared)] => MessageKind::Vote { txn: *txn, vote: Vote::Yes },
                [(_, Value::Aborted)] => MessageKind::Vote { txn: *txn, vote: Vote::No },
                _ => MessageKind::Other,
            },
            Msg::Decision { txn, decision } => {
                MessageKind::Decision { txn: *txn, decision: *decision }
            }
            Msg::Ack { txn, .. } => MessageKind::Ack { txn: *txn },
            Msg::Forget { .. } => MessageKind::Housekeeping,
            _ => MessageKind::Other,
        }
    }
    fn status_inquiry(txn: TxnId) -> Option<Msg> {
        Some(Msg::Inquire { txn, participants: Vec::new() })
    }
    fn status_answer(msg: &Msg) -> Option<(TxnId, crate::status::Answer)> {
        status_answer(msg)
    }
    fn record_kind(record: &Record) -> RecordKind {
        match *record {
            Record::Prepared { txn, .. } => RecordKind::Prepared { txn, early_ack: false },
            Record::Committed { txn } | Record::OnePhaseCommitted { txn, .. } => {
                RecordKind::BranchDecided { txn, decision: Decision::Commit }
            }
            Record::Aborted { txn } => RecordKind::BranchDecided { txn, decision: Decision::Abort },
            Record::EpochStarted { .. }
            | Record::Promised { .. }
            | Record::Accepted { .. }
            | Record::Snapshot { .. }
            | Record::Decisions { .. }
            | Record::Forgotten { .. }
            | Record::KeptOutcomes { .. } => RecordKind::Other,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Value::Prepared => "Prepared",
            Value::Aborted => "Aborted",
        })
    }
}

/// The value of every instance a bundle carries: `n1:Prepared`, `n1:Prepared,n2:Aborted`, or
/// `3×Prepared` when all agree (the common case, kept short).
fn values_label(values: &[(NodeId, Value)]) -> String {
    if values.len() > 1 && values.iter().all(|(_, v)| *v == Value::Prepared) {
        return format!("{}×Prepared", values.len());
    }
    let each: Vec<String> = values.iter().map(|(node, v)| format!("{node}:{v}")).collect();
    each.join(",")
}

/// What a 1b reports accepted, per instance with its ballot: what a reader needs to see why
/// the leader proposes what it does next.
fn accepted_label(accepted: &[(NodeId, Ballot, Value)]) -> String {
    if accepted.is_empty() {
        return "nothing accepted".to_string();
    }
    let each: Vec<String> = accepted
        .iter()
        .map(|(node, ballot, v)| format!("{node}:{v}@{}", ShowBallot(*ballot)))
        .collect();
    format!("accepted {}", each.join(","))
}

/// A participant's answer to a status inquiry (an `Inquire` with no participants), as
/// [`crate::status`] reads it.
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
            Msg::Prepare { txn, wide: false, .. } => write!(f, "PREPARE {txn}"),
            Msg::Prepare { txn, wide: true, .. } => write!(f, "PREPARE-WIDE {txn}"),
            Msg::Phase2a { txn, ballot, values, .. } => {
                write!(f, "2a {} {} {txn}", ShowBallot(*ballot), values_label(values))
            }
            Msg::Phase2b { txn, ballot, values } => {
                write!(f, "2b {} {} {txn}", ShowBallot(*ballot), values_label(values))
            }
            Msg::Phase1a { txn, ballot, .. } => write!(f, "1a {} {txn}", ShowBallot(*ballot)),
            Msg::Phase1b { txn, ballot, accepted } => {
                write!(f, "1b {} {} {txn}", ShowBallot(*ballot), accepted_label(accepted))
            }
            Msg::Reject { txn, promised } => {
                write!(f, "REJECT <{} {txn}", ShowBallot(*promised))
            }
            Msg::Decision { txn, decision } => write!(f, "{decision} {txn}"),
            Msg::Inquire { txn, .. } => write!(f, "INQUIRE {txn}"),
            Msg::CommitOnePhase { txn, .. } => write!(f, "COMMIT-1PC {txn}"),
            Msg::OnePhaseResult { txn, decision } => write!(f, "1PC {decision} {txn}"),
            Msg::Ack { txn, decision } => write!(f, "ACK {decision} {txn}"),
            Msg::Forget { coordinator, epoch, below } => {
                write!(f, "FORGET {coordinator}/e{epoch} below {below}")
            }
            Msg::Forgotten { txn } => write!(f, "FORGOTTEN {txn}"),
        }
    }
}

impl fmt::Display for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Timer::BallotZero { txn } => write!(f, "ballot-0 (vote) timeout {txn}"),
            Timer::Ballot { txn, ballot } => {
                write!(f, "ballot {} timeout {txn}", ShowBallot(*ballot))
            }
            Timer::Inquire { txn, attempt } => write!(f, "inquiry #{attempt} {txn}"),
            Timer::OnePhaseRetry { txn, attempt } => write!(f, "1pc retry #{attempt} {txn}"),
            Timer::DecisionRetry { txn, attempt } => {
                write!(f, "decision resend #{attempt} {txn}")
            }
        }
    }
}

impl<C, S> fmt::Display for Record<C, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::EpochStarted { epoch } => write!(f, "epoch {epoch}"),
            Record::Prepared { txn, .. } => write!(f, "prepared {txn}"),
            Record::Committed { txn } => write!(f, "committed {txn}"),
            Record::Aborted { txn } => write!(f, "aborted {txn}"),
            Record::Promised { txn, ballot } => {
                write!(f, "promised {} {txn}", ShowBallot(*ballot))
            }
            Record::Accepted { txn, ballot, values, .. } => {
                write!(f, "accepted {} {} {txn}", ShowBallot(*ballot), values_label(values))
            }
            Record::Snapshot { committed, aborted, .. } => {
                write!(f, "snapshot ({} committed, {} aborted)", committed.len(), aborted.len())
            }
            Record::Decisions { committed, aborted } => {
                write!(f, "{} more committed, {} more aborted", committed.len(), aborted.len())
            }
            Record::OnePhaseCommitted { txn, .. } => write!(f, "1pc-committed {txn}"),
            Record::Forgotten { coordinator, epoch, below } => {
                write!(f, "forgotten {coordinator}/e{epoch} below {below}")
            }
            Record::KeptOutcomes { kept } => write!(f, "{} forgotten outcomes kept", kept.len()),
        }
    }
}

fn encode_values(w: &mut Writer<'_>, values: &[(NodeId, Value)]) {
    w.sequence_len(values.len());
    for (node, value) in values {
        w.node(*node);
        w.u8(value_tag(*value));
    }
}

fn value_tag(value: Value) -> u8 {
    match value {
        Value::Prepared => 1,
        Value::Aborted => 2,
    }
}

fn decode_value(r: &mut Reader<'_>) -> Result<Value, DecodeError> {
    match r.u8()? {
        1 => Ok(Value::Prepared),
        2 => Ok(Value::Aborted),
        tag => Err(DecodeError::UnknownTag { what: "paxos value", tag }),
    }
}

fn decode_values(r: &mut Reader<'_>) -> Result<Vec<(NodeId, Value)>, DecodeError> {
    let len = r.sequence_len()?;
    (0..len).map(|_| Ok((r.node()?, decode_value(r)?))).collect()
}

fn encode_txns(w: &mut Writer<'_>, txns: &[TxnId]) {
    w.sequence_len(txns.len());
    for &txn in txns {
        w.txn(txn);
    }
}

fn decode_txns(r: &mut Reader<'_>) -> Result<Vec<TxnId>, DecodeError> {
    let len = r.sequence_len()?;
    (0..len).map(|_| r.txn()).collect()
}

impl<C: Encode, S: Encode> Encode for Record<C, S> {
    fn encode(&self, w: &mut Writer<'_>) {
        match self {
            Record::EpochStarted { epoch } => {
                w.u8(1);
                w.u32(*epoch);
            }
            Record::Prepared { txn, participants, writes } => {
                w.u8(2);
                w.txn(*txn);
                w.nodes(participants);
                writes.encode(w);
            }
            Record::Committed { txn } => {
                w.u8(3);
                w.txn(*txn);
            }
            Record::Aborted { txn } => {
                w.u8(4);
                w.txn(*txn);
            }
            Record::Promised { txn, ballot } => {
                w.u8(5);
                w.txn(*txn);
                w.u64(*ballot);
            }
            Record::Accepted { txn, ballot, values, participants } => {
                w.u8(6);
                w.txn(*txn);
                w.u64(*ballot);
                encode_values(w, values);
                w.nodes(participants);
            }
            Record::Snapshot { values, committed, aborted } => {
                w.u8(7);
                values.encode(w);
                encode_txns(w, committed);
                encode_txns(w, aborted);
            }
            Record::Decisions { committed, aborted } => {
                w.u8(8);
                encode_txns(w, committed);
                encode_txns(w, aborted);
            }
            Record::OnePhaseCommitted { txn, writes } => {
                w.u8(9);
                w.txn(*txn);
                writes.encode(w);
            }
            Record::Forgotten { coordinator, epoch, below } => {
                w.u8(10);
                w.node(*coordinator);
                w.u32(*epoch);
                w.u32(*below);
            }
            Record::KeptOutcomes { kept } => {
                w.u8(11);
                w.sequence_len(kept.len());
                for &(txn, decision) in kept {
                    w.txn(txn);
                    w.decision(decision);
                }
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8()? {
            1 => Record::EpochStarted { epoch: r.u32()? },
            2 => {
                Record::Prepared { txn: r.txn()?, participants: r.nodes()?, writes: C::decode(r)? }
            }
            3 => Record::Committed { txn: r.txn()? },
            4 => Record::Aborted { txn: r.txn()? },
            5 => Record::Promised { txn: r.txn()?, ballot: r.u64()? },
            6 => Record::Accepted {
                txn: r.txn()?,
                ballot: r.u64()?,
                values: decode_values(r)?,
                participants: r.nodes()?,
            },
            7 => Record::Snapshot {
                values: S::decode(r)?,
                committed: decode_txns(r)?,
                aborted: decode_txns(r)?,
            },
            8 => Record::Decisions { committed: decode_txns(r)?, aborted: decode_txns(r)? },
            9 => Record::OnePhaseCommitted { txn: r.txn()?, writes: C::decode(r)? },
            10 => Record::Forgotten { coordinator: r.node()?, epoch: r.u32()?, below: r.u32()? },
            11 => {
                let len = r.sequence_len()?;
                let kept = (0..len)
                    .map(|_| Ok((r.txn()?, r.decision()?)))
                    .collect::<Result<_, DecodeError>>()?;
                Record::KeptOutcomes { kept }
            }
            tag => return Err(DecodeError::UnknownTag { what: "paxos-commit record", tag }),
        })
    }
}

/// Messages cross real networks in this form (the runtime's peer frames).
impl<C: Encode> Encode for Msg<C> {
    fn encode(&self, w: &mut Writer<'_>) {
        match self {
            Msg::Prepare { txn, participants, writes, wide } => {
                // A tag of its own for the wide form, as 2PC does for early acknowledgement.
                w.u8(if *wide { 11 } else { 1 });
                w.txn(*txn);
                w.nodes(participants);
                writes.encode(w);
            }
            Msg::Phase2a { txn, ballot, values, leader, participants } => {
                w.u8(2);
                w.txn(*txn);
                w.u64(*ballot);
                encode_values(w, values);
                w.node(*leader);
                w.nodes(participants);
            }
            Msg::Phase2b { txn, ballot, values } => {
                w.u8(3);
                w.txn(*txn);
                w.u64(*ballot);
                encode_values(w, values);
            }
            Msg::Phase1a { txn, ballot, leader } => {
                w.u8(4);
                w.txn(*txn);
                w.u64(*ballot);
                w.node(*leader);
            }
            Msg::Phase1b { txn, ballot, accepted } => {
                w.u8(5);
                w.txn(*txn);
                w.u64(*ballot);
                w.sequence_len(accepted.len());
                for &(instance, at, value) in accepted {
                    w.node(instance);
                    w.u64(at);
                    w.u8(value_tag(value));
                }
            }
            Msg::Reject { txn, promised } => {
                w.u8(6);
                w.txn(*txn);
                w.u64(*promised);
            }
            Msg::Decision { txn, decision } => {
                w.u8(7);
                w.txn(*txn);
                w.decision(*decision);
            }
            Msg::Inquire { txn, participants } => {
                w.u8(8);
                w.txn(*txn);
                w.nodes(participants);
            }
            Msg::CommitOnePhase { txn, writes } => {
                w.u8(9);
                w.txn(*txn);
                writes.encode(w);
            }
            Msg::OnePhaseResult { txn, decision } => {
                w.u8(10);
                w.txn(*txn);
                w.decision(*decision);
            }
            Msg::Ack { txn, decision } => {
                w.u8(12);
                w.txn(*txn);
                w.decision(*decision);
            }
            Msg::Forget { coordinator, epoch, below } => {
                w.u8(13);
                w.node(*coordinator);
                w.u32(*epoch);
                w.u32(*below);
            }
            Msg::Forgotten { txn } => {
                w.u8(14);
                w.txn(*txn);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8()? {
            tag @ (1 | 11) => Msg::Prepare {
                txn: r.txn()?,
                participants: r.nodes()?,
                writes: C::decode(r)?,
                wide: tag == 11,
            },
            2 => Msg::Phase2a {
                txn: r.txn()?,
                ballot: r.u64()?,
                values: decode_values(r)?,
                leader: r.node()?,
                participants: r.nodes()?,
            },
            3 => Msg::Phase2b { txn: r.txn()?, ballot: r.u64()?, values: decode_values(r)? },
            4 => Msg::Phase1a { txn: r.txn()?, ballot: r.u64()?, leader: r.node()? },
            5 => {
                let (txn, ballot) = (r.txn()?, r.u64()?);
                let len = r.sequence_len()?;
                let accepted = (0..len)
                    .map(|_| Ok((r.node()?, r.u64()?, decode_value(r)?)))
                    .collect::<Result<_, DecodeError>>()?;
                Msg::Phase1b { txn, ballot, accepted }
            }
            6 => Msg::Reject { txn: r.txn()?, promised: r.u64()? },
            7 => Msg::Decision { txn: r.txn()?, decision: r.decision()? },
            8 => Msg::Inquire { txn: r.txn()?, participants: r.nodes()? },
            9 => Msg::CommitOnePhase { txn: r.txn()?, writes: C::decode(r)? },
            10 => Msg::OnePhaseResult { txn: r.txn()?, decision: r.decision()? },
            12 => Msg::Ack { txn: r.txn()?, decision: r.decision()? },
            13 => Msg::Forget { coordinator: r.node()?, epoch: r.u32()?, below: r.u32()? },
            14 => Msg::Forgotten { txn: r.txn()? },
            tag => return Err(DecodeError::UnknownTag { what: "paxos-commit message", tag }),
        })
    }
}
