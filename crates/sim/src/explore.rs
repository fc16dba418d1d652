//! Exhaustive model checking of the real protocol cores for small configurations.
//!
//! A depth-first search over every interleaving of: the client's request, delivering any
//! message in flight, losing one (a partition is a set of losses), firing a timer, syncing a
//! node's log, crashing a node and restarting it — each fault within a budget. States are
//! deduplicated by a fingerprint of everything in them (cores, logs, network, timers, budgets).
//! In every reachable state, agreement must hold: no two participants decided differently, and
//! the client was not told the opposite of what a participant did.
//!
//! Two timing models ([`Timeouts`]):
//! * `Anytime` — fully asynchronous: an armed timer may fire at any moment, however early.
//!   2PC and Paxos Commit must keep agreement even so.
//! * `WhenQuiescent` — synchronous: a timer fires only when nothing else can happen (no message
//!   deliverable, no log sync pending), i.e. timeouts are longer than any delay. 3PC is meant
//!   for this world; with a partition allowed it still breaks, and the counterexample says how.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use concord_commit::status::{StatusQuery, Verdict};
use concord_commit::{Branch, Command, Core, Durability, Input, Protocol, Topology};
use concord_types::{Decision, NodeId, RequestId, TxnId, Write};

use crate::config::COORDINATOR;
use crate::hash::Fnv1a;

/// When a timer may fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeouts {
    Anytime,
    WhenQuiescent,
}

/// What to explore.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub participants: u32,
    /// F, for protocols with acceptors.
    pub fault_tolerance: u32,
    pub crashes: u8,
    /// Whether a crashed node may restart (crash-recovery) or stays down (fail-stop).
    pub restarts: bool,
    pub losses: u8,
    /// Partitions allowed: each cuts the nodes in two for the rest of the run.
    pub partitions: u8,
    pub timer_fires: u8,
    pub timeouts: Timeouts,
    /// 2PC's early acknowledgement switch (the other switches keep their defaults).
    pub early_ack: bool,
    /// The forgetting switch (2PC and Paxos Commit): FORGET after every finished transaction.
    pub forget: bool,
    /// The last participant refuses its write (it would take a value below zero), so the
    /// transaction must abort: the NO vote, the one-phase abort and their records explored.
    pub refuse: bool,
    /// Status queries a client may make, at any moment once the transaction has an id: node 0
    /// asks every participant, and the verdict must agree with every decision, before and
    /// after it (`invariants/status_honesty.rs`).
    pub status_probes: u8,
    /// 2PC: forgotten outcomes a participant keeps for status queries (0: none, so every
    /// question below the forget mark meets FORGOTTEN).
    pub forgotten_kept: u32,
    /// Give up (and say so) past this many distinct states.
    pub max_states: u64,
}

/// A counterexample: the property, and the steps that reach the state breaking it.
#[derive(Debug, Clone)]
pub struct Counterexample {
    pub property: String,
    pub steps: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Exploration {
    pub states: u64,
    pub transitions: u64,
    pub max_depth: usize,
    /// False if `max_states` stopped the search early.
    pub complete: bool,
    pub counterexample: Option<Counterexample>,
}

enum Role<P: Protocol> {
    Coordinator(P::Coordinator),
    Participant(P::Participant),
    Acceptor(P::Acceptor),
}

/// The bounds every role's core must meet to be explored: cloned per transition, hashed per state.
pub trait Explorable: Protocol
where
    Self::Coordinator: Clone + Hash,
    Self::Participant: Clone + Hash,
    Self::Acceptor: Clone + Hash,
{
}

impl<P: Protocol> Explorable for P
where
    P::Coordinator: Clone + Hash,
    P::Participant: Clone + Hash,
    P::Acceptor: Clone + Hash,
{
}

impl<P: Explorable> Clone for Role<P>
where
    P::Coordinator: Clone + Hash,
    P::Participant: Clone + Hash,
    P::Acceptor: Clone + Hash,
{
    fn clone(&self) -> Self {
        match self {
            Role::Coordinator(c) => Role::Coordinator(c.clone()),
            Role::Participant(p) => Role::Participant(p.clone()),
            Role::Acceptor(a) => Role::Acceptor(a.clone()),
        }
    }
}

impl<P: Explorable> Hash for Role<P>
where
    P::Coordinator: Clone + Hash,
    P::Participant: Clone + Hash,
    P::Acceptor: Clone + Hash,
{
    fn hash<H: Hasher>(&self, h: &mut H) {
        match self {
            Role::Coordinator(c) => (0u8, c).hash(h),
            Role::Participant(p) => (1u8, p).hash(h),
            Role::Acceptor(a) => (2u8, a).hash(h),
        }
    }
}

struct World<P: Protocol> {
    nodes: Vec<Option<Role<P>>>,
    durable: Vec<Vec<P::Record>>,
    pending: Vec<Vec<(P::Record, Durability)>>,
    /// Messages in flight, kept sorted by fingerprint so equal multisets hash equally.
    network: Vec<(u64, NodeId, NodeId, P::Msg)>,
    timers: Vec<(u64, NodeId, P::Timer)>,
    submitted: bool,
    crashes_left: u8,
    losses_left: u8,
    partitions_left: u8,
    timers_left: u8,
    /// While partitioned: each node's side.
    cut: Option<Vec<bool>>,
    decisions: Vec<Option<Decision>>,
    client: Option<Decision>,
    /// The transaction's id, once the coordinator named it.
    txn: Option<TxnId>,
    probes_left: u8,
    /// A status query waiting for answers, and the verdict of the last one.
    query: Option<StatusQuery>,
    verdict: Option<Verdict>,
    violation: Option<String>,
}

impl<P: Explorable> Clone for World<P>
where
    P::Coordinator: Clone + Hash,
    P::Participant: Clone + Hash,
    P::Acceptor: Clone + Hash,
{
    fn clone(&self) -> Self {
        World {
            nodes: self.nodes.clone(),
            durable: self.durable.clone(),
            pending: self.pending.clone(),
            network: self.network.clone(),
            timers: self.timers.clone(),
            submitted: self.submitted,
            crashes_left: self.crashes_left,
            losses_left: self.losses_left,
            partitions_left: self.partitions_left,
            timers_left: self.timers_left,
            cut: self.cut.clone(),
            decisions: self.decisions.clone(),
            client: self.client,
            txn: self.txn,
            probes_left: self.probes_left,
            query: self.query.clone(),
            verdict: self.verdict,
            violation: self.violation.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Submit,
    Deliver(usize),
    Lose(usize),
    Fire(usize),
    Sync(usize),
    Crash(usize),
    Restart(usize),
    /// Cut the nodes whose bit is set in the mask (node 0's side is the other).
    Partition(u32),
    /// A client asks for the transaction's status: node 0 asks every participant.
    Probe,
}

/// A decision made after a status verdict must not contradict it.
fn check_verdict<P: Protocol>(w: &mut World<P>, decision: Decision, who: &str) {
    let contradicts = matches!(
        (w.verdict, decision),
        (Some(Verdict::Committed), Decision::Abort) | (Some(Verdict::Aborted), Decision::Commit)
    );
    if contradicts {
        let verdict = w.verdict.expect("matched Some");
        w.violation
            .get_or_insert(format!("status-honesty: status said {verdict}, then {who} {decision}"));
    }
}

fn fingerprint<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut h = Fnv1a::default();
    value.hash(&mut h);
    h.finish()
}

struct Model<P: Protocol> {
    config: P::Config,
    participants: u32,
    timeouts: Timeouts,
    restarts: bool,
    refuse: bool,
}

impl<P: Explorable> Model<P>
where
    P::Coordinator: Clone + Hash,
    P::Participant: Clone + Hash,
    P::Acceptor: Clone + Hash,
{
    fn role(&self, node: usize) -> Role<P> {
        let id = NodeId(u32::try_from(node).expect("few nodes"));
        if id == COORDINATOR {
            Role::Coordinator(P::coordinator(id, &self.config))
        } else if id.0 <= self.participants {
            Role::Participant(P::participant(id, &self.config))
        } else {
            Role::Acceptor(P::acceptor(id, &self.config))
        }
    }

    fn fingerprint(w: &World<P>) -> u64 {
        let mut h = Fnv1a::default();
        w.nodes.hash(&mut h);
        w.durable.hash(&mut h);
        w.pending.hash(&mut h);
        for (fp, ..) in &w.network {
            fp.hash(&mut h);
        }
        for (fp, ..) in &w.timers {
            fp.hash(&mut h);
        }
        (w.submitted, w.crashes_left, w.losses_left, w.partitions_left, w.timers_left).hash(&mut h);
        (&w.cut, &w.decisions, w.client).hash(&mut h);
        (w.txn, w.probes_left, &w.query, w.verdict).hash(&mut h);
        h.finish()
    }

    fn input(w: &mut World<P>, node: usize, input: Input<P::Msg, P::Record, P::Timer>) {
        let mut out = Vec::new();
        match w.nodes[node].as_mut() {
            Some(Role::Coordinator(c)) => c.handle(input, &mut out),
            Some(Role::Participant(p)) => p.handle(input, &mut out),
            Some(Role::Acceptor(a)) => a.handle(input, &mut out),
            None => return,
        }
        let id = NodeId(u32::try_from(node).expect("few nodes"));
        for command in out {
            match command {
                Command::Send { to, msg } => {
                    // The runtime refuses a message the sender's role never sends to the
                    // receiver's (`Protocol::may_send`): every send must pass the rule.
                    let role_of = |n: usize| {
                        w.nodes[n].as_ref().map(|role| match role {
                            Role::Coordinator(_) => concord_commit::NodeRole::Coordinator,
                            Role::Participant(_) => concord_commit::NodeRole::Participant,
                            Role::Acceptor(_) => concord_commit::NodeRole::Acceptor,
                        })
                    };
                    if let (Some(from_role), Some(to_role)) =
                        (role_of(node), role_of(to.0 as usize))
                    {
                        if !P::may_send(&msg, id, from_role, to_role) {
                            w.violation.get_or_insert(format!(
                                "role rule: {id} ({from_role:?}) sent {msg} to {to} ({to_role:?}), which the runtime refuses"
                            ));
                        }
                    }
                    if w.cut.as_ref().is_some_and(|side| side[node] != side[to.0 as usize]) {
                        continue; // across the partition: lost
                    }
                    let fp = fingerprint(&(id, to, &msg));
                    let at = w.network.partition_point(|(f, ..)| *f < fp);
                    w.network.insert(at, (fp, id, to, msg));
                }
                Command::Persist { record, durability } => {
                    w.pending[node].push((record, durability));
                }
                Command::SetTimer { timer, .. } => {
                    let fp = fingerprint(&(id, &timer));
                    if let Err(at) = w.timers.binary_search_by_key(&fp, |(f, ..)| *f) {
                        w.timers.insert(at, (fp, id, timer));
                    }
                }
                Command::Outcome { txn, decision } if id == COORDINATOR => {
                    if w.decisions.iter().flatten().any(|d| *d != decision) {
                        w.violation.get_or_insert(format!(
                            "agreement: the client was told {decision} {txn} against a participant"
                        ));
                    }
                    check_verdict(w, decision, "the client was told");
                    w.client = Some(decision);
                }
                Command::Outcome { txn, decision } => {
                    let index = node - 1;
                    if let Some(before) = w.decisions[index].filter(|d| *d != decision) {
                        w.violation.get_or_insert(format!(
                            "no-reversal: {id} decided {txn} {before}, then {decision}"
                        ));
                    }
                    w.decisions[index] = Some(decision);
                    let mut others = w.decisions.iter().enumerate().filter(|(i, _)| *i != index);
                    if let Some((other, _)) = others.find(|(_, d)| d.is_some_and(|d| d != decision))
                    {
                        w.violation.get_or_insert(format!(
                            "agreement: n{} and {id} decided {txn} differently",
                            other + 1
                        ));
                    }
                    if w.client.is_some_and(|c| c != decision) {
                        w.violation.get_or_insert(format!("agreement: {id} decided {txn} {decision} against what the client was told"));
                    }
                    check_verdict(w, decision, &format!("{id} decided"));
                }
                Command::Begun { txn, .. } => w.txn = Some(txn),
                Command::Reserved { .. } => {}
                Command::Rejected { .. } => {}
            }
        }
    }

    /// A message reaching node 0 that answers the waiting status query.
    fn status_answer(w: &mut World<P>, from: NodeId, msg: &P::Msg) {
        let Some((txn, answer)) = P::status_answer(msg) else { return };
        if Some(txn) != w.txn {
            return;
        }
        let Some(query) = w.query.as_mut() else { return };
        let Some(verdict) = query.answer(from, answer) else { return };
        w.query = None;
        w.verdict = Some(verdict);
        let against = match verdict {
            Verdict::Committed => Decision::Abort,
            Verdict::Aborted => Decision::Commit,
            Verdict::Forgotten => return,
        };
        let participant = w.decisions.iter().position(|d| *d == Some(against));
        if let Some(index) = participant {
            w.violation.get_or_insert(format!(
                "status-honesty: status said {verdict}, but n{} decided {against}",
                index + 1
            ));
        } else if w.client == Some(against) {
            w.violation.get_or_insert(format!(
                "status-honesty: status said {verdict}, but the client was told {against}"
            ));
        }
    }

    fn actions(&self, w: &World<P>) -> Vec<Action> {
        let mut actions = Vec::new();
        if !w.submitted && w.nodes[0].is_some() {
            actions.push(Action::Submit);
        }
        for (i, (_, _, to, _)) in w.network.iter().enumerate() {
            if w.nodes[to.0 as usize].is_some() {
                actions.push(Action::Deliver(i));
            }
        }
        for (n, pending) in w.pending.iter().enumerate() {
            if !pending.is_empty() && w.nodes[n].is_some() {
                actions.push(Action::Sync(n));
            }
        }
        // Quiescent: no delivery or sync possible (the client's request may still be pending).
        let quiescent = actions.iter().all(|a| matches!(a, Action::Submit));
        if w.timers_left > 0 && (self.timeouts == Timeouts::Anytime || quiescent) {
            for (i, (_, node, _)) in w.timers.iter().enumerate() {
                if w.nodes[node.0 as usize].is_some() {
                    actions.push(Action::Fire(i));
                }
            }
        }
        if w.losses_left > 0 {
            actions.extend((0..w.network.len()).map(Action::Lose));
        }
        if w.probes_left > 0 && w.query.is_none() && w.txn.is_some() && w.nodes[0].is_some() {
            actions.push(Action::Probe);
        }
        if w.partitions_left > 0 && w.cut.is_none() {
            let nodes = u32::try_from(w.nodes.len()).expect("few nodes");
            // Every way to put a non-empty set of nodes (not node 0) on the far side.
            actions.extend((1..(1u32 << (nodes - 1))).map(|m| Action::Partition(m << 1)));
        }
        for (n, core) in w.nodes.iter().enumerate() {
            match core {
                Some(_) if w.crashes_left > 0 => actions.push(Action::Crash(n)),
                None if self.restarts => actions.push(Action::Restart(n)),
                None => {}
                Some(_) => {}
            }
        }
        actions
    }

    fn describe(w: &World<P>, action: Action) -> String {
        match action {
            Action::Submit => "client submits the transaction to n0".to_string(),
            Action::Deliver(i) => {
                let (_, from, to, msg) = &w.network[i];
                format!("deliver {from} → {to}: {msg}")
            }
            Action::Lose(i) => {
                let (_, from, to, msg) = &w.network[i];
                format!("LOSE {from} → {to}: {msg}")
            }
            Action::Fire(i) => {
                let (_, node, timer) = &w.timers[i];
                format!("{node}'s timer fires: {timer}")
            }
            Action::Sync(n) => {
                let records: Vec<String> =
                    w.pending[n].iter().map(|(r, _)| r.to_string()).collect();
                format!("n{n} syncs its log: {}", records.join(", "))
            }
            Action::Crash(n) => format!("n{n} CRASHES (unsynced records lost)"),
            Action::Restart(n) => format!("n{n} restarts"),
            Action::Probe => "a client asks n0 for the status; n0 asks every participant".into(),
            Action::Partition(mask) => {
                let far: Vec<String> =
                    (0..32).filter(|i| mask & (1 << i) != 0).map(|i| format!("n{i}")).collect();
                format!("PARTITION: {{{}}} cut off from the rest", far.join(", "))
            }
        }
    }

    fn apply(&self, mut w: World<P>, action: Action) -> World<P> {
        match action {
            Action::Submit => {
                w.submitted = true;
                let delta = |n| if self.refuse && n == self.participants { -1 } else { 1 };
                let branches = (1..=self.participants)
                    .map(|n| Branch {
                        node: NodeId(n),
                        writes: vec![Write { key: 1, delta: delta(n) }],
                    })
                    .collect();
                Self::input(&mut w, 0, Input::Begin { request: RequestId(0), branches });
            }
            Action::Deliver(i) => {
                let (_, from, to, msg) = w.network.remove(i);
                if to == COORDINATOR {
                    Self::status_answer(&mut w, from, &msg);
                }
                Self::input(&mut w, to.0 as usize, Input::Message { from, msg });
            }
            Action::Probe => {
                w.probes_left -= 1;
                let txn = w.txn.expect("probes wait for the id");
                let inquiry =
                    P::status_inquiry(txn).expect("probes only for protocols that answer");
                let participants: Vec<NodeId> = (1..=self.participants).map(NodeId).collect();
                w.query = Some(StatusQuery::new(participants.iter().copied()));
                for to in participants {
                    if w.cut.as_ref().is_some_and(|side| side[0] != side[to.0 as usize]) {
                        continue;
                    }
                    let fp = fingerprint(&(COORDINATOR, to, &inquiry));
                    let at = w.network.partition_point(|(f, ..)| *f < fp);
                    w.network.insert(at, (fp, COORDINATOR, to, inquiry.clone()));
                }
            }
            Action::Lose(i) => {
                w.network.remove(i);
                w.losses_left -= 1;
            }
            Action::Fire(i) => {
                let (_, node, timer) = w.timers.remove(i);
                w.timers_left -= 1;
                Self::input(&mut w, node.0 as usize, Input::Timer(timer));
            }
            Action::Sync(n) => {
                let synced = std::mem::take(&mut w.pending[n]);
                w.durable[n].extend(synced.iter().map(|(r, _)| r.clone()));
                for (record, durability) in synced {
                    if durability == Durability::Forced {
                        Self::input(&mut w, n, Input::Persisted(record));
                    }
                }
            }
            Action::Crash(n) => {
                w.nodes[n] = None;
                w.pending[n].clear();
                let id = NodeId(u32::try_from(n).expect("few nodes"));
                w.timers.retain(|(_, node, _)| *node != id);
                w.crashes_left -= 1;
            }
            Action::Restart(n) => {
                w.nodes[n] = Some(self.role(n));
                let records = w.durable[n].clone();
                Self::input(&mut w, n, Input::Restart { records });
            }
            Action::Partition(mask) => {
                let side: Vec<bool> = (0..w.nodes.len()).map(|i| mask & (1 << i) != 0).collect();
                w.network.retain(|(_, from, to, _)| side[from.0 as usize] == side[to.0 as usize]);
                w.cut = Some(side);
                w.partitions_left -= 1;
            }
        }
        w
    }
}

/// Explores protocol `P` within `bounds`.
pub fn explore<P: Explorable>(bounds: Bounds) -> Exploration
where
    P::Coordinator: Clone + Hash,
    P::Participant: Clone + Hash,
    P::Acceptor: Clone + Hash,
{
    let acceptor_count = P::acceptor_count(bounds.fault_tolerance);
    let acceptors = (0..acceptor_count).map(|k| NodeId(bounds.participants + 1 + k)).collect();
    let switches = concord_commit::Switches {
        early_ack: bounds.early_ack,
        forget: bounds.forget,
        forgotten_kept: bounds.forgotten_kept,
        ..concord_commit::Switches::default()
    };
    let config =
        P::config(switches, &Topology { acceptors, fault_tolerance: bounds.fault_tolerance });
    let model = Model::<P> {
        config,
        participants: bounds.participants,
        timeouts: bounds.timeouts,
        restarts: bounds.restarts,
        refuse: bounds.refuse,
    };
    let nodes = (1 + bounds.participants + acceptor_count) as usize;
    let mut world = World::<P> {
        nodes: (0..nodes).map(|_| None).collect(),
        durable: vec![Vec::new(); nodes],
        pending: vec![Vec::new(); nodes],
        network: Vec::new(),
        timers: Vec::new(),
        submitted: false,
        crashes_left: bounds.crashes,
        losses_left: bounds.losses,
        partitions_left: bounds.partitions,
        timers_left: bounds.timer_fires,
        cut: None,
        decisions: vec![None; bounds.participants as usize],
        client: None,
        txn: None,
        probes_left: bounds.status_probes,
        query: None,
        verdict: None,
        violation: None,
    };
    for n in 0..nodes {
        world.nodes[n] = Some(model.role(n));
        Model::<P>::input(&mut world, n, Input::Restart { records: Vec::new() });
    }

    let mut visited: HashSet<u64> = HashSet::new();
    visited.insert(Model::<P>::fingerprint(&world));
    let mut result = Exploration {
        states: 1,
        transitions: 0,
        max_depth: 0,
        complete: true,
        counterexample: None,
    };
    // Depth-first: each frame is a state, its actions, the next one to try, and how we got here.
    let first = model.actions(&world);
    let mut stack: Vec<(World<P>, Vec<Action>, usize, String)> =
        vec![(world, first, 0, "initial state".to_string())];
    while let Some((state, actions, next, _)) = stack.last_mut() {
        let Some(&action) = actions.get(*next) else {
            stack.pop();
            continue;
        };
        *next += 1;
        let description = Model::<P>::describe(state, action);
        let child = model.apply(state.clone(), action);
        result.transitions += 1;
        if !visited.insert(Model::<P>::fingerprint(&child)) {
            continue;
        }
        result.states += 1;
        if let Some(property) = child.violation.clone() {
            let mut steps: Vec<String> =
                stack.iter().skip(1).map(|(.., how)| how.clone()).collect();
            steps.push(description);
            result.counterexample = Some(Counterexample { property, steps });
            return result;
        }
        if result.states >= bounds.max_states {
            result.complete = false;
            return result;
        }
        let child_actions = model.actions(&child);
        stack.push((child, child_actions, 0, description));
        result.max_depth = result.max_depth.max(stack.len() - 1);
    }
    result
}
