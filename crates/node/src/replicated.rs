//! A coordinator replicated on 3 or 5 nodes (issue 21): no single machine holds a decision.
//!
//! Every coordinator replica runs the replicated log (`concord_replication`, openraft over
//! Concord's durable log). Only the leader runs the protocol core, and it runs it as *the*
//! coordinator — the first coordinator's id — so shards see one coordinator whichever replica
//! leads, and transaction ids keep naming it. Its records go to the replicated log instead of
//! a local one; a record is durable, and the core hears `Persisted`, once a majority has it.
//!
//! ```text
//!  raft metrics ──► watch_leadership ──(leads, log applied)──► Node::lead: a new core from
//!                                                              the committed records (a
//!                                                              restart: new epoch, re-drives
//!                                                              decisions, presumes abort)
//!                                   ──(no longer leads, or no   ► Node::stand_by: the core is
//!                                       majority heard)         dropped; late commits of its
//!                                                              records are ignored (by
//!                                                              incarnation)
//! ```
//!
//! A standby answers clients with the leader's address and closes shards' peer links, whose
//! senders then try the next coordinator replica (`peer_link::send_loop`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use concord_commit::Input;
use concord_replication::{RecordLog, Replica};
use concord_types::codec::Encode;
use concord_types::NodeId;
use tokio::sync::watch;
use tonic::Status;

use crate::config::ClusterConfig;
use crate::coordinator::CoordinatorRole;
use crate::driver::{Event, Node, RoleState};
use crate::engine::Engine;
use crate::service::Handle;

/// The metadata key a standby's refusal carries the leader's address in.
pub const LEADER_METADATA: &str = "concord-leader";
/// The metadata key every standby's refusal carries (with or without a leader to name): the
/// call did not run, and this replica knows no outcome; ask another.
pub const STANDBY_METADATA: &str = "concord-standby";

/// What a coordinator replica's services need of the replicated log.
#[derive(Debug)]
pub(crate) struct Replication {
    pub replica: Replica<RecordLog>,
    /// The queue every core of this replica writes through (and the watcher's barriers).
    pub submitter: concord_replication::Submitter,
    pub cluster: String,
    /// Whether this replica's core runs (it leads, and has recovered from the log).
    pub leading: AtomicBool,
    /// Counts this replica's stand-downs: the shards' peer links it took while leading watch
    /// it and close at once, so their next message goes to the new leader (waiting for the
    /// next message to find the link refused would lose that message: a vote, say, and the
    /// new leader's transaction would wait out its vote timeout).
    pub stand_downs: watch::Sender<u64>,
    /// Replica id → the node's client address, to name the leader to clients.
    pub addresses: BTreeMap<u64, SocketAddr>,
}

impl Replication {
    /// Refuses a client's call at a standby: UNAVAILABLE with the leader's address (message
    /// and `concord-leader` metadata) when one is known. Never an outcome: a standby knows none.
    pub fn redirect(&self) -> Result<(), Status> {
        if self.leading.load(Ordering::Acquire) {
            return Ok(());
        }
        let status = self.replica.status();
        // openraft may call this replica leader while its core does not run: it is still
        // recovering, or it stood down for want of a majority. Naming itself would send the
        // client straight back.
        let myself = status.leader == Some(status.id);
        let leader = status.leader.filter(|_| !myself).and_then(|id| self.addresses.get(&id));
        let mut status = match leader {
            Some(address) => Status::unavailable(format!(
                "this coordinator replica does not lead; the leader is at {address}"
            )),
            None if myself => Status::unavailable(
                "this coordinator replica was elected but does not lead yet: it is recovering \
                 from the log, or it hears no majority (a partition): retry, or ask another \
                 replica",
            ),
            None => Status::unavailable(
                "this coordinator replica does not lead, and no leader is known (an election \
                 is under way): retry",
            ),
        };
        if let Some(value) = leader.and_then(|a| a.to_string().parse().ok()) {
            status.metadata_mut().insert(LEADER_METADATA, value);
        }
        status
            .metadata_mut()
            .insert(STANDBY_METADATA, tonic::metadata::MetadataValue::from_static("1"));
        Err(status)
    }
}

impl Replication {
    /// This replica's view, for `Node.Health` (`concord cluster status`).
    pub fn health(&self) -> crate::proto::ReplicaHealth {
        let stats = self.replica.stats();
        let id = |raft_id: u64| u32::try_from(raft_id).unwrap_or(u32::MAX);
        crate::proto::ReplicaHealth {
            term: stats.status.term,
            leader: stats.status.leader.map(id),
            leading: self.leading.load(Ordering::Acquire),
            last_log_index: stats.status.last_log_index.unwrap_or(0),
            applied_index: stats.status.applied_index.unwrap_or(0),
            matched: stats
                .status
                .matched
                .iter()
                .map(|(replica, matched)| crate::proto::ReplicaMatch {
                    replica: id(*replica),
                    matched: *matched,
                    last_contact_ms: stats.last_contact_ms.get(replica).copied(),
                })
                .collect(),
            leader_changes: stats.leader_changes,
            quorum_ack_ms: stats.quorum_ack_ms,
            voters: self.replica.voters().into_iter().map(id).collect(),
        }
    }

    /// The console's cluster page: who leads, in which term, and how far each replica is
    /// behind (as this replica sees it; the leader knows every replica's match index).
    pub fn console_json(&self, config: &ClusterConfig) -> serde_json::Value {
        let health = self.health();
        let name = |id: u32| config.nodes.iter().find(|n| n.id == id).map(|n| n.name.clone());
        let replicas: Vec<serde_json::Value> = config
            .coordinators()
            .map(|node| {
                let replica = health.matched.iter().find(|m| m.replica == node.id);
                let matched = replica.and_then(|m| m.matched);
                serde_json::json!({
                    "name": node.name,
                    "id": node.id,
                    "address": node.listen.to_string(),
                    "leader": health.leader == Some(node.id),
                    "match_index": matched,
                    "lag_entries": matched.map(|m| health.last_log_index.saturating_sub(m)),
                    "last_contact_ms": replica.and_then(|m| m.last_contact_ms),
                })
            })
            .collect();
        serde_json::json!({
            "term": health.term,
            "leader": health.leader.and_then(name),
            "this_replica_leads": health.leading,
            "last_log_index": health.last_log_index,
            "applied_index": health.applied_index,
            "leader_changes": health.leader_changes,
            "quorum_ack_ms": health.quorum_ack_ms,
            "replicas": replicas,
        })
    }

    /// Prometheus text of the replicated log, labelled like the node's other series.
    pub fn metrics(&self, labels: &str) -> String {
        self.replica.prometheus(labels, self.leading.load(Ordering::Acquire))
    }
}

/// Whether a peer that proved `cert` may open a replica link: under `[tls]`, only a
/// coordinator replica of this cluster (a shard's certificate is the cluster's too, and a
/// forged AppendEntries from it would rewrite decisions); without TLS, anyone who knows the
/// cluster's name (loopback, or `--insecure`).
pub(crate) fn may_open_replica_link(
    tls: Option<&crate::tls::NodeTls>,
    cert: Option<&rustls::pki_types::CertificateDer<'static>>,
    config: &ClusterConfig,
) -> bool {
    let Some(tls) = tls else { return true };
    cert.is_some_and(|cert| config.coordinators().any(|n| tls.is_node(cert, NodeId(n.id))))
}

/// The replicas of `config`'s coordinator: raft id (the node id) → address.
pub(crate) fn members(config: &ClusterConfig) -> BTreeMap<u64, String> {
    config.coordinators().map(|n| (u64::from(n.id), n.listen.to_string())).collect()
}

/// Follows this replica's leadership until `stopped`: when it is in charge, its core starts
/// from the log; when it is no longer, the core stops.
///
/// In charge means: openraft says it leads *and* a majority acknowledged it within the longest
/// election timeout. A leader cut off from the others cannot commit, but until it hears a
/// higher term it still calls itself leader — and it would keep the shards' links, so the
/// majority's new leader would never hear their votes. Standing down closes those links (a
/// standby refuses them) and the shards find the new leader.
pub(crate) async fn watch_leadership<E: Engine>(
    replication: Arc<Replication>,
    handle: Handle<E>,
    mut stopped: watch::Receiver<bool>,
) {
    let raft = replication.replica.raft().clone();
    let mut metrics = raft.metrics();
    let lease_ms = handle.config.replication.election_max_ms;
    // Metrics change on events; a leader cut off has few, so look every heartbeat as well.
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(
        handle.config.replication.heartbeat_ms,
    ));
    let mut led_in: Option<u64> = None;
    loop {
        let charge = concord_replication::Charge::of(&metrics.borrow_and_update(), lease_ms);
        let (leads, term, in_charge) = (charge.leads, charge.term, charge.in_charge());
        if led_in.is_some_and(|t| !in_charge || t != term) {
            replication.leading.store(false, Ordering::Release);
            replication.stand_downs.send_modify(|n| *n += 1);
            let why = if leads { ": no majority heard from it" } else { "" };
            eprintln!(
                "{}: no longer leads the coordinator (led in term {}){why}",
                handle.me,
                led_in.unwrap_or(0)
            );
            led_in = None;
            let call: crate::driver::Call<E> = Box::new(Node::stand_by);
            if handle.events.send(Event::Call(call)).await.is_err() {
                return;
            }
        }
        if in_charge && led_in.is_none() {
            // First a barrier through the one submitter: whatever an earlier core of this
            // replica queued is then in the log ahead of it (or refused). Then wait until every
            // entry of the log is applied: the machine holds every record any earlier leader
            // committed *and* every record that may yet commit — the log's uncommitted tail,
            // which this leader will commit. The committed prefix alone let a new core presume
            // abort for a transaction whose COMMIT record committed just after
            // (`crash-test --coordinators 3` found it: status said COMMITTING for transfers the
            // shards had aborted).
            // Bounded: a leader that cannot commit (no majority) tries again on the next look.
            let ready = async {
                replication.submitter.barrier().await
                    && replication.replica.whole_log_applied().await
            };
            let recovering = std::time::Duration::from_millis(10 * lease_ms);
            if tokio::time::timeout(recovering, ready).await.unwrap_or(false) {
                let records =
                    replication.replica.machine().lock().expect("not poisoned").records().to_vec();
                led_in = Some(term);
                eprintln!(
                    "{}: leads the coordinator in term {term}, from {} replicated records",
                    handle.me,
                    records.len()
                );
                let config = Arc::clone(&handle.config);
                let leading = Arc::clone(&replication);
                let call: crate::driver::Call<E> = Box::new(move |node| {
                    node.lead(&config, &records);
                    leading.leading.store(true, Ordering::Release);
                });
                if handle.events.send(Event::Call(call)).await.is_err() {
                    return;
                }
                continue; // look again at once: leadership may have moved meanwhile
            }
        }
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

impl<E: Engine> Node<E> {
    /// Starts a core as the leader, from the records the replicated log committed: exactly a
    /// coordinator's restart (a new epoch, logged decisions re-driven, the undecided presumed
    /// aborted).
    pub(crate) fn lead(&mut self, config: &ClusterConfig, raw: &[Vec<u8>]) {
        let mut records = Vec::with_capacity(raw.len());
        for (i, bytes) in raw.iter().enumerate() {
            match E::Record::from_bytes(bytes) {
                Ok(record) => records.push(record),
                Err(e) => {
                    let error = format!("replicated record {i} cannot be read ({e:?})");
                    let _ = self.io.internal.send(Event::LogFailed(error));
                    return;
                }
            }
        }
        let id = NodeId(config.coordinator().id);
        let shards: BTreeMap<NodeId, String> =
            config.shards().map(|n| (NodeId(n.id), n.name.clone())).collect();
        let mut role = CoordinatorRole::<E>::new(id, E::coordinator(id, config), shards);
        role.recovered(&records);
        self.role = RoleState::Coordinator(Box::new(role));
        self.io.timers = concord_types::TimerHeap::default();
        self.io.records_since_checkpoint = 0;
        if let Some(replicated) = &mut self.io.replicated {
            replicated.incarnation += 1;
        }
        // Records that decode but contradict each other trip the core's assertions: the node
        // stops naming the replicated log, as a local log so damaged is refused at start.
        let replayed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.step(Input::Restart { records });
        }));
        if let Err(panic) = replayed {
            let what = crate::panic_text(panic.as_ref());
            let error = format!("the replicated records are inconsistent ({what})");
            let _ = self.io.internal.send(Event::LogFailed(error));
        }
    }

    /// Stops the core: this replica no longer leads. Clients waiting on it lose their answer
    /// (their outcome is unknown: they ask the new leader); records it submitted may still be
    /// committed, and the new leader's core recovers them.
    pub(crate) fn stand_by(&mut self) {
        self.role = RoleState::Standby;
        self.io.timers = concord_types::TimerHeap::default();
    }
}
