//! The loop: one task owns the orchestrator core; HTTP requests, step replies, timers and
//! durable-record callbacks reach it as events, and it carries out the core's commands.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use concord_http::{Request, Response};
use concord_saga::{Command, Input, Orchestrator, Phase, Record, StepResult, Timer};
use concord_wal::{FileLog, GroupCommit, OnDurable};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::api::{state_json, view_json, Listing, StartRequest};
use crate::pg_store::{PgStore, Written};
use crate::timeline::{Call, CallId, Change, Timelines};

/// What the data directory was made for.
const IDENTITY: &str = "format = 1\nkind = saga-orchestrator\n";
/// Requests waiting for the loop.
const API_CAPACITY: usize = 4_096;
/// Timeline changes waiting for the PostgreSQL writer; past this they are dropped (and
/// counted): a timeline is what operators read, never what a saga waits for.
const CALLS_CAPACITY: usize = 65_536;
/// The timeline writer's batch.
const CALLS_BATCH: usize = 4_096;
/// The orchestrator's name in timelines when it keeps its own log.
const LOCAL_INSTANCE: &str = "local";

#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    /// The log's directory (unused with `postgres`).
    pub data_dir: PathBuf,
    /// Log records between checkpoints.
    pub checkpoint_every: u64,
    /// Keep saga state in PostgreSQL instead of the log, shared with other orchestrators.
    pub postgres: Option<PostgresOptions>,
    /// The hosts a saga's steps may call.
    pub step_hosts: StepHosts,
    /// Clients' bearer tokens (by SHA-256); with any, every route but `/health` needs one.
    pub tokens: Vec<concord_types::tokens::TokenConfig>,
    /// How often the console's charts sample the counters (an hour of samples is kept).
    pub console_sample: Duration,
}

/// The `host:port`s a saga's steps may call: the orchestrator refuses a saga naming any other
/// (issue 19: a step could call any address it named, the database coordinator's API
/// included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepHosts {
    /// These, and only these (host names compared without case).
    Only(Vec<String>),
    /// Any host: for tests and benchmarks that start step servers on ports of the moment.
    Any,
}

impl StepHosts {
    /// Whether a step may call `endpoint` (a `http://host:port/path`).
    pub fn allow(&self, endpoint: &str) -> Result<(), String> {
        let (host, _) = parse_endpoint(endpoint)?;
        match self {
            StepHosts::Any => Ok(()),
            StepHosts::Only(hosts) if hosts.iter().any(|h| h.eq_ignore_ascii_case(&host)) => Ok(()),
            StepHosts::Only(hosts) if hosts.is_empty() => Err(format!(
                "step host `{host}` is not allowed: this orchestrator allows none (saga serve --step-hosts)"
            )),
            StepHosts::Only(hosts) => Err(format!(
                "step host `{host}` is not allowed here (allowed: {})",
                hosts.join(", ")
            )),
        }
    }
}

/// Who may use the API, and where steps may go.
#[derive(Debug)]
struct Access {
    tokens: concord_types::tokens::TokenTable,
    step_hosts: StepHosts,
    /// The console's charts (`GET /v1/history`).
    history: Arc<concord_console::History>,
}

#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// `host=… user=… dbname=…`
    pub url: String,
    /// This orchestrator's name, stable across its restarts (it resumes what it owned).
    pub instance: String,
    /// How long a saga stays with an orchestrator that stopped renewing it.
    pub lease: Duration,
}

/// Where the core's records go.
enum Storage {
    Log { log: Arc<GroupCommit>, since_checkpoint: u64, checkpoint_every: u64 },
    Postgres(Arc<PgStore>),
}

type Answer = oneshot::Sender<Response>;

enum Event {
    Start {
        request: StartRequest,
        answer: Answer,
    },
    List {
        /// The request's target, whose query is the listing's filters and page.
        target: String,
        answer: Answer,
    },
    Show {
        saga: String,
        answer: Answer,
    },
    /// Prometheus text for `/metrics`.
    Metrics {
        answer: Answer,
    },
    /// The console's cluster page (`GET /v1/cluster`).
    Cluster {
        answer: Answer,
    },
    /// The counters, for the console's charts.
    Reading {
        answer: oneshot::Sender<Reading>,
    },
    Reply {
        saga: String,
        step: usize,
        phase: Phase,
        /// The call's entry in the saga's timeline.
        call: CallId,
        result: StepResult,
        shown: String,
    },
    Persisted(Record),
    LogFailed(String),
    /// The saga store says another orchestrator owns this saga.
    Lost(String),
    /// The sweeper's turn: renew our leases, claim stuck sagas.
    Sweep,
    /// Sagas the sweeper claimed: their records, and their timelines so far.
    Adopt(Vec<Record>, Vec<Call>),
}

/// A timeline entry in the log, beside the core's records (told apart by its tag: a record's
/// is `Started`, `StepDone`, `Compensating` or `Ended`).
#[derive(serde::Serialize, serde::Deserialize)]
enum Frame {
    Call(Call),
}

/// `http://host:port/path` → (address, path). Host names are resolved at call time.
pub(crate) fn parse_endpoint(endpoint: &str) -> Result<(String, String), String> {
    let shown: String = endpoint.chars().take(80).collect();
    let rest = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| format!("endpoint `{shown}`: only http:// URLs are supported"))?;
    let (host, path) =
        rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let Some((name, port)) = host.rsplit_once(':') else {
        return Err(format!("endpoint `{shown}`: give the port (http://host:port/path)"));
    };
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    if !name_ok {
        return Err(format!("endpoint `{shown}`: the host is empty or not a host name"));
    }
    if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
        return Err(format!("endpoint `{shown}`: the port must be 1 to 65535"));
    }
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!("endpoint `{shown}`: the path holds spaces or control characters"));
    }
    Ok((host.to_string(), path))
}

/// A step call: 2xx ⇒ success; 409/422 ⇒ business failure; anything else ⇒ retry.
async fn call_step(
    endpoint: &str,
    key: &str,
    payload: &str,
    timeout: Duration,
) -> (StepResult, String) {
    let (host, path) = match parse_endpoint(endpoint) {
        Ok(parts) => parts,
        Err(e) => return (StepResult::Retryable(e.clone()), e),
    };
    let Ok(Some(address)) = tokio::net::lookup_host(&host).await.map(|mut a| a.next()) else {
        let e = format!("cannot resolve {host}");
        return (StepResult::Retryable(e.clone()), e);
    };
    let headers = [("Idempotency-Key", key)];
    match concord_http::call(address, "POST", &path, &headers, payload, timeout).await {
        Ok((status, _)) if (200..300).contains(&status) => {
            (StepResult::Success, format!("{status}"))
        }
        Ok((status @ (409 | 422), body)) => {
            (StepResult::BusinessFailure(body.clone()), format!("{status} {body}"))
        }
        Ok((status, body)) => {
            let shown = format!("{status} {body}");
            (StepResult::Retryable(shown.clone()), shown)
        }
        Err(e) => (StepResult::Retryable(e.clone()), e),
    }
}

struct Loop {
    core: Orchestrator,
    storage: Storage,
    internal: mpsc::UnboundedSender<Event>,
    timelines: Timelines,
    /// This orchestrator's name in the shared store (or [`LOCAL_INSTANCE`]).
    instance: String,
    /// Timeline changes for the PostgreSQL writer (the log takes them directly).
    calls_out: Option<mpsc::Sender<Change>>,
    calls_dropped: u64,
    /// Counted since this process started, for `/metrics`.
    counters: Counters,
    /// Starts waiting for their `Started` record, or (wait = true) for the end.
    acks: HashMap<String, Vec<Answer>>,
    finishes: HashMap<String, Vec<Answer>>,
    next_id: u64,
    /// Armed timers, soonest first. One heap in the loop rather than a sleeping task per
    /// timer: every saga arms a deadline and a timeout per call, hundreds of thousands at a
    /// time under load.
    timers: concord_types::TimerHeap<tokio::time::Instant, Timer>,
    /// The log's directory (log storage), for the console's cluster page.
    log_dir: Option<PathBuf>,
}

/// What `/metrics` counts since the process started.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    calls: u64,
    completed: u64,
    compensated: u64,
}

/// One reading for the console's charts: the counters and the gauges of one moment.
#[derive(Debug, Clone, Copy)]
struct Reading {
    counters: Counters,
    running: u64,
    timers: u64,
}

/// The console's charts for the orchestrator.
fn charts() -> Vec<concord_console::Chart> {
    let chart = |title, unit, series: &[&'static str]| concord_console::Chart {
        title,
        unit,
        series: series.to_vec(),
        prefix: None,
    };
    vec![
        chart("Sagas finished", "/s", &["completed_per_s", "compensated_per_s"]),
        chart("Step calls", "/s", &["calls_per_s"]),
        chart("Running", "sagas", &["running"]),
        chart("Timers armed", "timers", &["timers"]),
    ]
}

/// The chart values between two readings `seconds` apart.
fn chart_values(before: &Reading, after: &Reading, seconds: f64) -> Vec<(String, f64)> {
    #[allow(clippy::cast_precision_loss)] // counts per interval, far below 2^52
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds.max(0.001);
    let (b, a) = (before.counters, after.counters);
    #[allow(clippy::cast_precision_loss)] // gauges
    let gauges = [("running", after.running as f64), ("timers", after.timers as f64)];
    [
        ("completed_per_s", rate(b.completed, a.completed)),
        ("compensated_per_s", rate(b.compensated, a.compensated)),
        ("calls_per_s", rate(b.calls, a.calls)),
    ]
    .into_iter()
    .chain(gauges)
    .map(|(name, value)| (name.to_string(), value))
    .collect()
}

/// Samples the loop's counters for the charts every interval until the loop is gone.
async fn sample_history(
    internal: mpsc::UnboundedSender<Event>,
    history: Arc<concord_console::History>,
) {
    let mut ticks = tokio::time::interval(history.interval());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(tokio::time::Instant, Reading)> = None;
    loop {
        ticks.tick().await;
        let (answer, reading) = oneshot::channel();
        if internal.send(Event::Reading { answer }).is_err() {
            return;
        }
        let Ok(reading) = reading.await else { return };
        let now = tokio::time::Instant::now();
        if let Some((at, before)) = &last {
            let values = chart_values(before, &reading, (now - *at).as_secs_f64());
            let at_ms = now_us() / 1_000;
            history.push(concord_console::Sample { at_ms, values });
        }
        last = Some((now, reading));
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Loop {
    fn feed(&mut self, input: Input) -> Result<(), String> {
        let mut out = Vec::new();
        self.core.handle(input, &mut out);
        for command in out {
            self.carry_out(command)?;
        }
        if let Storage::Log { log, since_checkpoint, checkpoint_every, .. } = &mut self.storage {
            if *since_checkpoint >= *checkpoint_every {
                *since_checkpoint = 0;
                let records = self.core.live_records();
                // The timelines of the sagas the checkpoint keeps go with them.
                let sagas: std::collections::BTreeSet<&String> =
                    records.iter().map(Record::saga).collect();
                let calls = sagas
                    .into_iter()
                    .flat_map(|saga| self.timelines.calls(saga))
                    .map(|call| encode_frame(&Frame::Call(call)));
                let live = records.iter().map(encode).chain(calls).collect();
                log.checkpoint(live).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Stores timeline changes: in the log (lazily, riding the next group commit), or through
    /// the PostgreSQL writer.
    fn store_calls(&mut self, changes: Vec<Change>) -> Result<(), String> {
        match (&mut self.storage, &self.calls_out) {
            (Storage::Log { log, .. }, _) => {
                for change in changes {
                    // A dropped entry leaves the log at the next checkpoint. Entries do not
                    // count towards checkpoints: a checkpoint's cost is the sagas in flight,
                    // and checkpointing more often for their timelines would spend more on
                    // rewriting live sagas than the entries cost in replay.
                    if let Change::Put(call) = change {
                        log.submit(encode_frame(&Frame::Call(call)), None)
                            .map_err(|e| e.to_string())?;
                    }
                }
            }
            (Storage::Postgres(_), Some(out)) => {
                for change in changes {
                    if out.try_send(change).is_err() {
                        self.calls_dropped += 1;
                        if self.calls_dropped.is_power_of_two() {
                            eprintln!(
                                "concord saga: the timeline writer is behind; {} timeline entries not stored",
                                self.calls_dropped
                            );
                        }
                    }
                }
            }
            (Storage::Postgres(_), None) => {}
        }
        Ok(())
    }

    /// Sagas just replayed or adopted that the core set aside: the store says so too, so
    /// every instance's listing shows them failed-to-drive.
    fn report_parked(&self, records: &[Record]) {
        let Storage::Postgres(store) = &self.storage else { return };
        for record in records {
            let Record::Started { saga, .. } = record else { continue };
            let Some(view) = self.core.view(saga) else { continue };
            if let concord_saga::SagaState::FailedToDrive { reason } = view.state {
                let (store, saga) = (Arc::clone(store), saga.clone());
                tokio::spawn(async move {
                    if let Err(e) = store.park(&saga, &reason).await {
                        eprintln!("concord saga: marking {saga} failed-to-drive: {e}");
                    }
                });
            }
        }
    }

    fn carry_out(&mut self, command: Command) -> Result<(), String> {
        match command {
            Command::Call { saga, step, phase, attempt, key, endpoint, payload, timeout_us } => {
                self.counters.calls += 1;
                let name = self.core.view(&saga).map(|v| v.steps[step].clone()).unwrap_or_default();
                let (call, changes) = self.timelines.called(&saga, &name, phase, attempt, now_us());
                self.store_calls(changes)?;
                let internal = self.internal.clone();
                tokio::spawn(async move {
                    let timeout = Duration::from_micros(timeout_us);
                    let (result, shown) = call_step(&endpoint, &key, &payload, timeout).await;
                    let _ = internal.send(Event::Reply { saga, step, phase, call, result, shown });
                });
            }
            Command::Persist { record, .. } => match &mut self.storage {
                Storage::Log { log, since_checkpoint, .. } => {
                    let internal = self.internal.clone();
                    let bytes = encode(&record);
                    let notify: OnDurable = Box::new(move |result| {
                        let _ = internal.send(match result {
                            Ok(()) => Event::Persisted(record),
                            Err(e) => Event::LogFailed(e),
                        });
                    });
                    log.submit(bytes, Some(notify)).map_err(|e| e.to_string())?;
                    *since_checkpoint += 1;
                }
                Storage::Postgres(store) => {
                    let (store, internal) = (Arc::clone(store), self.internal.clone());
                    let state = self
                        .core
                        .state_after(&record)
                        .map_or("running", |state| state_json(&state).0);
                    tokio::spawn(async move {
                        let _ = internal.send(write_with_retries(&store, record, state).await);
                    });
                }
            },
            Command::SetTimer { timer, after_us } => {
                let at = deadline_after_us(after_us);
                self.timers.push(at, timer);
            }
            Command::Finished { saga, outcome } => {
                match outcome {
                    concord_saga::Outcome::Completed => self.counters.completed += 1,
                    concord_saga::Outcome::Compensated { .. } => self.counters.compensated += 1,
                }
                let response = self.show(&saga);
                for answer in self.finishes.remove(&saga).unwrap_or_default() {
                    let _ = answer.send(response.clone());
                }
            }
            Command::Rejected { saga, reason } => {
                for answer in self.acks.remove(&saga).unwrap_or_default() {
                    let _ = answer.send(Response::error(400, &reason));
                }
            }
        }
        Ok(())
    }

    /// The console's cluster page: this instance, where its sagas are kept, what it holds.
    fn cluster(&self) -> Value {
        let (store, log_files, note) = match &self.storage {
            Storage::Log { .. } => (
                "log",
                self.log_dir.as_deref().map(concord_console::log_files_json).unwrap_or_default(),
                "One orchestrator with its own log: while it is down its sagas wait for it.",
            ),
            Storage::Postgres(_) => (
                "postgres",
                Vec::new(),
                "Sagas in PostgreSQL, shared: another instance on the same store adopts the sagas of one that stopped renewing its lease (the sweeper).",
            ),
        };
        json!({
            "instance": self.instance,
            "store": store,
            "running": self.core.running(),
            "timers": self.timers.len(),
            "calls_since_start": self.counters.calls,
            "completed_since_start": self.counters.completed,
            "compensated_since_start": self.counters.compensated,
            "timeline_entries_dropped": self.calls_dropped,
            "log_files": log_files,
            "availability": note,
            "replication": null,
        })
    }

    /// Prometheus text: sagas running now, finished and calls made since this process
    /// started, timers armed, timeline entries dropped.
    fn metrics(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let instance = &self.instance;
        let mut metric = |name: &str, kind: &str, help: &str, series: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in series {
                let _ = writeln!(out, "{name}{{instance=\"{instance}\"{labels}}} {value}");
            }
        };
        metric(
            "concord_saga_running",
            "gauge",
            "Sagas this orchestrator is driving (not finished).",
            &[("", self.core.running() as u64)],
        );
        metric(
            "concord_saga_finished_total",
            "counter",
            "Sagas finished here since the process started, by outcome.",
            &[
                (",outcome=\"completed\"", self.counters.completed),
                (",outcome=\"compensated\"", self.counters.compensated),
            ],
        );
        metric(
            "concord_saga_calls_total",
            "counter",
            "Step calls made (actions, compensations, confirmations; retries included).",
            &[("", self.counters.calls)],
        );
        metric(
            "concord_saga_timers",
            "gauge",
            "Timers armed (deadlines, call timeouts, retries).",
            &[("", self.timers.len() as u64)],
        );
        metric(
            "concord_saga_timeline_entries_dropped_total",
            "counter",
            "Timeline entries the PostgreSQL writer could not keep up with.",
            &[("", self.calls_dropped)],
        );
        out
    }

    fn show(&self, saga: &str) -> Response {
        match self.core.view(saga) {
            Some(view) => {
                let mut value = view_json(&view);
                value["timeline"] = self.timelines.json(saga);
                value["instance"] = json!(self.instance);
                Response::json(200, &value)
            }
            None => Response::error(404, &format!("no saga `{saga}`")),
        }
    }

    /// `GET /v1/sagas/ID`: from the core if this orchestrator holds the saga (it knows the
    /// call in flight); else, with a shared store, from the store.
    fn show_anywhere(&self, saga: String, answer: Answer) {
        let store = match &self.storage {
            Storage::Postgres(store) if self.core.view(&saga).is_none() => Arc::clone(store),
            _ => {
                let _ = answer.send(self.show(&saga));
                return;
            }
        };
        tokio::spawn(async move {
            let response = match store.show(&saga).await {
                Ok(Some((view, owner, calls))) => {
                    let mut value = view_json(&view);
                    // No instance here awaits its calls: an unanswered one was left by its
                    // owner, which may still be waiting for it.
                    value["timeline"] = crate::timeline::json_of(&calls, |_| false);
                    value["instance"] = json!(owner);
                    Response::json(200, &value)
                }
                Ok(None) => Response::error(404, &format!("no saga `{saga}`")),
                Err(e) => Response::error(503, &format!("the saga store: {e}")),
            };
            let _ = answer.send(response);
        });
    }

    /// `GET /v1/sagas?…`: one page, from the shared store or from this orchestrator's memory.
    fn list(&self, target: &str, answer: Answer) {
        let listing = match Listing::parse(target, now_us()) {
            Ok(listing) => listing,
            Err(e) => {
                let _ = answer.send(Response::error(400, &e));
                return;
            }
        };
        let Storage::Postgres(store) = &self.storage else {
            if listing.instance.is_some() {
                let why = "instance: this orchestrator keeps its own log; instances share sagas only through a PostgreSQL store (saga serve --postgres)";
                let _ = answer.send(Response::error(400, why));
                return;
            }
            let page = crate::api::page(&listing, self.core.list(), &self.instance);
            let _ = answer.send(Response::json(200, &page));
            return;
        };
        let store = Arc::clone(store);
        tokio::spawn(async move {
            let response = match store.list(&listing).await {
                Ok((sagas, next)) => {
                    let sagas: Vec<Value> = sagas
                        .iter()
                        .map(|(view, owner)| {
                            let mut value = view_json(view);
                            value["instance"] = json!(owner);
                            value
                        })
                        .collect();
                    Response::json(200, &json!({ "sagas": sagas, "next": next }))
                }
                Err(e) => Response::error(503, &format!("the saga store: {e}")),
            };
            let _ = answer.send(response);
        });
    }

    fn start(&mut self, request: &StartRequest, answer: Answer) -> Result<(), String> {
        let def = match request.definition() {
            Ok(def) => def,
            Err(e) => {
                let _ = answer.send(Response::error(400, &e));
                return Ok(());
            }
        };
        let saga = request.id.clone().unwrap_or_else(|| {
            self.next_id += 1;
            format!("{}-{:x}-{}", request.name, now_us(), self.next_id)
        });
        if let Some(view) = self.core.view(&saga) {
            // A repeated start: say where the saga is (or wait for it, as asked).
            if request.wait && !matches!(state_json(&view.state).0, "completed" | "compensated") {
                self.finishes.entry(saga).or_default().push(answer);
            } else {
                let _ = answer.send(Response::json(200, &view_json(&view)));
            }
            return Ok(());
        }
        if request.wait {
            self.finishes.entry(saga.clone()).or_default().push(answer);
        } else {
            self.acks.entry(saga.clone()).or_default().push(answer);
        }
        let payload = request.payload.to_string();
        self.feed(Input::Start { saga, def, payload, now_us: now_us() })
    }

    fn on_event(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Start { request, answer } => self.start(&request, answer)?,
            Event::List { target, answer } => self.list(&target, answer),
            Event::Show { saga, answer } => self.show_anywhere(saga, answer),
            Event::Metrics { answer } => {
                let _ =
                    answer.send(Response::text(200, "text/plain; version=0.0.4", self.metrics()));
            }
            Event::Cluster { answer } => {
                let _ = answer.send(Response::json(200, &self.cluster()));
            }
            Event::Reading { answer } => {
                let _ = answer.send(Reading {
                    counters: self.counters,
                    running: self.core.running() as u64,
                    timers: self.timers.len() as u64,
                });
            }
            Event::Reply { saga, step, phase, call, result, shown } => {
                if let Some(change) = self.timelines.answered(&saga, &call, shown, now_us()) {
                    self.store_calls(vec![change])?;
                }
                self.feed(Input::Reply { saga, step, phase, result })?;
            }
            Event::Persisted(record) => {
                if let Record::Started { saga, .. } = &record {
                    let accepted = Response::json(202, &json!({ "id": saga, "state": "running" }));
                    for answer in self.acks.remove(saga).unwrap_or_default() {
                        let _ = answer.send(accepted.clone());
                    }
                }
                self.feed(Input::Persisted(record))?;
            }
            Event::LogFailed(error) => return Err(format!("the log failed: {error}")),
            Event::Lost(saga) => {
                let lost =
                    Response::error(409, &format!("saga `{saga}` belongs to another orchestrator"));
                for answer in
                    self.acks.remove(&saga).into_iter().chain(self.finishes.remove(&saga)).flatten()
                {
                    let _ = answer.send(lost.clone());
                }
                self.feed(Input::Release { saga })?;
            }
            Event::Sweep => {
                if let Storage::Postgres(store) = &self.storage {
                    let running: Vec<String> = self
                        .core
                        .list()
                        .into_iter()
                        .filter(|v| !matches!(state_json(&v.state).0, "completed" | "compensated"))
                        .map(|v| v.saga)
                        .collect();
                    let (store, internal) = (Arc::clone(store), self.internal.clone());
                    tokio::spawn(async move {
                        if let Err(e) = store.renew(&running).await {
                            eprintln!("concord: renewing saga leases: {e}");
                        }
                        match store.claim_stuck(100).await {
                            Ok(records) if !records.is_empty() => {
                                let sagas: Vec<String> =
                                    records.iter().map(|r| r.saga().clone()).collect();
                                // Without its timeline the saga still goes on.
                                let calls = store.calls(&sagas).await.unwrap_or_else(|e| {
                                    eprintln!("concord: reading adopted sagas' timelines: {e}");
                                    Vec::new()
                                });
                                let _ = internal.send(Event::Adopt(records, calls));
                            }
                            Ok(_) => {}
                            Err(e) => eprintln!("concord: sweeping stuck sagas: {e}"),
                        }
                    });
                }
            }
            Event::Adopt(records, calls) => {
                let changes = self.timelines.load(calls);
                self.store_calls(changes)?;
                let started: Vec<Record> = records
                    .iter()
                    .filter(|r| matches!(r, Record::Started { .. }))
                    .cloned()
                    .collect();
                self.feed(Input::Adopt { records, now_us: now_us() })?;
                self.report_parked(&started);
            }
        }
        Ok(())
    }
}

/// A record written to PostgreSQL, retried while the database is unreachable (bounded: after
/// that the saga is released here, and a sweeper — maybe this one — adopts it once its lease
/// runs out).
async fn write_with_retries(store: &PgStore, record: Record, state: &str) -> Event {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut backoff = Duration::from_millis(50);
    loop {
        match store.write(&record, state).await {
            Ok(Written::Durable) => return Event::Persisted(record),
            Ok(Written::NotOurs) => return Event::Lost(record.saga().clone()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                eprintln!("concord: giving up writing {}: {e}", record.saga());
                return Event::Lost(record.saga().clone());
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

impl Loop {
    fn next_deadline(&self) -> Option<tokio::time::Instant> {
        self.timers.next_deadline()
    }

    /// Fires every timer that is due.
    fn fire_due(&mut self) -> Result<(), String> {
        let now = tokio::time::Instant::now();
        while let Some(timer) = self.timers.pop_due(now) {
            self.feed(Input::Timer(timer))?;
        }
        Ok(())
    }
}

fn encode(record: &Record) -> Vec<u8> {
    serde_json::to_vec(record).expect("records serialise")
}

fn encode_frame(frame: &Frame) -> Vec<u8> {
    serde_json::to_vec(frame).expect("timeline entries serialise")
}

/// The PostgreSQL timeline writer: takes changes as they come and writes what has gathered
/// while the previous batch was being written (one statement per batch, not per call).
async fn write_timelines(store: Arc<PgStore>, mut changes: mpsc::Receiver<Change>) {
    while let Some(first) = changes.recv().await {
        let mut batch = vec![first];
        while batch.len() < CALLS_BATCH {
            match changes.try_recv() {
                Ok(change) => batch.push(change),
                Err(_) => break,
            }
        }
        if let Err(e) = store.write_calls(batch).await {
            eprintln!("concord saga: writing timelines: {e}");
        }
    }
}

/// Whether `request` may do what it asks: 401 without a known token (once tokens are
/// configured), 403 outside its role (starting a saga takes a `client`; reading, a `client`,
/// `monitor` or `operator`).
fn authorize(access: &Access, request: &Request) -> Result<(), Response> {
    use concord_types::tokens::ClientRole;
    let segments = request.segments();
    if concord_console::is_asset(&request.method, &segments) {
        return Ok(()); // the console's pages hold no data
    }
    let allowed: &[ClientRole] = match (request.method.as_str(), segments.as_slice()) {
        ("GET", ["health"]) => return Ok(()),
        ("GET", ["metrics"] | ["v1", "cluster"] | ["v1", "history"]) => {
            &[ClientRole::Monitor, ClientRole::Operator]
        }
        ("POST", ["v1", "sagas"]) => &[ClientRole::Client],
        ("GET", ["v1", "sagas", ..] | ["v1", "console"]) => {
            &[ClientRole::Client, ClientRole::Monitor, ClientRole::Operator]
        }
        _ => &[ClientRole::Operator],
    };
    if access.tokens.is_empty() {
        return Ok(());
    }
    let (name, role) =
        access.tokens.find_bearer(request.header("authorization")).map_err(|why| {
            eprintln!("refused {} {}: {why}", request.method, request.target);
            Response::error(401, &why)
        })?;
    if !allowed.contains(&role) {
        eprintln!("refused {} {} to {name} ({role})", request.method, request.target);
        return Err(Response::error(
            403,
            &format!("{name} ({role}) may not {} {}", request.method, request.target),
        ));
    }
    Ok(())
}

async fn route(api: mpsc::Sender<Event>, access: Arc<Access>, request: Request) -> Response {
    if let Err(refused) = authorize(&access, &request) {
        return refused;
    }
    if let Some(page) = concord_console::asset(&request.segments()) {
        return page;
    }
    let (tx, rx) = oneshot::channel();
    let event = match (request.method.as_str(), request.segments().as_slice()) {
        ("GET", ["health"]) => return Response::json(200, &json!({ "ok": true })),
        ("GET", ["v1", "console"]) => {
            let manifest = concord_console::Manifest {
                service: "saga-orchestrator",
                name: "saga orchestrator".into(),
                pages: vec!["sagas", "cluster", "charts"],
            };
            let mut value = manifest.json();
            let caller = access.tokens.find_bearer(request.header("authorization")).ok();
            value["who"] = json!({
                "name": caller.as_ref().map(|(name, _)| name.to_string()),
                "role": caller.as_ref().map(|(_, role)| role.to_string()),
                "tokens_configured": !access.tokens.is_empty(),
            });
            return Response::json(200, &value);
        }
        ("POST", ["v1", "sagas"]) => match serde_json::from_str::<StartRequest>(&request.body) {
            Ok(start) => {
                let endpoints = start.steps.iter().flat_map(|s| {
                    std::iter::once(&s.action).chain(s.compensation.iter()).chain(s.confirm.iter())
                });
                for endpoint in endpoints {
                    if let Err(why) = access.step_hosts.allow(endpoint) {
                        return Response::error(400, &format!("invalid saga: {why}"));
                    }
                }
                Event::Start { request: start, answer: tx }
            }
            Err(e) => return Response::error(400, &format!("invalid saga: {e}")),
        },
        ("GET", ["v1", "sagas"]) => Event::List { target: request.target.clone(), answer: tx },
        ("GET", ["v1", "sagas", id]) => Event::Show { saga: (*id).to_string(), answer: tx },
        ("GET", ["metrics"]) => Event::Metrics { answer: tx },
        ("GET", ["v1", "cluster"]) => Event::Cluster { answer: tx },
        ("GET", ["v1", "history"]) => return Response::json(200, &access.history.json()),
        (method, _) => {
            return Response::error(404, &format!("no route for {method} {}", request.target))
        }
    };
    if api.send(event).await.is_err() {
        return Response::error(503, "the orchestrator is stopping");
    }
    rx.await.unwrap_or_else(|_| Response::error(503, "the orchestrator is stopping"))
}

/// The instant `after_us` from now, capped a year ahead: `Instant + Duration` panics on
/// overflow, and a timer that far out never fires in a process's life anyway.
fn deadline_after_us(after_us: u64) -> tokio::time::Instant {
    const YEAR_US: u64 = 365 * 24 * 3_600 * 1_000_000;
    tokio::time::Instant::now() + Duration::from_micros(after_us.min(YEAR_US))
}

/// Opens the log under the data directory and reads its records.
/// A log record that could not be read: its index, the saga it names (if that much can be
/// read), and why. Set aside and reported; the other records replay.
type Unreadable = (usize, Option<String>, String);

/// What the log held: the core's records, timeline entries, and what could not be read.
type Replay = (Storage, Vec<Record>, Vec<Call>, Vec<Unreadable>);

async fn open_log(options: &Options) -> Result<Replay, String> {
    let dir = &options.data_dir;
    let mut dir_lock = concord_wal::claim_data_dir(dir, IDENTITY)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let log_dir: PathBuf = Path::new(dir).join("log");
    let (dir_lock, log, raw) = tokio::task::spawn_blocking(move || {
        FileLog::open_claimed(&mut dir_lock, &log_dir, 64 << 20)
            .map(|(log, raw)| (dir_lock, log, raw))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let mut records = Vec::with_capacity(raw.len());
    let (mut calls, mut unreadable) = (Vec::new(), Vec::new());
    for (i, bytes) in raw.iter().enumerate() {
        match serde_json::from_slice::<Record>(bytes) {
            Ok(record) => records.push(record),
            Err(_) if serde_json::from_slice::<Frame>(bytes).is_ok() => {
                let Ok(Frame::Call(call)) = serde_json::from_slice::<Frame>(bytes) else {
                    unreachable!("just parsed")
                };
                calls.push(call);
            }
            Err(e) => {
                // The frame's checksum held, so these are the bytes that were written: a record
                // of another version, or one a bug wrote. Its saga is set aside, not guessed at.
                let saga = serde_json::from_slice::<serde_json::Value>(bytes).ok().and_then(|v| {
                    let body = v.as_object()?.values().next()?.clone();
                    body.get("saga")?.as_str().map(str::to_string)
                });
                eprintln!(
                    "concord saga: {}: log record {i} cannot be read ({e}); {}",
                    dir.display(),
                    saga.as_ref().map_or("it names no saga; skipped".to_string(), |s| format!(
                        "saga {s} is set aside as failed-to-drive"
                    ))
                );
                unreadable.push((i, saga, e.to_string()));
            }
        }
    }
    // The log thread holds the directory's lock until it has written all it was given.
    let log = Arc::new(GroupCommit::start_holding(log, dir_lock).map_err(|e| e.to_string())?);
    let storage = Storage::Log {
        log,
        since_checkpoint: 0,
        checkpoint_every: options.checkpoint_every.max(1),
    };
    Ok((storage, records, calls, unreadable))
}

/// Runs the orchestrator until `shutdown` turns true (or its log fails).
pub async fn serve(options: Options, mut shutdown: watch::Receiver<bool>) -> Result<(), String> {
    let (storage, records, calls, unreadable) = match &options.postgres {
        Some(pg) => {
            let store = PgStore::connect(&pg.url, &pg.instance, pg.lease).await?;
            let records = store.own().await?;
            let sagas: Vec<String> = records
                .iter()
                .filter(|r| matches!(r, Record::Started { .. }))
                .map(|r| r.saga().clone())
                .collect();
            let calls = store.calls(&sagas).await?;
            (Storage::Postgres(Arc::new(store)), records, calls, Vec::new())
        }
        None => open_log(&options).await?,
    };
    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
    let (internal, mut internal_rx) = mpsc::unbounded_channel();
    let (api, mut api_rx) = mpsc::channel(API_CAPACITY);
    if let Some(pg) = &options.postgres {
        let (internal, every) = (internal.clone(), pg.lease / 3);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if internal.send(Event::Sweep).is_err() {
                    return;
                }
            }
        });
    }
    let instance =
        options.postgres.as_ref().map_or(LOCAL_INSTANCE.to_string(), |pg| pg.instance.clone());
    let calls_out = match &storage {
        Storage::Postgres(store) => {
            let (out, changes) = mpsc::channel(CALLS_CAPACITY);
            tokio::spawn(write_timelines(Arc::clone(store), changes));
            Some(out)
        }
        Storage::Log { .. } => None,
    };
    let mut state = Loop {
        core: Orchestrator::new(),
        storage,
        internal,
        timelines: Timelines::new(&instance, now_us()),
        instance,
        calls_out,
        calls_dropped: 0,
        counters: Counters::default(),
        acks: HashMap::new(),
        finishes: HashMap::new(),
        next_id: 0,
        timers: concord_types::TimerHeap::default(),
        log_dir: options.postgres.is_none().then(|| Path::new(&options.data_dir).join("log")),
    };
    // A saga with an unreadable record is not driven from the rest of its records (that could
    // repeat or skip what the lost record said): it is set aside whole.
    let set_aside: std::collections::HashSet<&String> =
        unreadable.iter().filter_map(|(_, saga, _)| saga.as_ref()).collect();
    let records: Vec<Record> =
        records.into_iter().filter(|r| !set_aside.contains(r.saga())).collect();
    let started: Vec<Record> =
        records.iter().filter(|r| matches!(r, Record::Started { .. })).cloned().collect();
    let changes = state.timelines.load(calls);
    state.store_calls(changes)?;
    state.feed(Input::Restart { records, now_us: now_us() })?;
    state.report_parked(&started);
    for (index, saga, reason) in unreadable {
        if let Some(saga) = saga {
            state.core.set_aside(saga, format!("its log record {index} cannot be read: {reason}"));
        }
    }
    // Aborted when this function returns or its future is dropped (a killed task must not
    // leave its listener answering for a loop that is gone).
    let history = concord_console::History::new(options.console_sample, charts());
    tokio::spawn(sample_history(state.internal.clone(), Arc::clone(&history)));
    let access = Arc::new(Access {
        tokens: concord_types::tokens::TokenTable::new(&options.tokens),
        step_hosts: options.step_hosts.clone(),
        history,
    });
    let _server = AbortOnDrop(tokio::spawn(concord_http::serve(listener, move |request| {
        route(api.clone(), Arc::clone(&access), request)
    })));
    loop {
        let next = state.next_deadline();
        let due = async move {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            biased;
            _ = shutdown.changed() => break Ok(()),
            () = due => {
                if let Err(e) = state.fire_due() {
                    break Err(e);
                }
                continue;
            }
            Some(event) = internal_rx.recv() => event,
            Some(event) = api_rx.recv() => event,
        };
        if let Err(e) = state.on_event(event) {
            break Err(e);
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_values_are_rates_over_the_interval_and_gauges_now() {
        let before = Reading {
            counters: Counters { calls: 10, completed: 4, compensated: 1 },
            running: 9,
            timers: 20,
        };
        let after = Reading {
            counters: Counters { calls: 30, completed: 8, compensated: 2 },
            running: 3,
            timers: 6,
        };
        let values: HashMap<String, f64> = chart_values(&before, &after, 2.0).into_iter().collect();
        assert_eq!(values["calls_per_s"], 10.0);
        assert_eq!(values["completed_per_s"], 2.0);
        assert_eq!(values["compensated_per_s"], 0.5);
        assert_eq!(values["running"], 3.0);
        assert_eq!(values["timers"], 6.0);
        // Every value is drawn by a chart.
        let drawn: Vec<&str> = charts().iter().flat_map(|c| c.series.clone()).collect();
        assert!(values.keys().all(|k| drawn.contains(&k.as_str())), "{values:?}");
    }
}
