//! The coordinator's COMMIT decision is durable, then it crashes before sending it. Recovery
//! finds the decision in the log and re-sends it: every participant commits.

use concord_types::Decision;

use super::{all_decided, judge_two_phase, one_transfer_with, Scenario, Verdict, OUTAGE_US};
use crate::config::{Trigger, TriggerAction, TriggerOn, TriggerTiming, COORDINATOR};
use crate::report::RunReport;

pub const SCENARIO: Scenario = Scenario {
    name: "coordinator-crash-after-decision",
    summary: "decision logged, coordinator dies before sending it: recovery re-sends COMMIT",
    max_runs: u64::MAX,
    build,
    judge,
};

fn build(seed: u64) -> crate::SimConfig {
    one_transfer_with(
        seed,
        Trigger {
            node: COORDINATOR,
            on: vec![TriggerOn::SendDecision(Decision::Commit)],
            timing: TriggerTiming::Before,
            action: TriggerAction::Crash { restart_after_us: OUTAGE_US },
        },
    )
}

fn judge(protocol: &str, report: &RunReport) -> Verdict {
    judge_two_phase(protocol, report, |report| {
        all_decided(report, Decision::Commit, &[1, 2, 3])?;
        if report.outcome_unknown != 1 {
            return Err(format!(
                "the client should not have heard (it crashed first); unknown = {}",
                report.outcome_unknown
            ));
        }
        let min = report.in_doubt.iter().map(|d| d.us).min().unwrap_or(0);
        if min < OUTAGE_US {
            return Err(format!(
                "participants resolved before the coordinator returned: {:?}",
                report.in_doubt
            ));
        }
        Ok("recovery re-sent the logged COMMIT: all 3 participants committed after the restart"
            .to_string())
    })
}
