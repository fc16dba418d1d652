//! Replicas over TCP: a [`Wire`] that dials peers, and the server that answers them.
//!
//! A connection opens with a hello — [`MAGIC`], then the cluster's name — which the server
//! answers with one byte (accepted or not), so replicas of two clusters on one network never
//! take each other's votes. After it, each request is one frame (`len u32 LE ‖ bytes`) and
//! its reply one frame, in turn. Every length is checked against [`MAX_FRAME`] before anything
//! is allocated; every wait is bounded (the caller's timeout, the server's idle limit); the
//! server holds at most [`MAX_CONNECTIONS`] connections. Malformed requests reach only the
//! codec, which refuses them (`codec.rs`, fuzzed).
//!
//! The magic starts with `C`, as the node's other links do, so the runtime can serve this on
//! the node's one port beside peer and call links. Under the node's `[tls]`, the connection
//! under the link is mutual TLS: the node gives [`TcpWire::with_connect`] its dialler and
//! checks the certificate of whoever opens a link before [`serve_link`] sees a byte.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::Raft;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::{network, TypeConfig, Wire};

/// The first bytes of a replica link.
pub const MAGIC: [u8; 8] = *b"CRAFT01\n";
/// The largest request or reply: a snapshot is sent whole, so this bounds a coordinator's live
/// state too (its records at a checkpoint, far smaller in practice).
pub const MAX_FRAME: usize = 64 << 20;
/// Connections a replica serves at once (its peers need one or two each).
pub const MAX_CONNECTIONS: usize = 64;
/// Longest cluster name a hello carries.
const MAX_CLUSTER_NAME: usize = 255;
/// A connection must say its hello within this, and is closed after this long without a
/// request.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per peer for the next request.
const IDLE_PER_PEER: usize = 4;

const ACCEPTED: u8 = 1;
const REFUSED: u8 = 0;

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

async fn write_frame(stream: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> io::Result<()> {
    if bytes.len() > MAX_FRAME {
        return Err(invalid(format!("a frame of {} bytes (at most {MAX_FRAME})", bytes.len())));
    }
    let len = u32::try_from(bytes.len()).expect("MAX_FRAME fits in u32");
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    stream.write_all(&out).await?;
    stream.flush().await
}

/// Reads one frame; a length over [`MAX_FRAME`] is refused before anything is allocated.
async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(invalid(format!("a frame of {len} bytes announced (at most {MAX_FRAME})")));
    }
    let mut bytes = vec![0u8; len];
    stream.read_exact(&mut bytes).await?;
    Ok(bytes)
}

fn hello(cluster: &str) -> Vec<u8> {
    let name = &cluster.as_bytes()[..cluster.len().min(MAX_CLUSTER_NAME)];
    let mut out = MAGIC.to_vec();
    out.push(u8::try_from(name.len()).expect("bounded above"));
    out.extend_from_slice(name);
    out
}

/// Reads the rest of a dialler's hello (after the magic) and answers it: accepted only for a
/// replica of `cluster`.
async fn accept_hello_rest(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    cluster: &str,
) -> io::Result<()> {
    let mut len = [0u8; 1];
    stream.read_exact(&mut len).await?;
    let mut name = vec![0u8; usize::from(len[0])];
    stream.read_exact(&mut name).await?;
    let ours = hello(cluster);
    if name != ours[MAGIC.len() + 1..] {
        let _ = stream.write_all(&[REFUSED]).await;
        return Err(invalid(format!(
            "a replica of cluster `{}`, not `{cluster}`",
            String::from_utf8_lossy(&name)
        )));
    }
    stream.write_all(&[ACCEPTED]).await
}

/// A connection under a replica link: TCP, or TLS over it.
pub trait Link: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Link for T {}

/// What [`Connect::connect`] returns.
pub type Connecting<'a> = Pin<Box<dyn Future<Output = io::Result<Box<dyn Link>>> + Send + 'a>>;

/// Opens the connection a replica link runs on, to replica `target` at `addr`. The node wraps
/// TCP in mutual TLS, checking that the peer's certificate names `target`.
pub trait Connect: Send + Sync + 'static {
    fn connect<'a>(&'a self, target: u64, addr: &'a str) -> Connecting<'a>;
}

/// What [`Accept::accept`] returns: the link to serve, or why the dialler was turned away.
pub type Accepting = Pin<Box<dyn Future<Output = io::Result<Box<dyn Link>>> + Send>>;

/// The door of a replica link on its own listener ([`serve_with`]): plain TCP takes anyone who
/// says the cluster's name; under TLS the dialler must prove by its certificate that it is one
/// of the replicas. An error closes the connection before a byte reaches the codec.
pub trait Accept: Send + Sync + 'static {
    fn accept(&self, tcp: TcpStream) -> Accepting;
}

/// Plain TCP (loopback, or a network the operator trusts).
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainTcp;

impl Accept for PlainTcp {
    fn accept(&self, tcp: TcpStream) -> Accepting {
        Box::pin(async move { Ok(Box::new(tcp) as Box<dyn Link>) })
    }
}

impl Connect for PlainTcp {
    fn connect<'a>(&'a self, _target: u64, addr: &'a str) -> Connecting<'a> {
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn Link>)
        })
    }
}

/// Connections kept for the next request, by peer address.
type IdleLinks = Arc<Mutex<HashMap<String, Vec<Box<dyn Link>>>>>;

/// Dials peers, keeping a few connections to each for the next request.
#[derive(Clone)]
pub struct TcpWire {
    cluster: Arc<str>,
    connect: Arc<dyn Connect>,
    idle: IdleLinks,
}

impl std::fmt::Debug for TcpWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpWire").field("cluster", &self.cluster).finish_non_exhaustive()
    }
}

impl TcpWire {
    /// Over plain TCP.
    pub fn new(cluster: &str) -> Self {
        Self::with_connect(cluster, PlainTcp)
    }

    /// Over the connections `connect` opens (TLS, say).
    pub fn with_connect(cluster: &str, connect: impl Connect) -> Self {
        TcpWire { cluster: cluster.into(), connect: Arc::new(connect), idle: Arc::default() }
    }

    async fn dial(&self, target: u64, addr: &str) -> io::Result<Box<dyn Link>> {
        let mut stream = self.connect.connect(target, addr).await?;
        stream.write_all(&hello(&self.cluster)).await?;
        let mut answer = [0u8; 1];
        stream.read_exact(&mut answer).await?;
        if answer[0] != ACCEPTED {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{addr} is not a replica of cluster `{}`", self.cluster),
            ));
        }
        Ok(stream)
    }

    fn take_idle(&self, addr: &str) -> Option<Box<dyn Link>> {
        self.idle.lock().expect("not poisoned").get_mut(addr).and_then(Vec::pop)
    }

    fn put_idle(&self, addr: &str, stream: Box<dyn Link>) {
        let mut idle = self.idle.lock().expect("not poisoned");
        let streams = idle.entry(addr.to_string()).or_default();
        if streams.len() < IDLE_PER_PEER {
            streams.push(stream);
        }
    }

    async fn exchange(&self, target: u64, addr: &str, request: &[u8]) -> io::Result<Vec<u8>> {
        // An idle connection may have been closed by the peer (restarted, idle limit): one
        // failure on it is retried on a fresh connection. Requests are idempotent in Raft.
        if let Some(mut stream) = self.take_idle(addr) {
            if write_frame(&mut stream, request).await.is_ok() {
                if let Ok(reply) = read_frame(&mut stream).await {
                    self.put_idle(addr, stream);
                    return Ok(reply);
                }
            }
        }
        let mut stream = self.dial(target, addr).await?;
        write_frame(&mut stream, request).await?;
        let reply = read_frame(&mut stream).await?;
        self.put_idle(addr, stream);
        Ok(reply)
    }
}

impl Wire for TcpWire {
    async fn call(
        &self,
        target: u64,
        addr: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> io::Result<Vec<u8>> {
        match tokio::time::timeout(timeout, self.exchange(target, addr, &request)).await {
            Ok(answer) => answer,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("{addr}: no answer"))),
        }
    }
}

/// Serves peers' requests to `raft` on `listener` over plain TCP until `stopped` turns true.
/// Connections over [`MAX_CONNECTIONS`] are closed at once; a bad hello or frame closes its
/// connection only.
pub async fn serve(
    listener: TcpListener,
    raft: Raft<TypeConfig>,
    cluster: String,
    stopped: watch::Receiver<bool>,
) {
    serve_with(listener, raft, cluster, stopped, Arc::new(PlainTcp)).await;
}

/// [`serve`], each connection first through `door` (a TLS handshake and a check of the
/// dialler's certificate, say), bounded by the hello's timeout.
pub async fn serve_with(
    listener: TcpListener,
    raft: Raft<TypeConfig>,
    cluster: String,
    mut stopped: watch::Receiver<bool>,
    door: Arc<dyn Accept>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let cluster: Arc<str> = cluster.into();
    loop {
        let accepted = tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors, say: do not spin; connections wait in the backlog.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue; // dropped: closed at once
        };
        let (raft, cluster, mut stopped) = (raft.clone(), Arc::clone(&cluster), stopped.clone());
        let door = Arc::clone(&door);
        tokio::spawn(async move {
            tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => {}
                () = serve_connection(stream, &raft, &cluster, door.as_ref()) => {}
            }
            drop(slot);
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    raft: &Raft<TypeConfig>,
    cluster: &str,
    door: &dyn Accept,
) {
    let _ = stream.set_nodelay(true);
    let Ok(Ok(mut stream)) = tokio::time::timeout(HELLO_TIMEOUT, door.accept(stream)).await else {
        return; // not let in: no certificate of a replica, a failed handshake, too slow
    };
    let mut magic = [0u8; 8];
    let read = tokio::time::timeout(HELLO_TIMEOUT, stream.read_exact(&mut magic)).await;
    if !matches!(read, Ok(Ok(_))) || magic != MAGIC {
        return; // not a replica link
    }
    serve_link(stream, raft, cluster).await;
}

/// Serves one replica link whose [`MAGIC`] has been read (by [`serve`], or by a node's port,
/// which tells its kinds of link apart by their magic): the rest of the hello, then requests
/// until the peer closes, a frame is malformed, or it has been idle too long.
pub async fn serve_link(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    raft: &Raft<TypeConfig>,
    cluster: &str,
) {
    let Ok(Ok(())) =
        tokio::time::timeout(HELLO_TIMEOUT, accept_hello_rest(&mut stream, cluster)).await
    else {
        return;
    };
    loop {
        let Ok(Ok(request)) = tokio::time::timeout(IDLE_TIMEOUT, read_frame(&mut stream)).await
        else {
            return;
        };
        let reply = network::serve(raft, &request).await;
        if write_frame(&mut stream, &reply).await.is_err() {
            return;
        }
    }
}
