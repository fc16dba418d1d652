//! What the tests that run `concord dev` and the client commands share.
#![allow(dead_code)] // each test file uses its own part

pub mod databases;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn concord(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_concord")).args(args).output().expect("running concord")
}

/// Writes `dir/concord.toml` for cluster `cluster`: node `i` of `names` has id `i`, listens on
/// `listen(i)`, and is a coordinator if its name starts with `coordinator` (a shard otherwise);
/// `extra` (sections such as `[kv]`) follows. Returns the file's path.
pub fn write_config(
    dir: &Path,
    cluster: &str,
    names: &[&str],
    listen: impl Fn(usize) -> String,
    extra: &str,
) -> String {
    let mut file = format!("cluster = \"{cluster}\"\n");
    for (i, name) in names.iter().enumerate() {
        let role = if name.starts_with("coordinator") { "coordinator" } else { "shard" };
        file += &format!(
            "[[node]]\nname = \"{name}\"\nid = {i}\nrole = \"{role}\"\nlisten = \"{}\"\n",
            listen(i)
        );
    }
    file += extra;
    let path = dir.join("concord.toml");
    std::fs::write(&path, file).expect("writing concord.toml");
    path.to_str().expect("a UTF-8 path").to_string()
}

/// The replica `concord cluster status --config CONFIG` calls leader, if any (its table ends at
/// the first empty line; the leader's match indexes follow).
pub fn leader(config: &str) -> Option<String> {
    let status = text(&concord(&["cluster", "status", "--config", config]));
    status
        .lines()
        .take_while(|l| !l.is_empty())
        .find(|l| l.split_whitespace().nth(2) == Some("leader"))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
}

pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A free port for `concord dev`: it and the next three (the delta cluster), 10 to 13 after
/// it (the key-value store), and 200 and 210 on (their metrics endpoints). Below the kernel's ephemeral range (32768 and up here), so a
/// killed cluster's ports cannot be taken by some connection's source port before it restarts.
/// Tests run in parallel in one process: each call starts elsewhere (by a counter and the
/// clock's nanoseconds), or two tests picking in the same second would share a base, and one
/// dev cluster would fail to bind while its test talked to the other's.
pub fn free_base_port() -> u16 {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = u64::from(std::process::id())
        ^ now.as_secs()
        ^ u64::from(now.subsec_nanos())
        ^ call.wrapping_mul(0x9e37_79b9);
    for attempt in 0..1_000u64 {
        let base = 10_000
            + u16::try_from((seed.wrapping_mul(7_919) + attempt * 104_729) % 22_000).unwrap();
        let free = |i: u16| TcpListener::bind(("127.0.0.1", base + i)).is_ok();
        // Room for Paxos Commit's acceptors too (three after the shards in each cluster), and
        // for every node's metrics endpoint (200 and 210 after).
        if (0..7).chain(10..17).chain(200..207).chain(210..217).all(free) {
            return base;
        }
    }
    panic!("no free ports for a dev cluster");
}

pub struct Dev {
    pub child: Child,
    pub coordinator: String,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_dev(dir: &Path, port: u16) -> Dev {
    start_dev_with(dir, port, &[])
}

/// `concord dev` with more flags (`--protocol paxos-commit`, say).
pub fn start_dev_with(dir: &Path, port: u16, extra: &[&str]) -> Dev {
    let child = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["dev", "--port", &port.to_string(), "--data-dir"])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let dev = Dev { child, coordinator: format!("127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !concord(&["txn", "ls", "--coordinator", &dev.coordinator]).status.success() {
        assert!(Instant::now() < deadline, "concord dev did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    dev
}

pub fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("concord-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A child process killed (and reaped) when dropped, so a failing test leaves none running.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
