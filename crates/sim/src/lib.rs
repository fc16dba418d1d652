//! Concord's deterministic fault simulator.
//!
//! It runs the real protocol cores from `concord-commit` — not models of them — on a simulated
//! network (delay, loss, duplication, reordering, partitions) and simulated disks (synced and
//! unsynced bytes, torn tails), crashes and restarts nodes, and checks every run against the
//! properties in [`invariants`]. One thread, a virtual clock and one seeded PRNG: the same seed
//! gives the same run, bit for bit ([`RunReport::trace_hash`]).
//!
//! * [`world`] — the engine; [`disk`] — the simulated disk; [`config`] — what a run is.
//! * [`workload`] — transactions; [`scenarios`] — the named failure stories;
//!   [`sweep`] — many randomized fault schedules, a safety phase then a liveness phase;
//!   [`optimizations`] — each optimisation switch measured on one workload;
//!   [`compare`] — protocols side by side on the same schedules; [`happy_path`] — their costs.
//! * [`invariants`] — one file per property; [`report`] — what a run produced;
//!   [`diagram`] — message-sequence diagrams (text and SVG) from a run's trace;
//!   [`explore`] — exhaustive model checking of the real cores for small configurations.
//! * [`kv`] — the key-value store's shard and coordinator cores under faults, with the bank
//!   and list-append workloads and their checkers.
//! * [`saga`] — the saga and TCC orchestrator against services with idempotency barriers,
//!   under orchestrator crashes, service outages, loss and duplication.

pub mod compare;
pub mod config;
pub mod databases;
pub mod diagram;
pub mod disk;
pub mod explore;
pub mod explore_databases;
pub mod happy_path;
pub mod hash;
pub mod histogram;
pub mod invariants;
pub mod kv;
pub mod optimizations;
pub mod replicated;
pub mod report;
pub mod rng;
pub mod saga;
pub mod scenarios;
pub mod sweep;
pub mod trace;
pub mod trace_json;
pub mod workload;
pub mod world;

pub use config::SimConfig;
pub use report::RunReport;
pub use world::simulate;
