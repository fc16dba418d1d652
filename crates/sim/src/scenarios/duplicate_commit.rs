//! Every message is delivered twice (a retrying network, a resending coordinator). Each
//! participant acknowledges the repeated COMMIT and applies it once: nobody is charged twice.

use concord_types::Decision;

use super::{all_decided, judge_two_phase, one_transfer, Scenario, Verdict};
use crate::report::RunReport;

pub const SCENARIO: Scenario = Scenario {
    name: "duplicate-commit",
    summary: "every message delivered twice: COMMIT is acknowledged again but applied once",
    max_runs: u64::MAX,
    build,
    judge,
};

fn build(seed: u64) -> crate::SimConfig {
    let mut config = one_transfer(seed);
    config.network.duplicate_rate = 1.0;
    config
}

fn judge(protocol: &str, report: &RunReport) -> Verdict {
    judge_two_phase(protocol, report, |report| {
        all_decided(report, Decision::Commit, &[1, 2, 3])?;
        if report.messages_duplicated < report.messages_sent {
            return Err(format!(
                "only {} of {} messages were duplicated",
                report.messages_duplicated, report.messages_sent
            ));
        }
        Ok(format!(
            "all {} messages delivered twice; each participant applied the transfer exactly once",
            report.messages_sent
        ))
    })
}
