//! A small NATS client: the core protocol (`CONNECT`, `PUB`/`HPUB`, `SUB`, `MSG`/`HMSG`,
//! `PING`/`PONG`) and the JetStream calls Concord needs — streams with a de-duplication window,
//! publishing with `Nats-Msg-Id`, durable pull consumers, explicit acks.
//!
//! One TCP connection; every request or fetch subscribes its own inbox (`_INBOX.<conn>.<n>`)
//! under its own subscription id, and a reader task routes messages by that id (JetStream
//! delivers a pull consumer's messages under their original subjects, so the subject cannot
//! be the key). Every call has a deadline. Not a
//! general client: no TLS, no auth, no reconnection (a caller that loses the connection makes
//! a new one — the outbox relay and consumers do, and JetStream keeps their place).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// A message received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub subject: String,
    pub reply: Option<String>,
    pub headers: Vec<(String, String)>,
    /// A status line's code (`NATS/1.0 404 No Messages`), for JetStream's status messages.
    pub status: Option<u16>,
    pub payload: Vec<u8>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

type Routes = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>>;

pub struct Nats {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    routes: Routes,
    inbox: String,
    next: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Nats({})", self.inbox)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(io)`
fn io(e: std::io::Error) -> String {
    e.to_string()
}

/// Parses `NATS/1.0 [code [text]]\r\nName: value\r\n…` header blocks.
fn parse_headers(block: &[u8]) -> (Option<u16>, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(block);
    let mut lines = text.split("\r\n");
    let status =
        lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok());
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    (status, headers)
}

async fn read_loop(
    mut reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    routes: Routes,
    pongs: mpsc::UnboundedSender<()>,
) {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (head, with_headers) = match parts.first().copied() {
            Some("MSG") => (parts, false),
            Some("HMSG") => (parts, true),
            Some("PING") => {
                let _ = pongs.send(());
                continue;
            }
            _ => continue, // +OK, PONG, INFO, -ERR: nothing waits on them
        };
        // MSG subject sid [reply] bytes | HMSG subject sid [reply] header_bytes total_bytes
        let numbers = if with_headers { 2 } else { 1 };
        let reply = (head.len() == 4 + numbers).then(|| head[3].to_string());
        let sizes: Vec<usize> =
            head[head.len() - numbers..].iter().filter_map(|n| n.parse().ok()).collect();
        let Some(&total) = sizes.last() else { return };
        let mut body = vec![0u8; total + 2];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        body.truncate(total);
        let (status, headers, payload) = if with_headers {
            let (status, headers) = parse_headers(&body[..sizes[0]]);
            (status, headers, body[sizes[0]..].to_vec())
        } else {
            (None, Vec::new(), body)
        };
        let Ok(sid) = head[2].parse::<u64>() else { continue };
        let message = Message { subject: head[1].to_string(), reply, headers, status, payload };
        if let Some(route) = routes.lock().expect("routes lock").get(&sid) {
            let _ = route.send(message);
        }
    }
}

impl Nats {
    /// Connects (within `timeout`) and subscribes this connection's inbox.
    pub async fn connect(address: SocketAddr, timeout: Duration) -> Result<Arc<Nats>, String> {
        let connect = async {
            let stream = tokio::net::TcpStream::connect(address).await.map_err(io)?;
            stream.set_nodelay(true).map_err(io)?;
            let (read, mut write) = stream.into_split();
            let mut reader = BufReader::new(read);
            let mut info = String::new();
            reader.read_line(&mut info).await.map_err(io)?;
            if !info.starts_with("INFO ") {
                return Err(format!("{address} is not a NATS server (said {info:?})"));
            }
            let hello = json!({ "verbose": false, "pedantic": false, "headers": true,
                                "no_responders": true, "lang": "rust", "version": "concord" });
            write.write_all(format!("CONNECT {hello}\r\nPING\r\n").as_bytes()).await.map_err(io)?;
            let mut answer = String::new();
            reader.read_line(&mut answer).await.map_err(io)?;
            if !answer.starts_with("PONG") {
                return Err(format!("NATS refused the connection: {}", answer.trim()));
            }
            Ok::<_, String>((reader, write))
        };
        let (reader, write) = tokio::time::timeout(timeout, connect).await.map_err(|_| {
            format!("NATS at {address} did not answer within {} ms", timeout.as_millis())
        })??;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let inbox = format!("_INBOX.{:x}{:x}", std::process::id(), nanos);
        let routes: Routes = Arc::default();
        let (pongs, mut pong_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(reader, Arc::clone(&routes), pongs));
        let nats = Arc::new(Nats {
            writer: tokio::sync::Mutex::new(write),
            routes,
            inbox,
            next: AtomicU64::new(1),
            reader,
        });
        // The server's keep-alive PINGs: answered from a task that holds only a weak handle.
        let weak = Arc::downgrade(&nats);
        tokio::spawn(async move {
            while pong_rx.recv().await.is_some() {
                let Some(nats) = weak.upgrade() else { return };
                let _ = nats.send(b"PONG\r\n").await;
            }
        });
        Ok(nats)
    }

    async fn send(&self, bytes: &[u8]) -> Result<(), String> {
        self.writer.lock().await.write_all(bytes).await.map_err(io)
    }

    fn frame(
        subject: &str,
        reply: Option<&str>,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> Vec<u8> {
        let reply = reply.map(|r| format!(" {r}")).unwrap_or_default();
        let mut out = if headers.is_empty() {
            format!("PUB {subject}{reply} {}\r\n", payload.len()).into_bytes()
        } else {
            let mut block = String::from("NATS/1.0\r\n");
            for (name, value) in headers {
                block += &format!("{name}: {value}\r\n");
            }
            block += "\r\n";
            let total = block.len() + payload.len();
            let mut out = format!("HPUB {subject}{reply} {} {total}\r\n", block.len()).into_bytes();
            out.extend_from_slice(block.as_bytes());
            out
        };
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        out
    }

    pub async fn publish(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> Result<(), String> {
        self.send(&Self::frame(subject, None, headers, payload)).await
    }

    /// Subscribes a fresh inbox; returns its subject, subscription id and message channel.
    async fn open_inbox(&self) -> Result<(String, u64, mpsc::UnboundedReceiver<Message>), String> {
        let sid = self.next.fetch_add(1, Ordering::Relaxed);
        let subject = format!("{}.{sid}", self.inbox);
        let (tx, rx) = mpsc::unbounded_channel();
        self.routes.lock().expect("routes lock").insert(sid, tx);
        // Ordered before whatever the caller publishes next on this connection.
        self.send(format!("SUB {subject} {sid}\r\n").as_bytes()).await?;
        Ok((subject, sid, rx))
    }

    async fn close_inbox(&self, sid: u64) {
        self.routes.lock().expect("routes lock").remove(&sid);
        let _ = self.send(format!("UNSUB {sid}\r\n").as_bytes()).await;
    }

    /// Publishes and waits (bounded) for one reply.
    pub async fn request(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Message, String> {
        let (inbox, sid, mut rx) = self.open_inbox().await?;
        let sent = self.send(&Self::frame(subject, Some(&inbox), headers, payload)).await;
        let reply = match sent {
            Ok(()) => tokio::time::timeout(timeout, rx.recv()).await,
            Err(e) => {
                self.close_inbox(sid).await;
                return Err(e);
            }
        };
        self.close_inbox(sid).await;
        match reply {
            Ok(Some(m)) if m.status == Some(503) => Err(format!("no responders for {subject}")),
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err("the NATS connection closed".into()),
            Err(_) => Err(format!("no reply on {subject} within {} ms", timeout.as_millis())),
        }
    }

    /// A JetStream API call: JSON in, JSON out; an `error` in the answer is an error.
    async fn api(&self, subject: &str, body: &Value, timeout: Duration) -> Result<Value, String> {
        let reply = self.request(subject, &[], body.to_string().as_bytes(), timeout).await?;
        let value: Value = serde_json::from_slice(&reply.payload)
            .map_err(|e| format!("{subject}: not JSON ({e})"))?;
        if let Some(error) = value.get("error") {
            return Err(format!("{subject}: {error}"));
        }
        Ok(value)
    }

    /// Creates the stream if it does not exist (an existing one is left as it is).
    pub async fn ensure_stream(
        &self,
        name: &str,
        subjects: &[&str],
        duplicate_window: Duration,
    ) -> Result<(), String> {
        let timeout = Duration::from_secs(5);
        if self.api(&format!("$JS.API.STREAM.INFO.{name}"), &json!({}), timeout).await.is_ok() {
            return Ok(());
        }
        let config = json!({ "name": name, "subjects": subjects, "storage": "file",
                             "duplicate_window": u64::try_from(duplicate_window.as_nanos()).unwrap_or(u64::MAX) });
        match self.api(&format!("$JS.API.STREAM.CREATE.{name}"), &config, timeout).await {
            Ok(_) => Ok(()),
            // Another process created it first.
            Err(e) if e.contains("already in use") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Publishes to a stream with a message id: within the stream's duplicate window a second
    /// publish with the same id is acknowledged as a duplicate and not stored again. Returns
    /// whether it was a duplicate.
    pub async fn publish_once(
        &self,
        subject: &str,
        msg_id: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<bool, String> {
        let ack = self.request(subject, &[("Nats-Msg-Id", msg_id)], payload, timeout).await?;
        let value: Value = serde_json::from_slice(&ack.payload)
            .map_err(|e| format!("publish to {subject}: not a JetStream ack ({e})"))?;
        if let Some(error) = value.get("error") {
            return Err(format!("publish to {subject}: {error}"));
        }
        Ok(value.get("duplicate").and_then(Value::as_bool).unwrap_or(false))
    }

    /// Creates a durable pull consumer with explicit acks (idempotent).
    pub async fn ensure_consumer(
        &self,
        stream: &str,
        durable: &str,
        filter_subject: &str,
        ack_wait: Duration,
    ) -> Result<(), String> {
        let config = json!({ "stream_name": stream, "config": {
            "durable_name": durable, "ack_policy": "explicit", "deliver_policy": "all",
            "filter_subject": filter_subject,
            "ack_wait": u64::try_from(ack_wait.as_nanos()).unwrap_or(u64::MAX),
            "max_deliver": -1 } });
        let subject = format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}");
        self.api(&subject, &config, Duration::from_secs(5)).await.map(|_| ())
    }

    /// Up to `batch` messages of a pull consumer: returns when `batch` have arrived, or when
    /// `expires` has passed (with what arrived by then). Small batches answer soonest.
    pub async fn fetch(
        &self,
        stream: &str,
        durable: &str,
        batch: usize,
        expires: Duration,
    ) -> Result<Vec<Message>, String> {
        let (inbox, sid, mut rx) = self.open_inbox().await?;
        let request = json!({ "batch": batch, "expires": u64::try_from(expires.as_nanos()).unwrap_or(u64::MAX) });
        let subject = format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}");
        let sent = self
            .send(&Self::frame(&subject, Some(&inbox), &[], request.to_string().as_bytes()))
            .await;
        let mut messages = Vec::new();
        if sent.is_ok() {
            let deadline = tokio::time::Instant::now() + expires + Duration::from_millis(500);
            while messages.len() < batch {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(m)) if m.status.is_some() => break, // 404 no messages, 408 expired
                    Ok(Some(m)) => messages.push(m),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        self.close_inbox(sid).await;
        sent.map(|()| messages)
    }

    /// Acknowledges a message fetched from a pull consumer.
    pub async fn ack(&self, message: &Message) -> Result<(), String> {
        match &message.reply {
            Some(reply) => self.publish(reply, &[], b"").await,
            None => Err("this message has no reply subject to acknowledge".into()),
        }
    }
}
