//! The key-value store on a replicated coordinator stays strictly serializable across a
//! failover when the replicas' clocks disagree. Three coordinator replicas and two key-value
//! shards run as real processes (`concord serve`); one replica's wall clock runs 5 s ahead
//! (libfaketime; the maximum offset is set to 10 s so the shards accept its timestamps). That
//! replica is made leader, a client writes a key through it and is told it committed — at a
//! timestamp 5 s ahead of the other machines' clocks — and the replica is SIGKILLed. A
//! transaction that then begins at the new leader must see the write: its snapshot must be
//! above the commit timestamp although the new leader's own clock is 5 s behind it. The
//! timestamp bound the old leader committed in the replicated log is what lifts it there
//! (`crates/node/src/timestamp_lease.rs`); without it this read returns nothing.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{concord, free_base_port, leader, temp, text, write_config, Killed};
use concord_testkit::{servers_ready, Server, FAKETIME_LIB};

/// The clock skew of the replica that leads first, and the maximum offset that lets the
/// shards take its timestamps.
/// The read after the failover comes within about two seconds: well inside the skew, so a
/// snapshot taken by the new leader's own clock would be below the write.
const SKEW: &str = "+5s";
const MAX_OFFSET_MS: u64 = 10_000;

#[test]
fn a_write_acknowledged_by_a_leader_whose_clock_runs_ahead_is_seen_after_it_dies() {
    if !servers_ready(&[Server::Faketime], "the clock-skew test") {
        return;
    }
    let dir = temp("clock-skew");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_base_port();
    let names = ["coordinator", "coordinator-b", "coordinator-c", "shard-1", "shard-2"];
    let listen = |i: usize| format!("127.0.0.1:{}", port + u16::try_from(i).unwrap());
    let kv = format!("[kv]\nsplits = [\"m\"]\nmax_offset_ms = {MAX_OFFSET_MS}\n");
    let config = write_config(&dir, "skewed", &names, listen, &kv);
    let address = |name: &str| {
        let i = names.iter().position(|n| *n == name).unwrap();
        format!("127.0.0.1:{}", port + u16::try_from(i).unwrap())
    };
    let mut nodes = Vec::new();
    for name in names {
        let mut command = Command::new(env!("CARGO_BIN_EXE_concord"));
        if name == "coordinator" {
            // Its wall clock only: timers run on the monotonic clock, left alone.
            command
                .env("LD_PRELOAD", FAKETIME_LIB)
                .env("FAKETIME", SKEW)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = command
            .args(["serve", "--config", &config, "--node", name, "--data-dir"])
            .arg(dir.join(name))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
            .spawn()
            .unwrap();
        nodes.push((name, Killed(child)));
    }

    // The skewed replica leads.
    let deadline = Instant::now() + Duration::from_secs(60);
    while leader(&config).as_deref() != Some("coordinator") {
        if leader(&config).is_some() {
            let _ = concord(&["cluster", "transfer-leader", "coordinator", "--config", &config]);
        }
        assert!(Instant::now() < deadline, "the skewed replica never led");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A write through it, acknowledged; then it dies.
    // (A shard just started refuses writes below its clock plus the maximum offset for a
    // while: it does not remember which reads it served before. Retried until it takes them.)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let put =
            concord(&["kv", "put", "skewed-key", "written", "--gateway", &address("coordinator")]);
        if put.status.success() && text(&put).contains("committed") {
            break;
        }
        assert!(Instant::now() < deadline, "the write never committed: {}", text(&put));
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, skewed) = nodes.remove(0);
    drop(skewed); // SIGKILL, reaped
    let killed = Instant::now();

    // The first transaction that gets through at the new leader sees it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let get = concord(&["kv", "get", "skewed-key", "--gateway", &address("coordinator-b")]);
        if get.status.success() {
            break String::from_utf8_lossy(&get.stdout).trim().to_string();
        }
        assert!(Instant::now() < deadline, "no read after the failover: {}", text(&get));
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("read {seen:?} {:?} after the skewed leader died", killed.elapsed());
    assert_eq!(
        seen, "skewed-key = written",
        "a transaction begun after the write was acknowledged did not see it: the new leader's \
         snapshot was below the old leader's commit timestamp"
    );
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
