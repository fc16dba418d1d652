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
