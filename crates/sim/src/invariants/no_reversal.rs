//! **No decision reversal**: once a participant, the coordinator's log or the client has a
//! decision for a transaction, it never changes — across crashes and restarts too.
//!
//! Source: DESIGN.md §3 ("never a silent unilateral decision after YES"); the durability of a
//! decision is what makes 2PC's blocking worth its cost.

use concord_types::{Decision, NodeId, TxnId};

use super::History;

pub const PROPERTY: &str = "no-reversal";

pub fn check_participant(
    h: &mut History,
    node: NodeId,
    txn: TxnId,
    previous: Option<(Decision, u64)>,
    decision: Decision,
    now: u64,
) {
    if let Some((before, _)) = previous {
        if before != decision {
            h.violate(PROPERTY, now, format!("{node} decided {txn} {before}, later {decision}"));
        }
    }
}

pub fn check_client(
    h: &mut History,
    txn: TxnId,
    previous: Option<Decision>,
    decision: Decision,
    now: u64,
) {
    if previous.is_some_and(|before| before != decision) {
        h.violate(
            PROPERTY,
            now,
            format!("the client was told {txn} {previous:?}, later {decision}"),
        );
    }
}

pub fn check_logged(
    h: &mut History,
    txn: TxnId,
    previous: Option<Decision>,
    decision: Decision,
    now: u64,
) {
    if let Some(before) = previous.filter(|before| *before != decision) {
        h.violate(PROPERTY, now, format!("the logs hold both {before} and {decision} for {txn}"));
    }
}
