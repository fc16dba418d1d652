//! Every participant voted YES (and, in 3PC, pre-committed); the coordinator crashes just
//! before deciding. 2PC blocks until it returns. 3PC's participants run the termination
//! protocol: everyone is pre-committed, so they commit without it. Paxos Commit's votes are
//! already chosen at the acceptors: an acceptor leads, finds them, and commits.

use concord_types::Decision;

use super::{
    all_decided, blocked_for_outage, expect_safe, in_doubt_range, ms, not_blocked,
    one_transfer_with, Scenario, Verdict, OUTAGE_US,
};
use crate::config::{Trigger, TriggerAction, TriggerOn, TriggerTiming, COORDINATOR};
use crate::report::RunReport;

pub const SCENARIO: Scenario = Scenario {
    name: "coordinator-crash-after-precommit",
    summary:
        "coordinator dies just before deciding: 2PC blocks; 3PC and Paxos Commit commit without it",
    max_runs: u64::MAX,
    build,
    judge,
};

fn build(seed: u64) -> crate::SimConfig {
    one_transfer_with(
        seed,
        Trigger {
            node: COORDINATOR,
            // 2PC and 3PC force a decision record first; Paxos Commit goes straight to sending.
            on: vec![
                TriggerOn::PersistDecision(Decision::Commit),
                TriggerOn::SendDecision(Decision::Commit),
            ],
            timing: TriggerTiming::Before,
            action: TriggerAction::Crash { restart_after_us: OUTAGE_US },
        },
    )
}

fn judge(protocol: &str, report: &RunReport) -> Verdict {
    match protocol {
        "2pc" => expect_safe(report, || {
            blocked_for_outage(report)?;
            all_decided(report, Decision::Abort, &[1, 2, 3])?;
            Ok(format!(
                "blocked: all 3 participants in doubt ≥ {} until the coordinator returned, then ABORT",
                ms(in_doubt_range(report).0)
            ))
        }),
        "3pc" | "paxos-commit" => expect_safe(report, || {
            not_blocked(report)?;
            all_decided(report, Decision::Commit, &[1, 2, 3])?;
            let how = if protocol == "3pc" {
                "the termination protocol"
            } else {
                "an acceptor leading a new ballot"
            };
            Ok(format!(
                "not blocked: committed without the coordinator through {how} within {}",
                ms(in_doubt_range(report).1)
            ))
        }),
        _ => Verdict::NoExpectation,
    }
}
