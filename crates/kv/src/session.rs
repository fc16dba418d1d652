//! A transaction as its gateway keeps it between `begin` and `commit`, and the shard map.
//!
//! Writes are buffered here, not at the shards: a transaction that never commits leaves
//! nothing behind, and a client that disappears costs only this buffer until its lifetime ends.
//! Reads go to the shards at the snapshot timestamp, except keys the transaction wrote, which
//! it reads back from its buffer (read your own writes). Under serializable isolation the keys
//! and ranges read are kept, to be validated at commit.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::change::{key_after, Isolation, Key, KeyRange, KvChange, Value};
use crate::hlc::Timestamp;

/// The limits a gateway enforces, with clear errors (documented in docs/kv.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Distinct keys a transaction may write plus keys it may read.
    pub max_keys_per_txn: usize,
    /// Rows one scan may return.
    pub max_scan_rows: usize,
    /// Key and value bytes one scan (and one shard read) returns at most; a scan that reaches
    /// it stops early and says there is more. Keeps every reply well inside a frame.
    pub max_scan_bytes: usize,
    /// A transaction older than this is aborted at its next operation.
    pub max_lifetime_us: u64,
    /// What a transaction carries to its shards at commit, in bytes: every write's key and
    /// value, every read key and every scanned range's bounds, each counted with
    /// [`ENTRY_OVERHEAD_BYTES`]. Bounded well below the 16 MiB frame of the links and the log,
    /// which a shard's part of the commit (its PREPARE, and its prepare record) must fit in.
    pub max_txn_bytes: usize,
}

/// What each write, read key or scanned range counts in a transaction's size on top of its
/// key and value bytes: the length prefixes and flags of its encoding, rounded up.
pub const ENTRY_OVERHEAD_BYTES: usize = 16;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 4 << 10,
            max_value_bytes: 256 << 10,
            max_keys_per_txn: 10_000,
            max_scan_rows: 10_000,
            max_scan_bytes: 4 << 20,
            max_lifetime_us: 30_000_000,
            max_txn_bytes: 8 << 20,
        }
    }
}

/// An operation that breaks a limit. None of these is retryable as is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("keys may not be empty")]
    EmptyKey,
    #[error("key of {len} bytes exceeds the limit of {max}")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value of {len} bytes exceeds the limit of {max}")]
    ValueTooLarge { len: usize, max: usize },
    #[error("the transaction touches more than {max} keys")]
    TooManyKeys { max: usize },
    #[error("scan limit {asked} exceeds the maximum of {max}")]
    ScanTooLarge { asked: usize, max: usize },
    #[error("the transaction is {age_ms} ms old, beyond the lifetime limit of {max_ms} ms")]
    TooOld { age_ms: u64, max_ms: u64 },
    #[error(
        "the transaction's writes, reads and scans come to {bytes} bytes, over the limit of {max} bytes per transaction"
    )]
    TxnTooLarge { bytes: usize, max: usize },
}

/// Range sharding: shard `i` holds keys from `splits[i - 1]` (inclusive) to `splits[i]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ShardMap {
    splits: Vec<Key>,
}

impl ShardMap {
    /// `splits` must be strictly increasing and non-empty keys; `n` splits make `n + 1` shards.
    pub fn new(splits: Vec<Key>) -> Result<Self, String> {
        if splits.iter().any(Vec::is_empty) {
            return Err("a split point may not be the empty key".into());
        }
        if splits.windows(2).any(|w| w[0] >= w[1]) {
            return Err("split points must be strictly increasing".into());
        }
        Ok(ShardMap { splits })
    }

    pub fn shards(&self) -> usize {
        self.splits.len() + 1
    }

    pub fn shard_of(&self, key: &[u8]) -> usize {
        self.splits.partition_point(|split| split.as_slice() <= key)
    }

    /// The key range shard `shard` holds.
    pub fn range_of(&self, shard: usize) -> KeyRange {
        let start = if shard == 0 { Vec::new() } else { self.splits[shard - 1].clone() };
        KeyRange { start, end: self.splits.get(shard).cloned() }
    }

    /// The shards `range` touches, in key order, each with its part of the range.
    pub fn pieces(&self, range: &KeyRange) -> Vec<(usize, KeyRange)> {
        (self.shard_of(&range.start)..self.shards())
            .filter_map(|shard| range.intersect(&self.range_of(shard)).map(|piece| (shard, piece)))
            .collect()
    }
}

/// One open transaction at its gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    pub start_ts: Timestamp,
    pub isolation: Isolation,
    began_at_us: u64,
    limits: Limits,
    writes: BTreeMap<Key, Option<Value>>,
    reads: BTreeSet<Key>,
    ranges: Vec<KeyRange>,
    /// The size of `writes`, `reads` and `ranges` as [`Limits::max_txn_bytes`] counts it.
    bytes: usize,
}

fn write_bytes(key: &[u8], value: Option<&Value>) -> usize {
    key.len() + value.map_or(0, Vec::len) + ENTRY_OVERHEAD_BYTES
}

impl fmt::Display for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} transaction at {}: {} writes, {} reads, {} scans",
            self.isolation,
            self.start_ts,
            self.writes.len(),
            self.reads.len(),
            self.ranges.len()
        )
    }
}

impl Transaction {
    pub fn new(start_ts: Timestamp, isolation: Isolation, now_us: u64, limits: Limits) -> Self {
        Transaction {
            start_ts,
            isolation,
            began_at_us: now_us,
            limits,
            writes: BTreeMap::new(),
            reads: BTreeSet::new(),
            ranges: Vec::new(),
            bytes: 0,
        }
    }

    /// Takes the snapshot again, at `start_ts`: for a session opened ahead of its transaction
    /// (its id reserved), whose snapshot belongs to its first operation. Only before anything
    /// was read or written (what was read at the old snapshot would not be valid at the new).
    pub fn restart_snapshot(&mut self, start_ts: Timestamp, now_us: u64) {
        assert!(
            self.writes.is_empty() && self.reads.is_empty() && self.ranges.is_empty(),
            "a snapshot is retaken only before the transaction's first operation"
        );
        self.start_ts = start_ts;
        self.began_at_us = now_us;
    }

    /// The transaction's size so far, as [`Limits::max_txn_bytes`] counts it.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Refuses growing to `bytes`.
    fn check_bytes(&self, bytes: usize) -> Result<(), LimitError> {
        if bytes > self.limits.max_txn_bytes {
            return Err(LimitError::TxnTooLarge { bytes, max: self.limits.max_txn_bytes });
        }
        Ok(())
    }

    /// Refuses to commit a transaction whose scans took it past the size limit (a scan's
    /// range is recorded after the read, so only the commit can refuse it).
    pub fn check_size(&self) -> Result<(), LimitError> {
        self.check_bytes(self.bytes)
    }

    /// Records `key`'s new buffered write, keeping `bytes` up to date.
    fn buffer(&mut self, key: Key, value: Option<Value>) -> Result<(), LimitError> {
        let before = self.writes.get(&key).map_or(0, |old| write_bytes(&key, old.as_ref()));
        let after = self.bytes - before + write_bytes(&key, value.as_ref());
        self.check_bytes(after)?;
        self.bytes = after;
        self.writes.insert(key, value);
        Ok(())
    }

    /// How long ago the transaction began (its snapshot was taken).
    pub fn age_us(&self, now_us: u64) -> u64 {
        now_us.saturating_sub(self.began_at_us)
    }

    /// Refuses any operation once the transaction has outlived its limit.
    pub fn check_alive(&self, now_us: u64) -> Result<(), LimitError> {
        let age_us = now_us.saturating_sub(self.began_at_us);
        if age_us > self.limits.max_lifetime_us {
            return Err(LimitError::TooOld {
                age_ms: age_us / 1_000,
                max_ms: self.limits.max_lifetime_us / 1_000,
            });
        }
        Ok(())
    }

    fn check_key(&self, key: &[u8]) -> Result<(), LimitError> {
        if key.is_empty() {
            return Err(LimitError::EmptyKey);
        }
        if key.len() > self.limits.max_key_bytes {
            return Err(LimitError::KeyTooLarge { len: key.len(), max: self.limits.max_key_bytes });
        }
        Ok(())
    }

    fn check_room(&self, key: &[u8]) -> Result<(), LimitError> {
        let new = !self.writes.contains_key(key) && !self.reads.contains(key);
        if new && self.writes.len() + self.reads.len() >= self.limits.max_keys_per_txn {
            return Err(LimitError::TooManyKeys { max: self.limits.max_keys_per_txn });
        }
        Ok(())
    }

    /// What this transaction wrote to `key`, if it did (`Some(None)`: it deleted it).
    pub fn buffered(&self, key: &[u8]) -> Option<Option<&Value>> {
        self.writes.get(key).map(Option::as_ref)
    }

    /// Checks a key about to be read from a shard, before the read.
    pub fn check_read(&self, key: &[u8]) -> Result<(), LimitError> {
        self.check_key(key)?;
        self.check_room(key)?;
        self.check_bytes(self.bytes + key.len() + ENTRY_OVERHEAD_BYTES)
    }

    /// Remembers a key read from a shard.
    pub fn record_read(&mut self, key: &[u8]) {
        if self.isolation == Isolation::Serializable
            && !self.writes.contains_key(key)
            && self.reads.insert(key.to_vec())
        {
            self.bytes += key.len() + ENTRY_OVERHEAD_BYTES;
        }
    }

    pub fn put(&mut self, key: Key, value: Value) -> Result<(), LimitError> {
        self.check_key(&key)?;
        if value.len() > self.limits.max_value_bytes {
            return Err(LimitError::ValueTooLarge {
                len: value.len(),
                max: self.limits.max_value_bytes,
            });
        }
        self.check_room(&key)?;
        self.buffer(key, Some(value))
    }

    pub fn delete(&mut self, key: Key) -> Result<(), LimitError> {
        self.check_key(&key)?;
        self.check_room(&key)?;
        self.buffer(key, None)
    }

    /// Checks a scan's row limit, and that the transaction has room left to record a range.
    pub fn check_scan(&self, limit: usize) -> Result<(), LimitError> {
        if limit > self.limits.max_scan_rows {
            return Err(LimitError::ScanTooLarge { asked: limit, max: self.limits.max_scan_rows });
        }
        self.check_bytes(self.bytes + ENTRY_OVERHEAD_BYTES)
    }

    /// How many rows to ask a shard for, so that `limit` rows remain after this transaction's
    /// own deletions in `piece` hide some.
    pub fn scan_fetch_limit(&self, piece: &KeyRange, limit: usize) -> usize {
        let deletions =
            self.writes.range::<[u8], _>(piece.bounds()).filter(|(_, v)| v.is_none()).count();
        limit + deletions
    }

    /// Overlays this transaction's writes in `piece` on what the shard returned for it
    /// (`exhausted`: the shard returned every row of the piece), keeps at most `limit` rows
    /// and at most `max_bytes` of keys and values (but always the first row), and records what
    /// was read. Returns the rows and whether the piece was read to its end.
    pub fn merge_scan(
        &mut self,
        piece: &KeyRange,
        shard_rows: Vec<(Key, Value)>,
        exhausted: bool,
        limit: usize,
        max_bytes: usize,
    ) -> (Vec<(Key, Value)>, bool) {
        // Rows past the shard's last one are unknown unless the shard reached the end.
        let known_until: Option<Key> =
            if exhausted { None } else { shard_rows.last().map(|(k, _)| key_after(k)) };
        let known = KeyRange {
            start: piece.start.clone(),
            end: match (&known_until, &piece.end) {
                (Some(k), _) => Some(k.clone()),
                (None, end) => end.clone(),
            },
        };
        let mut rows: BTreeMap<Key, Value> = shard_rows.into_iter().collect();
        for (key, value) in self.writes.range::<[u8], _>(known.bounds()) {
            match value {
                Some(v) => rows.insert(key.clone(), v.clone()),
                None => rows.remove(key),
            };
        }
        let total = rows.len();
        let mut bytes = 0;
        let rows: Vec<(Key, Value)> = rows
            .into_iter()
            .take(limit)
            .take_while(|(k, v)| {
                bytes += k.len() + v.len();
                bytes <= max_bytes || bytes == k.len() + v.len()
            })
            .collect();
        let complete = exhausted && rows.len() == total;
        if self.isolation == Isolation::Serializable {
            let covered = if complete {
                piece.clone()
            } else {
                let end = rows.last().map(|(k, _)| key_after(k)).or(known_until);
                KeyRange { start: piece.start.clone(), end }
            };
            if !covered.is_empty() {
                self.bytes += covered.start.len()
                    + covered.end.as_ref().map_or(0, Vec::len)
                    + ENTRY_OVERHEAD_BYTES;
                self.ranges.push(covered);
            }
        }
        (rows, complete)
    }

    /// Whether committing would change nothing: then there is nothing to commit. A read-only
    /// transaction read one consistent snapshot, which is serializable at its start timestamp.
    pub fn is_read_only(&self) -> bool {
        self.writes.is_empty()
    }

    /// Each shard's part of the commit at `commit_ts`, in shard order. Shards the transaction
    /// only read are included under serializable isolation (their reads are validated).
    pub fn changes(&self, map: &ShardMap, commit_ts: Timestamp) -> Vec<(usize, KvChange)> {
        let mut by_shard: BTreeMap<usize, KvChange> = BTreeMap::new();
        let blank = || KvChange {
            start_ts: self.start_ts,
            commit_ts,
            isolation: self.isolation,
            ..KvChange::default()
        };
        for (key, value) in &self.writes {
            by_shard
                .entry(map.shard_of(key))
                .or_insert_with(blank)
                .writes
                .push((key.clone(), value.clone()));
        }
        for key in &self.reads {
            by_shard.entry(map.shard_of(key)).or_insert_with(blank).reads.push(key.clone());
        }
        for range in &self.ranges {
            for (shard, piece) in map.pieces(range) {
                by_shard.entry(shard).or_insert_with(blank).ranges.push(piece);
            }
        }
        by_shard.into_iter().collect()
    }
}
