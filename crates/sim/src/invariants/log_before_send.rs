//! **Log before you send**: a participant's YES vote leaves only once its prepare record is
//! durable, and a COMMIT decision message (from the coordinator, or a peer repeating it) leaves
//! only once the coordinator's commit decision is durable — or, for a transaction run with
//! 2PC's early acknowledgement, once every one of its branches' prepare records is (those
//! records are then the decision), or, from a participant answering a status query, once its
//! own commit record is (a one-phase branch's is the decision). Checked at the moment of sending, so it holds whatever the
//! scheduling of syncs and crashes.
//!
//! Source: DESIGN.md §1 ("log before you send is structural") and §3 ("a participant votes YES
//! only after its prepare record is durable"; "the coordinator forces its COMMIT decision before
//! sending any COMMIT"); the seed track's "Handle Coordinator Failure" task.

use concord_commit::MessageKind;
use concord_types::{Decision, NodeId, TxnId, Vote};

use super::History;

pub const PROPERTY: &str = "log-before-send";

/// `coordinator_logs_decision`: false for protocols whose decision is durable elsewhere (Paxos
/// Commit's acceptors); then only the YES half applies.
pub fn on_send(
    h: &mut History,
    from: NodeId,
    kind: MessageKind,
    coordinator_logs_decision: bool,
    now: u64,
) {
    match kind {
        MessageKind::Vote { txn, vote: Vote::Yes }
            if !h.durable_prepares.contains(&(from, txn)) =>
        {
            let detail = format!("{from} voted YES on {txn} before its prepare was durable");
            h.violate(PROPERTY, now, detail);
        }
        MessageKind::Decision { txn, decision: Decision::Commit }
            if coordinator_logs_decision
                && h.logged.get(&txn) != Some(&Decision::Commit)
                && !every_prepare_durable(h, txn)
                && !h
                    .participant_decisions
                    .get(&(from, txn))
                    .is_some_and(|(d, _)| *d == Decision::Commit) =>
        {
            let detail = format!("{from} sent COMMIT for {txn} before the decision was durable");
            h.violate(PROPERTY, now, detail);
        }
        _ => {}
    }
}

/// Early acknowledgement's commit point: every branch of `txn` has a durable prepare record.
fn every_prepare_durable(h: &History, txn: TxnId) -> bool {
    h.early_ack.contains(&txn)
        && h.branches.get(&txn).is_some_and(|branches| {
            branches.iter().all(|b| h.durable_prepares.contains(&(b.node, txn)))
        })
}
