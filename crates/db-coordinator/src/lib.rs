//! The database coordinator (`concord db serve`): two-phase commit over real databases, whose
//! adapters are `concord_participants::database`.
//!
//! ```text
//!   application ──run(branches)──► Coordinator ──begin/execute/prepare──► PostgreSQL (PREPARE TRANSACTION)
//!                                   │    ▲                             ├► MariaDB/MySQL (XA)
//!                                   │    │                             └► Redis (Lua: staged writes, locks)
//!                 forced COMMIT ────┘    │ reconcile: list prepared branches, compare with the log
//!                 record (log/)          └ (reconcile.rs, pure), act, detect heuristic outcomes
//! ```
//!
//! * [`config`] — `databases.toml`.
//! * [`log`] — the coordinator's records (presumed abort) and the ledger they rebuild.
//! * [`reconcile`] — what to do with each listed branch; pure, so `recover --dry-run` is exact.
//! * [`coordinator`] — the running coordinator: transactions, recovery, operator actions.
//! * [`metrics`] and [`http`] — Prometheus text and the small HTTP API the CLI speaks.

pub mod config;
pub mod coordinator;
mod engine;
pub mod http;
pub mod log;
pub mod metrics;
pub mod reconcile;
