//! The web console at `/ui` in a real headless Chromium (scripts/setup-browser.sh), against a
//! running `concord db serve` over PostgreSQL and MariaDB and a `concord saga serve`: a
//! transaction submitted during the test appears with each branch's steps; a coordinator
//! SIGKILLed after prepare shows its branches in doubt with a growing age; a resolve by a
//! monitor is refused and by an operator done; a saga's compensation is on its timeline. Each
//! page's screenshot is saved (`docs/console/`, which the README shows, with
//! `CONCORD_UPDATE_SCREENSHOTS=1`).

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use concord_http::{Request, Response};
use concord_testkit::browser::Browser;
use concord_testkit::{servers_ready, Server};

mod common;
use common::databases::LEDGER_AND_WALLET;

const WAIT: Duration = Duration::from_secs(30);

fn ready(what: &str) -> bool {
    servers_ready(&[Server::Databases, Server::Browser], what)
}

fn screenshots() -> PathBuf {
    Browser::screenshot_dir()
}

fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect(program);
    assert!(out.status.success(), "{program}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn psql(sql: &str) -> String {
    tool("psql", &["-h", "127.0.0.1", "-U", "postgres", "-d", "concord_test", "-tAq", "-c", sql])
}

fn maria(sql: &str) -> String {
    tool("mariadb", &["-h", "127.0.0.1", "-u", "root", "-N", "-B", "concord_test", "-e", sql])
}

fn spare_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("a port").local_addr().expect("bound").port()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `concord db serve` of this test, SIGKILLed when dropped.
struct Coordinator(Child);

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Setup {
    dir: PathBuf,
    address: String,
    cluster: String,
    table: String,
    /// client, operator, monitor
    tokens: [String; 3],
    config: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = std::env::temp_dir().join(format!("concord-console-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let cluster = "t-console".to_string();
        let table = "acct_console".to_string();
        let prefix = format!("concord:{cluster}:");
        for gid in
            psql(&format!("SELECT gid FROM pg_prepared_xacts WHERE gid LIKE '{prefix}%'")).lines()
        {
            psql(&format!("ROLLBACK PREPARED '{gid}'"));
        }
        for row in maria("XA RECOVER").lines() {
            if let Some(gid) = row.split('\t').nth(3).filter(|g| g.starts_with(&prefix)) {
                maria(&format!("XA ROLLBACK '{gid}'"));
            }
        }
        let create = format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY, balance bigint NOT NULL); INSERT INTO {table} VALUES (1, 100), (2, 100);");
        psql(&create);
        maria(&create);
        let mut entries = String::new();
        let mut tokens = Vec::new();
        for (name, role) in [("app", "client"), ("ops", "operator"), ("watch", "monitor")] {
            let file = dir.join(format!("{name}.token"));
            let made = Command::new(env!("CARGO_BIN_EXE_concord"))
                .args(["certs", "token", "--name", name, "--role", role, "--out"])
                .arg(&file)
                .output()
                .expect("concord certs token");
            assert!(made.status.success(), "{made:?}");
            let printed = String::from_utf8_lossy(&made.stdout).to_string();
            entries.push_str(&printed[printed.find("[[token]]").expect("a token entry")..]);
            tokens.push(std::fs::read_to_string(&file).expect("token").trim().to_string());
        }
        let node_id = 300_000 + std::process::id() % 10_000;
        let address = format!("127.0.0.1:{}", spare_port());
        let config = dir.join("databases.toml");
        std::fs::write(
            &config,
            format!(
                r#"cluster = "{cluster}"
node_id = {node_id}
listen = "{address}"
{LEDGER_AND_WALLET}[recovery]
interval_ms = 600000
[timeouts]
statement_ms = 2000
[console]
sample_ms = 300
{entries}"#
            ),
        )
        .expect("config");
        let [app, ops, watch]: [String; 3] = tokens.try_into().expect("three tokens");
        Setup { dir, address, cluster, table, tokens: [app, ops, watch], config }
    }

    fn start(&self, fault: Option<&str>) -> Coordinator {
        let starts = std::fs::read_dir(&self.dir).map_or(0, Iterator::count);
        let log = File::create(self.dir.join(format!("serve-{starts}.log"))).expect("log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_concord"));
        command
            .args(["db", "serve", "--config"])
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.dir.join("data"));
        if let Some(fault) = fault {
            command.args(["--fault", fault]);
        }
        let child = command
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("concord db serve");
        let address: SocketAddr = self.address.parse().expect("address");
        wait_until("the coordinator answers", || {
            concord_http::request(address, "GET", "/health", None, Duration::from_secs(1)).is_ok()
        });
        Coordinator(child)
    }

    fn config_node(&self) -> u64 {
        let text = std::fs::read_to_string(&self.config).expect("config");
        text.lines()
            .find_map(|l| l.strip_prefix("node_id = "))
            .and_then(|n| n.trim().parse().ok())
            .expect("node_id")
    }

    fn transfer_args(&self) -> Vec<String> {
        let t = &self.table;
        vec![
            "db".into(),
            "exec".into(),
            "--json".into(),
            format!("ledger=UPDATE {t} SET balance = balance - 7 WHERE id = 1"),
            format!("wallet=UPDATE {t} SET balance = balance + 7 WHERE id = 2"),
            "--db".into(),
            self.address.clone(),
            "--token-file".into(),
            self.dir.join("app.token").display().to_string(),
        ]
    }

    fn transfer(&self) -> serde_json::Value {
        let out: Output = Command::new(env!("CARGO_BIN_EXE_concord"))
            .args(self.transfer_args())
            .output()
            .expect("concord db exec");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("db exec: {out:?}"))
    }

    fn prepared(&self) -> usize {
        let prefix = format!("concord:{}:", self.cluster);
        let pg =
            psql(&format!("SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE '{prefix}%'"));
        let my = maria("XA RECOVER").lines().filter(|l| l.contains(&prefix)).count();
        pg.parse::<usize>().expect("a count") + my
    }

    fn balances(&self) -> (String, String) {
        let sql = format!("SELECT balance FROM {} WHERE id = 1", self.table);
        let sql2 = format!("SELECT balance FROM {} WHERE id = 2", self.table);
        (psql(&sql), maria(&sql2))
    }
}

/// Types `token` into the console's token box and uses it.
fn use_token(browser: &Browser, token: &str) {
    let script = format!(
        "document.getElementById('token').value = {}; document.getElementById('use-token').click(); return true;",
        serde_json::json!(token)
    );
    browser.run(&script);
}

fn go(browser: &Browser, hash: &str, page: &str) {
    browser.show_page(hash, page, WAIT);
}

/// The age shown for the in-doubt transaction, in seconds.
fn age_shown(browser: &Browser) -> u64 {
    let text = browser.text_of("#in-doubt tbody tr td.age");
    let seconds = text.split_whitespace().next().and_then(|n| n.parse().ok());
    match (seconds, text.contains("min"), text.contains("ms")) {
        (_, _, true) => 0,
        (Some(n), false, false) => n,
        (Some(minutes), true, _) => minutes * 60,
        _ => panic!("no age in `{text}`"),
    }
}

#[test]
fn the_console_shows_each_branch_then_the_in_doubt_ones_and_lets_only_an_operator_resolve() {
    if !ready("the console's browser test") {
        return;
    }
    let setup = Setup::new();
    let [_app, ops, watch] = &setup.tokens;
    let coordinator = setup.start(None);
    let browser = Browser::start(1400, 900);
    browser.open(&format!("http://{}/ui", setup.address));
    browser.wait_for_text("type a token", WAIT);
    use_token(&browser, ops);
    browser.wait_for_text("ops (operator)", WAIT);

    // A transaction submitted now appears with each branch's steps.
    let answer = setup.transfer();
    assert_eq!(answer["state"], "committed", "{answer}");
    let txn = answer["txn"].as_str().expect("a txn id").to_string();
    go(&browser, "#/transactions", "transactions");
    browser.wait_for_text(&txn, WAIT);
    browser.screenshot(&screenshots().join("transactions.png"));
    go(&browser, &format!("#/txn/{txn}"), "txn");
    browser.wait_for_text("Each branch, step by step", WAIT);
    let steps = browser.text_of("#branch-steps");
    for database in ["ledger", "wallet"] {
        let row = browser.text_of(&format!("#branch-steps tr[data-database='{database}']"));
        assert!(row.contains("yes"), "{database} voted: {row}");
        assert!(row.contains("committed"), "{database} is committed in its database: {row}");
        assert_eq!(
            row.matches("+").count(),
            6,
            "prepare sent, prepared, decision logged, sent, applied, acknowledged: {row}\n{steps}"
        );
        assert!(!row.contains("not yet"), "{row}");
    }
    assert!(browser.text_of("#timeline").contains("decision commit logged (durable)"));
    browser.screenshot(&screenshots().join("transaction.png"));

    go(&browser, "#/charts", "charts");
    browser.wait_until(
        "the throughput chart has a line",
        "return document.querySelectorAll('[data-chart=\"Throughput\"] polyline').length > 0;",
        WAIT,
    );
    browser.screenshot(&screenshots().join("charts.png"));
    go(&browser, "#/cluster", "cluster");
    let cluster = browser.text();
    assert!(
        cluster.contains("ledger") && cluster.contains("wallet") && cluster.contains("log bytes"),
        "{cluster}"
    );
    browser.screenshot(&screenshots().join("cluster.png"));
    drop(coordinator);

    // A coordinator stopped after both branches prepared: its branches are in doubt, older at
    // each look. SIGKILLed and restarted, it rolls them back (no decision was logged).
    let paused = setup.start(Some("pause-after-prepare"));
    let mut client = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(setup.transfer_args())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("concord db exec");
    wait_until("both branches are prepared", || setup.prepared() == 2);
    go(&browser, "#/in-doubt", "in-doubt");
    browser.wait_until(
        "one transaction with two prepared branches is in doubt",
        "return document.querySelectorAll('#in-doubt tbody tr[data-txn]').length === 1 && document.querySelectorAll('#in-doubt .branch').length === 2;",
        WAIT,
    );
    let stuck =
        browser.run("return document.querySelector('#in-doubt tbody tr[data-txn]').dataset.txn;");
    let stuck = stuck.as_str().expect("a txn id").to_string();
    assert!(browser.text_of("#in-doubt").contains("prepared"), "{}", browser.text());
    // The locks each waits with: PostgreSQL names the table (MariaDB does not say).
    let holds = format!("holds RowExclusiveLock on {}", setup.table);
    browser.wait_for_text(&holds, WAIT);
    let first = age_shown(&browser);
    std::thread::sleep(Duration::from_millis(2_500));
    let later = age_shown(&browser);
    assert!(later > first, "the age grows: {first} s, then {later} s");
    browser.screenshot(&screenshots().join("in-doubt.png"));
    drop(paused); // SIGKILL
    let _ = client.kill();
    let _ = client.wait();
    let restarted = setup.start(None);
    go(&browser, "#/in-doubt", "in-doubt");
    browser.wait_for_text("Nothing in doubt.", WAIT);
    go(&browser, &format!("#/txn/{stuck}"), "txn");
    let steps = browser.text_of("#branch-steps");
    assert_eq!(steps.matches("rolled-back").count(), 2, "recovery rolled both back:\n{steps}");
    assert_eq!(setup.prepared(), 0);

    // A branch prepared in this epoch that no transaction owns (a coordinator's crash between
    // PREPARE and its log record leaves one): undecided, presumed abort.
    let epoch = {
        let address: SocketAddr = setup.address.parse().expect("address");
        let (_, health) =
            concord_http::request(address, "GET", "/health", None, Duration::from_secs(5))
                .expect("health");
        let health: serde_json::Value = serde_json::from_str(&health).expect("json");
        health["epoch"].as_u64().expect("an epoch")
    };
    let node = setup.config_node();
    let gid = format!("concord:{}:{epoch}.999@n{node}:1", setup.cluster);
    psql(&format!(
        "BEGIN; UPDATE {} SET balance = balance - 5 WHERE id = 1; PREPARE TRANSACTION '{gid}';",
        setup.table
    ));
    go(&browser, "#/in-doubt", "in-doubt");
    browser.wait_for_text("undecided", WAIT);
    browser.wait_for_text("presumed abort", WAIT);

    // A monitor may look, not resolve.
    use_token(&browser, watch);
    browser.wait_for_text("watch (monitor)", WAIT);
    go(&browser, "#/in-doubt", "in-doubt");
    browser.run("window.confirm = () => true; return true;");
    browser.click("#in-doubt .resolve-abort");
    browser.wait_for_text("refused", WAIT);
    assert!(browser.text().contains("may not"), "{}", browser.text());
    assert_eq!(setup.prepared(), 1, "nothing was resolved");

    // An operator: refused the way the log contradicts, done the presumed way.
    use_token(&browser, ops);
    browser.wait_for_text("ops (operator)", WAIT);
    go(&browser, "#/in-doubt", "in-doubt");
    browser.run("window.confirm = () => true; return true;");
    browser.click("#in-doubt .resolve-commit");
    browser.wait_for_text("refused", WAIT);
    assert!(browser.text().contains("Use --force"), "{}", browser.text());
    assert_eq!(setup.prepared(), 1, "a commit contradicting the log was refused");
    browser.click("#in-doubt .resolve-abort");
    browser.wait_for_text("Nothing in doubt.", WAIT);
    assert_eq!(setup.prepared(), 0);
    assert_eq!(setup.balances(), ("93".to_string(), "107".to_string()), "only the first transfer");
    drop(restarted);
}

/// A step service that declines the action of the step called `declines` (409), so the saga
/// compensates the steps before it.
fn step_service(runtime: &tokio::runtime::Runtime) -> SocketAddr {
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let address = listener.local_addr().expect("address");
    runtime.spawn(concord_http::serve(listener, |request: Request| async move {
        if request.target.starts_with("/decline") {
            Response::error(409, "declined: out of stock")
        } else {
            Response::json(200, &serde_json::json!({ "ok": true }))
        }
    }));
    address
}

#[test]
fn the_console_shows_a_sagas_compensation_on_its_timeline() {
    if !servers_ready(&[Server::Browser], "the console's saga browser test") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let service = step_service(&runtime);
    let dir = std::env::temp_dir().join(format!("concord-console-saga-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let address: SocketAddr = format!("127.0.0.1:{}", spare_port()).parse().expect("address");
    let mut orchestrator = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["saga", "serve", "--listen", &address.to_string(), "--data-dir"])
        .arg(&dir)
        .args(["--step-hosts", &service.to_string(), "--console-sample-ms", "200"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("concord saga serve");
    wait_until("the orchestrator answers", || {
        concord_http::request(address, "GET", "/health", None, Duration::from_secs(1)).is_ok()
    });
    let saga = serde_json::json!({
        "id": "order-42", "name": "checkout", "wait": true, "payload": { "order": 42 },
        "steps": [
            { "name": "reserve-stock", "action": format!("http://{service}/do"), "compensation": format!("http://{service}/undo") },
            { "name": "charge-card", "action": format!("http://{service}/decline"), "compensation": format!("http://{service}/undo") },
        ],
    });
    let (status, body) = concord_http::request(
        address,
        "POST",
        "/v1/sagas",
        Some(&saga.to_string()),
        Duration::from_secs(30),
    )
    .expect("start the saga");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("compensated"), "{body}");

    let browser = Browser::start(1400, 900);
    browser.open(&format!("http://{address}/ui"));
    browser.wait_until(
        "the sagas page is drawn",
        "return document.body.dataset.loaded === 'sagas';",
        WAIT,
    );
    browser.wait_for_text("order-42", WAIT);
    browser.screenshot(&screenshots().join("sagas.png"));
    go(&browser, "#/saga/order-42", "saga");
    let timeline = browser.text_of("#saga-timeline");
    for expected in
        ["reserve-stock — action", "charge-card — action", "409", "reserve-stock — compensation"]
    {
        assert!(timeline.contains(expected), "`{expected}` in the timeline:\n{timeline}");
    }
    assert!(browser.text_of("#saga-state").contains("compensated"));
    browser.screenshot(&screenshots().join("saga.png"));

    // The orchestrator's own cluster and charts pages: where its sagas are kept, its log, the
    // compensated saga and the calls counted.
    go(&browser, "#/cluster", "cluster");
    let cluster = browser.text();
    for expected in ["store", "log", "compensated since start", "availability"] {
        assert!(cluster.contains(expected), "`{expected}` on the cluster page:\n{cluster}");
    }
    assert!(
        browser.run("return document.querySelectorAll('#main table').length;").as_u64() >= Some(2),
        "the instance and its log files:\n{cluster}"
    );
    wait_until("the charts have samples", || {
        let (_, history) =
            concord_http::request(address, "GET", "/v1/history", None, Duration::from_secs(5))
                .expect("history");
        let history: serde_json::Value = serde_json::from_str(&history).expect("json");
        history["samples"].as_array().is_some_and(|s| s.len() >= 2)
    });
    go(&browser, "#/charts", "charts");
    assert_eq!(browser.run("return document.querySelectorAll('#charts .chart').length;"), 4);
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}
