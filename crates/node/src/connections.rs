//! How many connections a node serves at once: in all, and from one address, so that one
//! client opening connections without end runs out of its own share, not of the node's
//! descriptors (issue 19 found 1,070 idle connections exhausting them).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Connections a node serves at once.
pub(crate) const MAX_CONNECTIONS: usize = 4_096;
/// Connections a node serves at once from one address (loopback counts as one address too).
pub(crate) const MAX_PER_ADDRESS: usize = 1_024;

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
    refused: u64,
}

/// The node's count of open connections.
#[derive(Debug, Clone, Default)]
pub(crate) struct Connections(Arc<Mutex<Counts>>);

/// One open connection's place in the count, given back when dropped (the connection ended).
#[derive(Debug)]
pub(crate) struct Slot {
    counts: Arc<Mutex<Counts>>,
    address: IpAddr,
}

impl Connections {
    /// A slot for a connection from `address`, or why not (and whether to say so: a refusal
    /// is logged the first time and then every thousandth, so a flood does not flood the log).
    pub(crate) fn admit(&self, address: IpAddr) -> Result<Slot, (String, bool)> {
        self.admit_within(address, MAX_CONNECTIONS, MAX_PER_ADDRESS)
    }

    fn admit_within(
        &self,
        address: IpAddr,
        max: usize,
        per_address: usize,
    ) -> Result<Slot, (String, bool)> {
        let mut counts = self.0.lock().expect("not poisoned");
        let from_address = counts.by_address.get(&address).copied().unwrap_or(0);
        let why = if counts.total >= max {
            Some(format!("{max} connections are open"))
        } else if from_address >= per_address {
            Some(format!("{per_address} connections from {address} are open"))
        } else {
            None
        };
        if let Some(why) = why {
            counts.refused += 1;
            let say = counts.refused % 1_000 == 1;
            return Err((format!("{why} ({} refused so far)", counts.refused), say));
        }
        counts.total += 1;
        *counts.by_address.entry(address).or_insert(0) += 1;
        Ok(Slot { counts: Arc::clone(&self.0), address })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("not poisoned");
        counts.total -= 1;
        if let Some(n) = counts.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                counts.by_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_share_and_a_closed_connection_frees_its_slot() {
        let connections = Connections::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let held: Vec<Slot> = (0..3).map(|_| connections.admit_within(a, 5, 3).unwrap()).collect();
        let (why, say) = connections.admit_within(a, 5, 3).unwrap_err();
        assert!(why.contains("from 10.0.0.1") && say, "{why}");
        let more: Vec<Slot> = (0..2).map(|_| connections.admit_within(b, 5, 3).unwrap()).collect();
        let (why, say) = connections.admit_within(b, 5, 3).unwrap_err();
        assert!(why.contains("5 connections are open") && !say, "{why}");
        drop(held);
        assert!(connections.admit_within(a, 5, 3).is_ok(), "closed connections give back slots");
        drop(more);
        assert_eq!(connections.0.lock().unwrap().total, 0);
    }
}
