//! The database coordinator's log records and the read model they rebuild (the [`Ledger`]).
//!
//! Decisions are the 2PC core's (`concord_commit::two_phase`), so its records are logged as
//! they are ([`Record::Core`]): the epoch, a COMMIT decision naming the branches that must learn
//! it, and the lazy end once every branch acknowledged. Presumed abort: nothing is logged for an
//! abort. Around them the supervisor keeps what only operators need — which database a branch
//! node stands for, when a decision was taken, an operator's abort, and heuristic outcomes.
//!
//! A branch is named by the database's node id, allocated once per database name and never
//! reused, so its gid (`concord:CLUSTER:TXN:NODE`) says which database holds it, whatever the
//! order of the configuration file.

use std::collections::{BTreeMap, VecDeque};

use concord_types::codec::{DecodeError, Encode, Reader, Writer};
use concord_types::{Decision, NodeId, TxnId};

use concord_participants::gid::Gid;

pub use concord_commit::xa::{Record as CoreRecord, Work};

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
    /// The 2PC core's own record.
    Core(CoreRecord),
    /// Branch node `node` is database `name` (written once, kept by every checkpoint).
    Database { node: NodeId, name: String },
    /// When the COMMIT decision that follows was taken (lazy, queued just before it), for the
    /// ages operators see.
    DecidedAt { txn: TxnId, at_ms: u64 },
    /// An operator aborted a transaction with no decision (`concord txn resolve --abort`); the
    /// core presumes that anyway, this says who decided.
    OperatorAborted { txn: TxnId, at_ms: u64, branches: Vec<NodeId> },
    /// A branch's actual outcome differs from the decision.
    Heuristic {
        txn: TxnId,
        branch: NodeId,
        logged: Decision,
        actual: Decision,
        /// An operator's `resolve --force` caused it; otherwise Concord detected it.
        forced: bool,
        at_ms: u64,
    },
}

impl Encode for Record {
    fn encode(&self, w: &mut Writer<'_>) {
        match self {
            Record::Core(record) => {
                w.u8(1);
                record.encode(w);
            }
            Record::Database { node, name } => {
                w.u8(2);
                w.node(*node);
                w.text(name);
            }
            Record::DecidedAt { txn, at_ms } => {
                w.u8(3);
                w.txn(*txn);
                w.u64(*at_ms);
            }
            Record::OperatorAborted { txn, at_ms, branches } => {
                w.u8(4);
                w.txn(*txn);
                w.u64(*at_ms);
                w.sequence_len(branches.len());
                for b in branches {
                    w.node(*b);
                }
            }
            Record::Heuristic { txn, branch, logged, actual, forced, at_ms } => {
                w.u8(5);
                w.txn(*txn);
                w.node(*branch);
                w.decision(*logged);
                w.decision(*actual);
                w.u8(u8::from(*forced));
                w.u64(*at_ms);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8()? {
            1 => Record::Core(CoreRecord::decode(r)?),
            2 => Record::Database { node: r.node()?, name: r.text()? },
            3 => Record::DecidedAt { txn: r.txn()?, at_ms: r.u64()? },
            4 => {
                let txn = r.txn()?;
                let at_ms = r.u64()?;
                let len = r.sequence_len()?;
                let branches = (0..len).map(|_| r.node()).collect::<Result<_, _>>()?;
                Record::OperatorAborted { txn, at_ms, branches }
            }
            5 => Record::Heuristic {
                txn: r.txn()?,
                branch: r.node()?,
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
            // An operator's abort is over once it is logged: the core presumes it anyway.
            (Decision::Abort, _) => "aborted",
        }
    }
}

/// Finished transactions kept in memory for `txn show` (they leave the log at a checkpoint).
pub const FINISHED_KEPT: usize = 10_000;

/// Most database nodes ever allocated (a gid's branch number is 16 bits).
pub const MAX_DATABASE_NODES: u32 = u16::MAX as u32;

/// The read model the log rebuilds: the epoch, the database nodes, and every decided
/// transaction still of interest. It never decides anything: the core does.
#[derive(Debug, Default)]
pub struct Ledger {
    cluster: String,
    epoch: Option<u32>,
    nodes: BTreeMap<NodeId, String>,
    decided: BTreeMap<TxnId, Decided>,
    /// `DecidedAt` notes waiting for their decision record.
    decided_at: BTreeMap<TxnId, u64>,
    /// Finished transactions without heuristics, oldest first, so memory stays bounded.
    finished_order: VecDeque<TxnId>,
}

impl Ledger {
    pub fn replay(cluster: &str, records: impl IntoIterator<Item = Record>) -> Ledger {
        let mut ledger = Ledger { cluster: cluster.to_string(), ..Ledger::default() };
        for record in records {
            ledger.apply(&record);
        }
        ledger
    }

    /// Branch `node` of `txn` as operators see it.
    pub fn branch(&self, txn: TxnId, node: NodeId) -> BranchRef {
        let database = self.nodes.get(&node).cloned().unwrap_or_else(|| format!("node {node}"));
        let index = u16::try_from(node.0).expect("database nodes fit a gid's branch number");
        BranchRef { database, gid: Gid::new(&self.cluster, txn, index).to_string() }
    }

    /// The node of database `name`, if it has one.
    pub fn node_of(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().find(|(_, n)| *n == name).map(|(node, _)| *node)
    }

    pub fn nodes(&self) -> &BTreeMap<NodeId, String> {
        &self.nodes
    }

    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::Core(CoreRecord::EpochStarted { epoch }) => {
                assert!(self.epoch.is_none_or(|e| *epoch > e), "epochs only grow: {epoch}");
                self.epoch = Some(*epoch);
            }
            Record::Core(CoreRecord::CommitDecided { txn, participants }) => {
                let at_ms = self.decided_at.remove(txn).unwrap_or(0);
                let branches = participants.iter().map(|n| self.branch(*txn, *n)).collect();
                // A checkpoint after a restart logs the decision again (with the branches still
                // owing an acknowledgement): keep what is known.
                let entry = self.decided.entry(*txn).or_insert(Decided {
                    decision: Decision::Commit,
                    source: DecisionSource::Protocol,
                    at_ms,
                    branches,
                    finished: false,
                    heuristics: Vec::new(),
                });
                entry.decision = Decision::Commit;
            }
            Record::Core(CoreRecord::Ended { txn }) => self.finish(*txn),
            Record::Core(other) => {
                panic!("a coordinator's log holds only coordinator records, not {other}")
            }
            Record::Database { node, name } => {
                let previous = self.nodes.insert(*node, name.clone());
                assert!(
                    previous.is_none_or(|p| p == *name),
                    "database node {node} allocated twice"
                );
            }
            Record::DecidedAt { txn, at_ms } => {
                self.decided_at.insert(*txn, *at_ms);
                while self.decided_at.len() > FINISHED_KEPT {
                    self.decided_at.pop_first();
                }
            }
            Record::OperatorAborted { txn, at_ms, branches } => {
                let branches = branches.iter().map(|n| self.branch(*txn, *n)).collect();
                self.decided.entry(*txn).or_insert(Decided {
                    decision: Decision::Abort,
                    source: DecisionSource::Operator,
                    at_ms: *at_ms,
                    branches,
                    finished: false,
                    heuristics: Vec::new(),
                });
                self.finish(*txn);
            }
            Record::Heuristic { txn, branch, logged, actual, forced, at_ms } => {
                let branch = self.branch(*txn, *branch);
                let heuristic = HeuristicOutcome {
                    branch: branch.clone(),
                    logged: *logged,
                    actual: *actual,
                    forced: *forced,
                    at_ms: *at_ms,
                };
                let entry = self.decided.entry(*txn).or_insert(Decided {
                    decision: *logged,
                    // Only a COMMIT is ever logged by the protocol; an ABORT here was presumed,
                    // and an operator acted against it.
                    source: match logged {
                        Decision::Commit => DecisionSource::Protocol,
                        Decision::Abort => DecisionSource::Operator,
                    },
                    at_ms: *at_ms,
                    branches: Vec::new(),
                    finished: false,
                    heuristics: Vec::new(),
                });
                if !entry.branches.contains(&branch) {
                    entry.branches.push(branch);
                }
                if !entry.heuristics.contains(&heuristic) {
                    entry.heuristics.push(heuristic);
                }
            }
        }
    }

    fn finish(&mut self, txn: TxnId) {
        if let Some(entry) = self.decided.get_mut(&txn) {
            if !entry.finished {
                entry.finished = true;
                self.finished_order.push_back(txn);
                self.forget_old_finished();
            }
        }
    }

    fn forget_old_finished(&mut self) {
        while self.finished_order.len() > FINISHED_KEPT {
            let oldest = self.finished_order.pop_front().expect("length checked above");
            // Heuristic outcomes are kept: an operator must be able to see them, always.
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

    /// The supervisor's records a checkpoint keeps, to go before the core's live records: the
    /// database nodes, each unfinished decision with when it was taken and all its branches,
    /// operators' aborts, and every heuristic outcome (with its decision, and the end of a
    /// finished one, which the core replays as nothing).
    pub fn live_records(&self) -> Vec<Record> {
        let mut live: Vec<Record> = self
            .nodes
            .iter()
            .map(|(node, name)| Record::Database { node: *node, name: name.clone() })
            .collect();
        for (txn, d) in &self.decided {
            if d.finished && d.heuristics.is_empty() {
                continue;
            }
            let node = |b: &BranchRef| {
                Gid::parse(&b.gid).map_or(NodeId(0), |g| NodeId(u32::from(g.branch)))
            };
            match d.source {
                // With every branch it named (the core's own live record, after these, names
                // only those still owing an acknowledgement; the first one read is kept).
                DecisionSource::Protocol => {
                    live.push(Record::DecidedAt { txn: *txn, at_ms: d.at_ms });
                    live.push(Record::Core(CoreRecord::CommitDecided {
                        txn: *txn,
                        participants: d.branches.iter().map(node).collect(),
                    }));
                }
                DecisionSource::Operator => live.push(Record::OperatorAborted {
                    txn: *txn,
                    at_ms: d.at_ms,
                    branches: d.branches.iter().map(node).collect(),
                }),
            }
            for h in &d.heuristics {
                live.push(Record::Heuristic {
                    txn: *txn,
                    branch: node(&h.branch),
                    logged: h.logged,
                    actual: h.actual,
                    forced: h.forced,
                    at_ms: h.at_ms,
                });
            }
            if d.finished && d.source == DecisionSource::Protocol {
                live.push(Record::Core(CoreRecord::Ended { txn: *txn }));
            }
        }
        live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(sequence: u32) -> TxnId {
        TxnId { coordinator: NodeId(9), epoch: 1, sequence }
    }

    fn decided(sequence: u32) -> [Record; 2] {
        [
            Record::DecidedAt { txn: txn(sequence), at_ms: 5 },
            Record::Core(CoreRecord::CommitDecided {
                txn: txn(sequence),
                participants: vec![NodeId(1), NodeId(2)],
            }),
        ]
    }

    fn heuristic(sequence: u32, branch: u32) -> Record {
        Record::Heuristic {
            txn: txn(sequence),
            branch: NodeId(branch),
            logged: Decision::Commit,
            actual: Decision::Abort,
            forced: false,
            at_ms: 7,
        }
    }

    fn start() -> Vec<Record> {
        vec![
            Record::Database { node: NodeId(1), name: "pg".into() },
            Record::Database { node: NodeId(2), name: "maria".into() },
            Record::Core(CoreRecord::EpochStarted { epoch: 1 }),
        ]
    }

    #[test]
    fn records_round_trip() {
        let mut records = start();
        records.extend(decided(1));
        records.push(Record::Core(CoreRecord::Ended { txn: txn(1) }));
        records.push(heuristic(1, 1));
        records.push(Record::OperatorAborted { txn: txn(2), at_ms: 3, branches: vec![NodeId(2)] });
        for record in records {
            assert_eq!(Record::from_bytes(&record.to_bytes()).unwrap(), record);
        }
        assert!(Record::from_bytes(&[9]).is_err());
    }

    #[test]
    fn branches_are_named_by_their_database_node() {
        let mut records = start();
        records.extend(decided(1));
        let ledger = Ledger::replay("t", records);
        let d = ledger.get(txn(1)).unwrap();
        assert_eq!(d.at_ms, 5);
        assert_eq!(
            d.branches,
            vec![
                BranchRef { database: "pg".into(), gid: "concord:t:1.1@n9:1".into() },
                BranchRef { database: "maria".into(), gid: "concord:t:1.1@n9:2".into() },
            ]
        );
        assert_eq!(ledger.node_of("maria"), Some(NodeId(2)));
    }

    #[test]
    fn a_checkpoint_rebuilds_the_same_ledger_without_finished_transactions() {
        let mut records = start();
        for n in 1..=6 {
            records.extend(decided(n));
        }
        records.push(Record::Core(CoreRecord::Ended { txn: txn(1) }));
        records.push(Record::Core(CoreRecord::Ended { txn: txn(2) }));
        records.push(heuristic(2, 1));
        records.push(Record::Core(CoreRecord::EpochStarted { epoch: 2 }));
        let full = Ledger::replay("t", records);
        // What the core would keep: its epoch and the decisions not yet acknowledged.
        let mut live = full.live_records();
        live.push(Record::Core(CoreRecord::EpochStarted { epoch: 2 }));
        for n in 3..=6 {
            live.push(Record::Core(CoreRecord::CommitDecided {
                txn: txn(n),
                participants: vec![NodeId(1), NodeId(2)],
            }));
        }
        assert!(!live
            .iter()
            .any(|r| matches!(r, Record::DecidedAt { txn: t, .. } if *t == txn(1))));
        let rebuilt = Ledger::replay("t", live);
        assert_eq!(rebuilt.epoch(), Some(2));
        assert_eq!(rebuilt.unfinished().count(), full.unfinished().count());
        assert_eq!(rebuilt.get(txn(3)), full.get(txn(3)));
        let h = rebuilt.get(txn(2)).unwrap();
        assert_eq!(h.state_name(), "heuristic-mixed");
        assert!(h.finished);
        assert_eq!(rebuilt.heuristic_count(), 1);
        assert_eq!(rebuilt.get(txn(3)).unwrap().state_name(), "committing");
    }

    #[test]
    fn a_heuristic_on_every_branch_names_the_direction() {
        let mut records = start();
        records.extend(decided(1));
        records.push(heuristic(1, 1));
        records.push(heuristic(1, 2));
        let ledger = Ledger::replay("t", records);
        assert_eq!(ledger.get(txn(1)).unwrap().state_name(), "heuristic-rollback");
    }

    #[test]
    fn finished_transactions_are_forgotten_beyond_the_bound_but_heuristics_are_not() {
        let mut ledger = Ledger::replay("t", start());
        let total = u32::try_from(FINISHED_KEPT).unwrap() + 10;
        for n in 1..=total {
            for record in decided(n) {
                ledger.apply(&record);
            }
            if n == 1 {
                ledger.apply(&heuristic(1, 1));
            }
            ledger.apply(&Record::Core(CoreRecord::Ended { txn: txn(n) }));
        }
        assert!(ledger.get(txn(1)).is_some(), "heuristic kept");
        assert!(ledger.get(txn(2)).is_none(), "old finished forgotten");
        assert!(ledger.get(txn(total)).is_some());
        assert_eq!(ledger.iter().count(), FINISHED_KEPT + 1);
    }
}
