//! The coordinator's log replicated on `n` machines (issue 21), as the simulator models it.
//!
//! The runtime will put the coordinator's records on a Raft log (openraft); the protocol cores
//! do not change: a record is "durable" — the core gets `Persisted` — when the replicated log
//! has committed it, i.e. when a majority of the replicas have it on disk, where today it is
//! durable after the one machine's fsync. What the simulator needs of Raft is what 2PC relies
//! on, nothing more:
//!
//! * **Commit**: an entry counts once a majority has fsynced it (the leader's own fsync, or a
//!   follower's fsync and its acknowledgement back over the network). Entries are one sequence:
//!   every replica's durable log is a prefix of the leader's.
//! * **Leader crash**: the machine is gone; what only it had (unsynced, or synced but never
//!   replicated to a majority) may be lost. Appends it sent before it died may still land on
//!   followers.
//! * **Election** (Raft's voting rule): a replica wins if a majority of the live replicas,
//!   itself included, hold logs no longer than its own. So the winner holds every committed
//!   entry — asserted at every election — and possibly some that were not. Those are not
//!   committed by the election: the winner sends its log to the others and they count once a
//!   majority has them, as Raft commits them with the new leader's first entry. The others'
//!   logs are cut back to the winner's.
//! * A machine's fsync that had not finished when it crashed never finishes: acknowledgements
//!   carry the life of the machine that made them, and one from an earlier life is ignored.
//!
//! The new leader's core starts from the winner's log (`Input::Restart`), as a restarted
//! coordinator starts from its disk — but only once that log is committed: acting on a record
//! only the winner holds (re-driving a COMMIT) would let a later winner without it presume
//! abort. It takes a new epoch, re-drives every logged decision and presumes abort for the
//! rest. Not modelled yet: a leader cut off from its followers but alive (two cores with one
//! name); followers crashing; membership changes.

use concord_commit::Durability;

use crate::rng::Rng;

#[derive(Debug)]
struct Entry<R> {
    /// Unique over the run: a replica's acknowledgement names the entry it covers, so one for an
    /// entry an election truncated is recognised and ignored.
    id: u64,
    record: R,
    durability: Durability,
    /// The message-delay depth of what caused the write.
    depth: u32,
    /// The coordinator's incarnation that wrote it: only that core waits for its `Persisted`.
    incarnation: u32,
}

/// An entry made durable by the replicated log: what the world tells the invariants, and the
/// core if it is the one that wrote it.
#[derive(Debug, Clone)]
pub struct Committed<R> {
    pub record: R,
    pub durability: Durability,
    pub depth: u32,
    pub incarnation: u32,
}

/// The coordinator's log kept on several machines, as a Raft group would: an entry counts as
/// durable once a majority has synced it, and only a replica holding every committed entry can
/// be elected.
#[derive(Debug)]
pub struct ReplicatedLog<R> {
    majority: usize,
    log: Vec<Entry<R>>,
    /// Per replica: how many entries of `log` are durable on its disk (a prefix).
    synced: Vec<usize>,
    up: Vec<bool>,
    /// Per replica: how many times its machine has crashed.
    lives: Vec<u32>,
    leader: usize,
    /// Entries durable on a majority.
    committed: usize,
    next_id: u64,
    /// Elections held (leader changes).
    pub elections: u32,
}

impl<R: Clone> ReplicatedLog<R> {
    /// `replicas` machines (odd, at least 3), replica 0 the first leader.
    pub fn new(replicas: usize) -> Self {
        assert!(replicas >= 3 && replicas % 2 == 1, "an odd number of replicas, at least 3");
        ReplicatedLog {
            majority: replicas / 2 + 1,
            log: Vec::new(),
            synced: vec![0; replicas],
            up: vec![true; replicas],
            lives: vec![0; replicas],
            leader: 0,
            committed: 0,
            next_id: 0,
            elections: 0,
        }
    }

    pub fn replicas(&self) -> usize {
        self.synced.len()
    }

    pub fn leader(&self) -> usize {
        self.leader
    }

    pub fn is_up(&self, replica: usize) -> bool {
        self.up[replica]
    }

    /// Which life of its machine a replica is in: an acknowledgement names it.
    pub fn life(&self, replica: usize) -> u32 {
        self.lives[replica]
    }

    /// Entries durable on a majority.
    pub fn committed(&self) -> usize {
        self.committed
    }

    /// The leader appends a record; it is sent to every follower at once. Returns how long the
    /// log is with it and the entry's id, for the replicas' acknowledgements.
    pub fn append(
        &mut self,
        record: R,
        durability: Durability,
        depth: u32,
        incarnation: u32,
    ) -> (usize, u64) {
        assert!(self.up[self.leader], "only a live leader appends");
        self.next_id += 1;
        let id = self.next_id;
        self.log.push(Entry { id, record, durability, depth, incarnation });
        (self.log.len(), id)
    }

    /// Replica `replica`, in life `life`, has the first `upto` entries on disk, and its
    /// acknowledgement reached the leader (`id`: the entry at `upto - 1` when it was sent).
    /// Returns the entries this commits, in log order.
    pub fn acknowledged(
        &mut self,
        replica: usize,
        life: u32,
        upto: usize,
        id: u64,
    ) -> Vec<Committed<R>> {
        let current = upto >= 1 && self.log.get(upto - 1).is_some_and(|e| e.id == id);
        if !current || !self.up[replica] || life != self.lives[replica] {
            return Vec::new(); // truncated by an election, or a write its machine's crash lost
        }
        self.synced[replica] = self.synced[replica].max(upto);
        let mut lengths = self.synced.clone();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        self.commit_to(lengths[self.majority - 1])
    }

    fn commit_to(&mut self, upto: usize) -> Vec<Committed<R>> {
        if upto <= self.committed {
            return Vec::new();
        }
        let newly = self.log[self.committed..upto]
            .iter()
            .map(|e| Committed {
                record: e.record.clone(),
                durability: e.durability,
                depth: e.depth,
                incarnation: e.incarnation,
            })
            .collect();
        self.committed = upto;
        newly
    }

    /// The leader's machine died: its disk is out of reach until it comes back as a follower.
    pub fn leader_crashed(&mut self) {
        self.up[self.leader] = false;
        self.lives[self.leader] += 1;
    }

    /// Elects a new leader among the live replicas other than the one that just died (Raft's
    /// rule: the winner's log is at least as long as those of a majority of voters, itself
    /// included). The machine that died rejoins as a follower.
    pub fn elect(&mut self, rng: &mut Rng) -> Election<R> {
        let voters: Vec<usize> = (0..self.replicas()).filter(|&r| self.up[r]).collect();
        assert!(voters.len() >= self.majority, "a majority of the replicas is up");
        let can_win = |r: usize| {
            voters.iter().filter(|&&v| self.synced[v] <= self.synced[r]).count() >= self.majority
        };
        let candidates: Vec<usize> = voters.iter().copied().filter(|&r| can_win(r)).collect();
        let winner = *rng.pick(&candidates);
        let length = self.synced[winner];
        assert!(
            length >= self.committed,
            "Raft's election rule keeps every committed entry: winner has {length}, {} committed \
             (synced {:?}, up {:?}, leader {}, winner {winner})",
            self.committed,
            self.synced,
            self.up,
            self.leader
        );
        self.log.truncate(length);
        for synced in &mut self.synced {
            *synced = (*synced).min(length);
        }
        self.leader = winner;
        self.up.iter_mut().for_each(|up| *up = true);
        self.elections += 1;
        let catch_up = match self.log.last() {
            Some(last) => (0..self.replicas())
                .filter(|&r| self.synced[r] < length)
                .map(|r| CatchUp { replica: r, life: self.lives[r], upto: length, id: last.id })
                .collect(),
            None => Vec::new(),
        };
        Election { records: self.log.iter().map(|e| e.record.clone()).collect(), catch_up }
    }
}

/// A new leader's log, and what it must send before that log is committed.
#[derive(Debug)]
pub struct Election<R> {
    /// The winner's log: the new leader's core starts from it once it is committed.
    pub records: Vec<R>,
    /// Followers that lack part of it: each will acknowledge `upto` once it has it on disk.
    pub catch_up: Vec<CatchUp>,
}

/// A follower to bring up to the new leader's log.
#[derive(Debug, Clone, Copy)]
pub struct CatchUp {
    pub replica: usize,
    pub life: u32,
    pub upto: usize,
    pub id: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(replicas: usize) -> ReplicatedLog<&'static str> {
        ReplicatedLog::new(replicas)
    }

    fn records(committed: &[Committed<&'static str>]) -> Vec<&'static str> {
        committed.iter().map(|c| c.record).collect()
    }

    #[test]
    fn an_entry_counts_once_a_majority_has_it() {
        let mut rlog = log(3);
        let (end, id) = rlog.append("a", Durability::Forced, 0, 0);
        assert!(rlog.acknowledged(0, 0, end, id).is_empty(), "the leader alone is no majority");
        assert_eq!(records(&rlog.acknowledged(2, 0, end, id)), ["a"]);
        assert!(rlog.acknowledged(1, 0, end, id).is_empty(), "committed once");
    }

    #[test]
    fn a_new_leader_commits_what_it_inherited_only_once_a_majority_has_it() {
        for seed in 0..50 {
            let mut rng = Rng::new(seed);
            let mut rlog = log(3);
            let (a_end, a) = rlog.append("a", Durability::Forced, 0, 0);
            rlog.acknowledged(0, 0, a_end, a);
            rlog.acknowledged(1, 0, a_end, a); // "a" committed
            let (b_end, b) = rlog.append("b", Durability::Forced, 0, 0);
            rlog.acknowledged(0, 0, b_end, b); // only the leader has "b"
            let (c_end, c) = rlog.append("c", Durability::Forced, 0, 0);
            // Follower 2 has a, b, c: with the leader, "b" is on a majority; "c" is not.
            assert_eq!(records(&rlog.acknowledged(2, 0, c_end, c)), ["b"]);
            rlog.leader_crashed();
            let election = rlog.elect(&mut rng);
            // Follower 2 holds the longest live log and is the only one that can win.
            assert_eq!(election.records, ["a", "b", "c"]);
            assert_eq!(rlog.leader(), 2);
            assert_eq!(rlog.committed(), 2, "the election alone commits nothing");
            // It sends its log to the others; "c" counts once one of them has it.
            let to_1 = election.catch_up.iter().find(|u| u.replica == 1).expect("1 lags");
            let committed = rlog.acknowledged(1, to_1.life, to_1.upto, to_1.id);
            assert_eq!(records(&committed), ["c"]);
        }
    }

    #[test]
    fn what_only_a_new_leader_held_is_lost_if_it_dies_before_sending_it() {
        // Found by the sweep: five replicas; an entry on the leader and one follower only.
        let mut rng = Rng::new(3);
        let mut rlog = log(5);
        let (a_end, a) = rlog.append("a", Durability::Forced, 0, 0);
        rlog.acknowledged(0, 0, a_end, a);
        rlog.acknowledged(4, 0, a_end, a);
        rlog.leader_crashed();
        // Whoever wins, "a" is not committed: two of five had it.
        let election = rlog.elect(&mut rng);
        assert_eq!(rlog.committed(), 0);
        if election.records.is_empty() {
            return;
        }
        // The winner had "a"; it dies before anyone acknowledges it: a winner without it is
        // allowed, and nothing committed is lost.
        rlog.leader_crashed();
        let again = rlog.elect(&mut rng);
        assert!(again.records.len() <= 1 && rlog.committed() == 0);
    }

    #[test]
    fn entries_on_no_live_majority_are_lost_and_late_acks_for_them_ignored() {
        let mut rng = Rng::new(7);
        let mut rlog = log(3);
        let (a_end, a) = rlog.append("a", Durability::Forced, 0, 0);
        rlog.acknowledged(0, 0, a_end, a);
        rlog.leader_crashed();
        let election = rlog.elect(&mut rng);
        assert!(election.records.is_empty() && election.catch_up.is_empty());
        let (end, id) = rlog.append("x", Durability::Forced, 0, 1);
        assert_eq!(end, 1);
        assert!(rlog.acknowledged(1, 0, a_end, a).is_empty(), "a stale acknowledgement");
        let leader = rlog.leader();
        assert_eq!(rlog.acknowledged(leader, rlog.life(leader), end, id).len(), 0);
        assert_eq!(rlog.acknowledged(0, 0, end, id).len(), 0, "machine 0's earlier life");
        assert_eq!(rlog.acknowledged(0, 1, end, id).len(), 1);
    }
}
