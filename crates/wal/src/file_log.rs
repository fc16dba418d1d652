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
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::frame::{append_frame, scan, ScanError, Tail};
use crate::manifest::{Listed, Manifest, MAX_SEGMENT_ID};

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
    /// The directory does not hold what its manifest says it must: acknowledged records may be
    /// gone. Never repaired silently — see `FileLog::salvage`.
    #[error("{path}: {reason}; refusing to start (`concord data check` reports on the directory, `--accept-data-loss` starts from what is readable)")]
    Damaged { path: PathBuf, reason: String },
}

fn damaged(path: PathBuf, reason: impl Into<String>) -> OpenError {
    OpenError::Damaged { path, reason: reason.into() }
}

/// Rewrite the manifest at least every this many syncs while appends flow: one manifest write
/// costs two fsyncs, so this keeps it under 1% of the group commits' own. (A count, not a
/// clock: this crate takes no time from the system.)
pub const MANIFEST_EVERY: u64 = 256;

/// A segmented, append-only log in one directory.
#[derive(Debug)]
pub struct FileLog {
    dir: PathBuf,
    /// Every segment in order, as the next manifest will list them; the last is active and its
    /// `length` is what the manifest on disk says is durable.
    listed: Vec<Listed>,
    manifest_sequence: u64,
    /// Syncs since the manifest was last written.
    syncs_since_manifest: u64,
    /// Off only to measure what keeping the manifest current costs (`concord bench log`).
    refresh_manifest: bool,
    /// The manifest's flag: a loss of data was accepted in this log.
    data_loss_accepted: bool,
    active: File,
    active_len: u64,
    /// Bytes of the active segment covered by the last sync.
    synced_len: u64,
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

/// What opening a log will do, found without changing anything (so `check` can report it).
#[derive(Debug, Default)]
struct Plan {
    /// No log yet: start one.
    fresh: bool,
    /// Leftovers of an unfinished write (`.tmp`) and segments a checkpoint superseded.
    remove: Vec<PathBuf>,
    /// The segments recovery reads, in order, with the length of their valid part.
    read: Vec<(Listed, u64)>,
    /// A torn tail above the durable floor: cut the active segment here.
    truncate: Option<(PathBuf, u64)>,
    records: Vec<Vec<u8>>,
    manifest_sequence: u64,
    data_loss_accepted: bool,
    /// What an operator would want to know: torn tails, superseded leftovers.
    notes: Vec<String>,
}

/// What `FileLog::check` found in a healthy log.
#[derive(Debug)]
pub struct CheckReport {
    pub segments: usize,
    /// Every record, in order, as `open` would return them.
    pub records: Vec<Vec<u8>>,
    pub bytes: u64,
    /// Things recovery would tidy (a torn tail above the durable floor, leftovers) — not loss.
    pub notes: Vec<String>,
    /// The manifest says its operator accepted a loss of data in this log.
    pub data_loss_accepted: bool,
}

/// What `FileLog::salvage` kept and what it set aside.
#[derive(Debug)]
pub struct SalvageReport {
    pub records: usize,
    /// What could not be used, one line each. Empty: nothing was lost after all.
    pub lost: Vec<String>,
    /// Where every original file was moved, untouched, for forensics.
    pub quarantine: Option<PathBuf>,
}

fn read_segment(path: &Path) -> Result<(Vec<u8>, u8), OpenError> {
    let bytes = fs::read(path)?;
    if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
        let found = bytes.iter().take(8).copied().collect();
        return Err(OpenError::Incompatible { segment: path.to_path_buf(), found });
    }
    let kind = bytes[8];
    Ok((bytes, kind))
}

/// Lists the directory: leftovers, segment ids (sorted).
fn list(dir: &Path) -> io::Result<(Vec<PathBuf>, Vec<u64>)> {
    let mut tmp = Vec::new();
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".tmp") {
            tmp.push(dir.join(name.as_ref()));
        } else if let Some(id) = name.strip_suffix(".log").and_then(|s| s.parse::<u64>().ok()) {
            if id > MAX_SEGMENT_ID {
                let reason = "segment id out of range: not a segment this log wrote";
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{name}: {reason}"),
                ));
            }
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok((tmp, ids))
}

/// The manifest a log written before manifests would have had: its segments from the newest
/// checkpoint on, which must be consecutive, each sealed at its length but the last.
fn legacy_manifest(dir: &Path, ids: &[u64]) -> Result<Manifest, OpenError> {
    let mut kinds = Vec::with_capacity(ids.len());
    for &id in ids {
        kinds.push(read_segment(&segment_path(dir, id))?.1);
    }
    let start = kinds.iter().rposition(|&kind| kind == KIND_CHECKPOINT).unwrap_or(0);
    let mut segments = Vec::new();
    for (index, &id) in ids.iter().enumerate().skip(start) {
        if let Some(previous) = segments.last().map(|s: &Listed| s.id) {
            if id != previous + 1 {
                return Err(damaged(
                    segment_path(dir, previous + 1),
                    format!("missing: segments {previous} and {id} are here"),
                ));
            }
        }
        let last = index + 1 == ids.len();
        let length = if last { HEADER_LEN } else { fs::metadata(segment_path(dir, id))?.len() };
        segments.push(Listed { id, kind: kinds[index], sealed: !last, length });
    }
    Ok(Manifest { sequence: 0, data_loss_accepted: false, segments })
}

/// Checks the directory against its manifest and reads every record; changes nothing.
/// `legacy`: the directory was written before manifests; its segments stand in for one.
fn plan(dir: &Path, must_exist: bool, legacy: bool) -> Result<Plan, OpenError> {
    if !dir.exists() {
        if must_exist {
            return Err(damaged(dir.to_path_buf(), "the log directory is missing"));
        }
        return Ok(Plan { fresh: true, ..Plan::default() });
    }
    let (tmp, ids) = list(dir)?;
    let mut plan = Plan { remove: tmp, ..Plan::default() };
    let manifest = Manifest::read(dir)?;
    if manifest.is_none() {
        // Another version's directory is best named as such, before anything is missed.
        for &id in &ids {
            read_segment(&segment_path(dir, id))?;
        }
    }
    let manifest = match manifest {
        Some(Ok(manifest)) => manifest,
        Some(Err(reason)) => return Err(damaged(Manifest::path(dir), reason)),
        None if legacy && !ids.is_empty() => legacy_manifest(dir, &ids)?,
        None if ids.is_empty() && !must_exist => {
            plan.fresh = true;
            return Ok(plan);
        }
        None if ids.is_empty() => {
            return Err(damaged(
                Manifest::path(dir),
                "missing, and so is every segment: the log is gone",
            ))
        }
        None => {
            return Err(damaged(
                Manifest::path(dir),
                format!(
                    "missing, with {} segment(s) present: what else is missing cannot be told",
                    ids.len()
                ),
            ))
        }
    };
    plan.manifest_sequence = manifest.sequence;
    plan.data_loss_accepted = manifest.data_loss_accepted;
    let last_listed = manifest.segments.last().map_or(0, |s| s.id);
    // A crash between starting a segment (a roll or a checkpoint) and rewriting the manifest
    // leaves exactly one segment the manifest does not list yet: the next id.
    let next = last_listed + 1;
    let mut unlisted_next = None;
    if ids.contains(&next) {
        let (_, kind) = read_segment(&segment_path(dir, next))?;
        unlisted_next = Some(Listed { id: next, kind, sealed: false, length: HEADER_LEN });
    }
    let mut candidates: Vec<Listed> = manifest.segments.clone();
    candidates.extend(unlisted_next);
    // Everything before the newest checkpoint is superseded by it.
    let start = candidates
        .iter()
        .rev()
        .find(|s| s.kind == KIND_CHECKPOINT)
        .or(candidates.first())
        .map_or(0, |s| s.id);
    for &id in &ids {
        let listed = candidates.iter().any(|s| s.id == id);
        if id < start {
            plan.remove.push(segment_path(dir, id));
            plan.notes.push(format!("segment {id} is superseded by checkpoint {start}: removed"));
        } else if !listed {
            return Err(damaged(
                segment_path(dir, id),
                format!(
                    "not listed in the MANIFEST (which ends at segment {last_listed}): a stale or foreign copy?"
                ),
            ));
        }
    }
    let to_read: Vec<Listed> = candidates.into_iter().filter(|s| s.id >= start).collect();
    let count = to_read.len();
    for (index, expected) in to_read.into_iter().enumerate() {
        let path = segment_path(dir, expected.id);
        if !ids.contains(&expected.id) {
            return Err(damaged(
                path,
                format!(
                    "missing: the MANIFEST lists it with {} bytes{}",
                    expected.length,
                    if expected.sealed { "" } else { " known durable" }
                ),
            ));
        }
        let (bytes, kind) = read_segment(&path)?;
        if kind != expected.kind {
            return Err(damaged(
                path,
                format!("kind {kind} where the MANIFEST says {}", expected.kind),
            ));
        }
        let scanned = scan(&bytes[HEADER_BYTES..]).map_err(
            |ScanError::CorruptInMiddle { offset, reason }| OpenError::Corrupt {
                segment: path.clone(),
                offset: HEADER_LEN + offset as u64,
                reason: reason.to_string(),
            },
        )?;
        plan.records.extend(scanned.payloads.iter().map(|p| p.to_vec()));
        let file_len = bytes.len() as u64;
        let valid = HEADER_LEN + scanned.valid_len as u64;
        if valid < expected.length {
            let what = if expected.sealed { "its sealed length" } else { "known durable" };
            let reason = if valid < file_len {
                format!(
                    "acknowledged records lost: an unreadable record at byte {valid}, below the {} bytes {what}",
                    expected.length
                )
            } else {
                format!(
                    "acknowledged records lost: truncated to {file_len} bytes, below the {} bytes {what}",
                    expected.length
                )
            };
            return Err(damaged(path, reason));
        }
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
            plan.notes.push(format!(
                "{}: {} bytes after byte {valid} are an unfinished write above the {} bytes known durable: cut",
                path.display(),
                file_len - valid,
                expected.length
            ));
            plan.truncate = Some((path.clone(), valid));
        } else if expected.sealed && file_len != expected.length {
            return Err(damaged(
                path,
                format!(
                    "{file_len} bytes where the MANIFEST says it was sealed at {}",
                    expected.length
                ),
            ));
        }
        plan.read.push((expected, valid));
    }
    Ok(plan)
}

impl FileLog {
    /// Opens (or creates) the log in `dir` and returns it with every record it holds, in order.
    /// Segments roll over at about `segment_limit` bytes. An empty or missing directory is a
    /// new log; see [`FileLog::open_existing`] for one that must already be there.
    pub fn open(dir: &Path, segment_limit: u64) -> Result<(FileLog, Vec<Vec<u8>>), OpenError> {
        FileLog::open_with(dir, segment_limit, false, false)
    }

    /// Opens a log that must exist (its node has run before): a missing directory, manifest
    /// or segment is refused, never taken for a new log.
    pub fn open_existing(
        dir: &Path,
        segment_limit: u64,
    ) -> Result<(FileLog, Vec<Vec<u8>>), OpenError> {
        FileLog::open_with(dir, segment_limit, true, false)
    }

    /// Opens the log in `dir` under a data directory held by `lock`: a new log only if the data
    /// directory is new, else as [`FileLog::open_existing`]. A directory written before log
    /// manifests is adopted: its log is read as that version read it (a torn tail cut,
    /// corruption and gaps refused), given a manifest, and the identity marked.
    pub fn open_claimed(
        lock: &mut crate::DirLock,
        dir: &Path,
        segment_limit: u64,
    ) -> Result<(FileLog, Vec<Vec<u8>>), OpenError> {
        let legacy = lock.is_legacy();
        let opened = FileLog::open_with(dir, segment_limit, !lock.is_new(), legacy)?;
        if legacy {
            lock.adopted().map_err(|e| OpenError::Io(io::Error::other(e)))?;
        }
        Ok(opened)
    }

    fn open_with(
        dir: &Path,
        segment_limit: u64,
        must_exist: bool,
        legacy: bool,
    ) -> Result<(FileLog, Vec<Vec<u8>>), OpenError> {
        let mut plan = plan(dir, must_exist, legacy)?;
        fs::create_dir_all(dir)?;
        for path in &plan.remove {
            fs::remove_file(path)?;
        }
        if let Some((path, len)) = &plan.truncate {
            let file = OpenOptions::new().write(true).open(path)?;
            file.set_len(*len)?;
            file.sync_data()?;
        }
        let records = std::mem::take(&mut plan.records);
        let log = if plan.fresh {
            let active = new_segment(dir, 1, KIND_RECORDS)?;
            let listed = vec![Listed { id: 1, kind: KIND_RECORDS, sealed: false, length: 0 }];
            let accepted = false;
            FileLog::started(dir, listed, (0, accepted), active, HEADER_LEN, segment_limit)?
        } else {
            let (last, _) = *plan.read.last().expect("a log that is not new has a segment");
            let mut listed: Vec<Listed> = plan
                .read
                .iter()
                .map(|(s, valid)| Listed { sealed: true, length: *valid, ..*s })
                .collect();
            listed.last_mut().expect("checked above").sealed = false;
            let active = OpenOptions::new().append(true).open(segment_path(dir, last.id))?;
            let len = active.metadata()?.len();
            // A killed process leaves its last writes in the page cache: make them durable
            // before the manifest says they are.
            active.sync_data()?;
            let manifest = (plan.manifest_sequence, plan.data_loss_accepted);
            FileLog::started(dir, listed, manifest, active, len, segment_limit)?
        };
        Ok((log, records))
    }

    /// A log ready to append to; writes its manifest (`manifest`: the last sequence written and
    /// the data-loss flag to keep).
    fn started(
        dir: &Path,
        listed: Vec<Listed>,
        (manifest_sequence, data_loss_accepted): (u64, bool),
        active: File,
        active_len: u64,
        segment_limit: u64,
    ) -> io::Result<FileLog> {
        let mut log = FileLog {
            dir: dir.to_path_buf(),
            listed,
            manifest_sequence,
            syncs_since_manifest: 0,
            refresh_manifest: true,
            data_loss_accepted,
            active,
            active_len,
            synced_len: active_len,
            segment_limit,
            syncs: 0,
        };
        log.write_manifest()?;
        Ok(log)
    }

    /// Writes the manifest: every segment, the active one durable up to the last sync.
    fn write_manifest(&mut self) -> io::Result<()> {
        if let Some(active) = self.listed.last_mut() {
            active.length = self.synced_len;
        }
        self.manifest_sequence += 1;
        let manifest = Manifest {
            sequence: self.manifest_sequence,
            data_loss_accepted: self.data_loss_accepted,
            segments: self.listed.clone(),
        };
        manifest.write(&self.dir)?;
        self.syncs_since_manifest = 0;
        Ok(())
    }

    /// Whether its operator ever accepted a loss of data in this log (`salvage`): the manifest
    /// keeps it, so a node can tell if its own record of the loss went missing.
    pub fn data_loss_accepted(&self) -> bool {
        self.data_loss_accepted
    }

    /// Whether synced records lie above the durable floor the manifest on disk records.
    pub fn manifest_behind(&self) -> bool {
        self.refresh_manifest
            && self.listed.last().is_some_and(|active| active.length < self.synced_len)
    }

    /// Stops keeping the manifest's durable floor current between rolls and checkpoints: only
    /// for measuring its cost. A log run so detects less (docs/log-format.md).
    #[doc(hidden)]
    pub fn without_manifest_refresh(mut self) -> Self {
        self.refresh_manifest = false;
        self
    }

    /// Rewrites the manifest if it is behind the last sync and `syncs` syncs have passed since
    /// it was written; returns whether it did. Zero: whenever it is behind (the log is quiet).
    pub fn refresh_manifest(&mut self, syncs: u64) -> io::Result<bool> {
        if !self.manifest_behind() || self.syncs_since_manifest < syncs {
            return Ok(false);
        }
        self.write_manifest()?;
        Ok(true)
    }

    /// Reads and verifies the whole log in `dir` without changing anything: what `open` would
    /// refuse is an error naming the file, what it would tidy is a note.
    pub fn check(dir: &Path) -> Result<CheckReport, OpenError> {
        let plan = plan(dir, true, false)?;
        Ok(CheckReport {
            segments: plan.read.len(),
            records: plan.records,
            bytes: plan.read.iter().map(|(_, valid)| valid).sum(),
            notes: plan.notes,
            data_loss_accepted: plan.data_loss_accepted,
        })
    }

    /// Starts from what is readable after damage the operator has accepted: the longest run of
    /// records from the newest readable checkpoint on, up to the first missing segment or
    /// unreadable record. Every original file is moved, untouched, into a `damaged-…`
    /// directory beside them; the log is rewritten as one checkpoint of the records kept, with
    /// a new manifest. The report lists what was set aside.
    pub fn salvage(
        dir: &Path,
        segment_limit: u64,
    ) -> Result<(FileLog, Vec<Vec<u8>>, SalvageReport), OpenError> {
        fs::create_dir_all(dir)?;
        let (tmp, ids) = list(dir)?;
        let mut lost = Vec::new();
        let manifest = match Manifest::read(dir)? {
            Some(Ok(m)) => Some(m),
            Some(Err(reason)) => {
                lost.push(format!("MANIFEST unreadable ({reason})"));
                None
            }
            None => None,
        };
        let mut segments = Vec::new();
        for &id in &ids {
            match read_segment(&segment_path(dir, id)) {
                Ok((bytes, kind)) => segments.push((id, bytes, kind)),
                Err(e) => lost.push(format!("segment {id}: {e}")),
            }
        }
        let start = segments.iter().rposition(|(_, _, kind)| *kind == KIND_CHECKPOINT).unwrap_or(0);
        let mut records = Vec::new();
        let mut expected_id = segments.get(start).map(|(id, ..)| *id);
        let mut stopped = false;
        for (id, bytes, _) in segments.iter().skip(start) {
            if stopped {
                lost.push(format!("segment {id}: after the first gap or damage, not used"));
                continue;
            }
            if Some(*id) != expected_id {
                lost.push(format!(
                    "segments {} to {}: missing; everything from there on is not used",
                    expected_id.unwrap_or(0),
                    id - 1
                ));
                lost.push(format!("segment {id}: after the first gap or damage, not used"));
                stopped = true;
                continue;
            }
            expected_id = Some(id + 1);
            match scan(&bytes[HEADER_BYTES..]) {
                Ok(scanned) => {
                    records.extend(scanned.payloads.iter().map(|p| p.to_vec()));
                    if let Tail::Torn { offset } = scanned.tail {
                        lost.push(format!(
                            "segment {id}: {} bytes after byte {} unreadable",
                            bytes.len() - HEADER_BYTES - offset,
                            HEADER_BYTES + offset
                        ));
                        stopped = true;
                    }
                }
                Err(ScanError::CorruptInMiddle { offset, .. }) => {
                    let readable = scan(&bytes[HEADER_BYTES..HEADER_BYTES + offset])
                        .map(|s| s.payloads.iter().map(|p| p.to_vec()).collect::<Vec<_>>())
                        .unwrap_or_default();
                    records.extend(readable);
                    lost.push(format!(
                        "segment {id}: corrupt record at byte {}; it and everything after not used",
                        HEADER_BYTES + offset
                    ));
                    stopped = true;
                }
            }
        }
        if let Some(manifest) = &manifest {
            for listed in &manifest.segments {
                if !ids.contains(&listed.id) && listed.id >= segments.get(start).map_or(0, |s| s.0)
                {
                    lost.push(format!("segment {}: listed in the MANIFEST, missing", listed.id));
                }
            }
        } else if !ids.is_empty() {
            lost.push("no readable MANIFEST: segments missing at the end cannot be told".into());
        }
        lost.sort();
        lost.dedup();
        // Set every original aside, then write the kept records as one checkpoint.
        let mut originals: Vec<PathBuf> = ids.iter().map(|&id| segment_path(dir, id)).collect();
        originals.extend(tmp);
        if Manifest::path(dir).exists() {
            originals.push(Manifest::path(dir));
        }
        let quarantine = if originals.is_empty() {
            None
        } else {
            let quarantine = (1u32..)
                .map(|n| dir.join(format!("damaged-{n}")))
                .find(|d| !d.exists())
                .expect("some number is free");
            fs::create_dir_all(&quarantine)?;
            for path in &originals {
                let name = path.file_name().expect("files in the log directory have names");
                fs::rename(path, quarantine.join(name))?;
            }
            sync_dir(dir)?;
            Some(quarantine)
        };
        let next = ids.last().map_or(1, |id| id + 1);
        let file = {
            let tmp = dir.join(format!("{next:020}.log.tmp"));
            let mut file = OpenOptions::new().create_new(true).append(true).open(&tmp)?;
            let mut bytes = MAGIC.to_vec();
            bytes.push(KIND_CHECKPOINT);
            for record in &records {
                append_frame(&mut bytes, record);
            }
            file.write_all(&bytes)?;
            file.sync_data()?;
            fs::rename(&tmp, segment_path(dir, next))?;
            sync_dir(dir)?;
            file
        };
        let len = file.metadata()?.len();
        let listed = vec![Listed { id: next, kind: KIND_CHECKPOINT, sealed: false, length: 0 }];
        let sequence = manifest.map_or(0, |m| m.sequence);
        let log = FileLog::started(dir, listed, (sequence, true), file, len, segment_limit)?;
        let report = SalvageReport { records: records.len(), lost, quarantine };
        Ok((log, records, report))
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
        self.synced_len = self.active_len;
        self.syncs += 1;
        self.syncs_since_manifest += 1;
        Ok(())
    }

    /// fdatasync calls made so far.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Segments on disk.
    pub fn segment_count(&self) -> usize {
        self.listed.len()
    }

    /// Seals the active segment and starts the next.
    fn roll(&mut self) -> io::Result<()> {
        self.sync()?;
        let id = self.listed.last().map_or(0, |s| s.id) + 1;
        self.active = new_segment(&self.dir, id, KIND_RECORDS)?;
        if let Some(sealed) = self.listed.last_mut() {
            sealed.sealed = true;
            sealed.length = self.active_len;
        }
        self.listed.push(Listed { id, kind: KIND_RECORDS, sealed: false, length: 0 });
        self.active_len = HEADER_LEN;
        self.synced_len = HEADER_LEN;
        self.write_manifest()
    }

    /// Replaces the whole log with `live`, the records still needed, and drops the rest.
    pub fn checkpoint(&mut self, live: &[Vec<u8>]) -> io::Result<()> {
        let id = self.listed.last().map_or(0, |s| s.id) + 1;
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
        for old in self.listed.drain(..) {
            fs::remove_file(segment_path(&self.dir, old.id))?;
        }
        sync_dir(&self.dir)?;
        self.listed.push(Listed { id, kind: KIND_CHECKPOINT, sealed: false, length: 0 });
        self.active = file;
        self.active_len = bytes.len() as u64;
        self.synced_len = self.active_len;
        self.syncs += 1;
        self.write_manifest()
    }
}
