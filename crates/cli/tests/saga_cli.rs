//! `concord saga` on real processes: the orchestrator SIGKILLed while a step's call is out,
//! restarted from its log, finishes the saga — the interrupted step called again with the same
//! idempotency key and applied once; `saga ls` and `saga show` report it. With a shared
//! PostgreSQL store, any instance lists and shows every saga, and a saga's timeline tells the
//! calls of the instance that was killed and of the one that finished it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_http::{Request, Response};

fn concord(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_concord")).args(args).output().expect("running concord")
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A service that applies each idempotency key once and counts deliveries.
#[derive(Default)]
struct Service {
    deliveries: BTreeMap<String, u32>,
    applied: BTreeSet<String>,
    delay_ms: u64,
    /// Sagas whose action this service declines (409: a business failure).
    declines: BTreeSet<String>,
}

fn start_service(runtime: &tokio::runtime::Runtime, service: Arc<Mutex<Service>>) -> SocketAddr {
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let address = listener.local_addr().unwrap();
    runtime.spawn(concord_http::serve(listener, move |request: Request| {
        let service = Arc::clone(&service);
        async move {
            let delay = service.lock().unwrap().delay_ms;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let key = request.header("idempotency-key").unwrap_or_default().to_string();
            let mut s = service.lock().unwrap();
            let saga = key.split(':').next().unwrap_or_default();
            if key.ends_with(":action") && s.declines.contains(saga) {
                return Response::error(409, "declined");
            }
            *s.deliveries.entry(key.clone()).or_default() += 1;
            s.applied.insert(key);
            Response::json(200, &serde_json::json!({ "ok": true }))
        }
    }));
    address
}

struct Orchestrator(Child);

impl Drop for Orchestrator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(address: SocketAddr, dir: &Path, step_hosts: &[SocketAddr]) -> Orchestrator {
    serve_with(address, dir, step_hosts, &[])
}

fn serve_with(
    address: SocketAddr,
    dir: &Path,
    step_hosts: &[SocketAddr],
    extra: &[&str],
) -> Orchestrator {
    let hosts: Vec<String> = step_hosts.iter().map(ToString::to_string).collect();
    let child = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["saga", "serve", "--listen", &address.to_string(), "--data-dir"])
        .arg(dir)
        .args(["--step-hosts", &hosts.join(",")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while concord_http::request(address, "GET", "/health", None, Duration::from_secs(1)).is_err() {
        assert!(Instant::now() < deadline, "concord saga serve did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    Orchestrator(child)
}

/// One step per service: `/do`, undone by `/undo`.
fn steps(services: &[SocketAddr]) -> Vec<serde_json::Value> {
    services
        .iter()
        .enumerate()
        .map(|(i, a)| {
            serde_json::json!({ "name": format!("step{i}"), "action": format!("http://{a}/do"),
                                "compensation": format!("http://{a}/undo"), "timeout_ms": 5000 })
        })
        .collect()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("concord-saga-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_sigkilled_orchestrator_finishes_its_saga_after_a_restart() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let services: Vec<Arc<Mutex<Service>>> = (0..3).map(|_| Arc::default()).collect();
    let addresses: Vec<SocketAddr> =
        services.iter().map(|s| start_service(&runtime, Arc::clone(s))).collect();
    services[1].lock().unwrap().delay_ms = 1_500;
    let dir = temp("kill");
    let address = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let steps = steps(&addresses);
    let definition = serde_json::json!({ "id": "order-1", "name": "checkout", "steps": steps,
                                         "payload": { "order": 1 } });
    let file = dir.join("saga.json");
    std::fs::write(&file, definition.to_string()).unwrap();
    let orchestrator_dir = dir.join("orchestrator");
    let at = address.to_string();

    let mut orchestrator = serve(address, &orchestrator_dir, &addresses);
    let started =
        stdout(&concord(&["saga", "start", file.to_str().unwrap(), "--orchestrator", &at]));
    assert_eq!(started, "order-1 running\n");
    std::thread::sleep(Duration::from_millis(400)); // step1's call is out (held 1.5 s)
    orchestrator.0.kill().unwrap(); // SIGKILL
    orchestrator.0.wait().unwrap();
    drop(orchestrator);
    services[1].lock().unwrap().delay_ms = 0;
    let _orchestrator = serve(address, &orchestrator_dir, &addresses);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let show = stdout(&concord(&["saga", "show", "order-1", "--orchestrator", &at, "--json"]));
        let saga: serde_json::Value = serde_json::from_str(&show).unwrap();
        if saga["state"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "order-1 did not finish: {saga}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1_500)); // the interrupted call lands too
    for (i, service) in services.iter().enumerate() {
        let s = service.lock().unwrap();
        let key = format!("order-1:step{i}:action");
        assert_eq!(s.applied, BTreeSet::from([key.clone()]), "step {i}");
        if i == 1 {
            assert!(s.deliveries[&key] >= 2, "step1 was called again after the restart");
        }
    }
    let list = stdout(&concord(&["saga", "ls", "--orchestrator", &at]));
    assert!(list.lines().any(|l| l.starts_with("order-1") && l.contains("completed")), "{list}");
    let show = stdout(&concord(&["saga", "show", "order-1", "--orchestrator", &at]));
    assert!(show.starts_with("order-1 checkout [saga] completed"), "{show}");
    assert!(show.contains("step2") && show.contains("action"), "{show}");

    // A saga whose step names a host the orchestrator was not given is refused, whole: a step
    // cannot be pointed at another service's API (the database coordinator's, say).
    let elsewhere = serde_json::json!({ "id": "order-2", "name": "checkout", "steps": [
        { "name": "pay", "action": format!("http://{}/do", addresses[0]) },
        { "name": "sneak", "action": "http://127.0.0.1:7800/v1/recover" } ] });
    let file = dir.join("elsewhere.json");
    std::fs::write(&file, elsewhere.to_string()).unwrap();
    let refused = concord(&["saga", "start", file.to_str().unwrap(), "--orchestrator", &at]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("127.0.0.1:7800") && said.contains("not allowed"), "{said}");
    let list = stdout(&concord(&["saga", "ls", "--orchestrator", &at]));
    assert!(!list.contains("order-2"), "the refused saga was started: {list}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn psql(sql: &str) {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "concord_test", "-v", "ON_ERROR_STOP=1"])
        .args(["-q", "-c", sql])
        .output()
        .expect("running psql");
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `saga ls --json` pages, followed to the end: each page's sagas in order.
fn listing(at: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["saga", "ls", "--orchestrator", at, "--json", "--all"];
    all.extend(args);
    let out = stdout(&concord(&all));
    out.lines()
        .flat_map(|page| {
            let page: serde_json::Value = serde_json::from_str(page).unwrap();
            page["sagas"].as_array().unwrap().clone()
        })
        .collect()
}

fn ids(sagas: &[serde_json::Value]) -> Vec<String> {
    sagas.iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
}

fn show_json(at: &str, id: &str) -> serde_json::Value {
    let out = stdout(&concord(&["saga", "show", id, "--orchestrator", at, "--json"]));
    serde_json::from_str(&out).unwrap()
}

fn wait_for_state(at: &str, id: &str, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = concord(&["saga", "show", id, "--orchestrator", at, "--json"]);
        if out.status.success() {
            let saga: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if saga["state"] == state {
                return saga;
            }
            assert!(Instant::now() < deadline, "{id} is not {state}: {saga}");
        }
        assert!(Instant::now() < deadline, "{id}: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two orchestrators on one PostgreSQL store (a schema of this run's own). The one that ran
/// the sagas is SIGKILLed mid-saga; the other lists every saga (finished ones included, the
/// killed one's and its own), filtered and paged on the server, adopts the cut-off saga and
/// finishes it, and shows its whole timeline: the calls of the killed instance, the call it
/// left unanswered, and its own. A row written before the store kept states is listed too.
#[test]
fn with_a_shared_store_any_orchestrator_lists_and_shows_every_saga() {
    use concord_testkit::{servers_ready, Server};
    if !servers_ready(&[Server::Databases], "the saga store listing test") {
        return;
    }
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let schema = format!("saga_ls_{}_{nanos}", std::process::id());
    psql(&format!("CREATE SCHEMA {schema}"));
    let url = format!(
        "host=127.0.0.1 user=postgres dbname=concord_test options='-c search_path={schema}'"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let services: Vec<Arc<Mutex<Service>>> = (0..3).map(|_| Arc::default()).collect();
    let addresses: Vec<SocketAddr> =
        services.iter().map(|s| start_service(&runtime, Arc::clone(s))).collect();
    let dir = temp("shared");
    let (a_at, b_at) = (free_address(), free_address());
    let (a, b) = (a_at.to_string(), b_at.to_string());
    let store = |instance: &'static str| {
        vec!["--postgres", url.as_str(), "--instance", instance, "--lease-ms", "1000"]
    };
    let start = |at: &str, id: &str| {
        let definition = serde_json::json!({ "id": id, "name": "checkout",
                                             "steps": steps(&addresses), "payload": {} });
        let file = dir.join(format!("{id}.json"));
        std::fs::write(&file, definition.to_string()).unwrap();
        stdout(&concord(&["saga", "start", file.to_str().unwrap(), "--orchestrator", at]));
    };

    let mut orchestrator_a = serve_with(a_at, &dir.join("a"), &addresses, &store("a"));
    services[2].lock().unwrap().declines.extend(["no-0".to_string(), "no-1".to_string()]);
    let mut finished: Vec<String> = (0..10).map(|i| format!("ok-{i}")).collect();
    finished.extend(["no-0".to_string(), "no-1".to_string(), "legacy-0".to_string()]);
    for id in &finished {
        start(&a, id);
        std::thread::sleep(Duration::from_millis(2)); // distinct start times, for the order
    }
    for id in &finished {
        let end = if id.starts_with("no-") { "compensated" } else { "completed" };
        wait_for_state(&a, id, end);
    }
    // A row as a version before listings wrote it: no name, state or start time.
    psql(&format!(
        "UPDATE {schema}.concord_sagas SET name = NULL, state = NULL, started_us = NULL WHERE id = 'legacy-0'"
    ));
    services[1].lock().unwrap().delay_ms = 1_500;
    start(&a, "cut-0");
    std::thread::sleep(Duration::from_millis(400)); // cut-0's step1 call is out
    orchestrator_a.0.kill().unwrap(); // SIGKILL
    orchestrator_a.0.wait().unwrap();
    drop(orchestrator_a);
    services[1].lock().unwrap().delay_ms = 0;

    // B never ran any of them; it fills in the old row's columns at its start.
    let _orchestrator_b = serve_with(b_at, &dir.join("b"), &addresses, &store("b"));
    let cut = wait_for_state(&b, "cut-0", "completed");
    assert_eq!(cut["instance"], "b", "{cut}");
    let timeline: Vec<(&str, &str, &str)> = cut["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["instance"].as_str().unwrap(),
                e["step"].as_str().unwrap(),
                e["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(timeline.len(), 4, "{timeline:?}");
    assert_eq!(timeline[0], ("a", "step0", "200"));
    assert!(timeline[1].0 == "a" && timeline[1].1 == "step1", "{timeline:?}");
    assert!(timeline[1].2.starts_with("(no answer recorded"), "{timeline:?}");
    assert_eq!(timeline[2..], [("b", "step1", "200"), ("b", "step2", "200")]);

    // Every saga, newest first, whichever instance ran it; pages of 5 without repeats or gaps.
    let all = listing(&b, &["--limit", "5"]);
    let mut expected: Vec<String> = vec!["cut-0".into()];
    expected.extend(finished.iter().rev().cloned());
    assert_eq!(ids(&all), expected);
    let legacy = all.iter().find(|s| s["id"] == "legacy-0").unwrap();
    assert_eq!(
        (legacy["state"].as_str(), legacy["name"].as_str()),
        (Some("completed"), Some("checkout"))
    );
    let compensated = listing(&b, &["--state", "compensated"]);
    assert_eq!(ids(&compensated), ["no-1", "no-0"]);
    assert!(compensated[0]["reason"].as_str().unwrap().contains("step2"), "{compensated:?}");
    assert_eq!(ids(&listing(&b, &["--instance", "b"])), ["cut-0"]);
    assert_eq!(listing(&b, &["--instance", "a"]).len(), 13);
    assert!(listing(&b, &["--older-than", "1h"]).is_empty());
    assert_eq!(listing(&b, &["--newer-than", "1h", "--state", "unfinished"]).len(), 0);
    let text = stdout(&concord(&["saga", "ls", "--orchestrator", &b, "--limit", "3"]));
    assert!(text.contains("(more: --after "), "{text}");
    let refused = concord(&["saga", "ls", "--orchestrator", &b, "--state", "bogus"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("state"),
        "the refusal names the field"
    );

    // A saga finished by the instance that was killed: its story, from the store.
    let ok = show_json(&b, "ok-3");
    assert_eq!((ok["state"].as_str(), ok["instance"].as_str()), (Some("completed"), Some("a")));
    let steps: Vec<&str> =
        ok["timeline"].as_array().unwrap().iter().map(|e| e["step"].as_str().unwrap()).collect();
    assert_eq!(steps, ["step0", "step1", "step2"]);
    let missing = concord(&["saga", "show", "nope", "--orchestrator", &b]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no saga"));

    // A restarted under its own name shows the same from the store.
    let _orchestrator_a = serve_with(a_at, &dir.join("a"), &addresses, &store("a"));
    let again = show_json(&a, "no-0");
    assert_eq!(again["state"], "compensated", "{again}");
    let phases: Vec<&str> = again["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["action", "action", "action", "compensation", "compensation"]);
    psql(&format!("DROP SCHEMA {schema} CASCADE"));
    let _ = std::fs::remove_dir_all(&dir);
}
