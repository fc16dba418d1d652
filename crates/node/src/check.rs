//! `concord data check`: reads everything in a node's data directory and says what a start
//! would refuse, changing nothing.

use std::path::Path;

use concord_types::codec::Encode;
use concord_wal::FileLog;

use concord_commit::{Core, Input};

use crate::config::ClusterConfig;
use crate::engine::{Engine, PaxosCommit, TwoPc};
use crate::model::{Deltas, KvStore, Model, Snapshot};

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
    lines.extend(report.notes.iter().cloned());
    // The records are decoded as a start decodes them; a key-value shard's also name what its
    // version file must hold.
    let raw = &report.records;
    let kv = role == "shard" && dir.join("versions.redb").exists();
    let id = field("id").and_then(|id| id.parse::<u32>().ok()).unwrap_or(0);
    let node = (role.as_str(), concord_types::NodeId(id));
    let storage = match (paxos, kv) {
        (false, false) => records::<TwoPc<Deltas>>(raw, node).map(|_| None),
        (true, false) => records::<PaxosCommit<Deltas>>(raw, node).map(|_| None),
        (false, true) => records::<TwoPc<KvStore>>(raw, node).map(Some),
        (true, true) => records::<PaxosCommit<KvStore>>(raw, node).map(Some),
    }
    .map_err(|e| format!("{}: {e}", log_dir.display()))?;
    if let Some(seals) = storage {
        let expected = seals.into_iter().flatten().max_by_key(|s| s.generation);
        lines.push(crate::versions::check_file(&dir.join("versions.redb"), expected)?);
    }
    // The manifest remembers it even if the file was deleted (the next start writes it again).
    let data_loss_accepted = dir.join(crate::DATA_LOSS_FILE).exists() || report.data_loss_accepted;
    Ok(DataReport { identity: identity.trim().replace('\n', ", "), lines, data_loss_accepted })
}

/// Decodes every record as `E`'s and replays them into a core of the node's role, as a start
/// does (a log can be sound record by record and inconsistent as a whole: another node's, a
/// commit without its prepare); returns the version-store seals its snapshots carry.
fn records<E: Engine>(
    raw: &[Vec<u8>],
    (role, id): (&str, concord_types::NodeId),
) -> Result<Vec<Option<concord_kv::StoreSeal>>, String>
where
    Snapshot<E::Model>: SealOf,
{
    let mut seals = Vec::new();
    let mut records = Vec::with_capacity(raw.len());
    for (i, bytes) in raw.iter().enumerate() {
        let mut record = <E::Record as Encode>::from_bytes(bytes)
            .map_err(|e| format!("record {i} cannot be read ({e:?})"))?;
        if let Some(snapshot) = E::snapshot_mut(&mut record) {
            seals.push(snapshot.seal());
        }
        records.push(record);
    }
    // Replay needs a configuration only for the cores' timeouts and acceptors: any will do.
    let config = ClusterConfig::local("check", 1, 1).with_paxos_commit(3);
    let replayed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let input = Input::Restart { records };
        let mut out = Vec::new();
        match role {
            "coordinator" => E::coordinator(id, &config).handle(input, &mut out),
            "acceptor" => {
                if let Some(mut acceptor) = E::acceptor(id, &config) {
                    acceptor.handle(input, &mut out);
                }
            }
            _ => {
                let resource = E::Model::resource(&config);
                E::participant(id, &config, resource).handle(input, &mut out);
            }
        }
    }));
    replayed.map_err(|panic| {
        format!("its records are inconsistent ({})", crate::panic_text(panic.as_ref()))
    })?;
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
