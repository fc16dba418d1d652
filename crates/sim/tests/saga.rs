//! Sagas and TCC under faults (see `concord_sim::saga`): many seeds, every check must hold —
//! and without the participants' barrier, the same schedules must break them.

use concord_saga::Kind;
use concord_sim::saga::{simulate_sagas, SagaReport, SagaSimConfig};

fn sweep(kind: Kind, seeds: u64) -> Vec<SagaReport> {
    (0..seeds)
        .map(|seed| {
            let report = simulate_sagas(&SagaSimConfig::faulty(seed, kind));
            assert!(report.violations.is_empty(), "{kind:?} seed {seed}: {:#?}", report.violations);
            report
        })
        .collect()
}

fn total(reports: &[SagaReport], f: impl Fn(&SagaReport) -> u64) -> u64 {
    reports.iter().map(f).sum()
}

#[test]
fn sagas_finish_completed_or_compensated_with_every_effect_once() {
    let reports = sweep(Kind::Saga, 200);
    // The faults were real: every path of the barrier and both outcomes were exercised.
    assert!(total(&reports, |r| r.completed as u64) > 0);
    assert!(total(&reports, |r| r.compensated as u64) > 0);
    assert!(total(&reports, |r| r.duplicates_absorbed) > 0);
    assert!(total(&reports, |r| r.null_compensations) > 0);
    assert!(total(&reports, |r| u64::from(r.orchestrator_restarts)) > 0);
    assert!(total(&reports, |r| u64::from(r.checkpoints)) > 0);
}

#[test]
fn tcc_confirms_all_or_cancels_all() {
    let reports = sweep(Kind::Tcc, 200);
    assert!(total(&reports, |r| r.completed as u64) > 0);
    assert!(total(&reports, |r| r.compensated as u64) > 0);
}

#[test]
fn without_the_barrier_duplicates_apply_effects_twice() {
    let broken = (0..50).find_map(|seed| {
        let config = SagaSimConfig { barrier: false, ..SagaSimConfig::faulty(seed, Kind::Saga) };
        let report = simulate_sagas(&config);
        report.violations.iter().find(|v| v.contains("applied 2 times")).cloned()
    });
    assert!(broken.is_some(), "duplicated calls must show without the barrier");
}

/// The saga world runs on the protocol world's disk (torn tails included) and is as
/// deterministic as it: a seed gives one trace.
#[test]
fn a_run_is_deterministic_in_its_seed_by_trace_hash() {
    for kind in [Kind::Saga, Kind::Tcc] {
        let a = simulate_sagas(&SagaSimConfig::faulty(42, kind));
        let b = simulate_sagas(&SagaSimConfig::faulty(42, kind));
        assert_eq!(a.trace_hash, b.trace_hash, "{kind:?}");
        assert_eq!((a.calls, a.completed, a.compensated), (b.calls, b.completed, b.compensated));
        assert_ne!(a.trace_hash, simulate_sagas(&SagaSimConfig::faulty(43, kind)).trace_hash);
        assert!(a.orchestrator_restarts > 0, "the orchestrator crashed, so its disk tore");
    }
}

#[test]
#[ignore = "prints the sweep's totals"]
fn print_totals() {
    for kind in [Kind::Saga, Kind::Tcc] {
        let reports = sweep(kind, 200);
        println!(
            "{kind:?}: completed {} compensated {} calls {} duplicates {} null {} hanging {} restarts {}",
            total(&reports, |r| r.completed as u64),
            total(&reports, |r| r.compensated as u64),
            total(&reports, |r| r.calls),
            total(&reports, |r| r.duplicates_absorbed),
            total(&reports, |r| r.null_compensations),
            total(&reports, |r| r.hanging_refused),
            total(&reports, |r| u64::from(r.orchestrator_restarts)),
        );
    }
}
