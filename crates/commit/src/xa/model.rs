//! A model of what a SQL/XA resource manager promises the coordinator — PostgreSQL's
//! `PREPARE TRANSACTION`, MariaDB's XA, Concord's Redis scripts — for the simulator and the
//! model checker, and held to the same conformance suite as the real ones
//! (`crates/participants/tests/conformance.rs`):
//!
//! * an open branch dies with its connection; a prepared one survives anything and waits;
//! * a branch votes READ-ONLY when it wrote nothing (it is ended, nothing is kept);
//! * finishing is idempotent: a second commit or rollback finds the branch "not prepared";
//! * a committed branch leaves its marker, so how a branch ended reads afterwards;
//! * a name once used is never prepared again.
//!
//! `K` names a branch (a gid in the suite, a transaction and database in the simulator).

use std::collections::{BTreeMap, BTreeSet};

use concord_types::{Decision, Vote};

/// Where a branch stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BranchState {
    Prepared,
    Committed,
    /// Rolled back, or never prepared.
    Absent,
}

/// What finishing a branch found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Finish {
    Done,
    NotPrepared,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResourceManager<K: Ord> {
    /// Open branches: whether each wrote.
    open: BTreeMap<K, bool>,
    prepared: BTreeSet<K>,
    /// Markers of committed branches.
    committed: BTreeSet<K>,
    /// Every name ever begun.
    used: BTreeSet<K>,
}

impl<K: Ord> Default for ResourceManager<K> {
    fn default() -> Self {
        ResourceManager {
            open: BTreeMap::new(),
            prepared: BTreeSet::new(),
            committed: BTreeSet::new(),
            used: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Clone> ResourceManager<K> {
    /// Opens branch `k`; a name used before is refused.
    pub fn begin(&mut self, k: &K) -> Result<(), String> {
        if !self.used.insert(k.clone()) {
            return Err("this branch name was used before".into());
        }
        self.open.insert(k.clone(), false);
        Ok(())
    }

    /// A statement of the open branch; `writes` whether it changes anything.
    pub fn execute(&mut self, k: &K, writes: bool) -> Result<(), String> {
        let wrote = self.open.get_mut(k).ok_or("no open transaction")?;
        *wrote |= writes;
        Ok(())
    }

    /// Prepares the open branch; `refuse` (a constraint) votes NO and rolls it back.
    pub fn prepare(&mut self, k: &K, refuse: bool) -> Vote {
        match self.open.remove(k) {
            None => Vote::No,
            Some(false) => Vote::ReadOnly,
            Some(true) if refuse => Vote::No,
            Some(true) => {
                self.prepared.insert(k.clone());
                Vote::Yes
            }
        }
    }

    /// Commits the open branch without PREPARE; `refuse` rolls it back instead.
    pub fn commit_one_phase(&mut self, k: &K, refuse: bool) -> Decision {
        match self.open.remove(k) {
            Some(_) if !refuse => {
                self.committed.insert(k.clone());
                Decision::Commit
            }
            _ => Decision::Abort,
        }
    }

    /// COMMIT PREPARED / ROLLBACK PREPARED.
    pub fn finish(&mut self, k: &K, decision: Decision) -> Finish {
        if !self.prepared.remove(k) {
            return Finish::NotPrepared;
        }
        if decision == Decision::Commit {
            self.committed.insert(k.clone());
        }
        Finish::Done
    }

    pub fn state(&self, k: &K) -> BranchState {
        if self.prepared.contains(k) {
            BranchState::Prepared
        } else if self.committed.contains(k) {
            BranchState::Committed
        } else {
            BranchState::Absent
        }
    }

    /// The prepared branches, as `pg_prepared_xacts` or `XA RECOVER` list them.
    pub fn listed(&self) -> impl Iterator<Item = &K> {
        self.prepared.iter()
    }

    /// The coordinator's connections died (or the database restarted): open branches roll back.
    pub fn drop_connections(&mut self) {
        self.open.clear();
    }

    pub fn is_open(&self, k: &K) -> bool {
        self.open.contains_key(k)
    }
}
