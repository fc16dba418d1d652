//! How replicas reach each other: openraft's RPCs as bytes (`codec`) over a [`Wire`].
//!
//! The wire is the only part that knows about sockets: the runtime puts it on its links, the
//! tests on an in-process [`Router`] that can cut replicas off. Either way every RPC crosses
//! the codec, so what the tests run is what the network carries.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, Raft, Snapshot, Vote};

use crate::codec::{self, Reply, Request};
use crate::TypeConfig;

/// Carries one request's bytes to replica `target` at `addr` and brings back its reply's.
pub trait Wire: Clone + Send + Sync + 'static {
    fn call(
        &self,
        target: u64,
        addr: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = io::Result<Vec<u8>>> + Send;
}

/// What a replica does with a request's bytes: decode, hand to its Raft, encode the answer.
/// Malformed bytes are refused with a reason, never passed on.
pub async fn serve(raft: &Raft<TypeConfig>, request: &[u8]) -> Vec<u8> {
    let reply = match codec::decode_request(request) {
        Err(e) => Reply::Refused(e.to_string()),
        Ok(Request::Append(rpc)) => match raft.append_entries(rpc).await {
            Ok(response) => Reply::Append(response),
            Err(e) => Reply::Refused(e.to_string()),
        },
        Ok(Request::Vote(rpc)) => match raft.vote(rpc).await {
            Ok(response) => Reply::Vote(response),
            Err(e) => Reply::Refused(e.to_string()),
        },
        Ok(Request::Snapshot { vote, meta, data }) => {
            let snapshot = Snapshot { meta, snapshot: Box::new(data) };
            match raft.install_full_snapshot(vote, snapshot).await {
                Ok(response) => Reply::Snapshot(response),
                Err(e) => Reply::Refused(e.to_string()),
            }
        }
        Ok(Request::Probe { from }) => {
            let metrics = raft.metrics().borrow().clone();
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|progress| progress.get(&from).copied().flatten())
                .map(|log_id| log_id.index);
            Reply::Probe(codec::ProbeAnswer {
                term: metrics.current_term,
                leads: metrics.state.is_leader(),
                matched,
            })
        }
    };
    codec::encode_reply(&reply)
}

/// Whether replica `me`, about to start on an empty directory, held the log before: asks
/// every other member at once (each bounded by `timeout`). A leader that has matched entries
/// on `me`'s log remembers that `me` acknowledged them, so `me` lost its log — and its vote:
/// started as new it could vote twice in a term, and the leader, finding the log it matched
/// gone, cannot replicate to it. Returns that leader's id, term and matched index.
///
/// Best effort, by design: with no leader reachable, or a leader elected while `me` was down
/// (it matched nothing yet), nothing is found, exactly as for a new cluster's replica that
/// starts late — which is why this cannot refuse more.
pub(crate) async fn lost_log<W: Wire>(
    wire: &W,
    me: u64,
    members: &std::collections::BTreeMap<u64, String>,
    timeout: Duration,
) -> Option<(u64, u64, u64)> {
    let request = codec::encode_request(&Request::Probe { from: me });
    let mut asks = tokio::task::JoinSet::new();
    for (id, addr) in members.iter().filter(|(id, _)| **id != me) {
        let (wire, id, addr, request) = (wire.clone(), *id, addr.clone(), request.clone());
        asks.spawn(async move {
            let reply = wire.call(id, &addr, request, timeout).await.ok()?;
            match codec::decode_reply(&reply).ok()? {
                Reply::Probe(answer) if answer.leads => {
                    answer.matched.filter(|index| *index > 0).map(|index| (id, answer.term, index))
                }
                _ => None,
            }
        });
    }
    while let Some(answer) = asks.join_next().await {
        if let Ok(Some(found)) = answer {
            return Some(found);
        }
    }
    None
}

/// When each peer last answered this replica (any reply at all: the peer is up and the link
/// carries). openraft 0.9 keeps no per-replica time, and an operator asking "is replica 3
/// alive?" wants one; on the leader, heartbeats keep it within a heartbeat interval.
#[derive(Debug, Clone, Default)]
pub(crate) struct Contacts(Arc<Mutex<HashMap<u64, Instant>>>);

impl Contacts {
    fn heard(&self, peer: u64) {
        self.0.lock().expect("not poisoned").insert(peer, Instant::now());
    }

    /// Milliseconds since each peer that ever answered last did.
    pub(crate) fn millis_since(&self) -> std::collections::BTreeMap<u64, u64> {
        let now = Instant::now();
        let heard = self.0.lock().expect("not poisoned");
        heard
            .iter()
            .map(|(peer, at)| {
                let ms = u64::try_from(now.duration_since(*at).as_millis()).unwrap_or(u64::MAX);
                (*peer, ms)
            })
            .collect()
    }
}

/// Makes a [`Client`] per peer.
#[derive(Debug, Clone)]
pub(crate) struct Network<W> {
    pub wire: W,
    /// How long openraft waits before it calls an unreachable peer again.
    pub retry_after: Duration,
    pub contacts: Contacts,
}

impl<W: Wire> RaftNetworkFactory<TypeConfig> for Network<W> {
    type Network = Client<W>;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Client<W> {
        Client {
            wire: self.wire.clone(),
            target,
            addr: node.addr.clone(),
            retry_after: self.retry_after,
            contacts: self.contacts.clone(),
        }
    }
}

/// One peer as openraft sees it.
#[derive(Debug)]
pub(crate) struct Client<W> {
    wire: W,
    target: u64,
    addr: String,
    retry_after: Duration,
    contacts: Contacts,
}

/// Why an RPC got no usable answer, before openraft's error types are chosen.
enum Failed {
    /// Nothing came back: back off before trying again.
    Unreachable(io::Error),
    /// Something came back that is not an answer: retry.
    Garbled(String),
}

impl<W: Wire> Client<W> {
    async fn call(&self, request: &Request, timeout: Duration) -> Result<Reply, Failed> {
        let bytes = codec::encode_request(request);
        let reply = self
            .wire
            .call(self.target, &self.addr, bytes, timeout)
            .await
            .map_err(Failed::Unreachable)?;
        self.contacts.heard(self.target);
        match codec::decode_reply(&reply) {
            Ok(Reply::Refused(why)) => Err(Failed::Garbled(format!("refused: {why}"))),
            Ok(reply) => Ok(reply),
            Err(e) => Err(Failed::Garbled(e.to_string())),
        }
    }
}

fn rpc_error<E: std::error::Error>(failed: Failed) -> RPCError<u64, BasicNode, E> {
    match failed {
        Failed::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
        Failed::Garbled(why) => RPCError::Network(NetworkError::new(&io::Error::other(why))),
    }
}

fn mismatched() -> Failed {
    Failed::Garbled("a reply of another kind".into())
}

impl<W: Wire> RaftNetwork<TypeConfig> for Client<W> {
    /// openraft's default waits 500 ms before calling an unreachable peer again. A replica
    /// that restarts within that wait hears no leader for longer than its election timeout,
    /// stands for election, and disrupts the cluster: a leader lost just after a replica's
    /// restart took 1.3 s to replace instead of 0.7 s (`db_replicated_cli.rs`,
    /// `measure_failover`). So the leader calls again after one heartbeat interval.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(self.retry_after))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self.call(&Request::Append(rpc), option.hard_ttl()).await {
            Ok(Reply::Append(response)) => Ok(response),
            Ok(_) => Err(rpc_error(mismatched())),
            Err(failed) => Err(rpc_error(failed)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self.call(&Request::Vote(rpc), option.hard_ttl()).await {
            Ok(Reply::Vote(response)) => Ok(response),
            Ok(_) => Err(rpc_error(mismatched())),
            Err(failed) => Err(rpc_error(failed)),
        }
    }

    #[allow(deprecated)]
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        unreachable!("with generic snapshot data openraft sends snapshots with full_snapshot")
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        let request = Request::Snapshot { vote, meta: snapshot.meta, data: *snapshot.snapshot };
        let answer = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            answer = self.call(&request, option.hard_ttl()) => answer,
        };
        match answer {
            Ok(Reply::Snapshot(response)) => Ok(response),
            Ok(_) => Err(StreamingError::Network(NetworkError::new(&io::Error::other(
                "a reply of another kind",
            )))),
            Err(Failed::Unreachable(e)) => Err(StreamingError::Unreachable(Unreachable::new(&e))),
            Err(Failed::Garbled(why)) => {
                Err(StreamingError::Network(NetworkError::new(&io::Error::other(why))))
            }
        }
    }
}

/// Replicas in one process, for tests: requests go straight to the target's Raft, through the
/// codec, unless the two are cut off from each other.
#[derive(Debug, Clone, Default)]
pub struct Router {
    inner: Arc<Mutex<RouterInner>>,
}

#[derive(Default)]
struct RouterInner {
    replicas: HashMap<u64, Raft<TypeConfig>>,
    /// Pairs that cannot reach each other (both directions), smaller id first.
    cut: BTreeSet<(u64, u64)>,
}

impl std::fmt::Debug for RouterInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterInner")
            .field("replicas", &self.replicas.keys().collect::<Vec<_>>())
            .field("cut", &self.cut)
            .finish()
    }
}

impl Router {
    pub fn add(&self, id: u64, raft: Raft<TypeConfig>) {
        self.inner.lock().expect("not poisoned").replicas.insert(id, raft);
    }

    /// The replica is gone (its process died): calls to it fail.
    pub fn remove(&self, id: u64) {
        self.inner.lock().expect("not poisoned").replicas.remove(&id);
    }

    /// Cuts `id` off from every other replica.
    pub fn isolate(&self, id: u64, others: impl IntoIterator<Item = u64>) {
        let mut inner = self.inner.lock().expect("not poisoned");
        for other in others {
            inner.cut.insert((id.min(other), id.max(other)));
        }
    }

    pub fn heal(&self) {
        self.inner.lock().expect("not poisoned").cut.clear();
    }

    /// A wire for replica `from`.
    pub fn wire(&self, from: u64) -> RouterWire {
        RouterWire { router: self.clone(), from }
    }
}

/// [`Router`]'s [`Wire`] for one sender.
#[derive(Debug, Clone)]
pub struct RouterWire {
    router: Router,
    from: u64,
}

impl Wire for RouterWire {
    async fn call(
        &self,
        target: u64,
        _addr: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> io::Result<Vec<u8>> {
        let raft = {
            let inner = self.router.inner.lock().expect("not poisoned");
            let pair = (self.from.min(target), self.from.max(target));
            if inner.cut.contains(&pair) {
                None
            } else {
                inner.replicas.get(&target).cloned()
            }
        };
        let Some(raft) = raft else {
            return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "unreachable"));
        };
        tokio::time::timeout(timeout, serve(&raft, &request))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no reply in time"))
    }
}
