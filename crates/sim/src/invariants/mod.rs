//! The properties every run is checked against, one file per property. Each file says where
//! its property comes from.
//!
//! Checks are of two kinds: *online* ones run as the simulator observes an event (a send, an
//! outcome, a record becoming durable), *end* ones run on the history once the run is over.
//!
//! | property            | file                | kind   |
//! |---------------------|---------------------|--------|
//! | agreement           | `agreement.rs`      | end    |
//! | validity            | `validity.rs`       | end    |
//! | no decision reversal| `no_reversal.rs`    | online |
//! | applied exactly once| `exactly_once.rs`   | both   |
//! | liveness after heal | `liveness.rs`       | end    |
//! | log before send     | `log_before_send.rs`| online |
//! | status honesty      | `status_honesty.rs` | end    |

pub mod agreement;
pub mod exactly_once;
pub mod liveness;
pub mod log_before_send;
pub mod no_reversal;
pub mod status_honesty;
pub mod validity;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use concord_commit::Branch;
use concord_types::{Decision, Key, NodeId, TxnId};

impl History {
    /// Whether `node` lost its log with `txn` below the horizon it restarted with: what it
    /// knew of `txn` went with the log, and it presumes nothing since.
    pub fn forgot(&self, node: NodeId, txn: TxnId) -> bool {
        self.logs_lost.iter().any(|&(n, horizon)| n == node && txn < horizon)
    }
}

/// A broken property: which, when, and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub property: &'static str,
    pub at_us: u64,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] at {:.3} ms: {}", self.property, self.at_us as f64 / 1000.0, self.detail)
    }
}

/// How the simulator learned that a participant decided a branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionSource {
    /// The participant's core emitted `Outcome`: it applied the decision.
    Outcome,
    /// The participant's decision record survived a crash it was written just before; the
    /// decision is applied when the log is replayed, with no `Outcome`.
    RecoveredRecord,
}

/// What the simulator observed, kept compact so that a sweep of a million runs stays fast.
#[derive(Debug, Default)]
pub struct History {
    /// The branches of every transaction the coordinator named.
    pub branches: HashMap<TxnId, Vec<Branch>>,
    /// Transactions some participant voted NO on.
    pub no_votes: HashSet<TxnId>,
    /// Branches that voted READ-ONLY (and so forgot the transaction).
    pub read_only_votes: HashSet<(NodeId, TxnId)>,
    /// When each participant first sent YES for a transaction.
    pub yes_at: HashMap<(NodeId, TxnId), u64>,
    /// Each participant's first decision per transaction, and when.
    pub participant_decisions: HashMap<(NodeId, TxnId), (Decision, u64)>,
    /// What the client was told.
    pub client_outcomes: HashMap<TxnId, Decision>,
    /// Coordinator decisions that became durable.
    pub logged: HashMap<TxnId, Decision>,
    /// Participant prepare records that became durable.
    pub durable_prepares: HashSet<(NodeId, TxnId)>,
    /// Transactions run with early acknowledgement: committed once every branch's prepare
    /// record is durable (seen from their prepare records).
    pub early_ack: HashSet<TxnId>,
    /// Every status verdict, and when it was reached.
    pub status_verdicts: Vec<(TxnId, concord_commit::status::Verdict, u64)>,
    /// Participants that lost their whole log (`SimConfig::log_loss`), with the horizon they
    /// restarted with.
    pub logs_lost: Vec<(NodeId, TxnId)>,
    pub violations: Vec<Violation>,
}

impl History {
    pub fn violate(&mut self, property: &'static str, at_us: u64, detail: String) {
        self.violations.push(Violation { property, at_us, detail });
    }

    /// A participant decided its branch of `txn`.
    pub fn participant_decided(
        &mut self,
        node: NodeId,
        txn: TxnId,
        decision: Decision,
        source: DecisionSource,
        now: u64,
    ) {
        // Only a branch that took part has a decision to agree on. A node asked about a
        // transaction it never held, or a read-only voter asked after it forgot its vote,
        // forces an ABORTED record before answering: a promise not to take part later, about
        // nothing it holds.
        let branch = self.branches.get(&txn).is_none_or(|b| b.iter().any(|b| b.node == node));
        if !branch || self.read_only_votes.contains(&(node, txn)) {
            return;
        }
        let previous = self.participant_decisions.get(&(node, txn)).copied();
        no_reversal::check_participant(self, node, txn, previous, decision, now);
        exactly_once::check_outcome(self, node, txn, previous, decision, source, now);
        self.participant_decisions.entry((node, txn)).or_insert((decision, now));
    }

    /// The coordinator told the client.
    pub fn client_told(&mut self, txn: TxnId, decision: Decision, now: u64) {
        let previous = self.client_outcomes.get(&txn).copied();
        no_reversal::check_client(self, txn, previous, decision, now);
        self.client_outcomes.entry(txn).or_insert(decision);
    }

    /// A status query reached its verdict.
    pub fn status_told(&mut self, txn: TxnId, verdict: concord_commit::status::Verdict, now: u64) {
        self.status_verdicts.push((txn, verdict, now));
    }

    /// A coordinator decision record became durable.
    pub fn decision_logged(&mut self, txn: TxnId, decision: Decision, now: u64) {
        let previous = self.logged.get(&txn).copied();
        no_reversal::check_logged(self, txn, previous, decision, now);
        self.logged.entry(txn).or_insert(decision);
    }

    /// Every decision anyone made about `txn`: participants', the log's, the client's.
    pub fn decisions_of(&self) -> BTreeMap<TxnId, TxnDecisions> {
        let mut all: BTreeMap<TxnId, TxnDecisions> = BTreeMap::new();
        for (&(node, txn), &(decision, _)) in &self.participant_decisions {
            // Decided before the transaction was named (a status query about a reserved id
            // reached it first): kept only if it turned out to be a branch that took part.
            let branch = self.branches.get(&txn).is_none_or(|b| b.iter().any(|b| b.node == node));
            if branch && !self.read_only_votes.contains(&(node, txn)) {
                all.entry(txn).or_default().participants.push((node, decision));
            }
        }
        for (&txn, &decision) in &self.logged {
            all.entry(txn).or_default().logged = Some(decision);
        }
        for (&txn, &decision) in &self.client_outcomes {
            all.entry(txn).or_default().client = Some(decision);
        }
        for d in all.values_mut() {
            d.participants.sort_unstable_by_key(|(n, _)| *n);
        }
        all
    }
}

/// All decisions about one transaction.
#[derive(Debug, Default, Clone)]
pub struct TxnDecisions {
    pub participants: Vec<(NodeId, Decision)>,
    pub logged: Option<Decision>,
    pub client: Option<Decision>,
}

impl TxnDecisions {
    pub fn any(&self, decision: Decision) -> bool {
        self.participants.iter().any(|(_, d)| *d == decision)
            || self.logged == Some(decision)
            || self.client == Some(decision)
    }

    /// Some participants committed and others aborted: the atomicity failure.
    pub fn is_split(&self) -> bool {
        let commits = self.participants.iter().filter(|(_, d)| *d == Decision::Commit).count();
        commits > 0 && commits < self.participants.len()
    }
}

/// What each participant looks like when the run ends.
#[derive(Debug, Clone)]
pub struct ParticipantEnd {
    pub node: NodeId,
    pub up: bool,
    pub in_doubt: Vec<TxnId>,
    pub values: BTreeMap<Key, i64>,
}

/// Runs every end-of-run check.
pub fn check_end(history: &mut History, participants: &[ParticipantEnd], end_us: u64) {
    let decisions = history.decisions_of();
    let mut found = Vec::new();
    agreement::check(&decisions, &mut found);
    validity::check(history, &decisions, &mut found);
    exactly_once::check_stores(history, participants, &mut found);
    liveness::check(history, &decisions, participants, &mut found);
    status_honesty::check(&history.status_verdicts, &decisions, &history.branches, &mut found);
    for (property, detail) in found {
        history.violate(property, end_us, detail);
    }
}
