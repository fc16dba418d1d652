//! A participant crashes right after voting YES. The coordinator commits (every vote was YES)
//! and keeps re-sending COMMIT; the participant restarts, restores its prepared branch and its
//! locks from its log, and commits.

use concord_types::{Decision, NodeId, Vote};

use super::{all_decided, judge_two_phase, one_transfer_with, Scenario, Verdict};
use crate::config::{Trigger, TriggerAction, TriggerOn, TriggerTiming};
use crate::report::RunReport;

const DOWN_US: u64 = 500_000;

pub const SCENARIO: Scenario = Scenario {
    name: "participant-crash-after-yes",
    summary:
        "a participant dies right after voting YES: it recovers its prepared branch and commits",
    max_runs: u64::MAX,
    build,
    judge,
};

fn build(seed: u64) -> crate::SimConfig {
    one_transfer_with(
        seed,
        Trigger {
            node: NodeId(1),
            on: vec![TriggerOn::SendVote(Vote::Yes)],
            timing: TriggerTiming::After,
            action: TriggerAction::Crash { restart_after_us: DOWN_US },
        },
    )
}

fn judge(protocol: &str, report: &RunReport) -> Verdict {
    judge_two_phase(protocol, report, |report| {
        all_decided(report, Decision::Commit, &[1, 2, 3])?;
        if report.committed != 1 {
            return Err("the client should have been told COMMIT".to_string());
        }
        let n1 = report.in_doubt.iter().find(|d| d.node == NodeId(1)).map_or(0, |d| d.us);
        if n1 < DOWN_US {
            return Err(format!("n1 should have stayed prepared while down; in doubt {n1} µs"));
        }
        Ok(format!(
            "n1 recovered its prepared branch and committed after {:.0} ms in doubt",
            n1 as f64 / 1000.0
        ))
    })
}
