//! Which commit protocol the node loop runs: [`TwoPc`] or [`PaxosCommit`], over a [`Model`].
//!
//! The loop, the services and the coordinator's client side are the same for both; an engine
//! says how to build its cores from the configuration and how to read them — a shard's
//! resource, what a message or record means to the coordinator's transaction table, whether a
//! forgotten transaction's status can be asked of the shards.
//!
//! | | 2PC | Paxos Commit |
//! |---|---|---|
//! | who decides | the coordinator's log | 2F + 1 acceptor nodes |
//! | coordinator log | epochs, commit decisions, ends | epochs only |
//! | a votes arrives as | the shard's VOTE | the acceptors' bundled 2b |
//! | committed for the table | every YES voter acknowledged | the decision is chosen |
//! | status of a forgotten txn | ask every shard (INQUIRE) | the same |
//! | forgetting (FORGET below the mark) | once every YES voter acknowledged | once every shard acknowledged the decision (acceptors forget too) |
//! | `early_ack = true` | the client hears COMMIT at the last YES; the decision record is lazy | refused |

use std::marker::PhantomData;

use concord_commit::amnesia::AfterDataLoss;
use concord_commit::{paxos_commit, two_phase, Checkpoint, Core, NodeRole, ResourceParticipant};
use concord_types::{Decision, NodeId, TxnId, Vote};

use crate::config::{ClusterConfig, Role};
use crate::model::{Change, Model, Snapshot};

pub(crate) type ResourceOf<E> = <<E as Engine>::Model as Model>::Resource;

/// What a peer message tells the coordinator's transaction table.
pub(crate) enum Seen {
    /// These branches of `txn` voted.
    Votes {
        txn: TxnId,
        votes: Vec<(NodeId, Vote)>,
    },
    /// The sender applied `txn`'s decision.
    Acknowledged {
        txn: TxnId,
    },
    /// A one-phase branch finished with this outcome.
    OnePhase {
        txn: TxnId,
        decision: Decision,
    },
    /// The sender's answer to the coordinator's status inquiry.
    Answer {
        txn: TxnId,
        answer: concord_commit::status::Answer,
    },
    Nothing,
}

/// What a message the coordinator sends tells its console's trace (`concord_console::trace`).
pub(crate) enum Sent {
    /// PREPARE (a branch with writes is asked to vote).
    Prepare {
        txn: TxnId,
    },
    /// A single branch is asked to commit alone.
    OnePhase {
        txn: TxnId,
    },
    /// The decision, to a branch.
    Decision {
        txn: TxnId,
        decision: Decision,
    },
    Nothing,
}

/// What a coordinator record tells the transaction table (also when replayed at start).
pub(crate) enum Logged {
    CommitDecided { txn: TxnId, participants: Vec<NodeId> },
    Ended { txn: TxnId },
    Nothing,
}

pub(crate) trait Engine: Send + Sync + Sized + 'static {
    type Model: Model;
    type Msg: concord_types::codec::Encode + std::fmt::Display + Send + 'static;
    type Record: concord_types::codec::Encode + Send + 'static;
    type Timer: Send + 'static;
    type Coordinator: Core<
            Msg = Self::Msg,
            Record = Self::Record,
            Timer = Self::Timer,
            Change = Change<Self::Model>,
        > + Checkpoint
        + Send;
    type Participant: ResourceParticipant<
            Resource = ResourceOf<Self>,
            Msg = Self::Msg,
            Record = Self::Record,
            Timer = Self::Timer,
            Change = Change<Self::Model>,
        > + AfterDataLoss
        + Send;
    type Acceptor: Core<
            Msg = Self::Msg,
            Record = Self::Record,
            Timer = Self::Timer,
            Change = Change<Self::Model>,
        > + Checkpoint
        + Send;

    /// Whether the coordinator's table waits for acknowledgements before "committed".
    const ACKNOWLEDGED: bool;

    fn coordinator(id: NodeId, config: &ClusterConfig) -> Self::Coordinator;
    fn participant(
        id: NodeId,
        config: &ClusterConfig,
        resource: ResourceOf<Self>,
    ) -> Self::Participant;
    /// `None`: this protocol has no acceptors (the configuration refuses such nodes).
    fn acceptor(id: NodeId, config: &ClusterConfig) -> Option<Self::Acceptor>;

    /// The applied state inside a checkpoint record, if it is one.
    fn snapshot_mut(record: &mut Self::Record) -> Option<&mut Snapshot<Self::Model>>;

    fn has_issued(c: &Self::Coordinator, txn: TxnId) -> bool;
    /// Transactions an acceptor keeps instances of.
    fn acceptor_remembers(a: &Self::Acceptor) -> u64;
    fn in_flight(c: &Self::Coordinator) -> usize;
    fn seen(from: NodeId, msg: &Self::Msg) -> Seen;
    fn sent(msg: &Self::Msg) -> Sent;
    fn logged(record: &Self::Record) -> Logged;
    /// The message that asks a shard for `txn`'s outcome (an undecided shard that never saw
    /// `txn` promises ABORT before it answers).
    fn status_inquiry(txn: TxnId) -> Self::Msg;
    /// Whether node `from`, a `from_role`, ever sends `msg` to a `to_role`
    /// (`concord_commit::Protocol::may_send`).
    fn may_send(msg: &Self::Msg, from: NodeId, from_role: Role, to_role: Role) -> bool;
}

/// The protocols' name for a configured role.
fn node_role(role: Role) -> NodeRole {
    match role {
        Role::Coordinator => NodeRole::Coordinator,
        Role::Shard => NodeRole::Participant,
        Role::Acceptor => NodeRole::Acceptor,
    }
}

/// Two-phase commit with presumed abort (`protocol = "2pc"`).
pub(crate) struct TwoPc<M>(PhantomData<M>);

pub(crate) fn two_phase_config(config: &ClusterConfig) -> two_phase::Config {
    let t = &config.timeouts;
    let defaults = two_phase::Config::default();
    two_phase::Config {
        switches: concord_commit::Switches { early_ack: config.early_ack, ..defaults.switches },
        vote_timeout_us: t.vote_ms * 1_000,
        resend_base_us: t.resend_base_ms * 1_000,
        resend_max_us: t.resend_max_ms * 1_000,
        inquiry_base_us: t.inquiry_base_ms * 1_000,
        inquiry_max_us: t.inquiry_max_ms * 1_000,
        ..defaults
    }
}

impl<M: Model> Engine for TwoPc<M> {
    type Model = M;
    type Msg = two_phase::Msg<Change<M>>;
    type Record = two_phase::Record<Change<M>, Snapshot<M>>;
    type Timer = two_phase::Timer;
    type Coordinator = two_phase::Coordinator<Change<M>, Snapshot<M>>;
    type Participant = two_phase::Participant<M::Resource>;
    type Acceptor = concord_commit::NoRole<Self::Msg, Self::Record, Self::Timer, Change<M>>;

    const ACKNOWLEDGED: bool = true;

    fn coordinator(id: NodeId, config: &ClusterConfig) -> Self::Coordinator {
        two_phase::Coordinator::new(id, two_phase_config(config))
    }
    fn participant(id: NodeId, config: &ClusterConfig, resource: M::Resource) -> Self::Participant {
        two_phase::Participant::with_resource(id, two_phase_config(config), resource)
    }
    fn acceptor(_: NodeId, _: &ClusterConfig) -> Option<Self::Acceptor> {
        None
    }
    fn snapshot_mut(record: &mut Self::Record) -> Option<&mut Snapshot<M>> {
        match record {
            two_phase::Record::Snapshot { values, .. } => Some(values),
            _ => None,
        }
    }
    fn has_issued(c: &Self::Coordinator, txn: TxnId) -> bool {
        c.has_issued(txn)
    }
    fn acceptor_remembers(_: &Self::Acceptor) -> u64 {
        0 // 2PC has no acceptors
    }
    fn in_flight(c: &Self::Coordinator) -> usize {
        c.in_flight()
    }
    fn seen(from: NodeId, msg: &Self::Msg) -> Seen {
        match *msg {
            two_phase::Msg::Vote { txn, vote } => Seen::Votes { txn, votes: vec![(from, vote)] },
            two_phase::Msg::Ack { txn } => Seen::Acknowledged { txn },
            two_phase::Msg::OnePhaseResult { txn, decision } => Seen::OnePhase { txn, decision },
            _ => match two_phase::status_answer(msg) {
                Some((txn, answer)) => Seen::Answer { txn, answer },
                None => Seen::Nothing,
            },
        }
    }
    fn sent(msg: &Self::Msg) -> Sent {
        match *msg {
            two_phase::Msg::Prepare { txn, .. } => Sent::Prepare { txn },
            two_phase::Msg::CommitOnePhase { txn, .. } => Sent::OnePhase { txn },
            two_phase::Msg::Decision { txn, decision } => Sent::Decision { txn, decision },
            _ => Sent::Nothing,
        }
    }
    fn logged(record: &Self::Record) -> Logged {
        match record {
            two_phase::Record::CommitDecided { txn, participants } => {
                Logged::CommitDecided { txn: *txn, participants: participants.clone() }
            }
            two_phase::Record::Ended { txn } => Logged::Ended { txn: *txn },
            _ => Logged::Nothing,
        }
    }
    fn status_inquiry(txn: TxnId) -> Self::Msg {
        two_phase::Msg::Inquire { txn }
    }
    fn may_send(msg: &Self::Msg, from: NodeId, from_role: Role, to_role: Role) -> bool {
        two_phase::may_send(msg, from, node_role(from_role), node_role(to_role))
    }
}

/// Paxos Commit (`protocol = "paxos-commit"`, with 2F + 1 acceptor nodes).
pub(crate) struct PaxosCommit<M>(PhantomData<M>);

fn paxos_config(config: &ClusterConfig) -> paxos_commit::Config {
    let t = &config.timeouts;
    let acceptors = config.acceptors().into_iter().map(NodeId).collect();
    paxos_commit::Config {
        vote_timeout_us: t.vote_ms * 1_000,
        ballot_timeout_us: t.resend_base_ms * 1_000,
        ballot_timeout_max_us: t.resend_max_ms * 1_000,
        inquiry_base_us: t.inquiry_base_ms * 1_000,
        inquiry_max_us: t.inquiry_max_ms * 1_000,
        ..paxos_commit::Config::new(acceptors)
    }
}

impl<M: Model> Engine for PaxosCommit<M> {
    type Model = M;
    type Msg = paxos_commit::Msg<Change<M>>;
    type Record = paxos_commit::Record<Change<M>, Snapshot<M>>;
    type Timer = paxos_commit::Timer;
    type Coordinator = paxos_commit::Coordinator<Change<M>, Snapshot<M>>;
    type Participant = paxos_commit::Participant<M::Resource>;
    type Acceptor = paxos_commit::Acceptor<Change<M>, Snapshot<M>>;

    const ACKNOWLEDGED: bool = false;

    fn coordinator(id: NodeId, config: &ClusterConfig) -> Self::Coordinator {
        paxos_commit::Coordinator::new(id, paxos_config(config))
    }
    fn participant(id: NodeId, config: &ClusterConfig, resource: M::Resource) -> Self::Participant {
        paxos_commit::Participant::with_resource(id, paxos_config(config), resource)
    }
    fn acceptor(id: NodeId, config: &ClusterConfig) -> Option<Self::Acceptor> {
        Some(paxos_commit::Acceptor::new(id, paxos_config(config)))
    }
    fn snapshot_mut(record: &mut Self::Record) -> Option<&mut Snapshot<M>> {
        match record {
            paxos_commit::Record::Snapshot { values, .. } => Some(values),
            _ => None,
        }
    }
    fn has_issued(c: &Self::Coordinator, txn: TxnId) -> bool {
        c.has_issued(txn)
    }
    fn acceptor_remembers(a: &Self::Acceptor) -> u64 {
        a.transactions_remembered() as u64
    }
    fn in_flight(c: &Self::Coordinator) -> usize {
        c.in_flight()
    }
    fn seen(_: NodeId, msg: &Self::Msg) -> Seen {
        match msg {
            // Ballot 0 is the participants' own votes, relayed by an acceptor.
            paxos_commit::Msg::Phase2b { txn, ballot: 0, values } => Seen::Votes {
                txn: *txn,
                votes: values
                    .iter()
                    .map(|&(node, value)| {
                        let vote = match value {
                            paxos_commit::Value::Prepared => Vote::Yes,
                            paxos_commit::Value::Aborted => Vote::No,
                        };
                        (node, vote)
                    })
                    .collect(),
            },
            paxos_commit::Msg::OnePhaseResult { txn, decision } => {
                Seen::OnePhase { txn: *txn, decision: *decision }
            }
            paxos_commit::Msg::Ack { txn, .. } => Seen::Acknowledged { txn: *txn },
            _ => match paxos_commit::status_answer(msg) {
                Some((txn, answer)) => Seen::Answer { txn, answer },
                None => Seen::Nothing,
            },
        }
    }
    fn sent(msg: &Self::Msg) -> Sent {
        match *msg {
            paxos_commit::Msg::Prepare { txn, .. } => Sent::Prepare { txn },
            paxos_commit::Msg::CommitOnePhase { txn, .. } => Sent::OnePhase { txn },
            paxos_commit::Msg::Decision { txn, decision } => Sent::Decision { txn, decision },
            _ => Sent::Nothing,
        }
    }
    fn logged(_: &Self::Record) -> Logged {
        Logged::Nothing
    }
    fn status_inquiry(txn: TxnId) -> Self::Msg {
        paxos_commit::Msg::Inquire { txn, participants: Vec::new() }
    }
    fn may_send(msg: &Self::Msg, from: NodeId, from_role: Role, to_role: Role) -> bool {
        paxos_commit::may_send(msg, from, node_role(from_role), node_role(to_role))
    }
}
