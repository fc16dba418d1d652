//! Workload generation: transactions over the participants, some of whose writes are refused.

use concord_commit::Branch;
use concord_types::{NodeId, Write};

use crate::config::TxnSpec;
use crate::rng::Rng;

/// A debit no balance can cover: the participant refuses it, and so votes NO. Large enough that
/// no sum of the workload's credits ever reaches it.
pub const REFUSED_DELTA: i64 = -(1 << 40);

/// Whether a branch carries a write its participant will refuse.
pub fn is_refused(branch: &Branch) -> bool {
    branch.writes.iter().any(|w| w.delta == REFUSED_DELTA)
}

/// Parameters of a random workload.
#[derive(Debug, Clone)]
pub struct WorkloadShape {
    pub txns: u32,
    /// Submissions are spread uniformly over `0..window_us`.
    pub window_us: u64,
    /// Keys per participant: fewer keys, more lock conflicts.
    pub keys: u64,
    /// Probability that a branch writes nothing (read-only).
    pub read_only_rate: f64,
    /// Probability that a branch carries a write its participant refuses.
    pub refused_rate: f64,
}

/// Random transactions over participants `1..=participants`, each touching at least one.
pub fn random(rng: &mut Rng, participants: u32, shape: &WorkloadShape) -> Vec<TxnSpec> {
    let mut specs: Vec<TxnSpec> = (0..shape.txns)
        .map(|_| {
            let at_us = rng.below(shape.window_us.max(1));
            let count = usize::try_from(rng.range(1, u64::from(participants))).expect("small");
            let mut nodes: Vec<u32> = (1..=participants).collect();
            // Partial Fisher–Yates: the first `count` entries are a uniform sample.
            for i in 0..count {
                let remaining = u64::try_from(nodes.len() - i).expect("small");
                let j = i + usize::try_from(rng.below(remaining)).expect("below a usize");
                nodes.swap(i, j);
            }
            let branches = nodes[..count]
                .iter()
                .map(|&n| Branch { node: NodeId(n), writes: random_writes(rng, shape) })
                .collect();
            TxnSpec { at_us, branches }
        })
        .collect();
    specs.sort_by_key(|s| s.at_us);
    specs
}

fn random_writes(rng: &mut Rng, shape: &WorkloadShape) -> Vec<Write> {
    if rng.chance(shape.read_only_rate) {
        return Vec::new();
    }
    let key = rng.below(shape.keys);
    let delta = if rng.chance(shape.refused_rate) {
        REFUSED_DELTA
    } else {
        i64::try_from(rng.range(1, 100)).expect("small")
    };
    vec![Write { key, delta }]
}

/// `count` transactions, one every `interval_us`, each writing a fresh key on every participant;
/// participant `i`'s write is refused with probability `refused_rates[i - 1]`.
pub fn independent(
    rng: &mut Rng,
    count: u32,
    interval_us: u64,
    refused_rates: &[f64],
) -> Vec<TxnSpec> {
    (0..count)
        .map(|i| TxnSpec {
            at_us: u64::from(i) * interval_us,
            branches: refused_rates
                .iter()
                .zip(1..)
                .map(|(&rate, node)| {
                    let delta = if rng.chance(rate) { REFUSED_DELTA } else { 1 };
                    Branch { node: NodeId(node), writes: vec![Write { key: u64::from(i), delta }] }
                })
                .collect(),
        })
        .collect()
}
