//! History checkers, independent of how the history was made (simulator or real processes).
//!
//! * [`history`] — list-append histories, written and read in Elle's JSON form so outside
//!   checkers (elle-cli) can read what Concord records.
//! * [`list_append`] — the in-project checker: infers each key's version order from the
//!   reads, builds the write-write, write-read and read-write dependency graph between
//!   transactions, and reports G0, G1a, G1b, G1c, G-single and G2 (Adya's anomalies as Elle
//!   names them), plus incompatible orders, duplicates and garbage reads.
//! * [`bank`] — every full read sees the constant total and no negative balance.

pub mod bank;
pub mod history;
pub mod list_append;

pub use history::{EventType, History, HistoryEvent, MicroOp};
pub use list_append::{check, Anomaly, AnomalyKind, Report};
