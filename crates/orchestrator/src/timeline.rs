//! What `concord saga show` prints: each call with its attempt, time and result. Kept in
//! memory per saga (bounded); after a restart a saga's timeline starts again from there.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use concord_saga::Phase;
use serde_json::{json, Value};

/// Entries kept per saga, and sagas kept.
const ENTRIES_PER_SAGA: usize = 200;
const SAGAS_KEPT: usize = 10_000;

#[derive(Debug)]
struct Entry {
    at: Instant,
    step: String,
    phase: Phase,
    attempt: u32,
    /// `None` while the call is out.
    result: Option<(String, u128)>,
}

#[derive(Debug, Default)]
pub(crate) struct Timelines {
    sagas: BTreeMap<String, (Instant, VecDeque<Entry>)>,
    order: VecDeque<String>,
}

impl Timelines {
    pub(crate) fn called(&mut self, saga: &str, step: &str, phase: Phase, attempt: u32) {
        if !self.sagas.contains_key(saga) {
            self.sagas.insert(saga.to_string(), (Instant::now(), VecDeque::new()));
            self.order.push_back(saga.to_string());
            while self.order.len() > SAGAS_KEPT {
                if let Some(old) = self.order.pop_front() {
                    self.sagas.remove(&old);
                }
            }
        }
        let (_, entries) = self.sagas.get_mut(saga).expect("just inserted");
        if entries.len() >= ENTRIES_PER_SAGA {
            entries.pop_front();
        }
        let (step, at) = (step.to_string(), Instant::now());
        entries.push_back(Entry { at, step, phase, attempt, result: None });
    }

    pub(crate) fn answered(&mut self, saga: &str, phase: Phase, attempt: u32, result: String) {
        let Some((_, entries)) = self.sagas.get_mut(saga) else { return };
        if let Some(entry) = entries
            .iter_mut()
            .rev()
            .find(|e| e.phase == phase && e.attempt == attempt && e.result.is_none())
        {
            entry.result = Some((result, entry.at.elapsed().as_millis()));
        }
    }

    pub(crate) fn json(&self, saga: &str) -> Value {
        let Some((started, entries)) = self.sagas.get(saga) else { return json!([]) };
        entries
            .iter()
            .map(|e| {
                let (result, took) =
                    e.result.clone().map_or(("(waiting)".into(), None), |(r, ms)| (r, Some(ms)));
                json!({
                    "at_ms": e.at.duration_since(*started).as_millis(),
                    "step": e.step, "phase": e.phase.name(), "attempt": e.attempt,
                    "result": result, "took_ms": took,
                })
            })
            .collect()
    }
}
