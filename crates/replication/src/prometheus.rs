//! The replicated log's Prometheus series, the same on every service that runs a replica (a
//! node's coordinator, the database coordinator), so one dashboard and one set of alerts fit
//! both.

use std::fmt::Write as _;

use crate::{Replica, COMMIT_BUCKETS_S};

/// A histogram in Prometheus text: `buckets` per bound of `bounds` (not cumulative), then the
/// overflow.
pub fn write_histogram(
    out: &mut String,
    name: &str,
    help: &str,
    labels: &str,
    (bounds, buckets): (&[f64], &[u64]),
    sum: f64,
    count: u64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (le, n) in bounds.iter().zip(buckets) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

impl<M: crate::Machine> Replica<M> {
    /// This replica's series, labelled `labels`; `leading`: its protocol core runs (it leads
    /// and has recovered from the log — openraft may call it leader before, or after a
    /// partition cut it off).
    pub fn prometheus(&self, labels: &str, leading: bool) -> String {
        let stats = self.stats();
        let status = &stats.status;
        let mut out = String::new();
        let mut gauge = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{labels}}} {value}"
            );
        };
        gauge(
            "concord_replica_term",
            "gauge",
            "The replicated log's current term.",
            status.term.to_string(),
        );
        gauge(
            "concord_replica_leading",
            "gauge",
            "1 if this coordinator replica leads and its core runs.",
            u8::from(leading).to_string(),
        );
        gauge(
            "concord_replica_leader_changes_total",
            "counter",
            "Leader changes this replica saw since it started.",
            stats.leader_changes.to_string(),
        );
        gauge(
            "concord_replica_voters",
            "gauge",
            "Voting replicas in the configuration this replica knows (fewer than configured: \
             one was removed, or a joining one not yet added).",
            self.voters().len().to_string(),
        );
        gauge(
            "concord_replica_last_log_index",
            "gauge",
            "The last entry in this replica's log.",
            status.last_log_index.unwrap_or(0).to_string(),
        );
        gauge(
            "concord_replica_applied_index",
            "gauge",
            "The last entry this replica applied (committed).",
            status.applied_index.unwrap_or(0).to_string(),
        );
        if status.is_leader {
            let name = "concord_replica_lag_entries";
            let _ = writeln!(
                out,
                "# HELP {name} On the leader: entries each replica's log is behind the leader's.\n# TYPE {name} gauge"
            );
            let last = status.last_log_index.unwrap_or(0);
            for (replica, matched) in &status.matched {
                let lag = last.saturating_sub(matched.unwrap_or(0));
                let _ = writeln!(out, "{name}{{{labels},replica=\"{replica}\"}} {lag}");
            }
            let name = "concord_replica_last_contact_seconds";
            let _ = writeln!(
                out,
                "# HELP {name} On the leader: seconds since each other replica last answered it (absent: never since it started).\n# TYPE {name} gauge"
            );
            for (replica, ms) in &stats.last_contact_ms {
                let seconds = *ms as f64 / 1000.0;
                let _ = writeln!(out, "{name}{{{labels},replica=\"{replica}\"}} {seconds}");
            }
        }
        let latency = &stats.commit_latency;
        write_histogram(
            &mut out,
            "concord_replica_commit_seconds",
            "From an entry's submission to its commit on a majority, while leading.",
            labels,
            (&COMMIT_BUCKETS_S, &latency.buckets),
            latency.sum_s,
            latency.count,
        );
        out
    }
}
