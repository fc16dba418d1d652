//! The storage-fault suite, on real processes: a `concord dev` cluster writes acknowledged
//! transfers and key-value writes, stops, and then each kind of file is damaged the way disks
//! and operators damage them — bit flips, truncation, deleted segments, a stale copy put back,
//! a deleted or emptied version file. Each case has one expected verdict: refused at start
//! naming the file (and `concord data check` says the same, exit 1), or started with every
//! acknowledged write intact. Never started with less, never a panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{concord, free_base_port, start_dev, start_dev_with, temp, text, Dev};

/// Small segments, so the delta cluster's logs have sealed segments after a short workload,
/// and frequent checkpoints in the key-value store's, so its version files are sealed.
const SEGMENTS: (&str, &str) = ("segment_bytes = 67108864", "segment_bytes = 4096");
const CHECKPOINTS: [(&str, &str); 2] = [
    ("checkpoint_every = 100000", "checkpoint_every = 1000"),
    ("checkpoint_every = 100000", "checkpoint_every = 4"),
];

/// A stopped cluster's data and what it acknowledged.
struct Seeded {
    dir: PathBuf,
    port: u16,
    /// `concord shard read` of shards 1 and 2, and `concord kv scan`, as acknowledged.
    state: String,
    /// shard-2's log directory copied halfway through the workload.
    stale_log: PathBuf,
}

fn stop(mut dev: Dev, kill: bool) {
    if kill {
        // As a crash would, but after the cluster has been quiet a moment.
        std::thread::sleep(Duration::from_millis(300));
        let _ = dev.child.kill();
    } else {
        let pid = dev.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while dev.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "concord dev did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the cluster on `port` holds, once every node answers.
fn state(port: u16) -> String {
    let coordinator = format!("127.0.0.1:{port}");
    let gateway = format!("127.0.0.1:{}", port + 10);
    let deadline = Instant::now() + Duration::from_secs(20);
    let ask = |args: &[&str]| loop {
        let output = concord(args);
        if output.status.success() {
            return String::from_utf8_lossy(&output.stdout).into_owned();
        }
        assert!(Instant::now() < deadline, "{args:?}: {}", text(&output));
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    for shard in ["shard-1", "shard-2"] {
        out += &ask(&["shard", "read", shard, "--coordinator", &coordinator]);
    }
    out + &ask(&["kv", "--gateway", &gateway, "scan"])
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn seed(name: &str, kill: bool) -> Seeded {
    seed_with(name, kill, &[])
}

/// `extra`: flags for the first `concord dev` (the protocol); later starts keep the directory's.
fn seed_with(name: &str, kill: bool, extra: &[&str]) -> Seeded {
    let dir = temp(name);
    let port = free_base_port();
    stop(start_dev_with(&dir, port, extra), false);
    for (config, checkpoints) in
        [dir.join("concord.toml"), dir.join("kv/concord.toml")].into_iter().zip(CHECKPOINTS)
    {
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text.replace(SEGMENTS.0, SEGMENTS.1).replace(checkpoints.0, checkpoints.1);
        std::fs::write(&config, text).unwrap();
    }
    let dev = start_dev(&dir, port);
    let stale_log = dir.with_extension("stale-log");
    for i in 1..=80 {
        let writes = [format!("shard-1:{i}=+100"), format!("shard-2:{i}=+{i}")];
        let coordinator = format!("127.0.0.1:{port}");
        let submit =
            concord(&["txn", "submit", "--coordinator", &coordinator, &writes[0], &writes[1]]);
        assert!(text(&submit).contains("committed"), "{}", text(&submit));
        let gateway = format!("127.0.0.1:{}", port + 10);
        let put =
            concord(&["kv", "--gateway", &gateway, "put", &format!("k{i}"), &format!("v{i}")]);
        assert!(put.status.success(), "{}", text(&put));
        if i == 40 {
            let _ = std::fs::remove_dir_all(&stale_log);
            copy_dir(&dir.join("shard-2/log"), &stale_log);
        }
    }
    let state = state(port);
    stop(dev, kill);
    Seeded { dir, port, state, stale_log }
}

/// A copy of the seeded data to damage.
fn case(seeded: &Seeded, name: &str) -> PathBuf {
    let dir = seeded.dir.with_extension(name);
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&seeded.dir, &dir);
    dir
}

fn segments(log: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

fn flip(path: &Path, at_from_end: usize) {
    let len = usize::try_from(std::fs::metadata(path).unwrap().len()).unwrap();
    flip_at(path, len - at_from_end);
}

fn flip_at(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

/// The active segment's length the MANIFEST says is durable (its format: docs/log-format.md).
/// Past it lie only records nobody waited for (lazily written, never synced before a kill).
fn durable_len(log: &Path) -> usize {
    let manifest = std::fs::read(log.join("MANIFEST")).unwrap();
    let count = u32::from_le_bytes(manifest[17..21].try_into().unwrap()) as usize;
    let last = 21 + (count - 1) * 18;
    usize::try_from(u64::from_le_bytes(manifest[last + 10..last + 18].try_into().unwrap())).unwrap()
}

/// Runs `concord dev` on `dir` with `extra` flags until it exits; `None` if it came up.
fn start_outcome(dir: &Path, port: u16, extra: &[&str]) -> Result<String, Dev> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["dev", "--port", &port.to_string(), "--data-dir"])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let coordinator = format!("127.0.0.1:{port}");
    let gateway = format!("127.0.0.1:{}", port + 10);
    // Started means both clusters serve, shards included: a key-value shard that finds its
    // version file damaged refuses (and the process exits) after the delta coordinator may
    // already answer.
    let serving = || {
        concord(&["txn", "ls", "--coordinator", &coordinator]).status.success()
            && concord(&["kv", "--gateway", &gateway, "get", "started-probe"]).status.success()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            assert!(!status.success(), "a refused start exits non-zero: {stderr}");
            assert!(!stderr.contains("panicked"), "refused with a panic: {stderr}");
            return Ok(stderr);
        }
        if serving() {
            return Err(Dev { child, coordinator });
        }
        assert!(Instant::now() < deadline, "concord dev neither started nor stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The damaged directory is refused at start and by `concord data check`, both naming `file`.
fn refused(seeded: &Seeded, dir: &Path, file: &str, why: &str) {
    let check = concord(&["data", "check", dir.to_str().unwrap()]);
    let said = text(&check);
    assert_eq!(check.status.code(), Some(1), "check must fail on `{why}`: {said}");
    assert!(said.contains(file), "check names {file} for `{why}`: {said}");
    match start_outcome(dir, seeded.port, &[]) {
        Ok(stderr) => {
            assert!(stderr.contains(file), "the refusal names {file} for `{why}`: {stderr}");
        }
        Err(dev) => {
            let found = state(seeded.port);
            drop(dev);
            panic!("started on `{why}`; found:\n{found}\nacknowledged:\n{}", seeded.state);
        }
    }
}

/// A transaction across shard-1 and shard-2 commits, within 20 s (a shard that accepted a loss
/// votes only once it knows its coordinator's horizon).
fn a_new_transaction_commits(dev: &Dev) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let coordinator = dev.coordinator.as_str();
        let writes = ["shard-1:900=+1", "shard-2:900=+1"];
        let submit =
            concord(&["txn", "submit", "--coordinator", coordinator, writes[0], writes[1]]);
        if text(&submit).contains("committed") {
            return;
        }
        assert!(Instant::now() < deadline, "no new transaction commits: {}", text(&submit));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The directory is refused naming `file`, or starts with everything acknowledged.
fn refused_or_intact(seeded: &Seeded, dir: &Path, file: &str, why: &str) -> bool {
    match start_outcome(dir, seeded.port, &[]) {
        Ok(stderr) => {
            assert!(stderr.contains(file), "the refusal names {file} for `{why}`: {stderr}");
            true
        }
        Err(dev) => {
            let found = state(seeded.port);
            drop(dev);
            assert_eq!(found, seeded.state, "started on `{why}` with less than acknowledged");
            false
        }
    }
}

#[test]
fn damaged_logs_are_refused_at_start_and_by_data_check_naming_the_file() {
    let seeded = seed("faults-log", false);
    let check = concord(&["data", "check", seeded.dir.to_str().unwrap()]);
    assert!(check.status.success(), "undamaged data passes: {}", text(&check));
    let shard_log = |dir: &Path| dir.join("shard-1/log");
    assert!(segments(&shard_log(&seeded.dir)).len() > 1, "sealed segments exist to damage");

    let dir = case(&seeded, "flip-last");
    let active = segments(&shard_log(&dir)).pop().unwrap();
    flip(&active, 3);
    refused(
        &seeded,
        &dir,
        &active.file_name().unwrap().to_string_lossy(),
        "a flipped byte in the last record",
    );

    let dir = case(&seeded, "cut-mid-record");
    let active = segments(&shard_log(&dir)).pop().unwrap();
    let len = std::fs::metadata(&active).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&active).unwrap().set_len(len - 5).unwrap();
    refused(
        &seeded,
        &dir,
        &active.file_name().unwrap().to_string_lossy(),
        "a truncated active segment",
    );

    let dir = case(&seeded, "delete-newest");
    let newest = segments(&shard_log(&dir)).pop().unwrap();
    std::fs::remove_file(&newest).unwrap();
    refused(
        &seeded,
        &dir,
        &newest.file_name().unwrap().to_string_lossy(),
        "the newest segment deleted",
    );

    let dir = case(&seeded, "delete-all");
    for segment in segments(&shard_log(&dir)) {
        std::fs::remove_file(segment).unwrap();
    }
    refused(&seeded, &dir, "shard-1/log", "every segment deleted");

    let dir = case(&seeded, "delete-log");
    std::fs::remove_dir_all(shard_log(&dir)).unwrap();
    refused(&seeded, &dir, "shard-1/log", "the whole log directory deleted");

    let dir = case(&seeded, "manifest-flip");
    flip(&shard_log(&dir).join("MANIFEST"), 6);
    refused(&seeded, &dir, "MANIFEST", "a flipped byte in the manifest");

    let dir = case(&seeded, "stale-copy");
    std::fs::remove_dir_all(dir.join("shard-2/log")).unwrap();
    copy_dir(&seeded.stale_log, &dir.join("shard-2/log"));
    std::fs::copy(seeded.dir.join("shard-2/log/MANIFEST"), dir.join("shard-2/log/MANIFEST"))
        .unwrap();
    refused(&seeded, &dir, "shard-2/log", "a stale copy of the segments put back");

    let dir = case(&seeded, "coordinator-flip");
    let active = segments(&dir.join("coordinator/log")).pop().unwrap();
    flip(&active, 2);
    refused(&seeded, &dir, "coordinator/log", "a flipped byte in the coordinator's log");

    // Every record sound, the log as a whole not this node's: refused, not a crashed process.
    let dir = case(&seeded, "foreign-log");
    std::fs::remove_dir_all(dir.join("shard-1/log")).unwrap();
    copy_dir(&seeded.dir.join("coordinator/log"), &dir.join("shard-1/log"));
    let mut dev = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["dev", "--port", &seeded.port.to_string(), "--data-dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while dev.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "started on another node's log");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(dev.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("shard-1/log: its records are inconsistent"), "{stderr}");
    let check = concord(&["data", "check", dir.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(text(&check).contains("inconsistent"), "{}", text(&check));
    assert!(!text(&check).contains("panicked"), "{}", text(&check));

    // And the undamaged copy starts with everything.
    let dir = case(&seeded, "untouched");
    assert!(!refused_or_intact(&seeded, &dir, "-", "nothing damaged"), "undamaged data starts");
}

#[test]
fn damaged_version_files_are_refused_or_start_with_every_acknowledged_write() {
    let seeded = seed("faults-redb", false);
    let redb = |dir: &Path| dir.join("kv/shard-2/versions.redb");
    let size = std::fs::metadata(redb(&seeded.dir)).unwrap().len();
    assert!(size > 0);

    let dir = case(&seeded, "redb-deleted");
    std::fs::remove_file(redb(&dir)).unwrap();
    refused(&seeded, &dir, "versions.redb", "the version file deleted");

    let dir = case(&seeded, "redb-emptied");
    std::fs::write(redb(&dir), b"").unwrap();
    refused(&seeded, &dir, "versions.redb", "the version file emptied");

    // Byte flips across the file: each is detected, or hit bytes nothing reads.
    let mut detected = 0;
    for i in 1..=8u64 {
        let dir = case(&seeded, &format!("redb-flip-{i}"));
        let at = usize::try_from(size * i / 9).unwrap();
        flip(&redb(&dir), usize::try_from(size).unwrap() - at);
        if refused_or_intact(&seeded, &dir, "versions.redb", &format!("a flipped byte at {at}")) {
            detected += 1;
        }
    }
    eprintln!("{detected} of 8 flips in versions.redb refused; the rest hit bytes nothing reads");
}

#[test]
fn accepting_a_loss_starts_a_shard_from_what_is_readable_but_never_a_coordinator() {
    let seeded = seed("faults-accept", true);
    // Killed, not stopped: the manifest caught up while the cluster was quiet.
    let dir = case(&seeded, "killed-flip");
    let active = segments(&dir.join("shard-1/log")).pop().unwrap();
    flip_at(&active, durable_len(&dir.join("shard-1/log")) - 3);
    refused(&seeded, &dir, "shard-1/log", "a flipped byte after a kill");

    let coordinator_damaged = case(&seeded, "accept-coordinator");
    let log = coordinator_damaged.join("coordinator/log");
    let active = segments(&log).pop().unwrap();
    flip_at(&active, durable_len(&log) - 2);
    match start_outcome(&coordinator_damaged, seeded.port, &["--accept-data-loss"]) {
        Ok(stderr) => assert!(stderr.contains("cannot help a coordinator"), "{stderr}"),
        Err(_) => panic!("a coordinator started on a damaged log"),
    }

    let dev = match start_outcome(&dir, seeded.port, &["--accept-data-loss"]) {
        Ok(stderr) => panic!("--accept-data-loss did not start the shard: {stderr}"),
        Err(dev) => dev,
    };
    let note = std::fs::read_to_string(dir.join("shard-1").join("DATA-LOSS-ACCEPTED")).unwrap();
    assert!(note.contains("lost: "), "{note}");
    assert!(
        std::fs::read_dir(dir.join("shard-1/log")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("damaged-")),
        "the originals are set aside"
    );
    // New transactions commit on the shard once it has learned the coordinator's horizon.
    a_new_transaction_commits(&dev);
    let health = concord(&["data", "check", dir.to_str().unwrap()]);
    assert!(
        text(&health).contains("in use"),
        "a running node's directory is not checked: {}",
        text(&health)
    );
    drop(dev);
    let check = concord(&["data", "check", dir.join("shard-1").to_str().unwrap()]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(text(&check).contains("accepted a loss of data here before"), "{}", text(&check));

    // The record of the loss deleted by hand: the log's manifest remembers (check says so),
    // and the next start writes it again.
    let marker = dir.join("shard-1").join("DATA-LOSS-ACCEPTED");
    std::fs::remove_file(&marker).unwrap();
    let check = concord(&["data", "check", dir.join("shard-1").to_str().unwrap()]);
    assert!(text(&check).contains("accepted a loss of data here before"), "{}", text(&check));
    let dev = match start_outcome(&dir, seeded.port, &[]) {
        Ok(stderr) => panic!("did not start after the accepted loss: {stderr}"),
        Err(dev) => dev,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "DATA-LOSS-ACCEPTED not written again");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(std::fs::read_to_string(&marker).unwrap().contains("recreated"));
    drop(dev);
}

/// A small tmpfs mounted at a fresh directory, unmounted when dropped. `None` (said loudly)
/// where this process may not mount — except under `CI=true`, where that fails the test.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(name: &str, size: &str) -> Option<SmallDisk> {
        let dir = temp(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: cannot mount a tmpfs for the full-disk and read-only cases (run as root)"
            );
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here (not root?): full-disk and read-only cases"
            );
            return None;
        }
        Some(SmallDisk(dir))
    }

    fn remount(&self, options: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {options}");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A disk that fills up under writes: whatever happens then (refused writes, the node stopping
/// on its failed sync), every write acknowledged before is there once the disk has room again;
/// and a read-only data directory is refused at start with the reason, then starts once
/// writable.
#[test]
fn a_full_disk_loses_no_acknowledged_write_and_a_read_only_directory_is_refused() {
    let Some(disk) = SmallDisk::mount("faults-full", "6m") else { return };
    let dir = disk.0.join("data");
    let port = free_base_port();
    let dev = start_dev(&dir, port);
    let gateway = format!("127.0.0.1:{}", port + 10);
    let value = "x".repeat(32 * 1024);
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for i in 0..400 {
        let key = format!("k{i:03}");
        let put = concord(&["kv", "--gateway", &gateway, "put", &key, &value]);
        if put.status.success() {
            acknowledged.push(key);
        } else {
            refused += 1;
            if refused >= 5 {
                break;
            }
        }
    }
    assert!(refused >= 5, "the disk never filled ({} puts acknowledged)", acknowledged.len());
    assert!(!acknowledged.is_empty());
    stop(dev, true);

    // Read-only: refused with the reason, changing nothing.
    disk.remount("ro");
    match start_outcome(&dir, port, &[]) {
        Ok(stderr) => assert!(stderr.contains("Read-only file system"), "{stderr}"),
        Err(_) => panic!("started on a read-only data directory"),
    }
    disk.remount("rw,size=64m");
    let dev = match start_outcome(&dir, port, &[]) {
        Ok(stderr) => panic!("refused after the disk had room again: {stderr}"),
        Err(dev) => dev,
    };
    // Each key on its own: a scan's reply is bounded (4 MiB), these values are not small.
    let deadline = Instant::now() + Duration::from_secs(20);
    for key in &acknowledged {
        let get = loop {
            let get = concord(&["kv", "--gateway", &gateway, "get", key]);
            if get.status.success() || Instant::now() > deadline {
                break get;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // (The value is 32 KiB: said by its length, not printed.)
        let found = String::from_utf8_lossy(&get.stdout);
        assert!(
            found.trim() == format!("{key} = {value}"),
            "acknowledged {key} lost after the disk filled ({} acknowledged, {refused} refused): \
             {} bytes found, stderr {}",
            acknowledged.len(),
            found.len(),
            String::from_utf8_lossy(&get.stderr)
        );
    }
    drop(dev);
}

/// The same path over Paxos Commit: a shard that lost part of its log casts no second ballot-0
/// vote for what it may have voted on, and new transactions commit once it knows the
/// coordinator's horizon.
#[test]
fn accepting_a_loss_starts_a_paxos_commit_shard_and_new_transactions_commit() {
    let seeded = seed_with("faults-accept-paxos", true, &["--protocol", "paxos-commit"]);
    let config = std::fs::read_to_string(seeded.dir.join("concord.toml")).unwrap();
    assert!(config.contains("protocol = \"paxos-commit\""), "{config}");
    let dir = case(&seeded, "paxos-flip");
    let log = dir.join("shard-1/log");
    let active = segments(&log).pop().unwrap();
    flip_at(&active, durable_len(&log) - 3);
    refused(&seeded, &dir, "shard-1/log", "a flipped byte in a Paxos Commit shard's log");
    let dev = match start_outcome(&dir, seeded.port, &["--accept-data-loss"]) {
        Ok(stderr) => panic!("--accept-data-loss did not start the shard: {stderr}"),
        Err(dev) => dev,
    };
    a_new_transaction_commits(&dev);
    drop(dev);
}
