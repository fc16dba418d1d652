//! The database coordinator's HTTP interface: a small JSON API for the CLI and applications,
//! and Prometheus `/metrics`. HTTP/1.1, one request per connection, bounded sizes and times.
//!
//! ```text
//!   POST /v1/transactions                {"branches":[{"database":"ledger","statements":["…"]}]}
//!   GET  /v1/transactions?in_doubt=true[&heuristic=true]
//!   GET  /v1/transactions/ID
//!   POST /v1/transactions/ID/resolve     {"decision":"commit"|"abort","force":false}
//!   POST /v1/recover                     {"dry_run":true}
//!   GET  /metrics                        Prometheus text format
//!   GET  /health
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use concord_types::{Decision, TxnId};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::coordinator::{BeginError, Coordinator, ResolveError, RunError};

/// Largest request head (request line and headers).
const MAX_HEAD_BYTES: usize = 16 << 10;
/// Largest request body.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// A client must send its whole request within this time.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    branches: Vec<BranchRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BranchRequest {
    database: String,
    statements: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveRequest {
    decision: String,
    #[serde(default)]
    force: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RecoverRequest {
    #[serde(default)]
    dry_run: bool,
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
}

fn json_response(status: u16, value: &serde_json::Value) -> Response {
    Response { status, content_type: "application/json", body: value.to_string() }
}

fn error(status: u16, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}

/// Serves until the listener fails; each connection on its own task.
pub async fn serve(coordinator: Arc<Coordinator>, listener: TcpListener) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                eprintln!("concord: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let coordinator = Arc::clone(&coordinator);
        tokio::spawn(async move {
            let response = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await
            {
                Ok(Ok((method, target, body))) => {
                    route(&coordinator, &method, &target, &body).await
                }
                Ok(Err(message)) => error(400, &message),
                Err(_) => error(408, "request not received in time"),
            };
            let reason = match response.status {
                200 => "OK",
                400 => "Bad Request",
                404 => "Not Found",
                409 => "Conflict",
                _ => "Error",
            };
            let head = format!(
                "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                response.status,
                response.content_type,
                response.body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(response.body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

async fn read_request(
    stream: &mut tokio::net::TcpStream,
) -> Result<(String, String, String), String> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err("request head too large".into());
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed mid-request".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "request head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_string();
    let target = request_line.next().unwrap_or_default().to_string();
    let mut length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().map_err(|_| "bad Content-Length")?;
            }
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
    Ok((method, target, body))
}

fn parse_body<T: for<'de> Deserialize<'de> + Default>(body: &str) -> Result<T, Response> {
    if body.trim().is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(body).map_err(|e| error(400, &format!("invalid JSON body: {e}")))
}

async fn route(coordinator: &Coordinator, method: &str, target: &str, body: &str) -> Response {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let flag = |name: &str| query.split('&').any(|kv| kv == format!("{name}=true") || kv == name);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("GET", ["metrics"]) => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: coordinator.metrics().render(),
        },
        ("GET", ["health"]) => json_response(
            200,
            &json!({ "node": coordinator.node().to_string(), "epoch": coordinator.epoch(), "databases": coordinator.database_names() }),
        ),
        ("POST", ["v1", "transactions"]) => {
            let request: RunRequest = match serde_json::from_str(body) {
                Ok(r) => r,
                Err(e) => return error(400, &format!("invalid JSON body: {e}")),
            };
            let branches: Vec<(String, Vec<String>)> =
                request.branches.into_iter().map(|b| (b.database, b.statements)).collect();
            match coordinator.run(&branches).await {
                Ok(view) => json_response(200, &json!(view)),
                Err(RunError::Begin(
                    e @ (BeginError::UnknownDatabase(_) | BeginError::Invalid(_)),
                )) => error(400, &e.to_string()),
                Err(RunError::Begin(e)) => {
                    json_response(200, &json!({ "state": "aborted", "reason": e.to_string() }))
                }
                Err(RunError::Unknown(e)) => json_response(
                    500,
                    &json!({ "state": "unknown", "txn": e.txn.to_string(), "error": e.to_string() }),
                ),
            }
        }
        ("GET", ["v1", "transactions"]) => {
            let (views, errors) = coordinator.in_doubt(flag("heuristic")).await;
            json_response(200, &json!({ "transactions": views, "errors": errors }))
        }
        ("GET", ["v1", "transactions", id]) => match id.parse::<TxnId>() {
            Ok(txn) => json_response(200, &json!(coordinator.show(txn).await)),
            Err(e) => error(400, &format!("`{id}`: {e}")),
        },
        ("POST", ["v1", "transactions", id, "resolve"]) => {
            let txn = match id.parse::<TxnId>() {
                Ok(txn) => txn,
                Err(e) => return error(400, &format!("`{id}`: {e}")),
            };
            let request: ResolveRequest = match serde_json::from_str(body) {
                Ok(r) => r,
                Err(e) => return error(400, &format!("invalid JSON body: {e}")),
            };
            let decision = match request.decision.as_str() {
                "commit" => Decision::Commit,
                "abort" => Decision::Abort,
                other => return error(400, &format!("decision `{other}`: commit or abort")),
            };
            match coordinator.resolve(txn, decision, request.force).await {
                Ok(actions) => json_response(200, &json!({ "actions": actions })),
                Err(e @ (ResolveError::Contradicts { .. } | ResolveError::Running(_))) => {
                    error(409, &e.to_string())
                }
                Err(e @ (ResolveError::NotOurs(_) | ResolveError::Unknown(_))) => {
                    error(404, &e.to_string())
                }
                Err(e @ ResolveError::Log(_)) => error(500, &e.to_string()),
            }
        }
        ("POST", ["v1", "recover"]) => {
            let request: RecoverRequest = match parse_body(body) {
                Ok(r) => r,
                Err(response) => return response,
            };
            json_response(200, &json!(coordinator.reconcile(request.dry_run).await))
        }
        _ => error(404, &format!("no route for {method} {path}")),
    }
}

/// A blocking HTTP/1.1 request, for the CLI and tests. Returns the status and body.
pub fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let unreachable =
        |e: std::io::Error| format!("database coordinator at {address} is unreachable: {e}");
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(unreachable)?;
    stream.set_read_timeout(Some(timeout)).map_err(unreachable)?;
    stream.set_write_timeout(Some(timeout)).map_err(unreachable)?;
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
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
