//! Appending without waiting, in order: what a protocol core's `Persist` needs.
//!
//! A core hands records to its log one after another and goes on; each forced record's
//! `Persisted` comes back later. [`Replica::write`] waits for each command, so a caller that
//! must not wait — the node loop — would have to spawn a task per record, and tasks can reach
//! the leader out of order. A [`Submitter`] keeps the order: one task takes commands from a
//! queue and hands each to openraft before the next (`client_write_ff`: queued in order, not
//! waited for); a task per command then waits for its commit and runs its callback.

use openraft::error::ClientWriteError;
use openraft::Raft;
use tokio::sync::mpsc;

use crate::{TypeConfig, WriteError};

/// Runs once its command is committed (a majority has it on disk; `Ok(index)`) or will not be
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
    pub(crate) fn start(raft: Raft<TypeConfig>) -> Self {
        let (queue, mut commands) = mpsc::unbounded_channel::<(Vec<u8>, Option<OnCommitted>)>();
        tokio::spawn(async move {
            while let Some((command, on_committed)) = commands.recv().await {
                let receiver = match raft.client_write_ff(command).await {
                    Ok(receiver) => receiver,
                    Err(fatal) => {
                        if let Some(callback) = on_committed {
                            callback(Err(WriteError::Unknown(fatal.to_string())));
                        }
                        continue;
                    }
                };
                let Some(callback) = on_committed else { continue };
                tokio::spawn(async move {
                    let result = match receiver.await {
                        Ok(Ok(response)) => Ok(response.log_id.index),
                        Ok(Err(ClientWriteError::ForwardToLeader(forward))) => {
                            Err(WriteError::NotLeader(
                                forward.leader_id.zip(forward.leader_node.map(|n| n.addr)),
                            ))
                        }
                        Ok(Err(other)) => Err(WriteError::Unknown(other.to_string())),
                        Err(_) => Err(WriteError::Unknown("the replica stopped".into())),
                    };
                    callback(result);
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
}
