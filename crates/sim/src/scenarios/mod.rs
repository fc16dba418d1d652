//! Named failure stories from the seed documents, each with the outcome it must have.
//!
//! A scenario builds a [`SimConfig`] (workload, faults, triggers) for a seed and judges the run's
//! [`RunReport`] for a protocol. The seed varies delays and the like; the story and its expected
//! outcome do not.

mod coordinator_crash_after_decision;
mod coordinator_crash_after_precommit;
mod coordinator_crash_after_prepare;
mod coordinator_leader_crash_after_decision;
mod duplicate_commit;
mod early_ack_coordinator_crash_after_outcome;
mod naive_partial_failure;
mod participant_crash_after_yes;
mod participant_crash_before_vote;
mod partition_during_commit;
mod partition_during_precommit;
mod paxos_coordinator_and_f_acceptors_crash;
mod paxos_majority_of_acceptors_down;

use concord_commit::Branch;
use concord_types::{Decision, NodeId, Write};

use crate::config::{ScheduledFault, SimConfig, Trigger, TxnSpec};
use crate::report::RunReport;

/// What a scenario says of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The run did what the scenario says this protocol does; the words say what that was.
    Expected(String),
    /// It did not; the words say how.
    Unexpected(String),
    /// The scenario states no outcome for this protocol.
    NoExpectation,
}

#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub summary: &'static str,
    /// Runs worth doing in a comparison: a story that is itself an experiment of many trials
    /// (`naive-partial-failure`) is run once.
    pub max_runs: u64,
    pub build: fn(seed: u64) -> SimConfig,
    pub judge: fn(protocol: &str, report: &RunReport) -> Verdict,
}

/// Every scenario, in the order `concord sim scenarios` lists them.
pub const ALL: &[Scenario] = &[
    coordinator_crash_after_prepare::SCENARIO,
    coordinator_crash_after_decision::SCENARIO,
    coordinator_leader_crash_after_decision::SCENARIO,
    participant_crash_after_yes::SCENARIO,
    participant_crash_before_vote::SCENARIO,
    partition_during_commit::SCENARIO,
    duplicate_commit::SCENARIO,
    early_ack_coordinator_crash_after_outcome::SCENARIO,
    coordinator_crash_after_precommit::SCENARIO,
    partition_during_precommit::SCENARIO,
    paxos_coordinator_and_f_acceptors_crash::SCENARIO,
    paxos_majority_of_acceptors_down::SCENARIO,
    naive_partial_failure::SCENARIO,
];

pub fn find(name: &str) -> Option<&'static Scenario> {
    ALL.iter().find(|s| s.name == name)
}

/// Runs `scenario` for protocol `P` with `seed`.
pub fn run<P: concord_commit::Protocol>(
    scenario: &Scenario,
    seed: u64,
    record_trace: bool,
) -> RunReport {
    let mut config = (scenario.build)(seed);
    config.record_trace = record_trace;
    crate::simulate::<P>(config)
}

/// How long a crashed coordinator stays down, or a partition lasts, in the stories.
pub const OUTAGE_US: u64 = 2_000_000;

/// The stories' transaction: one transfer touching all three participants, submitted at 1 ms.
fn one_transfer(seed: u64) -> SimConfig {
    let branches =
        (1..=3).map(|n| Branch { node: NodeId(n), writes: vec![Write { key: 1, delta: 10 }] });
    let mut config =
        SimConfig::new(seed, 3, vec![TxnSpec { at_us: 1_000, branches: branches.collect() }]);
    // Faults stop well after every outage in the stories, so the stories play out unhealed.
    config.heal_at_us = 3 * OUTAGE_US;
    // Lose unsynced bytes outright: the stories depend on a record being lost, not on luck.
    config.disk.torn_writes = false;
    config
}

/// The stories' transaction, with fault triggers and scheduled faults.
fn one_transfer_with_faults(
    seed: u64,
    triggers: Vec<Trigger>,
    faults: Vec<ScheduledFault>,
) -> SimConfig {
    let mut config = one_transfer(seed);
    config.triggers = triggers;
    config.faults = faults;
    config
}

/// The stories' transaction, with one fault trigger.
fn one_transfer_with(seed: u64, trigger: Trigger) -> SimConfig {
    let mut config = one_transfer(seed);
    config.triggers.push(trigger);
    config
}

/// Judges a story that states an outcome for 2PC only: no violation, then `check`.
fn judge_two_phase(
    protocol: &str,
    report: &RunReport,
    check: impl FnOnce(&RunReport) -> Result<String, String>,
) -> Verdict {
    if protocol != "2pc" {
        return Verdict::NoExpectation;
    }
    expect_safe(report, || check(report))
}

/// No violation, then `check`.
fn expect_safe(report: &RunReport, check: impl FnOnce() -> Result<String, String>) -> Verdict {
    let checked = match report.violations.first() {
        Some(v) => Err(format!("{} violation(s), first: {v}", report.violations.len())),
        None => check(),
    };
    verdict(checked)
}

/// The longest any participant was in doubt, and the shortest.
fn in_doubt_range(report: &RunReport) -> (u64, u64) {
    let min = report.in_doubt.iter().map(|d| d.us).min().unwrap_or(0);
    (min, report.max_in_doubt_us())
}

fn ms(us: u64) -> String {
    format!("{:.0} ms", us as f64 / 1000.0)
}

/// Blocked: every participant in doubt for at least the outage.
fn blocked_for_outage(report: &RunReport) -> Result<(), String> {
    let (min, _) = in_doubt_range(report);
    if report.in_doubt.len() == 3 && min >= OUTAGE_US {
        Ok(())
    } else {
        Err(format!(
            "expected all 3 participants blocked ≥ {}, got {:?}",
            ms(OUTAGE_US),
            report.in_doubt
        ))
    }
}

/// Not blocked: every participant resolved well within the outage.
fn not_blocked(report: &RunReport) -> Result<(), String> {
    let (_, max) = in_doubt_range(report);
    if max < OUTAGE_US / 2 && report.in_doubt.iter().all(|d| d.resolved) {
        Ok(())
    } else {
        Err(format!(
            "expected no participant in doubt ≥ {}, got {:?}",
            ms(OUTAGE_US / 2),
            report.in_doubt
        ))
    }
}

fn all_decided(report: &RunReport, decision: Decision, nodes: &[u32]) -> Result<(), String> {
    let Some(&txn) = report.txns().first() else {
        return Err("no participant decided anything".to_string());
    };
    let got = report.decisions_of(txn);
    let want: Vec<(NodeId, Decision)> = nodes.iter().map(|&n| (NodeId(n), decision)).collect();
    if got == want {
        Ok(())
    } else {
        Err(format!("expected {want:?}, participants decided {got:?}"))
    }
}

fn verdict(result: Result<String, String>) -> Verdict {
    match result {
        Ok(words) => Verdict::Expected(words),
        Err(words) => Verdict::Unexpected(words),
    }
}
