//! The happy path of a protocol, measured: one transaction over `n` participants, all voting
//! YES, no faults. Messages exclude acknowledgements sent after the sender knows the outcome;
//! message delays are the longest causal chain of network hops to the last participant's
//! decision; forced writes are the syncs the transaction adds to an idle cluster.

use concord_commit::{Branch, Protocol};
use concord_types::{NodeId, Write};

use crate::config::{Placement, SimConfig, TxnSpec};

/// What one committed transaction costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HappyPath {
    pub messages: u64,
    pub message_delays: u32,
    pub forced_writes: u64,
}

fn config(participants: u32, fault_tolerance: u32, placement: Placement, txns: u32) -> SimConfig {
    let workload = (0..txns)
        .map(|_| TxnSpec {
            at_us: 1_000,
            branches: (1..=participants)
                .map(|n| Branch { node: NodeId(n), writes: vec![Write { key: 1, delta: 1 }] })
                .collect(),
        })
        .collect();
    let mut config = SimConfig::new(1, participants, workload);
    config.fault_tolerance = fault_tolerance;
    config.placement = placement;
    // Every node writes its own log; no sync is shared across transactions here anyway.
    config.disk.group_commit = false;
    config
}

/// Measures protocol `P` for `participants` participants and `fault_tolerance` = F.
pub fn measure<P: Protocol>(
    participants: u32,
    fault_tolerance: u32,
    placement: Placement,
) -> HappyPath {
    let idle = crate::simulate::<P>(config(participants, fault_tolerance, placement, 0));
    let busy = crate::simulate::<P>(config(participants, fault_tolerance, placement, 1));
    assert!(
        busy.violations.is_empty(),
        "{} broke a property on its happy path: {:?}",
        P::NAME,
        busy.violations
    );
    assert_eq!(busy.committed, 1, "{}'s happy path did not commit", P::NAME);
    HappyPath {
        messages: busy.messages_excluding_acks,
        message_delays: busy.message_delays,
        forced_writes: busy.syncs - idle.syncs,
    }
}

#[cfg(test)]
mod tests {
    //! The formulas of docs/protocols-compared.md, asserted against the simulator's counts,
    //! and Gray & Lamport's published figures reproduced under their co-location.
    use super::*;
    use concord_commit::paxos_commit::PaxosCommit;
    use concord_commit::three_phase::ThreePhase;
    use concord_commit::two_phase::TwoPhase;

    fn measured<P: Protocol>(n: u32, f: u32, placement: Placement) -> HappyPath {
        measure::<P>(n, f, placement)
    }

    #[test]
    fn two_phase_commit_costs_3n_messages_and_3_delays() {
        for n in 2..=6u32 {
            let h = measured::<TwoPhase>(n, 1, Placement::Separate);
            assert_eq!(h.messages, 3 * u64::from(n), "n={n}");
            assert_eq!(h.message_delays, 3, "n={n}");
            assert_eq!(h.forced_writes, 2 * u64::from(n) + 1, "n={n}");
        }
    }

    #[test]
    fn two_phase_commit_co_located_matches_the_paper_3n_minus_3_in_3_delays() {
        for n in 2..=6u32 {
            let h = measured::<TwoPhase>(n, 1, Placement::PaperColocated);
            assert_eq!(h.messages, 3 * u64::from(n) - 3, "n={n}");
            assert_eq!(h.message_delays, 3, "n={n}");
        }
        // Gray & Lamport §5: "for a transaction with 5 RMs, Two-Phase Commit uses 12 messages".
        assert_eq!(measured::<TwoPhase>(5, 1, Placement::PaperColocated).messages, 12);
    }

    #[test]
    fn paxos_commit_costs_n_times_f_plus_3_plus_f_plus_1_messages_and_4_delays() {
        for f in 1..=2u32 {
            for n in 2..=6u32 {
                let h = measured::<PaxosCommit>(n, f, Placement::Separate);
                let (n64, f64) = (u64::from(n), u64::from(f));
                assert_eq!(h.messages, n64 * (f64 + 3) + f64 + 1, "n={n} f={f}");
                assert_eq!(h.message_delays, 4, "n={n} f={f}");
                // Each participant: prepared + committed; each normal-case acceptor: one.
                assert_eq!(h.forced_writes, 2 * n64 + f64 + 1, "n={n} f={f}");
            }
        }
    }

    #[test]
    fn paxos_commit_co_located_matches_the_paper() {
        for f in 1..=2u32 {
            for n in (2 * f + 1)..=6u32 {
                let h = measured::<PaxosCommit>(n, f, Placement::PaperColocated);
                let (n64, f64) = (u64::from(n), u64::from(f));
                assert_eq!(h.messages, n64 * (f64 + 3) - 3, "n={n} f={f}");
                assert_eq!(h.message_delays, 4, "n={n} f={f}");
            }
        }
        // Gray & Lamport §5: "... regular Paxos Commit uses 17" (5 RMs, F = 1, co-located).
        assert_eq!(measured::<PaxosCommit>(5, 1, Placement::PaperColocated).messages, 17);
        // With F = 0 it would be 2PC's 3N − 3: the degenerate case of one acceptor.
    }

    #[test]
    fn three_phase_commit_costs_5n_messages_and_5_delays() {
        for n in 2..=6u32 {
            let h = measured::<ThreePhase>(n, 1, Placement::Separate);
            assert_eq!(h.messages, 5 * u64::from(n), "n={n}");
            assert_eq!(h.message_delays, 5, "n={n}");
            // prepared + pre-committed + committed per participant, and the decision.
            assert_eq!(h.forced_writes, 3 * u64::from(n) + 1, "n={n}");
        }
    }
}
