//! The checkout without an orchestrator: each service reacts to events and emits its own, over
//! NATS JetStream, through a transactional outbox.
//!
//! ```text
//!  order.placed ──► inventory: reserve ──► inventory.reserved ──► payment: charge ──► payment.charged ──► shipping: ship ──► shipping.shipped
//!                          └─► inventory.rejected            └─► payment.declined          └─► shipping.failed
//!                                                                 ▼                               ▼
//!                                         inventory: release ◄────┘      payment: refund ──► payment.refunded ──► inventory: release
//!                                         ──► inventory.released (the order is compensated)
//! ```
//!
//! Each handler runs in one local transaction: `first_time(consumer, msg_id)` (a redelivered
//! event is a no-op), the step's effect, and the next event `enqueue`d in the outbox. A relay
//! publishes the outbox with `Nats-Msg-Id = {order}:{event}`; the handler acks the event only
//! after its transaction committed, so a crash in between redelivers it — and the processed row
//! makes that harmless.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use concord_nats::{Message, Nats};
use concord_participants::outbox::{enqueue, ensure_tables, first_time};
use concord_saga::Phase;
use serde_json::Value;
use tokio_postgres::{Client, NoTls};

use crate::{apply, AbortOnDrop, Declined, Service};

/// What a service does with an event: the step, and the events it emits on success and on a
/// business failure.
fn reaction(service: Service, event: &str) -> Option<(Phase, &'static str, Option<&'static str>)> {
    match (service, event) {
        (Service::Inventory, "order.placed") => {
            Some((Phase::Action, "inventory.reserved", Some("inventory.rejected")))
        }
        (Service::Inventory, "payment.declined" | "payment.refunded") => {
            Some((Phase::Compensation, "inventory.released", None))
        }
        (Service::Payment, "inventory.reserved") => {
            Some((Phase::Action, "payment.charged", Some("payment.declined")))
        }
        (Service::Payment, "shipping.failed") => {
            Some((Phase::Compensation, "payment.refunded", None))
        }
        (Service::Shipping, "payment.charged") => {
            Some((Phase::Action, "shipping.shipped", Some("shipping.failed")))
        }
        _ => None,
    }
}

/// Where a choreographed checkout runs: the stream, the subject prefix of its events, and the
/// schema each service keeps its outbox and processed-events tables in (`{schema}_{service}`).
#[derive(Debug, Clone)]
pub struct Setup {
    pub stream: String,
    pub prefix: String,
    pub schema: String,
    pub db: String,
    pub nats: SocketAddr,
}

impl Setup {
    fn service_schema(&self, service: Service) -> String {
        format!("{}_{}", self.schema, service.name())
    }

    /// The service's database URL with its outbox schema first on the search path.
    pub fn service_url(&self, service: Service) -> String {
        format!("{} options='-c search_path={}'", self.db, self.service_schema(service))
    }
}

async fn connect(setup: &Setup, service: Service) -> Result<Client, String> {
    // The service's own tables (schema, stock/accounts/shipments) exist once it has connected.
    drop(crate::connect(service, &setup.db).await?);
    let (client, connection) = tokio_postgres::connect(&setup.service_url(service), NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let schema = setup.service_schema(service);
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .await
        .map_err(|e| e.to_string())?;
    ensure_tables(&client).await.map_err(|e| e.to_string())?;
    Ok(client)
}

/// Handles one event in one transaction; returns once it is committed (then it may be acked).
async fn handle(
    service: Service,
    setup: &Setup,
    client: &mut Client,
    message: &Message,
) -> Result<(), String> {
    let e = |e: tokio_postgres::Error| e.to_string();
    let event = message.subject.strip_prefix(&format!("{}.", setup.prefix)).unwrap_or_default();
    let Some((phase, success, failure)) = reaction(service, event) else { return Ok(()) };
    let msg_id = message.header("Nats-Msg-Id").unwrap_or_default().to_string();
    let consumer = service.name();
    let order: Value = serde_json::from_slice(&message.payload).map_err(|e| e.to_string())?;
    let id = order["order"].as_str().unwrap_or_default().to_string();
    let emit = |name: &str| (format!("{}.{name}", setup.prefix), format!("{id}:{name}"));
    let txn = client.transaction().await.map_err(e)?;
    if !first_time(&txn, consumer, &msg_id).await.map_err(e)? {
        return txn.commit().await.map_err(e); // a redelivery: done before
    }
    match apply(service, phase, &txn, &order).await? {
        Ok(()) => {
            let (subject, next_id) = emit(success);
            enqueue(&txn, &next_id, &subject, &order.to_string()).await.map_err(e)?;
            txn.commit().await.map_err(e)
        }
        Err(Declined(reason)) => {
            // The effect rolls back; the failure is recorded and announced in a transaction of
            // its own (the processed row again, so a redelivery does not retry the step).
            txn.rollback().await.map_err(e)?;
            let txn = client.transaction().await.map_err(e)?;
            if first_time(&txn, consumer, &msg_id).await.map_err(e)? {
                let mut announced = order.clone();
                announced["reason"] = Value::String(reason);
                if let Some(failure) = failure {
                    let (subject, next_id) = emit(failure);
                    enqueue(&txn, &next_id, &subject, &announced.to_string()).await.map_err(e)?;
                }
            }
            txn.commit().await.map_err(e)
        }
    }
}

/// Runs `service`'s handlers and its outbox relay until dropped. With `skip_first_acks`, the
/// first delivery of every event is handled but not acknowledged (a crash before the ack, or a
/// lost ack): JetStream redelivers it after `ack_wait`, which tests the de-duplication.
pub async fn run(
    service: Service,
    setup: Setup,
    ack_wait: Duration,
    skip_first_acks: bool,
) -> Result<(), String> {
    let mut client = connect(&setup, service).await?;
    let nats = Nats::connect(setup.nats, Duration::from_secs(5)).await?;
    nats.ensure_stream(&setup.stream, &[&format!("{}.>", setup.prefix)], Duration::from_secs(120))
        .await?;
    let durable = service.name();
    nats.ensure_consumer(&setup.stream, durable, &format!("{}.>", setup.prefix), ack_wait).await?;
    let (url, nats_address) = (setup.service_url(service), setup.nats);
    let _relay = AbortOnDrop(tokio::spawn(async move {
        let interval = Duration::from_millis(20);
        concord_participants::outbox::run_relay(&url, nats_address, interval, 100).await;
    }));
    let mut seen = std::collections::BTreeSet::new();
    loop {
        for message in nats.fetch(&setup.stream, durable, 1, Duration::from_millis(500)).await? {
            handle(service, &setup, &mut client, &message).await?;
            let id = message.header("Nats-Msg-Id").unwrap_or_default().to_string();
            if !skip_first_acks || !seen.insert(id) {
                nats.ack(&message).await?;
            }
        }
    }
}

/// Publishes an order (the order service's event), de-duplicated by the order id.
pub async fn place_order(nats: &Arc<Nats>, setup: &Setup, order: &Value) -> Result<(), String> {
    let id = order["order"].as_str().unwrap_or_default();
    let subject = format!("{}.order.placed", setup.prefix);
    nats.publish_once(
        &subject,
        &format!("{id}:placed"),
        order.to_string().as_bytes(),
        Duration::from_secs(5),
    )
    .await
    .map(|_| ())
}
