//! The kill -9 harness against the real binary: 50 SIGKILL/restart cycles of random nodes under
//! transfer load, then atomicity, conservation and "nothing left prepared" are checked.

use std::process::Command;

#[test]
fn fifty_sigkill_cycles_lose_nothing_and_split_nothing() {
    let dir = std::env::temp_dir().join(format!("concord-crash-test-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["crash-test", "--cycles", "50", "--clients", "4", "--seed", "7", "--dir"])
        .arg(&dir)
        .output()
        .expect("running concord crash-test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "crash-test failed:\n{stdout}\n{stderr}\n(node logs are in {})",
        dir.display()
    );
    assert!(stdout.contains("50 kill/restart cycles"), "{stdout}");
    assert!(stdout.contains("every check held"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The key-value store's bank workload on real processes: interactive serializable transfers
/// and full-table audits while random nodes (gateway or shards) are SIGKILLed and restarted.
#[test]
fn the_kv_bank_keeps_its_total_through_sigkills() {
    let dir = std::env::temp_dir().join(format!("concord-crash-kv-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["crash-test", "--kv", "--cycles", "30", "--clients", "4", "--seed", "11", "--dir"])
        .arg(&dir)
        .output()
        .expect("running concord crash-test --kv");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "crash-test --kv failed:\n{stdout}\n{stderr}\n(node logs are in {})",
        dir.display()
    );
    assert!(stdout.contains("30 kill/restart cycles"), "{stdout}");
    assert!(stdout.contains("every audit saw the total"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
