//! A client for Concord's transactional key-value store.
//!
//! ```no_run
//! # async fn example() -> Result<(), concord_client::KvError> {
//! let kv = concord_client::KvClient::connect("127.0.0.1:7710".parse().unwrap());
//! // Moves 10 from a to b; retried (bounded) on conflicts.
//! kv.transact(async |txn| {
//!     let a: i64 = txn.get_str("a").await?.map_or(0, |v| v.parse().unwrap_or(0));
//!     let b: i64 = txn.get_str("b").await?.map_or(0, |v| v.parse().unwrap_or(0));
//!     txn.put("a", (a - 10).to_string()).await?;
//!     txn.put("b", (b + 10).to_string()).await?;
//!     Ok(())
//! })
//! .await?;
//! # Ok(()) }
//! ```
//!
//! Errors say what the caller can do: [`KvError::is_retryable`] conflicts and unreachable
//! shards (run the transaction again — `transact` does), [`KvError::OutcomeUnknown`] (ask for
//! the named transaction's status; do not blindly retry a non-idempotent transaction),
//! [`KvError::Invalid`] (a limit; fix the request).
//!
//! **Every commit has an id before it is sent.** A transaction's id is reserved when it begins
//! (each commit's reply carries a session opened ahead for the next transaction, so a blind
//! write is still one call), and a commit whose reply is lost is resolved by that id: the
//! client asks the gateway for its status, for up to [`RESOLVE_FOR`], and answers what
//! happened — committed, or aborted (retryable: nothing was applied) — before it gives up with
//! [`KvError::OutcomeUnknown`] naming the id.
//!
//! **A replicated coordinator's gateway is its leader.** A replica that does not lead refuses
//! a call before it runs, naming the leader; the client then sends this and every later call
//! there (a call that begins its transaction is sent again at once, at most
//! [`MAX_REDIRECTS`] times; one on a session the old leader held fails retryable, as its
//! session is gone).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_kv::{LimitError, Limits};

use concord_node::call_link::{CallClient, Method};
use concord_node::proto;
use tonic::{Code, Status};

/// Isolation levels (see docs/kv.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Isolation {
    #[default]
    Serializable,
    Snapshot,
}

impl Isolation {
    fn name(self) -> &'static str {
        match self {
            Isolation::Serializable => "serializable",
            Isolation::Snapshot => "snapshot",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Another transaction got in the way (which key, which transaction: in the message).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The transaction is unknown, expired or older than garbage collection allows.
    #[error("transaction too old or gone: {0}")]
    TooOld(String),
    /// The commit may or may not have happened; the message names the transaction to ask about.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// A limit or a malformed request.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The gateway or a shard could not be reached.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Other(String),
}

impl KvError {
    /// Whether running the whole transaction again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, KvError::Conflict(_) | KvError::TooOld(_) | KvError::Unavailable(_))
    }
}

impl From<Status> for KvError {
    fn from(status: Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::Aborted => KvError::Conflict(message),
            Code::FailedPrecondition => KvError::TooOld(message),
            Code::Unknown => KvError::OutcomeUnknown(message),
            Code::InvalidArgument => KvError::Invalid(message),
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::ResourceExhausted => KvError::Unavailable(message),
            _ => KvError::Other(format!("{:?}: {message}", status.code())),
        }
    }
}

/// Per-call deadline for reads and writes; a commit may take longer (it waits for the log).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const COMMIT_TIMEOUT: Duration = Duration::from_secs(35);
/// `transact` tries at least this many times, backing off from 2 ms, doubling, capped at
/// 200 ms, and goes on retrying for [`MIN_RETRY_WINDOW`] if those attempts end sooner.
pub const MAX_ATTEMPTS: u32 = 10;
/// How long `transact` keeps retrying a retryable error however few attempts that took. A
/// shard that restarted refuses writes below its clock plus the maximum offset (500 ms by
/// default) until its clock passes that point, so a budget counted only in attempts (about
/// 330-650 ms of backoff) could give up on a write that would succeed a moment later.
pub const MIN_RETRY_WINDOW: Duration = Duration::from_secs(2);
/// How long a commit whose reply was lost is resolved by its id before the client gives up
/// with [`KvError::OutcomeUnknown`].
pub const RESOLVE_FOR: Duration = Duration::from_secs(10);
/// Sessions opened ahead (with their ids) a client keeps at most, and how old one may be when
/// it is used (the gateway drops sessions after 30 s).
const AHEAD_KEPT: usize = 16;
const AHEAD_MAX_AGE: Duration = Duration::from_secs(10);

/// Redirects one call follows at most: a leader named by one replica may have lost its
/// leadership by the time the call gets there, but not over and over.
pub const MAX_REDIRECTS: usize = 3;

/// A coordinator replica that does not lead refused the call: it did not run.
fn standby(status: &Status) -> bool {
    status.metadata().get(concord_node::STANDBY_METADATA).is_some()
}

/// The leader a refusing replica named.
fn leader_named(status: &Status) -> Option<SocketAddr> {
    status.metadata().get(concord_node::LEADER_METADATA)?.to_str().ok()?.parse().ok()
}

/// Where calls go, shared by a client's clones and transactions: the gateway it was given, or
/// the leader a coordinator replica named since, or — when it knows several replicas and the
/// one it uses cannot be reached — the next of them.
#[derive(Clone)]
struct Gateway {
    current: Arc<Mutex<CallClient>>,
    dial: Arc<dyn Fn(SocketAddr) -> CallClient + Send + Sync>,
    /// Every replica's address (one: the gateway given).
    replicas: Arc<[SocketAddr]>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gateway({})", self.client().address())
    }
}

impl Gateway {
    fn client(&self) -> CallClient {
        self.current.lock().expect("no code panics holding the gateway").clone()
    }

    /// `from` refused, naming `leader`: calls go there from now on (unless another call moved
    /// them meanwhile). The client to use.
    fn follow(&self, from: &CallClient, leader: SocketAddr) -> CallClient {
        let mut current = self.current.lock().expect("no code panics holding the gateway");
        if current.address() == from.address() && leader != from.address() {
            *current = (self.dial)(leader);
        }
        current.clone()
    }

    /// `from` could not be reached: calls go to the next replica (if there are several). The
    /// client to use.
    fn next(&self, from: &CallClient) -> CallClient {
        let mut current = self.current.lock().expect("no code panics holding the gateway");
        if current.address() == from.address() && self.replicas.len() > 1 {
            let at = self.replicas.iter().position(|a| *a == from.address()).unwrap_or(0);
            *current = (self.dial)(self.replicas[(at + 1) % self.replicas.len()]);
        }
        current.clone()
    }
}

/// A call that failed before reaching a gateway that could answer it: no connection, or it
/// broke. (A gateway's own UNAVAILABLE answers — a shard down — are not this.)
fn unreachable(status: &Status) -> bool {
    status.metadata().get(concord_node::call_link::CONNECTION_LOST_METADATA).is_some()
}

/// A session the gateway opened ahead for a future transaction, and the id reserved for it.
#[derive(Debug)]
struct Ahead {
    session: u64,
    txn: String,
    opened: Instant,
    /// The connection it was opened on: the gateway binds a session to its connection, so one
    /// from a connection since broken is no longer there.
    connection: Option<u64>,
}

/// A connection to a key-value cluster's gateway (its coordinator), shared by every clone and
/// every transaction begun from them: concurrent calls travel together on it (a call link,
/// `concord_node::call_link`; the gateway also serves the same methods over gRPC for other
/// languages).
#[derive(Clone, Debug)]
pub struct KvClient {
    gateway: Gateway,
    isolation: Isolation,
    buffer_writes: bool,
    /// Sessions opened ahead, newest last, shared by every clone.
    ahead: Arc<Mutex<Vec<Ahead>>>,
    /// Name every transaction before its commit (the default; off only as a benchmark's
    /// baseline: a commit that loses its reply may then have no id).
    name_ahead: bool,
}

impl KvClient {
    /// Connects lazily: the first call opens the connection (and the next call after it
    /// breaks opens it again). Call it inside a tokio runtime.
    pub fn connect(gateway: SocketAddr) -> Self {
        Self::with_dial(&[gateway], Arc::new(CallClient::new))
    }

    /// A replicated coordinator's gateways (its replicas, any order): calls go to the first,
    /// follow the leader a refusing replica names, and move to the next replica when the one
    /// in use cannot be reached. Panics if `gateways` is empty.
    pub fn connect_replicas(gateways: &[SocketAddr]) -> Self {
        Self::with_dial(gateways, Arc::new(CallClient::new))
    }

    /// [`KvClient::connect_replicas`] over TLS, trusting `credentials`' CA.
    pub fn connect_replicas_with(
        gateways: &[SocketAddr],
        credentials: &concord_node::tls::ClientCredentials,
    ) -> Self {
        let credentials = credentials.clone();
        Self::with_dial(
            gateways,
            Arc::new(move |address| concord_node::call_client(address, &credentials)),
        )
    }

    /// [`KvClient::connect`] over TLS, trusting `credentials`' CA.
    pub fn connect_with(
        gateway: SocketAddr,
        credentials: &concord_node::tls::ClientCredentials,
    ) -> Self {
        Self::connect_replicas_with(&[gateway], credentials)
    }

    fn with_dial(
        gateways: &[SocketAddr],
        dial: Arc<dyn Fn(SocketAddr) -> CallClient + Send + Sync>,
    ) -> Self {
        assert!(!gateways.is_empty(), "a client needs a gateway's address");
        let current = Arc::new(Mutex::new(dial(gateways[0])));
        KvClient {
            gateway: Gateway { current, dial, replicas: gateways.into() },
            isolation: Isolation::default(),
            buffer_writes: true,
            ahead: Arc::new(Mutex::new(Vec::new())),
            name_ahead: true,
        }
    }

    /// Transactions begun from now on use `isolation` (sessions opened ahead under another are
    /// dropped: their isolation is fixed).
    pub fn with_isolation(mut self, isolation: Isolation) -> Self {
        if isolation != self.isolation {
            self.ahead = Arc::new(Mutex::new(Vec::new()));
        }
        self.isolation = isolation;
        self
    }

    /// `false`: transactions are not named before their commit (the cost of naming them,
    /// measured against; a commit that loses its reply may then have no id to resolve).
    pub fn with_ids_ahead(mut self, on: bool) -> Self {
        self.name_ahead = on;
        self
    }

    /// `false`: every `put` and `delete` is its own call to the gateway, as before write
    /// buffering (kept as the benchmark's same-run baseline).
    pub fn with_write_buffering(mut self, on: bool) -> Self {
        self.buffer_writes = on;
        self
    }

    /// A new transaction. With write buffering (the default) this makes no call: the first
    /// get, scan or the commit begins it at the gateway in the same call, so its snapshot is
    /// taken then. Without, it begins at once (the baseline the benchmark keeps).
    pub async fn begin(&self) -> Result<Txn, KvError> {
        let ahead = {
            let live = self.gateway.client().live_connection();
            let mut pool = self.ahead.lock().expect("no code panics holding the pool");
            pool.retain(|a| {
                a.opened.elapsed() < AHEAD_MAX_AGE && a.connection.is_some() && a.connection == live
            });
            // Oldest first: a reserved id holds its coordinator's forget mark until it runs
            // or is given back, so none may linger at the bottom of the pool.
            (!pool.is_empty()).then(|| pool.remove(0))
        };
        let mut txn = Txn {
            inner: self.gateway.client(),
            gateway: self.gateway.clone(),
            session: ahead.as_ref().map(|a| a.session),
            id: ahead.map(|a| a.txn),
            isolation: self.isolation,
            buffer_writes: self.buffer_writes,
            writes: Vec::new(),
            buffered: HashMap::new(),
            buffered_bytes: 0,
            ahead: Arc::clone(&self.ahead),
            name_ahead: self.name_ahead,
        };
        if !self.buffer_writes {
            txn.ensure_session().await?;
        }
        Ok(txn)
    }

    /// Runs `body` in a transaction and commits it, running it again (bounded, with backoff)
    /// when it fails with a retryable error. The body may run more than once: keep effects
    /// outside the database out of it.
    ///
    /// Rust cannot yet prove an async closure's future `Send`, so run `transact` on the task
    /// that awaits it (or in a `tokio::task::LocalSet`), not inside `tokio::spawn`; or use
    /// [`KvClient::begin`] and the [`Txn`] methods directly, which are `Send`.
    pub async fn transact<T>(
        &self,
        mut body: impl AsyncFnMut(&mut Txn) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        let mut backoff = Duration::from_millis(2);
        let mut attempt = 1;
        let started = std::time::Instant::now();
        loop {
            let result = async {
                let mut txn = self.begin().await?;
                match body(&mut txn).await {
                    Ok(value) => {
                        txn.commit().await?;
                        Ok(value)
                    }
                    Err(error) => {
                        let _ = txn.abort().await;
                        Err(error)
                    }
                }
            }
            .await;
            match result {
                Err(error)
                    if error.is_retryable()
                        && (attempt < MAX_ATTEMPTS || started.elapsed() < MIN_RETRY_WINDOW) =>
                {
                    attempt += 1;
                    // Jitter from the clock's low bits spreads clients that collided.
                    let nanos = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_nanos());
                    let jitter = backoff.mul_f64(f64::from(nanos % 1_000) / 1_000.0);
                    tokio::time::sleep(backoff / 2 + jitter / 2).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }
}

/// An open transaction. Dropping it without `commit` abandons it (the gateway drops it when its
/// lifetime ends); `abort` says so at once.
///
/// Writes are buffered here and travel with the commit (the gateway buffers them until then
/// anyway; nothing reaches a shard before commit), so a transaction costs one call per read
/// plus begin and commit, not one per write too. Reads see the transaction's own writes: a
/// `get` of a written key is answered from the buffer, and a `scan` first sends the buffer.
/// A write the gateway refuses (a key or value over its limits, too many writes) is therefore
/// reported by the call that sends it: the next `scan`, or `commit`. Likewise the transaction
/// begins at the gateway with its first get, scan or commit, in that call: a blind-write
/// transaction is one call, a read-modify-write of one key two.
#[derive(Debug)]
pub struct Txn {
    inner: CallClient,
    gateway: Gateway,
    /// The gateway's session, once a call has begun the transaction there (or one opened
    /// ahead was taken).
    session: Option<u64>,
    /// The id the commit will run under, reserved when the session opened.
    id: Option<String>,
    /// The client's sessions opened ahead, to refill from the commit's reply.
    ahead: Arc<Mutex<Vec<Ahead>>>,
    name_ahead: bool,
    isolation: Isolation,
    buffer_writes: bool,
    /// Unsent writes, one per key, in the order each key was first written; `None` deletes.
    /// A later write of a key replaces its entry: the gateway would keep only the last anyway.
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Where each key's write is in `writes`.
    buffered: HashMap<Vec<u8>, usize>,
    /// The size of `writes` as the gateway's per-transaction limit counts it: the client
    /// refuses a buffer the gateway would refuse, before it builds a request too large to send.
    buffered_bytes: usize,
}

impl Txn {
    /// The id this transaction's commit will run under, once the gateway named it (at its
    /// first call; before any call only if it took a session opened ahead).
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    fn begin_request(&self) -> proto::KvBeginRequest {
        proto::KvBeginRequest { isolation: self.isolation.name().into(), reserve: self.name_ahead }
    }

    /// What a call sends: the session, or the request to begin one (reserving its id).
    fn session_or_begin(&self) -> (u64, Option<proto::KvBeginRequest>) {
        match self.session {
            Some(session) => (session, None),
            None => (0, Some(self.begin_request())),
        }
    }

    /// One call at the gateway. A replica that does not lead refused it (it did not run):
    /// later calls go to the leader it named, and this one too if it begins the transaction
    /// (a session the refusing replica held is gone with its leadership).
    async fn call<Rep: prost::Message + Default>(
        &mut self,
        method: Method,
        request: &impl prost::Message,
        timeout: Duration,
    ) -> Result<Rep, Status> {
        let (mut redirects, mut moves) = (0, 0);
        loop {
            let begins = self.session.is_none();
            match self.inner.call(method, request, timeout).await {
                Err(status) if standby(&status) => {
                    let Some(leader) = leader_named(&status) else { return Err(status) };
                    self.inner = self.gateway.follow(&self.inner, leader);
                    if !begins || redirects >= MAX_REDIRECTS {
                        return Err(status);
                    }
                    redirects += 1;
                }
                // Only a call that begins its transaction may go to another replica: one on
                // a session needs the gateway that holds it. (Begun twice at worst: a session
                // opened where the connection broke expires unused.)
                Err(status) if unreachable(&status) => {
                    self.inner = self.gateway.next(&self.inner);
                    if !begins || moves + 1 >= self.gateway.replicas.len() {
                        return Err(status);
                    }
                    moves += 1;
                }
                answer => return answer,
            }
        }
    }

    /// Records what a call that may have begun the transaction said about it.
    fn begun(&mut self, session: u64, txn: String) {
        self.session = Some(session);
        if !txn.is_empty() {
            self.id = Some(txn);
        }
    }

    /// Begins at the gateway now if no call has yet (before Put/Delete calls, which cannot,
    /// and before a commit that would otherwise be the first call: so its id is known first).
    async fn ensure_session(&mut self) -> Result<u64, KvError> {
        if let Some(session) = self.session {
            return Ok(session);
        }
        let begin = self.begin_request();
        let reply: proto::KvBeginReply = self.call(Method::KvBegin, &begin, CALL_TIMEOUT).await?;
        self.begun(reply.session, reply.txn);
        Ok(reply.session)
    }

    pub async fn get(&mut self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, KvError> {
        let key = key.as_ref();
        if let Some(&i) = self.buffered.get(key) {
            return Ok(self.writes[i].1.clone());
        }
        let (session, begin) = self.session_or_begin();
        let get = proto::KvGetRequest { session, key: key.to_vec(), begin };
        let reply: proto::KvGetReply = self.call(Method::KvGet, &get, CALL_TIMEOUT).await?;
        self.begun(reply.session, reply.txn);
        Ok(reply.found.then_some(reply.value))
    }

    /// `get` for text values.
    pub async fn get_str(&mut self, key: impl AsRef<[u8]>) -> Result<Option<String>, KvError> {
        let value = self.get(key).await?;
        value
            .map(|v| {
                String::from_utf8(v).map_err(|_| KvError::Invalid("the value is not text".into()))
            })
            .transpose()
    }

    /// Checks one write against the gateway's limits (docs/kv.md) and buffers it.
    fn buffer(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), KvError> {
        let limits = Limits::default();
        let refuse = |e: LimitError| Err(KvError::Invalid(e.to_string()));
        if key.is_empty() {
            return refuse(LimitError::EmptyKey);
        }
        if key.len() > limits.max_key_bytes {
            return refuse(LimitError::KeyTooLarge { len: key.len(), max: limits.max_key_bytes });
        }
        if let Some(value) = value.filter(|v| v.len() > limits.max_value_bytes) {
            let max = limits.max_value_bytes;
            return refuse(LimitError::ValueTooLarge { len: value.len(), max });
        }
        let size = |v: Option<&[u8]>| {
            key.len() + v.map_or(0, <[u8]>::len) + concord_kv::ENTRY_OVERHEAD_BYTES
        };
        let index = self.buffered.get(key).copied();
        let before = index.map_or(0, |i| size(self.writes[i].1.as_deref()));
        let after = self.buffered_bytes - before + size(value);
        if after > limits.max_txn_bytes {
            return refuse(LimitError::TxnTooLarge { bytes: after, max: limits.max_txn_bytes });
        }
        if index.is_none() && self.buffered.len() >= limits.max_keys_per_txn {
            return refuse(LimitError::TooManyKeys { max: limits.max_keys_per_txn });
        }
        self.buffered_bytes = after;
        let value = value.map(<[u8]>::to_vec);
        match index {
            Some(i) => self.writes[i].1 = value,
            None => {
                self.buffered.insert(key.to_vec(), self.writes.len());
                self.writes.push((key.to_vec(), value));
            }
        }
        Ok(())
    }

    /// Takes the buffered writes to send.
    fn take_writes(&mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.buffered.clear();
        self.buffered_bytes = 0;
        std::mem::take(&mut self.writes)
    }

    /// Buffers a write (or, without write buffering, sends it at once). A key or value over
    /// the gateway's limits, or a transaction that grows past them, is refused here as
    /// [`KvError::Invalid`], naming the limit.
    pub async fn put(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<(), KvError> {
        self.buffer(key.as_ref(), Some(value.as_ref()))?;
        if self.buffer_writes {
            return Ok(());
        }
        self.send_writes().await
    }

    pub async fn delete(&mut self, key: impl AsRef<[u8]>) -> Result<(), KvError> {
        self.buffer(key.as_ref(), None)?;
        if self.buffer_writes {
            return Ok(());
        }
        self.send_writes().await
    }

    /// Sends the buffered writes as Put/Delete calls (before a scan, which the gateway merges
    /// with them; and unbuffered, each write at once).
    async fn send_writes(&mut self) -> Result<(), KvError> {
        if self.writes.is_empty() {
            return Ok(());
        }
        let session = self.ensure_session().await?;
        for (key, value) in self.take_writes() {
            match value {
                Some(value) => {
                    let put = proto::KvPutRequest { session, key, value };
                    let _: proto::KvWriteReply =
                        self.call(Method::KvPut, &put, CALL_TIMEOUT).await?;
                }
                None => {
                    let delete = proto::KvDeleteRequest { session, key };
                    let _: proto::KvWriteReply =
                        self.call(Method::KvDelete, &delete, CALL_TIMEOUT).await?;
                }
            }
        }
        Ok(())
    }

    /// Up to `limit` rows from `start` (inclusive) to `end` (exclusive; `None`: to the end), in
    /// key order, and whether more remain.
    pub async fn scan(
        &mut self,
        start: impl AsRef<[u8]>,
        end: Option<&[u8]>,
        limit: u32,
    ) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, bool), KvError> {
        self.send_writes().await?;
        let range = proto::KeyRange {
            start: start.as_ref().to_vec(),
            end: end.map(<[u8]>::to_vec).unwrap_or_default(),
            to_the_end: end.is_none(),
        };
        let (session, begin) = self.session_or_begin();
        let scan = proto::KvScanRequest { session, range: Some(range), limit, begin };
        let reply: proto::KvScanReply = self.call(Method::KvScan, &scan, CALL_TIMEOUT).await?;
        self.begun(reply.session, reply.txn);
        Ok((reply.rows.into_iter().map(|p| (p.key, p.value)).collect(), reply.more))
    }

    /// Commits; returns the transaction id (`None` for a read-only transaction, which has
    /// nothing to commit). A commit whose reply is lost is resolved by its id (known before
    /// the commit was sent) for up to [`RESOLVE_FOR`]; only then is it
    /// [`KvError::OutcomeUnknown`], naming the id.
    pub async fn commit(mut self) -> Result<Option<String>, KvError> {
        if self.session.is_none() && self.writes.is_empty() {
            // Nothing read, nothing written: there is nothing to commit, not even a session.
            return Ok(None);
        }
        if self.id.is_none() && self.name_ahead {
            // No session opened ahead to take: open one now, so the commit has a name.
            self.ensure_session().await?;
        }
        let writes: Vec<proto::KvWrite> = self
            .take_writes()
            .into_iter()
            .map(|(key, value)| proto::KvWrite {
                key,
                delete: value.is_none(),
                value: value.unwrap_or_default(),
            })
            .collect();
        let (session, begin) = self.session_or_begin();
        let reserve_next = self.name_ahead
            && self.ahead.lock().expect("no code panics holding the pool").len() < AHEAD_KEPT;
        let commit = proto::KvCommitRequest { session, writes, begin, reserve_next };
        let reply = self.call(Method::KvCommit, &commit, COMMIT_TIMEOUT).await;
        if let Err(status) = &reply {
            if standby(status) {
                // Refused before it ran: the session died with the old leader's leadership.
                return Err(KvError::Unavailable(status.message().to_string()));
            }
        }
        match reply {
            Ok(proto::KvCommitReply { txn, next, .. }) => {
                if let Some(next) = next.filter(|n| !n.txn.is_empty()) {
                    let ahead = Ahead {
                        session: next.session,
                        txn: next.txn,
                        opened: Instant::now(),
                        connection: self.inner.live_connection(),
                    };
                    self.ahead.lock().expect("no code panics holding the pool").push(ahead);
                }
                Ok((!txn.is_empty()).then_some(txn))
            }
            // A lost connection or a gateway that gave up waiting leaves the outcome unknown,
            // not failed: find it out by the id.
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
                ) =>
            {
                match self.id.clone() {
                    Some(id) => resolve(&self.gateway, &self.inner, &id, status.message()).await,
                    None => Err(KvError::OutcomeUnknown(format!(
                        "the gateway did not answer the commit ({}), and the transaction had no id yet",
                        status.message()
                    ))),
                }
            }
            Err(status) => Err(status.into()),
        }
    }

    /// Ends the transaction at the gateway (a session opened ahead included: its reserved id
    /// is given back).
    pub async fn abort(mut self) -> Result<(), KvError> {
        let Some(session) = self.session else { return Ok(()) };
        let abort = proto::KvAbortRequest { session };
        let _: proto::KvAbortReply = self.call(Method::KvAbort, &abort, CALL_TIMEOUT).await?;
        Ok(())
    }
}

/// Finds out what happened to commit `id` whose reply was lost (`why`), asking the gateway for
/// its status until it is known or [`RESOLVE_FOR`] has passed.
async fn resolve(
    gateway: &Gateway,
    inner: &CallClient,
    id: &str,
    why: &str,
) -> Result<Option<String>, KvError> {
    use proto::State;
    let deadline = Instant::now() + RESOLVE_FOR;
    let mut inner = inner.clone();
    loop {
        let asked = proto::StatusRequest { txn: id.to_string() };
        let answer: Result<proto::TransactionInfo, Status> =
            inner.call(Method::TxnStatus, &asked, CALL_TIMEOUT).await;
        // The replica that took the commit no longer leads: the leader knows the outcome.
        if let Some(leader) = answer.as_ref().err().and_then(leader_named) {
            inner = gateway.follow(&inner, leader);
        }
        let last = match answer.map(|info| (State::try_from(info.state), info)) {
            Ok((Ok(State::Committed | State::Committing), _)) => return Ok(Some(id.to_string())),
            Ok((Ok(State::Aborted), _)) => {
                return Err(KvError::Conflict(format!(
                    "{id} aborted (its commit's reply was lost: {why}); nothing was applied, run it again"
                )))
            }
            Ok((state, info)) => {
                format!("{:?} {}", state.unwrap_or(State::Unspecified), info.detail)
            }
            Err(status) => status.message().to_string(),
        };
        if Instant::now() >= deadline {
            return Err(KvError::OutcomeUnknown(format!(
                "{id}: the commit's reply was lost ({why}) and its status is still unknown after {} s ({last}); ask `concord txn show {id}`",
                RESOLVE_FOR.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
