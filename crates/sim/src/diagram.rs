//! Message-sequence diagrams of a run, from its trace: text for the terminal, SVG for a page.
//!
//! One lane per node (`│` up, `┊` down). A message is drawn when it arrives, from its sender's
//! lane to its receiver's; a lost message is a `✕` on the sender's lane with the reason.

use std::fmt::Write as _;

use concord_types::{Decision, NodeId};

use crate::config::COORDINATOR;
use crate::trace::{TraceEntry, TraceEvent};

const LANE_WIDTH: usize = 18;
/// Diagrams longer than this are cut, with a line saying how much was left out.
pub const MAX_ROWS: usize = 600;

fn lane_name(node: NodeId) -> String {
    if node == COORDINATOR {
        format!("{node} coord")
    } else {
        node.to_string()
    }
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// Words for an event that is a note rather than an arrow; `None` for arrows and sends.
fn note(event: &TraceEvent) -> Option<(Option<NodeId>, char, String)> {
    Some(match event {
        TraceEvent::Submit { request, accepted: true } => {
            (Some(COORDINATOR), '◀', format!("client submits request r{request}"))
        }
        TraceEvent::Submit { request, accepted: false } => (
            Some(COORDINATOR),
            '✕',
            format!("client's request r{request} finds the coordinator down"),
        ),
        TraceEvent::Lost { from, to, label, reason, .. } => {
            (Some(*from), '✕', format!("{label} to {to} lost ({reason})"))
        }
        TraceEvent::Persist { node, label, forced, .. } => {
            let how = if *forced { "forces" } else { "writes lazily" };
            (Some(*node), '◇', format!("{node} {how} '{label}'"))
        }
        TraceEvent::Durable { node, label, forced: true } => {
            (Some(*node), '◆', format!("'{label}' durable"))
        }
        // Lazy records becoming durable are in the JSON trace, not drawn (nobody waits on them).
        TraceEvent::Durable { forced: false, .. } => return None,
        TraceEvent::Outcome { node, txn, decision } if *node == COORDINATOR => {
            (Some(*node), '●', format!("client told {decision} {txn}"))
        }
        TraceEvent::Outcome { node, txn, decision } => {
            let mark = if *decision == Decision::Commit { '●' } else { '○' };
            (Some(*node), mark, format!("{node} decides {decision} {txn}"))
        }
        TraceEvent::Crash { node, lost } if lost.is_empty() => {
            (Some(*node), '✖', format!("{node} CRASHES"))
        }
        TraceEvent::Crash { node, lost } => {
            let records = if lost.len() == 1 { "record" } else { "records" };
            (Some(*node), '✖', format!("{node} CRASHES, losing {} unsynced {records}", lost.len()))
        }
        TraceEvent::Restart { node, records, .. } => {
            (Some(*node), '↻', format!("{node} restarts, replays {records} records"))
        }
        TraceEvent::Partition { side } => {
            let names: Vec<String> = side.iter().map(ToString::to_string).collect();
            (None, '═', format!("PARTITION: {{{}}} cut off from the rest", names.join(",")))
        }
        TraceEvent::Heal => (None, '═', "partition healed".to_string()),
        TraceEvent::Status { txn, verdict } => {
            (Some(COORDINATOR), '?', format!("status of {txn} from the participants: {verdict}"))
        }
        TraceEvent::Send { .. }
        | TraceEvent::Deliver { .. }
        | TraceEvent::TimerSet { .. }
        | TraceEvent::TimerFired { .. } => return None,
    })
}

/// Every node an event names, so a lane exists for each whatever `nodes` the caller said.
fn lanes_for(trace: &[TraceEntry], nodes: u32) -> usize {
    let named = trace.iter().flat_map(|e| e.event.nodes()).map(|n| n.0 + 1).max().unwrap_or(0);
    nodes.max(named) as usize
}

/// Renders the trace as text: a header of lanes, then one line per event. `nodes`: the run's
/// node count (every node gets a lane, and so does any the trace names beyond it).
pub fn text(trace: &[TraceEntry], nodes: u32, title: &str) -> String {
    let lanes = lanes_for(trace, nodes);
    let center = |n: NodeId| n.0 as usize * LANE_WIDTH + LANE_WIDTH / 2;
    let width = lanes * LANE_WIDTH;
    let mut up = vec![true; lanes];
    let mut out = String::new();
    let _ = writeln!(out, "{title}");
    let mut header = vec![' '; width];
    for i in 0..lanes {
        let name = lane_name(NodeId(u32::try_from(i).expect("few nodes")));
        let start =
            (center(NodeId(u32::try_from(i).expect("few nodes")))).saturating_sub(name.len() / 2);
        for (k, c) in name.chars().enumerate() {
            if start + k < width {
                header[start + k] = c;
            }
        }
    }
    let _ = writeln!(out, "{:>10} │{}", "time ms", header.iter().collect::<String>());
    let _ = writeln!(out, "{:─>10}─┼{}", "", "─".repeat(width));
    let mut rows = 0;
    for entry in trace {
        if matches!(entry.event, TraceEvent::Send { .. }) {
            continue;
        }
        rows += 1;
        if rows > MAX_ROWS {
            let rest = trace.len() - rows;
            let _ = writeln!(out, "… {rest} more events not shown");
            break;
        }
        let mut line: Vec<char> = (0..width).map(|_| ' ').collect();
        for (i, is_up) in up.iter().enumerate() {
            line[i * LANE_WIDTH + LANE_WIDTH / 2] = if *is_up { '│' } else { '┊' };
        }
        let mut text_note = String::new();
        match &entry.event {
            TraceEvent::Deliver { from, to, label, .. } if from == to => {
                line[center(*from)] = '↺';
                text_note = format!("{label} (to itself)");
            }
            TraceEvent::Deliver { from, to, label, .. } => {
                let (a, b) = (center(*from), center(*to));
                let (lo, hi) = (a.min(b), a.max(b));
                for c in &mut line[lo + 1..hi] {
                    *c = '─';
                }
                line[a] = if b > a { '├' } else { '┤' };
                line[b] = if b > a { '▶' } else { '◀' };
                let span = hi - lo - 1;
                if label.chars().count() + 2 <= span {
                    let start = lo + 1 + (span - label.chars().count()) / 2;
                    for (k, c) in label.chars().enumerate() {
                        line[start + k] = c;
                    }
                } else {
                    text_note = format!("{label} ({from}→{to})");
                }
            }
            event => {
                let Some((node, mark, words)) = note(event) else { continue };
                match node {
                    Some(n) => line[center(n)] = mark,
                    None => {
                        for c in &mut line {
                            if *c == ' ' {
                                *c = mark;
                            }
                        }
                    }
                }
                text_note = words;
                match event {
                    TraceEvent::Crash { node, .. } => up[node.0 as usize] = false,
                    TraceEvent::Restart { node, .. } => up[node.0 as usize] = true,
                    _ => {}
                }
            }
        }
        let body: String = line.into_iter().collect();
        let _ = writeln!(out, "{:>10} │{}  {}", ms(entry.at_us), body.trim_end(), text_note);
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Renders the trace as a standalone SVG: lanes top to bottom, messages as slanted arrows from
/// the row they were sent in to the row they arrived in.
pub fn svg(trace: &[TraceEntry], nodes: u32, title: &str) -> String {
    let nodes = u32::try_from(lanes_for(trace, nodes)).expect("few nodes");
    const ROW: usize = 18;
    const TOP: usize = 70;
    const LEFT: usize = 80;
    const LANE: usize = 170;
    let entries: Vec<&TraceEntry> = trace.iter().take(MAX_ROWS).collect();
    let lanes = nodes as usize;
    let x = |n: NodeId| LEFT + n.0 as usize * LANE + LANE / 2;
    let y = |row: usize| TOP + row * ROW;
    let notes_x = LEFT + lanes * LANE + 10;
    let width = notes_x + 420;
    let height = y(entries.len()) + 40;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#333"/></marker></defs>"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#fff"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    // Lanes: solid while up, dashed while down.
    for i in 0..lanes {
        let node = NodeId(u32::try_from(i).expect("few nodes"));
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"#,
            x(node),
            TOP - 20,
            escape(&lane_name(node))
        );
        let mut from_row = 0;
        let mut is_up = true;
        let mut segments = Vec::new();
        for (row, e) in entries.iter().enumerate() {
            let change = match &e.event {
                TraceEvent::Crash { node: n, .. } if *n == node => Some(false),
                TraceEvent::Restart { node: n, .. } if *n == node => Some(true),
                _ => None,
            };
            if let Some(now_up) = change {
                segments.push((from_row, row, is_up));
                from_row = row;
                is_up = now_up;
            }
        }
        segments.push((from_row, entries.len(), is_up));
        for (a, b, solid) in segments {
            let dash = if solid { "" } else { r#" stroke-dasharray="3,4""# };
            let color = if solid { "#555" } else { "#c33" };
            let _ = writeln!(
                s,
                r#"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="{color}"{dash}/>"#,
                x(node),
                y(a) - ROW / 2,
                y(b)
            );
        }
    }
    let mut sent_row = std::collections::HashMap::new();
    for (row, e) in entries.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end" fill="#888">{}</text>"##,
            LEFT - 8,
            y(row) + 4,
            ms(e.at_us)
        );
        match &e.event {
            TraceEvent::Send { id, from, .. } => {
                sent_row.insert(*id, row);
                let _ = writeln!(
                    s,
                    r##"<circle cx="{}" cy="{}" r="2" fill="#333"/>"##,
                    x(*from),
                    y(row)
                );
            }
            TraceEvent::Deliver { id, from, to, label, .. } => {
                let start = sent_row.get(id).copied().unwrap_or(row);
                let (x1, y1, x2, y2) = (x(*from), y(start), x(*to), y(row));
                let color = if label.starts_with("ABORT") || label.contains(" NO ") {
                    "#b22"
                } else if label.starts_with("COMMIT") {
                    "#070"
                } else {
                    "#333"
                };
                let _ = writeln!(
                    s,
                    r#"<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{color}" marker-end="url(#arrow)"/>"#
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" text-anchor="middle" fill="{color}">{}</text>"#,
                    (x1 + x2) / 2,
                    (y1 + y2) / 2 - 3,
                    escape(label)
                );
            }
            event => {
                if let Some((node, mark, words)) = note(event) {
                    let color = match event {
                        TraceEvent::Crash { .. }
                        | TraceEvent::Lost { .. }
                        | TraceEvent::Partition { .. } => "#c33",
                        TraceEvent::Outcome { decision: Decision::Commit, .. } => "#070",
                        TraceEvent::Outcome { .. } => "#b22",
                        _ => "#333",
                    };
                    if let Some(n) = node {
                        let _ = writeln!(
                            s,
                            r#"<text x="{}" y="{}" text-anchor="middle" font-size="13" fill="{color}">{mark}</text>"#,
                            x(n),
                            y(row) + 4
                        );
                    } else {
                        let _ = writeln!(
                            s,
                            r#"<line x1="{LEFT}" y1="{0}" x2="{1}" y2="{0}" stroke="{color}" stroke-dasharray="6,3"/>"#,
                            y(row),
                            notes_x - 10
                        );
                    }
                    let _ = writeln!(
                        s,
                        r#"<text x="{notes_x}" y="{}" fill="{color}">{}</text>"#,
                        y(row) + 4,
                        escape(&words)
                    );
                }
            }
        }
    }
    if trace.len() > entries.len() {
        let _ = writeln!(
            s,
            r#"<text x="10" y="{}">… {} more events not shown</text>"#,
            height - 10,
            trace.len() - entries.len()
        );
    }
    s.push_str("</svg>\n");
    s
}
