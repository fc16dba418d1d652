//! Globally unique transaction ids: `epoch.sequence`, the epoch durably bumped at every start.
//!
//! A coordinator recovers the highest epoch in its log, asks to persist the next one, and issues
//! no id until that record is durable. Should the sequence run out, it moves to a new epoch the
//! same way. So an id can never be issued twice, whatever crashes in between.

use concord_types::{NodeId, TxnId};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EpochClock {
    coordinator: NodeId,
    epoch: u32,
    durable: bool,
    next_sequence: u32,
}

/// What [`EpochClock::issue`] gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issue {
    Txn(TxnId),
    /// The current epoch is not durable yet: hold the request until it is.
    Wait,
    /// The sequence ran out: persist this new epoch (forced), then hold the request.
    PersistEpoch(u32),
}

impl EpochClock {
    /// After a restart whose log's highest epoch was `highest_logged` (None on a first start).
    /// Returns the clock and the epoch the caller must persist before any id is issued.
    pub fn recover(coordinator: NodeId, highest_logged: Option<u32>) -> (Self, u32) {
        let epoch = highest_logged.map_or(1, |e| {
            e.checked_add(1).expect("2^32 coordinator restarts exhaust the epoch space")
        });
        (EpochClock { coordinator, epoch, durable: false, next_sequence: 1 }, epoch)
    }

    /// The epoch record for `epoch` is durable.
    pub fn on_persisted(&mut self, epoch: u32) {
        if epoch == self.epoch {
            self.durable = true;
        }
    }

    pub fn issue(&mut self) -> Issue {
        if !self.durable {
            return Issue::Wait;
        }
        if self.next_sequence == u32::MAX {
            self.epoch = self.epoch.checked_add(1).expect("epoch space exhausted");
            self.durable = false;
            self.next_sequence = 1;
            return Issue::PersistEpoch(self.epoch);
        }
        let txn = TxnId {
            coordinator: self.coordinator,
            epoch: self.epoch,
            sequence: self.next_sequence,
        };
        self.next_sequence += 1;
        Issue::Txn(txn)
    }

    /// The epoch ids are issued in (durable or being made durable).
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Whether `txn` is one of this coordinator's ids that has been handed out.
    pub fn has_issued(&self, txn: TxnId) -> bool {
        txn.coordinator == self.coordinator
            && (txn.epoch < self.epoch
                || (txn.epoch == self.epoch && txn.sequence < self.next_sequence))
    }

    pub fn is_ready(&self) -> bool {
        self.durable
    }

    /// The sequence the next id of the current epoch will have.
    pub fn next_sequence(&self) -> u32 {
        self.next_sequence
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_id_before_the_epoch_is_durable_and_restarts_never_reuse_one() {
        let (mut clock, epoch) = EpochClock::recover(NodeId(0), None);
        assert_eq!(epoch, 1);
        assert_eq!(clock.issue(), Issue::Wait);
        clock.on_persisted(1);
        let first = clock.issue();
        assert_eq!(first, Issue::Txn(TxnId { coordinator: NodeId(0), epoch: 1, sequence: 1 }));

        let (mut clock, epoch) = EpochClock::recover(NodeId(0), Some(1));
        assert_eq!(epoch, 2);
        clock.on_persisted(2);
        assert_ne!(clock.issue(), first);
    }

    #[test]
    fn an_exhausted_sequence_moves_to_a_new_durable_epoch() {
        let (mut clock, _) = EpochClock::recover(NodeId(0), Some(4));
        clock.on_persisted(5);
        clock.next_sequence = u32::MAX;
        assert_eq!(clock.issue(), Issue::PersistEpoch(6));
        assert_eq!(clock.issue(), Issue::Wait);
        clock.on_persisted(6);
        assert_eq!(
            clock.issue(),
            Issue::Txn(TxnId { coordinator: NodeId(0), epoch: 6, sequence: 1 })
        );
    }
}
