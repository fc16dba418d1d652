//! A run's trace as JSON (`concord sim run|replay --trace-json FILE`): every event, complete
//! and machine-readable, in a versioned format documented in `docs/trace-format.md`. The
//! diagrams are drawn from the same [`TraceEntry`] list this encodes without loss, and
//! [`from_json`] reads it back (the round trip is tested).

use concord_commit::status::Verdict;
use concord_types::{Decision, NodeId, TxnId};
use serde_json::{json, Map, Value};

use crate::report::RunReport;
use crate::trace::{TraceEntry, TraceEvent};

/// What the `format` field says.
pub const FORMAT: &str = "concord-sim-trace";
/// Bumped on any change a reader could notice; readers should refuse versions they do not know.
pub const VERSION: u64 = 1;
/// More nodes than any simulated run has: a document naming more is refused (a diagram draws a
/// lane per node).
pub const MAX_NODES: u64 = 256;

/// The whole run: what it was, and every event in order.
pub fn to_json(report: &RunReport) -> Value {
    let events: Vec<Value> = report.trace.iter().flatten().map(entry).collect();
    json!({
        "format": FORMAT,
        "version": VERSION,
        "protocol": report.protocol,
        "seed": report.seed,
        "nodes": report.nodes,
        "participants": report.participants,
        "trace_hash": format!("{:016x}", report.trace_hash),
        "events": events,
    })
}

fn entry(e: &TraceEntry) -> Value {
    let mut fields = Map::new();
    let (kind, body) = match &e.event {
        TraceEvent::Submit { request, accepted } => {
            ("submit", json!({ "request": request, "accepted": accepted }))
        }
        TraceEvent::Send { id, from, to, label, detail } => (
            "send",
            json!({ "id": id, "from": from.0, "to": to.0, "label": label, "message": detail }),
        ),
        TraceEvent::Deliver { id, from, to, label, detail } => (
            "deliver",
            json!({ "id": id, "from": from.0, "to": to.0, "label": label, "message": detail }),
        ),
        TraceEvent::Lost { id, from, to, label, detail, reason } => (
            "lost",
            json!({ "id": id, "from": from.0, "to": to.0, "label": label, "message": detail,
                    "reason": reason }),
        ),
        TraceEvent::Persist { node, label, forced, detail } => (
            "persist",
            json!({ "node": node.0, "label": label, "forced": forced, "record": detail }),
        ),
        TraceEvent::Durable { node, label, forced } => {
            ("durable", json!({ "node": node.0, "label": label, "forced": forced }))
        }
        TraceEvent::Outcome { node, txn, decision } => (
            "outcome",
            json!({ "node": node.0, "txn": txn.to_string(), "decision": decision.to_string() }),
        ),
        TraceEvent::Crash { node, lost } => ("crash", json!({ "node": node.0, "lost": lost })),
        TraceEvent::Restart { node, records, replayed } => {
            ("restart", json!({ "node": node.0, "records": records, "replayed": replayed }))
        }
        TraceEvent::TimerSet { node, label, after_us } => {
            ("timer_set", json!({ "node": node.0, "label": label, "after_us": after_us }))
        }
        TraceEvent::TimerFired { node, label } => {
            ("timer_fired", json!({ "node": node.0, "label": label }))
        }
        TraceEvent::Partition { side } => {
            let side: Vec<u32> = side.iter().map(|n| n.0).collect();
            ("partition", json!({ "side": side }))
        }
        TraceEvent::Heal => ("heal", json!({})),
        TraceEvent::Status { txn, verdict } => {
            ("status", json!({ "txn": txn.to_string(), "verdict": verdict.to_string() }))
        }
    };
    fields.insert("at_us".into(), json!(e.at_us));
    fields.insert("event".into(), json!(kind));
    if let Value::Object(body) = body {
        fields.extend(body);
    }
    Value::Object(fields)
}

/// Reads a trace written by [`to_json`]: its events, or what is wrong with it.
pub fn from_json(doc: &Value) -> Result<Vec<TraceEntry>, String> {
    if doc["format"] != FORMAT {
        return Err(format!("not a {FORMAT} document"));
    }
    if doc["version"] != VERSION {
        return Err(format!("version {} (this reader knows {VERSION})", doc["version"]));
    }
    let nodes = doc["nodes"].as_u64().ok_or("`nodes` is not a number")?;
    if nodes > MAX_NODES {
        return Err(format!("{nodes} nodes: at most {MAX_NODES}"));
    }
    let events = doc["events"].as_array().ok_or("no events array")?;
    let entries: Vec<TraceEntry> = events
        .iter()
        .enumerate()
        .map(|(i, e)| event(e).map_err(|why| format!("event {i}: {why}")))
        .collect::<Result<_, _>>()?;
    let named = entries.iter().flat_map(|e| e.event.nodes()).find(|n| u64::from(n.0) >= nodes);
    if let Some(node) = named {
        return Err(format!("an event names {node}, but the run has {nodes} nodes"));
    }
    Ok(entries)
}

fn event(e: &Value) -> Result<TraceEntry, String> {
    let u64_of = |name: &str| e[name].as_u64().ok_or_else(|| format!("`{name}` is not a number"));
    let node_of = |name: &str| -> Result<NodeId, String> {
        let n = u64_of(name)?;
        u32::try_from(n).map(NodeId).map_err(|_| format!("`{name}` {n} is not a node"))
    };
    let str_of = |name: &str| {
        e[name].as_str().map(str::to_string).ok_or_else(|| format!("`{name}` is not a string"))
    };
    let bool_of = |name: &str| e[name].as_bool().ok_or_else(|| format!("`{name}` is not a bool"));
    let strings_of = |name: &str| -> Result<Vec<String>, String> {
        let items = e[name].as_array().ok_or_else(|| format!("`{name}` is not a list"))?;
        items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or(format!("`{name}` item")))
            .collect()
    };
    let txn_of = |name: &str| -> Result<TxnId, String> {
        str_of(name)?.parse().map_err(|_| format!("`{name}` is not a transaction id"))
    };
    let at_us = u64_of("at_us")?;
    let kind = str_of("event")?;
    let event = match kind.as_str() {
        "submit" => {
            TraceEvent::Submit { request: u64_of("request")?, accepted: bool_of("accepted")? }
        }
        "send" | "deliver" | "lost" => {
            let (id, from, to) = (u64_of("id")?, node_of("from")?, node_of("to")?);
            let (label, detail) = (str_of("label")?, str_of("message")?);
            match kind.as_str() {
                "send" => TraceEvent::Send { id, from, to, label, detail },
                "deliver" => TraceEvent::Deliver { id, from, to, label, detail },
                _ => {
                    let reason = match str_of("reason")?.as_str() {
                        "drop" => "drop",
                        "partition" => "partition",
                        "down" => "down",
                        other => return Err(format!("unknown loss reason `{other}`")),
                    };
                    TraceEvent::Lost { id, from, to, label, detail, reason }
                }
            }
        }
        "persist" => TraceEvent::Persist {
            node: node_of("node")?,
            label: str_of("label")?,
            forced: bool_of("forced")?,
            detail: str_of("record")?,
        },
        "durable" => TraceEvent::Durable {
            node: node_of("node")?,
            label: str_of("label")?,
            forced: bool_of("forced")?,
        },
        "outcome" => TraceEvent::Outcome {
            node: node_of("node")?,
            txn: txn_of("txn")?,
            decision: match str_of("decision")?.as_str() {
                "COMMIT" => Decision::Commit,
                "ABORT" => Decision::Abort,
                other => return Err(format!("unknown decision `{other}`")),
            },
        },
        "crash" => TraceEvent::Crash { node: node_of("node")?, lost: strings_of("lost")? },
        "restart" => TraceEvent::Restart {
            node: node_of("node")?,
            records: usize::try_from(u64_of("records")?).map_err(|e| e.to_string())?,
            replayed: strings_of("replayed")?,
        },
        "timer_set" => TraceEvent::TimerSet {
            node: node_of("node")?,
            label: str_of("label")?,
            after_us: u64_of("after_us")?,
        },
        "timer_fired" => TraceEvent::TimerFired { node: node_of("node")?, label: str_of("label")? },
        "partition" => {
            let side = e["side"].as_array().ok_or("`side` is not a list")?;
            let side: Result<Vec<NodeId>, String> = side
                .iter()
                .map(|n| {
                    n.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .map(NodeId)
                        .ok_or_else(|| "`side` item is not a node".to_string())
                })
                .collect();
            TraceEvent::Partition { side: side? }
        }
        "heal" => TraceEvent::Heal,
        "status" => TraceEvent::Status {
            txn: txn_of("txn")?,
            verdict: match str_of("verdict")?.as_str() {
                "committed" => Verdict::Committed,
                "aborted" => Verdict::Aborted,
                "forgotten" => Verdict::Forgotten,
                other => return Err(format!("unknown verdict `{other}`")),
            },
        },
        other => return Err(format!("unknown event `{other}`")),
    };
    Ok(TraceEntry { at_us, event })
}
