//! The vocabulary every Concord crate shares.
//!
//! * [`NodeId`], [`TxnId`] — who and what. A transaction id is `epoch.sequence` issued by one
//!   coordinator; the epoch is durably bumped at every coordinator start, so ids are never reused.
//! * [`Vote`], [`Decision`] — one meaning per word: participants *vote*, coordinators *decide*.
//! * [`Write`] — the effect a branch applies to its participant's store.
//! * [`codec`] — fixed-width, little-endian encoding for everything that reaches a disk or a wire.
//! * [`TimerHeap`] — a driver loop's armed timers, soonest first.
//! * [`fields`] — range and name checks for values from outside, with errors naming the field.

pub mod codec;
pub mod fields;
mod ids;
mod outcome;
mod timer_heap;
pub mod tokens;

pub use ids::{NodeId, ParseTxnIdError, RequestId, TxnId};
pub use outcome::{Decision, Key, Vote, Write};
pub use timer_heap::TimerHeap;
