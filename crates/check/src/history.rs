//! List-append histories in Elle's JSON form.
//!
//! A history is a sequence of operations, each an invocation followed by its completion:
//!
//! ```json
//! [{"index":0,"type":"invoke","process":1,"f":"txn","value":[["append",3,7],["r",4,null]],"time":1200},
//!  {"index":1,"type":"ok","process":1,"f":"txn","value":[["append",3,7],["r",4,[1,2]]],"time":5400}]
//! ```
//!
//! `type` is `invoke`, `ok` (committed), `fail` (certainly not committed) or `info` (unknown:
//! the client lost the answer). Keys and appended values are integers; every appended value is
//! unique per key, which is what lets a checker find the writer of every element it reads.

use serde_json::{json, Value as Json};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MicroOp {
    Append {
        key: u64,
        value: u64,
    },
    /// `value` is `None` in an invocation, the list read in a completion.
    Read {
        key: u64,
        value: Option<Vec<u64>>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Invoke,
    Ok,
    Fail,
    Info,
}

impl EventType {
    fn name(self) -> &'static str {
        match self {
            EventType::Invoke => "invoke",
            EventType::Ok => "ok",
            EventType::Fail => "fail",
            EventType::Info => "info",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEvent {
    pub kind: EventType,
    pub process: u64,
    pub value: Vec<MicroOp>,
    /// Nanoseconds (the simulator's virtual time, or wall time since the run began).
    pub time_ns: u64,
}

/// A recorded history, in order of events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub events: Vec<HistoryEvent>,
}

/// A transaction as a checker sees it: what it did, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompletedTxn {
    pub process: u64,
    pub kind: EventType,
    pub ops: Vec<MicroOp>,
}

impl History {
    pub fn invoke(&mut self, process: u64, ops: Vec<MicroOp>, time_ns: u64) {
        self.events.push(HistoryEvent { kind: EventType::Invoke, process, value: ops, time_ns });
    }

    pub fn complete(&mut self, process: u64, kind: EventType, ops: Vec<MicroOp>, time_ns: u64) {
        self.events.push(HistoryEvent { kind, process, value: ops, time_ns });
    }

    /// Pairs each invocation with its process's next completion. An invocation never
    /// completed counts as `info`.
    pub fn transactions(&self) -> Vec<CompletedTxn> {
        let mut open: std::collections::BTreeMap<u64, usize> = std::collections::BTreeMap::new();
        let mut txns: Vec<CompletedTxn> = Vec::new();
        for event in &self.events {
            if event.kind == EventType::Invoke {
                open.insert(event.process, txns.len());
                txns.push(CompletedTxn {
                    process: event.process,
                    kind: EventType::Info,
                    ops: event.value.clone(),
                });
            } else if let Some(i) = open.remove(&event.process) {
                txns[i].kind = event.kind;
                if event.kind == EventType::Ok {
                    txns[i].ops = event.value.clone();
                }
            }
        }
        txns
    }

    pub fn to_elle_json(&self) -> String {
        let ops: Vec<Json> = self
            .events
            .iter()
            .enumerate()
            .map(|(index, e)| {
                let value: Vec<Json> = e
                    .value
                    .iter()
                    .map(|op| match op {
                        MicroOp::Append { key, value } => json!(["append", key, value]),
                        MicroOp::Read { key, value } => json!(["r", key, value]),
                    })
                    .collect();
                json!({
                    "index": index,
                    "type": e.kind.name(),
                    "process": e.process,
                    "f": "txn",
                    "value": value,
                    "time": e.time_ns,
                })
            })
            .collect();
        serde_json::to_string(&ops).expect("a history is plain JSON")
    }

    pub fn from_elle_json(text: &str) -> Result<History, String> {
        let parsed: Json = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let Json::Array(ops) = parsed else { return Err("a history is a JSON array".into()) };
        let mut history = History::default();
        for (i, op) in ops.iter().enumerate() {
            let field = |name: &str| op.get(name).ok_or(format!("operation {i} has no `{name}`"));
            let kind = match field("type")?.as_str() {
                Some("invoke") => EventType::Invoke,
                Some("ok") => EventType::Ok,
                Some("fail") => EventType::Fail,
                Some("info") => EventType::Info,
                other => return Err(format!("operation {i}: unknown type {other:?}")),
            };
            let process =
                field("process")?.as_u64().ok_or(format!("operation {i}: bad process"))?;
            let time_ns = op.get("time").and_then(Json::as_u64).unwrap_or(0);
            let Some(micro) = field("value")?.as_array() else {
                return Err(format!("operation {i}: value is not a list"));
            };
            let mut value = Vec::with_capacity(micro.len());
            for m in micro {
                value.push(parse_micro(m).ok_or(format!("operation {i}: bad micro-op {m}"))?);
            }
            history.events.push(HistoryEvent { kind, process, value, time_ns });
        }
        Ok(history)
    }
}

fn parse_micro(m: &Json) -> Option<MicroOp> {
    let parts = m.as_array()?;
    let key = parts.get(1)?.as_u64()?;
    match parts.first()?.as_str()? {
        "append" => Some(MicroOp::Append { key, value: parts.get(2)?.as_u64()? }),
        "r" => {
            let value = match parts.get(2)? {
                Json::Null => None,
                Json::Array(items) => Some(items.iter().map(Json::as_u64).collect::<Option<_>>()?),
                _ => return None,
            };
            Some(MicroOp::Read { key, value })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histories_round_trip_through_elle_json() {
        let mut h = History::default();
        h.invoke(
            1,
            vec![MicroOp::Append { key: 3, value: 7 }, MicroOp::Read { key: 4, value: None }],
            10,
        );
        h.complete(
            1,
            EventType::Ok,
            vec![
                MicroOp::Append { key: 3, value: 7 },
                MicroOp::Read { key: 4, value: Some(vec![1, 2]) },
            ],
            20,
        );
        h.invoke(2, vec![MicroOp::Append { key: 3, value: 8 }], 30);
        h.complete(2, EventType::Info, vec![MicroOp::Append { key: 3, value: 8 }], 40);
        let text = h.to_elle_json();
        assert!(text.contains(r#"["r",4,[1,2]]"#) && text.contains(r#""type":"info""#), "{text}");
        assert_eq!(History::from_elle_json(&text).unwrap(), h);
        let txns = h.transactions();
        assert_eq!(txns.len(), 2);
        assert_eq!(txns[0].kind, EventType::Ok);
        assert_eq!(txns[1].kind, EventType::Info);
    }
}
