//! What one run produced: counts, latencies, blocking, violations, and the trace hash.

use concord_types::{Decision, NodeId, TxnId};

use crate::invariants::Violation;
use crate::trace::TraceEntry;

/// How long one participant was in doubt about one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InDoubt {
    pub node: NodeId,
    pub txn: TxnId,
    pub us: u64,
    /// False if it was still in doubt when the run ended.
    pub resolved: bool,
}

#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub seed: u64,
    pub protocol: &'static str,
    pub participants: u32,
    /// Every node of the run (coordinator, participants, acceptors): a diagram's lanes.
    pub nodes: u32,
    /// Participants whose whole log was lost at a crash (`SimConfig::log_loss`).
    pub logs_lost: u32,
    /// Coordinator leaders elected after a crash (a replicated coordinator log only).
    pub coordinator_elections: u32,
    /// Transactions the workload tried to submit, and those the coordinator named.
    pub txns_submitted: u64,
    pub txns_begun: u64,
    /// Submissions that found the coordinator down, or that it refused.
    pub txns_not_started: u64,
    /// What the client was told.
    pub committed: u64,
    pub aborted: u64,
    /// Begun, but the client never heard (the coordinator crashed first).
    pub outcome_unknown: u64,
    /// Transactions some participants committed and others aborted.
    pub split_txns: u64,
    /// Messages of the protocol (housekeeping apart).
    pub messages_sent: u64,
    /// Housekeeping messages (2PC's FORGET).
    pub housekeeping_sent: u64,
    pub messages_lost: u64,
    /// Messages that are not acknowledgements: those by which participants learn the outcome.
    pub messages_excluding_acks: u64,
    /// Message delays on the longest causal chain to a participant's decision.
    pub message_delays: u32,
    /// Messages the network delivered twice.
    pub messages_duplicated: u64,
    /// fdatasync calls: the forced log writes.
    pub syncs: u64,
    pub records_written: u64,
    /// Client-observed latency of committed transactions (submit → outcome).
    pub commit_latency_us: Vec<u64>,
    pub in_doubt: Vec<InDoubt>,
    /// In doubt longer than the configured threshold somewhere in the run.
    pub blocked: bool,
    /// Keys locked at each participant when the coordinator restarted (empty if it never did).
    pub locked_keys_at_coordinator_restart: Vec<(NodeId, usize)>,
    /// Every participant decision: (participant, transaction, decision).
    pub decisions: Vec<(NodeId, TxnId, Decision)>,
    /// Status queries sent, and those whose verdict was FORGOTTEN (no participant kept it).
    pub status_probes: u64,
    pub status_forgotten: u64,
    pub violations: Vec<Violation>,
    pub trace_hash: u64,
    pub events: u64,
    pub end_us: u64,
    pub trace: Option<Vec<TraceEntry>>,
}

impl RunReport {
    pub fn max_in_doubt_us(&self) -> u64 {
        self.in_doubt.iter().map(|d| d.us).max().unwrap_or(0)
    }

    /// Participants' decisions about `txn`.
    pub fn decisions_of(&self, txn: TxnId) -> Vec<(NodeId, Decision)> {
        let mut v: Vec<_> =
            self.decisions.iter().filter(|(_, t, _)| *t == txn).map(|(n, _, d)| (*n, *d)).collect();
        v.sort_unstable_by_key(|(n, _)| *n);
        v
    }

    /// Transactions with at least one participant decision, in id order.
    pub fn txns(&self) -> Vec<TxnId> {
        let mut v: Vec<TxnId> = self.decisions.iter().map(|(_, t, _)| *t).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}
