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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

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

/// A connection to a key-value cluster's gateway (its coordinator), shared by every clone and
/// every transaction begun from them: concurrent calls travel together on it (a call link,
/// `concord_node::call_link`; the gateway also serves the same methods over gRPC for other
/// languages).
#[derive(Clone, Debug)]
pub struct KvClient {
    inner: CallClient,
    isolation: Isolation,
    buffer_writes: bool,
}

impl KvClient {
    /// Connects lazily: the first call opens the connection (and the next call after it
    /// breaks opens it again). Call it inside a tokio runtime.
    pub fn connect(gateway: SocketAddr) -> Self {
        KvClient {
            inner: CallClient::new(gateway),
            isolation: Isolation::default(),
            buffer_writes: true,
        }
    }

    /// Transactions begun from now on use `isolation`.
    pub fn with_isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
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
        let mut txn = Txn {
            inner: self.inner.clone(),
            session: None,
            isolation: self.isolation,
            buffer_writes: self.buffer_writes,
            writes: Vec::new(),
            buffered: HashMap::new(),
            buffered_bytes: 0,
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
    /// The gateway's session, once a call has begun the transaction there.
    session: Option<u64>,
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
    /// What a call sends: the session, or the request to begin one.
    fn session_or_begin(&self) -> (u64, Option<proto::KvBeginRequest>) {
        match self.session {
            Some(session) => (session, None),
            None => (0, Some(proto::KvBeginRequest { isolation: self.isolation.name().into() })),
        }
    }

    /// Begins at the gateway now if no call has yet (before Put/Delete calls, which cannot).
    async fn ensure_session(&mut self) -> Result<u64, KvError> {
        if let Some(session) = self.session {
            return Ok(session);
        }
        let begin = proto::KvBeginRequest { isolation: self.isolation.name().into() };
        let reply: proto::KvBeginReply =
            self.inner.call(Method::KvBegin, &begin, CALL_TIMEOUT).await?;
        self.session = Some(reply.session);
        Ok(reply.session)
    }

    pub async fn get(&mut self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, KvError> {
        let key = key.as_ref();
        if let Some(&i) = self.buffered.get(key) {
            return Ok(self.writes[i].1.clone());
        }
        let (session, begin) = self.session_or_begin();
        let get = proto::KvGetRequest { session, key: key.to_vec(), begin };
        let reply: proto::KvGetReply = self.inner.call(Method::KvGet, &get, CALL_TIMEOUT).await?;
        self.session = Some(reply.session);
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
                        self.inner.call(Method::KvPut, &put, CALL_TIMEOUT).await?;
                }
                None => {
                    let delete = proto::KvDeleteRequest { session, key };
                    let _: proto::KvWriteReply =
                        self.inner.call(Method::KvDelete, &delete, CALL_TIMEOUT).await?;
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
        let reply: proto::KvScanReply =
            self.inner.call(Method::KvScan, &scan, CALL_TIMEOUT).await?;
        self.session = Some(reply.session);
        Ok((reply.rows.into_iter().map(|p| (p.key, p.value)).collect(), reply.more))
    }

    /// Commits; returns the transaction id (`None` for a read-only transaction, which has
    /// nothing to commit).
    pub async fn commit(mut self) -> Result<Option<String>, KvError> {
        let writes: Vec<proto::KvWrite> = self
            .take_writes()
            .into_iter()
            .map(|(key, value)| proto::KvWrite {
                key,
                delete: value.is_none(),
                value: value.unwrap_or_default(),
            })
            .collect();
        if self.session.is_none() && writes.is_empty() {
            // Nothing read, nothing written: there is nothing to commit, not even a session.
            return Ok(None);
        }
        let (session, begin) = self.session_or_begin();
        let commit = proto::KvCommitRequest { session, writes, begin };
        let reply = self.inner.call(Method::KvCommit, &commit, COMMIT_TIMEOUT).await;
        match reply {
            Ok(proto::KvCommitReply { txn, .. }) => Ok((!txn.is_empty()).then_some(txn)),
            // A lost connection during commit leaves the outcome unknown, not failed.
            Err(status) if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled) => {
                Err(KvError::OutcomeUnknown(format!(
                    "the gateway did not answer the commit ({}); list recent transactions with `concord txn ls`",
                    status.message()
                )))
            }
            Err(status) => Err(status.into()),
        }
    }

    pub async fn abort(self) -> Result<(), KvError> {
        let Some(session) = self.session else { return Ok(()) };
        let abort = proto::KvAbortRequest { session };
        let _: proto::KvAbortReply = self.inner.call(Method::KvAbort, &abort, CALL_TIMEOUT).await?;
        Ok(())
    }
}
