//! Protocol messages between nodes over plain TCP: one connection per direction, one-way, a
//! hello naming the sender followed by length-prefixed messages.
//!
//! ```text
//!  node loop ── Io::send ──► Outbox (bytes, capped) ──► writer task ══TCP══► reader task ──► node loop
//!             encoded in place         one write per wake-up         a batch per read
//!                                                                      (Event::Messages)
//! ```
//!
//! Why not a gRPC call per frame, as before: at saturation about 60% of the CPU went to HTTP/2
//! connection tasks (per-stream state, HPACK, a reply per frame), and each link had one frame in
//! flight at a time (BENCHMARKS.md). Protocol messages need none of that. They are idempotent
//! and the cores resend, so a connection that breaks costs a delay, never a wrong outcome, and
//! nothing here is acknowledged.
//!
//! Wire (little-endian): `MAGIC (8 bytes) · from: u32 · cluster length: u16 · cluster`, then
//! `[length: u32][message]` repeated, each message in the codec of `concord_types::codec`. The
//! node's one port serves gRPC too: the first byte tells them apart (HTTP/2 starts with `P`).
//!
//! Bounds: an outbox holds at most [`OUTBOX_BYTES`]; a message is at most
//! [`crate::MAX_MESSAGE_BYTES`]; connects, writes and hellos have deadlines; a reader holds at
//! most one message plus one read of bytes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_types::codec::{Encode, Writer};
use concord_types::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::config::ClusterConfig;
use crate::MAX_MESSAGE_BYTES;

/// The first bytes of a peer connection. Its first byte is not HTTP/2's `P`.
pub(crate) const MAGIC: [u8; 8] = *b"CNCRDPL1";
/// Bytes queued for one peer at most; past this, messages are dropped (the cores resend).
pub(crate) const OUTBOX_BYTES: usize = 32 << 20;
/// Longest cluster name a hello may carry.
const MAX_CLUSTER_NAME: usize = 1_024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A write the peer does not take within this long breaks the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// An accepted connection must name its sender within this long.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const RECONNECT_MIN: Duration = Duration::from_millis(10);
const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 << 10;

/// One peer's messages waiting for its writer, already framed.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pending: Mutex<Vec<u8>>,
    ready: Notify,
    /// Set when the loop's side is dropped: the writer stops.
    closed: AtomicBool,
    /// Messages refused because the outbox was full.
    dropped: AtomicU64,
}

impl Outbox {
    /// Frames `msg` into the outbox; `false` if it is full (the message is dropped).
    pub fn push<M: Encode>(&self, msg: &M) -> bool {
        let mut pending = self.pending.lock().expect("no code panics while holding the outbox");
        if pending.len() >= OUTBOX_BYTES {
            drop(pending);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let was_empty = pending.is_empty();
        let start = pending.len();
        pending.extend_from_slice(&[0; 4]);
        msg.encode(&mut Writer::new(&mut pending));
        let length = pending.len() - start - 4;
        assert!(length <= MAX_MESSAGE_BYTES, "a {length}-byte protocol message: over the limit");
        let length = u32::try_from(length).expect("bounded by MAX_MESSAGE_BYTES just above");
        pending[start..start + 4].copy_from_slice(&length.to_le_bytes());
        drop(pending);
        if was_empty {
            // A permit is kept if the writer is not waiting yet, so no wake-up is lost.
            self.ready.notify_one();
        }
        true
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Everything queued, swapped into `batch` (which is emptied first and whose buffer the
    /// outbox keeps, so neither side allocates in the steady state).
    fn take(&self, batch: &mut Vec<u8>) {
        batch.clear();
        let mut pending = self.pending.lock().expect("no code panics while holding the outbox");
        std::mem::swap(&mut *pending, batch);
    }
}

/// The node loop's handle on one peer's outbox; dropping it stops the peer's writer.
#[derive(Debug)]
pub(crate) struct PeerSender(pub Arc<Outbox>);

impl Drop for PeerSender {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.ready.notify_one();
    }
}

/// The hello that opens a connection from `me`.
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
pub(crate) async fn send_loop(me: NodeId, cluster: String, to: SocketAddr, outbox: Arc<Outbox>) {
    let hello = hello(me, &cluster);
    let mut batch = Vec::new();
    let mut backoff = RECONNECT_MIN;
    while !outbox.closed.load(Ordering::Acquire) {
        let Some(mut stream) = connect(to, &hello).await else {
            // What waited for an unreachable peer is stale by the time it answers.
            outbox.take(&mut batch);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RECONNECT_MAX);
            continue;
        };
        backoff = RECONNECT_MIN;
        let (mut read_half, mut write_half) = stream.split();
        let mut probe = [0u8; 1];
        loop {
            outbox.take(&mut batch);
            if batch.is_empty() {
                if outbox.closed.load(Ordering::Acquire) {
                    return;
                }
                tokio::select! {
                    () = outbox.ready.notified() => continue,
                    _ = read_half.read(&mut probe) => break, // closed by the peer
                }
            }
            match tokio::time::timeout(WRITE_TIMEOUT, write_half.write_all(&batch)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => break, // this batch is lost; reconnect
            }
        }
    }
}

async fn connect(to: SocketAddr, hello: &[u8]) -> Option<TcpStream> {
    let mut stream =
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await.ok()?.ok()?;
    // Without TCP_NODELAY a lone message waits for the peer's delayed ACK.
    stream.set_nodelay(true).ok()?;
    tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(hello)).await.ok()?.ok()?;
    Some(stream)
}

/// Reads and checks an accepted connection's hello: the sender's id if it is a node of this
/// cluster.
pub(crate) async fn read_hello(
    stream: &mut TcpStream,
    config: &ClusterConfig,
) -> Result<NodeId, String> {
    let mut head = [0u8; 14];
    stream.read_exact(&mut head).await.map_err(|e| format!("no hello: {e}"))?;
    if head[..8] != MAGIC {
        return Err("not a Concord peer connection (bad magic)".into());
    }
    let from = u32::from_le_bytes(head[8..12].try_into().expect("four bytes"));
    let length = usize::from(u16::from_le_bytes(head[12..14].try_into().expect("two bytes")));
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

/// Reads messages from a connection whose hello was accepted, handing each read's complete
/// messages to `deliver` as one batch, until the connection closes or breaks (`Ok`: peers
/// crash), a message is malformed (`Err`: the connection is dropped, and that read's messages
/// with it), or `deliver` says to stop.
pub(crate) async fn receive_loop<M: Encode, F: Future<Output = bool>>(
    mut stream: TcpStream,
    mut deliver: impl FnMut(Vec<M>) -> F,
) -> Result<(), String> {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        if buf.capacity() - buf.len() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(_) => return Ok(()), // reset by a peer that crashed: it reconnects
        }
        let (messages, used) = decode_complete::<M>(&buf)?;
        buf.drain(..used);
        if !messages.is_empty() && !deliver(messages).await {
            return Ok(());
        }
    }
}

/// Every complete message at the front of `buf`, and how many bytes they took. A partial
/// message at the end is left for the next read; a malformed one is an error.
pub(crate) fn decode_complete<M: Encode>(buf: &[u8]) -> Result<(Vec<M>, usize), String> {
    let mut at = 0;
    let mut messages = Vec::new();
    while let Some(head) = buf.get(at..at + 4) {
        let length = u32::from_le_bytes(head.try_into().expect("four bytes")) as usize;
        if length > MAX_MESSAGE_BYTES {
            return Err(format!("a {length}-byte message, over the limit"));
        }
        let Some(body) = buf.get(at + 4..at + 4 + length) else { break };
        let msg = M::from_bytes(body).map_err(|e| format!("malformed message: {e}"))?;
        messages.push(msg);
        at += 4 + length;
    }
    Ok((messages, at))
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

    fn framed(msgs: &[Msg]) -> Vec<u8> {
        let outbox = Outbox::default();
        for m in msgs {
            assert!(outbox.push(m));
        }
        let mut batch = Vec::new();
        outbox.take(&mut batch);
        batch
    }

    #[test]
    fn framed_messages_decode_whole_at_every_split_point() {
        let msgs = messages();
        let bytes = framed(&msgs);
        for split in 0..=bytes.len() {
            let (first, used) = decode_complete::<Msg>(&bytes[..split]).unwrap();
            assert!(used <= split);
            let mut rest = bytes[used..split].to_vec();
            rest.extend_from_slice(&bytes[split..]);
            let (second, used_rest) = decode_complete::<Msg>(&rest).unwrap();
            assert_eq!(used_rest, rest.len(), "split {split}: everything consumed at the end");
            let all: Vec<Msg> = first.into_iter().chain(second).collect();
            assert_eq!(all, msgs, "split {split}");
        }
    }

    #[test]
    fn a_malformed_or_oversized_message_is_refused() {
        let mut bytes = framed(&messages());
        bytes[4] = 250; // the first message's tag
        assert!(decode_complete::<Msg>(&bytes).is_err());
        let huge = u32::try_from(MAX_MESSAGE_BYTES + 1).unwrap().to_le_bytes();
        assert!(decode_complete::<Msg>(&huge).unwrap_err().contains("over the limit"));
    }

    #[test]
    fn a_full_outbox_drops_and_counts() {
        let outbox = Outbox::default();
        let big = Msg::Prepare {
            txn: TxnId { coordinator: NodeId(0), epoch: 1, sequence: 1 },
            peers: vec![],
            writes: vec![Write { key: 1, delta: 1 }; 60_000],
            early_ack: false,
        };
        let mut pushed = 0;
        while outbox.push(&big) {
            pushed += 1;
        }
        assert!(pushed > 0 && outbox.dropped() == 1);
        let mut batch = Vec::new();
        outbox.take(&mut batch);
        assert!(batch.len() >= OUTBOX_BYTES);
        assert!(outbox.push(&big), "room again once the writer took the batch");
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
        let writer = tokio::spawn(send_loop(NodeId(1), "c".into(), address, outbox));
        let msgs = messages();
        for round in 0..2 {
            // The writer connects at once, and again as soon as the last link closes.
            let (mut stream, _) = listener.accept().await.unwrap();
            assert_eq!(read_hello(&mut stream, &config).await, Ok(NodeId(1)), "round {round}");
            for m in &msgs {
                assert!(sender.0.push(m));
            }
            let mut got = Vec::new();
            let received = receive_loop::<Msg, _>(stream, |batch| {
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
            (b"PRI * HTTP/2.0\r\n".to_vec(), "bad magic"),
        ] {
            let mut client = TcpStream::connect(address).await.unwrap();
            client.write_all(&hello).await.unwrap();
            let (mut stream, _) = listener.accept().await.unwrap();
            let error = read_hello(&mut stream, &config).await.unwrap_err();
            assert!(error.contains(refusal), "{error}");
        }
    }

    #[test]
    fn the_hello_names_the_sender_and_starts_unlike_http2() {
        let hello = hello(NodeId(7), "prod");
        assert_eq!(&hello[..8], &MAGIC);
        assert_ne!(hello[0], b'P', "HTTP/2's preface starts with P");
        assert_eq!(&hello[8..12], &7u32.to_le_bytes());
        assert_eq!(&hello[14..], b"prod");
    }
}
