//! Status by id: what a transaction's outcome was, found by asking every participant when the
//! coordinator no longer remembers it (after a restart, or once it was evicted).
//!
//! ```text
//!  asker ── status inquiry ──► every participant
//!        ◀── COMMIT | ABORT | FORGOTTEN ──  (a prepared one stays silent until it knows)
//!  any COMMIT                      ⇒ Committed
//!  every one ABORT                 ⇒ Aborted      (one that never saw the transaction forces
//!                                                  its ABORTED record first: a promise)
//!  every one answered, one FORGOTTEN ⇒ Forgotten  (finished; the outcome is no longer kept)
//!  silence                         ⇒ still open: ask again later
//! ```
//!
//! **"I forgot" is not "abort".** A participant that dropped its decision (it is below its
//! coordinator's forget mark) says so: it knows the transaction finished, not how. Presumed
//! abort covers a transaction nobody has a record of *because it never committed*; a forgotten
//! one may well have committed (every one-phase commit is forgotten in the end), so answering
//! ABORT for it would tell a client to redo work that is done. Protocols implement
//! [`crate::Protocol::status_inquiry`] and [`crate::Protocol::status_answer`]; the runtime's
//! coordinator and the simulator's prober both resolve through [`StatusQuery`], so the rule is
//! checked where it runs.

use std::collections::BTreeSet;
use std::fmt;

use concord_types::{Decision, NodeId};

/// One participant's answer to a status inquiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Answer {
    /// It knows the decision (or, never having seen the transaction, has durably refused it:
    /// an ABORT it will keep).
    Decided(Decision),
    /// The transaction finished and this participant no longer remembers how.
    Forgotten,
}

/// What a status query concludes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Committed,
    Aborted,
    /// Finished, but no participant asked remembers the outcome.
    Forgotten,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Committed => "committed",
            Verdict::Aborted => "aborted",
            Verdict::Forgotten => "forgotten",
        })
    }
}

/// One status query in progress: the participants asked and what each said.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StatusQuery {
    asked: BTreeSet<NodeId>,
    aborted: BTreeSet<NodeId>,
    forgotten: BTreeSet<NodeId>,
}

impl StatusQuery {
    /// A query of `asked` (every participant that may have been a branch).
    pub fn new(asked: impl IntoIterator<Item = NodeId>) -> Self {
        let asked: BTreeSet<NodeId> = asked.into_iter().collect();
        assert!(!asked.is_empty(), "a status query asks at least one participant");
        StatusQuery { asked, aborted: BTreeSet::new(), forgotten: BTreeSet::new() }
    }

    /// Takes `from`'s answer; the verdict once there is one. Answers from nodes not asked are
    /// ignored, as are repeats.
    pub fn answer(&mut self, from: NodeId, answer: Answer) -> Option<Verdict> {
        if !self.asked.contains(&from) {
            return None;
        }
        match answer {
            Answer::Decided(Decision::Commit) => return Some(Verdict::Committed),
            Answer::Decided(Decision::Abort) => {
                self.aborted.insert(from);
            }
            Answer::Forgotten => {
                self.forgotten.insert(from);
            }
        }
        if self.aborted.len() + self.forgotten.len() < self.asked.len() {
            return None;
        }
        // Everyone answered and nobody said COMMIT. Only if every one promised ABORT is the
        // transaction known to be aborted; a forgetful one may be the branch that committed.
        Some(if self.forgotten.is_empty() { Verdict::Aborted } else { Verdict::Forgotten })
    }

    /// The participants that have not answered yet (for "ask again once they are up").
    pub fn silent(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.asked
            .iter()
            .copied()
            .filter(|n| !self.aborted.contains(n) && !self.forgotten.contains(n))
    }

    /// Those that answered FORGOTTEN.
    pub fn forgetful(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.forgotten.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABORT: Answer = Answer::Decided(Decision::Abort);
    const COMMIT: Answer = Answer::Decided(Decision::Commit);

    fn query() -> StatusQuery {
        StatusQuery::new([NodeId(1), NodeId(2), NodeId(3)])
    }

    #[test]
    fn one_commit_is_enough_and_abort_needs_everyone() {
        let mut q = query();
        assert_eq!(q.answer(NodeId(1), ABORT), None);
        assert_eq!(q.answer(NodeId(2), COMMIT), Some(Verdict::Committed));
        let mut q = query();
        assert_eq!(q.answer(NodeId(1), ABORT), None);
        assert_eq!(q.answer(NodeId(1), ABORT), None, "a repeat counts once");
        assert_eq!(q.answer(NodeId(9), ABORT), None, "a node not asked is ignored");
        assert_eq!(q.answer(NodeId(2), ABORT), None);
        assert_eq!(q.silent().collect::<Vec<_>>(), vec![NodeId(3)]);
        assert_eq!(q.answer(NodeId(3), ABORT), Some(Verdict::Aborted));
    }

    #[test]
    fn a_forgetful_participant_never_turns_into_an_abort() {
        let mut q = query();
        assert_eq!(q.answer(NodeId(1), ABORT), None);
        assert_eq!(q.answer(NodeId(2), Answer::Forgotten), None);
        assert_eq!(q.answer(NodeId(3), ABORT), Some(Verdict::Forgotten));
        assert_eq!(q.forgetful().collect::<Vec<_>>(), vec![NodeId(2)]);
        let mut q = query();
        q.answer(NodeId(2), Answer::Forgotten);
        assert_eq!(q.answer(NodeId(1), COMMIT), Some(Verdict::Committed), "a memory beats none");
    }
}

/// Outcomes a participant forgot by the protocol (below its coordinator's forget mark) but
/// keeps, the newest `bound` of them, for one purpose only: to answer a status query with the
/// outcome rather than FORGOTTEN. Nothing else may read them (a late PREPARE or COMMIT below
/// the mark is still ignored). Both protocols' participants keep them the same way.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeptOutcomes {
    outcomes: std::collections::BTreeMap<concord_types::TxnId, Decision>,
}

impl KeptOutcomes {
    /// Keeps `decision` for `txn`, dropping the oldest beyond `bound` (0: keeps nothing).
    pub fn keep(&mut self, txn: concord_types::TxnId, decision: Decision, bound: u32) {
        if bound == 0 {
            return;
        }
        self.outcomes.insert(txn, decision);
        while self.outcomes.len() > bound as usize {
            self.outcomes.pop_first();
        }
    }

    pub fn get(&self, txn: concord_types::TxnId) -> Option<Decision> {
        self.outcomes.get(&txn).copied()
    }

    pub fn clear(&mut self) {
        self.outcomes.clear();
    }

    /// The kept outcomes in checkpoint-sized chunks, oldest first.
    pub fn chunks(&self) -> Vec<Vec<(concord_types::TxnId, Decision)>> {
        let all: Vec<_> = self.outcomes.iter().map(|(&t, &d)| (t, d)).collect();
        all.chunks(crate::CHECKPOINT_CHUNK).map(<[_]>::to_vec).collect()
    }
}
