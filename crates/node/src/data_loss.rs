//! Opening a node's log, and what happens after its operator accepts a loss of data.
//!
//! A damaged log is refused (`concord_wal::OpenError`). `--accept-data-loss` lets a *shard*
//! start from what is readable (`FileLog::salvage`): the originals are set aside, and the data
//! directory gets a [`DATA_LOSS_FILE`] that stays. While it is there the shard presumes nothing
//! about transactions it may have forgotten (`concord_commit::amnesia`): it learns from each
//! coordinator an id issued after the loss (a `Reserve`), and until then treats every id of
//! that coordinator as possibly forgotten. The horizons learned are written to the same file,
//! so a restart keeps them.
//!
//! A coordinator or an acceptor is refused even then: a coordinator's log holds decisions that
//! participants and clients were told, an acceptor's what it promised; one that forgot could
//! contradict itself. Shards of both protocols can (a Paxos Commit shard that may have voted
//! does not vote again: its coordinator's higher ballot finds the lost vote or chooses ABORT).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use concord_commit::amnesia::AfterDataLoss as _;
use concord_commit::amnesia::Amnesia;
use concord_types::TxnId;
use concord_wal::{FileLog, OpenError};

use crate::config::{ClusterConfig, Role};
use crate::engine::Engine;
use crate::service::Handle;
use crate::NodeError;

/// In a data directory: its operator accepted a loss of data. Lines: what was lost, then
/// `horizon <txn>` for each coordinator's first id known to be issued after it.
pub const DATA_LOSS_FILE: &str = "DATA-LOSS-ACCEPTED";

/// How long to wait between attempts to learn a coordinator's horizon.
const HORIZON_RETRY: Duration = Duration::from_secs(1);

/// Why `--accept-data-loss` cannot help a node of this role, if it cannot.
fn cannot_accept(role: Role) -> Option<&'static str> {
    match role {
        Role::Coordinator => Some(
            "a coordinator's log holds the decisions its participants and clients were told; \
             one that forgot them could contradict them. Restore the directory from a backup",
        ),
        Role::Acceptor => Some(
            "an acceptor that forgot what it accepted could accept a contradicting value. \
             Restore the directory from a backup, or replace the acceptor",
        ),
        Role::Shard => None,
    }
}

/// Opens the node's log: a new one only in a new data directory; after damage only with
/// `accept_data_loss`, for a role that can run on after it.
pub(crate) fn open_log(
    data_dir: &Path,
    segment_bytes: u64,
    lock: &mut concord_wal::DirLock,
    accept_data_loss: bool,
    role: Role,
) -> Result<(FileLog, Vec<Vec<u8>>), NodeError> {
    let log_dir = data_dir.join("log");
    let opened = FileLog::open_claimed(lock, &log_dir, segment_bytes);
    let error = match opened {
        Ok(opened) => {
            keep_the_record_of_loss(data_dir, &opened.0)?;
            return Ok(opened);
        }
        Err(OpenError::Io(e)) => return Err(NodeError::Log(OpenError::Io(e))),
        Err(error) => error,
    };
    if !accept_data_loss {
        return Err(error.into());
    }
    if let Some(why) = cannot_accept(role) {
        return Err(NodeError::DataDir {
            path: log_dir,
            reason: format!("{error}\n--accept-data-loss cannot help a {role}: {why}"),
        });
    }
    let (log, records, report) = FileLog::salvage(&log_dir, segment_bytes)?;
    let mut note = format!("refused: {error}\nkept {} records\n", report.records);
    for lost in &report.lost {
        note += &format!("lost: {lost}\n");
    }
    if let Some(quarantine) = &report.quarantine {
        note += &format!("originals: {}\n", quarantine.display());
    }
    append_durably(&data_dir.join(DATA_LOSS_FILE), &note).map_err(|e| NodeError::DataDir {
        path: data_dir.join(DATA_LOSS_FILE),
        reason: e.to_string(),
    })?;
    eprintln!("{}: DATA LOSS ACCEPTED by the operator:\n{note}", data_dir.display());
    Ok((log, records))
}

/// After an accepted loss: moves a damaged storage file aside (`NAME.damaged-N`, for
/// forensics) so a new one starts; the log's records still replay into it.
pub(crate) fn set_aside(
    data_dir: &Path,
    file: Option<&str>,
    reason: &str,
) -> Result<(), NodeError> {
    let failed = |path: &Path, e: std::io::Error| NodeError::DataDir {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut note = format!(
        "refused: {reason}
"
    );
    if let Some(file) = file {
        let path = data_dir.join(file);
        if path.exists() {
            let aside = (1u32..)
                .map(|n| data_dir.join(format!("{file}.damaged-{n}")))
                .find(|p| !p.exists())
                .expect("some number is free");
            std::fs::rename(&path, &aside).map_err(|e| failed(&path, e))?;
            note += &format!("lost: {file}, set aside as {}\n", aside.display());
        }
    }
    let marker = data_dir.join(DATA_LOSS_FILE);
    append_durably(&marker, &note).map_err(|e| failed(&marker, e))?;
    eprintln!("{}: DATA LOSS ACCEPTED by the operator:\n{note}", data_dir.display());
    Ok(())
}

/// The log's manifest remembers an accepted loss even if `DATA-LOSS-ACCEPTED` was deleted: the
/// file is written again (without horizons, so they are learned anew — later ones, which only
/// widen the shard's caution), never silently dropped.
fn keep_the_record_of_loss(data_dir: &Path, log: &FileLog) -> Result<(), NodeError> {
    let marker = data_dir.join(DATA_LOSS_FILE);
    if log.data_loss_accepted() && !marker.exists() {
        let note = "recreated: the log's manifest says a loss of data was accepted here, and this \
                    file was missing; horizons are learned again\n";
        append_durably(&marker, note)
            .map_err(|e| NodeError::DataDir { path: marker.clone(), reason: e.to_string() })?;
        eprintln!("{}: {note}", marker.display());
    }
    Ok(())
}

fn append_durably(path: &Path, text: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The amnesia a data directory carries, if its operator ever accepted a loss in it.
pub(crate) fn amnesia_of(data_dir: &Path) -> Result<Option<Amnesia>, NodeError> {
    let path = data_dir.join(DATA_LOSS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(NodeError::DataDir { path, reason: e.to_string() }),
    };
    let mut amnesia = Amnesia::default();
    for line in text.lines() {
        if let Some(txn) = line.strip_prefix("horizon ") {
            let txn: TxnId = txn.trim().parse().map_err(|e| NodeError::DataDir {
                path: path.clone(),
                reason: format!("line `{line}`: {e:?}"),
            })?;
            amnesia.learn_horizon(txn);
        }
    }
    Ok(Some(amnesia))
}

/// Learns, from each coordinator whose horizon is not yet known, an id it issued now (every
/// earlier one is smaller), tells the shard, and writes it down. Retries until the node stops.
pub(crate) async fn learn_horizons<E: Engine>(
    handle: Handle<E>,
    config: ClusterConfig,
    data_dir: PathBuf,
    known: Amnesia,
) {
    let known: Vec<_> = known.horizons().map(|t| t.coordinator).collect();
    let coordinators: Vec<_> = config
        .nodes
        .iter()
        .filter(|n| n.role == Role::Coordinator && !known.contains(&concord_types::NodeId(n.id)))
        .cloned()
        .collect();
    for coordinator in coordinators {
        loop {
            let to = concord_types::NodeId(coordinator.id);
            let channel = crate::node_channel(handle.tls.as_deref(), to, coordinator.listen);
            let mut client = crate::proto::client_client::ClientClient::new(channel);
            let asked = tokio::time::timeout(
                Duration::from_secs(5),
                client.reserve(crate::proto::ReserveRequest {}),
            )
            .await;
            let issued = match asked {
                Ok(Ok(reply)) => reply.into_inner().txn.parse::<TxnId>().ok(),
                _ => None,
            };
            let Some(txn) = issued.filter(|t| t.coordinator.0 == coordinator.id) else {
                tokio::time::sleep(HORIZON_RETRY).await;
                if handle.ask(|_| ()).await.is_err() {
                    return; // the node stopped before the coordinator answered
                }
                continue;
            };
            let path = data_dir.join(DATA_LOSS_FILE);
            let line = format!("horizon {txn}\n");
            let written = tokio::task::spawn_blocking(move || append_durably(&path, &line)).await;
            if !matches!(written, Ok(Ok(()))) {
                tokio::time::sleep(HORIZON_RETRY).await;
                continue;
            }
            if handle
                .ask(move |node| {
                    if let crate::driver::RoleState::Shard(p) = &mut node.role {
                        p.learn_horizon(txn);
                    }
                })
                .await
                .is_err()
            {
                return; // the node is stopping
            }
            eprintln!(
                "{}: after the accepted data loss, transactions of {} from {txn} on are new",
                data_dir.display(),
                coordinator.name
            );
            break;
        }
    }
}
