//! PostgreSQL and MariaDB as the database coordinator's tests see them: statements through
//! `psql` and `mariadb`, a test's tables, and the branches it left prepared.

use std::process::Command;

pub fn run_tool(program: &str, args: &[&str]) -> String {
    let out =
        Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn psql(sql: &str) -> String {
    run_tool("psql", &["-h", "127.0.0.1", "-U", "postgres", "-d", "concord_test", "-Atqc", sql])
}

pub fn maria(sql: &str) -> String {
    run_tool(
        "mariadb",
        &["-h", "127.0.0.1", "-P", "3306", "-uroot", "-N", "-B", "concord_test", "-e", sql],
    )
}

/// Cluster `cluster`'s prepared branches: (PostgreSQL gids, MariaDB gids).
pub fn prepared(cluster: &str) -> (Vec<String>, Vec<String>) {
    let prefix = format!("concord:{cluster}:");
    let pg =
        psql(&format!("SELECT gid FROM pg_prepared_xacts WHERE gid LIKE '{prefix}%' ORDER BY gid"));
    let my = maria("XA RECOVER");
    let lines = |text: &str| -> Vec<String> {
        text.lines().filter(|l| !l.is_empty()).map(str::to_string).collect()
    };
    let my: Vec<String> = lines(&my)
        .into_iter()
        .filter_map(|row| row.split('\t').nth(3).map(str::to_string))
        .filter(|gid| gid.starts_with(&prefix))
        .collect();
    (lines(&pg), my)
}

/// Rolls back what an earlier, interrupted run of cluster `cluster` left prepared (it would
/// hold locks on the tables), and makes `table` afresh in both databases: accounts 1 and 2,
/// 100 each, never below 0.
pub fn fresh_accounts(cluster: &str, table: &str) {
    let (pg, my) = prepared(cluster);
    for gid in pg {
        psql(&format!("ROLLBACK PREPARED '{gid}'"));
    }
    for gid in my {
        maria(&format!("XA ROLLBACK '{gid}'"));
    }
    psql(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0)); INSERT INTO {table} VALUES (1, 100), (2, 100);"
    ));
    maria(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY, balance bigint NOT NULL, CHECK (balance >= 0)) ENGINE=InnoDB; INSERT INTO {table} VALUES (1, 100), (2, 100);"
    ));
}

/// (PostgreSQL account 1, MariaDB account 2) of `table`.
pub fn balances(table: &str) -> (i64, i64) {
    let pg = psql(&format!("SELECT balance FROM {table} WHERE id = 1"));
    let my = maria(&format!("SELECT balance FROM {table} WHERE id = 2"));
    (pg.parse().expect("pg balance"), my.parse().expect("maria balance"))
}

/// `concord db exec` arguments of a transfer: debit PostgreSQL's account 1 and credit
/// MariaDB's account 2 of `table` (a negative amount moves money the other way).
pub fn transfer_args(table: &str, amount: i64) -> Vec<String> {
    vec![
        "db".into(),
        "exec".into(),
        "--json".into(),
        format!("ledger=UPDATE {table} SET balance = balance - ({amount}) WHERE id = 1"),
        format!("wallet=UPDATE {table} SET balance = balance + ({amount}) WHERE id = 2"),
    ]
}

/// The `[[database]]` entries of the tests' `databases.toml`: `ledger` in PostgreSQL,
/// `wallet` in MariaDB.
pub const LEDGER_AND_WALLET: &str = r#"[[database]]
name = "ledger"
kind = "postgres"
url = "host=127.0.0.1 user=postgres dbname=concord_test"
[[database]]
name = "wallet"
kind = "mariadb"
url = "mysql://root@127.0.0.1:3306/concord_test"
"#;

/// Waits until `done`, for at most a minute.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("timed out waiting until {what}");
}

/// A `concord db serve` process with its output in a file; killed (SIGKILL) when dropped.
pub struct Serving {
    pub child: Option<std::process::Child>,
    pub log: std::path::PathBuf,
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Serving {
    /// Starts `command` with its stdout and stderr in `log`, and waits until it is ready.
    pub fn start(command: &mut Command, log: std::path::PathBuf) -> Serving {
        let out = std::fs::File::create(&log).expect("log file");
        let child = command
            .stdout(std::process::Stdio::from(out.try_clone().expect("clone log")))
            .stderr(std::process::Stdio::from(out))
            .spawn()
            .expect("start concord db serve");
        let serving = Serving { child: Some(child), log };
        serving.wait_for("concord: ready");
        serving
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_for(&self, text: &str) {
        wait_until(&format!("{} prints `{text}`", self.log.display()), || {
            self.output().contains(text)
        });
    }

    /// SIGKILL: no destructor, no flush, no goodbye.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("a running process");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }
}
