//! **Applied exactly once**: each participant applies a committed branch once — a repeated
//! COMMIT is acknowledged, never applied again — and every branch it decided to commit is in its
//! store. Checked online (no second `Outcome` COMMIT for the same branch, across restarts) and at
//! the end (each store equals the sum of the branches its participant committed).
//!
//! Source: the seed documents' double-charge incident; DESIGN.md §3 ("COMMIT and ABORT are
//! idempotent at the participant").

use std::collections::BTreeMap;

use concord_types::{Decision, Key, NodeId, TxnId};

use super::{DecisionSource, History, ParticipantEnd};

pub const PROPERTY: &str = "exactly-once";

pub fn check_outcome(
    h: &mut History,
    node: NodeId,
    txn: TxnId,
    previous: Option<(Decision, u64)>,
    decision: Decision,
    source: DecisionSource,
    now: u64,
) {
    if source == DecisionSource::Outcome
        && decision == Decision::Commit
        && previous.is_some_and(|(d, _)| d == Decision::Commit)
    {
        h.violate(PROPERTY, now, format!("{node} applied {txn} a second time"));
    }
}

pub fn check_stores(
    history: &History,
    participants: &[ParticipantEnd],
    found: &mut Vec<(&'static str, String)>,
) {
    let mut expected: BTreeMap<NodeId, BTreeMap<Key, i64>> = BTreeMap::new();
    for (&(node, txn), &(decision, _)) in &history.participant_decisions {
        // A branch the node forgot with its log is in no store: the loss took it (and the
        // node, presuming nothing, never applies it again).
        if decision != Decision::Commit || history.forgot(node, txn) {
            continue;
        }
        let Some(branches) = history.branches.get(&txn) else { continue };
        for branch in branches.iter().filter(|b| b.node == node) {
            let values = expected.entry(node).or_default();
            for w in &branch.writes {
                *values.entry(w.key).or_insert(0) += w.delta;
            }
        }
    }
    for p in participants.iter().filter(|p| p.up) {
        let mut want = expected.remove(&p.node).unwrap_or_default();
        want.retain(|_, v| *v != 0);
        let mut have = p.values.clone();
        have.retain(|_, v| *v != 0);
        if want != have {
            found.push((
                PROPERTY,
                format!(
                    "{}'s store is {have:?}, but the branches it committed sum to {want:?}",
                    p.node
                ),
            ));
        }
    }
}
