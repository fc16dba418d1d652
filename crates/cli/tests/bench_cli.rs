//! `concord bench` runs and reports what it says it does. Values are not asserted: timing
//! belongs in BENCHMARKS.md, never in tests.

use std::process::Command;

fn concord(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_concord")).args(args).output().expect("the binary runs")
}

fn scratch(name: &str) -> String {
    std::env::temp_dir()
        .join(format!("concord-bench-test-{name}-{}", std::process::id()))
        .display()
        .to_string()
}

#[test]
fn floor_reports_fsync_and_loopback_quantiles() {
    let out = concord(&["bench", "floor", "--dir", &scratch("floor"), "--samples", "20", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in ["fsync_p50_us", "fsync_p99_us", "rtt_p50_us", "rtt_p99_us"] {
        assert!(v[key].is_u64(), "{key} missing in {v}");
    }
}

#[test]
fn log_bench_compares_group_commit_with_a_sync_per_append_and_without_the_manifest() {
    let out = concord(&[
        "bench",
        "log",
        "--dir",
        &scratch("log"),
        "--clients",
        "1,4",
        "--duration",
        "200ms",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let runs = v["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 6, "two client counts × three modes");
    let modes: Vec<&str> = runs.iter().filter_map(|r| r["mode"].as_str()).collect();
    assert_eq!(&modes[..3], ["sync each", "group, no manifest", "group commit"]);
    assert!(runs.iter().all(|r| r["appends_per_s"].as_f64().is_some_and(|a| a > 0.0)));
    let bad = concord(&["bench", "log", "--clients", "0"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn kv_bench_runs_every_workload_and_reports_the_floor() {
    let out = concord(&[
        "bench",
        "kv",
        "--dir",
        &scratch("kv"),
        "--clients",
        "2",
        "--protocols",
        "2pc,paxos-commit",
        "--duration",
        "500ms",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert!(v["floor"]["fsync_p50_us"].is_u64(), "{v}");
    let runs = v["runs"].as_array().expect("runs");
    let workloads: Vec<&str> = runs.iter().map(|r| r["workload"].as_str().unwrap()).collect();
    assert_eq!(workloads, ["single", "single", "cross", "cross", "mixed", "mixed"]);
    let protocols: Vec<&str> = runs.iter().map(|r| r["protocol"].as_str().unwrap()).collect();
    assert_eq!(protocols[..2], ["2pc", "paxos-commit"], "interleaved per load");
    for run in runs {
        assert!(run["committed"].as_u64().unwrap() > 0, "nothing committed: {run}");
        assert_eq!(run["failed"].as_u64(), Some(0), "{run}");
    }
}

#[test]
fn saga_bench_runs_with_and_without_keep_alive() {
    let out = concord(&[
        "bench",
        "saga",
        "--dir",
        &scratch("saga"),
        "--clients",
        "2",
        "--duration",
        "300ms",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let runs = v["runs"].as_array().expect("runs");
    let modes: Vec<bool> = runs.iter().map(|r| r["keep_alive"].as_bool().unwrap()).collect();
    assert_eq!(modes, [false, true], "the baseline first, interleaved");
    for run in runs {
        assert!(run["completed"].as_u64().unwrap() > 0, "nothing completed: {run}");
        assert_eq!(run["failed"].as_u64(), Some(0), "{run}");
    }
}
