//! The interface between protocol cores and their drivers.

use std::fmt::{Debug, Display};
use std::hash::Hash;

use concord_types::codec::Encode;
use concord_types::{Decision, NodeId, RequestId, TxnId, Vote, Write};

use crate::store::Store;

/// One participant's part of a transaction: which node, and what it changes there — in the
/// participant resource's own terms (`C`; the simulator's deltas by default). A change that
/// writes nothing is a read-only branch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Branch<C = Vec<Write>> {
    pub node: NodeId,
    pub writes: C,
}

/// What a core is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input<M, R, T, C = Vec<Write>> {
    /// A client asks a coordinator to run a transaction over these branches.
    Begin { request: RequestId, branches: Vec<Branch<C>> },
    /// A message from another node.
    Message { from: NodeId, msg: M },
    /// A timer this core set has fired. Timers are never cancelled: a core ignores stale ones.
    Timer(T),
    /// A record this core asked to persist with [`Durability::Forced`] is now durable.
    Persisted(R),
    /// The node (re)starts; `records` is its durable log in order, empty on a first start.
    Restart { records: Vec<R> },
    /// Ids named before their transactions run ([`Reservation`]); coordinators only.
    Reservation(Reservation<C>),
}

/// A transaction id handed to a client *before* its transaction runs, so a client that loses
/// the commit's reply still knows what to ask `Status` about (a commit can always be named).
///
/// * `Reserve` names an id now (`Command::Reserved`), of the current epoch; the coordinator
///   holds it (bounded) and keeps its forget mark below it.
/// * `Begin` runs the branches under a held id; an id not held (never reserved, released,
///   from before a restart) is refused (`Rejection::NotReserved`) and never runs.
/// * `Release` drops an id whose transaction will not run (its session ended).
///
/// Why nothing else is needed: a status query for a reserved id that has not run asks every
/// participant, each of which (never having seen it) first promises ABORT durably — so if the
/// commit arrives after all, it aborts, as the status said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reservation<C = Vec<Write>> {
    Reserve { request: RequestId },
    Begin { request: RequestId, txn: TxnId, branches: Vec<Branch<C>> },
    Release { txn: TxnId },
}

/// Whether the core waits for a record to be durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Durability {
    /// Synced before the driver answers `Persisted`; the core waits for that answer.
    Forced,
    /// Written; made durable by whichever sync comes next. Losing it in a crash is safe.
    Lazy,
}

impl<C> Reservation<C> {
    /// For coordinators that offer no reservations (the simulator-only protocols): refuse.
    pub fn refuse<M, R, T>(self, out: &mut Vec<Command<M, R, T>>) {
        match self {
            Reservation::Reserve { request } | Reservation::Begin { request, .. } => {
                out.push(Command::Rejected { request, reason: Rejection::NotReserved });
            }
            Reservation::Release { .. } => {}
        }
    }
}

/// Why a coordinator refused a request before naming a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// No branches, the same node twice, or more branches than the configured limit.
    Invalid,
    /// The in-flight transaction limit is reached; the client may retry later.
    Overloaded,
    /// A reserved id that this coordinator does not hold (never reserved, released, or from
    /// before its restart): the transaction did not run; reserve a new id.
    NotReserved,
}

/// What a core asks its driver to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<M, R, T> {
    Send {
        to: NodeId,
        msg: M,
    },
    Persist {
        record: R,
        durability: Durability,
    },
    SetTimer {
        timer: T,
        after_us: u64,
    },
    /// The coordinator named the client's request.
    Begun {
        request: RequestId,
        txn: TxnId,
    },
    /// The coordinator reserved `txn` for the request ([`Reservation::Reserve`]).
    Reserved {
        request: RequestId,
        txn: TxnId,
    },
    /// The coordinator refused the request.
    Rejected {
        request: RequestId,
        reason: Rejection,
    },
    /// A coordinator: the outcome to report to the client. A participant: its branch is now
    /// decided and (for COMMIT) applied to its store — emitted once per branch.
    Outcome {
        txn: TxnId,
        decision: Decision,
    },
}

/// A sans-IO protocol state machine.
pub trait Core {
    type Msg;
    type Record;
    type Timer;
    /// What a branch changes (see [`Branch`]).
    type Change;

    /// Handles one input, appending the resulting commands to `out`.
    fn handle(
        &mut self,
        input: Input<Self::Msg, Self::Record, Self::Timer, Self::Change>,
        out: &mut Vec<Command<Self::Msg, Self::Record, Self::Timer>>,
    );
}

/// A core that can say which of its records are still needed, so the log can drop the rest
/// (a checkpoint). Replaying `live_records` after a restart must rebuild the same durable state
/// as replaying the whole log: the decisions, the prepared branches, the applied values.
pub trait Checkpoint: Core {
    fn live_records(&self) -> Vec<Self::Record>;
}

/// A participant core over a resource the driver made — what drivers of real resources (the
/// KV store, on the runtime and in the simulator) use of it, whichever protocol it speaks.
pub trait ResourceParticipant: Checkpoint {
    type Resource: crate::Resource<Change = Self::Change>;

    /// The resource, for reads a driver serves outside the protocol.
    fn resource(&self) -> &Self::Resource;
    /// The resource, for what the protocol does not carry (a clock).
    fn resource_mut(&mut self) -> &mut Self::Resource;
    /// Branches prepared here whose outcome this participant has not learned.
    fn in_doubt(&self) -> Vec<TxnId>;
    /// Why it refused `txn`, if it still remembers.
    fn refusal(&self, txn: TxnId) -> Option<&<Self::Resource as crate::Resource>::Refusal>;
    /// A reader is blocked on `txn`'s prepared write: ask for the outcome now. Returns whether
    /// `txn` is prepared here.
    fn inquire_now(
        &mut self,
        txn: TxnId,
        out: &mut Vec<Command<Self::Msg, Self::Record, Self::Timer>>,
    ) -> bool;
    /// Every decision it knows.
    fn decided(&self) -> Vec<(TxnId, Decision)>;
}

/// What a driver or checker may read of a participant.
pub trait ParticipantView {
    /// Transactions this participant voted YES on and has not yet learned the outcome of.
    fn in_doubt(&self) -> Vec<TxnId>;
    /// The participant's applied state.
    fn store(&self) -> &Store;
}

/// The protocol-independent meaning of a message, for checkers and diagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    Vote {
        txn: TxnId,
        vote: Vote,
    },
    /// Three-phase commit's PRECOMMIT: "everyone voted YES".
    PreCommit {
        txn: TxnId,
    },
    Decision {
        txn: TxnId,
        decision: Decision,
    },
    /// An acknowledgement sent after its sender already knows the outcome: not on the path by
    /// which participants learn it, so not counted in happy-path message counts.
    Ack {
        txn: TxnId,
    },
    /// Bookkeeping after outcomes (2PC's FORGET): on no transaction's path, not counted.
    Housekeeping,
    Other,
}

/// The protocol-independent meaning of a log record, for checkers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A participant's prepare record: it may vote YES once this is durable. `early_ack`: the
    /// transaction is committed once every branch's prepare is durable (2PC's early
    /// acknowledgement), so a COMMIT may be sent before any decision record is durable.
    Prepared {
        txn: TxnId,
        early_ack: bool,
    },
    /// A coordinator's decision record.
    Decided {
        txn: TxnId,
        decision: Decision,
    },
    /// A participant's record of its own branch's outcome (applied on recovery).
    BranchDecided {
        txn: TxnId,
        decision: Decision,
    },
    Other,
}

/// The delay before retry number `attempt`: `base · 2^attempt`, capped at `max`. Every retry
/// loop in the cores (resends, inquiries, ballots, termination terms) backs off this way.
pub fn backoff_us(base_us: u64, max_us: u64, attempt: u32) -> u64 {
    base_us.saturating_mul(1u64 << attempt.min(32)).min(max_us)
}

/// The optimisations a protocol may offer, each a switch so its effect can be measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Switches {
    /// Participants with nothing to write vote READ-ONLY and skip phase two.
    pub read_only: bool,
    /// A transaction with one participant commits in one round, with no coordinator log.
    pub one_phase: bool,
    /// A prepared participant that cannot reach the coordinator asks its peers.
    pub cooperative_termination: bool,
    /// 2PC: a transaction whose every branch writes is acknowledged to the client once every
    /// prepare is durable, before the coordinator logs anything (the two_phase module docs).
    pub early_ack: bool,
    /// 2PC: the coordinator tells its participants when its transactions have finished, and
    /// they forget their decisions on them (the two_phase module docs, "Forgetting").
    pub forget: bool,
    /// 2PC, with `forget`: how many forgotten decisions a participant still keeps, only to
    /// answer status queries with the outcome rather than FORGOTTEN (the newest ones; a
    /// checkpoint keeps them too). Not an optimisation but a memory bound: 0 answers FORGOTTEN
    /// for everything below the mark, as the model checker explores it.
    pub forgotten_kept: u32,
}

impl Default for Switches {
    fn default() -> Self {
        Switches {
            read_only: true,
            one_phase: true,
            cooperative_termination: true,
            early_ack: false,
            forget: true,
            forgotten_kept: 100_000,
        }
    }
}

/// Where the other nodes are, as a protocol's configuration needs to know.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Topology {
    /// Acceptor nodes (Paxos Commit), in order; empty for protocols without them.
    pub acceptors: Vec<NodeId>,
    /// Failures to tolerate: Paxos Commit runs 2F + 1 acceptors.
    pub fault_tolerance: u32,
}

/// A role a protocol does not have. It cannot be constructed, so its `handle` is never called.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NoRole<M, R, T, C = Vec<Write>>(
    std::convert::Infallible,
    std::marker::PhantomData<(M, R, T, C)>,
);

impl<M, R, T, C> Core for NoRole<M, R, T, C> {
    type Msg = M;
    type Record = R;
    type Timer = T;
    type Change = C;

    fn handle(&mut self, _: Input<M, R, T, C>, _: &mut Vec<Command<M, R, T>>) {
        match self.0 {}
    }
}

impl<M, R, T, C> Checkpoint for NoRole<M, R, T, C> {
    fn live_records(&self) -> Vec<R> {
        match self.0 {}
    }
}

/// A node's part in a protocol, as a receiver knows its sender's: by the sender's certificate
/// in the runtime, by its node in the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeRole {
    Coordinator,
    Participant,
    Acceptor,
}

/// An atomic-commit protocol: its message, record and timer types and its roles.
pub trait Protocol {
    /// The name on the command line (`--protocol 2pc`).
    const NAME: &'static str;
    /// Whether a COMMIT message may only follow a durable coordinator decision record. False for
    /// Paxos Commit, whose decision is durable at the acceptors instead.
    const COORDINATOR_LOGS_DECISION: bool = true;
    type Msg: Clone + Debug + Display + Hash;
    type Record: Clone + Debug + Display + Hash + Encode;
    type Timer: Clone + Debug + Display + Hash;
    type Config: Clone + Debug;
    type Coordinator: Core<
        Msg = Self::Msg,
        Record = Self::Record,
        Timer = Self::Timer,
        Change = Vec<Write>,
    >;
    type Participant: Core<Msg = Self::Msg, Record = Self::Record, Timer = Self::Timer, Change = Vec<Write>>
        + ParticipantView;
    type Acceptor: Core<
        Msg = Self::Msg,
        Record = Self::Record,
        Timer = Self::Timer,
        Change = Vec<Write>,
    >;

    /// How many acceptor nodes the protocol runs to tolerate `fault_tolerance` failures.
    fn acceptor_count(_fault_tolerance: u32) -> u32 {
        0
    }
    fn config(switches: Switches, topology: &Topology) -> Self::Config;
    fn acceptor(_id: NodeId, _config: &Self::Config) -> Self::Acceptor {
        panic!("{} has no acceptors", Self::NAME)
    }
    fn coordinator(id: NodeId, config: &Self::Config) -> Self::Coordinator;
    fn participant(id: NodeId, config: &Self::Config) -> Self::Participant;
    /// Whether a participant can run on after an accepted loss of its log, presuming nothing
    /// about what it may have forgotten (`crate::amnesia`).
    const RUNS_AFTER_DATA_LOSS: bool = false;
    /// Puts a participant into that mode; only called when `RUNS_AFTER_DATA_LOSS`.
    fn set_amnesia(_participant: &mut Self::Participant, _amnesia: crate::amnesia::Amnesia) {
        unreachable!("{} participants cannot run after a data loss", Self::NAME)
    }
    fn message_kind(msg: &Self::Msg) -> MessageKind;
    /// Whether a node of role `from_role` ever sends `msg` to a node of role `to_role`. The
    /// runtime refuses a peer's message this says no to (a shard posing as the coordinator);
    /// the simulator asserts it of every send, so the rule never refuses an honest message.
    fn may_send(_msg: &Self::Msg, _from: NodeId, _from_role: NodeRole, _to_role: NodeRole) -> bool {
        true
    }
    fn record_kind(record: &Self::Record) -> RecordKind;

    /// The message that asks a participant for `txn`'s outcome on behalf of a status query
    /// ([`crate::status`]), if the protocol answers status queries.
    fn status_inquiry(_txn: TxnId) -> Option<Self::Msg> {
        None
    }
    /// A participant's answer to a status inquiry, if `msg` is one.
    fn status_answer(_msg: &Self::Msg) -> Option<(TxnId, crate::status::Answer)> {
        None
    }
}
