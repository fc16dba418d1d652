//! Sagas and TCC as pure state machines (the same discipline as `concord-commit`: no sockets,
//! files, clocks or tasks; the driver feeds inputs and carries out commands).
//!
//! ```text
//!   Start{saga, definition, payload} ─┐                 ┌─ Call{saga, step, phase, attempt, key}
//!   Reply{saga, step, phase, result} ─┤                 ├─ Persist{record, durability}
//!   Timer(timer)                      ─┼─► Orchestrator ─┼─ SetTimer{timer, after_us}
//!   Persisted(record)                 ─┤                 └─ Finished{saga, outcome}
//!   Restart{records}                  ─┘
//! ```
//!
//! * [`definition`]: a saga is steps, each an action with a compensation (TCC: try, confirm,
//!   cancel), with a per-call timeout, a retry policy and a saga deadline.
//! * [`orchestrator`]: runs many sagas. Forward in order; a business failure (or the deadline)
//!   turns it around, and compensations run in reverse order, retried until they succeed.
//!   Every transition is durable before the call it leads to.
//! * [`barrier`]: what a participant does with a call, given what it has seen for the same
//!   (saga, step): duplicates are no-ops, a compensation before its action is a null
//!   compensation, an action after its compensation is refused (no hanging).

pub mod barrier;
pub mod definition;
pub mod orchestrator;

pub use barrier::{Barrier, BarrierVerdict};
pub use definition::{Kind, Phase, Retry, SagaDef, StepDef};
pub use orchestrator::view_of_records;
pub use orchestrator::{
    Command, Durability, Input, Orchestrator, Outcome, Record, SagaId, SagaState, SagaView,
    StepResult, Timer,
};
