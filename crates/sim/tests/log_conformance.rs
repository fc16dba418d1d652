//! One contract for every log backend, run against the real file log and the simulator's disk:
//! after any sequence of appends, syncs and crashes, recovery returns a prefix of what was
//! appended — never reordered, never a record that was not appended, never shorter than what
//! was synced — and the log accepts appends after it.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use concord_commit::Durability;
use concord_sim::disk::Disk;
use concord_sim::rng::Rng;
use concord_types::codec::{DecodeError, Encode, Reader, Writer};
use concord_wal::FileLog;

/// What a log backend must offer the contract.
trait Backend {
    fn append(&mut self, payload: Vec<u8>);
    fn sync(&mut self);
    /// Crash, losing what this backend may lose, then recover: the records read back.
    fn crash_and_recover(&mut self, rng: &mut Rng) -> Vec<Vec<u8>>;
}

// ----------------------------------------------------------------------- the file log

struct FileBackend {
    dir: PathBuf,
    log: Option<FileLog>,
    /// The active segment and its length at the last sync: bytes after it are not durable.
    synced: Option<(PathBuf, u64)>,
}

const SEGMENT_LIMIT: u64 = 256;

fn last_segment(dir: &Path) -> PathBuf {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v.pop().expect("a log always has a segment")
}

impl FileBackend {
    fn new(seed: u64) -> Self {
        let dir =
            std::env::temp_dir().join(format!("concord-conformance-{}-{seed}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (log, found) = FileLog::open(&dir, SEGMENT_LIMIT).expect("open");
        assert!(found.is_empty());
        FileBackend { dir, log: Some(log), synced: None }
    }
}

impl Drop for FileBackend {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Backend for FileBackend {
    fn append(&mut self, payload: Vec<u8>) {
        self.log.as_mut().expect("open").append(&payload).expect("append");
    }
    fn sync(&mut self) {
        self.log.as_mut().expect("open").sync().expect("sync");
        let active = last_segment(&self.dir);
        let len = fs::metadata(&active).expect("metadata").len();
        self.synced = Some((active, len));
    }
    fn crash_and_recover(&mut self, rng: &mut Rng) -> Vec<Vec<u8>> {
        drop(self.log.take());
        // Power loss: the active segment keeps its synced bytes and any prefix of the rest.
        let active = last_segment(&self.dir);
        let len = fs::metadata(&active).expect("metadata").len();
        let floor = match &self.synced {
            Some((path, synced)) if *path == active => *synced,
            _ => 9, // a segment started after the last sync: only its header was synced
        };
        let keep = rng.range(floor.min(len), len);
        OpenOptions::new()
            .write(true)
            .open(&active)
            .expect("open segment")
            .set_len(keep)
            .expect("truncate");
        let (log, found) =
            FileLog::open(&self.dir, SEGMENT_LIMIT).expect("recovery succeeds after a torn tail");
        self.log = Some(log);
        self.synced = None;
        found
    }
}

// ----------------------------------------------------------------------- the simulated disk

#[derive(Debug, Clone, PartialEq)]
struct Blob(Vec<u8>);

impl Encode for Blob {
    fn encode(&self, w: &mut Writer<'_>) {
        w.sequence_len(self.0.len());
        for &b in &self.0 {
            w.u8(b);
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let len = r.sequence_len()?;
        (0..len).map(|_| r.u8()).collect::<Result<_, _>>().map(Blob)
    }
}

struct SimBackend {
    disk: Disk<Blob>,
}

impl Backend for SimBackend {
    fn append(&mut self, payload: Vec<u8>) {
        self.disk.append(Blob(payload), Durability::Forced, 0);
    }
    fn sync(&mut self) {
        while self.disk.start_sync(true) {
            self.disk.complete_sync();
        }
    }
    fn crash_and_recover(&mut self, rng: &mut Rng) -> Vec<Vec<u8>> {
        self.disk.crash(rng, true);
        self.disk.recover().into_iter().map(|b| b.0).collect()
    }
}

// ----------------------------------------------------------------------- the contract

fn run_contract(backend: &mut dyn Backend, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut model: Vec<Vec<u8>> = Vec::new(); // what may be in the log, in order
    let mut synced = 0; // how many of them must be
    let mut crashes = 0;
    for step in 0..300 {
        let roll = rng.below(100);
        if roll < 60 {
            let len = usize::try_from(rng.range(0, 40)).expect("small");
            let payload: Vec<u8> =
                (0..len).map(|_| u8::try_from(rng.below(256)).expect("byte")).collect();
            backend.append(payload.clone());
            model.push(payload);
        } else if roll < 85 {
            backend.sync();
            synced = model.len();
        } else {
            crashes += 1;
            let found = backend.crash_and_recover(&mut rng);
            assert!(
                found.len() >= synced,
                "seed {seed} step {step}: lost synced records ({} < {synced})",
                found.len()
            );
            assert!(
                found.len() <= model.len(),
                "seed {seed} step {step}: more records than appended"
            );
            assert_eq!(
                found[..],
                model[..found.len()],
                "seed {seed} step {step}: not a prefix of what was appended"
            );
            model.truncate(found.len());
            backend.sync();
            synced = model.len();
        }
    }
    assert!(crashes > 10, "the contract must be exercised through crashes");
}

#[test]
fn the_file_log_keeps_the_contract() {
    for seed in 0..40 {
        run_contract(&mut FileBackend::new(seed), seed);
    }
}

#[test]
fn the_simulated_disk_keeps_the_contract() {
    for seed in 0..40 {
        run_contract(&mut SimBackend { disk: Disk::default() }, seed);
    }
}
