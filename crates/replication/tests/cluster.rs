//! Three replicas in one process, on the in-process router (every RPC through the codec), on
//! real directories: writes commit on a majority, survive the leader's death and a restart, an
//! isolated leader acknowledges nothing, a replica that fell behind the purged log catches up
//! by snapshot, and directories and configurations that are not ours are refused.

use std::collections::BTreeMap;
use std::time::Duration;

mod common;

use common::{commands, Ledger};
use concord_replication::{
    MembershipError, OpenStoreError, Options, Replica, Router, StartError, WriteError,
};

struct Cluster {
    router: Router,
    root: tempfile::TempDir,
    replicas: BTreeMap<u64, Replica<Ledger>>,
    members: BTreeMap<u64, String>,
    snapshot_every: u64,
}

impl Cluster {
    async fn start(n: u64, snapshot_every: u64) -> Cluster {
        let members: BTreeMap<u64, String> =
            (1..=n).map(|id| (id, format!("replica-{id}"))).collect();
        let mut cluster = Cluster {
            router: Router::default(),
            root: tempfile::tempdir().unwrap(),
            replicas: BTreeMap::new(),
            members,
            snapshot_every,
        };
        for id in 1..=n {
            cluster.start_replica(id).await.unwrap();
        }
        cluster
    }

    fn options(&self, id: u64) -> Options {
        let dir = self.root.path().join(format!("replica-{id}"));
        let mut options = Options::new("test-cluster", id, dir, self.members.clone());
        options.snapshot_every = self.snapshot_every;
        common::patient(&mut options);
        options
    }

    async fn start_replica(&mut self, id: u64) -> Result<(), StartError> {
        self.start_with(self.options(id)).await
    }

    async fn start_with(&mut self, options: Options) -> Result<(), StartError> {
        let id = options.id;
        let replica = Replica::start(options, Ledger::default(), self.router.wire(id)).await?;
        self.router.add(id, replica.raft().clone());
        self.replicas.insert(id, replica);
        Ok(())
    }

    /// Its process dies: nothing more is sent to it or from it.
    async fn kill(&mut self, id: u64) {
        self.router.remove(id);
        let replica = self.replicas.remove(&id).expect("running");
        replica.shutdown().await;
    }

    /// Waits (bounded) until the running replicas agree on one leader, and returns it.
    async fn leader(&self) -> u64 {
        for _ in 0..750 {
            let leaders: Vec<Option<u64>> =
                self.replicas.values().map(|r| r.status().leader).collect();
            if let Some(Some(leader)) = leaders.first() {
                if leaders.iter().all(|l| *l == Some(*leader))
                    && self.replicas.get(leader).is_some_and(|r| r.status().is_leader)
                {
                    return *leader;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no leader agreed on in 15 s");
    }

    async fn write(&self, command: &[u8]) -> u64 {
        let leader = self.leader().await;
        self.replicas[&leader].write(command.to_vec()).await.expect("the leader commits it")
    }

    /// Waits (bounded) until every running replica has applied exactly `expected`.
    async fn all_applied(&self, expected: &[Vec<u8>]) {
        for _ in 0..500 {
            if self.replicas.values().all(|r| commands(&r.machine().lock().unwrap()) == expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (id, replica) in &self.replicas {
            let got = commands(&replica.machine().lock().unwrap());
            eprintln!("replica {id}: {} applied (want {})", got.len(), expected.len());
        }
        panic!("the replicas did not converge in 10 s");
    }
}

/// The snapshot a replica holds, waited for (bounded): its metrics follow an install a moment
/// after its machine does.
async fn installed_snapshot(replica: &Replica<Ledger>) -> Option<openraft::LogId<u64>> {
    for _ in 0..100 {
        if let Some(snapshot) = replica.raft().metrics().borrow().snapshot {
            return Some(snapshot);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn command(i: usize) -> Vec<u8> {
    format!("decision {i}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_the_leaders_death_and_its_restart() {
    let mut cluster = Cluster::start(3, 10_000).await;
    let mut expected = Vec::new();
    for i in 0..50 {
        cluster.write(&command(i)).await;
        expected.push(command(i));
    }
    cluster.all_applied(&expected).await;

    let old = cluster.leader().await;
    cluster.kill(old).await;
    let new = cluster.leader().await;
    assert_ne!(new, old, "a survivor leads");
    assert!(cluster.replicas[&new].status().term > 1, "a new term");
    for i in 50..100 {
        cluster.write(&command(i)).await;
        expected.push(command(i));
    }
    cluster.all_applied(&expected).await;

    // The old leader comes back from its directory: it keeps what it had and catches up.
    cluster.start_replica(old).await.unwrap();
    cluster.all_applied(&expected).await;
    assert_eq!(cluster.leader().await, new, "a returning replica does not disturb the leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_names_the_leader_and_takes_no_write() {
    let cluster = Cluster::start(3, 10_000).await;
    let leader = cluster.leader().await;
    let follower = cluster.replicas.keys().copied().find(|id| *id != leader).unwrap();
    let answer = cluster.replicas[&follower].write(b"at a follower".to_vec()).await;
    assert_eq!(answer, Err(WriteError::NotLeader(Some((leader, format!("replica-{leader}"))))));
    cluster.write(b"at the leader").await;
    cluster.all_applied(&[b"at the leader".to_vec()]).await;
}

/// A new cluster's replica that starts late, on an empty directory, is not mistaken for one
/// that lost its log: no leader has matched anything on it, so it proposes the same first
/// configuration as the others did, and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_clusters_replica_that_starts_late_joins_as_new() {
    let members: BTreeMap<u64, String> = (1..=3).map(|id| (id, format!("replica-{id}"))).collect();
    let mut cluster = Cluster {
        router: Router::default(),
        root: tempfile::tempdir().unwrap(),
        replicas: BTreeMap::new(),
        members,
        snapshot_every: 10_000,
    };
    for id in 1..=2 {
        cluster.start_replica(id).await.unwrap();
    }
    let mut expected = Vec::new();
    for i in 0..5 {
        cluster.write(&command(i)).await;
        expected.push(command(i));
    }
    cluster.start_replica(3).await.expect("the late replica starts");
    cluster.all_applied(&expected).await;
}

/// The leader knows when each replica last answered it (openraft keeps no such time; the
/// network layer notes every reply): a replica that died stops answering and its last contact
/// grows, while a live one is heard each heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_reports_each_replicas_last_contact() {
    let mut cluster = Cluster::start(3, 10_000).await;
    cluster.write(b"first").await;
    let leader = cluster.leader().await;
    let followers: Vec<u64> = cluster.replicas.keys().copied().filter(|id| *id != leader).collect();
    let contact = |cluster: &Cluster| cluster.replicas[&leader].stats().last_contact_ms;
    let heard = contact(&cluster);
    assert!(followers.iter().all(|f| heard.contains_key(f)), "both followers answered: {heard:?}");
    assert!(!heard.contains_key(&leader), "no contact with itself: {heard:?}");

    let (dead, live) = (followers[0], followers[1]);
    cluster.kill(dead).await;
    // Ten heartbeats without an answer from the dead one; the live one answers every beat.
    let mut seen = BTreeMap::new();
    for _ in 0..500 {
        seen = contact(&cluster);
        if seen[&dead] >= 1_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen[&dead] >= 1_000, "the dead replica's last contact grows: {seen:?}");
    assert!(seen[&live] < seen[&dead], "the live one is heard since: {seen:?}");
    let text = cluster.replicas[&leader].prometheus("node=\"t\"", true);
    assert!(
        text.contains(&format!(
            "concord_replica_last_contact_seconds{{node=\"t\",replica=\"{dead}\"}}"
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_acknowledges_nothing_and_nothing_diverges() {
    let mut cluster = Cluster::start(3, 10_000).await;
    cluster.write(b"before").await;
    let old = cluster.leader().await;
    let others: Vec<u64> = cluster.replicas.keys().copied().filter(|id| *id != old).collect();
    cluster.router.isolate(old, others.clone());

    // The cut-off leader is asked to write: it must not say the write is durable.
    let cut_off = cluster.replicas[&old].raft().clone();
    let pending = tokio::spawn(async move { cut_off.client_write(b"isolated".to_vec()).await });

    // The majority side elects a leader and goes on.
    let majority = {
        let mut new = None;
        for _ in 0..750 {
            let leaders: Vec<Option<u64>> =
                others.iter().map(|id| cluster.replicas[id].status().leader).collect();
            if let Some(Some(l)) = leaders.first() {
                if *l != old && leaders.iter().all(|x| *x == Some(*l)) {
                    new = Some(*l);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        new.expect("the majority elects a leader")
    };
    cluster.replicas[&majority].write(b"after".to_vec()).await.expect("the majority commits");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "the isolated leader answered while cut off");

    cluster.router.heal();
    let answer = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the old leader answers once healed")
        .unwrap();
    assert!(answer.is_err(), "its write was never committed: {answer:?}");
    cluster.all_applied(&[b"before".to_vec(), b"after".to_vec()]).await;
    let _ = &mut cluster;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_the_purged_log_catches_up_by_snapshot() {
    let mut cluster = Cluster::start(3, 20).await;
    let leader = cluster.leader().await;
    let behind = cluster.replicas.keys().copied().find(|id| *id != leader).unwrap();
    cluster.kill(behind).await;
    let mut expected = Vec::new();
    for i in 0..200 {
        cluster.write(&command(i)).await;
        expected.push(command(i));
    }
    cluster.all_applied(&expected).await;
    // Snapshots every 20 entries, at most 1,000 kept after one: force the purge past what
    // the stopped replica has.
    let raft = cluster.replicas[&leader].raft().clone();
    raft.trigger().snapshot().await.unwrap();
    raft.trigger().purge_log(150).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    cluster.start_replica(behind).await.unwrap();
    cluster.all_applied(&expected).await;
    let ledger = cluster.replicas[&behind].machine();
    assert_eq!(commands(&ledger.lock().unwrap()), expected);
    let installed = installed_snapshot(&cluster.replicas[&behind]).await;
    assert!(
        installed.is_some_and(|s| s.index >= 150),
        "it was brought up by the leader's snapshot, not by entries: {installed:?}"
    );

    // And its own directory now holds it: a restart needs nothing from the leader's log.
    cluster.kill(behind).await;
    cluster.start_replica(behind).await.unwrap();
    cluster.all_applied(&expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_another_replica_or_cluster_is_refused_untouched() {
    let mut cluster = Cluster::start(3, 10_000).await;
    cluster.write(b"kept").await;
    cluster.kill(2).await;
    let dir_of_2 = cluster.options(2).dir;
    let before: Vec<(String, u64)> = listing(&dir_of_2);

    // Replica 3's configuration pointed at replica 2's directory.
    let mut wrong = cluster.options(3);
    wrong.dir = dir_of_2.clone();
    let error = Replica::start(wrong, Ledger::default(), cluster.router.wire(3)).await.unwrap_err();
    assert!(matches!(&error, StartError::Store(OpenStoreError::NotOurs(_))), "refused: {error}");
    assert!(error.to_string().contains("replica = 2"), "names the replica: {error}");

    // Replica 2 of another cluster.
    let mut other = cluster.options(2);
    other.cluster = "another-cluster".into();
    let error = Replica::start(other, Ledger::default(), cluster.router.wire(2)).await.unwrap_err();
    assert!(error.to_string().contains("test-cluster"), "names the cluster: {error}");
    assert_eq!(listing(&dir_of_2), before, "nothing was written");
}

fn listing(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len())
        })
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn configurations_that_cannot_work_are_refused_naming_the_replica() {
    let root = tempfile::tempdir().unwrap();
    let router = Router::default();
    let members = |ids: &[u64]| -> BTreeMap<u64, String> {
        ids.iter().map(|id| (*id, format!("host-{id}"))).collect()
    };
    let start = |id: u64, members: BTreeMap<u64, String>| {
        let options = Options::new("c", id, root.path().join(format!("r{id}")), members);
        Replica::start(options, Ledger::default(), router.wire(id))
    };
    let even = start(1, members(&[1, 2])).await.unwrap_err().to_string();
    assert!(even.contains("odd number"), "{even}");
    let stranger = start(4, members(&[1, 2, 3])).await.unwrap_err().to_string();
    assert!(stranger.contains("replica 4 is not in the configuration"), "{stranger}");
    let mut twice = members(&[1, 2, 3]);
    twice.insert(3, "host-2".into());
    let claimed = start(1, twice).await.unwrap_err().to_string();
    assert!(claimed.contains("replicas 2 and 3 both claim"), "{claimed}");
    assert!(!root.path().join("r1").exists(), "nothing was created");
}

/// The largest file of a replica's log: flipping a byte in its middle is damage no crash makes.
fn damage_log(dir: &std::path::Path) -> std::path::PathBuf {
    let log = dir.join("log");
    let segment = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&segment, bytes).unwrap();
    segment
}

/// The repair ARCHITECTURE.md describes (the replicated coordinator log): a replica whose log is
/// refused as damaged is taken out of the configuration, its directory wiped, and it is
/// started as a joiner and added back; the leader brings it up by snapshot. Never a plain
/// restart on an empty directory, which would forget whom it voted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_damaged_log_is_refused_and_rejoins_from_the_leader() {
    let mut cluster = Cluster::start(3, 20).await;
    let mut expected = Vec::new();
    for i in 0..100 {
        cluster.write(&command(i)).await;
        expected.push(command(i));
    }
    cluster.all_applied(&expected).await;
    let leader = cluster.leader().await;
    let victim = cluster.replicas.keys().copied().find(|id| *id != leader).unwrap();
    cluster.kill(victim).await;
    let dir = cluster.options(victim).dir;
    let segment = damage_log(&dir);
    let damaged = std::fs::read(&segment).unwrap();
    let refused = cluster.start_replica(victim).await.unwrap_err();
    assert!(matches!(refused, StartError::Store(_)), "refused as damaged: {refused}");
    assert_eq!(std::fs::read(&segment).unwrap(), damaged, "the damaged log is left as it was");

    // Wiped and started plainly, it would propose a new cluster and could vote twice in a
    // term: the leader has matched entries on its log, so it is refused, nothing written.
    std::fs::remove_dir_all(&dir).unwrap();
    let lost = cluster.start_replica(victim).await.unwrap_err();
    assert!(
        matches!(&lost, StartError::Config(why) if why.contains("were lost") && why.contains(&format!("replica {leader}"))),
        "refused as a lost log: {lost}"
    );
    assert!(!dir.exists(), "nothing written: {:?}", std::fs::read_dir(&dir).map(Iterator::count));

    // Only the leader changes the configuration.
    let follower = cluster.replicas.keys().copied().find(|id| *id != leader).unwrap();
    let answer = cluster.replicas[&follower].remove_voter(victim).await;
    assert!(matches!(answer, Err(MembershipError::NotLeader(Some((l, _)))) if l == leader));

    cluster.replicas[&leader].remove_voter(victim).await.expect("removed");
    assert!(!cluster.replicas[&leader].voters().contains(&victim));
    for i in 100..150 {
        cluster.write(&command(i)).await;
        expected.push(command(i));
    }

    // The leader's log no longer reaches back to the start: the joiner needs a snapshot.
    let raft = cluster.replicas[&leader].raft().clone();
    raft.trigger().snapshot().await.unwrap();
    let mut snapshot = None;
    for _ in 0..250 {
        snapshot = raft.metrics().borrow().snapshot;
        if snapshot.is_some_and(|s| s.index >= 140) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snapshot = snapshot.expect("the leader took a snapshot");
    raft.trigger().purge_log(snapshot.index).await.unwrap();
    for _ in 0..250 {
        if raft.metrics().borrow().purged.is_some_and(|p| p.index >= snapshot.index) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut joining = cluster.options(victim);
    joining.bootstrap = false;
    cluster.start_with(joining).await.expect("a joiner starts on an empty directory");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cluster.replicas[&victim].status().term, 0, "a joiner stands for nothing");
    let address = cluster.members[&victim].clone();
    cluster.replicas[&leader].add_voter(victim, address).await.expect("added back");
    assert_eq!(cluster.replicas[&leader].voters().len(), 3);
    cluster.all_applied(&expected).await;
    let installed = installed_snapshot(&cluster.replicas[&victim]).await;
    assert!(
        installed.is_some_and(|s| s.index >= snapshot.index),
        "brought up by the leader's snapshot: {installed:?}, the leader's {snapshot:?}"
    );

    // It counts again: with the old leader gone, the two left elect and commit.
    cluster.kill(leader).await;
    let new = cluster.leader().await;
    assert_ne!(new, leader);
    cluster.write(b"after the repair").await;
    expected.push(b"after the repair".to_vec());
    cluster.all_applied(&expected).await;
}
