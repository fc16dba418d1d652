//! `concord sim …`: list scenarios, run one with its diagram, sweep random fault schedules.

use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use clap::Subcommand;
use concord_commit::naive::Naive;
use concord_commit::paxos_commit::PaxosCommit;
use concord_commit::three_phase::ThreePhase;
use concord_commit::two_phase::TwoPhase;
use concord_sim::compare::{self, percent, ProtocolResults};
use concord_sim::diagram;
use concord_sim::explore;
use concord_sim::optimizations::{self, Variant};
use concord_sim::report::RunReport;
use concord_sim::scenarios::{self, Scenario, Verdict};
use concord_sim::sweep::{sweep, SweepSummary};

/// Protocols the simulator can run, by their command-line names.
const PROTOCOLS: &[&str] = &["naive", "2pc", "3pc", "paxos-commit"];

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// List the named scenarios, one line each.
    Scenarios,
    /// The key-value store under faults: seeded runs of the bank or list-append workload,
    /// checked; `--history` writes the last run's list-append history in Elle's JSON format.
    Kv {
        /// bank or list-append.
        #[arg(long, default_value = "list-append")]
        workload: String,
        /// serializable or snapshot.
        #[arg(long, default_value = "serializable")]
        isolation: String,
        #[arg(long, default_value_t = 100)]
        runs: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// No crashes or partitions (loss, duplication and delays still vary).
        #[arg(long)]
        no_faults: bool,
        /// Commit through Paxos Commit (three acceptors) instead of 2PC.
        #[arg(long)]
        paxos_commit: bool,
        #[arg(long)]
        history: Option<std::path::PathBuf>,
    },
    /// Run one scenario: print its outcome and a message-sequence diagram.
    Run {
        /// naive, 2pc, 3pc or paxos-commit.
        #[arg(long)]
        protocol: String,
        /// A name from `concord sim scenarios`.
        #[arg(long)]
        scenario: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also write the diagram as SVG to this file.
        #[arg(long)]
        svg: Option<std::path::PathBuf>,
        /// Print the outcome only.
        #[arg(long)]
        no_diagram: bool,
        /// Write every event of the run, complete, as JSON to this file (docs/trace-format.md).
        #[arg(long)]
        trace_json: Option<std::path::PathBuf>,
    },
    /// Measure each optimisation switch (read-only, one-phase, group commit) on one fault-free
    /// workload: messages and forced log writes per transaction, commit latency.
    Optimizations {
        /// naive, 2pc, 3pc or paxos-commit.
        #[arg(long, default_value = "2pc")]
        protocol: String,
        #[arg(long, default_value_t = 1_000)]
        runs: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Run several protocols on the same seeded workloads and fault schedules, side by side.
    Compare {
        /// Comma-separated: naive, 2pc, 3pc, paxos-commit.
        #[arg(long, default_value = "2pc,3pc,paxos-commit")]
        protocols: String,
        /// `all`, `random` (the sweep's schedules), or a scenario name.
        #[arg(long, default_value = "all")]
        scenario: String,
        /// Runs per protocol and workload.
        #[arg(long, default_value_t = 1_000)]
        runs: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long)]
        json: bool,
        /// Also write a bar chart of blocking and atomicity violations.
        #[arg(long)]
        svg: Option<std::path::PathBuf>,
    },
    /// Model-check a protocol exhaustively for a small configuration; print a counterexample
    /// trace if agreement can break.
    Check {
        /// 2pc, 3pc or paxos-commit.
        #[arg(long)]
        protocol: String,
        #[arg(long, default_value_t = 3)]
        participants: u32,
        /// F: Paxos Commit runs 2F + 1 acceptors.
        #[arg(long, default_value_t = 1)]
        fault_tolerance: u32,
        /// Crashes allowed in a run (each crashed node may restart).
        #[arg(long, default_value_t = 1)]
        crashes: u8,
        /// Crashed nodes stay down (fail-stop) instead of restarting.
        #[arg(long)]
        no_restart: bool,
        /// Messages that may be lost.
        #[arg(long, default_value_t = 1)]
        losses: u8,
        /// Partitions allowed (each cuts the nodes in two for the rest of the run).
        #[arg(long, default_value_t = 0)]
        partitions: u8,
        /// Timer firings allowed.
        #[arg(long, default_value_t = 2)]
        timers: u8,
        /// `anytime` (asynchronous) or `quiescent` (synchronous: only when nothing else can happen).
        #[arg(long, default_value = "anytime")]
        timeouts: String,
        /// 2PC: acknowledge once every prepare is durable (early acknowledgement).
        #[arg(long)]
        early_ack: bool,
        /// 2PC: the coordinator sends FORGET after every finished transaction.
        #[arg(long)]
        forget: bool,
        /// The last participant refuses its write, so the transaction must abort.
        #[arg(long)]
        refuse: bool,
        /// Status queries a client may make at any moment (node 0 asks every participant; the
        /// verdict must agree with every decision).
        #[arg(long, default_value_t = 0)]
        status_probes: u8,
        /// 2PC: forgotten outcomes a participant keeps for status queries (0: none).
        #[arg(long, default_value_t = 0)]
        forgotten_kept: u32,
        #[arg(long, default_value_t = 20_000_000)]
        max_states: u64,
    },
    /// Draw a trace written by --trace-json (docs/trace-format.md): the text diagram, and SVG.
    Draw {
        trace_json: std::path::PathBuf,
        #[arg(long)]
        svg: Option<std::path::PathBuf>,
    },
    /// Re-run one randomized run of a sweep (a failing seed it printed) with its diagram.
    Replay {
        /// naive, 2pc, 3pc or paxos-commit.
        #[arg(long)]
        protocol: String,
        /// The run's seed, decimal or 0x-hex, as the sweep printed it.
        #[arg(long, value_parser = parse_seed)]
        seed: u64,
        #[arg(long)]
        svg: Option<std::path::PathBuf>,
        #[arg(long)]
        no_diagram: bool,
        /// Write every event of the run, complete, as JSON to this file (docs/trace-format.md).
        #[arg(long)]
        trace_json: Option<std::path::PathBuf>,
    },
    /// The database path (`db serve`'s protocol) against simulated SQL/XA databases under
    /// faults: coordinator crashes, database restarts, dropped connections, branches finished
    /// by hand. Exit non-zero on any violation.
    Databases {
        #[arg(long, default_value_t = 10_000)]
        runs: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run many randomized fault schedules; exit non-zero on any violation.
    Sweep {
        /// naive, 2pc, 3pc or paxos-commit.
        #[arg(long)]
        protocol: String,
        #[arg(long, default_value_t = 10_000)]
        runs: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Worker threads (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
}

/// `writeln!` into a `String`, which cannot fail.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

/// Writes a command's output in one go. A reader that went away (`| head`) is not an error.
fn emit(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}

fn parse_seed(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("'{text}' is not a seed (decimal or 0x-hex)"))
}

fn check_protocol(name: &str) -> Result<(), String> {
    if PROTOCOLS.contains(&name) {
        Ok(())
    } else {
        Err(format!("unknown protocol '{name}' (known: {})", PROTOCOLS.join(", ")))
    }
}

/// Calls `$body` with `$P` bound to the protocol type named by `$name`.
macro_rules! with_protocol {
    ($name:expr, $P:ident => $body:expr) => {
        match $name {
            "naive" => {
                type $P = Naive;
                $body
            }
            "2pc" => {
                type $P = TwoPhase;
                $body
            }
            "3pc" => {
                type $P = ThreePhase;
                $body
            }
            "paxos-commit" => {
                type $P = PaxosCommit;
                $body
            }
            other => unreachable!("protocol {other} was checked"),
        }
    };
}

pub fn run(command: SimCommand) -> Result<ExitCode, String> {
    match command {
        SimCommand::Scenarios => {
            let width = scenarios::ALL.iter().map(|s| s.name.len()).max().unwrap_or(0);
            let mut out = String::new();
            for s in scenarios::ALL {
                outln!(out, "{:width$}  {}", s.name, s.summary);
            }
            emit(&out);
            Ok(ExitCode::SUCCESS)
        }
        SimCommand::Kv { workload, isolation, runs, seed, no_faults, paxos_commit, history } => {
            let options = KvRuns { runs, seed, faults: !no_faults, paxos_commit };
            kv_runs(&workload, &isolation, &options, history.as_deref())
        }
        SimCommand::Run { protocol, scenario, seed, svg, no_diagram, trace_json } => {
            check_protocol(&protocol)?;
            let scenario = scenarios::find(&scenario).ok_or_else(|| {
                format!("unknown scenario '{scenario}' (run `concord sim scenarios` for the list)")
            })?;
            let report =
                with_protocol!(protocol.as_str(), P => scenarios::run::<P>(scenario, seed, true));
            write_trace_json(&report, trace_json.as_deref())?;
            run_output(scenario, &report, svg.as_deref(), no_diagram)
        }
        SimCommand::Compare { protocols, scenario, runs, seed, threads, json, svg } => {
            let protocols: Vec<&str> =
                protocols.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
            if protocols.is_empty() {
                return Err("--protocols needs at least one protocol".to_string());
            }
            for p in &protocols {
                check_protocol(p)?;
            }
            let workloads = compare::Workload::select(&scenario).ok_or_else(|| {
                format!("unknown scenario '{scenario}' (all, random, or one of `concord sim scenarios`)")
            })?;
            if runs == 0 {
                return Err("--runs must be at least 1".to_string());
            }
            let threads = threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            let bar = ProgressBar::new(protocols.len() as u64);
            let mut results = Vec::new();
            for (i, p) in protocols.iter().enumerate() {
                results.push(
                    with_protocol!(*p, P => compare::run::<P>(&workloads, runs, seed, threads)),
                );
                bar.show(i as u64 + 1);
            }
            bar.finish();
            let threshold_ms =
                concord_sim::SimConfig::new(0, 1, Vec::new()).blocked_threshold_us / 1000;
            if let Some(path) = svg {
                let title =
                    format!("Concord protocols compared: {runs} runs per workload, seed {seed}");
                std::fs::write(&path, compare::svg(&results, threshold_ms, &title))
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                eprintln!("chart written to {}", path.display());
            }
            emit(&compare_output(&results, runs, seed, threshold_ms, json));
            Ok(ExitCode::SUCCESS)
        }
        SimCommand::Check {
            protocol,
            participants,
            fault_tolerance,
            crashes,
            no_restart,
            losses,
            partitions,
            timers,
            timeouts,
            early_ack,
            forget,
            refuse,
            status_probes,
            forgotten_kept,
            max_states,
        } => {
            let timeouts = match timeouts.as_str() {
                "anytime" => explore::Timeouts::Anytime,
                "quiescent" => explore::Timeouts::WhenQuiescent,
                other => return Err(format!("--timeouts is anytime or quiescent, not '{other}'")),
            };
            check_protocol(&protocol)?;
            if protocol == "naive" {
                return Err("the naive protocol is not model-checked: the sweep breaks it already"
                    .to_string());
            }
            if participants == 0 {
                return Err("--participants must be at least 1".to_string());
            }
            let bounds = explore::Bounds {
                participants,
                fault_tolerance,
                crashes,
                restarts: !no_restart,
                losses,
                partitions,
                timer_fires: timers,
                timeouts,
                early_ack,
                forget,
                refuse,
                status_probes,
                forgotten_kept,
                max_states,
            };
            let started = Instant::now();
            let result = with_protocol!(protocol.as_str(), P => explore::explore::<P>(bounds));
            emit(&check_output(&protocol, &bounds, &result, started.elapsed().as_secs_f64()));
            Ok(if result.counterexample.is_none() && result.complete {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        SimCommand::Draw { trace_json, svg } => {
            let text = std::fs::read_to_string(&trace_json)
                .map_err(|e| format!("cannot read {}: {e}", trace_json.display()))?;
            let doc: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| format!("{}: not JSON: {e}", trace_json.display()))?;
            let trace = concord_sim::trace_json::from_json(&doc)
                .map_err(|e| format!("{}: {e}", trace_json.display()))?;
            let nodes = doc["nodes"].as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
            let title = format!(
                "{} · {} · seed {} · trace {}",
                trace_json.display(),
                doc["protocol"].as_str().unwrap_or("?"),
                doc["seed"],
                doc["trace_hash"].as_str().unwrap_or("?")
            );
            let mut out = diagram::text(&trace, nodes, &title);
            if let Some(path) = svg {
                std::fs::write(&path, diagram::svg(&trace, nodes, &title))
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                out += &format!("\ndiagram written to {}\n", path.display());
            }
            emit(&out);
            Ok(ExitCode::SUCCESS)
        }
        SimCommand::Replay { protocol, seed, svg, no_diagram, trace_json } => {
            check_protocol(&protocol)?;
            let mut config = concord_sim::sweep::random_config(seed);
            config.record_trace = true;
            let report = with_protocol!(protocol.as_str(), P => concord_sim::simulate::<P>(config));
            let title = format!("replay · {} · seed {seed:#x}", report.protocol);
            write_trace_json(&report, trace_json.as_deref())?;
            replay_output(&title, &report, svg.as_deref(), no_diagram)
        }
        SimCommand::Optimizations { protocol, runs, seed, json } => {
            check_protocol(&protocol)?;
            if runs == 0 {
                return Err("--runs must be at least 1".to_string());
            }
            let threads =
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            let results = with_protocol!(protocol.as_str(), P => optimizations::measure::<P>(seed, runs, threads));
            emit(&optimizations_output(&protocol, runs, seed, &results, json));
            let broken = results.iter().any(|(_, s)| s.failed_runs > 0);
            Ok(if broken { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        SimCommand::Databases { runs, seed } => {
            if runs == 0 {
                return Err("--runs must be at least 1".to_string());
            }
            let started = Instant::now();
            let total = concord_sim::databases::sweep_databases(seed, runs);
            let seconds = started.elapsed().as_secs_f64();
            #[allow(clippy::cast_precision_loss)] // counts far below 2^52
            let per_minute = total.transactions as f64 / seconds * 60.0;
            println!(
                "database path: {runs} runs (seed {seed}) in {seconds:.1} s, one thread\n\
                 transactions {} (committed {}, aborted {}, unanswered after a coordinator crash {})\n\
                 one-phase {}, read-only votes {}, calls {}, coordinator restarts {} ({} from a checkpoint)\n\
                 branches finished by hand {}, heuristic outcomes detected {}\n\
                 {per_minute:.0} simulated transactions per minute\n\
                 violations {}",
                total.transactions,
                total.committed,
                total.aborted,
                total.unanswered,
                total.one_phase,
                total.read_only_votes,
                total.calls,
                total.coordinator_restarts,
                total.checkpoints,
                total.heuristics_injected,
                total.heuristics_detected,
                total.violations.len()
            );
            for violation in total.violations.iter().take(20) {
                println!("  {violation}");
            }
            Ok(if total.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        SimCommand::Sweep { protocol, runs, seed, threads, json } => {
            check_protocol(&protocol)?;
            if runs == 0 {
                return Err("--runs must be at least 1".to_string());
            }
            let threads = threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            if threads == 0 {
                return Err("--threads must be at least 1".to_string());
            }
            let bar = ProgressBar::new(runs);
            let started = Instant::now();
            let summary = with_protocol!(protocol.as_str(), P => sweep::<P>(seed, runs, threads, &|done| bar.show(done)));
            bar.finish();
            let seconds = started.elapsed().as_secs_f64();
            emit(&sweep_output(&protocol, seed, threads, seconds, &summary, json));
            Ok(if summary.failed_runs == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

/// `--trace-json FILE`: the run's every event, as `concord_sim::trace_json` writes it.
fn write_trace_json(report: &RunReport, path: Option<&std::path::Path>) -> Result<(), String> {
    let Some(path) = path else { return Ok(()) };
    let doc = concord_sim::trace_json::to_json(report);
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn replay_output(
    title: &str,
    report: &RunReport,
    svg: Option<&std::path::Path>,
    no_diagram: bool,
) -> Result<ExitCode, String> {
    let mut out = String::new();
    let trace = report.trace.as_deref().unwrap_or(&[]);
    let nodes = node_count(report);
    if !no_diagram {
        outln!(out, "{}", diagram::text(trace, nodes, title));
    }
    if let Some(path) = svg {
        std::fs::write(path, diagram::svg(trace, nodes, title))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        outln!(out, "diagram written to {}", path.display());
    }
    outln!(out, "{title}: {} events, trace hash {:016x}", report.events, report.trace_hash);
    if report.violations.is_empty() {
        outln!(out, "violations: none");
    }
    for v in &report.violations {
        outln!(out, "violation {v}");
    }
    emit(&out);
    Ok(if report.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Lanes in a diagram: every node of the run, whatever it did.
fn node_count(report: &RunReport) -> u32 {
    report.nodes.max(report.participants + 1)
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

fn run_output(
    scenario: &Scenario,
    report: &RunReport,
    svg: Option<&std::path::Path>,
    no_diagram: bool,
) -> Result<ExitCode, String> {
    let mut out = String::new();
    let title = format!(
        "{} · {} · seed {} · trace {:016x}",
        scenario.name, report.protocol, report.seed, report.trace_hash
    );
    let trace = report.trace.as_deref().unwrap_or(&[]);
    let nodes = node_count(report);
    if !no_diagram {
        outln!(out, "{}", diagram::text(trace, nodes, &title));
    }
    if let Some(path) = svg {
        std::fs::write(path, diagram::svg(trace, nodes, &title))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        outln!(out, "diagram written to {}", path.display());
    }
    outln!(out, "{} — {}", scenario.name, scenario.summary);
    outln!(
        out,
        "protocol {}, seed {}, trace hash {:016x}",
        report.protocol,
        report.seed,
        report.trace_hash
    );
    let txns = report.txns();
    if txns.len() <= 5 {
        for txn in &txns {
            let who: Vec<String> =
                report.decisions_of(*txn).iter().map(|(n, d)| format!("{n} {d}")).collect();
            outln!(out, "  {txn}: {}", who.join(", "));
        }
        for d in &report.in_doubt {
            let state = if d.resolved { "" } else { " (unresolved)" };
            outln!(out, "  {} in doubt about {} for {}{state}", d.node, d.txn, ms(d.us));
        }
    }
    outln!(
        out,
        "  client: {} committed, {} aborted, {} never told; {} split across participants",
        report.committed,
        report.aborted,
        report.outcome_unknown,
        report.split_txns
    );
    outln!(
        out,
        "  {} messages ({} lost, {} duplicated), {} forced log writes, {} events, ended at {}",
        report.messages_sent,
        report.messages_lost,
        report.messages_duplicated,
        report.syncs,
        report.events,
        ms(report.end_us)
    );
    if report.txns_begun > 0 {
        let per_txn = |n: u64| n as f64 / report.txns_begun as f64;
        let mut latency = report.commit_latency_us.clone();
        latency.sort_unstable();
        let p50 = latency.get(latency.len() / 2).map_or_else(|| "-".to_string(), |&l| ms(l));
        outln!(
            out,
            "  per transaction: {:.1} messages, {:.1} forced log writes; commit latency p50 {p50}",
            per_txn(report.messages_sent),
            per_txn(report.syncs)
        );
    }
    if report.violations.is_empty() {
        outln!(out, "  violations: none");
    } else {
        outln!(out, "  violations: {}", report.violations.len());
        for v in report.violations.iter().take(10) {
            outln!(out, "    {v}");
        }
    }
    let verdict = (scenario.judge)(report.protocol, report);
    let ok = match &verdict {
        Verdict::Expected(words) => {
            outln!(out, "as expected: {words}");
            true
        }
        Verdict::Unexpected(words) => {
            outln!(out, "UNEXPECTED: {words}");
            false
        }
        Verdict::NoExpectation => {
            outln!(out, "(this scenario states no expected outcome for {})", report.protocol);
            report.violations.is_empty()
        }
    };
    emit(&out);
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn sweep_output(
    protocol: &str,
    seed: u64,
    threads: usize,
    seconds: f64,
    s: &SweepSummary,
    json: bool,
) -> String {
    let mut out = String::new();
    let txns_per_second = s.txns_begun as f64 / seconds.max(1e-9);
    let per_core = txns_per_second / threads as f64;
    if json {
        let failing: Vec<serde_json::Value> = s
            .failures
            .iter()
            .map(|(index, seed, v)| {
                serde_json::json!({"run": index, "seed": seed, "property": v.property, "detail": v.detail})
            })
            .collect();
        let value = serde_json::json!({
            "protocol": protocol,
            "seed": seed,
            "runs": s.runs,
            "violations": s.failed_runs,
            "failing_runs": failing,
            "blocked_runs": s.blocked_runs,
            "transactions": s.txns_begun,
            "committed": s.committed,
            "aborted": s.aborted,
            "outcome_unknown": s.outcome_unknown,
            "split_transactions": s.split_txns,
            "coordinator_elections": s.coordinator_elections,
            "messages_per_txn": s.messages_per_txn(),
            "forced_writes_per_txn": s.forced_writes_per_txn(),
            "commit_latency_p50_us": s.commit_latency_us.quantile(0.5),
            "commit_latency_p99_us": s.commit_latency_us.quantile(0.99),
            "blocking_time_p50": s.in_doubt_us.quantile(0.5),
            "blocking_time_p99": s.in_doubt_us.quantile(0.99),
            "blocking_time_max": s.in_doubt_us.max(),
            "blocking_time_unit": "us",
            "events": s.events,
            "threads": threads,
            "wall_seconds": seconds,
            "simulated_txns_per_second": txns_per_second,
            "simulated_txns_per_second_per_core": per_core,
        });
        outln!(out, "{value}");
        return out;
    }
    let pct = |a: u64| 100.0 * a as f64 / s.runs.max(1) as f64;
    outln!(out, "protocol              {protocol}");
    outln!(out, "runs                  {} (seed {seed})", s.runs);
    outln!(out, "runs with violations  {} ({:.3}%)", s.failed_runs, pct(s.failed_runs));
    outln!(out, "blocked runs          {} ({:.2}%)", s.blocked_runs, pct(s.blocked_runs));
    outln!(
        out,
        "transactions          {} begun: {} committed, {} aborted, {} outcome unknown to the client",
        s.txns_begun, s.committed, s.aborted, s.outcome_unknown
    );
    outln!(out, "split transactions    {}", s.split_txns);
    outln!(
        out,
        "coordinator elections {} (runs with the coordinator's log on 3 or 5 replicas)",
        s.coordinator_elections
    );
    outln!(out, "messages / txn        {:.2}", s.messages_per_txn());
    outln!(out, "forced writes / txn   {:.2}", s.forced_writes_per_txn());
    outln!(
        out,
        "commit latency        p50 {}, p99 {}",
        ms(s.commit_latency_us.quantile(0.5)),
        ms(s.commit_latency_us.quantile(0.99))
    );
    outln!(
        out,
        "in-doubt time         p50 {}, p99 {}, max {}",
        ms(s.in_doubt_us.quantile(0.5)),
        ms(s.in_doubt_us.quantile(0.99)),
        ms(s.in_doubt_us.max())
    );
    outln!(
        out,
        "speed                 {:.0} simulated txns/s on {threads} threads ({:.0}/s per core, {:.1} M/min per core), {:.1} s",
        txns_per_second,
        per_core,
        per_core * 60.0 / 1e6,
        seconds
    );
    const SHOWN: usize = 10;
    for (index, seed, v) in s.failures.iter().take(SHOWN) {
        outln!(out, "FAILING run {index} seed {seed:#x}: {v}");
    }
    let shown = s.failures.len().min(SHOWN) as u64;
    if s.failed_runs > shown {
        outln!(out, "… and {} more failing runs (--json lists up to 100)", s.failed_runs - shown);
    }
    out
}

fn check_output(
    protocol: &str,
    b: &explore::Bounds,
    r: &explore::Exploration,
    seconds: f64,
) -> String {
    let mut out = String::new();
    outln!(
        out,
        "{protocol}{}{}: {} participants, F = {}, up to {} crash(es){}, {} lost message(s), {} partition(s), {} timer firing(s) {}",
        match (b.early_ack, b.forget) {
            (false, false) => "",
            (true, false) => " (early acknowledgement)",
            (false, true) => " (forgetting)",
            (true, true) => " (early acknowledgement, forgetting)",
        },
        match (b.refuse, b.status_probes) {
            (false, 0) => String::new(),
            (true, 0) => ", the last participant refusing".to_string(),
            (false, n) => format!(", {n} status quer(ies)"),
            (true, n) => format!(", the last participant refusing, {n} status quer(ies)"),
        },
        b.participants,
        b.fault_tolerance,
        b.crashes,
        if b.restarts { " with restart" } else { " (fail-stop)" },
        b.losses,
        b.partitions,
        b.timer_fires,
        match b.timeouts {
            explore::Timeouts::Anytime => "at any time",
            explore::Timeouts::WhenQuiescent => "only when quiescent",
        }
    );
    outln!(
        out,
        "explored {} distinct states, {} transitions, depth {} in {seconds:.1} s",
        r.states,
        r.transitions,
        r.max_depth
    );
    match (&r.counterexample, r.complete) {
        (Some(c), _) => {
            outln!(out, "COUNTEREXAMPLE — {}", c.property);
            for (i, step) in c.steps.iter().enumerate() {
                outln!(out, "{:>4}. {step}", i + 1);
            }
        }
        (None, true) => outln!(out, "agreement holds in every reachable state"),
        (None, false) => outln!(out, "INCOMPLETE: stopped at --max-states {}", b.max_states),
    }
    out
}

fn compare_output(
    results: &[ProtocolResults],
    runs: u64,
    seed: u64,
    threshold_ms: u64,
    json: bool,
) -> String {
    let mut out = String::new();
    if json {
        let protocols: Vec<serde_json::Value> = results
            .iter()
            .map(|r| {
                let workloads: Vec<serde_json::Value> = r
                    .workloads
                    .iter()
                    .map(|(name, runs, s)| {
                        serde_json::json!({
                            "workload": name,
                            "runs": runs,
                            "transactions": s.txns_begun,
                            "blocked_runs": s.blocked_runs,
                            "blocked_share": percent(s.blocked_runs, *runs) / 100.0,
                            "runs_with_violations": s.failed_runs,
                            "split_transactions": s.split_txns,
                            "forced_writes_per_txn": s.forced_writes_per_txn(),
                            "messages_per_txn": s.messages_per_txn(),
                            "commit_latency_p50_us": s.commit_latency_us.quantile(0.5),
                            "commit_latency_p99_us": s.commit_latency_us.quantile(0.99),
                            "in_doubt_p50_us": s.in_doubt_us.quantile(0.5),
                            "in_doubt_p99_us": s.in_doubt_us.quantile(0.99),
                            "in_doubt_max_us": s.in_doubt_us.max(),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "protocol": r.protocol,
                    "happy_path": {
                        "participants": 3,
                        "fault_tolerance": 1,
                        "messages": r.happy_path.messages,
                        "message_delays": r.happy_path.message_delays,
                        "forced_writes": r.happy_path.forced_writes,
                    },
                    "workloads": workloads,
                })
            })
            .collect();
        let value = serde_json::json!({"runs": runs, "seed": seed, "blocked_threshold_ms": threshold_ms, "protocols": protocols});
        outln!(out, "{value}");
        return out;
    }
    outln!(out, "happy path: one transaction, 3 participants, F = 1, no faults");
    outln!(
        out,
        "{:<14} {:>9} {:>15} {:>14}",
        "protocol",
        "messages",
        "message delays",
        "forced writes"
    );
    for r in results {
        let h = r.happy_path;
        outln!(
            out,
            "{:<14} {:>9} {:>15} {:>14}",
            r.protocol,
            h.messages,
            h.message_delays,
            h.forced_writes
        );
    }
    let Some(first) = results.first() else { return out };
    for (w, (name, runs, _)) in first.workloads.iter().enumerate() {
        outln!(out, "\n{name} — {runs} runs per protocol (seed {seed}); blocked = a participant in doubt > {threshold_ms} ms");
        outln!(
            out,
            "{:<14} {:>8} {:>11} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "protocol",
            "blocked",
            "violations",
            "split",
            "forced/txn",
            "commit p50",
            "commit p99",
            "doubt p50",
            "doubt p99",
            "doubt max"
        );
        for r in results {
            let Some((_, runs, s)) = r.workloads.get(w) else { continue };
            outln!(
                out,
                "{:<14} {:>7.2}% {:>10.3}% {:>6} {:>10.2} {:>10} {:>10} {:>10} {:>10} {:>10}",
                r.protocol,
                percent(s.blocked_runs, *runs),
                percent(s.failed_runs, *runs),
                s.split_txns,
                s.forced_writes_per_txn(),
                ms(s.commit_latency_us.quantile(0.5)),
                ms(s.commit_latency_us.quantile(0.99)),
                ms(s.in_doubt_us.quantile(0.5)),
                ms(s.in_doubt_us.quantile(0.99)),
                ms(s.in_doubt_us.max())
            );
        }
    }
    out
}

fn optimizations_output(
    protocol: &str,
    runs: u64,
    seed: u64,
    results: &[(Variant, SweepSummary)],
    json: bool,
) -> String {
    let mut out = String::new();
    if json {
        let rows: Vec<serde_json::Value> = results
            .iter()
            .map(|(v, s)| {
                serde_json::json!({
                    "variant": v.name,
                    "read_only": v.switches.read_only,
                    "one_phase": v.switches.one_phase,
                    "group_commit": v.group_commit,
                    "transactions": s.txns_begun,
                    "violations": s.failed_runs,
                    "messages_per_txn": s.messages_per_txn(),
                    "forced_writes_per_txn": s.forced_writes_per_txn(),
                    "commit_latency_p50_us": s.commit_latency_us.quantile(0.5),
                    "commit_latency_p99_us": s.commit_latency_us.quantile(0.99),
                })
            })
            .collect();
        let value =
            serde_json::json!({"protocol": protocol, "runs": runs, "seed": seed, "variants": rows});
        outln!(out, "{value}");
        return out;
    }
    let Some((_, base)) = results.first() else { return out };
    outln!(
        out,
        "protocol {protocol}, {runs} runs of 50 transactions each (seed {seed}), no faults"
    );
    outln!(
        out,
        "{:<16} {:>9} {:>8} {:>13} {:>8} {:>11} {:>11} {:>10}",
        "switches",
        "msgs/txn",
        "vs base",
        "forced/txn",
        "vs base",
        "commit p50",
        "commit p99",
        "violations"
    );
    for (v, s) in results {
        outln!(
            out,
            "{:<16} {:>9.2} {:>7.0}% {:>13.3} {:>7.0}% {:>11} {:>11} {:>10}",
            v.name,
            s.messages_per_txn(),
            100.0 * s.messages_per_txn() / base.messages_per_txn().max(1e-9),
            s.forced_writes_per_txn(),
            100.0 * s.forced_writes_per_txn() / base.forced_writes_per_txn().max(1e-9),
            ms(s.commit_latency_us.quantile(0.5)),
            ms(s.commit_latency_us.quantile(0.99)),
            s.failed_runs
        );
    }
    out
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
struct ProgressBar {
    total: u64,
    enabled: bool,
    last_drawn: Mutex<u64>,
}

impl ProgressBar {
    fn new(total: u64) -> Self {
        ProgressBar { total, enabled: std::io::stderr().is_terminal(), last_drawn: Mutex::new(0) }
    }

    fn show(&self, done: u64) {
        if !self.enabled {
            return;
        }
        let mut last =
            self.last_drawn.lock().expect("progress lock is never poisoned: drawing cannot panic");
        if done < *last {
            return;
        }
        *last = done;
        const WIDTH: u64 = 40;
        let filled = usize::try_from(done * WIDTH / self.total.max(1)).expect("at most 40");
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r[{}{}] {done}/{} runs",
            "#".repeat(filled),
            " ".repeat(40 - filled),
            self.total
        );
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.enabled {
            eprintln!();
        }
    }
}

// The simulator's scenario names are part of the command-line interface.
struct KvRuns {
    runs: u64,
    seed: u64,
    faults: bool,
    paxos_commit: bool,
}

/// `concord sim kv`: seeded runs of a key-value workload, each checked.
fn kv_runs(
    workload: &str,
    isolation: &str,
    options: &KvRuns,
    history: Option<&std::path::Path>,
) -> Result<ExitCode, String> {
    let KvRuns { runs, seed, .. } = *options;
    use concord_sim::kv::{simulate_kv, KvSimConfig, KvWorkload};
    let workload = match workload {
        "bank" => KvWorkload::Bank,
        "list-append" => KvWorkload::ListAppend,
        other => return Err(format!("--workload {other}: expected bank or list-append")),
    };
    let isolation: concord_kv::Isolation = isolation.parse()?;
    let (mut committed, mut failed, mut unknown, mut crashes, mut failing) = (0, 0, 0, 0, 0);
    let mut last = None;
    for i in 0..runs {
        let mut config = KvSimConfig::new(seed + i, workload);
        config.isolation = isolation;
        config.faults = options.faults;
        config.paxos_commit = options.paxos_commit;
        let report = simulate_kv(&config);
        committed += report.committed;
        failed += report.failed;
        unknown += report.indeterminate;
        crashes += report.crashes;
        let problems = report.problems(&config);
        if !problems.is_empty() {
            failing += 1;
            if failing <= 3 {
                println!("seed {}: {}", seed + i, problems.join("; "));
            }
        }
        last = Some(report);
    }
    if let (Some(path), Some(report)) = (history, &last) {
        std::fs::write(path, report.history.to_elle_json())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("history of seed {} written to {} (Elle JSON)", seed + runs - 1, path.display());
    }
    println!(
        "{runs} runs ({isolation}, {}): {committed} committed, {failed} refused or failed, {unknown} unknown, {crashes} crashes; {failing} runs with anomalies",
        if options.paxos_commit { "Paxos Commit" } else { "2PC" }
    );
    Ok(if failing == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_commit::Protocol;

    #[test]
    fn unknown_protocol_is_a_one_line_error() {
        let err = check_protocol("4pc").unwrap_err();
        assert_eq!(err, "unknown protocol '4pc' (known: naive, 2pc, 3pc, paxos-commit)");
    }

    #[test]
    fn protocol_names_match_the_cores() {
        assert_eq!(PROTOCOLS, &[Naive::NAME, TwoPhase::NAME, ThreePhase::NAME, PaxosCommit::NAME]);
    }
}
