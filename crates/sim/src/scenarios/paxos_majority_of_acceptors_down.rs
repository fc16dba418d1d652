//! Paxos Commit with F = 1 and two of its three acceptors down (more than F): no ballot can
//! reach a majority, so the transaction blocks — safely — until they return. Then a leader
//! finds no vote chosen and aborts.

use concord_types::{Decision, NodeId};

use super::{
    all_decided, expect_safe, in_doubt_range, ms, one_transfer_with_faults, Scenario, Verdict,
    OUTAGE_US,
};
use crate::config::{FaultAction, ScheduledFault};
use crate::report::RunReport;

const DOWN: [NodeId; 2] = [NodeId(4), NodeId(5)];

pub const SCENARIO: Scenario = Scenario {
    name: "paxos-majority-of-acceptors-down",
    summary: "more than F acceptors down: Paxos Commit blocks until they return, then aborts",
    max_runs: u64::MAX,
    build,
    judge,
};

fn build(seed: u64) -> crate::SimConfig {
    let faults = DOWN
        .iter()
        .flat_map(|&n| {
            [
                ScheduledFault { at_us: 500, action: FaultAction::Crash(n) },
                ScheduledFault { at_us: 500 + OUTAGE_US, action: FaultAction::Restart(n) },
            ]
        })
        .collect();
    one_transfer_with_faults(seed, Vec::new(), faults)
}

fn judge(protocol: &str, report: &RunReport) -> Verdict {
    if protocol != "paxos-commit" {
        return Verdict::NoExpectation;
    }
    expect_safe(report, || {
        let (min, _) = in_doubt_range(report);
        // Votes go out about 2 ms in; the acceptors return at 2000.5 ms.
        if report.in_doubt.len() != 3 || min < OUTAGE_US - 10_000 {
            return Err(format!(
                "expected all 3 blocked until the acceptors returned, got {:?}",
                report.in_doubt
            ));
        }
        all_decided(report, Decision::Abort, &[1, 2, 3])?;
        Ok(format!(
            "blocked {} with a majority of acceptors down, then ABORT (no vote had been chosen)",
            ms(min)
        ))
    })
}
