//! The JSON API (`concord saga start|ls|show` and applications).
//!
//! ```text
//!  POST /v1/sagas            StartRequest → 202 {"id", "state": "running"} once the start is durable
//!                            ("wait": true → 200 with the outcome once it is finished)
//!  GET  /v1/sagas[?running]  {"sagas": [view…]}
//!  GET  /v1/sagas/ID         view + "timeline": each call with attempt, time, result
//!  GET  /health
//! ```

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
    json!({
        "id": view.saga, "name": view.name,
        "kind": match view.kind { Kind::Saga => "saga", Kind::Tcc => "tcc" },
        "state": state, "reason": reason, "current": current, "steps": view.steps,
    })
}
