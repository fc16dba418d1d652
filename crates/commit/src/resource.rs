//! What a participant commits: the resource behind its branches.
//!
//! The protocol cores carry each branch's change without looking inside it, the way an XA
//! transaction manager never sees the SQL: the coordinator routes it, the participant's
//! resource checks, locks, applies or releases it. [`Store`](crate::store::Store) (signed
//! values, the simulator's bank) is one resource; the MVCC shard of `concord-kv` is another.

use std::fmt::Debug;
use std::hash::Hash;

use concord_types::codec::Encode;
use concord_types::TxnId;

/// A participant's resource. Calls come in a fixed order per branch: `check` then `lock` at
/// prepare (or `lock` alone when a prepared branch is rebuilt from the log), then either
/// `unlock` + `apply` (commit) or `unlock` (abort). `apply` without a prior `lock` replays a
/// one-phase commit from the log.
pub trait Resource: Clone + Debug + Default + PartialEq + Eq + Hash {
    /// One branch's change, as it travels in PREPARE and sits in prepare records.
    type Change: Change;
    /// The applied state, as a checkpoint writes it.
    type Snapshot: Clone + Debug + PartialEq + Eq + Hash + Encode;
    /// Why a change was refused.
    type Refusal: Clone + Debug + PartialEq + Eq + Hash;

    /// Whether `txn` could apply `change` now (no conflicting lock, constraints kept).
    fn check(&self, txn: TxnId, change: &Self::Change) -> Result<(), Self::Refusal>;
    /// Holds what `change` needs until the decision. Only after a successful `check`.
    fn lock(&mut self, txn: TxnId, change: &Self::Change);
    /// Releases what `lock` took.
    fn unlock(&mut self, txn: TxnId, change: &Self::Change);
    /// Applies a committed change. Called exactly once per committed branch.
    fn apply(&mut self, txn: TxnId, change: &Self::Change);
    /// The applied state, standing for every applied change in a checkpoint.
    fn snapshot(&self) -> Self::Snapshot;
    /// Rebuilds the applied state from a checkpoint's snapshot (on a freshly reset resource).
    fn restore(&mut self, snapshot: Self::Snapshot);

    /// Forgets the applied state before a restart replays the log. Configuration the driver
    /// gave the resource survives; the default replaces the resource wholesale.
    fn reset(&mut self) {
        *self = Self::default();
    }

    /// A branch that writes nothing is about to vote READ-ONLY and be forgotten: the last
    /// chance to refuse it (a resource that validates reads does so here) and to leave behind
    /// what must outlive it. The default only checks.
    fn finish_read_only(&mut self, txn: TxnId, change: &Self::Change) -> Result<(), Self::Refusal> {
        self.check(txn, change)
    }
}

/// A branch's change as the coordinator sees it: opaque except for whether it writes.
pub trait Change: Clone + Debug + PartialEq + Eq + Hash + Encode {
    /// How many keys it writes (for status pages).
    fn write_count(&self) -> usize;

    /// Writes nothing: its branch may vote READ-ONLY and skip phase two.
    fn is_read_only(&self) -> bool {
        self.write_count() == 0
    }
}

impl Change for Vec<concord_types::Write> {
    fn write_count(&self) -> usize {
        self.len()
    }
}

/// Why a participant refused its recent branches, newest last (bounded), so a driver can tell
/// the client. Only there to explain: equality and hashing ignore it, so the model checker does
/// not count two participant states that differ only in it.
#[derive(Debug, Clone)]
pub(crate) struct Refusals<T>(std::collections::VecDeque<(TxnId, T)>);

/// How many refusal reasons a participant remembers.
const REMEMBERED_REFUSALS: usize = 1024;

impl<T> Default for Refusals<T> {
    fn default() -> Self {
        Refusals(std::collections::VecDeque::new())
    }
}

impl<T> Refusals<T> {
    pub(crate) fn remember(&mut self, txn: TxnId, refusal: T) {
        if self.0.len() >= REMEMBERED_REFUSALS {
            self.0.pop_front();
        }
        self.0.push_back((txn, refusal));
    }

    /// Whether a new branch of `txn` may go ahead: fewer than `limit` branches in flight and
    /// `store` accepts `change`. Why a refused one was refused is remembered. Every
    /// participant core admits its branches this way.
    pub(crate) fn admit<R: Resource<Refusal = T>>(
        &mut self,
        store: &R,
        txn: TxnId,
        change: &R::Change,
        (in_flight, limit): (usize, usize),
    ) -> bool {
        if in_flight >= limit {
            return false;
        }
        match store.check(txn, change) {
            Ok(()) => true,
            Err(refusal) => {
                self.remember(txn, refusal);
                false
            }
        }
    }

    pub(crate) fn find(&self, txn: TxnId) -> Option<&T> {
        self.0.iter().rev().find(|(t, _)| *t == txn).map(|(_, r)| r)
    }
}

impl<T> PartialEq for Refusals<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<T> Eq for Refusals<T> {}
impl<T> Hash for Refusals<T> {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}
