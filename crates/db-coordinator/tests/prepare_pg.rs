//! A PostgreSQL branch votes YES only when `PREPARE TRANSACTION` really prepared it, and a
//! one-phase commit reports COMMIT only when `COMMIT` really committed it. Both statements
//! report success in two cases where nothing the application did is kept: the transaction had
//! already failed (an error the application swallowed), and no transaction is open any more (the
//! application ended it on the branch's connection). Both must end the transaction aborted and
//! leave nothing prepared — on the one-phase path (one database) and on the two-phase path (a
//! second, read-only branch makes it two). Needs PostgreSQL on its standard loopback port
//! (`scripts/setup-databases.sh`, run here); without it the tests skip loudly, except under
//! `CI=true`, where they fail.

use concord_db_coordinator::config::DatabasesConfig;
use concord_db_coordinator::coordinator::Coordinator;
use concord_testkit::{servers_ready, Server};
use tokio_postgres::NoTls;

const URL: &str = "host=127.0.0.1 user=postgres dbname=concord_test";

fn postgres_ready() -> bool {
    servers_ready(&[Server::Databases], "the PostgreSQL prepare tests")
}

/// A name no other run or test uses.
fn unique(test: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{test}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

async fn coordinator(dir: &std::path::Path, cluster: &str) -> std::sync::Arc<Coordinator> {
    let config = DatabasesConfig::parse(&format!(
        "cluster = \"{cluster}\"\nnode_id = 1\nlisten = \"127.0.0.1:7899\"\n\
         [[database]]\nname = \"pg\"\nkind = \"postgres\"\nurl = \"{URL}\"\n\
         [[database]]\nname = \"pg2\"\nkind = \"postgres\"\nurl = \"{URL}\"\n"
    ))
    .expect("a valid config");
    Coordinator::open(&config, dir, None).await.expect("the coordinator opens")
}

async fn psql(sql: &str) -> Vec<tokio_postgres::Row> {
    let (client, connection) = tokio_postgres::connect(URL, NoTls).await.expect("PostgreSQL");
    tokio::spawn(connection);
    client.query(sql, &[]).await.expect(sql)
}

/// Runs `misuse` on a branch that inserted a row into a fresh table, commits through Concord
/// (with `two_phase`, beside a second branch that only reads), and returns the outcome's state
/// and reason, checking that no branch is left prepared.
async fn commit_after(test: &str, misuse: &str, two_phase: bool) -> (String, String, i64) {
    let table = unique(test);
    psql(&format!("CREATE TABLE {table} (id int PRIMARY KEY)")).await;
    let dir = std::env::temp_dir().join(unique("concord-prepare-pg"));
    let cluster = format!("{}{}{}", &test[..3], u8::from(two_phase), std::process::id() % 100_000);
    let coordinator = coordinator(&dir, &cluster).await;
    let databases: &[&str] = if two_phase { &["pg", "pg2"] } else { &["pg"] };
    let mut txn = coordinator.begin(databases).await.expect("begin");
    if two_phase {
        let reader = txn.branch("pg2").expect("the second branch");
        reader.execute("SELECT 1").await.expect("a read");
    }
    let branch = txn.branch("pg").expect("the branch");
    branch.execute(&format!("INSERT INTO {table} VALUES (1)")).await.expect("insert");
    // The application's mistake: an error it ignores, or a statement that ends the transaction.
    let client = branch.postgres().await.expect("begun").expect("a PostgreSQL branch");
    let _ = client.batch_execute(misuse).await;
    let view = txn.commit().await.expect("an outcome");
    // What operators are shown afterwards agrees (one phase logs nothing: the marker tells).
    let shown = coordinator.show(view.txn.parse().expect("a transaction id")).await;
    assert_eq!(shown.state, view.state, "{shown:?}");
    let prepared = psql(&format!(
        "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'concord:{cluster}:%'"
    ))
    .await[0]
        .get::<_, i64>(0);
    let rows = psql(&format!("SELECT count(*) FROM {table}")).await[0].get::<_, i64>(0);
    psql(&format!("DROP TABLE {table}")).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(prepared, 0, "nothing may be left prepared: {view:?}");
    if two_phase && view.state == "committed" {
        let reader = view.branches.iter().find(|b| b.database == "pg2").expect("pg2");
        assert_eq!(reader.state, "read-only", "{view:?}");
    }
    (view.state, view.reason.unwrap_or_default(), rows)
}

#[tokio::test]
async fn a_healthy_branch_commits() {
    if !postgres_ready() {
        return;
    }
    for two_phase in [false, true] {
        let (state, reason, rows) = commit_after("healthy", "SELECT 1", two_phase).await;
        assert_eq!((state.as_str(), rows), ("committed", 1), "{reason}");
    }
}

#[tokio::test]
async fn a_branch_whose_transaction_failed_votes_no() {
    if !postgres_ready() {
        return;
    }
    for two_phase in [false, true] {
        let (state, reason, rows) = commit_after("failed", "SELECT 1/0", two_phase).await;
        assert_eq!(state, "aborted");
        assert!(reason.contains("current transaction is aborted"), "{reason}");
        assert_eq!(rows, 0, "the failed transaction's insert is rolled back");
    }
}

#[tokio::test]
async fn a_branch_whose_transaction_was_ended_outside_concord_votes_no() {
    if !postgres_ready() {
        return;
    }
    for two_phase in [false, true] {
        let (state, reason, rows) = commit_after("ended", "COMMIT", two_phase).await;
        assert_eq!(state, "aborted");
        assert!(reason.contains("no transaction is open"), "{reason}");
        // The application committed its insert itself, outside the protocol: Concord cannot
        // undo that, but it must not report the branch prepared.
        assert_eq!(rows, 1);
    }
}

/// A PostgreSQL branch sends its `BEGIN` with its first statement, in one flight: that
/// statement must still run inside the branch's transaction (unseen by others until the commit,
/// gone with an abort), and a branch that ran nothing must still end cleanly.
#[tokio::test]
async fn the_first_statement_sent_with_begin_is_inside_the_transaction() {
    if !postgres_ready() {
        return;
    }
    let table = unique("first");
    psql(&format!("CREATE TABLE {table} (id int PRIMARY KEY)")).await;
    let dir = std::env::temp_dir().join(unique("concord-first-statement"));
    let cluster = format!("fst{}", std::process::id() % 100_000);
    let coordinator = coordinator(&dir, &cluster).await;
    let count =
        || async { psql(&format!("SELECT count(*) FROM {table}")).await[0].get::<_, i64>(0) };

    let mut txn = coordinator.begin(&["pg"]).await.expect("begin");
    let branch = txn.branch("pg").expect("the branch");
    assert_eq!(branch.execute(&format!("INSERT INTO {table} VALUES (1)")).await, Ok(1));
    assert_eq!(count().await, 0, "an open branch's first write is not committed on its own");
    let view = txn.abort("the test aborts").await;
    assert_eq!(view.state, "aborted");
    assert_eq!(count().await, 0, "the aborted branch's first write is gone");

    // Two branches, each with one statement sent with its BEGIN: both commit together.
    let mut txn = coordinator.begin(&["pg", "pg2"]).await.expect("begin");
    for (name, id) in [("pg", 2), ("pg2", 3)] {
        let branch = txn.branch(name).expect("a branch");
        branch.execute(&format!("INSERT INTO {table} VALUES ({id})")).await.expect("insert");
    }
    assert_eq!(count().await, 0);
    let view = txn.commit().await.expect("an outcome");
    assert_eq!(view.state, "committed", "{view:?}");
    assert_eq!(count().await, 2);

    // Branches that ran nothing: one alone commits (one phase); beside a writer it is read-only.
    let txn = coordinator.begin(&["pg"]).await.expect("begin");
    assert_eq!(txn.commit().await.expect("an outcome").state, "committed");
    let mut txn = coordinator.begin(&["pg", "pg2"]).await.expect("begin");
    let branch = txn.branch("pg").expect("a branch");
    branch.execute(&format!("INSERT INTO {table} VALUES (4)")).await.expect("insert");
    let view = txn.commit().await.expect("an outcome");
    assert_eq!(view.state, "committed", "{view:?}");
    let idle = view.branches.iter().find(|b| b.database == "pg2").expect("pg2");
    assert_eq!(idle.state, "read-only", "{view:?}");
    assert_eq!(count().await, 3);

    psql(&format!("DROP TABLE {table}")).await;
    let _ = std::fs::remove_dir_all(&dir);
}
