//! What a saga is: named steps, each with an action and (usually) a compensation.

/// Which protocol a definition runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Actions in order; on failure, compensations of the applied steps in reverse.
    Saga,
    /// Try every step in order; all tried ⇒ confirm every step; a failed try ⇒ cancel every
    /// step tried (including the failed one, whose try may have half-happened: the barrier
    /// makes that cancel a null compensation) in reverse.
    Tcc,
}

/// Which of a step's calls.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The forward call (TCC: Try).
    Action,
    /// The undo (TCC: Cancel).
    Compensation,
    /// TCC only: make a successful try final.
    Confirm,
}

impl Phase {
    /// The idempotency-key suffix: `{saga}:{step}:{phase}`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Action => "action",
            Phase::Compensation => "compensation",
            Phase::Confirm => "confirm",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Retries of a call that failed retryably or timed out: exponential backoff with jitter,
/// capped. Forward calls stop retrying at the saga deadline; compensations and confirms never
/// stop (they must eventually succeed; an operator sees them in `concord saga ls`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Retry {
    pub base_us: u64,
    pub max_us: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Retry { base_us: 100_000, max_us: 10_000_000 }
    }
}

impl Retry {
    /// The delay before retry number `attempt` (1 = the first retry), with `jitter` in
    /// [0, 1000] thousandths of the delay subtracted: "full jitter" halves synchronised
    /// retry storms without ever waiting longer than the cap.
    pub fn delay_us(&self, attempt: u32, jitter_permille: u64) -> u64 {
        let exponent = attempt.saturating_sub(1).min(40);
        let delay = self.base_us.saturating_mul(1u64 << exponent).min(self.max_us);
        delay - delay / 2 * jitter_permille.min(1_000) / 1_000
    }
}

/// One step. Endpoints are opaque to the core (the driver's URLs).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct StepDef {
    pub name: String,
    pub action: String,
    /// `None`: nothing to undo (a read, or a last step that cannot fail afterwards).
    pub compensation: Option<String>,
    /// TCC's confirm endpoint.
    pub confirm: Option<String>,
    /// How long one call may take before it counts as a retryable failure.
    pub timeout_us: u64,
    pub retry: Retry,
}

impl StepDef {
    pub fn new(name: &str, action: &str, compensation: Option<&str>) -> Self {
        StepDef {
            name: name.into(),
            action: action.into(),
            compensation: compensation.map(Into::into),
            confirm: None,
            timeout_us: 5_000_000,
            retry: Retry::default(),
        }
    }

    /// The endpoint of `phase`, if the step has one.
    pub fn endpoint(&self, phase: Phase) -> Option<&str> {
        match phase {
            Phase::Action => Some(&self.action),
            Phase::Compensation => self.compensation.as_deref(),
            Phase::Confirm => self.confirm.as_deref(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SagaDef {
    pub name: String,
    pub kind: Kind,
    pub steps: Vec<StepDef>,
    /// After this long the saga stops going forward and compensates (TCC: cancels).
    pub deadline_us: u64,
}

/// Why a definition cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvalidDef {
    NoSteps,
    DuplicateStep(String),
    /// TCC needs a confirm and a cancel on every step.
    TccStepIncomplete(String),
    ZeroTimeout(String),
}

impl std::fmt::Display for InvalidDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InvalidDef::NoSteps => f.write_str("a saga needs at least one step"),
            InvalidDef::DuplicateStep(s) => write!(f, "step `{s}` appears twice"),
            InvalidDef::TccStepIncomplete(s) => {
                write!(f, "TCC step `{s}` needs both a confirm and a cancel endpoint")
            }
            InvalidDef::ZeroTimeout(s) => write!(f, "step `{s}` has a zero timeout"),
        }
    }
}

impl SagaDef {
    pub fn saga(name: &str, steps: Vec<StepDef>, deadline_us: u64) -> Self {
        SagaDef { name: name.into(), kind: Kind::Saga, steps, deadline_us }
    }

    pub fn validate(&self) -> Result<(), InvalidDef> {
        if self.steps.is_empty() {
            return Err(InvalidDef::NoSteps);
        }
        let mut seen = std::collections::BTreeSet::new();
        for step in &self.steps {
            if !seen.insert(&step.name) {
                return Err(InvalidDef::DuplicateStep(step.name.clone()));
            }
            if step.timeout_us == 0 {
                return Err(InvalidDef::ZeroTimeout(step.name.clone()));
            }
            if self.kind == Kind::Tcc && (step.confirm.is_none() || step.compensation.is_none()) {
                return Err(InvalidDef::TccStepIncomplete(step.name.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_jitter_only_shortens_it() {
        let r = Retry { base_us: 100, max_us: 1_000 };
        assert_eq!(
            [1, 2, 3, 4, 5, 60].map(|a| r.delay_us(a, 0)),
            [100, 200, 400, 800, 1_000, 1_000]
        );
        assert_eq!(r.delay_us(2, 1_000), 100, "full jitter takes off at most half");
        assert_eq!(r.delay_us(2, 5_000), 100, "jitter beyond 1000‰ is clamped");
    }

    #[test]
    fn definitions_are_checked() {
        let step = |n: &str| StepDef::new(n, "http://x/a", Some("http://x/c"));
        assert_eq!(SagaDef::saga("s", vec![], 1).validate(), Err(InvalidDef::NoSteps));
        let twice = SagaDef::saga("s", vec![step("a"), step("a")], 1);
        assert_eq!(twice.validate(), Err(InvalidDef::DuplicateStep("a".into())));
        let tcc = SagaDef { kind: Kind::Tcc, ..SagaDef::saga("t", vec![step("a")], 1) };
        assert_eq!(tcc.validate(), Err(InvalidDef::TccStepIncomplete("a".into())));
        assert_eq!(SagaDef::saga("s", vec![step("a"), step("b")], 1).validate(), Ok(()));
    }
}
