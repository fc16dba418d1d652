//! A network partition on real processes. Three coordinator replicas (`concord serve`), each on
//! a host of its own — a network namespace joined to a bridge by a veth pair — and two shards
//! on the bridge's host. The leader is cut off from both other replicas (nftables rules drop
//! every packet between them, both ways, silently), while the shards and the clients still reach every
//! replica: the worst case for a stale leader, which still hears the shards' votes.
//!
//! Checked, with clients submitting through every replica all along:
//! - the cut-off leader stands down and commits nothing submitted after the cut;
//! - the majority elects a new leader and commits;
//! - after healing, the replicas hold one log (equal last and applied index, no lag), and every
//!   client's answer matches what both shards applied: committed ⇒ applied on both, aborted or
//!   refused ⇒ on neither, unknown ⇒ the same on both; nothing left in doubt.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{concord, free_base_port, temp, text, write_config, Killed};
use concord_testkit::{servers_ready, Server};

/// Hosts on one machine: a bridge on the test's own host (address `.1`), and one network
/// namespace per replica (`.2`, `.3`, …), each with a veth pair and an nftables table into
/// which [`Network::cut`] puts drop rules. Everything is removed when dropped.
struct Network {
    bridge: String,
    subnet: String,
    hosts: Vec<Host>,
}

struct Host {
    namespace: String,
    address: String,
}

/// Each namespace's table: the cuts are rules in its two chains.
const CUTS: &str = "table inet concord_cut {
  chain output { type filter hook output priority 0; policy accept; }
  chain input { type filter hook input priority 0; policy accept; }
}";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), text(&out));
}

fn in_namespace(namespace: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", namespace])
        .args(args)
        .output()
        .expect("running ip netns exec");
    assert!(out.status.success(), "{namespace}: {}: {}", args.join(" "), text(&out));
}

impl Network {
    fn new(hosts: usize) -> Network {
        // Names and addresses of this process's own: interface names are at most 15 bytes.
        let pid = std::process::id();
        let tag = format!("{:x}", pid % 0xf_ffff);
        let subnet = format!("10.{}.{}", 200 + (pid >> 8) % 50, pid % 250);
        let mut network = Network { bridge: format!("cb{tag}"), subnet, hosts: Vec::new() };
        network.remove(); // what a killed earlier run of the same pid left
        ip(&["link", "add", &network.bridge, "type", "bridge"]);
        ip(&["link", "set", &network.bridge, "up"]);
        ip(&["addr", "add", &format!("{}.1/24", network.subnet), "dev", &network.bridge]);
        for i in 0..hosts {
            let namespace = format!("concord-{tag}-{i}");
            let (outside, inside) = (format!("cv{tag}{i}"), format!("cn{tag}{i}"));
            let address = format!("{}.{}", network.subnet, i + 2);
            ip(&["netns", "add", &namespace]);
            network.hosts.push(Host { namespace, address });
            let host = network.hosts.last().unwrap();
            ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside]);
            ip(&["link", "set", &inside, "netns", &host.namespace]);
            ip(&["link", "set", &outside, "master", &network.bridge, "up"]);
            let ns = host.namespace.as_str();
            ip(&["-n", ns, "addr", "add", &format!("{}/24", host.address), "dev", &inside]);
            ip(&["-n", ns, "link", "set", &inside, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            let loaded = Command::new("ip")
                .args(["netns", "exec", ns, "nft", "-f", "-"])
                .stdin(Stdio::piped())
                .spawn()
                .and_then(|mut nft| {
                    use std::io::Write as _;
                    nft.stdin.take().unwrap().write_all(CUTS.as_bytes())?;
                    nft.wait()
                });
            assert!(loaded.is_ok_and(|s| s.success()), "{ns}: nft could not load its table");
        }
        network
    }

    /// The host's own address (`.1`): where the shards listen and the clients run.
    fn outside(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// Drops every packet between hosts `a` and `b`, both ways (their connections stall, as
    /// behind a failed switch: no reset, no error).
    fn cut(&self, a: usize, b: usize) {
        for (from, to) in [(a, b), (b, a)] {
            let (from, to) = (&self.hosts[from], &self.hosts[to].address);
            for (chain, field) in [("output", "daddr"), ("input", "saddr")] {
                let rule =
                    ["nft", "add", "rule", "inet", "concord_cut", chain, "ip", field, to, "drop"];
                in_namespace(&from.namespace, &rule);
            }
        }
    }

    /// Removes every cut.
    fn heal(&self) {
        for host in &self.hosts {
            for chain in ["output", "input"] {
                in_namespace(
                    &host.namespace,
                    &["nft", "flush", "chain", "inet", "concord_cut", chain],
                );
            }
        }
    }

    fn remove(&self) {
        let quiet = |args: &[&str]| {
            let _ =
                Command::new("ip").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        let tag = self.bridge.trim_start_matches("cb");
        for i in 0..5 {
            quiet(&["netns", "del", &format!("concord-{tag}-{i}")]);
            quiet(&["link", "del", &format!("cv{tag}{i}")]);
        }
        quiet(&["link", "del", &self.bridge]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.remove();
    }
}

/// What a client was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    Committed,
    Aborted,
    /// Refused before it ran (`concord txn submit` says so by not saying "outcome unknown").
    Refused,
    Unknown,
}

#[derive(Debug)]
struct Answer {
    key: u64,
    replica: usize,
    started: Instant,
    ended: Instant,
    told: Told,
    said: String,
}

fn submit(address: &str, key: u64) -> (Told, String) {
    let (one, two) = (format!("shard-1:{key}=+1"), format!("shard-2:{key}=+1"));
    let out = concord(&["txn", "submit", &one, &two, "--json", "--coordinator", address]);
    let said = text(&out);
    let told = match out.status.code() {
        Some(0) => Told::Committed,
        Some(1) if said.contains("\"state\":\"aborted\"") => Told::Aborted,
        _ if said.contains("outcome unknown") => Told::Unknown,
        _ => Told::Refused,
    };
    (told, said)
}

/// One replica's line of `concord cluster status`: state, term, last log index, applied index.
type ReplicaLine = (String, u64, u64, u64);

/// `concord cluster status`, parsed: each replica's line, by name; and the whole text.
fn cluster_status(config: &str) -> (BTreeMap<String, ReplicaLine>, String) {
    let said = text(&concord(&["cluster", "status", "--config", config]));
    let mut replicas = BTreeMap::new();
    // The table ends at the first empty line (the leader's match indexes follow it).
    for line in said.lines().skip(1).take_while(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 6 && fields[0].starts_with("coordinator") {
            let number = |i: usize| fields[i].parse::<u64>().unwrap_or(0);
            replicas.insert(
                fields[0].to_string(),
                (fields[2].to_string(), number(3), number(4), number(5)),
            );
        }
    }
    (replicas, said)
}

fn leader_of(config: &str) -> Option<String> {
    let (replicas, _) = cluster_status(config);
    replicas.into_iter().find(|(_, (state, ..))| state == "leader").map(|(name, _)| name)
}

#[test]
fn a_leader_cut_off_from_its_majority_decides_nothing_and_the_majority_goes_on() {
    if !servers_ready(&[Server::Network], "the network partition test") {
        return;
    }
    let network = Network::new(3);
    let dir = temp("partition");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_base_port();
    let names = ["coordinator", "coordinator-b", "coordinator-c", "shard-1", "shard-2"];
    let listen = |i: usize| match i {
        0..=2 => format!("{}:{port}", network.hosts[i].address),
        _ => format!("{}:{}", network.outside(), port + u16::try_from(i).unwrap()),
    };
    let config = write_config(&dir, "partition", &names, listen, "");
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut command = if i < 3 {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &network.hosts[i].namespace]);
            c.arg(env!("CARGO_BIN_EXE_concord"));
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_concord"))
        };
        let child = command
            // Not loopback: links in the clear, by choice (this test is about the partition;
            // node/tests/links_under_tls.rs runs replicas over mutual TLS).
            .args(["serve", "--insecure", "--config", &config, "--node", name, "--data-dir"])
            .arg(dir.join(name))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
            .spawn()
            .unwrap();
        nodes.push(Killed(child));
    }
    let addresses: Vec<String> = (0..3).map(listen).collect();

    // Up: one commit, and a leader.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempt = 0;
    while submit(&addresses[attempt % 3], 1_000_000 + attempt as u64).0 != Told::Committed {
        assert!(Instant::now() < deadline, "never committed: {:?}", cluster_status(&config).1);
        attempt += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let old = leader_of(&config).unwrap_or_else(|| {
        panic!("a leader after the first commit: {}", cluster_status(&config).1)
    });
    let old_index = names.iter().position(|n| *n == old).unwrap();
    let old_term = cluster_status(&config).0[&old].1;

    // Clients through every replica, all along: each transfer writes a key of its own.
    let stop = Arc::new(AtomicBool::new(false));
    let next_key = Arc::new(AtomicU64::new(1));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..3)
        .map(|replica| {
            let (stop, next_key, answers) = (stop.clone(), next_key.clone(), answers.clone());
            let address = addresses[replica].clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let key = next_key.fetch_add(1, Ordering::Relaxed);
                    let started = Instant::now();
                    let (told, said) = submit(&address, key);
                    let ended = Instant::now();
                    answers.lock().unwrap().push(Answer {
                        key,
                        replica,
                        started,
                        ended,
                        told,
                        said,
                    });
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));

    // The cut: the leader hears neither replica, and neither hears it.
    let majority: Vec<usize> = (0..3).filter(|&i| i != old_index).collect();
    for &other in &majority {
        network.cut(old_index, other);
    }
    let cut = Instant::now();
    let deadline = cut + Duration::from_secs(30);
    let (mut stood_down, mut elected) = (None, None);
    while stood_down.is_none() || elected.is_none() {
        let (replicas, said) = cluster_status(&config);
        if stood_down.is_none() && replicas.get(&old).is_some_and(|r| r.0 != "leader") {
            stood_down = Some(cut.elapsed());
        }
        if elected.is_none()
            && replicas.iter().any(|(name, r)| *name != old && r.0 == "leader" && r.1 > old_term)
        {
            elected = Some(cut.elapsed());
        }
        assert!(Instant::now() < deadline, "after the cut: {said}");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "cut off: the old leader stood down after {stood_down:?}; a new one led after {elected:?}"
    );
    // The majority works on (until it has committed a few transactions begun after its
    // election, within a bound), the old leader refuses. What the shards hold in doubt and how
    // the replicas see it, for the failure message.
    let mut timeline = Vec::new();
    let elected_at = cut + elected.unwrap();
    let committed_by_majority = |answers: &[Answer], until: Instant| {
        answers
            .iter()
            .filter(|a| a.replica != old_index && a.told == Told::Committed)
            .filter(|a| a.started > elected_at && a.ended < until)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed_by_majority(&answers.lock().unwrap(), Instant::now()) < 5
        && Instant::now() < deadline
    {
        let in_doubt = |shard: &str| {
            let out = concord(&["shard", "read", shard, "--json", "--coordinator", &addresses[0]]);
            let v: serde_json::Value = serde_json::from_str(text(&out).trim()).unwrap_or_default();
            v["in_doubt"].to_string()
        };
        let (replicas, _) = cluster_status(&config);
        timeline.push(format!(
            "{:?}: in doubt {} / {}; replicas {replicas:?}",
            cut.elapsed(),
            in_doubt("shard-1"),
            in_doubt("shard-2")
        ));
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(1));
    network.heal();
    let healed = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }

    // One log again: every replica up, one leader, equal last and applied indexes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (replicas, said) = cluster_status(&config);
        let leaders = replicas.values().filter(|r| r.0 == "leader").count();
        let indexes: Vec<(u64, u64)> = replicas.values().map(|r| (r.2, r.3)).collect();
        if replicas.len() == 3
            && leaders == 1
            && indexes.windows(2).all(|w| w[0] == w[1])
            && said.contains("lag 0 entries")
            && !said.lines().any(|l| l.contains(" lag ") && !l.contains("lag 0 entries"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the replicas did not converge after healing: {said}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Nothing left in doubt, then every answer against what both shards applied.
    let read = |shard: &str| -> serde_json::Value {
        let out = concord(&["shard", "read", shard, "--json", "--coordinator", &addresses[0]]);
        serde_json::from_str(text(&out).trim()).unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (one, two) = loop {
        let (one, two) = (read("shard-1"), read("shard-2"));
        let settled = |v: &serde_json::Value| v["in_doubt"].as_array().is_some_and(Vec::is_empty);
        if settled(&one) && settled(&two) {
            break (one, two);
        }
        assert!(Instant::now() < deadline, "left in doubt: {one} / {two}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let value =
        |v: &serde_json::Value, key: u64| v["values"][key.to_string()].as_i64().unwrap_or(0);
    let answers = answers.lock().unwrap();
    let mut told = BTreeMap::new();
    for a in answers.iter() {
        let (on_one, on_two) = (value(&one, a.key), value(&two, a.key));
        let context =
            || format!("key {} through {} told {:?}: {}", a.key, names[a.replica], a.told, a.said);
        assert_eq!(on_one, on_two, "half-applied: {}", context());
        match a.told {
            Told::Committed => assert_eq!(on_one, 1, "committed but not applied: {}", context()),
            Told::Aborted | Told::Refused => {
                assert_eq!(on_one, 0, "applied though not committed: {}", context());
            }
            Told::Unknown => {}
        }
        // The cut-off leader decides nothing asked of it after the cut while the cut lasts.
        if a.replica == old_index && a.started > cut && a.ended < healed {
            assert_ne!(a.told, Told::Committed, "the cut-off leader committed: {}", context());
        }
        *told
            .entry(format!("{}{:?}", if a.replica == old_index { "old " } else { "" }, a.told))
            .or_insert(0) += 1;
    }
    let majority_commits = committed_by_majority(&answers, healed);
    eprintln!("answers: {told:?}; committed through the majority while cut: {majority_commits}");
    let since = |t: Instant| t.checked_duration_since(cut).map_or(-1.0, |d| d.as_secs_f64());
    for a in answers.iter().filter(|a| a.ended > cut && a.told != Told::Committed).take(12) {
        let (from, to) = (since(a.started), since(a.ended));
        eprintln!(
            "  {} {from:.3}..{to:.3} s after the cut: {:?}: {}",
            names[a.replica],
            a.told,
            a.said.trim()
        );
    }
    assert!(
        majority_commits > 0,
        "the majority committed nothing while the leader was cut off:\n{}",
        timeline.join("\n")
    );
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
