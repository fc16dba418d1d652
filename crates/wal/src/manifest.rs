//! The log's manifest: what the directory must contain.
//!
//! ```text
//!  MANIFEST  "CNCDMAN1" · sequence: u64 · flags: u8 · count: u32
//!            count × (segment id: u64 · kind: u8 · sealed: u8 · length: u64)
//!            crc32c of everything before: u32
//! ```
//!
//! Every segment of the log is listed in order. A *sealed* segment's length is exact: it was
//! synced whole before the next one started, so it must be found whole, no shorter and no
//! longer. The last, active segment's length is a *durable floor*: at least that many bytes were
//! synced — and so acknowledged appends may lie below it — when the manifest was written. A torn
//! tail above the floor can be a crash's unfinished write; below it, it is lost data.
//!
//! Flags: bit 0 — its operator accepted a loss of data in this log (`FileLog::salvage`); kept
//! through every rewrite, so the node can tell that its record of the loss is missing.
//!
//! The manifest is replaced whole (written under a temporary name, synced, renamed, the
//! directory synced), so a crash leaves the old one or the new one, never a mix; its checksum
//! tells damage from either. It is rewritten when a segment is sealed or a checkpoint replaces
//! the log, when the log is opened and closed, once appends pause (20 ms), and while they flow
//! every `MANIFEST_EVERY` (256) syncs — never once per group commit, so the hot path keeps one
//! fdatasync.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::crc32c::crc32c;

pub const MANIFEST_FILE: &str = "MANIFEST";
const MAGIC: &[u8; 8] = b"CNCDMAN1";
const ENTRY_BYTES: usize = 8 + 1 + 1 + 8;
/// A log with more segments than this is damage (or a misconfiguration), not a log.
const MAX_SEGMENTS: u32 = 1 << 20;
/// Segment ids above this are damage (a log rolls far fewer times in any life), so one past
/// any id never overflows.
pub const MAX_SEGMENT_ID: u64 = 1 << 60;
/// The largest manifest there can be; a bigger file is refused before it is read whole.
const MAX_BYTES: u64 = 21 + 4 + MAX_SEGMENTS as u64 * ENTRY_BYTES as u64;

/// One segment as the manifest lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    pub id: u64,
    pub kind: u8,
    /// Synced whole and closed: `length` is exact.
    pub sealed: bool,
    /// Exact for a sealed segment; for the active one, the bytes known durable.
    pub length: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Incremented at every write: tells a newer manifest from an older copy.
    pub sequence: u64,
    /// A loss of data was accepted in this log.
    pub data_loss_accepted: bool,
    pub segments: Vec<Listed>,
}

/// Header bytes before the entries: magic, sequence, flags, count.
const HEADER: usize = 8 + 8 + 1 + 4;

impl Manifest {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_FILE)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 4 + self.segments.len() * ENTRY_BYTES);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.push(u8::from(self.data_loss_accepted));
        let count = u32::try_from(self.segments.len()).expect("segment count fits in u32");
        out.extend_from_slice(&count.to_le_bytes());
        for s in &self.segments {
            out.extend_from_slice(&s.id.to_le_bytes());
            out.push(s.kind);
            out.push(u8::from(s.sealed));
            out.extend_from_slice(&s.length.to_le_bytes());
        }
        let crc = crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses a manifest; the error says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, String> {
        if bytes.len() < HEADER + 4 || &bytes[..8] != MAGIC {
            return Err("not a Concord log manifest (wrong magic or too short)".to_string());
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes(crc.try_into().expect("four bytes"));
        if crc32c(body) != stored {
            return Err("checksum mismatch".to_string());
        }
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        let sequence = u64_at(8);
        let data_loss_accepted = match body[16] {
            0 => false,
            1 => true,
            other => return Err(format!("flags {other:#x}: not written by this version")),
        };
        let count = u32::from_le_bytes(body[17..21].try_into().expect("4 bytes"));
        if count > MAX_SEGMENTS || body.len() != HEADER + count as usize * ENTRY_BYTES {
            return Err(format!("{count} segments do not fit its {} bytes", bytes.len()));
        }
        let mut segments = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            let at = HEADER + i * ENTRY_BYTES;
            let sealed = match body[at + 9] {
                0 => false,
                1 => true,
                other => return Err(format!("entry {i}: sealed flag {other}")),
            };
            segments.push(Listed {
                id: u64_at(at),
                kind: body[at + 8],
                sealed,
                length: u64_at(at + 10),
            });
        }
        if segments.iter().any(|s| s.id > MAX_SEGMENT_ID) {
            return Err("a segment id out of range".to_string());
        }
        if segments.windows(2).any(|w| w[0].id >= w[1].id) {
            return Err("segment ids out of order".to_string());
        }
        if segments.iter().rev().skip(1).any(|s| !s.sealed) {
            return Err("a segment before the last is not sealed".to_string());
        }
        Ok(Manifest { sequence, data_loss_accepted, segments })
    }

    /// Reads the manifest in `dir`: `Ok(None)` if there is none.
    pub fn read(dir: &Path) -> io::Result<Option<Result<Manifest, String>>> {
        match fs::metadata(Manifest::path(dir)) {
            Ok(meta) if meta.len() > MAX_BYTES => {
                return Ok(Some(Err(format!("{} bytes: larger than any manifest", meta.len()))))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
        match fs::read(Manifest::path(dir)) {
            Ok(bytes) => Ok(Some(Manifest::decode(&bytes))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the manifest in `dir` atomically and durably.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
        let mut file = OpenOptions::new().create(true).truncate(true).write(true).open(&tmp)?;
        file.write_all(&self.encode())?;
        file.sync_data()?;
        fs::rename(&tmp, Manifest::path(dir))?;
        File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            sequence: 7,
            data_loss_accepted: true,
            segments: vec![
                Listed { id: 3, kind: 1, sealed: true, length: 4096 },
                Listed { id: 4, kind: 0, sealed: false, length: 9 },
            ],
        }
    }

    #[test]
    fn an_id_out_of_range_is_refused() {
        let mut m = sample();
        m.segments[1].id = MAX_SEGMENT_ID + 1;
        assert!(Manifest::decode(&m.encode()).unwrap_err().contains("out of range"));
    }

    #[test]
    fn round_trips() {
        assert_eq!(Manifest::decode(&sample().encode()), Ok(sample()));
    }

    #[test]
    fn every_flipped_bit_and_every_cut_is_refused() {
        let bytes = sample().encode();
        for i in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[i / 8] ^= 1 << (i % 8);
            assert!(Manifest::decode(&damaged).is_err(), "bit {i}");
        }
        for cut in 0..bytes.len() {
            assert!(Manifest::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
