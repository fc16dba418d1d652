//! What the two plain-TCP links share: a byte outbox that frames in place, the writer loop
//! that drains it, and the split of a read buffer into complete frames.
//!
//! Both links ([`crate::peer_link`] for protocol messages between nodes, [`crate::call_link`]
//! for requests and replies) open with an 8-byte magic whose first byte is not HTTP/2's `P`, so
//! a node serves them and gRPC on one port. After the magic, each side writes frames:
//! `[length: u32 LE][body]`, at most [`MAX_FRAME_BYTES`] of body.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::MAX_MESSAGE_BYTES;

/// The largest frame body (a protocol message, or a call and its few header bytes).
pub(crate) const MAX_FRAME_BYTES: usize = MAX_MESSAGE_BYTES + 64;
/// Bytes queued for one connection at most; past this, frames are refused.
pub(crate) const OUTBOX_BYTES: usize = 32 << 20;
/// A write the other side does not take within this long breaks the connection.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes asked of the socket per read.
pub(crate) const READ_CHUNK: usize = 64 << 10;
/// The first byte of every Concord link; a connection that starts otherwise is gRPC (HTTP/2
/// starts with `P`).
pub(crate) const FIRST_BYTE: u8 = b'C';

/// Which link a connection opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkKind {
    Peer,
    Call,
    /// A coordinator replica's replicated log (`concord_replication::tcp`).
    Replica,
}

/// Reads a connection's 8-byte magic: which link it is.
pub(crate) async fn read_magic(reader: &mut (impl AsyncRead + Unpin)) -> Result<LinkKind, String> {
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).await.map_err(|e| format!("no magic: {e}"))?;
    match magic {
        crate::peer_link::MAGIC => Ok(LinkKind::Peer),
        crate::call_link::MAGIC => Ok(LinkKind::Call),
        concord_replication::tcp::MAGIC => Ok(LinkKind::Replica),
        _ => Err(format!("not a Concord link (magic {magic:02x?})")),
    }
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// [`OUTBOX_BYTES`] are already waiting for the writer.
    Full,
    /// The body is larger than [`MAX_FRAME_BYTES`].
    TooLarge { bytes: usize },
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Full => write!(f, "{OUTBOX_BYTES} bytes are already queued"),
            PushError::TooLarge { bytes } => {
                write!(f, "a {bytes}-byte frame exceeds the link's limit of {MAX_FRAME_BYTES}")
            }
        }
    }
}

/// Frames waiting for one connection's writer, already framed.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pending: Mutex<Vec<u8>>,
    ready: Notify,
    /// No more frames will come: the writer stops once it has sent what is queued.
    closed: AtomicBool,
    /// Frames refused because the outbox was full.
    dropped: AtomicU64,
}

impl Outbox {
    /// Appends one frame whose body `write` produces. Refused, with nothing queued, when the
    /// outbox is full or the body came out larger than a frame may be: the callers' limits keep
    /// bodies below [`MAX_FRAME_BYTES`], and a body that is not is refused here, never asserted
    /// on (an assert under this lock would poison the outbox for every later frame).
    pub fn push(&self, write: impl FnOnce(&mut Vec<u8>)) -> Result<(), PushError> {
        let mut pending = self.pending.lock().expect("no code panics while holding the outbox");
        if pending.len() >= OUTBOX_BYTES {
            drop(pending);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(PushError::Full);
        }
        let was_empty = pending.is_empty();
        let start = pending.len();
        pending.extend_from_slice(&[0; 4]);
        write(&mut pending);
        let length = pending.len() - start - 4;
        let Some(length) = u32::try_from(length).ok().filter(|&l| l as usize <= MAX_FRAME_BYTES)
        else {
            pending.truncate(start);
            drop(pending);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(PushError::TooLarge { bytes: length });
        };
        pending[start..start + 4].copy_from_slice(&length.to_le_bytes());
        drop(pending);
        if was_empty {
            // A permit is kept if the writer is not waiting yet, so no wake-up is lost.
            self.ready.notify_one();
        }
        Ok(())
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Asks the writer to stop once the queue is empty.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Everything queued, swapped into `batch` (emptied first; the outbox keeps its buffer,
    /// so neither side allocates in the steady state).
    pub fn take(&self, batch: &mut Vec<u8>) {
        batch.clear();
        let mut pending = self.pending.lock().expect("no code panics while holding the outbox");
        std::mem::swap(&mut *pending, batch);
    }
}

/// Why a writer stopped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WriterEnd {
    /// The outbox was closed and everything queued was sent.
    Closed,
    /// A write failed or timed out; what it carried is lost.
    Broken,
    /// `idle_watch` saw the other side close the connection.
    ClosedByPeer,
}

/// Writes whatever `outbox` holds, one write per wake-up, until it is closed or the
/// connection breaks. With `idle_watch` (the read half of a connection the other side never
/// writes to), an idle writer notices at once when the other side closes.
pub(crate) async fn write_loop(
    writer: &mut (impl AsyncWrite + Unpin),
    outbox: &Outbox,
    mut idle_watch: Option<&mut (impl AsyncRead + Unpin)>,
) -> WriterEnd {
    let mut batch = Vec::new();
    let mut probe = [0u8; 1];
    loop {
        outbox.take(&mut batch);
        if batch.is_empty() {
            if outbox.is_closed() {
                return WriterEnd::Closed;
            }
            match idle_watch.as_deref_mut() {
                Some(watch) => {
                    tokio::select! {
                        () = outbox.ready.notified() => {}
                        _ = watch.read(&mut probe) => return WriterEnd::ClosedByPeer,
                    }
                }
                None => outbox.ready.notified().await,
            }
            continue;
        }
        match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return WriterEnd::Broken,
        }
    }
}

/// A node's budget for what it holds of partly received frames, all connections together:
/// a frame may be 16 MiB, and a peer that sends most of one and stops (on many connections)
/// would otherwise hold that much each.
pub(crate) const PARTIAL_FRAMES_BUDGET: usize = 256 << 20;
/// A connection that sends nothing for this long is closed (a client's calls are bounded far
/// below it; a quiet peer link is opened again by its writer when it has something to send).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a connection waits for the budget before it is closed.
const BUDGET_WAIT: Duration = Duration::from_secs(2);
/// The budget's unit.
const KIB: usize = 1 << 10;

/// The node-wide budget ([`PARTIAL_FRAMES_BUDGET`]), shared by every inbound connection.
#[derive(Debug, Clone)]
pub(crate) struct FrameBudget(std::sync::Arc<tokio::sync::Semaphore>);

impl Default for FrameBudget {
    fn default() -> Self {
        FrameBudget(std::sync::Arc::new(tokio::sync::Semaphore::new(PARTIAL_FRAMES_BUDGET / KIB)))
    }
}

impl FrameBudget {
    #[cfg(test)]
    fn with_bytes(bytes: usize) -> Self {
        FrameBudget(std::sync::Arc::new(tokio::sync::Semaphore::new(bytes / KIB)))
    }
}

/// The read side of an accepted connection: closed when idle past [`IDLE_TIMEOUT`], and its
/// buffer held above one [`READ_CHUNK`] only against the node's [`FrameBudget`].
#[derive(Debug)]
pub(crate) struct Inbound {
    budget: FrameBudget,
    held: Option<tokio::sync::OwnedSemaphorePermit>,
    idle: Duration,
}

impl Inbound {
    pub(crate) fn new(budget: FrameBudget) -> Self {
        Inbound { budget, held: None, idle: IDLE_TIMEOUT }
    }

    /// Reads into `buf`: `Ok(false)` once the connection is closed or broken, `Err` when it
    /// must be closed (idle, or holding more than the budget grants).
    pub(crate) async fn read_more(
        &mut self,
        reader: &mut (impl AsyncRead + Unpin),
        buf: &mut Vec<u8>,
    ) -> Result<bool, String> {
        // What was consumed gives its memory back: a buffer grown for one large frame is not
        // kept at that size for the connection's life.
        if buf.len() <= READ_CHUNK && buf.capacity() > 2 * READ_CHUNK {
            buf.shrink_to(2 * READ_CHUNK);
        }
        if buf.capacity() - buf.len() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        self.cover(buf.capacity()).await?;
        match tokio::time::timeout(self.idle, reader.read_buf(buf)).await {
            Ok(Ok(n)) => Ok(n > 0),
            Ok(Err(_)) => Ok(false),
            Err(_) => Err(format!("nothing received for {} s", self.idle.as_secs())),
        }
    }

    /// Holds budget for a buffer of `capacity` bytes beyond the first two chunks (every
    /// connection may hold those).
    async fn cover(&mut self, capacity: usize) -> Result<(), String> {
        let need = capacity.saturating_sub(2 * READ_CHUNK).div_ceil(KIB);
        let held = self.held.as_ref().map_or(0, tokio::sync::OwnedSemaphorePermit::num_permits);
        if need <= held {
            if need == 0 {
                self.held = None;
            }
            return Ok(());
        }
        let more = u32::try_from(need - held).map_err(|_| "an oversized buffer".to_string())?;
        let semaphore = std::sync::Arc::clone(&self.budget.0);
        let granted = tokio::time::timeout(BUDGET_WAIT, semaphore.acquire_many_owned(more)).await;
        match granted {
            Ok(Ok(permit)) => {
                match &mut self.held {
                    Some(held) => held.merge(permit),
                    None => self.held = Some(permit),
                }
                Ok(())
            }
            _ => Err(format!(
                "the node's {} MiB for partly received frames is spent",
                PARTIAL_FRAMES_BUDGET >> 20
            )),
        }
    }
}

/// Reads into `buf` (at least [`READ_CHUNK`] of room); `false` once the connection is closed
/// or broken. For a client's side of a connection; a node's accepted ones use [`Inbound`].
pub(crate) async fn read_more(reader: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> bool {
    if buf.capacity() - buf.len() < READ_CHUNK {
        buf.reserve(READ_CHUNK);
    }
    matches!(reader.read_buf(buf).await, Ok(n) if n > 0)
}

/// The bodies of every complete frame at the front of `buf`, and how many bytes they take. A
/// partial frame at the end is left for the next read; an oversized one is an error.
pub(crate) fn complete_frames(buf: &[u8]) -> Result<(Vec<Range<usize>>, usize), String> {
    let mut at = 0;
    let mut bodies = Vec::new();
    while let Some(head) = buf.get(at..at + 4) {
        let length = u32::from_le_bytes(head.try_into().expect("four bytes")) as usize;
        if length > MAX_FRAME_BYTES {
            return Err(format!("a {length}-byte frame, over the limit"));
        }
        if buf.len() < at + 4 + length {
            break;
        }
        bodies.push(at + 4..at + 4 + length);
        at += 4 + length;
    }
    Ok((bodies, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(bodies: &[&[u8]]) -> Vec<u8> {
        let outbox = Outbox::default();
        for body in bodies {
            outbox.push(|buf| buf.extend_from_slice(body)).unwrap();
        }
        let mut batch = Vec::new();
        outbox.take(&mut batch);
        batch
    }

    #[test]
    fn frames_split_whole_at_every_cut() {
        let bodies: [&[u8]; 4] = [b"one", b"", b"three", &[7; 300]];
        let bytes = framed(&bodies);
        for cut in 0..=bytes.len() {
            let (first, used) = complete_frames(&bytes[..cut]).unwrap();
            assert!(used <= cut);
            let mut got: Vec<Vec<u8>> = first.into_iter().map(|r| bytes[r].to_vec()).collect();
            let (rest, used_rest) = complete_frames(&bytes[used..]).unwrap();
            assert_eq!(used + used_rest, bytes.len(), "cut {cut}");
            got.extend(rest.into_iter().map(|r| bytes[used..][r].to_vec()));
            assert_eq!(got, bodies.map(<[u8]>::to_vec), "cut {cut}");
        }
    }

    #[tokio::test]
    async fn the_magic_names_the_link_and_every_magic_starts_unlike_http2() {
        for (magic, kind) in [
            (crate::peer_link::MAGIC, LinkKind::Peer),
            (crate::call_link::MAGIC, LinkKind::Call),
            (concord_replication::tcp::MAGIC, LinkKind::Replica),
        ] {
            assert_eq!(magic[0], FIRST_BYTE);
            assert_eq!(read_magic(&mut &magic[..]).await, Ok(kind));
        }
        assert_ne!(FIRST_BYTE, b'P', "HTTP/2's preface starts with P");
        let error = read_magic(&mut &b"PRI * HTTP/2.0"[..]).await.unwrap_err();
        assert!(error.contains("not a Concord link"), "{error}");
    }

    /// Two connections each send most of a large frame and stop: the first holds the budget,
    /// the second is refused instead of growing the node's memory; once the first completes
    /// its frame, the budget is free again.
    #[tokio::test]
    async fn partly_received_frames_share_a_budget_and_idle_links_close() {
        let budget = FrameBudget::with_bytes(1 << 20);
        let frame = framed(&[&vec![5u8; 900 << 10]]);
        let (mut first, mut second) = (Inbound::new(budget.clone()), Inbound::new(budget.clone()));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let (mut reader_a, mut reader_b) = (&frame[..frame.len() - 10], &frame[..frame.len() - 10]);
        while !reader_a.is_empty() {
            assert_eq!(first.read_more(&mut reader_a, &mut a).await, Ok(true));
        }
        let mut refused = None;
        while refused.is_none() && !reader_b.is_empty() {
            refused = second.read_more(&mut reader_b, &mut b).await.err();
        }
        let refused = refused.expect("the second connection is refused");
        assert!(refused.contains("partly received frames"), "{refused}");
        // The first completes its frame and consumes it: its budget goes back.
        a.extend_from_slice(&frame[frame.len() - 10..]);
        let (bodies, used) = complete_frames(&a).unwrap();
        assert_eq!(bodies.len(), 1);
        a.drain(..used);
        assert_eq!(first.read_more(&mut &b"x"[..], &mut a).await, Ok(true));
        assert!(first.held.is_none(), "a drained buffer holds no budget");

        let mut idle = Inbound::new(budget);
        idle.idle = Duration::from_millis(20);
        let (mut silent, _keep) = tokio::io::duplex(64);
        let closed = idle.read_more(&mut silent, &mut Vec::new()).await.unwrap_err();
        assert!(closed.contains("nothing received"), "{closed}");
    }

    #[test]
    fn an_oversized_frame_is_refused() {
        let huge = u32::try_from(MAX_FRAME_BYTES + 1).unwrap().to_le_bytes();
        assert!(complete_frames(&huge).unwrap_err().contains("over the limit"));
    }

    #[test]
    fn a_full_outbox_refuses_and_counts_until_the_writer_takes_its_bytes() {
        let outbox = Outbox::default();
        let body = vec![1u8; 1 << 20];
        let mut pushed = 0;
        while outbox.push(|buf| buf.extend_from_slice(&body)).is_ok() {
            pushed += 1;
        }
        assert_eq!((pushed, outbox.dropped()), (32, 1));
        let mut batch = Vec::new();
        outbox.take(&mut batch);
        assert!(batch.len() >= OUTBOX_BYTES);
        assert!(outbox.push(|buf| buf.extend_from_slice(&body)).is_ok(), "room again");
    }

    #[test]
    fn an_oversized_body_is_refused_and_the_outbox_goes_on() {
        let outbox = Outbox::default();
        outbox.push(|buf| buf.extend_from_slice(b"before")).unwrap();
        let refused = outbox.push(|buf| buf.resize(buf.len() + MAX_FRAME_BYTES + 1, 7));
        assert_eq!(refused, Err(PushError::TooLarge { bytes: MAX_FRAME_BYTES + 1 }));
        outbox.push(|buf| buf.resize(buf.len() + MAX_FRAME_BYTES, 7)).unwrap();
        outbox.push(|buf| buf.extend_from_slice(b"after")).unwrap();
        let mut batch = Vec::new();
        outbox.take(&mut batch);
        let (frames, used) = complete_frames(&batch).unwrap();
        assert_eq!(used, batch.len());
        let lengths: Vec<usize> = frames.iter().map(ExactSizeIterator::len).collect();
        assert_eq!(lengths, vec![6, MAX_FRAME_BYTES, 5]);
    }
}
