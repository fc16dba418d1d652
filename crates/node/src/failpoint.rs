//! A failpoint for crash tests: `CONCORD_TEST_FAILPOINT=abort-before-commit-send:N` makes this
//! process abort (SIGABRT: like SIGKILL, nothing flushed or cleaned up) right before it sends
//! its N-th COMMIT decision to a shard — after the decision is durable (on a replicated
//! coordinator: committed by a majority of replicas), before any shard has heard it. The
//! window the simulator's `coordinator-leader-crash-after-decision` scenario covers, hit on
//! real processes by `concord crash-test --failpoints`. Unset (always, outside tests) it
//! costs one relaxed load per decision sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

/// The variable that arms it.
pub const VARIABLE: &str = "CONCORD_TEST_FAILPOINT";
const ABORT_BEFORE_COMMIT_SEND: &str = "abort-before-commit-send:";

/// COMMIT decisions still to send before the abort; 0: disarmed.
static REMAINING: LazyLock<AtomicU64> = LazyLock::new(|| {
    let armed = std::env::var(VARIABLE)
        .ok()
        .and_then(|v| v.strip_prefix(ABORT_BEFORE_COMMIT_SEND).and_then(|n| n.parse::<u64>().ok()));
    AtomicU64::new(armed.unwrap_or(0))
});

/// Called before a COMMIT decision is sent; aborts the process on the N-th.
pub(crate) fn before_commit_send() {
    let remaining = REMAINING.load(Ordering::Relaxed);
    if remaining == 0 {
        return;
    }
    if remaining == 1 {
        eprintln!("{VARIABLE}: aborting before sending a durable COMMIT decision");
        std::process::abort();
    }
    REMAINING.store(remaining - 1, Ordering::Relaxed);
}
