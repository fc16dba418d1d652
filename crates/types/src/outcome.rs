use std::fmt;

/// A key of a participant's store.
pub type Key = u64;

/// One branch effect: add `delta` to the value under `key`.
///
/// A participant refuses a write that would take a value below zero (think: a debit larger
/// than the balance). That refusal is how a workload makes a participant vote NO.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Write {
    pub key: Key,
    pub delta: i64,
}

/// A participant's answer to PREPARE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Vote {
    /// Prepared and durable: it will commit if told to, and holds its locks until told.
    Yes,
    /// Cannot commit; the participant has already aborted its branch.
    No,
    /// Nothing to write: the participant has forgotten the transaction and needs no decision.
    ReadOnly,
}

/// The outcome of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    Commit,
    Abort,
}

impl fmt::Display for Vote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Vote::Yes => "YES",
            Vote::No => "NO",
            Vote::ReadOnly => "READ-ONLY",
        })
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Decision::Commit => "COMMIT",
            Decision::Abort => "ABORT",
        })
    }
}
