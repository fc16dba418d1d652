//! The saga orchestrator: many sagas, each a small state machine driven by replies and timers.
//!
//! ```text
//!  Start ─► force Started ─► call step 0 ─► success ─► force StepDone ─► call step 1 … ─► Completed
//!                              │ business failure, or the deadline
//!                              ▼
//!                     force Compensating{from} ─► compensate from-1 … 0 (retried until done) ─► Compensated
//!  TCC: all tries done ─► confirm 0 … n-1 (retried until done) ─► Completed
//! ```
//!
//! Rules, each enforced here:
//! * **Log before acting.** Every transition (started, a step done, turned around, ended) is
//!   forced before the call it leads to; replies and timers that arrive meanwhile are ignored
//!   (the call is re-issued after a restart anyway).
//! * **Idempotent calls.** Each call carries the key `{saga}:{step}:{phase}`, the same on every
//!   retry and after a restart; participants' barriers make repeats no-ops
//!   ([`crate::barrier`]).
//! * **Retryable failures and timeouts retry** with capped exponential backoff and jitter (the
//!   jitter is a hash of the call, so the core stays deterministic). A forward call retries until
//!   the saga's deadline; then the saga compensates — *including* the step in flight, whose
//!   action may have applied (if it did not, its compensation is a null compensation).
//!   Compensations and confirms retry until they succeed.
//! * **A business failure** means the step's local transaction did not apply: the saga
//!   compensates the steps before it (TCC cancels it too, as a null cancel is harmless).

use std::collections::BTreeMap;

use crate::definition::{check_saga_id, Kind, Phase, SagaDef};

/// A saga's id, chosen by whoever starts it (so a repeated start is recognised).
pub type SagaId = String;

/// What a participant answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum StepResult {
    Success,
    /// The step cannot succeed; its local transaction did not apply. Not retried.
    BusinessFailure(String),
    /// Try again later (overload, a dependency down, a network error).
    Retryable(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    Completed,
    /// Compensated (TCC: cancelled) because of `reason`.
    Compensated {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    Start {
        saga: SagaId,
        def: SagaDef,
        payload: String,
        now_us: u64,
    },
    Reply {
        saga: SagaId,
        step: usize,
        phase: Phase,
        result: StepResult,
    },
    Timer(Timer),
    Persisted(Record),
    /// Every start, with the durable records (empty at the first); `now_us` is the wall clock,
    /// against which the logged deadlines are measured.
    Restart {
        records: Vec<Record>,
        now_us: u64,
    },
    /// Several orchestrators share a saga store: take over these sagas (a dead peer's, found
    /// by the sweeper), given as their records in order.
    Adopt {
        records: Vec<Record>,
        now_us: u64,
    },
    /// Ownership of `saga` was lost to another orchestrator: forget it.
    Release {
        saga: SagaId,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Timer {
    /// A call got no reply in its step's timeout.
    CallTimeout {
        saga: SagaId,
        step: usize,
        phase: Phase,
        attempt: u32,
    },
    /// Backoff before the next attempt.
    Retry {
        saga: SagaId,
        step: usize,
        phase: Phase,
        attempt: u32,
    },
    Deadline {
        saga: SagaId,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Durability {
    Forced,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Record {
    Started {
        saga: SagaId,
        def: SagaDef,
        payload: String,
        deadline_at_us: u64,
    },
    /// A call of `step` in `phase` succeeded.
    StepDone {
        saga: SagaId,
        step: usize,
        phase: Phase,
    },
    /// Turned around: compensate steps `0..from`, last first.
    Compensating {
        saga: SagaId,
        from: usize,
        reason: String,
    },
    Ended {
        saga: SagaId,
        outcome: Outcome,
    },
}

impl Record {
    pub fn saga(&self) -> &SagaId {
        match self {
            Record::Started { saga, .. }
            | Record::StepDone { saga, .. }
            | Record::Compensating { saga, .. }
            | Record::Ended { saga, .. } => saga,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// Call `endpoint` with `payload`, the idempotency key in a header. Answer with `Reply`.
    Call {
        saga: SagaId,
        step: usize,
        phase: Phase,
        attempt: u32,
        key: String,
        endpoint: String,
        payload: String,
        /// The step's timeout: a reply after it is no longer awaited.
        timeout_us: u64,
    },
    Persist {
        record: Record,
        durability: Durability,
    },
    SetTimer {
        timer: Timer,
        after_us: u64,
    },
    Finished {
        saga: SagaId,
        outcome: Outcome,
    },
    /// The start was refused (an invalid definition); nothing was logged.
    Rejected {
        saga: SagaId,
        reason: String,
    },
}

/// Where a saga is, as `concord saga ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SagaState {
    Running,
    Compensating,
    /// TCC: every try succeeded; confirming.
    Confirming,
    Done(Outcome),
    /// Its records cannot be driven (a definition outside today's limits, a record that does
    /// not fit its saga): set aside and reported, never acted on, so the other sagas go on.
    FailedToDrive {
        reason: String,
    },
}

/// What `concord saga ls/show` shows of a saga.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SagaView {
    pub saga: SagaId,
    pub name: String,
    pub kind: Kind,
    pub state: SagaState,
    /// The call it is on: step index, phase, attempt.
    pub current: Option<(usize, Phase, u32)>,
    pub steps: Vec<String>,
    /// When it started (wall clock, microseconds since the Unix epoch); 0 when unknown (a
    /// saga set aside before its start could be read).
    pub started_at_us: u64,
}

/// The call a saga is on, and whether it waits for a reply or for its retry timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Current {
    step: usize,
    phase: Phase,
    attempt: u32,
    in_flight: bool,
}

/// Where a saga's last durable record left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Position {
    Started,
    Done(usize, Phase),
    TurnedAround { from: usize },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Instance {
    def: SagaDef,
    payload: String,
    deadline_at_us: u64,
    state: SagaState,
    position: Position,
    /// Why it turned around, and from which step.
    turned: Option<(usize, String)>,
    current: Option<Current>,
    /// A transition record is being forced: nothing moves until it is durable.
    persisting: bool,
    deadline_passed: bool,
}

/// Finished sagas remembered for status queries and repeated starts.
const FINISHED_KEPT: usize = 100_000;
/// Sagas set aside as impossible to drive, remembered for `saga ls` (the oldest forgotten).
const PARKED_KEPT: usize = 10_000;
/// Of those, how many a checkpoint keeps in the log.
const FINISHED_IN_CHECKPOINT: usize = 1_000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Orchestrator {
    sagas: BTreeMap<SagaId, Instance>,
    finished: std::collections::VecDeque<SagaId>,
    /// Sagas whose records could not be driven: their name and why ([`SagaState::FailedToDrive`]).
    parked: BTreeMap<SagaId, (String, String)>,
}

type Out = Vec<Command>;

/// A deterministic stand-in for randomness: spreads retries of different calls apart.
fn jitter_permille(saga: &str, step: usize, attempt: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in saga.bytes().chain(step.to_le_bytes()).chain(attempt.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h % 1_001
}

impl Orchestrator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn handle(&mut self, input: Input, out: &mut Out) {
        match input {
            Input::Start { saga, def, payload, now_us } => {
                self.start(saga, def, payload, now_us, out);
            }
            Input::Reply { saga, step, phase, result } => {
                self.on_reply(&saga, step, phase, result, out);
            }
            Input::Timer(timer) => self.on_timer(timer, out),
            Input::Persisted(record) => self.on_persisted(record, out),
            Input::Restart { records, now_us } => self.restart(records, now_us, out),
            Input::Adopt { records, now_us } => self.adopt(records, now_us, out),
            Input::Release { saga } => {
                // Another orchestrator owns it now: stop driving it (late replies and timers
                // find nothing).
                self.sagas.remove(&saga);
            }
        }
    }

    /// A saga's state, if this orchestrator drives it.
    pub fn state(&self, saga: &str) -> Option<&SagaState> {
        self.sagas.get(saga).map(|i| &i.state)
    }

    /// Sagas set aside because their records cannot be driven: (saga, name, why).
    pub fn parked(&self) -> impl Iterator<Item = (&SagaId, &str, &str)> {
        self.parked.iter().map(|(saga, (name, why))| (saga, name.as_str(), why.as_str()))
    }

    /// Sets a saga aside as failed-to-drive (its driver could not read one of its records):
    /// nothing more is done for it; `saga ls` shows it with `reason`.
    pub fn set_aside(&mut self, saga: SagaId, reason: String) {
        let name = self.sagas.get(&saga).map_or_else(String::new, |i| i.def.name.clone());
        self.park(saga, name, reason);
    }

    fn park(&mut self, saga: SagaId, name: String, reason: String) {
        self.sagas.remove(&saga);
        self.parked.insert(saga, (name, reason));
        while self.parked.len() > PARKED_KEPT {
            self.parked.pop_first();
        }
    }

    /// One saga, as status pages show it.
    pub fn view(&self, saga: &str) -> Option<SagaView> {
        if let Some((name, reason)) = self.parked.get(saga) {
            return Some(SagaView {
                saga: saga.to_string(),
                name: name.clone(),
                kind: Kind::Saga,
                state: SagaState::FailedToDrive { reason: reason.clone() },
                current: None,
                steps: Vec::new(),
                started_at_us: 0,
            });
        }
        self.sagas.get(saga).map(|i| i.view(saga))
    }

    /// The state `record` leads its saga to, once durable (for stores that index sagas by
    /// state); `None` for a saga this orchestrator does not drive.
    pub fn state_after(&self, record: &Record) -> Option<SagaState> {
        let mut instance = self.sagas.get(record.saga())?.clone();
        instance.apply(record);
        Some(instance.state)
    }

    /// Every saga this orchestrator remembers, by id (those it could not drive included).
    pub fn list(&self) -> Vec<SagaView> {
        let mut ids: Vec<&SagaId> = self.sagas.keys().chain(self.parked.keys()).collect();
        ids.sort();
        ids.into_iter().filter_map(|saga| self.view(saga)).collect()
    }

    /// Sagas not yet finished.
    pub fn running(&self) -> usize {
        self.sagas.values().filter(|i| !matches!(i.state, SagaState::Done(_))).count()
    }

    /// What a checkpoint keeps: each unfinished saga's start and where it is, and the most
    /// recent finished ones' start and outcome (so a status query or a repeated start still
    /// finds them after a restart). Older finished sagas stay in memory until evicted but leave
    /// the log: a checkpoint's cost follows the sagas in flight, not the history.
    pub fn live_records(&self) -> Vec<Record> {
        let recent: std::collections::BTreeSet<&SagaId> =
            self.finished.iter().rev().take(FINISHED_IN_CHECKPOINT).collect();
        let mut live = Vec::new();
        for (saga, i) in &self.sagas {
            let done = matches!(i.state, SagaState::Done(_));
            if done && !recent.contains(saga) {
                continue;
            }
            live.push(Record::Started {
                saga: saga.clone(),
                def: i.def.clone(),
                payload: i.payload.clone(),
                deadline_at_us: i.deadline_at_us,
            });
            if let SagaState::Done(outcome) = &i.state {
                live.push(Record::Ended { saga: saga.clone(), outcome: outcome.clone() });
                continue;
            }
            if let Some((from, reason)) = &i.turned {
                let (from, reason) = (*from, reason.clone());
                live.push(Record::Compensating { saga: saga.clone(), from, reason });
            }
            if let Position::Done(step, phase) = i.position {
                live.push(Record::StepDone { saga: saga.clone(), step, phase });
            }
        }
        live
    }

    fn start(&mut self, saga: SagaId, def: SagaDef, payload: String, now_us: u64, out: &mut Out) {
        if self.sagas.contains_key(&saga) {
            return; // a repeated start: the saga is already under way (or done)
        }
        if let Err(reason) = check_saga_id(&saga).and_then(|()| def.validate()) {
            out.push(Command::Rejected { saga, reason: reason.to_string() });
            return;
        }
        let deadline_at_us = now_us.saturating_add(def.deadline_us);
        let record = Record::Started {
            saga: saga.clone(),
            def: def.clone(),
            payload: payload.clone(),
            deadline_at_us,
        };
        out.push(Command::Persist { record, durability: Durability::Forced });
        out.push(Command::SetTimer {
            timer: Timer::Deadline { saga: saga.clone() },
            after_us: def.deadline_us,
        });
        let mut instance = Instance::new(def, payload, deadline_at_us);
        instance.persisting = true;
        self.sagas.insert(saga, instance);
    }

    fn on_persisted(&mut self, record: Record, out: &mut Out) {
        let saga = record.saga().clone();
        let Some(instance) = self.sagas.get_mut(&saga) else { return };
        instance.persisting = false;
        instance.apply(&record);
        if let Record::Ended { outcome, .. } = record {
            out.push(Command::Finished { saga: saga.clone(), outcome });
            self.finished.push_back(saga);
            while self.finished.len() > FINISHED_KEPT {
                if let Some(old) = self.finished.pop_front() {
                    self.sagas.remove(&old);
                }
            }
        } else {
            instance.resume(&saga, out);
        }
    }

    fn on_reply(
        &mut self,
        saga: &str,
        step: usize,
        phase: Phase,
        result: StepResult,
        out: &mut Out,
    ) {
        let Some(instance) = self.sagas.get_mut(saga) else { return };
        let Some(current) = instance.current else { return };
        if instance.persisting || current.step != step || current.phase != phase {
            return; // stale: an earlier call's late reply, or a transition is being logged
        }
        match (result, phase) {
            (StepResult::Success, _) => {
                instance.current = None;
                instance.persisting = true;
                let record = Record::StepDone { saga: saga.into(), step, phase };
                out.push(Command::Persist { record, durability: Durability::Forced });
            }
            (StepResult::BusinessFailure(reason), Phase::Action) => {
                // Its local transaction did not apply: undo what came before (TCC: cancel it too).
                let from = if instance.def.kind == Kind::Tcc { step + 1 } else { step };
                let reason = format!("step `{}` failed: {reason}", instance.def.steps[step].name);
                instance.turn_around(saga, from, reason, out);
            }
            // Compensations and confirms must succeed: anything else is retried.
            (StepResult::BusinessFailure(_) | StepResult::Retryable(_), _) => {
                if current.in_flight {
                    instance.retry_later(saga, current, out);
                }
            }
        }
    }

    fn on_timer(&mut self, timer: Timer, out: &mut Out) {
        match timer {
            Timer::CallTimeout { saga, step, phase, attempt } => {
                let Some(instance) = self.sagas.get_mut(&saga) else { return };
                let expected = Current { step, phase, attempt, in_flight: true };
                if instance.current == Some(expected) && !instance.persisting {
                    instance.retry_later(&saga, expected, out);
                }
            }
            Timer::Retry { saga, step, phase, attempt } => {
                let Some(instance) = self.sagas.get_mut(&saga) else { return };
                let expected = Current { step, phase, attempt, in_flight: false };
                if instance.current == Some(expected) && !instance.persisting {
                    if phase == Phase::Action && instance.deadline_passed {
                        instance.deadline_turn_around(&saga, step, out);
                    } else {
                        instance.call(&saga, step, phase, attempt, out);
                    }
                }
            }
            Timer::Deadline { saga } => {
                let Some(instance) = self.sagas.get_mut(&saga) else { return };
                if instance.state != SagaState::Running {
                    return;
                }
                instance.deadline_passed = true;
                // While a transition is being logged, the next move checks the flag instead.
                if let (false, Some(current)) = (instance.persisting, instance.current) {
                    instance.deadline_turn_around(&saga, current.step, out);
                }
            }
        }
    }

    fn restart(&mut self, records: Vec<Record>, now_us: u64, out: &mut Out) {
        self.sagas.clear();
        self.finished.clear();
        self.parked.clear();
        self.adopt(records, now_us, out);
    }

    /// Takes over the sagas `records` describe (their own records, in order) and resumes
    /// them; sagas this orchestrator already runs are left alone.
    fn adopt(&mut self, records: Vec<Record>, now_us: u64, out: &mut Out) {
        let mut adopted = std::collections::BTreeSet::new();
        for record in records {
            let saga = record.saga().clone();
            match &record {
                Record::Started { def, payload, deadline_at_us, .. } => {
                    if self.sagas.contains_key(&saga) || self.parked.contains_key(&saga) {
                        continue;
                    }
                    // Replay meets the same checks as a start: a record logged before a limit
                    // existed is set aside, not driven into arithmetic it was never meant for.
                    if let Err(reason) = check_saga_id(&saga).and_then(|()| def.validate()) {
                        let reason = format!("its definition is invalid: {reason}");
                        self.park(saga, def.name.clone(), reason);
                        continue;
                    }
                    let instance = Instance::new(def.clone(), payload.clone(), *deadline_at_us);
                    self.sagas.insert(saga.clone(), instance);
                    adopted.insert(saga);
                }
                _ if !adopted.contains(&saga) => {}
                _ => {
                    let Some(instance) = self.sagas.get_mut(&saga) else { continue };
                    if let Err(reason) = instance.fits(&record) {
                        let name = instance.def.name.clone();
                        adopted.remove(&saga);
                        self.park(saga, name, format!("a record does not fit it: {reason}"));
                        continue;
                    }
                    instance.apply(&record);
                    if matches!(record, Record::Ended { .. }) {
                        self.finished.push_back(saga);
                    }
                }
            }
        }
        for saga in adopted {
            let Some(instance) = self.sagas.get_mut(&saga) else { continue };
            if matches!(instance.state, SagaState::Done(_)) {
                continue;
            }
            instance.deadline_passed = instance.deadline_at_us <= now_us;
            if instance.state == SagaState::Running && !instance.deadline_passed {
                out.push(Command::SetTimer {
                    timer: Timer::Deadline { saga: saga.clone() },
                    after_us: instance.deadline_at_us - now_us,
                });
            }
            instance.resume(&saga, out);
        }
    }
}

/// A saga's view from its durable records alone (its `Started` first), without driving it:
/// what a store shows of a saga no orchestrator here holds. Records that do not fit the saga
/// (or an invalid definition) show it as failed-to-drive, as an orchestrator would set it aside.
pub fn view_of_records(records: &[Record]) -> Option<SagaView> {
    let Some(Record::Started { saga, def, payload, deadline_at_us }) = records.first() else {
        return None;
    };
    let mut instance = Instance::new(def.clone(), payload.clone(), *deadline_at_us);
    let mut problem = check_saga_id(saga)
        .and_then(|()| def.validate())
        .err()
        .map(|e| format!("its definition is invalid: {e}"));
    for record in &records[1..] {
        if problem.is_some() {
            break;
        }
        match instance.fits(record) {
            Ok(()) => instance.apply(record),
            Err(why) => problem = Some(format!("a record does not fit it: {why}")),
        }
    }
    if let Some(reason) = problem {
        instance.state = SagaState::FailedToDrive { reason };
    }
    Some(instance.view(saga))
}

impl Instance {
    fn view(&self, saga: &str) -> SagaView {
        SagaView {
            saga: saga.to_string(),
            name: self.def.name.clone(),
            kind: self.def.kind,
            state: self.state.clone(),
            current: self.current.map(|c| (c.step, c.phase, c.attempt)),
            steps: self.def.steps.iter().map(|s| s.name.clone()).collect(),
            started_at_us: self.deadline_at_us.saturating_sub(self.def.deadline_us),
        }
    }

    fn new(def: SagaDef, payload: String, deadline_at_us: u64) -> Self {
        Instance {
            def,
            payload,
            deadline_at_us,
            state: SagaState::Running,
            position: Position::Started,
            turned: None,
            current: None,
            persisting: false,
            deadline_passed: false,
        }
    }

    /// Whether a replayed record can belong to this saga: its step and phase exist.
    fn fits(&self, record: &Record) -> Result<(), String> {
        let steps = self.def.steps.len();
        match record {
            Record::StepDone { step, phase, .. } => match self.def.steps.get(*step) {
                None => Err(format!("step {step} done, of a saga of {steps} steps")),
                Some(s) if s.endpoint(*phase).is_none() => {
                    Err(format!("{phase} of step `{}`, which has none", s.name))
                }
                Some(_) => Ok(()),
            },
            Record::Compensating { from, .. } if *from > steps => {
                Err(format!("compensating from step {from}, of a saga of {steps} steps"))
            }
            Record::Started { .. } | Record::Compensating { .. } | Record::Ended { .. } => Ok(()),
        }
    }

    /// A durable record's effect on where the saga is (live, or replayed after a restart).
    fn apply(&mut self, record: &Record) {
        match record {
            Record::Started { .. } => self.position = Position::Started,
            Record::StepDone { step, phase, .. } => {
                self.position = Position::Done(*step, *phase);
                let last = *step + 1 == self.def.steps.len();
                if *phase == Phase::Confirm
                    || (self.def.kind == Kind::Tcc && last && *phase == Phase::Action)
                {
                    self.state = SagaState::Confirming;
                }
            }
            Record::Compensating { from, reason, .. } => {
                self.state = SagaState::Compensating;
                self.position = Position::TurnedAround { from: *from };
                self.turned = Some((*from, reason.clone()));
            }
            Record::Ended { outcome, .. } => self.state = SagaState::Done(outcome.clone()),
        }
    }

    /// Makes the move that follows the saga's durable position.
    fn resume(&mut self, saga: &str, out: &mut Out) {
        let steps = self.def.steps.len();
        match self.position {
            Position::Started if self.deadline_passed => self.deadline_turn_around(saga, 0, out),
            Position::Started => self.call(saga, 0, Phase::Action, 1, out),
            Position::TurnedAround { from } => self.compensate_below(saga, from, out),
            Position::Done(step, Phase::Compensation) => self.compensate_below(saga, step, out),
            Position::Done(step, Phase::Action) if self.state == SagaState::Running => {
                if step + 1 == steps {
                    self.end(saga, out); // a saga's last action: done
                } else if self.deadline_passed {
                    // Done, but too late to go on: undo it and everything before.
                    self.deadline_turn_around(saga, step + 1, out);
                } else {
                    self.call(saga, step + 1, Phase::Action, 1, out);
                }
            }
            // TCC: every try done (the last one just now), confirm in order.
            Position::Done(_, Phase::Action) => self.call(saga, 0, Phase::Confirm, 1, out),
            Position::Done(step, Phase::Confirm) if step + 1 < steps => {
                self.call(saga, step + 1, Phase::Confirm, 1, out);
            }
            Position::Done(_, Phase::Confirm) => self.end(saga, out),
        }
    }

    fn key(saga: &str, step: &str, phase: Phase) -> String {
        format!("{saga}:{step}:{}", phase.name())
    }

    fn call(&mut self, saga: &str, step: usize, phase: Phase, attempt: u32, out: &mut Out) {
        let def = &self.def.steps[step];
        let endpoint =
            def.endpoint(phase).expect("only phases the step has are called").to_string();
        out.push(Command::Call {
            saga: saga.into(),
            step,
            phase,
            attempt,
            key: Self::key(saga, &def.name, phase),
            endpoint,
            payload: self.payload.clone(),
            timeout_us: def.timeout_us,
        });
        out.push(Command::SetTimer {
            timer: Timer::CallTimeout { saga: saga.into(), step, phase, attempt },
            after_us: def.timeout_us,
        });
        self.current = Some(Current { step, phase, attempt, in_flight: true });
    }

    fn retry_later(&mut self, saga: &str, current: Current, out: &mut Out) {
        if current.phase == Phase::Action && self.deadline_passed {
            return self.deadline_turn_around(saga, current.step, out);
        }
        let next = current.attempt.saturating_add(1);
        let retry = self.def.steps[current.step].retry;
        let after_us = retry.delay_us(current.attempt, jitter_permille(saga, current.step, next));
        self.current = Some(Current { attempt: next, in_flight: false, ..current });
        let (step, phase) = (current.step, current.phase);
        out.push(Command::SetTimer {
            timer: Timer::Retry { saga: saga.into(), step, phase, attempt: next },
            after_us,
        });
    }

    /// The deadline passed with `step` the forward step in flight or retrying: its action may
    /// have applied, so it is compensated too (a null compensation if it did not).
    fn deadline_turn_around(&mut self, saga: &str, step: usize, out: &mut Out) {
        let name = self.def.steps.get(step).map_or("(all done)", |s| s.name.as_str());
        let reason = format!("the saga's deadline passed at step `{name}`");
        self.turn_around(saga, (step + 1).min(self.def.steps.len()), reason, out);
    }

    fn turn_around(&mut self, saga: &str, from: usize, reason: String, out: &mut Out) {
        self.current = None;
        self.state = SagaState::Compensating;
        self.persisting = true;
        let record = Record::Compensating { saga: saga.into(), from, reason };
        out.push(Command::Persist { record, durability: Durability::Forced });
    }

    /// Compensates the highest step below `from` that has a compensation, or ends.
    fn compensate_below(&mut self, saga: &str, from: usize, out: &mut Out) {
        match (0..from).rev().find(|&s| self.def.steps[s].compensation.is_some()) {
            Some(step) => self.call(saga, step, Phase::Compensation, 1, out),
            None => self.end(saga, out),
        }
    }

    fn end(&mut self, saga: &str, out: &mut Out) {
        self.current = None;
        self.persisting = true;
        let outcome = match &self.turned {
            Some((_, reason)) => Outcome::Compensated { reason: reason.clone() },
            None => Outcome::Completed,
        };
        let record = Record::Ended { saga: saga.into(), outcome };
        out.push(Command::Persist { record, durability: Durability::Forced });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::StepDef;

    fn def(name: &str) -> SagaDef {
        let step = |n: &str| StepDef::new(n, "http://x:1/a", Some("http://x:1/c"));
        SagaDef::saga(name, vec![step("a"), step("b")], 30_000_000)
    }

    fn started(saga: &str, def: SagaDef) -> Record {
        Record::Started { saga: saga.into(), def, payload: String::new(), deadline_at_us: 1 << 40 }
    }

    fn calls(out: &[Command]) -> Vec<&str> {
        out.iter()
            .filter_map(|c| match c {
                Command::Call { saga, .. } => Some(saga.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_poison_record_is_set_aside_at_replay_and_the_other_sagas_go_on() {
        let mut huge = def("huge");
        huge.steps[1].retry.base_us = 40_000_000_000_000_000;
        let records = vec![
            started("good", def("order")),
            started("poison", huge),
            started("stray", def("order")),
            Record::StepDone { saga: "stray".into(), step: 99, phase: Phase::Action },
            started("bad:id", def("order")),
        ];
        let mut core = Orchestrator::new();
        let mut out = Vec::new();
        core.handle(Input::Restart { records, now_us: 0 }, &mut out);
        assert_eq!(calls(&out), vec!["good"], "only the sound saga is driven");
        for saga in ["poison", "stray", "bad:id"] {
            let view = core.view(saga).unwrap();
            assert!(matches!(view.state, SagaState::FailedToDrive { .. }), "{saga}: {view:?}");
        }
        let parked: Vec<&SagaId> = core.parked().map(|(s, ..)| s).collect();
        assert_eq!(parked, ["bad:id", "poison", "stray"]);
        assert_eq!(core.list().len(), 4);
        assert_eq!(core.running(), 1);
        let mut next = Vec::new();
        let reply = StepResult::Retryable("busy".into());
        let input =
            Input::Reply { saga: "good".into(), step: 0, phase: Phase::Action, result: reply };
        core.handle(input, &mut next);
        let retry = |c: &Command| matches!(c, Command::SetTimer { timer: Timer::Retry { .. }, .. });
        assert!(next.iter().any(retry), "{next:?}");
    }

    #[test]
    fn a_start_outside_the_limits_is_rejected_naming_the_field() {
        let mut core = Orchestrator::new();
        let mut out = Vec::new();
        let mut huge = def("huge");
        huge.steps[0].retry.base_us = 40_000_000_000_000_000;
        let start =
            Input::Start { saga: "s1".into(), def: huge, payload: String::new(), now_us: 0 };
        core.handle(start, &mut out);
        let [Command::Rejected { reason, .. }] = out.as_slice() else { panic!("{out:?}") };
        assert!(reason.contains("steps[0].retry_base_ms"), "{reason}");
        out.clear();
        let start =
            Input::Start { saga: "a:b".into(), def: def("d"), payload: String::new(), now_us: 0 };
        core.handle(start, &mut out);
        assert!(matches!(out.as_slice(), [Command::Rejected { .. }]), "{out:?}");
    }

    /// Drives sagas to their ends with random replies and checks, after every durable record,
    /// that the view a store rebuilds from the records alone is the live core's (the call in
    /// flight aside, which no record holds).
    #[test]
    fn a_view_from_the_records_alone_is_the_live_view() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for run in 0..200 {
            let tcc = run % 2 == 1;
            let mut d = def("order");
            if tcc {
                d.kind = Kind::Tcc;
                for s in &mut d.steps {
                    s.confirm = Some("http://x:1/confirm".into());
                }
            }
            let saga = format!("s{run}");
            let mut core = Orchestrator::new();
            let mut records: Vec<Record> = Vec::new();
            let mut out = Vec::new();
            let start =
                Input::Start { saga: saga.clone(), def: d, payload: String::new(), now_us: 5 };
            core.handle(start, &mut out);
            for _ in 0..100 {
                let mut inputs = Vec::new();
                for command in out.drain(..) {
                    match command {
                        Command::Persist { record, .. } => inputs.push(Input::Persisted(record)),
                        Command::Call { step, phase, .. } => {
                            let result = match next(4) {
                                0 => StepResult::BusinessFailure("no".into()),
                                1 => StepResult::Retryable("busy".into()),
                                _ => StepResult::Success,
                            };
                            inputs.push(Input::Reply { saga: saga.clone(), step, phase, result });
                        }
                        Command::SetTimer { timer: timer @ Timer::Retry { .. }, .. } => {
                            inputs.push(Input::Timer(timer));
                        }
                        _ => {}
                    }
                }
                if inputs.is_empty() {
                    break;
                }
                for input in inputs {
                    if let Input::Persisted(record) = &input {
                        records.push(record.clone());
                    }
                    let persisted = matches!(input, Input::Persisted(_));
                    core.handle(input, &mut out);
                    if persisted {
                        let mut live = core.view(&saga).unwrap();
                        live.current = None;
                        assert_eq!(view_of_records(&records), Some(live), "run {run}: {records:?}");
                    }
                }
            }
            assert!(matches!(core.state(&saga), Some(SagaState::Done(_))), "run {run} ended");
        }
        let stray = vec![
            started("x", def("order")),
            Record::StepDone { saga: "x".into(), step: 7, phase: Phase::Action },
        ];
        let view = view_of_records(&stray).unwrap();
        assert!(matches!(view.state, SagaState::FailedToDrive { .. }), "{view:?}");
        assert_eq!(view_of_records(&stray[1..]), None, "no start, no view");
    }
}
