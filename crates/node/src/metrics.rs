//! A node's Prometheus metrics: `GET /metrics` (and `GET /health`) on the node's `metrics`
//! address (`[[node]] metrics = "127.0.0.1:9464"`), served by axum.
//!
//! Every node reports its log (records, syncs, checkpoints), its transactions in flight, the
//! messages it dropped for full outboxes and the decisions it remembers; a shard adds the
//! branches it holds prepared (in doubt until the decision reaches it) and the commits an
//! accepted data loss cost it; a coordinator adds its outcomes (committed, aborted) and how
//! long each transaction took from its start to its outcome. Every sample is taken on the
//! node's own loop, like `concord` status answers, so a reading is one consistent moment.
//! `/metrics` and `/health` carry counts only — no keys, values or ids — and need no token: bind
//! the address to loopback or a monitoring network. The coordinator also serves its console
//! there (`/ui` and the JSON APIs of `crate::console`), whose APIs take the cluster's tokens.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use concord_types::Decision;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::engine::Engine;
use crate::service::Handle;

/// Upper bounds (seconds) of the commit-latency histogram's buckets.
pub(crate) const LATENCY_BUCKETS_S: [f64; 12] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// A coordinator's outcomes since its start.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Outcomes {
    pub(crate) committed: u64,
    pub(crate) aborted: u64,
    /// Per bucket of [`LATENCY_BUCKETS_S`] (not cumulative), then the overflow.
    pub(crate) latency_buckets: [u64; LATENCY_BUCKETS_S.len() + 1],
    latency_sum_s: f64,
    pub(crate) latency_count: u64,
    /// Aborts by why: `voted-no`, `vote-timeout` (a branch never voted), `aborted`.
    pub(crate) aborts: BTreeMap<&'static str, u64>,
}

impl Outcomes {
    /// An outcome, and how long its transaction took (unknown for one this node did not start,
    /// e.g. finished after a restart).
    pub(crate) fn record(&mut self, decision: Decision, took: Option<Duration>) {
        match decision {
            Decision::Commit => self.committed += 1,
            Decision::Abort => self.aborted += 1,
        }
        if let Some(took) = took {
            let seconds = took.as_secs_f64();
            let bucket = LATENCY_BUCKETS_S
                .iter()
                .position(|&le| seconds <= le)
                .unwrap_or(LATENCY_BUCKETS_S.len());
            self.latency_buckets[bucket] += 1;
            self.latency_sum_s += seconds;
            self.latency_count += 1;
        }
    }

    /// Why an aborted transaction aborted (after [`Outcomes::record`]).
    pub(crate) fn record_abort(&mut self, reason: &'static str) {
        *self.aborts.entry(reason).or_default() += 1;
    }
}

/// One reading of a node.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Sample {
    pub(crate) log_records: u64,
    pub(crate) log_syncs: u64,
    pub(crate) checkpoints: u64,
    pub(crate) in_flight: u64,
    pub(crate) dropped_sends: u64,
    pub(crate) decisions_remembered: u64,
    /// Shards: branches prepared and not yet decided here.
    pub(crate) in_doubt: Option<u64>,
    /// Shards: commits lost with an accepted data loss.
    pub(crate) lost_commits: Option<u64>,
    pub(crate) data_loss_accepted: bool,
    /// Coordinators.
    pub(crate) outcomes: Option<Outcomes>,
}

/// The Prometheus text of `sample`, each series labelled with the node and its role.
pub(crate) fn render(node: &str, role: &str, sample: &Sample) -> String {
    let labels = format!("node=\"{node}\",role=\"{role}\"");
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ =
            writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{labels}}} {value}");
    };
    metric(
        "concord_log_records_total",
        "counter",
        "Log records made durable.",
        sample.log_records.to_string(),
    );
    metric(
        "concord_log_syncs_total",
        "counter",
        "fdatasync calls of the log.",
        sample.log_syncs.to_string(),
    );
    metric(
        "concord_log_checkpoints_total",
        "counter",
        "Log checkpoints written.",
        sample.checkpoints.to_string(),
    );
    metric(
        "concord_in_flight",
        "gauge",
        "Transactions in flight at this node.",
        sample.in_flight.to_string(),
    );
    metric(
        "concord_dropped_sends_total",
        "counter",
        "Messages dropped because a peer's outbox was full (the protocols resend).",
        sample.dropped_sends.to_string(),
    );
    metric(
        "concord_decisions_remembered",
        "gauge",
        "Decisions (or acceptor instances) kept to answer peers; bounded by FORGET.",
        sample.decisions_remembered.to_string(),
    );
    metric(
        "concord_data_loss_accepted",
        "gauge",
        "1 if this shard started after an operator accepted a loss of data.",
        u8::from(sample.data_loss_accepted).to_string(),
    );
    if let Some(in_doubt) = sample.in_doubt {
        metric(
            "concord_in_doubt_branches",
            "gauge",
            "Branches prepared here whose decision has not arrived.",
            in_doubt.to_string(),
        );
    }
    if let Some(lost) = sample.lost_commits {
        metric(
            "concord_lost_commits_total",
            "counter",
            "Committed transactions whose writes an accepted data loss took from this shard.",
            lost.to_string(),
        );
    }
    if let Some(outcomes) = &sample.outcomes {
        let _ = writeln!(
            out,
            "# HELP concord_transactions_total Transactions decided by this coordinator, by outcome.\n\
             # TYPE concord_transactions_total counter\n\
             concord_transactions_total{{{labels},outcome=\"committed\"}} {}\n\
             concord_transactions_total{{{labels},outcome=\"aborted\"}} {}",
            outcomes.committed, outcomes.aborted
        );
        let name = "concord_aborts_total";
        let _ = writeln!(
            out,
            "# HELP {name} Transactions this coordinator aborted, by reason (voted-no, vote-timeout: a branch never voted).\n# TYPE {name} counter"
        );
        for (reason, count) in &outcomes.aborts {
            let _ = writeln!(out, "{name}{{{labels},reason=\"{reason}\"}} {count}");
        }
        concord_replication::prometheus::write_histogram(
            &mut out,
            "concord_transaction_seconds",
            "From a transaction's start to its outcome at the coordinator.",
            &labels,
            (&LATENCY_BUCKETS_S, &outcomes.latency_buckets),
            outcomes.latency_sum_s,
            outcomes.latency_count,
        );
    }
    out
}

/// Serves `/metrics` and `/health` on `listener` until `stopped` turns true; a coordinator
/// serves its console there too (`crate::console`), its log under `data_dir`.
pub(crate) async fn serve<E: Engine>(
    listener: TcpListener,
    handle: Handle<E>,
    role: String,
    data_dir: std::path::PathBuf,
    mut stopped: watch::Receiver<bool>,
) {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let node = handle.name().to_string();
    let coordinator = role == crate::config::Role::Coordinator.to_string();
    let metrics = {
        let (handle, node, role) = (handle.clone(), node.clone(), role.clone());
        move || {
            let (handle, node, role) = (handle.clone(), node.clone(), role.clone());
            async move {
                match handle.ask(crate::driver::Node::sample).await {
                    Ok(sample) => {
                        let mut text = render(&node, &role, &sample);
                        if let Some(replication) = &handle.replication {
                            text +=
                                &replication.metrics(&format!("node=\"{node}\",role=\"{role}\""));
                        }
                        (
                            StatusCode::OK,
                            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                            text,
                        )
                    }
                    Err(status) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        format!("# {}\n", status.message()),
                    ),
                }
            }
        }
    };
    let health = move || {
        let (node, role) = (node.clone(), role.clone());
        async move { axum::Json(serde_json::json!({ "ok": true, "node": node, "role": role })) }
    };
    let mut app = axum::Router::new().route("/metrics", get(metrics)).route("/health", get(health));
    if coordinator {
        app = app.merge(crate::console::router(handle.clone(), data_dir));
    }
    let shutdown = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        eprintln!("concord: the metrics endpoint stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_fill_a_cumulative_histogram() {
        let mut outcomes = Outcomes::default();
        outcomes.record(Decision::Commit, Some(Duration::from_micros(300)));
        outcomes.record(Decision::Commit, Some(Duration::from_millis(7)));
        outcomes.record(Decision::Abort, Some(Duration::from_secs(9)));
        outcomes.record_abort("voted-no");
        outcomes.record(Decision::Commit, None);
        let sample = Sample { outcomes: Some(outcomes), in_doubt: Some(2), ..Sample::default() };
        let text = render("coordinator", "coordinator", &sample);
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("{prefix}\n{text}"))
        };
        let labels = "node=\"coordinator\",role=\"coordinator\"";
        assert!(line(&format!("concord_transactions_total{{{labels},outcome=\"committed\"}}"))
            .ends_with(" 3"));
        assert!(line(&format!("concord_transactions_total{{{labels},outcome=\"aborted\"}}"))
            .ends_with(" 1"));
        assert!(line(&format!("concord_transaction_seconds_bucket{{{labels},le=\"0.0005\"}}"))
            .ends_with(" 1"));
        assert!(line(&format!("concord_transaction_seconds_bucket{{{labels},le=\"0.01\"}}"))
            .ends_with(" 2"));
        assert!(line(&format!("concord_transaction_seconds_bucket{{{labels},le=\"2.5\"}}"))
            .ends_with(" 2"));
        assert!(line(&format!("concord_transaction_seconds_bucket{{{labels},le=\"+Inf\"}}"))
            .ends_with(" 3"));
        assert!(line(&format!("concord_transaction_seconds_count{{{labels}}}")).ends_with(" 3"));
        assert!(line(&format!("concord_in_doubt_branches{{{labels}}}")).ends_with(" 2"));
        assert!(
            line(&format!("concord_aborts_total{{{labels},reason=\"voted-no\"}}")).ends_with(" 1")
        );
        assert!(!text.contains("concord_lost_commits_total"), "a coordinator has no lost commits");
        // Every series has its HELP and TYPE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(text.contains(&format!("# TYPE {family} ")), "{name} has no TYPE");
        }
    }
}
