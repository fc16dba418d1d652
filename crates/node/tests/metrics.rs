//! Every node serves Prometheus text on its `metrics` address. A cluster of a coordinator and
//! two shards runs in-process on loopback; after two transfers the coordinator reports two
//! commits and their latencies, each shard its log records, and every node `/health`.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use concord_node::config::ClusterConfig;
use concord_node::proto::{self, client_client::ClientClient};
use concord_node::tls::ClientCredentials;

/// Three node ports from the base, and their metrics ports 100 after: below the kernel's
/// ephemeral range, so no connection's source port takes one meanwhile. The tests of this file
/// run at once in one process: a base is never handed out twice (a port probed free is not
/// taken until its cluster starts).
fn free_base_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    let offset = u16::try_from(std::process::id() % 500).unwrap() * 3;
    for base in (30_000 + offset..32_500).chain(30_000..30_000 + offset).step_by(3) {
        let free = |i: u16| TcpListener::bind(("127.0.0.1", base + i)).is_ok();
        if !given.contains(&base) && (0..3).chain(100..103).all(free) {
            given.push(base);
            return base;
        }
    }
    panic!("no free ports");
}

/// Submits a transfer until it commits (a shard votes NO while an earlier transfer still holds
/// the key); returns how many attempts aborted.
async fn transfer(coordinator: SocketAddr) -> u32 {
    let credentials = ClientCredentials::new(None, None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut aborted = 0;
    loop {
        let mut client = ClientClient::new(concord_node::client_channel(coordinator, &credentials));
        let request = proto::SubmitRequest {
            writes: vec![
                proto::WriteOp { shard: "shard-1".into(), key: 1, delta: 5 },
                proto::WriteOp { shard: "shard-2".into(), key: 1, delta: 5 },
            ],
            txn: String::new(),
        };
        if let Ok(reply) = client.submit(request).await {
            let mut events = reply.into_inner();
            while let Ok(Some(event)) = events.message().await {
                if let Some(proto::submit_event::Event::Outcome(info)) = event.event {
                    if info.state == proto::State::Committed as i32 {
                        return aborted;
                    }
                    assert_eq!(info.state, proto::State::Aborted as i32, "{info:?}");
                    aborted += 1;
                    break;
                }
            }
        }
        assert!(Instant::now() < deadline, "the cluster never committed a transfer");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get(address: SocketAddr, path: &str) -> (u16, String) {
    concord_http::call(address, "GET", path, &[], "", Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("GET {path} on {address}: {e}"))
}

/// The value of the series `name{labels…}` (its line starting with `name{`, containing `has`).
fn value(text: &str, name: &str, has: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(has))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} with {has} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_reports_its_metrics_and_the_coordinator_its_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let mut config = ClusterConfig::local("metrics", 2, base);
    for (port, node) in (base + 100..).zip(config.nodes.iter_mut()) {
        node.metrics = Some(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let again = ClusterConfig::parse(&config.to_toml()).unwrap();
    assert_eq!(again, config, "the metrics addresses survive the file form");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut nodes = Vec::new();
    for node in &config.nodes {
        let data = dir.path().join(&node.name);
        let (config, name, stopped) = (config.clone(), node.name.clone(), stopped.clone());
        nodes.push(tokio::spawn(async move {
            concord_node::serve(config, &name, &data, stopped).await
        }));
    }
    let coordinator = config.node("coordinator").unwrap();
    let aborted = transfer(coordinator.listen).await + transfer(coordinator.listen).await;
    let decided = f64::from(2 + aborted);

    let (status, text) = get(coordinator.metrics.unwrap(), "/metrics").await;
    assert_eq!(status, 200, "{text}");
    let mut scraped = text.clone();
    let me = "node=\"coordinator\",role=\"coordinator\"";
    assert_eq!(value(&text, "concord_transactions_total", "outcome=\"committed\""), 2.0);
    let aborted_total = value(&text, "concord_transactions_total", "outcome=\"aborted\"");
    assert_eq!(aborted_total, f64::from(aborted));
    assert_eq!(value(&text, "concord_transaction_seconds_count", me), decided);
    assert_eq!(value(&text, "concord_transaction_seconds_bucket", "le=\"+Inf\""), decided);
    assert!(value(&text, "concord_log_records_total", me) >= 2.0, "{text}");
    for shard in ["shard-1", "shard-2"] {
        let address = config.node(shard).unwrap().metrics.unwrap();
        let (status, text) = get(address, "/metrics").await;
        assert_eq!(status, 200);
        scraped.push_str(&text);
        let labels = format!("node=\"{shard}\",role=\"shard\"");
        assert!(value(&text, "concord_log_records_total", &labels) >= 2.0, "{text}");
        assert_eq!(value(&text, "concord_in_doubt_branches", &labels), 0.0);
        assert!(!text.contains("concord_transactions_total"), "a shard decides nothing");
        let (status, health) = get(address, "/health").await;
        assert_eq!(status, 200);
        let health: serde_json::Value = serde_json::from_str(&health).unwrap();
        assert_eq!(
            (health["node"].as_str(), health["role"].as_str()),
            (Some(shard), Some("shard"))
        );
    }
    let (status, _) = get(coordinator.metrics.unwrap(), "/nothing").await;
    assert_eq!(status, 404);
    every_node_metric_of_the_deploy_files_is_served(&scraped);

    stop.send(true).unwrap();
    for node in nodes {
        node.await.unwrap().unwrap();
    }
}

#[test]
fn a_metrics_address_may_not_repeat_a_node_address() {
    let mut config = ClusterConfig::local("metrics", 1, 7700);
    let shard_listen = config.nodes[1].listen;
    config.nodes[0].metrics = Some(shard_listen);
    let error = config.validate().unwrap_err();
    assert!(error.contains("repeats"), "{error}");
    let mut config = ClusterConfig::local("metrics", 1, 7700);
    config.nodes[1].metrics = Some(config.nodes[0].listen);
    let error = config.validate().unwrap_err();
    assert!(error.contains("field `metrics`"), "{error}");
    config.nodes[1].metrics = Some("127.0.0.1:0".parse().unwrap());
    assert!(config.validate().unwrap_err().contains("metrics (port)"));
}

/// The alert rules and the dashboard in `deploy/` name only metrics the nodes serve (the
/// database coordinator's, `concord_db_*`, the saga orchestrator's, `concord_saga_*`, and a
/// replicated coordinator's, `concord_replica_*`, are checked by their own tests).
fn every_node_metric_of_the_deploy_files_is_served(scraped: &str) {
    let mut checked = 0;
    for (file, text) in concord_testkit::deploy_files() {
        // A replicated coordinator's `concord_replica_*`: replicated_coordinator.rs.
        let others = |n: &&str| {
            n.starts_with("concord_db_")
                || n.starts_with("concord_saga_")
                || n.starts_with("concord_replica_")
        };
        for name in concord_testkit::metric_names(&text).into_iter().filter(|n| !others(n)) {
            let served = concord_testkit::serves_metric(scraped, name);
            assert!(served, "{file} names `{name}`, which no node serves");
            checked += 1;
        }
    }
    assert!(checked > 10, "the deploy files name node metrics: {checked}");
}

/// The coordinator's console (`/ui` on its metrics address): the pages to anyone, with the
/// security headers; its APIs to the roles that may list transactions, once tokens exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinators_console_takes_the_clusters_tokens() {
    use concord_node::auth::{token_sha256, ClientRole, TokenConfig};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let mut config = ClusterConfig::local("console-auth", 1, base);
    let metrics = SocketAddr::from(([127, 0, 0, 1], base + 100));
    config.nodes[0].metrics = Some(metrics);
    for (name, role) in [("app", ClientRole::Client), ("watch", ClientRole::Monitor)] {
        let sha256 = token_sha256(&format!("token-of-{name}"));
        config.tokens.push(TokenConfig { name: name.into(), role, sha256 });
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let data = dir.path().join("coordinator");
    let serving =
        tokio::spawn(
            async move { concord_node::serve(config, "coordinator", &data, stopped).await },
        );
    let deadline = Instant::now() + Duration::from_secs(30);
    while concord_http::call(metrics, "GET", "/health", &[], "", Duration::from_secs(1))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the coordinator did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let call = |path: &'static str, token: Option<&'static str>| async move {
        let bearer = token.map(|t| format!("Bearer token-of-{t}"));
        let headers: Vec<(&str, &str)> =
            bearer.as_deref().map(|b| vec![("Authorization", b)]).unwrap_or_default();
        concord_http::call(metrics, "GET", path, &headers, "", Duration::from_secs(5))
            .await
            .unwrap()
    };
    // The page itself: to anyone, never framed, only its own script.
    let mut raw = tokio::net::TcpStream::connect(metrics).await.unwrap();
    raw.write_all(b"GET /ui HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut page = String::new();
    raw.read_to_string(&mut page).await.unwrap();
    let lower = page.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{page}");
    assert!(lower.contains("content-security-policy: default-src 'self'"), "{page}");
    assert!(lower.contains("x-frame-options: deny"), "{page}");
    assert!(page.contains("/ui/console.js"), "{page}");

    let recent = "/v1/transactions?recent=true";
    assert_eq!(call(recent, None).await.0, 401, "no token");
    let (status, body) = call(recent, Some("nobody")).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = call(recent, Some("app")).await;
    assert_eq!(status, 403, "a client may not list: {body}");
    let (status, body) = call(recent, Some("watch")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"transactions\":[]"), "{body}");
    let (status, body) = call("/v1/console", Some("app")).await;
    assert_eq!(status, 200, "{body}");
    let manifest: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(manifest["who"]["role"], "client", "{manifest}");
    assert_eq!(manifest["resolve"], false, "{manifest}");
    assert_eq!(call("/v1/cluster", Some("app")).await.0, 403);
    assert_eq!(call("/v1/history", Some("watch")).await.0, 200);
    let (status, _) = concord_http::call(
        metrics,
        "POST",
        "/v1/console",
        &[("Authorization", "Bearer token-of-watch")],
        "{}",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(status, 405, "the coordinator's console only reads");
    // `/metrics` stays open: counts only.
    assert_eq!(call("/metrics", None).await.0, 200);

    stop.send(true).unwrap();
    serving.await.unwrap().unwrap();
}
