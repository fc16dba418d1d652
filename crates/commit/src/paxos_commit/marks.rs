//! Forget marks (switch `forget`, module docs "Forgetting"): per coordinator epoch, the
//! sequence below which every transaction has finished and been learned by all its
//! participants. Participants and acceptors keep the newest mark they heard of.

use std::collections::BTreeMap;
use std::ops::Range;

use concord_types::{NodeId, TxnId};

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(super) struct Marks {
    below: BTreeMap<(NodeId, u32), u32>,
}

impl Marks {
    /// Whether `txn` is below its coordinator epoch's mark.
    pub(super) fn covers(&self, txn: TxnId) -> bool {
        self.below.get(&(txn.coordinator, txn.epoch)).is_some_and(|&below| txn.sequence < below)
    }

    /// The mark covering `txn`, as the FORGET that states it.
    pub(super) fn mark_of(&self, txn: TxnId) -> Option<(NodeId, u32, u32)> {
        let &below = self.below.get(&(txn.coordinator, txn.epoch))?;
        (txn.sequence < below).then_some((txn.coordinator, txn.epoch, below))
    }

    /// Raises a mark. Returns the ids newly covered, if it moved (an older or repeated FORGET
    /// moves nothing).
    pub(super) fn raise(
        &mut self,
        coordinator: NodeId,
        epoch: u32,
        below: u32,
    ) -> Option<Range<TxnId>> {
        let mark = self.below.entry((coordinator, epoch)).or_insert(0);
        if below <= *mark {
            return None;
        }
        let from = TxnId { coordinator, epoch, sequence: *mark };
        *mark = below;
        Some(from..TxnId { coordinator, epoch, sequence: below })
    }

    /// Every mark, as (coordinator, epoch, below).
    pub(super) fn iter(&self) -> impl Iterator<Item = (NodeId, u32, u32)> + '_ {
        self.below.iter().map(|(&(coordinator, epoch), &below)| (coordinator, epoch, below))
    }

    pub(super) fn clear(&mut self) {
        self.below.clear();
    }
}

/// Removes every entry of `map` whose transaction is in `range`.
pub(super) fn remove_range<V>(map: &mut BTreeMap<TxnId, V>, range: &Range<TxnId>) {
    let mut covered = map.split_off(&range.start);
    let mut above = covered.split_off(&range.end);
    map.append(&mut above);
}
