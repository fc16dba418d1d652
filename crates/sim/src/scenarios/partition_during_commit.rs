//! The network splits {coordinator, n1} from {n2, n3} just as the COMMIT goes out. n1 commits;
//! n2 and n3 are prepared, cannot reach the coordinator or n1, and learn nothing from each other
//! (both are uncertain): they block until the partition heals, then commit. Never a split.

use concord_types::{Decision, NodeId};

use super::{all_decided, judge_two_phase, one_transfer_with, Scenario, Verdict, OUTAGE_US};
use crate::config::{Trigger, TriggerAction, TriggerOn, TriggerTiming, COORDINATOR};
use crate::report::RunReport;

pub const SCENARIO: Scenario = Scenario {
    name: "partition-during-commit",
    summary:
        "{coordinator, n1} | {n2, n3} as COMMIT is sent: n2, n3 block until the heal, then commit",
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
            action: TriggerAction::Partition {
                side: vec![COORDINATOR, NodeId(1)],
                heal_after_us: OUTAGE_US,
            },
        },
    )
}

fn judge(protocol: &str, report: &RunReport) -> Verdict {
    judge_two_phase(protocol, report, |report| {
        all_decided(report, Decision::Commit, &[1, 2, 3])?;
        let of = |n: u32| report.in_doubt.iter().find(|d| d.node == NodeId(n)).map_or(0, |d| d.us);
        if of(2) < OUTAGE_US || of(3) < OUTAGE_US {
            return Err(format!("n2 and n3 should block for the partition; {:?}", report.in_doubt));
        }
        if of(1) >= OUTAGE_US {
            return Err(format!(
                "n1 was with the coordinator and should not block; {:?}",
                report.in_doubt
            ));
        }
        Ok(format!(
            "consistent but blocked: n1 committed in {:.1} ms, n2 and n3 waited {:.0} ms for the heal, then committed",
            of(1) as f64 / 1000.0,
            of(2).min(of(3)) as f64 / 1000.0
        ))
    })
}
