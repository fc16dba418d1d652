//! The simulation engine: one thread, a virtual clock, a seeded PRNG, and an event queue.
//!
//! ```text
//!   event queue (time, seq) ──► dispatch ──► core.handle(input) ──► commands
//!        ▲                                                           │
//!        ├── Deliver  ◄── network: delay, loss, duplication, partition ◄── Send
//!        ├── SyncDone ◄── disk: group commit, fsync time               ◄── Persist
//!        ├── Timer    ◄────────────────────────────────────────────────── SetTimer
//!        └── Submit / Fault / Heal ◄── workload and fault schedule
//! ```
//!
//! Every random choice comes from one [`Rng`] in a fixed order, and ties in time are broken by
//! insertion order, so a seed determines the run: the trace hash proves it.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};

use concord_commit::status::StatusQuery;
use concord_commit::{
    Command, Core, Durability, Input, MessageKind, ParticipantView, Protocol, RecordKind, Topology,
};
use concord_types::{Decision, NodeId, RequestId, TxnId};

use crate::config::{
    FaultAction, SimConfig, Trigger, TriggerAction, TriggerOn, TriggerTiming, COORDINATOR,
};
use crate::disk::Disk;
use crate::hash::Fnv1a;
use crate::invariants::{self, log_before_send, DecisionSource, History, ParticipantEnd};
use crate::replicated::{CatchUp, Committed, ReplicatedLog};
use crate::report::{InDoubt, RunReport};
use crate::rng::Rng;
use crate::trace::{TraceEntry, TraceEvent};

type In<P> = Input<<P as Protocol>::Msg, <P as Protocol>::Record, <P as Protocol>::Timer>;
type Cmd<P> = Command<<P as Protocol>::Msg, <P as Protocol>::Record, <P as Protocol>::Timer>;

enum Event<P: Protocol> {
    Submit {
        index: usize,
    },
    /// `depth`: message delays on the longest causal chain that led to this message.
    Deliver {
        id: u64,
        from: NodeId,
        to: NodeId,
        msg: P::Msg,
        depth: u32,
    },
    Timer {
        node: NodeId,
        incarnation: u32,
        timer: P::Timer,
        depth: u32,
    },
    SyncDone {
        node: NodeId,
        incarnation: u32,
    },
    Fault(FaultAction),
    Heal,
    /// A client asks for `txn`'s status: node 0 asks every participant.
    StatusProbe {
        txn: TxnId,
    },
    /// A client runs workload transaction `index` under the id reserved for it.
    BeginReserved {
        index: usize,
        txn: TxnId,
    },
    /// A replica of the coordinator's log (in life `life` of its machine) has its first `upto`
    /// entries on disk, and its acknowledgement reached the leader (`id`: the entry at
    /// `upto - 1` then).
    ReplicaAck {
        replica: usize,
        life: u32,
        upto: usize,
        id: u64,
    },
}

struct Scheduled<P: Protocol> {
    at: u64,
    seq: u64,
    event: Event<P>,
}

impl<P: Protocol> PartialEq for Scheduled<P> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<P: Protocol> Eq for Scheduled<P> {}
impl<P: Protocol> PartialOrd for Scheduled<P> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<P: Protocol> Ord for Scheduled<P> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

enum Role<P: Protocol> {
    Coordinator(P::Coordinator),
    Participant(P::Participant),
    Acceptor(P::Acceptor),
}

struct Node<P: Protocol> {
    id: NodeId,
    core: Option<Role<P>>,
    /// Bumped at every crash: timers and syncs of an earlier life are ignored.
    incarnation: u32,
    disk: Disk<P::Record>,
}

/// One simulated run of protocol `P`.
pub struct Simulation<P: Protocol> {
    config: SimConfig,
    protocol_config: P::Config,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled<P>>>,
    nodes: Vec<Node<P>>,
    /// Side of each node while partitioned.
    partition: Option<Vec<bool>>,
    faults_active: bool,
    drop_rate: f64,
    duplicate_rate: f64,
    triggers: Vec<(Trigger, bool)>,
    history: History,
    /// The newest transaction id the coordinator has issued (begun or reserved: a status query
    /// may have reached a participant about a reserved one): one past it is the horizon a
    /// participant that lost its log learns, as the runtime's `Reserve` gives it.
    max_issued: Option<TxnId>,
    /// Per node, the amnesia it carries after a lost log (as `DATA-LOSS-ACCEPTED` does): set at
    /// every boot from then on.
    amnesia: Vec<Option<concord_commit::amnesia::Amnesia>>,
    submitted_at: HashMap<RequestId, u64>,
    txn_submitted_at: HashMap<TxnId, u64>,
    /// Status queries waiting for answers, one per transaction at a time.
    probes: HashMap<TxnId, StatusQuery>,
    report: RunReport,
    /// The coordinator's log when it is replicated (`SimConfig::coordinator_replicas` > 1);
    /// `None`: node 0's own disk.
    replicated: Option<ReplicatedLog<P::Record>>,
    /// A newly elected leader's log, waiting to be committed before its core starts from it.
    leader_waiting: Option<Vec<P::Record>>,
    next_message_id: u64,
    hasher: Fnv1a,
    trace: Option<Vec<TraceEntry>>,
}

impl<P: Protocol> std::fmt::Debug for Simulation<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulation").field("protocol", &P::NAME).field("now", &self.now).finish()
    }
}

impl<P: Protocol> Simulation<P> {
    pub fn new(config: SimConfig) -> Self {
        let acceptors = config.acceptor_ids(P::acceptor_count(config.fault_tolerance));
        let topology =
            Topology { acceptors: acceptors.clone(), fault_tolerance: config.fault_tolerance };
        let protocol_config = P::config(config.switches, &topology);
        let last_node =
            config.participants + u32::try_from(acceptors.len()).expect("few acceptors");
        let nodes = (0..=last_node)
            .map(|i| Node { id: NodeId(i), core: None, incarnation: 0, disk: Disk::default() })
            .collect();
        let report = RunReport {
            seed: config.seed,
            protocol: P::NAME,
            participants: config.participants,
            nodes: last_node + 1,
            ..RunReport::default()
        };
        Simulation {
            rng: Rng::new(config.seed),
            protocol_config,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            partition: None,
            faults_active: true,
            drop_rate: config.network.drop_rate,
            duplicate_rate: config.network.duplicate_rate,
            triggers: config.triggers.iter().cloned().map(|t| (t, false)).collect(),
            history: History::default(),
            max_issued: None,
            amnesia: vec![None; usize::try_from(last_node + 1).expect("few nodes")],
            submitted_at: HashMap::new(),
            txn_submitted_at: HashMap::new(),
            probes: HashMap::new(),
            report,
            replicated: (config.coordinator_replicas > 1)
                .then(|| ReplicatedLog::new(config.coordinator_replicas as usize)),
            leader_waiting: None,
            next_message_id: 0,
            hasher: Fnv1a::default(),
            trace: config.record_trace.then(Vec::new),
            config,
        }
    }

    fn schedule(&mut self, at: u64, event: Event<P>) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled { at, seq: self.seq, event }));
    }

    fn trace(&mut self, event: impl FnOnce() -> TraceEvent) {
        if let Some(trace) = self.trace.as_mut() {
            trace.push(TraceEntry { at_us: self.now, event: event() });
        }
    }

    /// Runs to the end and checks every property.
    pub fn run(mut self) -> RunReport {
        for i in 0..self.nodes.len() {
            self.boot(i, Vec::new());
        }
        for index in 0..self.config.workload.len() {
            self.schedule(self.config.workload[index].at_us, Event::Submit { index });
        }
        for fault in self.config.faults.clone() {
            self.schedule(fault.at_us, Event::Fault(fault.action));
        }
        self.schedule(self.config.heal_at_us, Event::Heal);
        let deadline = self.config.heal_at_us.saturating_add(self.config.liveness_bound_us);
        while let Some(Reverse(next)) = self.queue.pop() {
            if next.at > deadline {
                break;
            }
            if self.report.events >= self.config.max_events {
                let detail = format!("event budget of {} exhausted", self.config.max_events);
                self.history.violate("event-budget", self.now, detail);
                break;
            }
            self.report.events += 1;
            self.now = next.at;
            self.dispatch(next.event);
        }
        self.finish()
    }

    fn dispatch(&mut self, event: Event<P>) {
        self.now.hash(&mut self.hasher);
        match event {
            Event::Submit { index } => {
                0u8.hash(&mut self.hasher);
                index.hash(&mut self.hasher);
                self.submit(index);
            }
            Event::Deliver { id, from, to, msg, depth } => {
                1u8.hash(&mut self.hasher);
                (from, to).hash(&mut self.hasher);
                msg.hash(&mut self.hasher);
                self.deliver(id, from, to, msg, depth);
            }
            Event::Timer { node, incarnation, timer, depth } => {
                let n = &self.nodes[node.0 as usize];
                if n.incarnation == incarnation && n.core.is_some() {
                    2u8.hash(&mut self.hasher);
                    (node, &timer).hash(&mut self.hasher);
                    self.trace(|| TraceEvent::TimerFired { node, label: timer.to_string() });
                    self.input(node, Input::Timer(timer), depth);
                }
            }
            Event::SyncDone { node, incarnation } => {
                if self.nodes[node.0 as usize].incarnation == incarnation {
                    3u8.hash(&mut self.hasher);
                    node.hash(&mut self.hasher);
                    self.sync_done(node);
                }
            }
            Event::Fault(action) => {
                4u8.hash(&mut self.hasher);
                self.fault(&action);
            }
            Event::Heal => {
                5u8.hash(&mut self.hasher);
                self.heal();
            }
            Event::StatusProbe { txn } => {
                6u8.hash(&mut self.hasher);
                txn.hash(&mut self.hasher);
                self.probe(txn);
            }
            Event::BeginReserved { index, txn } => {
                7u8.hash(&mut self.hasher);
                (index, txn).hash(&mut self.hasher);
                if self.nodes[COORDINATOR.0 as usize].core.is_some() {
                    let request = RequestId(index as u64);
                    let branches = self.config.workload[index].branches.clone();
                    let begin = concord_commit::Reservation::Begin { request, txn, branches };
                    self.input(COORDINATOR, Input::Reservation(begin), 0);
                } else {
                    self.report.txns_not_started += 1;
                }
            }
            Event::ReplicaAck { replica, life, upto, id } => {
                8u8.hash(&mut self.hasher);
                (replica, life, upto, id).hash(&mut self.hasher);
                self.replica_ack(replica, life, upto, id);
            }
        }
    }

    fn submit(&mut self, index: usize) {
        self.report.txns_submitted += 1;
        let request = RequestId(index as u64);
        let accepted = self.nodes[COORDINATOR.0 as usize].core.is_some();
        self.trace(|| TraceEvent::Submit { request: request.0, accepted });
        if !accepted {
            self.report.txns_not_started += 1;
            return;
        }
        self.submitted_at.insert(request, self.now);
        if self.config.reservations && self.rng.chance(0.5) {
            let reserve = concord_commit::Reservation::Reserve { request };
            self.input(COORDINATOR, Input::Reservation(reserve), 0);
            return;
        }
        let branches = self.config.workload[index].branches.clone();
        self.input(COORDINATOR, Input::Begin { request, branches }, 0);
    }

    fn partitioned(&self, a: NodeId, b: NodeId) -> bool {
        self.partition.as_ref().is_some_and(|side| side[a.0 as usize] != side[b.0 as usize])
    }

    fn local(&self, a: NodeId, b: NodeId) -> bool {
        self.config.host_of(a) == self.config.host_of(b)
    }

    fn deliver(&mut self, id: u64, from: NodeId, to: NodeId, msg: P::Msg, depth: u32) {
        let reason = if self.partitioned(from, to) && !self.local(from, to) {
            Some("partition")
        } else if self.nodes[to.0 as usize].core.is_none() {
            Some("down")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.report.messages_lost += 1;
            self.trace(|| TraceEvent::lost(id, from, to, &msg, reason));
            return;
        }
        self.trace(|| TraceEvent::deliver(id, from, to, &msg));
        if to == COORDINATOR {
            self.status_answer(from, &msg);
        }
        self.input(to, Input::Message { from, msg }, depth);
    }

    /// Node 0 asks every participant about `txn` (the runtime's status query, on behalf of a
    /// client), unless a query for it is already waiting or node 0 is down.
    fn probe(&mut self, txn: TxnId) {
        if self.probes.contains_key(&txn) || self.nodes[COORDINATOR.0 as usize].core.is_none() {
            return;
        }
        let Some(inquiry) = P::status_inquiry(txn) else { return };
        let asked: Vec<NodeId> = self.config.participant_ids().collect();
        self.probes.insert(txn, StatusQuery::new(asked.iter().copied()));
        self.report.status_probes += 1;
        for to in asked {
            self.send(COORDINATOR, to, inquiry.clone(), 0);
        }
    }

    /// A message reaching node 0 that answers a waiting status query.
    fn status_answer(&mut self, from: NodeId, msg: &P::Msg) {
        let Some((txn, answer)) = P::status_answer(msg) else { return };
        let Some(query) = self.probes.get_mut(&txn) else { return };
        if let Some(verdict) = query.answer(from, answer) {
            self.probes.remove(&txn);
            self.trace(|| TraceEvent::Status { txn, verdict });
            self.history.status_told(txn, verdict, self.now);
        }
    }

    /// A node's role: node 0 coordinates, the participants follow, then the acceptors.
    fn role_of(&self, node: NodeId) -> concord_commit::NodeRole {
        match node {
            COORDINATOR => concord_commit::NodeRole::Coordinator,
            NodeId(i) if i <= self.config.participants => concord_commit::NodeRole::Participant,
            _ => concord_commit::NodeRole::Acceptor,
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: P::Msg, cause_depth: u32) {
        // The runtime refuses a peer's message the sender's role never sends; a core sending
        // one would be cut off by its own cluster.
        let (from_role, to_role) = (self.role_of(from), self.role_of(to));
        assert!(
            P::may_send(&msg, from, from_role, to_role),
            "{from} ({from_role:?}) sent {msg} to {to} ({to_role:?}), which the runtime refuses"
        );
        let kind = P::message_kind(&msg);
        let logs = P::COORDINATOR_LOGS_DECISION;
        log_before_send::on_send(&mut self.history, from, kind, logs, self.now);
        let local = self.local(from, to);
        if !local {
            // Housekeeping (2PC's FORGET) is counted apart: it is on no transaction's path,
            // and its number depends on the order transactions finish in.
            if kind == MessageKind::Housekeeping {
                self.report.housekeeping_sent += 1;
            } else {
                self.report.messages_sent += 1;
            }
            if !matches!(kind, MessageKind::Ack { .. } | MessageKind::Housekeeping) {
                self.report.messages_excluding_acks += 1;
            }
        }
        match kind {
            MessageKind::Vote { txn, vote } => {
                if vote == concord_types::Vote::Yes {
                    self.history.yes_at.entry((from, txn)).or_insert(self.now);
                }
                // A read-only voter forgets the transaction; if a status query then makes it
                // refuse (forcing ABORTED), a duplicate PREPARE meets that refusal. Its first
                // vote is the one the outcome rests on.
                if vote == concord_types::Vote::No
                    && !self.history.read_only_votes.contains(&(from, txn))
                {
                    self.history.no_votes.insert(txn);
                }
                if vote == concord_types::Vote::ReadOnly {
                    self.history.read_only_votes.insert((from, txn));
                }
            }
            MessageKind::PreCommit { .. }
            | MessageKind::Decision { .. }
            | MessageKind::Ack { .. }
            | MessageKind::Housekeeping
            | MessageKind::Other => {}
        }
        self.next_message_id += 1;
        let id = self.next_message_id;
        self.trace(|| TraceEvent::send(id, from, to, &msg));
        if local {
            // Same host: no network, no delay, no loss; and no message delay in the depth.
            let depth = cause_depth;
            self.schedule(self.now, Event::Deliver { id, from, to, msg, depth });
            return;
        }
        let depth = cause_depth + 1;
        let dropped = self.rng.chance(self.drop_rate);
        if self.partitioned(from, to) || dropped {
            self.report.messages_lost += 1;
            let reason = if dropped { "drop" } else { "partition" };
            self.trace(|| TraceEvent::lost(id, from, to, &msg, reason));
            return;
        }
        let delay = self.delay();
        if self.rng.chance(self.duplicate_rate) {
            self.report.messages_duplicated += 1;
            let again = self.delay();
            let event = Event::Deliver { id, from, to, msg: msg.clone(), depth };
            self.schedule(self.now + again, event);
        }
        self.schedule(self.now + delay, Event::Deliver { id, from, to, msg, depth });
    }

    /// One message's delay: usually short, now and then (after healing, never) very long.
    fn delay(&mut self) -> u64 {
        let net = self.config.network;
        if self.faults_active && self.rng.chance(net.long_delay_rate) {
            self.rng.range(net.delay_max_us, net.long_delay_max_us.max(net.delay_max_us))
        } else {
            self.rng.range(net.delay_min_us, net.delay_max_us)
        }
    }

    /// Creates a node's core and hands it its log.
    fn boot(&mut self, index: usize, records: Vec<P::Record>) {
        let id = self.nodes[index].id;
        let role = if id == COORDINATOR {
            Role::Coordinator(P::coordinator(id, &self.protocol_config))
        } else if id.0 <= self.config.participants {
            let mut participant = P::participant(id, &self.protocol_config);
            if let Some(amnesia) = &self.amnesia[index] {
                P::set_amnesia(&mut participant, amnesia.clone());
            }
            Role::Participant(participant)
        } else {
            Role::Acceptor(P::acceptor(id, &self.protocol_config))
        };
        self.nodes[index].core = Some(role);
        self.input(id, Input::Restart { records }, 0);
    }

    fn crash(&mut self, node: NodeId) {
        let index = node.0 as usize;
        if index >= self.nodes.len() || self.nodes[index].core.is_none() {
            return;
        }
        self.nodes[index].core = None;
        self.nodes[index].incarnation += 1;
        if node == COORDINATOR {
            if let Some(replicated) = self.replicated.as_mut() {
                // The leader's machine is gone; the log lives on in the other replicas.
                replicated.leader_crashed();
                self.trace(|| TraceEvent::Crash { node, lost: Vec::new() });
                return;
            }
        }
        let torn = self.config.disk.torn_writes;
        let pending: Vec<String> = if self.config.record_trace {
            self.nodes[index].disk.pending().map(ToString::to_string).collect()
        } else {
            Vec::new()
        };
        let survivors = self.nodes[index].disk.crash(&mut self.rng, torn);
        for record in &survivors {
            self.observe_durable(node, record, true);
        }
        // Survivors (whole by luck) are the first of the pending records; the rest are lost.
        let lost = pending.into_iter().skip(survivors.len()).collect();
        self.trace(|| TraceEvent::Crash { node, lost });
        let participant = node != COORDINATOR && node.0 <= self.config.participants;
        if participant
            && P::RUNS_AFTER_DATA_LOSS
            && self.config.log_loss > 0.0
            && self.rng.chance(self.config.log_loss)
        {
            self.lose_log(index);
        }
    }

    /// The node's whole log is gone, and its operator accepts the loss: it restarts empty,
    /// presuming nothing about transactions named before now.
    fn lose_log(&mut self, index: usize) {
        self.nodes[index].disk = Disk::default();
        // One past the newest id named: every id named before is smaller (the runtime learns
        // one by a Reserve). Nothing named yet: every id is new.
        let first = TxnId { coordinator: COORDINATOR, epoch: 0, sequence: 0 };
        let horizon = self.max_issued.map_or(first, |t| TxnId { sequence: t.sequence + 1, ..t });
        let mut amnesia = concord_commit::amnesia::Amnesia::default();
        amnesia.learn_horizon(horizon);
        self.amnesia[index] = Some(amnesia);
        self.history.logs_lost.push((self.nodes[index].id, horizon));
        self.report.logs_lost += 1;
    }

    fn restart(&mut self, node: NodeId) {
        let index = node.0 as usize;
        if index >= self.nodes.len() || self.nodes[index].core.is_some() {
            return;
        }
        if node == COORDINATOR && self.replicated.is_some() {
            self.elect_leader();
            return;
        }
        let records = self.nodes[index].disk.recover();
        self.start_from(index, records);
    }

    /// Another replica of the coordinator's log is elected. It sends its log to the replicas
    /// that lack part of it, and its core starts once that log is committed.
    fn elect_leader(&mut self) {
        let fsync_us = self.config.disk.fsync_us;
        let replicated = self.replicated.as_mut().expect("a replicated coordinator");
        let election = replicated.elect(&mut self.rng);
        self.report.coordinator_elections += 1;
        for catch_up in election.catch_up {
            let at = self.now + self.delay() + self.delay() + fsync_us;
            let CatchUp { replica, life, upto, id } = catch_up;
            self.schedule(at, Event::ReplicaAck { replica, life, upto, id });
        }
        self.leader_waiting = Some(election.records);
        self.start_leader_if_committed();
    }

    fn start_leader_if_committed(&mut self) {
        let Some(replicated) = &self.replicated else { return };
        if self.leader_waiting.as_ref().is_some_and(|log| replicated.committed() >= log.len()) {
            let records = self.leader_waiting.take().expect("checked");
            self.start_from(COORDINATOR.0 as usize, records);
        }
    }

    fn start_from(&mut self, index: usize, records: Vec<P::Record>) {
        let node = self.nodes[index].id;
        let count = records.len();
        self.trace(|| TraceEvent::Restart {
            node,
            records: count,
            replayed: records.iter().map(ToString::to_string).collect(),
        });
        if node == COORDINATOR {
            self.report.locked_keys_at_coordinator_restart = (1..self.nodes.len())
                .filter_map(|i| match &self.nodes[i].core {
                    Some(Role::Participant(p)) => Some((self.nodes[i].id, p.store().locked_keys())),
                    _ => None,
                })
                .collect();
        }
        self.boot(index, records);
    }

    /// The coordinator writes a record to its replicated log: the leader's own fsync, and each
    /// follower's (the entry's way there, its fsync, the acknowledgement's way back).
    fn persist_replicated(&mut self, record: P::Record, durability: Durability, depth: u32) {
        let incarnation = self.nodes[COORDINATOR.0 as usize].incarnation;
        let fsync_us = self.config.disk.fsync_us;
        let replicated = self.replicated.as_mut().expect("called for a replicated log");
        let (upto, id) = replicated.append(record, durability, depth, incarnation);
        let (leader, replicas) = (replicated.leader(), replicated.replicas());
        let lives: Vec<u32> = (0..replicas).map(|r| replicated.life(r)).collect();
        self.report.syncs += 1;
        for (replica, life) in lives.into_iter().enumerate() {
            let travel = if replica == leader { 0 } else { self.delay() + self.delay() };
            let ack = Event::ReplicaAck { replica, life, upto, id };
            self.schedule(self.now + travel + fsync_us, ack);
        }
    }

    fn replica_ack(&mut self, replica: usize, life: u32, upto: usize, id: u64) {
        let Some(replicated) = self.replicated.as_mut() else { return };
        for entry in replicated.acknowledged(replica, life, upto, id) {
            self.replicated_durable(entry);
        }
        self.start_leader_if_committed();
    }

    /// A coordinator record the replicated log committed: durable now, for the invariants; the
    /// core that wrote it, if it still runs, gets `Persisted` (a successor started from the log
    /// and needs none).
    fn replicated_durable(&mut self, entry: Committed<P::Record>) {
        self.observe_durable(COORDINATOR, &entry.record, false);
        let forced = entry.durability == Durability::Forced;
        self.trace(|| TraceEvent::Durable {
            node: COORDINATOR,
            label: entry.record.to_string(),
            forced,
        });
        let coordinator = &self.nodes[COORDINATOR.0 as usize];
        if forced && coordinator.core.is_some() && coordinator.incarnation == entry.incarnation {
            self.input(COORDINATOR, Input::Persisted(entry.record), entry.depth);
        }
    }

    fn fault(&mut self, action: &FaultAction) {
        match action {
            FaultAction::Crash(node) if self.faults_active => self.crash(*node),
            FaultAction::Partition(side) if self.faults_active => self.start_partition(side),
            FaultAction::Restart(node) => self.restart(*node),
            FaultAction::HealPartition => {
                if self.partition.take().is_some() {
                    self.trace(|| TraceEvent::Heal);
                }
            }
            FaultAction::Crash(_) | FaultAction::Partition(_) => {} // faults have stopped
        }
    }

    fn start_partition(&mut self, side: &[NodeId]) {
        // Nodes this protocol does not have (another protocol's acceptors) are left out.
        let count = self.nodes.len();
        let mut sides = vec![false; count];
        for n in side.iter().filter(|n| (n.0 as usize) < count) {
            sides[n.0 as usize] = true;
        }
        self.partition = Some(sides);
        let side = side.to_vec();
        self.trace(|| TraceEvent::Partition { side });
    }

    fn heal(&mut self) {
        self.faults_active = false;
        self.drop_rate = 0.0;
        self.duplicate_rate = 0.0;
        if self.partition.take().is_some() {
            self.trace(|| TraceEvent::Heal);
        }
        for i in 0..self.nodes.len() {
            self.restart(self.nodes[i].id);
        }
    }

    /// A record became durable (by a sync, or by luck in a crash).
    fn observe_durable(&mut self, node: NodeId, record: &P::Record, by_crash: bool) {
        match P::record_kind(record) {
            RecordKind::Prepared { txn, early_ack } => {
                self.history.durable_prepares.insert((node, txn));
                if early_ack {
                    self.history.early_ack.insert(txn);
                }
            }
            RecordKind::Decided { txn, decision } => {
                self.history.decision_logged(txn, decision, self.now);
            }
            RecordKind::BranchDecided { txn, decision } => {
                // After a sync the core reports its outcome itself; after a crash it never will.
                if by_crash && !self.history.participant_decisions.contains_key(&(node, txn)) {
                    let source = DecisionSource::RecoveredRecord;
                    self.history.participant_decided(node, txn, decision, source, self.now);
                }
            }
            RecordKind::Other => {}
        }
    }

    fn sync_done(&mut self, node: NodeId) {
        let index = node.0 as usize;
        let done = self.nodes[index].disk.complete_sync();
        // Everything this sync covered is durable now, whatever the cores do next.
        for (record, durability, _) in &done {
            self.observe_durable(node, record, false);
            if *durability == Durability::Lazy {
                self.trace(|| TraceEvent::Durable {
                    node,
                    label: record.to_string(),
                    forced: false,
                });
            }
        }
        for (record, durability, depth) in done {
            if durability == Durability::Forced {
                self.trace(|| TraceEvent::Durable {
                    node,
                    label: record.to_string(),
                    forced: true,
                });
                self.input(node, Input::Persisted(record), depth);
                if self.nodes[index].core.is_none() {
                    return; // a trigger crashed it
                }
            }
        }
        self.start_sync(node);
    }

    fn start_sync(&mut self, node: NodeId) {
        let index = node.0 as usize;
        if self.nodes[index].disk.start_sync(self.config.disk.group_commit) {
            self.report.syncs += 1;
            let incarnation = self.nodes[index].incarnation;
            self.schedule(
                self.now + self.config.disk.fsync_us,
                Event::SyncDone { node, incarnation },
            );
        }
    }

    /// Hands one input to a node's core and carries out its commands in order. `depth` is the
    /// message-delay depth of what caused the input.
    fn input(&mut self, node: NodeId, input: In<P>, depth: u32) {
        let mut out: Vec<Cmd<P>> = Vec::new();
        match self.nodes[node.0 as usize].core.as_mut() {
            Some(Role::Coordinator(c)) => c.handle(input, &mut out),
            Some(Role::Participant(p)) => p.handle(input, &mut out),
            Some(Role::Acceptor(a)) => a.handle(input, &mut out),
            None => return,
        }
        for command in out {
            let trigger = self.matching_trigger(node, &command);
            if let Some((TriggerTiming::Before, action)) = &trigger {
                if self.fire(node, action) {
                    return; // crashed: this command and the rest of the step never happen
                }
            }
            self.execute(node, command, depth);
            if let Some((TriggerTiming::After, action)) = &trigger {
                if self.fire(node, action) {
                    return;
                }
            }
        }
    }

    fn matching_trigger(
        &mut self,
        node: NodeId,
        command: &Cmd<P>,
    ) -> Option<(TriggerTiming, TriggerAction)> {
        let on = match command {
            Command::Persist { record, .. } => match P::record_kind(record) {
                RecordKind::Prepared { .. } => TriggerOn::PersistPrepared,
                RecordKind::Decided { decision, .. } => TriggerOn::PersistDecision(decision),
                _ => return None,
            },
            Command::Send { msg, .. } => match P::message_kind(msg) {
                MessageKind::Vote { vote, .. } => TriggerOn::SendVote(vote),
                MessageKind::Decision { decision, .. } => TriggerOn::SendDecision(decision),
                MessageKind::PreCommit { .. } => TriggerOn::SendPreCommit,
                MessageKind::Ack { .. } | MessageKind::Housekeeping | MessageKind::Other => {
                    return None
                }
            },
            _ => return None,
        };
        if !self.faults_active {
            return None;
        }
        let (trigger, fired) = self
            .triggers
            .iter_mut()
            .find(|(t, fired)| !fired && t.node == node && t.on.contains(&on))?;
        *fired = true;
        Some((trigger.timing, trigger.action.clone()))
    }

    /// Carries out a trigger's action; true if the node crashed.
    fn fire(&mut self, node: NodeId, action: &TriggerAction) -> bool {
        match action {
            TriggerAction::Crash { restart_after_us } => {
                self.crash(node);
                self.schedule(
                    self.now + restart_after_us,
                    Event::Fault(FaultAction::Restart(node)),
                );
                true
            }
            TriggerAction::Partition { side, heal_after_us } => {
                self.start_partition(side);
                self.schedule(self.now + heal_after_us, Event::Fault(FaultAction::HealPartition));
                false
            }
        }
    }

    fn execute(&mut self, node: NodeId, command: Cmd<P>, depth: u32) {
        match command {
            Command::Send { to, msg } => self.send(node, to, msg, depth),
            Command::Persist { record, durability } => {
                self.report.records_written += 1;
                let forced = durability == Durability::Forced;
                self.trace(|| TraceEvent::Persist {
                    node,
                    label: record.to_string(),
                    forced,
                    detail: format!("{record:?}"),
                });
                if node == COORDINATOR && self.replicated.is_some() {
                    self.persist_replicated(record, durability, depth);
                } else {
                    self.nodes[node.0 as usize].disk.append(record, durability, depth);
                    self.start_sync(node);
                }
            }
            Command::SetTimer { timer, after_us } => {
                self.trace(|| TraceEvent::TimerSet { node, label: timer.to_string(), after_us });
                let incarnation = self.nodes[node.0 as usize].incarnation;
                self.schedule(
                    self.now + after_us,
                    Event::Timer { node, incarnation, timer, depth },
                );
            }
            Command::Begun { request, txn } => {
                self.report.txns_begun += 1;
                self.max_issued = self.max_issued.max(Some(txn));
                let branches = self.config.workload
                    [usize::try_from(request.0).expect("request ids are workload indexes")]
                .branches
                .clone();
                self.history.branches.insert(txn, branches);
                if let Some(&at) = self.submitted_at.get(&request) {
                    self.txn_submitted_at.insert(txn, at);
                }
                if self.config.status_probes {
                    // Some while the transaction runs (a client whose answer was lost asks at
                    // once), and every one once everything has healed and restarted.
                    if self.rng.chance(0.5) {
                        let at = self.now + self.rng.range(0, 20_000);
                        self.schedule(at, Event::StatusProbe { txn });
                    }
                    let after_heal = self.config.heal_at_us + 2_000_000;
                    self.schedule(after_heal.max(self.now), Event::StatusProbe { txn });
                }
            }
            Command::Rejected { .. } => self.report.txns_not_started += 1,
            Command::Reserved { request, txn } => {
                self.max_issued = self.max_issued.max(Some(txn));
                // The client begins under it a moment later — after a status query about it,
                // now and then (a client that lost the reply asks; the query comes first).
                let index = usize::try_from(request.0).expect("request ids are workload indexes");
                if self.config.status_probes && self.rng.chance(0.3) {
                    let at = self.now + self.rng.range(0, 2_000);
                    self.schedule(at, Event::StatusProbe { txn });
                }
                let at = self.now + self.rng.range(0, 5_000);
                self.schedule(at, Event::BeginReserved { index, txn });
            }
            Command::Outcome { txn, decision } => {
                self.trace(|| TraceEvent::Outcome { node, txn, decision });
                if node == COORDINATOR {
                    self.client_outcome(txn, decision);
                } else if node.0 <= self.config.participants {
                    self.report.message_delays = self.report.message_delays.max(depth);
                    let source = DecisionSource::Outcome;
                    self.history.participant_decided(node, txn, decision, source, self.now);
                }
            }
        }
    }

    fn client_outcome(&mut self, txn: TxnId, decision: Decision) {
        if !self.history.client_outcomes.contains_key(&txn) {
            match decision {
                Decision::Commit => {
                    self.report.committed += 1;
                    if let Some(&at) = self.txn_submitted_at.get(&txn) {
                        self.report.commit_latency_us.push(self.now - at);
                    }
                }
                Decision::Abort => self.report.aborted += 1,
            }
        }
        self.history.client_told(txn, decision, self.now);
    }

    fn finish(mut self) -> RunReport {
        let end = self.now;
        let last_participant = self.config.participants as usize;
        let participants: Vec<ParticipantEnd> = self.nodes[1..=last_participant]
            .iter()
            .map(|n| match &n.core {
                Some(Role::Participant(p)) => ParticipantEnd {
                    node: n.id,
                    up: true,
                    in_doubt: p.in_doubt(),
                    values: p.store().values().clone(),
                },
                _ => ParticipantEnd {
                    node: n.id,
                    up: false,
                    in_doubt: Vec::new(),
                    values: Default::default(),
                },
            })
            .collect();
        invariants::check_end(&mut self.history, &participants, end);

        let mut report = self.report;
        let history = self.history;
        report.outcome_unknown =
            report.txns_begun.saturating_sub(history.client_outcomes.len() as u64);
        report.split_txns = history.decisions_of().values().filter(|d| d.is_split()).count() as u64;
        report.in_doubt = history
            .yes_at
            .iter()
            .map(|(&(node, txn), &since)| {
                let decided = history.participant_decisions.get(&(node, txn));
                let until = decided.map_or(end, |&(_, at)| at.max(since));
                InDoubt { node, txn, us: until - since, resolved: decided.is_some() }
            })
            .collect();
        report.in_doubt.sort_unstable_by_key(|d| (d.txn, d.node));
        report.blocked = report.max_in_doubt_us() > self.config.blocked_threshold_us;
        report.decisions = history
            .participant_decisions
            .iter()
            .map(|(&(node, txn), &(decision, _))| (node, txn, decision))
            .collect();
        report.decisions.sort_unstable_by_key(|&(n, t, _)| (t, n));
        report.status_forgotten = history
            .status_verdicts
            .iter()
            .filter(|(_, v, _)| *v == concord_commit::status::Verdict::Forgotten)
            .count() as u64;
        report.violations = history.violations;
        report.trace_hash = self.hasher.finish();
        report.end_us = end;
        report.trace = self.trace;
        report
    }
}

/// Runs one simulation of protocol `P`.
pub fn simulate<P: Protocol>(config: SimConfig) -> RunReport {
    Simulation::<P>::new(config).run()
}
