//! All participants voted YES; the coordinator crashes before its decision is durable.
//! 2PC's blocking window: the participants stay in doubt, holding their locks, until the
//! coordinator returns — and then abort, because nothing was decided (presumed abort).

use concord_types::Decision;

use super::{all_decided, judge_two_phase, one_transfer_with, Scenario, Verdict, OUTAGE_US};
use crate::config::{Trigger, TriggerAction, TriggerOn, TriggerTiming, COORDINATOR};
use crate::report::RunReport;

pub const SCENARIO: Scenario = Scenario {
    name: "coordinator-crash-after-prepare",
    summary: "all voted YES, coordinator dies before deciding: participants block, holding locks, until it returns",
    max_runs: u64::MAX,
    build,
    judge,
};

fn build(seed: u64) -> crate::SimConfig {
    one_transfer_with(
        seed,
        Trigger {
            node: COORDINATOR,
            on: vec![TriggerOn::PersistDecision(Decision::Commit)],
            timing: TriggerTiming::After, // written, not yet synced: lost in the crash
            action: TriggerAction::Crash { restart_after_us: OUTAGE_US },
        },
    )
}

fn judge(protocol: &str, report: &RunReport) -> Verdict {
    judge_two_phase(protocol, report, |report| {
        all_decided(report, Decision::Abort, &[1, 2, 3])?;
        let min = report.in_doubt.iter().map(|d| d.us).min().unwrap_or(0);
        if report.in_doubt.len() != 3 || min < OUTAGE_US {
            return Err(format!(
                "expected 3 participants in doubt ≥ {OUTAGE_US} µs, got {:?}",
                report.in_doubt
            ));
        }
        let locks = &report.locked_keys_at_coordinator_restart;
        if locks.len() != 3 || locks.iter().any(|(_, k)| *k != 1) {
            return Err(format!("expected every participant to hold its lock when the coordinator returned, got {locks:?}"));
        }
        Ok(format!(
            "blocked: all 3 participants in doubt for ≥ {:.0} ms holding their locks, then ABORT (presumed) once the coordinator returned",
            min as f64 / 1000.0
        ))
    })
}
