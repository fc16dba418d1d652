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
