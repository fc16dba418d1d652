//! The coordinator's console (`/ui` on its metrics address) in a real headless Chromium, against
//! a cluster of three `concord serve` processes: a transfer shows each shard's prepare, vote,
//! durable decision, delivery, application and acknowledgement, in that order; with one shard
//! paused (SIGSTOP) a transfer's other branch shows prepared, in doubt, with a growing age and no
//! resolve button, and the cluster page shows the paused shard down and the other holding the
//! branch; resumed, it commits and nothing is in doubt; an overdraft shows as aborted because a
//! shard voted NO; the charts load.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{concord, free_base_port, temp, text, Killed};
use concord_testkit::browser::Browser;
use concord_testkit::{servers_ready, Server};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn get(console: SocketAddr, path: &str) -> Value {
    let (status, body) = concord_http::request(console, "GET", path, None, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(pid: u32, which: &str) {
    let status = Command::new("kill").args([which, &pid.to_string()]).status().expect("kill");
    assert!(status.success(), "kill {which} {pid}");
}

#[test]
fn the_coordinators_console_shows_each_shards_steps_and_a_branch_in_doubt_while_a_shard_is_paused()
{
    if !servers_ready(&[Server::Browser], "the coordinator console's browser test") {
        return;
    }
    let dir = temp("node-console");
    std::fs::create_dir_all(&dir).expect("test dir");
    let base = free_base_port();
    let names = ["coordinator", "shard-1", "shard-2"];
    let mut config = String::from("cluster = \"console\"\nprotocol = \"2pc\"\n");
    for (i, name) in (0u16..).zip(names) {
        let role = if i == 0 { "coordinator" } else { "shard" };
        config += &format!(
            "[[node]]\nname = \"{name}\"\nid = {i}\nrole = \"{role}\"\nlisten = \"127.0.0.1:{}\"\nmetrics = \"127.0.0.1:{}\"\n",
            base + i,
            base + 200 + i
        );
    }
    // A long vote timeout: the paused shard's transfer stays in doubt until it is resumed.
    config += "[timeouts]\nvote_ms = 60000\n[console]\nsample_ms = 200\n";
    let config_file = dir.join("concord.toml");
    std::fs::write(&config_file, config).expect("config");
    let nodes: Vec<Killed> = names
        .iter()
        .map(|name| {
            let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
            let child = Command::new(env!("CARGO_BIN_EXE_concord"))
                .args(["serve", "--config"])
                .arg(&config_file)
                .args(["--node", name, "--data-dir"])
                .arg(dir.join(name))
                .stdout(Stdio::from(log.try_clone().expect("log")))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("concord serve");
            Killed(child)
        })
        .collect();
    let coordinator = format!("127.0.0.1:{base}");
    let console = SocketAddr::from(([127, 0, 0, 1], base + 200));
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--coordinator", &coordinator]);
        concord(&all)
    };
    wait_until("the cluster answers", || run(&["txn", "ls"]).status.success());

    // A deposit (one shard: one phase) and a transfer (two shards: two phase).
    let deposit = run(&["txn", "submit", "shard-1:1=+100"]);
    assert!(deposit.status.success(), "{}", text(&deposit));
    let transfer = run(&["transfer", "--from", "shard-1:1", "--to", "shard-2:2", "--amount", "30"]);
    assert!(transfer.status.success(), "{}", text(&transfer));
    let id = text(&transfer).split_whitespace().next().expect("the transfer's id").to_string();

    // The client hears COMMIT before the shards' acknowledgements are in: until then the
    // coordinator says committing.
    wait_until("the transfer is acknowledged by both shards", || {
        get(console, &format!("/v1/transactions/{id}"))["state"] == "committed"
    });
    let detail = get(console, &format!("/v1/transactions/{id}"));
    assert_eq!(detail["state"], "committed", "{detail}");
    assert_eq!(detail["protocol"], "two-phase", "{detail}");
    let steps = detail["branch_steps"].as_array().expect("branch steps");
    assert_eq!(steps.len(), 2, "{detail}");
    for branch in steps {
        assert_eq!(branch["vote"], "yes", "{branch}");
        let at = |field: &str| {
            branch[field].as_u64().unwrap_or_else(|| panic!("{field} missing: {branch}"))
        };
        // The order the protocol promises: prepared before the decision is durable, durable
        // before it is sent, applied before it is acknowledged.
        assert!(at("prepare_sent_ms") <= at("prepared_ms"), "{branch}");
        assert!(at("prepared_ms") <= at("decision_logged_ms"), "{branch}");
        assert!(at("decision_logged_ms") <= at("decision_sent_ms"), "{branch}");
        assert!(at("decision_sent_ms") <= at("applied_ms"), "{branch}");
        assert!(at("applied_ms") <= at("acknowledged_ms"), "{branch}");
    }
    let listing = get(console, "/v1/transactions?recent=true&limit=10");
    let protocols: Vec<&str> = listing["transactions"]
        .as_array()
        .expect("transactions")
        .iter()
        .filter_map(|t| t["protocol"].as_str())
        .collect();
    assert_eq!(protocols, ["two-phase", "one-phase"], "newest first: {listing}");

    let browser = Browser::start(1400, 900);
    let shots = Browser::screenshot_dir();
    browser.open(&format!("http://{console}/ui#/transactions"));
    browser.wait_until(
        "the transactions page is drawn",
        "return document.body.dataset.loaded === 'transactions';",
        WAIT,
    );
    browser.wait_for_text(&id, WAIT);
    browser.show_page(&format!("#/txn/{id}"), "txn", WAIT);
    let table = browser.text_of("#branch-steps");
    assert!(table.contains("shard-1") && table.contains("shard-2"), "{table}");
    assert!(!table.contains("not yet"), "every step of a committed transfer happened: {table}");
    browser.screenshot(&shots.join("coordinator-transaction.png"));

    // Pause shard-2: the next transfer's branch at shard-1 prepares and waits.
    signal(nodes[2].0.id(), "-STOP");
    let waiting = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["transfer", "--from", "shard-1:1", "--to", "shard-2:2", "--amount", "5"])
        .args(["--coordinator", &coordinator])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("a transfer");
    let in_doubt = || get(console, "/v1/transactions?in_doubt=true");
    wait_until("shard-1's branch is in doubt", || {
        in_doubt()["transactions"].as_array().is_some_and(|t| t.len() == 1)
    });
    let first = in_doubt();
    let branch = &first["transactions"][0]["branches"][0];
    assert_eq!(branch["database"], "shard-1", "{first}");
    assert_eq!(branch["state"], "prepared", "{first}");
    browser.show_page("#/in-doubt", "in-doubt", WAIT);
    browser.wait_for_text("shard-1", WAIT);
    assert_eq!(
        browser.run("return document.querySelectorAll('.resolve-commit').length;"),
        serde_json::json!(0),
        "nobody resolves a shard's branch by hand"
    );
    std::thread::sleep(Duration::from_millis(1_200));
    let later = in_doubt();
    let age = |v: &Value| v["transactions"][0]["age_ms"].as_u64().expect("age");
    assert!(age(&later) >= age(&first) + 1_000, "the age grows: {first} then {later}");
    browser.show_page("#/in-doubt", "in-doubt", WAIT);
    browser.screenshot(&shots.join("coordinator-in-doubt.png"));

    let cluster = get(console, "/v1/cluster");
    let node = |name: &str| {
        cluster["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {cluster}"))
    };
    assert_eq!(node("shard-1")["in_doubt_branches"], 1.0, "{cluster}");
    assert_eq!(node("shard-2")["up"], false, "a paused shard does not answer: {cluster}");
    assert_eq!(node("coordinator")["up"], true, "{cluster}");
    assert!(cluster["log_files"].as_array().is_some_and(|f| !f.is_empty()), "{cluster}");
    browser.show_page("#/cluster", "cluster", WAIT);
    assert_eq!(browser.run("return document.querySelectorAll('#nodes tbody tr').length;"), 3);
    browser.screenshot(&shots.join("coordinator-cluster.png"));

    // Resumed, shard-2 votes and the transfer ends; nothing stays in doubt. Usually it
    // commits. But shard-1, in doubt, also asked its peer shard-2 (cooperative termination):
    // if shard-2 reads that question before the PREPARE, it has never voted, so it aborts on
    // its own (durably) and then votes NO — the coordinator aborts. Both are correct; a split
    // never is.
    signal(nodes[2].0.id(), "-CONT");
    let outcome = waiting.wait_with_output().expect("the transfer's answer");
    let paused_aborted = !outcome.status.success();
    if paused_aborted {
        let id = text(&outcome).split_whitespace().next().unwrap_or_default().to_string();
        let detail = get(console, &format!("/v1/transactions/{id}"));
        assert_eq!(detail["state"], "aborted", "{}\n{detail}", text(&outcome));
        assert_eq!(detail["reason"], "voted-no", "{detail}");
        let shard_2 = detail["branch_steps"]
            .as_array()
            .and_then(|steps| steps.iter().find(|s| s["database"] == "shard-2"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(shard_2["vote"], "no", "shard-2 refused after the inquiry: {detail}");
    }
    wait_until("nothing is in doubt", || {
        in_doubt()["transactions"].as_array().is_some_and(Vec::is_empty)
    });
    browser.show_page("#/in-doubt", "in-doubt", WAIT);
    browser.wait_for_text("Nothing in doubt.", WAIT);

    // An overdraft: shard-1 votes NO; the listing says why it aborted.
    let overdraft =
        run(&["transfer", "--from", "shard-1:1", "--to", "shard-2:2", "--amount", "500"]);
    assert_eq!(overdraft.status.code(), Some(1), "{}", text(&overdraft));
    let aborted = get(console, "/v1/transactions?recent=true&state=aborted");
    assert_eq!(aborted["transactions"][0]["reason"], "voted-no", "{aborted}");
    let (_, metrics) =
        concord_http::request(console, "GET", "/metrics", None, Duration::from_secs(5))
            .expect("metrics");
    let refusals = 1 + u8::from(paused_aborted);
    assert!(metrics.contains(&format!("reason=\"voted-no\"}} {refusals}")), "{metrics}");

    // One more commit now, so a sample taken from here on holds one whatever the earlier
    // samples caught (on a loaded machine the sampler may have run late around the first).
    let again = run(&["transfer", "--from", "shard-2:2", "--to", "shard-1:1", "--amount", "1"]);
    assert!(again.status.success(), "{}", text(&again));
    wait_until("the charts have a sample with the commits", || {
        get(console, "/v1/history")["samples"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["values"]["committed_per_s"].as_f64() > Some(0.0)))
    });
    browser.show_page("#/charts", "charts", WAIT);
    assert_eq!(browser.run("return document.querySelectorAll('#charts .chart').length;"), 5);
    browser.show_page("#/transactions", "transactions", WAIT);
    browser.screenshot(&shots.join("coordinator-transactions.png"));

    // Bad input is refused by name; the console only reads.
    for (path, says) in [
        ("/v1/transactions?state=bogus", "state"),
        ("/v1/transactions?database=shard-9", "shard-9"),
        ("/v1/transactions/not-an-id", "not a transaction id"),
        ("/v1/transactions?in_doubt=true&limit=3", "no other parameter"),
    ] {
        let (status, body) =
            concord_http::request(console, "GET", path, None, Duration::from_secs(5)).expect(path);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(says), "{path}: {body}");
    }
    let (status, _) = concord_http::request(
        console,
        "POST",
        &format!("/v1/transactions/{id}/resolve"),
        Some("{}"),
        Duration::from_secs(5),
    )
    .expect("a POST");
    assert_eq!(status, 405);
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
