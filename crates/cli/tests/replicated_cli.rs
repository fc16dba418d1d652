//! A replicated coordinator on real processes (`concord serve`, three coordinator replicas
//! and two shards): a leader that loses its majority — its two followers frozen with SIGSTOP,
//! so nothing it sends is answered — acknowledges nothing and stands down; once they thaw,
//! the cluster elects and commits again, and the shards agree on what was applied.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{concord, free_base_port, leader, temp, text, write_config, Killed};

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill").args([name, &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill {name} {pid}");
}

#[test]
fn a_leader_without_its_majority_acknowledges_nothing_and_stands_down() {
    let dir = temp("replicated-serve");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_base_port();
    let names = ["coordinator", "coordinator-b", "coordinator-c", "shard-1", "shard-2"];
    let listen = |i: usize| format!("127.0.0.1:{}", port + u16::try_from(i).unwrap());
    let config = write_config(&dir, "replicated", &names, listen, "");
    let config = config.as_str();
    let mut nodes = Vec::new();
    for name in names {
        let child = Command::new(env!("CARGO_BIN_EXE_concord"))
            .args(["serve", "--config", config, "--node", name, "--data-dir"])
            .arg(dir.join(name))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        nodes.push((name, Killed(child)));
    }
    let submit = |at: u16| {
        let at = format!("127.0.0.1:{}", port + at);
        concord(&["txn", "submit", "shard-1:1=+5", "shard-2:1=+5", "--coordinator", &at])
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = submit(0);
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "never committed: {}", text(&out));
        std::thread::sleep(Duration::from_millis(200));
    }
    let leader = leader(config).unwrap_or_else(|| {
        panic!("a leader: {}", text(&concord(&["cluster", "status", "--config", config])))
    });
    let leader_index = names.iter().position(|n| *n == leader).unwrap();

    // Freeze both followers: the leader hears no majority.
    let followers: Vec<u32> = nodes
        .iter()
        .filter(|(n, _)| n.starts_with("coordinator") && **n != leader)
        .map(|(_, child)| child.0.id())
        .collect();
    for pid in &followers {
        signal(*pid, "-STOP");
    }
    let cut_off = Instant::now();
    let port_index = u16::try_from(leader_index).unwrap();
    let out = submit(port_index);
    assert!(!out.status.success(), "committed without a majority: {}", text(&out));
    assert!(!text(&out).contains(" committed"), "{}", text(&out));
    // It stands down: a standby refuses at once, naming no leader it could reach.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = text(&concord(&["cluster", "status", "--config", config]));
        let line =
            status.lines().find(|l| l.starts_with(leader.as_str())).unwrap_or_default().to_string();
        if !line.contains(" leader ") {
            break;
        }
        assert!(Instant::now() < deadline, "still leading with no majority: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("stood down {:?} after its followers froze", cut_off.elapsed());

    for pid in &followers {
        signal(*pid, "-CONT");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = submit(port_index);
        if out.status.success() {
            assert!(text(&out).contains("committed"), "{}", text(&out));
            break;
        }
        assert!(Instant::now() < deadline, "no commit after the thaw: {}", text(&out));
        std::thread::sleep(Duration::from_millis(200));
    }

    // The shards agree: whatever the frozen time left (the refused transfer may have been
    // prepared and then aborted, never half-applied), both hold the same sum, nothing prepared.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let read = |shard: &str| {
            let at = format!("127.0.0.1:{port}");
            text(&concord(&["shard", "read", shard, "--json", "--coordinator", &at]))
        };
        let (one, two) = (read("shard-1"), read("shard-2"));
        let value = |json: &str| {
            let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap_or_default();
            (v["values"]["1"].as_i64(), v["in_doubt"].as_array().map_or(0, Vec::len))
        };
        let ((a, da), (b, db)) = (value(&one), value(&two));
        if let (0, 0, Some(a), Some(b)) = (da, db, a, b) {
            if a == b {
                assert!(a >= 10, "both committed transfers applied: {one} {two}");
                break;
            }
        }
        assert!(Instant::now() < deadline, "shards disagree or stay in doubt: {one} / {two}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Replacing a replica's machine by the documented procedure (docs/configuration.md): take it
/// out (`cluster remove-replica`), wipe its directory, start it again with `serve --join`,
/// add it back (`cluster add-replica`: the leader catches it up by snapshot or entries). The
/// cluster commits throughout, and afterwards the replica's vote counts: with the leader
/// killed, the other two elect and go on.
#[test]
fn a_replica_is_replaced_by_remove_wipe_join_and_add() {
    let dir = temp("replace-replica");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_base_port();
    let names = ["coordinator", "coordinator-b", "coordinator-c", "shard-1", "shard-2"];
    let listen = |i: usize| format!("127.0.0.1:{}", port + u16::try_from(i).unwrap());
    let config = write_config(&dir, "replace", &names, listen, "");
    let config = config.as_str();
    let start = |name: &str, join: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_concord"));
        command.args(["serve", "--config", config, "--node", name, "--data-dir"]);
        command.arg(dir.join(name));
        if join {
            command.arg("--join");
        }
        Killed(command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap())
    };
    let mut nodes: Vec<(&str, Killed)> = names.iter().map(|n| (*n, start(n, false))).collect();
    let commit = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let at = format!("127.0.0.1:{}", port + u16::try_from(nodes_up(config)).unwrap_or(0));
            let out =
                concord(&["txn", "submit", "shard-1:1=+1", "shard-2:1=+1", "--coordinator", &at]);
            if out.status.success() {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: no commit: {}", text(&out));
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    commit("at the start");
    let leader = leader_name(config).expect("a leader");
    let victim = if leader == "coordinator-c" { "coordinator-b" } else { "coordinator-c" };

    let refused = concord(&["cluster", "add-replica", "shard-1", "--config", config]);
    assert!(
        !refused.status.success() && text(&refused).contains("not a coordinator"),
        "{}",
        text(&refused)
    );

    let at = nodes.iter().position(|(n, _)| *n == victim).unwrap();
    drop(nodes.remove(at).1); // its machine is gone
    std::fs::remove_dir_all(dir.join(victim)).unwrap();
    // Started plainly on the empty directory it would propose a new cluster and could vote
    // twice in a term: the leader has matched entries on its log, so it is refused.
    let plain = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["serve", "--config", config, "--node", victim, "--data-dir"])
        .arg(dir.join(victim))
        .output()
        .unwrap();
    assert!(!plain.status.success(), "{}", text(&plain));
    assert!(text(&plain).contains("were lost"), "{}", text(&plain));
    assert!(!dir.join(victim).join("replica").exists(), "no replica log written");

    let out = concord(&["cluster", "remove-replica", victim, "--config", config]);
    assert!(out.status.success(), "{}", text(&out));
    let voters = text(&out).split("are now").nth(1).unwrap_or_default().to_string();
    assert!(!voters.contains(victim), "{}", text(&out));
    eprintln!("{}", text(&out).trim());
    commit("with two voters");

    nodes.push((victim, start(victim, true)));
    let out = concord(&["cluster", "add-replica", victim, "--config", config]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(victim), "the voters name it: {}", text(&out));
    eprintln!("{}", text(&out).trim());
    let status = text(&concord(&["cluster", "status", "--config", config]));
    eprintln!("{status}");
    commit("with the replica back");

    // Its vote counts: without the leader, the other two (the rejoined one included) elect.
    let leader = leader_name(config).expect("a leader");
    let at = nodes.iter().position(|(n, _)| *n == leader).unwrap();
    drop(nodes.remove(at).1);
    commit("after the leader was killed");
    let now = leader_name(config).expect("a new leader");
    assert_ne!(now, leader);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The replica `concord cluster status` calls leader.
fn leader_name(config: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leader = leader(config);
        if leader.is_some() || Instant::now() > deadline {
            return leader;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The index of the leading replica's address (its node index), for a client to start at.
fn nodes_up(config: &str) -> usize {
    let names = ["coordinator", "coordinator-b", "coordinator-c"];
    leader_name(config).and_then(|l| names.iter().position(|n| *n == l)).unwrap_or(0)
}
