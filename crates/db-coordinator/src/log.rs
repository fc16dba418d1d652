//! The database coordinator's log records and the state they rebuild (the [`Ledger`]).
//!
//! Presumed abort: the coordinator forces a record only for what it must not forget — its
//! epoch, a COMMIT decision (before any `COMMIT PREPARED`), an operator's decision, and a
//! heuristic outcome. A transaction with no decision record is aborted. `Finished` is written
//! lazily once every branch is known to be complete: losing it only means recovery checks the
//! branches once more.

use std::collections::{BTreeMap, VecDeque};

use concord_types::codec::{DecodeError, Encode, Reader, Writer};
use concord_types::{Decision, TxnId};

/// One branch of a transaction: the configured database name and the branch's gid.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BranchRef {
    pub database: String,
    pub gid: String,
}

/// Who decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecisionSource {
    /// Every branch voted YES (COMMIT) — the protocol's own decision.
    Protocol,
    /// `concord txn resolve` on a transaction with no logged decision.
    Operator,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Ids of this epoch may be issued once this is durable.
    Epoch(u32),
    Decided {
        txn: TxnId,
        decision: Decision,
        source: DecisionSource,
        /// Milliseconds since the Unix epoch, for ages shown to operators.
        at_ms: u64,
        branches: Vec<BranchRef>,
    },
    /// Every branch is known to have the decided outcome (or a recorded heuristic one).
    Finished { txn: TxnId },
    /// A branch's actual outcome differs from the logged decision.
    Heuristic {
        txn: TxnId,
        branch: BranchRef,
        logged: Decision,
        actual: Decision,
        /// An operator's `resolve --force` caused it; otherwise Concord detected it.
        forced: bool,
        at_ms: u64,
    },
}

impl Encode for Record {
    fn encode(&self, w: &mut Writer<'_>) {
        fn branch(w: &mut Writer<'_>, b: &BranchRef) {
            w.text(&b.database);
            w.text(&b.gid);
        }
        match self {
            Record::Epoch(epoch) => {
                w.u8(1);
                w.u32(*epoch);
            }
            Record::Decided { txn, decision, source, at_ms, branches } => {
                w.u8(2);
                w.txn(*txn);
                w.decision(*decision);
                w.u8(match source {
                    DecisionSource::Protocol => 1,
                    DecisionSource::Operator => 2,
                });
                w.u64(*at_ms);
                w.sequence_len(branches.len());
                for b in branches {
                    branch(w, b);
                }
            }
            Record::Finished { txn } => {
                w.u8(3);
                w.txn(*txn);
            }
            Record::Heuristic { txn, branch: b, logged, actual, forced, at_ms } => {
                w.u8(4);
                w.txn(*txn);
                branch(w, b);
                w.decision(*logged);
                w.decision(*actual);
                w.u8(u8::from(*forced));
                w.u64(*at_ms);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        fn branch(r: &mut Reader<'_>) -> Result<BranchRef, DecodeError> {
            Ok(BranchRef { database: r.text()?, gid: r.text()? })
        }
        Ok(match r.u8()? {
            1 => Record::Epoch(r.u32()?),
            2 => {
                let txn = r.txn()?;
                let decision = r.decision()?;
                let source = match r.u8()? {
                    1 => DecisionSource::Protocol,
                    2 => DecisionSource::Operator,
                    tag => return Err(DecodeError::UnknownTag { what: "decision source", tag }),
                };
                let at_ms = r.u64()?;
                let len = r.sequence_len()?;
                let branches = (0..len).map(|_| branch(r)).collect::<Result<_, _>>()?;
                Record::Decided { txn, decision, source, at_ms, branches }
            }
            3 => Record::Finished { txn: r.txn()? },
            4 => Record::Heuristic {
                txn: r.txn()?,
                branch: branch(r)?,
                logged: r.decision()?,
                actual: r.decision()?,
                forced: match r.u8()? {
                    0 => false,
                    1 => true,
                    tag => return Err(DecodeError::UnknownTag { what: "forced flag", tag }),
                },
                at_ms: r.u64()?,
            },
            tag => {
                return Err(DecodeError::UnknownTag { what: "database coordinator record", tag })
            }
        })
    }
}

/// A heuristic outcome as the ledger keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeuristicOutcome {
    pub branch: BranchRef,
    pub logged: Decision,
    pub actual: Decision,
    pub forced: bool,
    pub at_ms: u64,
}

/// What the log says about one decided transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    pub decision: Decision,
    pub source: DecisionSource,
    pub at_ms: u64,
    pub branches: Vec<BranchRef>,
    pub finished: bool,
    pub heuristics: Vec<HeuristicOutcome>,
}

impl Decided {
    /// The label operators see: the decision, or a heuristic one when a branch went its own way.
    pub fn state_name(&self) -> &'static str {
        if !self.heuristics.is_empty() {
            let all_contradict = self.branches.iter().all(|b| {
                self.heuristics.iter().any(|h| h.branch == *b && h.actual != self.decision)
            });
            return match (all_contradict, self.decision) {
                (true, Decision::Commit) => "heuristic-rollback",
                (true, Decision::Abort) => "heuristic-commit",
                (false, _) => "heuristic-mixed",
            };
        }
        match (self.decision, self.finished) {
            (Decision::Commit, true) => "committed",
            (Decision::Commit, false) => "committing",
            (Decision::Abort, true) => "aborted",
            (Decision::Abort, false) => "aborting",
        }
    }
}

/// Finished transactions kept in memory for `txn show` (they leave the log at a checkpoint).
pub const FINISHED_KEPT: usize = 10_000;

/// The state the log rebuilds: the epoch and every decided transaction still of interest.
#[derive(Debug, Default)]
pub struct Ledger {
    epoch: Option<u32>,
    decided: BTreeMap<TxnId, Decided>,
    /// Finished transactions without heuristics, oldest first, so memory stays bounded.
    finished_order: VecDeque<TxnId>,
}

impl Ledger {
    pub fn replay(records: impl IntoIterator<Item = Record>) -> Ledger {
        let mut ledger = Ledger::default();
        for record in records {
            ledger.apply(&record);
        }
        ledger
    }

    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::Epoch(epoch) => {
                assert!(self.epoch.is_none_or(|e| *epoch > e), "epochs only grow: {epoch}");
                self.epoch = Some(*epoch);
            }
            Record::Decided { txn, decision, source, at_ms, branches } => {
                let previous = self.decided.insert(
                    *txn,
                    Decided {
                        decision: *decision,
                        source: *source,
                        at_ms: *at_ms,
                        branches: branches.clone(),
                        finished: false,
                        heuristics: Vec::new(),
                    },
                );
                assert!(previous.is_none(), "{txn} decided twice in the log");
            }
            Record::Finished { txn } => {
                if let Some(entry) = self.decided.get_mut(txn) {
                    if !entry.finished {
                        entry.finished = true;
                        self.finished_order.push_back(*txn);
                        self.forget_old_finished();
                    }
                }
            }
            Record::Heuristic { txn, branch, logged, actual, forced, at_ms } => {
                let heuristic = HeuristicOutcome {
                    branch: branch.clone(),
                    logged: *logged,
                    actual: *actual,
                    forced: *forced,
                    at_ms: *at_ms,
                };
                match self.decided.get_mut(txn) {
                    Some(entry) => {
                        if !entry.branches.contains(branch) {
                            entry.branches.push(branch.clone());
                        }
                        entry.heuristics.push(heuristic);
                    }
                    // A heuristic against a presumed abort: the log had no decision record.
                    None => {
                        self.decided.insert(
                            *txn,
                            Decided {
                                decision: *logged,
                                source: DecisionSource::Operator,
                                at_ms: *at_ms,
                                branches: vec![branch.clone()],
                                finished: false,
                                heuristics: vec![heuristic],
                            },
                        );
                    }
                }
            }
        }
    }

    fn forget_old_finished(&mut self) {
        while self.finished_order.len() > FINISHED_KEPT {
            let oldest = self.finished_order.pop_front().expect("length checked above");
            // Heuristic outcomes are kept until an operator has seen them in the log forever.
            if self.decided.get(&oldest).is_some_and(|d| d.heuristics.is_empty()) {
                self.decided.remove(&oldest);
            }
        }
    }

    pub fn epoch(&self) -> Option<u32> {
        self.epoch
    }

    pub fn get(&self, txn: TxnId) -> Option<&Decided> {
        self.decided.get(&txn)
    }

    pub fn iter(&self) -> impl Iterator<Item = (TxnId, &Decided)> {
        self.decided.iter().map(|(txn, d)| (*txn, d))
    }

    /// Decided transactions whose branches may still need driving.
    pub fn unfinished(&self) -> impl Iterator<Item = (TxnId, &Decided)> {
        self.iter().filter(|(_, d)| !d.finished)
    }

    /// Transactions with a heuristic outcome.
    pub fn heuristic_count(&self) -> usize {
        self.decided.values().filter(|d| !d.heuristics.is_empty()).count()
    }

    /// The records a checkpoint keeps: the epoch, unfinished decisions, and every heuristic
    /// outcome (an operator must be able to see those after any number of restarts).
    pub fn live_records(&self) -> Vec<Record> {
        let mut live: Vec<Record> = self.epoch.map(Record::Epoch).into_iter().collect();
        for (txn, d) in &self.decided {
            if d.finished && d.heuristics.is_empty() {
                continue;
            }
            live.push(Record::Decided {
                txn: *txn,
                decision: d.decision,
                source: d.source,
                at_ms: d.at_ms,
                branches: d.branches.clone(),
            });
            for h in &d.heuristics {
                live.push(Record::Heuristic {
                    txn: *txn,
                    branch: h.branch.clone(),
                    logged: h.logged,
                    actual: h.actual,
                    forced: h.forced,
                    at_ms: h.at_ms,
                });
            }
            if d.finished {
                live.push(Record::Finished { txn: *txn });
            }
        }
        live
    }
}

#[cfg(test)]
mod tests {
    use concord_types::NodeId;

    use super::*;

    fn txn(sequence: u32) -> TxnId {
        TxnId { coordinator: NodeId(9), epoch: 1, sequence }
    }

    fn branch(database: &str, n: u32) -> BranchRef {
        BranchRef { database: database.into(), gid: format!("concord:t:1.{n}@n9:0") }
    }

    fn decided(sequence: u32, decision: Decision) -> Record {
        Record::Decided {
            txn: txn(sequence),
            decision,
            source: DecisionSource::Protocol,
            at_ms: 5,
            branches: vec![branch("pg", sequence), branch("maria", sequence)],
        }
    }

    #[test]
    fn records_round_trip() {
        for record in [
            Record::Epoch(7),
            decided(1, Decision::Commit),
            Record::Finished { txn: txn(1) },
            Record::Heuristic {
                txn: txn(1),
                branch: branch("pg", 1),
                logged: Decision::Commit,
                actual: Decision::Abort,
                forced: true,
                at_ms: 99,
            },
        ] {
            assert_eq!(Record::from_bytes(&record.to_bytes()).unwrap(), record);
        }
        assert!(Record::from_bytes(&[9]).is_err());
    }

    #[test]
    fn a_checkpoint_rebuilds_the_same_ledger_without_finished_transactions() {
        let mut records = vec![Record::Epoch(1)];
        for n in 1..=6 {
            records.push(decided(n, Decision::Commit));
        }
        records.push(Record::Finished { txn: txn(1) });
        records.push(Record::Finished { txn: txn(2) });
        records.push(Record::Heuristic {
            txn: txn(2),
            branch: branch("pg", 2),
            logged: Decision::Commit,
            actual: Decision::Abort,
            forced: false,
            at_ms: 7,
        });
        records.push(Record::Epoch(2));
        let full = Ledger::replay(records);
        let live = full.live_records();
        assert!(!live.iter().any(|r| matches!(r, Record::Decided { txn: t, .. } if *t == txn(1))));
        let rebuilt = Ledger::replay(live);
        assert_eq!(rebuilt.epoch(), Some(2));
        assert_eq!(rebuilt.unfinished().count(), full.unfinished().count());
        assert_eq!(rebuilt.get(txn(2)), full.get(txn(2)));
        assert_eq!(rebuilt.get(txn(2)).unwrap().state_name(), "heuristic-mixed");
        assert_eq!(rebuilt.heuristic_count(), 1);
        assert_eq!(rebuilt.get(txn(3)).unwrap().state_name(), "committing");
    }

    #[test]
    fn a_heuristic_on_every_branch_names_the_direction() {
        let mut ledger = Ledger::replay([Record::Epoch(1), decided(1, Decision::Commit)]);
        for db in ["pg", "maria"] {
            ledger.apply(&Record::Heuristic {
                txn: txn(1),
                branch: branch(db, 1),
                logged: Decision::Commit,
                actual: Decision::Abort,
                forced: false,
                at_ms: 1,
            });
        }
        assert_eq!(ledger.get(txn(1)).unwrap().state_name(), "heuristic-rollback");
    }

    #[test]
    fn finished_transactions_are_forgotten_beyond_the_bound_but_heuristics_are_not() {
        let mut ledger = Ledger::replay([Record::Epoch(1)]);
        let total = u32::try_from(FINISHED_KEPT).unwrap() + 10;
        for n in 1..=total {
            ledger.apply(&decided(n, Decision::Commit));
            if n == 1 {
                ledger.apply(&Record::Heuristic {
                    txn: txn(1),
                    branch: branch("pg", 1),
                    logged: Decision::Commit,
                    actual: Decision::Abort,
                    forced: false,
                    at_ms: 1,
                });
            }
            ledger.apply(&Record::Finished { txn: txn(n) });
        }
        assert!(ledger.get(txn(1)).is_some(), "heuristic kept");
        assert!(ledger.get(txn(2)).is_none(), "old finished forgotten");
        assert!(ledger.get(txn(total)).is_some());
        assert_eq!(ledger.iter().count(), FINISHED_KEPT + 1);
    }
}
