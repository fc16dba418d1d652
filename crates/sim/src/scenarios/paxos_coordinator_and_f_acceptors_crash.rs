//! Paxos Commit with F = 1 (three acceptors): one of the acceptors that takes the normal case
//! is down from the start, and the coordinator crashes just as it would announce the decision.
//! F + 1 acceptors remain, so another leader finishes: no one blocks. 2PC and 3PC meet the same
//! coordinator crash (they have no acceptors): 2PC blocks, 3PC terminates.

use concord_types::{Decision, NodeId};

use super::{
    all_decided, blocked_for_outage, expect_safe, in_doubt_range, ms, not_blocked,
    one_transfer_with_faults, Scenario, Verdict, OUTAGE_US,
};
use crate::config::{
    FaultAction, ScheduledFault, Trigger, TriggerAction, TriggerOn, TriggerTiming, COORDINATOR,
};
use crate::report::RunReport;

/// The first acceptor with three participants.
const ACCEPTOR: NodeId = NodeId(4);

pub const SCENARIO: Scenario = Scenario {
    name: "paxos-coordinator-and-f-acceptors-crash",
    summary: "coordinator and F acceptors down: Paxos Commit still commits, unblocked",
    max_runs: u64::MAX,
    build,
    judge,
};

fn build(seed: u64) -> crate::SimConfig {
    one_transfer_with_faults(
        seed,
        vec![Trigger {
            node: COORDINATOR,
            on: vec![
                TriggerOn::PersistDecision(Decision::Commit),
                TriggerOn::SendDecision(Decision::Commit),
            ],
            timing: TriggerTiming::Before,
            action: TriggerAction::Crash { restart_after_us: OUTAGE_US },
        }],
        vec![
            ScheduledFault { at_us: 500, action: FaultAction::Crash(ACCEPTOR) },
            ScheduledFault { at_us: 500 + OUTAGE_US, action: FaultAction::Restart(ACCEPTOR) },
        ],
    )
}

fn judge(protocol: &str, report: &RunReport) -> Verdict {
    match protocol {
        "paxos-commit" | "3pc" => expect_safe(report, || {
            not_blocked(report)?;
            all_decided(report, Decision::Commit, &[1, 2, 3])?;
            Ok(format!("not blocked: committed within {} with the coordinator (and, for Paxos Commit, F acceptors) down", ms(in_doubt_range(report).1)))
        }),
        "2pc" => expect_safe(report, || {
            blocked_for_outage(report)?;
            all_decided(report, Decision::Abort, &[1, 2, 3])?;
            Ok("blocked until the coordinator returned, then ABORT".to_string())
        }),
        _ => Verdict::NoExpectation,
    }
}
