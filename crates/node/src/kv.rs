//! The key-value store on the runtime: the gateway (the `Kv` service, at the coordinator:
//! gRPC, and the same methods as calls on a call link) and the shards' reads (calls).
//!
//! The gateway keeps each open transaction ([`Transaction`]) in memory: reads go to the shards
//! at the snapshot timestamp as calls (`call_link`), writes are buffered, and a commit becomes a request to
//! the coordinator's core — one branch per shard (under 2PC one phase for a single shard; under
//! Paxos Commit every transaction runs the full protocol). Nothing is
//! sent to a shard before commit, so a client that disappears leaves nothing locked; its
//! session expires with the transaction lifetime. A gateway crash loses open sessions (their
//! clients get "no open transaction") and nothing else: a commit in flight is decided by the
//! coordinator's recovery like any other.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_commit::Branch;
use concord_kv::{
    Hlc, Isolation, Key, KeyRange, KvChange, Limits, MvccShard, ReadError, ShardMap, Timestamp,
    Transaction, Value,
};
use concord_types::{NodeId, TxnId};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::auth::{Auth, Caller, Identity, Right};
use crate::call_link::{self, CallClient, Method, Serve, Served};
use crate::config::ClusterConfig;
use crate::coordinator::SubmitReply;
use crate::driver::{Call, Event, Node, RoleState};
use crate::engine::Engine;
use crate::model::{KvStore, Model};
use crate::proto::{self, submit_event, State};
use crate::service::{stopping, Handle};
use concord_commit::ResourceParticipant as _;

/// What the key-value services need of the node loop, whatever protocol it runs.
pub(crate) trait KvNode {
    /// The MVCC shard, its clock brought up to now; `None` on a node that is not a shard.
    fn shard(&mut self) -> Option<&mut MvccShard>;
    /// A reader is blocked on `txn`'s prepared write: ask for its outcome now.
    fn inquire_now(&mut self, txn: TxnId);
    /// Why this shard refused `txn`, if it remembers.
    fn refusal(&self, txn: TxnId) -> Option<String>;
    /// Hands a transaction's branches to the coordinator core (under `reserved`, if it has one).
    fn submit(
        &mut self,
        branches: Vec<Branch<KvChange>>,
        reserved: Option<TxnId>,
        reply: SubmitReply,
    );
    /// Reserves a transaction id (the coordinator core's `Reservation`).
    fn reserve(&mut self, reply: oneshot::Sender<Result<TxnId, Status>>);
    /// Gives back a reserved id that will not run.
    fn release(&mut self, txn: TxnId);
    /// A transaction's status by id (the Client service's `Status`).
    fn status(
        &mut self,
        txn: TxnId,
        reply: oneshot::Sender<Result<proto::TransactionInfo, Status>>,
    );
}

impl<E: Engine<Model = KvStore>> KvNode for Node<E> {
    fn shard(&mut self) -> Option<&mut MvccShard> {
        let RoleState::Shard(p) = &mut self.role else { return None };
        let shard = p.resource_mut();
        KvStore::before_input(shard);
        Some(shard)
    }

    fn inquire_now(&mut self, txn: TxnId) {
        if let RoleState::Shard(p) = &mut self.role {
            let mut out = Vec::new();
            p.inquire_now(txn, &mut out);
            self.carry_out(out);
        }
    }

    fn refusal(&self, txn: TxnId) -> Option<String> {
        match &self.role {
            RoleState::Shard(p) => p.refusal(txn).map(ToString::to_string),
            RoleState::Coordinator(_) | RoleState::Acceptor(_) | RoleState::Standby => None,
        }
    }

    fn submit(
        &mut self,
        branches: Vec<Branch<KvChange>>,
        reserved: Option<TxnId>,
        reply: SubmitReply,
    ) {
        Node::submit(self, branches, reserved, reply);
    }

    fn reserve(&mut self, reply: oneshot::Sender<Result<TxnId, Status>>) {
        Node::reserve(self, reply);
    }

    fn release(&mut self, txn: TxnId) {
        Node::release(self, txn);
    }

    fn status(
        &mut self,
        txn: TxnId,
        reply: oneshot::Sender<Result<proto::TransactionInfo, Status>>,
    ) {
        match &mut self.role {
            RoleState::Coordinator(c) => c.status(txn, reply, &mut self.io),
            RoleState::Shard(_) | RoleState::Acceptor(_) | RoleState::Standby => {
                let _ = reply.send(Err(Status::failed_precondition("ask the gateway")));
            }
        }
    }
}

type KvCall = Box<dyn FnOnce(&mut dyn KvNode) + Send>;
type Sent = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// The way into the node loop for the key-value services, with the protocol erased: the
/// gateway and the shard reads are written once for every engine.
#[derive(Clone)]
pub(crate) struct KvHandle {
    send: Arc<dyn Fn(KvCall) -> Sent + Send + Sync>,
}

impl std::fmt::Debug for KvHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvHandle")
    }
}

impl KvHandle {
    pub(crate) fn new<E: Engine<Model = KvStore>>(handle: &Handle<E>) -> Self {
        let events = handle.events.clone();
        let send = move |call: KvCall| -> Sent {
            let events = events.clone();
            Box::pin(async move {
                let call: Call<E> = Box::new(move |node: &mut Node<E>| call(node));
                events.send(Event::Call(call)).await.map_err(|_| stopping())
            })
        };
        KvHandle { send: Arc::new(send) }
    }

    /// Runs `f` on the node and waits for its answer.
    pub(crate) async fn ask<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn KvNode) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        (self.send)(Box::new(move |node| {
            let _ = tx.send(f(node));
        }))
        .await?;
        rx.await.map_err(|_| stopping())
    }
}

/// The wall clock in microseconds since the Unix epoch: the physical part of every timestamp.
pub(crate) fn physical_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn to_proto(ts: Timestamp) -> proto::Timestamp {
    proto::Timestamp { wall: ts.wall, logical: ts.logical }
}

fn from_proto(ts: Option<proto::Timestamp>) -> Timestamp {
    ts.map_or(Timestamp::ZERO, |t| Timestamp::new(t.wall, t.logical))
}

fn range_from_proto(range: Option<proto::KeyRange>) -> KeyRange {
    let range = range.unwrap_or_default();
    KeyRange { start: range.start, end: (!range.to_the_end).then_some(range.end) }
}

fn range_to_proto(range: &KeyRange) -> proto::KeyRange {
    proto::KeyRange {
        start: range.start.clone(),
        end: range.end.clone().unwrap_or_default(),
        to_the_end: range.end.is_none(),
    }
}

fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

/// How long a shard read waits for prepared writes it meets, and how often it retries.
const READ_WAIT: Duration = Duration::from_millis(500);
const READ_RETRY: Duration = Duration::from_millis(5);
/// Every this many retries, the shard asks the blocking transaction's coordinator.
const RESOLVE_EVERY: u32 = 4;
/// A gateway's call to a shard (shortened to the client's own deadline when it sends one), and
/// its wait for a commit's outcome. Well under a client's usual deadline, so a client hears
/// UNAVAILABLE naming the shard rather than its own DEADLINE_EXCEEDED.
const SHARD_CALL_TIMEOUT: Duration = Duration::from_secs(2);
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_SCAN_LIMIT: usize = 100;
/// Most rows one shard read returns: a gateway asks for a scan's limit plus the transaction's
/// own deletions in the range, each bounded by `Limits`; anything beyond is refused work.
const MAX_SHARD_SCAN_ROWS: usize = 20_000;
/// A session opened ahead (`reserve`) that no operation has used after this long is dropped.
const AHEAD_UNUSED: Duration = Duration::from_secs(12);
/// Open transactions a gateway holds at most; beyond, `begin` is refused (RESOURCE_EXHAUSTED).
const MAX_OPEN_TRANSACTIONS: usize = 100_000;
/// Transactions one caller may have open at once (one connection, when authentication is off
/// and callers have no names): a tenth of the gateway's, so one cannot lock the others out.
const MAX_OPEN_PER_CLIENT: usize = MAX_OPEN_TRANSACTIONS / 10;

/// How long a Begin past the caller's share waits before it is refused.
const REFUSAL_DELAY: Duration = Duration::from_millis(50);

/// Key and value bytes one caller's open transactions may buffer at the gateway, all together.
const MAX_BUFFERED_PER_CLIENT: usize = 256 << 20;
/// Key and value bytes every open transaction together may buffer at the gateway.
const MAX_BUFFERED: usize = 2 << 30;

/// What the callers hold at the gateway.
#[derive(Debug, Default)]
struct Shares {
    by_owner: HashMap<Owner, Share>,
    /// Buffered bytes of every open transaction.
    bytes: usize,
}

/// What one caller holds: open transactions, and the bytes they buffer.
#[derive(Debug, Default, Clone, Copy)]
struct Share {
    open: usize,
    bytes: usize,
}

/// Whose sessions a count is of: a named caller's (all its connections), or, without names, a
/// connection's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Owner {
    Named(Arc<str>),
    Node(NodeId),
    Connection(u64),
}

impl Owner {
    fn of(identity: &Identity) -> Self {
        match &identity.caller {
            Caller::Client { name, .. } => Owner::Named(Arc::clone(name)),
            Caller::Node(id) => Owner::Node(*id),
            Caller::Anyone => Owner::Connection(identity.conn),
        }
    }
}

/// 64 random bits from the operating system.
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the operating system gives randomness");
    u64::from_le_bytes(bytes)
}

/// One open transaction at the gateway.
struct Session {
    /// Who opened it, on which connection: no one else may use or end it.
    owner: Identity,
    txn: Transaction,
    /// The id the commit will run under, if the client asked for it ahead (`reserve`).
    reserved: Option<TxnId>,
    /// Opened ahead of its transaction: the snapshot is taken at its first operation.
    fresh: bool,
}

/// The gateway: open transactions and the way to the shards and the coordinator core.
pub(crate) struct Gateway {
    handle: KvHandle,
    sessions: Mutex<HashMap<u64, Session>>,
    /// Open sessions and their buffered bytes per caller (per connection, for callers with no
    /// name: authentication off), so one cannot take every session or all the memory there is.
    shares: Mutex<Shares>,
    auth: Arc<Auth>,
    clock: Mutex<Hlc>,
    /// On a replicated coordinator: timestamps only below a bound the log has committed, and
    /// this replica's standby refusals.
    replicated:
        Option<(Arc<crate::replicated::Replication>, crate::timestamp_lease::TimestampLease)>,
    map: ShardMap,
    /// Shard index → (node, its calls).
    shards: Vec<(NodeId, CallClient)>,
    /// Shard index → the node's configured name (`shard-1`), for messages.
    names: Vec<String>,
    limits: Limits,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gateway({} shards)", self.shards.len())
    }
}

enum Lookup<T> {
    Local(T),
    Remote(Timestamp),
}

impl Gateway {
    pub(crate) fn start(
        handle: KvHandle,
        config: &ClusterConfig,
        tls: Option<&crate::tls::NodeTls>,
        auth: Arc<Auth>,
        replication: Option<Arc<crate::replicated::Replication>>,
    ) -> Arc<Gateway> {
        let kv = config.kv.clone().expect("a key-value cluster has a [kv] section");
        let shard_nodes = config.shards_by_id();
        let map = kv.shard_map(shard_nodes.len()).expect("validated with the configuration");
        let shards = shard_nodes
            .iter()
            .map(|n| {
                let dial = tls.map(|tls| tls.dial(NodeId(n.id))).unwrap_or_default();
                (NodeId(n.id), CallClient::with_dial(n.listen, dial))
            })
            .collect();
        let names = shard_nodes.iter().map(|n| n.name.clone()).collect();
        let gateway = Arc::new(Gateway {
            handle,
            sessions: Mutex::new(HashMap::new()),
            shares: Mutex::new(Shares::default()),
            auth,
            clock: Mutex::new(Hlc::new(kv.max_offset_ms * 1_000)),
            replicated: replication.map(|r| {
                let lease = crate::timestamp_lease::TimestampLease::new(
                    Arc::clone(&r),
                    kv.max_offset_ms * 1_000,
                );
                (r, lease)
            }),
            map,
            shards,
            names,
            limits: Limits { max_lifetime_us: kv.txn_lifetime_ms * 1_000, ..Limits::default() },
        });
        tokio::spawn(sweep_expired(Arc::downgrade(&gateway)));
        gateway
    }

    /// A timestamp for a snapshot or a commit (replicated: below the log's committed bound).
    async fn now(&self) -> Result<Timestamp, Status> {
        match &self.replicated {
            Some((_, lease)) => lease.issue(&self.clock).await,
            None => Ok(self.clock.lock().expect("clock lock").now(physical_now_us())),
        }
    }

    /// At a coordinator replica that does not lead: the refusal naming the leader. Sessions
    /// live at the leader's gateway only.
    fn redirect(&self) -> Result<(), Status> {
        self.replicated.as_ref().map_or(Ok(()), |(r, _)| r.redirect())
    }

    /// Begins a transaction: its session and snapshot timestamp, and (`reserve`) the id its
    /// commit will run under, reserved now so the client knows it before it commits.
    async fn open(
        &self,
        begin: &proto::KvBeginRequest,
        fresh: bool,
        owner: &Identity,
    ) -> Result<(u64, Timestamp, Option<TxnId>), Status> {
        self.redirect()?;
        let isolation = match begin.isolation.as_str() {
            "" => Isolation::default(),
            other => other.parse().map_err(invalid)?,
        };
        if self.sessions.lock().expect("sessions lock").len() >= MAX_OPEN_TRANSACTIONS {
            return Err(Status::resource_exhausted(format!(
                "{MAX_OPEN_TRANSACTIONS} transactions are open at this gateway; commit or abort some, or retry later"
            )));
        }
        // The caller's slot is taken now (and given back if the open fails), so concurrent
        // Begins cannot all pass the check before any is counted.
        let over_share = {
            let mut shares = self.shares.lock().expect("shares lock");
            let share = shares.by_owner.entry(Owner::of(owner)).or_default();
            let over = share.open >= MAX_OPEN_PER_CLIENT;
            if !over {
                share.open += 1;
            }
            over
        };
        if over_share {
            // Answered late: a caller that keeps asking past its share gets its refusals at a
            // pace that costs the gateway timers, not the CPU others' transactions need.
            tokio::time::sleep(REFUSAL_DELAY).await;
            return Err(Status::resource_exhausted(format!(
                "{MAX_OPEN_PER_CLIENT} transactions of {} are open at this gateway; commit or abort some first",
                owner.caller
            )));
        }
        let reserved = if begin.reserve {
            let reserve = async {
                let (tx, rx) = oneshot::channel();
                self.handle.ask(move |node| node.reserve(tx)).await?;
                rx.await.map_err(|_| stopping())?
            };
            match reserve.await {
                Ok(txn) => Some(txn),
                Err(status) => {
                    self.closed(owner, 0);
                    return Err(status);
                }
            }
        } else {
            None
        };
        let start = match self.now().await {
            Ok(start) => start,
            Err(status) => {
                self.closed(owner, 0);
                self.release(reserved);
                return Err(status);
            }
        };
        let txn = Transaction::new(start, isolation, physical_now_us(), self.limits);
        let fresh = fresh && reserved.is_some();
        let mut sessions = self.sessions.lock().expect("sessions lock");
        // Unguessable, so a session cannot be found by counting (it is bound to its owner
        // besides); never 0, which a request uses for "none".
        let session = loop {
            let id = random_u64();
            if id != 0 && !sessions.contains_key(&id) {
                break id;
            }
        };
        sessions.insert(session, Session { owner: owner.clone(), txn, reserved, fresh });
        Ok((session, start, reserved))
    }

    /// Takes `session` out of the table, if `owner` opened it.
    fn take(&self, session: u64, owner: &Identity) -> Option<Session> {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        if sessions.get(&session).is_none_or(|open| open.owner != *owner) {
            return None;
        }
        let taken = sessions.remove(&session);
        drop(sessions);
        self.closed(owner, taken.as_ref().map_or(0, |s| s.txn.bytes()));
        taken
    }

    /// One session of `owner` fewer, which buffered `bytes`.
    fn closed(&self, owner: &Identity, bytes: usize) {
        // Saturating: the counts are kept exactly (every change of a session's bytes goes
        // through `with`), but a slip in bookkeeping must not become a crash of the gateway.
        let mut shares = self.shares.lock().expect("shares lock");
        shares.bytes = shares.bytes.saturating_sub(bytes);
        let key = Owner::of(owner);
        if let Some(share) = shares.by_owner.get_mut(&key) {
            share.open = share.open.saturating_sub(1);
            share.bytes = share.bytes.saturating_sub(bytes);
            if share.open == 0 {
                shares.by_owner.remove(&key);
            }
        }
    }

    /// The request's session, or a new one if it asks to begin (and the id that one reserved).
    async fn session_of(
        &self,
        session: u64,
        begin: Option<&proto::KvBeginRequest>,
        owner: &Identity,
    ) -> Result<(u64, Option<TxnId>), Status> {
        self.redirect()?;
        match begin {
            Some(begin) => {
                self.open(begin, false, owner).await.map(|(session, _, txn)| (session, txn))
            }
            None => {
                self.snapshot_if_fresh(session, owner).await?;
                Ok((session, None))
            }
        }
    }

    /// A session opened ahead takes its snapshot at its first operation: now.
    async fn snapshot_if_fresh(&self, session: u64, owner: &Identity) -> Result<(), Status> {
        let fresh = |sessions: &HashMap<u64, Session>| {
            sessions.get(&session).is_some_and(|open| open.fresh && open.owner == *owner)
        };
        if !fresh(&self.sessions.lock().expect("sessions lock")) {
            return Ok(());
        }
        let now = self.now().await?;
        let mut sessions = self.sessions.lock().expect("sessions lock");
        if fresh(&sessions) {
            let open = sessions.get_mut(&session).expect("just found");
            open.fresh = false;
            open.txn.restart_snapshot(now, physical_now_us());
        }
        Ok(())
    }

    /// Runs `f` on open transaction `session`; an expired one is dropped and refused. A
    /// session opened ahead takes its snapshot now, at its first operation.
    fn with<T>(
        &self,
        session: u64,
        owner: &Identity,
        f: impl FnOnce(&mut Transaction) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        // Another caller's session is answered as no session at all: its existence is not
        // for others to learn.
        let Some(open) = sessions.get_mut(&session).filter(|open| open.owner == *owner) else {
            return Err(Status::failed_precondition(format!(
                "no open transaction {session} of yours (committed, aborted, expired, or the gateway restarted)"
            )));
        };
        debug_assert!(!open.fresh, "session_of took the snapshot of a session opened ahead");
        if let Err(e) = open.txn.check_alive(physical_now_us()) {
            let bytes = open.txn.bytes();
            let reserved = sessions.remove(&session).and_then(|s| s.reserved);
            drop(sessions);
            self.closed(owner, bytes);
            self.release(reserved);
            return Err(Status::failed_precondition(e.to_string()));
        }
        let before = open.txn.bytes();
        let done = f(&mut open.txn);
        let after = open.txn.bytes();
        if after == before {
            return done;
        }
        let over = {
            let mut shares = self.shares.lock().expect("shares lock");
            shares.bytes = shares.bytes + after - before;
            let share = shares.by_owner.entry(Owner::of(owner)).or_default();
            share.bytes = share.bytes + after - before;
            let mine = share.bytes;
            let over_mine = after > before && mine > MAX_BUFFERED_PER_CLIENT;
            (over_mine || (after > before && shares.bytes > MAX_BUFFERED)).then_some(mine)
        };
        if let Some(mine) = over {
            // The write that went over ends its transaction: what the caller buffered is the
            // gateway's memory, and it is full for this caller (or for everyone).
            let reserved = sessions.remove(&session).and_then(|s| s.reserved);
            drop(sessions);
            self.closed(owner, after);
            self.release(reserved);
            return Err(Status::resource_exhausted(format!(
                "{}'s open transactions buffer {mine} bytes at this gateway, over its {MAX_BUFFERED_PER_CLIENT} (or the gateway's {MAX_BUFFERED} are spent); this transaction is ended",
                owner.caller
            )));
        }
        done
    }

    /// Ends `session` (if open), giving back its reserved id: its transaction will not run.
    fn end(&self, session: u64, owner: &Identity) {
        let reserved = self.take(session, owner).and_then(|s| s.reserved);
        self.release(reserved);
    }

    fn release(&self, reserved: Option<TxnId>) {
        if let Some(txn) = reserved {
            let handle = self.handle.clone();
            tokio::spawn(async move { handle.ask(move |node| node.release(txn)).await });
        }
    }

    async fn read(
        &self,
        shard: usize,
        request: proto::ShardReadRequest,
        timeout: Duration,
    ) -> Result<proto::ShardReadReply, Status> {
        let client = &self.shards[shard].1;
        let name = &self.names[shard];
        let reply: proto::ShardReadReply = client
            .call(Method::ShardRead, &request, timeout)
            .await
            .map_err(|e| match e.code() {
                tonic::Code::Aborted
                | tonic::Code::FailedPrecondition
                | tonic::Code::InvalidArgument => {
                    Status::new(e.code(), format!("{name}: {}", e.message()))
                }
                _ => Status::unavailable(format!("{name} cannot be reached: {}", e.message())),
            })?;
        // The hybrid logical clock's receive rule: move past the shard's clock.
        self.clock
            .lock()
            .expect("clock lock")
            .observe(from_proto(reply.clock), physical_now_us())
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(reply)
    }

    /// Why a shard refused `txn`, from the first branch that remembers.
    async fn refusal(&self, txn: TxnId, shards: &[usize]) -> Option<String> {
        for &s in shards {
            let request = proto::RefusalRequest { txn: txn.to_string() };
            let reply = self.shards[s].1.call(Method::ShardRefusal, &request, SHARD_CALL_TIMEOUT);
            if let Ok(proto::RefusalReply { reason }) = reply.await {
                if !reason.is_empty() {
                    return Some(reason);
                }
            }
        }
        None
    }

    /// Submits the branches to the coordinator core and waits for the outcome.
    async fn commit_branches(
        &self,
        branches: Vec<Branch<concord_kv::KvChange>>,
        shards: &[usize],
        reserved: Option<TxnId>,
    ) -> Result<String, Status> {
        let (reply, mut events) = mpsc::channel(4);
        self.handle.ask(move |node| node.submit(branches, reserved, reply)).await?;
        let mut txn: Option<String> = reserved.map(|t| t.to_string());
        let outcome = tokio::time::timeout(COMMIT_TIMEOUT, async {
            while let Some(event) = events.recv().await {
                match event?.event {
                    Some(submit_event::Event::Begun(id)) => txn = Some(id),
                    Some(submit_event::Event::Outcome(info)) => return Ok(Some(info)),
                    None => {}
                }
            }
            Ok::<_, Status>(None)
        })
        .await;
        let unknown = |txn: &Option<String>| {
            Status::unknown(format!(
                "the outcome of {} is unknown; ask `concord txn show {0}`",
                txn.as_deref().unwrap_or("the transaction")
            ))
        };
        let info = match outcome {
            Ok(Ok(Some(info))) => info,
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) | Err(_) => return Err(unknown(&txn)),
        };
        match State::try_from(info.state) {
            Ok(State::Committed | State::Committing) => Ok(info.txn),
            Ok(State::Aborted) => {
                let id: Option<TxnId> = info.txn.parse().ok();
                let reason = match id {
                    Some(id) => self.refusal(id, shards).await,
                    None => None,
                }
                .unwrap_or_else(|| "a vote timed out or a shard could not be reached".into());
                Err(Status::aborted(format!(
                    "{} aborted: {reason}; retry the transaction",
                    info.txn
                )))
            }
            _ => Err(unknown(&Some(info.txn))),
        }
    }
}

/// How long the gateway gives a shard read: [`SHARD_CALL_TIMEOUT`], or less when the client's
/// gRPC deadline (`grpc-timeout`) leaves less, keeping a tenth of it to answer in.
fn shard_timeout<T>(request: &Request<T>) -> Duration {
    let client = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map(|d| d - d / 10);
    client.map_or(SHARD_CALL_TIMEOUT, |d| d.min(SHARD_CALL_TIMEOUT))
}

/// A `grpc-timeout` header value: digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3_600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Drops transactions that outlived their lifetime (their clients are gone or too slow).
async fn sweep_expired(gateway: std::sync::Weak<Gateway>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(gateway) = gateway.upgrade() else { return };
        let now = physical_now_us();
        let mut expired = Vec::new();
        let mut owners: Vec<(Identity, usize)> = Vec::new();
        gateway.sessions.lock().expect("sessions lock").retain(|_, s| {
            // A session opened ahead and not used within AHEAD_UNUSED is given up (its client
            // uses them within 10 s or drops them): its reserved id holds the forget mark.
            let unused_too_long = s.fresh
                && s.txn.age_us(now) > u64::try_from(AHEAD_UNUSED.as_micros()).unwrap_or(u64::MAX);
            // Its lifetime starts at its first operation (`with`), not when it was opened.
            let alive = if s.fresh { !unused_too_long } else { s.txn.check_alive(now).is_ok() };
            if !alive {
                expired.extend(s.reserved);
                owners.push((s.owner.clone(), s.txn.bytes()));
            }
            alive
        });
        for (owner, bytes) in owners {
            gateway.closed(&owner, bytes);
        }
        for txn in expired {
            gateway.release(Some(txn));
        }
    }
}

#[tonic::async_trait]
impl proto::kv_server::Kv for Arc<Gateway> {
    async fn begin(
        &self,
        request: Request<proto::KvBeginRequest>,
    ) -> Result<Response<proto::KvBeginReply>, Status> {
        let me = self.auth.check(&request, Right::Transact, "begin a transaction")?;
        let (session, start, reserved) = self.open(&request.into_inner(), true, &me).await?;
        let txn = reserved.map(|t| t.to_string()).unwrap_or_default();
        Ok(Response::new(proto::KvBeginReply { session, start: Some(to_proto(start)), txn }))
    }

    async fn get(
        &self,
        request: Request<proto::KvGetRequest>,
    ) -> Result<Response<proto::KvGetReply>, Status> {
        let me = self.auth.check(&request, Right::Transact, "read in a transaction")?;
        let timeout = shard_timeout(&request);
        let proto::KvGetRequest { session, key, begin } = request.into_inner();
        let (session, reserved) = self.session_of(session, begin.as_ref(), &me).await?;
        let lookup = self.with(session, &me, |t| {
            if let Some(own) = t.buffered(&key) {
                return Ok(Lookup::Local(own.cloned()));
            }
            t.check_read(&key).map_err(invalid)?;
            Ok(Lookup::Remote(t.start_ts))
        })?;
        let value = match lookup {
            Lookup::Local(value) => value,
            Lookup::Remote(at) => {
                let shard = self.map.shard_of(&key);
                let request = proto::ShardReadRequest {
                    at: Some(to_proto(at)),
                    key: key.clone(),
                    range: None,
                    limit: 0,
                };
                let reply = self.read(shard, request, timeout).await?;
                self.with(session, &me, |t| {
                    t.record_read(&key);
                    Ok(())
                })?;
                reply.found.then_some(reply.value)
            }
        };
        Ok(Response::new(proto::KvGetReply {
            found: value.is_some(),
            value: value.unwrap_or_default(),
            session,
            txn: reserved.map(|t| t.to_string()).unwrap_or_default(),
        }))
    }

    async fn scan(
        &self,
        request: Request<proto::KvScanRequest>,
    ) -> Result<Response<proto::KvScanReply>, Status> {
        let me = self.auth.check(&request, Right::Transact, "scan in a transaction")?;
        let timeout = shard_timeout(&request);
        let proto::KvScanRequest { session, range, limit, begin } = request.into_inner();
        let (session, reserved) = self.session_of(session, begin.as_ref(), &me).await?;
        let range = range_from_proto(range);
        let limit = if limit == 0 { DEFAULT_SCAN_LIMIT } else { limit as usize };
        let at = self.with(session, &me, |t| {
            t.check_scan(limit).map_err(invalid)?;
            Ok(t.start_ts)
        })?;
        let mut rows = Vec::new();
        let mut bytes = 0;
        let mut complete = true;
        for (shard, piece) in self.map.pieces(&range) {
            let remaining = limit - rows.len();
            let room = self.limits.max_scan_bytes.saturating_sub(bytes);
            if remaining == 0 || room == 0 {
                complete = false;
                break;
            }
            let fetch = self.with(session, &me, |t| Ok(t.scan_fetch_limit(&piece, remaining)))?;
            let request = proto::ShardReadRequest {
                at: Some(to_proto(at)),
                key: Vec::new(),
                range: Some(range_to_proto(&piece)),
                limit: u32::try_from(fetch).unwrap_or(u32::MAX),
            };
            let reply = self.read(shard, request, timeout).await?;
            let found = reply.rows.into_iter().map(|p| (p.key, p.value)).collect();
            let (merged, piece_complete) = self.with(session, &me, |t| {
                Ok(t.merge_scan(&piece, found, reply.exhausted, remaining, room))
            })?;
            bytes += merged.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            rows.extend(merged);
            if !piece_complete {
                complete = false;
                break;
            }
        }
        let rows = rows.into_iter().map(|(key, value)| proto::KvPair { key, value }).collect();
        let txn = reserved.map(|t| t.to_string()).unwrap_or_default();
        Ok(Response::new(proto::KvScanReply { rows, more: !complete, session, txn }))
    }

    async fn put(
        &self,
        request: Request<proto::KvPutRequest>,
    ) -> Result<Response<proto::KvWriteReply>, Status> {
        let me = self.auth.check(&request, Right::Transact, "write in a transaction")?;
        let proto::KvPutRequest { session, key, value } = request.into_inner();
        // Through `session_of` like every call on a session: a standby refuses, and a session
        // opened ahead takes its snapshot at this, its first operation.
        let (session, _) = self.session_of(session, None, &me).await?;
        self.with(session, &me, |t| t.put(key, value).map_err(invalid))?;
        Ok(Response::new(proto::KvWriteReply {}))
    }

    async fn delete(
        &self,
        request: Request<proto::KvDeleteRequest>,
    ) -> Result<Response<proto::KvWriteReply>, Status> {
        let me = self.auth.check(&request, Right::Transact, "delete in a transaction")?;
        let proto::KvDeleteRequest { session, key } = request.into_inner();
        // Through `session_of` like every call on a session: a standby refuses, and a session
        // opened ahead takes its snapshot at this, its first operation.
        let (session, _) = self.session_of(session, None, &me).await?;
        self.with(session, &me, |t| t.delete(key).map_err(invalid))?;
        Ok(Response::new(proto::KvWriteReply {}))
    }

    async fn commit(
        &self,
        request: Request<proto::KvCommitRequest>,
    ) -> Result<Response<proto::KvCommitReply>, Status> {
        let me = self.auth.check(&request, Right::Transact, "commit a transaction")?;
        let proto::KvCommitRequest { session, writes, begin, reserve_next } = request.into_inner();
        let (session, _) = self.session_of(session, begin.as_ref(), &me).await?;
        // The client's buffered writes first, exactly as Put/Delete calls would have applied
        // them. Checked (alive) and taken: a commit consumes its session whatever the outcome.
        let applied = self.with(session, &me, |t| {
            for write in writes {
                if write.delete {
                    t.delete(write.key).map_err(invalid)?;
                } else {
                    t.put(write.key, write.value).map_err(invalid)?;
                }
            }
            t.check_size().map_err(invalid)
        });
        if let Err(refused) = applied {
            self.end(session, &me);
            return Err(refused);
        }
        let Some(Session { txn, reserved, .. }) = self.take(session, &me) else {
            return Err(Status::failed_precondition(format!("no open transaction {session}")));
        };
        // The next transaction's session, named now (before this one's outcome, which may take
        // a while): the client will know its id before it commits.
        let next = if reserve_next {
            let ahead =
                proto::KvBeginRequest { isolation: txn.isolation.to_string(), reserve: true };
            match self.open(&ahead, true, &me).await {
                Ok((session, start, id)) => Some(proto::KvBeginReply {
                    session,
                    start: Some(to_proto(start)),
                    txn: id.map(|t| t.to_string()).unwrap_or_default(),
                }),
                Err(_) => None, // the client reserves with its next Begin instead
            }
        } else {
            None
        };
        if txn.is_read_only() {
            // One consistent snapshot: nothing to validate or write.
            self.release(reserved);
            return Ok(Response::new(proto::KvCommitReply {
                txn: String::new(),
                commit: None,
                next,
            }));
        }
        let commit = match self.now().await {
            Ok(commit) => commit,
            Err(status) => {
                self.release(reserved);
                if let Some(next) = next {
                    self.end(next.session, &me);
                }
                return Err(status);
            }
        };
        let changes = txn.changes(&self.map, commit);
        let shards: Vec<usize> = changes.iter().map(|(s, _)| *s).collect();
        let branches = changes
            .into_iter()
            .map(|(s, change)| Branch { node: self.shards[s].0, writes: change })
            .collect();
        match self.commit_branches(branches, &shards, reserved).await {
            Ok(id) => {
                let commit = Some(to_proto(commit));
                Ok(Response::new(proto::KvCommitReply { txn: id, commit, next }))
            }
            Err(status) => {
                // An error carries no `next`: give its session back rather than leave its
                // reserved id holding the forget mark until it expires.
                if let Some(next) = next {
                    self.end(next.session, &me);
                }
                Err(status)
            }
        }
    }

    async fn abort(
        &self,
        request: Request<proto::KvAbortRequest>,
    ) -> Result<Response<proto::KvAbortReply>, Status> {
        let me = self.auth.check(&request, Right::Transact, "abort a transaction")?;
        self.end(request.into_inner().session, &me);
        Ok(Response::new(proto::KvAbortReply {}))
    }
}

/// The gateway's methods as calls: the same code as its gRPC service.
impl Serve for Gateway {
    fn serve(self: Arc<Self>, method: Method, request: Vec<u8>, caller: Identity) -> Served {
        use call_link::encode;
        use proto::kv_server::Kv;
        Box::pin(async move {
            match method {
                Method::KvBegin => {
                    encode(Kv::begin(&self, call_link::decode_from(&request, &caller)?).await?)
                }
                Method::KvGet => {
                    encode(Kv::get(&self, call_link::decode_from(&request, &caller)?).await?)
                }
                Method::KvScan => {
                    encode(Kv::scan(&self, call_link::decode_from(&request, &caller)?).await?)
                }
                Method::KvPut => {
                    encode(Kv::put(&self, call_link::decode_from(&request, &caller)?).await?)
                }
                Method::KvDelete => {
                    encode(Kv::delete(&self, call_link::decode_from(&request, &caller)?).await?)
                }
                Method::KvCommit => {
                    encode(Kv::commit(&self, call_link::decode_from(&request, &caller)?).await?)
                }
                Method::KvAbort => {
                    encode(Kv::abort(&self, call_link::decode_from(&request, &caller)?).await?)
                }
                Method::TxnStatus => {
                    let request = call_link::decode_from(&request, &caller)?;
                    self.auth.check(&request, Right::Read, "ask a transaction's status")?;
                    self.redirect()?;
                    let request: proto::StatusRequest = request.into_inner();
                    let txn: TxnId = request
                        .txn
                        .parse()
                        .map_err(|e: concord_types::ParseTxnIdError| invalid(e))?;
                    let (tx, rx) = oneshot::channel();
                    self.handle.ask(move |node| node.status(txn, tx)).await?;
                    Ok(rx.await.map_err(|_| stopping())??.encode_to_vec())
                }
                Method::ShardRead | Method::ShardRefusal => {
                    Err(Status::failed_precondition("this node is a gateway, not a shard"))
                }
            }
        })
    }
}

/// A shard's reads, as calls from its gateway.
impl Serve for KvHandle {
    /// Only the gateway reaches this (the link checked its certificate, under TLS).
    fn serve(self: Arc<Self>, method: Method, request: Vec<u8>, _: Identity) -> Served {
        use call_link::decode;
        Box::pin(async move {
            match method {
                Method::ShardRead => {
                    Ok(self.read(decode(&request)?.into_inner()).await?.encode_to_vec())
                }
                Method::ShardRefusal => {
                    Ok(self.refusal(decode(&request)?.into_inner()).await?.encode_to_vec())
                }
                _ => Err(Status::failed_precondition(
                    "this node is a shard: ask the gateway (the coordinator)",
                )),
            }
        })
    }
}

/// A shard read's rows cut to [`Limits::max_scan_bytes`] of keys and values (always the first
/// row): the reply must fit a call link's frame whatever the rows hold. A cut reply is not
/// exhausted, so the gateway reads on from its last key if it needs more.
fn cap_reply_bytes(rows: Vec<(Key, Value)>, exhausted: bool) -> (Vec<(Key, Value)>, bool) {
    let max = Limits::default().max_scan_bytes;
    let total = rows.len();
    let mut bytes = 0;
    let rows: Vec<_> = rows
        .into_iter()
        .take_while(|(k, v)| {
            bytes += k.len() + v.len();
            bytes <= max || bytes == k.len() + v.len()
        })
        .collect();
    let exhausted = exhausted && rows.len() == total;
    (rows, exhausted)
}

/// What one attempt of a shard read found.
enum Attempt {
    Done(proto::ShardReadReply),
    Blocked(TxnId),
}

impl KvHandle {
    /// A point read or a scan at a timestamp. Waits (bounded) for prepared writes due at or
    /// before it, asking their coordinator for the outcome.
    async fn read(
        &self,
        request: proto::ShardReadRequest,
    ) -> Result<proto::ShardReadReply, Status> {
        let at = from_proto(request.at);
        let range = request.range.map(|r| range_from_proto(Some(r)));
        let deadline = tokio::time::Instant::now() + READ_WAIT;
        for attempt in 1u32.. {
            let limit = (request.limit as usize).min(MAX_SHARD_SCAN_ROWS);
            let (key, range) = (request.key.clone(), range.clone());
            let resolve = attempt.is_multiple_of(RESOLVE_EVERY);
            let result = self
                .ask(move |node| {
                    let Some(shard) = node.shard() else {
                        return Err(Status::failed_precondition("this node is not a shard"));
                    };
                    let result = match &range {
                        None => shard.get(&key, at).map(|value| proto::ShardReadReply {
                            found: value.is_some(),
                            value: value.unwrap_or_default(),
                            ..Default::default()
                        }),
                        Some(range) => shard.scan(range, at, limit).map(|(rows, exhausted)| {
                            let (rows, exhausted) = cap_reply_bytes(rows, exhausted);
                            proto::ShardReadReply {
                                rows: rows
                                    .into_iter()
                                    .map(|(key, value)| proto::KvPair { key, value })
                                    .collect(),
                                exhausted,
                                ..Default::default()
                            }
                        }),
                    };
                    let clock = Some(to_proto(shard.clock().last()));
                    match result {
                        Ok(reply) => Ok(Attempt::Done(proto::ShardReadReply { clock, ..reply })),
                        Err(ReadError::Blocked { holder, .. }) => {
                            if resolve {
                                node.inquire_now(holder);
                            }
                            Ok(Attempt::Blocked(holder))
                        }
                        Err(ReadError::TooOld { gc_point }) => Err(Status::failed_precondition(
                            format!("read below the garbage-collection point {gc_point}: begin a new transaction"),
                        )),
                        Err(ReadError::Clock(e)) => Err(Status::failed_precondition(e.to_string())),
                    }
                })
                .await??;
            match result {
                Attempt::Done(reply) => return Ok(reply),
                Attempt::Blocked(holder) if tokio::time::Instant::now() >= deadline => {
                    return Err(Status::aborted(format!(
                        "a read waited {} ms for prepared transaction {holder}, whose outcome could not be learned; retry",
                        READ_WAIT.as_millis()
                    )));
                }
                Attempt::Blocked(_) => tokio::time::sleep(READ_RETRY).await,
            }
        }
        unreachable!("the loop returns")
    }

    /// Why this shard voted NO on a transaction, if it remembers.
    async fn refusal(&self, request: proto::RefusalRequest) -> Result<proto::RefusalReply, Status> {
        let txn: TxnId =
            request.txn.parse().map_err(|e: concord_types::ParseTxnIdError| invalid(e))?;
        let reason = self.ask(move |node| node.refusal(txn).unwrap_or_default()).await?;
        Ok(proto::RefusalReply { reason })
    }
}

/// Collects garbage on a shard now and then: versions older than `gc_ttl` that a newer one
/// superseded, and read timestamps older than that.
pub(crate) async fn collect_garbage(handle: KvHandle, gc_ttl: Duration) {
    let every = (gc_ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        tokio::time::sleep(every).await;
        let ttl_us = u64::try_from(gc_ttl.as_micros()).unwrap_or(u64::MAX);
        let asked = handle
            .ask(move |node| {
                if let Some(shard) = node.shard() {
                    let safe = Timestamp::new(physical_now_us().saturating_sub(ttl_us), 0);
                    shard.collect_garbage(safe);
                    shard.prune_reads(safe);
                }
            })
            .await;
        if asked.is_err() {
            return; // the node is stopping
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_grpc_deadline_shortens_the_shard_call() {
        assert_eq!(parse_grpc_timeout("1500m"), Some(Duration::from_millis(1_500)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7_200)));
        for bad in ["", "m", "12", "5x", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
        let mut request = Request::new(());
        assert_eq!(shard_timeout(&request), SHARD_CALL_TIMEOUT);
        request.metadata_mut().insert("grpc-timeout", "1000m".parse().unwrap());
        assert_eq!(shard_timeout(&request), Duration::from_millis(900));
        request.metadata_mut().insert("grpc-timeout", "60S".parse().unwrap());
        assert_eq!(shard_timeout(&request), SHARD_CALL_TIMEOUT);
    }

    #[test]
    fn a_shard_reply_is_cut_to_the_scan_byte_limit_but_keeps_one_row() {
        let max = Limits::default().max_scan_bytes;
        let row = |i: u8, n: usize| (vec![i], vec![0; n]);
        let (rows, exhausted) = cap_reply_bytes(vec![row(1, max), row(2, 1)], true);
        assert_eq!((rows.len(), exhausted), (1, false));
        let (rows, exhausted) = cap_reply_bytes(vec![row(1, 2 * max)], true);
        assert_eq!((rows.len(), exhausted), (1, true), "one row always goes");
        let (rows, exhausted) = cap_reply_bytes(vec![row(1, 10), row(2, 10)], true);
        assert_eq!((rows.len(), exhausted), (2, true));
    }
}
