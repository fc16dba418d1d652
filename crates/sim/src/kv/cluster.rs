//! The simulated KV cluster: a gateway node (the commit protocol's coordinator core plus the
//! clients' open transactions), shard nodes (its participant over an MVCC shard), and, for
//! Paxos Commit, acceptor nodes; an event queue in virtual time, a lossy network, the protocol
//! world's simulated disk (`disk.rs`: group commit, unsynced bytes lost in a crash and the last
//! one torn), and a skewed physical clock per node.
//!
//! Node ids: 0 is the gateway, 1..=S the shards, then the acceptors.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use concord_commit::ResourceParticipant as _;
use concord_commit::{Branch, Command, Core, Durability, Input};
use concord_kv::{Hlc, KvChange, MvccShard, ShardMap, Timestamp};
use concord_types::{Decision, NodeId, RequestId, TxnId};

use super::clients::{Clients, Outcome};
use super::protocol::{KvProtocol, Out};
use super::{KvRunReport, KvSimConfig};
use std::hash::Hasher as _;

use crate::disk::Disk;
use crate::rng::Rng;

pub(super) const GATEWAY: NodeId = NodeId(0);

pub(super) fn shard_node(shard: usize) -> NodeId {
    NodeId(u32::try_from(shard + 1).expect("few shards"))
}

#[derive(Debug, Clone, Copy)]
enum NodeKind {
    Gateway,
    Shard(usize),
    Acceptor(usize),
}

type KvInput<P> =
    Input<<P as KvProtocol>::Msg, <P as KvProtocol>::Record, <P as KvProtocol>::Timer, KvChange>;

#[derive(Debug)]
enum Event<P: KvProtocol> {
    Deliver {
        to: NodeId,
        from: NodeId,
        msg: P::Msg,
    },
    Timer {
        node: NodeId,
        incarnation: u32,
        timer: P::Timer,
    },
    /// The sync in flight on `node`'s disk completes.
    Sync {
        node: NodeId,
        incarnation: u32,
    },
    Client {
        client: usize,
    },
    Crash {
        node: NodeId,
    },
    Restart {
        node: NodeId,
    },
    Partition {
        shard: usize,
        heal_after_us: u64,
    },
    Heal {
        shard: usize,
    },
    /// Garbage collection and read-timestamp pruning on every shard that is up.
    Maintenance,
}

/// How often shards collect garbage, and how far behind their clock the safe point trails.
const MAINTENANCE_EVERY_US: u64 = 20_000;
const GC_BEHIND_US: u64 = 100_000;
const READS_KEPT_US: u64 = 50_000;

/// What every node has besides its core.
#[derive(Debug)]
pub(super) struct Host<R> {
    pub up: bool,
    incarnation: u32,
    disk: Disk<R>,
    skew_us: i64,
}

impl<R> Host<R> {
    fn new(skew_us: i64) -> Self {
        Host { up: true, incarnation: 0, disk: Disk::default(), skew_us }
    }
}

/// The simulated world. Clients reach into it through `pub(super)` fields.
#[derive(Debug)]
pub struct KvWorld<P: KvProtocol> {
    pub(super) config: KvSimConfig,
    pub(super) now_us: u64,
    pub(super) rng: Rng,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<Event<P>>>,
    sequence: u64,
    coordinator: P::Coordinator,
    shards: Vec<P::Participant>,
    acceptors: Vec<P::Acceptor>,
    /// Every node's host, by node id.
    hosts: Vec<Host<P::Record>>,
    pub(super) gateway_clock: Hlc,
    pub(super) map: ShardMap,
    partitioned: Vec<bool>,
    /// Client requests the coordinator has not named yet, and the transactions it named.
    pub(super) requests: BTreeMap<RequestId, usize>,
    pub(super) named: BTreeMap<TxnId, usize>,
    next_request: u64,
    /// Outcomes the coordinator reported, for the agreement check.
    reported: BTreeMap<TxnId, Decision>,
    pub(super) report: KvRunReport,
    pub(super) clients: Option<Clients>,
    outcomes: Vec<(usize, Outcome)>,
    trace: crate::hash::Fnv1a,
}

impl<P: KvProtocol> KvWorld<P> {
    pub fn new(config: KvSimConfig) -> Self {
        let mut rng = Rng::new(config.seed);
        let skew = |rng: &mut Rng| {
            let span = config.max_skew_us;
            i64::try_from(rng.range(0, 2 * span)).expect("small")
                - i64::try_from(span).expect("small")
        };
        let map = super::clients::shard_map(config.workload, config.shards);
        let acceptor_ids: Vec<NodeId> = (0..P::acceptor_count())
            .map(|i| NodeId(u32::try_from(config.shards + 1 + i).expect("few nodes")))
            .collect();
        let shards = (0..config.shards)
            .map(|s| {
                P::participant(shard_node(s), &acceptor_ids, MvccShard::new(config.max_offset_us))
            })
            .collect();
        let acceptors = acceptor_ids.iter().map(|&id| P::acceptor(id, &acceptor_ids)).collect();
        let hosts = (0..1 + config.shards + acceptor_ids.len())
            .map(|_| Host::new(skew(&mut rng)))
            .collect();
        let mut world = KvWorld {
            now_us: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            sequence: 0,
            coordinator: P::coordinator(GATEWAY, &acceptor_ids),
            shards,
            acceptors,
            hosts,
            gateway_clock: Hlc::new(config.max_offset_us),
            partitioned: vec![false; config.shards],
            map,
            requests: BTreeMap::new(),
            named: BTreeMap::new(),
            next_request: 0,
            reported: BTreeMap::new(),
            report: KvRunReport::default(),
            clients: None,
            outcomes: Vec::new(),
            trace: crate::hash::Fnv1a::default(),
            rng,
            config,
        };
        world.clients = Some(Clients::new(&world.config));
        world
    }

    fn schedule(&mut self, after_us: u64, event: Event<P>) {
        let at = self.now_us + after_us;
        self.sequence += 1;
        self.events.push(Some(event));
        self.queue.push(Reverse((at, self.sequence, self.events.len() - 1)));
    }

    /// A node's physical clock: virtual time plus its skew.
    pub(super) fn physical_us(&self, node: NodeId) -> u64 {
        let skew = self.hosts[node.0 as usize].skew_us;
        u64::try_from((i64::try_from(self.now_us).expect("small") + skew).max(0))
            .expect("non-negative")
    }

    /// Which core a node id names.
    fn kind(&self, node: NodeId) -> NodeKind {
        let i = node.0 as usize;
        match i {
            0 => NodeKind::Gateway,
            _ if i <= self.config.shards => NodeKind::Shard(i - 1),
            _ => NodeKind::Acceptor(i - 1 - self.config.shards),
        }
    }

    pub(super) fn gateway_up(&self) -> bool {
        self.hosts[0].up
    }

    /// The MVCC store of shard `s` (clients read from it directly, at the driver level).
    pub(super) fn shard_mut(&mut self, s: usize) -> &mut MvccShard {
        self.shards[s].resource_mut()
    }

    /// Whether the gateway can talk to `shard` now.
    pub(super) fn reachable(&self, shard: usize) -> bool {
        self.hosts[0].up && self.hosts[shard + 1].up && !self.partitioned[shard]
    }

    /// A network delay: mostly short, sometimes long enough to outlast timeouts.
    pub(super) fn delay_us(&mut self) -> u64 {
        if self.rng.chance(0.02) {
            self.rng.range(5_000, 60_000)
        } else {
            self.rng.range(100, 1_500)
        }
    }

    fn faults_active(&self) -> bool {
        self.now_us < self.config.faults_until_us
    }

    pub fn run(mut self) -> KvRunReport {
        for node in 0..self.hosts.len() {
            self.restart(NodeId(u32::try_from(node).expect("few nodes")));
        }
        for client in 0..self.config.clients {
            let start = self.rng.range(0, 2_000);
            self.schedule(start, Event::Client { client });
        }
        if self.config.faults {
            self.schedule_faults();
        }
        self.schedule(MAINTENANCE_EVERY_US, Event::Maintenance);
        let end = self.config.workload_us + self.config.quiet_us;
        while let Some(Reverse((at, _, index))) = self.queue.pop() {
            if at > end {
                break;
            }
            self.now_us = at;
            let event = self.events[index].take().expect("each event runs once");
            // The trace hash: when each event ran and what kind it was (cheap enough for
            // sweeps; any divergence of schedule shows).
            self.trace.write_u64(at);
            std::hash::Hash::hash(&std::mem::discriminant(&event), &mut self.trace);
            self.dispatch(event);
            self.deliver_outcomes();
        }
        self.final_checks();
        self.trace.write_u64(self.report.committed);
        self.trace.write_u64(self.report.failed);
        self.report.trace_hash = self.trace.finish();
        self.report
    }

    fn schedule_faults(&mut self) {
        let until = self.config.faults_until_us;
        let mut at = self.rng.range(5_000, 30_000);
        while at < until {
            let target = self.rng.below(u64::try_from(self.hosts.len()).expect("few"));
            let saved = self.now_us;
            self.now_us = 0;
            if self.rng.chance(0.5) {
                let node = NodeId(u32::try_from(target).expect("few"));
                self.schedule(at, Event::Crash { node });
                let down_for = self.rng.range(1_000, 40_000);
                self.schedule(at + down_for, Event::Restart { node });
            } else {
                let shard = usize::try_from(
                    self.rng.below(u64::try_from(self.config.shards).expect("few")),
                )
                .expect("few");
                let heal_after_us = self.rng.range(2_000, 50_000);
                self.schedule(at, Event::Partition { shard, heal_after_us });
            }
            self.now_us = saved;
            at += self.rng.range(10_000, 60_000);
        }
        // The heal: everyone up and connected once faults end.
        for node in 0..self.hosts.len() {
            let node = NodeId(u32::try_from(node).expect("few"));
            self.schedule(until, Event::Restart { node });
        }
        for shard in 0..self.config.shards {
            self.schedule(until, Event::Heal { shard });
        }
    }

    fn dispatch(&mut self, event: Event<P>) {
        match event {
            Event::Deliver { to, from, msg } => {
                if self.hosts[to.0 as usize].up {
                    self.step(to, Input::Message { from, msg });
                }
            }
            Event::Timer { node, incarnation, timer } => {
                let host = &self.hosts[node.0 as usize];
                if host.up && host.incarnation == incarnation {
                    self.step(node, Input::Timer(timer));
                }
            }
            Event::Sync { node, incarnation } => self.sync(node, incarnation),
            Event::Client { client } => {
                let mut clients = self.clients.take().expect("clients present");
                clients.step(self, client);
                self.clients = Some(clients);
            }
            Event::Crash { node } => self.crash(node),
            Event::Restart { node } => {
                if !self.hosts[node.0 as usize].up {
                    self.restart(node);
                }
            }
            Event::Partition { shard, heal_after_us } => {
                if self.faults_active() && !self.partitioned[shard] {
                    self.partitioned[shard] = true;
                    self.report.partitions += 1;
                    self.schedule(heal_after_us, Event::Heal { shard });
                }
            }
            Event::Heal { shard } => self.partitioned[shard] = false,
            Event::Maintenance => {
                for s in 0..self.shards.len() {
                    if !self.hosts[s + 1].up {
                        continue;
                    }
                    let physical = self.physical_us(shard_node(s));
                    let shard = self.shard_mut(s);
                    shard.set_physical_time(physical);
                    let dropped = shard
                        .collect_garbage(Timestamp::new(physical.saturating_sub(GC_BEHIND_US), 0));
                    shard.prune_reads(Timestamp::new(physical.saturating_sub(READS_KEPT_US), 0));
                    self.report.versions_collected += dropped as u64;
                }
                self.schedule(MAINTENANCE_EVERY_US, Event::Maintenance);
            }
        }
    }

    fn crash(&mut self, node: NodeId) {
        if !self.faults_active() || !self.hosts[node.0 as usize].up {
            return;
        }
        self.report.crashes += 1;
        let host = &mut self.hosts[node.0 as usize];
        host.up = false;
        host.incarnation += 1;
        // Unsynced bytes are lost, all but a random prefix that may end mid-record (torn).
        host.disk.crash(&mut self.rng, true);
        if node == GATEWAY {
            // Open transactions die with the gateway; those committing have an unknown outcome.
            let mut clients = self.clients.take().expect("clients present");
            clients.gateway_crashed(self);
            self.clients = Some(clients);
            self.requests.clear();
            self.named.clear();
        }
    }

    /// (Re)starts a node from its synced log (empty on the first start).
    fn restart(&mut self, node: NodeId) {
        let host = &mut self.hosts[node.0 as usize];
        host.up = true;
        let records = host.disk.recover();
        self.step(node, Input::Restart { records });
        if let NodeKind::Shard(s) = self.kind(node) {
            let physical = self.physical_us(node);
            let shard = self.shard_mut(s);
            shard.set_physical_time(physical);
            shard.restarted();
        }
    }

    fn sync(&mut self, node: NodeId, incarnation: u32) {
        let host = &mut self.hosts[node.0 as usize];
        if !host.up || host.incarnation != incarnation {
            return;
        }
        for (record, durability, _) in host.disk.complete_sync() {
            if durability == Durability::Forced {
                self.step(node, Input::Persisted(record));
            }
        }
        self.start_sync(node);
    }

    /// Starts a group-commit sync if a forced record waits and none is in flight.
    fn start_sync(&mut self, node: NodeId) {
        let host = &mut self.hosts[node.0 as usize];
        if host.up && host.disk.start_sync(true) {
            let incarnation = host.incarnation;
            let fsync = self.rng.range(150, 400);
            self.schedule(fsync, Event::Sync { node, incarnation });
        }
    }

    /// Feeds one input to a node's core and carries out its commands.
    fn step(&mut self, node: NodeId, input: KvInput<P>) {
        let mut out = Vec::new();
        match self.kind(node) {
            NodeKind::Gateway => self.coordinator.handle(input, &mut out),
            NodeKind::Shard(s) => {
                let physical = self.physical_us(node);
                self.shard_mut(s).set_physical_time(physical);
                self.shards[s].handle(input, &mut out);
            }
            NodeKind::Acceptor(a) => self.acceptors[a].handle(input, &mut out),
        }
        self.carry_out(node, out);
    }

    /// A reader is blocked on `txn` at shard `s`: the shard asks for the outcome now.
    pub(super) fn resolve_intent(&mut self, s: usize, txn: TxnId) {
        let mut out = Vec::new();
        self.shards[s].inquire_now(txn, &mut out);
        self.carry_out(shard_node(s), out);
    }

    fn carry_out(&mut self, node: NodeId, commands: Out<P>) {
        for command in commands {
            match command {
                Command::Send { to, msg } => self.send(node, to, &msg),
                Command::Persist { record, durability } => {
                    self.hosts[node.0 as usize].disk.append(record, durability, 0);
                    self.start_sync(node);
                }
                Command::SetTimer { timer, after_us } => {
                    let incarnation = self.hosts[node.0 as usize].incarnation;
                    self.schedule(after_us, Event::Timer { node, incarnation, timer });
                }
                Command::Begun { request, txn } => {
                    if let Some(client) = self.requests.remove(&request) {
                        self.named.insert(txn, client);
                    }
                }
                Command::Rejected { request, .. } => {
                    if let Some(client) = self.requests.remove(&request) {
                        self.finish_client(client, Outcome::Failed("rejected".into()));
                    }
                }
                // The simulated gateway begins without reservations.
                Command::Reserved { .. } => {}
                Command::Outcome { txn, decision } => {
                    if node != GATEWAY {
                        continue;
                    }
                    self.reported.insert(txn, decision);
                    if let Some(client) = self.named.remove(&txn) {
                        let outcome = match decision {
                            Decision::Commit => Outcome::Committed,
                            Decision::Abort => Outcome::Failed(self.abort_reason(txn)),
                        };
                        self.finish_client(client, outcome);
                    }
                }
            }
        }
    }

    /// Why the shards refused `txn`, as the first shard that remembers says.
    fn abort_reason(&self, txn: TxnId) -> String {
        self.shards
            .iter()
            .find_map(|s| s.refusal(txn).map(ToString::to_string))
            .unwrap_or_else(|| "aborted (timeout or lost vote)".to_string())
    }

    fn finish_client(&mut self, client: usize, outcome: Outcome) {
        self.finish_later(client, outcome);
    }

    /// Outcomes are handed to clients after the current event: a commit may be answered while
    /// its client is still in its step (a rejected request, a read-only transaction).
    pub(super) fn finish_later(&mut self, client: usize, outcome: Outcome) {
        self.outcomes.push((client, outcome));
    }

    fn deliver_outcomes(&mut self) {
        if self.outcomes.is_empty() {
            return;
        }
        let mut clients = self.clients.take().expect("clients present");
        for (client, outcome) in std::mem::take(&mut self.outcomes) {
            clients.finished(self, client, outcome);
        }
        self.clients = Some(clients);
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: &P::Msg) {
        let role = |kind| match kind {
            NodeKind::Gateway => concord_commit::NodeRole::Coordinator,
            NodeKind::Shard(_) => concord_commit::NodeRole::Participant,
            NodeKind::Acceptor(_) => concord_commit::NodeRole::Acceptor,
        };
        let (from_role, to_role) = (role(self.kind(from)), role(self.kind(to)));
        assert!(
            P::may_send(msg, from, from_role, to_role),
            "{from} ({from_role:?}) sent {msg:?} to {to} ({to_role:?}), which the runtime refuses"
        );
        // Partitions cut a shard off from the gateway (acceptors stay reachable).
        let crosses_partition = |world: &Self, a: NodeId, b: NodeId| {
            let cut = |n: NodeId| match world.kind(n) {
                NodeKind::Shard(s) => world.partitioned[s],
                NodeKind::Gateway | NodeKind::Acceptor(_) => false,
            };
            (a == GATEWAY && cut(b)) || (b == GATEWAY && cut(a))
        };
        if crosses_partition(self, from, to) {
            return;
        }
        if self.faults_active() && self.rng.chance(self.config.loss) {
            return;
        }
        let copies =
            if self.faults_active() && self.rng.chance(self.config.duplication) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = self.delay_us();
            self.schedule(delay, Event::Deliver { to, from, msg: msg.clone() });
        }
    }

    /// Starts a commit for `client` over `branches`; the outcome arrives through `finished`.
    pub(super) fn begin_commit(&mut self, client: usize, branches: Vec<Branch<KvChange>>) {
        self.next_request += 1;
        let request = RequestId(self.next_request);
        self.requests.insert(request, client);
        self.step(GATEWAY, Input::Begin { request, branches });
    }

    pub(super) fn schedule_client(&mut self, client: usize, after_us: u64) {
        self.schedule(after_us, Event::Client { client });
    }

    /// A timestamp from the gateway's clock.
    pub(super) fn gateway_now(&mut self) -> Timestamp {
        let physical = self.physical_us(GATEWAY);
        self.gateway_clock.now(physical)
    }

    fn final_checks(&mut self) {
        // No transaction may be committed at one shard and aborted at another, nor differ from
        // what the coordinator reported. (A shard that voted NO holds ABORT, but then no shard
        // can have been told COMMIT.)
        let mut seen: BTreeMap<TxnId, (usize, Decision)> = BTreeMap::new();
        for (s, shard) in self.shards.iter().enumerate() {
            let locked = shard.resource().locked_keys();
            if locked > 0 {
                self.report.violations.push(format!(
                    "liveness: shard {s} still holds {locked} prepared writes after the quiet phase"
                ));
            }
            for (txn, decision) in shard.decided() {
                if let Some(&reported) = self.reported.get(&txn) {
                    if reported != decision {
                        self.report.violations.push(format!(
                            "agreement: the coordinator reported {reported} for {txn}, shard {s} applied {decision}"
                        ));
                    }
                }
                match seen.get(&txn) {
                    Some(&(other, earlier)) if earlier != decision => {
                        self.report.violations.push(format!(
                            "agreement: {txn} is {earlier} at shard {other} and {decision} at shard {s}"
                        ));
                    }
                    _ => {
                        seen.insert(txn, (s, decision));
                    }
                }
            }
        }
        let mut clients = self.clients.take().expect("clients present");
        clients.final_read(self);
        self.clients = Some(clients);
    }
}
