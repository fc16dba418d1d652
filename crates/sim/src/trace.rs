//! What a run did, event by event, for message-sequence diagrams. Recorded only when asked
//! (`SimConfig::record_trace`): sweeps keep just the trace hash.

use concord_types::{Decision, NodeId, TxnId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEntry {
    pub at_us: u64,
    pub event: TraceEvent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceEvent {
    /// A client submitted a transaction to the coordinator (or found it down).
    Submit {
        request: u64,
        accepted: bool,
    },
    /// A message left `from`; `id` pairs it with its delivery.
    Send {
        id: u64,
        from: NodeId,
        to: NodeId,
        label: String,
    },
    Deliver {
        id: u64,
        from: NodeId,
        to: NodeId,
        label: String,
    },
    /// A message was lost: `reason` is "drop", "partition" or "down".
    Lost {
        id: u64,
        from: NodeId,
        to: NodeId,
        label: String,
        reason: &'static str,
    },
    Persist {
        node: NodeId,
        label: String,
        forced: bool,
    },
    Durable {
        node: NodeId,
        label: String,
    },
    Outcome {
        node: NodeId,
        txn: TxnId,
        decision: Decision,
    },
    Crash {
        node: NodeId,
    },
    Restart {
        node: NodeId,
        records: usize,
    },
    Partition {
        side: Vec<NodeId>,
    },
    Heal,
    /// A status query about `txn` reached its verdict (from the participants' answers).
    Status {
        txn: TxnId,
        verdict: concord_commit::status::Verdict,
    },
}

impl TraceEvent {
    /// The nodes this event names.
    pub fn nodes(&self) -> Vec<NodeId> {
        match self {
            TraceEvent::Send { from, to, .. }
            | TraceEvent::Deliver { from, to, .. }
            | TraceEvent::Lost { from, to, .. } => vec![*from, *to],
            TraceEvent::Persist { node, .. }
            | TraceEvent::Durable { node, .. }
            | TraceEvent::Outcome { node, .. }
            | TraceEvent::Crash { node }
            | TraceEvent::Restart { node, .. } => vec![*node],
            TraceEvent::Partition { side } => side.clone(),
            TraceEvent::Submit { .. } | TraceEvent::Heal | TraceEvent::Status { .. } => {
                vec![crate::config::COORDINATOR]
            }
        }
    }
}
