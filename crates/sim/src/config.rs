//! What one simulated run is: the cluster, its network and disks, the workload, and the faults.

use concord_commit::{Branch, Switches};
use concord_types::{Decision, NodeId, Vote};

/// The coordinator is always node 0; participants are nodes `1..=participants`.
pub const COORDINATOR: NodeId = NodeId(0);

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub participants: u32,
    /// F, for protocols with acceptors (Paxos Commit runs 2F + 1 of them, after the participants).
    pub fault_tolerance: u32,
    /// Which nodes share a host: messages between them are local — not counted, not delayed,
    /// never lost.
    pub placement: Placement,
    pub switches: Switches,
    pub network: NetworkConfig,
    pub disk: DiskConfig,
    pub workload: Vec<TxnSpec>,
    /// Faults at fixed virtual times.
    pub faults: Vec<ScheduledFault>,
    /// Faults fired by what a node does (the first matching command of that node).
    pub triggers: Vec<Trigger>,
    /// When the faults stop: partitions heal, loss and duplication stop, every node restarts.
    pub heal_at_us: u64,
    /// After healing, every prepared participant must resolve within this long.
    pub liveness_bound_us: u64,
    /// A participant in doubt longer than this makes the run count as blocked.
    pub blocked_threshold_us: u64,
    /// Keep a trace for diagrams (slower; off in sweeps).
    pub record_trace: bool,
    /// Ask every participant for the status of transactions now and then (some while they
    /// run, each once after healing), as a client with an unknown outcome would, and check
    /// every verdict against what was applied (`invariants/status_honesty.rs`).
    pub status_probes: bool,
    /// Half the transactions reserve their id first and begin under it a moment later (as a
    /// client that must know its id before committing does), with status probes about some
    /// reserved ids before they begin.
    pub reservations: bool,
    /// Hard bound on events processed; a run that needs more is reported, not looped.
    pub max_events: u64,
    /// The chance that a participant's crash also loses its whole log, after which it restarts
    /// as an operator's `--accept-data-loss` would start it: presuming nothing about what it may
    /// have forgotten (`concord_commit::amnesia`), with the coordinator's horizon. Only for
    /// protocols whose participants can (`Protocol::RUNS_AFTER_DATA_LOSS`).
    pub log_loss: f64,
    /// The coordinator's log on this many machines (issue 21, `crate::replicated`): 1 is one
    /// machine's disk; 3 or 5 a replicated log whose majority commit makes a record durable, and
    /// a crashed coordinator is replaced by an elected replica, not by its own disk.
    pub coordinator_replicas: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Every node on a host of its own.
    Separate,
    /// Gray & Lamport's co-location: the coordinator on participant 1's host (the initiating
    /// participant's), acceptor `k` on participant `k`'s host.
    PaperColocated,
}

#[derive(Debug, Clone, Copy)]
pub struct NetworkConfig {
    /// One-way delay, uniform in `delay_min_us..=delay_max_us`: different delays reorder.
    pub delay_min_us: u64,
    pub delay_max_us: u64,
    pub drop_rate: f64,
    pub duplicate_rate: f64,
    /// Share of messages that take the long road: a delay uniform in
    /// `delay_max_us..=long_delay_max_us`, long enough to arrive after timeouts have fired.
    pub long_delay_rate: f64,
    pub long_delay_max_us: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct DiskConfig {
    /// Time for one fdatasync.
    pub fsync_us: u64,
    /// Group commit: one sync covers every record written before it starts. Off: one sync per
    /// forced record, one at a time.
    pub group_commit: bool,
    /// On a crash, keep a random prefix of the unsynced bytes (possibly cutting a record in
    /// half); off: lose them all.
    pub torn_writes: bool,
}

/// One client transaction: when it is submitted and what each branch writes.
#[derive(Debug, Clone)]
pub struct TxnSpec {
    pub at_us: u64,
    pub branches: Vec<Branch>,
}

#[derive(Debug, Clone)]
pub struct ScheduledFault {
    pub at_us: u64,
    pub action: FaultAction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    Crash(NodeId),
    Restart(NodeId),
    /// Split the cluster: these nodes on one side, everyone else on the other.
    Partition(Vec<NodeId>),
    HealPartition,
}

/// A fault fired by the first command of `node` that matches `on`.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub node: NodeId,
    /// Fires on the first command matching any of these.
    pub on: Vec<TriggerOn>,
    /// Crash before the command takes effect (it and the rest of the step are lost) or after.
    pub timing: TriggerTiming,
    pub action: TriggerAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerOn {
    /// The node writes a prepare record.
    PersistPrepared,
    /// The node writes a decision record.
    PersistDecision(Decision),
    /// The node sends a vote.
    SendVote(Vote),
    /// The node sends a decision message.
    SendDecision(Decision),
    /// The node sends PRECOMMIT (three-phase commit).
    SendPreCommit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerTiming {
    Before,
    After,
}

#[derive(Debug, Clone)]
pub enum TriggerAction {
    /// Crash the node; restart it this long afterwards.
    Crash { restart_after_us: u64 },
    /// Partition (these nodes against the rest); heal this long afterwards.
    Partition { side: Vec<NodeId>, heal_after_us: u64 },
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            delay_min_us: 500,
            delay_max_us: 1_500,
            drop_rate: 0.0,
            duplicate_rate: 0.0,
            long_delay_rate: 0.0,
            long_delay_max_us: 0,
        }
    }
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig { fsync_us: 200, group_commit: true, torn_writes: true }
    }
}

impl SimConfig {
    /// A fault-free cluster of `participants` with the given workload.
    pub fn new(seed: u64, participants: u32, workload: Vec<TxnSpec>) -> Self {
        let last_submit = workload.iter().map(|t| t.at_us).max().unwrap_or(0);
        SimConfig {
            seed,
            participants,
            fault_tolerance: 1,
            placement: Placement::Separate,
            switches: Switches::default(),
            network: NetworkConfig::default(),
            disk: DiskConfig::default(),
            workload,
            faults: Vec::new(),
            triggers: Vec::new(),
            heal_at_us: last_submit + 1,
            liveness_bound_us: 10_000_000,
            blocked_threshold_us: 200_000,
            record_trace: false,
            status_probes: false,
            reservations: false,
            max_events: 5_000_000,
            log_loss: 0.0,
            coordinator_replicas: 1,
        }
    }

    pub fn participant_ids(&self) -> impl Iterator<Item = NodeId> {
        (1..=self.participants).map(NodeId)
    }
}

impl SimConfig {
    /// The acceptor nodes a protocol with `count` acceptors gets: right after the participants.
    pub fn acceptor_ids(&self, count: u32) -> Vec<NodeId> {
        (0..count).map(|k| NodeId(self.participants + 1 + k)).collect()
    }

    /// The host a node runs on.
    pub fn host_of(&self, node: NodeId) -> u32 {
        match self.placement {
            Placement::Separate => node.0,
            Placement::PaperColocated if node == COORDINATOR => 1,
            Placement::PaperColocated if node.0 > self.participants => {
                let k = node.0 - self.participants; // acceptor k, from 1
                assert!(
                    k <= self.participants,
                    "co-location needs at least as many participants as acceptors"
                );
                k
            }
            Placement::PaperColocated => node.0,
        }
    }
}
