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
        // In u128: `delay / 2 * 1000` overflows u64 for delays past about 584 years, which a
        // validated definition never has but a record from before validation might.
        let cut = u128::from(delay / 2) * u128::from(jitter_permille.min(1_000)) / 1_000;
        delay - u64::try_from(cut).expect("at most half of a u64 delay")
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

/// The ranges every definition must keep (docs/sagas.md, "Limits"). Checked when a saga is
/// started and again when its record is replayed, so no value from outside reaches the
/// arithmetic of the core unchecked.
pub mod limits {
    /// Saga ids, saga names and step names: 1 to this many bytes of ASCII letters, digits, `.`,
    /// `_` or `-`. No `:` — the idempotency key `{saga}:{step}:{phase}` joins them with it, so
    /// with this alphabet two different (saga, step, phase) triples can never share a key.
    pub const MAX_ID_BYTES: usize = 128;
    pub const MAX_NAME_BYTES: usize = 64;
    pub const MAX_STEPS: usize = 100;
    /// An endpoint URL's length at most.
    pub const MAX_ENDPOINT_BYTES: usize = 2_048;
    /// One call's timeout: 1 ms to an hour.
    pub const TIMEOUT_US: std::ops::RangeInclusive<u64> = 1_000..=3_600_000_000;
    /// The first retry delay: 1 ms to an hour; the cap: from the first delay to a day.
    pub const RETRY_BASE_US: std::ops::RangeInclusive<u64> = 1_000..=3_600_000_000;
    pub const RETRY_MAX_US: u64 = 86_400_000_000;
    /// The deadline: 1 ms to 30 days.
    pub const DEADLINE_US: std::ops::RangeInclusive<u64> = 1_000..=2_592_000_000_000;
}

/// Whether `value` is a valid saga id, saga name or step name of at most `max` bytes.
pub fn is_valid_name(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Why a definition cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvalidDef {
    NoSteps,
    DuplicateStep(String),
    /// TCC needs a confirm and a cancel on every step.
    TccStepIncomplete(String),
    ZeroTimeout(String),
    /// A field outside its range, or a name outside its alphabet: which, and why.
    Field {
        field: String,
        problem: String,
    },
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
            InvalidDef::Field { field, problem } => write!(f, "field `{field}`: {problem}"),
        }
    }
}

fn field(field: impl Into<String>, problem: impl Into<String>) -> InvalidDef {
    InvalidDef::Field { field: field.into(), problem: problem.into() }
}

fn check_name(name: &str, value: &str, max: usize) -> Result<(), InvalidDef> {
    if is_valid_name(value, max) {
        return Ok(());
    }
    let shown: String = value.chars().take(40).collect();
    Err(field(
        name,
        format!(
            "{shown:?} ({} bytes): use 1 to {max} ASCII letters, digits, `.`, `_` or `-`",
            value.len()
        ),
    ))
}

fn check_us(
    name: &str,
    value: u64,
    allowed: std::ops::RangeInclusive<u64>,
) -> Result<(), InvalidDef> {
    if allowed.contains(&value) {
        return Ok(());
    }
    // Shown in milliseconds, as the API takes them.
    Err(field(
        name,
        format!(
            "{} ms; it must be from {} to {} ms",
            value / 1_000,
            allowed.start() / 1_000,
            allowed.end() / 1_000
        ),
    ))
}

/// A saga id (the caller's, or a generated one) fits the key alphabet.
pub fn check_saga_id(saga: &str) -> Result<(), InvalidDef> {
    check_name("id", saga, limits::MAX_ID_BYTES)
}

impl SagaDef {
    pub fn saga(name: &str, steps: Vec<StepDef>, deadline_us: u64) -> Self {
        SagaDef { name: name.into(), kind: Kind::Saga, steps, deadline_us }
    }

    /// Every field in its range ([`limits`]); the error names the field.
    pub fn validate(&self) -> Result<(), InvalidDef> {
        check_name("name", &self.name, limits::MAX_NAME_BYTES)?;
        if self.steps.is_empty() {
            return Err(InvalidDef::NoSteps);
        }
        if self.steps.len() > limits::MAX_STEPS {
            let problem = format!("{} steps; at most {}", self.steps.len(), limits::MAX_STEPS);
            return Err(field("steps", problem));
        }
        check_us("deadline_ms", self.deadline_us, limits::DEADLINE_US)?;
        let mut seen = std::collections::BTreeSet::new();
        for (i, step) in self.steps.iter().enumerate() {
            let at = |name: &str| format!("steps[{i}].{name}");
            check_name(&at("name"), &step.name, limits::MAX_NAME_BYTES)?;
            if !seen.insert(&step.name) {
                return Err(InvalidDef::DuplicateStep(step.name.clone()));
            }
            if step.timeout_us == 0 {
                return Err(InvalidDef::ZeroTimeout(step.name.clone()));
            }
            check_us(&at("timeout_ms"), step.timeout_us, limits::TIMEOUT_US)?;
            check_us(&at("retry_base_ms"), step.retry.base_us, limits::RETRY_BASE_US)?;
            let max = step.retry.base_us..=limits::RETRY_MAX_US;
            check_us(&at("retry_max_ms"), step.retry.max_us, max)?;
            for (phase, endpoint) in [
                ("action", Some(&step.action)),
                ("compensation", step.compensation.as_ref()),
                ("confirm", step.confirm.as_ref()),
            ] {
                let Some(endpoint) = endpoint else { continue };
                if endpoint.is_empty() || endpoint.len() > limits::MAX_ENDPOINT_BYTES {
                    let problem = format!(
                        "{} bytes; it must be 1 to {}",
                        endpoint.len(),
                        limits::MAX_ENDPOINT_BYTES
                    );
                    return Err(field(at(phase), problem));
                }
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
    fn backoff_never_overflows_whatever_the_fields() {
        let r = Retry { base_us: u64::MAX, max_us: u64::MAX };
        for attempt in [0, 1, 2, 40, u32::MAX] {
            for jitter in [0, 1, 999, 1_000, u64::MAX] {
                let delay = r.delay_us(attempt, jitter);
                assert!(delay >= u64::MAX / 2, "{attempt} {jitter}: {delay}");
            }
        }
    }

    #[test]
    fn every_field_is_range_checked_and_named() {
        let step = |n: &str| StepDef::new(n, "http://x:1/a", Some("http://x:1/c"));
        let good = SagaDef::saga("order", vec![step("a"), step("b")], 30_000_000);
        assert_eq!(good.validate(), Ok(()));
        let named = |def: SagaDef, expected: &str| {
            let error = def.validate().unwrap_err().to_string();
            assert!(error.contains(expected), "{error} should name {expected}");
        };
        let mut def = good.clone();
        def.steps[1].retry.base_us = 40_000_000_000_000_000;
        named(def, "steps[1].retry_base_ms");
        let mut def = good.clone();
        def.steps[0].retry.max_us = 1;
        named(def, "steps[0].retry_max_ms");
        let mut def = good.clone();
        def.steps[0].timeout_us = u64::MAX;
        named(def, "steps[0].timeout_ms");
        named(SagaDef { deadline_us: u64::MAX, ..good.clone() }, "deadline_ms");
        named(SagaDef { deadline_us: 999, ..good.clone() }, "deadline_ms");
        named(SagaDef { name: "a:b".into(), ..good.clone() }, "name");
        named(SagaDef { name: String::new(), ..good.clone() }, "name");
        named(SagaDef::saga("s", vec![step("b:c")], 30_000_000), "steps[0].name");
        let many: Vec<StepDef> = (0..=limits::MAX_STEPS).map(|i| step(&format!("s{i}"))).collect();
        named(SagaDef::saga("s", many, 30_000_000), "steps");
        let at_limit: Vec<StepDef> =
            (0..limits::MAX_STEPS).map(|i| step(&format!("s{i}"))).collect();
        assert_eq!(SagaDef::saga("s", at_limit, 30_000_000).validate(), Ok(()));
        let mut def = good;
        def.steps[0].compensation = Some(String::new());
        named(def, "steps[0].compensation");
    }

    #[test]
    fn the_key_alphabet_has_no_separator_so_keys_cannot_collide() {
        // Every name the alphabet allows is free of `:`, so `{saga}:{step}:{phase}` splits one
        // way only; this walks a small alphabet exhaustively to show distinct triples differ.
        let names = ["a", "b", "a.b", "a-b", "ab", "a_b"];
        let phases = [Phase::Action, Phase::Compensation, Phase::Confirm];
        let mut keys = std::collections::BTreeMap::new();
        for saga in names {
            for step in names {
                for phase in phases {
                    assert!(is_valid_name(saga, 128) && is_valid_name(step, 64));
                    let key = format!("{saga}:{step}:{}", phase.name());
                    let before = keys.insert(key.clone(), (saga, step, phase));
                    assert_eq!(before, None, "{key} is shared");
                }
            }
        }
        for bad in ["a:b", "", "a/b", "a b", "é"] {
            assert!(!is_valid_name(bad, 128), "{bad:?}");
        }
    }

    #[test]
    fn definitions_are_checked() {
        let step = |n: &str| StepDef::new(n, "http://x/a", Some("http://x/c"));
        let deadline = 1_000;
        assert_eq!(SagaDef::saga("s", vec![], deadline).validate(), Err(InvalidDef::NoSteps));
        let twice = SagaDef::saga("s", vec![step("a"), step("a")], deadline);
        assert_eq!(twice.validate(), Err(InvalidDef::DuplicateStep("a".into())));
        let tcc = SagaDef { kind: Kind::Tcc, ..SagaDef::saga("t", vec![step("a")], deadline) };
        assert_eq!(tcc.validate(), Err(InvalidDef::TccStepIncomplete("a".into())));
        assert_eq!(SagaDef::saga("s", vec![step("a"), step("b")], deadline).validate(), Ok(()));
    }
}
