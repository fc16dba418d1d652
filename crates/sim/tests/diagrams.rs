//! Every simulated run can be drawn: every scenario under every protocol, and a few hundred
//! random schedules per protocol, as text and as SVG — with a lane for every node of the run,
//! whatever it did (acceptors outside the fast path included), and no panic.

use concord_commit::naive::Naive;
use concord_commit::paxos_commit::PaxosCommit;
use concord_commit::three_phase::ThreePhase;
use concord_commit::two_phase::TwoPhase;
use concord_commit::Protocol;
use concord_sim::report::RunReport;
use concord_sim::{diagram, scenarios, sweep};

fn draw(report: &RunReport, what: &str) {
    let trace = report.trace.as_deref().expect("the trace was recorded");
    assert!(!trace.is_empty(), "{what}: an empty trace");
    let text = diagram::text(trace, report.nodes, what);
    let svg = diagram::svg(trace, report.nodes, what);
    assert!(text.lines().count() > 2 && svg.ends_with("</svg>\n"), "{what}");
    // Every node of the run has its lane in the header, acceptors that never spoke included.
    let header = text.lines().nth(1).unwrap_or_default();
    for node in 0..report.nodes {
        assert!(header.contains(&format!("n{node}")), "{what}: no lane for n{node}: {header}");
    }
}

fn every_scenario_and_random_replays<P: Protocol>(replays: u64) {
    for scenario in scenarios::ALL {
        for seed in [1, 2] {
            let report = scenarios::run::<P>(scenario, seed, true);
            draw(&report, &format!("{} · {} · seed {seed}", scenario.name, P::NAME));
        }
    }
    for seed in 1..=replays {
        let mut config = sweep::random_config(seed);
        config.record_trace = true;
        let report = concord_sim::simulate::<P>(config);
        draw(&report, &format!("replay · {} · seed {seed}", P::NAME));
    }
}

#[test]
fn every_two_phase_run_can_be_drawn() {
    every_scenario_and_random_replays::<TwoPhase>(200);
}

#[test]
fn every_paxos_commit_run_can_be_drawn() {
    every_scenario_and_random_replays::<PaxosCommit>(300);
}

#[test]
fn every_three_phase_and_naive_run_can_be_drawn() {
    every_scenario_and_random_replays::<ThreePhase>(200);
    every_scenario_and_random_replays::<Naive>(100);
}
