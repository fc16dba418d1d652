//! The JSON API (`concord saga start|ls|show` and applications).
//!
//! ```text
//!  POST /v1/sagas            StartRequest → 202 {"id", "state": "running"} once the start is durable
//!                            ("wait": true → 200 with the outcome once it is finished)
//!  GET  /v1/sagas?…         {"sagas": [view…], "next": cursor|null}, newest first, paged
//!                            state=S[,S…] running older_than=D newer_than=D instance=I
//!                            limit=N (1..=1000, default 100) after=CURSOR
//!  GET  /v1/sagas/ID         view + "timeline": each call with attempt, time, result
//!  GET  /health
//! ```
//!
//! With a shared PostgreSQL store, listings and views come from the store: every saga any
//! orchestrator started, finished ones included, whichever instance is asked.

use concord_saga::{Kind, Outcome, Retry, SagaDef, SagaState, SagaView, StepDef};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A saga to start. Times in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Chosen by the caller so a repeated start is recognised (generated when absent).
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default = "saga_kind")]
    pub kind: Kind,
    pub steps: Vec<StepRequest>,
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// Sent as the body of every step call.
    #[serde(default)]
    pub payload: Value,
    /// Answer when the saga has finished (bounded by its deadline and compensations).
    #[serde(default)]
    pub wait: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepRequest {
    pub name: String,
    /// `http://host:port/path`, called with POST.
    pub action: String,
    #[serde(default)]
    pub compensation: Option<String>,
    #[serde(default)]
    pub confirm: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
}

fn saga_kind() -> Kind {
    Kind::Saga
}
fn default_deadline_ms() -> u64 {
    30_000
}
fn default_timeout_ms() -> u64 {
    5_000
}
fn default_retry_base_ms() -> u64 {
    100
}
fn default_retry_max_ms() -> u64 {
    5_000
}

impl StartRequest {
    /// The core's definition, every field checked against its range (docs/sagas.md,
    /// "Limits") and every endpoint to be a callable `http://host:port/path`; the error names
    /// the field. Milliseconds become microseconds without overflow: a value too large to
    /// convert is out of range anyway, and saturating keeps it so.
    pub fn definition(&self) -> Result<SagaDef, String> {
        if let Some(id) = &self.id {
            concord_saga::definition::check_saga_id(id).map_err(|e| e.to_string())?;
        }
        let steps = self
            .steps
            .iter()
            .map(|s| {
                for endpoint in
                    std::iter::once(&s.action).chain(s.compensation.iter()).chain(s.confirm.iter())
                {
                    crate::driver::parse_endpoint(endpoint)
                        .map_err(|e| format!("step `{}`: {e}", s.name))?;
                }
                Ok(StepDef {
                    name: s.name.clone(),
                    action: s.action.clone(),
                    compensation: s.compensation.clone(),
                    confirm: s.confirm.clone(),
                    timeout_us: s.timeout_ms.saturating_mul(1_000),
                    retry: Retry {
                        base_us: s.retry_base_ms.saturating_mul(1_000),
                        max_us: s.retry_max_ms.saturating_mul(1_000),
                    },
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let def = SagaDef {
            name: self.name.clone(),
            kind: self.kind,
            steps,
            deadline_us: self.deadline_ms.saturating_mul(1_000),
        };
        def.validate().map_err(|e| e.to_string())?;
        Ok(def)
    }
}

pub(crate) fn state_json(state: &SagaState) -> (&'static str, Option<String>) {
    match state {
        SagaState::Running => ("running", None),
        SagaState::Compensating => ("compensating", None),
        SagaState::Confirming => ("confirming", None),
        SagaState::Done(Outcome::Completed) => ("completed", None),
        SagaState::Done(Outcome::Compensated { reason }) => ("compensated", Some(reason.clone())),
        SagaState::FailedToDrive { reason } => ("failed-to-drive", Some(reason.clone())),
    }
}

pub(crate) fn view_json(view: &SagaView) -> Value {
    let (state, reason) = state_json(&view.state);
    let current = view.current.map(|(step, phase, attempt)| {
        json!({ "step": view.steps[step], "phase": phase.name(), "attempt": attempt })
    });
    let started = (view.started_at_us > 0).then_some(view.started_at_us / 1_000);
    json!({
        "id": view.saga, "name": view.name,
        "kind": match view.kind { Kind::Saga => "saga", Kind::Tcc => "tcc" },
        "state": state, "reason": reason, "current": current, "steps": view.steps,
        "started_unix_ms": started,
    })
}

/// The states a listing can ask for (`unfinished` and `finished` are groups of them).
const STATES: [&str; 6] =
    ["running", "compensating", "confirming", "completed", "compensated", "failed-to-drive"];
/// Sagas per page of a listing.
pub(crate) const DEFAULT_PAGE: usize = 100;
pub(crate) const MAX_PAGE: usize = 1_000;

/// What `GET /v1/sagas` asks for: filters and a page. Every parameter is checked; an unknown
/// one is refused, naming it (a misspelt filter must not silently list everything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listing {
    /// Only these states (any state when `None`).
    pub(crate) states: Option<Vec<&'static str>>,
    /// Started before this instant / at or after it (microseconds since the Unix epoch).
    pub(crate) started_before_us: Option<u64>,
    pub(crate) started_since_us: Option<u64>,
    /// Held by this orchestrator instance (a shared store only).
    pub(crate) instance: Option<String>,
    pub(crate) limit: usize,
    /// Continue after this (start, id): the `next` of the page before.
    pub(crate) after: Option<(u64, String)>,
}

/// `90s`, `15m`, `2h`, `7d`, or a number of milliseconds → microseconds.
fn duration_us(name: &str, text: &str) -> Result<u64, String> {
    let (digits, unit_us) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (text, 1_000),
        Some((at, _)) => {
            let unit = match &text[at..] {
                "ms" => 1_000,
                "s" => 1_000_000,
                "m" => 60_000_000,
                "h" => 3_600_000_000,
                "d" => 86_400_000_000,
                other => {
                    return Err(format!("{name}: unknown unit `{other}` (use ms, s, m, h or d)"))
                }
            };
            (&text[..at], unit)
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{name}: `{text}` is not a duration such as 90s, 15m, 2h or 7d"))?;
    n.checked_mul(unit_us).ok_or_else(|| format!("{name}: `{text}` is too long"))
}

impl Listing {
    /// Reads the query of `target` (`/v1/sagas?state=running&limit=50`), `now_us` being the
    /// wall clock ages are measured from.
    pub(crate) fn parse(target: &str, now_us: u64) -> Result<Self, String> {
        let mut listing = Listing {
            states: None,
            started_before_us: None,
            started_since_us: None,
            instance: None,
            limit: DEFAULT_PAGE,
            after: None,
        };
        let query = target.split_once('?').map_or("", |(_, q)| q);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let shown: String = value.chars().take(40).collect();
            match name {
                "running" if matches!(value, "" | "true") => {
                    listing.states =
                        Some(vec!["running", "compensating", "confirming", "failed-to-drive"]);
                }
                "state" => {
                    let mut states = Vec::new();
                    for want in value.split(',') {
                        match want {
                            "unfinished" => states.extend([
                                "running",
                                "compensating",
                                "confirming",
                                "failed-to-drive",
                            ]),
                            "finished" => states.extend(["completed", "compensated"]),
                            _ => states.push(STATES.iter().find(|s| **s == want).ok_or_else(
                                || {
                                    format!(
                                        "state: `{shown}` is not one of {}, unfinished, finished",
                                        STATES.join(", ")
                                    )
                                },
                            )?),
                        }
                    }
                    listing.states = Some(states);
                }
                "older_than" => {
                    listing.started_before_us =
                        Some(now_us.saturating_sub(duration_us(name, value)?));
                }
                "newer_than" => {
                    listing.started_since_us =
                        Some(now_us.saturating_sub(duration_us(name, value)?));
                }
                "instance" => {
                    concord_saga::definition::check_saga_id(value)
                        .map_err(|_| format!("instance: `{shown}` is not an instance name"))?;
                    listing.instance = Some(value.to_string());
                }
                "limit" => {
                    listing.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| format!("limit: `{shown}` is not 1 to {MAX_PAGE}"))?;
                }
                "after" => {
                    let cursor = value.split_once('.').and_then(|(at, id)| {
                        concord_saga::definition::check_saga_id(id).ok()?;
                        Some((at.parse().ok()?, id.to_string()))
                    });
                    listing.after = Some(cursor.ok_or_else(|| {
                        format!(
                            "after: `{shown}` is not a cursor (give the `next` of the page before)"
                        )
                    })?);
                }
                _ => {
                    let shown: String = name.chars().take(40).collect();
                    return Err(format!(
                        "unknown parameter `{shown}` (state, running, older_than, newer_than, instance, limit, after)"
                    ));
                }
            }
        }
        Ok(listing)
    }

    /// Whether a saga of `state`, started at `started_us`, held by `instance`, is asked for
    /// (the page's position aside).
    pub(crate) fn wants(&self, state: &str, started_us: u64, instance: &str) -> bool {
        self.states.as_ref().is_none_or(|s| s.contains(&state))
            && self.started_before_us.is_none_or(|t| started_us < t)
            && self.started_since_us.is_none_or(|t| started_us >= t)
            && self.instance.as_deref().is_none_or(|i| i == instance)
    }

    /// Whether (`started_us`, `id`) comes after the cursor, newest first.
    pub(crate) fn past_cursor(&self, started_us: u64, id: &str) -> bool {
        self.after.as_ref().is_none_or(|(at, after)| (started_us, id) < (*at, after.as_str()))
    }
}

/// The cursor that continues a listing after this saga.
pub(crate) fn cursor(started_us: u64, id: &str) -> String {
    format!("{started_us}.{id}")
}

/// One page of `views` (every saga an orchestrator holds in memory): newest first.
pub(crate) fn page(listing: &Listing, views: Vec<SagaView>, instance: &str) -> Value {
    let mut chosen: Vec<SagaView> = views
        .into_iter()
        .filter(|v| {
            listing.wants(state_json(&v.state).0, v.started_at_us, instance)
                && listing.past_cursor(v.started_at_us, &v.saga)
        })
        .collect();
    chosen.sort_by(|a, b| (b.started_at_us, &b.saga).cmp(&(a.started_at_us, &a.saga)));
    let more = chosen.len() > listing.limit;
    chosen.truncate(listing.limit);
    let next = more.then(|| chosen.last().map(|v| cursor(v.started_at_us, &v.saga))).flatten();
    let sagas: Vec<Value> = chosen.iter().map(view_json).collect();
    json!({ "sagas": sagas, "next": next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_parameters_are_checked_and_named() {
        let now = 10_000_000_000;
        let l =
            Listing::parse("/v1/sagas?state=running,finished&older_than=15m&limit=5", now).unwrap();
        assert_eq!(l.states.unwrap(), ["running", "completed", "compensated"]);
        assert_eq!(l.started_before_us, Some(now - 900_000_000));
        assert_eq!(l.limit, 5);
        let l =
            Listing::parse("/v1/sagas?newer_than=250&after=17.order-1&instance=o-2", now).unwrap();
        assert_eq!(l.started_since_us, Some(now - 250_000));
        assert_eq!(l.after, Some((17, "order-1".to_string())));
        assert_eq!(l.instance.as_deref(), Some("o-2"));
        for (query, names) in [
            ("state=runing", "state"),
            ("older_than=5y", "older_than"),
            ("older_than=99999999999999999999", "older_than"),
            ("newer_than=184467440737095516s", "newer_than"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("after=zzz", "after"),
            ("after=12.a:b", "after"),
            ("instance=a/b", "instance"),
            ("runing", "runing"),
        ] {
            let e = Listing::parse(&format!("/v1/sagas?{query}"), now).unwrap_err();
            assert!(e.contains(names), "{query}: {e}");
        }
        let huge = Listing::parse("/v1/sagas?older_than=99999d", 5).unwrap();
        assert_eq!(huge.started_before_us, Some(0), "an age older than the epoch lists none");
    }

    #[test]
    fn pages_go_newest_first_and_the_cursor_continues_without_repeats_or_gaps() {
        let view = |id: &str, at: u64, done: bool| SagaView {
            saga: id.into(),
            name: "n".into(),
            kind: Kind::Saga,
            state: if done { SagaState::Done(Outcome::Completed) } else { SagaState::Running },
            current: None,
            steps: vec![],
            started_at_us: at,
        };
        // two sagas share a start time: the id breaks the tie
        let views: Vec<SagaView> =
            (0..25u64).map(|i| view(&format!("s{i:02}"), i / 2, i % 3 == 0)).collect();
        let mut listing = Listing::parse("/v1/sagas?limit=7", 100).unwrap();
        let mut seen = Vec::new();
        loop {
            let page = page(&listing, views.clone(), "x");
            seen.extend(page["sagas"].as_array().unwrap().iter().map(|s| s["id"].clone()));
            let Some(next) = page["next"].as_str() else { break };
            listing = Listing::parse(&format!("/v1/sagas?limit=7&after={next}"), 100).unwrap();
        }
        let expected: Vec<Value> = (0..25u64).rev().map(|i| json!(format!("s{i:02}"))).collect();
        assert_eq!(seen, expected);
        let finished = Listing::parse("/v1/sagas?state=finished&limit=1000", 100).unwrap();
        let page = page(&finished, views, "x");
        assert_eq!(page["sagas"].as_array().unwrap().len(), 9);
        assert!(page["next"].is_null());
    }
}
