//! A coordinator's records on the replicated log, as the node loop will write them: submitted
//! in order without waiting, each callback telling of its commit; checkpoints replacing what
//! came before on every replica alike; nothing reported committed by a follower or by a leader
//! cut off from its majority.

use std::collections::BTreeMap;
use std::time::Duration;

#[allow(dead_code)] // shares common/ with tests that use all of it
mod common;

use concord_replication::records::{checkpoint_command, record_command};
use concord_replication::{Options, RecordLog, Replica, Router, WriteError};
use tokio::sync::mpsc;

struct Cluster {
    router: Router,
    _root: tempfile::TempDir,
    replicas: BTreeMap<u64, Replica<RecordLog>>,
}

/// Three replicas, patient ones (`common::patient`).
async fn start() -> Cluster {
    let root = tempfile::tempdir().unwrap();
    let router = Router::default();
    let members: BTreeMap<u64, String> = (1..=3).map(|id| (id, format!("r{id}"))).collect();
    let mut replicas = BTreeMap::new();
    for id in 1..=3 {
        let mut options =
            Options::new("c", id, root.path().join(format!("r{id}")), members.clone());
        options.snapshot_every = 3; // snapshots come and go in the run
        common::patient(&mut options);
        let replica = Replica::start(options, RecordLog::default(), router.wire(id)).await.unwrap();
        router.add(id, replica.raft().clone());
        replicas.insert(id, replica);
    }
    Cluster { router, _root: root, replicas }
}

impl Cluster {
    /// The leader `among` agree on, one of them.
    async fn leader(&self, among: &[u64]) -> u64 {
        for _ in 0..750 {
            let leaders: Vec<Option<u64>> =
                among.iter().map(|id| self.replicas[id].status().leader).collect();
            if let Some(Some(leader)) = leaders.first() {
                if among.contains(leader)
                    && leaders.iter().all(|l| *l == Some(*leader))
                    && self.replicas[leader].status().is_leader
                {
                    return *leader;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no leader agreed on in 15 s");
    }

    async fn converged(&self, expected: &[Vec<u8>]) {
        for _ in 0..500 {
            if self.replicas.values().all(|r| r.machine().lock().unwrap().records() == expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the replicas' records did not converge in 10 s");
    }
}

type Answers = mpsc::UnboundedReceiver<(usize, Result<u64, WriteError>)>;

/// Submits `n` records through `replica`'s submitter (a checkpoint of the newest record every
/// `checkpoint_every`), every one with a callback.
fn submit_all(
    replica: &Replica<RecordLog>,
    prefix: &str,
    n: usize,
    checkpoint_every: usize,
) -> (Answers, Vec<Vec<u8>>) {
    let submitter = replica.submitter();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut live = Vec::new();
    for i in 0..n {
        let record = format!("{prefix} {i}").into_bytes();
        let command = if checkpoint_every > 0 && i % checkpoint_every == checkpoint_every - 1 {
            live = vec![record.clone()];
            checkpoint_command(&live)
        } else {
            live.push(record.clone());
            record_command(&record)
        };
        let tx = tx.clone();
        submitter.submit(command, Some(Box::new(move |result| drop(tx.send((i, result))))));
    }
    (rx, live)
}

async fn answers(rx: &mut Answers, n: usize) -> Vec<(usize, Result<u64, WriteError>)> {
    let mut got = Vec::new();
    while got.len() < n {
        let answer = tokio::time::timeout(Duration::from_secs(15), rx.recv()).await;
        let Ok(answer) = answer else {
            panic!("{} of {n} callbacks ran in 15 s: {got:?}", got.len());
        };
        got.push(answer.expect("open"));
    }
    got.sort_by_key(|(i, _)| *i);
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_commit_in_the_order_submitted_and_checkpoints_agree_everywhere() {
    let cluster = start().await;
    let leader = cluster.leader(&[1, 2, 3]).await;
    // Ten waves, each waited for: at least ten entries (a wave may share one), so snapshots
    // (every 3 entries) come and go while records and checkpoints are applied.
    let mut last_index = 0;
    let mut live = Vec::new();
    for wave in 0..10 {
        let (mut rx, wave_live) =
            submit_all(&cluster.replicas[&leader], &format!("wave {wave} record"), 100, 30);
        let got = answers(&mut rx, 100).await;
        let indexes: Vec<u64> = got.iter().map(|(_, r)| *r.as_ref().expect("committed")).collect();
        assert!(indexes.windows(2).all(|w| w[0] <= w[1]), "committed in the order submitted");
        assert!(indexes[0] > last_index, "a later wave, a later entry");
        last_index = indexes[99];
        // The wave's last checkpoint replaced everything before it.
        live = wave_live;
    }
    cluster.converged(&live).await;

    // A follower takes nothing, and says who leads.
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let (mut rx, _) = submit_all(&cluster.replicas[&follower], "at a follower", 20, 0);
    for (_, answer) in answers(&mut rx, 20).await {
        assert!(
            matches!(&answer, Err(WriteError::NotLeader(Some((l, _)))) if *l == leader),
            "{answer:?}"
        );
    }
    cluster.converged(&live).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_reports_nothing_committed_and_its_records_are_not_kept() {
    let cluster = start().await;
    let old = cluster.leader(&[1, 2, 3]).await;
    let (mut rx, live) = submit_all(&cluster.replicas[&old], "before", 10, 0);
    assert!(answers(&mut rx, 10).await.iter().all(|(_, r)| r.is_ok()));

    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != old).collect();
    cluster.router.isolate(old, others.clone());
    let (mut cut_off, _) = submit_all(&cluster.replicas[&old], "cut off", 50, 0);
    let new = cluster.leader(&others).await;
    let (mut rx, after) = submit_all(&cluster.replicas[&new], "after", 10, 0);
    assert!(answers(&mut rx, 10).await.iter().all(|(_, r)| r.is_ok()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(cut_off.try_recv().is_err(), "the cut-off leader said nothing while cut off");

    cluster.router.heal();
    for (i, answer) in answers(&mut cut_off, 50).await {
        assert!(answer.is_err(), "record {i} of the cut-off leader reported committed");
    }
    let mut expected = live;
    expected.extend(after);
    cluster.converged(&expected).await;
}
