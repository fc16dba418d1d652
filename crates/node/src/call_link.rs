//! Requests and replies over plain TCP: the Rust client's way to a key-value gateway, and a
//! gateway's way to its shards' reads.
//!
//! ```text
//!  CallClient::call ──► Outbox ──► writer ══TCP══► reader ──► a task per call ──► Serve::serve
//!       ▲ (oneshot per id)                                                              │
//!       └── reader ◄══TCP══ writer ◄── Outbox ◄── reply, framed where the call finished ◄┘
//! ```
//!
//! Why not gRPC: a gRPC call is an HTTP/2 stream — headers compressed and decompressed both
//! ways, a reply and trailers per call, flow-control bookkeeping — and at saturation the
//! client calls took half the CPU of a whole cluster (BENCHMARKS.md, "call links"). Here many
//! calls share a connection; each is one frame each way, and concurrent calls ride in the same
//! write. The bodies are the same protobuf messages the gRPC services take (`proto/`), so the
//! two speak one language; gRPC stays the public contract for other languages.
//!
//! Frames (`crate::link`): a call is `id: u64 · method: u8 · request`; its reply is
//! `id: u64 · code: u8 · reply` where code 0 is success and any other is the gRPC status code,
//! the body then being the error message (UTF-8) — and, from a coordinator replica that does
//! not lead, [`STANDBY_LINE`] and the leader's address after it if known (gRPC carries these
//! as the `concord-standby` and `concord-leader` metadata). Ids are the client's; a reply may come in any order.
//!
//! Bounds: calls in flight per client connection ([`MAX_CALLS_IN_FLIGHT`]) and per served
//! connection ([`MAX_CALLS_PER_CONNECTION`], after which reading pauses); every call has the
//! caller's deadline; the connect has its own.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncWriteExt, ReadHalf};
use tokio::net::TcpStream;

use crate::auth::Identity;
use crate::tls::{Conn, Dial};
use tokio::sync::{oneshot, Semaphore};
use tonic::{Code, Status};

use crate::link::{self, Outbox};

/// The first bytes of a call link.
pub(crate) const MAGIC: [u8; 8] = *b"CNCRDCL2";

/// What a client writes first: the magic, then its token (`len: u16 LE · bytes`; empty for
/// none, and for nodes, which prove themselves by certificate).
pub(crate) fn opener(token: &[u8]) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    let length = u16::try_from(token.len()).expect("tokens are validated to be short");
    bytes.extend_from_slice(&length.to_le_bytes());
    bytes.extend_from_slice(token);
    bytes
}

/// Reads the token of an opener whose magic was read.
pub(crate) async fn read_token(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncReadExt as _;
    let length = usize::from(reader.read_u16_le().await.map_err(|e| format!("no token: {e}"))?);
    if length > crate::auth::MAX_TOKEN_BYTES {
        return Err(format!("a {length}-byte token"));
    }
    let mut token = vec![0; length];
    reader.read_exact(&mut token).await.map_err(|e| format!("short token: {e}"))?;
    Ok(token)
}
/// Calls waiting for their replies on one client connection; more are refused (unavailable).
pub const MAX_CALLS_IN_FLIGHT: usize = 100_000;
/// Calls a served connection runs at once; past it, the server stops reading until one ends.
pub(crate) const MAX_CALLS_PER_CONNECTION: usize = 10_000;
/// Room for one SYN retransmission (1 s) and a busy runtime: a call that fails to connect
/// fails as UNAVAILABLE, which a client counts as a failure.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What a call asks for; each takes and returns the proto messages named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Method {
    /// `KvBeginRequest` → `KvBeginReply`
    KvBegin = 1,
    /// `KvGetRequest` → `KvGetReply`
    KvGet = 2,
    /// `KvScanRequest` → `KvScanReply`
    KvScan = 3,
    /// `KvPutRequest` → `KvWriteReply`
    KvPut = 4,
    /// `KvDeleteRequest` → `KvWriteReply`
    KvDelete = 5,
    /// `KvCommitRequest` → `KvCommitReply`
    KvCommit = 6,
    /// `KvAbortRequest` → `KvAbortReply`
    KvAbort = 7,
    /// `ShardReadRequest` → `ShardReadReply` (gateway → shard)
    ShardRead = 8,
    /// `RefusalRequest` → `RefusalReply` (gateway → shard)
    ShardRefusal = 9,
    /// `StatusRequest` → `TransactionInfo` (client → gateway: a transaction's outcome by id)
    TxnStatus = 10,
}

impl Method {
    const ALL: [Method; 10] = [
        Method::KvBegin,
        Method::KvGet,
        Method::KvScan,
        Method::KvPut,
        Method::KvDelete,
        Method::KvCommit,
        Method::KvAbort,
        Method::ShardRead,
        Method::ShardRefusal,
        Method::TxnStatus,
    ];

    fn from_u8(tag: u8) -> Option<Method> {
        Method::ALL.into_iter().find(|m| *m as u8 == tag)
    }
}

pub(crate) type Served = Pin<Box<dyn Future<Output = Result<Vec<u8>, Status>> + Send>>;

/// A service reachable by calls: a node's gateway or its shard reads.
pub(crate) trait Serve: Send + Sync + 'static {
    /// Runs one call from `caller` (who opened the link); `Ok` is the encoded reply.
    fn serve(self: Arc<Self>, method: Method, request: Vec<u8>, caller: Identity) -> Served;
}

/// A call's request, decoded, carrying who made it for the service's checks.
pub(crate) fn decode_from<T: Message + Default>(
    request: &[u8],
    caller: &Identity,
) -> Result<tonic::Request<T>, Status> {
    let mut request = decode(request)?;
    request.extensions_mut().insert(caller.clone());
    Ok(request)
}

/// A call's request, decoded (a malformed one is INVALID_ARGUMENT, as gRPC would say).
pub(crate) fn decode<T: Message + Default>(request: &[u8]) -> Result<tonic::Request<T>, Status> {
    T::decode(request)
        .map(tonic::Request::new)
        .map_err(|e| Status::invalid_argument(format!("malformed request: {e}")))
}

/// A reply, encoded.
pub(crate) fn encode<T: Message>(reply: tonic::Response<T>) -> Result<Vec<u8>, Status> {
    Ok(reply.into_inner().encode_to_vec())
}

fn push_call(
    outbox: &Outbox,
    id: u64,
    method: Method,
    request: &impl Message,
) -> Result<(), link::PushError> {
    outbox.push(|buf| {
        buf.extend_from_slice(&id.to_le_bytes());
        buf.push(method as u8);
        request.encode(buf).expect("a Vec grows as needed");
    })
}

/// Queues a call's reply. One too large for a frame is answered with an error that says so
/// instead (the services bound their replies below the frame; this is the last guard).
fn push_reply(outbox: &Outbox, id: u64, reply: &Result<Vec<u8>, Status>) {
    if let Err(link::PushError::TooLarge { bytes }) = push_reply_once(outbox, id, reply) {
        let status = Status::resource_exhausted(format!(
            "the reply of {bytes} bytes exceeds the call link's frame limit of {} bytes",
            link::MAX_FRAME_BYTES
        ));
        let _ = push_reply_once(outbox, id, &Err(status));
    }
}

fn push_reply_once(
    outbox: &Outbox,
    id: u64,
    reply: &Result<Vec<u8>, Status>,
) -> Result<(), link::PushError> {
    outbox.push(|buf| {
        buf.extend_from_slice(&id.to_le_bytes());
        match reply {
            Ok(body) => {
                buf.push(0);
                buf.extend_from_slice(body);
            }
            Err(status) => {
                // Code 0 means success on this wire; an error that says OK is a broken error.
                let code = match status.code() {
                    Code::Ok => Code::Unknown,
                    code => code,
                };
                buf.push(u8::try_from(i32::from(code)).expect("gRPC codes are 0..=16"));
                buf.extend_from_slice(status.message().as_bytes());
                // A coordinator replica's refusal says so, and names the leader if it knows
                // one, as gRPC metadata does.
                if status.metadata().get(crate::STANDBY_METADATA).is_some() {
                    buf.extend_from_slice(STANDBY_LINE.as_bytes());
                    if let Some(leader) = status.metadata().get(crate::LEADER_METADATA) {
                        buf.extend_from_slice(leader.as_bytes());
                    }
                }
            }
        }
    })
}

/// Every complete call frame at the front of `bytes`, each request decoded as its method's
/// message (what `serve_connection` and the services do with them, minus the serving): the
/// number of calls, or why the connection would be dropped. For the fuzzers.
pub(crate) fn decode_calls(bytes: &[u8]) -> Result<usize, String> {
    use crate::proto;
    let (frames, _) = link::complete_frames(bytes)?;
    let mut calls = 0;
    for frame in frames {
        let (_, tag, request) = split_frame(&bytes[frame])?;
        let decoded = match Method::from_u8(tag) {
            None => continue, // answered UNIMPLEMENTED
            Some(Method::KvBegin) => decode::<proto::KvBeginRequest>(request).map(drop),
            Some(Method::KvGet) => decode::<proto::KvGetRequest>(request).map(drop),
            Some(Method::KvScan) => decode::<proto::KvScanRequest>(request).map(drop),
            Some(Method::KvPut) => decode::<proto::KvPutRequest>(request).map(drop),
            Some(Method::KvDelete) => decode::<proto::KvDeleteRequest>(request).map(drop),
            Some(Method::KvCommit) => decode::<proto::KvCommitRequest>(request).map(drop),
            Some(Method::KvAbort) => decode::<proto::KvAbortRequest>(request).map(drop),
            Some(Method::ShardRead) => decode::<proto::ShardReadRequest>(request).map(drop),
            Some(Method::ShardRefusal) => decode::<proto::RefusalRequest>(request).map(drop),
            Some(Method::TxnStatus) => decode::<proto::StatusRequest>(request).map(drop),
        };
        if decoded.is_ok() {
            calls += 1;
        }
    }
    Ok(calls)
}

/// `id · tag · body` at the front of a frame.
fn split_frame(frame: &[u8]) -> Result<(u64, u8, &[u8]), String> {
    if frame.len() < 9 {
        return Err(format!("a {}-byte call frame", frame.len()));
    }
    let id = u64::from_le_bytes(frame[..8].try_into().expect("eight bytes"));
    Ok((id, frame[8], &frame[9..]))
}

/// The metadata key of a call's failure because its connection could not be opened or broke
/// (the server may not have seen it, or may have acted on it): a client that knows other
/// gateways may begin its next transaction at one of them.
pub const CONNECTION_LOST_METADATA: &str = "concord-connection-lost";

fn lost(mut status: Status) -> Status {
    status
        .metadata_mut()
        .insert(CONNECTION_LOST_METADATA, tonic::metadata::MetadataValue::from_static("1"));
    status
}

/// What follows an error's message from a coordinator replica that does not lead (the call
/// did not run): this, then the leader's address if it knows one, to the end of the body.
pub const STANDBY_LINE: &str = "\nconcord-standby=";

fn reply_from(code: u8, body: &[u8]) -> Result<Vec<u8>, Status> {
    if code == 0 {
        return Ok(body.to_vec());
    }
    let text = String::from_utf8_lossy(body).into_owned();
    let Some((message, leader)) = text.rsplit_once(STANDBY_LINE) else {
        return Err(Status::new(Code::from_i32(i32::from(code)), text));
    };
    let mut status = Status::new(Code::from_i32(i32::from(code)), message.to_string());
    status
        .metadata_mut()
        .insert(crate::STANDBY_METADATA, tonic::metadata::MetadataValue::from_static("1"));
    if let Some(value) = leader.parse::<SocketAddr>().ok().and_then(|a| a.to_string().parse().ok())
    {
        status.metadata_mut().insert(crate::LEADER_METADATA, value);
    }
    Err(status)
}

/// Serves calls on an accepted connection (its magic already read) until it closes, the
/// client sends a frame that is not a call (the connection is dropped), or `stopped` (the
/// node stops: its clients see the connection close and reconnect to whatever serves next).
pub(crate) async fn serve_connection(
    stream: Conn,
    service: Arc<dyn Serve>,
    caller: Identity,
    budget: link::FrameBudget,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let (mut read_half, mut write_half) = tokio::io::split(stream);
    let replies = Arc::new(Outbox::default());
    let writer = {
        let replies = Arc::clone(&replies);
        tokio::spawn(async move {
            link::write_loop(&mut write_half, &replies, None::<&mut ReadHalf<Conn>>).await
        })
    };
    let permits = Arc::new(Semaphore::new(MAX_CALLS_PER_CONNECTION));
    let mut buf = Vec::with_capacity(link::READ_CHUNK);
    let reading = async {
        let mut inbound = link::Inbound::new(budget);
        'reading: while let Ok(true) = inbound.read_more(&mut read_half, &mut buf).await {
            let Ok((frames, used)) = link::complete_frames(&buf) else { break };
            for frame in frames {
                let Ok((id, tag, request)) = split_frame(&buf[frame]) else { break 'reading };
                let request = request.to_vec();
                let permit = Arc::clone(&permits)
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let (service, replies) = (Arc::clone(&service), Arc::clone(&replies));
                let caller = caller.clone();
                tokio::spawn(async move {
                    let reply = match Method::from_u8(tag) {
                        Some(method) => service.serve(method, request, caller).await,
                        None => Err(Status::unimplemented(format!("no call method {tag}"))),
                    };
                    push_reply(&replies, id, &reply);
                    drop(permit);
                });
            }
            buf.drain(..used);
        }
    };
    tokio::select! {
        _ = stopped.wait_for(|stop| *stop) => {}
        () = reading => {}
    }
    // Replies of calls still running are dropped with the connection.
    replies.close();
    writer.abort();
}

/// A connection to a node's calls, shared by every clone; opened on the first call and opened
/// again on the next call after it breaks.
#[derive(Clone, Debug)]
pub struct CallClient {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    address: SocketAddr,
    /// TLS (and the node the server must prove it is), the token to present.
    dial: Dial,
    next_id: AtomicU64,
    /// Connections opened so far: each one's number.
    opened: AtomicU64,
    current: Mutex<Option<Arc<Connection>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last clone is gone: let the connection's tasks end.
        if let Some(connection) = self.current.get_mut().expect("not poisoned").take() {
            connection.outbox.close();
        }
    }
}

type Waiting = HashMap<u64, oneshot::Sender<Result<Vec<u8>, Status>>>;

#[derive(Debug, Default)]
struct Connection {
    /// Which of this client's connections it is (from 1).
    number: u64,
    outbox: Outbox,
    waiting: Mutex<Waiting>,
    broken: AtomicBool,
}

impl CallClient {
    /// A client of the node at `address`; nothing is opened until the first call.
    pub fn new(address: SocketAddr) -> Self {
        Self::with_dial(address, Dial::default())
    }

    /// A client of the node at `address` that dials with `dial`.
    pub(crate) fn with_dial(address: SocketAddr, dial: Dial) -> Self {
        CallClient {
            shared: Arc::new(Shared {
                address,
                dial,
                next_id: AtomicU64::new(1),
                opened: AtomicU64::new(0),
                current: Mutex::new(None),
            }),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.shared.address
    }

    /// The number of the connection calls go on now, if it is open and not broken. What the
    /// server binds to a connection (a key-value session) is valid only while this is the same.
    pub fn live_connection(&self) -> Option<u64> {
        let current = self.shared.current.lock().expect("not poisoned");
        current.as_ref().filter(|c| !c.broken.load(Ordering::Acquire)).map(|c| c.number)
    }

    /// Calls `method` with `request` and waits at most `timeout` for its reply. A connection
    /// that breaks fails the calls waiting on it as UNAVAILABLE (whether the server acted on
    /// them is unknown, as with any lost reply).
    pub async fn call<Rep: Message + Default>(
        &self,
        method: Method,
        request: &impl Message,
        timeout: Duration,
    ) -> Result<Rep, Status> {
        let connection = self.connection();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = connection.waiting.lock().expect("not poisoned");
            // Checked under the lock the failure sweep takes, so no call is left waiting.
            if connection.broken.load(Ordering::Acquire) {
                return Err(lost(self.unavailable("the connection broke")));
            }
            if waiting.len() >= MAX_CALLS_IN_FLIGHT {
                return Err(self.unavailable("too many calls in flight on this connection"));
            }
            waiting.insert(id, tx);
        }
        if let Err(refused) = push_call(&connection.outbox, id, method, request) {
            connection.waiting.lock().expect("not poisoned").remove(&id);
            return Err(match refused {
                link::PushError::Full => self.unavailable("too much is queued for this connection"),
                link::PushError::TooLarge { bytes } => Status::invalid_argument(format!(
                    "the request of {bytes} bytes exceeds the call link's frame limit of {} bytes",
                    link::MAX_FRAME_BYTES
                )),
            });
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(body))) => Rep::decode(body.as_slice())
                .map_err(|e| Status::internal(format!("malformed reply: {e}"))),
            Ok(Ok(Err(status))) => Err(status),
            Ok(Err(_)) => Err(lost(self.unavailable("the connection closed"))),
            Err(_) => {
                connection.waiting.lock().expect("not poisoned").remove(&id);
                Err(Status::deadline_exceeded(format!(
                    "no reply from {} within {} ms",
                    self.shared.address,
                    timeout.as_millis()
                )))
            }
        }
    }

    fn unavailable(&self, why: &str) -> Status {
        Status::unavailable(format!("{}: {why}", self.shared.address))
    }

    /// The open connection, or a new one being opened.
    fn connection(&self) -> Arc<Connection> {
        let mut current = self.shared.current.lock().expect("not poisoned");
        if let Some(connection) = current.as_ref() {
            if !connection.broken.load(Ordering::Acquire) {
                return Arc::clone(connection);
            }
        }
        let number = self.shared.opened.fetch_add(1, Ordering::Relaxed) + 1;
        let connection = Arc::new(Connection { number, ..Connection::default() });
        let dial = self.shared.dial.clone();
        tokio::spawn(run(self.shared.address, dial, Arc::clone(&connection)));
        *current = Some(Arc::clone(&connection));
        connection
    }
}

/// Opens the connection, then writes calls and hands out replies until it breaks or the client
/// is dropped; then fails every call still waiting.
async fn run(address: SocketAddr, dial: Dial, connection: Arc<Connection>) {
    let served = async {
        let tcp =
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await.ok()?.ok()?;
        tcp.set_nodelay(true).ok()?;
        let mut stream =
            tokio::time::timeout(CONNECT_TIMEOUT, dial.connect(tcp)).await.ok()?.ok()?;
        tokio::time::timeout(link::WRITE_TIMEOUT, stream.write_all(&opener(dial.token())))
            .await
            .ok()?
            .ok()?;
        let (mut read_half, mut write_half) = tokio::io::split(stream);
        let writer =
            link::write_loop(&mut write_half, &connection.outbox, None::<&mut ReadHalf<Conn>>);
        let reader = async {
            let mut buf = Vec::with_capacity(link::READ_CHUNK);
            while link::read_more(&mut read_half, &mut buf).await {
                let Ok((frames, used)) = link::complete_frames(&buf) else { return };
                for frame in frames {
                    let Ok((id, code, body)) = split_frame(&buf[frame]) else { return };
                    let waiter = connection.waiting.lock().expect("not poisoned").remove(&id);
                    // No waiter: the call timed out meanwhile.
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(reply_from(code, body));
                    }
                }
                buf.drain(..used);
            }
        };
        tokio::select! {
            _ = writer => {}
            () = reader => {}
        }
        Some(())
    };
    served.await;
    let waiting = {
        let mut waiting = connection.waiting.lock().expect("not poisoned");
        connection.broken.store(true, Ordering::Release);
        std::mem::take(&mut *waiting)
    };
    for (_, waiter) in waiting {
        let status = lost(Status::unavailable(format!("the connection to {address} broke")));
        let _ = waiter.send(Err(status));
    }
    connection.outbox.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    /// Echoes a KvGet's key as its value after a delay the key names, fails KvAbort.
    struct Echo;

    impl Serve for Echo {
        fn serve(self: Arc<Self>, method: Method, request: Vec<u8>, _: Identity) -> Served {
            Box::pin(async move {
                match method {
                    Method::KvGet => {
                        let get: proto::KvGetRequest = decode(&request)?.into_inner();
                        let delay_ms = u64::from(get.key.first().copied().unwrap_or(0));
                        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                        let reply = proto::KvGetReply {
                            found: true,
                            value: get.key,
                            session: 7,
                            txn: String::new(),
                        };
                        encode(tonic::Response::new(reply))
                    }
                    _ => Err(Status::aborted("echo only gets")),
                }
            })
        }
    }

    async fn echo_server() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut magic = [0u8; 8];
                tokio::io::AsyncReadExt::read_exact(&mut stream, &mut magic).await.unwrap();
                assert_eq!(magic, MAGIC);
                assert_eq!(read_token(&mut stream).await.unwrap(), b"");
                let (_keep, stopped) = tokio::sync::watch::channel(false);
                let caller = Identity { caller: crate::auth::Caller::Anyone, conn: 1 };
                tokio::spawn(async move {
                    let budget = link::FrameBudget::default();
                    serve_connection(Conn::Plain(stream), Arc::new(Echo), caller, budget, stopped)
                        .await;
                    drop(_keep);
                });
            }
        });
        address
    }

    fn get(key: Vec<u8>) -> proto::KvGetRequest {
        proto::KvGetRequest { session: 0, key, begin: None }
    }

    #[tokio::test]
    async fn concurrent_calls_share_a_connection_and_each_gets_its_own_reply() {
        let client = CallClient::new(echo_server().await);
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..200u8 {
            let client = client.clone();
            calls.spawn(async move {
                // Later keys answer sooner: replies come back out of order.
                let key = vec![20 - i % 20, i];
                let reply: proto::KvGetReply = client
                    .call(Method::KvGet, &get(key.clone()), Duration::from_secs(5))
                    .await
                    .unwrap();
                assert_eq!(reply.value, key);
            });
        }
        while let Some(done) = calls.join_next().await {
            done.unwrap();
        }
        let error = client
            .call::<proto::KvAbortReply>(
                Method::KvAbort,
                &proto::KvAbortRequest { session: 1 },
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert_eq!((error.code(), error.message()), (Code::Aborted, "echo only gets"));
    }

    #[tokio::test]
    async fn a_call_times_out_alone_and_an_unreachable_server_is_unavailable() {
        let client = CallClient::new(echo_server().await);
        let slow = get(vec![200]);
        let slow =
            client.call::<proto::KvGetReply>(Method::KvGet, &slow, Duration::from_millis(20));
        assert_eq!(slow.await.unwrap_err().code(), Code::DeadlineExceeded);
        let fast: proto::KvGetReply =
            client.call(Method::KvGet, &get(vec![0]), Duration::from_secs(5)).await.unwrap();
        assert_eq!(fast.value, vec![0], "the connection outlives a timed-out call");

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let nobody = closed.local_addr().unwrap();
        drop(closed);
        let client = CallClient::new(nobody);
        let error = client
            .call::<proto::KvGetReply>(Method::KvGet, &get(vec![0]), Duration::from_secs(5))
            .await;
        assert_eq!(error.unwrap_err().code(), Code::Unavailable);
    }

    #[test]
    fn every_method_survives_its_tag_and_unknown_tags_are_none() {
        for m in Method::ALL {
            assert_eq!(Method::from_u8(m as u8), Some(m));
        }
        assert_eq!(Method::from_u8(0), None);
        assert_eq!(Method::from_u8(200), None);
    }
}
