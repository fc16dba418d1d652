//! The coordinator's replicated log (issue 21): so that no single machine holds a commit
//! decision.
//!
//! Consensus is openraft's (a well-tested library), not ours: the protocol cores (2PC, Paxos
//! Commit) are the subject of this project, its consensus layer is not. This crate gives
//! openraft what it asks its user for, in Concord's terms:
//!
//! * **storage** (`store`): openraft's log, vote and snapshots as records in Concord's own
//!   durable log — checksummed frames, group commit, checkpoints, a manifest that refuses
//!   damage — so a replica's disk gets the same integrity checks as every other node's;
//! * **network** (`network`): openraft's RPCs in a small binary codec (`codec`, fuzzed and
//!   bounded) over a [`Wire`]: TCP between processes (`tcp`), an in-process router in tests;
//! * **the state machine** is the user's [`Machine`]: committed commands in log order, and a
//!   snapshot of what they built.
//!
//! A command is *durable* — what a protocol core's `Persisted` means — once [`Replica::write`]
//! returns: a majority of the replicas has it on disk. That is the only change the cores see.

pub mod codec;
pub mod network;
pub mod prometheus;
pub mod records;
pub mod store;
pub mod submit;
pub mod tcp;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Raft, ServerState, SnapshotPolicy};

pub use network::{Router, RouterWire, Wire};
pub use records::RecordLog;
pub use store::OpenStoreError;
pub use submit::{OnCommitted, Submitter};
pub use tcp::{Accept, Accepting, Connect, Connecting, Link, PlainTcp, TcpWire};

openraft::declare_raft_types!(
    /// openraft's types for Concord: commands are opaque bytes (a coordinator's encoded
    /// record), replicas are numbered, a snapshot is the machine's own bytes.
    pub TypeConfig:
        D = Vec<u8>,
        R = (),
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Vec<u8>,
);

/// What the replicated log drives: committed commands, in log order, on every replica.
pub trait Machine: Send + Sync + 'static {
    /// Applies a command committed at `index`. Called for every command in log order, on every
    /// replica (again after a restart, for commands after the last snapshot); the commands of
    /// one entry (a batch) share its index.
    fn apply(&mut self, index: u64, command: &[u8]);
    /// Everything applied so far, as bytes that [`Machine::restore`] takes back.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with a snapshot's (from this replica's disk, or the leader's).
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
}

/// How a replica is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Names the cluster: a data directory of another cluster is refused.
    pub cluster: String,
    pub id: u64,
    pub dir: PathBuf,
    /// Every voting replica, itself included: id → address.
    pub members: BTreeMap<u64, String>,
    /// A leader tells its followers it lives this often.
    pub heartbeat: Duration,
    /// A follower that hears nothing for a random time in this range stands for election.
    pub election_timeout: (Duration, Duration),
    /// A snapshot is taken after this many entries, and older entries are dropped.
    pub snapshot_every: u64,
    /// On an empty directory, propose `members` as the cluster's first configuration: every
    /// replica of a new cluster does. A replica joining a running cluster (a new one, or one
    /// whose directory was lost and wiped) must not: it waits, voting for no one, until the
    /// leader adds it ([`Replica::add_voter`]). A replica that came back with an empty
    /// directory and voted at once could vote twice in a term it already voted in.
    pub bootstrap: bool,
}

impl Options {
    /// Timing for replicas on one network: a lost leader is replaced in well under a second.
    pub fn new(
        cluster: impl Into<String>,
        id: u64,
        dir: impl Into<PathBuf>,
        members: BTreeMap<u64, String>,
    ) -> Self {
        Options {
            cluster: cluster.into(),
            id,
            dir: dir.into(),
            members,
            heartbeat: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(150), Duration::from_millis(300)),
            snapshot_every: 10_000,
            bootstrap: true,
        }
    }
}

/// Why a replica did not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is wrong: which replica, and why.
    Config(String),
    Store(OpenStoreError),
    Raft(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(why) => write!(f, "{why}"),
            StartError::Store(e) => write!(f, "{e}"),
            StartError::Raft(e) => write!(f, "replication: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Why a write was not made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// This replica is not the leader; the leader it knows of, if any (id, address). The write
    /// was not made: the caller goes there.
    NotLeader(Option<(u64, String)>),
    /// The replica is stopping or its disk failed; whether the write will be committed is not
    /// known (a new leader may commit it). The caller must treat it as in doubt.
    Unknown(String),
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::NotLeader(Some((id, addr))) => {
                write!(f, "not the leader: replica {id} at {addr} is")
            }
            WriteError::NotLeader(None) => write!(f, "not the leader, and no leader is known"),
            WriteError::Unknown(why) => write!(f, "outcome unknown: {why}"),
        }
    }
}

impl std::error::Error for WriteError {}

/// Why a change of the configuration was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipError {
    /// Only the leader changes the configuration; the leader this replica knows of.
    NotLeader(Option<(u64, String)>),
    /// The change cannot be made (another change is under way, the replica is unknown...).
    Refused(String),
}

impl MembershipError {
    fn from_raft(error: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Self {
        match error {
            RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
                MembershipError::NotLeader(
                    forward.leader_id.zip(forward.leader_node.map(|node| node.addr)),
                )
            }
            other => MembershipError::Refused(other.to_string()),
        }
    }
}

impl fmt::Display for MembershipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MembershipError::NotLeader(Some((id, addr))) => {
                write!(f, "not the leader: replica {id} at {addr} is")
            }
            MembershipError::NotLeader(None) => write!(f, "not the leader, and no leader is known"),
            MembershipError::Refused(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for MembershipError {}

/// Who leads, as one replica sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub id: u64,
    pub term: u64,
    pub leader: Option<u64>,
    pub is_leader: bool,
    /// The last index this replica has in its log, and the last it has applied.
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// On the leader: each replica's matched index (how far its log agrees with the leader's).
    pub matched: BTreeMap<u64, Option<u64>>,
}

/// Upper bounds (seconds) of the commit-latency histogram's buckets.
pub const COMMIT_BUCKETS_S: [f64; 12] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// How long entries took from submission to commit (a majority on disk), on this replica
/// while it led: per bucket of [`COMMIT_BUCKETS_S`] (not cumulative), then the overflow.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommitLatency {
    pub buckets: [u64; COMMIT_BUCKETS_S.len() + 1],
    pub sum_s: f64,
    pub count: u64,
}

impl CommitLatency {
    pub(crate) fn record(&mut self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket =
            COMMIT_BUCKETS_S.iter().position(|&le| seconds <= le).unwrap_or(COMMIT_BUCKETS_S.len());
        self.buckets[bucket] += 1;
        self.sum_s += seconds;
        self.count += 1;
    }
}

/// What a replica tells its operator: [`Status`], how often the leader changed as it saw it,
/// and how long commits took.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub status: Status,
    pub leader_changes: u64,
    pub commit_latency: CommitLatency,
    /// On the leader: how long ago a majority last acknowledged it (its last contact with a
    /// quorum).
    pub quorum_ack_ms: Option<u64>,
    /// Milliseconds since each other replica last answered this one (absent: never). On the
    /// leader every replica is called each heartbeat, so this is each one's last contact; on
    /// a follower it says only when it last asked for votes.
    pub last_contact_ms: BTreeMap<u64, u64>,
}

/// What a leadership watcher decides on (the node's and the database coordinator's): whether
/// openraft says this replica leads, in which term, and whether a majority acknowledged it
/// within the lease. A leader cut off from the others cannot commit, but until it hears a
/// higher term it still calls itself leader: only both together put it in charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub leads: bool,
    pub term: u64,
    pub majority_heard: bool,
}

impl Charge {
    /// From openraft's metrics; `lease_ms` is the longest election timeout.
    pub fn of(metrics: &openraft::RaftMetrics<u64, BasicNode>, lease_ms: u64) -> Charge {
        Charge {
            leads: metrics.state.is_leader(),
            term: metrics.current_term,
            majority_heard: metrics.millis_since_quorum_ack.is_none_or(|ms| ms <= lease_ms),
        }
    }

    pub fn in_charge(&self) -> bool {
        self.leads && self.majority_heard
    }
}

/// One replica of the replicated log, running.
pub struct Replica<M> {
    raft: Raft<TypeConfig>,
    machine: Arc<Mutex<M>>,
    id: u64,
    released: store::Released,
    latency: Arc<Mutex<CommitLatency>>,
    leader_changes: Arc<std::sync::atomic::AtomicU64>,
    contacts: network::Contacts,
}

impl<M> fmt::Debug for Replica<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replica").field("id", &self.id).finish_non_exhaustive()
    }
}

/// An odd number of voters, at least one, this replica among them, no address twice.
pub fn check_members(id: u64, members: &BTreeMap<u64, String>) -> Result<(), String> {
    if members.is_empty() || members.len().is_multiple_of(2) {
        return Err(format!(
            "{} coordinator replicas configured: there must be an odd number (1, 3 or 5), or a \
             split vote could leave no majority",
            members.len()
        ));
    }
    if !members.contains_key(&id) {
        let known: Vec<String> = members.keys().map(u64::to_string).collect();
        return Err(format!(
            "replica {id} is not in the configuration (its replicas are {})",
            known.join(", ")
        ));
    }
    let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
    for (member, addr) in members {
        if let Some(other) = seen.insert(addr, *member) {
            return Err(format!("replicas {other} and {member} both claim address {addr}"));
        }
    }
    Ok(())
}

impl<M: Machine> Replica<M> {
    /// Opens the replica's directory (refusing one of another replica or cluster), starts its
    /// Raft, and on a new directory proposes the configured membership (every replica does the
    /// same on its first start; openraft takes the same proposal from several).
    pub async fn start<W: Wire>(options: Options, machine: M, wire: W) -> Result<Self, StartError> {
        check_members(options.id, &options.members).map_err(StartError::Config)?;
        // An empty directory about to propose a new cluster: unless a leader remembers this
        // replica's log (then it was lost), refused before anything is written.
        let empty = std::fs::read_dir(&options.dir).map_or(true, |mut d| d.next().is_none());
        if options.bootstrap && empty {
            let ask = options.election_timeout.0;
            if let Some((leader, term, matched)) =
                network::lost_log(&wire, options.id, &options.members, ask).await
            {
                return Err(StartError::Config(format!(
                    "replica {} starts on an empty directory ({}), but replica {leader}, leading \
                     in term {term}, has entries up to {matched} on this replica's log: its log \
                     and its vote were lost. Started as new it could vote twice in one term. \
                     Replace it instead: take it out of the configuration at the leader, start \
                     it joining (it then votes for no one), and add it back",
                    options.id,
                    options.dir.display()
                )));
            }
        }
        let (log, state_machine) = store::open(&options.dir, &options.cluster, options.id, machine)
            .map_err(StartError::Store)?;
        let machine = state_machine.machine();
        let released = log.released();
        let config = openraft::Config {
            cluster_name: options.cluster.clone(),
            heartbeat_interval: millis(options.heartbeat),
            election_timeout_min: millis(options.election_timeout.0),
            election_timeout_max: millis(options.election_timeout.1),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(options.snapshot_every),
            max_in_snapshot_log_to_keep: 1_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let contacts = network::Contacts::default();
        let network =
            network::Network { wire, retry_after: options.heartbeat, contacts: contacts.clone() };
        let raft = Raft::new(options.id, Arc::new(config), network, log, state_machine)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let members: BTreeMap<u64, BasicNode> = options
            .members
            .iter()
            .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
            .collect();
        if options.bootstrap {
            match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(StartError::Raft(e.to_string())),
            }
        }
        // Counts leader changes as this replica sees them; ends when the Raft stops.
        let leader_changes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (mut metrics, changes) = (raft.metrics(), Arc::clone(&leader_changes));
        tokio::spawn(async move {
            let mut leader = metrics.borrow().current_leader;
            while metrics.changed().await.is_ok() {
                let now = metrics.borrow().current_leader;
                if now.is_some() && now != leader {
                    changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                leader = now;
            }
        });
        let latency = Arc::default();
        Ok(Replica { raft, machine, id: options.id, released, latency, leader_changes, contacts })
    }

    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    pub fn machine(&self) -> Arc<Mutex<M>> {
        Arc::clone(&self.machine)
    }

    /// Appends `command`; returns its index once a majority has it on disk and it is applied
    /// here. Only the leader takes writes.
    pub async fn write(&self, command: Vec<u8>) -> Result<u64, WriteError> {
        match self.raft.client_write(codec::encode_batch(&[command])).await {
            Ok(response) => Ok(response.log_id.index),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(WriteError::NotLeader(
                    forward.leader_id.zip(forward.leader_node.map(|node| node.addr)),
                ))
            }
            Err(e) => Err(WriteError::Unknown(e.to_string())),
        }
    }

    /// Makes replica `id` (at `addr`) a voter, on the leader: first a learner, replicated to
    /// until it has caught up (by snapshot if the entries it needs were purged), then a member
    /// of the configuration (openraft's joint consensus). Returns once the new configuration
    /// is committed.
    pub async fn add_voter(&self, id: u64, addr: String) -> Result<(), MembershipError> {
        self.raft
            .add_learner(id, BasicNode { addr }, true)
            .await
            .map_err(MembershipError::from_raft)?;
        let mut voters = self.voters();
        voters.insert(id);
        self.raft.change_membership(voters, false).await.map_err(MembershipError::from_raft)?;
        Ok(())
    }

    /// Takes replica `id` out of the configuration, on the leader: it is no longer replicated
    /// to and its vote no longer counts. Refused if it would leave no voter.
    pub async fn remove_voter(&self, id: u64) -> Result<(), MembershipError> {
        let mut voters = self.voters();
        if !voters.remove(&id) {
            return Err(MembershipError::Refused(format!("replica {id} is not a voter")));
        }
        if voters.is_empty() {
            return Err(MembershipError::Refused(format!("replica {id} is the last voter")));
        }
        self.raft.change_membership(voters, false).await.map_err(MembershipError::from_raft)?;
        Ok(())
    }

    /// Whether this replica, leading, has committed and applied every entry its log held when
    /// it began to lead; false as soon as it stops leading. What a protocol core recovering
    /// from the machine must wait for.
    ///
    /// The committed prefix is not enough: a leader restarted within its term (openraft
    /// resumes a term whose vote was committed) or elected with entries no majority had yet
    /// holds records of the previous core — a COMMIT decision, say — that commit only later,
    /// behind what it reads now. A core started before them would presume abort for that
    /// transaction, and a later leader, finding the COMMIT, would re-drive it: a split. (The
    /// simulator's model has the same rule: a new leader's core starts only once its whole log
    /// is committed.)
    pub async fn whole_log_applied(&self) -> bool {
        if self.raft.ensure_linearizable().await.is_err() {
            return false;
        }
        let mut metrics = self.raft.metrics();
        let target = metrics.borrow().last_log_index;
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.state != ServerState::Leader {
                    return false;
                }
                if m.last_applied.map(|applied| applied.index) >= target {
                    return true;
                }
            }
            if metrics.changed().await.is_err() {
                return false;
            }
        }
    }

    /// A queue that appends commands in the order they are given, without waiting for them.
    pub fn submitter(&self) -> Submitter {
        Submitter::start(self.raft.clone(), Arc::clone(&self.latency))
    }

    /// Answers a peer's request (bytes from the wire).
    pub async fn serve(&self, request: &[u8]) -> Vec<u8> {
        network::serve(&self.raft, request).await
    }

    pub fn status(&self) -> Status {
        let metrics = self.raft.metrics().borrow().clone();
        let matched = metrics
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, log_id)| (*id, log_id.map(|l| l.index))).collect())
            .unwrap_or_default();
        Status {
            id: self.id,
            term: metrics.current_term,
            leader: metrics.current_leader,
            is_leader: metrics.state == ServerState::Leader,
            last_log_index: metrics.last_log_index,
            applied_index: metrics.last_applied.map(|l| l.index),
            matched,
        }
    }

    /// Stands for election now: this replica wins if its log is as complete as a majority's
    /// and the others' leader leases have run out (openraft refuses votes while a replica has
    /// heard its leader within the lease: see [`Replica::hold_back`]). Refused at the leader,
    /// which would only disturb itself.
    pub async fn stand_for_leader(&self) -> Result<(), String> {
        if self.status().is_leader {
            return Err(format!("replica {} already leads", self.id));
        }
        self.raft.trigger().elect().await.map_err(|e| e.to_string())
    }

    /// For `hold` (bounded by the caller), this replica neither stands for election nor, if
    /// it leads, sends heartbeats: the other replicas' leader leases run out and one chosen
    /// replica can win the election it stands for. openraft 0.9 has no leadership transfer;
    /// this is one made of its runtime switches. Afterwards both switches are on again.
    pub fn hold_back(&self, hold: Duration) {
        self.raft.runtime_config().elect(false);
        self.raft.runtime_config().heartbeat(false);
        let raft = self.raft.clone();
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            raft.runtime_config().heartbeat(true);
            raft.runtime_config().elect(true);
        });
    }

    /// [`Status`] and the counters an operator watches.
    pub fn stats(&self) -> Stats {
        let quorum_ack_ms = self.raft.metrics().borrow().millis_since_quorum_ack;
        Stats {
            status: self.status(),
            leader_changes: self.leader_changes.load(std::sync::atomic::Ordering::Relaxed),
            commit_latency: self.latency.lock().expect("not poisoned").clone(),
            quorum_ack_ms,
            last_contact_ms: self.contacts.millis_since(),
        }
    }

    /// The voting replicas in the committed configuration.
    pub fn voters(&self) -> BTreeSet<u64> {
        self.raft.metrics().borrow().membership_config.membership().voter_ids().collect()
    }

    /// Stops the replica: nothing more is answered, what was written is on disk, and the
    /// directory is let go (waited for, at most five seconds).
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
        for _ in 0..500 {
            if self.released.is_released() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
