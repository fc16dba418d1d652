//! Each optimisation switch measured on the same fault-free workload: what it saves in
//! messages and forced log writes per transaction, and in commit latency.
//!
//! The workload mixes what the optimisations target — a third of the transactions touch one
//! participant (one-phase commit), 30% of branches write nothing (read-only), and transactions
//! arrive five per millisecond, so several are forcing their logs at once (group commit).

use concord_commit::{Protocol, Switches};

use crate::config::{DiskConfig, NetworkConfig, SimConfig};
use crate::rng::Rng;
use crate::sweep::{sweep_configs, SweepSummary};
use crate::workload::{random, WorkloadShape};

/// One configuration of the switches.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    pub name: &'static str,
    pub switches: Switches,
    pub group_commit: bool,
}

const NONE: Switches = Switches {
    read_only: false,
    one_phase: false,
    cooperative_termination: true,
    early_ack: false,
    forget: false,
    forgotten_kept: 0,
};

/// Baseline, each switch alone, then all together.
pub const VARIANTS: &[Variant] = &[
    Variant { name: "none (baseline)", switches: NONE, group_commit: false },
    Variant {
        name: "read-only",
        switches: Switches { read_only: true, ..NONE },
        group_commit: false,
    },
    Variant {
        name: "one-phase",
        switches: Switches { one_phase: true, ..NONE },
        group_commit: false,
    },
    Variant { name: "group commit", switches: NONE, group_commit: true },
    Variant {
        name: "early ack",
        switches: Switches { early_ack: true, ..NONE },
        group_commit: false,
    },
    Variant {
        name: "all",
        switches: Switches {
            read_only: true,
            one_phase: true,
            cooperative_termination: true,
            early_ack: true,
            forget: true,
            forgotten_kept: 0,
        },
        group_commit: true,
    },
];

/// The measurement workload for one run, with `variant`'s switches.
pub fn config(seed: u64, variant: &Variant) -> SimConfig {
    let mut rng = Rng::new(seed ^ 0x0071_3122_A710_4500);
    let shape = WorkloadShape {
        txns: 50,
        window_us: 10_000,
        keys: 100_000,
        read_only_rate: 0.3,
        refused_rate: 0.0,
    };
    let workload = random(&mut rng, 3, &shape);
    let mut config = SimConfig::new(seed, 3, workload);
    config.switches = variant.switches;
    config.network = NetworkConfig::default();
    config.disk =
        DiskConfig { fsync_us: 200, group_commit: variant.group_commit, torn_writes: true };
    config
}

/// Runs `runs` runs of every variant; the same seeds, so the same workloads, for each.
pub fn measure<P: Protocol>(seed: u64, runs: u64, threads: usize) -> Vec<(Variant, SweepSummary)> {
    VARIANTS
        .iter()
        .map(|v| (*v, sweep_configs::<P>(seed, runs, threads, &|s| config(s, v), &|_| {})))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_commit::two_phase::TwoPhase;

    #[test]
    fn every_switch_saves_what_it_should_and_breaks_nothing() {
        let results = measure::<TwoPhase>(11, 40, 1);
        let by_name = |n: &str| &results.iter().find(|(v, _)| v.name == n).expect("variant").1;
        let base = by_name("none (baseline)");
        for (v, s) in &results {
            assert_eq!(s.failed_runs, 0, "{} broke a property", v.name);
            assert_eq!(
                s.txns_begun, base.txns_begun,
                "{}: same workload for every variant",
                v.name
            );
        }
        assert!(by_name("read-only").messages_per_txn() < base.messages_per_txn());
        assert!(by_name("read-only").forced_writes_per_txn() < base.forced_writes_per_txn());
        assert!(by_name("one-phase").messages_per_txn() < base.messages_per_txn());
        assert!(by_name("one-phase").forced_writes_per_txn() < base.forced_writes_per_txn());
        assert!(by_name("group commit").forced_writes_per_txn() < base.forced_writes_per_txn());
        assert_eq!(by_name("group commit").messages_per_txn(), base.messages_per_txn());
        assert!(
            by_name("all").forced_writes_per_txn()
                < by_name("group commit").forced_writes_per_txn()
        );
        // Early acknowledgement: no forced coordinator record, and the client hears sooner.
        let early = by_name("early ack");
        assert_eq!(early.messages_per_txn(), base.messages_per_txn());
        assert!(early.forced_writes_per_txn() < base.forced_writes_per_txn());
        assert!(
            early.commit_latency_us.quantile(0.5) < base.commit_latency_us.quantile(0.5),
            "early ack p50 {} µs, baseline {} µs",
            early.commit_latency_us.quantile(0.5),
            base.commit_latency_us.quantile(0.5)
        );
    }
}
