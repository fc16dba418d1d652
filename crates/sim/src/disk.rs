//! A simulated disk for one node: durable bytes, and bytes written but not yet synced.
//!
//! Records are framed exactly as on a real disk (`concord-wal`), so a crash can keep any prefix
//! of the unsynced bytes — cutting the last record in half — and recovery must find the torn
//! tail by its checksum, as it will on real hardware.
//!
//! ```text
//!   durable ────────────┐ unsynced ───────────────┐
//!   [ frame │ frame │ … ][ frame │ frame │ fra… ]   ← a crash keeps durable + a random prefix
//!                        └─ sync in flight covers up to here; completes after fsync_us
//! ```

use std::collections::VecDeque;

use concord_commit::Durability;
use concord_types::codec::Encode;
use concord_wal::{append_frame, scan};

use crate::rng::Rng;

#[derive(Debug)]
pub struct Disk<R> {
    durable: Vec<u8>,
    unsynced: Vec<u8>,
    /// Records written and not yet covered by a completed sync, with the offset (in the whole
    /// log) where each ends.
    pending: VecDeque<(usize, R, Durability, u32)>,
    /// A sync in flight makes everything before this offset durable when it completes.
    sync_in_flight: Option<usize>,
}

impl<R> Default for Disk<R> {
    fn default() -> Self {
        Disk {
            durable: Vec::new(),
            unsynced: Vec::new(),
            pending: VecDeque::new(),
            sync_in_flight: None,
        }
    }
}

impl<R: Encode + Clone> Disk<R> {
    fn len(&self) -> usize {
        self.durable.len() + self.unsynced.len()
    }

    /// Writes a record (not yet durable). `tag` is the driver's, handed back with the record.
    pub fn append(&mut self, record: R, durability: Durability, tag: u32) {
        append_frame(&mut self.unsynced, &record.to_bytes());
        let end = self.len();
        self.pending.push_back((end, record, durability, tag));
    }

    /// Starts a sync if none is running and a forced record waits for one. Returns true if it
    /// started one (the caller schedules its completion).
    pub fn start_sync(&mut self, group_commit: bool) -> bool {
        if self.sync_in_flight.is_some() {
            return false;
        }
        let Some(first_forced_end) =
            self.pending.iter().find(|(_, _, d, _)| *d == Durability::Forced).map(|(end, ..)| *end)
        else {
            return false;
        };
        self.sync_in_flight = Some(if group_commit { self.len() } else { first_forced_end });
        true
    }

    /// The sync in flight completed: returns the records it made durable, in log order.
    pub fn complete_sync(&mut self) -> Vec<(R, Durability, u32)> {
        let covers = self.sync_in_flight.take().expect("complete_sync follows start_sync");
        let newly = covers - self.durable.len();
        self.durable.extend(self.unsynced.drain(..newly));
        let mut done = Vec::new();
        while self.pending.front().is_some_and(|(end, ..)| *end <= covers) {
            let (_, record, durability, tag) =
                self.pending.pop_front().expect("checked: non-empty");
            done.push((record, durability, tag));
        }
        done
    }

    /// A crash: the sync in flight never completes; of the unsynced bytes, a random prefix
    /// reached the platter if `torn_writes`, none otherwise. Returns the records that survived
    /// whole by luck.
    pub fn crash(&mut self, rng: &mut Rng, torn_writes: bool) -> Vec<R> {
        let keep = if torn_writes && !self.unsynced.is_empty() {
            usize::try_from(rng.range(0, self.unsynced.len() as u64)).expect("bounded by a length")
        } else {
            0
        };
        let kept_end = self.durable.len() + keep;
        self.durable.extend_from_slice(&self.unsynced[..keep]);
        self.unsynced.clear();
        self.sync_in_flight = None;
        let survivors = self
            .pending
            .drain(..)
            .filter(|(end, ..)| *end <= kept_end)
            .map(|(_, record, ..)| record)
            .collect();
        survivors
    }

    /// Reads the log back after a crash, truncating a torn tail. Corruption in the middle cannot
    /// happen here (the simulator only cuts at the end), so it is a broken invariant.
    pub fn recover(&mut self) -> Vec<R> {
        assert!(self.unsynced.is_empty() && self.pending.is_empty(), "recover follows a crash");
        let scanned = scan(&self.durable).expect("the simulated disk only ever tears the tail");
        let records = scanned
            .payloads
            .iter()
            .map(|p| R::from_bytes(p).expect("a record whose checksum matched decodes"))
            .collect();
        let valid_len = scanned.valid_len;
        self.durable.truncate(valid_len);
        records
    }

    /// A checkpoint after recovery: the log is replaced by `live`, all durable.
    pub fn rewrite(&mut self, live: &[R]) {
        assert!(self.unsynced.is_empty() && self.pending.is_empty(), "rewrite follows recover");
        self.durable.clear();
        for record in live {
            append_frame(&mut self.durable, &record.to_bytes());
        }
    }

    /// Records written and not yet durable, in log order.
    pub fn pending(&self) -> impl Iterator<Item = &R> {
        self.pending.iter().map(|(_, record, ..)| record)
    }

    /// Bytes that survive any crash.
    pub fn durable_len(&self) -> usize {
        self.durable.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_types::codec::{DecodeError, Reader, Writer};

    #[derive(Debug, Clone, PartialEq)]
    struct R(u64);
    impl Encode for R {
        fn encode(&self, w: &mut Writer<'_>) {
            w.u64(self.0);
        }
        fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
            Ok(R(r.u64()?))
        }
    }

    #[test]
    fn group_commit_covers_everything_written_before_the_sync_started() {
        let mut d = Disk::default();
        d.append(R(1), Durability::Forced, 0);
        d.append(R(2), Durability::Lazy, 0);
        d.append(R(3), Durability::Forced, 0);
        assert!(d.start_sync(true));
        assert!(!d.start_sync(true), "one sync at a time");
        d.append(R(4), Durability::Forced, 0);
        let done: Vec<_> = d.complete_sync().into_iter().map(|(r, ..)| r).collect();
        assert_eq!(done, vec![R(1), R(2), R(3)]);
        assert!(d.start_sync(true));
        assert_eq!(d.complete_sync().len(), 1);
    }

    #[test]
    fn without_group_commit_each_sync_covers_one_forced_record() {
        let mut d = Disk::default();
        d.append(R(1), Durability::Lazy, 0);
        d.append(R(2), Durability::Forced, 0);
        d.append(R(3), Durability::Forced, 0);
        assert!(d.start_sync(false));
        assert_eq!(d.complete_sync().len(), 2, "the lazy record before it rides along");
        assert!(d.start_sync(false));
        assert_eq!(d.complete_sync(), vec![(R(3), Durability::Forced, 0)]);
        assert!(!d.start_sync(false), "nothing forced is waiting");
    }

    #[test]
    fn a_crash_loses_unsynced_records_and_recovery_truncates_a_torn_tail() {
        let mut rng = Rng::new(3);
        let mut saw_torn = false;
        for _ in 0..200 {
            let mut d = Disk::default();
            d.append(R(1), Durability::Forced, 0);
            d.start_sync(true);
            d.complete_sync();
            d.append(R(2), Durability::Forced, 0);
            d.append(R(3), Durability::Forced, 0);
            let survivors = d.crash(&mut rng, true);
            let before = d.durable_len();
            let recovered = d.recover();
            assert_eq!(recovered[0], R(1), "synced records always survive");
            assert_eq!(recovered[1..], survivors[..], "exactly the whole records kept survive");
            saw_torn |= d.durable_len() < before;
            d.append(R(9), Durability::Forced, 0);
            d.start_sync(true);
            d.complete_sync();
            d.crash(&mut rng, true);
            assert_eq!(d.recover().last(), Some(&R(9)), "appends after a torn tail stay readable");
        }
        assert!(saw_torn, "200 random crashes should tear at least one record");
    }
}
