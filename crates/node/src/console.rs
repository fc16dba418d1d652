//! The coordinator's web console: `/ui` (the pages, `concord_console`) and the JSON APIs behind
//! it, on the coordinator's `metrics` address beside `/metrics` (docs/console.md).
//!
//! | | |
//! |---|---|
//! | `GET /v1/console` | the pages this console has, and who the token belongs to |
//! | `GET /v1/transactions?recent=true&state&database&q&limit&before` | recent transactions, newest first, paged by cursor |
//! | `GET /v1/transactions?in_doubt=true` | transactions with a branch prepared at its shard and not yet acknowledged, oldest first |
//! | `GET /v1/transactions/ID` | one transaction: each branch's steps with times, its timeline; else the shards are asked, as `concord txn show` does |
//! | `GET /v1/cluster` | every node: role, addresses, up or not, and its own counts (read from its `/metrics`) |
//! | `GET /v1/history` | the last hour of the coordinator's throughput, latency, aborts by reason and in-doubt counts |
//!
//! The pages are served to anyone (they hold nothing); the APIs take the same bearer tokens as
//! gRPC once the cluster has tokens or `[tls]`: `/v1/console` any role, the rest a `monitor` or
//! `operator` (they list transactions: the `inspect` right). Nothing here changes anything: a
//! shard never ends a prepared branch on its own and nobody may do it for it, so this console
//! has no resolve button — the protocol finishes every in-doubt branch once its coordinator is
//! back (and with Paxos Commit, without it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use concord_console::{Chart, History, Manifest, Sample};
use concord_types::TxnId;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::auth::{Caller, Right};
use crate::config::{CommitProtocol, Role};
use crate::coordinator::state_word;
use crate::driver::RoleState;
use crate::engine::Engine;
use crate::metrics::{Outcomes, LATENCY_BUCKETS_S};
use crate::proto::TransactionInfo;
use crate::service::Handle;

/// How long the cluster page waits for another node's `/metrics`.
const NODE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the console's handlers share.
pub(crate) struct Console<E: Engine> {
    handle: Handle<E>,
    history: Arc<History>,
    data_dir: PathBuf,
}

/// The console's routes, for the coordinator's metrics server; starts sampling the history.
pub(crate) fn router<E: Engine>(handle: Handle<E>, data_dir: PathBuf) -> axum::Router {
    let interval = Duration::from_millis(handle.config.console.sample_ms);
    let history = History::new(interval, charts());
    tokio::spawn(sample(handle.clone(), Arc::clone(&history)));
    let console = Arc::new(Console { handle, history, data_dir });
    axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
        let console = Arc::clone(&console);
        async move { with_security_headers(console.answer(&method, &uri, &headers).await) }
    })
}

fn with_security_headers(mut response: Response) -> Response {
    for (name, value) in concord_http::SECURITY_HEADERS {
        response.headers_mut().insert(name, HeaderValue::from_static(value));
    }
    response
}

fn json_reply(status: StatusCode, value: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    json_reply(status, &json!({ "error": message }))
}

impl<E: Engine> Console<E> {
    async fn answer(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response {
        let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
        if concord_console::is_asset(method.as_str(), &segments) {
            return match concord_console::asset(&segments) {
                Some(file) => {
                    let status = StatusCode::from_u16(file.status).unwrap_or(StatusCode::OK);
                    (status, [(header::CONTENT_TYPE, file.content_type)], file.body).into_response()
                }
                None => error(StatusCode::NOT_FOUND, "no such page"),
            };
        }
        if segments.first() != Some(&"v1") {
            return error(StatusCode::NOT_FOUND, "not found (the console is at /ui)");
        }
        if method != Method::GET {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "the coordinator's console only reads (GET)",
            );
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim().as_bytes());
        let caller = match self.handle.auth.identify(token, None) {
            Ok(caller) => caller,
            Err(why) => return error(StatusCode::UNAUTHORIZED, &why),
        };
        let right = if segments == ["v1", "console"] { Right::Read } else { Right::Inspect };
        if !caller.may(right) {
            let message = format!(
                "{caller} may not list transactions or the cluster (a monitor or operator token may)"
            );
            return error(StatusCode::FORBIDDEN, &message);
        }
        let query = uri.query().unwrap_or("");
        match segments[1..] {
            ["console"] => self.manifest(&caller),
            ["transactions"] => self.transactions(query).await,
            ["transactions", id] => self.transaction(id).await,
            ["cluster"] => self.cluster().await,
            ["history"] => json_reply(StatusCode::OK, &self.history.json()),
            _ => error(StatusCode::NOT_FOUND, "no such API (docs/console.md lists them)"),
        }
    }

    fn manifest(&self, caller: &Caller) -> Response {
        let config = &self.handle.config;
        let manifest = Manifest {
            service: "coordinator",
            name: format!("{} · {}", config.cluster, self.handle.name()),
            pages: vec!["transactions", "in-doubt", "cluster", "charts"],
        };
        let mut body = manifest.json();
        body["who"] = match caller {
            Caller::Client { name, role } => json!({ "name": &**name, "role": role.to_string() }),
            Caller::Node(id) => json!({ "name": format!("node {id}"), "role": "node" }),
            Caller::Anyone => json!({ "name": null, "role": null }),
        };
        body["branch_label"] = json!("Shard");
        body["resolve"] = json!(false);
        json_reply(StatusCode::OK, &body)
    }

    async fn transactions(&self, query: &str) -> Response {
        let flags: Vec<&str> = query.split('&').collect();
        if flags.iter().any(|p| *p == "in_doubt=true" || *p == "in_doubt") {
            // `heuristic` is accepted for the page's sake: a shard never ends a prepared branch
            // on its own, so there are none here.
            if let Some(other) = flags.iter().find(|p| {
                !p.is_empty() && !p.starts_with("in_doubt") && !p.starts_with("heuristic")
            }) {
                let shown = concord_console::shorten(other);
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("in_doubt=true takes no other parameter (got `{shown}`)"),
                );
            }
            return match self.handle.ask(|node| node.coordinator().map(|c| c.in_doubt())).await {
                Ok(Some(list)) => {
                    json_reply(StatusCode::OK, &json!({ "transactions": list, "errors": [] }))
                }
                Ok(None) => error(StatusCode::CONFLICT, "this node is not the coordinator"),
                Err(status) => error(StatusCode::SERVICE_UNAVAILABLE, status.message()),
            };
        }
        let config = Arc::clone(&self.handle.config);
        let node_named = |name: &str| {
            config
                .nodes
                .iter()
                .find(|n| n.name == name && n.role == Role::Shard)
                .map(|n| concord_types::NodeId(n.id))
        };
        let (filter, before, limit) = match concord_console::trace::recent_query(query, &node_named)
        {
            Ok(parsed) => parsed,
            Err(why) => return error(StatusCode::BAD_REQUEST, &why),
        };
        let page = self
            .handle
            .ask(move |node| node.coordinator().map(|c| c.console_page(&filter, before, limit)))
            .await;
        match page {
            Ok(Some(page)) => json_reply(StatusCode::OK, &page),
            Ok(None) => error(StatusCode::CONFLICT, "this node is not the coordinator"),
            Err(status) => error(StatusCode::SERVICE_UNAVAILABLE, status.message()),
        }
    }

    async fn transaction(&self, id: &str) -> Response {
        let Some(txn) = concord_http::percent_decode(id).and_then(|t| t.parse::<TxnId>().ok())
        else {
            let shown = concord_console::shorten(id);
            return error(StatusCode::BAD_REQUEST, &format!("`{shown}` is not a transaction id"));
        };
        let decided_by = match self.handle.config.protocol {
            CommitProtocol::TwoPhase => "the coordinator's log (2PC)",
            CommitProtocol::PaxosCommit => "the acceptors (Paxos Commit)",
        };
        let known = self.handle.ask(move |node| node.coordinator().map(|c| c.console_detail(txn)));
        match known.await {
            Ok(Some(Some(mut detail))) => {
                detail["decided_by"] = json!(decided_by);
                return json_reply(StatusCode::OK, &detail);
            }
            Ok(Some(None)) => {}
            Ok(None) => return error(StatusCode::CONFLICT, "this node is not the coordinator"),
            Err(status) => return error(StatusCode::SERVICE_UNAVAILABLE, status.message()),
        }
        // Not among the recent ones: ask the shards, as `concord txn show` does.
        let (tx, rx) = oneshot::channel();
        let asked = self
            .handle
            .ask(move |node| {
                if let RoleState::Coordinator(c) = &mut node.role {
                    c.status(txn, tx, &mut node.io);
                }
            })
            .await;
        if let Err(status) = asked {
            return error(StatusCode::SERVICE_UNAVAILABLE, status.message());
        }
        match rx.await {
            Ok(Ok(info)) => json_reply(StatusCode::OK, &info_json(&info, decided_by)),
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                error(StatusCode::NOT_FOUND, status.message())
            }
            Ok(Err(status)) => error(StatusCode::SERVICE_UNAVAILABLE, status.message()),
            Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping"),
        }
    }

    async fn cluster(&self) -> Response {
        let config = Arc::clone(&self.handle.config);
        let me = self.handle.name().to_string();
        let mine = self.handle.ask(crate::driver::Node::sample).await;
        let mut asked = Vec::new();
        for node in &config.nodes {
            let address = node.metrics.filter(|_| node.name != me);
            asked.push(tokio::spawn(async move {
                match address {
                    Some(address) => Some(scrape(address).await),
                    None => None,
                }
            }));
        }
        let mut nodes = Vec::new();
        for (node, answer) in config.nodes.iter().zip(asked) {
            let mut entry = json!({
                "name": node.name,
                "id": node.id,
                "role": node.role.to_string(),
                "address": node.listen.to_string(),
                "metrics": node.metrics.map(|m| m.to_string()),
            });
            if node.name == me {
                match &mine {
                    Ok(sample) => {
                        entry["up"] = json!(true);
                        entry["in_flight"] = json!(sample.in_flight);
                        entry["log_records"] = json!(sample.log_records);
                    }
                    Err(status) => {
                        entry["up"] = json!(false);
                        entry["error"] = json!(status.message());
                    }
                }
            } else {
                match answer.await.ok().flatten() {
                    None => entry["up"] = Value::Null, // no metrics address: not asked
                    Some(Ok(values)) => {
                        entry["up"] = json!(true);
                        for (key, metric) in [
                            ("in_flight", "concord_in_flight"),
                            ("in_doubt_branches", "concord_in_doubt_branches"),
                            ("log_records", "concord_log_records_total"),
                            ("data_loss_accepted", "concord_data_loss_accepted"),
                        ] {
                            if let Some(value) = values.get(metric) {
                                entry[key] = json!(value);
                            }
                        }
                    }
                    Some(Err(why)) => {
                        entry["up"] = json!(false);
                        entry["error"] = json!(why);
                    }
                }
            }
            nodes.push(entry);
        }
        let log_files = concord_console::log_files_json(&self.data_dir.join("log"));
        let body = json!({
            "cluster": config.cluster,
            "node": me,
            "protocol": config.protocol.to_string(),
            "early_ack": config.early_ack,
            "store": if config.kv.is_some() { "key-value" } else { "deltas" },
            "tls": config.tls.is_some(),
            "tokens_required": self.handle.auth.required(),
            "data_dir": self.data_dir.display().to_string(),
            "nodes": nodes,
            "log_files": log_files,
            "replication": self.handle.replication.as_ref().map(|r| r.console_json(&config)),
        });
        json_reply(StatusCode::OK, &body)
    }
}

/// A transaction's status as the shards told it (`concord txn show`'s answer), in the shape of
/// the console's detail.
fn info_json(info: &TransactionInfo, decided_by: &str) -> Value {
    let state = crate::proto::State::try_from(info.state).map_or("unknown", state_word);
    json!({
        "txn": info.txn,
        "state": state,
        "decided_by": decided_by,
        "reason": if info.detail.is_empty() { Value::Null } else { json!(info.detail) },
        "source": info.source,
        "branches": info.branches.iter().map(|b| json!({
            "database": b.shard,
            "gid": info.txn,
            "state": if b.acknowledged { "acknowledged" } else { "not acknowledged" },
            "detail": format!("vote {}", if b.vote.is_empty() { "—" } else { &b.vote }),
        })).collect::<Vec<_>>(),
    })
}

/// Another node's `/metrics`, as name → value (the first series of each name).
async fn scrape(address: SocketAddr) -> Result<HashMap<String, f64>, String> {
    let (status, text) =
        concord_http::call(address, "GET", "/metrics", &[], "", NODE_TIMEOUT).await?;
    if status != 200 {
        return Err(format!("{address}: /metrics answered {status}"));
    }
    let mut values = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        if let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            values.entry(name.to_string()).or_insert(value);
        }
    }
    Ok(values)
}

/// The charts: the same as `concord db serve`'s, from this coordinator's own counters.
fn charts() -> Vec<Chart> {
    let chart = |title, unit, series: &[&'static str], prefix| Chart {
        title,
        unit,
        series: series.to_vec(),
        prefix,
    };
    vec![
        chart("Throughput", "txn/s", &["committed_per_s", "aborted_per_s"], None),
        chart("Commit latency", "ms", &["p50_ms", "p99_ms"], None),
        chart("Aborts by reason", "/s", &[], Some("aborts_per_s.")),
        chart("In doubt", "transactions", &["in_doubt", "in_flight"], None),
        chart("Oldest prepared branch", "s", &["oldest_prepared_s"], None),
    ]
}

/// The chart values for the interval between two readings of the outcomes `seconds` apart.
fn chart_values(
    before: &Outcomes,
    after: &Outcomes,
    seconds: f64,
    in_flight: u64,
    in_doubt: (usize, Duration),
) -> Vec<(String, f64)> {
    #[allow(clippy::cast_precision_loss)] // counts per interval, far below 2^52
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds.max(0.001);
    let mut values = vec![
        ("committed_per_s".to_string(), rate(before.committed, after.committed)),
        ("aborted_per_s".to_string(), rate(before.aborted, after.aborted)),
    ];
    // The histogram keeps a count per bucket; the quantile reads cumulative counts.
    let cumulative = |buckets: &[u64]| {
        buckets
            .iter()
            .scan(0, |sum, n| {
                *sum += n;
                Some(*sum)
            })
            .collect::<Vec<u64>>()
    };
    let (was, now) = (cumulative(&before.latency_buckets), cumulative(&after.latency_buckets));
    let count = after.latency_count.saturating_sub(before.latency_count);
    for (name, q) in [("p50_ms", 0.5), ("p99_ms", 0.99)] {
        if let Some(bound) = concord_console::quantile(&LATENCY_BUCKETS_S, &was, &now, count, q) {
            // Past the last bucket: shown at the top bound.
            let bound = bound.min(LATENCY_BUCKETS_S[LATENCY_BUCKETS_S.len() - 1]);
            values.push((name.to_string(), bound * 1_000.0));
        }
    }
    for (reason, total) in &after.aborts {
        let was = before.aborts.get(reason).copied().unwrap_or(0);
        values.push((format!("aborts_per_s.{reason}"), rate(was, *total)));
    }
    #[allow(clippy::cast_precision_loss)] // gauge counts
    {
        values.push(("in_flight".into(), in_flight as f64));
        values.push(("in_doubt".into(), in_doubt.0 as f64));
    }
    values.push(("oldest_prepared_s".into(), in_doubt.1.as_secs_f64()));
    values
}

/// Samples the coordinator every interval (on its loop, one consistent reading each) until it
/// stops.
async fn sample<E: Engine>(handle: Handle<E>, history: Arc<History>) {
    let mut ticks = tokio::time::interval(history.interval());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut last: Option<(tokio::time::Instant, Outcomes)> = None;
    loop {
        ticks.tick().await;
        let reading = handle
            .ask(|node| {
                let in_flight = node.in_flight() as u64;
                node.coordinator().map(|c| (c.outcomes.clone(), in_flight, c.in_doubt_summary()))
            })
            .await;
        let Ok(Some((outcomes, in_flight, in_doubt))) = reading else { return };
        let now = tokio::time::Instant::now();
        if let Some((at, before)) = &last {
            let seconds = (now - *at).as_secs_f64();
            let values = chart_values(before, &outcomes, seconds, in_flight, in_doubt);
            history.push(Sample { at_ms: now_ms(), values });
        }
        last = Some((now, outcomes));
    }
}

fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_types::Decision;

    #[test]
    fn chart_values_are_rates_and_percentiles_of_the_interval() {
        let before = Outcomes::default();
        let mut after = before.clone();
        for _ in 0..9 {
            after.record(Decision::Commit, Some(Duration::from_millis(4))); // ≤ 5 ms
        }
        after.record(Decision::Abort, Some(Duration::from_millis(40))); // ≤ 50 ms
        after.record_abort("vote-timeout");
        let values: HashMap<String, f64> =
            chart_values(&before, &after, 2.0, 3, (1, Duration::from_secs(7)))
                .into_iter()
                .collect();
        assert_eq!(values["committed_per_s"], 4.5);
        assert_eq!(values["aborted_per_s"], 0.5);
        assert_eq!(values["p50_ms"], 5.0);
        assert_eq!(values["p99_ms"], 50.0);
        assert_eq!(values["aborts_per_s.vote-timeout"], 0.5);
        assert_eq!(values["in_doubt"], 1.0);
        assert_eq!(values["in_flight"], 3.0);
        assert_eq!(values["oldest_prepared_s"], 7.0);
        // A quiet interval has no percentile to show.
        let quiet: HashMap<String, f64> =
            chart_values(&after, &after, 2.0, 0, (0, Duration::ZERO)).into_iter().collect();
        assert!(!quiet.contains_key("p50_ms"));
        assert_eq!(quiet["committed_per_s"], 0.0);
    }
}
