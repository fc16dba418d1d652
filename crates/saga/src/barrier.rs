//! The idempotency barrier, as a participant applies it to each call it receives.
//!
//! A participant keeps one mark per (saga, step, phase) it has seen — in its own database, in
//! the same local transaction as the call's effect, so the mark exists exactly when the effect
//! does. This is the pure rule those marks implement; the PostgreSQL barrier writes the same
//! marks as unique rows (`INSERT … ON CONFLICT DO NOTHING`, one affected row = first time).
//!
//! | call | marks before | verdict | marks after |
//! |---|---|---|---|
//! | action | none | apply | action |
//! | action | action | duplicate (no effect; answer as before) | — |
//! | action | compensation | refused: it would hang (its compensation already ran) | — |
//! | compensation | action | apply the undo | + compensation |
//! | compensation | none | null compensation: nothing to undo; also block the action | compensation, action (blocked) |
//! | compensation | compensation | duplicate | — |
//! | confirm | action (real) | apply | + confirm |
//! | confirm | confirm | duplicate | — |
//! | confirm | no real action | refused (the orchestrator never does this) | — |

use std::collections::BTreeMap;

use crate::definition::Phase;

/// What to do with a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BarrierVerdict {
    /// First time: apply the effect (and keep the mark with it).
    Apply,
    /// Seen before: do nothing, answer success again.
    Duplicate,
    /// A compensation whose action never ran: nothing to undo; answer success.
    NullCompensation,
    /// An action arriving after its compensation (a delayed retry): refuse, no effect.
    Hanging,
    /// A confirm without a successful action: refuse.
    Refused,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Marks {
    /// `Some(true)`: the action applied; `Some(false)`: blocked by a null compensation.
    action: Option<bool>,
    compensation: bool,
    confirm: bool,
}

/// A participant's marks, keyed by whatever names a branch (`(saga, step)`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Barrier<K: Ord> {
    marks: BTreeMap<K, Marks>,
}

impl<K: Ord> Default for Barrier<K> {
    fn default() -> Self {
        Barrier { marks: BTreeMap::new() }
    }
}

impl<K: Ord> Barrier<K> {
    /// Decides `phase` on `branch` and records the marks the verdict implies.
    pub fn decide(&mut self, branch: K, phase: Phase) -> BarrierVerdict {
        let marks = self.marks.entry(branch).or_default();
        match phase {
            Phase::Action => match (marks.action, marks.compensation) {
                (Some(_), false) => BarrierVerdict::Duplicate,
                (_, true) => BarrierVerdict::Hanging,
                (None, false) => {
                    marks.action = Some(true);
                    BarrierVerdict::Apply
                }
            },
            Phase::Compensation => {
                if marks.compensation {
                    return BarrierVerdict::Duplicate;
                }
                marks.compensation = true;
                if marks.action == Some(true) {
                    BarrierVerdict::Apply
                } else {
                    marks.action = Some(false);
                    BarrierVerdict::NullCompensation
                }
            }
            Phase::Confirm => {
                if marks.confirm {
                    BarrierVerdict::Duplicate
                } else if marks.action == Some(true) && !marks.compensation {
                    marks.confirm = true;
                    BarrierVerdict::Apply
                } else {
                    BarrierVerdict::Refused
                }
            }
        }
    }

    /// Drops a branch's marks (the retention period passed: no call for it can still arrive).
    pub fn forget(&mut self, branch: &K) {
        self.marks.remove(branch);
    }

    pub fn len(&self) -> usize {
        self.marks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BarrierVerdict::*;
    use Phase::*;

    #[test]
    fn duplicates_are_no_ops() {
        let mut b = Barrier::default();
        assert_eq!(b.decide("s1:a", Action), Apply);
        assert_eq!(b.decide("s1:a", Action), Duplicate);
        assert_eq!(b.decide("s1:a", Compensation), Apply);
        assert_eq!(b.decide("s1:a", Compensation), Duplicate);
        assert_eq!(b.decide("s1:a", Action), Hanging, "a late retry after the undo");
    }

    #[test]
    fn a_compensation_before_its_action_is_null_and_blocks_the_action() {
        let mut b = Barrier::default();
        assert_eq!(b.decide("s2:a", Compensation), NullCompensation);
        assert_eq!(b.decide("s2:a", Action), Hanging);
        assert_eq!(b.decide("s2:a", Compensation), Duplicate);
        assert_eq!(b.decide("s2:a", Confirm), Refused);
    }

    #[test]
    fn confirm_needs_a_real_try() {
        let mut b = Barrier::default();
        assert_eq!(b.decide("t:a", Confirm), Refused);
        assert_eq!(b.decide("t:a", Action), Apply);
        assert_eq!(b.decide("t:a", Confirm), Apply);
        assert_eq!(b.decide("t:a", Confirm), Duplicate);
        assert_eq!(b.len(), 1);
        b.forget(&"t:a");
        assert!(b.is_empty());
    }
}
