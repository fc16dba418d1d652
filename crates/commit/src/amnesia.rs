//! What a participant may have forgotten after its operator accepted the loss of part of its
//! log (`--accept-data-loss`).
//!
//! A participant with no record of a transaction normally knows it never voted on it, and may
//! refuse it (presumed abort). After data loss that is no longer true: it may have voted YES
//! and lost the record, and its coordinator may have committed on that vote. So for every
//! transaction it may have forgotten it presumes nothing: it does not vote (a second vote could
//! differ from the lost one), answers no inquiry with ABORT, and takes the outcome its
//! coordinator tells it.
//!
//! Which transactions: those its coordinator had issued before the loss was accepted. The
//! driver learns, per coordinator, a *horizon* — an id the coordinator issued after the restart
//! (every earlier id is smaller). Until a coordinator's horizon is known, all of its
//! transactions count as possibly forgotten.

use std::collections::BTreeMap;

use concord_types::{NodeId, TxnId};

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Amnesia {
    /// Per coordinator, the first id known to be issued after the loss.
    horizons: BTreeMap<NodeId, TxnId>,
    /// Transactions committed by their coordinator whose writes were lost here (newest last,
    /// the newest [`LOST_KEPT`]): for the operator.
    lost: Vec<TxnId>,
}

/// Lost commits kept for the operator, oldest dropped first.
pub const LOST_KEPT: usize = 10_000;

impl Amnesia {
    /// Whether a transaction with no record here may have had one before the loss.
    pub fn may_have_forgotten(&self, txn: TxnId) -> bool {
        self.horizons.get(&txn.coordinator).is_none_or(|horizon| txn < *horizon)
    }

    /// `issued` was issued by its coordinator after the loss: every later id is new. Only the
    /// first horizon learned counts (a later one would only widen the amnesia).
    pub fn learn_horizon(&mut self, issued: TxnId) {
        self.horizons.entry(issued.coordinator).or_insert(issued);
    }

    /// `txn` committed, and its writes were lost with the data here.
    pub fn lost_commit(&mut self, txn: TxnId) {
        if self.lost.len() >= LOST_KEPT {
            self.lost.remove(0);
        }
        self.lost.push(txn);
    }

    /// Commits whose writes were lost here, newest last.
    pub fn lost_commits(&self) -> &[TxnId] {
        &self.lost
    }

    /// Coordinators whose horizon is known.
    pub fn horizons(&self) -> impl Iterator<Item = TxnId> + '_ {
        self.horizons.values().copied()
    }
}

/// A participant that can run on after an accepted loss: both protocols' participants keep an
/// `Option<Amnesia>` and answer these the same way.
pub trait AfterDataLoss {
    fn amnesia(&self) -> Option<&Amnesia>;
    fn amnesia_slot(&mut self) -> &mut Option<Amnesia>;

    /// After an accepted loss of data: presume nothing about transactions that may have had a
    /// record here.
    fn set_amnesia(&mut self, amnesia: Amnesia) {
        *self.amnesia_slot() = Some(amnesia);
    }

    /// A coordinator issued `txn` after the loss: its later ids are new here.
    fn learn_horizon(&mut self, txn: TxnId) {
        if let Some(amnesia) = self.amnesia_slot() {
            amnesia.learn_horizon(txn);
        }
    }

    /// Transactions committed elsewhere whose writes this shard lost (newest last, bounded).
    fn lost_commits(&self) -> &[TxnId] {
        self.amnesia().map_or(&[], Amnesia::lost_commits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(c: u32, epoch: u32, sequence: u32) -> TxnId {
        TxnId { coordinator: NodeId(c), epoch, sequence }
    }

    #[test]
    fn everything_is_possibly_forgotten_until_a_horizon_is_learned() {
        let mut amnesia = Amnesia::default();
        assert!(amnesia.may_have_forgotten(txn(0, 9, 9)));
        amnesia.learn_horizon(txn(0, 3, 17));
        assert!(amnesia.may_have_forgotten(txn(0, 3, 16)));
        assert!(amnesia.may_have_forgotten(txn(0, 2, 900)));
        assert!(!amnesia.may_have_forgotten(txn(0, 3, 17)));
        assert!(!amnesia.may_have_forgotten(txn(0, 4, 0)));
        assert!(amnesia.may_have_forgotten(txn(1, 4, 0)), "another coordinator: unknown");
        amnesia.learn_horizon(txn(0, 5, 0));
        assert!(!amnesia.may_have_forgotten(txn(0, 4, 0)), "the first horizon stands");
    }
}
