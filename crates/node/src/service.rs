//! The gRPC services: each request becomes an event on the node loop, validated first.

use std::pin::Pin;

use concord_types::TxnId;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::config::ClusterConfig;
use crate::driver::{Call, Event, Node, RoleState};
use crate::engine::Engine;
use crate::model::Model;
use crate::proto;
use concord_commit::ResourceParticipant as _;

use crate::auth::Right;

/// What every service holds: the way into the loop, and the cluster it belongs to.
/// How long adding a replica may wait for it to catch up.
const CHANGE_REPLICAS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub(crate) struct Handle<E: Engine> {
    pub events: mpsc::Sender<Event<E>>,
    pub config: std::sync::Arc<ClusterConfig>,
    pub me: String,
    /// The node's TLS, when the cluster has `[tls]`: how it dials other nodes.
    pub tls: Option<std::sync::Arc<crate::tls::NodeTls>>,
    /// Who may call what.
    pub auth: std::sync::Arc<crate::auth::Auth>,
    /// What the node's accepted links may hold of partly received frames.
    pub frames: crate::link::FrameBudget,
    /// Ids reserved by `Client.Reserve`, each with the moment it is given back unless it ran
    /// (one task releases them in order; see [`RESERVED_FOR`]).
    reservations: mpsc::Sender<(tokio::time::Instant, TxnId)>,
    /// A replicated coordinator's log and leadership (`replicated.rs`); None otherwise.
    pub replication: Option<std::sync::Arc<crate::replicated::Replication>>,
}

impl<E: Engine> Handle<E> {
    /// A handle on the loop behind `events`, and the task that gives back unused reservations.
    pub(crate) fn new(
        events: mpsc::Sender<Event<E>>,
        config: std::sync::Arc<ClusterConfig>,
        me: String,
        tls: Option<std::sync::Arc<crate::tls::NodeTls>>,
    ) -> Self {
        let (reservations, mut due) = mpsc::channel(PENDING_RELEASES);
        let loop_events = events.clone();
        tokio::spawn(async move {
            while let Some((at, txn)) = due.recv().await {
                tokio::time::sleep_until(at).await;
                // A no-op if it ran meanwhile: running uses the reservation up.
                let call: Call<E> = Box::new(move |node| node.release(txn));
                if loop_events.send(Event::Call(call)).await.is_err() {
                    return; // the node stopped
                }
            }
        });
        let auth = std::sync::Arc::new(crate::auth::Auth::new(&config));
        let frames = crate::link::FrameBudget::default();
        Handle { events, config, me, tls, auth, frames, reservations, replication: None }
    }
}

impl<E: Engine> Clone for Handle<E> {
    fn clone(&self) -> Self {
        Handle {
            events: self.events.clone(),
            config: self.config.clone(),
            me: self.me.clone(),
            tls: self.tls.clone(),
            auth: self.auth.clone(),
            frames: self.frames.clone(),
            reservations: self.reservations.clone(),
            replication: self.replication.clone(),
        }
    }
}

impl<E: Engine> std::fmt::Debug for Handle<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Handle({})", self.me)
    }
}

impl<E: Engine> Handle<E> {
    /// This node's replicated log, refused on a node that is no coordinator replica.
    fn replica(&self) -> Result<&std::sync::Arc<crate::replicated::Replication>, Status> {
        self.replication
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("this node is no coordinator replica"))
    }

    /// At a coordinator replica that does not lead, the refusal that names the leader.
    pub(crate) fn redirect(&self) -> Result<(), Status> {
        self.replication.as_ref().map_or(Ok(()), |r| r.redirect())
    }

    /// This node's name.
    pub(crate) fn name(&self) -> &str {
        &self.me
    }

    /// Runs `f` on the node and waits for its answer.
    pub(crate) async fn ask<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Node<E>) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        let call: Call<E> = Box::new(move |node| {
            let _ = tx.send(f(node));
        });
        self.events.send(Event::Call(call)).await.map_err(|_| stopping())?;
        rx.await.map_err(|_| stopping())
    }
}

/// A reserved id not submitted within this long is given back: it holds the coordinator's
/// forget mark while it is held.
const RESERVED_FOR: std::time::Duration = std::time::Duration::from_secs(12);

/// Reservations waiting to be given back: as many as a coordinator core holds reserved (its
/// `max_in_flight`). Beyond that the core drops the oldest itself, so a reservation that finds
/// this queue full needs no release.
const PENDING_RELEASES: usize = 10_000;

pub(crate) fn stopping() -> Status {
    Status::unavailable("the node is stopping")
}

type SubmitStream = Pin<Box<dyn Stream<Item = Result<proto::SubmitEvent, Status>> + Send>>;

#[tonic::async_trait]
impl<E: Engine> proto::client_server::Client for Handle<E> {
    type SubmitStream = SubmitStream;

    async fn submit(
        &self,
        request: Request<proto::SubmitRequest>,
    ) -> Result<Response<SubmitStream>, Status> {
        self.auth.check(&request, Right::Transact, "submit a transaction")?;
        self.redirect()?;
        let request = request.into_inner();
        let branches = E::Model::branches(&self.config, &request.writes)?;
        let reserved = match request.txn.as_str() {
            "" => None,
            id => Some(id.parse::<TxnId>().map_err(|e| Status::invalid_argument(e.to_string()))?),
        };
        let (reply, events) = mpsc::channel(4);
        let call: Call<E> = Box::new(move |node| node.submit(branches, reserved, reply));
        self.events.send(Event::Call(call)).await.map_err(|_| stopping())?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(events);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::TransactionInfo>, Status> {
        self.auth.check(&request, Right::Read, "ask a transaction's status")?;
        self.redirect()?;
        let txn: TxnId =
            request.into_inner().txn.parse().map_err(|e: concord_types::ParseTxnIdError| {
                Status::invalid_argument(e.to_string())
            })?;
        let (tx, rx) = oneshot::channel();
        self.ask(move |node| match &mut node.role {
            RoleState::Coordinator(c) => c.status(txn, tx, &mut node.io),
            RoleState::Shard(_) | RoleState::Acceptor(_) | RoleState::Standby => {
                let _ = tx.send(Err(Status::failed_precondition("ask the coordinator")));
            }
        })
        .await?;
        let info = rx.await.map_err(|_| stopping())??;
        Ok(Response::new(info))
    }

    async fn list(
        &self,
        request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListReply>, Status> {
        self.auth.check(&request, Right::Inspect, "list transactions")?;
        self.redirect()?;
        let request = request.into_inner();
        let limit = if request.limit == 0 { 50 } else { request.limit as usize };
        let transactions = self
            .ask(move |node| node.coordinator().map(|c| c.list(limit, request.running_only)))
            .await?
            .ok_or_else(|| Status::failed_precondition("ask the coordinator"))?;
        Ok(Response::new(proto::ListReply { transactions }))
    }

    async fn reserve(
        &self,
        request: Request<proto::ReserveRequest>,
    ) -> Result<Response<proto::ReserveReply>, Status> {
        self.auth.check(&request, Right::Transact, "reserve a transaction id")?;
        self.redirect()?;
        let (tx, rx) = oneshot::channel();
        self.ask(move |node| node.reserve(tx)).await?;
        let txn = rx.await.map_err(|_| stopping())??;
        let due = tokio::time::Instant::now() + RESERVED_FOR;
        let _ = self.reservations.try_send((due, txn)); // full: see `Handle::new`
        Ok(Response::new(proto::ReserveReply { txn: txn.to_string() }))
    }

    async fn topology(
        &self,
        request: Request<proto::TopologyRequest>,
    ) -> Result<Response<proto::TopologyReply>, Status> {
        self.auth.check(&request, Right::Read, "read the topology")?;
        let nodes = self
            .config
            .nodes
            .iter()
            .map(|n| proto::NodeInfo {
                name: n.name.clone(),
                id: n.id,
                role: n.role.to_string(),
                address: n.listen.to_string(),
            })
            .collect();
        Ok(Response::new(proto::TopologyReply { cluster: self.config.cluster.clone(), nodes }))
    }
}

#[tonic::async_trait]
impl<E: Engine> proto::node_server::Node for Handle<E> {
    async fn stand_for_leader(
        &self,
        request: Request<proto::StandForLeaderRequest>,
    ) -> Result<Response<proto::StandForLeaderReply>, Status> {
        self.auth.check(&request, Right::Operate, "move the coordinator's leadership")?;
        let replication = self.replica()?;
        let hold_back_ms = request.into_inner().hold_back_ms;
        if hold_back_ms > 0 {
            let hold = std::time::Duration::from_millis(u64::from(hold_back_ms.min(10_000)));
            replication.replica.hold_back(hold);
            return Ok(Response::new(proto::StandForLeaderReply {}));
        }
        replication.replica.stand_for_leader().await.map_err(Status::unavailable)?;
        Ok(Response::new(proto::StandForLeaderReply {}))
    }

    async fn change_replicas(
        &self,
        request: Request<proto::ChangeReplicasRequest>,
    ) -> Result<Response<proto::ChangeReplicasReply>, Status> {
        self.auth.check(&request, Right::Operate, "change the coordinator's replicas")?;
        let replication = self.replica()?;
        replication.redirect()?;
        let proto::ChangeReplicasRequest { node, add } = request.into_inner();
        let Some(replica) = self.config.coordinators().find(|n| n.id == node) else {
            return Err(Status::invalid_argument(format!(
                "node {node} is not a coordinator of cluster `{}`: add it to concord.toml on \
                 every node first",
                self.config.cluster
            )));
        };
        let changed = if add {
            // Blocks until the new replica has caught up: bounded, as it may not be running.
            let adding = replication.replica.add_voter(u64::from(node), replica.listen.to_string());
            match tokio::time::timeout(CHANGE_REPLICAS_TIMEOUT, adding).await {
                Ok(changed) => changed,
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "{} did not catch up within {} s: is it running, started with --join?",
                        replica.name,
                        CHANGE_REPLICAS_TIMEOUT.as_secs()
                    )))
                }
            }
        } else {
            let removing = replication.replica.remove_voter(u64::from(node));
            tokio::time::timeout(CHANGE_REPLICAS_TIMEOUT, removing).await.map_err(|_| {
                Status::deadline_exceeded(format!(
                    "removing {} was not committed within {} s: is a majority up?",
                    replica.name,
                    CHANGE_REPLICAS_TIMEOUT.as_secs()
                ))
            })?
        };
        changed.map_err(|e| Status::failed_precondition(e.to_string()))?;
        let voters = replication.replica.voters().into_iter();
        let voters = voters.filter_map(|id| u32::try_from(id).ok()).collect();
        Ok(Response::new(proto::ChangeReplicasReply { voters }))
    }

    async fn health(
        &self,
        request: Request<proto::HealthRequest>,
    ) -> Result<Response<proto::HealthReply>, Status> {
        self.auth.check(&request, Right::Read, "read health")?;
        let me = self.me.clone();
        let role = self.config.node(&me).map(|n| n.role.to_string()).unwrap_or_default();
        let replica = self.replication.as_ref().map(|r| r.health());
        let reply = self
            .ask(move |node| {
                let (appends, syncs) = node.io.log.counts();
                proto::HealthReply {
                    name: me,
                    role,
                    log_records: appends,
                    log_syncs: syncs,
                    checkpoints: node.io.log.checkpoints(),
                    in_flight: u32::try_from(node.in_flight()).unwrap_or(u32::MAX),
                    dropped_sends: node.io.dropped_sends(),
                    decisions_remembered: node.decisions_remembered(),
                    data_loss_accepted: node.data_loss_accepted,
                    lost_commits: node.lost_commits(),
                    replica,
                }
            })
            .await?;
        Ok(Response::new(reply))
    }

    async fn read_shard(
        &self,
        request: Request<proto::ReadShardRequest>,
    ) -> Result<Response<proto::ReadShardReply>, Status> {
        self.auth.check(&request, Right::Inspect, "read a shard")?;
        let keys = request.into_inner().keys;
        let reply = self
            .ask(move |node| match &node.role {
                RoleState::Shard(p) => E::Model::read_shard(p.resource(), p.in_doubt(), &keys),
                RoleState::Coordinator(_) | RoleState::Acceptor(_) | RoleState::Standby => {
                    Err(Status::failed_precondition("this node is not a shard"))
                }
            })
            .await??;
        Ok(Response::new(reply))
    }
}
