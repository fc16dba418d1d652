//! The key-value store under faults: bank and list-append workloads over many seeds.

use concord_kv::Isolation;
use concord_sim::kv::{simulate_kv, KvSimConfig, KvWorkload};

fn sweep(
    workload: KvWorkload,
    isolation: Isolation,
    seeds: std::ops::Range<u64>,
) -> Vec<(u64, Vec<String>)> {
    let mut failures = Vec::new();
    let (mut committed, mut failed, mut info, mut crashes, mut collected) = (0, 0, 0, 0, 0);
    let mut reasons = std::collections::BTreeMap::new();
    for seed in seeds {
        let mut config = KvSimConfig::new(seed, workload);
        config.isolation = isolation;
        let report = simulate_kv(&config);
        committed += report.committed;
        failed += report.failed;
        info += report.indeterminate;
        crashes += report.crashes;
        collected += report.versions_collected;
        for (r, n) in &report.aborts_by_reason {
            *reasons.entry(r.clone()).or_insert(0) += n;
        }
        let problems = report.problems(&config);
        if !problems.is_empty() {
            failures.push((seed, problems));
        }
    }
    eprintln!(
        "{workload:?} {isolation}: committed {committed}, failed {failed}, unknown {info}, \
         crashes {crashes}, versions collected {collected}; aborts {reasons:?}"
    );
    assert!(collected > 0, "garbage collection ran under the workload");
    failures
}

#[test]
fn bank_under_faults_keeps_the_total_and_no_negative_balance() {
    let failures = sweep(KvWorkload::Bank, Isolation::Serializable, 0..200);
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn bank_under_snapshot_isolation_too() {
    let failures = sweep(KvWorkload::Bank, Isolation::Snapshot, 0..100);
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn list_append_under_faults_is_serializable() {
    let failures = sweep(KvWorkload::ListAppend, Isolation::Serializable, 0..200);
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn snapshot_isolation_shows_write_skew_and_the_checker_finds_it() {
    let failures = sweep(KvWorkload::ListAppend, Isolation::Snapshot, 0..200);
    assert!(!failures.is_empty(), "snapshot isolation allows G2; the checker must find some");
    for (seed, problems) in &failures {
        for p in problems {
            assert!(
                p.contains("G2") || p.contains("G-single"),
                "seed {seed}: snapshot isolation must only ever show anti-dependency cycles: {p}"
            );
            assert!(!p.contains("G0") && !p.contains("G1"), "seed {seed}: {p}");
        }
    }
}

fn sweep_paxos(workload: KvWorkload, seeds: std::ops::Range<u64>) -> Vec<(u64, Vec<String>)> {
    let mut failures = Vec::new();
    let (mut committed, mut crashes) = (0, 0);
    for seed in seeds {
        let mut config = KvSimConfig::new(seed, workload);
        config.paxos_commit = true;
        let report = simulate_kv(&config);
        committed += report.committed;
        crashes += report.crashes;
        let problems = report.problems(&config);
        if !problems.is_empty() {
            failures.push((seed, problems));
        }
    }
    eprintln!("{workload:?} over Paxos Commit: committed {committed}, crashes {crashes}");
    assert!(committed > 0);
    failures
}

#[test]
fn paxos_commit_under_the_kv_store_keeps_the_bank_and_serializability() {
    let failures = sweep_paxos(KvWorkload::Bank, 0..100);
    assert!(failures.is_empty(), "{failures:#?}");
    let failures = sweep_paxos(KvWorkload::ListAppend, 0..100);
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The key-value world runs on the protocol world's disk (torn tails included) and is as
/// deterministic as it: a seed gives one trace, over 2PC and Paxos Commit.
#[test]
fn a_kv_run_is_deterministic_in_its_seed_by_trace_hash() {
    for paxos_commit in [false, true] {
        let config =
            |seed| KvSimConfig { paxos_commit, ..KvSimConfig::new(seed, KvWorkload::Bank) };
        let a = simulate_kv(&config(7));
        let b = simulate_kv(&config(7));
        assert_eq!(a.trace_hash, b.trace_hash, "paxos_commit = {paxos_commit}");
        assert_eq!((a.committed, a.failed, a.crashes), (b.committed, b.failed, b.crashes));
        assert_ne!(a.trace_hash, simulate_kv(&config(8)).trace_hash, "another seed, another run");
        assert!(a.crashes > 0, "the run crashed nodes, so their disks tore");
    }
}
