//! **Status honesty**: every status verdict agrees with what was applied. COMMITTED ⇒ no
//! participant aborted the transaction and neither the log nor the client said ABORT;
//! ABORTED ⇒ no participant committed it and neither the log nor the client (for a transaction
//! that writes) said COMMIT. FORGOTTEN claims nothing and is only counted.
//!
//! Source: issue 18 ("honest answers"): after a coordinator restart, shards that had forgotten
//! one-phase commits answered ABORT for them, so `concord txn show` — the documented answer to
//! an unknown outcome — told clients to redo work that had committed. "I forgot" is not
//! "abort" (STYLE.md: answers are promises). A transaction that writes nothing applies nothing,
//! so ABORTED is a true answer about its effect whatever its client was told.

use std::collections::{BTreeMap, HashMap};

use concord_commit::status::Verdict;
use concord_commit::Branch;
use concord_types::{Decision, TxnId};

use super::TxnDecisions;

pub const PROPERTY: &str = "status-honesty";

pub fn check(
    verdicts: &[(TxnId, Verdict, u64)],
    decisions: &BTreeMap<TxnId, TxnDecisions>,
    branches: &HashMap<TxnId, Vec<Branch>>,
    found: &mut Vec<(&'static str, String)>,
) {
    let none = TxnDecisions::default();
    for &(txn, verdict, at_us) in verdicts {
        let d = decisions.get(&txn).unwrap_or(&none);
        let writes = branches.get(&txn).is_none_or(|b| b.iter().any(|b| !b.writes.is_empty()));
        let against = match verdict {
            Verdict::Committed => Decision::Abort,
            Verdict::Aborted => Decision::Commit,
            Verdict::Forgotten => continue,
        };
        let mut contradicted: Vec<String> = d
            .participants
            .iter()
            .filter(|(_, decision)| *decision == against)
            .map(|(node, _)| format!("{node} {against}"))
            .collect();
        if d.logged == Some(against) {
            contradicted.push(format!("the log says {against}"));
        }
        if d.client == Some(against) && (writes || verdict == Verdict::Committed) {
            contradicted.push(format!("the client was told {against}"));
        }
        if !contradicted.is_empty() {
            found.push((
                PROPERTY,
                format!(
                    "{txn}: status said {verdict} at {:.3} ms, but {}",
                    at_us as f64 / 1000.0,
                    contradicted.join(", ")
                ),
            ));
        }
    }
}
