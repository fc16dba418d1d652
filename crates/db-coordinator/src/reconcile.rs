//! Reconciliation: what to do with the prepared branches the databases list, given the log.
//!
//! A pure function of the coordinator's knowledge (its [`Ledger`], the transactions it is
//! running now, its epoch) and of what the databases list (`pg_prepared_xacts`, `XA RECOVER`).
//! The coordinator runs it at start and periodically; `concord recover --dry-run` prints it.
//!
//! ```text
//!   branch listed as prepared               │ action
//!   ────────────────────────────────────────┼──────────────────────────────────────────────
//!   not a Concord gid / other cluster/node  │ leave it (never touch another's branch)
//!   this node, transaction running now      │ leave it (the running code decides)
//!   logged COMMIT                           │ COMMIT PREPARED
//!   logged ABORT                            │ ROLLBACK PREPARED
//!   no decision, older epoch                │ ROLLBACK PREPARED (presumed abort: that run is dead)
//!   no decision, this epoch, seen > grace   │ ROLLBACK PREPARED (presumed abort)
//!   no decision, this epoch, within grace   │ leave it for now (its prepare may be in flight)
//!
//!   logged decision, not finished, branch   │ verify: read the branch's marker row to learn
//!   no longer listed                        │ its actual outcome (heuristic detection)
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;

use concord_types::{Decision, NodeId, TxnId};

use crate::log::{BranchRef, Ledger};
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
    LoggedAbort,
    PresumedAbortOlderEpoch,
    PresumedAbortPastGrace,
    Running,
    WithinGrace {
        remaining_ms: u64,
    },
    OtherCoordinator,
    /// A newer epoch than this run's: another process uses this node id (a misconfiguration).
    FutureEpoch,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::LoggedCommit => f.write_str("the log says COMMIT"),
            Reason::LoggedAbort => f.write_str("the log says ABORT"),
            Reason::PresumedAbortOlderEpoch => f.write_str(
                "no decision logged and its coordinator run (epoch) is over: presumed abort",
            ),
            Reason::PresumedAbortPastGrace => {
                f.write_str("no decision logged and older than the grace period: presumed abort")
            }
            Reason::Running => f.write_str("its transaction is running now"),
            Reason::WithinGrace { remaining_ms } => {
                write!(
                    f,
                    "no decision logged yet; rolled back in {remaining_ms} ms if still undecided"
                )
            }
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
    Commit {
        txn: TxnId,
        branch: BranchRef,
        reason: Reason,
    },
    Rollback {
        txn: TxnId,
        branch: BranchRef,
        reason: Reason,
    },
    /// The branch is not listed as prepared: learn its actual outcome from its marker row.
    Verify {
        txn: TxnId,
        branch: BranchRef,
        expected: Decision,
    },
    Leave {
        branch: BranchRef,
        reason: Reason,
    },
}

impl Action {
    pub fn txn(&self) -> Option<TxnId> {
        match self {
            Action::Commit { txn, .. }
            | Action::Rollback { txn, .. }
            | Action::Verify { txn, .. } => Some(*txn),
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
            Action::Verify { branch, expected, .. } => write!(
                f,
                "verify   {} in {}: no longer prepared; check it was {}",
                branch.gid,
                branch.database,
                match expected {
                    Decision::Commit => "committed",
                    Decision::Abort => "rolled back",
                }
            ),
            Action::Leave { branch, reason } => {
                write!(f, "leave    {} in {}: {reason}", branch.gid, branch.database)
            }
        }
    }
}

/// Who the coordinator is and what it is doing, for [`plan`].
#[derive(Debug)]
pub struct Knowledge<'a> {
    pub node: NodeId,
    pub cluster: &'a str,
    /// The epoch this run issues ids in.
    pub epoch: u32,
    pub ledger: &'a Ledger,
    /// Transactions this run has begun and not yet finished: their code decides them.
    pub running: &'a HashSet<TxnId>,
    /// Databases whose listing succeeded: only their absent branches are verified (a branch
    /// missing from a failed listing says nothing).
    pub listed_databases: &'a HashSet<String>,
}

/// Decides what to do with each listed branch. `first_seen_ms` says when reconciliation first
/// saw each gid listed (the caller keeps it across passes; absent means now).
pub fn plan(
    know: &Knowledge<'_>,
    listed: &[Listed],
    first_seen_ms: &HashMap<String, u64>,
    now_ms: u64,
    grace_ms: u64,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut listed_gids = HashSet::new();
    for item in listed {
        let Some(gid) = Gid::parse(&item.gid) else { continue };
        // Several configured schemas of one MariaDB server all list the server's XA branches:
        // act once per gid, through the database the log names when it names one.
        if !listed_gids.insert(item.gid.as_str()) {
            continue;
        }
        let logged =
            know.ledger.get(gid.txn).and_then(|d| d.branches.iter().find(|b| b.gid == item.gid));
        let branch = logged.cloned().unwrap_or_else(|| BranchRef {
            database: item.database.clone(),
            gid: item.gid.clone(),
        });
        if gid.cluster != know.cluster || gid.txn.coordinator != know.node {
            actions.push(Action::Leave { branch, reason: Reason::OtherCoordinator });
            continue;
        }
        let txn = gid.txn;
        if txn.epoch > know.epoch {
            actions.push(Action::Leave { branch, reason: Reason::FutureEpoch });
            continue;
        }
        if know.running.contains(&txn) {
            actions.push(Action::Leave { branch, reason: Reason::Running });
            continue;
        }
        let action = match know.ledger.get(txn).map(|d| d.decision) {
            Some(Decision::Commit) => Action::Commit { txn, branch, reason: Reason::LoggedCommit },
            Some(Decision::Abort) => Action::Rollback { txn, branch, reason: Reason::LoggedAbort },
            None if txn.epoch < know.epoch => {
                Action::Rollback { txn, branch, reason: Reason::PresumedAbortOlderEpoch }
            }
            None => {
                let seen = first_seen_ms.get(&item.gid).copied().unwrap_or(now_ms);
                let age_ms = now_ms.saturating_sub(seen);
                if age_ms >= grace_ms {
                    Action::Rollback { txn, branch, reason: Reason::PresumedAbortPastGrace }
                } else {
                    let reason = Reason::WithinGrace { remaining_ms: grace_ms - age_ms };
                    Action::Leave { branch, reason }
                }
            }
        };
        actions.push(action);
    }
    for (txn, decided) in know.ledger.unfinished() {
        if know.running.contains(&txn) {
            continue;
        }
        for branch in &decided.branches {
            if !listed_gids.contains(branch.gid.as_str())
                && know.listed_databases.contains(&branch.database)
            {
                actions.push(Action::Verify {
                    txn,
                    branch: branch.clone(),
                    expected: decided.decision,
                });
            }
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{DecisionSource, Record};

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

    fn decided(txn: TxnId, decision: Decision) -> Record {
        Record::Decided {
            txn,
            decision,
            source: DecisionSource::Protocol,
            at_ms: 0,
            branches: vec![branch("pg", gid(txn, 0)), branch("maria", gid(txn, 1))],
        }
    }

    fn run(
        ledger: &Ledger,
        running: &[TxnId],
        listed: &[Listed],
        seen: &[(&str, u64)],
    ) -> Vec<Action> {
        let running: HashSet<TxnId> = running.iter().copied().collect();
        let listed_databases = ["pg", "maria"].map(String::from).into_iter().collect();
        let know = Knowledge {
            node: ME,
            cluster: "t",
            epoch: 3,
            ledger,
            running: &running,
            listed_databases: &listed_databases,
        };
        let seen = seen.iter().map(|(g, t)| ((*g).to_string(), *t)).collect();
        plan(&know, listed, &seen, 100_000, 10_000)
    }

    #[test]
    fn logged_decisions_are_driven_to_completion() {
        let committed = txn(2, 1);
        let aborted = txn(3, 4);
        let ledger = Ledger::replay([
            Record::Epoch(3),
            decided(committed, Decision::Commit),
            decided(aborted, Decision::Abort),
        ]);
        let actions = run(
            &ledger,
            &[],
            &[listed("pg", gid(committed, 0)), listed("maria", gid(aborted, 1))],
            &[],
        );
        assert_eq!(
            actions,
            vec![
                Action::Commit {
                    txn: committed,
                    branch: branch("pg", gid(committed, 0)),
                    reason: Reason::LoggedCommit
                },
                Action::Rollback {
                    txn: aborted,
                    branch: branch("maria", gid(aborted, 1)),
                    reason: Reason::LoggedAbort
                },
                // The branches not listed any more are checked, not assumed.
                Action::Verify {
                    txn: committed,
                    branch: branch("maria", gid(committed, 1)),
                    expected: Decision::Commit
                },
                Action::Verify {
                    txn: aborted,
                    branch: branch("pg", gid(aborted, 0)),
                    expected: Decision::Abort
                },
            ]
        );
    }

    #[test]
    fn undecided_branches_of_an_older_epoch_are_presumed_aborted_at_once() {
        let orphan = txn(1, 7);
        let ledger = Ledger::replay([Record::Epoch(3)]);
        let actions = run(&ledger, &[], &[listed("pg", gid(orphan, 0))], &[]);
        assert_eq!(
            actions,
            vec![Action::Rollback {
                txn: orphan,
                branch: branch("pg", gid(orphan, 0)),
                reason: Reason::PresumedAbortOlderEpoch
            }]
        );
    }

    #[test]
    fn undecided_branches_of_this_epoch_wait_out_the_grace_period() {
        let young = txn(3, 1);
        let old = txn(3, 2);
        let ledger = Ledger::replay([Record::Epoch(3)]);
        let young_gid = gid(young, 0);
        let old_gid = gid(old, 0);
        let actions = run(
            &ledger,
            &[],
            &[listed("pg", young_gid.clone()), listed("pg", old_gid.clone())],
            &[(&young_gid, 95_000), (&old_gid, 90_000)],
        );
        assert_eq!(
            actions,
            vec![
                Action::Leave {
                    branch: branch("pg", young_gid),
                    reason: Reason::WithinGrace { remaining_ms: 5_000 }
                },
                Action::Rollback {
                    txn: old,
                    branch: branch("pg", old_gid),
                    reason: Reason::PresumedAbortPastGrace
                },
            ]
        );
    }

    #[test]
    fn running_transactions_and_other_coordinators_are_never_touched() {
        let running = txn(3, 5);
        let ledger = Ledger::replay([Record::Epoch(3), decided(running, Decision::Commit)]);
        let other_node = Gid::new("t", TxnId { coordinator: NodeId(8), epoch: 1, sequence: 1 }, 0);
        let other_cluster = Gid::new("u", txn(1, 1), 0);
        let actions = run(
            &ledger,
            &[running],
            &[
                listed("pg", gid(running, 0)),
                listed("pg", other_node.to_string()),
                listed("pg", other_cluster.to_string()),
                listed("pg", "someone-elses-gid".into()),
            ],
            &[],
        );
        assert_eq!(
            actions,
            vec![
                Action::Leave { branch: branch("pg", gid(running, 0)), reason: Reason::Running },
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
        let ledger = Ledger::replay([Record::Epoch(3), decided(committed, Decision::Commit)]);
        let actions = run(
            &ledger,
            &[],
            &[listed("maria-b", gid(committed, 1)), listed("maria", gid(committed, 1))],
            &[],
        );
        assert_eq!(
            actions,
            vec![
                Action::Commit {
                    txn: committed,
                    branch: branch("maria", gid(committed, 1)),
                    reason: Reason::LoggedCommit
                },
                Action::Verify {
                    txn: committed,
                    branch: branch("pg", gid(committed, 0)),
                    expected: Decision::Commit
                },
            ]
        );
    }

    #[test]
    fn a_branch_from_a_future_epoch_is_left_alone() {
        let ledger = Ledger::replay([Record::Epoch(3)]);
        let future = gid(txn(4, 1), 0);
        let actions = run(&ledger, &[], &[listed("pg", future.clone())], &[]);
        assert_eq!(
            actions,
            vec![Action::Leave { branch: branch("pg", future), reason: Reason::FutureEpoch }]
        );
    }
}
