//! `concord saga` on real processes: the orchestrator SIGKILLed while a step's call is out,
//! restarted from its log, finishes the saga — the interrupted step called again with the same
//! idempotency key and applied once; `saga ls` and `saga show` report it.

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
    let hosts: Vec<String> = step_hosts.iter().map(ToString::to_string).collect();
    let child = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["saga", "serve", "--listen", &address.to_string(), "--data-dir"])
        .arg(dir)
        .args(["--step-hosts", &hosts.join(",")])
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
    let steps: Vec<serde_json::Value> = addresses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            serde_json::json!({ "name": format!("step{i}"), "action": format!("http://{a}/do"),
                                "compensation": format!("http://{a}/undo"), "timeout_ms": 5000 })
        })
        .collect();
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
