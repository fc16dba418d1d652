//! Reconciliation: what to do with the prepared branches the databases list.
//!
//! A database never asks the coordinator for an outcome (it has no way to): a prepared branch
//! just sits in `pg_prepared_xacts`, `XA RECOVER` or Redis's prepared records. Reconciliation
//! asks on its behalf — each listed branch of this coordinator is an inquiry, answered by the
//! 2PC core's own rule (`two_phase::Coordinator::inquiry_answer`): COMMIT once the decision is
//! durable, ABORT for a transaction the core has no record of (presumed abort), nothing while
//! it is undecided. This module is the pure part, so `concord recover --dry-run` prints exactly
//! what a pass would do.
//!
//! ```text
//!   branch listed as prepared               │ action
//!   ────────────────────────────────────────┼──────────────────────────────────────────────
//!   not a Concord gid / other cluster/node  │ leave it (never touch another's branch)
//!   newer epoch than this run's             │ leave it (another process uses this node id)
//!   the core answers nothing (undecided)    │ leave it (its transaction is running)
//!   the core answers COMMIT                 │ COMMIT PREPARED
//!   the core answers ABORT                  │ ROLLBACK PREPARED — unless the ledger holds a
//!                                           │ COMMIT: then the core forgot a finished
//!                                           │ transaction after the listing was taken, and
//!                                           │ COMMIT PREPARED finds the branch done
//! ```
//!
//! No grace period is needed: a branch is only prepared after the core began its transaction,
//! and the core answers nothing until it has decided; a prepare that lands after the core
//! aborted is rolled back, as the core says.

use std::collections::BTreeMap;
use std::fmt;

use concord_types::{Decision, NodeId, TxnId};

use crate::log::BranchRef;
use concord_participants::gid::Gid;

/// A prepared branch as a database lists it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Listed {
    pub database: String,
    pub gid: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    LoggedCommit,
    PresumedAbort,
    Running,
    OtherCoordinator,
    /// A newer epoch than this run's: another process uses this node id (a misconfiguration).
    FutureEpoch,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::LoggedCommit => f.write_str("the log says COMMIT"),
            Reason::PresumedAbort => f.write_str("no COMMIT decision logged: presumed abort"),
            Reason::Running => f.write_str("its transaction is running now; the core decides it"),
            Reason::OtherCoordinator => f.write_str("another coordinator's branch"),
            Reason::FutureEpoch => f.write_str(
                "from a newer epoch than this coordinator's: another process uses this node id; \
                 left alone — fix the configuration",
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Commit { txn: TxnId, node: NodeId, branch: BranchRef, reason: Reason },
    Rollback { txn: TxnId, node: NodeId, branch: BranchRef, reason: Reason },
    Leave { branch: BranchRef, reason: Reason },
}

impl Action {
    pub fn txn(&self) -> Option<TxnId> {
        match self {
            Action::Commit { txn, .. } | Action::Rollback { txn, .. } => Some(*txn),
            Action::Leave { branch, .. } => Gid::parse(&branch.gid).map(|g| g.txn),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Commit { branch, reason, .. } => {
                write!(f, "commit   {} in {}: {reason}", branch.gid, branch.database)
            }
            Action::Rollback { branch, reason, .. } => {
                write!(f, "rollback {} in {}: {reason}", branch.gid, branch.database)
            }
            Action::Leave { branch, reason } => {
                write!(f, "leave    {} in {}: {reason}", branch.gid, branch.database)
            }
        }
    }
}

/// Who the coordinator is, and what its core answers.
pub struct Knowledge<'a> {
    pub node: NodeId,
    pub cluster: &'a str,
    /// The epoch this run issues ids in.
    pub epoch: u32,
    /// What the core answers an inquiry about a transaction (`None`: undecided, running).
    pub answer: &'a dyn Fn(TxnId) -> Option<Decision>,
    /// The configured database a branch node stands for.
    pub database_of: &'a dyn Fn(NodeId) -> Option<String>,
}

impl fmt::Debug for Knowledge<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Knowledge")
            .field("node", &self.node)
            .field("cluster", &self.cluster)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// Decides what to do with each listed branch.
pub fn plan(know: &Knowledge<'_>, listed: &[Listed]) -> Vec<Action> {
    // Several configured schemas of one MariaDB server all list the server's XA branches: act
    // once per gid, through the database its branch node names when that one lists it.
    let mut by_gid: BTreeMap<&str, Vec<&Listed>> = BTreeMap::new();
    let mut order = Vec::new();
    for item in listed {
        let entry = by_gid.entry(item.gid.as_str()).or_default();
        if entry.is_empty() {
            order.push(item.gid.as_str());
        }
        entry.push(item);
    }
    let mut actions = Vec::new();
    for gid_text in order {
        let Some(gid) = Gid::parse(gid_text) else { continue };
        let listings = &by_gid[gid_text];
        let node = NodeId(u32::from(gid.branch));
        let named = (know.database_of)(node);
        let database = listings
            .iter()
            .find(|l| Some(&l.database) == named.as_ref())
            .unwrap_or(&listings[0])
            .database
            .clone();
        let branch = BranchRef { database, gid: gid_text.to_string() };
        if gid.cluster != know.cluster || gid.txn.coordinator != know.node {
            actions.push(Action::Leave { branch, reason: Reason::OtherCoordinator });
            continue;
        }
        let txn = gid.txn;
        if txn.epoch > know.epoch {
            actions.push(Action::Leave { branch, reason: Reason::FutureEpoch });
            continue;
        }
        actions.push(match (know.answer)(txn) {
            Some(Decision::Commit) => {
                Action::Commit { txn, node, branch, reason: Reason::LoggedCommit }
            }
            Some(Decision::Abort) => {
                Action::Rollback { txn, node, branch, reason: Reason::PresumedAbort }
            }
            None => Action::Leave { branch, reason: Reason::Running },
        });
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: NodeId = NodeId(9);

    fn txn(epoch: u32, sequence: u32) -> TxnId {
        TxnId { coordinator: ME, epoch, sequence }
    }

    fn gid(txn: TxnId, branch: u16) -> String {
        Gid::new("t", txn, branch).to_string()
    }

    fn listed(database: &str, gid: String) -> Listed {
        Listed { database: database.into(), gid }
    }

    fn branch(database: &str, gid: String) -> BranchRef {
        BranchRef { database: database.into(), gid }
    }

    /// The core committed `committed`, runs `running`, and knows nothing else.
    fn run(committed: &[TxnId], running: &[TxnId], listed: &[Listed]) -> Vec<Action> {
        let answer = |t: TxnId| {
            if committed.contains(&t) {
                Some(Decision::Commit)
            } else if running.contains(&t) {
                None
            } else {
                Some(Decision::Abort)
            }
        };
        let database_of = |n: NodeId| match n.0 {
            1 => Some("pg".to_string()),
            2 => Some("maria".to_string()),
            _ => None,
        };
        let know = Knowledge {
            node: ME,
            cluster: "t",
            epoch: 3,
            answer: &answer,
            database_of: &database_of,
        };
        plan(&know, listed)
    }

    #[test]
    fn the_cores_answer_is_carried_out() {
        let committed = txn(2, 1);
        let orphan = txn(1, 7);
        let young = txn(3, 2);
        let actions = run(
            &[committed],
            &[],
            &[
                listed("pg", gid(committed, 1)),
                listed("pg", gid(orphan, 1)),
                listed("maria", gid(young, 2)),
            ],
        );
        assert_eq!(
            actions,
            vec![
                Action::Commit {
                    txn: committed,
                    node: NodeId(1),
                    branch: branch("pg", gid(committed, 1)),
                    reason: Reason::LoggedCommit
                },
                Action::Rollback {
                    txn: orphan,
                    node: NodeId(1),
                    branch: branch("pg", gid(orphan, 1)),
                    reason: Reason::PresumedAbort
                },
                // Of this run, undecided and not running: the core has no record, so ABORT.
                Action::Rollback {
                    txn: young,
                    node: NodeId(2),
                    branch: branch("maria", gid(young, 2)),
                    reason: Reason::PresumedAbort
                },
            ]
        );
    }

    #[test]
    fn running_transactions_and_other_coordinators_are_never_touched() {
        let running = txn(3, 5);
        let other_node = Gid::new("t", TxnId { coordinator: NodeId(8), epoch: 1, sequence: 1 }, 1);
        let other_cluster = Gid::new("u", txn(1, 1), 1);
        let actions = run(
            &[],
            &[running],
            &[
                listed("pg", gid(running, 1)),
                listed("pg", other_node.to_string()),
                listed("pg", other_cluster.to_string()),
                listed("pg", "someone-elses-gid".into()),
            ],
        );
        assert_eq!(
            actions,
            vec![
                Action::Leave { branch: branch("pg", gid(running, 1)), reason: Reason::Running },
                Action::Leave {
                    branch: branch("pg", other_node.to_string()),
                    reason: Reason::OtherCoordinator
                },
                Action::Leave {
                    branch: branch("pg", other_cluster.to_string()),
                    reason: Reason::OtherCoordinator
                },
            ]
        );
    }

    #[test]
    fn a_branch_listed_by_two_schemas_of_one_server_is_acted_on_once_through_its_own() {
        let committed = txn(2, 1);
        let actions = run(
            &[committed],
            &[],
            &[listed("maria-b", gid(committed, 2)), listed("maria", gid(committed, 2))],
        );
        assert_eq!(
            actions,
            vec![Action::Commit {
                txn: committed,
                node: NodeId(2),
                branch: branch("maria", gid(committed, 2)),
                reason: Reason::LoggedCommit
            }]
        );
    }

    #[test]
    fn a_branch_from_a_future_epoch_is_left_alone() {
        let future = gid(txn(4, 1), 1);
        let actions = run(&[], &[], &[listed("pg", future.clone())]);
        assert_eq!(
            actions,
            vec![Action::Leave { branch: branch("pg", future), reason: Reason::FutureEpoch }]
        );
    }
}
