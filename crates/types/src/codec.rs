//! Fixed-width little-endian encoding for records and messages.
//!
//! Deliberately tiny: a [`Writer`] that appends to a `Vec<u8>` and a [`Reader`] that consumes a
//! slice and reports exactly what was missing. Lengths of sequences are `u32`; a decoder
//! refuses a length greater than the bytes left (every item takes at least one) or than
//! [`MAX_SEQUENCE_LEN`] before allocating, so a corrupt length cannot ask for more memory than
//! the record it sits in.

use crate::{Decision, NodeId, TxnId, Vote, Write};

/// Upper bound on any sequence length. Records are at most 16 MiB (the log's frame), so this is
/// a sanity bound; the real one is the record's own length.
pub const MAX_SEQUENCE_LEN: u32 = 1 << 24;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record ends early: needed {needed} more bytes")]
    Truncated { needed: usize },
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u8 },
    #[error("sequence of {len} items exceeds the limit of {MAX_SEQUENCE_LEN}")]
    TooLong { len: u32 },
    #[error("{trailing} bytes left after the record")]
    Trailing { trailing: usize },
    #[error("text field is not UTF-8")]
    NotUtf8,
}

/// Appends fixed-width values.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        Writer { buf }
    }

    fn buf(&mut self) -> &mut Vec<u8> {
        self.buf
    }

    pub fn u8(&mut self, v: u8) {
        self.buf().push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.buf().extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf().extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.buf().extend_from_slice(&v.to_le_bytes());
    }
    pub fn sequence_len(&mut self, len: usize) {
        let len = u32::try_from(len).expect("sequence lengths are bounded far below u32::MAX");
        assert!(len <= MAX_SEQUENCE_LEN, "encoding a sequence of {len} items, over the limit");
        self.u32(len);
    }
    pub fn node(&mut self, v: NodeId) {
        self.u32(v.0);
    }
    /// A length-prefixed byte string (at most [`MAX_SEQUENCE_LEN`] bytes).
    pub fn bytes(&mut self, v: &[u8]) {
        self.sequence_len(v.len());
        self.buf().extend_from_slice(v);
    }
    pub fn text(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    pub fn txn(&mut self, v: TxnId) {
        self.node(v.coordinator);
        self.u32(v.epoch);
        self.u32(v.sequence);
    }
    pub fn nodes(&mut self, v: &[NodeId]) {
        self.sequence_len(v.len());
        for n in v {
            self.node(*n);
        }
    }
    pub fn writes(&mut self, v: &[Write]) {
        self.sequence_len(v.len());
        for w in v {
            self.u64(w.key);
            self.i64(w.delta);
        }
    }
    pub fn decision(&mut self, v: Decision) {
        self.u8(match v {
            Decision::Commit => 1,
            Decision::Abort => 2,
        });
    }
    pub fn vote(&mut self, v: Vote) {
        self.u8(match v {
            Vote::Yes => 1,
            Vote::No => 2,
            Vote::ReadOnly => 3,
        });
    }
}

/// Consumes fixed-width values from a slice.
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        if self.rest.len() < N {
            return Err(DecodeError::Truncated { needed: N - self.rest.len() });
        }
        let (head, tail) = self.rest.split_at(N);
        self.rest = tail;
        Ok(head.try_into().expect("split_at(N) yields exactly N bytes"))
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.take()?))
    }
    pub fn sequence_len(&mut self) -> Result<usize, DecodeError> {
        let len = self.u32()?;
        if len > MAX_SEQUENCE_LEN {
            return Err(DecodeError::TooLong { len });
        }
        let len = len as usize;
        if len > self.rest.len() {
            return Err(DecodeError::Truncated { needed: len - self.rest.len() });
        }
        Ok(len)
    }
    pub fn node(&mut self) -> Result<NodeId, DecodeError> {
        Ok(NodeId(self.u32()?))
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.sequence_len()?;
        if self.rest.len() < len {
            return Err(DecodeError::Truncated { needed: len - self.rest.len() });
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }
    pub fn text(&mut self) -> Result<String, DecodeError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::NotUtf8)
    }
    pub fn txn(&mut self) -> Result<TxnId, DecodeError> {
        Ok(TxnId { coordinator: self.node()?, epoch: self.u32()?, sequence: self.u32()? })
    }
    pub fn nodes(&mut self) -> Result<Vec<NodeId>, DecodeError> {
        let len = self.sequence_len()?;
        (0..len).map(|_| self.node()).collect()
    }
    pub fn writes(&mut self) -> Result<Vec<Write>, DecodeError> {
        let len = self.sequence_len()?;
        (0..len).map(|_| Ok(Write { key: self.u64()?, delta: self.i64()? })).collect()
    }
    pub fn decision(&mut self) -> Result<Decision, DecodeError> {
        match self.u8()? {
            1 => Ok(Decision::Commit),
            2 => Ok(Decision::Abort),
            tag => Err(DecodeError::UnknownTag { what: "decision", tag }),
        }
    }
    pub fn vote(&mut self) -> Result<Vote, DecodeError> {
        match self.u8()? {
            1 => Ok(Vote::Yes),
            2 => Ok(Vote::No),
            3 => Ok(Vote::ReadOnly),
            tag => Err(DecodeError::UnknownTag { what: "vote", tag }),
        }
    }
    /// Fails unless every byte was consumed: a record is exactly its encoding.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing { trailing: self.rest.len() })
        }
    }
}

/// A value with a fixed binary form.
pub trait Encode: Sized {
    fn encode(&self, w: &mut Writer<'_>);
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError>;

    fn to_bytes(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.encode(&mut Writer::new(&mut buf));
        buf
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let v = Self::decode(&mut r)?;
        r.finish()?;
        Ok(v)
    }
}

/// A branch of writes, as the bank-style [`crate::Write`] resources carry it.
impl Encode for Vec<Write> {
    fn encode(&self, w: &mut Writer<'_>) {
        w.writes(self);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.writes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf);
        let txn = TxnId { coordinator: NodeId(7), epoch: 2, sequence: 9 };
        w.txn(txn);
        w.writes(&[Write { key: 5, delta: -3 }]);
        w.nodes(&[NodeId(1), NodeId(2)]);
        w.decision(Decision::Abort);
        w.vote(Vote::ReadOnly);
        w.text("héllo");
        let mut r = Reader::new(&buf);
        assert_eq!(r.txn().unwrap(), txn);
        assert_eq!(r.writes().unwrap(), vec![Write { key: 5, delta: -3 }]);
        assert_eq!(r.nodes().unwrap(), vec![NodeId(1), NodeId(2)]);
        assert_eq!(r.decision().unwrap(), Decision::Abort);
        assert_eq!(r.vote().unwrap(), Vote::ReadOnly);
        assert_eq!(r.text().unwrap(), "héllo");
        r.finish().unwrap();
    }

    #[test]
    fn truncated_input_says_how_much_is_missing() {
        let mut r = Reader::new(&[1, 2]);
        assert_eq!(r.u32(), Err(DecodeError::Truncated { needed: 2 }));
    }

    #[test]
    fn corrupt_length_is_refused_before_allocating() {
        let bytes = u32::MAX.to_le_bytes();
        assert_eq!(Reader::new(&bytes).writes(), Err(DecodeError::TooLong { len: u32::MAX }));
        // Under the sanity bound but more items than bytes left: refused before allocating.
        let mut bytes = 1_000_000u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 10]);
        assert_eq!(
            Reader::new(&bytes).writes(),
            Err(DecodeError::Truncated { needed: 1_000_000 - 10 })
        );
    }
}
