//! 2PC with early acknowledgement: every prepare is durable, the coordinator tells the client
//! COMMIT and dies before sending a single COMMIT or logging anything. Classic 2PC would leave
//! the participants blocked until it returned (`coordinator-crash-after-prepare`); here their
//! prepare records are the decision: they ask each other, find every peer prepared, and commit
//! without it — and the client's COMMIT holds.

use concord_types::Decision;

use super::OUTAGE_US;
use super::{all_decided, judge_two_phase, not_blocked, one_transfer_with, Scenario, Verdict};
use crate::config::{Trigger, TriggerAction, TriggerOn, TriggerTiming, COORDINATOR};
use crate::report::RunReport;

pub const SCENARIO: Scenario = Scenario {
    name: "early-ack-coordinator-crash-after-outcome",
    summary: "early acknowledgement: client told COMMIT, coordinator dies before any COMMIT or \
              log record: participants commit among themselves",
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
            action: TriggerAction::Crash { restart_after_us: OUTAGE_US },
        },
    );
    config.switches.early_ack = true;
    config
}

fn judge(protocol: &str, report: &RunReport) -> Verdict {
    judge_two_phase(protocol, report, |report| {
        if report.committed != 1 {
            return Err(format!(
                "the client should have heard COMMIT before the crash; committed = {}, unknown = {}",
                report.committed, report.outcome_unknown
            ));
        }
        all_decided(report, Decision::Commit, &[1, 2, 3])?;
        not_blocked(report)?;
        Ok("the client heard COMMIT; with the coordinator down, the participants found every \
            peer prepared and committed"
            .to_string())
    })
}
