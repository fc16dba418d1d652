//! What Concord's tests share.
//!
//! [`servers_ready`] runs the project's setup scripts (`scripts/setup-databases.sh`,
//! `scripts/setup-nats.sh`, `scripts/setup-redis.sh`, `scripts/setup-browser.sh`, `scripts/setup-network.sh`, `scripts/setup-faketime.sh`), which start the local PostgreSQL,
//! MariaDB or NATS when they are stopped (and make sure `redis-server` is installed). When a server cannot be made ready, the test **fails**, saying why and how to skip:
//! a skip would pass silently in cargo's summary (its output is captured). Only when asked
//! (`CONCORD_SKIP_SERVICES=1`) does such a test return early, with a line on stderr — and never
//! under `CI=true`, so CI cannot pass by skipping.

pub mod browser;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// The servers a test can ask for, by the script that readies them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Server {
    /// PostgreSQL (with `max_prepared_transactions`) and MariaDB.
    Databases,
    /// NATS with JetStream.
    Nats,
    /// The `redis-server` binary (tests start their own servers).
    Redis,
    /// Chromium and chromedriver, for the console's browser tests ([`browser`]).
    Browser,
    /// Network namespaces, veth and nftables (root, iproute2, nftables), for partition tests.
    Network,
    /// libfaketime, for clock-skew tests ([`FAKETIME_LIB`]).
    Faketime,
}

/// The libfaketime a clock-skew test preloads (`scripts/setup-faketime.sh` installs it).
pub const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

impl Server {
    fn script(self) -> &'static str {
        match self {
            Server::Databases => "setup-databases.sh",
            Server::Nats => "setup-nats.sh",
            Server::Redis => "setup-redis.sh",
            Server::Browser => "setup-browser.sh",
            Server::Network => "setup-network.sh",
            Server::Faketime => "setup-faketime.sh",
        }
    }
}

/// Each script runs once per test process.
static READY: Mutex<BTreeMap<Server, Result<(), String>>> = Mutex::new(BTreeMap::new());

fn ready(server: Server) -> Result<(), String> {
    let mut ready = READY.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    ready
        .entry(server)
        .or_insert_with(|| {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts").join(server.script());
            match Command::new("bash").arg(&script).output() {
                Ok(out) if out.status.success() => Ok(()),
                Ok(out) => Err(format!(
                    "{} failed:\n{}{}",
                    script.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )),
                Err(e) => Err(format!("cannot run {}: {e}", script.display())),
            }
        })
        .clone()
}

/// Whether every server in `servers` is up (started by its script if it was not). Without one
/// this panics — unless skipping was asked for (`CONCORD_SKIP_SERVICES=1`, and not `CI=true`):
/// then it prints why `what` is skipped and returns false.
pub fn servers_ready(servers: &[Server], what: &str) -> bool {
    for &server in servers {
        if let Err(problem) = ready(server) {
            let ci = std::env::var("CI").as_deref() == Ok("true");
            let skip = std::env::var("CONCORD_SKIP_SERVICES").as_deref() == Ok("1");
            assert!(
                skip && !ci,
                "{server:?} is not ready for {what}: {problem}\n\
                 To run the other tests without these servers, set CONCORD_SKIP_SERVICES=1 \
                 (ignored under CI=true); the tests that need them then skip, each saying so."
            );
            eprintln!(
                "\n######## SKIPPING {what} (CONCORD_SKIP_SERVICES=1): {problem}\n########\n"
            );
            return false;
        }
    }
    true
}

/// A `redis-server` of a test's own: loopback, a port and a directory given or chosen, its
/// settings from `settings`; killed (SIGKILL) and waited for when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: std::process::Child,
    pub port: u16,
    pub dir: std::path::PathBuf,
}

/// Redis settings under which Concord lets a Redis vote YES.
pub const REDIS_DURABLE: [&str; 6] =
    ["--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "noeviction"];

impl RedisServer {
    /// Starts one on a spare port in a new directory under the system's temporary one.
    pub fn start(name: &str, settings: &[&str]) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a spare port")
            .port();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir()
            .join(format!("concord-redis-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for redis-server");
        Self::start_in(&dir, port, settings)
    }

    /// Starts one on `port` with its files in `dir` (again after a kill: its AOF is there), and
    /// waits (up to 5 s) until it answers PING.
    pub fn start_in(dir: &Path, port: u16, settings: &[&str]) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(dir)
            .args(settings)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting redis-server");
        let server = RedisServer { child, port, dir: dir.to_path_buf() };
        for _ in 0..200 {
            if server.answers_ping() {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        drop(server); // killed and waited for
        panic!("redis-server did not come up on {port}");
    }

    fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// `redis://127.0.0.1:PORT/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL, and wait for it (its files stay).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every `concord_…` metric name a text mentions (alert rules, a dashboard), in order: what
/// tests compare with what a service's `/metrics` serves, so `deploy/` cannot name a metric
/// nobody renders.
pub fn metric_names(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("concord_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_lowercase() || c == '_')).unwrap_or(tail.len());
        names.push(&tail[..end]);
        rest = &tail[end..];
    }
    names
}

/// Whether Prometheus text `scraped` has a series named exactly `name`.
pub fn serves_metric(scraped: &str, name: &str) -> bool {
    scraped
        .lines()
        .any(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
}

/// The files in `deploy/` that name metrics, read from the workspace root.
pub fn deploy_files() -> Vec<(&'static str, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    ["prometheus/concord-alerts.yml", "grafana/concord-dashboard.json"]
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(root.join(file))
                .unwrap_or_else(|e| panic!("deploy/{file}: {e}"));
            (file, text)
        })
        .collect()
}
