//! Many runs with randomized fault schedules: the search for a seed that breaks a property.
//!
//! Each run has a **safety phase** — crashes and restarts of any node (acceptors included, up to
//! F + 1 of them, with F drawn from 1..=2) at random moments,
//! partitions, message loss and duplication, torn log tails, optimisations switched on and off
//! at random — then a **liveness phase**: faults stop, every node restarts, and everything must
//! resolve within a bound. Run `i` of a sweep seeded `S` uses seed `run_seed(S, i)`, printed when
//! it fails, and `concord sim replay --seed` reproduces it exactly.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};

use concord_commit::{Protocol, Switches};
use concord_types::NodeId;

use crate::config::{
    DiskConfig, FaultAction, NetworkConfig, ScheduledFault, SimConfig, COORDINATOR,
};
use crate::histogram::Histogram;
use crate::invariants::Violation;
use crate::report::RunReport;
use crate::rng::{run_seed, Rng};
use crate::workload::{random, WorkloadShape};

/// How long faults are injected in each run.
pub const FAULT_WINDOW_US: u64 = 100_000;
/// Failing seeds kept for printing; the count of failures is always exact.
pub const MAX_FAILURES_KEPT: usize = 100;

/// The randomized configuration of the run with this seed.
pub fn random_config(seed: u64) -> SimConfig {
    // A stream of its own, so the shape of a run and the engine's choices are independent.
    let mut rng = Rng::new(seed ^ 0xC0FF_EE00_D15E_A5E5);
    let participants = u32::try_from(rng.range(2, 4)).expect("small");
    let shape = WorkloadShape {
        txns: u32::try_from(rng.range(3, 10)).expect("small"),
        window_us: FAULT_WINDOW_US,
        keys: 4,
        read_only_rate: 0.15,
        refused_rate: 0.05,
    };
    let workload = random(&mut rng, participants, &shape);
    let mut config = SimConfig::new(seed, participants, workload);
    config.switches = Switches {
        read_only: rng.chance(0.7),
        one_phase: rng.chance(0.7),
        cooperative_termination: rng.chance(0.7),
        // Drawn last (below), so the rest of every seed's schedule is unchanged.
        early_ack: false,
        forget: false,
        forgotten_kept: 0,
    };
    config.disk = DiskConfig {
        fsync_us: rng.range(100, 500),
        group_commit: rng.chance(0.5),
        torn_writes: true,
    };
    config.network = NetworkConfig {
        delay_min_us: 100,
        delay_max_us: rng.range(200, 3_000),
        drop_rate: *rng.pick(&[0.0, 0.0, 0.01, 0.05, 0.1]),
        duplicate_rate: *rng.pick(&[0.0, 0.0, 0.01, 0.05, 0.2]),
        long_delay_rate: *rng.pick(&[0.0, 0.01, 0.05, 0.2]),
        long_delay_max_us: rng.range(10_000, 200_000),
    };
    // F for protocols with acceptors; their 2F + 1 acceptors come after the participants. Other
    // protocols have no such nodes, and faults aimed at them are no faults for those protocols.
    config.fault_tolerance = u32::try_from(rng.range(1, 2)).expect("small");
    let acceptors = 2 * config.fault_tolerance + 1;
    let nodes = participants + 1 + acceptors;
    for _ in 0..rng.range(0, 3) {
        let node = if rng.chance(0.4) {
            COORDINATOR
        } else {
            NodeId(u32::try_from(rng.range(1, u64::from(participants))).expect("small"))
        };
        let at_us = rng.below(FAULT_WINDOW_US);
        let down_us = rng.range(1_000, 50_000);
        config.faults.push(ScheduledFault { at_us, action: FaultAction::Crash(node) });
        config
            .faults
            .push(ScheduledFault { at_us: at_us + down_us, action: FaultAction::Restart(node) });
    }
    // Acceptor crashes: up to F + 1 of them, so sometimes a majority is gone for a while.
    for _ in 0..rng.range(0, u64::from(config.fault_tolerance) + 1) {
        let k = u32::try_from(rng.below(u64::from(acceptors))).expect("small");
        let node = NodeId(participants + 1 + k);
        let at_us = rng.below(FAULT_WINDOW_US);
        let down_us = rng.range(1_000, 50_000);
        config.faults.push(ScheduledFault { at_us, action: FaultAction::Crash(node) });
        let restart = ScheduledFault { at_us: at_us + down_us, action: FaultAction::Restart(node) };
        config.faults.push(restart);
    }
    for _ in 0..rng.range(0, 2) {
        // A random proper, non-empty subset of the nodes on one side.
        let mask = rng.range(1, (1u64 << nodes) - 2);
        let side = (0..nodes).filter(|i| mask & (1 << i) != 0).map(NodeId).collect();
        let at_us = rng.below(FAULT_WINDOW_US);
        let lasts_us = rng.range(1_000, 50_000);
        config.faults.push(ScheduledFault { at_us, action: FaultAction::Partition(side) });
        config
            .faults
            .push(ScheduledFault { at_us: at_us + lasts_us, action: FaultAction::HealPartition });
    }
    config.heal_at_us = FAULT_WINDOW_US + 60_000;
    config.switches.early_ack = rng.chance(0.5);
    config.switches.forget = rng.chance(0.5);
    // Status answers from memory (the newest decisions kept) and from none at all.
    config.switches.forgotten_kept = *rng.pick(&[0, 1, 100_000]);
    config.status_probes = true;
    config.reservations = true;
    // Half the runs put the coordinator's log on replicas (issue 21): a crashed coordinator is
    // replaced by an elected replica with the majority-committed log. Drawn last, so the rest of
    // every seed's schedule is as before.
    config.coordinator_replicas = *rng.pick(&[1, 1, 3, 5]);
    config
}

/// Totals over a sweep.
#[derive(Debug, Clone, Default)]
pub struct SweepSummary {
    pub runs: u64,
    /// Runs with at least one violation.
    pub failed_runs: u64,
    /// Up to [`MAX_FAILURES_KEPT`] failing seeds, lowest run index first, with their first violation.
    pub failures: Vec<(u64, u64, Violation)>,
    pub blocked_runs: u64,
    pub txns_begun: u64,
    pub committed: u64,
    pub aborted: u64,
    pub outcome_unknown: u64,
    pub split_txns: u64,
    pub messages_sent: u64,
    pub syncs: u64,
    pub events: u64,
    /// Status queries sent by the prober, and the verdicts that were FORGOTTEN.
    pub status_probes: u64,
    pub status_forgotten: u64,
    /// Leaders elected after a coordinator crash, in runs with a replicated coordinator log.
    pub coordinator_elections: u64,
    pub commit_latency_us: Histogram,
    pub in_doubt_us: Histogram,
}

impl SweepSummary {
    fn add(&mut self, index: u64, report: &RunReport) {
        self.runs += 1;
        if let Some(first) = report.violations.first() {
            self.failed_runs += 1;
            self.failures.push((index, report.seed, first.clone()));
            self.failures.sort_by_key(|(i, _, _)| *i);
            self.failures.truncate(MAX_FAILURES_KEPT);
        }
        self.blocked_runs += u64::from(report.blocked);
        self.txns_begun += report.txns_begun;
        self.committed += report.committed;
        self.aborted += report.aborted;
        self.outcome_unknown += report.outcome_unknown;
        self.split_txns += report.split_txns;
        self.messages_sent += report.messages_sent;
        self.syncs += report.syncs;
        self.events += report.events;
        self.status_probes += report.status_probes;
        self.status_forgotten += report.status_forgotten;
        self.coordinator_elections += u64::from(report.coordinator_elections);
        for &l in &report.commit_latency_us {
            self.commit_latency_us.record(l);
        }
        for d in &report.in_doubt {
            self.in_doubt_us.record(d.us);
        }
    }

    fn merge(&mut self, other: SweepSummary) {
        self.runs += other.runs;
        self.failed_runs += other.failed_runs;
        self.failures.extend(other.failures);
        self.failures.sort_by_key(|(i, _, _)| *i);
        self.failures.truncate(MAX_FAILURES_KEPT);
        self.blocked_runs += other.blocked_runs;
        self.txns_begun += other.txns_begun;
        self.committed += other.committed;
        self.aborted += other.aborted;
        self.outcome_unknown += other.outcome_unknown;
        self.split_txns += other.split_txns;
        self.messages_sent += other.messages_sent;
        self.syncs += other.syncs;
        self.events += other.events;
        self.status_probes += other.status_probes;
        self.status_forgotten += other.status_forgotten;
        self.coordinator_elections += other.coordinator_elections;
        self.commit_latency_us.merge(&other.commit_latency_us);
        self.in_doubt_us.merge(&other.in_doubt_us);
    }

    pub fn messages_per_txn(&self) -> f64 {
        ratio(self.messages_sent, self.txns_begun)
    }

    pub fn forced_writes_per_txn(&self) -> f64 {
        ratio(self.syncs, self.txns_begun)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Runs one randomized run, turning a panic in a core into a violation of its own.
pub fn run_one<P: Protocol>(seed: u64) -> RunReport {
    run_config::<P>(random_config(seed))
}

/// Runs one configuration, turning a panic in a core into a violation of its own.
pub fn run_config<P: Protocol>(config: SimConfig) -> RunReport {
    let seed = config.seed;
    catch_unwind(AssertUnwindSafe(|| crate::simulate::<P>(config))).unwrap_or_else(|panic| {
        let detail = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
            .unwrap_or_else(|| "a core panicked".to_string());
        RunReport {
            seed,
            protocol: P::NAME,
            violations: vec![Violation { property: "panic", at_us: 0, detail }],
            ..RunReport::default()
        }
    })
}

/// Runs `runs` randomized runs on `threads` threads. `progress` is called now and then with the
/// number of runs finished. The summary does not depend on the number of threads.
pub fn sweep<P: Protocol>(
    seed: u64,
    runs: u64,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> SweepSummary {
    sweep_configs::<P>(seed, runs, threads, &random_config, progress)
}

/// Like [`sweep`], with run `i`'s configuration made by `make(run_seed(seed, i))`.
pub fn sweep_configs<P: Protocol>(
    seed: u64,
    runs: u64,
    threads: usize,
    make: &(dyn Fn(u64) -> SimConfig + Sync),
    progress: &(dyn Fn(u64) + Sync),
) -> SweepSummary {
    let threads = threads.max(1) as u64;
    let done = AtomicU64::new(0);
    let partials: Vec<SweepSummary> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let done = &done;
                scope.spawn(move || {
                    let mut summary = SweepSummary::default();
                    let mut index = t;
                    while index < runs {
                        let report = run_config::<P>(make(run_seed(seed, index)));
                        summary.add(index, &report);
                        let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if finished.is_multiple_of(1_000) || finished == runs {
                            progress(finished);
                        }
                        index += threads;
                    }
                    summary
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("sweep threads catch core panics")).collect()
    });
    let mut total = SweepSummary::default();
    for p in partials {
        total.merge(p);
    }
    total
}
