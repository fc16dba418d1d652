//! What `concord saga show` prints: each call with its attempt, time and result.
//!
//! Kept in memory per saga (bounded) and persisted beside the saga's records — in the log, or
//! in PostgreSQL's `concord_saga_calls` — so the story survives a crash and is told by any
//! orchestrator sharing the store. Each entry is written when its call goes out and again
//! when its answer comes; both writes are lazy (never awaited by the saga), so a crash loses
//! at most the last moments of a timeline, never a saga's progress, which its records hold.

use std::collections::{BTreeMap, VecDeque};

use concord_saga::Phase;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Entries kept per saga (the oldest are dropped, in memory and in the store), and sagas kept
/// in memory (a saga evicted here is still in the store).
pub(crate) const ENTRIES_PER_SAGA: usize = 200;
const SAGAS_KEPT: usize = 10_000;
/// Characters of a step's answer kept (a step may answer with a large body).
const RESULT_CHARS: usize = 300;

/// Which call an entry is: the orchestrator instance, which of its runs (its start time), and
/// the call's number in that run. Unique without coordination between orchestrators.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct CallId {
    pub(crate) instance: String,
    pub(crate) run: u64,
    pub(crate) seq: u64,
}

/// One call of a saga's step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Call {
    pub(crate) saga: String,
    pub(crate) id: CallId,
    /// When it went out (wall clock, microseconds since the Unix epoch).
    pub(crate) at_us: u64,
    pub(crate) step: String,
    pub(crate) phase: Phase,
    pub(crate) attempt: u32,
    /// What the step answered, and how long it took; `None` while the call is out (or if the
    /// orchestrator that made it stopped first).
    pub(crate) result: Option<String>,
    pub(crate) took_ms: Option<u64>,
}

/// What a change to the timelines asks of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// Write this entry (new, or now answered).
    Put(Call),
    /// Drop this entry (its saga holds more than [`ENTRIES_PER_SAGA`]).
    Drop { saga: String, id: CallId },
}

#[derive(Debug)]
pub(crate) struct Timelines {
    /// This process's calls are `CallId { instance, run, seq }` with `seq` counting up.
    instance: String,
    run: u64,
    next_seq: u64,
    sagas: BTreeMap<String, VecDeque<Call>>,
    order: VecDeque<String>,
}

fn truncated(text: String) -> String {
    match text.char_indices().nth(RESULT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

impl Timelines {
    pub(crate) fn new(instance: &str, run: u64) -> Self {
        Timelines {
            instance: instance.to_string(),
            run,
            next_seq: 0,
            sagas: BTreeMap::new(),
            order: VecDeque::new(),
        }
    }

    fn entries(&mut self, saga: &str) -> &mut VecDeque<Call> {
        if !self.sagas.contains_key(saga) {
            self.sagas.insert(saga.to_string(), VecDeque::new());
            self.order.push_back(saga.to_string());
            while self.order.len() > SAGAS_KEPT {
                if let Some(old) = self.order.pop_front() {
                    self.sagas.remove(&old);
                }
            }
        }
        self.sagas.get_mut(saga).expect("just inserted")
    }

    /// Adds `call` to its saga's timeline (in time order), dropping the oldest beyond the
    /// bound; says what the store should do.
    fn add(&mut self, call: Call, changes: &mut Vec<Change>) {
        let saga = call.saga.clone();
        let entries = self.entries(&saga);
        let at = entries.partition_point(|e| (e.at_us, &e.id) <= (call.at_us, &call.id));
        entries.insert(at, call);
        while entries.len() > ENTRIES_PER_SAGA {
            if let Some(old) = entries.pop_front() {
                changes.push(Change::Drop { saga: saga.clone(), id: old.id });
            }
        }
    }

    /// A call went out at `at_us`: its id (to name it when its answer comes) and what the store
    /// should do.
    pub(crate) fn called(
        &mut self,
        saga: &str,
        step: &str,
        phase: Phase,
        attempt: u32,
        at_us: u64,
    ) -> (CallId, Vec<Change>) {
        self.next_seq += 1;
        let id = CallId { instance: self.instance.clone(), run: self.run, seq: self.next_seq };
        let call = Call {
            saga: saga.to_string(),
            id,
            at_us,
            step: step.to_string(),
            phase,
            attempt,
            result: None,
            took_ms: None,
        };
        let id = call.id.clone();
        let mut changes = vec![Change::Put(call.clone())];
        self.add(call, &mut changes);
        (id, changes)
    }

    /// The answer to call `id` came at `now_us` (named by id: a late answer to an earlier call
    /// must not be taken for the answer to the call now out).
    pub(crate) fn answered(
        &mut self,
        saga: &str,
        id: &CallId,
        result: String,
        now_us: u64,
    ) -> Option<Change> {
        let entry = self.sagas.get_mut(saga)?.iter_mut().find(|e| &e.id == id)?;
        entry.result = Some(truncated(result));
        entry.took_ms = Some(now_us.saturating_sub(entry.at_us) / 1_000);
        Some(Change::Put(entry.clone()))
    }

    /// Takes in entries read back from the store (a restart, an adopted saga); a later write
    /// of the same call wins over an earlier one.
    pub(crate) fn load(&mut self, calls: Vec<Call>) -> Vec<Change> {
        let mut changes = Vec::new();
        for call in calls {
            let entries = self.entries(&call.saga);
            if let Some(known) = entries.iter_mut().find(|e| e.id == call.id) {
                *known = call;
                continue;
            }
            self.add(call, &mut changes);
        }
        changes
    }

    /// A saga's timeline as the store would give it back, oldest first.
    pub(crate) fn calls(&self, saga: &str) -> Vec<Call> {
        self.sagas.get(saga).map(|e| e.iter().cloned().collect()).unwrap_or_default()
    }

    /// Whether `call` was made by this run (so an unanswered one is still out).
    fn ours(&self, call: &Call) -> bool {
        call.id.run == self.run && call.id.instance == self.instance
    }

    pub(crate) fn json(&self, saga: &str) -> Value {
        let calls = self.calls(saga);
        json_of(&calls, |c| self.ours(c))
    }
}

/// A timeline as the API shows it: times relative to the first call, and the absolute time.
/// `live` says whether an unanswered call is still awaited (rather than left by an
/// orchestrator that stopped, or that another instance now drives).
pub(crate) fn json_of(calls: &[Call], live: impl Fn(&Call) -> bool) -> Value {
    let first = calls.first().map_or(0, |c| c.at_us);
    calls
        .iter()
        .map(|c| {
            let result = match &c.result {
                Some(result) => result.clone(),
                None if live(c) => "(waiting)".to_string(),
                None => {
                    format!("(no answer recorded: {} stopped or handed it over)", c.id.instance)
                }
            };
            json!({
                "at_ms": c.at_us.saturating_sub(first) / 1_000,
                "at_unix_ms": c.at_us / 1_000,
                "step": c.step, "phase": c.phase.name(), "attempt": c.attempt,
                "result": result, "took_ms": c.took_ms, "instance": c.id.instance,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_is_bounded_and_its_dropped_entries_leave_the_store_too() {
        let mut timelines = Timelines::new("a", 1);
        let mut changes = Vec::new();
        for attempt in 1..=u32::try_from(ENTRIES_PER_SAGA + 3).unwrap() {
            let (id, called) = timelines.called("s", "pay", Phase::Action, attempt, attempt.into());
            changes.extend(called);
            changes.extend(timelines.answered("s", &id, "503".into(), 9_999));
        }
        assert_eq!(timelines.calls("s").len(), ENTRIES_PER_SAGA);
        let drops: Vec<u64> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Drop { id, .. } => Some(id.seq),
                Change::Put(_) => None,
            })
            .collect();
        assert_eq!(drops, [1, 2, 3], "the three oldest calls are dropped from the store");
        assert_eq!(timelines.calls("s")[0].attempt, 4);
    }

    #[test]
    fn loaded_entries_merge_in_time_order_and_an_answer_replaces_its_call() {
        let mut before = Timelines::new("a", 1);
        let (id, _) = before.called("s", "pay", Phase::Action, 1, 10);
        let out = before.calls("s");
        before.answered("s", &id, "200".into(), 5_010);
        let answered = before.calls("s");
        let mut after = Timelines::new("b", 2);
        after.called("s", "pay", Phase::Action, 1, 20);
        assert!(after.load(out).is_empty());
        assert!(after.load(answered).is_empty());
        let calls = after.calls("s");
        assert_eq!(calls.len(), 2);
        assert_eq!((calls[0].id.instance.as_str(), calls[0].result.as_deref()), ("a", Some("200")));
        assert_eq!(calls[0].took_ms, Some(5));
        let shown = after.json("s");
        assert_eq!(shown[1]["result"], "(waiting)", "b's own call is still out");
        // a's unanswered call is not shown as awaited by b
        let mut other = Timelines::new("c", 3);
        other.load(vec![calls[1].clone()]);
        assert!(other.json("s")[0]["result"].as_str().unwrap().starts_with("(no answer recorded"));
        // an answer names its call: a call this timeline does not hold takes none
        let stranger = CallId { instance: "c".into(), run: 3, seq: 99 };
        assert!(other.answered("s", &stranger, "200".into(), 30).is_none());
    }

    /// Step `pay` timed out and the saga moved on to `ship`; `pay`'s answer arrives late.
    #[test]
    fn a_late_answer_goes_to_its_own_call_not_to_the_call_now_out() {
        let mut timelines = Timelines::new("a", 1);
        let (pay, _) = timelines.called("s", "pay", Phase::Action, 1, 0);
        let (ship, _) = timelines.called("s", "ship", Phase::Action, 1, 1_000);
        timelines.answered("s", &pay, "200 (late)".into(), 9_000);
        let calls = timelines.calls("s");
        assert_eq!(
            (calls[0].step.as_str(), calls[0].result.as_deref()),
            ("pay", Some("200 (late)"))
        );
        assert_eq!((calls[1].step.as_str(), calls[1].result.as_deref()), ("ship", None));
        timelines.answered("s", &ship, "200".into(), 9_500);
        assert_eq!(timelines.calls("s")[1].result.as_deref(), Some("200"));
    }

    #[test]
    fn a_long_answer_is_cut() {
        let mut timelines = Timelines::new("a", 1);
        let (id, _) = timelines.called("s", "pay", Phase::Action, 1, 0);
        let change = timelines.answered("s", &id, "é".repeat(10_000), 0);
        let Some(Change::Put(call)) = change else { panic!("{change:?}") };
        assert_eq!(call.result.unwrap().chars().count(), RESULT_CHARS + 1);
    }
}
