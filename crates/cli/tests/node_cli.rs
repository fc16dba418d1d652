//! `concord dev`, the client commands and bad input, against the real binary.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn concord(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_concord")).args(args).output().expect("running concord")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Four consecutive free ports (coordinator and three shards).
fn free_base_port() -> u16 {
    for _ in 0..100 {
        let base = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if base < 60_000 && (1..4).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no four free consecutive ports");
}

struct Dev {
    child: Child,
    coordinator: String,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_dev(dir: &Path, port: u16) -> Dev {
    let child = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["dev", "--port", &port.to_string(), "--data-dir"])
        .arg(dir)
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

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("concord-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn a_dev_cluster_runs_transfers_lists_them_and_answers_status_after_a_kill() {
    let dir = temp("dev");
    let port = free_base_port();
    let mut dev = start_dev(&dir, port);
    let c = dev.coordinator.clone();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--coordinator", &c]);
        concord(&all)
    };
    let deposit = run(&["txn", "submit", "shard-1:1=+100"]);
    assert!(deposit.status.success(), "{}", text(&deposit));
    let transfer = run(&["transfer", "--from", "shard-1:1", "--to", "shard-2:5", "--amount", "30"]);
    assert!(transfer.status.success(), "{}", text(&transfer));
    let id = text(&transfer).split_whitespace().next().unwrap().to_string();
    // Overdraft: shard-1 votes NO, nothing moves.
    let overdraft =
        run(&["transfer", "--from", "shard-1:1", "--to", "shard-3:5", "--amount", "500"]);
    assert_eq!(overdraft.status.code(), Some(1), "{}", text(&overdraft));
    assert!(text(&overdraft).contains("aborted"));

    let ls = text(&run(&["txn", "ls"]));
    assert!(
        ls.contains(&id) && ls.contains("shard-1:YES/ack") && ls.contains("shard-1:NO"),
        "{ls}"
    );
    let show = text(&run(&["txn", "show", &id]));
    assert!(show.contains("committed") && show.contains("shard-2"), "{show}");
    let read = text(&run(&["shard", "read", "shard-2", "--json"]));
    assert!(read.contains("\"5\":30"), "{read}");

    // Bad input gets one clear line each.
    let unknown = text(&run(&["txn", "submit", "shard-9:1=+1"]));
    assert!(unknown.contains("unknown shard `shard-9`"), "{unknown}");
    let malformed = text(&run(&["txn", "submit", "shard-1:x=1"]));
    assert!(malformed.contains("expected SHARD:KEY=DELTA"), "{malformed}");
    let bogus = text(&run(&["txn", "show", "7.7@n0"]));
    assert!(bogus.contains("never issued"), "{bogus}");

    // SIGKILL the whole cluster and restart it: the transfer's outcome and values survive.
    let _ = dev.child.kill();
    let _ = dev.child.wait();
    let _dev = start_dev(&dir, port);
    let show = text(&run(&["txn", "show", &id]));
    assert!(show.contains("committed"), "{show}");
    let read = text(&run(&["shard", "read", "shard-1", "1"]));
    assert!(read.contains("= 70"), "{read}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_misspelt_config_field_and_a_foreign_data_directory_are_refused_by_name() {
    let dir = temp("config");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("concord.toml");
    std::fs::write(
        &config,
        "cluster = \"x\"\n[[node]]\nname = \"c\"\nid = 0\nrole = \"coordinator\"\nadress = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = text(&concord(&["serve", "--config", config.to_str().unwrap(), "--node", "c"]));
    assert!(out.contains("adress"), "{out}");

    let port = free_base_port();
    std::fs::write(
        &config,
        format!(
            "cluster = \"x\"\n[[node]]\nname = \"c\"\nid = 0\nrole = \"coordinator\"\nlisten = \"127.0.0.1:{port}\"\n\
             [[node]]\nname = \"s\"\nid = 1\nrole = \"shard\"\nlisten = \"127.0.0.1:{}\"\n",
            port + 1
        ),
    )
    .unwrap();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("IDENTITY"), "format = 99\n").unwrap();
    let out = text(&concord(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--node",
        "c",
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    assert!(out.contains("belongs to another node or version"), "{out}");
    let out = text(&concord(&["serve", "--config", config.to_str().unwrap(), "--node", "zz"]));
    assert!(out.contains("no such node"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
