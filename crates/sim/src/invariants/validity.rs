//! **Validity**: a transaction commits only if every participant voted YES (or READ-ONLY).
//! Checked two ways: no NO vote was sent for a committed transaction, and no committed
//! transaction carried a write its participant refuses (whatever messages were or were not seen).
//!
//! Source: the atomic-commit problem's second condition (Gray & Lamport 2006, §2: "the commit
//! decision can be reached only if all RMs were prepared to commit").

use std::collections::BTreeMap;

use concord_types::{Decision, TxnId};

use super::{History, TxnDecisions};
use crate::workload::is_refused;

pub const PROPERTY: &str = "validity";

pub fn check(
    history: &History,
    decisions: &BTreeMap<TxnId, TxnDecisions>,
    found: &mut Vec<(&'static str, String)>,
) {
    for (txn, d) in decisions {
        if !d.any(Decision::Commit) {
            continue;
        }
        if history.no_votes.contains(txn) {
            found.push((PROPERTY, format!("{txn} committed although a participant voted NO")));
        }
        let refused = history.branches.get(txn).into_iter().flatten().find(|b| is_refused(b));
        if let Some(b) = refused {
            found.push((PROPERTY, format!("{txn} committed with a write {} refuses", b.node)));
        }
    }
}
