//! The coordinator's log is replicated on three machines (issue 21). Its COMMIT decision is
//! committed there — on a majority's disks — and the leader's machine dies before sending it,
//! for good. Another replica is elected, finds the decision in its copy of the log and re-sends
//! it: every participant commits within an election, not when the dead machine returns (in
//! `coordinator-crash-after-decision`, with one machine, they wait for it).

use concord_types::Decision;

use super::{all_decided, judge_two_phase, one_transfer_with, Scenario, Verdict, OUTAGE_US};
use crate::config::{Trigger, TriggerAction, TriggerOn, TriggerTiming, COORDINATOR};
use crate::report::RunReport;

/// From the leader's death to the new leader's start: an election.
pub const ELECTION_US: u64 = 300_000;

pub const SCENARIO: Scenario = Scenario {
    name: "coordinator-leader-crash-after-decision",
    summary: "decision committed on a majority of 3 log replicas, leader dies before sending it: an elected replica re-sends COMMIT",
    max_runs: u64::MAX,
    build,
    judge,
};

fn build(seed: u64) -> crate::SimConfig {
    let mut config = one_transfer_with(
        seed,
        Trigger {
            node: COORDINATOR,
            on: vec![TriggerOn::SendDecision(Decision::Commit)],
            timing: TriggerTiming::Before,
            action: TriggerAction::Crash { restart_after_us: ELECTION_US },
        },
    );
    config.coordinator_replicas = 3;
    config
}

fn judge(protocol: &str, report: &RunReport) -> Verdict {
    judge_two_phase(protocol, report, |report| {
        all_decided(report, Decision::Commit, &[1, 2, 3])?;
        if report.coordinator_elections != 1 {
            return Err(format!("expected one election, got {}", report.coordinator_elections));
        }
        if report.outcome_unknown != 1 {
            return Err(format!(
                "the client should not have heard (the leader died first); unknown = {}",
                report.outcome_unknown
            ));
        }
        let min = report.in_doubt.iter().map(|d| d.us).min().unwrap_or(0);
        let max = report.max_in_doubt_us();
        if min < ELECTION_US || max >= OUTAGE_US {
            return Err(format!(
                "participants should resolve after the election and well before {} ms: {:?}",
                OUTAGE_US / 1_000,
                report.in_doubt
            ));
        }
        Ok(format!(
            "the elected replica re-sent the COMMIT its log held: all 3 participants committed {} to {} ms after the leader died",
            min / 1_000,
            max / 1_000
        ))
    })
}
