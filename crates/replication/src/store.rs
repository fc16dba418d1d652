//! A replica's disk: openraft's log, vote and snapshots as records in Concord's own log
//! (`concord_wal`: checksummed frames, group commit, a manifest that refuses damage).
//!
//! Raft needs a log it can append to, cut back (a follower's uncommitted tail that a new leader
//! overrides) and cut off at the front (entries a snapshot covers). Our log only appends, so
//! each of those is a record, and opening the log replays them:
//!
//! | record      | replayed as                                             | waits for fsync |
//! |-------------|---------------------------------------------------------|-----------------|
//! | `Entry`     | the entry at its index; everything after it is gone     | the last of a batch, then openraft hears |
//! | `Vote`      | the vote                                                | yes: a vote forgotten is a vote cast twice |
//! | `Committed` | how far the log is known committed (replayed at start)  | no: it is learnt again |
//! | `Truncate`  | entries from this index on are gone                     | yes |
//! | `Purge`     | entries up to this log id are gone                      | no: a snapshot covers them |
//! | `Snapshot`  | the state machine's snapshot                            | yes: a purge may follow |
//!
//! After a purge the log is checkpointed: it is replaced by the records still needed (vote,
//! committed, the snapshot, the entries kept), so it stays as long as what it holds.
//!
//! The directory is claimed like every Concord data directory (`concord_wal::claim_data_dir`):
//! an `IDENTITY` naming the cluster and the replica, so a directory of another is refused
//! untouched, and a `LOCK` held for as long as the log thread runs.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, Mutex};

use concord_wal::{claim_data_dir, FileLog, GroupCommit, OnDurable, OpenError};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};

use crate::codec::{self, DecodeError, Reader, Writer};
use crate::{Machine, TypeConfig};

/// Segments roll over at this size.
const SEGMENT_BYTES: u64 = 64 << 20;

const ENTRY: u8 = 2;
const VOTE: u8 = 3;
const COMMITTED: u8 = 4;
const TRUNCATE: u8 = 5;
const PURGE: u8 = 6;
const SNAPSHOT: u8 = 7;

/// What a replica's records say, replayed.
#[derive(Debug, Default)]
struct State {
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    last_purged: Option<LogId<u64>>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    snapshot: Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)>,
}

impl State {
    fn replay(&mut self, record: &[u8]) -> Result<(), DecodeError> {
        let mut r = Reader::new(record);
        match r.u8()? {
            ENTRY => {
                let entry = codec::get_entry(&mut r)?;
                self.entries.split_off(&entry.log_id.index);
                self.entries.insert(entry.log_id.index, entry);
            }
            VOTE => self.vote = Some(codec::get_vote(&mut r)?),
            COMMITTED => self.committed = codec::get_opt_log_id(&mut r)?,
            TRUNCATE => {
                self.entries.split_off(&r.u64()?);
            }
            PURGE => self.purge(codec::get_log_id(&mut r)?),
            SNAPSHOT => {
                let meta = codec::get_snapshot_meta(&mut r)?;
                self.snapshot = Some((meta, r.bytes()?.to_vec()));
            }
            other => return Err(DecodeError(format!("record kind {other}"))),
        }
        r.end()
    }

    fn purge(&mut self, upto: LogId<u64>) {
        self.entries = self.entries.split_off(&(upto.index + 1));
        self.last_purged = Some(upto);
    }

    /// The records that rebuild this state: what a checkpoint keeps.
    fn live(&self) -> Vec<Vec<u8>> {
        let mut live = Vec::with_capacity(self.entries.len() + 5);
        if let Some(vote) = &self.vote {
            live.push(vote_record(vote));
        }
        live.push(committed_record(self.committed.as_ref()));
        if let Some((meta, data)) = &self.snapshot {
            live.push(snapshot_record(meta, data));
        }
        if let Some(purged) = &self.last_purged {
            live.push(purge_record(purged));
        }
        live.extend(self.entries.values().map(entry_record));
        live
    }
}

fn record(kind: u8, body: impl FnOnce(&mut Writer)) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(kind);
    body(&mut w);
    w.bytes
}

fn entry_record(entry: &Entry<TypeConfig>) -> Vec<u8> {
    record(ENTRY, |w| codec::put_entry(w, entry))
}
fn vote_record(vote: &Vote<u64>) -> Vec<u8> {
    record(VOTE, |w| codec::put_vote(w, vote))
}
fn committed_record(committed: Option<&LogId<u64>>) -> Vec<u8> {
    record(COMMITTED, |w| codec::put_opt_log_id(w, committed))
}
fn purge_record(upto: &LogId<u64>) -> Vec<u8> {
    record(PURGE, |w| codec::put_log_id(w, upto))
}
fn snapshot_record(meta: &SnapshotMeta<u64, BasicNode>, data: &[u8]) -> Vec<u8> {
    record(SNAPSHOT, |w| {
        codec::put_snapshot_meta(w, meta);
        w.bytes(data);
    })
}

/// Why a replica's directory was refused.
#[derive(Debug)]
pub enum OpenStoreError {
    Log(OpenError),
    Damaged(String),
    /// The directory belongs to another cluster or replica, or is in use: nothing is started or
    /// overwritten.
    NotOurs(String),
}

impl std::fmt::Display for OpenStoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenStoreError::Log(e) => write!(f, "replicated log: {e}"),
            OpenStoreError::Damaged(why) => write!(f, "replicated log: a damaged record: {why}"),
            OpenStoreError::NotOurs(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for OpenStoreError {}

/// The disk both halves of a replica share: one log, one queue, so their records keep the
/// order they were made in.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    log: Option<GroupCommit>,
}

impl Drop for Shared {
    /// The last of openraft's stores is gone: the log thread finishes what was queued and lets
    /// go of the directory before this returns, so a replica started again at once on the same
    /// directory (in the same process) finds it free, and a stopped replica's files are still.
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            drop(log.stop());
        }
    }
}

/// Says when a replica's store has been dropped and its log thread has stopped.
#[derive(Debug, Clone)]
pub struct Released(std::sync::Weak<Shared>);

impl Released {
    pub fn is_released(&self) -> bool {
        self.0.strong_count() == 0
    }
}

impl Shared {
    fn log(&self) -> &GroupCommit {
        self.log.as_ref().expect("the log lives until the store is dropped")
    }

    /// Queues `bytes` (with `state` already updated under the same lock, so a checkpoint
    /// computed later includes it) and returns at once.
    fn write(&self, bytes: Vec<u8>, on_durable: Option<OnDurable>) -> std::io::Result<()> {
        self.log().submit(bytes, on_durable)
    }

    /// Queues `bytes` and waits until they are on disk.
    async fn write_durable(&self, bytes: Vec<u8>) -> std::io::Result<()> {
        let (done, wait) = tokio::sync::oneshot::channel();
        let callback: OnDurable = Box::new(move |result| drop(done.send(result)));
        self.log().submit(bytes, Some(callback))?;
        wait.await
            .map_err(|_| std::io::Error::other("the log stopped"))?
            .map_err(std::io::Error::other)
    }
}

/// Opens (or creates) a replica's store in `dir` for replica `id` of `cluster`, and the state
/// machine over `machine`, restored from the last snapshot.
pub fn open<M: Machine>(
    dir: &Path,
    cluster: &str,
    id: u64,
    mut machine: M,
) -> Result<(LogStore, StateMachine<M>), OpenStoreError> {
    let identity = format!("format = concord-replica-1\ncluster = {cluster}\nreplica = {id}\n");
    let mut lock = claim_data_dir(dir, &identity)
        .map_err(|why| OpenStoreError::NotOurs(format!("{}: {why}", dir.display())))?;
    let (file_log, records) = FileLog::open_claimed(&mut lock, &dir.join("log"), SEGMENT_BYTES)
        .map_err(OpenStoreError::Log)?;
    let mut state = State::default();
    for (i, record) in records.iter().enumerate() {
        state
            .replay(record)
            .map_err(|e| OpenStoreError::Damaged(format!("record {i}: {}", e.0)))?;
    }
    let mut applied = None;
    let mut membership = StoredMembership::default();
    if let Some((meta, data)) = &state.snapshot {
        machine.restore(data).map_err(|e| OpenStoreError::Damaged(format!("snapshot: {e}")))?;
        applied = meta.last_log_id;
        membership = meta.last_membership.clone();
    }
    // The log thread holds the directory until it has written everything queued.
    let log = GroupCommit::start_holding(file_log, lock)
        .map_err(|e| OpenStoreError::Log(OpenError::Io(e)))?;
    let shared = Arc::new(Shared { state: Mutex::new(state), log: Some(log) });
    let machine = Arc::new(Mutex::new(machine));
    Ok((
        LogStore { shared: Arc::clone(&shared) },
        StateMachine { shared, machine, applied, membership, snapshots_built: 0 },
    ))
}

fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// openraft's log store.
#[derive(Debug, Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

impl LogStore {
    /// Tells when this store (and every clone openraft holds) is gone.
    pub fn released(&self) -> Released {
        Released(Arc::downgrade(&self.shared))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let state = self.shared.state.lock().expect("not poisoned");
        Ok(state.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let state = self.shared.state.lock().expect("not poisoned");
        let last = state.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: state.last_purged,
            last_log_id: last.or(state.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        self.shared.state.lock().expect("not poisoned").vote = Some(*vote);
        self.shared
            .write_durable(vote_record(vote))
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&io_error(e))))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.shared.state.lock().expect("not poisoned").vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        self.shared.state.lock().expect("not poisoned").committed = committed;
        self.shared
            .write(committed_record(committed.as_ref()), None)
            .map_err(|e| StorageError::from(StorageIOError::write(&e)))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.shared.state.lock().expect("not poisoned").committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut records = Vec::new();
        {
            let mut state = self.shared.state.lock().expect("not poisoned");
            for entry in entries {
                records.push(entry_record(&entry));
                state.entries.split_off(&entry.log_id.index);
                state.entries.insert(entry.log_id.index, entry);
            }
            // Queued under the lock: a checkpoint computed after this sees these entries.
            let last = records.pop();
            for record in records {
                self.shared.write(record, None).map_err(|e| StorageIOError::write_logs(&e))?;
            }
            let Some(last) = last else {
                drop(state);
                callback.log_io_completed(Ok(()));
                return Ok(());
            };
            let done: OnDurable =
                Box::new(move |result| callback.log_io_completed(result.map_err(io_error)));
            self.shared.write(last, Some(done)).map_err(|e| StorageIOError::write_logs(&e))?;
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let bytes = {
            let mut state = self.shared.state.lock().expect("not poisoned");
            state.entries.split_off(&log_id.index);
            record(TRUNCATE, |w| w.u64(log_id.index))
        };
        self.shared
            .write_durable(bytes)
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_logs(&e)))
    }

    async fn purge(&mut self, upto: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut state = self.shared.state.lock().expect("not poisoned");
        state.purge(upto);
        self.shared
            .write(purge_record(&upto), None)
            .and_then(|()| self.shared.log().checkpoint(state.live()))
            .map_err(|e| StorageError::from(StorageIOError::write_logs(&e)))
    }
}

/// openraft's state machine: the user's [`Machine`], fed committed commands in order.
#[derive(Debug)]
pub struct StateMachine<M> {
    shared: Arc<Shared>,
    machine: Arc<Mutex<M>>,
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    snapshots_built: u64,
}

impl<M> StateMachine<M> {
    pub fn machine(&self) -> Arc<Mutex<M>> {
        Arc::clone(&self.machine)
    }
}

/// Builds a snapshot of the machine as it is now.
#[derive(Debug)]
pub struct SnapshotBuilder<M> {
    shared: Arc<Shared>,
    machine: Arc<Mutex<M>>,
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    id: String,
}

impl<M: Machine> RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder<M> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        // The machine cannot move while this runs: openraft builds snapshots on the state
        // machine's own task, between applies.
        let data = self.machine.lock().expect("not poisoned").snapshot();
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id: self.id.clone(),
        };
        let bytes = snapshot_record(&meta, &data);
        self.shared.state.lock().expect("not poisoned").snapshot =
            Some((meta.clone(), data.clone()));
        self.shared
            .write_durable(bytes)
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_snapshot(None, &e)))?;
        Ok(Snapshot { meta, snapshot: Box::new(data) })
    }
}

impl<M: Machine> RaftStateMachine<TypeConfig> for StateMachine<M> {
    type SnapshotBuilder = SnapshotBuilder<M>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut machine = self.machine.lock().expect("not poisoned");
        let mut replies = Vec::new();
        for entry in entries {
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(batch) => match codec::decode_batch(batch) {
                    Ok(commands) => {
                        commands.into_iter().for_each(|c| machine.apply(entry.log_id.index, c));
                    }
                    // Only a replica of this cluster writes entries, always as batches: an
                    // entry that is not one is applied as nothing, on every replica alike.
                    Err(e) => eprintln!(
                        "replica: entry {} is not a batch of commands ({}); applied as nothing",
                        entry.log_id.index, e.0
                    ),
                },
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                }
            }
            self.applied = Some(entry.log_id);
            replies.push(());
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshots_built += 1;
        let at = self.applied.map_or(0, |id| id.index);
        SnapshotBuilder {
            shared: Arc::clone(&self.shared),
            machine: Arc::clone(&self.machine),
            applied: self.applied,
            membership: self.membership.clone(),
            id: format!("{at}-{}", self.snapshots_built),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Vec<u8>>, StorageError<u64>> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Vec<u8>>,
    ) -> Result<(), StorageError<u64>> {
        self.machine
            .lock()
            .expect("not poisoned")
            .restore(&snapshot)
            .map_err(|e| StorageError::from(StorageIOError::read_snapshot(None, &io_error(e))))?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        let bytes = snapshot_record(meta, &snapshot);
        self.shared.state.lock().expect("not poisoned").snapshot = Some((meta.clone(), *snapshot));
        self.shared
            .write_durable(bytes)
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_snapshot(None, &e)))
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let state = self.shared.state.lock().expect("not poisoned");
        Ok(state
            .snapshot
            .as_ref()
            .map(|(meta, data)| Snapshot { meta: meta.clone(), snapshot: Box::new(data.clone()) }))
    }
}
