//! The seed documents' experiment: three nodes whose local writes fail 1%, 1% and 2% of the
//! time, 10,000 transactions. Without prepare, a failure after the others applied leaves the
//! transaction partially committed: 1 − 0.99·0.99·0.98 ≈ 3.95% of them (all-fail is negligible).
//! 2PC turns every such failure into a NO vote and a clean abort: 0 partial.

use super::{verdict, Scenario, Verdict};
use crate::config::SimConfig;
use crate::report::RunReport;
use crate::rng::Rng;
use crate::workload::independent;

pub const TRIALS: u32 = 10_000;
const FAILURE_RATES: [f64; 3] = [0.01, 0.01, 0.02];
/// 1 − (0.99 · 0.99 · 0.98), less the all-fail case.
pub const EXPECTED_PARTIAL: f64 = 0.0395;
/// Five standard deviations of a binomial(10 000, 0.0395) share: ±0.0097.
const TOLERANCE: f64 = 0.0097;

pub const SCENARIO: Scenario = Scenario {
    name: "naive-partial-failure",
    summary:
        "10,000 transfers, node failure rates 1%/1%/2%: naive ≈3.9% partially committed, 2PC 0",
    max_runs: 1,
    build,
    judge,
};

fn build(seed: u64) -> SimConfig {
    let mut rng = Rng::new(seed ^ 0x5EED_FA11);
    let workload = independent(&mut rng, TRIALS, 5_000, &FAILURE_RATES);
    let mut config = SimConfig::new(seed, 3, workload);
    config.max_events = 50_000_000;
    config
}

fn judge(protocol: &str, report: &RunReport) -> Verdict {
    let partial = report.split_txns as f64 / f64::from(TRIALS);
    let aborted = report.aborted as f64 / f64::from(TRIALS);
    let within = |x: f64| (x - EXPECTED_PARTIAL).abs() <= TOLERANCE;
    verdict(match protocol {
        "naive" if within(partial) => Ok(format!(
            "{} of {TRIALS} transactions partially committed ({:.2}%; the seed computes ≈3.95%)",
            report.split_txns,
            100.0 * partial
        )),
        "naive" => Err(format!("partial rate {:.2}%, expected ≈3.95%", 100.0 * partial)),
        "2pc" if report.split_txns == 0 && report.violations.is_empty() && within(aborted) => {
            Ok(format!(
                "0 of {TRIALS} partially committed; {} ({:.2}%) aborted cleanly on a NO vote",
                report.aborted,
                100.0 * aborted
            ))
        }
        "2pc" => Err(format!(
            "{} partial, {} violations, abort rate {:.2}%",
            report.split_txns,
            report.violations.len(),
            100.0 * aborted
        )),
        _ => return Verdict::NoExpectation,
    })
}
