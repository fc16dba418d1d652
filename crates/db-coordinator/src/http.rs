//! The database coordinator's HTTP interface: a small JSON API for the CLI and applications,
//! and Prometheus `/metrics`. HTTP/1.1, one request per connection, bounded sizes and times.
//!
//! ```text
//!   POST /v1/transactions                {"branches":[{"database":"ledger","statements":["…"]}]}
//!   GET  /v1/transactions?in_doubt=true[&heuristic=true]
//!   GET  /v1/transactions?recent=true[&state=S][&database=D][&q=TEXT][&limit=N][&before=CURSOR]
//!                                        recent transactions, newest first, one page
//!   GET  /v1/transactions/ID             with its timeline, branch by branch, if recent
//!   GET  /v1/cluster                     this node, its log, its databases
//!   GET  /v1/history                     the last hour of the metrics, for charts
//!   GET  /v1/console                     what the console at /ui offers, and who is asking
//!   GET  /ui                             the web console (docs/console.md)
//!   POST /v1/transactions/ID/resolve     {"decision":"commit"|"abort","force":false}
//!   POST /v1/recover                     {"dry_run":true}
//!   GET  /metrics                        Prometheus text format
//!   GET  /health
//! ```
//!
//! With `[[token]]` entries in its configuration every route but `/health` needs
//! `Authorization: Bearer <token>` of a role allowed there: running a transaction takes a
//! `client`; reading transactions a `client`, `monitor` or `operator`; `/metrics`, `/v1/cluster`
//! and `/v1/history` a `monitor` or `operator`; the console's pages (`/ui`) anyone (they hold no
//! data: what they show comes from these routes, with the token typed into them); `resolve` and `recover` an `operator`, and each is written to stderr as an audit
//! line naming who did it (docs/security.md).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use concord_http::{Request, Response};
use concord_types::tokens::{ClientRole, TokenTable};
use concord_types::{Decision, TxnId};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::coordinator::{BeginError, Coordinator, ResolveError, RunError};
use crate::replicated::{Redirect, ReplicatedCoordinator};
use crate::trace::Filter;

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

fn json_response(status: u16, value: &serde_json::Value) -> Response {
    Response::json(status, value)
}

fn error(status: u16, message: &str) -> Response {
    Response::error(status, message)
}

/// Serves until the listener fails; each connection on its own task. With `tokens`, every
/// route but `/health` needs a token of a role allowed there.
pub async fn serve(coordinator: Arc<Coordinator>, listener: TcpListener, tokens: TokenTable) {
    let tokens = Arc::new(tokens);
    concord_http::serve(listener, move |request: Request| {
        let (coordinator, tokens) = (Arc::clone(&coordinator), Arc::clone(&tokens));
        async move {
            let who = match authorize(&tokens, &request) {
                Ok(who) => who,
                Err(response) => return response,
            };
            route(&coordinator, &request, &who).await
        }
    })
    .await;
}

/// Serves one replica of a replicated coordinator: the leader as [`serve`] does (with the
/// replicated log's status in `/v1/cluster` and its series in `/metrics`); a standby answers
/// `/health`, `/metrics` and `/v1/cluster` for itself and redirects every other request to the
/// leader (`307`), or asks the client to retry (`503`) while no leader is known.
pub async fn serve_replica(
    replica: Arc<ReplicatedCoordinator>,
    listener: TcpListener,
    tokens: TokenTable,
) {
    let tokens = Arc::new(tokens);
    concord_http::serve(listener, move |request: Request| {
        let (replica, tokens) = (Arc::clone(&replica), Arc::clone(&tokens));
        async move {
            let who = match authorize(&tokens, &request) {
                Ok(who) => who,
                Err(response) => return response,
            };
            let path = request.target.split('?').next().unwrap_or("");
            let leader = replica.coordinator();
            match (request.method.as_str(), path.trim_end_matches('/'), leader) {
                ("GET", "/metrics", leader) => {
                    let mut text = replica.metrics();
                    if let Some(coordinator) = leader {
                        text.push_str(&coordinator.metrics().render());
                    }
                    Response::text(200, "text/plain; version=0.0.4", text)
                }
                ("GET", "/health", None) => json_response(
                    200,
                    &json!({ "replica": replica.status_json()["replica"], "leads": false }),
                ),
                ("GET", "/v1/cluster", None) => json_response(200, &replica.standby_cluster_json()),
                ("GET", "/v1/cluster", Some(coordinator)) => {
                    let mut value = coordinator.cluster();
                    value["leads"] = json!(true);
                    value["replication"] = replica.status_json();
                    json_response(200, &value)
                }
                ("POST", "/v1/replicas/add" | "/v1/replicas/remove", Some(_)) => {
                    change_replicas(&replica, path, &request.body, &who).await
                }
                (_, _, Some(coordinator)) => route(&coordinator, &request, &who).await,
                (_, _, None) => redirect(&replica.redirect(), &request.target),
            }
        }
    })
    .await;
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicaRequest {
    id: u32,
}

/// `POST /v1/replicas/add|remove {"id": N}` on the leader (operators only): a membership
/// change, written to the audit log.
async fn change_replicas(
    replica: &ReplicatedCoordinator,
    path: &str,
    body: &str,
    caller: &Caller,
) -> Response {
    let request: ReplicaRequest = match serde_json::from_str(body) {
        Ok(r) => r,
        Err(e) => return error(400, &format!("invalid JSON body: {e}")),
    };
    let add = path.ends_with("/add");
    let changed = if add {
        replica.add_replica(request.id).await
    } else {
        replica.remove_replica(request.id).await
    };
    let verb = if add { "added" } else { "removed" };
    let result = match &changed {
        Ok(voters) => format!("done; voters {voters:?}"),
        Err(e) => format!("refused: {e}"),
    };
    eprintln!("audit: {} {verb} replica {}: {result}", caller.label, request.id);
    match changed {
        Ok(voters) => json_response(200, &json!({ "voters": voters })),
        Err(e) => error(409, &e),
    }
}

/// A standby's answer: it ran nothing, so the client may send the same request on.
fn redirect(redirect: &Redirect, target: &str) -> Response {
    match redirect {
        Redirect::Leader(address) => error_with(
            307,
            &format!("this coordinator replica does not lead; the leader is at {address}"),
            json!({ "leader": address.to_string(), "standby": true }),
        )
        .with_header("Location", format!("http://{address}{target}")),
        Redirect::NoLeader(why) => {
            error_with(503, why, json!({ "standby": true })).with_header("Retry-After", "1".into())
        }
    }
}

/// `{"error": message, …extra}` with `status`.
fn error_with(status: u16, message: &str, mut extra: serde_json::Value) -> Response {
    extra["error"] = json!(message);
    json_response(status, &extra)
}

/// Who is asking: a name for the audit line, and the token's role (none without tokens).
#[derive(Debug)]
struct Caller {
    label: String,
    name: Option<String>,
    role: Option<ClientRole>,
}

/// Whose request this is, if it may do what it asks; else 401 or 403.
fn authorize(tokens: &TokenTable, request: &Request) -> Result<Caller, Response> {
    let path = request.target.split('?').next().unwrap_or("");
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let anyone = |label: &str| Caller { label: label.into(), name: None, role: None };
    if concord_console::is_asset(&request.method, &segments) {
        return Ok(anyone("anyone"));
    }
    let readers = &[ClientRole::Client, ClientRole::Monitor, ClientRole::Operator];
    let allowed: &[ClientRole] = match (request.method.as_str(), segments.as_slice()) {
        ("GET", ["health"]) => return Ok(anyone("anyone")),
        ("GET", ["metrics"] | ["v1", "cluster" | "history"]) => {
            &[ClientRole::Monitor, ClientRole::Operator]
        }
        ("POST", ["v1", "transactions"]) => &[ClientRole::Client],
        ("GET", ["v1", "transactions", ..] | ["v1", "console"]) => readers,
        _ => &[ClientRole::Operator], // resolve, recover, and what is not a route
    };
    if tokens.is_empty() {
        return Ok(anyone("an unauthenticated caller (no [[token]] configured)"));
    }
    let (name, role) = tokens.find_bearer(request.header("authorization")).map_err(|why| {
        eprintln!("refused {} {path}: {why}", request.method);
        error(401, &why)
    })?;
    if !allowed.contains(&role) {
        eprintln!("refused {} {path} to {name} ({role}): not its role's right", request.method);
        return Err(error(403, &format!("{name} ({role}) may not {} {path}", request.method)));
    }
    Ok(Caller { label: format!("{name} ({role})"), name: Some(name.to_string()), role: Some(role) })
}

/// The query of `GET /v1/transactions?recent=true…` (`concord_console::trace::recent_query`).
fn recent_query(
    coordinator: &Coordinator,
    query: &str,
) -> Result<(Filter, Option<u64>, usize), String> {
    concord_console::trace::recent_query(query, &|name| coordinator.database_node(name))
}

fn parse_body<T: for<'de> Deserialize<'de> + Default>(body: &str) -> Result<T, Response> {
    if body.trim().is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(body).map_err(|e| error(400, &format!("invalid JSON body: {e}")))
}

async fn route(coordinator: &Coordinator, request: &Request, caller: &Caller) -> Response {
    let (method, target, body) =
        (request.method.as_str(), request.target.as_str(), request.body.as_str());
    let who = caller.label.as_str();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let flag = |name: &str| query.split('&').any(|kv| kv == format!("{name}=true") || kv == name);
    let Some(decoded) =
        path.split('/').map(concord_http::percent_decode).collect::<Option<Vec<_>>>()
    else {
        return error(400, "malformed %-escape in the path");
    };
    let segments: Vec<&str> =
        decoded.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
    if let Some(page) = concord_console::asset(&segments) {
        return page;
    }
    match (method, segments.as_slice()) {
        ("GET", ["v1", "console"]) => {
            let manifest = concord_console::Manifest {
                service: "database-coordinator",
                name: format!("database coordinator {}", coordinator.node()),
                pages: vec!["transactions", "in-doubt", "cluster", "charts"],
            };
            let mut value = manifest.json();
            value["who"] = json!({
                "name": caller.name,
                "role": caller.role.map(|r| r.to_string()),
                "tokens_configured": caller.role.is_some(),
            });
            json_response(200, &value)
        }
        ("GET", ["v1", "cluster"]) => json_response(200, &coordinator.cluster()),
        ("GET", ["v1", "history"]) => json_response(200, &coordinator.history()),
        ("GET", ["v1", "transactions"]) if flag("recent") => {
            match recent_query(coordinator, query) {
                Ok((filter, before, limit)) => {
                    json_response(200, &coordinator.recent(&filter, before, limit))
                }
                Err(e) => error(400, &e),
            }
        }
        ("GET", ["metrics"]) => {
            Response::text(200, "text/plain; version=0.0.4", coordinator.metrics().render())
        }
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
            Ok(txn) => {
                let mut value = json!(coordinator.show(txn).await);
                if let Some(timeline) = coordinator.timeline(txn) {
                    for field in [
                        "protocol",
                        "started_unix_ms",
                        "duration_ms",
                        "recovered",
                        "branch_steps",
                        "timeline",
                        "timeline_events_lost",
                    ] {
                        value[field] = timeline[field].clone();
                    }
                }
                json_response(200, &value)
            }
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
            let outcome = coordinator.resolve(txn, decision, request.force).await;
            let result = match &outcome {
                Ok(actions) => format!("{} actions", actions.len()),
                Err(e) => format!("refused: {e}"),
            };
            eprintln!(
                "audit: {who} resolved {txn} as {}{}: {result}",
                request.decision,
                if request.force { " (forced: a heuristic outcome if it contradicts)" } else { "" }
            );
            match outcome {
                Ok(actions) => json_response(200, &json!({ "actions": actions })),
                Err(e @ (ResolveError::Contradicts { .. } | ResolveError::Running(_))) => {
                    error(409, &e.to_string())
                }
                Err(e @ (ResolveError::NotOurs(_) | ResolveError::Unknown(_))) => {
                    error(404, &e.to_string())
                }
                Err(e @ (ResolveError::Log(_) | ResolveError::Stopped(_))) => {
                    error(500, &e.to_string())
                }
            }
        }
        ("POST", ["v1", "recover"]) => {
            let request: RecoverRequest = match parse_body(body) {
                Ok(r) => r,
                Err(response) => return response,
            };
            let report = coordinator.reconcile(request.dry_run).await;
            eprintln!(
                "audit: {who} ran recovery{}",
                if request.dry_run { " (dry run)" } else { "" }
            );
            json_response(200, &json!(report))
        }
        _ => error(404, &format!("no route for {method} {path}")),
    }
}

/// A blocking HTTP/1.1 request, for the CLI and tests, presenting `token` if given. Returns
/// the status and body.
pub fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> =
        bearer.as_deref().map(|b| ("Authorization", b)).into_iter().collect();
    concord_http::request_with(address, method, path, &headers, body, timeout)
        .map_err(|e| format!("database coordinator: {e}"))
}
