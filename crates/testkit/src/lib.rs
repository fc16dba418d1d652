//! What Concord's tests share.
//!
//! [`servers_ready`] runs the project's setup scripts (`scripts/setup-databases.sh`,
//! `scripts/setup-nats.sh`, `scripts/setup-redis.sh`), which start the local PostgreSQL,
//! MariaDB or NATS when they are stopped (and make sure `redis-server` is installed). When a server cannot be made ready, the test **fails**, saying why and how to skip:
//! a skip would pass silently in cargo's summary (its output is captured). Only when asked
//! (`CONCORD_SKIP_SERVICES=1`) does such a test return early, with a line on stderr — and never
//! under `CI=true`, so CI cannot pass by skipping.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// The servers a test can ask for, by the script that readies them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Server {
    /// PostgreSQL (with `max_prepared_transactions`) and MariaDB.
    Databases,
    /// NATS with JetStream.
    Nats,
    /// The `redis-server` binary (tests start their own servers).
    Redis,
}

impl Server {
    fn script(self) -> &'static str {
        match self {
            Server::Databases => "setup-databases.sh",
            Server::Nats => "setup-nats.sh",
            Server::Redis => "setup-redis.sh",
        }
    }
}

/// Each script runs once per test process.
static READY: Mutex<BTreeMap<Server, Result<(), String>>> = Mutex::new(BTreeMap::new());

fn ready(server: Server) -> Result<(), String> {
    let mut ready = READY.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    ready
        .entry(server)
        .or_insert_with(|| {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts").join(server.script());
            match Command::new("bash").arg(&script).output() {
                Ok(out) if out.status.success() => Ok(()),
                Ok(out) => Err(format!(
                    "{} failed:\n{}{}",
                    script.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )),
                Err(e) => Err(format!("cannot run {}: {e}", script.display())),
            }
        })
        .clone()
}

/// Whether every server in `servers` is up (started by its script if it was not). Without one
/// this panics — unless skipping was asked for (`CONCORD_SKIP_SERVICES=1`, and not `CI=true`):
/// then it prints why `what` is skipped and returns false.
pub fn servers_ready(servers: &[Server], what: &str) -> bool {
    for &server in servers {
        if let Err(problem) = ready(server) {
            let ci = std::env::var("CI").as_deref() == Ok("true");
            let skip = std::env::var("CONCORD_SKIP_SERVICES").as_deref() == Ok("1");
            assert!(
                skip && !ci,
                "{server:?} is not ready for {what}: {problem}\n\
                 To run the other tests without these servers, set CONCORD_SKIP_SERVICES=1 \
                 (ignored under CI=true); the tests that need them then skip, each saying so."
            );
            eprintln!(
                "\n######## SKIPPING {what} (CONCORD_SKIP_SERVICES=1): {problem}\n########\n"
            );
            return false;
        }
    }
    true
}
