//! The database coordinator (`concord db serve`): two-phase commit over real databases, whose
//! adapters are `concord_participants::database`.
//!
//! ```text
//!   application ──begin/statements/commit──► Coordinator (supervisor) ──► engine: one task owning
//!                                             │  reserve ids, views,       the 2PC core; each database
//!                                             │  resolve, heuristics       is a participant it speaks
//!                                             └─ reconcile: listed          for (PREPARE / XA / Lua →
//!                                                branches are inquiries     votes, decisions → acks)
//!                                                the core answers
//! ```
//!
//! * [`config`] — `databases.toml`.
//! * [`log`] — the core's records and the supervisor's, and the ledger (a read model) they rebuild.
//! * `engine` — drives `concord_commit::two_phase::Coordinator` over the databases.
//! * [`reconcile`] — what to do with each listed branch; pure, so `recover --dry-run` is exact.
//! * [`coordinator`] — the supervisor: transactions, recovery, operator actions.
//! * [`replicated`] — 3 or 5 replicas on openraft; the leader runs the coordinator.
//! * [`metrics`] and [`http`] — Prometheus text and the small HTTP API the CLI speaks.
//! * [`trace`] — recent transactions' timelines, branch by branch, for the console at `/ui`.

pub mod config;
pub mod coordinator;
mod engine;
pub mod http;
pub mod log;
pub mod metrics;
pub mod reconcile;
pub mod replicated;
pub use concord_console::trace;
