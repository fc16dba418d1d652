//! The key-value store in the simulator: the real shard core (`Participant<MvccShard>`) and
//! the real 2PC coordinator (`Coordinator<KvChange, KvSnapshot>`), with a gateway that runs
//! interactive transactions for simulated clients, under crashes, partitions, message loss,
//! duplication and delay, and clock skew between nodes.
//!
//! Two workloads, each with its checker:
//! * **bank** — accounts spread over the shards, concurrent transfers (read two balances,
//!   move an amount if the source covers it) and full-table scans; every scan must see the
//!   constant total and no negative balance ([`concord_check::bank`]).
//! * **list-append** — transactions of appends and reads on a few keys, recorded as an Elle
//!   history and checked for G0 … G2 ([`concord_check::list_append`]).
//!
//! A run has a fault phase, then a heal (every node up, partitions gone, no more loss), then a
//! quiet phase after which nothing may remain locked and every shard must agree with the
//! coordinator about every outcome.

mod clients;
mod cluster;
mod protocol;

use concord_check::bank::BankRead;
use concord_check::History;
use concord_kv::Isolation;

pub use cluster::KvWorld;
pub use protocol::{KvProtocol, PaxosCommit, TwoPc};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvWorkload {
    Bank,
    ListAppend,
}

/// What one run is.
#[derive(Clone, Debug)]
pub struct KvSimConfig {
    pub seed: u64,
    pub shards: usize,
    pub clients: usize,
    pub workload: KvWorkload,
    pub isolation: Isolation,
    /// Clients start transactions until then (µs of virtual time).
    pub workload_us: u64,
    /// Crashes, partitions, loss and duplication happen before this; then everything heals.
    pub faults_until_us: u64,
    /// Whether to inject crashes and partitions (loss, duplication and delay always vary).
    pub faults: bool,
    pub loss: f64,
    pub duplication: f64,
    /// Each node's clock is off by a random amount up to this, either way.
    pub max_skew_us: u64,
    /// The shards' configured maximum offset.
    pub max_offset_us: u64,
    /// Commit through Paxos Commit (three acceptors, which crash too) instead of 2PC.
    pub paxos_commit: bool,
    /// After the workload: how long until every lock must be gone.
    pub quiet_us: u64,
}

impl KvSimConfig {
    pub fn new(seed: u64, workload: KvWorkload) -> Self {
        KvSimConfig {
            seed,
            shards: 3,
            clients: 5,
            workload,
            isolation: Isolation::Serializable,
            workload_us: 400_000,
            faults_until_us: 300_000,
            faults: true,
            loss: 0.02,
            duplication: 0.02,
            max_skew_us: 2_000,
            max_offset_us: 10_000,
            paxos_commit: false,
            quiet_us: 3_000_000,
        }
    }
}

/// What a run produced.
#[derive(Debug, Default)]
pub struct KvRunReport {
    pub committed: u64,
    pub failed: u64,
    pub indeterminate: u64,
    /// Refusals by reason (the first words of the shard's message), for a feel of the conflicts.
    pub aborts_by_reason: std::collections::BTreeMap<String, u64>,
    pub history: History,
    pub bank_reads: Vec<BankRead>,
    /// Safety and liveness problems found by the run itself (not the history checkers).
    pub violations: Vec<String>,
    pub crashes: u64,
    pub partitions: u64,
    /// Old versions dropped by garbage collection.
    pub versions_collected: u64,
    /// FNV-1a over every event's time and kind, and the outcome counts: equal for equal seeds.
    pub trace_hash: u64,
}

impl KvRunReport {
    /// Everything wrong with the run: its own violations and what the checkers find.
    pub fn problems(&self, config: &KvSimConfig) -> Vec<String> {
        let mut problems = self.violations.clone();
        match config.workload {
            KvWorkload::Bank => {
                for v in concord_check::bank::check_bank(
                    &self.bank_reads,
                    clients::BANK_ACCOUNTS,
                    clients::bank_total(),
                ) {
                    problems.push(format!("bank: {v:?}"));
                }
            }
            KvWorkload::ListAppend => {
                let report = concord_check::check(&self.history);
                if !report.is_valid() {
                    problems.push(format!("list-append: {report}"));
                }
            }
        }
        problems
    }
}

/// Runs one simulation.
pub fn simulate_kv(config: &KvSimConfig) -> KvRunReport {
    if config.paxos_commit {
        KvWorld::<PaxosCommit>::new(config.clone()).run()
    } else {
        KvWorld::<TwoPc>::new(config.clone()).run()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_free_bank_run_commits_and_keeps_its_invariants() {
        let mut config = KvSimConfig::new(1, KvWorkload::Bank);
        config.faults = false;
        config.loss = 0.0;
        config.duplication = 0.0;
        let report = simulate_kv(&config);
        assert!(report.problems(&config).is_empty(), "{:?}", report.problems(&config));
        assert!(report.committed > 100, "committed {}", report.committed);
        assert!(report.bank_reads.len() > 10);
    }

    #[test]
    fn same_seed_same_run() {
        let config = KvSimConfig::new(7, KvWorkload::ListAppend);
        let a = simulate_kv(&config);
        let b = simulate_kv(&config);
        assert_eq!(a.history.to_elle_json(), b.history.to_elle_json());
        assert_eq!((a.committed, a.failed, a.crashes), (b.committed, b.failed, b.crashes));
    }
}
