//! The choreographed checkout on real PostgreSQL and NATS JetStream: no orchestrator, each
//! service reacting to the others' events through its outbox. Needs both servers on their
//! standard loopback ports (the setup scripts run here); without them the tests skip loudly,
//! except under `CI=true`, where they fail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_checkout::choreography::{place_order, run, Setup};
use concord_checkout::Service;
use concord_nats::Nats;
use concord_testkit::{servers_ready, Server};
use serde_json::json;
use tokio_postgres::{Client, NoTls};

const DB: &str = "host=127.0.0.1 user=postgres dbname=concord_test";

fn ready() -> bool {
    servers_ready(&[Server::Databases, Server::Nats], "the choreographed checkout tests")
}

struct Shop {
    db: Client,
    nats: Arc<Nats>,
    setup: Setup,
    sku: String,
    customer: String,
    services: Vec<tokio::task::JoinHandle<Result<(), String>>>,
}

impl Drop for Shop {
    fn drop(&mut self) {
        for service in &self.services {
            service.abort();
        }
    }
}

async fn shop(test: &str, skip_first_acks: bool) -> Shop {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let run_id = format!("chk_{test}_{}_{nanos}", std::process::id());
    let setup = Setup {
        stream: run_id.to_uppercase(),
        prefix: run_id.clone(),
        schema: run_id.clone(),
        db: DB.into(),
        nats: "127.0.0.1:4222".parse().unwrap(),
    };
    let ack_wait = Duration::from_millis(700);
    let mut services = Vec::new();
    for service in [Service::Inventory, Service::Payment, Service::Shipping] {
        services.push(tokio::spawn(run(service, setup.clone(), ack_wait, skip_first_acks)));
    }
    let (db, connection) = tokio_postgres::connect(DB, NoTls).await.unwrap();
    tokio::spawn(connection);
    let nats = Nats::connect(setup.nats, Duration::from_secs(5)).await.unwrap();
    // The services create their schemas and the stream as they start.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready: i64 = db
            .query_one(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema LIKE $1 AND table_name = 'concord_outbox'",
                &[&format!("{run_id}_%")],
            )
            .await
            .unwrap()
            .get(0);
        if ready == 3 {
            break;
        }
        for s in &services {
            assert!(!s.is_finished(), "a service stopped while starting");
        }
        assert!(Instant::now() < deadline, "the services did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (sku, customer) = (format!("kettle-{run_id}"), format!("ada-{run_id}"));
    db.execute("INSERT INTO inventory.stock (sku, available) VALUES ($1, 10)", &[&sku])
        .await
        .unwrap();
    db.execute("INSERT INTO payment.accounts (customer, balance) VALUES ($1, 10000)", &[&customer])
        .await
        .unwrap();
    Shop { db, nats, setup, sku, customer, services }
}

impl Shop {
    /// Every service is still handling events (a duplicate that broke a handler stops it).
    fn all_running(&self) {
        for s in &self.services {
            assert!(!s.is_finished(), "a service stopped");
        }
    }

    async fn order(&self, id: &str, amount: i64, address: &str) {
        let order = json!({ "order": id, "sku": self.sku, "qty": 2, "customer": self.customer,
                            "amount": amount, "address": address });
        place_order(&self.nats, &self.setup, &order).await.unwrap();
    }

    /// Waits until `service` has processed event `event` of order `id`.
    async fn processed(&self, service: &str, id: &str, event: &str) {
        let sql = format!(
            "SELECT count(*) FROM {}_{service}.concord_processed WHERE msg_id = $1",
            self.setup.schema
        );
        let msg_id = format!("{id}:{event}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n: i64 = self.db.query_one(&sql, &[&msg_id]).await.unwrap().get(0);
            if n == 1 {
                return;
            }
            for s in &self.services {
                assert!(!s.is_finished(), "a service stopped");
            }
            assert!(Instant::now() < deadline, "{service} never processed {msg_id}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stock_and_balance(&self) -> (i32, i64) {
        let stock: i32 = self
            .db
            .query_one("SELECT available FROM inventory.stock WHERE sku = $1", &[&self.sku])
            .await
            .unwrap()
            .get(0);
        let balance: i64 = self
            .db
            .query_one(
                "SELECT balance FROM payment.accounts WHERE customer = $1",
                &[&self.customer],
            )
            .await
            .unwrap()
            .get(0);
        (stock, balance)
    }
}

#[tokio::test]
async fn events_carry_an_order_through_reserve_charge_and_ship() {
    if !ready() {
        return;
    }
    let shop = shop("happy", false).await;
    let id = format!("{}-o1", shop.setup.prefix);
    shop.order(&id, 1_500, "1 Main St").await;
    shop.processed("shipping", &id, "payment.charged").await;
    assert_eq!(shop.stock_and_balance().await, (8, 8_500));
    let shipped: i64 = shop
        .db
        .query_one("SELECT count(*) FROM shipping.shipments WHERE order_id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shipped, 1);
    shop.all_running();
}

#[tokio::test]
async fn a_declined_payment_releases_the_stock_and_a_failed_shipment_refunds_and_releases() {
    if !ready() {
        return;
    }
    let shop = shop("failures", false).await;
    let declined = format!("{}-o2", shop.setup.prefix);
    shop.order(&declined, 99_999, "1 Main St").await;
    shop.processed("inventory", &declined, "payment.declined").await;
    assert_eq!(shop.stock_and_balance().await, (10, 10_000));
    let unshippable = format!("{}-o3", shop.setup.prefix);
    shop.order(&unshippable, 700, "nowhere").await;
    shop.processed("inventory", &unshippable, "payment.refunded").await;
    assert_eq!(shop.stock_and_balance().await, (10, 10_000), "refunded and released");
    shop.all_running();
}

/// Every event's first delivery is handled but not acknowledged, so JetStream delivers each
/// twice; the order is placed twice as well. Nobody is charged or reserved twice.
#[tokio::test]
async fn every_event_delivered_twice_charges_nobody_twice() {
    if !ready() {
        return;
    }
    let shop = shop("twice", true).await;
    let id = format!("{}-o4", shop.setup.prefix);
    shop.order(&id, 1_000, "1 Main St").await;
    shop.order(&id, 1_000, "1 Main St").await; // the same event id: JetStream keeps one
    shop.processed("shipping", &id, "payment.charged").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await; // the redeliveries come and go
    assert_eq!(shop.stock_and_balance().await, (8, 9_000));
    let charges: i64 = shop
        .db
        .query_one("SELECT count(*) FROM payment.charges WHERE order_id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(charges, 1);
    shop.all_running();
}
