//! A single shard, driven through its real 2PC participant core, against a `BTreeMap` model:
//! random commits (puts and deletes), point reads and scans at the newest and at older
//! snapshots, garbage collection, checkpoints and restarts from the log.

use std::collections::BTreeMap;

use concord_commit::two_phase::{Config, Msg, Timer};
use concord_commit::{Checkpoint, Command, Core, Input};
use concord_kv::{
    Key, KeyRange, KvChange, KvRecord, MvccShard, ShardParticipant, Timestamp, Value,
};
use concord_types::{Decision, NodeId, TxnId};

const MAX_OFFSET: u64 = 5;

/// splitmix64: enough randomness for a model test, and reproducible from the seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Harness {
    shard: ShardParticipant,
    log: Vec<KvRecord>,
    clock: u64,
    sequence: u32,
    /// The model: the whole map as of each commit timestamp.
    model: BTreeMap<u64, BTreeMap<Key, Value>>,
    gc_point: u64,
}

impl Harness {
    fn new() -> Self {
        let shard = ShardParticipant::with_resource(
            NodeId(1),
            Config::default(),
            MvccShard::new(MAX_OFFSET),
        );
        let mut h = Harness {
            shard,
            log: Vec::new(),
            clock: 10,
            sequence: 0,
            model: BTreeMap::new(),
            gc_point: 0,
        };
        h.model.insert(0, BTreeMap::new());
        h.restart();
        h
    }

    fn tick(&mut self) -> Timestamp {
        self.clock += 1;
        self.shard.resource_mut().set_physical_time(self.clock);
        Timestamp::new(self.clock, 0)
    }

    fn handle(
        &mut self,
        input: Input<Msg<KvChange>, KvRecord, Timer, KvChange>,
    ) -> Vec<Command<Msg<KvChange>, KvRecord, Timer>> {
        let mut out = Vec::new();
        self.shard.handle(input, &mut out);
        out
    }

    fn restart(&mut self) {
        let records = self.log.clone();
        self.handle(Input::Restart { records });
        self.shard.resource_mut().set_physical_time(self.clock);
        self.shard.resource_mut().restarted();
        // Writes wait out the maximum offset after a restart.
        self.clock += MAX_OFFSET + 1;
    }

    fn checkpoint(&mut self) {
        self.log = self.shard.live_records();
    }

    fn commit(&mut self, writes: Vec<(Key, Option<Value>)>) {
        let start = self.clock;
        let commit_ts = self.tick();
        self.sequence += 1;
        let txn = TxnId { coordinator: NodeId(0), epoch: 1, sequence: self.sequence };
        let change = KvChange {
            start_ts: Timestamp::new(start, 0),
            commit_ts,
            writes: writes.clone(),
            ..KvChange::default()
        };
        let mut pending = self.handle(Input::Message {
            from: NodeId(0),
            msg: Msg::CommitOnePhase { txn, writes: change },
        });
        let mut decision = None;
        while let Some(command) = pending.pop() {
            match command {
                Command::Persist { record, .. } => {
                    self.log.push(record.clone());
                    pending.extend(self.handle(Input::Persisted(record)));
                }
                Command::Send { msg: Msg::OnePhaseResult { decision: d, .. }, .. } => {
                    decision = Some(d);
                }
                _ => {}
            }
        }
        assert_eq!(decision, Some(Decision::Commit), "a conflict-free one-phase commit commits");
        let mut next = self.model.values().next_back().cloned().unwrap_or_default();
        for (key, value) in writes {
            match value {
                Some(v) => next.insert(key, v),
                None => next.remove(&key),
            };
        }
        self.model.insert(commit_ts.wall, next);
    }

    fn expected_at(&self, wall: u64) -> &BTreeMap<Key, Value> {
        self.model.range(..=wall).next_back().map(|(_, m)| m).expect("the empty map at 0")
    }

    fn check_read(&mut self, rng: &mut Rng) {
        let now = self.tick();
        // A snapshot between the GC point and now.
        let wall = self.gc_point + rng.below(now.wall - self.gc_point + 1);
        let ts = Timestamp::new(wall, 0);
        let expected = self.expected_at(wall).clone();
        let key = key(rng.below(20));
        let got = self.shard.resource_mut().get(&key, ts).expect("no intents, within the GC point");
        assert_eq!(got.as_ref(), expected.get(&key), "get {key:?} at {wall}");
        let range = KeyRange::new(crate::key(rng.below(20)), Some(crate::key(rng.below(25))));
        let limit = usize::try_from(rng.below(8)).expect("small") + 1;
        let (rows, exhausted) = self.shard.resource_mut().scan(&range, ts, limit).expect("scan");
        let want: Vec<(Key, Value)> = expected
            .range::<[u8], _>(range.bounds())
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(rows, want, "scan {range:?} limit {limit} at {wall}");
        let total = expected.range::<[u8], _>(range.bounds()).count();
        if exhausted {
            assert!(total <= limit);
        }
    }
}

fn key(i: u64) -> Key {
    format!("k{i:02}").into_bytes()
}

#[test]
fn a_shard_matches_a_btreemap_through_commits_gc_checkpoints_and_restarts() {
    for seed in 0..40 {
        let mut rng = Rng(seed);
        let mut h = Harness::new();
        for _ in 0..400 {
            match rng.below(20) {
                0..=8 => {
                    let n = rng.below(4) + 1;
                    let mut writes: BTreeMap<Key, Option<Value>> = BTreeMap::new();
                    for _ in 0..n {
                        let value = (rng.below(4) > 0).then(|| rng.next().to_string().into_bytes());
                        writes.insert(key(rng.below(20)), value);
                    }
                    h.commit(writes.into_iter().collect());
                }
                9..=15 => h.check_read(&mut rng),
                16 => h.checkpoint(),
                17 => h.restart(),
                18 => {
                    let safe = h.gc_point + rng.below(h.clock - h.gc_point + 1) / 2;
                    h.shard.resource_mut().collect_garbage(Timestamp::new(safe, 0));
                    h.gc_point = safe;
                }
                _ => {
                    h.checkpoint();
                    h.restart();
                }
            }
        }
        // Replaying the whole log and replaying a checkpoint rebuild the same versions.
        let from_log = h.shard.resource().versions().clone();
        h.restart();
        let replayed = h.shard.resource().versions().clone();
        h.checkpoint();
        h.restart();
        assert_eq!(h.shard.resource().versions(), &replayed, "seed {seed}: checkpoint = log");
        // GC may have dropped versions the replay brings back; what any snapshot at or after the
        // GC point sees is the same.
        for (key, versions) in &from_log {
            let newest = versions.last().map(|v| v.value.clone());
            let again = replayed.get(key).and_then(|v| v.last()).map(|v| v.value.clone());
            assert_eq!(newest, again, "seed {seed}: newest version of {key:?}");
        }
    }
}
