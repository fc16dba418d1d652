//! Real databases as participants of two-phase commit, and the other pieces a service uses
//! with its own database. The coordinator that drives them is `concord-db-coordinator`.
//!
//! * [`gid`] — branch names carrying cluster, coordinator node, epoch and sequence.
//! * [`database`] with `postgres`, `mariadb` and `redis` — one adapter per kind (begin,
//!   statements, prepare, commit/rollback, branch state, listing), every call bounded;
//!   [`config`] — a `[[database]]` entry.
//! * [`statements`] — which SQL statements the API runs (one data or schema statement).
//! * [`barrier`] — the saga idempotency barrier as marker rows in a step's own PostgreSQL.
//! * [`outbox`] — the transactional outbox, its relay to NATS JetStream, consumer de-duplication.

pub mod barrier;
pub mod config;
pub mod database;
pub mod gid;
mod mariadb;
pub mod outbox;
mod postgres;
mod redis;
pub mod statements;
