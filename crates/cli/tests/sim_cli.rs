//! The `concord sim` command line as a user meets it: outputs, exit codes, bad input.

use std::process::{Command, Output};

fn concord(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_concord")).args(args).output().expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn scenarios_are_listed_one_per_line() {
    let out = concord(&["sim", "scenarios"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 13, "{text}");
    assert!(text.lines().any(|l| l.starts_with("coordinator-crash-after-prepare ")));
}

#[test]
fn a_scenario_run_prints_a_diagram_and_its_outcome_and_is_deterministic() {
    let args = [
        "sim",
        "run",
        "--protocol",
        "2pc",
        "--scenario",
        "coordinator-crash-after-decision",
        "--seed",
        "5",
    ];
    let first = concord(&args);
    assert!(first.status.success(), "{}", stderr(&first));
    let text = stdout(&first);
    assert!(text.contains("time ms"), "no diagram:\n{text}");
    assert!(text.contains("n0 CRASHES"), "{text}");
    assert!(text.contains("as expected: recovery re-sent the logged COMMIT"), "{text}");
    assert_eq!(stdout(&concord(&args)), text, "same seed, same output");
    let other = concord(&[
        "sim",
        "run",
        "--protocol",
        "2pc",
        "--scenario",
        "coordinator-crash-after-decision",
        "--seed",
        "6",
    ]);
    assert_ne!(stdout(&other), text, "another seed, another run");
}

#[test]
fn svg_diagram_is_written() {
    let path = std::env::temp_dir().join(format!("concord-cli-test-{}.svg", std::process::id()));
    let out = concord(&[
        "sim",
        "run",
        "--protocol",
        "2pc",
        "--scenario",
        "partition-during-commit",
        "--no-diagram",
        "--svg",
        path.to_str().expect("utf-8 temp path"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let svg = std::fs::read_to_string(&path).expect("svg written");
    std::fs::remove_file(&path).ok();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("PARTITION"));
    assert!(!stdout(&out).contains("time ms"), "--no-diagram prints no text diagram");
}

#[test]
fn sweep_json_has_the_documented_keys() {
    let out =
        concord(&["sim", "sweep", "--protocol", "2pc", "--runs", "300", "--seed", "9", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("one JSON object");
    for key in [
        "runs",
        "violations",
        "blocked_runs",
        "messages_per_txn",
        "forced_writes_per_txn",
        "blocking_time_p99",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert_eq!(v["runs"], 300);
    assert_eq!(v["violations"], 0);
}

#[test]
fn a_sweep_with_violations_exits_non_zero_and_names_the_seeds() {
    let out = concord(&["sim", "sweep", "--protocol", "naive", "--runs", "200", "--seed", "9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("FAILING run"), "{}", stdout(&out));
}

#[test]
fn bad_input_gets_a_one_line_error_and_a_non_zero_exit() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["sim", "run", "--protocol", "4pc", "--scenario", "duplicate-commit"],
            "unknown protocol '4pc'",
        ),
        (&["sim", "run", "--protocol", "2pc", "--scenario", "nope"], "unknown scenario 'nope'"),
        (&["sim", "sweep", "--protocol", "2pc", "--runs", "0"], "--runs must be at least 1"),
        (&["sim", "sweep", "--protocol", "4pc"], "unknown protocol '4pc'"),
    ];
    for (args, message) in cases {
        let out = concord(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: ") && err.contains(message), "{args:?}: {err}");
    }
}

#[test]
fn optimizations_table_lists_every_variant() {
    let out = concord(&["sim", "optimizations", "--runs", "20"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for name in ["none (baseline)", "read-only", "one-phase", "group commit", "all"] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
}

#[test]
fn compare_runs_every_protocol_on_the_same_schedules_with_json_and_a_chart() {
    let path = std::env::temp_dir().join(format!("concord-compare-{}.svg", std::process::id()));
    let out = concord(&[
        "sim",
        "compare",
        "--protocols",
        "2pc,3pc,paxos-commit",
        "--scenario",
        "partition-during-precommit",
        "--runs",
        "20",
        "--json",
        "--svg",
        path.to_str().expect("utf-8 temp path"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("one JSON object");
    let protocols = v["protocols"].as_array().expect("protocols");
    assert_eq!(protocols.len(), 3);
    let by =
        |name: &str| protocols.iter().find(|p| p["protocol"] == name).expect("protocol present");
    // The story: 2PC blocks, 3PC splits, Paxos Commit neither.
    assert_eq!(by("2pc")["workloads"][0]["blocked_runs"], 20);
    assert_eq!(by("3pc")["workloads"][0]["runs_with_violations"], 20);
    assert_eq!(by("paxos-commit")["workloads"][0]["runs_with_violations"], 0);
    assert_eq!(by("paxos-commit")["workloads"][0]["blocked_runs"], 0);
    assert_eq!(by("2pc")["happy_path"]["messages"], 9);
    let svg = std::fs::read_to_string(&path).expect("chart written");
    std::fs::remove_file(&path).ok();
    assert!(svg.contains("runs breaking atomicity") && svg.contains("paxos-commit"));
}

#[test]
fn a_failing_sweep_seed_can_be_replayed() {
    // 3PC splits in about one run in a thousand of the sweep's schedules: find one, replay it.
    let sweep =
        concord(&["sim", "sweep", "--protocol", "3pc", "--runs", "20000", "--seed", "3", "--json"]);
    let v: serde_json::Value =
        serde_json::from_str(stdout(&sweep).trim()).expect("one JSON object");
    let seed =
        v["failing_runs"][0]["seed"].as_u64().expect("20,000 runs of 3PC include a failing one");
    let property = v["failing_runs"][0]["property"].as_str().expect("a property").to_string();
    let seed = format!("{seed:#x}");
    let out = concord(&["sim", "replay", "--protocol", "3pc", "--seed", &seed, "--no-diagram"]);
    assert_eq!(out.status.code(), Some(1), "the failing seed fails again: {}", stdout(&out));
    assert!(stdout(&out).contains(&format!("violation [{property}]")), "{}", stdout(&out));
    let bad = concord(&["sim", "replay", "--protocol", "2pc", "--seed", "0xZZ"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn kv_histories_are_written_in_elle_json_and_checked_by_concord_check() {
    let dir = std::env::temp_dir().join(format!("concord-sim-kv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let serializable = dir.join("serializable.json");
    let out = concord(&["sim", "kv", "--runs", "5", "--history", serializable.to_str().unwrap()]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("0 runs with anomalies"), "{}", stdout(&out));
    let text = std::fs::read_to_string(&serializable).unwrap();
    assert!(text.starts_with("[{") && text.contains(r#""f":"txn""#), "Elle JSON");
    let check = concord(&["check", serializable.to_str().unwrap()]);
    assert!(
        check.status.success() && stdout(&check).contains("no anomalies"),
        "{}",
        stdout(&check)
    );

    // Snapshot isolation allows write skew: the checker reports it and exits 1.
    let snapshot = dir.join("snapshot.json");
    let out = concord(&[
        "sim",
        "kv",
        "--runs",
        "1",
        "--seed",
        "1",
        "--isolation",
        "snapshot",
        "--history",
        snapshot.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let check = concord(&["check", snapshot.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(1));
    assert!(stdout(&check).contains("G2"), "{}", stdout(&check));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Paxos Commit replays whose acceptors outside the fast path never spoke used to panic the
/// diagram (exit 101); they draw now, and `--trace-json` writes the run's every event.
#[test]
fn paxos_replays_draw_and_a_run_exports_its_trace_as_json() {
    for seed in ["2", "15", "38"] {
        let out = concord(&["sim", "replay", "--protocol", "paxos-commit", "--seed", seed]);
        assert_eq!(out.status.code(), Some(0), "seed {seed}: {}", stderr(&out));
        assert!(stdout(&out).contains("violations: none"), "{}", stdout(&out));
    }
    let path = std::env::temp_dir().join(format!("concord-trace-{}.json", std::process::id()));
    let out = concord(&[
        "sim",
        "run",
        "--protocol",
        "2pc",
        "--scenario",
        "coordinator-crash-after-prepare",
        "--no-diagram",
        "--trace-json",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    // The diagram drawn from the file is the run's own.
    let drawn = concord(&["sim", "draw", path.to_str().unwrap()]);
    assert!(drawn.status.success(), "{}", stderr(&drawn));
    assert!(stdout(&drawn).contains("n0 CRASHES"), "{}", stdout(&drawn));
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"{\"format\": \"something else\"}").unwrap();
    let refused = concord(&["sim", "draw", path.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("not a concord-sim-trace document"), "{}", stderr(&refused));
    std::fs::remove_file(&path).unwrap();
    assert_eq!(doc["format"], "concord-sim-trace");
    assert_eq!(doc["version"], 1);
    let events = doc["events"].as_array().unwrap();
    let crash = events.iter().find(|e| e["event"] == "crash").expect("the coordinator crashes");
    assert_eq!(crash["lost"][0], "commit-decided 1.1@n0", "what the crash took with it");
    assert!(events.iter().any(|e| e["event"] == "restart" && e["replayed"][0] == "epoch 1"));
    let bad = concord(&[
        "sim",
        "run",
        "--protocol",
        "2pc",
        "--scenario",
        "duplicate-commit",
        "--trace-json",
        "/nonexistent/dir/t.json",
    ]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}
