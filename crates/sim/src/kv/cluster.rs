//! The simulated KV cluster: a gateway node (the 2PC coordinator core plus the clients'
//! open transactions) and shard nodes (the 2PC participant over an MVCC shard), an event
//! queue in virtual time, a lossy network, disks that lose unsynced records in a crash, and
//! a skewed physical clock per node.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use concord_commit::two_phase::{Config as CoreConfig, Timer};
use concord_commit::{Branch, Command, Core, Durability, Input};
use concord_kv::{
    Hlc, KvCoordinator, KvMsg, KvRecord, MvccShard, ShardMap, ShardParticipant, Timestamp,
};
use concord_types::{Decision, NodeId, RequestId, TxnId};

use super::clients::{Clients, Outcome};
use super::{KvRunReport, KvSimConfig};
use crate::rng::Rng;

pub(super) const GATEWAY: NodeId = NodeId(0);

pub(super) fn shard_node(shard: usize) -> NodeId {
    NodeId(u32::try_from(shard + 1).expect("few shards"))
}

#[derive(Debug)]
enum Event {
    Deliver {
        to: NodeId,
        from: NodeId,
        msg: KvMsg,
    },
    Timer {
        node: NodeId,
        incarnation: u32,
        timer: Timer,
    },
    Sync {
        node: NodeId,
        incarnation: u32,
        upto: usize,
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

#[derive(Debug)]
struct LogEntry {
    record: KvRecord,
    synced: bool,
    /// A forced record whose `Persisted` has not been delivered yet.
    awaiting: bool,
}

/// What every node has besides its core.
#[derive(Debug)]
pub(super) struct Host {
    pub up: bool,
    incarnation: u32,
    log: Vec<LogEntry>,
    skew_us: i64,
}

impl Host {
    fn new(skew_us: i64) -> Self {
        Host { up: true, incarnation: 0, log: Vec::new(), skew_us }
    }
}

/// The simulated world. Clients reach into it through `pub(super)` fields.
#[derive(Debug)]
pub struct KvWorld {
    pub(super) config: KvSimConfig,
    pub(super) now_us: u64,
    pub(super) rng: Rng,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<Event>>,
    sequence: u64,
    pub(super) coordinator: KvCoordinator,
    pub(super) gateway: Host,
    pub(super) gateway_clock: Hlc,
    pub(super) shards: Vec<ShardParticipant>,
    pub(super) shard_hosts: Vec<Host>,
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
}

impl KvWorld {
    pub fn new(config: KvSimConfig) -> Self {
        let mut rng = Rng::new(config.seed);
        let skew = |rng: &mut Rng| {
            let span = config.max_skew_us;
            i64::try_from(rng.range(0, 2 * span)).expect("small")
                - i64::try_from(span).expect("small")
        };
        let core = CoreConfig {
            vote_timeout_us: 50_000,
            resend_base_us: 10_000,
            inquiry_base_us: 20_000,
            ..CoreConfig::default()
        };
        let map = super::clients::shard_map(config.workload, config.shards);
        let shards = (0..config.shards)
            .map(|s| {
                ShardParticipant::with_resource(
                    shard_node(s),
                    core.clone(),
                    MvccShard::new(config.max_offset_us),
                )
            })
            .collect();
        let shard_hosts = (0..config.shards).map(|_| Host::new(skew(&mut rng))).collect();
        let gateway = Host::new(skew(&mut rng));
        let mut world = KvWorld {
            now_us: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            sequence: 0,
            coordinator: KvCoordinator::new(GATEWAY, core),
            gateway,
            gateway_clock: Hlc::new(config.max_offset_us),
            shards,
            shard_hosts,
            partitioned: vec![false; config.shards],
            map,
            requests: BTreeMap::new(),
            named: BTreeMap::new(),
            next_request: 0,
            reported: BTreeMap::new(),
            report: KvRunReport::default(),
            clients: None,
            outcomes: Vec::new(),
            rng,
            config,
        };
        world.clients = Some(Clients::new(&world.config));
        world
    }

    fn schedule(&mut self, after_us: u64, event: Event) {
        let at = self.now_us + after_us;
        self.sequence += 1;
        self.events.push(Some(event));
        self.queue.push(Reverse((at, self.sequence, self.events.len() - 1)));
    }

    /// A node's physical clock: virtual time plus its skew.
    pub(super) fn physical_us(&self, node: NodeId) -> u64 {
        let skew = if node == GATEWAY {
            self.gateway.skew_us
        } else {
            self.shard_hosts[node.0 as usize - 1].skew_us
        };
        u64::try_from((i64::try_from(self.now_us).expect("small") + skew).max(0))
            .expect("non-negative")
    }

    /// Whether the gateway can talk to `shard` now.
    pub(super) fn reachable(&self, shard: usize) -> bool {
        self.gateway.up && self.shard_hosts[shard].up && !self.partitioned[shard]
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
        for s in 0..self.config.shards {
            self.restart_shard(s);
        }
        self.restart_gateway();
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
            self.dispatch(event);
            self.deliver_outcomes();
        }
        self.final_checks();
        self.report
    }

    fn schedule_faults(&mut self) {
        let until = self.config.faults_until_us;
        let mut at = self.rng.range(5_000, 30_000);
        while at < until {
            let target = self.rng.below(u64::try_from(self.config.shards).expect("few") + 1);
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
        for node in 0..=self.config.shards {
            let node = NodeId(u32::try_from(node).expect("few"));
            self.schedule(until, Event::Restart { node });
        }
        for shard in 0..self.config.shards {
            self.schedule(until, Event::Heal { shard });
        }
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Deliver { to, from, msg } => {
                if to == GATEWAY {
                    if self.gateway.up {
                        self.step_gateway(Input::Message { from, msg });
                    }
                } else {
                    let s = to.0 as usize - 1;
                    if self.shard_hosts[s].up {
                        self.step_shard(s, Input::Message { from, msg });
                    }
                }
            }
            Event::Timer { node, incarnation, timer } => {
                if node == GATEWAY {
                    if self.gateway.up && self.gateway.incarnation == incarnation {
                        self.step_gateway(Input::Timer(timer));
                    }
                } else {
                    let s = node.0 as usize - 1;
                    if self.shard_hosts[s].up && self.shard_hosts[s].incarnation == incarnation {
                        self.step_shard(s, Input::Timer(timer));
                    }
                }
            }
            Event::Sync { node, incarnation, upto } => self.sync(node, incarnation, upto),
            Event::Client { client } => {
                let mut clients = self.clients.take().expect("clients present");
                clients.step(self, client);
                self.clients = Some(clients);
            }
            Event::Crash { node } => self.crash(node),
            Event::Restart { node } => {
                if node == GATEWAY {
                    if !self.gateway.up {
                        self.restart_gateway();
                    }
                } else if !self.shard_hosts[node.0 as usize - 1].up {
                    self.restart_shard(node.0 as usize - 1);
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
                    if !self.shard_hosts[s].up {
                        continue;
                    }
                    let physical = self.physical_us(shard_node(s));
                    let shard = self.shards[s].resource_mut();
                    shard.set_physical_time(physical);
                    let dropped = shard
                        .collect_garbage(Timestamp::new(physical.saturating_sub(GC_BEHIND_US), 0));
                    self.report.versions_collected += dropped as u64;
                    shard.prune_reads(Timestamp::new(physical.saturating_sub(READS_KEPT_US), 0));
                }
                self.schedule(MAINTENANCE_EVERY_US, Event::Maintenance);
            }
        }
    }

    fn host(&mut self, node: NodeId) -> &mut Host {
        if node == GATEWAY {
            &mut self.gateway
        } else {
            &mut self.shard_hosts[node.0 as usize - 1]
        }
    }

    fn crash(&mut self, node: NodeId) {
        if !self.faults_active() || !self.host(node).up {
            return;
        }
        self.report.crashes += 1;
        let host = self.host(node);
        host.up = false;
        host.incarnation += 1;
        host.log.retain(|e| e.synced);
        if node == GATEWAY {
            // Open transactions die with the gateway; those committing have an unknown outcome.
            let mut clients = self.clients.take().expect("clients present");
            clients.gateway_crashed(self);
            self.clients = Some(clients);
            self.requests.clear();
            self.named.clear();
        }
    }

    fn synced_records(&self, node: NodeId) -> Vec<KvRecord> {
        let host =
            if node == GATEWAY { &self.gateway } else { &self.shard_hosts[node.0 as usize - 1] };
        host.log.iter().map(|e| e.record.clone()).collect()
    }

    fn restart_gateway(&mut self) {
        self.gateway.up = true;
        let records = self.synced_records(GATEWAY);
        self.step_gateway(Input::Restart { records });
    }

    fn restart_shard(&mut self, s: usize) {
        self.shard_hosts[s].up = true;
        let records = self.synced_records(shard_node(s));
        self.step_shard(s, Input::Restart { records });
        let physical = self.physical_us(shard_node(s));
        let resource = self.shards[s].resource_mut();
        resource.set_physical_time(physical);
        resource.restarted();
    }

    fn sync(&mut self, node: NodeId, incarnation: u32, upto: usize) {
        let host = self.host(node);
        if !host.up || host.incarnation != incarnation {
            return;
        }
        let mut durable = Vec::new();
        for entry in host.log.iter_mut().take(upto) {
            entry.synced = true;
            if entry.awaiting {
                entry.awaiting = false;
                durable.push(entry.record.clone());
            }
        }
        for record in durable {
            if node == GATEWAY {
                self.step_gateway(Input::Persisted(record));
            } else {
                self.step_shard(node.0 as usize - 1, Input::Persisted(record));
            }
        }
    }

    pub(super) fn step_gateway(
        &mut self,
        input: Input<KvMsg, KvRecord, Timer, concord_kv::KvChange>,
    ) {
        let mut out = Vec::new();
        self.coordinator.handle(input, &mut out);
        self.carry_out(GATEWAY, out);
    }

    fn step_shard(&mut self, s: usize, input: Input<KvMsg, KvRecord, Timer, concord_kv::KvChange>) {
        let physical = self.physical_us(shard_node(s));
        self.shards[s].resource_mut().set_physical_time(physical);
        let mut out = Vec::new();
        self.shards[s].handle(input, &mut out);
        self.carry_out(shard_node(s), out);
    }

    /// A reader is blocked on `txn` at shard `s`: the shard asks for the outcome now.
    pub(super) fn resolve_intent(&mut self, s: usize, txn: TxnId) {
        let mut out = Vec::new();
        if self.shards[s].inquire_now(txn, &mut out) {
            self.carry_out(shard_node(s), out);
        }
    }

    fn carry_out(&mut self, node: NodeId, commands: Vec<Command<KvMsg, KvRecord, Timer>>) {
        for command in commands {
            match command {
                Command::Send { to, msg } => self.send(node, to, &msg),
                Command::Persist { record, durability } => {
                    let forced = durability == Durability::Forced;
                    let host = self.host(node);
                    host.log.push(LogEntry { record, synced: false, awaiting: forced });
                    let (incarnation, upto) = (host.incarnation, host.log.len());
                    if forced {
                        let fsync = self.rng.range(150, 400);
                        self.schedule(fsync, Event::Sync { node, incarnation, upto });
                    }
                }
                Command::SetTimer { timer, after_us } => {
                    let incarnation = self.host(node).incarnation;
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
            .find_map(|s| s.refusal(txn))
            .map_or_else(|| "aborted (timeout or lost vote)".to_string(), ToString::to_string)
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

    fn send(&mut self, from: NodeId, to: NodeId, msg: &KvMsg) {
        let crosses_partition = |world: &Self, a: NodeId, b: NodeId| {
            let cut = |n: NodeId| n != GATEWAY && world.partitioned[n.0 as usize - 1];
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
    pub(super) fn begin_commit(
        &mut self,
        client: usize,
        branches: Vec<Branch<concord_kv::KvChange>>,
    ) {
        self.next_request += 1;
        let request = RequestId(self.next_request);
        self.requests.insert(request, client);
        self.step_gateway(Input::Begin { request, branches });
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
        for (s, shard) in self.shards.iter().enumerate() {
            if shard.resource().locked_keys() > 0 {
                self.report.violations.push(format!(
                    "liveness: shard {s} still holds {} prepared writes after the quiet phase",
                    shard.resource().locked_keys()
                ));
            }
            for (txn, decision) in shard.decisions() {
                if let Some(reported) = self.reported.get(txn) {
                    if reported != decision {
                        self.report.violations.push(format!(
                            "agreement: the coordinator reported {reported} for {txn}, shard {s} applied {decision}"
                        ));
                    }
                }
            }
        }
        // No transaction may be committed at one shard and aborted at another. (A shard that
        // voted NO holds ABORT, but then no shard can have been told COMMIT.)
        let mut seen: BTreeMap<TxnId, (usize, Decision)> = BTreeMap::new();
        for (s, shard) in self.shards.iter().enumerate() {
            for (&txn, &decision) in shard.decisions() {
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
