//! `concord dev`, the client commands and bad input, against the real binary.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{concord, free_base_port, start_dev, temp, text, Killed};

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
    // Every node of the dev clusters serves /metrics: the coordinator counts the transfer,
    // the deposit and the overdraft; the key-value gateway's and a shard's answer too.
    let scrape = |port: u16| {
        let address: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        concord_http::request(address, "GET", "/metrics", None, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("metrics on {port}: {e}"))
            .1
    };
    let metrics = scrape(port + 200);
    assert!(metrics.contains("outcome=\"committed\"} 2"), "{metrics}");
    assert!(metrics.contains("outcome=\"aborted\"} 1"), "{metrics}");
    assert!(scrape(port + 201).contains("concord_in_doubt_branches{node=\"shard-1\""));
    assert!(scrape(port + 210).contains("role=\"coordinator\""));

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

/// `concord kv` against the key-value store `concord dev` serves next to the delta cluster.
#[test]
fn the_dev_key_value_store_answers_concord_kv_and_keeps_its_data_across_a_kill() {
    let dir = temp("dev-kv");
    let port = free_base_port();
    let gateway = format!("127.0.0.1:{}", port + 10);
    let kv = |args: &[&str]| {
        let mut all = vec!["kv", "--gateway", &gateway];
        all.extend(args);
        concord(&all)
    };
    let ok = |output: Output| {
        assert!(output.status.success(), "{}", text(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let wait_for_gateway = || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !kv(&["get", "probe"]).status.success() {
            assert!(Instant::now() < deadline, "the key-value store did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut dev = start_dev(&dir, port);
    wait_for_gateway();
    ok(kv(&["put", "greeting", "hello"]));
    assert_eq!(ok(kv(&["get", "greeting"])), "greeting = hello\n");
    let script = ok(kv(&["txn", "get greeting; put counter 1; put zebra z; del nothing; scan"]));
    assert_eq!(
        script,
        "greeting = hello\nput counter\nput zebra\ndeleted nothing\ncounter = 1\ngreeting = hello\nzebra = z\ncommitted\n"
    );
    // The client buffers writes until commit: reads in the transaction still see them.
    assert_eq!(
        ok(kv(&["txn", "put own 1; get own; del own; get own; put own 2; get own"])),
        "put own\nown = 1\ndeleted own\nown (not found)\nput own\nown = 2\ncommitted\n"
    );
    assert_eq!(ok(kv(&["get", "own"])), "own = 2\n");
    ok(kv(&["del", "own"]));
    ok(kv(&["del", "counter"]));
    assert_eq!(ok(kv(&["scan", "a", "h"])), "greeting = hello\n");
    assert_eq!(ok(kv(&["get", "counter"])), "counter (not found)\n");
    assert_eq!(
        ok(kv(&["--isolation", "snapshot", "scan", "--limit", "1"])),
        "greeting = hello\n… (more than 1; use --limit or narrow the range)\n"
    );

    // Clear errors: a limit, a script mistake, an empty key.
    let big = kv(&["get", ""]);
    assert!(
        !big.status.success() && text(&big).contains("keys may not be empty"),
        "{}",
        text(&big)
    );
    let bad = kv(&["txn", "get a; frob b"]);
    assert!(!bad.status.success() && text(&bad).contains("operation 2 `frob b`"), "{}", text(&bad));
    let mut child = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["kv", "--gateway", &gateway, "txn", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let value = "x".repeat(300 << 10);
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), format!("put big {value}").as_bytes())
        .unwrap();
    drop(child.stdin.take());
    let too_big = child.wait_with_output().unwrap();
    assert!(
        !too_big.status.success() && text(&too_big).contains("exceeds the limit of 262144"),
        "{}",
        text(&too_big)
    );

    // SIGKILL the whole dev process; its data survives in the logs.
    let _ = dev.child.kill();
    let _ = dev.child.wait();
    dev = start_dev(&dir, port);
    wait_for_gateway();
    assert_eq!(ok(kv(&["get", "greeting"])), "greeting = hello\n");
    assert_eq!(ok(kv(&["get", "zebra"])), "zebra = z\n");
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Until links are authenticated, `concord serve` refuses an address off loopback unless told
/// `--insecure`, and then says so when it starts.
#[test]
fn serve_refuses_a_non_loopback_address_without_insecure() {
    let dir = temp("insecure");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_base_port();
    let config = dir.join("concord.toml");
    std::fs::write(
        &config,
        format!(
            "cluster = \"x\"\n[[node]]\nname = \"c\"\nid = 0\nrole = \"coordinator\"\nlisten = \"0.0.0.0:{port}\"\n\
             [[node]]\nname = \"s\"\nid = 1\nrole = \"shard\"\nlisten = \"127.0.0.1:{}\"\n",
            port + 1
        ),
    )
    .unwrap();
    let data = dir.join("data");
    let args = ["serve", "--config", config.to_str().unwrap(), "--node", "c", "--data-dir"];
    let refused = concord(&[&args[..], &[data.to_str().unwrap()]].concat());
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("--insecure"), "{}", text(&refused));
    assert!(!data.exists(), "a refused start touches no data");
    // --join is for a replica of a replicated coordinator only.
    let shard = ["serve", "--config", config.to_str().unwrap(), "--node", "s", "--join"];
    let refused = concord(&[&shard[..], &["--data-dir", data.to_str().unwrap()]].concat());
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("--join: `s` is not a replica"), "{}", text(&refused));
    assert!(!data.exists(), "a refused start touches no data");

    let mut child = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(args)
        .arg(&data)
        .arg("--insecure")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.contains("INSECURE"), "{first}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A cluster of three `concord serve` processes under `[tls]`: `concord certs init` issues the
/// CA and node certificates (keys readable by their owner only), `concord certs token` a
/// client's token and the entry for the configuration; the nodes talk TLS to each other, a
/// client command with `--ca` and `--token-file` commits through them; one without the CA is
/// refused (the nodes speak nothing but TLS), and so is one without the token, and a monitor's
/// token reads but cannot submit. Issuing again leaves existing certificates alone.
#[test]
fn certs_init_then_serve_runs_a_cluster_over_tls() {
    let dir = temp("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_base_port();
    let config = dir.join("concord.toml");
    std::fs::write(
        &config,
        format!(
            "cluster = \"tls-test\"\n\
             [[node]]\nname = \"coordinator\"\nid = 0\nrole = \"coordinator\"\nlisten = \"127.0.0.1:{port}\"\n\
             [[node]]\nname = \"shard-1\"\nid = 1\nrole = \"shard\"\nlisten = \"127.0.0.1:{}\"\n\
             [[node]]\nname = \"shard-2\"\nid = 2\nrole = \"shard\"\nlisten = \"127.0.0.1:{}\"\n\
             [tls]\ndir = \"certs\"\n",
            port + 1,
            port + 2
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let issued = concord(&["certs", "init", "--config", config]);
    assert!(issued.status.success(), "{}", text(&issued));
    let certs = dir.join("certs");
    for file in ["ca.pem", "ca.key", "coordinator.pem", "shard-1.key", "shard-2.pem"] {
        assert!(certs.join(file).exists(), "{file} missing: {}", text(&issued));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(certs.join("shard-1.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "a node's key is readable by others: {mode:o}");
    }
    let again = concord(&["certs", "init", "--config", config]);
    assert!(text(&again).contains("every node"), "{}", text(&again));
    let mut tokens = Vec::new();
    for (name, role) in [("app", "client"), ("watch", "monitor")] {
        let file = dir.join(format!("{name}.token"));
        let made = concord(&[
            "certs",
            "token",
            "--name",
            name,
            "--role",
            role,
            "--out",
            file.to_str().unwrap(),
        ]);
        assert!(made.status.success(), "{}", text(&made));
        let entry = String::from_utf8_lossy(&made.stdout);
        let entry = &entry[entry.find("[[token]]").expect("the entry to add")..];
        let mut file_text = std::fs::read_to_string(config).unwrap();
        file_text.push_str(entry);
        std::fs::write(config, file_text).unwrap();
        tokens.push(dir.join(format!("{name}.token")));
    }
    let (app, watch) = (tokens[0].to_str().unwrap(), tokens[1].to_str().unwrap());

    let mut nodes = Vec::new();
    for name in ["coordinator", "shard-1", "shard-2"] {
        let data = dir.join(name);
        let child = Command::new(env!("CARGO_BIN_EXE_concord"))
            .args(["serve", "--config", config, "--node", name, "--data-dir"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        nodes.push(common::Killed(child));
    }
    let coordinator = format!("127.0.0.1:{port}");
    let ca = certs.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let submit = ["txn", "submit", "shard-1:4=+5", "shard-2:4=+5", "--coordinator", &coordinator];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = concord(&[&submit[..], &["--ca", ca, "--token-file", app]].concat());
        if out.status.success() {
            assert!(text(&out).contains("committed"), "{}", text(&out));
            break;
        }
        assert!(Instant::now() < deadline, "never committed over TLS: {}", text(&out));
        std::thread::sleep(Duration::from_millis(300));
    }
    let read = ["shard", "read", "shard-1", "4", "--coordinator", &coordinator, "--ca", ca];
    let shown = text(&concord(&[&read[..], &["--token-file", watch]].concat()));
    assert!(shown.lines().any(|l| l.split_whitespace().eq(["4", "=", "5"])), "{shown}");
    let plain = concord(&[&submit[..], &["--token-file", app]].concat());
    assert!(!plain.status.success(), "a plain client was served: {}", text(&plain));
    let anonymous = concord(&[&submit[..], &["--ca", ca]].concat());
    assert!(!anonymous.status.success(), "a client without a token: {}", text(&anonymous));
    let monitor = concord(&[&submit[..], &["--ca", ca, "--token-file", watch]].concat());
    assert!(text(&monitor).contains("may not"), "a monitor submitted: {}", text(&monitor));
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `concord dev --tls`: both dev clusters under one CA made in DATA/certs, with a client and a
/// monitor token; the client commands work with the CA and the right token, and not without.
#[test]
fn dev_with_tls_makes_its_certificates_and_tokens_and_serves_only_tls() {
    let dir = temp("dev-tls");
    let port = free_base_port();
    let _dev = common::Killed(
        Command::new(env!("CARGO_BIN_EXE_concord"))
            .args(["dev", "--tls", "--port", &port.to_string(), "--data-dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let certs = dir.join("certs");
    let (ca, client, monitor) =
        (certs.join("dev").join("ca.pem"), certs.join("client.token"), certs.join("monitor.token"));
    let coordinator = format!("127.0.0.1:{port}");
    let gateway = format!("127.0.0.1:{}", port + 10);
    let with = |token: &std::path::Path, args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--ca", ca.to_str().unwrap(), "--token-file", token.to_str().unwrap()]);
        concord(&all)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !with(&monitor, &["txn", "ls", "--coordinator", &coordinator]).status.success() {
        assert!(Instant::now() < deadline, "concord dev --tls did not come up");
        std::thread::sleep(Duration::from_millis(200));
    }
    let submit = ["txn", "submit", "shard-1:3=+7", "--coordinator", &coordinator];
    let done = with(&client, &submit);
    assert!(text(&done).contains("committed"), "{}", text(&done));
    let listed = with(&monitor, &["txn", "ls", "--coordinator", &coordinator]);
    assert!(text(&listed).contains("committed"), "{}", text(&listed));
    let put = loop {
        let put = with(&client, &["kv", "--gateway", &gateway, "put", "greeting", "hello"]);
        if put.status.success() || Instant::now() > deadline {
            break put;
        }
        std::thread::sleep(Duration::from_millis(200)); // shards refuse writes just after start
    };
    assert!(put.status.success(), "{}", text(&put));
    assert!(!concord(&submit).status.success(), "a plain client was served");
    let as_monitor = with(&monitor, &submit);
    assert!(text(&as_monitor).contains("may not"), "{}", text(&as_monitor));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `concord dev --coordinators 3`: three coordinator replicas, one leading. `cluster status`
/// shows every replica and the leader; a client pointed at a standby is redirected and hears
/// the true outcome; `cluster transfer-leader` moves the leadership, and the committed values
/// stay; an even count is refused by name.
#[test]
fn a_dev_cluster_with_three_coordinators_redirects_and_moves_its_leader() {
    let dir = temp("dev-replicated");
    let port = free_base_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["dev", "--coordinators", "3", "--port", &port.to_string(), "--data-dir"])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _dev = Killed(child);
    let config = dir.join("concord.toml");
    let config = config.to_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = concord(&["cluster", "status", "--config", config]);
        // A leader, and both followers have answered it (their last contact is shown).
        if status.status.success() && text(&status).matches("last contact").count() == 2 {
            break text(&status);
        }
        assert!(Instant::now() < deadline, "no leader heard by all in 30 s: {}", text(&status));
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.contains("coordinator-2")
            && status.contains("coordinator-3")
            && status.contains("leader "),
        "{status}"
    );
    let leader = status
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("leader"))
        .and_then(|l| l.split_whitespace().next())
        .expect("a replica in state leader")
        .to_string();

    // Every replica's address works for a client: a standby redirects, never answers.
    for replica in [port, port + 4, port + 5] {
        let at = format!("127.0.0.1:{replica}");
        let out = concord(&["txn", "submit", "shard-1:1=+10", "--coordinator", &at]);
        assert!(out.status.success() && text(&out).contains("committed"), "{}", text(&out));
    }

    let target = ["coordinator", "coordinator-2", "coordinator-3"]
        .into_iter()
        .find(|n| *n != leader)
        .unwrap();
    let moved = concord(&["cluster", "transfer-leader", target, "--config", config]);
    assert!(moved.status.success(), "{}", text(&moved));
    assert!(text(&moved).contains(&format!("{target} leads")), "{}", text(&moved));
    let again = concord(&["cluster", "transfer-leader", target, "--config", config]);
    assert!(text(&again).contains("already leads"), "{}", text(&again));

    let at = format!("127.0.0.1:{port}");
    let out = concord(&["txn", "submit", "shard-1:1=+10", "--coordinator", &at]);
    assert!(out.status.success(), "{}", text(&out));
    let read = text(&concord(&["shard", "read", "shard-1", "1", "--coordinator", &at]));
    assert!(read.contains("= 40"), "three deposits before the move, one after: {read}");

    // The console's cluster page says who leads, and the leader every replica's lag.
    let cluster = |metrics_port: u16| {
        let address: std::net::SocketAddr = ([127, 0, 0, 1], metrics_port).into();
        let (code, body) =
            concord_http::request(address, "GET", "/v1/cluster", None, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("/v1/cluster on {metrics_port}: {e}"));
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    // Metrics ports follow the nodes' order: coordinator, three shards, the two replicas.
    let index = |name: &str| match name {
        "coordinator" => 0,
        "coordinator-2" => 4,
        _ => 5,
    };
    let seen = cluster(port + 200 + index(target));
    let replication = &seen["replication"];
    assert_eq!(replication["leader"], target, "{seen}");
    assert_eq!(replication["this_replica_leads"], true, "{seen}");
    let replicas = replication["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 3, "{seen}");
    assert!(
        replicas.iter().all(|r| r["lag_entries"].is_u64()),
        "the leader knows every lag: {seen}"
    );
    assert!(
        replicas.iter().filter(|r| r["leader"] == false).all(|r| r["last_contact_ms"].is_u64()),
        "and when each follower last answered it: {seen}"
    );
    let follower = cluster(port + 200 + index(&leader));
    assert_eq!(follower["replication"]["this_replica_leads"], false, "{follower}");

    let even = text(&concord(&["dev", "--coordinators", "2", "--data-dir", "/nonexistent"]));
    assert!(even.contains("1, 3 or 5"), "{even}");
    let _ = std::fs::remove_dir_all(&dir);
}
