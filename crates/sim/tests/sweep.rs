//! Seeded sweeps: randomized crashes, partitions, loss, duplication and torn tails, then heal.
//! Any violation fails the test and names the seed to replay.

use concord_commit::naive::Naive;
use concord_commit::paxos_commit::PaxosCommit;
use concord_commit::three_phase::ThreePhase;
use concord_commit::two_phase::TwoPhase;
use concord_sim::rng::run_seed;
use concord_sim::sweep::{run_one, sweep};

/// CI's sweep. The floor is 10,000 seeds; runs are cheap (about 20 µs each), and the
/// rarest bug the sweep is known to catch (a peer's unilateral abort kept only in memory) shows
/// up about once in 20,000 runs, so CI runs 100,000.
const CI_RUNS: u64 = 100_000;

#[test]
fn two_phase_commit_survives_a_hundred_thousand_random_fault_schedules() {
    let summary = sweep::<TwoPhase>(0xC0_4C0D, CI_RUNS, 2, &|_| {});
    assert_eq!(summary.runs, CI_RUNS);
    let failures: Vec<String> = summary
        .failures
        .iter()
        .map(|(i, seed, v)| format!("run {i} seed {seed:#x}: {v}"))
        .collect();
    assert!(failures.is_empty(), "{} failing runs:\n{}", summary.failed_runs, failures.join("\n"));
    // The sweep must have exercised what it claims to: faults that block, commits and aborts.
    assert!(summary.committed > CI_RUNS, "committed {}", summary.committed);
    assert!(summary.aborted > CI_RUNS / 10, "aborted {}", summary.aborted);
    assert!(summary.blocked_runs > 0, "no run blocked: the faults are too gentle to test anything");
    assert!(summary.outcome_unknown > 0, "no coordinator crash ever lost a client outcome");
    // Status queries asked, and some of them about transactions every participant forgot.
    assert!(summary.status_probes > summary.txns_begun, "probes {}", summary.status_probes);
    assert!(summary.status_forgotten > 0, "no status query met a forgotten transaction");
    // Half the runs replicate the coordinator's log: crashed leaders were replaced by elected
    // replicas, many times.
    assert!(summary.coordinator_elections > 1_000, "elections {}", summary.coordinator_elections);
}

#[test]
fn paxos_commit_survives_fifty_thousand_random_fault_schedules() {
    let summary = sweep::<PaxosCommit>(0xC0_4C0D, 50_000, 2, &|_| {});
    let failures: Vec<String> = summary
        .failures
        .iter()
        .map(|(i, seed, v)| format!("run {i} seed {seed:#x}: {v}"))
        .collect();
    assert!(failures.is_empty(), "{} failing runs:\n{}", summary.failed_runs, failures.join("\n"));
    assert!(summary.committed > 50_000 && summary.aborted > 5_000);
    // Forgetting (drawn in half the runs): status queries met transactions every participant
    // forgot, and every answer agreed with what was applied.
    assert!(summary.status_probes > summary.txns_begun, "probes {}", summary.status_probes);
    assert!(summary.status_forgotten > 0, "no status query met a forgotten transaction");
}

#[test]
fn three_phase_commit_splits_under_these_faults_but_its_cores_never_fail() {
    let summary = sweep::<ThreePhase>(0xC0_4C0D, 20_000, 2, &|_| {});
    assert!(
        summary.failed_runs > 0,
        "3PC is not partition-tolerant; 20,000 faulty runs should show it"
    );
    let broken: Vec<_> =
        summary.failures.iter().filter(|(_, _, v)| v.property == "panic").collect();
    assert!(broken.is_empty(), "a 3PC core panicked: {broken:?}");
}

#[test]
fn the_sweep_finds_the_naive_protocols_partial_commits() {
    // The checkers can fail: the same schedules break the naive protocol.
    let summary = sweep::<Naive>(0xC0_4C0D, 500, 2, &|_| {});
    assert!(summary.failed_runs > 0, "the naive protocol passed 500 faulty runs");
    assert!(summary.split_txns > 0);
}

#[test]
fn same_seed_same_trace_hash() {
    for index in 0..200 {
        let seed = run_seed(42, index);
        let a = run_one::<TwoPhase>(seed);
        let b = run_one::<TwoPhase>(seed);
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed:#x} is not deterministic");
        assert_eq!(a.events, b.events);
    }
    let distinct: std::collections::HashSet<u64> =
        (0..200).map(|i| run_one::<TwoPhase>(run_seed(42, i)).trace_hash).collect();
    assert!(distinct.len() > 190, "different seeds should give different traces");
}

#[test]
fn the_summary_does_not_depend_on_the_number_of_threads() {
    let one = sweep::<TwoPhase>(7, 300, 1, &|_| {});
    let three = sweep::<TwoPhase>(7, 300, 3, &|_| {});
    assert_eq!(
        (one.events, one.messages_sent, one.committed, one.blocked_runs),
        (three.events, three.messages_sent, three.committed, three.blocked_runs)
    );
}
