//! The commit protocol under the simulated KV store: 2PC (the default) or Paxos Commit. Both
//! are the real cores, carrying `KvChange` branches to `MvccShard` resources.

use std::fmt::Debug;

use concord_commit::{paxos_commit, two_phase, Command, Core, NodeRole, ResourceParticipant};
use concord_kv::{KvChange, KvSnapshot, MvccShard};
use concord_types::NodeId;

pub(super) type Out<P> =
    Vec<Command<<P as KvProtocol>::Msg, <P as KvProtocol>::Record, <P as KvProtocol>::Timer>>;

pub trait KvProtocol: Sized + 'static {
    const NAME: &'static str;
    type Msg: Clone + Debug;
    type Record: Clone + Debug + concord_types::codec::Encode;
    type Timer: Clone + Debug;
    type Coordinator: Core<Msg = Self::Msg, Record = Self::Record, Timer = Self::Timer, Change = KvChange>
        + Debug;
    type Participant: ResourceParticipant<
            Resource = MvccShard,
            Msg = Self::Msg,
            Record = Self::Record,
            Timer = Self::Timer,
            Change = KvChange,
        > + Debug;
    type Acceptor: Core<Msg = Self::Msg, Record = Self::Record, Timer = Self::Timer, Change = KvChange>
        + Debug;

    /// How many acceptor nodes it runs (after the shards in node-id order).
    fn acceptor_count() -> usize;
    fn coordinator(id: NodeId, acceptors: &[NodeId]) -> Self::Coordinator;
    fn participant(id: NodeId, acceptors: &[NodeId], shard: MvccShard) -> Self::Participant;
    fn acceptor(id: NodeId, acceptors: &[NodeId]) -> Self::Acceptor;
    /// The runtime's rule for who sends what (`concord_commit::Protocol::may_send`).
    fn may_send(msg: &Self::Msg, from: NodeId, from_role: NodeRole, to_role: NodeRole) -> bool;
}

fn two_phase_config() -> two_phase::Config {
    two_phase::Config {
        vote_timeout_us: 50_000,
        resend_base_us: 10_000,
        inquiry_base_us: 20_000,
        ..two_phase::Config::default()
    }
}

/// Two-phase commit with presumed abort.
#[derive(Debug)]
pub struct TwoPc;

impl KvProtocol for TwoPc {
    const NAME: &'static str = "2pc";
    type Msg = two_phase::Msg<KvChange>;
    type Record = two_phase::Record<KvChange, KvSnapshot>;
    type Timer = two_phase::Timer;
    type Coordinator = two_phase::Coordinator<KvChange, KvSnapshot>;
    type Participant = two_phase::Participant<MvccShard>;
    type Acceptor = concord_commit::NoRole<Self::Msg, Self::Record, Self::Timer, KvChange>;

    fn may_send(msg: &Self::Msg, from: NodeId, from_role: NodeRole, to_role: NodeRole) -> bool {
        two_phase::may_send(msg, from, from_role, to_role)
    }

    fn acceptor_count() -> usize {
        0
    }
    fn coordinator(id: NodeId, _: &[NodeId]) -> Self::Coordinator {
        two_phase::Coordinator::new(id, two_phase_config())
    }
    fn participant(id: NodeId, _: &[NodeId], shard: MvccShard) -> Self::Participant {
        two_phase::Participant::with_resource(id, two_phase_config(), shard)
    }
    fn acceptor(_: NodeId, _: &[NodeId]) -> Self::Acceptor {
        unreachable!("2PC has no acceptors")
    }
}

/// Paxos Commit with three acceptors (F = 1).
#[derive(Debug)]
pub struct PaxosCommit;

fn paxos_config(acceptors: &[NodeId]) -> paxos_commit::Config {
    paxos_commit::Config::new(acceptors.to_vec())
}

impl KvProtocol for PaxosCommit {
    const NAME: &'static str = "paxos-commit";
    type Msg = paxos_commit::Msg<KvChange>;
    type Record = paxos_commit::Record<KvChange, KvSnapshot>;
    type Timer = paxos_commit::Timer;
    type Coordinator = paxos_commit::Coordinator<KvChange, KvSnapshot>;
    type Participant = paxos_commit::Participant<MvccShard>;
    type Acceptor = paxos_commit::Acceptor<KvChange, KvSnapshot>;

    fn may_send(msg: &Self::Msg, from: NodeId, from_role: NodeRole, to_role: NodeRole) -> bool {
        paxos_commit::may_send(msg, from, from_role, to_role)
    }

    fn acceptor_count() -> usize {
        3
    }
    fn coordinator(id: NodeId, acceptors: &[NodeId]) -> Self::Coordinator {
        paxos_commit::Coordinator::new(id, paxos_config(acceptors))
    }
    fn participant(id: NodeId, acceptors: &[NodeId], shard: MvccShard) -> Self::Participant {
        paxos_commit::Participant::with_resource(id, paxos_config(acceptors), shard)
    }
    fn acceptor(id: NodeId, acceptors: &[NodeId]) -> Self::Acceptor {
        paxos_commit::Acceptor::new(id, paxos_config(acceptors))
    }
}
