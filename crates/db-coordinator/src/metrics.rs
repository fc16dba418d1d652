//! Prometheus metrics of the database coordinator, rendered in the text exposition format.
//!
//! Counters and the latency histogram are atomics updated on the transaction path; gauges
//! (prepared branches, in-doubt transactions) are set by each reconciliation pass from what
//! the databases listed, so they show the databases' truth, not the coordinator's belief.
//!
//! Alert (docs/database-participants.md): a prepared branch older than a minute means a stuck
//! transaction — `max(concord_db_prepared_branch_max_age_seconds) > 60`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use concord_console::Chart;

/// Upper bounds of the latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS_S: [f64; 12] =
    [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];

#[derive(Debug, Default)]
pub struct Metrics {
    committed: AtomicU64,
    aborted: AtomicU64,
    unknown: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    heuristic_detected: AtomicU64,
    heuristic_forced: AtomicU64,
    recovery_commits: AtomicU64,
    recovery_rollbacks: AtomicU64,
    /// Aborts by their reason's class (a handful of fixed names).
    aborts: Mutex<BTreeMap<&'static str, u64>>,
    gauges: Mutex<Gauges>,
}

/// The counters at one moment, for the console's charts (rates come from two of them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub committed: u64,
    pub aborted: u64,
    pub unknown: u64,
    pub latency_buckets: Vec<u64>,
    pub latency_count: u64,
    pub aborts: BTreeMap<&'static str, u64>,
}

/// The console's charts of the database coordinator.
pub fn charts() -> Vec<Chart> {
    let chart = |title, unit, series: &[&'static str], prefix| Chart {
        title,
        unit,
        series: series.to_vec(),
        prefix,
    };
    vec![
        chart("Throughput", "txn/s", &["committed_per_s", "aborted_per_s", "unknown_per_s"], None),
        chart("Commit latency", "ms", &["p50_ms", "p99_ms"], None),
        chart("Aborts by reason", "/s", &[], Some("aborts_per_s.")),
        chart("In doubt", "transactions", &["in_doubt", "heuristic"], None),
        chart("Oldest prepared branch", "s", &["oldest_prepared_s"], None),
    ]
}

/// The chart values for the interval between two snapshots `seconds` apart.
pub fn chart_values(
    before: &Snapshot,
    after: &Snapshot,
    seconds: f64,
    gauges: &Gauges,
) -> Vec<(String, f64)> {
    #[allow(clippy::cast_precision_loss)] // counts per interval, far below 2^52
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds.max(0.001);
    let mut values = vec![
        ("committed_per_s".to_string(), rate(before.committed, after.committed)),
        ("aborted_per_s".to_string(), rate(before.aborted, after.aborted)),
        ("unknown_per_s".to_string(), rate(before.unknown, after.unknown)),
    ];
    let count = after.latency_count.saturating_sub(before.latency_count);
    for (name, q) in [("p50_ms", 0.5), ("p99_ms", 0.99)] {
        let bound = concord_console::quantile(
            &LATENCY_BUCKETS_S,
            &before.latency_buckets,
            &after.latency_buckets,
            count,
            q,
        );
        if let Some(bound) = bound.filter(|b| b.is_finite()) {
            values.push((name.to_string(), bound * 1_000.0));
        } else if bound.is_some() {
            // Past the last bucket: shown at the top bound, the chart says "≥".
            values
                .push((name.to_string(), LATENCY_BUCKETS_S[LATENCY_BUCKETS_S.len() - 1] * 1_000.0));
        }
    }
    for (reason, total) in &after.aborts {
        let was = before.aborts.get(reason).copied().unwrap_or(0);
        values.push((format!("aborts_per_s.{reason}"), rate(was, *total)));
    }
    #[allow(clippy::cast_precision_loss)] // gauge counts
    {
        values.push(("in_doubt".into(), gauges.in_doubt_transactions as f64));
        values.push(("heuristic".into(), gauges.heuristic_transactions as f64));
    }
    let oldest = gauges.prepared.values().map(|(_, age)| *age).fold(0.0, f64::max);
    values.push(("oldest_prepared_s".into(), oldest));
    values
}

/// What the last reconciliation pass saw.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    /// Per database: this coordinator's prepared branches and the oldest one's age (seconds;
    /// MariaDB does not report ages, so its age is how long reconciliation has seen it).
    pub prepared: BTreeMap<String, (u64, f64)>,
    pub in_doubt_transactions: u64,
    pub heuristic_transactions: u64,
    pub database_up: BTreeMap<String, bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    Aborted,
    Unknown,
}

impl Metrics {
    pub fn record_transaction(&self, outcome: Outcome, latency_us: u64) {
        let counter = match outcome {
            Outcome::Committed => &self.committed,
            Outcome::Aborted => &self.aborted,
            Outcome::Unknown => &self.unknown,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss)] // microseconds far below 2^52
        let seconds = latency_us as f64 / 1e6;
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS_S) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(latency_us, Ordering::Relaxed);
    }

    /// An abort's reason class (`voted-no`, `vote-timeout`, `database-refused`, `abandoned`,
    /// `begin-failed`).
    pub fn record_abort(&self, reason: &'static str) {
        *self.aborts.lock().unwrap_or_else(PoisonError::into_inner).entry(reason).or_insert(0) += 1;
    }

    pub fn snapshot(&self) -> Snapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            committed: load(&self.committed),
            aborted: load(&self.aborted),
            unknown: load(&self.unknown),
            latency_buckets: self.latency_buckets.iter().map(load).collect(),
            latency_count: load(&self.latency_count),
            aborts: self.aborts.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }

    pub fn record_heuristic(&self, forced: bool) {
        if forced { &self.heuristic_forced } else { &self.heuristic_detected }
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_recovery(&self, commit: bool) {
        if commit { &self.recovery_commits } else { &self.recovery_rollbacks }
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the heuristic-transaction gauge at once (the others wait for the next
    /// reconciliation pass): an operator's alert on it must not lag a detected contradiction.
    pub fn set_heuristic_transactions(&self, count: u64) {
        self.gauges.lock().expect("gauge holders do not panic").heuristic_transactions = count;
    }

    pub fn set_gauges(&self, gauges: Gauges) {
        *self.gauges.lock().expect("gauge holders do not panic") = gauges;
    }

    pub fn gauges(&self) -> Gauges {
        self.gauges.lock().expect("gauge holders do not panic").clone()
    }

    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let w = &mut out;
        help(
            w,
            "concord_db_transactions_total",
            "counter",
            "Transactions over real databases by protocol and outcome.",
        );
        for (outcome, counter) in
            [("committed", &self.committed), ("aborted", &self.aborted), ("unknown", &self.unknown)]
        {
            let _ = writeln!(
                w,
                "concord_db_transactions_total{{protocol=\"2pc\",outcome=\"{outcome}\"}} {}",
                load(counter)
            );
        }
        help(
            w,
            "concord_db_transaction_duration_seconds",
            "histogram",
            "From begin to the client's answer.",
        );
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS_S) {
            let _ = writeln!(w, "concord_db_transaction_duration_seconds_bucket{{protocol=\"2pc\",le=\"{bound}\"}} {}", load(bucket));
        }
        let count = load(&self.latency_count);
        let _ = writeln!(w, "concord_db_transaction_duration_seconds_bucket{{protocol=\"2pc\",le=\"+Inf\"}} {count}");
        #[allow(clippy::cast_precision_loss)] // a sum of microseconds, shown approximately
        let sum_s = load(&self.latency_sum_us) as f64 / 1e6;
        let _ =
            writeln!(w, "concord_db_transaction_duration_seconds_sum{{protocol=\"2pc\"}} {sum_s}");
        let _ = writeln!(
            w,
            "concord_db_transaction_duration_seconds_count{{protocol=\"2pc\"}} {count}"
        );
        help(
            w,
            "concord_db_aborts_total",
            "counter",
            "Aborted transactions by the class of their reason.",
        );
        for (reason, count) in self.aborts.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            let _ = writeln!(w, "concord_db_aborts_total{{reason=\"{reason}\"}} {count}");
        }
        help(
            w,
            "concord_db_heuristic_outcomes_total",
            "counter",
            "Branches whose outcome contradicts the logged decision.",
        );
        let _ = writeln!(
            w,
            "concord_db_heuristic_outcomes_total{{cause=\"detected\"}} {}",
            load(&self.heuristic_detected)
        );
        let _ = writeln!(
            w,
            "concord_db_heuristic_outcomes_total{{cause=\"operator\"}} {}",
            load(&self.heuristic_forced)
        );
        help(
            w,
            "concord_db_recovery_actions_total",
            "counter",
            "Branches finished by reconciliation.",
        );
        let _ = writeln!(
            w,
            "concord_db_recovery_actions_total{{action=\"commit\"}} {}",
            load(&self.recovery_commits)
        );
        let _ = writeln!(
            w,
            "concord_db_recovery_actions_total{{action=\"rollback\"}} {}",
            load(&self.recovery_rollbacks)
        );
        let gauges = self.gauges();
        help(
            w,
            "concord_db_in_doubt_transactions",
            "gauge",
            "This coordinator's transactions with a branch prepared or a decision not yet applied.",
        );
        let _ = writeln!(w, "concord_db_in_doubt_transactions {}", gauges.in_doubt_transactions);
        help(
            w,
            "concord_db_heuristic_transactions",
            "gauge",
            "Transactions with a recorded heuristic outcome.",
        );
        let _ = writeln!(w, "concord_db_heuristic_transactions {}", gauges.heuristic_transactions);
        help(
            w,
            "concord_db_prepared_branches",
            "gauge",
            "This coordinator's prepared branches per database.",
        );
        for (db, (count, _)) in &gauges.prepared {
            let _ = writeln!(w, "concord_db_prepared_branches{{database=\"{db}\"}} {count}");
        }
        help(
            w,
            "concord_db_prepared_branch_max_age_seconds",
            "gauge",
            "Age of the oldest prepared branch per database.",
        );
        for (db, (_, age)) in &gauges.prepared {
            let _ = writeln!(
                w,
                "concord_db_prepared_branch_max_age_seconds{{database=\"{db}\"}} {age}"
            );
        }
        help(
            w,
            "concord_db_up",
            "gauge",
            "Whether the last listing of the database's prepared branches succeeded.",
        );
        for (db, up) in &gauges.database_up {
            let _ = writeln!(w, "concord_db_up{{database=\"{db}\"}} {}", u8::from(*up));
        }
        out
    }
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_counts_outcomes_and_fills_cumulative_buckets() {
        let metrics = Metrics::default();
        metrics.record_transaction(Outcome::Committed, 1_500);
        metrics.record_transaction(Outcome::Aborted, 300_000);
        metrics.record_heuristic(false);
        let mut gauges = Gauges::default();
        gauges.prepared.insert("ledger".into(), (2, 61.5));
        metrics.set_gauges(gauges);
        let text = metrics.render();
        for line in [
            "concord_db_transactions_total{protocol=\"2pc\",outcome=\"committed\"} 1",
            "concord_db_transactions_total{protocol=\"2pc\",outcome=\"aborted\"} 1",
            "concord_db_transaction_duration_seconds_bucket{protocol=\"2pc\",le=\"0.001\"} 0",
            "concord_db_transaction_duration_seconds_bucket{protocol=\"2pc\",le=\"0.002\"} 1",
            "concord_db_transaction_duration_seconds_bucket{protocol=\"2pc\",le=\"0.5\"} 2",
            "concord_db_transaction_duration_seconds_bucket{protocol=\"2pc\",le=\"+Inf\"} 2",
            "concord_db_heuristic_outcomes_total{cause=\"detected\"} 1",
            "concord_db_prepared_branches{database=\"ledger\"} 2",
            "concord_db_prepared_branch_max_age_seconds{database=\"ledger\"} 61.5",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
    }

    #[test]
    fn chart_values_are_rates_and_percentiles_of_the_interval() {
        let metrics = Metrics::default();
        let before = metrics.snapshot();
        for _ in 0..9 {
            metrics.record_transaction(Outcome::Committed, 4_000); // ≤ 5 ms
        }
        metrics.record_transaction(Outcome::Aborted, 150_000); // ≤ 200 ms
        metrics.record_abort("voted-no");
        let after = metrics.snapshot();
        let mut gauges = Gauges::default();
        gauges.prepared.insert("a".into(), (1, 3.0));
        gauges.prepared.insert("b".into(), (1, 70.0));
        gauges.in_doubt_transactions = 2;
        let values: BTreeMap<String, f64> =
            chart_values(&before, &after, 2.0, &gauges).into_iter().collect();
        assert_eq!(values["committed_per_s"], 4.5);
        assert_eq!(values["aborted_per_s"], 0.5);
        assert_eq!(values["p50_ms"], 5.0);
        assert_eq!(values["p99_ms"], 200.0);
        assert_eq!(values["aborts_per_s.voted-no"], 0.5);
        assert_eq!(values["in_doubt"], 2.0);
        assert_eq!(values["oldest_prepared_s"], 70.0);
        // A quiet interval has no percentile to show.
        let quiet: BTreeMap<String, f64> =
            chart_values(&after, &after, 2.0, &gauges).into_iter().collect();
        assert!(!quiet.contains_key("p50_ms"));
        assert_eq!(quiet["committed_per_s"], 0.0);
        assert!(metrics.render().contains("concord_db_aborts_total{reason=\"voted-no\"} 1"));
    }

    /// The alert rules and the dashboard in `deploy/` name only database-coordinator metrics
    /// that `render` writes.
    #[test]
    fn every_database_metric_of_the_deploy_files_is_rendered() {
        let metrics = Metrics::default();
        let mut gauges = Gauges::default();
        gauges.prepared.insert("ledger".into(), (1, 1.0));
        gauges.database_up.insert("ledger".into(), true);
        metrics.set_gauges(gauges);
        let text = metrics.render();
        let mut checked = 0;
        for (file, source) in concord_testkit::deploy_files() {
            let names = concord_testkit::metric_names(&source);
            for name in names.into_iter().filter(|n| n.starts_with("concord_db_")) {
                let rendered = concord_testkit::serves_metric(&text, name);
                assert!(rendered, "{file} names `{name}`, which the coordinator does not render");
                checked += 1;
            }
        }
        assert!(checked >= 10, "the deploy files name database metrics: {checked}");
    }
}
