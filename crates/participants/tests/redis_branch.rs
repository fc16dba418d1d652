//! Redis as a participant, against real `redis-server`s this test starts (AOF on, a spare port,
//! a directory of its own): a prepare is invisible until the commit and holds off other
//! branches on its keys; commit and rollback are idempotent; a write that no longer applies
//! at commit leaves the branch prepared instead of applying half; a prepared branch survives
//! a kill -9 of Redis; and a Redis that cannot keep a prepare votes NO saying why. (A transfer
//! across PostgreSQL and Redis through the coordinator: `examples/transfer`, run by
//! `cli/tests/transfer_example.rs`.) `redis-server` is made ready by `scripts/setup-redis.sh`;
//! without it the tests skip loudly, except under `CI=true`.

use std::time::Duration;

use concord_participants::config::{DatabaseConfig, Kind};
use concord_participants::database::{BranchState, Database, Finish, PreparedBranch, Vote};
use concord_participants::gid::Gid;
use concord_testkit::{servers_ready, RedisServer, Server, REDIS_DURABLE};
use concord_types::{Decision, NodeId, TxnId};

fn redis_ready() -> bool {
    servers_ready(&[Server::Redis], "the Redis participant tests")
}

fn database(port: u16) -> std::sync::Arc<Database> {
    let config = DatabaseConfig {
        name: "points".into(),
        kind: Kind::Redis,
        url: format!("redis://127.0.0.1:{port}/0"),
        schema_changes: false,
    };
    std::sync::Arc::new(Database::new(&config, Duration::from_secs(5)).unwrap())
}

fn gid(sequence: u32) -> Gid {
    let txn = TxnId { coordinator: NodeId(3), epoch: 1, sequence };
    Gid::new("redistest", txn, 0)
}

async fn prepare(db: &std::sync::Arc<Database>, sequence: u32, statements: &[&str]) -> Vote {
    let mut branch = db.begin(&gid(sequence)).await.expect("begin");
    for statement in statements {
        branch.execute(statement).await.expect(statement);
    }
    branch.prepare().await
}

fn yes(vote: Vote) -> PreparedBranch {
    match vote {
        Vote::Yes(branch) => branch,
        Vote::ReadOnly => panic!("voted READ-ONLY"),
        Vote::No(why) => panic!("voted NO: {why}"),
    }
}

fn no(vote: Vote) -> String {
    match vote {
        Vote::Yes(branch) => panic!("voted YES: {}", branch.gid),
        Vote::ReadOnly => panic!("voted READ-ONLY"),
        Vote::No(why) => why,
    }
}

fn get(port: u16, key: &str) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    redis::cmd("GET").arg(key).query(&mut client.get_connection().unwrap()).unwrap()
}

fn run(port: u16, args: &[&str]) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    let () = command.query(&mut client.get_connection().unwrap()).unwrap();
}

#[tokio::test]
async fn prepare_holds_the_keys_and_commit_or_rollback_apply_once() {
    if !redis_ready() {
        return;
    }
    let server = RedisServer::start("life", &REDIS_DURABLE);
    let (db, port) = (database(server.port), server.port);

    let a = yes(prepare(&db, 1, &["SET name alice", "INCRBY balance 10"]).await);
    assert_eq!(get(port, "balance"), None, "nothing applies before the commit");
    let held = no(prepare(&db, 2, &["DECRBY balance 5"]).await);
    assert!(held.contains("held by prepared branch") && held.contains(&a.gid), "{held}");
    let listed = db.list_prepared().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].gid, a.gid);
    assert!(listed[0].age_ms.is_some());

    let gid_a = a.gid.clone();
    assert_eq!(db.finish(a, Decision::Commit).await.unwrap(), Finish::Done);
    assert_eq!(
        db.finish(PreparedBranch::named(&gid_a), Decision::Commit).await.unwrap(),
        Finish::NotPrepared,
        "a second commit finds nothing to do"
    );
    assert_eq!(db.branch_state(&gid_a).await.unwrap(), BranchState::Committed);
    assert_eq!(
        (get(port, "name"), get(port, "balance")),
        (Some("alice".into()), Some("10".into()))
    );
    assert_eq!(get(port, "concord:lock:balance"), None, "the commit let go of its locks");

    let b = yes(prepare(&db, 3, &["DECRBY balance 5", "DEL name"]).await);
    let gid_b = b.gid.clone();
    assert_eq!(db.finish(b, Decision::Abort).await.unwrap(), Finish::Done);
    assert_eq!(
        db.finish(PreparedBranch::named(&gid_b), Decision::Abort).await.unwrap(),
        Finish::NotPrepared
    );
    assert_eq!(db.branch_state(&gid_b).await.unwrap(), BranchState::Absent);
    assert_eq!(
        (get(port, "name"), get(port, "balance")),
        (Some("alice".into()), Some("10".into()))
    );

    // A write that cannot apply is a NO at prepare, with the key named.
    run(port, &["SET", "word", "hello"]);
    let refused = no(prepare(&db, 4, &["INCRBY word 1"]).await);
    assert!(refused.contains("word does not hold an integer"), "{refused}");
    // A SET earlier in the same branch counts.
    yes(prepare(&db, 5, &["SET word 7", "INCRBY word 1"]).await);
    // The edges of exact integers: -(2^53 - 1) takes an increment; 2^53 - 1 takes none.
    run(port, &["SET", "low", "-9007199254740991"]);
    run(port, &["SET", "high", "9007199254740991"]);
    yes(prepare(&db, 8, &["INCRBY low 1"]).await);
    let over = no(prepare(&db, 9, &["INCRBY high 1"]).await);
    assert!(over.contains("2^53"), "{over}");

    // Someone writes a locked key behind Concord's back: the commit applies nothing, leaves
    // the branch prepared and says why; once the key is mended, the commit goes through.
    let c = yes(prepare(&db, 6, &["INCRBY balance 1", "SET name carol"]).await);
    let gid_c = c.gid.clone();
    run(port, &["SET", "balance", "oops"]);
    let error = db.finish(c, Decision::Commit).await.unwrap_err().to_string();
    assert!(error.contains("left prepared") && error.contains("balance"), "{error}");
    assert_eq!(db.branch_state(&gid_c).await.unwrap(), BranchState::Prepared);
    assert_eq!(get(port, "name"), Some("alice".into()), "nothing of the branch applied");
    run(port, &["SET", "balance", "10"]);
    let again = db.finish(PreparedBranch::named(&gid_c), Decision::Commit).await.unwrap();
    assert_eq!(again, Finish::Done);
    assert_eq!(
        (get(port, "name"), get(port, "balance")),
        (Some("carol".into()), Some("11".into()))
    );

    // An operator deletes a prepared record by hand: the commit finds nothing, and the branch
    // reads as rolled back — what the coordinator records as a heuristic outcome.
    let d = yes(prepare(&db, 7, &["INCRBY balance 100"]).await);
    run(port, &["DEL", &format!("concord:prepared:{}", d.gid)]);
    let gid_d = d.gid.clone();
    assert_eq!(db.finish(d, Decision::Commit).await.unwrap(), Finish::NotPrepared);
    assert_eq!(db.branch_state(&gid_d).await.unwrap(), BranchState::Absent);
    assert_eq!(get(port, "balance"), Some("11".into()));
    let _ = std::fs::remove_dir_all(&server.dir);
}

#[tokio::test]
async fn a_redis_that_cannot_keep_a_prepare_votes_no_saying_why() {
    if !redis_ready() {
        return;
    }
    let server = RedisServer::start("weak", &["--appendonly", "no"]);
    let (db, port) = (database(server.port), server.port);
    let why = no(prepare(&db, 1, &["SET k v"]).await);
    assert!(why.contains("appendonly is `no`"), "{why}");
    run(port, &["CONFIG", "SET", "appendonly", "yes"]);
    run(port, &["CONFIG", "SET", "appendfsync", "everysec"]);
    let why = no(prepare(&db, 2, &["SET k v"]).await);
    assert!(why.contains("appendfsync is `everysec`"), "{why}");
    run(port, &["CONFIG", "SET", "appendfsync", "always"]);
    run(port, &["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    let why = no(prepare(&db, 3, &["SET k v"]).await);
    assert!(why.contains("maxmemory-policy is `allkeys-lru`"), "{why}");
    assert!(db.list_prepared().await.unwrap().is_empty(), "a NO leaves nothing prepared");
    run(port, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    yes(prepare(&db, 4, &["SET k v"]).await);
    let _ = std::fs::remove_dir_all(&server.dir);
}

#[tokio::test]
async fn a_prepared_branch_survives_a_kill_9_of_redis() {
    if !redis_ready() {
        return;
    }
    let server = RedisServer::start("kill", &REDIS_DURABLE);
    let (dir, port) = (server.dir.clone(), server.port);
    let db = database(port);
    let branch = yes(prepare(&db, 1, &["INCRBY balance 25", "SET memo paid"]).await);
    server.kill(); // SIGKILL, right after the YES
    let _server = RedisServer::start_in(&dir, port, &REDIS_DURABLE);
    let db = database(port); // the old connections died with the server
    let listed = db.list_prepared().await.unwrap();
    assert_eq!(listed.iter().map(|b| b.gid.as_str()).collect::<Vec<_>>(), [branch.gid.as_str()]);
    let held = no(prepare(&db, 2, &["SET memo other"]).await);
    assert!(held.contains("held by prepared branch"), "the locks survived too: {held}");
    let finished = db.finish(PreparedBranch::named(&branch.gid), Decision::Commit).await.unwrap();
    assert_eq!(finished, Finish::Done);
    assert_eq!((get(port, "balance"), get(port, "memo")), (Some("25".into()), Some("paid".into())));
    let _ = std::fs::remove_dir_all(&dir);
}
