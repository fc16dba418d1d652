//! The e-commerce checkout of the seed documents as three small services, each with its own
//! PostgreSQL schema, each step one local transaction guarded by the idempotency barrier:
//!
//! | service | action | compensation | business failure (409) |
//! |---|---|---|---|
//! | inventory | `POST /reserve` — stock −qty, a reservation row | `POST /release` | out of stock |
//! | payment | `POST /charge` — balance −amount, a charge row | `POST /refund` | declined (balance too low) |
//! | shipping | `POST /ship` — a shipment row | (none: last step) | undeliverable address |
//!
//! Every call's body is the order (`{"order", "sku", "qty", "customer", "amount", "address"}`)
//! and its `Idempotency-Key` header names the (saga, step, phase) the barrier marks.
//! [`checkout_saga`] is the orchestrated saga over them (`concord saga start`);
//! [`choreography`] runs the same steps with no orchestrator, as events over NATS JetStream.

pub mod choreography;

use std::net::SocketAddr;
use std::sync::Arc;

use concord_http::{Request, Response};
use concord_participants::barrier::{barrier, ensure_table};
use concord_saga::{BarrierVerdict, Phase};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Inventory,
    Payment,
    Shipping,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Inventory => "inventory",
            Service::Payment => "payment",
            Service::Shipping => "shipping",
        }
    }

    /// The service's schema: its tables, in its own PostgreSQL schema.
    fn schema_sql(self) -> &'static str {
        match self {
            Service::Inventory => {
                "CREATE SCHEMA IF NOT EXISTS inventory;
                 CREATE TABLE IF NOT EXISTS inventory.stock (sku text PRIMARY KEY, available int NOT NULL CHECK (available >= 0));
                 CREATE TABLE IF NOT EXISTS inventory.reservations (order_id text PRIMARY KEY, sku text NOT NULL, qty int NOT NULL);"
            }
            Service::Payment => {
                "CREATE SCHEMA IF NOT EXISTS payment;
                 CREATE TABLE IF NOT EXISTS payment.accounts (customer text PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
                 CREATE TABLE IF NOT EXISTS payment.charges (order_id text PRIMARY KEY, customer text NOT NULL, amount bigint NOT NULL, refunded bool NOT NULL DEFAULT false);"
            }
            Service::Shipping => {
                "CREATE SCHEMA IF NOT EXISTS shipping;
                 CREATE TABLE IF NOT EXISTS shipping.shipments (order_id text PRIMARY KEY, address text NOT NULL);"
            }
        }
    }
}

impl std::str::FromStr for Service {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "inventory" => Ok(Service::Inventory),
            "payment" => Ok(Service::Payment),
            "shipping" => Ok(Service::Shipping),
            other => Err(format!("unknown service `{other}`: inventory, payment or shipping")),
        }
    }
}

/// A business failure: the local transaction rolls back and the step answers 409.
pub(crate) struct Declined(pub(crate) String);

type Db = Arc<Mutex<Client>>;

/// Connects to `url` and creates the service's schema and its barrier table.
pub async fn connect(service: Service, url: &str) -> Result<Client, String> {
    let (client, connection) =
        tokio_postgres::connect(url, NoTls).await.map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock(7336022); {} COMMIT;",
            service.schema_sql()
        ))
        .await
        .map_err(|e| format!("{} schema: {e}", service.name()))?;
    // Each service keeps its barrier in its own schema.
    client
        .batch_execute(&format!("SET search_path TO {}, public", service.name()))
        .await
        .map_err(|e| e.to_string())?;
    ensure_table(&client).await.map_err(|e| format!("barrier table: {e}"))?;
    Ok(client)
}

fn field<'a>(order: &'a Value, name: &str) -> Result<&'a Value, String> {
    order.get(name).ok_or_else(|| format!("the order has no `{name}`"))
}

fn text(order: &Value, name: &str) -> Result<String, String> {
    field(order, name)?.as_str().map(str::to_string).ok_or_else(|| format!("`{name}` must be text"))
}

fn number(order: &Value, name: &str) -> Result<i64, String> {
    field(order, name)?.as_i64().ok_or_else(|| format!("`{name}` must be a whole number"))
}

/// The step's effect, inside the transaction that holds its barrier marker.
pub(crate) async fn apply(
    service: Service,
    phase: Phase,
    txn: &tokio_postgres::Transaction<'_>,
    order: &Value,
) -> Result<Result<(), Declined>, String> {
    let db = |e: tokio_postgres::Error| e.to_string();
    let id = text(order, "order")?;
    match (service, phase) {
        (Service::Inventory, Phase::Action) => {
            let (sku, qty) = (
                text(order, "sku")?,
                i32::try_from(number(order, "qty")?).map_err(|e| e.to_string())?,
            );
            let taken = txn
                .execute(
                    "UPDATE inventory.stock SET available = available - $2 WHERE sku = $1 AND available >= $2",
                    &[&sku, &qty],
                )
                .await
                .map_err(db)?;
            if taken == 0 {
                return Ok(Err(Declined(format!("{sku}: out of stock"))));
            }
            txn.execute(
                "INSERT INTO inventory.reservations (order_id, sku, qty) VALUES ($1, $2, $3)",
                &[&id, &sku, &qty],
            )
            .await
            .map_err(db)?;
        }
        (Service::Inventory, Phase::Compensation) => {
            let row = txn
                .query_opt(
                    "DELETE FROM inventory.reservations WHERE order_id = $1 RETURNING sku, qty",
                    &[&id],
                )
                .await
                .map_err(db)?;
            if let Some(row) = row {
                let (sku, qty): (String, i32) = (row.get(0), row.get(1));
                txn.execute(
                    "UPDATE inventory.stock SET available = available + $2 WHERE sku = $1",
                    &[&sku, &qty],
                )
                .await
                .map_err(db)?;
            }
        }
        (Service::Payment, Phase::Action) => {
            let (customer, amount) = (text(order, "customer")?, number(order, "amount")?);
            let charged = txn
                .execute(
                    "UPDATE payment.accounts SET balance = balance - $2 WHERE customer = $1 AND balance >= $2",
                    &[&customer, &amount],
                )
                .await
                .map_err(db)?;
            if charged == 0 {
                return Ok(Err(Declined(format!("{customer}: payment declined"))));
            }
            txn.execute(
                "INSERT INTO payment.charges (order_id, customer, amount) VALUES ($1, $2, $3)",
                &[&id, &customer, &amount],
            )
            .await
            .map_err(db)?;
        }
        (Service::Payment, Phase::Compensation) => {
            let row = txn
                .query_opt(
                    "UPDATE payment.charges SET refunded = true WHERE order_id = $1 AND NOT refunded RETURNING customer, amount",
                    &[&id],
                )
                .await
                .map_err(db)?;
            if let Some(row) = row {
                let (customer, amount): (String, i64) = (row.get(0), row.get(1));
                txn.execute(
                    "UPDATE payment.accounts SET balance = balance + $2 WHERE customer = $1",
                    &[&customer, &amount],
                )
                .await
                .map_err(db)?;
            }
        }
        (Service::Shipping, Phase::Action) => {
            let address = text(order, "address")?;
            if address == "nowhere" {
                return Ok(Err(Declined("undeliverable address".into())));
            }
            txn.execute(
                "INSERT INTO shipping.shipments (order_id, address) VALUES ($1, $2)",
                &[&id, &address],
            )
            .await
            .map_err(db)?;
        }
        (Service::Shipping, Phase::Compensation) => {
            txn.execute("DELETE FROM shipping.shipments WHERE order_id = $1", &[&id])
                .await
                .map_err(db)?;
        }
        (_, Phase::Confirm) => return Err("these services are not TCC participants".into()),
    }
    Ok(Ok(()))
}

/// One call: barrier and effect in one local transaction.
async fn handle(service: Service, db: &Db, request: Request) -> Response {
    let Some(key) = request.header("idempotency-key").map(str::to_string) else {
        return Response::error(400, "no Idempotency-Key header");
    };
    let Some((branch, phase)) = key.rsplit_once(':') else {
        return Response::error(400, "Idempotency-Key is SAGA:STEP:PHASE");
    };
    let Some((saga, step)) = branch.rsplit_once(':') else {
        return Response::error(400, "Idempotency-Key is SAGA:STEP:PHASE");
    };
    let phase = match (request.segments().as_slice(), phase) {
        (["reserve" | "charge" | "ship"], "action") => Phase::Action,
        (["release" | "refund" | "unship"], "compensation") => Phase::Compensation,
        _ => {
            return Response::error(
                404,
                &format!("{} has no {} for {}", service.name(), phase, request.target),
            )
        }
    };
    let order: Value = match serde_json::from_str(&request.body) {
        Ok(order) => order,
        Err(e) => return Response::error(400, &format!("the body is not an order: {e}")),
    };
    let mut client = db.lock().await;
    let outcome = async {
        let txn = client.transaction().await.map_err(|e| e.to_string())?;
        let verdict = barrier(&txn, saga, step, phase).await.map_err(|e| e.to_string())?;
        let response = match verdict {
            BarrierVerdict::Apply => match apply(service, phase, &txn, &order).await? {
                Ok(()) => Response::json(200, &json!({ "applied": true })),
                Err(Declined(reason)) => {
                    // Marker and effect roll back together: nothing happened here.
                    txn.rollback().await.map_err(|e| e.to_string())?;
                    return Ok(Response::error(409, &reason));
                }
            },
            BarrierVerdict::Duplicate | BarrierVerdict::NullCompensation => {
                Response::json(200, &json!({ "applied": false, "verdict": format!("{verdict:?}") }))
            }
            BarrierVerdict::Hanging | BarrierVerdict::Refused => Response::error(
                409,
                &format!("{verdict:?}: this call comes after its compensation"),
            ),
        };
        txn.commit().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(response)
    }
    .await;
    // A database error is worth a retry (503): the transaction rolled back.
    outcome.unwrap_or_else(|e| Response::error(503, &e))
}

/// How long barrier markers are kept: far beyond any checkout saga's deadline (20 s) plus its
/// compensations' retries, after which no call for them can still arrive.
pub const BARRIER_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Serves `service` on `listener` until the task is dropped; every ten minutes it deletes
/// barrier markers older than [`BARRIER_RETENTION`].
pub async fn serve(service: Service, client: Client, listener: TcpListener) {
    let db: Db = Arc::new(Mutex::new(client));
    let cleaner = Arc::clone(&db);
    let _cleanup = AbortOnDrop(tokio::spawn(async move {
        loop {
            let client = cleaner.lock().await;
            if let Err(e) =
                concord_participants::barrier::forget_older_than(&client, BARRIER_RETENTION).await
            {
                eprintln!("{}: cleaning old barrier markers: {e}", service.name());
            }
            drop(client);
            tokio::time::sleep(std::time::Duration::from_secs(600)).await;
        }
    }));
    concord_http::serve(listener, move |request| {
        let db = Arc::clone(&db);
        async move { handle(service, &db, request).await }
    })
    .await;
}

/// The checkout saga over the three services: reserve, charge, ship.
pub fn checkout_saga(
    id: &str,
    inventory: SocketAddr,
    payment: SocketAddr,
    shipping: SocketAddr,
    order: &Value,
) -> Value {
    json!({
        "id": id,
        "name": "checkout",
        "payload": order,
        "deadline_ms": 20_000,
        "steps": [
            { "name": "reserve", "action": format!("http://{inventory}/reserve"),
              "compensation": format!("http://{inventory}/release"), "timeout_ms": 2_000,
              "retry_base_ms": 20, "retry_max_ms": 200 },
            { "name": "charge", "action": format!("http://{payment}/charge"),
              "compensation": format!("http://{payment}/refund"), "timeout_ms": 2_000,
              "retry_base_ms": 20, "retry_max_ms": 200 },
            { "name": "ship", "action": format!("http://{shipping}/ship"), "timeout_ms": 2_000,
              "retry_base_ms": 20, "retry_max_ms": 200 },
        ],
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
