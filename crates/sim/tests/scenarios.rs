//! Every named scenario, run for the protocols it states an outcome for, must have that outcome.

use concord_commit::naive::Naive;
use concord_commit::paxos_commit::PaxosCommit;
use concord_commit::three_phase::ThreePhase;
use concord_commit::two_phase::TwoPhase;
use concord_commit::Protocol;
use concord_sim::scenarios::{self, Verdict};

fn assert_expected<P: Protocol>(name: &str) {
    let scenario = scenarios::find(name).expect("scenario is registered");
    for seed in [1, 2, 3] {
        let report = scenarios::run::<P>(scenario, seed, false);
        match (scenario.judge)(P::NAME, &report) {
            Verdict::Expected(_) => {}
            other => panic!(
                "{name} with {} seed {seed}: {other:?}\nviolations: {:#?}",
                P::NAME,
                report.violations
            ),
        }
    }
}

#[test]
fn coordinator_crash_after_prepare_blocks_participants_until_it_returns() {
    assert_expected::<TwoPhase>("coordinator-crash-after-prepare");
}

#[test]
fn coordinator_crash_after_decision_is_recovered_from_the_log() {
    assert_expected::<TwoPhase>("coordinator-crash-after-decision");
}

/// Issue 21: with the coordinator's log on three replicas, the decision committed there
/// outlives the leader's machine; the participants commit within an election.
#[test]
fn coordinator_leader_crash_after_decision_is_finished_by_an_elected_replica() {
    assert_expected::<TwoPhase>("coordinator-leader-crash-after-decision");
}

#[test]
fn participant_crash_after_yes_recovers_its_prepared_branch() {
    assert_expected::<TwoPhase>("participant-crash-after-yes");
}

#[test]
fn participant_crash_before_vote_aborts_by_timeout() {
    assert_expected::<TwoPhase>("participant-crash-before-vote");
}

#[test]
fn partition_during_commit_blocks_one_side_but_never_splits() {
    assert_expected::<TwoPhase>("partition-during-commit");
}

#[test]
fn duplicate_commit_is_applied_once() {
    assert_expected::<TwoPhase>("duplicate-commit");
}

#[test]
fn early_ack_coordinator_crash_after_the_outcome_leaves_the_participants_to_commit_alone() {
    assert_expected::<TwoPhase>("early-ack-coordinator-crash-after-outcome");
}

#[test]
fn naive_partial_failure_leaves_about_four_percent_split_and_two_phase_none() {
    assert_expected::<Naive>("naive-partial-failure");
    assert_expected::<TwoPhase>("naive-partial-failure");
}

#[test]
fn coordinator_crash_after_precommit_blocks_2pc_but_not_3pc_or_paxos_commit() {
    assert_expected::<TwoPhase>("coordinator-crash-after-precommit");
    assert_expected::<ThreePhase>("coordinator-crash-after-precommit");
    assert_expected::<PaxosCommit>("coordinator-crash-after-precommit");
}

#[test]
fn partition_during_precommit_blocks_2pc_splits_3pc_and_paxos_commit_finishes() {
    assert_expected::<TwoPhase>("partition-during-precommit");
    assert_expected::<ThreePhase>("partition-during-precommit");
    assert_expected::<PaxosCommit>("partition-during-precommit");
}

#[test]
fn paxos_commit_survives_the_coordinator_and_f_acceptors() {
    assert_expected::<PaxosCommit>("paxos-coordinator-and-f-acceptors-crash");
    assert_expected::<ThreePhase>("paxos-coordinator-and-f-acceptors-crash");
    assert_expected::<TwoPhase>("paxos-coordinator-and-f-acceptors-crash");
}

#[test]
fn paxos_commit_blocks_with_more_than_f_acceptors_down() {
    assert_expected::<PaxosCommit>("paxos-majority-of-acceptors-down");
}

#[test]
fn every_scenario_has_a_test_above() {
    // A scenario added to the registry must get its own test; this list must match it.
    let tested = [
        "coordinator-crash-after-prepare",
        "coordinator-crash-after-decision",
        "coordinator-leader-crash-after-decision",
        "participant-crash-after-yes",
        "participant-crash-before-vote",
        "partition-during-commit",
        "duplicate-commit",
        "early-ack-coordinator-crash-after-outcome",
        "coordinator-crash-after-precommit",
        "partition-during-precommit",
        "paxos-coordinator-and-f-acceptors-crash",
        "paxos-majority-of-acceptors-down",
        "naive-partial-failure",
    ];
    let registered: Vec<&str> = scenarios::ALL.iter().map(|s| s.name).collect();
    assert_eq!(registered, tested);
}
