//! One suite of participant behaviours, run against every kind of database Concord drives as a
//! 2PC participant — PostgreSQL, MariaDB and Redis, through the same `Database` interface the
//! coordinator uses — and against the model of them the simulator and the model checker run
//! (`concord_commit::xa::model`). What the coordinator's recovery and heuristic detection rely
//! on:
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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_commit::xa::model;
use concord_participants::config::{DatabaseConfig, Kind};
use concord_participants::database::{
    BranchState, Database, Finish, OnePhase, PreparedBranch, Vote as DbVote,
};
use concord_participants::gid::Gid;
use concord_testkit::{servers_ready, RedisServer, Server, REDIS_DURABLE};
use concord_types::{Decision, NodeId, TxnId, Vote};
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

/// What the suite asks of a participant.
trait Participant {
    async fn ensure_schema(&self);
    /// Opens `gid`, runs `statement` (none: no statement at all) and prepares; `Err`: refused
    /// at the open. A YES keeps the connection that prepared the branch.
    async fn prepare(&self, gid: &Gid, statement: Option<&str>) -> Result<Vote, String>;
    /// Opens `gid`, runs `statement` and commits without PREPARE.
    async fn commit_one_phase(&self, gid: &Gid, statement: &str) -> OnePhase;
    /// On the connection that prepared it if `own` (and it still has one), else by name.
    async fn finish(&self, gid: &Gid, decision: Decision, own: bool) -> Finish;
    async fn state(&self, gid: &Gid) -> BranchState;
    async fn listed(&self, gid: &Gid) -> bool;
    /// The connection that prepared `gid` goes away.
    fn drop_connection(&self, gid: &Gid);
}

/// A real database through the coordinator's `Database`.
struct Real {
    db: Arc<Database>,
    held: Mutex<HashMap<String, PreparedBranch>>,
}

impl Participant for Real {
    async fn ensure_schema(&self) {
        self.db.ensure_schema().await.expect("the marker table");
    }

    async fn prepare(&self, gid: &Gid, statement: Option<&str>) -> Result<Vote, String> {
        let mut branch = self.db.begin(gid).await.map_err(|e| e.to_string())?;
        if let Some(statement) = statement {
            branch.execute(statement).await.expect(statement);
        }
        Ok(match branch.prepare().await {
            DbVote::Yes(prepared) => {
                self.held.lock().unwrap().insert(gid.to_string(), prepared);
                Vote::Yes
            }
            DbVote::ReadOnly => Vote::ReadOnly,
            DbVote::No(_) => Vote::No,
        })
    }

    async fn commit_one_phase(&self, gid: &Gid, statement: &str) -> OnePhase {
        let mut branch = self.db.begin(gid).await.expect("begin");
        branch.execute(statement).await.expect(statement);
        assert!(!branch.may_be_read_only());
        branch.commit_one_phase().await
    }

    async fn finish(&self, gid: &Gid, decision: Decision, own: bool) -> Finish {
        let held = if own { self.held.lock().unwrap().remove(&gid.to_string()) } else { None };
        if let Some(prepared) = held {
            return self.db.finish(prepared, decision).await.expect("finish");
        }
        // MariaDB notices a closed session a moment later, and until then refuses another
        // session the branch (the coordinator retries it at its next pass): retry, bounded.
        let mut tries = 0;
        loop {
            match self.db.finish(PreparedBranch::named(&gid.to_string()), decision).await {
                Err(e) if tries < 100 && e.to_string().contains("still held") => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other.expect("finish by name"),
            }
        }
    }

    async fn state(&self, gid: &Gid) -> BranchState {
        self.db.branch_state(&gid.to_string()).await.expect("branch state")
    }

    async fn listed(&self, gid: &Gid) -> bool {
        let text = gid.to_string();
        let listing = self.db.list_prepared().await.expect("listing");
        let Some(branch) = listing.iter().find(|b| b.gid == text) else { return false };
        // Every branch the suite prepares wrote: where the database tells locks (PostgreSQL
        // its table's, Redis its keys), it holds at least one.
        if let Some(locks) = &branch.locks {
            assert!(!locks.is_empty(), "{text} is prepared after a write but holds no lock");
        }
        true
    }

    fn drop_connection(&self, gid: &Gid) {
        self.held.lock().unwrap().remove(&gid.to_string());
    }
}

/// The simulator's model of a SQL/XA database.
#[derive(Default)]
struct Model(Mutex<model::ResourceManager<String>>);

impl Model {
    /// A plain `SELECT` reads; anything else writes.
    fn writes(statement: &str) -> bool {
        !statement.trim_start().to_ascii_lowercase().starts_with("select")
    }
}

impl Participant for Model {
    async fn ensure_schema(&self) {}

    async fn prepare(&self, gid: &Gid, statement: Option<&str>) -> Result<Vote, String> {
        let mut rm = self.0.lock().unwrap();
        let name = gid.to_string();
        rm.begin(&name)?;
        if let Some(statement) = statement {
            rm.execute(&name, Self::writes(statement))?;
        }
        Ok(rm.prepare(&name, false))
    }

    async fn commit_one_phase(&self, gid: &Gid, statement: &str) -> OnePhase {
        let mut rm = self.0.lock().unwrap();
        let name = gid.to_string();
        rm.begin(&name).expect("begin");
        rm.execute(&name, Self::writes(statement)).expect("open");
        match rm.commit_one_phase(&name, false) {
            Decision::Commit => OnePhase::Committed,
            Decision::Abort => OnePhase::RolledBack("refused".into()),
        }
    }

    async fn finish(&self, gid: &Gid, decision: Decision, _own: bool) -> Finish {
        match self.0.lock().unwrap().finish(&gid.to_string(), decision) {
            model::Finish::Done => Finish::Done,
            model::Finish::NotPrepared => Finish::NotPrepared,
        }
    }

    async fn state(&self, gid: &Gid) -> BranchState {
        match self.0.lock().unwrap().state(&gid.to_string()) {
            model::BranchState::Prepared => BranchState::Prepared,
            model::BranchState::Committed => BranchState::Committed,
            model::BranchState::Absent => BranchState::Absent,
        }
    }

    async fn listed(&self, gid: &Gid) -> bool {
        let name = gid.to_string();
        self.0.lock().unwrap().listed().any(|g| *g == name)
    }

    fn drop_connection(&self, _gid: &Gid) {}
}

/// The suite. `write(n)` is a statement of this kind that writes something new; `read` one
/// that only reads (none: a branch with no statement at all).
async fn conformance(
    p: &impl Participant,
    cluster: &str,
    write: impl Fn(u32) -> String,
    read: Option<&str>,
) {
    p.ensure_schema().await;
    // Commit: listed while prepared, then committed, idempotently.
    let g1 = gid(cluster, 1);
    assert_eq!(p.prepare(&g1, Some(&write(1))).await, Ok(Vote::Yes));
    assert!(p.listed(&g1).await, "a YES branch is listed as prepared");
    assert_eq!(p.state(&g1).await, BranchState::Prepared);
    assert_eq!(p.finish(&g1, Decision::Commit, true).await, Finish::Done);
    assert!(!p.listed(&g1).await, "a committed branch is no longer listed");
    let again = p.finish(&g1, Decision::Commit, false).await;
    assert_eq!(again, Finish::NotPrepared, "a second commit is a no-op");
    assert_eq!(p.state(&g1).await, BranchState::Committed);

    // Rollback: the same, ending rolled back.
    let g2 = gid(cluster, 2);
    assert_eq!(p.prepare(&g2, Some(&write(2))).await, Ok(Vote::Yes));
    assert_eq!(p.finish(&g2, Decision::Abort, true).await, Finish::Done);
    let again = p.finish(&g2, Decision::Abort, false).await;
    assert_eq!(again, Finish::NotPrepared, "a second rollback is a no-op");
    assert_eq!(p.state(&g2).await, BranchState::Absent);
    assert!(!p.listed(&g2).await);

    // Finished by name from a fresh connection, as after a coordinator restart (the
    // preparing connection is gone: MariaDB hands a branch over only then).
    let g3 = gid(cluster, 3);
    assert_eq!(p.prepare(&g3, Some(&write(3))).await, Ok(Vote::Yes));
    p.drop_connection(&g3);
    assert!(p.listed(&g3).await, "a prepared branch outlives its connection");
    assert_eq!(p.finish(&g3, Decision::Commit, false).await, Finish::Done);
    assert_eq!(p.state(&g3).await, BranchState::Committed);

    // Never prepared.
    let g4 = gid(cluster, 4);
    assert_eq!(p.finish(&g4, Decision::Commit, false).await, Finish::NotPrepared);
    assert_eq!(p.state(&g4).await, BranchState::Absent);

    // A finished gid is never prepared again: refused at the open (MariaDB writes its marker
    // row there) or voted NO at the prepare.
    if let Ok(Vote::Yes) = p.prepare(&g1, Some(&write(5))).await {
        let _ = p.finish(&g1, Decision::Abort, true).await;
        panic!("{g1} was prepared a second time");
    }
    assert!(!p.listed(&g1).await);

    // Read-only: nothing prepared, nothing marked.
    let g6 = gid(cluster, 6);
    assert_eq!(p.prepare(&g6, read).await, Ok(Vote::ReadOnly), "a branch that only read");
    assert!(!p.listed(&g6).await);
    assert_eq!(p.state(&g6).await, BranchState::Absent);

    // One phase: committed without PREPARE, and its marker says so.
    let g7 = gid(cluster, 7);
    assert_eq!(p.commit_one_phase(&g7, &write(7)).await, OnePhase::Committed);
    assert!(!p.listed(&g7).await);
    assert_eq!(p.state(&g7).await, BranchState::Committed);
}

fn real(db: Arc<Database>) -> Real {
    Real { db, held: Mutex::new(HashMap::new()) }
}

#[tokio::test]
async fn the_simulators_model_conforms() {
    let model = Model::default();
    conformance(&model, "model", |n| format!("INSERT {n}"), Some("SELECT 1")).await;
    let committed: Vec<u32> = (1..=7)
        .filter(|n| {
            model.0.lock().unwrap().state(&gid("model", *n).to_string())
                == model::BranchState::Committed
        })
        .collect();
    assert_eq!(committed, [1, 3, 7], "the committed branches, and only those");
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
    let db = real(database("pg", Kind::Postgres, PG_URL));
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
    let db = real(database("maria", Kind::Mariadb, MARIA_URL));
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
    let db = real(database("points", Kind::Redis, &url));
    conformance(&db, &cluster("rd"), |n| format!("SET key{n} {n}"), None).await;
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("key*").query(&mut conn).unwrap();
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, ["key1", "key3", "key7"], "the committed branches' writes, and only theirs");
    drop(server);
    let _ = std::fs::remove_dir_all(&server_dir);
}
