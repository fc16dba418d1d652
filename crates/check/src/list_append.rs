//! The list-append checker (after Kingsbury & Alvaro, "Elle", VLDB 2020).
//!
//! Appends make versions recoverable: a read of a key returns the whole list, so the longest
//! read of each key *is* its version order, and every element names its writer (values are
//! unique per key). From that, between transactions:
//! * **ww**: the writer of element i precedes the writer of element i + 1;
//! * **wr**: the writer of a read's last element precedes the reader;
//! * **rw**: a reader precedes the writer of the element after the last one it saw (for an
//!   empty read, the writer of the first element) — an anti-dependency.
//!
//! A cycle of ww edges is **G0**; a cycle of ww/wr edges with a wr edge, **G1c**; a cycle with
//! exactly one rw edge, **G-single**; with more, **G2**. Without a cycle: a read of an aborted
//! transaction's element is **G1a**, of an element that was not its writer's last append to the
//! key is **G1b**. Reads that are not prefixes of one another (incompatible order), repeated
//! elements, and elements nobody appended are reported too. Transactions that ended `info`
//! count as committed if anything they appended was read, and are left out otherwise.

use std::collections::{BTreeMap, HashMap};

use crate::history::{CompletedTxn, EventType, History, MicroOp};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnomalyKind {
    G0,
    G1a,
    G1b,
    G1c,
    GSingle,
    G2,
    IncompatibleOrder,
    DuplicateElements,
    GarbageRead,
    Internal,
}

impl AnomalyKind {
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::G0 => "G0",
            AnomalyKind::G1a => "G1a",
            AnomalyKind::G1b => "G1b",
            AnomalyKind::G1c => "G1c",
            AnomalyKind::GSingle => "G-single",
            AnomalyKind::G2 => "G2",
            AnomalyKind::IncompatibleOrder => "incompatible-order",
            AnomalyKind::DuplicateElements => "duplicate-elements",
            AnomalyKind::GarbageRead => "garbage-read",
            AnomalyKind::Internal => "internal",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    /// Indices into `History::transactions()`; for cycles, in cycle order.
    pub txns: Vec<usize>,
    pub explanation: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub committed: usize,
    pub failed: usize,
    pub indeterminate: usize,
    /// At most a few examples of each kind; `counts` has the totals.
    pub anomalies: Vec<Anomaly>,
    pub counts: BTreeMap<AnomalyKind, usize>,
}

impl Report {
    pub fn is_valid(&self) -> bool {
        self.counts.is_empty()
    }

    pub fn kinds(&self) -> Vec<AnomalyKind> {
        self.counts.keys().copied().collect()
    }

    fn add(&mut self, kind: AnomalyKind, txns: Vec<usize>, explanation: String) {
        let count = self.counts.entry(kind).or_default();
        *count += 1;
        if *count <= 3 {
            self.anomalies.push(Anomaly { kind, txns, explanation });
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} committed, {} failed, {} indeterminate; ",
            self.committed, self.failed, self.indeterminate
        )?;
        if self.is_valid() {
            return write!(f, "no anomalies");
        }
        let counts: Vec<String> =
            self.counts.iter().map(|(k, n)| format!("{} ×{n}", k.name())).collect();
        write!(f, "anomalies: {}", counts.join(", "))?;
        for a in &self.anomalies {
            write!(f, "\n  {}: {} (transactions {:?})", a.kind.name(), a.explanation, a.txns)?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edge {
    Ww,
    Wr,
    Rw,
}

struct Graph {
    out: Vec<Vec<(usize, Edge)>>,
}

impl Graph {
    fn add(&mut self, from: usize, to: usize, edge: Edge) {
        if from != to && !self.out[from].contains(&(to, edge)) {
            self.out[from].push((to, edge));
        }
    }

    /// Strongly connected components over the edges `allowed` admits (iterative Tarjan).
    fn components(&self, allowed: impl Fn(Edge) -> bool) -> Vec<usize> {
        let n = self.out.len();
        let mut index = vec![usize::MAX; n];
        let mut low = vec![0; n];
        let mut on_stack = vec![false; n];
        let mut comp = vec![usize::MAX; n];
        let mut stack = Vec::new();
        let mut next_index = 0;
        let mut next_comp = 0;
        for root in 0..n {
            if index[root] != usize::MAX {
                continue;
            }
            let mut work: Vec<(usize, usize)> = vec![(root, 0)];
            while let Some(&mut (v, ref mut edge_i)) = work.last_mut() {
                if *edge_i == 0 && index[v] == usize::MAX {
                    index[v] = next_index;
                    low[v] = next_index;
                    next_index += 1;
                    stack.push(v);
                    on_stack[v] = true;
                }
                if let Some(&(w, kind)) = self.out[v].get(*edge_i) {
                    *edge_i += 1;
                    if !allowed(kind) {
                        continue;
                    }
                    if index[w] == usize::MAX {
                        work.push((w, 0));
                    } else if on_stack[w] {
                        low[v] = low[v].min(index[w]);
                    }
                    continue;
                }
                work.pop();
                if let Some(&(parent, _)) = work.last() {
                    low[parent] = low[parent].min(low[v]);
                }
                if low[v] == index[v] {
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        comp[w] = next_comp;
                        if w == v {
                            break;
                        }
                    }
                    next_comp += 1;
                }
            }
        }
        comp
    }

    /// A path from `from` to `to` over `allowed` edges within one component, if any.
    fn path(
        &self,
        from: usize,
        to: usize,
        comp: &[usize],
        allowed: impl Fn(Edge) -> bool,
    ) -> Option<Vec<usize>> {
        let mut previous: HashMap<usize, usize> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([from]);
        previous.insert(from, from);
        while let Some(v) = queue.pop_front() {
            if v == to {
                let mut path = vec![to];
                let mut at = to;
                while at != from {
                    at = previous[&at];
                    path.push(at);
                }
                path.reverse();
                return Some(path);
            }
            for &(w, kind) in &self.out[v] {
                if allowed(kind) && comp[w] == comp[from] && !previous.contains_key(&w) {
                    previous.insert(w, v);
                    queue.push_back(w);
                }
            }
        }
        None
    }
}

/// Checks a list-append history.
pub fn check(history: &History) -> Report {
    check_transactions(&history.transactions())
}

pub fn check_transactions(txns: &[CompletedTxn]) -> Report {
    let mut report = Report::default();
    // Who appended what: (key, value) → (transaction, position among its appends to the key,
    // how many it made to the key).
    let mut writer: HashMap<(u64, u64), usize> = HashMap::new();
    let mut last_append: HashMap<(usize, u64), u64> = HashMap::new();
    for (i, t) in txns.iter().enumerate() {
        for op in &t.ops {
            if let MicroOp::Append { key, value } = *op {
                writer.insert((key, value), i);
                last_append.insert((i, key), value);
            }
        }
    }
    // Reads by committed transactions; info transactions count once something of theirs is read.
    let mut observed = vec![false; txns.len()];
    for t in txns.iter().filter(|t| t.kind == EventType::Ok) {
        for op in &t.ops {
            if let MicroOp::Read { key, value: Some(list) } = op {
                for v in list {
                    if let Some(&w) = writer.get(&(*key, *v)) {
                        observed[w] = true;
                    }
                }
            }
        }
    }
    let committed: Vec<bool> = txns
        .iter()
        .enumerate()
        .map(|(i, t)| t.kind == EventType::Ok || (t.kind == EventType::Info && observed[i]))
        .collect();
    report.committed = txns.iter().filter(|t| t.kind == EventType::Ok).count();
    report.failed = txns.iter().filter(|t| t.kind == EventType::Fail).count();
    report.indeterminate = txns.iter().filter(|t| t.kind == EventType::Info).count();

    // Reads of committed transactions, and the version order of each key (its longest read).
    let mut reads: Vec<(usize, u64, &Vec<u64>)> = Vec::new();
    for (i, t) in txns.iter().enumerate().filter(|(_, t)| t.kind == EventType::Ok) {
        let mut own: HashMap<u64, Vec<u64>> = HashMap::new();
        for op in &t.ops {
            match op {
                MicroOp::Append { key, value } => own.entry(*key).or_default().push(*value),
                MicroOp::Read { key, value: Some(list) } => {
                    if let Some(mine) = own.get(key) {
                        if !list.ends_with(mine) {
                            report.add(
                                AnomalyKind::Internal,
                                vec![i],
                                format!(
                                    "read of key {key} {list:?} misses its own appends {mine:?}"
                                ),
                            );
                        }
                    } else {
                        reads.push((i, *key, list));
                    }
                }
                MicroOp::Read { value: None, .. } => {}
            }
        }
    }
    let mut order: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for &(_, key, list) in &reads {
        let longest = order.entry(key).or_default();
        if list.len() > longest.len() {
            *longest = list.clone();
        }
    }
    for &(i, key, list) in &reads {
        let longest = &order[&key];
        if !longest.starts_with(list) {
            report.add(
                AnomalyKind::IncompatibleOrder,
                vec![i],
                format!("read of key {key} {list:?} is not a prefix of {longest:?}"),
            );
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = list.iter().find(|v| !seen.insert(**v)) {
            report.add(
                AnomalyKind::DuplicateElements,
                vec![i],
                format!("read of key {key} {list:?} holds {dup} twice"),
            );
        }
        for v in list {
            match writer.get(&(key, *v)) {
                None => report.add(
                    AnomalyKind::GarbageRead,
                    vec![i],
                    format!("read of key {key} holds {v}, which nobody appended"),
                ),
                Some(&w) if txns[w].kind == EventType::Fail => report.add(
                    AnomalyKind::G1a,
                    vec![w, i],
                    format!("read of key {key} holds {v}, appended by an aborted transaction"),
                ),
                Some(_) => {}
            }
        }
        if let Some(last) = list.last() {
            if let Some(&w) = writer.get(&(key, *last)) {
                if last_append.get(&(w, key)) != Some(last) {
                    report.add(
                        AnomalyKind::G1b,
                        vec![w, i],
                        format!("read of key {key} ends at {last}, an intermediate append of its writer"),
                    );
                }
            }
        }
    }

    // The dependency graph between committed transactions.
    let mut graph = Graph { out: vec![Vec::new(); txns.len()] };
    let writer_of = |key: u64, v: u64| writer.get(&(key, v)).copied().filter(|&w| committed[w]);
    for (&key, versions) in &order {
        for pair in versions.windows(2) {
            if let (Some(a), Some(b)) = (writer_of(key, pair[0]), writer_of(key, pair[1])) {
                graph.add(a, b, Edge::Ww);
            }
        }
    }
    // Committed appends no read observed come after every observed one (a read that held a
    // later element would hold them too); their order among themselves is unknown.
    let mut unobserved: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (&(key, value), &w) in &writer {
        let seen = order.get(&key).is_some_and(|o| o.contains(&value));
        if committed[w] && !seen {
            unobserved.entry(key).or_default().push(w);
        }
    }
    for (key, writers) in &unobserved {
        let last = order.get(key).and_then(|o| o.last()).and_then(|&v| writer_of(*key, v));
        for &w in writers {
            if let Some(last) = last {
                graph.add(last, w, Edge::Ww);
            }
        }
    }
    for &(i, key, list) in &reads {
        let versions = &order[&key];
        if !versions.starts_with(list) {
            continue; // already reported; its position in the order is meaningless
        }
        if let Some(w) = list.last().and_then(|&v| writer_of(key, v)) {
            graph.add(w, i, Edge::Wr);
        }
        if let Some(w) = versions.get(list.len()).and_then(|&v| writer_of(key, v)) {
            graph.add(i, w, Edge::Rw);
        } else if list.len() == versions.len() {
            // It read the whole observed order: it precedes every unobserved append.
            for &w in unobserved.get(&key).into_iter().flatten() {
                graph.add(i, w, Edge::Rw);
            }
        }
    }

    let ww = |e: Edge| e == Edge::Ww;
    let ww_wr = |e: Edge| e != Edge::Rw;
    let any = |_: Edge| true;
    let comp_ww = graph.components(ww);
    let comp_ww_wr = graph.components(ww_wr);
    let comp_all = graph.components(any);
    for from in 0..txns.len() {
        for &(to, edge) in &graph.out[from] {
            match edge {
                Edge::Ww if comp_ww[from] == comp_ww[to] => {
                    let cycle = graph.path(to, from, &comp_ww, ww).unwrap_or_default();
                    report.add(
                        AnomalyKind::G0,
                        cycle,
                        "a cycle of write-write dependencies".into(),
                    );
                }
                Edge::Wr if comp_ww_wr[from] == comp_ww_wr[to] => {
                    let cycle = graph.path(to, from, &comp_ww_wr, ww_wr).unwrap_or_default();
                    report.add(
                        AnomalyKind::G1c,
                        cycle,
                        "a cycle of write-write and write-read dependencies".into(),
                    );
                }
                Edge::Rw if comp_all[from] == comp_all[to] => {
                    match graph.path(to, from, &comp_all, ww_wr) {
                        Some(cycle) => report.add(
                            AnomalyKind::GSingle,
                            cycle,
                            "a cycle with exactly one anti-dependency (read skew)".into(),
                        ),
                        None => {
                            let cycle = graph.path(to, from, &comp_all, any).unwrap_or_default();
                            report.add(
                                AnomalyKind::G2,
                                cycle,
                                "a cycle with several anti-dependencies (write skew)".into(),
                            );
                        }
                    }
                }
                _ => {}
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::EventType::{Fail, Ok};

    fn a(key: u64, value: u64) -> MicroOp {
        MicroOp::Append { key, value }
    }
    fn r(key: u64, list: &[u64]) -> MicroOp {
        MicroOp::Read { key, value: Some(list.to_vec()) }
    }
    fn t(kind: EventType, ops: Vec<MicroOp>) -> CompletedTxn {
        CompletedTxn { process: 0, kind, ops }
    }
    fn kinds(txns: &[CompletedTxn]) -> Vec<AnomalyKind> {
        check_transactions(txns).kinds()
    }

    #[test]
    fn a_serial_history_is_valid() {
        let txns = [
            t(Ok, vec![a(1, 1), a(2, 1)]),
            t(Ok, vec![r(1, &[1]), a(1, 2)]),
            t(Ok, vec![r(1, &[1, 2]), r(2, &[1])]),
            t(Fail, vec![a(2, 9)]),
        ];
        let report = check_transactions(&txns);
        assert!(report.is_valid(), "{report}");
        assert_eq!((report.committed, report.failed), (3, 1));
    }

    #[test]
    fn g0_write_cycle() {
        // T0 and T1 both append to keys 1 and 2, in opposite orders on each key.
        let txns = [
            t(Ok, vec![a(1, 1), a(2, 1)]),
            t(Ok, vec![a(1, 2), a(2, 2)]),
            t(Ok, vec![r(1, &[1, 2]), r(2, &[2, 1])]),
        ];
        assert!(kinds(&txns).contains(&AnomalyKind::G0));
    }

    #[test]
    fn g1a_aborted_read() {
        let txns = [t(Fail, vec![a(1, 1)]), t(Ok, vec![r(1, &[1])])];
        assert_eq!(kinds(&txns), vec![AnomalyKind::G1a]);
    }

    #[test]
    fn g1b_intermediate_read() {
        let txns = [t(Ok, vec![a(1, 1), a(1, 2)]), t(Ok, vec![r(1, &[1])])];
        assert!(kinds(&txns).contains(&AnomalyKind::G1b));
    }

    #[test]
    fn g1c_circular_information_flow() {
        // Each reads the other's append: both must have come first.
        let txns = [t(Ok, vec![a(1, 1), r(2, &[1])]), t(Ok, vec![a(2, 1), r(1, &[1])])];
        assert_eq!(kinds(&txns), vec![AnomalyKind::G1c]);
    }

    #[test]
    fn g_single_read_skew() {
        // T0 writes x and y together; T1 sees T0's y but not its x.
        let txns = [t(Ok, vec![a(1, 1), a(2, 1)]), t(Ok, vec![r(1, &[]), r(2, &[1])])];
        assert_eq!(kinds(&txns), vec![AnomalyKind::GSingle]);
    }

    #[test]
    fn g2_write_skew() {
        // Each reads the key the other appends to and sees it empty.
        let txns = [t(Ok, vec![r(1, &[]), a(2, 1)]), t(Ok, vec![r(2, &[]), a(1, 1)])];
        assert_eq!(kinds(&txns), vec![AnomalyKind::G2]);
    }

    #[test]
    fn incompatible_orders_duplicates_and_garbage_are_reported() {
        let txns = [
            t(Ok, vec![a(1, 1)]),
            t(Ok, vec![a(1, 2)]),
            t(Ok, vec![r(1, &[1, 2])]),
            t(Ok, vec![r(1, &[2, 1])]),
            t(Ok, vec![r(1, &[1, 1])]),
            t(Ok, vec![r(1, &[7])]),
        ];
        let found = kinds(&txns);
        for kind in [
            AnomalyKind::IncompatibleOrder,
            AnomalyKind::DuplicateElements,
            AnomalyKind::GarbageRead,
        ] {
            assert!(found.contains(&kind), "{kind:?} in {found:?}");
        }
    }

    #[test]
    fn an_indeterminate_transaction_counts_once_it_is_seen() {
        let txns = [
            t(EventType::Info, vec![a(1, 1)]),
            t(Ok, vec![r(1, &[1])]),
            t(EventType::Info, vec![a(2, 5)]),
        ];
        let report = check_transactions(&txns);
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.indeterminate, 2);
    }
}
