//! Sagas and TCC under faults: the real orchestrator core ([`concord_saga::Orchestrator`])
//! against simulated services that apply the idempotency barrier ([`concord_saga::Barrier`]).
//!
//! Service `i` runs step `i` of every saga. Calls and replies are delayed, lost and duplicated;
//! services fail retryably at random, and one step of some sagas fails for good (a business
//! failure: a declined payment); services go down for a while; the orchestrator crashes,
//! losing records not yet durable (on the protocol world's disk, `disk.rs`: the last write may
//! be torn), and restarts from its log (half the time from a checkpoint of it: the live records
//! only). Then the faults stop and the
//! world runs until every saga is finished. Checked, per saga:
//! * it finished (completed or compensated) — none is stuck;
//! * completed ⇒ every step's action applied once, no compensation (TCC: every step confirmed);
//! * compensated ⇒ every step's net effect is zero, and no TCC step was confirmed;
//! * no call was applied twice, and no action applied after its compensation (hanging);
//! * compensations were applied last step first.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::hash::Hasher as _;

use concord_saga::{
    Barrier, BarrierVerdict, Command, Input, Kind, Orchestrator, Outcome, Phase, Record, SagaDef,
    SagaState, StepDef, StepResult, Timer,
};

use concord_types::codec::{DecodeError, Encode, Reader, Writer};

use crate::disk::Disk;
use crate::rng::Rng;

/// The orchestrator's record on the simulated disk, in the form its service logs it (JSON).
#[derive(Clone, Debug)]
struct Logged(Record);

impl Encode for Logged {
    fn encode(&self, w: &mut Writer<'_>) {
        w.bytes(&serde_json::to_vec(&self.0).expect("records serialize"));
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let bytes = r.bytes()?;
        serde_json::from_slice(bytes)
            .map(Logged)
            .map_err(|_| DecodeError::UnknownTag { what: "saga record", tag: 0 })
    }
}

#[derive(Clone, Debug)]
pub struct SagaSimConfig {
    pub seed: u64,
    pub kind: Kind,
    pub sagas: usize,
    pub steps: usize,
    /// Probability that a saga has a step that fails for good.
    pub business_failure: f64,
    /// Per call: the service answers "retry later" without applying anything.
    pub retryable: f64,
    /// Per message (call or reply).
    pub loss: f64,
    pub duplication: f64,
    pub orchestrator_crashes: u32,
    pub service_outages: u32,
    /// The services apply the barrier; off, to show what it prevents.
    pub barrier: bool,
    /// Each saga's deadline.
    pub deadline_us: u64,
}

impl SagaSimConfig {
    pub fn faulty(seed: u64, kind: Kind) -> Self {
        SagaSimConfig {
            seed,
            kind,
            sagas: 20,
            steps: 3,
            business_failure: 0.3,
            retryable: 0.1,
            loss: 0.1,
            duplication: 0.2,
            orchestrator_crashes: 3,
            service_outages: 3,
            barrier: true,
            deadline_us: 600_000,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct SagaReport {
    pub completed: usize,
    pub compensated: usize,
    pub calls: u64,
    pub duplicates_absorbed: u64,
    pub null_compensations: u64,
    pub hanging_refused: u64,
    pub orchestrator_restarts: u32,
    /// Restarts from a checkpoint (live records only) instead of the whole log.
    pub checkpoints: u32,
    pub violations: Vec<String>,
    /// FNV-1a over every event's time and kind, and the outcome counts: equal for equal seeds.
    pub trace_hash: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Start(usize),
    Call {
        saga: String,
        step: usize,
        phase: Phase,
    },
    Reply {
        saga: String,
        step: usize,
        phase: Phase,
        result: ResultTag,
    },
    Timer {
        incarnation: u32,
        timer: TimerKey,
    },
    /// The sync in flight on the orchestrator's disk completes.
    Durable {
        incarnation: u32,
    },
    Crash,
    Recover,
    ServiceDown(usize),
    ServiceUp(usize),
}

/// `StepResult` and `Timer` without `Ord`, as ordered keys for the queue.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ResultTag {
    Success,
    Business(String),
    Retryable,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TimerKey(String);

/// What service `i` did for one saga's step.
#[derive(Clone, Debug, Default)]
struct StepEffects {
    net: i64,
    applied: BTreeMap<Phase, u32>,
    action_after_compensation: bool,
}

struct World {
    config: SagaSimConfig,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    core: Orchestrator,
    up: bool,
    incarnation: u32,
    /// Timers by key, since `Timer` is not `Ord`.
    timers: BTreeMap<String, Timer>,
    disk: Disk<Logged>,
    /// Sagas whose Started record is durable: their clients stop repeating the start.
    started: std::collections::BTreeSet<String>,
    barriers: Vec<Barrier<String>>,
    effects: BTreeMap<(String, usize), StepEffects>,
    /// Per saga, the compensations in the order services applied them.
    compensation_order: BTreeMap<String, Vec<usize>>,
    services_down: Vec<bool>,
    /// Which step of a saga fails for good, if any.
    fails_at: BTreeMap<String, usize>,
    faults_until: u64,
    report: SagaReport,
    trace: crate::hash::Fnv1a,
}

fn saga_name(i: usize) -> String {
    format!("saga-{i:03}")
}

impl World {
    fn schedule(&mut self, after_us: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + after_us, self.seq, event)));
    }

    /// Starts a group-commit sync if a forced record waits and none is in flight.
    fn start_sync(&mut self) {
        if self.up && self.disk.start_sync(true) {
            let after = self.rng.range(50, 500);
            self.schedule(after, Event::Durable { incarnation: self.incarnation });
        }
    }

    fn note_durable(&mut self, record: &Record) {
        if let Record::Started { saga, .. } = record {
            self.started.insert(saga.clone());
        }
    }

    fn faulty(&self) -> bool {
        self.now < self.faults_until
    }

    fn definition(&self) -> SagaDef {
        let steps = (0..self.config.steps)
            .map(|i| {
                let mut step = StepDef::new(
                    &format!("s{i}"),
                    &format!("svc{i}/do"),
                    Some(&format!("svc{i}/undo")),
                );
                step.timeout_us = 100_000;
                step.retry.base_us = 20_000;
                step.retry.max_us = 200_000;
                if self.config.kind == Kind::Tcc {
                    step.confirm = Some(format!("svc{i}/confirm"));
                }
                step
            })
            .collect();
        SagaDef { kind: self.config.kind, ..SagaDef::saga("sim", steps, self.config.deadline_us) }
    }

    fn feed(&mut self, input: Input) {
        if !self.up {
            return;
        }
        let mut out = Vec::new();
        self.core.handle(input, &mut out);
        for command in out {
            self.carry_out(command);
        }
    }

    fn carry_out(&mut self, command: Command) {
        match command {
            Command::Call { saga, step, phase, .. } => {
                self.report.calls += 1;
                self.send(Event::Call { saga, step, phase });
            }
            Command::Persist { record, durability: concord_saga::Durability::Forced } => {
                self.disk.append(Logged(record), concord_commit::Durability::Forced, 0);
                self.start_sync();
            }
            Command::SetTimer { timer, after_us } => {
                let key = format!("{timer:?}");
                self.timers.insert(key.clone(), timer);
                let event = Event::Timer { incarnation: self.incarnation, timer: TimerKey(key) };
                self.schedule(after_us, event);
            }
            Command::Finished { .. } => {}
            Command::Rejected { saga, reason } => {
                self.report.violations.push(format!("{saga} rejected: {reason}"));
            }
        }
    }

    /// A message over the network: maybe lost, maybe twice, always delayed.
    fn send(&mut self, event: Event) {
        if self.faulty() && self.rng.chance(self.config.loss) {
            return;
        }
        let max_delay = if self.faulty() { 50_000 } else { 2_000 };
        if self.faulty() && self.rng.chance(self.config.duplication) {
            let delay = self.rng.range(100, max_delay);
            self.schedule(delay, event.clone());
        }
        let delay = self.rng.range(100, max_delay);
        self.schedule(delay, event);
    }

    /// Service `step` handles a call (its barrier and effect in one local transaction).
    fn serve(&mut self, saga: String, step: usize, phase: Phase) {
        if self.services_down[step] {
            return;
        }
        if self.faulty() && self.rng.chance(self.config.retryable) {
            return self.send(Event::Reply { saga, step, phase, result: ResultTag::Retryable });
        }
        let declined = phase == Phase::Action && self.fails_at.get(&saga) == Some(&step);
        if declined {
            // The local transaction rolls back, barrier mark included: nothing happened.
            let result = ResultTag::Business("declined".into());
            return self.send(Event::Reply { saga, step, phase, result });
        }
        let verdict = if self.config.barrier {
            self.barriers[step].decide(saga.clone(), phase)
        } else {
            BarrierVerdict::Apply
        };
        let effects = self.effects.entry((saga.clone(), step)).or_default();
        let result = match verdict {
            BarrierVerdict::Apply => {
                *effects.applied.entry(phase).or_default() += 1;
                match phase {
                    Phase::Action => {
                        effects.net += 1;
                        if effects.applied.contains_key(&Phase::Compensation) {
                            effects.action_after_compensation = true;
                        }
                    }
                    Phase::Compensation => {
                        effects.net -= 1;
                        self.compensation_order.entry(saga.clone()).or_default().push(step);
                    }
                    Phase::Confirm => {}
                }
                ResultTag::Success
            }
            BarrierVerdict::Duplicate => {
                self.report.duplicates_absorbed += 1;
                ResultTag::Success
            }
            BarrierVerdict::NullCompensation => {
                self.report.null_compensations += 1;
                self.compensation_order.entry(saga.clone()).or_default().push(step);
                ResultTag::Success
            }
            BarrierVerdict::Hanging => {
                self.report.hanging_refused += 1;
                ResultTag::Business("refused: compensated already".into())
            }
            BarrierVerdict::Refused => ResultTag::Business("refused: confirm without try".into()),
        };
        self.send(Event::Reply { saga, step, phase, result });
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::Start(i) => {
                // A client's start is acknowledged once its Started record is durable; until
                // then the client repeats it (the orchestrator ignores a start it knows).
                let saga = saga_name(i);
                if self.started.contains(&saga) {
                    return;
                }
                let (def, payload) = (self.definition(), format!("{{\"n\":{i}}}"));
                self.feed(Input::Start { saga, def, payload, now_us: self.now });
                self.schedule(200_000, Event::Start(i));
            }
            Event::Call { saga, step, phase } => self.serve(saga, step, phase),
            Event::Reply { saga, step, phase, result } => {
                let result = match result {
                    ResultTag::Success => StepResult::Success,
                    ResultTag::Business(reason) => StepResult::BusinessFailure(reason),
                    ResultTag::Retryable => StepResult::Retryable("busy".into()),
                };
                self.feed(Input::Reply { saga, step, phase, result });
            }
            Event::Timer { incarnation, timer } => {
                if incarnation == self.incarnation {
                    if let Some(timer) = self.timers.remove(&timer.0) {
                        self.feed(Input::Timer(timer));
                    }
                }
            }
            Event::Durable { incarnation } => {
                if incarnation == self.incarnation && self.up {
                    for (Logged(record), durability, _) in self.disk.complete_sync() {
                        self.note_durable(&record);
                        if durability == concord_commit::Durability::Forced {
                            self.feed(Input::Persisted(record));
                        }
                    }
                    self.start_sync();
                }
            }
            Event::Crash => {
                if !self.up {
                    return;
                }
                self.up = false;
                self.incarnation += 1; // unsynced records and armed timers are lost
                self.disk.crash(&mut self.rng, true);
                self.timers.clear();
                let after = self.rng.range(10_000, 300_000);
                self.schedule(after, Event::Recover);
            }
            Event::Recover => {
                self.up = true;
                self.incarnation += 1;
                let mut records: Vec<Record> =
                    self.disk.recover().into_iter().map(|Logged(r)| r).collect();
                if self.rng.chance(0.5) {
                    // The log was checkpointed before the crash: only the live records remain.
                    let mut scratch = Orchestrator::new();
                    let all = std::mem::take(&mut records);
                    scratch
                        .handle(Input::Restart { records: all, now_us: self.now }, &mut Vec::new());
                    records = scratch.live_records();
                    let live: Vec<Logged> = records.iter().cloned().map(Logged).collect();
                    self.disk.rewrite(&live);
                    self.report.checkpoints += 1;
                }
                self.started.clear();
                for record in &records {
                    self.note_durable(record);
                }
                self.core = Orchestrator::new();
                self.report.orchestrator_restarts += 1;
                self.feed(Input::Restart { records, now_us: self.now });
            }
            Event::ServiceDown(i) => {
                self.services_down[i] = true;
                let after = self.rng.range(10_000, 400_000);
                self.schedule(after, Event::ServiceUp(i));
            }
            Event::ServiceUp(i) => self.services_down[i] = false,
        }
    }

    fn check(&mut self) {
        let kind = self.config.kind;
        for i in 0..self.config.sagas {
            let saga = saga_name(i);
            let outcome = match self.core.state(&saga) {
                Some(SagaState::Done(outcome)) => outcome.clone(),
                other => {
                    self.report.violations.push(format!("{saga} did not finish: {other:?}"));
                    continue;
                }
            };
            let mut fail = |what: String| self.report.violations.push(format!("{saga}: {what}"));
            for step in 0..self.config.steps {
                let e = self.effects.get(&(saga.clone(), step)).cloned().unwrap_or_default();
                for (phase, n) in &e.applied {
                    if *n > 1 {
                        fail(format!("step {step} {phase} applied {n} times"));
                    }
                }
                if e.action_after_compensation {
                    fail(format!("step {step}: its action applied after its compensation"));
                }
                let confirmed = e.applied.contains_key(&Phase::Confirm);
                match &outcome {
                    Outcome::Completed => {
                        if e.net != 1 {
                            fail(format!("completed, but step {step}'s net effect is {}", e.net));
                        }
                        if kind == Kind::Tcc && !confirmed {
                            fail(format!("completed, but step {step} was never confirmed"));
                        }
                    }
                    Outcome::Compensated { .. } => {
                        if e.net != 0 {
                            fail(format!("compensated, but step {step}'s net effect is {}", e.net));
                        }
                        if confirmed {
                            fail(format!("compensated, but step {step} was confirmed"));
                        }
                    }
                }
            }
            let order = self.compensation_order.get(&saga).cloned().unwrap_or_default();
            if order.windows(2).any(|w| w[0] <= w[1]) {
                self.report.violations.push(format!("{saga}: compensations in order {order:?}"));
            }
            match outcome {
                Outcome::Completed => self.report.completed += 1,
                Outcome::Compensated { .. } => self.report.compensated += 1,
            }
        }
    }
}

/// One seeded run; deterministic in `config`.
pub fn simulate_sagas(config: &SagaSimConfig) -> SagaReport {
    let mut rng = Rng::new(config.seed);
    let mut fails_at = BTreeMap::new();
    for i in 0..config.sagas {
        if rng.chance(config.business_failure) {
            let step = usize::try_from(rng.below(config.steps as u64)).expect("few steps");
            fails_at.insert(saga_name(i), step);
        }
    }
    let faults_until = 3_000_000;
    let mut world = World {
        rng,
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        core: Orchestrator::new(),
        up: true,
        incarnation: 0,
        timers: BTreeMap::new(),
        disk: Disk::default(),
        started: std::collections::BTreeSet::new(),
        barriers: (0..config.steps).map(|_| Barrier::default()).collect(),
        effects: BTreeMap::new(),
        compensation_order: BTreeMap::new(),
        services_down: vec![false; config.steps],
        fails_at,
        faults_until,
        report: SagaReport::default(),
        trace: crate::hash::Fnv1a::default(),
        config: config.clone(),
    };
    world.feed(Input::Restart { records: Vec::new(), now_us: 0 });
    for i in 0..config.sagas {
        let at = world.rng.below(faults_until / 2);
        world.schedule(at, Event::Start(i));
    }
    for _ in 0..config.orchestrator_crashes {
        let at = world.rng.below(faults_until);
        world.schedule(at, Event::Crash);
    }
    for _ in 0..config.service_outages {
        let (at, service) = (world.rng.below(faults_until), world.rng.below(config.steps as u64));
        world.schedule(at, Event::ServiceDown(usize::try_from(service).expect("few steps")));
    }
    // After the faults stop, every saga must finish within this much virtual time.
    let horizon = faults_until + 60_000_000;
    while let Some(Reverse((at, _, event))) = world.queue.pop() {
        if at > horizon {
            break;
        }
        world.now = at;
        world.trace.write_u64(at);
        std::hash::Hash::hash(&std::mem::discriminant(&event), &mut world.trace);
        world.step(event);
    }
    world.check();
    world.trace.write_u64(world.report.completed as u64);
    world.trace.write_u64(world.report.compensated as u64);
    world.report.trace_hash = world.trace.finish();
    world.report
}
