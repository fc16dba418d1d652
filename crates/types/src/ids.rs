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

/// Why a string is not a transaction id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseTxnIdError(pub String);

impl fmt::Display for ParseTxnIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a transaction id (expected EPOCH.SEQUENCE@nNODE, e.g. 3.17@n0)",
            self.0
        )
    }
}

impl std::error::Error for ParseTxnIdError {}

impl std::str::FromStr for TxnId {
    type Err = ParseTxnIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseTxnIdError(s.to_string());
        let (numbers, node) = s.split_once("@n").ok_or_else(bad)?;
        let (epoch, sequence) = numbers.split_once('.').ok_or_else(bad)?;
        Ok(TxnId {
            coordinator: NodeId(node.parse().map_err(|_| bad())?),
            epoch: epoch.parse().map_err(|_| bad())?,
            sequence: sequence.parse().map_err(|_| bad())?,
        })
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
    fn txn_id_parses_what_it_displays_and_refuses_the_rest() {
        let txn = TxnId { coordinator: NodeId(4), epoch: 3, sequence: 17 };
        assert_eq!(txn.to_string().parse::<TxnId>(), Ok(txn));
        for bad in ["", "3.17", "3@n0", "x.1@n0", "1.2@m0", "1.2@n"] {
            assert!(bad.parse::<TxnId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn txn_ids_order_by_coordinator_then_epoch_then_sequence() {
        let a = TxnId { coordinator: NodeId(0), epoch: 1, sequence: 900 };
        let b = TxnId { coordinator: NodeId(0), epoch: 2, sequence: 1 };
        assert!(a < b, "a later epoch always sorts after every id of an earlier one");
    }
}
