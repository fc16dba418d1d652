//! Group commit: many concurrent appends share one fdatasync.
//!
//! A thread owns the [`FileLog`]. Appenders queue their records; the thread takes everything
//! queued (up to [`MAX_BATCH`]), writes it, syncs once, and only then acknowledges each append
//! in the batch. An append returns once its record is durable, never before. The queue holds at
//! most [`MAX_QUEUED`] appends; beyond that appenders wait (back-pressure, not memory growth).
//!
//! Appends may wait ([`GroupCommit::append`]) or be handed a callback
//! ([`GroupCommit::submit`]), which is how an async driver uses the log without blocking its
//! executor. Either way records reach the file in the order they were queued, and a checkpoint
//! ([`GroupCommit::checkpoint`]) takes its place in that order too.
//!
//! An I/O error is final: after a failed fdatasync the kernel may have dropped the dirty pages,
//! so retrying could report durable what is not. Every later append fails too; the node must
//! restart and recover from what is on disk.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::file_log::{FileLog, MANIFEST_EVERY};

/// Most records written under one sync.
pub const MAX_BATCH: usize = 4_096;
/// Appends waiting for the log thread; an appender blocks when the queue is full.
pub const MAX_QUEUED: usize = 4 * MAX_BATCH;

/// How long the log must be idle before the manifest records what the last sync made durable.
const QUIET: Duration = Duration::from_millis(20);

/// Called on the log thread once a submitted record is durable (or the log has failed).
pub type OnDurable = Box<dyn FnOnce(Result<(), String>) + Send>;

enum Job {
    Append(Vec<u8>),
    /// Replace the log with these records: see [`FileLog::checkpoint`].
    Checkpoint(Vec<Vec<u8>>),
}

enum Done {
    Wait(mpsc::SyncSender<Result<(), String>>),
    Notify(OnDurable),
    Nothing,
}

struct Request {
    job: Job,
    done: Done,
}

#[derive(Debug, Default)]
struct Counters {
    appends: AtomicU64,
    syncs: AtomicU64,
    checkpoints: AtomicU64,
}

/// A [`FileLog`] behind a group-commit thread.
#[derive(Debug)]
pub struct GroupCommit {
    queue: Option<mpsc::SyncSender<Request>>,
    thread: Option<JoinHandle<FileLog>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.job {
            Job::Append(payload) => write!(f, "Append({} bytes)", payload.len()),
            Job::Checkpoint(live) => write!(f, "Checkpoint({} records)", live.len()),
        }
    }
}

impl GroupCommit {
    pub fn start(log: FileLog) -> io::Result<Self> {
        Self::start_holding(log, ())
    }

    /// Starts the log thread holding `guard` (the data directory's lock) until the thread has
    /// written everything queued and ended. Dropped with its owner, a `GroupCommit` lets its
    /// thread finish the queue on its own; a lock released at the drop instead would let a
    /// new opener (an in-process restart) read and rewrite the log under that thread.
    pub fn start_holding<G: Send + 'static>(mut log: FileLog, guard: G) -> io::Result<Self> {
        let (queue, requests) = mpsc::sync_channel::<Request>(MAX_QUEUED);
        let counters = Arc::new(Counters::default());
        let shared = Arc::clone(&counters);
        let thread =
            std::thread::Builder::new().name("concord-wal".to_string()).spawn(move || {
                let mut failed: Option<String> = None;
                // Lazy records written since the last sync: durable with the next one.
                let mut unsynced = 0u64;
                loop {
                    // While the manifest is behind the last sync, wait only briefly: once the
                    // log goes quiet, record what is durable so damage below it is detected.
                    let first = if failed.is_none() && log.manifest_behind() {
                        match requests.recv_timeout(QUIET) {
                            Ok(first) => first,
                            Err(mpsc::RecvTimeoutError::Timeout) => {
                                if let Err(e) = log.refresh_manifest(0) {
                                    failed = Some(e.to_string());
                                }
                                continue;
                            }
                            Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        }
                    } else {
                        match requests.recv() {
                            Ok(first) => first,
                            Err(_) => break,
                        }
                    };
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match requests.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    let appends = batch.iter().filter(|r| matches!(r.job, Job::Append(_))).count();
                    // Nobody waits for a batch of lazy appends: write it (the page cache has it
                    // if the process dies) and let the next forced record's sync cover it,
                    // instead of a sync of its own that the next forced record would queue
                    // behind.
                    let lazy_only = batch
                        .iter()
                        .all(|r| matches!((&r.job, &r.done), (Job::Append(_), Done::Nothing)));
                    let result = match &failed {
                        Some(error) => Err(error.clone()),
                        None => batch
                            .iter()
                            .try_for_each(|r| match &r.job {
                                Job::Append(payload) => log.append(payload),
                                Job::Checkpoint(live) => {
                                    shared.checkpoints.fetch_add(1, Ordering::Relaxed);
                                    log.checkpoint(live)
                                }
                            })
                            .and_then(|()| if lazy_only { Ok(()) } else { log.sync() })
                            .map_err(|e| e.to_string()),
                    };
                    if let Err(error) = &result {
                        failed.get_or_insert_with(|| error.clone());
                    } else if lazy_only {
                        unsynced += appends as u64;
                    } else {
                        shared.syncs.fetch_add(1, Ordering::Relaxed);
                        shared.appends.fetch_add(appends as u64 + unsynced, Ordering::Relaxed);
                        unsynced = 0;
                    }
                    for request in batch {
                        match request.done {
                            // The appender may have given up waiting; nothing to tell it then.
                            Done::Wait(waiter) => drop(waiter.send(result.clone())),
                            Done::Notify(callback) => callback(result.clone()),
                            Done::Nothing => {}
                        }
                    }
                    // Under steady load the log never goes quiet: refresh the manifest now
                    // and then instead, after this batch is acknowledged.
                    if failed.is_none() {
                        if let Err(e) = log.refresh_manifest(MANIFEST_EVERY) {
                            failed = Some(e.to_string());
                        }
                    }
                }
                // Stopping: what was queued is durable when stop() returns.
                if unsynced > 0 && failed.is_none() && log.sync().is_ok() {
                    shared.syncs.fetch_add(1, Ordering::Relaxed);
                    shared.appends.fetch_add(unsynced, Ordering::Relaxed);
                }
                // A clean stop leaves the manifest exact: any later loss is detected.
                if failed.is_none() {
                    let _ = log.refresh_manifest(0);
                }
                drop(guard);
                log
            })?;
        Ok(GroupCommit { queue: Some(queue), thread: Some(thread), counters })
    }

    fn enqueue(&self, job: Job, done: Done) -> io::Result<()> {
        let queue = self.queue.as_ref().expect("the queue lives until stop()");
        queue
            .send(Request { job, done })
            .map_err(|_| io::Error::other("the log thread has stopped"))
    }

    /// Appends `payload` and returns once it is durable.
    pub fn append(&self, payload: Vec<u8>) -> io::Result<()> {
        let (done, wait) = mpsc::sync_channel(1);
        self.enqueue(Job::Append(payload), Done::Wait(done))?;
        wait.recv()
            .map_err(|_| io::Error::other("the log thread stopped before the sync"))?
            .map_err(io::Error::other)
    }

    /// Queues `payload` and returns at once; `on_durable` runs on the log thread after the sync
    /// that covers it (or with the error that makes the log unusable). `None`: nobody waits —
    /// the record is written at once but durable only with the next sync some waited-for record
    /// (or `stop`) causes, for records whose loss in a machine crash is safe.
    /// Blocks only while the queue is full.
    pub fn submit(&self, payload: Vec<u8>, on_durable: Option<OnDurable>) -> io::Result<()> {
        let done = on_durable.map_or(Done::Nothing, Done::Notify);
        self.enqueue(Job::Append(payload), done)
    }

    /// Queues a checkpoint: once every record queued before it is written, the log is replaced
    /// by `live`. The caller computes `live` from the state those earlier records produced.
    pub fn checkpoint(&self, live: Vec<Vec<u8>>) -> io::Result<()> {
        self.enqueue(Job::Checkpoint(live), Done::Nothing)
    }

    /// Checkpoints written so far.
    pub fn checkpoints(&self) -> u64 {
        self.counters.checkpoints.load(Ordering::Relaxed)
    }

    /// Records made durable, and fdatasync calls that did it.
    pub fn counts(&self) -> (u64, u64) {
        (self.counters.appends.load(Ordering::Relaxed), self.counters.syncs.load(Ordering::Relaxed))
    }

    /// Drains the queue and hands the log back.
    pub fn stop(mut self) -> FileLog {
        drop(self.queue.take());
        let thread = self.thread.take().expect("stop() runs once");
        thread.join().expect("the log thread does not panic: errors are returned, not raised")
    }
}
