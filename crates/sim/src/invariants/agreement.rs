//! **Agreement**: no two participants decide a transaction differently, no participant decides
//! against the coordinator's logged decision, and the client is never told the opposite of what
//! the participants did.
//!
//! Source: the atomic-commit problem's first condition (Gray & Lamport, "Consensus on
//! Transaction Commit", 2006, §2: "all RMs that reach a decision reach the same one"); the seed
//! documents' production incident, where three databases disagreed about one transfer.

use concord_types::Decision;

use super::TxnDecisions;
use concord_types::TxnId;
use std::collections::BTreeMap;

pub const PROPERTY: &str = "agreement";

pub fn check(decisions: &BTreeMap<TxnId, TxnDecisions>, found: &mut Vec<(&'static str, String)>) {
    for (txn, d) in decisions {
        if d.is_split() {
            let who: Vec<String> = d.participants.iter().map(|(n, x)| format!("{n} {x}")).collect();
            found.push((PROPERTY, format!("{txn} split: {}", who.join(", "))));
        }
        for (what, other) in [("the log", d.logged), ("the client", d.client)] {
            let Some(other) = other else { continue };
            for (node, decision) in &d.participants {
                if *decision != other {
                    found.push((
                        PROPERTY,
                        format!("{txn}: {node} {decision} but {what} says {other}"),
                    ));
                }
            }
        }
        if let (Some(Decision::Commit), Some(Decision::Abort))
        | (Some(Decision::Abort), Some(Decision::Commit)) = (d.logged, d.client)
        {
            found.push((PROPERTY, format!("{txn}: the log and the client disagree")));
        }
    }
}
