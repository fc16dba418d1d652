//! The database path under faults: the real `concord_commit::xa::Coordinator` (the 2PC core and
//! its translation to resource-manager calls, as `concord db serve` runs it) against simulated
//! SQL/XA databases.
//!
//! A simulated database is what PostgreSQL's `PREPARE TRANSACTION` or MariaDB's XA promise:
//! a prepared branch survives crashes and restarts and waits, silently, for ever (it never
//! inquires); an open transaction dies with its connection; a committed branch leaves its
//! marker, so how a branch ended can be read afterwards. Faults, while they last:
//! * the coordinator crashes (unsynced log records lost, the last write maybe torn) and
//!   restarts from its log, half the time from a checkpoint of it (the live records only);
//! * a database restarts: its open transactions roll back, its prepared ones stay;
//! * a connection drops around a call: the call may or may not have run, and the coordinator
//!   sees an error (PREPARE: a NO vote and a rollback by name that may fail too; a one-phase
//!   COMMIT: an unknown outcome, settled from the marker; a finish: a failure, retried);
//! * a database refuses a prepare (a constraint), and some branches only read;
//! * an operator finishes a prepared branch by hand, behind the coordinator's back.
//!
//! Reconciliation runs as the real one does: every prepared branch of ours is an inquiry the
//! core answers, carried out with a finish. Then the faults stop and the world runs until
//! quiet. Checked:
//! * nothing is left prepared;
//! * atomicity: a transaction's writing branches all committed or none — unless an operator
//!   finished one by hand;
//! * honest answers: a client told COMMIT finds every branch committed, except branches an
//!   operator rolled back by hand, each of which the coordinator detected as a heuristic
//!   outcome; a client told ABORT finds none committed, except by an operator's hand;
//! * every hand rollback of a branch whose transaction logged COMMIT is detected;
//! * no branch is finished COMMIT before its transaction's decision is durable (one-phase
//!   transactions have none: their only branch decides);
//! * every transaction begun by the coordinator's last incarnation is answered.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::hash::Hasher as _;

use concord_commit::two_phase::Timer;
use concord_commit::xa::model::{BranchState, Finish, ResourceManager};
use concord_commit::xa::{self, Answer, Call, Completion, Effect, Record, Work};
use concord_commit::Durability;
use concord_types::{Decision, NodeId, RequestId, TxnId, Vote};

use crate::disk::Disk;
use crate::rng::Rng;

const COORDINATOR: NodeId = NodeId(100);
/// Virtual time during which faults happen; then the world heals.
const FAULTS_UNTIL_US: u64 = 2_000_000;
/// After the faults stop, everything must settle within this much virtual time.
const HEAL_US: u64 = 30_000_000;
const RECONCILE_EVERY_US: u64 = 300_000;

/// The core's timeouts here: a vote within 200 ms, COMMIT resent from 20 ms up to 500 ms.
fn core_config() -> concord_commit::two_phase::Config {
    xa::config(200_000, 20_000, 500_000, 1_000, 8)
}

#[derive(Clone, Debug)]
pub struct DbSimConfig {
    pub seed: u64,
    pub databases: usize,
    pub transactions: usize,
    /// Per branch: it only reads.
    pub read_only: f64,
    /// Per prepare or one-phase commit: the database refuses (a constraint).
    pub refusal: f64,
    /// Per call, while faults last: the connection drops around it.
    pub dropped_connections: f64,
    pub coordinator_crashes: u32,
    pub database_restarts: u32,
    /// Prepared branches finished by hand, behind the coordinator's back.
    pub operator_resolves: u32,
}

impl DbSimConfig {
    pub fn faulty(seed: u64) -> Self {
        DbSimConfig {
            seed,
            databases: 3,
            transactions: 10,
            read_only: 0.2,
            refusal: 0.05,
            dropped_connections: 0.1,
            coordinator_crashes: 2,
            database_restarts: 2,
            operator_resolves: 1,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct DbSimReport {
    pub transactions: usize,
    pub committed: usize,
    pub aborted: usize,
    /// Begun, but the coordinator that held them crashed before answering.
    pub unanswered: usize,
    pub one_phase: usize,
    pub read_only_votes: u64,
    pub calls: u64,
    pub coordinator_restarts: u32,
    pub checkpoints: u32,
    pub heuristics_injected: u32,
    pub heuristics_detected: u32,
    pub violations: Vec<String>,
    /// FNV-1a over every event's time and kind and the outcome counts: equal for equal seeds.
    pub trace_hash: u64,
}

#[derive(Clone, Debug)]
enum Event {
    Start(usize),
    /// The client's statements ran; it commits.
    Commit {
        incarnation: u32,
        txn: TxnId,
    },
    /// A call reaches database `node`. `reconcile`: reconciliation's, not the core's.
    Arrive {
        incarnation: u32,
        txn: TxnId,
        node: NodeId,
        call: Call,
        reconcile: bool,
    },
    Answer {
        incarnation: u32,
        txn: TxnId,
        node: NodeId,
        answer: Answer,
    },
    /// Reconciliation's finish came back.
    Reconciled {
        incarnation: u32,
        txn: TxnId,
        node: NodeId,
        completion: Completion,
    },
    Timer {
        incarnation: u32,
        timer: Timer,
    },
    Durable {
        incarnation: u32,
    },
    Reconcile {
        incarnation: u32,
    },
    Crash,
    Recover,
    DatabaseDown(NodeId),
    DatabaseUp(NodeId),
    HandResolve,
}

impl Event {
    fn kind(&self) -> u64 {
        match self {
            Event::Start(_) => 1,
            Event::Commit { .. } => 2,
            Event::Arrive { .. } => 3,
            Event::Answer { .. } => 4,
            Event::Reconciled { .. } => 5,
            Event::Timer { .. } => 6,
            Event::Durable { .. } => 7,
            Event::Reconcile { .. } => 8,
            Event::Crash => 9,
            Event::Recover => 10,
            Event::DatabaseDown(_) => 11,
            Event::DatabaseUp(_) => 12,
            Event::HandResolve => 13,
        }
    }
}

/// A simulated SQL/XA database: the model the conformance suite holds to the real ones'
/// behaviours (`concord_commit::xa::model`), and whether it is down.
#[derive(Debug, Default)]
struct Database {
    rm: ResourceManager<TxnId>,
    down: bool,
}

impl Database {
    fn committed(&self, txn: &TxnId) -> bool {
        self.rm.state(txn) == BranchState::Committed
    }
}

/// One client's transaction.
#[derive(Debug)]
struct ClientTxn {
    branches: Vec<(NodeId, bool)>,
    /// The coordinator incarnation that began it.
    incarnation: u32,
    begun: bool,
    answer: Option<Decision>,
}

struct World {
    config: DbSimConfig,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, Event>,
    xa: xa::Coordinator,
    up: bool,
    incarnation: u32,
    disk: Disk<Record>,
    /// Transactions whose COMMIT decision is on the disk, durable.
    durable_commits: BTreeSet<TxnId>,
    databases: BTreeMap<NodeId, Database>,
    /// Each transaction's plan, by index: its branches and whether each writes.
    plans: Vec<Vec<(NodeId, bool)>>,
    reserving: BTreeMap<RequestId, usize>,
    clients: BTreeMap<TxnId, ClientTxn>,
    /// Hand-finished branches: which way.
    injected: BTreeMap<(TxnId, NodeId), Decision>,
    detected: BTreeSet<(TxnId, NodeId)>,
    report: DbSimReport,
    trace: crate::hash::Fnv1a,
}

impl World {
    fn schedule(&mut self, after_us: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + after_us, self.seq)));
        self.events.insert(self.seq, event);
    }

    fn faulty(&self) -> bool {
        self.now < FAULTS_UNTIL_US
    }

    /// A network hop's delay.
    fn hop(&mut self) -> u64 {
        let max = if self.faulty() { 20_000 } else { 2_000 };
        self.rng.range(100, max)
    }

    fn start_sync(&mut self) {
        if self.up && self.disk.start_sync(true) {
            let after = self.rng.range(50, 500);
            self.schedule(after, Event::Durable { incarnation: self.incarnation });
        }
    }

    fn execute(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Call { txn, node, call } => self.send_call(txn, node, call, false),
                Effect::Persist { record, durability } => {
                    self.disk.append(record, durability, 0);
                    self.start_sync();
                }
                Effect::SetTimer { timer, after_us } => {
                    self.schedule(after_us, Event::Timer { incarnation: self.incarnation, timer });
                }
                Effect::Reserved { request, txn } => {
                    if let Some(index) = self.reserving.remove(&request) {
                        self.open_branches(index, txn);
                    }
                }
                Effect::Rejected { request, reason } => {
                    if let Some(index) = self.reserving.remove(&request) {
                        // Not ready yet, or overloaded: the client tries again.
                        let _ = reason;
                        self.schedule(50_000, Event::Start(index));
                    }
                }
                Effect::Settled { txn, decision, .. } => {
                    let client = self.clients.get_mut(&txn).expect("only clients' txns settle");
                    assert!(client.answer.is_none(), "{txn} answered twice");
                    client.answer = Some(decision);
                    if client.branches.len() == 1 {
                        self.report.one_phase += 1;
                    }
                }
                Effect::Recovered { txn, node, completion, .. } => {
                    if matches!(completion, Completion::Heuristic(_)) {
                        self.detected.insert((txn, node));
                    }
                }
                Effect::Ready => {}
            }
        }
    }

    fn send_call(&mut self, txn: TxnId, node: NodeId, call: Call, reconcile: bool) {
        self.report.calls += 1;
        if call == Call::Finish(Decision::Commit) && !self.durable_commits.contains(&txn) {
            self.report
                .violations
                .push(format!("{txn}: COMMIT sent to {node} before its decision was durable"));
        }
        let delay = self.hop();
        let incarnation = self.incarnation;
        self.schedule(delay, Event::Arrive { incarnation, txn, node, call, reconcile });
    }

    /// The client's branches open (a local transaction in each database, statements run).
    fn open_branches(&mut self, index: usize, txn: TxnId) {
        let branches = self.plans[index].clone();
        for (node, wrote) in &branches {
            let db = self.databases.get_mut(node).expect("planned over configured databases");
            if db.down {
                // The branch cannot open: the client gives its id back and tries again.
                let effects = self.xa.release(txn);
                self.execute(effects);
                for (n, _) in &branches {
                    self.databases.get_mut(n).expect("configured").rm.drop_connections();
                }
                self.schedule(100_000, Event::Start(index));
                return;
            }
            db.rm.begin(&txn).expect("a new transaction's name");
            db.rm.execute(&txn, *wrote).expect("just opened");
        }
        let incarnation = self.incarnation;
        self.clients.insert(txn, ClientTxn { branches, incarnation, begun: false, answer: None });
        let after = self.rng.range(100, 5_000);
        self.schedule(after, Event::Commit { incarnation, txn });
    }

    /// Database `node` serves a call; returns the answer the coordinator will see.
    fn serve(&mut self, txn: TxnId, node: NodeId, call: Call) -> Answer {
        let dropped = self.faulty() && self.rng.chance(self.config.dropped_connections);
        // A dropped connection: the call ran, or never reached the database.
        let runs = !dropped || self.rng.chance(0.5);
        let refuse = self.rng.chance(self.config.refusal);
        let rollback_by_name_works = self.rng.chance(0.5);
        let db = self.databases.get_mut(&node).expect("configured");
        let down = db.down;
        match call {
            Call::Prepare => {
                let vote = (!down && runs).then(|| db.rm.prepare(&txn, refuse));
                if dropped || down {
                    // The engine votes NO and rolls the branch back by name, which may fail
                    // as well (reconciliation finds what it leaves).
                    if !down && rollback_by_name_works {
                        db.rm.finish(&txn, Decision::Abort);
                    }
                    return Answer::Voted {
                        vote: Vote::No,
                        reason: Some("connection lost".into()),
                    };
                }
                let vote = vote.expect("ran");
                if vote == Vote::ReadOnly {
                    self.report.read_only_votes += 1;
                }
                Answer::Voted { vote, reason: None }
            }
            Call::CommitOnePhase => {
                if down {
                    return Answer::OnePhase(Err("database down".into()));
                }
                if runs {
                    db.rm.commit_one_phase(&txn, refuse);
                }
                // A lost answer is settled from the marker by the engine, at once.
                let decision = if db.committed(&txn) { Decision::Commit } else { Decision::Abort };
                Answer::OnePhase(Ok((decision, None)))
            }
            Call::SettleOnePhase => {
                if down || dropped {
                    return Answer::OnePhase(Err("database unreachable".into()));
                }
                let decision = if db.committed(&txn) { Decision::Commit } else { Decision::Abort };
                Answer::OnePhase(Ok((decision, None)))
            }
            Call::Finish(decision) => {
                if down {
                    return Answer::Finished(Completion::Failed("database down".into()));
                }
                let completion = if !runs {
                    Completion::Failed("connection lost".into())
                } else if db.rm.finish(&txn, decision) == Finish::Done {
                    Completion::Done
                } else {
                    let actual =
                        if db.committed(&txn) { Decision::Commit } else { Decision::Abort };
                    if actual == decision {
                        Completion::Done
                    } else {
                        Completion::Heuristic(actual)
                    }
                };
                if dropped && runs {
                    return Answer::Finished(Completion::Failed("connection lost".into()));
                }
                Answer::Finished(completion)
            }
        }
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::Start(index) => {
                if !self.up || !self.xa.is_ready() {
                    self.schedule(50_000, Event::Start(index));
                    return;
                }
                let (request, effects) = self.xa.reserve();
                self.reserving.insert(request, index);
                self.execute(effects);
            }
            Event::Commit { incarnation, txn } => {
                if incarnation != self.incarnation || !self.up {
                    return;
                }
                let client = self.clients.get_mut(&txn).expect("opened");
                client.begun = true;
                let work = client.branches.iter().map(|(n, w)| (*n, Work { wrote: *w })).collect();
                let (_, effects) = self.xa.begin(txn, work);
                self.execute(effects);
            }
            Event::Arrive { incarnation, txn, node, call, reconcile } => {
                let answer = self.serve(txn, node, call);
                let delay = self.hop();
                if reconcile {
                    let Answer::Finished(completion) = answer else {
                        unreachable!("finishes only")
                    };
                    self.schedule(delay, Event::Reconciled { incarnation, txn, node, completion });
                } else {
                    self.schedule(delay, Event::Answer { incarnation, txn, node, answer });
                }
            }
            Event::Answer { incarnation, txn, node, answer } => {
                if incarnation == self.incarnation && self.up {
                    // The engine records a heuristic outcome before it answers the core.
                    if let Answer::Finished(Completion::Heuristic(_)) = answer {
                        self.detected.insert((txn, node));
                    }
                    let effects = self.xa.answer(txn, node, answer);
                    self.execute(effects);
                }
            }
            Event::Reconciled { incarnation, txn, node, completion } => {
                let done = matches!(completion, Completion::Done | Completion::Heuristic(_));
                if incarnation == self.incarnation && self.up && done {
                    if let Completion::Heuristic(_) = completion {
                        self.detected.insert((txn, node));
                    }
                    let effects = self.xa.acked(txn, node);
                    self.execute(effects);
                }
            }
            Event::Timer { incarnation, timer } => {
                if incarnation == self.incarnation && self.up {
                    let effects = self.xa.timer(timer);
                    self.execute(effects);
                }
            }
            Event::Durable { incarnation } => {
                if incarnation == self.incarnation && self.up {
                    for (record, durability, _) in self.disk.complete_sync() {
                        if let Record::CommitDecided { txn, .. } = record {
                            self.durable_commits.insert(txn);
                        }
                        if durability == Durability::Forced {
                            let effects = self.xa.persisted(record);
                            self.execute(effects);
                        }
                    }
                    self.start_sync();
                }
            }
            Event::Reconcile { incarnation } => {
                if incarnation != self.incarnation || !self.up {
                    return;
                }
                let listed: Vec<(NodeId, TxnId)> = self
                    .databases
                    .iter()
                    .filter(|(_, db)| !db.down)
                    .flat_map(|(node, db)| db.rm.listed().map(move |t| (*node, *t)))
                    .collect();
                for (node, txn) in listed {
                    if let Some(decision) = self.xa.inquiry_answer(txn) {
                        self.send_call(txn, node, Call::Finish(decision), true);
                    }
                }
                self.schedule(RECONCILE_EVERY_US, Event::Reconcile { incarnation });
            }
            Event::Crash => {
                if !self.up {
                    return;
                }
                self.up = false;
                self.incarnation += 1; // unsynced records, timers and answers in flight are lost
                self.disk.crash(&mut self.rng, true);
                // Its connections die with it: open transactions roll back.
                for db in self.databases.values_mut() {
                    db.rm.drop_connections();
                }
                let after = self.rng.range(10_000, 300_000);
                self.schedule(after, Event::Recover);
            }
            Event::Recover => {
                self.up = true;
                self.incarnation += 1;
                let mut records = self.disk.recover();
                if self.rng.chance(0.5) {
                    // The log was checkpointed: only the live records remain.
                    let mut scratch = xa::Coordinator::new(COORDINATOR, core_config());
                    scratch.restart(std::mem::take(&mut records));
                    records = scratch.live_records();
                    self.disk.rewrite(&records);
                    self.report.checkpoints += 1;
                }
                self.durable_commits.extend(records.iter().filter_map(|r| match r {
                    Record::CommitDecided { txn, .. } => Some(*txn),
                    _ => None,
                }));
                self.xa = xa::Coordinator::new(COORDINATOR, core_config());
                self.report.coordinator_restarts += 1;
                let effects = self.xa.restart(records);
                self.execute(effects);
                let incarnation = self.incarnation;
                self.schedule(0, Event::Reconcile { incarnation });
            }
            Event::DatabaseDown(node) => {
                let db = self.databases.get_mut(&node).expect("configured");
                db.down = true;
                db.rm.drop_connections();
                let after = self.rng.range(10_000, 400_000);
                self.schedule(after, Event::DatabaseUp(node));
            }
            Event::DatabaseUp(node) => {
                self.databases.get_mut(&node).expect("configured").down = false;
            }
            Event::HandResolve => {
                let prepared: Vec<(NodeId, TxnId)> = self
                    .databases
                    .iter()
                    .flat_map(|(node, db)| db.rm.listed().map(move |t| (*node, *t)))
                    .collect();
                if prepared.is_empty() {
                    if self.faulty() {
                        self.schedule(20_000, Event::HandResolve);
                    }
                    return;
                }
                let (node, txn) = *self.rng.pick(&prepared);
                let decision =
                    if self.rng.chance(0.5) { Decision::Commit } else { Decision::Abort };
                // COMMIT PREPARED or ROLLBACK PREPARED, typed by hand.
                self.databases.get_mut(&node).expect("configured").rm.finish(&txn, decision);
                self.injected.insert((txn, node), decision);
                self.report.heuristics_injected += 1;
            }
        }
    }

    fn check(&mut self) {
        let mut fail = Vec::new();
        for (node, db) in &self.databases {
            for txn in db.rm.listed() {
                fail.push(format!("{txn}: left prepared in database {node}"));
            }
        }
        for (txn, client) in &self.clients {
            if !client.begun {
                continue;
            }
            self.report.transactions += 1;
            let writers: Vec<NodeId> =
                client.branches.iter().filter(|(_, w)| *w).map(|(n, _)| *n).collect();
            let committed = |n: &NodeId| self.databases[n].committed(txn);
            let by_hand = |n: &NodeId| self.injected.get(&(*txn, *n)).copied();
            let untouched: Vec<&NodeId> = writers.iter().filter(|n| by_hand(n).is_none()).collect();
            let all = untouched.iter().all(|n| committed(n));
            let none = !untouched.iter().any(|n| committed(n));
            if !all && !none {
                fail.push(format!("{txn}: committed in some databases only ({writers:?})"));
            }
            // A read-only branch never commits in two phases (alone, it commits nothing).
            let two_phase = client.branches.len() > 1;
            for (read_only, _) in
                client.branches.iter().filter(|(_, w)| two_phase && !*w).map(|b| (b.0, b.1))
            {
                if committed(&read_only) {
                    fail.push(format!("{txn}: a read-only branch committed in {read_only}"));
                }
            }
            match client.answer {
                Some(Decision::Commit) => {
                    self.report.committed += 1;
                    if !all {
                        fail.push(format!("{txn}: the client was told COMMIT, not all committed"));
                    }
                    for n in &writers {
                        if by_hand(n) == Some(Decision::Abort)
                            && !self.detected.contains(&(*txn, *n))
                        {
                            fail.push(format!(
                                "{txn}: rolled back by hand in {n} after COMMIT, undetected"
                            ));
                        }
                    }
                }
                Some(Decision::Abort) => {
                    self.report.aborted += 1;
                    if !none {
                        fail.push(format!(
                            "{txn}: the client was told ABORT, yet something committed"
                        ));
                    }
                }
                None if client.incarnation == self.incarnation && self.up => {
                    let states: Vec<String> = client
                        .branches
                        .iter()
                        .map(|(n, w)| {
                            let db = &self.databases[n];
                            format!(
                                "{n} wrote={w} open={} {:?}",
                                db.rm.is_open(txn),
                                db.rm.state(txn)
                            )
                        })
                        .collect();
                    fail.push(format!(
                        "{txn}: begun by the running coordinator, never answered: {states:?}; {:?}",
                        self.xa.debug_txn(*txn)
                    ));
                }
                None => self.report.unanswered += 1,
            }
            if self.durable_commits.contains(txn) {
                for n in &writers {
                    if by_hand(n) == Some(Decision::Abort) && !self.detected.contains(&(*txn, *n)) {
                        fail.push(format!(
                            "{txn}: logged COMMIT, rolled back by hand in {n}, undetected"
                        ));
                    }
                }
            }
        }
        self.report.heuristics_detected = u32::try_from(self.detected.len()).unwrap_or(u32::MAX);
        self.report.violations.extend(fail);
    }
}

/// One seeded run; deterministic in `config`.
pub fn simulate_databases(config: &DbSimConfig) -> DbSimReport {
    let mut rng = Rng::new(config.seed);
    let nodes: Vec<NodeId> =
        (1..=config.databases).map(|i| NodeId(u32::try_from(i).expect("few databases"))).collect();
    let plans = (0..config.transactions)
        .map(|_| {
            let count = usize::try_from(rng.range(1, nodes.len() as u64 + 1)).expect("few");
            let mut chosen = nodes.clone();
            // A random subset of `count` databases, in order.
            while chosen.len() > count {
                let drop = usize::try_from(rng.below(chosen.len() as u64)).expect("few");
                chosen.remove(drop);
            }
            chosen.into_iter().map(|n| (n, !rng.chance(config.read_only))).collect()
        })
        .collect();
    let mut world = World {
        rng,
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        events: HashMap::new(),
        xa: xa::Coordinator::new(COORDINATOR, core_config()),
        up: true,
        incarnation: 0,
        disk: Disk::default(),
        durable_commits: BTreeSet::new(),
        databases: nodes.iter().map(|n| (*n, Database::default())).collect(),
        plans,
        reserving: BTreeMap::new(),
        clients: BTreeMap::new(),
        injected: BTreeMap::new(),
        detected: BTreeSet::new(),
        report: DbSimReport::default(),
        trace: crate::hash::Fnv1a::default(),
        config: config.clone(),
    };
    let effects = world.xa.restart(Vec::new());
    world.execute(effects);
    world.schedule(0, Event::Reconcile { incarnation: 0 });
    for i in 0..config.transactions {
        let at = world.rng.below(FAULTS_UNTIL_US / 2);
        world.schedule(at, Event::Start(i));
    }
    for _ in 0..config.coordinator_crashes {
        let at = world.rng.below(FAULTS_UNTIL_US);
        world.schedule(at, Event::Crash);
    }
    for _ in 0..config.database_restarts {
        let at = world.rng.below(FAULTS_UNTIL_US);
        let node = *world.rng.pick(&nodes);
        world.schedule(at, Event::DatabaseDown(node));
    }
    for _ in 0..config.operator_resolves {
        let at = world.rng.below(FAULTS_UNTIL_US);
        world.schedule(at, Event::HandResolve);
    }
    let horizon = FAULTS_UNTIL_US + HEAL_US;
    while let Some(Reverse((at, seq))) = world.queue.pop() {
        if at > horizon {
            break;
        }
        world.now = at;
        let event = world.events.remove(&seq).expect("every queued event is stored");
        world.trace.write_u64(at);
        world.trace.write_u64(event.kind());
        world.step(event);
        // Quiet: nothing but reconciliation's own timer is left.
        if world.now > FAULTS_UNTIL_US && world.queue.len() <= 1 && world.settled() {
            break;
        }
    }
    world.check();
    world.trace.write_u64(world.report.committed as u64);
    world.trace.write_u64(world.report.aborted as u64);
    world.report.trace_hash = world.trace.finish();
    world.report
}

impl World {
    /// Nothing left to do: no prepared branch, every client of the running coordinator answered.
    fn settled(&self) -> bool {
        self.up
            && self.databases.values().all(|db| db.rm.listed().next().is_none() && !db.down)
            && self
                .clients
                .values()
                .all(|c| c.answer.is_some() || !c.begun || c.incarnation != self.incarnation)
            && self.xa.in_flight() == 0
    }
}

/// Runs `runs` seeds from `first_seed`; returns the summed report (violations prefixed by seed).
pub fn sweep_databases(first_seed: u64, runs: u64) -> DbSimReport {
    let mut total = DbSimReport::default();
    for i in 0..runs {
        let seed = crate::rng::run_seed(first_seed, i);
        let report = simulate_databases(&DbSimConfig::faulty(seed));
        total.transactions += report.transactions;
        total.committed += report.committed;
        total.aborted += report.aborted;
        total.unanswered += report.unanswered;
        total.one_phase += report.one_phase;
        total.read_only_votes += report.read_only_votes;
        total.calls += report.calls;
        total.coordinator_restarts += report.coordinator_restarts;
        total.checkpoints += report.checkpoints;
        total.heuristics_injected += report.heuristics_injected;
        total.heuristics_detected += report.heuristics_detected;
        total.violations.extend(report.violations.into_iter().map(|v| format!("seed {seed}: {v}")));
    }
    total
}
