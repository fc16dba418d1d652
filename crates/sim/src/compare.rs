//! Protocols side by side: the same seeded workloads and fault schedules for each, and what
//! each did — its happy-path cost, how often it blocked, how often it broke atomicity.
//!
//! A comparison covers "random" (the sweep's randomized schedules) and the named scenarios;
//! run `i` of a scenario uses the same seed for every protocol, so every protocol meets the same
//! workload, delays and faults. (A fault aimed at a role a protocol does not have — an acceptor,
//! for 2PC — is no fault for it.)

use concord_commit::Protocol;

use crate::config::Placement;
use crate::happy_path::{self, HappyPath};
use crate::scenarios::{self, Scenario};
use crate::sweep::{random_config, sweep_configs, SweepSummary};

/// What the comparison runs: the random sweep, or a named scenario.
#[derive(Debug, Clone, Copy)]
pub enum Workload {
    Random,
    Scenario(&'static Scenario),
}

impl Workload {
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Random => "random",
            Workload::Scenario(s) => s.name,
        }
    }

    /// `all`, `random`, or a scenario's name.
    pub fn select(name: &str) -> Option<Vec<Workload>> {
        match name {
            "all" => Some(
                std::iter::once(Workload::Random)
                    .chain(scenarios::ALL.iter().map(Workload::Scenario))
                    .collect(),
            ),
            "random" => Some(vec![Workload::Random]),
            other => scenarios::find(other).map(|s| vec![Workload::Scenario(s)]),
        }
    }
}

/// One protocol's results.
#[derive(Debug, Clone)]
pub struct ProtocolResults {
    pub protocol: &'static str,
    /// One transaction over three participants, F = 1, no faults.
    pub happy_path: HappyPath,
    /// Per workload: its name, the runs made, and their summary.
    pub workloads: Vec<(&'static str, u64, SweepSummary)>,
}

/// Runs protocol `P` on every selected workload, `runs` runs each.
pub fn run<P: Protocol>(
    workloads: &[Workload],
    runs: u64,
    seed: u64,
    threads: usize,
) -> ProtocolResults {
    let happy_path = happy_path::measure::<P>(3, 1, Placement::Separate);
    let results = workloads
        .iter()
        .map(|w| {
            let (runs, summary) = match w {
                Workload::Random => {
                    (runs, sweep_configs::<P>(seed, runs, threads, &random_config, &|_| {}))
                }
                Workload::Scenario(s) => {
                    let runs = runs.min(s.max_runs);
                    (runs, sweep_configs::<P>(seed, runs, threads, &s.build, &|_| {}))
                }
            };
            (w.name(), runs, summary)
        })
        .collect();
    ProtocolResults { protocol: P::NAME, happy_path, workloads: results }
}

/// Per cent of `part` in `whole`.
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// One colour per protocol, the same in every chart.
fn color_of(protocol: &str) -> &'static str {
    match protocol {
        "naive" => "#888888",
        "2pc" => "#2b6cb0",
        "3pc" => "#d97706",
        "paxos-commit" => "#15803d",
        _ => "#7c3aed",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A two-panel bar chart: per workload, the share of runs each protocol blocked in, and the
/// share in which it broke atomicity.
pub fn svg(results: &[ProtocolResults], threshold_ms: u64, title: &str) -> String {
    use std::fmt::Write as _;
    let workloads: Vec<&'static str> =
        results.first().map(|r| r.workloads.iter().map(|(n, ..)| *n).collect()).unwrap_or_default();
    let bar = 9usize;
    let group = bar * results.len() + 8;
    let label_w = 270usize;
    let panel_w = 300usize;
    let top = 70 + 16 * results.len();
    let height = top + group * workloads.len() + 60;
    let width = label_w + 2 * panel_w + 80;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#fff"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="10" y="22" font-size="16" font-weight="bold">{}</text>"#,
        escape(title)
    );
    // Legend with the happy-path cost of each protocol.
    for (i, r) in results.iter().enumerate() {
        let (x, y) = (10, 34 + i * 16);
        let color = color_of(r.protocol);
        let h = r.happy_path;
        let _ = writeln!(s, r#"<rect x="{x}" y="{y}" width="12" height="12" fill="{color}"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{} — happy path: {} messages, {} message delays, {} forced writes</text>"#,
            x + 16,
            y + 10,
            r.protocol,
            h.messages,
            h.message_delays,
            h.forced_writes
        );
    }
    let panels = [
        (format!("runs blocked > {threshold_ms} ms (%)"), 0usize),
        ("runs breaking atomicity (%)".to_string(), 1usize),
    ];
    for (title, panel) in &panels {
        let x0 = label_w + panel * (panel_w + 40);
        let _ = writeln!(
            s,
            r#"<text x="{x0}" y="{}" font-weight="bold">{}</text>"#,
            top - 12,
            escape(title)
        );
        for tick in [0, 25, 50, 75, 100] {
            let x = x0 + tick * panel_w / 100;
            let _ = writeln!(
                s,
                r##"<line x1="{x}" y1="{top}" x2="{x}" y2="{}" stroke="#e5e5e5"/>"##,
                height - 50
            );
            let _ = writeln!(
                s,
                r##"<text x="{x}" y="{}" text-anchor="middle" fill="#666">{tick}</text>"##,
                height - 36
            );
        }
    }
    for (w, name) in workloads.iter().enumerate() {
        let y0 = top + w * group;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            label_w - 8,
            y0 + group / 2 + 2,
            escape(name)
        );
        for (p, r) in results.iter().enumerate() {
            let Some((_, runs, summary)) = r.workloads.get(w) else { continue };
            let color = color_of(r.protocol);
            let y = y0 + p * bar;
            for (panel, value) in [
                (0usize, percent(summary.blocked_runs, *runs)),
                (1, percent(summary.failed_runs, *runs)),
            ] {
                let x0 = label_w + panel * (panel_w + 40);
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let len = (value / 100.0 * panel_w as f64).round() as usize;
                let _ = writeln!(
                    s,
                    r#"<rect x="{x0}" y="{y}" width="{}" height="{}" fill="{color}"/>"#,
                    len.max(1),
                    bar - 1
                );
                if value > 0.0 {
                    let _ = writeln!(
                        s,
                        r##"<text x="{}" y="{}" font-size="9" fill="#333">{value:.1}</text>"##,
                        x0 + len + 3,
                        y + bar - 1
                    );
                }
            }
        }
    }
    s.push_str("</svg>\n");
    s
}
