//! The checkout end to end on real PostgreSQL: three services (each its own schema and
//! barrier), the Concord saga orchestrator, and proxies in front of the services that can hold
//! or duplicate every request. Needs PostgreSQL on its standard loopback port
//! (`scripts/setup-databases.sh`, run here); without it the tests skip loudly, except under
//! `CI=true`, where they fail.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_checkout::{checkout_saga, connect, serve, Service};
use concord_http::{Request, Response};
use concord_testkit::{servers_ready, Server};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_postgres::{Client, NoTls};

const DB: &str = "host=127.0.0.1 user=postgres dbname=concord_test";

fn postgres_ready() -> bool {
    servers_ready(&[Server::Databases], "the checkout example's tests")
}

/// What a proxy in front of a service does to each request.
#[derive(Default)]
struct Faults {
    twice: AtomicBool,
    hold_ms: AtomicU64,
}

/// Forwards every request to `backend`, after `hold_ms`, once or twice (concurrently).
async fn proxy(backend: SocketAddr, faults: Arc<Faults>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(concord_http::serve(listener, move |request: Request| {
        let faults = Arc::clone(&faults);
        async move {
            tokio::time::sleep(Duration::from_millis(faults.hold_ms.load(Ordering::Relaxed))).await;
            let key = request.header("idempotency-key").unwrap_or_default().to_string();
            let forward = || {
                let (key, target, body) =
                    (key.clone(), request.target.clone(), request.body.clone());
                async move {
                    let headers = [("Idempotency-Key", key.as_str())];
                    concord_http::call(
                        backend,
                        "POST",
                        &target,
                        &headers,
                        &body,
                        Duration::from_secs(5),
                    )
                    .await
                }
            };
            let answer = if faults.twice.load(Ordering::Relaxed) {
                let (_, second) = tokio::join!(forward(), forward());
                second
            } else {
                forward().await
            };
            match answer {
                Ok((status, body)) => Response::text(status, "application/json", body),
                Err(e) => Response::error(503, &e),
            }
        }
    }));
    address
}

struct Shop {
    db: Client,
    /// Proxied addresses of inventory, payment, shipping, and each proxy's faults.
    services: [SocketAddr; 3],
    faults: [Arc<Faults>; 3],
    /// Unique per test: its SKU and customer.
    sku: String,
    customer: String,
    dir: PathBuf,
}

async fn shop(test: &str) -> Shop {
    let mut services = Vec::new();
    let mut faults = Vec::new();
    for service in [Service::Inventory, Service::Payment, Service::Shipping] {
        let client = connect(service, DB).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap();
        tokio::spawn(serve(service, client, listener));
        let f = Arc::new(Faults::default());
        services.push(proxy(backend, Arc::clone(&f)).await);
        faults.push(f);
    }
    let (db, connection) = tokio_postgres::connect(DB, NoTls).await.unwrap();
    tokio::spawn(connection);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let run = format!("{test}-{}-{nanos}", std::process::id());
    let (sku, customer) = (format!("kettle-{run}"), format!("ada-{run}"));
    db.execute("INSERT INTO inventory.stock (sku, available) VALUES ($1, 10)", &[&sku])
        .await
        .unwrap();
    db.execute("INSERT INTO payment.accounts (customer, balance) VALUES ($1, 10000)", &[&customer])
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("concord-checkout-{run}"));
    let _ = std::fs::remove_dir_all(&dir);
    Shop {
        db,
        services: [services[0], services[1], services[2]],
        faults: [Arc::clone(&faults[0]), Arc::clone(&faults[1]), Arc::clone(&faults[2])],
        sku,
        customer,
        dir,
    }
}

struct Orchestrator {
    address: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

async fn orchestrator(dir: &Path, address: Option<SocketAddr>) -> Orchestrator {
    orchestrator_on(dir, address, None).await
}

/// An orchestrator keeping its sagas in PostgreSQL as `instance`, with a short lease, in the
/// schema `schema` (each test run its own: a sweeper claims every stuck saga it can see).
async fn shared_orchestrator(schema: &str, instance: &str) -> Orchestrator {
    let postgres = concord_orchestrator::PostgresOptions {
        url: format!("{DB} options='-c search_path={schema}'"),
        instance: instance.into(),
        lease: Duration::from_millis(900),
    };
    orchestrator_on(Path::new("/nonexistent"), None, Some(postgres)).await
}

async fn orchestrator_on(
    dir: &Path,
    address: Option<SocketAddr>,
    postgres: Option<concord_orchestrator::PostgresOptions>,
) -> Orchestrator {
    let address = address.unwrap_or_else(|| {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
    });
    let (stop, stopped) = watch::channel(false);
    let options = concord_orchestrator::Options {
        postgres,
        listen: address,
        data_dir: dir.to_path_buf(),
        checkpoint_every: 100,
        // The services take ports of the moment.
        step_hosts: concord_orchestrator::StepHosts::Any,
        tokens: Vec::new(),
        console_sample: Duration::from_secs(10),
    };
    let mut task = tokio::spawn(concord_orchestrator::serve(options, stopped));
    let deadline = Instant::now() + Duration::from_secs(10);
    while concord_http::call(address, "GET", "/health", &[], "", Duration::from_secs(1))
        .await
        .is_err()
    {
        if task.is_finished() {
            panic!("the orchestrator stopped: {:?}", (&mut task).await);
        }
        assert!(Instant::now() < deadline, "the orchestrator did not come up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Orchestrator { address, stop, task }
}

impl Shop {
    fn order(&self, id: &str, qty: i64, amount: i64, address: &str) -> Value {
        json!({ "order": id, "sku": self.sku, "qty": qty, "customer": self.customer,
                "amount": amount, "address": address })
    }

    fn saga(&self, id: &str, order: &Value, wait: bool) -> Value {
        let [inventory, payment, shipping] = self.services;
        let mut saga = checkout_saga(id, inventory, payment, shipping, order);
        saga["wait"] = json!(wait);
        saga
    }

    async fn stock(&self) -> i32 {
        self.db
            .query_one("SELECT available FROM inventory.stock WHERE sku = $1", &[&self.sku])
            .await
            .unwrap()
            .get(0)
    }

    async fn balance(&self) -> i64 {
        self.db
            .query_one(
                "SELECT balance FROM payment.accounts WHERE customer = $1",
                &[&self.customer],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn count(&self, sql: &str, id: &str) -> i64 {
        self.db.query_one(sql, &[&id]).await.unwrap().get(0)
    }
}

async fn run_saga(orchestrator: &Orchestrator, saga: &Value) -> Value {
    let (status, body) = concord_http::call(
        orchestrator.address,
        "POST",
        "/v1/sagas",
        &[],
        &saga.to_string(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert!((200..300).contains(&status), "{status}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn id(shop: &Shop, name: &str) -> String {
    format!("{name}-{}", shop.sku)
}

#[tokio::test]
async fn the_happy_path_reserves_charges_and_ships() {
    if !postgres_ready() {
        return;
    }
    let shop = shop("happy").await;
    let o = orchestrator(&shop.dir, None).await;
    let order_id = id(&shop, "o1");
    let done =
        run_saga(&o, &shop.saga(&order_id, &shop.order(&order_id, 2, 4_900, "1 Main St"), true))
            .await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!((shop.stock().await, shop.balance().await), (8, 10_000 - 4_900));
    assert_eq!(
        shop.count("SELECT count(*) FROM shipping.shipments WHERE order_id = $1", &order_id).await,
        1
    );
    let _ = o.stop.send(true);
}

#[tokio::test]
async fn a_declined_payment_releases_the_stock() {
    if !postgres_ready() {
        return;
    }
    let shop = shop("declined").await;
    let o = orchestrator(&shop.dir, None).await;
    let order_id = id(&shop, "o2");
    let done =
        run_saga(&o, &shop.saga(&order_id, &shop.order(&order_id, 3, 99_999, "1 Main St"), true))
            .await;
    assert_eq!(done["state"], "compensated", "{done}");
    assert!(done["reason"].as_str().unwrap().contains("declined"), "{done}");
    assert_eq!((shop.stock().await, shop.balance().await), (10, 10_000));
    assert_eq!(
        shop.count("SELECT count(*) FROM payment.charges WHERE order_id = $1", &order_id).await,
        0
    );
    assert_eq!(
        shop.count("SELECT count(*) FROM inventory.reservations WHERE order_id = $1", &order_id)
            .await,
        0
    );
    let _ = o.stop.send(true);
}

#[tokio::test]
async fn a_failed_shipment_refunds_the_payment_and_releases_the_stock() {
    if !postgres_ready() {
        return;
    }
    let shop = shop("unshippable").await;
    let o = orchestrator(&shop.dir, None).await;
    let order_id = id(&shop, "o3");
    let done =
        run_saga(&o, &shop.saga(&order_id, &shop.order(&order_id, 1, 2_500, "nowhere"), true))
            .await;
    assert_eq!(done["state"], "compensated", "{done}");
    assert_eq!((shop.stock().await, shop.balance().await), (10, 10_000));
    let refunded = "SELECT count(*) FROM payment.charges WHERE order_id = $1 AND refunded";
    assert_eq!(shop.count(refunded, &order_id).await, 1, "charged, then refunded");
    let _ = o.stop.send(true);
}

#[tokio::test]
async fn every_request_delivered_twice_charges_nobody_twice() {
    if !postgres_ready() {
        return;
    }
    let shop = shop("twice").await;
    for f in &shop.faults {
        f.twice.store(true, Ordering::Relaxed);
    }
    let o = orchestrator(&shop.dir, None).await;
    let ok = id(&shop, "o4");
    let done = run_saga(&o, &shop.saga(&ok, &shop.order(&ok, 2, 1_000, "1 Main St"), true)).await;
    assert_eq!(done["state"], "completed", "{done}");
    let bad = id(&shop, "o5");
    let done = run_saga(&o, &shop.saga(&bad, &shop.order(&bad, 2, 1_000, "nowhere"), true)).await;
    assert_eq!(done["state"], "compensated", "{done}");
    // o4 applied once, o5 applied and undone once each.
    assert_eq!((shop.stock().await, shop.balance().await), (8, 9_000));
    let charges = "SELECT count(*) FROM payment.charges WHERE order_id = $1";
    assert_eq!((shop.count(charges, &ok).await, shop.count(charges, &bad).await), (1, 1));
    let _ = o.stop.send(true);
}

#[tokio::test]
async fn an_orchestrator_killed_mid_saga_finishes_it_after_a_restart() {
    if !postgres_ready() {
        return;
    }
    let shop = shop("killed").await;
    shop.faults[1].hold_ms.store(1_000, Ordering::Relaxed); // the charge is held 1 s
    let o = orchestrator(&shop.dir, None).await;
    let order_id = id(&shop, "o6");
    let started =
        run_saga(&o, &shop.saga(&order_id, &shop.order(&order_id, 1, 700, "1 Main St"), false))
            .await;
    assert_eq!(started["state"], "running", "{started}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    o.task.abort(); // killed with the charge in flight: no shutdown path runs
    let _ = o.task.await;
    shop.faults[1].hold_ms.store(0, Ordering::Relaxed);
    let o = orchestrator(&shop.dir, Some(o.address)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = concord_http::call(
            o.address,
            "GET",
            &format!("/v1/sagas/{order_id}"),
            &[],
            "",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let saga: Value = serde_json::from_str(&body).unwrap();
        if saga["state"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "not finished after the restart: {saga}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await; // the held first charge lands too
    assert_eq!((shop.stock().await, shop.balance().await), (9, 10_000 - 700), "charged once");
    let _ = o.stop.send(true);
}

/// Two orchestrators share their sagas in PostgreSQL. One is killed with a charge in flight;
/// once its lease runs out the other's sweeper claims the saga (`FOR UPDATE SKIP LOCKED`) and
/// finishes it — and a saga that should compensate is finished compensating the same way.
#[tokio::test]
async fn the_sweeper_finishes_a_dead_orchestrators_sagas() {
    if !postgres_ready() {
        return;
    }
    let shop = shop("sweeper").await;
    let run = shop.sku.clone();
    shop.faults[1].hold_ms.store(1_000, Ordering::Relaxed);
    let schema: String =
        run.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    shop.db.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
    let a = shared_orchestrator(&schema, &format!("a-{run}")).await;
    let b = shared_orchestrator(&schema, &format!("b-{run}")).await;
    let (ok, bad) = (id(&shop, "o7"), id(&shop, "o8"));
    let started = run_saga(&a, &shop.saga(&ok, &shop.order(&ok, 1, 300, "1 Main St"), false)).await;
    assert_eq!(started["state"], "running", "{started}");
    let started = run_saga(&a, &shop.saga(&bad, &shop.order(&bad, 1, 300, "nowhere"), false)).await;
    assert_eq!(started["state"], "running", "{started}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.task.abort(); // A dies with both charges in flight
    let _ = a.task.await;
    shop.faults[1].hold_ms.store(0, Ordering::Relaxed);
    for (saga, expected) in [(&ok, "completed"), (&bad, "compensated")] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let path = format!("/v1/sagas/{saga}");
            let (_, body) =
                concord_http::call(b.address, "GET", &path, &[], "", Duration::from_secs(5))
                    .await
                    .unwrap();
            let view: Value = serde_json::from_str(&body).unwrap();
            if view["state"] == expected {
                break;
            }
            assert!(Instant::now() < deadline, "{saga} not {expected} by B: {view}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await; // A's held charges land too
                                                            // o7: reserved and charged once; o8: reserved, charged, refunded, released.
    assert_eq!((shop.stock().await, shop.balance().await), (9, 10_000 - 300));
    let owner: String = shop
        .db
        .query_one(&format!("SELECT owner FROM {schema}.concord_sagas WHERE id = $1"), &[&ok])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, format!("b-{run}"), "B claimed it");
    let _ = b.stop.send(true);
    shop.db.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}
