//! What one transaction asks of one shard at commit: its writes, and (under serializable
//! isolation) the reads the shard must validate. It travels opaquely in the 2PC core's PREPARE
//! and sits in the shard's prepare record.

use std::fmt;

use concord_types::codec::{DecodeError, Encode, Reader, Writer};

use crate::hlc::Timestamp;

pub type Key = Vec<u8>;
pub type Value = Vec<u8>;

/// The isolation level of a transaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Isolation {
    /// Reads are validated at commit: the transaction behaves as if it ran alone at its
    /// commit timestamp (no write skew, no phantoms).
    #[default]
    Serializable,
    /// Reads see the snapshot at the start timestamp; only write-write conflicts abort
    /// (first committer wins). Cheaper; allows write skew.
    Snapshot,
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isolation::Serializable => "serializable",
            Isolation::Snapshot => "snapshot",
        })
    }
}

impl std::str::FromStr for Isolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "serializable" | "ssi" => Ok(Isolation::Serializable),
            "snapshot" | "si" => Ok(Isolation::Snapshot),
            other => Err(format!("unknown isolation `{other}` (serializable | snapshot)")),
        }
    }
}

/// Keys from `start` (inclusive) to `end` (exclusive; `None`: to the end of the key space).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyRange {
    pub start: Key,
    pub end: Option<Key>,
}

impl KeyRange {
    pub fn new(start: impl Into<Key>, end: Option<Key>) -> Self {
        KeyRange { start: start.into(), end }
    }

    /// Every key.
    pub fn all() -> Self {
        KeyRange { start: Vec::new(), end: None }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }

    /// Whether no key lies in the range.
    pub fn is_empty(&self) -> bool {
        self.end.as_deref().is_some_and(|end| end <= self.start.as_slice())
    }

    /// The part of this range inside `other`, if any.
    pub fn intersect(&self, other: &KeyRange) -> Option<KeyRange> {
        let start = self.start.clone().max(other.start.clone());
        let end = match (&self.end, &other.end) {
            (None, None) => None,
            (Some(a), None) | (None, Some(a)) => Some(a.clone()),
            (Some(a), Some(b)) => Some(a.clone().min(b.clone())),
        };
        let range = KeyRange { start, end };
        (!range.is_empty()).then_some(range)
    }

    /// `std::ops::RangeBounds` for `BTreeMap::range`. An empty (or inverted) range gives
    /// bounds that select nothing — `BTreeMap::range` panics on an inverted one.
    pub fn bounds(&self) -> (std::ops::Bound<&[u8]>, std::ops::Bound<&[u8]>) {
        use std::ops::Bound;
        let end = match &self.end {
            _ if self.is_empty() => Bound::Excluded(self.start.as_slice()),
            Some(end) => Bound::Excluded(end.as_slice()),
            None => Bound::Unbounded,
        };
        (Bound::Included(self.start.as_slice()), end)
    }
}

/// The smallest key after `key` (for "up to and including `key`" as an exclusive end).
pub fn key_after(key: &[u8]) -> Key {
    let mut next = key.to_vec();
    next.push(0);
    next
}

impl Encode for KeyRange {
    fn encode(&self, w: &mut Writer<'_>) {
        w.bytes(&self.start);
        match &self.end {
            None => w.u8(0),
            Some(end) => {
                w.u8(1);
                w.bytes(end);
            }
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let start = r.bytes()?.to_vec();
        let end = match r.u8()? {
            0 => None,
            1 => Some(r.bytes()?.to_vec()),
            tag => return Err(DecodeError::UnknownTag { what: "key range end", tag }),
        };
        Ok(KeyRange { start, end })
    }
}

/// One transaction's part on one shard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KvChange {
    /// The snapshot its reads saw.
    pub start_ts: Timestamp,
    /// Where its writes go. Chosen by the coordinator, after `start_ts`; the same on every shard.
    pub commit_ts: Timestamp,
    pub isolation: Isolation,
    /// Keys and their new values (`None`: delete), sorted, each key once.
    pub writes: Vec<(Key, Option<Value>)>,
    /// Keys read on this shard (validated under serializable isolation).
    pub reads: Vec<Key>,
    /// Ranges scanned on this shard (validated under serializable isolation).
    pub ranges: Vec<KeyRange>,
}

/// A branch that only read still votes READ-ONLY after its reads are validated at prepare
/// (`MvccShard::finish_read_only`).
impl concord_commit::Change for KvChange {
    fn write_count(&self) -> usize {
        self.writes.len()
    }
}

impl Encode for KvChange {
    fn encode(&self, w: &mut Writer<'_>) {
        self.start_ts.encode(w);
        self.commit_ts.encode(w);
        w.u8(match self.isolation {
            Isolation::Serializable => 0,
            Isolation::Snapshot => 1,
        });
        w.sequence_len(self.writes.len());
        for (key, value) in &self.writes {
            w.bytes(key);
            match value {
                None => w.u8(0),
                Some(v) => {
                    w.u8(1);
                    w.bytes(v);
                }
            }
        }
        w.sequence_len(self.reads.len());
        for key in &self.reads {
            w.bytes(key);
        }
        w.sequence_len(self.ranges.len());
        for range in &self.ranges {
            range.encode(w);
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let start_ts = Timestamp::decode(r)?;
        let commit_ts = Timestamp::decode(r)?;
        let isolation = match r.u8()? {
            0 => Isolation::Serializable,
            1 => Isolation::Snapshot,
            tag => return Err(DecodeError::UnknownTag { what: "isolation", tag }),
        };
        let n = r.sequence_len()?;
        let mut writes = Vec::with_capacity(n);
        for _ in 0..n {
            let key = r.bytes()?.to_vec();
            let value = match r.u8()? {
                0 => None,
                1 => Some(r.bytes()?.to_vec()),
                tag => return Err(DecodeError::UnknownTag { what: "write", tag }),
            };
            writes.push((key, value));
        }
        let n = r.sequence_len()?;
        let mut reads = Vec::with_capacity(n);
        for _ in 0..n {
            reads.push(r.bytes()?.to_vec());
        }
        let n = r.sequence_len()?;
        let mut ranges = Vec::with_capacity(n);
        for _ in 0..n {
            ranges.push(KeyRange::decode(r)?);
        }
        Ok(KvChange { start_ts, commit_ts, isolation, writes, reads, ranges })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_round_trips() {
        let change = KvChange {
            start_ts: Timestamp::new(10, 1),
            commit_ts: Timestamp::new(20, 0),
            isolation: Isolation::Snapshot,
            writes: vec![(b"a".to_vec(), Some(b"1".to_vec())), (b"b".to_vec(), None)],
            reads: vec![b"c".to_vec()],
            ranges: vec![KeyRange::new(b"d".to_vec(), Some(b"e".to_vec())), KeyRange::all()],
        };
        assert_eq!(KvChange::from_bytes(&change.to_bytes()).unwrap(), change);
    }

    #[test]
    fn ranges_contain_intersect_and_know_when_empty() {
        let r = KeyRange::new(b"b".to_vec(), Some(b"d".to_vec()));
        assert!(r.contains(b"b") && r.contains(b"c\xff") && !r.contains(b"d") && !r.contains(b"a"));
        assert!(KeyRange::all().contains(b""));
        let s = KeyRange::new(b"c".to_vec(), None);
        assert_eq!(r.intersect(&s), Some(KeyRange::new(b"c".to_vec(), Some(b"d".to_vec()))));
        assert_eq!(r.intersect(&KeyRange::new(b"x".to_vec(), None)), None);
        assert!(KeyRange::new(b"b".to_vec(), Some(b"b".to_vec())).is_empty());
        assert!(KeyRange::new(b"a".to_vec(), Some(key_after(b"a"))).contains(b"a"));
        let inverted = KeyRange::new(b"z".to_vec(), Some(b"a".to_vec()));
        let map: std::collections::BTreeMap<Vec<u8>, ()> = [(b"m".to_vec(), ())].into();
        assert_eq!(map.range::<[u8], _>(inverted.bounds()).count(), 0, "selects nothing, no panic");
    }
}
