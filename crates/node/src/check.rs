//! `concord data check`: reads everything in a node's data directory and says what a start
//! would refuse, changing nothing.

use std::path::Path;

use concord_types::codec::Encode;
use concord_wal::FileLog;

use crate::engine::{Engine, PaxosCommit, TwoPc};
use crate::model::{Deltas, KvStore, Snapshot};

/// What a check found in one healthy data directory.
#[derive(Debug)]
pub struct DataReport {
    /// The directory's IDENTITY, on one line.
    pub identity: String,
    /// One line per part checked (the log, a storage file), and notes on what a start would
    /// tidy (not loss).
    pub lines: Vec<String>,
    /// Its operator accepted a loss of data here before.
    pub data_loss_accepted: bool,
}

/// Checks the node data directory `dir`: its identity and lock, its log against its manifest
/// and every record's checksum and encoding, and a key-value shard's version file against the
/// log's checkpoint. `Err` is what a start would refuse, naming the file.
pub fn check_data(dir: &Path) -> Result<DataReport, String> {
    let identity_path = dir.join(concord_wal::IDENTITY_FILE);
    let identity = std::fs::read_to_string(&identity_path).map_err(|e| {
        format!("{}: {e}: not a Concord node's data directory", identity_path.display())
    })?;
    // Taking the lock refuses a directory a running node holds (its files are changing).
    let _lock = concord_wal::claim_data_dir(dir, &identity)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let field = |name: &str| {
        identity.lines().find_map(|l| l.strip_prefix(&format!("{name} = "))).map(str::to_string)
    };
    let paxos = field("protocol").as_deref() == Some("paxos-commit");
    let role = field("role").unwrap_or_default();
    let log_dir = dir.join("log");
    let report = FileLog::check(&log_dir).map_err(|e| e.to_string())?;
    let mut lines = vec![format!(
        "{}: {} records in {} segments ({} bytes), every checksum and the MANIFEST agree",
        log_dir.display(),
        report.records.len(),
        report.segments,
        report.bytes
    )];
    lines.extend(report.notes);
    // The records are decoded as a start decodes them; a key-value shard's also name what its
    // version file must hold.
    let raw = report.records;
    let kv = role == "shard" && dir.join("versions.redb").exists();
    let storage = match (paxos, kv) {
        (false, false) => records::<TwoPc<Deltas>>(&raw).map(|_| None),
        (true, false) => records::<PaxosCommit<Deltas>>(&raw).map(|_| None),
        (false, true) => records::<TwoPc<KvStore>>(&raw).map(Some),
        (true, true) => records::<PaxosCommit<KvStore>>(&raw).map(Some),
    }
    .map_err(|e| format!("{}: {e}", log_dir.display()))?;
    if let Some(seals) = storage {
        let expected = seals.into_iter().flatten().max_by_key(|s| s.generation);
        lines.push(crate::versions::check_file(&dir.join("versions.redb"), expected)?);
    }
    let data_loss_accepted = dir.join(crate::DATA_LOSS_FILE).exists();
    Ok(DataReport { identity: identity.trim().replace('\n', ", "), lines, data_loss_accepted })
}

/// Decodes every record as `E`'s, and returns the version-store seals its snapshots carry.
fn records<E: Engine>(raw: &[Vec<u8>]) -> Result<Vec<Option<concord_kv::StoreSeal>>, String>
where
    Snapshot<E::Model>: SealOf,
{
    let mut seals = Vec::new();
    for (i, bytes) in raw.iter().enumerate() {
        let mut record = <E::Record as Encode>::from_bytes(bytes)
            .map_err(|e| format!("record {i} cannot be read ({e:?})"))?;
        if let Some(snapshot) = E::snapshot_mut(&mut record) {
            seals.push(snapshot.seal());
        }
    }
    Ok(seals)
}

/// The version-store seal a model's snapshot carries (none for models without a store).
trait SealOf {
    fn seal(&self) -> Option<concord_kv::StoreSeal>;
}

impl SealOf for concord_kv::KvSnapshot {
    fn seal(&self) -> Option<concord_kv::StoreSeal> {
        self.store
    }
}

impl SealOf for Vec<concord_types::Write> {
    fn seal(&self) -> Option<concord_kv::StoreSeal> {
        None
    }
}
