//! A small HTTP/1.1 server and client: enough for Concord's JSON APIs (the database
//! coordinator, the saga orchestrator) and for saga step calls. Bodies sized by
//! `Content-Length`, every size and wait bounded. Connections are kept alive: the server serves
//! requests on a connection until the client closes it, asks `Connection: close`, or stays idle
//! past [`IDLE_TIMEOUT`]; the async client keeps idle connections per address and reuses them.
//! Not a general HTTP implementation: no chunked bodies, no pipelining, no TLS.

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Largest request or response head (start line and headers).
pub const MAX_HEAD_BYTES: usize = 16 << 10;
/// Largest body.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// A client must send its whole request within this time.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A kept-alive connection with no request for this long is closed by the server.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections the client keeps per address.
const POOLED_PER_ADDRESS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The path's segments, without empty ones: `/v1/sagas/x` → `["v1", "sagas", "x"]`.
    pub fn segments(&self) -> Vec<&str> {
        let path = self.target.split_once('?').map_or(self.target.as_str(), |(p, _)| p);
        path.split('/').filter(|s| !s.is_empty()).collect()
    }

    /// Whether the query has `name=true` or a bare `name`.
    pub fn flag(&self, name: &str) -> bool {
        let query = self.target.split_once('?').map_or("", |(_, q)| q);
        query.split('&').any(|kv| kv == name || kv == format!("{name}=true"))
    }

    /// The query's `name=value`, if present.
    pub fn query(&self, name: &str) -> Option<&str> {
        let query = self.target.split_once('?').map_or("", |(_, q)| q);
        query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    }
}

/// A path segment or query value with its `%XX` escapes decoded (browsers escape `@`, say);
/// `None` if an escape is malformed or the result is not UTF-8. `+` stays `+`.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// More header lines (`Location`, `Retry-After`). A value with a line break is not
    /// written (it would smuggle a header in).
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Response {
            status,
            content_type: "application/json",
            body: value.to_string(),
            headers: Vec::new(),
        }
    }

    /// `text` with `status` and `content_type`.
    pub fn text(status: u16, content_type: &'static str, text: String) -> Self {
        Response { status, content_type, body: text, headers: Vec::new() }
    }

    /// Adds a header line.
    #[must_use]
    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: &str) -> Self {
        Self::json(status, &serde_json::json!({ "error": message }))
    }

    fn reason(&self) -> &'static str {
        match self.status {
            200 => "OK",
            201 => "Created",
            202 => "Accepted",
            307 => "Temporary Redirect",
            400 => "Bad Request",
            404 => "Not Found",
            408 => "Request Timeout",
            409 => "Conflict",
            421 => "Misdirected Request",
            422 => "Unprocessable Entity",
            503 => "Service Unavailable",
            _ => "Error",
        }
    }
}

/// How a read that got no byte at all fails: on a kept-alive connection, the peer closed it.
const NOTHING_READ: &str = "connection ended before anything was read";

/// Reads a head (up to the blank line) and the body it announces, bounded.
async fn read_message<S: AsyncReadExt + Unpin>(
    stream: &mut S,
) -> Result<(String, Vec<(String, String)>, String), String> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err("head too large".into());
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.map_err(|e| {
            if buf.is_empty() {
                format!("{NOTHING_READ}: {e}")
            } else {
                e.to_string()
            }
        })?;
        if n == 0 && buf.is_empty() {
            return Err(format!("{NOTHING_READ}: closed"));
        }
        if n == 0 {
            return Err("connection closed mid-message".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    let mut length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().map_err(|_| "bad Content-Length")?;
            }
            headers.push((name.to_string(), value.to_string()));
        }
    }
    if length > MAX_BODY_BYTES {
        return Err(format!("body of {length} bytes exceeds {MAX_BODY_BYTES}"));
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed mid-body".into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    let body = String::from_utf8(body).map_err(|_| "body is not UTF-8")?;
    Ok((start, headers, body))
}

/// Reads one request.
pub async fn read_request<S: AsyncReadExt + Unpin>(stream: &mut S) -> Result<Request, String> {
    let (start, headers, body) = read_message(stream).await?;
    let mut parts = start.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    Ok(Request { method, target, headers, body })
}

/// Sent with every response. The console's pages (`/ui`) load only their own script and style
/// (no inline code to inject into), may not be framed by another site (click-jacking of the
/// resolve button), and nothing — a transaction listing included — is cached or leaks a
/// referrer.
pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
];

/// Writes a response; false when the connection is no good any more.
async fn write_response<S: AsyncWriteExt + Unpin>(
    stream: &mut S,
    response: &Response,
    close: bool,
) -> bool {
    let connection = if close { "close" } else { "keep-alive" };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {connection}\r\n",
        response.status,
        response.reason(),
        response.content_type,
        response.body.len()
    );
    let extra = response.headers.iter().map(|(name, value)| (*name, value.as_str()));
    for (name, value) in SECURITY_HEADERS.into_iter().chain(extra) {
        if value.contains(['\r', '\n']) {
            continue;
        }
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(response.body.as_bytes());
    stream.write_all(&bytes).await.is_ok()
}

/// Serves `listener` until it fails, each connection on its own task, answering each request
/// with `handler`. Malformed or slow requests get 400 / 408 without reaching the handler.
pub async fn serve<H, F>(listener: TcpListener, handler: H)
where
    H: Fn(Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    // Connections live in this set: when the future of `serve` is dropped (its owner stopped
    // or was killed), every kept-alive connection goes with it instead of answering on.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next() => continue,
        };
        let mut stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                eprintln!("concord: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        connections.spawn(async move {
            let _ = stream.set_nodelay(true);
            loop {
                // Waiting for the next request on a kept-alive connection is bounded too.
                let Ok(first) = tokio::time::timeout(IDLE_TIMEOUT, stream.readable()).await else {
                    break;
                };
                if first.is_err() {
                    break;
                }
                let (response, close) =
                    match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
                        Ok(Ok(request)) => {
                            let close = request
                                .header("connection")
                                .is_some_and(|c| c.eq_ignore_ascii_case("close"));
                            (handler(request).await, close)
                        }
                        // The client closed between requests: nothing to answer.
                        Ok(Err(message)) if message.starts_with(NOTHING_READ) => break,
                        Ok(Err(message)) => (Response::error(400, &message), true),
                        Err(_) => (Response::error(408, "request not received in time"), true),
                    };
                if !write_response(&mut stream, &response, close).await || close {
                    break;
                }
            }
            let _ = stream.shutdown().await;
        });
    }
}

fn request_head(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    keep_alive: bool,
) -> String {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {connection}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    head + "\r\n"
}

/// Whether [`call`] keeps connections alive (on by default). Off only to measure what it
/// saves (`concord bench saga` runs both, interleaved).
static KEEP_ALIVE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

pub fn set_keep_alive(enabled: bool) {
    KEEP_ALIVE.store(enabled, std::sync::atomic::Ordering::Relaxed);
}

/// Idle kept-alive connections, per address.
static POOL: std::sync::Mutex<Option<HashMap<SocketAddr, Vec<tokio::net::TcpStream>>>> =
    std::sync::Mutex::new(None);

fn pooled(address: SocketAddr) -> Option<tokio::net::TcpStream> {
    let mut pool = POOL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    pool.get_or_insert_with(HashMap::new).get_mut(&address)?.pop()
}

fn give_back(address: SocketAddr, stream: tokio::net::TcpStream) {
    let mut pool = POOL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let idle = pool.get_or_insert_with(HashMap::new).entry(address).or_default();
    if idle.len() < POOLED_PER_ADDRESS {
        idle.push(stream);
    }
}

/// One exchange on `stream`; the connection is returned if the server keeps it open.
async fn exchange(
    mut stream: tokio::net::TcpStream,
    address: SocketAddr,
    request: &[u8],
) -> Result<(u16, String), (bool, String)> {
    // `false`: the failure came before any answer arrived (safe to retry on a new connection).
    stream.write_all(request).await.map_err(|e| (false, e.to_string()))?;
    let (start, headers, body) =
        read_message(&mut stream).await.map_err(|e| (!e.starts_with(NOTHING_READ), e))?;
    let status = start
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| (true, format!("malformed status line from {address}")))?;
    let close = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close"));
    if !close {
        give_back(address, stream);
    }
    Ok((status, body))
}

/// An HTTP call from async code, all of it (connect, send, answer) within `timeout`.
/// Returns the status and body. Reuses an idle connection to `address` when there is one; a
/// reused connection the server had already closed is replaced once, transparently (the
/// request cannot have been processed: the server closes only between requests).
pub async fn call(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let keep_alive = KEEP_ALIVE.load(std::sync::atomic::Ordering::Relaxed);
    let mut request = request_head(address, method, path, headers, body, keep_alive).into_bytes();
    request.extend_from_slice(body.as_bytes());
    let attempt = async {
        if let Some(stream) = pooled(address).filter(|_| keep_alive) {
            match exchange(stream, address, &request).await {
                Ok(answer) => return Ok(answer),
                Err((true, e)) => return Err(e),
                Err((false, _)) => {} // a stale connection: try a new one
            }
        }
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("{address} is unreachable: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        exchange(stream, address, &request).await.map_err(|(_, e)| e)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("{address} did not answer within {} ms", timeout.as_millis()))?
}

/// A blocking HTTP call, for the CLI and tests. Returns the status and body.
pub fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    request_with(address, method, path, &[], body, timeout)
}

/// [`request`] with extra headers (`Authorization`, say).
pub fn request_with(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let unreachable = |e: std::io::Error| format!("{address} is unreachable: {e}");
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(unreachable)?;
    stream.set_read_timeout(Some(timeout)).map_err(unreachable)?;
    stream.set_write_timeout(Some(timeout)).map_err(unreachable)?;
    let body = body.unwrap_or("");
    let head = request_head(address, method, path, headers, body, false);
    stream.write_all(head.as_bytes()).map_err(unreachable)?;
    stream.write_all(body.as_bytes()).map_err(unreachable)?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("no complete answer from {address}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed answer from {address} (connection closed early?)"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("malformed status line from {address}"))?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_with_its_headers_and_body() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            tokio::spawn(serve(listener, |request: Request| async move {
                let key = request.header("idempotency-key").unwrap_or("none").to_string();
                let echo = serde_json::json!({
                    "key": key, "body": request.body, "segments": request.segments(),
                    "flag": request.flag("all"), "limit": request.query("limit"),
                });
                Response::json(201, &echo)
            }));
            let headers = [("Idempotency-Key", "s1:pay:action")];
            let target = "/v1/sagas/s1?all&limit=5";
            let (status, body) =
                call(address, "POST", target, &headers, "{\"x\":1}", Duration::from_secs(5))
                    .await
                    .unwrap();
            assert_eq!(status, 201);
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["key"], "s1:pay:action");
            assert_eq!(v["body"], "{\"x\":1}");
            assert_eq!(v["segments"], serde_json::json!(["v1", "sagas", "s1"]));
            assert_eq!((v["flag"].as_bool(), v["limit"].as_str()), (Some(true), Some("5")));
        });
    }

    #[test]
    fn escapes_are_decoded_and_bad_ones_refused() {
        assert_eq!(percent_decode("1.1%40n3").as_deref(), Some("1.1@n3"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("%e2%9c%93").as_deref(), Some("\u{2713}"));
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
    }

    #[test]
    fn a_silent_server_is_a_timeout_not_a_hang() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            // Accepts, never answers.
            tokio::spawn(async move {
                let _held = listener.accept().await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
            let error =
                call(address, "GET", "/", &[], "", Duration::from_millis(200)).await.unwrap_err();
            assert!(error.contains("did not answer within 200 ms"), "{error}");
        });
    }
}

#[cfg(test)]
mod keep_alive_tests {
    use super::*;

    /// A pooled connection whose server went away (and came back on the same port) is
    /// replaced transparently; a stopped server's kept-alive connections stop answering.
    #[test]
    fn a_stale_pooled_connection_is_replaced_once() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let first = tokio::spawn(serve(listener, |_: Request| async {
                Response::json(200, &serde_json::json!({ "server": 1 }))
            }));
            let timeout = Duration::from_secs(5);
            let (_, body) = call(address, "GET", "/", &[], "", timeout).await.unwrap();
            assert!(body.contains("\"server\":1"));
            first.abort(); // the listener and its kept-alive connection go away
            let _ = first.await;
            let listener = TcpListener::bind(address).await.unwrap();
            tokio::spawn(serve(listener, |_: Request| async {
                Response::json(200, &serde_json::json!({ "server": 2 }))
            }));
            let (_, body) = call(address, "GET", "/", &[], "", timeout).await.unwrap();
            assert!(body.contains("\"server\":2"), "answered by the new server: {body}");
            let (_, body) = call(address, "GET", "/", &[], "", timeout).await.unwrap();
            assert!(body.contains("\"server\":2"));
        });
    }
}
