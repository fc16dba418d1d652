//! The MVCC shard: every committed version of every key, the prepared writes (intents) of
//! transactions in 2PC, and the read timestamps that keep snapshots stable.
//!
//! It is a 2PC [`Resource`]: the participant core calls `check`/`lock` at prepare,
//! `apply`/`unlock` at the decision. Reads are served by the driver directly (`get`, `scan`):
//! they change no durable state.
//!
//! ## Why this is serializable
//! A transaction T reads at `start_ts` and writes at `commit_ts` (> `start_ts`, chosen by its
//! coordinator and the same on every shard). Transactions are serialized in `commit_ts` order:
//! * **Writes land where no reader has been.** A read at `t` records `t` against the key (or
//!   scanned range). A write at `commit_ts <= t` would change what that reader saw, so `check`
//!   refuses it (`ReadByLater`): the client retries with a newer timestamp.
//! * **Readers never skip a write below them.** A read at `t` that meets a prepared write due
//!   at `commit_ts <= t` cannot know the outcome: it waits (`ReadError::Blocked`) and the driver
//!   resolves the intent. Intents due after `t` are invisible and harmless.
//! * **Reads are still true at `commit_ts`** (serializable only): at prepare, no version of a
//!   key T read may lie in `(start_ts, commit_ts]` and no other transaction's intent due at or
//!   before `commit_ts` may sit on it; then the reads are recorded at `commit_ts`, so no later
//!   writer can slip underneath. Scanned ranges are checked the same way (no phantoms).
//! * **First committer wins on writes** (both isolations): a key T writes must have no version
//!   after `start_ts` and no other transaction's intent.
//!
//! Every conflict is a refusal at prepare — never a wait — so no lock wait exists to deadlock;
//! the only wait is a reader's, and the driver bounds it.
//!
//! After a restart the read timestamps are gone; `restarted` raises a low-water mark to the
//! physical clock plus the maximum offset, above every read served before the crash.

use std::collections::BTreeMap;
use std::fmt;

use concord_commit::Resource;
use concord_types::codec::{DecodeError, Encode, Reader, Writer};
use concord_types::TxnId;

use crate::change::{key_after, Isolation, Key, KeyRange, KvChange, Value};
use crate::hlc::{ClockOffsetError, Hlc, Timestamp};

/// Default maximum clock offset between nodes (CockroachDB's default).
pub const DEFAULT_MAX_OFFSET_US: u64 = 500_000;
/// Read timestamps kept for scanned ranges before the oldest are folded into the low-water mark.
const MAX_RANGE_READS: usize = 4_096;

/// One committed version. `None` is a deletion (a tombstone).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    pub ts: Timestamp,
    pub value: Option<Value>,
}

/// A prepared, undecided write.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Intent {
    txn: TxnId,
    commit_ts: Timestamp,
}

/// Why a shard refused a transaction's branch. Every one is retryable with a new transaction
/// except `Invalid`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Another transaction has a prepared write on the key.
    Locked { key: Key, holder: TxnId },
    /// The key was written (committed) after this transaction's snapshot.
    WriteConflict { key: Key, committed_at: Timestamp },
    /// Serializable: a key this transaction read changed before its commit timestamp.
    ReadInvalidated { key: Key, committed_at: Timestamp },
    /// A later reader already saw the key as it was; writing below that read would change it.
    ReadByLater { key: Key, read_at: Timestamp },
    /// The shard restarted and forgot which reads it served: it refuses writes below its
    /// clock at the restart plus the maximum offset, for at most that offset.
    RestartFence { key: Key, fence: Timestamp },
    /// The snapshot is older than the garbage-collection point.
    TooOld { gc_point: Timestamp },
    /// The commit timestamp is beyond the maximum clock offset of this shard's clock.
    Clock(ClockOffsetError),
    /// Not a well-formed change (commit timestamp not after the start timestamp).
    Invalid(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Locked { key, holder } => {
                write!(f, "key {} is locked by prepared transaction {holder}", show_key(key))
            }
            Refusal::WriteConflict { key, committed_at } => write!(
                f,
                "key {} was written by a transaction that committed at {committed_at}, after this one began",
                show_key(key)
            ),
            Refusal::ReadInvalidated { key, committed_at } => write!(
                f,
                "key {} read by this transaction was changed at {committed_at}, before it could commit",
                show_key(key)
            ),
            Refusal::ReadByLater { key, read_at } => write!(
                f,
                "key {} was read at {read_at}, after this transaction's commit timestamp",
                show_key(key)
            ),
            Refusal::RestartFence { key, fence } => write!(
                f,
                "key {}: the shard restarted and refuses writes timestamped before {fence} (its clock at the restart plus the maximum offset: reads it served before the restart are not remembered); retry in a moment",
                show_key(key)
            ),
            Refusal::TooOld { gc_point } => {
                write!(f, "the snapshot is older than the garbage-collection point {gc_point}")
            }
            Refusal::Clock(e) => write!(f, "{e}"),
            Refusal::Invalid(why) => write!(f, "invalid change: {why}"),
        }
    }
}

/// Why a read could not be served.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReadError {
    /// A prepared write due at or before the read timestamp: its outcome decides what the read
    /// sees. Wait for it, or resolve it with its coordinator.
    Blocked {
        key: Key,
        holder: TxnId,
    },
    TooOld {
        gc_point: Timestamp,
    },
    Clock(ClockOffsetError),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Blocked { key, holder } => {
                write!(f, "key {} has a prepared write of {holder}", show_key(key))
            }
            ReadError::TooOld { gc_point } => {
                write!(f, "read below the garbage-collection point {gc_point}")
            }
            ReadError::Clock(e) => write!(f, "{e}"),
        }
    }
}

/// A key for messages: text if it is printable, else hex.
pub fn show_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("`{s}`"),
        _ => format!("0x{}", key.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    }
}

/// Read timestamps: the newest time each key (or scanned range) was read at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct ReadTimestamps {
    points: BTreeMap<Key, Timestamp>,
    ranges: Vec<(KeyRange, Timestamp)>,
    /// Every key counts as read at this time (what pruning and restarts forgot).
    low_water: Timestamp,
    /// The low-water mark the last restart set, to say so when it refuses a write.
    restart_fence: Timestamp,
}

impl ReadTimestamps {
    fn record_point(&mut self, key: &[u8], ts: Timestamp) {
        if ts <= self.low_water {
            return;
        }
        match self.points.get_mut(key) {
            Some(t) => *t = (*t).max(ts),
            None => {
                self.points.insert(key.to_vec(), ts);
            }
        }
    }

    fn record_range(&mut self, range: KeyRange, ts: Timestamp) {
        if ts <= self.low_water || range.is_empty() {
            return;
        }
        if self.ranges.len() >= MAX_RANGE_READS {
            // Fold the older half into the low-water mark: conservative, never wrong.
            self.ranges.sort_by_key(|(_, t)| *t);
            let keep = self.ranges.split_off(MAX_RANGE_READS / 2);
            let folded = self.ranges.iter().map(|(_, t)| *t).max().unwrap_or_default();
            self.low_water = self.low_water.max(folded);
            self.ranges = keep;
        }
        self.ranges.push((range, ts));
    }

    /// The newest time `key` was read, counting only reads actually served (not the marks).
    fn latest_served(&self, key: &[u8]) -> Timestamp {
        let point = self.points.get(key).copied().unwrap_or_default();
        let range = self.ranges.iter().filter(|(r, _)| r.contains(key)).map(|(_, t)| *t).max();
        point.max(range.unwrap_or_default())
    }

    fn latest(&self, key: &[u8]) -> Timestamp {
        let point = self.points.get(key).copied().unwrap_or_default();
        let range = self
            .ranges
            .iter()
            .filter(|(r, _)| r.contains(key))
            .map(|(_, t)| *t)
            .max()
            .unwrap_or_default();
        self.low_water.max(point).max(range)
    }

    /// Forgets reads before `before`, counting every key as read at `before` instead.
    fn prune(&mut self, before: Timestamp) {
        if before <= self.low_water {
            return;
        }
        self.low_water = before;
        self.points.retain(|_, t| *t > before);
        self.ranges.retain(|(_, t)| *t > before);
    }
}

/// A shard's applied state, as a checkpoint writes it: every version still kept, and the
/// garbage-collection point below which they are incomplete.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KvSnapshot {
    pub gc_point: Timestamp,
    pub versions: Vec<(Key, Vec<Version>)>,
    /// Where the versions went to a separate store instead (the runtime's version file): what
    /// that store must hold, so a missing, emptied, stale or altered one is refused at start.
    pub store: Option<StoreSeal>,
}

/// What a checkpoint wrote to a version store: its generation (one more per checkpoint), the
/// number of keys, and a checksum over every entry. Kept in the log's checkpoint record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StoreSeal {
    pub generation: u64,
    pub keys: u64,
    pub digest: u32,
}

/// One key's versions, as snapshots and the runtime's version store write them.
pub fn encode_versions(versions: &[Version], w: &mut Writer<'_>) {
    w.sequence_len(versions.len());
    for v in versions {
        v.ts.encode(w);
        match &v.value {
            None => w.u8(0),
            Some(value) => {
                w.u8(1);
                w.bytes(value);
            }
        }
    }
}

pub fn decode_versions(r: &mut Reader<'_>) -> Result<Vec<Version>, DecodeError> {
    let n = r.sequence_len()?;
    let mut versions = Vec::with_capacity(n);
    for _ in 0..n {
        let ts = Timestamp::decode(r)?;
        let value = match r.u8()? {
            0 => None,
            1 => Some(r.bytes()?.to_vec()),
            tag => return Err(DecodeError::UnknownTag { what: "version", tag }),
        };
        versions.push(Version { ts, value });
    }
    Ok(versions)
}

impl Encode for KvSnapshot {
    fn encode(&self, w: &mut Writer<'_>) {
        self.gc_point.encode(w);
        w.u64(self.versions.len() as u64);
        for (key, versions) in &self.versions {
            w.bytes(key);
            encode_versions(versions, w);
        }
        match self.store {
            None => w.u8(0),
            Some(seal) => {
                w.u8(1);
                w.u64(seal.generation);
                w.u64(seal.keys);
                w.u32(seal.digest);
            }
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let gc_point = Timestamp::decode(r)?;
        // A snapshot holds a whole shard: its key count is not bounded like a branch's.
        let keys = r.u64()?;
        let mut out = Vec::new();
        for _ in 0..keys {
            let key = r.bytes()?.to_vec();
            out.push((key, decode_versions(r)?));
        }
        let store = match r.u8()? {
            0 => None,
            1 => Some(StoreSeal { generation: r.u64()?, keys: r.u64()?, digest: r.u32()? }),
            tag => return Err(DecodeError::UnknownTag { what: "store seal", tag }),
        };
        Ok(KvSnapshot { gc_point, versions: out, store })
    }
}

/// One shard of the key-value store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MvccShard {
    /// Committed versions per key, oldest first.
    versions: BTreeMap<Key, Vec<Version>>,
    intents: BTreeMap<Key, Intent>,
    reads: ReadTimestamps,
    clock: Hlc,
    /// The physical clock as the driver last said (microseconds).
    physical_us: u64,
    /// Reads and snapshots below this are refused: older versions may be gone.
    gc_point: Timestamp,
    /// What the newest checkpoint replayed says the version store holds (`KvSnapshot::store`).
    expected_store: Option<StoreSeal>,
}

impl Default for MvccShard {
    fn default() -> Self {
        MvccShard::new(DEFAULT_MAX_OFFSET_US)
    }
}

impl MvccShard {
    pub fn new(max_offset_us: u64) -> Self {
        MvccShard {
            versions: BTreeMap::new(),
            intents: BTreeMap::new(),
            reads: ReadTimestamps::default(),
            clock: Hlc::new(max_offset_us),
            physical_us: 0,
            gc_point: Timestamp::ZERO,
            expected_store: None,
        }
    }

    /// What the version store must hold, as the newest checkpoint replayed says.
    pub fn expected_store(&self) -> Option<StoreSeal> {
        self.expected_store
    }

    /// The driver's physical clock, before every input (the shard is sans-IO).
    pub fn set_physical_time(&mut self, physical_us: u64) {
        self.physical_us = physical_us;
    }

    pub fn clock(&self) -> &Hlc {
        &self.clock
    }

    /// After the log has been replayed: every key counts as read up to the physical clock plus
    /// the maximum offset, so no write lands below a read served before the crash.
    /// (The clock itself is not moved there: it would then run ahead by the maximum offset and
    /// its peers would refuse it. Writes are refused instead, for at most the offset.)
    pub fn restarted(&mut self) {
        let ceiling = Timestamp::new(self.physical_us + self.clock.max_offset_us(), 0);
        self.reads.prune(ceiling);
        self.reads.restart_fence = self.reads.low_water;
    }

    /// Every committed version, per key (oldest first).
    pub fn versions(&self) -> &BTreeMap<Key, Vec<Version>> {
        &self.versions
    }

    /// Keys with a prepared write.
    pub fn locked_keys(&self) -> usize {
        self.intents.len()
    }

    pub fn gc_point(&self) -> Timestamp {
        self.gc_point
    }

    fn observe(&mut self, ts: Timestamp) -> Result<(), ClockOffsetError> {
        self.clock.observe(ts, self.physical_us).map(|_| ())
    }

    fn visible(versions: &[Version], ts: Timestamp) -> Option<&Version> {
        versions.iter().rev().find(|v| v.ts <= ts)
    }

    /// The value of `key` as of `ts`.
    pub fn get(&mut self, key: &[u8], ts: Timestamp) -> Result<Option<Value>, ReadError> {
        if ts < self.gc_point {
            return Err(ReadError::TooOld { gc_point: self.gc_point });
        }
        self.observe(ts).map_err(ReadError::Clock)?;
        if let Some(intent) = self.intents.get(key) {
            if intent.commit_ts <= ts {
                return Err(ReadError::Blocked { key: key.to_vec(), holder: intent.txn });
            }
        }
        self.reads.record_point(key, ts);
        Ok(self.versions.get(key).and_then(|v| Self::visible(v, ts)).and_then(|v| v.value.clone()))
    }

    /// Up to `limit` live keys of `range` as of `ts`, in key order. Returns them and whether
    /// the range was exhausted (false: the limit stopped the scan).
    pub fn scan(
        &mut self,
        range: &KeyRange,
        ts: Timestamp,
        limit: usize,
    ) -> Result<(Vec<(Key, Value)>, bool), ReadError> {
        if ts < self.gc_point {
            return Err(ReadError::TooOld { gc_point: self.gc_point });
        }
        self.observe(ts).map_err(ReadError::Clock)?;
        let mut rows = Vec::new();
        let mut exhausted = true;
        for (key, versions) in self.versions.range::<[u8], _>(range.bounds()) {
            if rows.len() >= limit {
                exhausted = false;
                break;
            }
            if let Some(Version { value: Some(value), .. }) = Self::visible(versions, ts) {
                rows.push((key.clone(), value.clone()));
            }
        }
        // What the scan covered: all of the range, or up to and including the last row.
        let covered = if exhausted {
            range.clone()
        } else {
            let last = &rows.last().expect("stopped by the limit, so rows were found").0;
            KeyRange { start: range.start.clone(), end: Some(key_after(last)) }
        };
        if limit == 0 {
            return Ok((rows, false));
        }
        if let Some((key, intent)) = self
            .intents
            .range::<[u8], _>(covered.bounds())
            .find(|(_, intent)| intent.commit_ts <= ts)
        {
            return Err(ReadError::Blocked { key: key.clone(), holder: intent.txn });
        }
        self.reads.record_range(covered, ts);
        Ok((rows, exhausted))
    }

    /// Drops versions no snapshot at or after `safe_point` can see, and refuses reads below it
    /// from now on. Returns how many versions were dropped.
    pub fn collect_garbage(&mut self, safe_point: Timestamp) -> usize {
        if safe_point <= self.gc_point {
            return 0;
        }
        self.gc_point = safe_point;
        let mut dropped = 0;
        self.versions.retain(|_, versions| {
            // Keep everything after the safe point, and the newest version at or before it
            // (what a snapshot at the safe point sees) unless that is a deletion.
            let at_or_before = versions.iter().filter(|v| v.ts <= safe_point).count();
            if at_or_before > 0 {
                let newest_old = &versions[at_or_before - 1];
                let drop = if newest_old.value.is_some() { at_or_before - 1 } else { at_or_before };
                versions.drain(..drop);
                dropped += drop;
            }
            !versions.is_empty()
        });
        dropped
    }

    /// Takes in versions kept elsewhere (the runtime's version store) on top of what the log
    /// rebuilt: a version already present (same key and timestamp) is the same write, kept once.
    pub fn merge(&mut self, snapshot: KvSnapshot) {
        self.gc_point = self.gc_point.max(snapshot.gc_point);
        for (key, versions) in snapshot.versions {
            let kept = self.versions.entry(key).or_default();
            for version in versions {
                self.clock.witness(version.ts);
                let at = kept.partition_point(|v| v.ts < version.ts);
                if kept.get(at).is_none_or(|v| v.ts != version.ts) {
                    kept.insert(at, version);
                }
            }
        }
    }

    /// Forgets read timestamps older than `before` (counting every key as read at `before`).
    /// The driver calls it now and then with a time well behind the clock.
    pub fn prune_reads(&mut self, before: Timestamp) {
        self.reads.prune(before);
    }

    fn latest_committed(&self, key: &[u8]) -> Option<Timestamp> {
        self.versions.get(key).and_then(|v| v.last()).map(|v| v.ts)
    }

    fn other_intent(&self, txn: TxnId, key: &[u8], due_by: Timestamp) -> Option<TxnId> {
        self.intents.get(key).filter(|i| i.txn != txn && i.commit_ts <= due_by).map(|i| i.txn)
    }

    /// Serializable validation of what `txn` read: still true at its commit timestamp.
    fn validate_reads(&self, txn: TxnId, change: &KvChange) -> Result<(), Refusal> {
        let changed = |versions: &[Version]| {
            versions
                .iter()
                .rev()
                .map(|v| v.ts)
                .find(|&ts| ts > change.start_ts && ts <= change.commit_ts)
        };
        for key in &change.reads {
            if let Some(holder) = self.other_intent(txn, key, change.commit_ts) {
                return Err(Refusal::Locked { key: key.clone(), holder });
            }
            if let Some(committed_at) = self.versions.get(key).and_then(|v| changed(v)) {
                return Err(Refusal::ReadInvalidated { key: key.clone(), committed_at });
            }
        }
        for range in &change.ranges {
            if let Some((key, intent)) = self
                .intents
                .range::<[u8], _>(range.bounds())
                .find(|(_, i)| i.txn != txn && i.commit_ts <= change.commit_ts)
            {
                return Err(Refusal::Locked { key: key.clone(), holder: intent.txn });
            }
            for (key, versions) in self.versions.range::<[u8], _>(range.bounds()) {
                if let Some(committed_at) = changed(versions) {
                    return Err(Refusal::ReadInvalidated { key: key.clone(), committed_at });
                }
            }
        }
        Ok(())
    }

    fn record_reads_at_commit(&mut self, change: &KvChange) {
        if change.isolation == Isolation::Serializable {
            for key in &change.reads {
                self.reads.record_point(key, change.commit_ts);
            }
            for range in &change.ranges {
                self.reads.record_range(range.clone(), change.commit_ts);
            }
        }
    }
}

impl Resource for MvccShard {
    type Change = KvChange;
    type Snapshot = KvSnapshot;
    type Refusal = Refusal;

    fn check(&self, txn: TxnId, change: &KvChange) -> Result<(), Refusal> {
        if change.commit_ts <= change.start_ts {
            return Err(Refusal::Invalid(format!(
                "commit timestamp {} is not after start timestamp {}",
                change.commit_ts, change.start_ts
            )));
        }
        // A gateway writes each key once (its buffer is a map); a change that writes one twice
        // did not come from one, and applying it would write two versions at one timestamp.
        let mut written = std::collections::BTreeSet::new();
        if let Some((key, _)) = change.writes.iter().find(|(key, _)| !written.insert(key)) {
            return Err(Refusal::Invalid(format!("key {} written twice", show_key(key))));
        }
        self.clock.check(change.commit_ts, self.physical_us).map_err(Refusal::Clock)?;
        if change.start_ts < self.gc_point {
            return Err(Refusal::TooOld { gc_point: self.gc_point });
        }
        for (key, _) in &change.writes {
            if let Some(holder) = self.other_intent(txn, key, Timestamp::MAX) {
                return Err(Refusal::Locked { key: key.clone(), holder });
            }
            if let Some(committed_at) = self.latest_committed(key) {
                if committed_at > change.start_ts {
                    return Err(Refusal::WriteConflict { key: key.clone(), committed_at });
                }
            }
            let read_at = self.reads.latest(key);
            if read_at >= change.commit_ts {
                // Say what happened: a reader, or only the restart's fence.
                let fence = self.reads.restart_fence;
                if self.reads.latest_served(key) < change.commit_ts && read_at == fence {
                    return Err(Refusal::RestartFence { key: key.clone(), fence });
                }
                return Err(Refusal::ReadByLater { key: key.clone(), read_at });
            }
        }
        if change.isolation == Isolation::Serializable {
            self.validate_reads(txn, change)?;
        }
        Ok(())
    }

    fn lock(&mut self, txn: TxnId, change: &KvChange) {
        self.clock.witness(change.commit_ts);
        for (key, _) in &change.writes {
            let previous =
                self.intents.insert(key.clone(), Intent { txn, commit_ts: change.commit_ts });
            assert!(
                previous.as_ref().is_none_or(|p| p.txn == txn),
                "{txn} locked {} held by {previous:?}: check() must precede lock()",
                show_key(key)
            );
        }
        self.record_reads_at_commit(change);
    }

    fn unlock(&mut self, txn: TxnId, change: &KvChange) {
        for (key, _) in &change.writes {
            if self.intents.get(key).is_some_and(|i| i.txn == txn) {
                self.intents.remove(key);
            }
        }
    }

    fn apply(&mut self, _txn: TxnId, change: &KvChange) {
        self.clock.witness(change.commit_ts);
        for (key, value) in &change.writes {
            let versions = self.versions.entry(key.clone()).or_default();
            let at = versions.partition_point(|v| v.ts < change.commit_ts);
            assert!(
                versions.get(at).is_none_or(|v| v.ts != change.commit_ts),
                "two writes of {} at {}",
                show_key(key),
                change.commit_ts
            );
            versions.insert(at, Version { ts: change.commit_ts, value: value.clone() });
        }
    }

    fn snapshot(&self) -> KvSnapshot {
        KvSnapshot {
            gc_point: self.gc_point,
            versions: self.versions.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            store: self.expected_store,
        }
    }

    fn restore(&mut self, snapshot: KvSnapshot) {
        self.gc_point = self.gc_point.max(snapshot.gc_point);
        if let Some(seal) = snapshot.store {
            if self.expected_store.is_none_or(|known| known.generation < seal.generation) {
                self.expected_store = Some(seal);
            }
        }
        for (key, versions) in snapshot.versions {
            if let Some(last) = versions.last() {
                self.clock.witness(last.ts);
            }
            self.versions.insert(key, versions);
        }
    }

    fn reset(&mut self) {
        *self = MvccShard {
            physical_us: self.physical_us,
            ..MvccShard::new(self.clock.max_offset_us())
        };
    }

    fn finish_read_only(&mut self, txn: TxnId, change: &KvChange) -> Result<(), Refusal> {
        self.check(txn, change)?;
        self.clock.witness(change.commit_ts);
        self.record_reads_at_commit(change);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_types::NodeId;

    fn txn(sequence: u32) -> TxnId {
        TxnId { coordinator: NodeId(0), epoch: 1, sequence }
    }
    fn ts(wall: u64) -> Timestamp {
        Timestamp::new(wall, 0)
    }
    fn shard() -> MvccShard {
        let mut s = MvccShard::new(1_000);
        s.set_physical_time(100);
        s
    }
    fn put(start: u64, commit: u64, key: &str, value: &str) -> KvChange {
        KvChange {
            start_ts: ts(start),
            commit_ts: ts(commit),
            writes: vec![(key.into(), Some(value.into()))],
            ..KvChange::default()
        }
    }
    fn commit(s: &mut MvccShard, t: TxnId, change: &KvChange) {
        s.check(t, change).unwrap();
        s.lock(t, change);
        s.unlock(t, change);
        s.apply(t, change);
    }

    #[test]
    fn reads_see_the_newest_version_at_or_before_their_timestamp() {
        let mut s = shard();
        commit(&mut s, txn(1), &put(1, 10, "k", "a"));
        commit(&mut s, txn(2), &put(11, 20, "k", "b"));
        assert_eq!(s.get(b"k", ts(9)).unwrap(), None);
        assert_eq!(s.get(b"k", ts(10)).unwrap(), Some(b"a".to_vec()));
        assert_eq!(s.get(b"k", ts(19)).unwrap(), Some(b"a".to_vec()));
        assert_eq!(s.get(b"k", ts(25)).unwrap(), Some(b"b".to_vec()));
    }

    #[test]
    fn a_write_below_an_earlier_read_is_refused() {
        let mut s = shard();
        s.get(b"k", ts(50)).unwrap();
        let change = put(1, 40, "k", "x");
        assert_eq!(
            s.check(txn(1), &change),
            Err(Refusal::ReadByLater { key: b"k".to_vec(), read_at: ts(50) })
        );
        assert!(s.check(txn(1), &put(1, 51, "k", "x")).is_ok(), "above the read is fine");
    }

    #[test]
    fn first_committer_wins_and_intents_exclude_other_writers() {
        let mut s = shard();
        let first = put(5, 10, "k", "a");
        s.check(txn(1), &first).unwrap();
        s.lock(txn(1), &first);
        assert_eq!(
            s.check(txn(2), &put(5, 12, "k", "b")),
            Err(Refusal::Locked { key: b"k".to_vec(), holder: txn(1) })
        );
        s.unlock(txn(1), &first);
        s.apply(txn(1), &first);
        assert_eq!(
            s.check(txn(2), &put(5, 12, "k", "b")),
            Err(Refusal::WriteConflict { key: b"k".to_vec(), committed_at: ts(10) })
        );
    }

    #[test]
    fn readers_block_on_intents_due_at_or_before_them_and_ignore_later_ones() {
        let mut s = shard();
        let change = put(5, 30, "k", "a");
        s.check(txn(1), &change).unwrap();
        s.lock(txn(1), &change);
        assert_eq!(s.get(b"k", ts(29)).unwrap(), None, "an intent due later is invisible");
        assert_eq!(
            s.get(b"k", ts(30)),
            Err(ReadError::Blocked { key: b"k".to_vec(), holder: txn(1) })
        );
        assert!(matches!(s.scan(&KeyRange::all(), ts(40), 10), Err(ReadError::Blocked { .. })));
    }

    #[test]
    fn serializable_reads_are_validated_up_to_the_commit_timestamp() {
        let mut s = shard();
        commit(&mut s, txn(1), &put(1, 10, "x", "1"));
        // T2 read x at 5 (saw nothing), x changed at 10; T2 commits at 20: its read is stale.
        let mut t2 = put(5, 20, "y", "1");
        t2.reads = vec![b"x".to_vec()];
        assert_eq!(
            s.check(txn(2), &t2),
            Err(Refusal::ReadInvalidated { key: b"x".to_vec(), committed_at: ts(10) })
        );
        t2.isolation = Isolation::Snapshot;
        assert!(s.check(txn(2), &t2).is_ok(), "snapshot isolation does not validate reads");
        // A phantom: a scanned range gained a key.
        let mut t3 = put(5, 20, "z", "1");
        t3.ranges = vec![KeyRange::new(b"w".to_vec(), Some(b"y".to_vec()))];
        assert!(matches!(s.check(txn(3), &t3), Err(Refusal::ReadInvalidated { .. })));
    }

    #[test]
    fn validated_reads_hold_until_the_commit_timestamp() {
        let mut s = shard();
        let mut t1 = put(5, 20, "y", "1");
        t1.reads = vec![b"x".to_vec()];
        s.check(txn(1), &t1).unwrap();
        s.lock(txn(1), &t1);
        // A writer of x below T1's commit timestamp would invalidate T1's read after the fact.
        assert!(matches!(s.check(txn(2), &put(6, 15, "x", "2")), Err(Refusal::ReadByLater { .. })));
        assert!(s.check(txn(2), &put(6, 21, "x", "2")).is_ok());
    }

    #[test]
    fn scans_respect_the_limit_and_record_only_what_they_covered() {
        let mut s = shard();
        for (i, k) in (1u32..).zip(["a", "b", "c", "d"]) {
            commit(&mut s, txn(i), &put(1, 10 + u64::from(i), k, "v"));
        }
        commit(
            &mut s,
            txn(9),
            &KvChange {
                start_ts: ts(20),
                commit_ts: ts(21),
                writes: vec![(b"b".to_vec(), None)],
                ..KvChange::default()
            },
        );
        let (rows, exhausted) = s.scan(&KeyRange::all(), ts(30), 2).unwrap();
        assert_eq!(
            rows.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            vec![b"a".to_vec(), b"c".to_vec()]
        );
        assert!(!exhausted);
        assert!(s.check(txn(10), &put(22, 25, "c", "w")).is_err(), "covered");
        assert!(s.check(txn(10), &put(22, 25, "d", "w")).is_ok(), "beyond the last row: not read");
    }

    #[test]
    fn garbage_collection_keeps_what_snapshots_after_the_safe_point_see() {
        let mut s = shard();
        commit(&mut s, txn(1), &put(1, 10, "k", "a"));
        commit(&mut s, txn(2), &put(11, 20, "k", "b"));
        commit(&mut s, txn(3), &put(21, 30, "k", "c"));
        commit(
            &mut s,
            txn(4),
            &KvChange {
                start_ts: ts(1),
                commit_ts: ts(5),
                writes: vec![(b"gone".to_vec(), None)],
                ..KvChange::default()
            },
        );
        assert_eq!(s.collect_garbage(ts(25)), 2, "k's version at 10, and the old deletion");
        assert_eq!(s.get(b"k", ts(25)).unwrap(), Some(b"b".to_vec()));
        assert_eq!(s.get(b"k", ts(30)).unwrap(), Some(b"c".to_vec()));
        assert!(matches!(s.get(b"k", ts(24)), Err(ReadError::TooOld { .. })));
        assert!(matches!(s.check(txn(5), &put(24, 40, "k", "d")), Err(Refusal::TooOld { .. })));
        assert!(!s.versions().contains_key(b"gone".as_slice()));
    }

    #[test]
    fn clocks_too_far_ahead_are_refused() {
        let mut s = shard(); // physical 100, offset 1000
        assert!(matches!(s.get(b"k", ts(1_101)), Err(ReadError::Clock(_))));
        assert!(matches!(s.check(txn(1), &put(1, 1_101, "k", "v")), Err(Refusal::Clock(_))));
        assert!(s.get(b"k", ts(1_100)).is_ok());
    }

    #[test]
    fn after_a_restart_no_write_lands_below_a_read_served_before_it() {
        let mut s = shard();
        s.get(b"k", ts(900)).unwrap(); // within the offset of physical time 100
        s.reset();
        s.set_physical_time(150);
        s.restarted();
        // Refused — and the refusal names the restart, not a reader that never was.
        let refused = s.check(txn(1), &put(1, 1_000, "k", "v")).unwrap_err();
        assert!(matches!(refused, Refusal::RestartFence { .. }), "{refused:?}");
        assert!(refused.to_string().contains("the shard restarted"), "{refused}");
        // A read served after the restart, above the fence, is a reader again.
        s.set_physical_time(300);
        s.get(b"r", ts(1_200)).unwrap();
        let refused = s.check(txn(2), &put(1, 1_190, "r", "v")).unwrap_err();
        assert!(matches!(refused, Refusal::ReadByLater { .. }), "{refused:?}");
        s.set_physical_time(200);
        assert!(s.check(txn(1), &put(1, 1_151, "k", "v")).is_ok());
    }

    #[test]
    fn merging_kept_versions_keeps_each_write_once() {
        let mut s = shard();
        commit(&mut s, txn(1), &put(1, 10, "k", "a"));
        commit(&mut s, txn(2), &put(11, 20, "k", "b"));
        let mut other = shard();
        commit(&mut other, txn(2), &put(11, 20, "k", "b"));
        commit(&mut other, txn(3), &put(21, 30, "k", "c"));
        s.merge(other.snapshot());
        let ts: Vec<u64> = s.versions()[b"k".as_slice()].iter().map(|v| v.ts.wall).collect();
        assert_eq!(ts, vec![10, 20, 30]);
    }

    #[test]
    fn snapshots_round_trip() {
        let mut s = shard();
        commit(&mut s, txn(1), &put(1, 10, "k", "a"));
        commit(&mut s, txn(2), &put(11, 20, "k", "b"));
        s.collect_garbage(ts(12));
        let snapshot = s.snapshot();
        assert_eq!(KvSnapshot::from_bytes(&snapshot.to_bytes()).unwrap(), snapshot);
        let mut restored = shard();
        restored.restore(snapshot);
        assert_eq!(restored.versions(), s.versions());
        assert_eq!(restored.gc_point(), ts(12));
    }
}
