//! Appending without waiting, in order: what a protocol core's `Persist` needs.
//!
//! A core hands records to its log one after another and goes on; each forced record's
//! `Persisted` comes back later. [`Replica::write`] waits for each command, so a caller that
//! must not wait — the node loop — would have to spawn a task per record, and tasks can reach
//! the leader out of order. A [`Submitter`] keeps the order: one task takes commands from a
//! queue, puts all that are waiting into one entry (a batch), and hands it to openraft before
//! the next (`client_write_ff`: queued in order, not waited for); a task per entry then waits
//! for its commit and runs the callbacks of its commands.

use openraft::error::ClientWriteError;
use openraft::Raft;
use tokio::sync::mpsc;

use crate::{codec, TypeConfig, WriteError};

/// Commands, and their bytes, put into one log entry at most: a burst is one append and one
/// replication round (openraft orders each entry's append behind the last one's flush, so one
/// entry per command made every command wait for a sync: ~3,000 commits/s, BENCHMARKS.md),
/// but no entry grows past what a follower takes comfortably in one message.
const MAX_BATCH_COMMANDS: usize = 4_096;
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Runs once its command is committed (a majority has it on disk; `Ok(index)` of the entry
/// that carries it, shared by the commands batched with it) or will not be
/// known to be (`Err`): this replica is not, or no longer, the leader, or it is stopping. An
/// error does not mean the command was dropped — a new leader may still commit it — only that
/// this replica will not say so.
pub type OnCommitted = Box<dyn FnOnce(Result<u64, WriteError>) + Send>;

/// Commands queued and not yet handed to openraft, at most. The producers bound themselves —
/// a protocol core admits a bounded number of transactions, each with a bounded number of
/// records — so this is far above what they can queue; reaching it means a producer lost its
/// own bound, and the command is refused (its callback hears so) instead of memory growing.
pub const MAX_QUEUED: usize = 1 << 20;

/// Queues commands for the replicated log in the order they are submitted.
#[derive(Debug, Clone)]
pub struct Submitter {
    queue: mpsc::UnboundedSender<(Vec<u8>, Option<OnCommitted>)>,
    /// Commands in `queue`.
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Submitter {
    /// Starts the task that hands commands to `raft`; it ends when every `Submitter` clone is
    /// dropped. Must be called inside a tokio runtime.
    pub(crate) fn start(
        raft: Raft<TypeConfig>,
        latency: std::sync::Arc<std::sync::Mutex<crate::CommitLatency>>,
    ) -> Self {
        let (queue, mut commands) = mpsc::unbounded_channel::<(Vec<u8>, Option<OnCommitted>)>();
        let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let taken = std::sync::Arc::clone(&queued);
        tokio::spawn(async move {
            while let Some(first) = commands.recv().await {
                // Everything already waiting goes into the same entry (bounded).
                let mut bytes = first.0.len();
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
                    let Ok(next) = commands.try_recv() else { break };
                    bytes += next.0.len();
                    batch.push(next);
                }
                taken.fetch_sub(batch.len(), std::sync::atomic::Ordering::AcqRel);
                let (batch, callbacks): (Vec<Vec<u8>>, Vec<Option<OnCommitted>>) =
                    batch.into_iter().unzip();
                let callbacks: Vec<OnCommitted> = callbacks.into_iter().flatten().collect();
                let submitted = std::time::Instant::now();
                let receiver = match raft.client_write_ff(codec::encode_batch(&batch)).await {
                    Ok(receiver) => receiver,
                    Err(fatal) => {
                        let error = WriteError::Unknown(fatal.to_string());
                        callbacks.into_iter().for_each(|callback| callback(Err(error.clone())));
                        continue;
                    }
                };
                let latency = std::sync::Arc::clone(&latency);
                tokio::spawn(async move {
                    let result = match receiver.await {
                        Ok(Ok(response)) => {
                            latency.lock().expect("not poisoned").record(submitted.elapsed());
                            Ok(response.log_id.index)
                        }
                        Ok(Err(ClientWriteError::ForwardToLeader(forward))) => {
                            Err(WriteError::NotLeader(
                                forward.leader_id.zip(forward.leader_node.map(|n| n.addr)),
                            ))
                        }
                        Ok(Err(other)) => Err(WriteError::Unknown(other.to_string())),
                        Err(_) => Err(WriteError::Unknown("the replica stopped".into())),
                    };
                    callbacks.into_iter().for_each(|callback| callback(result.clone()));
                });
            }
        });
        Submitter { queue, queued }
    }

    /// Queues `command` behind every command submitted before it; returns at once. Without a
    /// callback nobody hears of its commit (a record whose loss is safe, as a core's lazy
    /// records are). Past [`MAX_QUEUED`] the command is refused: its callback hears so.
    pub fn submit(&self, command: Vec<u8>, on_committed: Option<OnCommitted>) {
        let before = self.queued.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if before >= MAX_QUEUED {
            self.queued.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            let why = format!("the replicated log's queue holds {MAX_QUEUED} commands: refused");
            match on_committed {
                Some(callback) => callback(Err(WriteError::Unknown(why))),
                None => eprintln!("concord: a lazy record is lost: {why}"),
            }
            return;
        }
        if let Err(mpsc::error::SendError((_, Some(callback)))) =
            self.queue.send((command, on_committed))
        {
            callback(Err(WriteError::Unknown("the replica stopped".into())));
        }
    }

    /// Commits a barrier behind everything submitted before it: true once it is committed
    /// (everything ahead of it is in the log, or was refused), false if this replica does not
    /// lead.
    pub async fn barrier(&self) -> bool {
        let (done, committed) = tokio::sync::oneshot::channel();
        let callback: OnCommitted = Box::new(move |result| {
            let _ = done.send(result.is_ok());
        });
        self.submit(crate::records::barrier_command(), Some(callback));
        committed.await.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_past_the_bound_is_refused_to_its_callback() {
        let (queue, _undrained) = mpsc::unbounded_channel();
        let submitter = Submitter { queue, queued: std::sync::Arc::default() };
        for _ in 0..MAX_QUEUED {
            submitter.submit(Vec::new(), None);
        }
        let heard = std::sync::Arc::new(std::sync::Mutex::new(None));
        let into = std::sync::Arc::clone(&heard);
        submitter
            .submit(Vec::new(), Some(Box::new(move |result| *into.lock().unwrap() = Some(result))));
        let heard = heard.lock().unwrap().take().expect("the callback ran at once");
        assert!(matches!(heard, Err(WriteError::Unknown(why)) if why.contains("refused")));
        assert_eq!(submitter.queued.load(std::sync::atomic::Ordering::Acquire), MAX_QUEUED);
    }
}
