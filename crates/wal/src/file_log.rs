//! The log on real files: append-only segments, crc-framed records, fdatasync, recovery,
//! checkpoints.
//!
//! ```text
//!  dir/00000000000000000001.log   [magic "CNCDLOG1"][kind: 0 = records][frame][frame]…
//!  dir/00000000000000000002.log   …                        ← active: appends go here
//!  dir/00000000000000000003.log   [magic][kind: 1 = checkpoint][live records]
//! ```
//!
//! * A segment is sealed (synced) before the next one is started, so only the last segment can
//!   end in a torn record; recovery truncates it. A bad frame anywhere else, or with valid data
//!   after it, is corruption: `open` fails naming the segment and the byte offset.
//! * A checkpoint writes the records still needed into a new segment under a temporary name,
//!   syncs it, renames it into place (atomic), syncs the directory, then deletes every older
//!   segment. Recovery starts from the newest checkpoint segment, so a crash anywhere in between
//!   leaves either the old segments or the checkpoint in force — never both, never neither.
//! * A new segment appears whole: its header is written under a temporary name, synced and
//!   renamed into place, as a checkpoint is.
//! * A directory written by an incompatible version (another magic) is refused, not read.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::frame::{append_frame, scan, ScanError, Tail};

/// First bytes of every segment; a different value is another format.
pub const MAGIC: &[u8; 8] = b"CNCDLOG1";
/// Magic and kind byte.
const HEADER_BYTES: usize = 9;
const HEADER_LEN: u64 = HEADER_BYTES as u64;
const KIND_RECORDS: u8 = 0;
const KIND_CHECKPOINT: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("log I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("{segment}: corrupt record at byte {offset} ({reason}); refusing to start")]
    Corrupt { segment: PathBuf, offset: u64, reason: String },
    #[error("{segment} was written by an incompatible version of Concord (header {found:?})")]
    Incompatible { segment: PathBuf, found: Vec<u8> },
}

/// A segmented, append-only log in one directory.
#[derive(Debug)]
pub struct FileLog {
    dir: PathBuf,
    /// Segment ids in order; the last is active.
    segments: Vec<u64>,
    active: File,
    active_len: u64,
    segment_limit: u64,
    syncs: u64,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.log"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Starts segment `id` atomically, as a checkpoint is written: its header goes to a temporary
/// file, synced, renamed into place, the directory synced. A crash leaves the `.tmp` (removed
/// by `open`) or the whole header — never a segment without one, which `open` would have to
/// refuse (a SIGKILL between creating the file and writing its header once did exactly that).
fn new_segment(dir: &Path, id: u64, kind: u8) -> io::Result<File> {
    let tmp = dir.join(format!("{id:020}.log.tmp"));
    let mut file = OpenOptions::new().create_new(true).append(true).open(&tmp)?;
    file.write_all(MAGIC)?;
    file.write_all(&[kind])?;
    file.sync_data()?;
    fs::rename(&tmp, segment_path(dir, id))?;
    sync_dir(dir)?;
    Ok(file)
}

impl FileLog {
    /// Opens (or creates) the log in `dir` and returns it with every record it holds, in order.
    /// Segments roll over at about `segment_limit` bytes.
    pub fn open(dir: &Path, segment_limit: u64) -> Result<(FileLog, Vec<Vec<u8>>), OpenError> {
        fs::create_dir_all(dir)?;
        let mut ids = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                fs::remove_file(dir.join(name.as_ref()))?; // an unfinished checkpoint
            } else if let Some(id) = name.strip_suffix(".log").and_then(|s| s.parse::<u64>().ok()) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut segments: Vec<(u64, Vec<u8>, u8)> = Vec::with_capacity(ids.len());
        for id in ids {
            let path = segment_path(dir, id);
            let mut bytes = Vec::new();
            File::open(&path)?.read_to_end(&mut bytes)?;
            if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
                let found = bytes.iter().take(8).copied().collect();
                return Err(OpenError::Incompatible { segment: path, found });
            }
            let kind = bytes[8];
            segments.push((id, bytes, kind));
        }
        // Everything before the newest checkpoint is superseded by it.
        if let Some(start) = segments.iter().rposition(|(_, _, kind)| *kind == KIND_CHECKPOINT) {
            for (id, ..) in segments.drain(..start) {
                fs::remove_file(segment_path(dir, id))?;
            }
        }
        let mut records = Vec::new();
        let count = segments.len();
        for (index, (id, bytes, _)) in segments.iter().enumerate() {
            let path = segment_path(dir, *id);
            let body = &bytes[HEADER_BYTES..];
            let scanned = scan(body).map_err(|ScanError::CorruptInMiddle { offset, reason }| {
                OpenError::Corrupt {
                    segment: path.clone(),
                    offset: HEADER_LEN + offset as u64,
                    reason: reason.to_string(),
                }
            })?;
            records.extend(scanned.payloads.iter().map(|p| p.to_vec()));
            if let Tail::Torn { offset } = scanned.tail {
                if index + 1 != count {
                    // Sealed segments were synced whole: a torn one is damage, not a crash.
                    let reason = "incomplete record in a sealed segment".to_string();
                    return Err(OpenError::Corrupt {
                        segment: path,
                        offset: HEADER_LEN + offset as u64,
                        reason,
                    });
                }
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(HEADER_LEN + offset as u64)?;
                file.sync_data()?;
            }
        }
        let (segments, active, active_len) = match segments.last() {
            Some((id, ..)) => {
                let path = segment_path(dir, *id);
                let active = OpenOptions::new().append(true).open(&path)?;
                let len = active.metadata()?.len();
                (segments.iter().map(|(id, ..)| *id).collect(), active, len)
            }
            None => {
                let active = new_segment(dir, 1, KIND_RECORDS)?;
                (vec![1], active, HEADER_LEN)
            }
        };
        let log = FileLog {
            dir: dir.to_path_buf(),
            segments,
            active,
            active_len,
            segment_limit,
            syncs: 0,
        };
        Ok((log, records))
    }

    /// Writes a record; it is durable only after the next [`FileLog::sync`].
    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + crate::FRAME_HEADER_LEN);
        append_frame(&mut frame, payload);
        if self.active_len > HEADER_LEN && self.active_len + frame.len() as u64 > self.segment_limit
        {
            self.roll()?;
        }
        self.active.write_all(&frame)?;
        self.active_len += frame.len() as u64;
        Ok(())
    }

    /// Makes every record appended so far durable (one fdatasync).
    pub fn sync(&mut self) -> io::Result<()> {
        self.active.sync_data()?;
        self.syncs += 1;
        Ok(())
    }

    /// fdatasync calls made so far.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Segments on disk.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Seals the active segment and starts the next.
    fn roll(&mut self) -> io::Result<()> {
        self.sync()?;
        let id = self.segments.last().copied().unwrap_or(0) + 1;
        self.active = new_segment(&self.dir, id, KIND_RECORDS)?;
        self.segments.push(id);
        self.active_len = HEADER_LEN;
        Ok(())
    }

    /// Replaces the whole log with `live`, the records still needed, and drops the rest.
    pub fn checkpoint(&mut self, live: &[Vec<u8>]) -> io::Result<()> {
        let id = self.segments.last().copied().unwrap_or(0) + 1;
        let tmp = self.dir.join(format!("{id:020}.log.tmp"));
        let mut file = OpenOptions::new().create_new(true).append(true).open(&tmp)?;
        let mut bytes = MAGIC.to_vec();
        bytes.push(KIND_CHECKPOINT);
        for record in live {
            append_frame(&mut bytes, record);
        }
        file.write_all(&bytes)?;
        file.sync_data()?;
        fs::rename(&tmp, segment_path(&self.dir, id))?;
        sync_dir(&self.dir)?;
        for old in self.segments.drain(..) {
            fs::remove_file(segment_path(&self.dir, old))?;
        }
        sync_dir(&self.dir)?;
        self.segments.push(id);
        self.active = file;
        self.active_len = bytes.len() as u64;
        self.syncs += 1;
        Ok(())
    }
}
