//! The database coordinator against the real servers: a transfer that debits PostgreSQL and
//! credits MariaDB, with the coordinator killed (SIGKILL) at the protocol's worst moments, a
//! database restarted under a prepared branch, orphans, a hand-made heuristic rollback, and the
//! operator tools. Every test ends with none of its branches left prepared in either database.
//!
//! Needs PostgreSQL and MariaDB on their standard loopback ports; `scripts/setup-databases.sh`
//! (run by the first test) starts them and sets `max_prepared_transactions`. Without them the
//! tests skip loudly — except under `CI=true`, where they fail.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};

use concord_testkit::servers_ready;

mod common;
use common::databases::{maria, prepared, psql, run_tool, wait_until, Serving as Server};

/// The tests share two databases and one restarts PostgreSQL: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn databases_ready() -> bool {
    servers_ready(&[concord_testkit::Server::Databases], "the database participant tests")
}

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("bound").port()
}

/// One test's world: its own cluster name (so its gids are its own), node id, tables, port.
struct World {
    cluster: String,
    node_id: u32,
    table: String,
    dir: PathBuf,
    port: u16,
    interval_ms: u64,
    /// Appended to the configuration (tokens, say).
    extra: String,
}

impl World {
    /// `node` tells the tests apart; the node id also differs per run, because gids are never
    /// reused: a marker row of an earlier run's `1.1@nID` would refuse this run's.
    fn new(name: &str, node: u32) -> World {
        let node_id = 100_000 + (std::process::id() % 10_000) * 16 + node;
        let cluster = format!("t-{name}");
        let table = format!("acct_{}", name.replace('-', "_"));
        let dir = std::env::temp_dir().join(format!("concord-db-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        common::databases::fresh_accounts(&cluster, &table);
        World {
            cluster,
            node_id,
            table,
            dir,
            port: free_port(),
            interval_ms: 300,
            extra: String::new(),
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn start(&self, fault: Option<&str>) -> Server {
        let config = self.dir.join("databases.toml");
        std::fs::write(
            &config,
            format!(
                r#"cluster = "{}"
node_id = {}
listen = "{}"
{}[recovery]
interval_ms = {}
[timeouts]
statement_ms = 2000
{}"#,
                self.cluster,
                self.node_id,
                self.address(),
                common::databases::LEDGER_AND_WALLET,
                self.interval_ms,
                self.extra
            ),
        )
        .expect("write config");
        let starts = std::fs::read_dir(&self.dir).map_or(0, Iterator::count);
        let log = self.dir.join(format!("serve-{starts}.log"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_concord"));
        command
            .args(["db", "serve", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(self.dir.join("data"));
        if let Some(fault) = fault {
            command.args(["--fault", fault]);
        }
        Server::start(&mut command, log)
    }

    fn resume(&self) {
        std::fs::write(self.dir.join("data").join("RESUME"), b"").expect("resume file");
    }

    fn concord(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_concord"))
            .args(args)
            .args(["--db", &self.address()])
            .output()
            .expect("run concord")
    }

    /// Debit PostgreSQL's account 1 and credit MariaDB's account 2 (a negative amount moves
    /// money the other way).
    fn transfer_args(&self, amount: i64) -> Vec<String> {
        common::databases::transfer_args(&self.table, amount)
    }

    fn transfer(&self, amount: i64) -> serde_json::Value {
        let args = self.transfer_args(amount);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.concord(&args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "db exec: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    fn spawn_transfer(&self, amount: i64) -> Child {
        Command::new(env!("CARGO_BIN_EXE_concord"))
            .args(self.transfer_args(amount))
            .args(["--db", &self.address()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run concord db exec")
    }

    /// (PostgreSQL account 1, MariaDB account 2).
    fn balances(&self) -> (i64, i64) {
        common::databases::balances(&self.table)
    }

    /// This test's prepared branches: (PostgreSQL gids, MariaDB gids).
    fn prepared(&self) -> (Vec<String>, Vec<String>) {
        prepared(&self.cluster)
    }

    fn assert_nothing_prepared(&self) {
        wait_until("no branch of this test is prepared in either database", || {
            self.prepared() == (vec![], vec![])
        });
    }

    fn metric(&self, name: &str) -> f64 {
        let out = Command::new("curl")
            .args(["-s", &format!("http://{}/metrics", self.address())])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn a_transfer_commits_in_both_and_a_no_vote_on_either_side_rolls_back_both() {
    if !databases_ready() {
        return;
    }
    let _serial = serial();
    let world = World::new("happy", 1);
    let _server = world.start(None);

    let done = world.transfer(30);
    assert_eq!(done["state"], "committed", "{done}");
    assert_eq!(world.balances(), (70, 130));

    // PostgreSQL's CHECK refuses a negative balance: its branch votes NO.
    let refused = world.transfer(1_000);
    assert_eq!(refused["state"], "aborted", "{refused}");
    assert!(refused["reason"].as_str().unwrap().contains("ledger"), "{refused}");
    assert_eq!(world.balances(), (70, 130), "nothing of the refused transfer applied");

    // MariaDB's CHECK refuses the other way round.
    let refused = world.transfer(-1_000);
    assert_eq!(refused["state"], "aborted", "{refused}");
    assert!(refused["reason"].as_str().unwrap().contains("wallet"), "{refused}");
    assert_eq!(world.balances(), (70, 130));

    assert_eq!(
        world.metric("concord_db_transactions_total{protocol=\"2pc\",outcome=\"committed\"}"),
        1.0
    );
    assert_eq!(
        world.metric("concord_db_transactions_total{protocol=\"2pc\",outcome=\"aborted\"}"),
        2.0
    );
    world.assert_nothing_prepared();
}

#[test]
fn a_coordinator_killed_after_prepare_rolls_both_back_on_restart() {
    if !databases_ready() {
        return;
    }
    let _serial = serial();
    let world = World::new("kill-prepared", 2);
    let mut server = world.start(Some("pause-after-prepare"));
    let mut client = world.spawn_transfer(25);
    server.wait_for("paused AfterPrepare");
    let (pg, my) = world.prepared();
    assert_eq!((pg.len(), my.len()), (1, 1), "both branches prepared before the kill");
    server.kill();
    let _ = client.wait();

    let _restarted = world.start(None);
    world.assert_nothing_prepared();
    assert_eq!(world.balances(), (100, 100), "presumed abort: nothing applied");
    let txn = pg[0].split(':').nth(2).unwrap().to_string();
    let shown = stdout(&world.concord(&["txn", "show", &txn, "--json"]));
    assert!(shown.contains("\"state\":\"aborted\""), "{shown}");
}

#[test]
fn a_coordinator_killed_after_the_decision_commits_both_on_restart() {
    if !databases_ready() {
        return;
    }
    let _serial = serial();
    let world = World::new("kill-decided", 3);
    let mut server = world.start(Some("pause-after-decision"));
    let mut client = world.spawn_transfer(25);
    server.wait_for("paused AfterDecision");
    let (pg, my) = world.prepared();
    assert_eq!((pg.len(), my.len()), (1, 1));
    assert_eq!(world.balances(), (100, 100), "nothing committed before the kill");
    server.kill();
    let _ = client.wait();

    let restarted = world.start(None);
    world.assert_nothing_prepared();
    assert_eq!(world.balances(), (75, 125), "the logged COMMIT is driven to completion");
    let txn = pg[0].split(':').nth(2).unwrap().to_string();
    let shown = stdout(&world.concord(&["txn", "show", &txn, "--json"]));
    assert!(shown.contains("\"state\":\"committed\""), "{shown}");
    assert!(restarted.output().contains("recovery: commit"), "{}", restarted.output());
}

#[test]
fn a_prepared_branch_survives_a_database_restart_and_is_committed() {
    if !databases_ready() {
        return;
    }
    let _serial = serial();
    let world = World::new("db-restart", 4);
    let server = world.start(Some("pause-after-decision"));
    let client = world.spawn_transfer(10);
    server.wait_for("paused AfterDecision");
    let version = run_tool("bash", &["-c", "ls /etc/postgresql | sort -V | tail -1"]);
    run_tool("pg_ctlcluster", &["--skip-systemctl-redirect", &version, "main", "restart"]);
    wait_until("PostgreSQL is back", || {
        Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "concord_test", "-Atqc", "select 1"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert_eq!(world.prepared().0.len(), 1, "the prepared branch survived the restart");
    world.resume();
    let out = client.wait_with_output().expect("client");
    let answer = stdout(&out);
    assert!(
        answer.contains("\"state\":\"committed\""),
        "{answer}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    world.assert_nothing_prepared();
    assert_eq!(world.balances(), (90, 110));
    drop(server);
}

#[test]
fn orphans_of_an_older_epoch_are_rolled_back_and_other_coordinators_branches_left_alone() {
    if !databases_ready() {
        return;
    }
    let _serial = serial();
    let mut world = World::new("orphan", 5);
    world.interval_ms = 600_000; // only the start pass and explicit `concord recover` act
    world.start(None).kill(); // epoch 1 is used up
    let t = &world.table;
    let n = world.node_id;
    let ours = format!("concord:{}:1.77@n{n}:0", world.cluster);
    let ours_maria = format!("concord:{}:1.77@n{n}:1", world.cluster);
    let foreign = format!("concord:{}:1.5@n{}:0", world.cluster, n + 1);
    psql(&format!(
        "BEGIN; UPDATE {t} SET balance = balance - 1 WHERE id = 1; PREPARE TRANSACTION '{ours}';"
    ));
    psql(&format!("BEGIN; UPDATE {t} SET balance = balance - 1 WHERE id = 2; PREPARE TRANSACTION '{foreign}';"));
    maria(&format!(
        "XA START '{ours_maria}'; UPDATE {t} SET balance = balance + 1 WHERE id = 2; XA END '{ours_maria}'; XA PREPARE '{ours_maria}';"
    ));

    let server = world.start(None); // epoch 2: epoch 1's undecided branches are presumed aborted
    wait_until("the orphans are rolled back", || {
        world.prepared() == (vec![foreign.clone()], vec![])
    });
    assert!(server.output().contains(&format!("rollback {ours}")), "{}", server.output());
    assert_eq!(world.balances(), (100, 100));

    // Another orphan appears while the coordinator runs: dry run first, then for real.
    let late = format!("concord:{}:1.78@n{n}:0", world.cluster);
    psql(&format!(
        "BEGIN; UPDATE {t} SET balance = balance - 1 WHERE id = 1; PREPARE TRANSACTION '{late}';"
    ));
    let dry = stdout(&world.concord(&["recover", "--dry-run"]));
    assert!(dry.contains("dry run") && dry.contains(&format!("rollback {late}")), "{dry}");
    assert!(!dry.contains(&foreign), "another coordinator's branch is not even planned: {dry}");
    assert!(world.prepared().0.contains(&late), "a dry run changes nothing");
    let done = stdout(&world.concord(&["recover"]));
    assert!(done.contains(&format!("rollback {late}")) && done.contains("done"), "{done}");

    assert_eq!(
        world.prepared(),
        (vec![foreign.clone()], vec![]),
        "the other coordinator's branch is untouched"
    );
    psql(&format!("ROLLBACK PREPARED '{foreign}'"));
    world.assert_nothing_prepared();
}

#[test]
fn a_hand_made_rollback_after_a_commit_decision_is_reported_as_heuristic() {
    if !databases_ready() {
        return;
    }
    let _serial = serial();
    let world = World::new("heuristic", 7);
    let server = world.start(Some("pause-after-decision"));
    let client = world.spawn_transfer(20);
    server.wait_for("paused AfterDecision");
    let (pg, _) = world.prepared();
    let txn = pg[0].split(':').nth(2).unwrap().to_string();

    // While the coordinator holds the transaction, an operator cannot resolve it.
    let refused = world.concord(&["txn", "resolve", &txn, "--abort"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("running"), "{refused:?}");

    // Someone rolls the PostgreSQL branch back by hand, against the logged COMMIT.
    psql(&format!("ROLLBACK PREPARED '{}'", pg[0]));
    world.resume();
    let answer = stdout(&client.wait_with_output().expect("client"));
    assert!(answer.contains("heuristic-mixed"), "{answer}");
    assert_eq!(world.balances(), (100, 120), "the mixed outcome is what the databases hold");

    let listed = stdout(&world.concord(&["txn", "ls", "--in-doubt", "--heuristic"]));
    assert!(listed.contains(&txn) && listed.contains("heuristic-mixed"), "{listed}");
    let shown = stdout(&world.concord(&["txn", "show", &txn]));
    assert!(shown.contains("HEURISTIC") && shown.contains("ledger"), "{shown}");
    assert_eq!(world.metric("concord_db_heuristic_outcomes_total{cause=\"detected\"}"), 1.0);
    assert_eq!(world.metric("concord_db_heuristic_transactions"), 1.0);

    // The log says COMMIT: resolving to ABORT is refused without --force.
    let refused = world.concord(&["txn", "resolve", &txn, "--abort"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"), "{refused:?}");
    world.assert_nothing_prepared();
}

#[test]
fn an_operator_resolves_an_undecided_branch_only_the_presumed_way_unless_forced() {
    if !databases_ready() {
        return;
    }
    let _serial = serial();
    let mut world = World::new("resolve", 8);
    world.interval_ms = 600_000;
    let server = world.start(None);
    // A branch of this run's epoch that no transaction of its own owns.
    let t = &world.table;
    let health = Command::new("curl")
        .args(["-s", &format!("http://{}/health", world.address())])
        .output()
        .unwrap();
    let health: serde_json::Value = serde_json::from_slice(&health.stdout).unwrap();
    let epoch = health["epoch"].as_u64().unwrap();
    let txn = format!("{epoch}.999@n{}", world.node_id);
    let gid = format!("concord:{}:{txn}:0", world.cluster);
    psql(&format!(
        "BEGIN; UPDATE {t} SET balance = balance - 5 WHERE id = 1; PREPARE TRANSACTION '{gid}';"
    ));

    let listed = stdout(&world.concord(&["txn", "ls", "--in-doubt"]));
    assert!(listed.contains(&txn) && listed.contains("undecided"), "{listed}");
    let refused = world.concord(&["txn", "resolve", &txn, "--commit"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("presumed abort"), "{refused:?}");
    let resolved = world.concord(&["txn", "resolve", &txn, "--abort"]);
    assert!(resolved.status.success(), "{resolved:?}");
    assert!(stdout(&resolved).contains("done"), "{resolved:?}");
    assert_eq!(world.balances(), (100, 100));
    let shown = stdout(&world.concord(&["txn", "show", &txn, "--json"]));
    assert!(shown.contains("\"decided_by\":\"operator\""), "{shown}");
    world.assert_nothing_prepared();
    drop(server);
}

/// With tokens configured, the API serves each role its rights only, runs data statements
/// only (no schema change, no second statement smuggled after a `;`), and writes an audit line
/// naming the operator who resolved a transaction.
#[test]
fn the_api_runs_only_data_statements_and_only_for_the_roles_allowed() {
    if !databases_ready() {
        return;
    }
    let _serial = serial();
    let mut world = World::new("access", 9);
    let mut tokens = Vec::new();
    for (name, role) in [("app", "client"), ("ops", "operator"), ("watch", "monitor")] {
        let file = world.dir.join(format!("{name}.token"));
        let made = Command::new(env!("CARGO_BIN_EXE_concord"))
            .args(["certs", "token", "--name", name, "--role", role, "--out"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        let printed = stdout(&made);
        world.extra.push_str(&printed[printed.find("[[token]]").unwrap()..]);
        tokens.push(file.to_str().unwrap().to_string());
    }
    let (app, ops, watch) = (&tokens[0], &tokens[1], &tokens[2]);
    let server = world.start(None);
    let t = world.table.clone();
    let run = |token: Option<&str>, sql: &str| {
        let mut args =
            vec!["db".to_string(), "exec".into(), "--json".into(), format!("ledger={sql}")];
        if let Some(token) = token {
            args.extend(["--token-file".into(), token.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        world.concord(&args)
    };
    let both = |out: &Output| {
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    let update = format!("UPDATE {t} SET balance = balance - 1 WHERE id = 1");

    let anonymous = run(None, &update);
    assert!(both(&anonymous).contains("no credentials"), "{}", both(&anonymous));
    let monitor = run(Some(watch), &update);
    assert!(both(&monitor).contains("may not"), "{}", both(&monitor));
    let done = run(Some(app), &update);
    assert!(both(&done).contains("committed"), "{}", both(&done));
    assert_eq!(world.balances().0, 99);
    for sql in [
        format!("DROP TABLE {t}"),
        format!("CREATE TABLE {t}_x (id int)"),
        format!("{update}; DROP TABLE {t}"),
        "COMMIT".to_string(),
        format!("COPY {t} TO PROGRAM 'true'"),
    ] {
        let refused = run(Some(app), &sql);
        assert!(!refused.status.success(), "{sql}: {}", both(&refused));
        assert!(!both(&refused).contains("committed"), "{sql}: {}", both(&refused));
    }
    assert_eq!(world.balances().0, 99, "nothing refused ran");
    assert_eq!(psql(&format!("SELECT count(*) FROM {t}")), "2", "the table is still there");

    // Resolving is an operator's, and is audited with its name.
    let txn = format!("1.999@n{}", world.node_id);
    let as_client =
        world.concord(&["txn", "resolve", &txn, "--abort", "--token-file", app.as_str()]);
    assert!(both(&as_client).contains("may not"), "{}", both(&as_client));
    let as_operator =
        world.concord(&["txn", "resolve", &txn, "--abort", "--token-file", ops.as_str()]);
    assert!(!both(&as_operator).contains("may not"), "{}", both(&as_operator));
    server.wait_for(&format!("audit: ops (operator) resolved {txn} as abort"));
    world.assert_nothing_prepared();
    drop(server);
}
