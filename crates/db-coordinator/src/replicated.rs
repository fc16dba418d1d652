//! A replicated database coordinator (issue 21): 3 or 5 `concord db serve --replica ID`
//! processes, none of which holds a decision alone.
//!
//! Every replica runs the replicated log (`concord_replication`: openraft over Concord's
//! durable log). Only the leader runs a [`Coordinator`], and it runs it as *the* coordinator —
//! the configured `node_id` — so gids and transaction ids name one coordinator whichever
//! replica leads. Its records go to the replicated log: a decision is durable, and the core
//! hears so, once a majority has it on disk.
//!
//! ```text
//!  raft metrics ──► follow ──(in charge, whole log applied)──► Coordinator::lead from the
//!                                                             records: a restart (new epoch,
//!                                                             decisions re-driven, undecided
//!                                                             presumed aborted), then a
//!                                                             reconciliation of every
//!                                                             database's prepared branches
//!                          ──(no longer leads, or no majority──► the coordinator is retired
//!                              heard)                            (writes nothing more) and
//!                                                               stopped (waiting clients:
//!                                                               outcome unknown here)
//! ```
//!
//! A standby runs nothing against the databases. Its HTTP API answers `/health`, `/metrics`
//! and `/v1/cluster` for itself and redirects every other request to the leader: `307` with
//! `Location` (a request it refuses has not run, so replaying it — a POST included — is
//! safe), or `503` with `Retry-After` while no leader is known.
//!
//! Presumed abort on a stale leader is harmless: a leader cut off from the others stands down
//! once no majority has answered it for the longest election timeout, before a new leader can
//! be elected and recover; and the branches of a newer leader's transactions carry a newer
//! epoch, which reconciliation leaves alone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_replication::{RecordLog, Replica};
use tokio::sync::watch;

use crate::config::DatabasesConfig;
use crate::coordinator::{Coordinator, Fault, ReplicatedSink};

/// How long adding or removing a replica may take (catching a new one up included).
const MEMBERSHIP_LIMIT: Duration = Duration::from_secs(30);

/// How long a new leader may take to apply the log and start its coordinator (its epoch
/// durable, its databases' schema checked) before it gives up and looks again.
const LEAD_LIMIT: Duration = Duration::from_secs(15);

/// One replica: the replicated log, and the coordinator while this replica leads.
pub struct ReplicatedCoordinator {
    config: DatabasesConfig,
    me: u32,
    data_dir: PathBuf,
    fault: Option<Fault>,
    replica: Replica<RecordLog>,
    submitter: concord_replication::Submitter,
    /// The running coordinator and its reconciliation task, while this replica leads.
    leading: Mutex<Option<Leading>>,
    /// The longest election timeout: a leader no majority answered for this long stands down.
    lease: Duration,
    heartbeat: Duration,
}

struct Leading {
    coordinator: Arc<Coordinator>,
    recovery: tokio::task::JoinHandle<()>,
    term: u64,
}

impl std::fmt::Debug for ReplicatedCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedCoordinator").field("me", &self.me).finish_non_exhaustive()
    }
}

/// What a standby tells a client instead of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// Ask the leader, at this HTTP address.
    Leader(SocketAddr),
    /// No leader known (an election, a partition, or a leader still recovering): retry.
    NoLeader(&'static str),
}

impl ReplicatedCoordinator {
    /// Starts replica `me` of `config`'s replicated coordinator: its store in `data_dir` (a
    /// directory of another replica or cluster is refused), its replica link on its `raft`
    /// address, dialled and let in by `links` (plain TCP, or mutual TLS); with `join`, an empty
    /// directory waits to be added instead of starting a new cluster. Leading comes later, by
    /// election ([`ReplicatedCoordinator::follow`]).
    pub async fn start<L>(
        config: DatabasesConfig,
        me: u32,
        join: bool,
        data_dir: &Path,
        (fault, links): (Option<Fault>, L),
        stopped: watch::Receiver<bool>,
    ) -> Result<Arc<Self>, String>
    where
        L: concord_replication::Connect + concord_replication::Accept + Clone,
    {
        let this = *config.replica(me)?;
        let members: BTreeMap<u64, String> =
            config.replicas.iter().map(|r| (u64::from(r.id), r.raft.to_string())).collect();
        let cluster = config.replica_cluster();
        let mut options =
            concord_replication::Options::new(cluster.clone(), u64::from(me), data_dir, members);
        // A new cluster's replicas all propose the configuration on their empty directories; a
        // joiner (a replacement for a replica whose directory was lost) proposes nothing and
        // votes for no one until the leader adds it.
        options.bootstrap = !join;
        let (lease, heartbeat) = (options.election_timeout.1, options.heartbeat);
        let listener = tokio::net::TcpListener::bind(this.raft)
            .await
            .map_err(|e| format!("replica {me}: cannot listen on {} (raft): {e}", this.raft))?;
        let wire = concord_replication::TcpWire::with_connect(&cluster, links.clone());
        let replica = Replica::start(options, RecordLog::default(), wire)
            .await
            .map_err(|e| format!("replica {me}: {e}"))?;
        tokio::spawn(concord_replication::tcp::serve_with(
            listener,
            replica.raft().clone(),
            cluster,
            stopped,
            Arc::new(links),
        ));
        Ok(Arc::new(ReplicatedCoordinator {
            submitter: replica.submitter(),
            config,
            me,
            data_dir: data_dir.to_path_buf(),
            fault,
            replica,
            leading: Mutex::new(None),
            lease,
            heartbeat,
        }))
    }

    /// The coordinator, if this replica leads and has recovered.
    pub fn coordinator(&self) -> Option<Arc<Coordinator>> {
        self.leading.lock().expect("not poisoned").as_ref().map(|l| Arc::clone(&l.coordinator))
    }

    /// Where a standby sends a client.
    pub fn redirect(&self) -> Redirect {
        let status = self.replica.status();
        if status.leader == Some(status.id) {
            return Redirect::NoLeader(
                "this replica was elected but does not lead yet: it is recovering from the \
                 log, or it hears no majority (a partition); retry, or ask another replica",
            );
        }
        let address = status.leader.and_then(|id| {
            self.config.replicas.iter().find(|r| u64::from(r.id) == id).map(|r| r.listen)
        });
        match address {
            Some(address) => Redirect::Leader(address),
            None => Redirect::NoLeader(
                "this replica does not lead and knows no leader (an election is under way); \
                 retry",
            ),
        }
    }

    /// `replication` in `GET /v1/cluster`: this replica's view of the replicated log.
    pub fn status_json(&self) -> serde_json::Value {
        let stats = self.replica.stats();
        let status = &stats.status;
        let last = status.last_log_index.unwrap_or(0);
        let replicas: Vec<serde_json::Value> = self
            .config
            .replicas
            .iter()
            .map(|r| {
                let matched = status.matched.get(&u64::from(r.id)).copied().flatten();
                serde_json::json!({
                    "name": format!("replica {}", r.id),
                    "id": r.id,
                    "address": r.listen.to_string(),
                    "raft": r.raft.to_string(),
                    "leader": status.leader == Some(u64::from(r.id)),
                    "match_index": matched,
                    "lag_entries": matched.map(|m| last.saturating_sub(m)),
                    "last_contact_ms": stats.last_contact_ms.get(&u64::from(r.id)),
                })
            })
            .collect();
        serde_json::json!({
            "replica": self.me,
            "term": status.term,
            "leader": status.leader.map(|id| format!("replica {id}")),
            "leader_id": status.leader,
            "this_replica_leads": self.coordinator().is_some(),
            "last_log_index": status.last_log_index,
            "applied_index": status.applied_index,
            "leader_changes": stats.leader_changes,
            "quorum_ack_ms": stats.quorum_ack_ms,
            "voters": self.replica.voters(),
            "replicas": replicas,
        })
    }

    /// `GET /v1/cluster` on a standby: who it is and what it sees.
    pub fn standby_cluster_json(&self) -> serde_json::Value {
        serde_json::json!({
            "role": "database-coordinator",
            "cluster": self.config.cluster,
            "node": format!("n{}", self.config.node_id),
            "version": env!("CARGO_PKG_VERSION"),
            "data_dir": self.data_dir.display().to_string(),
            "leads": false,
            "replication": self.status_json(),
        })
    }

    /// The replicated log's Prometheus series (both on the leader and on standbys).
    pub fn metrics(&self) -> String {
        let labels = format!("replica=\"{}\"", self.me);
        let leading = self.coordinator().is_some();
        self.replica.prometheus(&labels, leading)
    }

    /// Follows this replica's leadership until `stopped`: while it is in charge — openraft
    /// says it leads *and* a majority answered it within the longest election timeout — its
    /// coordinator runs; when it is no longer, the coordinator is retired and stopped.
    pub async fn follow(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let raft = self.replica.raft().clone();
        let mut metrics = raft.metrics();
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        // A leader cut off hears few events: look every heartbeat as well.
        let mut tick = tokio::time::interval(self.heartbeat);
        loop {
            let charge = concord_replication::Charge::of(&metrics.borrow_and_update(), lease_ms);
            let (leads, term, in_charge) = (charge.leads, charge.term, charge.in_charge());
            let led_in = self.leading.lock().expect("not poisoned").as_ref().map(|l| l.term);
            if led_in.is_some_and(|t| !in_charge || t != term) {
                let why = if leads { ": no majority heard from it" } else { "" };
                eprintln!(
                    "concord: replica {} no longer leads the coordinator (led in term {}){why}",
                    self.me,
                    led_in.unwrap_or(0)
                );
                self.stand_down().await;
            }
            if in_charge && led_in.is_none() && self.lead(term).await {
                continue; // look again at once: leadership may have moved meanwhile
            }
            let go_on = tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => false,
                changed = metrics.changed() => changed.is_ok(),
                _ = tick.tick() => true,
            };
            if !go_on {
                self.stand_down().await;
                return;
            }
        }
    }

    /// Starts the coordinator from the replicated records; false if it could not (it no
    /// longer leads, or no majority answers): the next look tries again.
    async fn lead(&self, term: u64) -> bool {
        let sink = ReplicatedSink { submitter: self.submitter.clone(), retired: Arc::default() };
        let retired = Arc::clone(&sink.retired);
        let started = tokio::time::timeout(LEAD_LIMIT, async {
            // First a barrier through the one submitter: whatever an earlier coordinator of
            // this replica queued is then in the log ahead of it (or refused). Then wait until
            // every entry is applied: the records hold what any earlier leader committed *and*
            // what may yet commit (the log's uncommitted tail, which this leader commits) — a
            // COMMIT decision there must not be presumed aborted.
            if !(self.submitter.barrier().await && self.replica.whole_log_applied().await) {
                return Err("the log could not be brought up to date".to_string());
            }
            let records = self.replica.machine().lock().expect("not poisoned").records().to_vec();
            eprintln!(
                "concord: replica {} leads the coordinator in term {term}, from {} replicated \
                 records",
                self.me,
                records.len()
            );
            Coordinator::lead(&self.config, &records, sink, &self.data_dir, self.fault.clone())
                .await
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|_| Err(format!("not started within {LEAD_LIMIT:?}")));
        let coordinator = match started {
            Ok(coordinator) => coordinator,
            Err(e) => {
                // Whatever it began writes nothing more.
                retired.store(true, Ordering::Release);
                eprintln!("concord: replica {} could not lead: {e}", self.me);
                return false;
            }
        };
        eprintln!("concord: replica {} leads: epoch {}", self.me, coordinator.epoch());
        // The old leader's prepared branches: committed or rolled back as the log says, at
        // once rather than at the next interval.
        let report = coordinator.reconcile(false).await;
        for error in &report.errors {
            eprintln!("concord: recovery: {error}");
        }
        for action in &report.actions {
            eprintln!("concord: recovery: {} — {}", action.action, action.result);
        }
        let recovery =
            coordinator.spawn_recovery(Duration::from_millis(self.config.recovery.interval_ms));
        *self.leading.lock().expect("not poisoned") = Some(Leading { coordinator, recovery, term });
        true
    }

    async fn stand_down(&self) {
        let Some(leading) = self.leading.lock().expect("not poisoned").take() else { return };
        leading.recovery.abort();
        leading.coordinator.stand_down().await;
    }

    /// On the leader: makes configured replica `id` a voter — a learner first, caught up (by
    /// snapshot if need be), then a member. Returns the voters.
    pub async fn add_replica(&self, id: u32) -> Result<Vec<u64>, String> {
        let raft = self.config.replica(id)?.raft.to_string();
        let added = self.replica.add_voter(u64::from(id), raft);
        match tokio::time::timeout(MEMBERSHIP_LIMIT, added).await {
            Ok(Ok(())) => Ok(self.replica.voters().into_iter().collect()),
            Ok(Err(e)) => Err(format!("replica {id}: {e}")),
            Err(_) => Err(format!(
                "replica {id} was not added within {MEMBERSHIP_LIMIT:?}: is it up, started \
                 with --join, and reachable at its raft address?"
            )),
        }
    }

    /// On the leader: takes replica `id` out of the voters. Returns the voters.
    pub async fn remove_replica(&self, id: u32) -> Result<Vec<u64>, String> {
        self.config.replica(id)?;
        let removed = self.replica.remove_voter(u64::from(id));
        match tokio::time::timeout(MEMBERSHIP_LIMIT, removed).await {
            Ok(Ok(())) => Ok(self.replica.voters().into_iter().collect()),
            Ok(Err(e)) => Err(format!("replica {id}: {e}")),
            Err(_) => Err(format!("replica {id} was not removed within {MEMBERSHIP_LIMIT:?}")),
        }
    }

    /// Stops the replicated log (the process is ending).
    pub async fn shutdown(&self) {
        self.stand_down().await;
        self.replica.shutdown().await;
    }
}
