//! One suite of participant behaviours, run against every kind of database Concord drives as a
//! 2PC participant — PostgreSQL, MariaDB and Redis — through the same `Database` interface the
//! coordinator uses. What the coordinator's recovery and heuristic detection rely on:
//!
//! * a YES branch is listed as prepared until it is finished, and only then;
//! * commit and rollback are idempotent: the second finds the branch not prepared;
//! * after the fact, a branch reads as committed or as rolled back (never prepared);
//! * a branch is finished by name from a fresh connection (a coordinator after a restart);
//! * a gid that was never prepared finishes as "not prepared" and reads as rolled back;
//! * a gid is never prepared twice: reusing a finished one votes NO;
//! * a branch that wrote nothing votes READ-ONLY and leaves nothing prepared or marked;
//! * a one-phase commit (the transaction's only branch, no PREPARE) applies and reads as
//!   committed, so a lost answer can be settled from the marker.
//!
//! Needs the local PostgreSQL and MariaDB (`scripts/setup-databases.sh`) and `redis-server`
//! (`scripts/setup-redis.sh`); without them the tests skip loudly, except under `CI=true`.

use std::sync::Arc;
use std::time::Duration;

use concord_participants::config::{DatabaseConfig, Kind};
use concord_participants::database::{
    BranchState, Database, Finish, OnePhase, PreparedBranch, Vote,
};
use concord_participants::gid::Gid;
use concord_testkit::{servers_ready, RedisServer, Server, REDIS_DURABLE};
use concord_types::{Decision, NodeId, TxnId};
use mysql_async::prelude::Queryable;

const PG_URL: &str = "host=127.0.0.1 user=postgres dbname=concord_test";
const MARIA_URL: &str = "mysql://root@127.0.0.1:3306/concord_test";

/// A cluster name (part of every gid) no other run uses.
fn cluster(kind: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{kind}{}x{}", std::process::id() % 100_000, nanos % 100_000)
}

fn gid(cluster: &str, sequence: u32) -> Gid {
    Gid::new(cluster, TxnId { coordinator: NodeId(5), epoch: 1, sequence }, 0)
}

async fn prepare(db: &Arc<Database>, gid: &Gid, statement: &str) -> Vote {
    let mut branch = db.begin(gid).await.expect("begin");
    branch.execute(statement).await.expect(statement);
    branch.prepare().await
}

fn yes(vote: Vote) -> PreparedBranch {
    match vote {
        Vote::Yes(branch) => branch,
        Vote::ReadOnly => panic!("voted READ-ONLY"),
        Vote::No(why) => panic!("voted NO: {why}"),
    }
}

async fn listed(db: &Database, gid: &Gid) -> bool {
    let text = gid.to_string();
    db.list_prepared().await.expect("listing").iter().any(|b| b.gid == text)
}

/// The suite. `write(n)` is a statement of this kind that writes something new; `read` one
/// that only reads (none: a branch with no statement at all).
async fn conformance(
    db: &Arc<Database>,
    cluster: &str,
    write: impl Fn(u32) -> String,
    read: Option<&str>,
) {
    db.ensure_schema().await.expect("the marker table");
    // Commit: listed while prepared, then committed, idempotently.
    let g1 = gid(cluster, 1);
    let branch = yes(prepare(db, &g1, &write(1)).await);
    assert!(listed(db, &g1).await, "a YES branch is listed as prepared");
    assert_eq!(db.branch_state(&g1.to_string()).await.unwrap(), BranchState::Prepared);
    assert_eq!(db.finish(branch, Decision::Commit).await.unwrap(), Finish::Done);
    assert!(!listed(db, &g1).await, "a committed branch is no longer listed");
    let again = db.finish(PreparedBranch::named(&g1.to_string()), Decision::Commit).await;
    assert_eq!(again.unwrap(), Finish::NotPrepared, "a second commit is a no-op");
    assert_eq!(db.branch_state(&g1.to_string()).await.unwrap(), BranchState::Committed);

    // Rollback: the same, ending rolled back.
    let g2 = gid(cluster, 2);
    let branch = yes(prepare(db, &g2, &write(2)).await);
    assert_eq!(db.finish(branch, Decision::Abort).await.unwrap(), Finish::Done);
    let again = db.finish(PreparedBranch::named(&g2.to_string()), Decision::Abort).await;
    assert_eq!(again.unwrap(), Finish::NotPrepared, "a second rollback is a no-op");
    assert_eq!(db.branch_state(&g2.to_string()).await.unwrap(), BranchState::Absent);
    assert!(!listed(db, &g2).await);

    // Finished by name from a fresh connection, as after a coordinator restart (the
    // preparing connection is gone: MariaDB hands a branch over only then).
    let g3 = gid(cluster, 3);
    drop(yes(prepare(db, &g3, &write(3)).await));
    assert!(listed(db, &g3).await, "a prepared branch outlives its connection");
    // MariaDB notices the closed session a moment later, and until then refuses another
    // session the branch (the coordinator retries it at its next pass): retry, bounded.
    let mut tries = 0;
    let by_name = loop {
        match db.finish(PreparedBranch::named(&g3.to_string()), Decision::Commit).await {
            Err(e) if tries < 100 && e.to_string().contains("still held") => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => break other,
        }
    };
    assert_eq!(by_name.unwrap(), Finish::Done);
    assert_eq!(db.branch_state(&g3.to_string()).await.unwrap(), BranchState::Committed);

    // Never prepared.
    let g4 = gid(cluster, 4);
    let never = db.finish(PreparedBranch::named(&g4.to_string()), Decision::Commit).await;
    assert_eq!(never.unwrap(), Finish::NotPrepared);
    assert_eq!(db.branch_state(&g4.to_string()).await.unwrap(), BranchState::Absent);

    // A finished gid is never prepared again: refused at the begin (MariaDB writes its marker
    // row there) or voted NO at the prepare.
    if let Ok(mut branch) = db.begin(&g1).await {
        branch.execute(&write(5)).await.expect("a fresh write");
        if let Vote::Yes(branch) = branch.prepare().await {
            let _ = db.finish(branch, Decision::Abort).await;
            panic!("{g1} was prepared a second time");
        }
    }
    assert!(!listed(db, &g1).await);

    // Read-only: nothing prepared, nothing marked.
    let g6 = gid(cluster, 6);
    let mut branch = db.begin(&g6).await.expect("begin");
    if let Some(read) = read {
        branch.execute(read).await.expect(read);
    }
    assert!(branch.may_be_read_only());
    assert!(matches!(branch.prepare().await, Vote::ReadOnly), "a branch that only read");
    assert!(!listed(db, &g6).await);
    assert_eq!(db.branch_state(&g6.to_string()).await.unwrap(), BranchState::Absent);

    // One phase: committed without PREPARE, and its marker says so.
    let g7 = gid(cluster, 7);
    let mut branch = db.begin(&g7).await.expect("begin");
    branch.execute(&write(7)).await.expect("a write");
    assert!(!branch.may_be_read_only());
    assert_eq!(branch.commit_one_phase().await, OnePhase::Committed);
    assert!(!listed(db, &g7).await);
    assert_eq!(db.branch_state(&g7.to_string()).await.unwrap(), BranchState::Committed);
}

fn database(name: &str, kind: Kind, url: &str) -> Arc<Database> {
    let config = DatabaseConfig { name: name.into(), kind, url: url.into(), schema_changes: false };
    Arc::new(Database::new(&config, Duration::from_secs(5)).expect("a database"))
}

#[tokio::test]
async fn postgres_conforms() {
    if !servers_ready(&[Server::Databases], "the PostgreSQL conformance suite") {
        return;
    }
    let table = cluster("conformance_pg");
    let (client, connection) =
        tokio_postgres::connect(PG_URL, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(&format!("CREATE TABLE {table} (n int PRIMARY KEY)")).await.unwrap();
    let db = database("pg", Kind::Postgres, PG_URL);
    let read = format!("SELECT count(*) FROM {table}");
    let write = |n| format!("INSERT INTO {table} VALUES ({n})");
    conformance(&db, &cluster("pg"), write, Some(&read)).await;
    let rows: i64 =
        client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0);
    assert_eq!(rows, 3, "the three committed branches' rows, and only theirs");
    client.batch_execute(&format!("DROP TABLE {table}")).await.unwrap();
}

#[tokio::test]
async fn mariadb_conforms() {
    if !servers_ready(&[Server::Databases], "the MariaDB conformance suite") {
        return;
    }
    let table = cluster("conformance_maria");
    let pool = mysql_async::Pool::new(MARIA_URL);
    let mut conn = pool.get_conn().await.unwrap();
    conn.query_drop(format!("CREATE TABLE {table} (n int PRIMARY KEY) ENGINE=InnoDB"))
        .await
        .unwrap();
    let db = database("maria", Kind::Mariadb, MARIA_URL);
    let read = format!("SELECT count(*) FROM {table}");
    let write = |n| format!("INSERT INTO {table} VALUES ({n})");
    conformance(&db, &cluster("my"), write, Some(&read)).await;
    let rows: Option<i64> =
        conn.query_first(format!("SELECT count(*) FROM {table}")).await.unwrap();
    assert_eq!(rows, Some(3), "the three committed branches' rows, and only theirs");
    conn.query_drop(format!("DROP TABLE {table}")).await.unwrap();
    drop(conn);
    pool.disconnect().await.unwrap();
}

#[tokio::test]
async fn redis_conforms() {
    if !servers_ready(&[Server::Redis], "the Redis conformance suite") {
        return;
    }
    let server = RedisServer::start("conformance", &REDIS_DURABLE);
    let (url, server_dir) = (server.url(), server.dir.clone());
    let client = redis::Client::open(url.as_str()).unwrap();
    let db = database("points", Kind::Redis, &url);
    conformance(&db, &cluster("rd"), |n| format!("SET key{n} {n}"), None).await;
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("key*").query(&mut conn).unwrap();
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, ["key1", "key3", "key7"], "the committed branches' writes, and only theirs");
    drop(server);
    let _ = std::fs::remove_dir_all(&server_dir);
}
