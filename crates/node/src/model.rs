//! What a cluster's shards hold. The node loop, the coordinator and the peer protocol are the
//! same for every model; a model says what a branch's change is and serves what only it can
//! (the delta API's submissions and shard reads).
//!
//! * [`Deltas`] — signed values under `u64` keys, changed by deltas that may not take a value
//!   below zero (`concord txn submit`, `concord transfer`, the crash test and the transfer bench).
//! * [`KvStore`] — the transactional key-value store: MVCC shards, interactive transactions at
//!   the coordinator (`concord kv`).

use concord_commit::store::Store;
use concord_commit::{Branch, Resource};
use concord_kv::{KvSnapshot, MvccShard};
use concord_types::{NodeId, TxnId, Write};
use tonic::Status;

use std::sync::Arc;

use crate::config::{ClusterConfig, Role, MAX_WRITES_PER_TXN};
use crate::engine::Engine;
use crate::kv::{Gateway, KvHandle};
use crate::proto;
use crate::service::Handle;

pub(crate) type Change<M> = <<M as Model>::Resource as Resource>::Change;
pub(crate) type Snapshot<M> = <<M as Model>::Resource as Resource>::Snapshot;

pub(crate) trait Model: Send + Sync + Sized + 'static {
    type Resource: Resource<Change: Send + Sync, Snapshot: Send + Sync, Refusal: Send + Sync>
        + Send
        + Sync
        + 'static;

    /// Durable storage a shard keeps beside its log (`()` when the log is all there is).
    type Storage: Send + 'static;

    /// The storage's file in the data directory, if it has one (set aside after an accepted
    /// loss).
    const STORAGE_FILE: Option<&'static str>;

    fn open_storage(data_dir: &std::path::Path) -> Result<Self::Storage, String>;

    /// After the log was replayed: takes in what the storage holds.
    fn load(_storage: Option<&Self::Storage>, _shard: &mut Self::Resource) -> Result<(), String> {
        Ok(())
    }

    /// At a checkpoint, before `snapshot` (the shard's applied state) goes into the log: a
    /// model with storage moves the state there — durably, since the log forgets it once the
    /// checkpoint is in — and leaves in `snapshot` only what the storage does not keep.
    fn checkpoint(
        _storage: Option<&Self::Storage>,
        _shard: &Self::Resource,
        _snapshot: &mut Snapshot<Self>,
    ) -> Result<(), String> {
        Ok(())
    }

    /// A shard's resource, as the configuration asks for it.
    fn resource(config: &ClusterConfig) -> Self::Resource;

    /// The delta API: a client's writes as one branch per shard.
    fn branches(
        config: &ClusterConfig,
        writes: &[proto::WriteOp],
    ) -> Result<Vec<Branch<Change<Self>>>, Status>;

    /// The delta API: a shard's values (`in_doubt`: its branches waiting for an outcome).
    fn read_shard(
        shard: &Self::Resource,
        in_doubt: Vec<TxnId>,
        keys: &[u64],
    ) -> Result<proto::ReadShardReply, Status>;

    /// Before every input to a shard's core (the KV store reads its clock here).
    fn before_input(_shard: &mut Self::Resource) {}

    /// After a shard replayed its log.
    fn after_restart(_shard: &mut Self::Resource) {}

    /// The key-value services a node of this role serves: the gateway at the coordinator, the
    /// read service at shards (with its garbage collector started). None for other models.
    fn kv_services<E: Engine<Model = Self>>(
        _handle: &Handle<E>,
        _role: Role,
    ) -> (Option<Arc<Gateway>>, Option<KvHandle>) {
        (None, None)
    }
}

#[derive(Debug)]
pub(crate) struct Deltas;

impl Model for Deltas {
    type Resource = Store;
    type Storage = ();
    const STORAGE_FILE: Option<&'static str> = None;

    fn open_storage(_: &std::path::Path) -> Result<(), String> {
        Ok(())
    }

    fn resource(_: &ClusterConfig) -> Store {
        Store::default()
    }

    fn branches(
        config: &ClusterConfig,
        writes: &[proto::WriteOp],
    ) -> Result<Vec<Branch<Vec<Write>>>, Status> {
        if writes.is_empty() {
            return Err(Status::invalid_argument("a transaction needs at least one write"));
        }
        if writes.len() > MAX_WRITES_PER_TXN {
            return Err(Status::invalid_argument(format!(
                "{} writes; at most {MAX_WRITES_PER_TXN} per transaction",
                writes.len()
            )));
        }
        let mut by_shard: std::collections::BTreeMap<u32, Vec<Write>> = Default::default();
        for op in writes {
            let shard = config
                .nodes
                .iter()
                .find(|n| n.name == op.shard && n.role == Role::Shard)
                .ok_or_else(|| {
                let known: Vec<&str> = config.shards().map(|n| n.name.as_str()).collect();
                Status::invalid_argument(format!(
                    "unknown shard `{}`; the shards are {}",
                    op.shard,
                    known.join(", ")
                ))
            })?;
            by_shard.entry(shard.id).or_default().push(Write { key: op.key, delta: op.delta });
        }
        Ok(by_shard.into_iter().map(|(id, writes)| Branch { node: NodeId(id), writes }).collect())
    }

    fn read_shard(
        store: &Store,
        in_doubt: Vec<TxnId>,
        keys: &[u64],
    ) -> Result<proto::ReadShardReply, Status> {
        let values = if keys.is_empty() {
            store.values().iter().map(|(&key, &value)| proto::KeyValue { key, value }).collect()
        } else {
            keys.iter().map(|&key| proto::KeyValue { key, value: store.value(key) }).collect()
        };
        Ok(proto::ReadShardReply {
            values,
            locked_keys: u32::try_from(store.locked_keys()).unwrap_or(u32::MAX),
            in_doubt: in_doubt.iter().map(ToString::to_string).collect(),
        })
    }
}

#[derive(Debug)]
pub(crate) struct KvStore;

impl Model for KvStore {
    type Resource = MvccShard;
    type Storage = crate::versions::VersionStore;

    const STORAGE_FILE: Option<&'static str> = Some("versions.redb");

    fn open_storage(data_dir: &std::path::Path) -> Result<Self::Storage, String> {
        crate::versions::VersionStore::open(&data_dir.join("versions.redb"))
    }

    fn load(storage: Option<&Self::Storage>, shard: &mut MvccShard) -> Result<(), String> {
        match storage {
            Some(storage) => storage.load_into(shard),
            None => Ok(()),
        }
    }

    fn checkpoint(
        storage: Option<&Self::Storage>,
        _shard: &MvccShard,
        snapshot: &mut KvSnapshot,
    ) -> Result<(), String> {
        let Some(storage) = storage else { return Ok(()) };
        // The versions go to redb (durably); the log's snapshot keeps the GC point and the
        // seal of what redb now holds, so a start can tell a missing or stale redb file.
        snapshot.store = Some(storage.save(snapshot)?);
        snapshot.versions.clear();
        Ok(())
    }

    fn resource(config: &ClusterConfig) -> MvccShard {
        MvccShard::new(config.kv.as_ref().map_or(500, |kv| kv.max_offset_ms) * 1_000)
    }

    fn branches(
        _: &ClusterConfig,
        _: &[proto::WriteOp],
    ) -> Result<Vec<Branch<Change<Self>>>, Status> {
        Err(Status::failed_precondition(
            "this cluster is a key-value store: use its transactions (`concord kv`), not deltas",
        ))
    }

    /// No values (they are versioned byte strings: `concord kv get` and `scan` read them), but
    /// what an operator needs to see: the branches prepared here and waiting for an outcome,
    /// and how many keys their intents lock.
    fn read_shard(
        shard: &MvccShard,
        in_doubt: Vec<TxnId>,
        keys: &[u64],
    ) -> Result<proto::ReadShardReply, Status> {
        if !keys.is_empty() {
            return Err(Status::invalid_argument(
                "this cluster is a key-value store: read its keys with `concord kv get` or `scan`",
            ));
        }
        Ok(proto::ReadShardReply {
            values: Vec::new(),
            locked_keys: u32::try_from(shard.locked_keys()).unwrap_or(u32::MAX),
            in_doubt: in_doubt.iter().map(ToString::to_string).collect(),
        })
    }

    fn before_input(shard: &mut MvccShard) {
        shard.set_physical_time(crate::kv::physical_now_us());
    }

    fn after_restart(shard: &mut MvccShard) {
        Self::before_input(shard);
        shard.restarted();
    }

    fn kv_services<E: Engine<Model = Self>>(
        handle: &Handle<E>,
        role: Role,
    ) -> (Option<Arc<Gateway>>, Option<KvHandle>) {
        let kv = KvHandle::new(handle);
        match role {
            Role::Coordinator => (
                Some(Gateway::start(
                    kv,
                    &handle.config,
                    handle.tls.as_deref(),
                    Arc::clone(&handle.auth),
                    handle.replication.clone(),
                )),
                None,
            ),
            Role::Shard => {
                let ttl = handle.config.kv.as_ref().map_or(60_000, |kv| kv.gc_ttl_ms);
                tokio::spawn(crate::kv::collect_garbage(
                    kv.clone(),
                    std::time::Duration::from_millis(ttl),
                ));
                (None, Some(kv))
            }
            Role::Acceptor => (None, None),
        }
    }
}
