use std::fmt;

/// A node of the cluster (coordinator or participant). Fixed width on disk and wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// A transaction, named by the coordinator that runs it: `epoch.sequence@coordinator`.
///
/// The coordinator durably records a new epoch before it issues any id in it, and the sequence
/// restarts at 1 in each epoch, so an id is globally unique across coordinator restarts. Carrying
/// the coordinator lets a participant ask the right node, and lets a coordinator recognise its own
/// branches in a shared database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxnId {
    pub coordinator: NodeId,
    pub epoch: u32,
    pub sequence: u32,
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.epoch, self.sequence, self.coordinator)
    }
}

/// A client's handle for a request, before the coordinator has named the transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_id_displays_epoch_sequence_and_coordinator() {
        let txn = TxnId { coordinator: NodeId(0), epoch: 3, sequence: 17 };
        assert_eq!(txn.to_string(), "3.17@n0");
    }

    #[test]
    fn txn_ids_order_by_coordinator_then_epoch_then_sequence() {
        let a = TxnId { coordinator: NodeId(0), epoch: 1, sequence: 900 };
        let b = TxnId { coordinator: NodeId(0), epoch: 2, sequence: 1 };
        assert!(a < b, "a later epoch always sorts after every id of an earlier one");
    }
}
