//! Exhaustive model checking of the database path: the real `concord_commit::xa::Coordinator`
//! against model SQL/XA databases (`concord_commit::xa::model`, which the conformance suite
//! holds to what PostgreSQL, MariaDB and Redis do), for one transaction over a few branches.
//!
//! A depth-first search over every interleaving of: reserving and beginning the transaction;
//! delivering any call to its database (which may refuse a prepare, and whose connection may
//! drop around the call — the call ran or not, the coordinator sees an error); delivering any
//! answer; firing any armed timer (fully asynchronous: however early); completing the log's
//! sync; crashing the coordinator (unsynced records lost) and restarting it from its log;
//! a reconciliation pass (every prepared branch is an inquiry the core answers, carried out);
//! an operator finishing a prepared branch by hand. Faults and timer firings have budgets; states
//! are deduplicated by a hash of everything in them.
//!
//! In every reachable state:
//! * no branch was committed by the coordinator before the COMMIT decision was durable, unless
//!   the transaction has one branch (one phase: that branch decides);
//! * no transaction has one branch committed and another rolled back by the coordinator;
//! * the client was not told the opposite of what the coordinator did to any branch;
//! * a branch rolled back by hand after a durable COMMIT decision, once the coordinator has
//!   finished every other branch, has been seen as a heuristic outcome — checked in the states
//!   where nothing else can happen.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{Hash, Hasher};

use concord_commit::two_phase::Timer;
use concord_commit::xa::model::{BranchState, Finish, ResourceManager};
use concord_commit::xa::{self, Answer, Call, Completion, Effect, Record, Work};
use concord_commit::Durability;
use concord_types::{Decision, NodeId, TxnId, Vote};

use crate::hash::Fnv1a;

const COORDINATOR: NodeId = NodeId(100);

/// What to explore.
#[derive(Debug, Clone, Copy)]
pub struct DbBounds {
    /// Branches of the transaction (1: the one-phase path).
    pub branches: u32,
    /// The last branch only reads.
    pub read_only_last: bool,
    pub coordinator_crashes: u8,
    pub dropped_connections: u8,
    pub refusals: u8,
    pub hand_resolves: u8,
    pub reconciliations: u8,
    pub timer_fires: u8,
}

#[derive(Debug, Default)]
pub struct DbExploration {
    pub states: u64,
    /// Where nothing else could happen.
    pub final_states: u64,
    pub violations: Vec<String>,
}

/// A database: the simulator's resource-manager model (held by the conformance suite to what
/// the real ones do) and what the checks need to know of its history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Db {
    rm: ResourceManager<()>,
    /// The client's branch writes.
    wrote: bool,
    /// The coordinator (or its rollback by name) ended a prepared branch the ABORT way.
    rolled_back_prepared: bool,
    /// An operator finished it by hand, which way.
    by_hand: Option<Decision>,
}

impl Db {
    fn committed(&self) -> bool {
        self.rm.state(&()) == BranchState::Committed
    }
    fn prepared(&self) -> bool {
        self.rm.state(&()) == BranchState::Prepared
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    xa: xa::Coordinator,
    up: bool,
    dbs: BTreeMap<NodeId, Db>,
    txn: Option<TxnId>,
    begun: bool,
    /// In flight to a database: (node, call, its answer is lost, reconciliation's).
    calls: Vec<(NodeId, Call, bool, bool)>,
    /// In flight back: (node, answer, reconciliation's).
    answers: Vec<(NodeId, Answer, bool)>,
    timers: Vec<Timer>,
    durable: Vec<Record>,
    pending: Vec<(Record, Durability)>,
    decided_durable: bool,
    client: Option<Decision>,
    heuristic_seen: BTreeSet<NodeId>,
    read_only_votes: BTreeSet<NodeId>,
    crashes: u8,
    drops: u8,
    refusals: u8,
    hand: u8,
    reconciles: u8,
    fires: u8,
}

fn config() -> concord_commit::two_phase::Config {
    xa::config(1_000, 100, 1_000, 10, 8)
}

impl State {
    fn fingerprint(&self) -> u64 {
        let mut h = Fnv1a::default();
        self.hash(&mut h);
        h.finish()
    }

    fn apply(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Call { node, call, .. } => self.calls.push((node, call, false, false)),
                Effect::Persist { record, durability } => self.pending.push((record, durability)),
                Effect::SetTimer { timer, .. } => self.timers.push(timer),
                Effect::Reserved { txn, .. } => self.txn = Some(txn),
                Effect::Rejected { .. } | Effect::Ready => {}
                Effect::Settled { decision, .. } => self.client = Some(decision),
                Effect::Recovered { node, completion: Completion::Heuristic(_), .. } => {
                    self.heuristic_seen.insert(node);
                }
                Effect::Recovered { .. } => {}
            }
        }
    }

    /// Database `node` serves `call`; `drop`: the connection dropped around it, `ran` whether
    /// the call reached the database anyway.
    fn serve(&mut self, node: NodeId, call: Call, refuse: bool, drop: bool, ran: bool) -> Answer {
        let db = self.dbs.get_mut(&node).expect("a branch's database");
        match call {
            Call::Prepare => {
                let vote = if ran { db.rm.prepare(&(), refuse) } else { Vote::No };
                if drop {
                    // The engine votes NO and rolls back by name (assume it fails: the worse
                    // case; reconciliation finds the branch).
                    return Answer::Voted { vote: Vote::No, reason: Some("dropped".into()) };
                }
                Answer::Voted { vote, reason: None }
            }
            Call::CommitOnePhase => {
                if ran {
                    db.rm.commit_one_phase(&(), refuse);
                }
                // A lost answer is settled from the marker; drop just delays it.
                if drop {
                    return Answer::OnePhase(Err("dropped".into()));
                }
                let d = if db.committed() { Decision::Commit } else { Decision::Abort };
                Answer::OnePhase(Ok((d, None)))
            }
            Call::SettleOnePhase => {
                let d = if db.committed() { Decision::Commit } else { Decision::Abort };
                Answer::OnePhase(Ok((d, None)))
            }
            Call::Finish(decision) => {
                let completion = if !ran {
                    Completion::Failed("dropped".into())
                } else if db.rm.finish(&(), decision) == Finish::Done {
                    if decision == Decision::Abort {
                        db.rolled_back_prepared = true;
                    }
                    Completion::Done
                } else {
                    let actual = if db.committed() { Decision::Commit } else { Decision::Abort };
                    if actual == decision {
                        Completion::Done
                    } else {
                        Completion::Heuristic(actual)
                    }
                };
                if drop && ran {
                    return Answer::Finished(Completion::Failed("dropped".into()));
                }
                Answer::Finished(completion)
            }
        }
    }

    fn check(&self, bounds: &DbBounds, out: &mut Vec<String>) {
        let multi = bounds.branches > 1;
        let coordinator_committed = self.dbs.values().any(|d| d.committed() && d.by_hand.is_none());
        if multi && coordinator_committed && !self.decided_durable {
            out.push(format!("a branch committed before the decision was durable: {self:?}"));
        }
        if coordinator_committed && self.dbs.values().any(|d| d.rolled_back_prepared) {
            out.push(format!("one branch committed, another rolled back: {self:?}"));
        }
        match self.client {
            Some(Decision::Commit) if self.dbs.values().any(|d| d.rolled_back_prepared) => {
                out.push(format!("told COMMIT, a branch was rolled back: {self:?}"));
            }
            Some(Decision::Abort) if coordinator_committed => {
                out.push(format!("told ABORT, a branch was committed: {self:?}"));
            }
            _ => {}
        }
    }

    fn check_final(&self, out: &mut Vec<String>) {
        // Nothing else can happen: a client told COMMIT finds every writer committed (those
        // finished by hand aside, for better or worse).
        if self.client == Some(Decision::Commit) {
            for (node, d) in &self.dbs {
                // Committed, or still prepared (the budget of timer firings stopped the
                // core's resends), or read-only, or finished by hand: anything else was lost.
                let fine = d.committed()
                    || d.prepared()
                    || d.by_hand.is_some()
                    || self.read_only_votes.contains(node);
                if !fine {
                    out.push(format!("told COMMIT, branch {node} ended uncommitted: {self:?}"));
                }
            }
        }
        if !self.decided_durable || !self.up {
            return;
        }
        let others_done = self.dbs.values().all(|d| !d.prepared());
        for (node, db) in &self.dbs {
            if db.by_hand == Some(Decision::Abort)
                && others_done
                && !self.heuristic_seen.contains(node)
            {
                // Only a claim once the core has run out of attempts it could still make: the
                // budget of timer firings may have stopped it first.
                if self.xa.inquiry_answer(self.txn.expect("decided")) != Some(Decision::Commit) {
                    out.push(format!("a hand rollback after COMMIT went unseen: {self:?}"));
                }
            }
        }
    }
}

/// Every successor of `s`.
fn successors(s: &State, b: &DbBounds) -> Vec<State> {
    let mut next = Vec::new();
    let nodes: Vec<NodeId> = s.dbs.keys().copied().collect();
    if s.up {
        // The client reserves, opens its branches, and commits.
        if s.txn.is_none() && s.xa.is_ready() {
            let mut n = s.clone();
            let (_, effects) = n.xa.reserve();
            n.apply(effects);
            if let Some(txn) = n.txn {
                let _ = txn;
                for (i, node) in nodes.iter().enumerate() {
                    let wrote = !(b.read_only_last && i + 1 == nodes.len() && nodes.len() > 1);
                    let db = n.dbs.get_mut(node).expect("configured");
                    db.rm.begin(&()).expect("one transaction");
                    db.rm.execute(&(), wrote).expect("just opened");
                    db.wrote = wrote;
                }
            }
            next.push(n);
        }
        if let (Some(txn), false) = (s.txn, s.begun) {
            let mut n = s.clone();
            n.begun = true;
            let work =
                nodes.iter().map(|node| (*node, Work { wrote: s.dbs[node].wrote })).collect();
            let (_, effects) = n.xa.begin(txn, work);
            n.apply(effects);
            next.push(n);
        }
        for i in 0..s.answers.len() {
            let mut n = s.clone();
            let (node, answer, reconcile) = n.answers.remove(i);
            if let Answer::Finished(Completion::Heuristic(_)) = answer {
                n.heuristic_seen.insert(node);
            }
            let txn = n.txn.expect("answers follow a reservation");
            let effects = if reconcile {
                // Reconciliation finished a listed branch: a COMMIT done counts as its ack.
                match answer {
                    Answer::Finished(Completion::Done | Completion::Heuristic(_))
                        if n.xa.inquiry_answer(txn) == Some(Decision::Commit) =>
                    {
                        n.xa.acked(txn, node)
                    }
                    _ => Vec::new(),
                }
            } else {
                n.xa.answer(txn, node, answer)
            };
            n.apply(effects);
            next.push(n);
        }
        if s.fires < b.timer_fires {
            for i in 0..s.timers.len() {
                let mut n = s.clone();
                let timer = n.timers.remove(i);
                n.fires += 1;
                let effects = n.xa.timer(timer);
                n.apply(effects);
                next.push(n);
            }
        }
        if !s.pending.is_empty() {
            let mut n = s.clone();
            for (record, durability) in std::mem::take(&mut n.pending) {
                if matches!(record, Record::CommitDecided { .. }) {
                    n.decided_durable = true;
                }
                n.durable.push(record.clone());
                if durability == Durability::Forced {
                    let effects = n.xa.persisted(record);
                    n.apply(effects);
                }
            }
            next.push(n);
        }
        if s.crashes < b.coordinator_crashes {
            let mut n = s.clone();
            n.crashes += 1;
            n.up = false;
            n.pending.clear();
            n.answers.clear();
            n.timers.clear();
            // Calls on the wire may still reach their databases; their answers are lost.
            for (_, _, lost, _) in &mut n.calls {
                *lost = true;
            }
            for db in n.dbs.values_mut() {
                db.rm.drop_connections();
            }
            next.push(n);
        }
        if s.reconciles < b.reconciliations {
            if let Some(txn) = s.txn {
                let mut n = s.clone();
                n.reconciles += 1;
                for node in &nodes {
                    if n.dbs[node].prepared() {
                        if let Some(decision) = n.xa.inquiry_answer(txn) {
                            n.calls.push((*node, Call::Finish(decision), false, true));
                        }
                    }
                }
                next.push(n);
            }
        }
    } else {
        let mut n = s.clone();
        n.up = true;
        n.xa = xa::Coordinator::new(COORDINATOR, config());
        let effects = n.xa.restart(n.durable.clone());
        n.apply(effects);
        next.push(n);
    }
    // Calls reach databases whether or not their sender still lives.
    for i in 0..s.calls.len() {
        let (node, call, lost, reconcile) = s.calls[i];
        let mut outcomes = vec![(false, false, true)];
        if s.refusals < b.refusals && call == Call::Prepare {
            outcomes.push((true, false, true));
        }
        if s.drops < b.dropped_connections {
            outcomes.push((false, true, true));
            outcomes.push((false, true, false));
        }
        for (refuse, drop, ran) in outcomes {
            let mut n = s.clone();
            n.calls.remove(i);
            n.refusals += u8::from(refuse);
            n.drops += u8::from(drop);
            let answer = n.serve(node, call, refuse, drop, ran);
            if let Answer::Voted { vote: Vote::ReadOnly, .. } = answer {
                n.read_only_votes.insert(node);
            }
            if !lost && n.up {
                n.answers.push((node, answer, reconcile));
            }
            next.push(n);
        }
    }
    if s.hand < b.hand_resolves {
        for node in &nodes {
            if s.dbs[node].prepared() {
                for decision in [Decision::Commit, Decision::Abort] {
                    let mut n = s.clone();
                    n.hand += 1;
                    let db = n.dbs.get_mut(node).expect("configured");
                    db.rm.finish(&(), decision);
                    db.by_hand = Some(decision);
                    next.push(n);
                }
            }
        }
    }
    next
}

/// Explores every reachable state within `bounds`.
pub fn explore_databases(bounds: DbBounds) -> DbExploration {
    let mut xa = xa::Coordinator::new(COORDINATOR, config());
    let mut start = State {
        xa: xa.clone(),
        up: true,
        dbs: (1..=bounds.branches).map(|i| (NodeId(i), Db::default())).collect(),
        txn: None,
        begun: false,
        calls: Vec::new(),
        answers: Vec::new(),
        timers: Vec::new(),
        durable: Vec::new(),
        pending: Vec::new(),
        decided_durable: false,
        client: None,
        heuristic_seen: BTreeSet::new(),
        read_only_votes: BTreeSet::new(),
        crashes: 0,
        drops: 0,
        refusals: 0,
        hand: 0,
        reconciles: 0,
        fires: 0,
    };
    let effects = xa.restart(Vec::new());
    start.xa = xa;
    start.apply(effects);
    let mut seen = HashSet::new();
    let mut stack = vec![start];
    let mut result = DbExploration::default();
    while let Some(state) = stack.pop() {
        if !seen.insert(state.fingerprint()) {
            continue;
        }
        result.states += 1;
        state.check(&bounds, &mut result.violations);
        if result.violations.len() > 3 {
            break;
        }
        let next = successors(&state, &bounds);
        if next.is_empty() {
            result.final_states += 1;
            state.check_final(&mut result.violations);
        }
        stack.extend(next);
    }
    result
}
