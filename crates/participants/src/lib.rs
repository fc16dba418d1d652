//! Real databases as participants of Concord's two-phase commit.
//!
//! ```text
//!   application ──run(branches)──► Coordinator ──begin/execute/prepare──► PostgreSQL (PREPARE TRANSACTION)
//!                                   │    ▲                             ├► MariaDB/MySQL (XA)
//!                                   │    │                             └► Redis (Lua: staged writes, locks)
//!                 forced COMMIT ────┘    │ reconcile: list prepared branches, compare with the log
//!                 record (log/)          └ (reconcile.rs, pure), act, detect heuristic outcomes
//! ```
//!
//! * [`gid`] — branch names carrying cluster, coordinator node, epoch and sequence.
//! * [`database`] with `postgres`, `mariadb` and `redis` — one adapter per kind, every call
//!   bounded.
//! * [`log`] — the coordinator's records (presumed abort) and the ledger they rebuild.
//! * [`reconcile`] — what to do with each listed branch; pure, so `recover --dry-run` is exact.
//! * [`coordinator`] — the running coordinator: transactions, recovery, operator actions.
//! * [`metrics`] and [`http`] — Prometheus text and the small HTTP API the CLI speaks.
//! * [`barrier`] — the saga idempotency barrier as marker rows in a step's own PostgreSQL.
//! * [`outbox`] — the transactional outbox, its relay to NATS JetStream, consumer de-duplication.

pub mod barrier;
pub mod config;
pub mod coordinator;
pub mod database;
pub mod gid;
pub mod http;
pub mod log;
mod mariadb;
pub mod metrics;
pub mod outbox;
mod postgres;
pub mod reconcile;
mod redis;
pub mod statements;
