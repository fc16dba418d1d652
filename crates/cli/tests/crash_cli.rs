//! The kill -9 harness against the real binary: SIGKILL/restart cycles of random nodes under
//! load, then the workload's checks (for the delta transfers: atomicity, conservation and
//! nothing left prepared; for the key-value bank: every audit's total and durability).

use std::process::Command;

/// Runs `concord crash-test ARGS` in a fresh directory; returns its standard output once it
/// succeeded and printed `cycles` kill/restart cycles.
fn crash_test(name: &str, args: &[&str], cycles: &str) -> String {
    let dir = std::env::temp_dir().join(format!("concord-{name}-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_concord"))
        .arg("crash-test")
        .args(args)
        .args(["--cycles", cycles, "--dir"])
        .arg(&dir)
        .output()
        .expect("running concord crash-test");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "crash-test {args:?} failed:\n{stdout}\n{stderr}\n(node logs are in {})",
        dir.display()
    );
    assert!(stdout.contains(&format!("{cycles} kill/restart cycles")), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
    stdout
}

#[test]
fn fifty_sigkill_cycles_lose_nothing_and_split_nothing() {
    let stdout = crash_test("crash-test", &["--clients", "4", "--seed", "7"], "50");
    assert!(stdout.contains("every check held"), "{stdout}");
}

/// The key-value store's bank workload on real processes: interactive serializable transfers
/// and full-table audits while random nodes (gateway or shards) are SIGKILLed and restarted.
#[test]
fn the_kv_bank_keeps_its_total_through_sigkills() {
    let stdout = crash_test("crash-kv", &["--kv", "--clients", "4", "--seed", "11"], "30");
    assert!(stdout.contains("every audit saw the total"), "{stdout}");
    assert!(stdout.contains("every acknowledged commit survived"), "{stdout}");
    assert!(stdout.contains("none contradicting what was applied"), "status checked: {stdout}");
}

/// Both workloads over Paxos Commit: the acceptors (three more processes) are killed like
/// every other node; lost outcomes are resolved by asking the shards, as under 2PC.
#[test]
fn paxos_commit_keeps_both_workloads_whole_through_sigkills() {
    let args = ["--protocol", "paxos-commit", "--clients", "4", "--seed", "5"];
    let stdout = crash_test("crash-paxos", &args, "30");
    assert!(stdout.contains("acceptor-"), "acceptors were among the victims: {stdout}");
    assert!(stdout.contains("every check held"), "{stdout}");
    let args = ["--kv", "--protocol", "paxos-commit", "--clients", "4", "--seed", "13"];
    let stdout = crash_test("crash-paxos-kv", &args, "30");
    assert!(stdout.contains("every audit saw the total"), "{stdout}");
    assert!(stdout.contains("every acknowledged commit survived"), "{stdout}");
    assert!(stdout.contains("none contradicting what was applied"), "status checked: {stdout}");
}

/// Both workloads over 2PC with early acknowledgement: a client hears COMMIT once every
/// prepare is durable, before the coordinator's (lazy) decision record — so a coordinator
/// SIGKILLed just after answering leaves only the shards' prepare records to finish from.
#[test]
fn early_acknowledgement_keeps_both_workloads_whole_through_sigkills() {
    let args = ["--protocol", "2pc-early-ack", "--clients", "4", "--seed", "17"];
    let stdout = crash_test("crash-early-ack", &args, "30");
    assert!(stdout.contains("every check held"), "{stdout}");
    let args = ["--kv", "--protocol", "2pc-early-ack", "--clients", "4", "--seed", "19"];
    let stdout = crash_test("crash-early-ack-kv", &args, "30");
    assert!(stdout.contains("every audit saw the total"), "{stdout}");
    assert!(stdout.contains("every acknowledged commit survived"), "{stdout}");
    assert!(stdout.contains("none contradicting what was applied"), "status checked: {stdout}");
}

/// A replicated coordinator (three replicas) under the same kills: half of them aimed at the
/// replica that leads, replicas down long enough for an election or back within their term,
/// at random, and every coordinator process also aborts on its own right before sending a
/// COMMIT decision a majority already holds (`--failpoints`: the window between a decision's
/// commit and its delivery). Every check of the single-coordinator run holds; the status-honesty pass
/// restarts all three replicas, so every answer comes from a new leader's replicated log.
/// (With the new leader's core started from the committed prefix only, this found transfers
/// the shards had aborted whose COMMIT record committed later: status said COMMITTING.)
#[test]
fn a_replicated_coordinator_loses_nothing_through_sigkills_of_its_leaders() {
    let args = ["--coordinators", "3", "--failpoints", "--clients", "4", "--seed", "9"];
    let stdout = crash_test("crash-replicated", &args, "50");
    assert!(stdout.contains("coordinator-2 ×"), "replicas were among the victims: {stdout}");
    // And coordinators aborted between a durable COMMIT decision and its delivery.
    assert!(stdout.contains("@failpoint ×"), "the failpoint fired: {stdout}");
    assert!(stdout.contains("every check held"), "{stdout}");
}

/// Paxos Commit on a replicated coordinator, both workloads: the coordinator's epochs come
/// from the replicated log and every ballot carries its epoch, so a deposed leader that has
/// not noticed yet proposes only ballots below the new leader's. Acceptors, shards and
/// replicas (leaders too, and at the failpoint) are killed.
#[test]
fn paxos_commit_on_a_replicated_coordinator_keeps_both_workloads_whole() {
    let args = ["--protocol", "paxos-commit", "--coordinators", "3", "--failpoints"];
    let stdout =
        crash_test("crash-replicated-paxos", &[&args[..], &["--seed", "5"]].concat(), "50");
    assert!(stdout.contains("acceptor-"), "acceptors were among the victims: {stdout}");
    assert!(stdout.contains("@failpoint ×"), "the failpoint fired: {stdout}");
    assert!(stdout.contains("every check held"), "{stdout}");
    let kv = [&["--kv"][..], &args[..], &["--seed", "13"]].concat();
    let stdout = crash_test("crash-replicated-paxos-kv", &kv, "50");
    assert!(stdout.contains("every audit saw the total"), "{stdout}");
    assert!(stdout.contains("every acknowledged commit survived"), "{stdout}");
    assert!(stdout.contains("none contradicting what was applied"), "status checked: {stdout}");
}

/// The key-value bank on a replicated coordinator: its gateway is whichever replica leads (the
/// clients follow the refusals that name it), timestamps stay below the bound the log holds,
/// and replicas, leaders included, are SIGKILLed at random with the shards.
#[test]
fn the_kv_bank_on_a_replicated_coordinator_keeps_its_total_through_sigkills() {
    let args = ["--kv", "--coordinators", "3", "--failpoints", "--clients", "4", "--seed", "23"];
    let stdout = crash_test("crash-replicated-kv", &args, "50");
    assert!(stdout.contains("coordinator-2 ×"), "replicas were among the victims: {stdout}");
    assert!(stdout.contains("@failpoint ×"), "the failpoint fired: {stdout}");
    assert!(stdout.contains("every audit saw the total"), "{stdout}");
    assert!(stdout.contains("every acknowledged commit survived"), "{stdout}");
    assert!(stdout.contains("none contradicting what was applied"), "status checked: {stdout}");
}
