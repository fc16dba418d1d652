//! Three-phase commit (Skeen, 1981) with a termination protocol.
//!
//! ```text
//!  coordinator                         participant
//!     │── CANCOMMIT ────────────────────▶│ check, lock, force PREPARED      (uncertain)
//!     │◀──────────── VOTE YES ───────────│
//!     │── PRECOMMIT(term 0) ────────────▶│ force PRE-COMMITTED              (pre-committed)
//!     │◀──────────── PRECOMMIT-ACK ──────│
//!     │  force COMMIT-DECIDED            │
//!     │── DECISION COMMIT (DoCommit) ───▶│ force COMMITTED, apply
//! ```
//!
//! The extra round buys non-blocking termination *if failures are fail-stop and the network
//! does not partition*: a participant that hears nothing runs the termination protocol. Terms
//! number the attempts; the leader of term `k ≥ 1` is participant `(k − 1) mod n`. The leader
//! asks every participant's state and decides:
//!
//! * someone committed ⇒ COMMIT; someone aborted (or never voted) ⇒ ABORT;
//! * someone pre-committed ⇒ send PRECOMMIT(k) to the uncertain, then COMMIT;
//! * everyone uncertain ⇒ ABORT (no one can have committed: commit needs everyone pre-committed).
//!
//! A participant still waiting for PRECOMMIT therefore ends up aborting, one that pre-committed
//! ends up committing — with no coordinator. The price is that the rule reads only the states
//! the leader can reach: on each side of a partition a leader decides from its side's states,
//! and the sides can decide differently. That is 3PC's known limit, shown by the
//! `partition-during-precommit` scenario and found by the model checker.

mod coordinator;
mod participant;
#[cfg(test)]
mod tests;

use std::fmt;

use concord_types::codec::{DecodeError, Encode, Reader, Writer};
use concord_types::{Decision, NodeId, TxnId, Vote, Write};

pub use coordinator::Coordinator;
pub use participant::Participant;

use crate::{MessageKind, NoRole, Protocol, RecordKind, Switches, Topology};

/// The three-phase commit protocol.
#[derive(Debug, Clone, Copy)]
pub struct ThreePhase;

/// What a participant reports to a termination leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Uncertain,
    PreCommitted,
    Committed,
    Aborted,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Msg {
    CanCommit {
        txn: TxnId,
        participants: Vec<NodeId>,
        writes: Vec<Write>,
    },
    Vote {
        txn: TxnId,
        vote: Vote,
    },
    /// From the coordinator (term 0) or a termination leader (term ≥ 1).
    PreCommit {
        txn: TxnId,
        term: u32,
    },
    PreCommitAck {
        txn: TxnId,
        term: u32,
    },
    /// DoCommit or Abort, from the coordinator or a termination leader.
    Decision {
        txn: TxnId,
        decision: Decision,
    },
    /// Participant → coordinator after committing, so the coordinator can forget.
    Ack {
        txn: TxnId,
    },
    StateRequest {
        txn: TxnId,
        term: u32,
        participants: Vec<NodeId>,
    },
    StateReport {
        txn: TxnId,
        term: u32,
        state: State,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Record {
    EpochStarted {
        epoch: u32,
    },
    /// Coordinator: the commit decision.
    CommitDecided {
        txn: TxnId,
        participants: Vec<NodeId>,
    },
    Ended {
        txn: TxnId,
    },
    Prepared {
        txn: TxnId,
        participants: Vec<NodeId>,
        writes: Vec<Write>,
    },
    PreCommitted {
        txn: TxnId,
    },
    Committed {
        txn: TxnId,
    },
    Aborted {
        txn: TxnId,
    },
    /// A termination leader's decision, forced before it is sent.
    TerminationDecided {
        txn: TxnId,
        decision: Decision,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Timer {
    VoteTimeout {
        txn: TxnId,
    },
    /// The coordinator stops waiting for PRECOMMIT acks and commits.
    PreCommitAckTimeout {
        txn: TxnId,
    },
    ResendCommit {
        txn: TxnId,
        attempt: u32,
    },
    /// A participant heard nothing new in `term`: move to the next term.
    Termination {
        txn: TxnId,
        term: u32,
    },
    /// A termination leader stops waiting for state reports (or PRECOMMIT acks) of `term`.
    Collect {
        txn: TxnId,
        term: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    pub switches: Switches,
    pub vote_timeout_us: u64,
    pub precommit_ack_timeout_us: u64,
    pub resend_base_us: u64,
    pub resend_max_us: u64,
    /// A participant that voted YES starts the next termination term after this long without
    /// news, doubling per term up to the maximum.
    pub termination_timeout_us: u64,
    pub termination_timeout_max_us: u64,
    /// How long a termination leader waits for reports or acks.
    pub collect_timeout_us: u64,
    pub max_in_flight: usize,
    pub max_queued_begins: usize,
    pub max_participants: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            switches: Switches::default(),
            vote_timeout_us: 50_000,
            precommit_ack_timeout_us: 50_000,
            resend_base_us: 10_000,
            resend_max_us: 1_000_000,
            termination_timeout_us: 100_000,
            termination_timeout_max_us: 1_000_000,
            collect_timeout_us: 20_000,
            max_in_flight: 10_000,
            max_queued_begins: 1_024,
            max_participants: 64,
        }
    }
}

/// The leader of termination term `term` (≥ 1).
pub fn term_leader(participants: &[NodeId], term: u32) -> NodeId {
    assert!(term >= 1 && !participants.is_empty(), "term 0 is the coordinator's");
    participants[(term as usize - 1) % participants.len()]
}

impl Protocol for ThreePhase {
    const NAME: &'static str = "3pc";
    type Msg = Msg;
    type Record = Record;
    type Timer = Timer;
    type Config = Config;
    type Coordinator = Coordinator;
    type Participant = Participant;
    type Acceptor = NoRole<Msg, Record, Timer>;

    fn config(switches: Switches, _topology: &Topology) -> Config {
        Config { switches, ..Config::default() }
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
            Msg::PreCommit { txn, .. } => MessageKind::PreCommit { txn },
            Msg::Decision { txn, decision } => MessageKind::Decision { txn, decision },
            Msg::Ack { txn } => MessageKind::Ack { txn },
            _ => MessageKind::Other,
        }
    }
    fn record_kind(record: &Record) -> RecordKind {
        match *record {
            Record::Prepared { txn, .. } => RecordKind::Prepared { txn, early_ack: false },
            Record::CommitDecided { txn, .. } => {
                RecordKind::Decided { txn, decision: Decision::Commit }
            }
            Record::TerminationDecided { txn, decision } => RecordKind::Decided { txn, decision },
            Record::Committed { txn } => {
                RecordKind::BranchDecided { txn, decision: Decision::Commit }
            }
            Record::Aborted { txn } => RecordKind::BranchDecided { txn, decision: Decision::Abort },
            Record::EpochStarted { .. } | Record::Ended { .. } | Record::PreCommitted { .. } => {
                RecordKind::Other
            }
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Uncertain => "uncertain",
            State::PreCommitted => "pre-committed",
            State::Committed => "committed",
            State::Aborted => "aborted",
        })
    }
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Msg::CanCommit { txn, .. } => write!(f, "CANCOMMIT {txn}"),
            Msg::Vote { txn, vote } => write!(f, "VOTE {vote} {txn}"),
            Msg::PreCommit { txn, term } => write!(f, "PRECOMMIT t{term} {txn}"),
            Msg::PreCommitAck { txn, term } => write!(f, "PRE-ACK t{term} {txn}"),
            Msg::Decision { txn, decision } => write!(f, "{decision} {txn}"),
            Msg::Ack { txn } => write!(f, "ACK {txn}"),
            Msg::StateRequest { txn, term, .. } => write!(f, "STATE? t{term} {txn}"),
            Msg::StateReport { txn, term, state } => write!(f, "STATE t{term} {state} {txn}"),
        }
    }
}

impl fmt::Display for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Timer::VoteTimeout { txn } => write!(f, "vote timeout {txn}"),
            Timer::PreCommitAckTimeout { txn } => write!(f, "PRECOMMIT-ack timeout {txn}"),
            Timer::ResendCommit { txn, attempt } => write!(f, "resend COMMIT #{attempt} {txn}"),
            Timer::Termination { txn, term } => {
                write!(f, "no news in term {term}: next term {txn}")
            }
            Timer::Collect { txn, term } => write!(f, "term {term} leader stops waiting {txn}"),
        }
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::EpochStarted { epoch } => write!(f, "epoch {epoch}"),
            Record::CommitDecided { txn, .. } => write!(f, "commit-decided {txn}"),
            Record::Ended { txn } => write!(f, "ended {txn}"),
            Record::Prepared { txn, .. } => write!(f, "prepared {txn}"),
            Record::PreCommitted { txn } => write!(f, "pre-committed {txn}"),
            Record::Committed { txn } => write!(f, "committed {txn}"),
            Record::Aborted { txn } => write!(f, "aborted {txn}"),
            Record::TerminationDecided { txn, decision } => {
                write!(f, "termination-decided {decision} {txn}")
            }
        }
    }
}

impl Encode for Record {
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
            Record::Prepared { txn, participants, writes } => {
                w.u8(4);
                w.txn(*txn);
                w.nodes(participants);
                w.writes(writes);
            }
            Record::PreCommitted { txn } => {
                w.u8(5);
                w.txn(*txn);
            }
            Record::Committed { txn } => {
                w.u8(6);
                w.txn(*txn);
            }
            Record::Aborted { txn } => {
                w.u8(7);
                w.txn(*txn);
            }
            Record::TerminationDecided { txn, decision } => {
                w.u8(8);
                w.txn(*txn);
                w.decision(*decision);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8()? {
            1 => Record::EpochStarted { epoch: r.u32()? },
            2 => Record::CommitDecided { txn: r.txn()?, participants: r.nodes()? },
            3 => Record::Ended { txn: r.txn()? },
            4 => Record::Prepared { txn: r.txn()?, participants: r.nodes()?, writes: r.writes()? },
            5 => Record::PreCommitted { txn: r.txn()? },
            6 => Record::Committed { txn: r.txn()? },
            7 => Record::Aborted { txn: r.txn()? },
            8 => Record::TerminationDecided { txn: r.txn()?, decision: r.decision()? },
            tag => return Err(DecodeError::UnknownTag { what: "3pc record", tag }),
        })
    }
}
