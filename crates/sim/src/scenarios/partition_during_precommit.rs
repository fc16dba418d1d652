//! The network splits {coordinator, n1} from {n2, n3} (and, for Paxos Commit, from the
//! acceptors) as the coordinator starts its second phase. 2PC stays consistent but n2 and n3
//! block until the heal. 3PC's sides decide differently — n1 commits, n2 and n3 terminate among
//! themselves and abort: the agreement checker reports the split, which is 3PC's known limit
//! under partitions. Paxos Commit's majority side finishes, consistently.

use concord_types::{Decision, NodeId};

use super::{
    all_decided, expect_safe, in_doubt_range, ms, one_transfer_with, verdict, Scenario, Verdict,
    OUTAGE_US,
};
use crate::config::{Trigger, TriggerAction, TriggerOn, TriggerTiming, COORDINATOR};
use crate::report::RunReport;

pub const SCENARIO: Scenario = Scenario {
    name: "partition-during-precommit",
    summary: "{coordinator, n1} | the rest as phase two starts: 2PC blocks, 3PC splits, Paxos Commit commits",
    max_runs: u64::MAX,
    build,
    judge,
};

fn build(seed: u64) -> crate::SimConfig {
    one_transfer_with(
        seed,
        Trigger {
            node: COORDINATOR,
            on: vec![TriggerOn::SendPreCommit, TriggerOn::SendDecision(Decision::Commit)],
            timing: TriggerTiming::Before,
            action: TriggerAction::Partition {
                side: vec![COORDINATOR, NodeId(1)],
                heal_after_us: OUTAGE_US,
            },
        },
    )
}

fn in_doubt_of(report: &RunReport, n: u32) -> u64 {
    report.in_doubt.iter().find(|d| d.node == NodeId(n)).map_or(0, |d| d.us)
}

fn judge(protocol: &str, report: &RunReport) -> Verdict {
    match protocol {
        "2pc" => expect_safe(report, || {
            all_decided(report, Decision::Commit, &[1, 2, 3])?;
            if in_doubt_of(report, 2) < OUTAGE_US || in_doubt_of(report, 3) < OUTAGE_US {
                return Err(format!(
                    "n2 and n3 should block for the partition: {:?}",
                    report.in_doubt
                ));
            }
            Ok(format!(
                "consistent but blocked: n2 and n3 waited {} for the heal, then committed",
                ms(in_doubt_of(report, 2))
            ))
        }),
        "3pc" => verdict((|| {
            let split = report.violations.iter().any(|v| v.property == "agreement");
            let decisions =
                report.txns().first().map(|&t| report.decisions_of(t)).unwrap_or_default();
            let want = [
                (NodeId(1), Decision::Commit),
                (NodeId(2), Decision::Abort),
                (NodeId(3), Decision::Abort),
            ];
            if !split || decisions != want {
                return Err(format!("expected the split n1 COMMIT / n2, n3 ABORT reported by the agreement checker; got {decisions:?}, violations {:?}", report.violations));
            }
            Ok("split-brain: n1 committed, n2 and n3 terminated on their side and aborted — \
                the agreement checker reports it; this is 3PC's known limit under partitions"
                .to_string())
        })()),
        "paxos-commit" => expect_safe(report, || {
            all_decided(report, Decision::Commit, &[1, 2, 3])?;
            let (_, max) = in_doubt_range(report);
            if max >= OUTAGE_US / 2 {
                return Err(format!("the majority side should not block: {:?}", report.in_doubt));
            }
            Ok(format!(
                "consistent and not blocked: the side with the acceptors committed within {}",
                ms(max)
            ))
        }),
        _ => Verdict::NoExpectation,
    }
}
