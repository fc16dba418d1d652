//! Concord's runtime: the protocol cores on real disks and real sockets.
//!
//! One process (or one task, under `concord dev`) runs one node: the coordinator or a shard.
//! [`serve`] opens the node's log, replays it into the core, and serves on the node's one
//! address three kinds of connection, told apart by their first bytes:
//! * peer links — protocol messages between nodes (plain TCP, `peer_link.rs`);
//! * call links — requests and replies for the key-value store: the Rust client to the
//!   gateway, the gateway to its shards (plain TCP, [`call_link`]);
//! * gRPC — `Client` (submit, status, list), `Node` (health, shard reads) and, for the
//!   key-value store, `Kv` (the public contract, the same methods as the call link's).
//!
//! See `proto/concord.proto` for the gRPC contract and the call bodies.

pub mod auth;
pub mod call_link;
pub mod certs;
mod check;
pub mod config;
mod connections;
pub mod tls;

/// The decoders that bytes from a socket reach, for the fuzzers (`crates/fuzzing`): not an API.
#[doc(hidden)]
pub mod fuzzing {
    use concord_types::codec::Encode;

    /// Splits `bytes` into peer-link frames and decodes each as a message `M`, as a node's
    /// reader does; the number of messages, or why the link would be dropped.
    pub fn peer_frames<M: Encode>(bytes: &[u8]) -> Result<usize, String> {
        crate::peer_link::decode_complete::<M>(bytes).map(|(messages, _)| messages.len())
    }

    /// Splits `bytes` into call-link frames and decodes each call's request as its method's
    /// message, as a node serving calls does; the number of calls decoded.
    pub fn call_frames(bytes: &[u8]) -> Result<usize, String> {
        crate::call_link::decode_calls(bytes)
    }
}
mod console;
mod coordinator;
mod data_loss;
mod driver;
mod engine;
pub mod failpoint;
mod kv;
mod link;
mod metrics;
mod model;
mod peer_link;
mod replicated;
mod service;
mod timestamp_lease;
mod versions;

pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_debug_implementations)]
    tonic::include_proto!("concord.v1");
}

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use concord_commit::amnesia::AfterDataLoss as _;
use concord_commit::Input;
use concord_types::codec::Encode;
use concord_types::NodeId;
use concord_wal::GroupCommit;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint};

use crate::config::{ClusterConfig, CommitProtocol, NodeConfig, Role};
use crate::coordinator::CoordinatorRole;
use crate::driver::{Event, Io, Node, RoleState};
use crate::engine::{Engine, PaxosCommit, TwoPc};
use crate::model::{Deltas, KvStore, Model};
use crate::service::Handle;
use concord_commit::ResourceParticipant as _;

/// Largest gRPC message a node accepts (a large request), and largest protocol message.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// Accepted gRPC connections waiting for the server to take them.
const ACCEPT_QUEUE: usize = 64;
/// An accepted connection must say what it is (its first bytes, a peer's hello) within this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests one gRPC connection may have in flight at once.
const GRPC_STREAMS_PER_CONNECTION: u32 = 256;
/// Largest header block a gRPC request may send.
const GRPC_MAX_HEADER_BYTES: u32 = 16 << 10;
/// A gRPC connection is closed (gracefully: its requests finish) after this long.
const GRPC_CONNECTION_AGE: Duration = Duration::from_secs(1_800);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("no node named `{0}` in the configuration")]
    UnknownNode(String),
    #[error(transparent)]
    Log(#[from] concord_wal::OpenError),
    #[error("{path}: {reason}")]
    DataDir { path: PathBuf, reason: String },
    #[error("cannot listen on {address}: {source}")]
    Listen { address: SocketAddr, source: std::io::Error },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Failed(String),
}

/// What the data directory was made for; a node refuses a directory made for another.
const DATA_FORMAT: u32 = 1;

fn identity(config: &ClusterConfig, node: &NodeConfig) -> String {
    let mut identity = format!(
        "format = {DATA_FORMAT}\ncluster = {}\nnode = {}\nid = {}\nrole = {}\n",
        config.cluster, node.name, node.id, node.role
    );
    // The protocols' logs are not interchangeable. Named only when it is not the default, so
    // directories made before there was a choice (2PC) keep their identity.
    if config.protocol != CommitProtocol::TwoPhase {
        identity += &format!("protocol = {}\n", config.protocol);
    }
    identity
}

fn check_data_dir(dir: &Path, expected: &str) -> Result<concord_wal::DirLock, NodeError> {
    concord_wal::claim_data_dir(dir, expected)
        .map_err(|reason| NodeError::DataDir { path: dir.to_path_buf(), reason })
}

/// What a caught panic said (a core's assertion, redb on a damaged file).
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(ToString::to_string))
        .unwrap_or_default()
}

/// A lazily connected channel to `address` with bounded connect and request times, over TLS
/// when `tls` is given.
fn channel_with(address: SocketAddr, tls: Option<tonic::transport::ClientTlsConfig>) -> Channel {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .expect("a socket address is a valid URI")
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).expect("a TLS configuration from valid PEM");
    }
    endpoint.connect_lazy()
}

/// A lazily connected channel to `address` with bounded connect and request times (plain).
pub fn channel(address: SocketAddr) -> Channel {
    channel_with(address, None)
}

/// A gRPC channel that presents a client's bearer token with every request.
pub type ClientChannel = tonic::service::interceptor::InterceptedService<Channel, BearerToken>;

/// Adds `authorization: Bearer <token>` to every request (nothing, without a token).
#[derive(Debug, Clone, Default)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel to the node at `address` for a client holding `credentials`: TLS when they trust
/// a CA, its token on every request.
pub fn client_channel(address: SocketAddr, credentials: &tls::ClientCredentials) -> ClientChannel {
    let token = credentials.token().and_then(|token| format!("Bearer {token}").parse().ok());
    tonic::service::interceptor::InterceptedService::new(
        channel_with(address, credentials.grpc()),
        BearerToken(token),
    )
}

/// A call-link client of the gateway at `address` for a client holding `credentials`.
pub fn call_client(
    address: SocketAddr,
    credentials: &tls::ClientCredentials,
) -> call_link::CallClient {
    call_link::CallClient::with_dial(address, credentials.dial())
}

/// A channel from this node to node `to`, presenting this node's certificate under TLS.
pub(crate) fn node_channel(tls: Option<&tls::NodeTls>, to: NodeId, address: SocketAddr) -> Channel {
    channel_with(address, tls.map(|tls| tls.grpc(to)))
}

/// Accepts connections on the node's port until `stopped`: a Concord link (peer or call) is
/// served here, anything else is handed to the gRPC server. With TLS, the handshake comes
/// first and ALPN says which; without, the first byte.
async fn accept_loop<E: Engine>(
    listener: TcpListener,
    grpc: mpsc::Sender<std::io::Result<tls::GrpcConn>>,
    handle: Handle<E>,
    calls: Option<Arc<dyn call_link::Serve>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut connections = 0u64;
    let open = connections::Connections::default();
    let failed_handshakes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    loop {
        let accepted = tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, from)) = accepted else {
            // Out of descriptors, say: do not spin; connections wait in the backlog.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let slot = match open.admit(from.ip()) {
            Ok(slot) => slot,
            Err((why, say)) => {
                if say {
                    eprintln!("{}: refused a connection from {from}: {why}", handle.me);
                }
                continue; // dropped: closed at once
            }
        };
        // Without TCP_NODELAY small replies wait for the peer's delayed ACK (~40 ms per commit).
        let _ = stream.set_nodelay(true);
        let (grpc, handle, calls, stopped) =
            (grpc.clone(), handle.clone(), calls.clone(), stopped.clone());
        let failed_handshakes = Arc::clone(&failed_handshakes);
        connections += 1;
        let conn = connections;
        tokio::spawn(async move {
            let remote = stream.peer_addr().ok();
            if let Some(tls) = handle.tls.clone() {
                let accepted = match tokio::time::timeout(HELLO_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(accepted)) => accepted,
                    Ok(Err(e)) => {
                        // Every failed handshake would flood the log under a flood of them:
                        // the first, then every thousandth, with the count.
                        let failed = failed_handshakes.fetch_add(1, Ordering::Relaxed) + 1;
                        if failed % 1_000 == 1 {
                            let from = remote.map_or_else(String::new, |a| format!(" from {a}"));
                            eprintln!(
                                "{}: refused a connection{from}: TLS: {e} ({failed} failed handshakes so far)",
                                handle.me
                            );
                        }
                        return;
                    }
                    Err(_) => return, // silent: dropped
                };
                if accepted.grpc {
                    let node =
                        accepted.cert.as_ref().and_then(|cert| tls.node_of(cert, &handle.config));
                    let info = tls::ConnInfo { remote, node, conn };
                    let conn = tls::GrpcConn { conn: accepted.conn, info, _slot: slot };
                    let _ = grpc.send(Ok(conn)).await;
                } else {
                    serve_link(accepted.conn, accepted.cert, conn, handle, calls, stopped).await;
                    drop(slot);
                }
                return;
            }
            let mut first = [0u8; 1];
            let peeked = tokio::time::timeout(HELLO_TIMEOUT, stream.peek(&mut first));
            match peeked.await {
                Ok(Ok(1)) if first[0] == link::FIRST_BYTE => {
                    let stream = tls::Conn::Plain(stream);
                    serve_link(stream, None, conn, handle, calls, stopped).await;
                    drop(slot);
                }
                Ok(Ok(1)) => {
                    let info = tls::ConnInfo { remote, node: None, conn };
                    let conn = tls::GrpcConn { conn: tls::Conn::Plain(stream), info, _slot: slot };
                    let _ = grpc.send(Ok(conn)).await;
                }
                _ => {} // closed or silent: dropped
            }
        });
    }
}

/// A connection that opened like a Concord link: its magic says which.
async fn serve_link<E: Engine>(
    mut stream: tls::Conn,
    cert: Option<rustls::pki_types::CertificateDer<'static>>,
    conn: u64,
    handle: Handle<E>,
    calls: Option<Arc<dyn call_link::Serve>>,
    stopped: watch::Receiver<bool>,
) {
    let kind = match tokio::time::timeout(HELLO_TIMEOUT, link::read_magic(&mut stream)).await {
        Ok(Ok(kind)) => kind,
        Ok(Err(reason)) => {
            eprintln!("{}: refused a connection: {reason}", handle.me);
            return;
        }
        Err(_) => return,
    };
    match (kind, calls) {
        (link::LinkKind::Peer, _) => serve_peer(stream, cert, handle, stopped).await,
        (link::LinkKind::Call, Some(calls)) => {
            let token = tokio::time::timeout(HELLO_TIMEOUT, call_link::read_token(&mut stream));
            let token = match token.await {
                Ok(Ok(token)) => token,
                Ok(Err(reason)) => {
                    eprintln!("{}: refused a call link: {reason}", handle.me);
                    return;
                }
                Err(_) => return,
            };
            let node = match (&handle.tls, &cert) {
                (Some(tls), Some(cert)) => tls.node_of(cert, &handle.config),
                _ => None,
            };
            // A shard's calls (reads for the gateway) are for the cluster's gateway only.
            let me = handle.config.node(&handle.me).map(|n| n.role);
            if handle.tls.is_some() && me == Some(config::Role::Shard) {
                // The gateway: the coordinator, or any replica of a replicated one.
                let gateway = handle.config.coordinator().id;
                let is_gateway = |id: NodeId| handle.config.coordinators().any(|n| n.id == id.0);
                if !node.is_some_and(is_gateway) {
                    eprintln!(
                        "{}: refused a call link: only the gateway (node {gateway} or its replicas) calls a shard",
                        handle.me
                    );
                    return;
                }
            }
            let caller = match handle.auth.identify(Some(&token), node) {
                Ok(caller) => caller,
                Err(reason) => {
                    eprintln!("{}: refused a call link: {reason}", handle.me);
                    return;
                }
            };
            let caller = auth::Identity { caller, conn };
            let budget = handle.frames.clone();
            call_link::serve_connection(stream, calls, caller, budget, stopped).await;
        }
        (link::LinkKind::Call, None) => {
            eprintln!("{}: refused a call link: this node serves no calls", handle.me);
        }
        (link::LinkKind::Replica, _) => match &handle.replication {
            Some(_)
                if !replicated::may_open_replica_link(
                    handle.tls.as_deref(),
                    cert.as_ref(),
                    &handle.config,
                ) =>
            {
                let remote = stream.peer_addr().map_or_else(String::new, |a| format!(" from {a}"));
                eprintln!(
                    "{}: refused a replica link{remote}: its certificate names no coordinator replica",
                    handle.me
                );
            }
            Some(r) => {
                concord_replication::tcp::serve_link(stream, r.replica.raft(), &r.cluster).await;
            }
            None => eprintln!(
                "{}: refused a replica link: this node is no coordinator replica",
                handle.me
            ),
        },
    }
}

/// One accepted peer link: its hello checked (under TLS, against the dialler's certificate),
/// then its messages into the loop, a batch per read. A message the sender's role never sends
/// closes the link, and none of that read's messages reach the core.
async fn serve_peer<E: Engine>(
    mut stream: tls::Conn,
    cert: Option<rustls::pki_types::CertificateDer<'static>>,
    handle: Handle<E>,
    mut stopped: watch::Receiver<bool>,
) {
    let remote = stream.peer_addr().map_or_else(String::new, |a| format!(" from {a}"));
    let hello =
        tokio::time::timeout(HELLO_TIMEOUT, peer_link::read_hello(&mut stream, &handle.config));
    let from = match hello.await {
        Ok(Ok(from)) => from,
        Ok(Err(reason)) => {
            eprintln!("{}: refused a peer connection{remote}: {reason}", handle.me);
            return;
        }
        Err(_) => return,
    };
    if let Some(tls) = &handle.tls {
        // Every coordinator replica speaks as the coordinator (the first one's id), each with
        // its own certificate.
        let speaks_as_coordinator = |cert: &rustls::pki_types::CertificateDer<'static>| {
            from.0 == handle.config.coordinator().id
                && handle.config.coordinators().any(|n| tls.is_node(cert, NodeId(n.id)))
        };
        if !cert.as_ref().is_some_and(|cert| tls.is_node(cert, from) || speaks_as_coordinator(cert))
        {
            eprintln!(
                "{}: refused a peer connection{remote}: it says it is node {from}, but its certificate does not name that node",
                handle.me
            );
            return;
        }
    }
    let role_of = |id: u32| handle.config.nodes.iter().find(|n| n.id == id).map(|n| n.role);
    // read_hello checked the sender is configured; this node is.
    let (Some(from_role), Some(my_role)) =
        (role_of(from.0), handle.config.node(&handle.me).map(|n| n.role))
    else {
        return;
    };
    // A coordinator replica takes shards' links only while it leads: refused, their senders try
    // the next replica; when it stops leading, its links are dropped the same way.
    let leading = || handle.replication.as_ref().is_none_or(|r| r.leading.load(Ordering::Acquire));
    // Subscribed before the check: a stand-down after it is seen below.
    let mut stand_downs = handle.replication.as_ref().map(|r| r.stand_downs.subscribe());
    if !leading() {
        return;
    }
    if handle.replication.is_some() {
        // The sender waits for this before it sends anything (`peer_link::send_loop`).
        let accepted = stream.write_all(&[peer_link::LEADER_ACCEPTS]);
        if !matches!(tokio::time::timeout(HELLO_TIMEOUT, accepted).await, Ok(Ok(()))) {
            return;
        }
    }
    let me = handle.me.clone();
    let deliver = |msgs: Vec<E::Msg>| {
        let events = handle.events.clone();
        let still_leading = leading();
        let refused = msgs
            .iter()
            .find(|m| !E::may_send(m, from, from_role, my_role))
            .map(ToString::to_string);
        let me = me.clone();
        async move {
            if !still_leading {
                return false;
            }
            if let Some(msg) = refused {
                eprintln!(
                    "{me}: dropped the peer link from {from} ({from_role}): a {from_role} never sends {msg} to a {my_role}; none of its last read was applied"
                );
                return false;
            }
            events.send(Event::Messages { from, msgs }).await.is_ok()
        }
    };
    let inbound = link::Inbound::new(handle.frames.clone());
    let stood_down = async {
        match &mut stand_downs {
            Some(changes) => {
                let _ = changes.changed().await;
            }
            None => std::future::pending().await,
        }
    };
    let received = tokio::select! {
        _ = stopped.wait_for(|stop| *stop) => Ok(()),
        () = stood_down => Ok(()),
        received = peer_link::receive_loop::<E::Msg, _>(stream, inbound, deliver) => received,
    };
    if let Err(reason) = received {
        eprintln!("{}: dropped the peer link from {from}: {reason}", handle.me);
    }
}

pub use check::{check_data, DataReport};
pub use data_loss::DATA_LOSS_FILE;
pub use replicated::{LEADER_METADATA, STANDBY_METADATA};

/// How a node starts, beyond its configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    /// A shard whose log is refused as damaged starts from what is readable, and from then on
    /// presumes nothing about what it may have forgotten (`docs/log-format.md`). Coordinators
    /// and acceptors are refused even so.
    pub accept_data_loss: bool,
    /// A coordinator replica joining a running replicated coordinator (a new one, or one
    /// whose data was lost): with an empty directory it does not propose the configured
    /// replicas as a new cluster, but waits until the leader adds it
    /// (`concord cluster add-replica`).
    pub join: bool,
}

/// Runs the node `name` of `config` with its data under `data_dir` until `shutdown` becomes
/// true. Returns an error if the node cannot start, or if its log fails while running.
/// A configuration with a `[kv]` section runs the key-value store, otherwise the delta model;
/// either over the configured protocol.
pub async fn serve(
    config: ClusterConfig,
    name: &str,
    data_dir: &Path,
    shutdown: watch::Receiver<bool>,
) -> Result<(), NodeError> {
    serve_with(config, name, data_dir, shutdown, StartOptions::default()).await
}

/// [`serve`], with options.
pub async fn serve_with(
    config: ClusterConfig,
    name: &str,
    data_dir: &Path,
    shutdown: watch::Receiver<bool>,
    options: StartOptions,
) -> Result<(), NodeError> {
    // A configuration built in code (`concord dev`, tests) meets the same checks as a file.
    config.validate().map_err(NodeError::Config)?;
    if options.join {
        let replica = config
            .node(name)
            .is_some_and(|n| n.role == Role::Coordinator && config.replicated_coordinator());
        if !replica {
            return Err(NodeError::Config(format!(
                "--join: `{name}` is not a replica of a replicated coordinator (only a coordinator \
                 of a cluster with 3 or 5 of them joins; shards and a lone coordinator just start)"
            )));
        }
    }
    match (config.kv.is_some(), config.protocol) {
        (true, CommitProtocol::TwoPhase) => {
            serve_engine::<TwoPc<KvStore>>(config, name, data_dir, shutdown, options).await
        }
        (true, CommitProtocol::PaxosCommit) => {
            serve_engine::<PaxosCommit<KvStore>>(config, name, data_dir, shutdown, options).await
        }
        (false, CommitProtocol::TwoPhase) => {
            serve_engine::<TwoPc<Deltas>>(config, name, data_dir, shutdown, options).await
        }
        (false, CommitProtocol::PaxosCommit) => {
            serve_engine::<PaxosCommit<Deltas>>(config, name, data_dir, shutdown, options).await
        }
    }
}

async fn serve_engine<E: Engine>(
    config: ClusterConfig,
    name: &str,
    data_dir: &Path,
    mut shutdown: watch::Receiver<bool>,
    options: StartOptions,
) -> Result<(), NodeError> {
    let me = config.node(name).ok_or_else(|| NodeError::UnknownNode(name.to_string()))?.clone();
    // Held until this function returns: the node's whole life.
    let mut dir_lock = check_data_dir(data_dir, &identity(&config, &me))?;
    let segment_bytes = config.log.segment_bytes;
    let (role, dir) = (me.role, data_dir.to_path_buf());
    let accept = options.accept_data_loss;
    let options_join = options.join;
    let (dir_lock, log, raw) = tokio::task::spawn_blocking(move || {
        let (log, raw) = data_loss::open_log(&dir, segment_bytes, &mut dir_lock, accept, role)?;
        Ok::<_, NodeError>((dir_lock, log, raw))
    })
    .await
    .map_err(|e| NodeError::Failed(e.to_string()))??;
    let amnesia = match me.role {
        Role::Shard => data_loss::amnesia_of(data_dir)?,
        Role::Coordinator | Role::Acceptor => None,
    };
    let mut records = Vec::with_capacity(raw.len());
    for (i, bytes) in raw.iter().enumerate() {
        records.push(E::Record::from_bytes(bytes).map_err(|e| NodeError::DataDir {
            path: data_dir.join("log"),
            reason: format!(
                "record {i} cannot be read ({e:?}): written by an incompatible version?"
            ),
        })?);
    }
    // A replicated coordinator keeps its records on the replicated log (`replicated.rs`), in
    // its own directory beside the node's; the node's local log stays empty.
    let replicated = me.role == Role::Coordinator && config.replicated_coordinator();
    if replicated && !records.is_empty() {
        return Err(NodeError::DataDir {
            path: data_dir.join("log"),
            reason: format!(
                "this coordinator's local log holds {} records, and a replicated coordinator \
                 starts from the replicated log alone: finish its transactions with one \
                 coordinator configured first",
                records.len()
            ),
        });
    }
    let tls = match &config.tls {
        Some(section) => {
            let files = tls::CertFiles { dir: section.dir.clone() };
            let loaded = tls::NodeTls::load(&files, &config.cluster, &me.name, NodeId(me.id))
                .map_err(|reason| NodeError::Config(format!("[tls]: {reason}")))?;
            Some(Arc::new(loaded))
        }
        None => None,
    };
    let replica = if replicated {
        let mut options = concord_replication::Options::new(
            config.cluster.clone(),
            u64::from(me.id),
            data_dir.join("replica"),
            replicated::members(&config),
        );
        options.bootstrap = !options_join;
        let timing = &config.replication;
        options.heartbeat = Duration::from_millis(timing.heartbeat_ms);
        options.election_timeout = (
            Duration::from_millis(timing.election_min_ms),
            Duration::from_millis(timing.election_max_ms),
        );
        let wire = match &tls {
            Some(tls) => concord_replication::TcpWire::with_connect(
                &config.cluster,
                tls::ReplicaLinks::new(
                    Arc::clone(tls),
                    config.coordinators().map(|n| NodeId(n.id)),
                ),
            ),
            None => concord_replication::TcpWire::new(&config.cluster),
        };
        let replica = concord_replication::Replica::start(
            options,
            concord_replication::RecordLog::default(),
            wire,
        )
        .await
        .map_err(|e| match e {
            concord_replication::StartError::Config(why) => NodeError::Config(why),
            other => {
                NodeError::DataDir { path: data_dir.join("replica"), reason: other.to_string() }
            }
        })?;
        Some(replica)
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(me.listen)
        .await
        .map_err(|source| NodeError::Listen { address: me.listen, source })?;
    // The log thread holds the directory's lock until it has written all it was given.
    let log = Arc::new(
        GroupCommit::start_holding(log, dir_lock).map_err(|e| NodeError::Failed(e.to_string()))?,
    );

    let mut storage_set_aside = false;
    let storage = match me.role {
        Role::Shard => Some(match E::Model::open_storage(data_dir) {
            Ok(storage) => storage,
            Err(reason) if options.accept_data_loss => {
                data_loss::set_aside(data_dir, E::Model::STORAGE_FILE, &reason)?;
                storage_set_aside = true;
                E::Model::open_storage(data_dir)
                    .map_err(|reason| NodeError::DataDir { path: data_dir.to_path_buf(), reason })?
            }
            Err(reason) => {
                return Err(NodeError::DataDir { path: data_dir.to_path_buf(), reason });
            }
        }),
        Role::Coordinator | Role::Acceptor => None,
    };
    let submitter = replica.as_ref().map(concord_replication::Replica::submitter);
    let (internal_tx, internal_rx) = mpsc::unbounded_channel();
    let (external_tx, external_rx) = mpsc::channel(driver::EXTERNAL_CAPACITY);
    let mut outboxes = HashMap::new();
    // With a replicated coordinator, every replica speaks as the coordinator (the first one's
    // id), and a link to the coordinator goes to whichever replica leads.
    let coordinator = config.coordinator().id;
    let speak_as = if replicated { coordinator } else { me.id };
    let coordinator_replica = |n: &NodeConfig| n.role == Role::Coordinator && n.id != coordinator;
    for peer in config.nodes.iter().filter(|n| n.id != me.id && !coordinator_replica(n)) {
        if replicated && peer.role == Role::Coordinator {
            continue; // replicas talk over the replicated log, not peer links
        }
        let outbox = Arc::new(link::Outbox::default());
        outboxes.insert(NodeId(peer.id), peer_link::PeerSender(Arc::clone(&outbox)));
        let cluster = config.cluster.clone();
        // Each address with the node its certificate must name: the coordinator's replicas
        // each prove their own.
        let dial =
            |n: &NodeConfig| tls.as_ref().map(|tls| tls.dial(NodeId(n.id))).unwrap_or_default();
        let to = if peer.id == coordinator {
            config.coordinators().map(|n| (n.listen, dial(n))).collect()
        } else {
            vec![(peer.listen, dial(peer))]
        };
        tokio::spawn(peer_link::send_loop(NodeId(speak_as), cluster, to, outbox));
    }
    let id = NodeId(me.id);
    let role = match me.role {
        Role::Coordinator if replicated => RoleState::Standby,
        Role::Coordinator => {
            let shards: BTreeMap<NodeId, String> =
                config.shards().map(|n| (NodeId(n.id), n.name.clone())).collect();
            let mut role = CoordinatorRole::<E>::new(id, E::coordinator(id, &config), shards);
            role.recovered(&records);
            RoleState::Coordinator(Box::new(role))
        }
        Role::Shard => {
            let resource = E::Model::resource(&config);
            RoleState::Shard(Box::new(E::participant(id, &config, resource)))
        }
        Role::Acceptor => {
            let acceptor = E::acceptor(id, &config).ok_or_else(|| {
                NodeError::Failed(format!("protocol {} has no acceptors", config.protocol))
            })?;
            RoleState::Acceptor(Box::new(acceptor))
        }
    };
    let io = Io {
        outboxes,
        log: Arc::clone(&log),
        internal: internal_tx,
        records_since_checkpoint: 0,
        checkpoint_every: config.log.checkpoint_every,
        dropped_sends: 0,
        storage,
        timers: concord_types::TimerHeap::default(),
        // One submitter for every core this replica runs and for the leadership watcher's
        // barriers: its queue keeps them in one order.
        replicated: submitter
            .as_ref()
            .map(|s| driver::ReplicatedIo { submitter: s.clone(), incarnation: 0 }),
    };
    let mut node = Node { role, io, data_loss_accepted: amnesia.is_some() };
    if let (Some(amnesia), RoleState::Shard(p)) = (&amnesia, &mut node.role) {
        p.set_amnesia(amnesia.clone());
    }
    // Every record passed its checksum and decoded, but a log can still be inconsistent (a
    // commit without its prepare, another role's records copied in by hand): the cores assert
    // such invariants. That is refused as damaged data, naming the log, not a crash of the
    // whole process (`concord dev` runs every node in one).
    let replayed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        node.step(Input::Restart { records });
    }));
    if let Err(panic) = replayed {
        let what = panic_text(panic.as_ref());
        return Err(NodeError::DataDir {
            path: data_dir.join("log"),
            reason: format!("its records are inconsistent ({what}); refusing to start"),
        });
    }
    if let RoleState::Shard(p) = &mut node.role {
        match E::Model::load(node.io.storage.as_ref(), p.resource_mut()) {
            Ok(()) => {}
            // Set aside once already: what the log expects of it is lost, and accepted.
            Err(_) if storage_set_aside => {}
            Err(reason) if options.accept_data_loss => {
                node.io.storage = None; // closes the file before it is moved
                data_loss::set_aside(data_dir, E::Model::STORAGE_FILE, &reason)?;
                node.io.storage = Some(E::Model::open_storage(data_dir).map_err(|reason| {
                    NodeError::DataDir { path: data_dir.to_path_buf(), reason }
                })?);
                storage_set_aside = true;
            }
            Err(reason) => return Err(NodeError::DataDir { path: data_dir.to_path_buf(), reason }),
        }
        node.data_loss_accepted |= storage_set_aside;
        E::Model::after_restart(p.resource_mut());
    }

    let mut handle: Handle<E> =
        Handle::new(external_tx, Arc::new(config.clone()), me.name.clone(), tls);
    let replication = replica.zip(submitter).map(|(replica, submitter)| {
        Arc::new(replicated::Replication {
            replica,
            submitter,
            cluster: config.cluster.clone(),
            leading: std::sync::atomic::AtomicBool::new(false),
            stand_downs: tokio::sync::watch::Sender::new(0),
            addresses: config.coordinators().map(|n| (u64::from(n.id), n.listen)).collect(),
        })
    });
    handle.replication.clone_from(&replication);
    if let Some(amnesia) = amnesia {
        let learning =
            data_loss::learn_horizons(handle.clone(), config, data_dir.to_path_buf(), amnesia);
        tokio::spawn(learning);
    }
    let (gateway, shard_reads) = E::Model::kv_services(&handle, me.role);
    let calls: Option<Arc<dyn call_link::Serve>> = match (&gateway, shard_reads) {
        (Some(gateway), _) => Some(Arc::clone(gateway) as Arc<dyn call_link::Serve>),
        (None, Some(shard)) => Some(Arc::new(shard)),
        (None, None) => None,
    };
    let (stop_loop, loop_stopped) = watch::channel(false);
    let mut metrics_server = None;
    if let Some(address) = me.metrics {
        let metrics = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| NodeError::Listen { address, source })?;
        let role = me.role.to_string();
        let dir = data_dir.to_path_buf();
        let served = metrics::serve(metrics, handle.clone(), role, dir, loop_stopped.clone());
        metrics_server = Some(tokio::spawn(served));
    }
    let (grpc_tx, grpc_rx) = mpsc::channel(ACCEPT_QUEUE);
    let accepting = accept_loop(listener, grpc_tx, handle.clone(), calls, loop_stopped.clone());
    let accepting = tokio::spawn(accepting);
    let node_loop = tokio::spawn(driver::run(node, internal_rx, external_rx, loop_stopped.clone()));
    if let Some(replication) = &replication {
        let watching =
            replicated::watch_leadership(Arc::clone(replication), handle.clone(), loop_stopped);
        tokio::spawn(watching);
    }
    let incoming = tokio_stream::wrappers::ReceiverStream::new(grpc_rx);
    let server = tonic::transport::Server::builder()
        // Bounds per gRPC connection: streams at once, header bytes, and a life after which it
        // is closed gracefully (clients reconnect), so an idle one is not held for ever.
        .max_concurrent_streams(GRPC_STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(GRPC_MAX_HEADER_BYTES)
        .max_connection_age(GRPC_CONNECTION_AGE)
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(
            proto::client_server::ClientServer::new(handle.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(proto::node_server::NodeServer::new(handle))
        .add_optional_service(gateway.map(|g| {
            proto::kv_server::KvServer::new(g).max_decoding_message_size(MAX_MESSAGE_BYTES)
        }))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        });
    tokio::pin!(server);
    tokio::pin!(node_loop);
    let mut loop_ended = false;
    let result = tokio::select! {
        served = &mut server => served.map_err(|e| NodeError::Failed(e.to_string())),
        ended = &mut node_loop => {
            loop_ended = true;
            match ended {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(NodeError::Failed(error)),
                Err(panic) => Err(NodeError::Failed(format!("the node loop panicked: {panic}"))),
            }
        }
    };
    // The loop and the log end before the data directory's lock is let go, so a node started
    // again at once on the same directory (in the same process, in tests) never meets a log
    // still being written.
    let _ = stop_loop.send(true);
    if !loop_ended {
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut node_loop).await;
    }
    if let Some(replication) = &replication {
        replication.replica.shutdown().await;
    }
    if let Ok(log) = Arc::try_unwrap(log) {
        let _ = tokio::task::spawn_blocking(move || drop(log.stop())).await;
    }
    // The listeners are closed before `serve` returns, so a node started again at once on the
    // same addresses (in the same process, in tests) finds them free.
    let _ = tokio::time::timeout(Duration::from_secs(5), accepting).await;
    if let Some(metrics_server) = metrics_server {
        let _ = tokio::time::timeout(Duration::from_secs(5), metrics_server).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory made under one protocol is refused under the other (their logs differ);
    /// 2PC directories made before the choice existed keep their identity.
    #[test]
    fn a_data_directory_remembers_its_protocol() {
        let two_pc = ClusterConfig::local("c", 1, 7700);
        let paxos = two_pc.clone().with_paxos_commit(3);
        let shard = two_pc.node("shard-1").unwrap();
        assert_eq!(
            identity(&two_pc, shard),
            "format = 1\ncluster = c\nnode = shard-1\nid = 1\nrole = shard\n"
        );
        assert!(identity(&paxos, shard).ends_with("protocol = paxos-commit\n"));
    }
}
