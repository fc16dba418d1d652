//! Exhaustive model checking of the real cores. The numbers of distinct states are pinned: a
//! change in a core that changes its state space fails here and must be looked at (and the
//! numbers updated on purpose). Sized to run in a couple of minutes in CI.

use concord_commit::paxos_commit::PaxosCommit;
use concord_commit::three_phase::ThreePhase;
use concord_commit::two_phase::TwoPhase;
use concord_sim::explore::{explore, Bounds, Exploration, Timeouts};

const NO_FAULTS: Bounds = Bounds {
    participants: 3,
    fault_tolerance: 1,
    crashes: 0,
    restarts: true,
    losses: 0,
    partitions: 0,
    timer_fires: 0,
    timeouts: Timeouts::Anytime,
    early_ack: false,
    forget: false,
    refuse: false,
    status_probes: 0,
    forgotten_kept: 0,
    max_states: 5_000_000,
};

fn assert_safe(what: &str, r: &Exploration, states: u64) {
    if let Some(c) = &r.counterexample {
        panic!("{what}: {}\n{}", c.property, c.steps.join("\n"));
    }
    assert!(r.complete, "{what}: stopped at {} states", r.states);
    assert_eq!(r.states, states, "{what}: the state space changed");
}

#[test]
fn two_phase_commit_keeps_agreement_with_a_crash_a_loss_and_an_early_timeout() {
    // Fully asynchronous: the timer may fire at any moment.
    let bounds = Bounds { crashes: 1, losses: 1, timer_fires: 1, ..NO_FAULTS };
    assert_safe("2pc", &explore::<TwoPhase>(bounds), 1_655_265);
}

#[test]
fn two_phase_commit_keeps_agreement_through_a_partition() {
    let bounds = Bounds {
        participants: 2,
        crashes: 1,
        losses: 1,
        partitions: 1,
        timer_fires: 2,
        ..NO_FAULTS
    };
    assert_safe("2pc", &explore::<TwoPhase>(bounds), 610_690);
}

#[test]
fn two_phase_commit_with_early_acknowledgement_keeps_agreement_with_a_crash_a_loss_and_a_timeout() {
    // The client hears COMMIT before any decision is durable; a coordinator crash then leaves
    // only the participants' prepare records to recover the outcome from.
    let bounds = Bounds {
        participants: 2,
        crashes: 1,
        losses: 1,
        timer_fires: 2,
        early_ack: true,
        ..NO_FAULTS
    };
    assert_safe("2pc early ack", &explore::<TwoPhase>(bounds), 745_988);
}

#[test]
fn two_phase_commit_with_early_acknowledgement_keeps_agreement_through_a_partition() {
    let bounds = Bounds {
        participants: 2,
        crashes: 1,
        losses: 1,
        partitions: 1,
        timer_fires: 2,
        early_ack: true,
        ..NO_FAULTS
    };
    assert_safe("2pc early ack", &explore::<TwoPhase>(bounds), 959_779);
}

#[test]
fn two_phase_commit_with_forgetting_keeps_agreement_with_a_crash_a_loss_and_a_timeout() {
    // FORGET after the transaction ends races every late duplicate the loss and the crash can
    // leave in flight: a PREPARE, a COMMIT, an INQUIRE of a restarted participant.
    let bounds = Bounds {
        participants: 2,
        crashes: 1,
        losses: 1,
        timer_fires: 2,
        forget: true,
        ..NO_FAULTS
    };
    assert_safe("2pc forgetting", &explore::<TwoPhase>(bounds), 1_923_890);
}

#[test]
fn two_phase_commit_with_forgetting_and_early_acknowledgement_keeps_agreement() {
    let bounds = Bounds {
        participants: 2,
        crashes: 1,
        losses: 1,
        timer_fires: 2,
        early_ack: true,
        forget: true,
        ..NO_FAULTS
    };
    assert_safe("2pc forgetting, early ack", &explore::<TwoPhase>(bounds), 2_572_380);
}

#[test]
fn two_phase_commit_aborts_everywhere_when_a_participant_refuses() {
    // The NO vote, the coordinator's abort and the other branch's rollback, under a crash, a
    // loss and early timers: nobody may commit, and the client may not hear COMMIT.
    let bounds = Bounds {
        participants: 2,
        crashes: 1,
        losses: 1,
        timer_fires: 2,
        refuse: true,
        ..NO_FAULTS
    };
    assert_safe("2pc, refusing", &explore::<TwoPhase>(bounds), 54_423);
}

#[test]
fn two_phase_commit_with_early_acknowledgement_aborts_everywhere_when_a_participant_refuses() {
    // Early acknowledgement: the NO is a forced record the prepares decide by.
    let bounds = Bounds {
        participants: 2,
        crashes: 1,
        losses: 1,
        timer_fires: 2,
        early_ack: true,
        refuse: true,
        ..NO_FAULTS
    };
    assert_safe("2pc early ack, refusing", &explore::<TwoPhase>(bounds), 101_928);
}

#[test]
fn paxos_commit_one_phase_tells_the_client_what_its_participant_decided() {
    // One participant: COMMIT-ONE-PHASE, no instance. The participant refuses, so an answer
    // of COMMIT anywhere (a crash, a resend, a partition, a status query) breaks agreement.
    // (Answering COMMIT before the refusal's record is found here at once; without `refuse`
    // the model's one transaction always commits and that mutation passes.)
    let bounds = Bounds {
        participants: 1,
        crashes: 1,
        losses: 1,
        partitions: 1,
        timer_fires: 2,
        refuse: true,
        ..NO_FAULTS
    };
    assert_safe("paxos-commit one phase, refusing", &explore::<PaxosCommit>(bounds), 69_696);
}

#[test]
fn paxos_commit_keeps_agreement_with_a_loss_and_an_early_ballot() {
    // An early timer starts a leader's ballot racing the participants' ballot-0 votes, or has a
    // participant hand the transaction to an acceptor to lead.
    let bounds = Bounds { participants: 2, losses: 1, timer_fires: 1, ..NO_FAULTS };
    assert_safe("paxos-commit", &explore::<PaxosCommit>(bounds), 1_918_738);
}

#[test]
fn three_phase_commit_keeps_agreement_under_crashes_when_timeouts_are_accurate() {
    let bounds = Bounds {
        participants: 2,
        crashes: 1,
        timer_fires: 3,
        timeouts: Timeouts::WhenQuiescent,
        ..NO_FAULTS
    };
    assert_safe("3pc", &explore::<ThreePhase>(bounds), 58_178);
}

#[test]
fn three_phase_commit_splits_under_a_partition_and_the_counterexample_shows_how() {
    let bounds =
        Bounds { partitions: 1, timer_fires: 3, timeouts: Timeouts::WhenQuiescent, ..NO_FAULTS };
    let r = explore::<ThreePhase>(bounds);
    let c = r.counterexample.expect("3PC is not partition-tolerant: a counterexample must exist");
    assert!(c.property.starts_with("agreement"), "{}", c.property);
    assert!(
        c.steps.iter().any(|s| s.starts_with("PARTITION")),
        "the split needs the partition:\n{}",
        c.steps.join("\n")
    );
    assert!(c.steps.iter().any(|s| s.contains("termination-decided")), "{}", c.steps.join("\n"));
    assert_eq!(r.states, 18_296, "the search path to the counterexample changed");
}

#[test]
fn two_phase_commit_status_queries_never_contradict_what_was_applied() {
    // One participant: the one-phase commit, forgotten at once (FORGET after every finished
    // transaction), crashes, a loss and early timers — and two status queries at any moment.
    // A participant that answered ABORT for what it had forgotten is found here at depth 10.
    let bounds = Bounds {
        participants: 1,
        crashes: 1,
        losses: 1,
        timer_fires: 2,
        forget: true,
        status_probes: 2,
        ..NO_FAULTS
    };
    assert_safe("2pc status, nothing kept", &explore::<TwoPhase>(bounds), 9_254);
    let kept = Bounds { forgotten_kept: 1, ..bounds };
    assert_safe("2pc status, one outcome kept", &explore::<TwoPhase>(kept), 8_039);
}

#[test]
fn paxos_commit_status_queries_never_contradict_what_was_applied() {
    let bounds = Bounds {
        participants: 1,
        crashes: 1,
        losses: 1,
        timer_fires: 1,
        status_probes: 1,
        ..NO_FAULTS
    };
    assert_safe("paxos commit status", &explore::<PaxosCommit>(bounds), 17_128);
}

#[test]
fn paxos_commit_forgetting_keeps_agreement_and_honest_status() {
    // Forgetting adds acknowledgements, resent decisions and a FORGET to every shard and
    // acceptor, which multiplies the interleavings: timers fire only when nothing else can
    // happen here (a loss as well: 1,099,724 states, by hand). A fail-stop crash of any node —
    // a shard that never acknowledges holds the mark back — and, separately, a status query at
    // any moment, which must never meet a presumed ABORT for what a shard forgot.
    let bounds = Bounds {
        participants: 2,
        crashes: 1,
        restarts: false,
        timer_fires: 1,
        timeouts: Timeouts::WhenQuiescent,
        forget: true,
        ..NO_FAULTS
    };
    assert_safe("paxos-commit forgetting, fail-stop", &explore::<PaxosCommit>(bounds), 31_328);
    let probed = Bounds { crashes: 0, restarts: true, status_probes: 1, ..bounds };
    assert_safe("paxos-commit forgetting, status", &explore::<PaxosCommit>(probed), 318_743);
}
