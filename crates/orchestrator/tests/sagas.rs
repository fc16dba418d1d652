//! The orchestrator service against small in-process HTTP services that keep an idempotency
//! barrier: happy path, business failure, retries, duplicated deliveries, TCC, and an
//! orchestrator stopped mid-saga and restarted from its log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_http::{Request, Response};
use concord_saga::{Barrier, BarrierVerdict, Phase};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What a test service does, and what it saw.
#[derive(Default)]
struct Service {
    barrier: Barrier<String>,
    /// Effects applied, in order: (idempotency key).
    applied: Vec<String>,
    /// Sagas whose action this service declines (409).
    declines: Vec<String>,
    /// Answer 503 to this many calls first.
    busy: u32,
    /// Hold each call this long before answering.
    delay: Duration,
    /// Handle every request twice (a duplicating network in front of it).
    twice: bool,
}

type Shared = Arc<Mutex<Service>>;

fn phase_of(key: &str) -> Phase {
    match key.rsplit(':').next() {
        Some("action") => Phase::Action,
        Some("compensation") => Phase::Compensation,
        _ => Phase::Confirm,
    }
}

fn handle(service: &Shared, request: &Request) -> Response {
    let Some(key) = request.header("idempotency-key").map(str::to_string) else {
        return Response::error(400, "no Idempotency-Key");
    };
    let mut s = service.lock().unwrap();
    if s.busy > 0 {
        s.busy -= 1;
        return Response::error(503, "busy");
    }
    let saga = key.split(':').next().unwrap_or_default().to_string();
    let phase = phase_of(&key);
    if phase == Phase::Action && s.declines.contains(&saga) {
        return Response::error(409, "declined");
    }
    let branch = key.rsplit_once(':').map(|(b, _)| b.to_string()).unwrap_or_default();
    match s.barrier.decide(branch, phase) {
        BarrierVerdict::Apply => {
            s.applied.push(key);
            Response::json(200, &json!({ "ok": true }))
        }
        BarrierVerdict::Duplicate | BarrierVerdict::NullCompensation => {
            Response::json(200, &json!({ "ok": true }))
        }
        BarrierVerdict::Hanging | BarrierVerdict::Refused => Response::error(409, "refused"),
    }
}

async fn start_service(service: Shared) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(concord_http::serve(listener, move |request: Request| {
        let service = Arc::clone(&service);
        async move {
            let (delay, twice) = {
                let s = service.lock().unwrap();
                (s.delay, s.twice)
            };
            tokio::time::sleep(delay).await;
            if twice {
                let _ = handle(&service, &request);
            }
            handle(&service, &request)
        }
    }));
    address
}

struct Orchestrator {
    address: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn start_orchestrator(dir: &Path, address: SocketAddr) -> Orchestrator {
    // The step servers take ports of the moment.
    start_orchestrator_with(dir, address, concord_orchestrator::StepHosts::Any, Vec::new()).await
}

async fn start_orchestrator_with(
    dir: &Path,
    address: SocketAddr,
    step_hosts: concord_orchestrator::StepHosts,
    tokens: Vec<concord_types::tokens::TokenConfig>,
) -> Orchestrator {
    let (stop, stopped) = watch::channel(false);
    let options = concord_orchestrator::Options {
        postgres: None,
        listen: address,
        data_dir: dir.to_path_buf(),
        checkpoint_every: 5,
        step_hosts,
        tokens,
        console_sample: concord_console::HISTORY_INTERVAL,
    };
    let task = tokio::spawn(concord_orchestrator::serve(options, stopped));
    let deadline = Instant::now() + Duration::from_secs(10);
    while concord_http::call(address, "GET", "/health", &[], "", Duration::from_secs(1))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the orchestrator did not come up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Orchestrator { address, stop, task }
}

impl Orchestrator {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    async fn post(&self, saga: &Value) -> (u16, Value) {
        let body = saga.to_string();
        let timeout = Duration::from_secs(60);
        let (status, body) =
            concord_http::call(self.address, "POST", "/v1/sagas", &[], &body, timeout)
                .await
                .unwrap();
        (status, serde_json::from_str(&body).unwrap())
    }

    async fn get(&self, path: &str) -> Value {
        let (_, body) =
            concord_http::call(self.address, "GET", path, &[], "", Duration::from_secs(10))
                .await
                .unwrap();
        serde_json::from_str(&body).unwrap()
    }

    /// Polls until the saga is finished (bounded).
    async fn finished(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let saga = self.get(&format!("/v1/sagas/{id}")).await;
            if matches!(saga["state"].as_str(), Some("completed" | "compensated")) {
                return saga;
            }
            assert!(Instant::now() < deadline, "{id} did not finish: {saga}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("concord-orch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn saga(id: &str, services: &[SocketAddr], tcc: bool) -> Value {
    let steps: Vec<Value> = services
        .iter()
        .enumerate()
        .map(|(i, a)| {
            json!({
                "name": format!("step{i}"),
                "action": format!("http://{a}/do"),
                "compensation": format!("http://{a}/undo"),
                "confirm": if tcc { Some(format!("http://{a}/confirm")) } else { None },
                "timeout_ms": 1000, "retry_base_ms": 10, "retry_max_ms": 50,
            })
        })
        .collect();
    json!({ "id": id, "name": "order", "kind": if tcc { "tcc" } else { "saga" },
            "steps": steps, "payload": { "order": id }, "wait": true })
}

fn applied(service: &Shared) -> Vec<String> {
    service.lock().unwrap().applied.clone()
}

async fn services(n: usize) -> (Vec<Shared>, Vec<SocketAddr>) {
    let shared: Vec<Shared> = (0..n).map(|_| Shared::default()).collect();
    let mut addresses = Vec::new();
    for s in &shared {
        addresses.push(start_service(Arc::clone(s)).await);
    }
    (shared, addresses)
}

#[tokio::test]
async fn a_saga_completes_each_action_once_and_a_repeated_start_changes_nothing() {
    let dir = temp("happy");
    let (shared, addresses) = services(3).await;
    let orchestrator = start_orchestrator(&dir, free_address()).await;
    let (status, done) = orchestrator.post(&saga("o1", &addresses, false)).await;
    assert_eq!((status, done["state"].as_str()), (200, Some("completed")), "{done}");
    for (i, s) in shared.iter().enumerate() {
        assert_eq!(applied(s), vec![format!("o1:step{i}:action")]);
    }
    let (status, again) = orchestrator.post(&saga("o1", &addresses, false)).await;
    assert_eq!((status, again["state"].as_str()), (200, Some("completed")));
    assert_eq!(applied(&shared[0]).len(), 1, "a repeated start runs nothing again");
    let list = orchestrator.get("/v1/sagas").await;
    assert_eq!(list["sagas"].as_array().unwrap().len(), 1);
    orchestrator.stop().await;
}

#[tokio::test]
async fn a_declined_step_compensates_the_earlier_ones_last_first() {
    let dir = temp("declined");
    let (shared, addresses) = services(3).await;
    shared[2].lock().unwrap().declines.push("o2".into());
    let orchestrator = start_orchestrator(&dir, free_address()).await;
    let (_, done) = orchestrator.post(&saga("o2", &addresses, false)).await;
    assert_eq!(done["state"], "compensated", "{done}");
    assert!(done["reason"].as_str().unwrap().contains("step2"), "{done}");
    assert_eq!(applied(&shared[0]), ["o2:step0:action", "o2:step0:compensation"]);
    assert_eq!(applied(&shared[1]), ["o2:step1:action", "o2:step1:compensation"]);
    assert!(applied(&shared[2]).is_empty());
    // The timeline shows step1's compensation before step0's.
    let timeline = done["timeline"].as_array().unwrap();
    let order: Vec<(&str, &str)> = timeline
        .iter()
        .map(|e| (e["step"].as_str().unwrap(), e["phase"].as_str().unwrap()))
        .collect();
    let undo1 = order.iter().position(|e| *e == ("step1", "compensation")).unwrap();
    let undo0 = order.iter().position(|e| *e == ("step0", "compensation")).unwrap();
    assert!(undo1 < undo0, "{order:?}");
    // /metrics counts it: compensated, none running, five calls (three actions, two undos).
    let (status, text) = concord_http::call(
        orchestrator.address,
        "GET",
        "/metrics",
        &[],
        "",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
    let value = |series: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("concord_saga_finished_total{instance=\"local\",outcome=\"compensated\"}"), 1);
    assert_eq!(value("concord_saga_finished_total{instance=\"local\",outcome=\"completed\"}"), 0);
    assert_eq!(value("concord_saga_running{"), 0);
    assert_eq!(value("concord_saga_calls_total{"), 5);
    // The files in deploy/ name only saga metrics served here.
    let mut named = 0;
    for (file, source) in concord_testkit::deploy_files() {
        let names = concord_testkit::metric_names(&source);
        for name in names.into_iter().filter(|n| n.starts_with("concord_saga_")) {
            assert!(concord_testkit::serves_metric(&text, name), "{file}: {name} not served");
            named += 1;
        }
    }
    assert!(named >= 4, "the dashboard shows sagas");
    orchestrator.stop().await;
}

#[tokio::test]
async fn busy_services_are_retried_and_duplicated_deliveries_apply_once() {
    let dir = temp("retries");
    let (shared, addresses) = services(2).await;
    shared[0].lock().unwrap().busy = 2;
    shared[1].lock().unwrap().twice = true;
    let orchestrator = start_orchestrator(&dir, free_address()).await;
    let (_, done) = orchestrator.post(&saga("o3", &addresses, false)).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(applied(&shared[0]), ["o3:step0:action"]);
    assert_eq!(applied(&shared[1]), ["o3:step1:action"], "delivered twice, applied once");
    let attempts: Vec<u64> = done["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["step"] == "step0")
        .map(|e| e["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 3], "two 503s, then success");
    orchestrator.stop().await;
}

#[tokio::test]
async fn tcc_confirms_every_try_or_cancels_them_all() {
    let dir = temp("tcc");
    let (shared, addresses) = services(2).await;
    let orchestrator = start_orchestrator(&dir, free_address()).await;
    let (_, done) = orchestrator.post(&saga("t1", &addresses, true)).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(applied(&shared[1]), ["t1:step1:action", "t1:step1:confirm"]);
    shared[1].lock().unwrap().declines.push("t2".into());
    let (_, done) = orchestrator.post(&saga("t2", &addresses, true)).await;
    assert_eq!(done["state"], "compensated", "{done}");
    assert_eq!(applied(&shared[0])[2..], ["t2:step0:action", "t2:step0:compensation"]);
    assert_eq!(applied(&shared[1]).len(), 2, "t2's declined try: its cancel is a null cancel");
    orchestrator.stop().await;
}

#[tokio::test]
async fn an_orchestrator_stopped_mid_saga_finishes_it_after_a_restart() {
    let dir = temp("restart");
    let (shared, addresses) = services(3).await;
    shared[1].lock().unwrap().delay = Duration::from_millis(300);
    let address = free_address();
    let orchestrator = start_orchestrator(&dir, address).await;
    let mut request = saga("o4", &addresses, false);
    request["wait"] = json!(false);
    let (status, started) = orchestrator.post(&request).await;
    assert_eq!((status, started["state"].as_str()), (202, Some("running")), "{started}");
    // Stop while step1's call is out (its service holds it 300 ms).
    tokio::time::sleep(Duration::from_millis(100)).await;
    orchestrator.stop().await;
    shared[1].lock().unwrap().delay = Duration::ZERO;
    let orchestrator = start_orchestrator(&dir, address).await;
    let done = orchestrator.finished("o4").await;
    assert_eq!(done["state"], "completed", "{done}");
    tokio::time::sleep(Duration::from_millis(400)).await; // the first step1 call lands too
    for (i, s) in shared.iter().enumerate() {
        assert_eq!(applied(s), vec![format!("o4:step{i}:action")], "step {i} applied once");
    }
    // The timeline survived the restart: the calls before it, the one it cut off, and after.
    let calls: Vec<(String, String)> = done["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["step"].as_str().unwrap().into(), e["result"].as_str().unwrap().into()))
        .collect();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert_eq!(calls[0], ("step0".into(), "200".into()));
    assert!(calls[1].0 == "step1" && calls[1].1.starts_with("(no answer recorded"), "{calls:?}");
    assert_eq!(calls[2..], [("step1".into(), "200".into()), ("step2".into(), "200".into())]);
    // Listings filter by state; an instance filter needs a shared store.
    let completed = orchestrator.get("/v1/sagas?state=completed").await;
    assert_eq!(completed["sagas"][0]["id"], "o4", "{completed}");
    assert!(completed["sagas"][0]["started_unix_ms"].as_u64().unwrap() > 0);
    let running = orchestrator.get("/v1/sagas?running").await;
    assert!(running["sagas"].as_array().unwrap().is_empty(), "{running}");
    let refused = orchestrator.get("/v1/sagas?instance=other").await;
    assert!(refused["error"].as_str().unwrap().contains("instance"), "{refused}");
    orchestrator.stop().await;
}

/// With tokens, starting a saga takes a client's, reading one a client's, monitor's or
/// operator's, and the metrics a monitor's or operator's; without a known token nothing but
/// /health is served. And a saga naming a step
/// host the orchestrator was not given is refused whole, before anything runs.
#[tokio::test]
async fn tokens_and_step_hosts_are_checked_before_a_saga_starts() {
    use concord_types::tokens::{token_sha256, ClientRole, TokenConfig};
    let dir = temp("access");
    let (shared, addresses) = services(2).await;
    let tokens = vec![
        TokenConfig { name: "shop".into(), role: ClientRole::Client, sha256: token_sha256("c") },
        TokenConfig { name: "watch".into(), role: ClientRole::Monitor, sha256: token_sha256("m") },
    ];
    let allowed = addresses.iter().map(ToString::to_string).collect();
    let hosts = concord_orchestrator::StepHosts::Only(allowed);
    let orchestrator = start_orchestrator_with(&dir, free_address(), hosts, tokens).await;
    let call = |method: &'static str, path: String, token: Option<&'static str>, body: String| {
        let address = orchestrator.address;
        async move {
            let bearer = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> =
                bearer.as_deref().map(|b| ("Authorization", b)).into_iter().collect();
            concord_http::call(address, method, &path, &headers, &body, Duration::from_secs(30))
                .await
                .unwrap()
                .0
        }
    };
    let start = saga("s-1", &addresses, false).to_string();
    assert_eq!(call("POST", "/v1/sagas".into(), None, start.clone()).await, 401);
    assert_eq!(call("POST", "/v1/sagas".into(), Some("wrong"), start.clone()).await, 401);
    assert_eq!(call("POST", "/v1/sagas".into(), Some("m"), start.clone()).await, 403);
    assert_eq!(call("GET", "/v1/sagas".into(), None, String::new()).await, 401);
    assert_eq!(call("GET", "/health".into(), None, String::new()).await, 200);
    assert!(applied(&shared[0]).is_empty(), "nothing ran for a refused start");

    let elsewhere = saga("s-2", &[addresses[0], free_address()], false).to_string();
    assert_eq!(call("POST", "/v1/sagas".into(), Some("c"), elsewhere).await, 400);
    assert!(applied(&shared[0]).is_empty(), "a refused saga runs none of its steps");

    assert_eq!(call("POST", "/v1/sagas".into(), Some("c"), start).await, 200);
    assert_eq!(call("GET", "/v1/sagas/s-1".into(), Some("m"), String::new()).await, 200);
    assert_eq!(applied(&shared[0]).len(), 1);
    // Metrics are for monitors and operators.
    assert_eq!(call("GET", "/metrics".into(), None, String::new()).await, 401);
    assert_eq!(call("GET", "/metrics".into(), Some("c"), String::new()).await, 403);
    assert_eq!(call("GET", "/metrics".into(), Some("m"), String::new()).await, 200);
    // The console's cluster and charts are the monitor's and operator's, like /metrics.
    for path in ["/v1/cluster", "/v1/history"] {
        assert_eq!(call("GET", path.into(), None, String::new()).await, 401);
        assert_eq!(call("GET", path.into(), Some("c"), String::new()).await, 403);
        assert_eq!(call("GET", path.into(), Some("m"), String::new()).await, 200);
    }
    orchestrator.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
