//! The node loop: one task owns a protocol core and carries out its commands on real I/O.
//!
//! ```text
//!   peer links, gRPC Client/Node ──(bounded)──► external ─┐
//!   timers, log callbacks ─────────────────────► internal ┴─► loop: core.handle(input) ─► commands
//!                                                         Send     ─► outbox[peer] ─► writer task ─► TCP link
//!                                                         Persist  ─► group commit (callback ─► Persisted)
//!                                                         SetTimer ─► the loop's timer heap
//! ```
//!
//! The core is never shared: everything reaches it as an event on the loop, which is the one
//! place its state changes. Internal events (timers, durable records) are unbounded because
//! the core bounds them itself (its in-flight limits); external ones are bounded, so a flood of
//! frames or requests waits at the socket instead of growing memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use concord_commit::amnesia::AfterDataLoss as _;
use concord_commit::{Checkpoint, Command, Core, Durability, Input};
use concord_types::codec::Encode;
use concord_types::{Decision, NodeId, TimerHeap};
use concord_wal::{GroupCommit, OnDurable};
use tokio::sync::mpsc;

use crate::coordinator::CoordinatorRole;
use crate::engine::{Engine, Sent};
use crate::model::{Change, Model};
use crate::peer_link::PeerSender;
use concord_commit::ResourceParticipant as _;

type Msg<E> = <E as Engine>::Msg;
type Record<E> = <E as Engine>::Record;
type Timer<E> = <E as Engine>::Timer;

/// Requests and batches of peer messages waiting for the loop.
pub(crate) const EXTERNAL_CAPACITY: usize = 4_096;

pub(crate) type Call<E> = Box<dyn FnOnce(&mut Node<E>) + Send>;

pub(crate) enum Event<E: Engine> {
    /// What one read of a peer link brought, in order.
    Messages {
        from: NodeId,
        msgs: Vec<Msg<E>>,
    },
    Persisted(Record<E>),
    /// A record the replicated log has committed, written by this replica's core of
    /// `incarnation`: only that core may hear of it (a later one did not write it).
    ReplicaPersisted {
        incarnation: u64,
        record: Record<E>,
    },
    LogFailed(String),
    /// Run a closure on the node inside the loop: queries and client requests.
    Call(Call<E>),
}

pub(crate) enum RoleState<E: Engine> {
    Coordinator(Box<CoordinatorRole<E>>),
    Shard(Box<E::Participant>),
    /// Paxos Commit's acceptor (also a leader candidate that can finish a transaction).
    Acceptor(Box<E::Acceptor>),
    /// A coordinator replica that does not lead: no core runs; clients are sent to the leader
    /// and shards' links go there (`replicated.rs`).
    Standby,
}

/// Where a replicated coordinator's records go instead of its local log.
pub(crate) struct ReplicatedIo {
    pub submitter: concord_replication::Submitter,
    /// Which of this replica's cores runs (one more each time it starts to lead: a replica
    /// may lead twice in one term, after standing down without a majority).
    pub incarnation: u64,
}

/// What the core's commands act on.
pub(crate) struct Io<E: Engine> {
    pub outboxes: HashMap<NodeId, PeerSender>,
    pub log: Arc<GroupCommit>,
    pub internal: mpsc::UnboundedSender<Event<E>>,
    pub records_since_checkpoint: u64,
    pub checkpoint_every: u64,
    pub dropped_sends: u64,
    /// A shard's storage beside its log (the KV store's redb file).
    pub storage: Option<<E::Model as Model>::Storage>,
    /// The core's armed timers: one heap the loop watches rather than a sleeping task each
    /// (a task per timer cost an allocation, a wake-up and a channel send, stale or not).
    pub timers: TimerHeap<tokio::time::Instant, Timer<E>>,
    /// A replicated coordinator's log (`replicated.rs`); None: the local log takes the records.
    pub replicated: Option<ReplicatedIo>,
}

pub(crate) struct Node<E: Engine> {
    pub role: RoleState<E>,
    pub io: Io<E>,
    /// A shard running after its operator accepted a loss of data (`data_loss.rs`).
    pub data_loss_accepted: bool,
}

/// The instant `after_us` from now, capped a year ahead: `Instant + Duration` panics on
/// overflow, and a timer that far out never fires in a process's life anyway.
fn deadline_after_us(after_us: u64) -> tokio::time::Instant {
    const YEAR_US: u64 = 365 * 24 * 3_600 * 1_000_000;
    tokio::time::Instant::now() + Duration::from_micros(after_us.min(YEAR_US))
}

impl<E: Engine> Io<E> {
    pub fn send(&mut self, to: NodeId, msg: &Msg<E>) {
        let Some(outbox) = self.outboxes.get(&to) else {
            // A message for a node not in the configuration (a stale peer list in a record).
            self.dropped_sends += 1;
            return;
        };
        // A full outbox drops the message and counts it; the core's own retries cover a loss.
        outbox.send(msg);
    }

    /// Messages not sent: for a node not configured, or to a full outbox.
    pub fn dropped_sends(&self) -> u64 {
        self.dropped_sends + self.outboxes.values().map(|o| o.0.dropped()).sum::<u64>()
    }

    fn persist(&mut self, record: Record<E>, durability: Durability) {
        let bytes = record.to_bytes();
        if let Some(replicated) = &self.replicated {
            // Durable once a majority of the replicas has it: only then may the core hear so.
            let on_committed: Option<concord_replication::OnCommitted> = match durability {
                Durability::Lazy => None,
                Durability::Forced => {
                    let (internal, incarnation) = (self.internal.clone(), replicated.incarnation);
                    Some(Box::new(move |result| {
                        // An error is no failure of this node: it no longer leads, and the
                        // leadership watcher stands its core down (`replicated.rs`).
                        if result.is_ok() {
                            let event = Event::ReplicaPersisted { incarnation, record };
                            let _ = internal.send(event);
                        }
                    }))
                }
            };
            let command = concord_replication::records::record_command(&bytes);
            replicated.submitter.submit(command, on_committed);
            self.records_since_checkpoint += 1;
            return;
        }
        let notify: Option<OnDurable> = match durability {
            Durability::Lazy => None,
            Durability::Forced => {
                let internal = self.internal.clone();
                Some(Box::new(move |result| {
                    let event = match result {
                        Ok(()) => Event::Persisted(record),
                        Err(error) => Event::LogFailed(error),
                    };
                    // The loop may be gone (shutting down); then nobody needs to know.
                    let _ = internal.send(event);
                }))
            }
        };
        if let Err(error) = self.log.submit(bytes, notify) {
            let _ = self.internal.send(Event::LogFailed(error.to_string()));
        }
        self.records_since_checkpoint += 1;
    }

    fn set_timer(&mut self, timer: Timer<E>, after_us: u64) {
        let at = deadline_after_us(after_us);
        self.timers.push(at, timer);
    }
}

impl<E: Engine> Node<E> {
    /// Feeds one input to the core and carries out what it asks, in order.
    pub fn step(&mut self, input: Input<Msg<E>, Record<E>, Timer<E>, Change<E::Model>>) {
        let mut out = Vec::new();
        match &mut self.role {
            RoleState::Coordinator(c) => c.core.handle(input, &mut out),
            RoleState::Shard(p) => {
                E::Model::before_input(p.resource_mut());
                p.handle(input, &mut out);
            }
            RoleState::Acceptor(a) => a.handle(input, &mut out),
            RoleState::Standby => {} // no core: what reaches a standby is for the leader
        }
        self.carry_out(out);
    }

    /// Carries out a core's commands, in order.
    pub fn carry_out(&mut self, out: Vec<Command<Msg<E>, Record<E>, Timer<E>>>) {
        for command in out {
            match command {
                Command::Send { to, msg } => {
                    if let RoleState::Coordinator(c) = &mut self.role {
                        if let Sent::Decision { decision: Decision::Commit, .. } = E::sent(&msg) {
                            crate::failpoint::before_commit_send();
                        }
                        c.observe_sent(to, &msg);
                    }
                    self.io.send(to, &msg);
                }
                Command::Persist { record, durability } => {
                    if let RoleState::Coordinator(c) = &mut self.role {
                        c.observe_record(&record, durability == Durability::Forced);
                    }
                    self.io.persist(record, durability);
                }
                Command::SetTimer { timer, after_us } => self.io.set_timer(timer, after_us),
                client @ (Command::Begun { .. }
                | Command::Reserved { .. }
                | Command::Rejected { .. }
                | Command::Outcome { .. }) => {
                    if let RoleState::Coordinator(c) = &mut self.role {
                        c.on_client_command(&client);
                    }
                }
            }
        }
        self.maybe_checkpoint();
    }

    fn on_message(&mut self, from: NodeId, msg: Msg<E>) {
        if let RoleState::Coordinator(c) = &mut self.role {
            c.observe_message(from, &msg);
        }
        self.step(Input::Message { from, msg });
    }

    /// Replaces the log by the core's live records once enough has been appended since the
    /// last checkpoint. Queued behind every record already submitted, so it sees their effect.
    fn maybe_checkpoint(&mut self) {
        if self.io.records_since_checkpoint < self.io.checkpoint_every {
            return;
        }
        self.io.records_since_checkpoint = 0;
        let live: Result<Vec<Vec<u8>>, String> = match &self.role {
            RoleState::Coordinator(c) => {
                Ok(c.core.live_records().iter().map(Encode::to_bytes).collect())
            }
            RoleState::Shard(p) => {
                let mut live = p.live_records();
                let storage = self.io.storage.as_ref();
                live.iter_mut()
                    .filter_map(E::snapshot_mut)
                    .try_for_each(|s| E::Model::checkpoint(storage, p.resource(), s))
                    .map(|()| live.iter().map(Encode::to_bytes).collect())
            }
            RoleState::Acceptor(a) => Ok(a.live_records().iter().map(Encode::to_bytes).collect()),
            RoleState::Standby => return,
        };
        if let (Some(replicated), Ok(live)) = (&self.io.replicated, &live) {
            // Behind every record submitted before it, as on the local log.
            let command = concord_replication::records::checkpoint_command(live);
            replicated.submitter.submit(command, None);
            return;
        }
        let checkpointed =
            live.and_then(|live| self.io.log.checkpoint(live).map_err(|e| e.to_string()));
        if let Err(error) = checkpointed {
            let _ = self.io.internal.send(Event::LogFailed(error.to_string()));
        }
    }

    /// Transactions committed elsewhere whose writes this shard lost (after an accepted loss).
    pub fn lost_commits(&self) -> u64 {
        match &self.role {
            RoleState::Shard(p) => p.lost_commits().len() as u64,
            RoleState::Acceptor(_) | RoleState::Coordinator(_) | RoleState::Standby => 0,
        }
    }

    /// Decisions a shard remembers, or transactions an acceptor keeps instances of; a
    /// coordinator reports none.
    pub fn decisions_remembered(&self) -> u64 {
        match &self.role {
            RoleState::Shard(p) => p.decided().len() as u64,
            RoleState::Acceptor(a) => E::acceptor_remembers(a),
            RoleState::Coordinator(_) | RoleState::Standby => 0,
        }
    }

    /// A reading for `/metrics` (taken on the loop: one consistent moment).
    pub fn sample(&mut self) -> crate::metrics::Sample {
        let (log_records, log_syncs) = self.io.log.counts();
        let shard = matches!(self.role, RoleState::Shard(_));
        crate::metrics::Sample {
            log_records,
            log_syncs,
            checkpoints: self.io.log.checkpoints(),
            in_flight: self.in_flight() as u64,
            dropped_sends: self.io.dropped_sends(),
            decisions_remembered: self.decisions_remembered(),
            in_doubt: shard.then(|| self.in_flight() as u64),
            lost_commits: shard.then(|| self.lost_commits()),
            data_loss_accepted: self.data_loss_accepted,
            outcomes: match &self.role {
                RoleState::Coordinator(c) => Some(c.outcomes.clone()),
                RoleState::Shard(_) | RoleState::Acceptor(_) | RoleState::Standby => None,
            },
        }
    }

    /// Transactions the core is working on (coordinator) or holding prepared (shard); an
    /// acceptor reports none.
    pub fn in_flight(&self) -> usize {
        match &self.role {
            RoleState::Coordinator(c) => E::in_flight(&c.core),
            RoleState::Shard(p) => p.in_doubt().len(),
            RoleState::Acceptor(_) | RoleState::Standby => 0,
        }
    }
}

/// Runs the loop until `shutdown` fires or the log fails (the error is returned: after a
/// failed sync the node must restart and recover from what is on disk).
pub(crate) async fn run<E: Engine>(
    mut node: Node<E>,
    mut internal: mpsc::UnboundedReceiver<Event<E>>,
    mut external: mpsc::Receiver<Event<E>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    // One sleep for the soonest timer, moved only when that deadline changes (not a new one
    // per event). Once it has fired it must be re-armed, or it would stay ready.
    let idle = tokio::time::Instant::now() + Duration::from_secs(365 * 86_400);
    let sleep = tokio::time::sleep_until(idle);
    tokio::pin!(sleep);
    let mut armed_for = Some(idle);
    loop {
        let next = node.io.timers.next_deadline().unwrap_or(idle);
        if armed_for != Some(next) {
            sleep.as_mut().reset(next);
            armed_for = Some(next);
        }
        let event = tokio::select! {
            biased;
            _ = shutdown.changed() => return Ok(()),
            Some(event) = internal.recv() => event,
            () = &mut sleep => {
                armed_for = None;
                let now = tokio::time::Instant::now();
                while let Some(timer) = node.io.timers.pop_due(now) {
                    node.step(Input::Timer(timer));
                }
                continue;
            }
            Some(event) = external.recv() => event,
        };
        match event {
            Event::Messages { from, msgs } => {
                for msg in msgs {
                    node.on_message(from, msg);
                }
            }
            Event::Persisted(record) => {
                if let RoleState::Coordinator(c) = &mut node.role {
                    c.observe_durable(&record);
                }
                node.step(Input::Persisted(record));
            }
            Event::ReplicaPersisted { incarnation, record } => {
                let current = node.io.replicated.as_ref().map(|r| r.incarnation);
                if let (RoleState::Coordinator(c), Some(current)) = (&mut node.role, current) {
                    if current == incarnation {
                        c.observe_durable(&record);
                        node.step(Input::Persisted(record));
                    }
                }
            }
            Event::LogFailed(error) => return Err(format!("the log failed: {error}")),
            Event::Call(call) => call(&mut node),
        }
    }
}
