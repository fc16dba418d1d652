//! Admission: what every coordinator does with a client's request before naming a
//! transaction — check it, push back when full, and wait for its epoch to be durable.
//!
//! ```text
//!  Begin ─► invalid (no branches, a node twice, too many)  ─► Rejected(Invalid)
//!        ─► too many in flight                              ─► Rejected(Overloaded)
//!        ─► epoch not durable yet ─► queued (bounded; full ─► Rejected(Overloaded))
//!        ─► Begun{request, txn}, and the caller starts the protocol
//! ```

use std::collections::{BTreeSet, VecDeque};

use concord_types::{NodeId, RequestId, TxnId, Write};

use crate::epoch::{EpochClock, Issue};
use crate::{Branch, Command, Durability, Rejection};

/// The bounds a coordinator enforces on requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    pub max_participants: usize,
    pub max_in_flight: usize,
    /// Requests held while the epoch record is being forced.
    pub max_queued: usize,
}

/// `C` is a branch's change, as in [`Branch`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Admission<C = Vec<Write>> {
    coordinator: NodeId,
    limits: Limits,
    /// `None` until the first restart.
    clock: Option<EpochClock>,
    queued: VecDeque<(RequestId, Vec<Branch<C>>)>,
    /// Ids reserved and not yet begun or released (`crate::Reservation`), at most
    /// `max_in_flight` (the oldest is dropped past it: its transaction can no longer run).
    reserved: BTreeSet<TxnId>,
}

impl<C> Admission<C> {
    pub fn new(coordinator: NodeId, limits: Limits) -> Self {
        Admission {
            coordinator,
            limits,
            clock: None,
            queued: VecDeque::new(),
            reserved: BTreeSet::new(),
        }
    }

    /// After a restart whose log's highest epoch was `highest_logged`: forgets queued requests
    /// and returns the epoch the caller must persist (forced) before any id is issued.
    pub fn restart(&mut self, highest_logged: Option<u32>) -> u32 {
        let (clock, epoch) = EpochClock::recover(self.coordinator, highest_logged);
        self.clock = Some(clock);
        self.queued.clear();
        self.reserved.clear();
        epoch
    }

    /// The epoch record is durable: returns the requests that waited for it, to admit again.
    pub fn epoch_durable(&mut self, epoch: u32) -> Vec<(RequestId, Vec<Branch<C>>)> {
        self.clock_mut().on_persisted(epoch);
        self.queued.drain(..).collect()
    }

    /// The current epoch (`None` before the first restart).
    pub fn epoch(&self) -> Option<u32> {
        self.clock.as_ref().map(EpochClock::epoch)
    }

    /// The current epoch and the sequence its next id will have (`None` before the first
    /// restart): every id of the epoch below it has been handed out.
    pub fn next_id(&self) -> Option<(u32, u32)> {
        self.clock.as_ref().map(|c| (c.epoch(), c.next_sequence()))
    }

    /// Whether `txn` is an id this coordinator has handed out.
    pub fn has_issued(&self, txn: TxnId) -> bool {
        self.clock.as_ref().is_some_and(|c| c.has_issued(txn))
    }

    /// Names an id now for a transaction that will run later; `None` (and `Rejected`) while the
    /// epoch is not durable yet — the client can begin without a reservation, or retry.
    pub fn reserve<M, R, T>(
        &mut self,
        request: RequestId,
        epoch_record: impl Fn(u32) -> R,
        out: &mut Vec<Command<M, R, T>>,
    ) -> Option<TxnId> {
        let txn = match self.clock_mut().issue() {
            Issue::Txn(txn) => txn,
            Issue::Wait => {
                out.push(Command::Rejected { request, reason: Rejection::Overloaded });
                return None;
            }
            Issue::PersistEpoch(epoch) => {
                // The epoch's sequences ran out: the next one is being made durable.
                out.push(Command::Persist {
                    record: epoch_record(epoch),
                    durability: Durability::Forced,
                });
                out.push(Command::Rejected { request, reason: Rejection::Overloaded });
                return None;
            }
        };
        self.reserved.insert(txn);
        while self.reserved.len() > self.limits.max_in_flight {
            self.reserved.pop_first();
        }
        out.push(Command::Reserved { request, txn });
        Some(txn)
    }

    /// Drops a reservation whose transaction will not run.
    pub fn release(&mut self, txn: TxnId) {
        self.reserved.remove(&txn);
    }

    /// The lowest reserved sequence of `epoch`, if any: a forget mark must stay at or below it
    /// (a participant ignores a PREPARE below the mark).
    pub fn lowest_reserved(&self, epoch: u32) -> Option<u32> {
        let from = TxnId { coordinator: self.coordinator, epoch, sequence: 0 };
        self.reserved.range(from..).next().filter(|t| t.epoch == epoch).map(|t| t.sequence)
    }

    /// Checks a request to run `branches` under reserved `txn`. If it is admitted, emits
    /// `Begun` and returns them; otherwise it was rejected. Either way the reservation is
    /// used up: a refused transaction never runs under that id.
    pub fn admit_reserved<M, R, T>(
        &mut self,
        request: RequestId,
        txn: TxnId,
        branches: Vec<Branch<C>>,
        in_flight: usize,
        out: &mut Vec<Command<M, R, T>>,
    ) -> Option<(TxnId, Vec<Branch<C>>)> {
        if !self.reserved.remove(&txn) {
            out.push(Command::Rejected { request, reason: Rejection::NotReserved });
            return None;
        }
        if let Err(reason) = self.check(&branches, in_flight) {
            out.push(Command::Rejected { request, reason });
            return None;
        }
        out.push(Command::Begun { request, txn });
        Some((txn, branches))
    }

    fn check(&self, branches: &[Branch<C>], in_flight: usize) -> Result<(), Rejection> {
        let mut nodes: Vec<NodeId> = branches.iter().map(|b| b.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        if branches.is_empty()
            || nodes.len() != branches.len()
            || branches.len() > self.limits.max_participants
        {
            return Err(Rejection::Invalid);
        }
        if in_flight >= self.limits.max_in_flight {
            return Err(Rejection::Overloaded);
        }
        Ok(())
    }

    fn clock_mut(&mut self) -> &mut EpochClock {
        self.clock.as_mut().expect("drivers deliver Restart before any other input")
    }

    /// Checks a request with `in_flight` transactions running. If it is admitted, emits `Begun`
    /// and returns the transaction's id; otherwise it was rejected or queued (commands emitted).
    pub fn admit<M, R, T>(
        &mut self,
        request: RequestId,
        branches: Vec<Branch<C>>,
        in_flight: usize,
        epoch_record: impl Fn(u32) -> R,
        out: &mut Vec<Command<M, R, T>>,
    ) -> Option<(TxnId, Vec<Branch<C>>)> {
        if let Err(reason) = self.check(&branches, in_flight) {
            out.push(Command::Rejected { request, reason });
            return None;
        }
        match self.clock_mut().issue() {
            Issue::Txn(txn) => {
                out.push(Command::Begun { request, txn });
                return Some((txn, branches));
            }
            Issue::Wait => {}
            Issue::PersistEpoch(epoch) => {
                out.push(Command::Persist {
                    record: epoch_record(epoch),
                    durability: Durability::Forced,
                });
            }
        }
        if self.queued.len() >= self.limits.max_queued {
            out.push(Command::Rejected { request, reason: Rejection::Overloaded });
        } else {
            self.queued.push_back((request, branches));
        }
        None
    }
}
