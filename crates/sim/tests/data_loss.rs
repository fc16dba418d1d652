//! Participants that lose their whole log at a crash and come back as `--accept-data-loss`
//! brings them back — presuming nothing about what they may have forgotten — under the
//! sweep's random faults. Atomicity must hold: no transaction committed at one participant and
//! aborted at another, no client told COMMIT for what was aborted (or the reverse), nothing
//! applied twice, every status answer true; the stores hold exactly the commits not lost with
//! a log; and every transaction the losses did not touch is still decided everywhere.
//!
//! Without the amnesia (the participant restarted as if new) the same schedules break
//! agreement, validity and status honesty in about one run in seven (2PC) and one in thirteen
//! (Paxos Commit); the sweep must find nothing.

use concord_commit::paxos_commit::PaxosCommit;
use concord_commit::two_phase::TwoPhase;
use concord_commit::Protocol;
use concord_sim::sweep::{random_config, run_config};

fn sweep_with_log_loss<P: Protocol>(runs: u64) {
    let (mut lost, mut failures) = (0, Vec::new());
    for seed in 0..runs {
        let mut config = random_config(seed);
        config.log_loss = 0.5;
        let report = run_config::<P>(config);
        lost += u64::from(report.logs_lost);
        if !report.violations.is_empty() {
            failures.push((seed, report.violations));
        }
    }
    assert!(lost > runs / 10, "{} runs lost only {lost} logs", P::NAME);
    assert!(
        failures.is_empty(),
        "{} of {runs} {} runs broke a property; first seeds {:?}; first: {:#?}",
        failures.len(),
        P::NAME,
        failures.iter().take(8).map(|(s, _)| *s).collect::<Vec<_>>(),
        failures.first()
    );
}

#[test]
fn two_phase_commit_keeps_atomicity_when_participants_lose_their_logs() {
    sweep_with_log_loss::<TwoPhase>(20_000);
}

#[test]
fn paxos_commit_keeps_atomicity_when_participants_lose_their_logs() {
    sweep_with_log_loss::<PaxosCommit>(10_000);
}
