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

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use concord_kv::{decode_versions, encode_versions, KvSnapshot, MvccShard, StoreSeal, Timestamp};
use concord_types::codec::{Encode, Reader, Writer};
use concord_wal::crc32c;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const VERSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("versions");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const GC_POINT: &str = "gc_point";
/// The seal of the last save: generation, keys, digest (`StoreSeal`).
const SEAL: &str = "seal";

pub(crate) struct VersionStore {
    db: Database,
    path: PathBuf,
}

fn failed(what: &str, e: impl std::fmt::Display) -> String {
    format!("version store: {what}: {e}")
}

/// A key as an operator can read it: text if it is, hex otherwise.
fn show_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) if text.chars().all(|c| !c.is_control()) => format!("{text:?}"),
        _ => key.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// Each stored value is `crc32c(key ‖ body)` then the body (the key's encoded versions), so a
/// damaged value is named by its key; the digest over every entry's checksum, in key order,
/// tells a missing or added entry.
fn entry_checksum(key: &[u8], body: &[u8]) -> u32 {
    let mut bytes = Vec::with_capacity(key.len() + body.len());
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(body);
    crc32c(&bytes)
}

fn encode_seal(seal: StoreSeal) -> [u8; 20] {
    let mut out = [0; 20];
    out[..8].copy_from_slice(&seal.generation.to_le_bytes());
    out[8..16].copy_from_slice(&seal.keys.to_le_bytes());
    out[16..].copy_from_slice(&seal.digest.to_le_bytes());
    out
}

fn decode_seal(bytes: &[u8]) -> Option<StoreSeal> {
    let bytes: &[u8; 20] = bytes.try_into().ok()?;
    Some(StoreSeal {
        generation: u64::from_le_bytes(bytes[..8].try_into().ok()?),
        keys: u64::from_le_bytes(bytes[8..16].try_into().ok()?),
        digest: u32::from_le_bytes(bytes[16..].try_into().ok()?),
    })
}

/// Runs `f`, turning a panic inside redb on a damaged file into an error naming the file.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.map_err(|e| format!("{}: {e}", path.display())),
        Err(panic) => {
            let what = crate::panic_text(panic.as_ref());
            Err(format!("{}: unreadable (damaged?): {what}", path.display()))
        }
    }
}

impl VersionStore {
    /// Opens (or creates) the store, checking redb's own structure first: a file damaged
    /// outside redb is an error naming it, never a panic.
    pub(crate) fn open(path: &Path) -> Result<Self, String> {
        guarded(path, || {
            let db = Database::builder()
                .set_check_integrity_on_open(true)
                .create(path)
                .map_err(|e| failed("open", e))?;
            Ok(VersionStore { db, path: path.to_path_buf() })
        })
    }

    /// Replaces the stored versions by `snapshot`'s, durably; returns the seal to keep in the
    /// log's checkpoint.
    pub(crate) fn save(&self, snapshot: &KvSnapshot) -> Result<StoreSeal, String> {
        guarded(&self.path, || self.save_unguarded(snapshot))
    }

    fn save_unguarded(&self, snapshot: &KvSnapshot) -> Result<StoreSeal, String> {
        let txn = self.db.begin_write().map_err(|e| failed("begin", e))?;
        let previous = {
            let meta = txn.open_table(META).map_err(|e| failed("open", e))?;
            let seal = meta.get(SEAL).map_err(|e| failed("read", e))?;
            seal.and_then(|s| decode_seal(s.value())).map_or(0, |s| s.generation)
        };
        txn.delete_table(VERSIONS).map_err(|e| failed("clear", e))?;
        let mut digest = 0u32;
        let mut keys = 0u64;
        {
            let mut table = txn.open_table(VERSIONS).map_err(|e| failed("open", e))?;
            let mut buf = Vec::new();
            for (key, versions) in &snapshot.versions {
                let mut body = Vec::new();
                encode_versions(versions, &mut Writer::new(&mut body));
                let checksum = entry_checksum(key, &body);
                buf.clear();
                buf.extend_from_slice(&checksum.to_le_bytes());
                buf.extend_from_slice(&body);
                table.insert(key.as_slice(), buf.as_slice()).map_err(|e| failed("insert", e))?;
                digest = concord_wal::crc32c_update(digest, &checksum.to_le_bytes());
                keys += 1;
            }
        }
        let seal = StoreSeal { generation: previous + 1, keys, digest };
        {
            let mut meta = txn.open_table(META).map_err(|e| failed("open", e))?;
            meta.insert(GC_POINT, snapshot.gc_point.to_bytes().as_slice())
                .map_err(|e| failed("insert", e))?;
            meta.insert(SEAL, encode_seal(seal).as_slice()).map_err(|e| failed("insert", e))?;
        }
        txn.commit().map_err(|e| failed("commit", e))?;
        Ok(seal)
    }

    /// Reads and verifies every stored entry against its checksum and the store's seal, and
    /// the seal against `expected` (the log's newest checkpoint); returns the snapshot.
    pub(crate) fn read_verified(&self, expected: Option<StoreSeal>) -> Result<KvSnapshot, String> {
        guarded(&self.path, || self.read_unguarded(expected))
    }

    fn read_unguarded(&self, expected: Option<StoreSeal>) -> Result<KvSnapshot, String> {
        let txn = self.db.begin_read().map_err(|e| failed("begin", e))?;
        let mut snapshot = KvSnapshot::default();
        let mut digest = 0u32;
        match txn.open_table(VERSIONS) {
            Ok(table) => {
                for entry in table.iter().map_err(|e| failed("read", e))? {
                    let (key, value) = entry.map_err(|e| failed("read", e))?;
                    let (key, value) = (key.value(), value.value());
                    let bad = |why: &str| format!("key {}: {why}", show_key(key));
                    if value.len() < 4 {
                        return Err(bad("value too short for its checksum"));
                    }
                    let (stored, body) = value.split_at(4);
                    let checksum = entry_checksum(key, body);
                    if stored != checksum.to_le_bytes() {
                        return Err(bad("checksum mismatch: the value is damaged"));
                    }
                    let versions = decode_versions(&mut Reader::new(body))
                        .map_err(|e| bad(&format!("cannot be decoded ({e:?})")))?;
                    digest = concord_wal::crc32c_update(digest, &checksum.to_le_bytes());
                    snapshot.versions.push((key.to_vec(), versions));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(failed("open", e)),
        }
        let mut found = None;
        match txn.open_table(META) {
            Ok(meta) => {
                if let Some(gc) = meta.get(GC_POINT).map_err(|e| failed("read", e))? {
                    snapshot.gc_point = Timestamp::from_bytes(gc.value())
                        .map_err(|e| failed("gc point", format!("cannot be decoded ({e:?})")))?;
                }
                if let Some(seal) = meta.get(SEAL).map_err(|e| failed("read", e))? {
                    found = Some(decode_seal(seal.value()).ok_or("its seal cannot be decoded")?);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(failed("open", e)),
        }
        let keys = snapshot.versions.len() as u64;
        match found {
            Some(seal) if seal.keys != keys || seal.digest != digest => {
                return Err(format!(
                    "entries missing, added or changed: {keys} keys (digest {digest:08x}) where its last save wrote {} (digest {:08x})",
                    seal.keys, seal.digest
                ));
            }
            None if keys > 0 => {
                return Err("entries but no seal: not written by this version".into())
            }
            _ => {}
        }
        let generation = found.map_or(0, |s| s.generation);
        if let Some(expected) = expected {
            // Newer than the log's checkpoint is a crash between the two writes (the store is
            // written first): its content is whole, and replay merges.
            if generation < expected.generation {
                return Err(format!(
                    "missing, emptied or an older copy: generation {generation}, where the log's checkpoint says generation {} with {} keys",
                    expected.generation, expected.keys
                ));
            }
            if generation == expected.generation && found != Some(expected) {
                return Err(format!(
                    "does not match the log's checkpoint: {keys} keys (digest {digest:08x}), the checkpoint says {} (digest {:08x})",
                    expected.keys, expected.digest
                ));
            }
        }
        snapshot.store = found;
        Ok(snapshot)
    }

    /// Verifies the store against the log's checkpoint and merges its versions into `shard`.
    pub(crate) fn load_into(&self, shard: &mut MvccShard) -> Result<(), String> {
        let snapshot = self.read_verified(shard.expected_store())?;
        shard.merge(snapshot);
        Ok(())
    }
}

/// For `concord data check`: verifies the version file at `path` against `expected` (the log's
/// newest checkpoint) without creating or changing it.
pub(crate) fn check_file(path: &Path, expected: Option<StoreSeal>) -> Result<String, String> {
    if !path.exists() {
        return match expected {
            Some(seal) => Err(format!(
                "{}: missing, where the log's checkpoint says generation {} with {} keys",
                path.display(),
                seal.generation,
                seal.keys
            )),
            None => Ok(format!("{}: absent, and nothing expects it", path.display())),
        };
    }
    let store = guarded(path, || {
        let db = Database::builder()
            .set_check_integrity_on_open(true)
            .open(path)
            .map_err(|e| failed("open", e))?;
        Ok(VersionStore { db, path: path.to_path_buf() })
    })?;
    let snapshot = store.read_verified(expected)?;
    Ok(format!(
        "{}: {} keys, every value's checksum and the seal (generation {}) agree with the log",
        path.display(),
        snapshot.versions.len(),
        snapshot.store.map_or(0, |s| s.generation)
    ))
}
