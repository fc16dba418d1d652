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
use std::sync::Mutex;

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
    gauges: Mutex<Gauges>,
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
