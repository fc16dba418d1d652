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

/// Queues commands for the replicated log in the order they are submitted.
#[derive(Debug, Clone)]
pub struct Submitter {
    queue: mpsc::UnboundedSender<(Vec<u8>, Option<OnCommitted>)>,
}

impl Submitter {
    /// Starts the task that hands commands to `raft`; it ends when every `Submitter` clone is
    /// dropped. Must be called inside a tokio runtime.
    pub(crate) fn start(
        raft: Raft<TypeConfig>,
        latency: std::sync::Arc<std::sync::Mutex<crate::CommitLatency>>,
    ) -> Self {
        let (queue, mut commands) = mpsc::unbounded_channel::<(Vec<u8>, Option<OnCommitted>)>();
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
        Submitter { queue }
    }

    /// Queues `command` behind every command submitted before it; returns at once. Without a
    /// callback nobody hears of its commit (a record whose loss is safe, as a core's lazy
    /// records are). The queue is unbounded because its producer, a protocol core, bounds
    /// what it has in flight itself.
    pub fn submit(&self, command: Vec<u8>, on_committed: Option<OnCommitted>) {
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
