//! A participant crashes while its prepare record is still being written: it never votes. The
//! coordinator's vote timeout aborts the transaction; the others are released at once, and the
//! crashed one comes back with nothing to resolve.

use concord_types::{Decision, NodeId};

use super::{judge_two_phase, one_transfer_with, Scenario, Verdict};
use crate::config::{Trigger, TriggerAction, TriggerOn, TriggerTiming};
use crate::report::RunReport;

const DOWN_US: u64 = 500_000;
/// The vote timeout plus a few network delays: how long the others may wait.
const RELEASE_WITHIN_US: u64 = 60_000;

pub const SCENARIO: Scenario = Scenario {
    name: "participant-crash-before-vote",
    summary: "a participant dies before its vote: the vote timeout aborts, nobody blocks",
    max_runs: u64::MAX,
    build,
    judge,
};

fn build(seed: u64) -> crate::SimConfig {
    one_transfer_with(
        seed,
        Trigger {
            node: NodeId(1),
            on: vec![TriggerOn::PersistPrepared],
            timing: TriggerTiming::After, // written, not yet synced: lost in the crash
            action: TriggerAction::Crash { restart_after_us: DOWN_US },
        },
    )
}

fn judge(protocol: &str, report: &RunReport) -> Verdict {
    judge_two_phase(protocol, report, |report| {
        if report.aborted != 1 {
            return Err(format!(
                "the client should have been told ABORT; aborted = {}",
                report.aborted
            ));
        }
        let txn = report.txns().first().copied().ok_or("nobody decided")?;
        let decisions = report.decisions_of(txn);
        let others = [(NodeId(2), Decision::Abort), (NodeId(3), Decision::Abort)];
        if !others.iter().all(|d| decisions.contains(d))
            || decisions.iter().any(|(_, d)| *d == Decision::Commit)
        {
            return Err(format!("n2 and n3 should abort; decisions {decisions:?}"));
        }
        if report.max_in_doubt_us() > RELEASE_WITHIN_US {
            return Err(format!(
                "someone stayed in doubt {} µs; the vote timeout should release them",
                report.max_in_doubt_us()
            ));
        }
        Ok(format!(
            "vote timeout aborted; the others were in doubt at most {:.1} ms",
            report.max_in_doubt_us() as f64 / 1000.0
        ))
    })
}
