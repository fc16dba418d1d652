//! What a run did, event by event, for message-sequence diagrams. Recorded only when asked
//! (`SimConfig::record_trace`): sweeps keep just the trace hash.

use std::fmt;

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
    /// A message left `from`; `id` pairs it with its delivery. `label` is its short form (the
    /// diagram's), `detail` its whole contents (every field, as the core's `Debug` prints it).
    Send {
        id: u64,
        from: NodeId,
        to: NodeId,
        label: String,
        detail: String,
    },
    Deliver {
        id: u64,
        from: NodeId,
        to: NodeId,
        label: String,
        detail: String,
    },
    /// A message was lost: `reason` is "drop", "partition" or "down".
    Lost {
        id: u64,
        from: NodeId,
        to: NodeId,
        label: String,
        detail: String,
        reason: &'static str,
    },
    /// A record written to the node's log; `Durable` follows when a sync covers it, unless a
    /// crash loses it first (then it is in the crash's `lost`).
    Persist {
        node: NodeId,
        label: String,
        forced: bool,
        detail: String,
    },
    /// A sync covered the record: it survives any crash now. `forced`: a record its core waits
    /// for (lazy ones become durable with the next sync some forced record causes).
    Durable {
        node: NodeId,
        label: String,
        forced: bool,
    },
    Outcome {
        node: NodeId,
        txn: TxnId,
        decision: Decision,
    },
    /// `lost`: the records written but not yet durable, gone with the crash (the last of them
    /// possibly torn mid-write), in log order.
    Crash {
        node: NodeId,
        lost: Vec<String>,
    },
    /// `replayed`: every record recovery read back, in order (`records` of them).
    Restart {
        node: NodeId,
        records: usize,
        replayed: Vec<String>,
    },
    /// A core set a timer, to fire `after_us` later (unless its node crashes first).
    TimerSet {
        node: NodeId,
        label: String,
        after_us: u64,
    },
    TimerFired {
        node: NodeId,
        label: String,
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
    pub fn send<M: fmt::Display + fmt::Debug>(id: u64, from: NodeId, to: NodeId, msg: &M) -> Self {
        TraceEvent::Send { id, from, to, label: msg.to_string(), detail: format!("{msg:?}") }
    }

    pub fn deliver<M: fmt::Display + fmt::Debug>(
        id: u64,
        from: NodeId,
        to: NodeId,
        msg: &M,
    ) -> Self {
        TraceEvent::Deliver { id, from, to, label: msg.to_string(), detail: format!("{msg:?}") }
    }

    pub fn lost<M: fmt::Display + fmt::Debug>(
        id: u64,
        from: NodeId,
        to: NodeId,
        msg: &M,
        reason: &'static str,
    ) -> Self {
        let (label, detail) = (msg.to_string(), format!("{msg:?}"));
        TraceEvent::Lost { id, from, to, label, detail, reason }
    }

    /// The nodes this event happens at: each needs a lane in a diagram.
    pub fn nodes(&self) -> Vec<NodeId> {
        match self {
            TraceEvent::Send { from, to, .. }
            | TraceEvent::Deliver { from, to, .. }
            | TraceEvent::Lost { from, to, .. } => vec![*from, *to],
            TraceEvent::Persist { node, .. }
            | TraceEvent::Durable { node, .. }
            | TraceEvent::Outcome { node, .. }
            | TraceEvent::Crash { node, .. }
            | TraceEvent::Restart { node, .. }
            | TraceEvent::TimerSet { node, .. }
            | TraceEvent::TimerFired { node, .. } => vec![*node],
            // A partition is drawn across every lane, and its side may name nodes a run does
            // not have (a random schedule's cut): it needs no lane of its own.
            TraceEvent::Partition { .. } => Vec::new(),
            TraceEvent::Submit { .. } | TraceEvent::Heal | TraceEvent::Status { .. } => {
                vec![crate::config::COORDINATOR]
            }
        }
    }
}
