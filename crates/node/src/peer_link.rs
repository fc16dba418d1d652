//! Protocol messages between nodes over plain TCP: one connection per direction, one-way, a
//! hello naming the sender followed by one message per frame (`crate::link`).
//!
//! ```text
//!  node loop ── Io::send ──► Outbox (bytes, capped) ──► writer task ══TCP══► reader task ──► node loop
//!             encoded in place         one write per wake-up         a batch per read
//!                                                                      (Event::Messages)
//! ```
//!
//! Why not a gRPC call per frame, as before: each link had one frame in flight at a time and an
//! HTTP/2 stream per frame (BENCHMARKS.md, "peer links"). Protocol messages need none of that.
//! They are idempotent and the cores resend, so a connection that breaks costs a delay, never a
//! wrong outcome, and nothing here is acknowledged.
//!
//! Hello (little-endian): `MAGIC (8 bytes) · from: u32 · cluster length: u16 · cluster`; then
//! frames, each one message in the codec of `concord_types::codec`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use concord_types::codec::{Encode, Writer};
use concord_types::NodeId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls::{Conn, Dial};

use crate::config::ClusterConfig;
use crate::link::{self, Outbox, WriterEnd};

/// The first bytes of a peer link.
pub(crate) const MAGIC: [u8; 8] = *b"CNCRDPL1";
/// Longest cluster name a hello may carry.
const MAX_CLUSTER_NAME: usize = 1_024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RECONNECT_MIN: Duration = Duration::from_millis(10);
const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// The longest pause between rounds of a replicated coordinator's replicas: during an election
/// every replica refuses, and a longer pause would outlast the election (a round is a few
/// connections, cheap).
const RECONNECT_MAX_REPLICAS: Duration = Duration::from_millis(50);

/// The node loop's handle on one peer's outbox; dropping it stops the peer's writer.
#[derive(Debug)]
pub(crate) struct PeerSender(pub Arc<Outbox>);

impl PeerSender {
    /// Queues `msg` for the peer; a full outbox drops it (and counts it). A message too large
    /// for a frame is dropped, counted and reported: the limits on transactions keep every
    /// protocol message below the frame, so this is a bug, not a client's mistake — and a
    /// dropped message is one the cores resend or time out on, never a wrong outcome.
    pub fn send<M: Encode + std::fmt::Display>(&self, msg: &M) {
        if let Err(crate::link::PushError::TooLarge { bytes }) =
            self.0.push(|buf| msg.encode(&mut Writer::new(buf)))
        {
            eprintln!("peer link: dropped {msg}: {bytes} bytes, over the frame limit");
        }
    }
}

impl Drop for PeerSender {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The hello that opens a link from `me`.
pub(crate) fn hello(me: NodeId, cluster: &str) -> Vec<u8> {
    assert!(cluster.len() <= MAX_CLUSTER_NAME, "cluster names are validated to be short");
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&me.0.to_le_bytes());
    let length = u16::try_from(cluster.len()).expect("bounded by MAX_CLUSTER_NAME");
    bytes.extend_from_slice(&length.to_le_bytes());
    bytes.extend_from_slice(cluster.as_bytes());
    bytes
}

/// Sends `outbox` to the node at `to` until the loop drops its side: connects, says hello,
/// writes whatever is queued in one write per wake-up; on any failure, drops what was being
/// sent and reconnects with backoff. The receiver never writes, so while idle the writer
/// watches the read side: a read that completes means the peer closed the link (it crashed or
/// restarted), and the writer reconnects at once instead of losing its next batch to a dead
/// connection.
/// `to` holds one address, or a replicated coordinator's replicas (each with how it is dialled). Those answer the hello
/// with one byte, [`LEADER_ACCEPTS`], only while they lead, and close the link otherwise; the
/// writer waits for it before sending anything (a message written to a standby would be lost)
/// and tries the next replica, pausing only after a round of refusals.
/// Under TLS (each address's `Dial`), the peer must prove it is the node meant.
pub(crate) async fn send_loop(
    me: NodeId,
    cluster: String,
    to: Vec<(SocketAddr, Dial)>,
    outbox: Arc<Outbox>,
) {
    assert!(!to.is_empty(), "a peer has an address");
    let replicas = to.len() > 1;
    let hello = hello(me, &cluster);
    let mut stale = Vec::new();
    let mut backoff = RECONNECT_MIN;
    let max_backoff = if replicas { RECONNECT_MAX_REPLICAS } else { RECONNECT_MAX };
    let mut next = 0;
    let mut failed_in_a_row = 0;
    while !outbox.is_closed() {
        let (address, dial) = &to[next % to.len()];
        next += 1;
        let connected = match connect(*address, dial, &hello).await {
            Some(stream) if replicas => accepted_by_leader(stream).await,
            other => other,
        };
        let Some(stream) = connected else {
            failed_in_a_row += 1;
            if failed_in_a_row >= to.len() {
                // What waited for an unreachable peer is stale by the time it answers.
                outbox.take(&mut stale);
                failed_in_a_row = 0;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max_backoff);
            }
            continue;
        };
        failed_in_a_row = 0;
        backoff = RECONNECT_MIN;
        let (mut read_half, mut write_half) = tokio::io::split(stream);
        if link::write_loop(&mut write_half, &outbox, Some(&mut read_half)).await
            == WriterEnd::Closed
        {
            return;
        }
        next -= 1; // the link worked: the same replica first
    }
}

/// What a leading coordinator replica answers a peer's hello with.
pub(crate) const LEADER_ACCEPTS: u8 = 1;

/// Waits (bounded) for a coordinator replica's answer to the hello: the link if it leads.
async fn accepted_by_leader(mut stream: Conn) -> Option<Conn> {
    let mut answer = [0u8; 1];
    let read = tokio::time::timeout(CONNECT_TIMEOUT, stream.read_exact(&mut answer)).await;
    matches!(read, Ok(Ok(_)) if answer[0] == LEADER_ACCEPTS).then_some(stream)
}

async fn connect(to: SocketAddr, dial: &Dial, hello: &[u8]) -> Option<Conn> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await.ok()?.ok()?;
    // Without TCP_NODELAY a lone message waits for the peer's delayed ACK.
    tcp.set_nodelay(true).ok()?;
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, dial.connect(tcp)).await.ok()?.ok()?;
    tokio::time::timeout(link::WRITE_TIMEOUT, stream.write_all(hello)).await.ok()?.ok()?;
    Some(stream)
}

/// Reads and checks the rest of a hello (the magic was read by the router): the sender's id if
/// it is a node of this cluster.
pub(crate) async fn read_hello(
    stream: &mut (impl AsyncRead + Unpin),
    config: &ClusterConfig,
) -> Result<NodeId, String> {
    let mut head = [0u8; 6];
    stream.read_exact(&mut head).await.map_err(|e| format!("short hello: {e}"))?;
    let from = u32::from_le_bytes(head[..4].try_into().expect("four bytes"));
    let length = usize::from(u16::from_le_bytes(head[4..].try_into().expect("two bytes")));
    if length > MAX_CLUSTER_NAME {
        return Err(format!("a {length}-byte cluster name"));
    }
    let mut cluster = vec![0; length];
    stream.read_exact(&mut cluster).await.map_err(|e| format!("short hello: {e}"))?;
    if cluster != config.cluster.as_bytes() {
        return Err(format!(
            "node {from} is of cluster `{}`, this is `{}`",
            String::from_utf8_lossy(&cluster),
            config.cluster
        ));
    }
    if !config.nodes.iter().any(|n| n.id == from) {
        return Err(format!("node id {from} is not configured"));
    }
    Ok(NodeId(from))
}

/// Reads messages from a link whose hello was accepted, handing each read's complete messages
/// to `deliver` as one batch, until the connection closes or breaks (`Ok`: peers crash), a
/// message is malformed (`Err`: the connection is dropped, and that read's messages with it),
/// or `deliver` says to stop.
pub(crate) async fn receive_loop<M: Encode, F: Future<Output = bool>>(
    mut stream: impl AsyncRead + Unpin,
    mut inbound: link::Inbound,
    mut deliver: impl FnMut(Vec<M>) -> F,
) -> Result<(), String> {
    let mut buf: Vec<u8> = Vec::with_capacity(link::READ_CHUNK);
    while inbound.read_more(&mut stream, &mut buf).await? {
        let (messages, used) = decode_complete::<M>(&buf)?;
        buf.drain(..used);
        if !messages.is_empty() && !deliver(messages).await {
            return Ok(());
        }
    }
    Ok(())
}

/// Every complete message at the front of `buf`, and how many bytes they took.
pub(crate) fn decode_complete<M: Encode>(buf: &[u8]) -> Result<(Vec<M>, usize), String> {
    let (bodies, used) = link::complete_frames(buf)?;
    let messages = bodies
        .into_iter()
        .map(|body| M::from_bytes(&buf[body]).map_err(|e| format!("malformed message: {e}")))
        .collect::<Result<_, _>>()?;
    Ok((messages, used))
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_commit::two_phase::Msg;
    use concord_types::{TxnId, Write};

    fn messages() -> Vec<Msg> {
        let txn = TxnId { coordinator: NodeId(0), epoch: 3, sequence: 9 };
        vec![
            Msg::Prepare {
                txn,
                peers: vec![NodeId(1), NodeId(2)],
                writes: vec![Write { key: 4, delta: -2 }],
                early_ack: true,
            },
            Msg::Inquire { txn },
            Msg::Ack { txn },
        ]
    }

    #[test]
    fn queued_messages_decode_whole_and_a_malformed_one_is_refused() {
        let sender = PeerSender(Arc::new(Outbox::default()));
        for m in messages() {
            sender.send(&m);
        }
        let mut bytes = Vec::new();
        sender.0.take(&mut bytes);
        let (got, used) = decode_complete::<Msg>(&bytes).unwrap();
        assert_eq!((got, used), (messages(), bytes.len()));
        bytes[4] = 250; // the first message's tag
        assert!(decode_complete::<Msg>(&bytes).unwrap_err().contains("malformed"));
    }

    /// A writer and a reader over a real socket: messages arrive in order; when the reader
    /// drops the connection, the writer reconnects and later messages arrive on the new one.
    #[tokio::test]
    async fn a_link_delivers_in_order_and_reconnects_after_the_receiver_drops_it() {
        let config = ClusterConfig::local("c", 1, 7700);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let outbox = Arc::new(Outbox::default());
        let sender = PeerSender(Arc::clone(&outbox));
        let writer = tokio::spawn(send_loop(
            NodeId(1),
            "c".into(),
            vec![(address, Dial::default())],
            outbox,
        ));
        let msgs = messages();
        for round in 0..2 {
            // The writer connects at once, and again as soon as the last link closes.
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut magic = [0u8; 8];
            stream.read_exact(&mut magic).await.unwrap();
            assert_eq!(magic, MAGIC);
            assert_eq!(read_hello(&mut stream, &config).await, Ok(NodeId(1)), "round {round}");
            for m in &msgs {
                sender.send(m);
            }
            let mut got = Vec::new();
            let inbound = link::Inbound::new(link::FrameBudget::default());
            let received = receive_loop::<Msg, _>(stream, inbound, |batch| {
                got.extend(batch);
                let done = got.len() >= msgs.len();
                async move { !done }
            });
            tokio::time::timeout(Duration::from_secs(5), received).await.unwrap().unwrap();
            assert_eq!(got, msgs, "round {round}");
            // Dropping the accepted stream here closes the link; the idle writer notices.
        }
        drop(sender);
        tokio::time::timeout(Duration::from_secs(5), writer).await.expect("writer stops").unwrap();
    }

    #[tokio::test]
    async fn a_hello_from_another_cluster_or_an_unknown_node_is_refused() {
        let config = ClusterConfig::local("c", 1, 7700);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        for (hello, refusal) in [
            (hello(NodeId(1), "other"), "of cluster `other`"),
            (hello(NodeId(9), "c"), "node id 9 is not configured"),
        ] {
            let mut client = TcpStream::connect(address).await.unwrap();
            client.write_all(&hello).await.unwrap();
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut magic = [0u8; 8];
            stream.read_exact(&mut magic).await.unwrap();
            let error = read_hello(&mut stream, &config).await.unwrap_err();
            assert!(error.contains(refusal), "{error}");
        }
    }
}
