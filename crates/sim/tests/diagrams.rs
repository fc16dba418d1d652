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

/// The JSON trace holds every event with its whole contents, and reads back to the same trace.
fn round_trip<P: Protocol>(replays: u64) -> Vec<serde_json::Value> {
    let mut docs = Vec::new();
    let reports = scenarios::ALL.iter().map(|s| scenarios::run::<P>(s, 1, true)).chain(
        (1..=replays).map(|seed| {
            let mut config = sweep::random_config(seed);
            config.record_trace = true;
            concord_sim::simulate::<P>(config)
        }),
    );
    for report in reports {
        let doc = concord_sim::trace_json::to_json(&report);
        let text = serde_json::to_string(&doc).unwrap();
        let read: serde_json::Value = serde_json::from_str(&text).unwrap();
        let back = concord_sim::trace_json::from_json(&read).unwrap();
        assert_eq!(&back, report.trace.as_ref().unwrap(), "{} seed {}", P::NAME, report.seed);
        assert_eq!(read["nodes"], report.nodes);
        docs.push(read);
    }
    docs
}

fn events<'a>(
    docs: &'a [serde_json::Value],
    kind: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> {
    docs.iter().flat_map(|d| d["events"].as_array().unwrap()).filter(move |e| e["event"] == kind)
}

#[test]
fn a_json_trace_is_complete_and_reads_back_the_same() {
    let docs = round_trip::<TwoPhase>(50);
    // 2PC's PREPARE carries its participant list; persists their records; crashes what they lost.
    assert!(events(&docs, "send").any(|e| e["label"].as_str().unwrap().starts_with("PREPARE")
        && e["message"].as_str().unwrap().contains("peers")));
    assert!(
        events(&docs, "timer_set").next().is_some()
            && events(&docs, "timer_fired").next().is_some()
    );
    assert!(events(&docs, "crash").any(|e| !e["lost"].as_array().unwrap().is_empty()));
    assert!(events(&docs, "restart").any(|e| !e["replayed"].as_array().unwrap().is_empty()));

    let docs = round_trip::<PaxosCommit>(50);
    // Paxos Commit: every 2a/2b with its ballot and every instance's value; 1b with what it
    // accepted.
    let phase2 =
        events(&docs, "send").find(|e| e["label"].as_str().unwrap().starts_with("2a")).unwrap();
    let message = phase2["message"].as_str().unwrap();
    assert!(message.contains("ballot") && message.contains("values"), "{message}");
    assert!(events(&docs, "deliver").any(|e| e["label"].as_str().unwrap().starts_with("1b")
        && e["message"].as_str().unwrap().contains("accepted")));
    round_trip::<ThreePhase>(20);
    round_trip::<Naive>(20);
}

/// A trace file is input: one naming more nodes than a run has, or a node past its count, is
/// refused rather than drawn with billions of lanes.
#[test]
fn a_json_trace_naming_absurd_nodes_is_refused() {
    let mut config = sweep::random_config(1);
    config.record_trace = true;
    let report = concord_sim::simulate::<TwoPhase>(config);
    let mut doc = concord_sim::trace_json::to_json(&report);
    doc["nodes"] = serde_json::json!(u32::MAX);
    assert!(concord_sim::trace_json::from_json(&doc).unwrap_err().contains("at most"));
    let mut doc = concord_sim::trace_json::to_json(&report);
    let crash =
        serde_json::json!({"at_us": 0, "event": "crash", "node": 4_000_000_000u32, "lost": []});
    doc["events"][0] = crash;
    assert!(concord_sim::trace_json::from_json(&doc).unwrap_err().contains("names"));
}
