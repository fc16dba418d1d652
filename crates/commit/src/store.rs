//! A participant's local resource: signed values under keys, exclusive locks, one constraint.
//!
//! The constraint — no value may go below zero — stands for every reason a real resource
//! refuses work (a debit larger than the balance, a unique-key violation). Locks are taken at
//! prepare and held until the decision; a conflicting prepare is refused at once rather than
//! waiting, so no deadlock can form.

use std::collections::BTreeMap;

use concord_types::{Key, TxnId, Write};

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Store {
    values: BTreeMap<Key, i64>,
    locks: BTreeMap<Key, TxnId>,
}

/// Keys one store holds at most (values, and keys locked by branches not yet applied): a
/// checkpoint writes them all in one record, which must stay well inside the log's 16 MiB frame
/// (about 20 bytes a key), and a delta shard's full read returns them all.
pub const MAX_KEYS: usize = 100_000;

/// Why a branch's writes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    Locked {
        key: Key,
        holder: TxnId,
    },
    WouldGoNegative {
        key: Key,
    },
    /// The branch would take the store past [`MAX_KEYS`].
    Full {
        max_keys: usize,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Locked { key, holder } => write!(f, "key {key} is locked by {holder}"),
            Refusal::WouldGoNegative { key } => write!(f, "key {key} would go below zero"),
            Refusal::Full { max_keys } => {
                write!(f, "the shard holds its limit of {max_keys} keys; new keys are refused")
            }
        }
    }
}

impl Store {
    pub fn value(&self, key: Key) -> i64 {
        self.values.get(&key).copied().unwrap_or(0)
    }

    pub fn values(&self) -> &BTreeMap<Key, i64> {
        &self.values
    }

    /// Number of keys currently locked by prepared or committing branches.
    pub fn locked_keys(&self) -> usize {
        self.locks.len()
    }

    /// Whether `writes` could be applied by `txn` now (locks free, constraint kept, room for
    /// its new keys: counted against every value and every lock, so branches prepared at once
    /// cannot together overshoot [`MAX_KEYS`]).
    pub fn check(&self, txn: TxnId, writes: &[Write]) -> Result<(), Refusal> {
        for w in writes {
            if let Some(&holder) = self.locks.get(&w.key) {
                if holder != txn {
                    return Err(Refusal::Locked { key: w.key, holder });
                }
            }
        }
        let new = writes
            .iter()
            .filter(|w| !self.values.contains_key(&w.key) && !self.locks.contains_key(&w.key))
            .count();
        if new > 0 && self.values.len() + self.locks.len() + new > MAX_KEYS {
            return Err(Refusal::Full { max_keys: MAX_KEYS });
        }
        self.check_constraint(writes)
    }

    /// Whether applying `writes` keeps every value at or above zero (locks not considered).
    pub fn check_constraint(&self, writes: &[Write]) -> Result<(), Refusal> {
        let mut after: BTreeMap<Key, i64> = BTreeMap::new();
        for w in writes {
            let current = after.get(&w.key).copied().unwrap_or_else(|| self.value(w.key));
            match current.checked_add(w.delta) {
                Some(v) if v >= 0 => after.insert(w.key, v),
                _ => return Err(Refusal::WouldGoNegative { key: w.key }),
            };
        }
        Ok(())
    }

    pub fn lock(&mut self, txn: TxnId, writes: &[Write]) {
        for w in writes {
            let previous = self.locks.insert(w.key, txn);
            assert!(
                previous.is_none() || previous == Some(txn),
                "{txn} locked key {} held by {previous:?}: check() must precede lock()",
                w.key
            );
        }
    }

    pub fn unlock(&mut self, txn: TxnId, writes: &[Write]) {
        for w in writes {
            if self.locks.get(&w.key) == Some(&txn) {
                self.locks.remove(&w.key);
            }
        }
    }

    /// Applies writes that were checked (and, for locking protocols, locked since the check).
    pub fn apply(&mut self, writes: &[Write]) {
        for w in writes {
            let value = self.values.entry(w.key).or_insert(0);
            *value = value.checked_add(w.delta).expect("checked writes cannot overflow");
            assert!(*value >= 0, "applying checked writes took key {} below zero", w.key);
        }
    }
}

/// The simulator's resource: a branch's change is its list of deltas, a snapshot the values.
impl crate::Resource for Store {
    type Change = Vec<Write>;
    type Snapshot = Vec<Write>;
    type Refusal = Refusal;

    fn check(&self, txn: TxnId, change: &Vec<Write>) -> Result<(), Refusal> {
        Store::check(self, txn, change)
    }
    fn lock(&mut self, txn: TxnId, change: &Vec<Write>) {
        Store::lock(self, txn, change);
    }
    fn unlock(&mut self, txn: TxnId, change: &Vec<Write>) {
        Store::unlock(self, txn, change);
    }
    fn apply(&mut self, _txn: TxnId, change: &Vec<Write>) {
        Store::apply(self, change);
    }
    fn snapshot(&self) -> Vec<Write> {
        self.values.iter().map(|(&key, &delta)| Write { key, delta }).collect()
    }
    fn restore(&mut self, snapshot: Vec<Write>) {
        Store::apply(self, &snapshot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_types::NodeId;

    fn txn(sequence: u32) -> TxnId {
        TxnId { coordinator: NodeId(0), epoch: 1, sequence }
    }

    #[test]
    fn new_keys_are_refused_at_the_limit_and_existing_ones_still_change() {
        let mut store = Store::default();
        let fill: Vec<Write> =
            (0..MAX_KEYS as u64 - 1).map(|key| Write { key, delta: 1 }).collect();
        store.apply(&fill);
        let last = [Write { key: u64::MAX, delta: 1 }];
        assert_eq!(store.check(txn(1), &last), Ok(()), "the last key fits");
        store.lock(txn(1), &last);
        let one_more = [Write { key: u64::MAX - 1, delta: 1 }];
        assert_eq!(store.check(txn(2), &one_more), Err(Refusal::Full { max_keys: MAX_KEYS }));
        assert_eq!(store.check(txn(2), &[Write { key: 7, delta: -1 }]), Ok(()));
        store.unlock(txn(1), &last);
        store.apply(&last);
        assert_eq!(store.check(txn(2), &one_more), Err(Refusal::Full { max_keys: MAX_KEYS }));
    }

    #[test]
    fn a_lock_refuses_other_transactions_until_released() {
        let mut store = Store::default();
        let w = [Write { key: 1, delta: 5 }];
        store.lock(txn(1), &w);
        assert_eq!(store.check(txn(2), &w), Err(Refusal::Locked { key: 1, holder: txn(1) }));
        assert_eq!(store.check(txn(1), &w), Ok(()));
        store.unlock(txn(1), &w);
        assert_eq!(store.check(txn(2), &w), Ok(()));
    }

    #[test]
    fn the_constraint_sees_earlier_writes_of_the_same_branch() {
        let store = Store::default();
        let ok = [Write { key: 1, delta: 5 }, Write { key: 1, delta: -5 }];
        let bad = [Write { key: 1, delta: 5 }, Write { key: 1, delta: -6 }];
        assert_eq!(store.check(txn(1), &ok), Ok(()));
        assert_eq!(store.check(txn(1), &bad), Err(Refusal::WouldGoNegative { key: 1 }));
    }
}
