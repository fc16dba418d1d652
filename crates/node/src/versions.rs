//! A key-value shard's versions in redb, written at checkpoints.
//!
//! The Concord log stays the write-ahead log: prepares, commits and decisions are forced there.
//! At a checkpoint the shard's kept versions are written to redb in one durable write
//! transaction, and only then does the log replace its records with the checkpoint's (which no
//! longer carry the versions). A restart replays the log, then merges redb's versions in —
//! a crash between the redb write and the log checkpoint replays writes redb already has, and
//! the merge keeps each (key, timestamp) once.
//!
//! Why redb: pure Rust (no C toolchain, no system library), one file, ACID with its own
//! fsync, a stable file format. A B-tree's write amplification is paid only at checkpoints,
//! since every write reaches the Concord log first.

use std::path::Path;

use concord_kv::{decode_versions, encode_versions, KvSnapshot, MvccShard, Timestamp};
use concord_types::codec::{Encode, Reader, Writer};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const VERSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("versions");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const GC_POINT: &str = "gc_point";

pub(crate) struct VersionStore {
    db: Database,
}

fn failed(what: &str, e: impl std::fmt::Display) -> String {
    format!("version store: {what}: {e}")
}

impl VersionStore {
    pub(crate) fn open(path: &Path) -> Result<Self, String> {
        let db = Database::create(path).map_err(|e| failed(&path.display().to_string(), e))?;
        Ok(VersionStore { db })
    }

    /// Replaces the stored versions by `snapshot`'s, durably.
    pub(crate) fn save(&self, snapshot: &KvSnapshot) -> Result<(), String> {
        let txn = self.db.begin_write().map_err(|e| failed("begin", e))?;
        txn.delete_table(VERSIONS).map_err(|e| failed("clear", e))?;
        {
            let mut table = txn.open_table(VERSIONS).map_err(|e| failed("open", e))?;
            let mut buf = Vec::new();
            for (key, versions) in &snapshot.versions {
                buf.clear();
                encode_versions(versions, &mut Writer::new(&mut buf));
                table.insert(key.as_slice(), buf.as_slice()).map_err(|e| failed("insert", e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| failed("open", e))?;
            meta.insert(GC_POINT, snapshot.gc_point.to_bytes().as_slice())
                .map_err(|e| failed("insert", e))?;
        }
        txn.commit().map_err(|e| failed("commit", e))
    }

    /// Merges the stored versions into `shard`.
    pub(crate) fn load_into(&self, shard: &mut MvccShard) -> Result<(), String> {
        let txn = self.db.begin_read().map_err(|e| failed("begin", e))?;
        let mut snapshot = KvSnapshot::default();
        match txn.open_table(VERSIONS) {
            Ok(table) => {
                for entry in table.iter().map_err(|e| failed("read", e))? {
                    let (key, value) = entry.map_err(|e| failed("read", e))?;
                    let versions = decode_versions(&mut Reader::new(value.value()))
                        .map_err(|e| failed("decode", format!("{e:?}")))?;
                    snapshot.versions.push((key.value().to_vec(), versions));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(failed("open", e)),
        }
        if let Ok(meta) = txn.open_table(META) {
            if let Some(gc) = meta.get(GC_POINT).map_err(|e| failed("read", e))? {
                snapshot.gc_point = Timestamp::from_bytes(gc.value())
                    .map_err(|e| failed("decode", format!("{e:?}")))?;
            }
        }
        shard.merge(snapshot);
        Ok(())
    }
}
