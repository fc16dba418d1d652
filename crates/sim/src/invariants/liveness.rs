//! **Liveness after heal**: once the faults stop (every node up, partitions healed, no loss),
//! every prepared participant learns the outcome within a bounded virtual time, every
//! participant that voted YES on a committed transaction commits it, and every branch that
//! writes commits a transaction its client was told committed (an acknowledged commit is never
//! lost — the one-phase paths' answer must wait for the participant's record).
//!
//! Source: the liveness phase (TigerBeetle's VOPR and FoundationDB's simulation run a
//! safety phase, then heal and demand progress); DESIGN.md §3 ("recovery re-drives every logged
//! decision until all acks arrive").

use std::collections::BTreeMap;

use concord_types::{Decision, TxnId};

use super::{History, ParticipantEnd, TxnDecisions};

pub const PROPERTY: &str = "liveness";

pub fn check(
    history: &History,
    decisions: &BTreeMap<TxnId, TxnDecisions>,
    participants: &[ParticipantEnd],
    found: &mut Vec<(&'static str, String)>,
) {
    for p in participants {
        if !p.up {
            found.push((PROPERTY, format!("{} is still down after healing", p.node)));
        }
        for txn in &p.in_doubt {
            if touched_by_loss(history, *txn) {
                continue;
            }
            found.push((
                PROPERTY,
                format!("{} is still in doubt about {txn} after healing", p.node),
            ));
        }
    }
    for &(node, txn) in history.yes_at.keys() {
        if touched_by_loss(history, txn) {
            continue; // a vote went with a log; what is decided is taken, not applied there
        }
        let committed = decisions.get(&txn).is_some_and(|d| d.any(Decision::Commit));
        let decided = history.participant_decisions.get(&(node, txn)).map(|(d, _)| *d);
        if committed && decided != Some(Decision::Commit) {
            let has = decided.map_or_else(|| "no decision".to_string(), |d| format!("decided {d}"));
            found.push((PROPERTY, format!("{node} voted YES on committed {txn} but {has}")));
        }
    }
    for (&txn, _) in history.client_outcomes.iter().filter(|(_, d)| **d == Decision::Commit) {
        let branches = history.branches.get(&txn).map_or(&[][..], Vec::as_slice);
        for branch in branches.iter().filter(|b| !b.writes.is_empty()) {
            let node = branch.node;
            if touched_by_loss(history, txn) {
                continue;
            }
            let decided = history.participant_decisions.get(&(node, txn)).map(|(d, _)| *d);
            if decided != Some(Decision::Commit) {
                let has =
                    decided.map_or_else(|| "no decision".to_string(), |d| format!("decided {d}"));
                found.push((
                    PROPERTY,
                    format!("the client was told {txn} committed, but {node} has {has}"),
                ));
            }
        }
    }
}

/// Whether a branch of `txn` forgot it with a lost log. Such a transaction may stay undecided
/// for good: under early acknowledgement the outcome hangs on every branch's vote, and the
/// branch that lost its vote cannot give it again (docs/log-format.md). It is the operator's to
/// resolve, never presumed.
fn touched_by_loss(history: &History, txn: TxnId) -> bool {
    history
        .branches
        .get(&txn)
        .is_some_and(|branches| branches.iter().any(|b| history.forgot(b.node, txn)))
}
