//! `concord bench databases`: the coordinator's tax over real databases.
//!
//! Each transaction moves one unit between a client's own account rows in two databases — two
//! PostgreSQL databases on one server (`pg-pg`), or PostgreSQL and MariaDB (`pg-mariadb`). Two
//! ways, interleaved per client count so drift hits both alike:
//!
//! * **direct** (the baseline): the benchmark driver holds one connection per database and runs
//!   the databases' own two-phase commit itself — `BEGIN` / `XA START`, the statement,
//!   `PREPARE TRANSACTION` / `XA END; XA PREPARE` on both, then `COMMIT PREPARED` / `XA COMMIT`
//!   on both. No log, no recovery: if the driver dies between the phases, the branches stay in
//!   doubt until someone resolves them by hand.
//! * **concord**: the same statements through Concord's database coordinator in this process
//!   (`Coordinator::run`), which adds what makes the outcome recoverable: the marker row in each
//!   branch, the check that a PostgreSQL branch really is prepared, and the forced decision
//!   record in its own log (group commit) before the second phase.
//!
//! A third pair, `pg`, is one database alone: direct is `BEGIN`, the statement, `COMMIT`;
//! Concord runs it as a one-phase transaction (no PREPARE, no decision record: the marker row
//! and `COMMIT` in one message).
//!
//! Clients never share rows, so this is the commit path, not lock contention.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_db_coordinator::config::DatabasesConfig;
use concord_db_coordinator::coordinator::Coordinator;
use serde_json::json;
use tokio_postgres::NoTls;

use crate::bench::{closed_loop, Floor, Measured, Tally};
use crate::cluster::runtime;

/// The bench's own databases, created (and their tables rebuilt) at every run.
const PG_DATABASES: [&str; 2] = ["concord_bench_a", "concord_bench_b"];
const MARIADB_DATABASE: &str = "concord_bench";
const ACCOUNTS: &str = "bench_accounts";
const OPENING_BALANCE: i64 = 1_000_000_000;
/// The most one direct transfer may take (Concord's default statement timeout per call).
const DIRECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pair {
    PgPg,
    PgMariadb,
    /// One PostgreSQL database: the one-phase path.
    Pg,
}

impl Pair {
    pub fn parse_list(text: &str) -> Result<Vec<Pair>, String> {
        text.split(',')
            .map(|p| match p.trim() {
                "pg-pg" => Ok(Pair::PgPg),
                "pg-mariadb" => Ok(Pair::PgMariadb),
                "pg" => Ok(Pair::Pg),
                other => Err(format!("--pairs takes pg-pg, pg-mariadb and pg, not '{other}'")),
            })
            .collect()
    }

    fn name(self) -> &'static str {
        match self {
            Pair::PgPg => "pg-pg",
            Pair::PgMariadb => "pg-mariadb",
            Pair::Pg => "pg",
        }
    }

    /// Each pair's coordinator starts from an empty log, so it issues the same transaction ids
    /// as the other pair's did: its own cluster name keeps their gids (and markers) apart.
    fn cluster(self) -> &'static str {
        match self {
            Pair::PgPg => "bench-pg-pg",
            Pair::PgMariadb => "bench-pg-maria",
            Pair::Pg => "bench-pg",
        }
    }
}

#[derive(Debug)]
pub struct Options<'a> {
    pub dir: &'a Path,
    pub pairs: Vec<Pair>,
    pub clients: Vec<usize>,
    /// Run the direct baseline / Concord (both by default; one alone is for profiling).
    pub direct: bool,
    pub concord: bool,
    pub duration: Duration,
    /// libpq-style connection string without `dbname`.
    pub postgres: String,
    /// `mysql://user:password@host:port` without the database.
    pub mariadb: String,
    pub json: bool,
}

/// Where one branch runs.
#[derive(Debug, Clone)]
enum Target {
    Postgres(String),
    Mariadb(String),
}

impl Target {
    fn kind(&self) -> &'static str {
        match self {
            Target::Postgres(_) => "postgres",
            Target::Mariadb(_) => "mariadb",
        }
    }

    fn url(&self) -> &str {
        match self {
            Target::Postgres(url) | Target::Mariadb(url) => url,
        }
    }
}

fn targets(pair: Pair, options: &Options<'_>) -> Vec<Target> {
    let pg = |db: &str| Target::Postgres(format!("{} dbname={db}", options.postgres));
    match pair {
        Pair::PgPg => vec![pg(PG_DATABASES[0]), pg(PG_DATABASES[1])],
        Pair::Pg => vec![pg(PG_DATABASES[0])],
        Pair::PgMariadb => vec![
            pg(PG_DATABASES[0]),
            Target::Mariadb(format!(
                "{}/{MARIADB_DATABASE}",
                options.mariadb.trim_end_matches('/')
            )),
        ],
    }
}

/// A connection the direct driver holds for the whole run.
enum Connection {
    Postgres(tokio_postgres::Client),
    Mariadb(mysql_async::Conn),
}

async fn connect(target: &Target) -> Result<Connection, String> {
    match target {
        Target::Postgres(url) => {
            let (client, connection) = tokio_postgres::connect(url, NoTls)
                .await
                .map_err(|e| format!("PostgreSQL `{url}`: {e}"))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(Connection::Postgres(client))
        }
        Target::Mariadb(url) => {
            let opts = mysql_async::Opts::from_url(url).map_err(|e| format!("`{url}`: {e}"))?;
            let conn =
                mysql_async::Conn::new(opts).await.map_err(|e| format!("MariaDB `{url}`: {e}"))?;
            Ok(Connection::Mariadb(conn))
        }
    }
}

impl Connection {
    async fn run(&mut self, sql: &str) -> Result<(), String> {
        match self {
            Connection::Postgres(client) => {
                client.batch_execute(sql).await.map_err(|e| pg_error(&e))
            }
            Connection::Mariadb(conn) => {
                use mysql_async::prelude::Queryable;
                conn.query_drop(sql).await.map_err(|e| e.to_string())
            }
        }
    }

    /// The application's statement, issued the way Concord's branches issue it (PostgreSQL:
    /// extended protocol; MariaDB: text protocol), so both ways pay the same for it.
    async fn statement(&mut self, sql: &str) -> Result<(), String> {
        match self {
            Connection::Postgres(client) => {
                client.execute(sql, &[]).await.map(drop).map_err(|e| pg_error(&e))
            }
            Connection::Mariadb(_) => self.run(sql).await,
        }
    }

    async fn begin(&mut self, gid: &str) -> Result<(), String> {
        match self {
            Connection::Postgres(_) => self.run("BEGIN").await,
            Connection::Mariadb(_) => self.run(&format!("XA START '{gid}'")).await,
        }
    }

    async fn prepare(&mut self, gid: &str) -> Result<(), String> {
        match self {
            Connection::Postgres(_) => self.run(&format!("PREPARE TRANSACTION '{gid}'")).await,
            // One message, as Concord sends it.
            Connection::Mariadb(_) => {
                self.run(&format!("XA END '{gid}'; XA PREPARE '{gid}'")).await
            }
        }
    }

    async fn commit(&mut self, gid: &str) -> Result<(), String> {
        match self {
            Connection::Postgres(_) => self.run(&format!("COMMIT PREPARED '{gid}'")).await,
            Connection::Mariadb(_) => self.run(&format!("XA COMMIT '{gid}'")).await,
        }
    }
}

/// Creates the bench databases and rebuilds the accounts table in each target, and rolls back
/// branches an interrupted earlier run left prepared (they would hold the rows' locks).
async fn prepare_targets(options: &Options<'_>, pairs: &[Pair], rows: usize) -> Result<(), String> {
    let admin = format!("{} dbname=postgres", options.postgres);
    let (client, connection) = tokio_postgres::connect(&admin, NoTls)
        .await
        .map_err(|e| format!("PostgreSQL `{admin}`: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    for db in PG_DATABASES {
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
            .await
            .map_err(|e| e.to_string())?
            .is_some();
        if !exists {
            client
                .batch_execute(&format!("CREATE DATABASE {db}"))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let mut seen = Vec::new();
    for &pair in pairs {
        for target in targets(pair, options) {
            if seen.iter().any(|t: &Target| t.url() == target.url()) {
                continue;
            }
            if let Target::Mariadb(url) = &target {
                let server = url.rsplit_once('/').map_or(url.as_str(), |(server, _)| server);
                let mut conn = connect(&Target::Mariadb(server.to_string())).await?;
                conn.run(&format!("CREATE DATABASE IF NOT EXISTS {MARIADB_DATABASE}")).await?;
            }
            let mut conn = connect(&target).await?;
            roll_back_leftovers(&mut conn).await?;
            let values: Vec<String> =
                (0..rows).map(|id| format!("({id}, {OPENING_BALANCE})")).collect();
            // Concord's marker table too: an earlier run's coordinator issued the same ids.
            conn.run(&format!("DROP TABLE IF EXISTS {ACCOUNTS}")).await?;
            conn.run("DROP TABLE IF EXISTS concord_branch").await?;
            let engine = if matches!(target, Target::Mariadb(_)) { " ENGINE=InnoDB" } else { "" };
            conn.run(&format!(
                "CREATE TABLE {ACCOUNTS} (id INT PRIMARY KEY, balance BIGINT NOT NULL){engine}"
            ))
            .await?;
            conn.run(&format!("INSERT INTO {ACCOUNTS} (id, balance) VALUES {}", values.join(",")))
                .await?;
            seen.push(target);
        }
    }
    Ok(())
}

/// Rolls back every prepared branch of this database (PostgreSQL) or every bench branch on the
/// server (MariaDB's `XA RECOVER` lists the whole server's).
async fn roll_back_leftovers(conn: &mut Connection) -> Result<(), String> {
    let gids: Vec<String> = match conn {
        Connection::Postgres(client) => client
            .query("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()", &[])
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .map(|row| row.get(0))
            .collect(),
        Connection::Mariadb(c) => {
            use mysql_async::prelude::Queryable;
            let rows: Vec<mysql_async::Row> =
                c.query("XA RECOVER").await.map_err(|e| e.to_string())?;
            rows.iter()
                .filter_map(|row| row.get::<Vec<u8>, _>(3))
                .map(|data| String::from_utf8_lossy(&data).into_owned())
                .filter(|gid| gid.starts_with("direct-") || gid.starts_with("concord:bench-"))
                .collect()
        }
    };
    for gid in gids {
        let statement = match conn {
            Connection::Postgres(_) => format!("ROLLBACK PREPARED '{gid}'"),
            Connection::Mariadb(_) => format!("XA ROLLBACK '{gid}'"),
        };
        conn.run(&statement).await?;
    }
    Ok(())
}

fn debit(client: usize) -> String {
    format!("UPDATE {ACCOUNTS} SET balance = balance - 1 WHERE id = {client}")
}

fn credit(client: usize) -> String {
    format!("UPDATE {ACCOUNTS} SET balance = balance + 1 WHERE id = {client}")
}

/// One direct transfer: the databases' own 2PC from the driver, both branches in parallel.
/// Each branch has its own gid (`{txn}-a`, `{txn}-b`): PostgreSQL's are unique per server.
async fn direct_transfer(
    a: &mut Connection,
    b: &mut Connection,
    client: usize,
    txn: &str,
) -> Result<(), String> {
    let (ga, gb) = (format!("{txn}-a"), format!("{txn}-b"));
    let (x, y) = tokio::join!(a.begin(&ga), b.begin(&gb));
    x.and(y)?;
    a.statement(&debit(client)).await?;
    b.statement(&credit(client)).await?;
    let (x, y) = tokio::join!(a.prepare(&ga), b.prepare(&gb));
    x.and(y)?;
    let (x, y) = tokio::join!(a.commit(&ga), b.commit(&gb));
    x.and(y)
}

/// One direct transaction on a single database: `BEGIN`, the statement, `COMMIT`.
async fn direct_single(a: &mut Connection, client: usize) -> Result<(), String> {
    a.run("BEGIN").await?;
    a.statement(&debit(client)).await?;
    a.run("COMMIT").await
}

async fn measure_direct(
    targets: &[Target],
    clients: usize,
    duration: Duration,
) -> Result<Measured, String> {
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut pair = Vec::with_capacity(targets.len());
        for target in targets {
            pair.push(connect(target).await?);
        }
        connections.push(pair);
    }
    let mut connections = connections.into_iter();
    let measured = closed_loop(clients, duration, |client, deadline| {
        let mut held = connections.next().expect("connections per client");
        async move {
            let mut tally = Tally::default();
            let mut sequence = 0u64;
            while Instant::now() < deadline {
                sequence += 1;
                let txn = format!("direct-{client}-{sequence}");
                let t0 = Instant::now();
                let transfer = async {
                    match held.as_mut_slice() {
                        [a, b] => direct_transfer(a, b, client, &txn).await,
                        [a] => direct_single(a, client).await,
                        _ => unreachable!("one or two targets"),
                    }
                };
                // Bounded like Concord's database calls (its default statement timeout).
                let outcome = tokio::time::timeout(DIRECT_TIMEOUT, transfer)
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {DIRECT_TIMEOUT:?}")));
                match outcome {
                    Ok(()) => tally.commit(t0),
                    Err(e) => {
                        if tally.failed == 0 {
                            eprintln!("bench databases: direct client {client}: {e}");
                        }
                        tally.failed += 1;
                        // The connections' state is unknown now; the run's numbers are void.
                        break;
                    }
                }
            }
            tally
        }
    })
    .await;
    Ok(measured)
}

fn coordinator_config(pair: Pair, targets: &[Target]) -> Result<DatabasesConfig, String> {
    let mut text =
        // `listen` is required but unused: the bench calls the coordinator in-process.
        format!("cluster = \"{}\"\nnode_id = 1\nlisten = \"127.0.0.1:7899\"\n", pair.cluster());
    for (name, target) in ["a", "b"].iter().zip(targets) {
        text.push_str(&format!(
            "[[database]]\nname = \"{name}\"\nkind = \"{}\"\nurl = \"{}\"\n",
            target.kind(),
            target.url()
        ));
    }
    DatabasesConfig::parse(&text)
}

async fn measure_concord(
    coordinator: &Arc<Coordinator>,
    databases: usize,
    clients: usize,
    duration: Duration,
) -> Measured {
    closed_loop(clients, duration, |client, deadline| {
        let coordinator = Arc::clone(coordinator);
        async move {
            let mut tally = Tally::default();
            let mut branches = vec![
                ("a".to_string(), vec![debit(client)]),
                ("b".to_string(), vec![credit(client)]),
            ];
            branches.truncate(databases);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match coordinator.run(&branches).await {
                    Ok(view) if view.state == "committed" => tally.commit(t0),
                    Ok(view) => {
                        if tally.aborted == 0 {
                            eprintln!(
                                "bench databases: concord client {client}: {} ({})",
                                view.state,
                                view.reason.unwrap_or_default()
                            );
                        }
                        tally.aborted += 1;
                    }
                    Err(e) => {
                        if tally.failed == 0 {
                            eprintln!("bench databases: concord client {client}: {e}");
                        }
                        tally.failed += 1;
                    }
                }
            }
            tally
        }
    })
    .await
}

/// One measured load of one way over one pair.
struct Row {
    pair: Pair,
    concord: bool,
    measured: Measured,
}

pub fn run(options: &Options<'_>) -> Result<std::process::ExitCode, String> {
    let floor = Floor::measure(options.dir)?;
    let most_clients = options.clients.iter().copied().max().unwrap_or(1);
    let rows = runtime()?.block_on(async {
        prepare_targets(options, &options.pairs, most_clients).await?;
        let mut rows = Vec::new();
        for &pair in &options.pairs {
            let targets = targets(pair, options);
            let data_dir = options.dir.join(format!("coordinator-{}", pair.name()));
            let _ = std::fs::remove_dir_all(&data_dir);
            let coordinator =
                Coordinator::open(&coordinator_config(pair, &targets)?, &data_dir, None)
                    .await
                    .map_err(|e| e.to_string())?;
            for &n in &options.clients {
                if options.direct {
                    let direct = measure_direct(&targets, n, options.duration).await?;
                    rows.push(Row { pair, concord: false, measured: direct });
                }
                if options.concord {
                    let concord =
                        measure_concord(&coordinator, targets.len(), n, options.duration).await;
                    rows.push(Row { pair, concord: true, measured: concord });
                }
            }
            drop(coordinator);
            let _ = std::fs::remove_dir_all(&data_dir);
        }
        Ok::<_, String>(rows)
    })?;
    report(options, &floor, &rows);
    let failed = rows.iter().any(|r| r.measured.tally.failed + r.measured.tally.aborted > 0);
    Ok(if failed { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS })
}

/// Concord's throughput over the direct run's at the same pair and client count.
fn ratio(rows: &[Row], row: &Row) -> Option<f64> {
    let direct = rows
        .iter()
        .find(|r| !r.concord && r.pair == row.pair && r.measured.clients == row.measured.clients)?;
    (direct.measured.tps() > 0.0).then(|| row.measured.tps() / direct.measured.tps())
}

fn report(options: &Options<'_>, floor: &Floor, rows: &[Row]) {
    if options.json {
        let runs: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let m = &r.measured;
                json!({ "pair": r.pair.name(), "way": if r.concord { "concord" } else { "direct" },
                        "clients": m.clients, "txn_per_s": m.tps(), "committed": m.tally.committed,
                        "aborted": m.tally.aborted, "failed": m.tally.failed, "seconds": m.seconds,
                        "p50_us": m.tally.latency.quantile(0.5), "p99_us": m.tally.latency.quantile(0.99),
                        "concord_over_direct": if r.concord { ratio(rows, r) } else { None } })
            })
            .collect();
        println!(
            "{}",
            json!({ "workload": "transfer across two databases", "floor": floor.json(), "runs": runs })
        );
        return;
    }
    println!("{}", floor.describe(options.dir));
    println!(
        "{:<11} {:<8} {:<8} {:>9} {:>10} {:>7} {:>9} {:>9} {:>8}",
        "pair", "way", "clients", "txn/s", "committed", "failed", "p50 µs", "p99 µs", "ratio"
    );
    for r in rows {
        let m = &r.measured;
        println!(
            "{:<11} {:<8} {:<8} {:>9.0} {:>10} {:>7} {:>9} {:>9} {:>8}",
            r.pair.name(),
            if r.concord { "concord" } else { "direct" },
            m.clients,
            m.tps(),
            m.tally.committed,
            m.tally.failed + m.tally.aborted,
            m.tally.latency.quantile(0.5),
            m.tally.latency.quantile(0.99),
            ratio(rows, r).map_or(String::new(), |x| format!("{x:.2}×"))
        );
    }
}

/// tokio-postgres shows a server error as "db error"; the server's message is the cause.
fn pg_error(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map_or_else(|| e.to_string(), ToString::to_string)
}
