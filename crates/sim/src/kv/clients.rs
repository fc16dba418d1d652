//! Simulated clients: each runs one interactive transaction at a time at the gateway — reads
//! from shards at its snapshot, buffered writes, a commit through the coordinator core — and
//! records what it saw for the checkers.

use concord_check::bank::BankRead;
use concord_check::{EventType, MicroOp};
use concord_commit::Branch;
use concord_kv::{Key, KeyRange, Limits, ReadError, ShardMap, Transaction, Value};

use super::cluster::{shard_node, KvWorld, GATEWAY};
use super::protocol::KvProtocol;
use super::{KvSimConfig, KvWorkload};

pub(super) const BANK_ACCOUNTS: usize = 8;
/// Every account starts with this much (an absent key holds it).
const INITIAL_BALANCE: i64 = 100;
const LIST_KEYS: u64 = 6;
/// How long a reader waits for a prepared write before giving up (in 1 ms retries).
const MAX_BLOCKED_RETRIES: u32 = 50;

pub(super) fn bank_total() -> i64 {
    INITIAL_BALANCE * i64::try_from(BANK_ACCOUNTS).expect("few accounts")
}

fn account(i: usize) -> Key {
    format!("acct/{i:02}").into_bytes()
}

fn list_key(k: u64) -> Key {
    format!("la/{k}").into_bytes()
}

/// Keys spread evenly over the shards.
pub(super) fn shard_map(workload: KvWorkload, shards: usize) -> ShardMap {
    let splits = (1..shards)
        .map(|i| match workload {
            KvWorkload::Bank => account(i * BANK_ACCOUNTS / shards),
            KvWorkload::ListAppend => list_key(
                u64::try_from(i).expect("few") * LIST_KEYS / u64::try_from(shards).expect("few"),
            ),
        })
        .collect();
    ShardMap::new(splits).expect("increasing split points")
}

fn bank_range() -> KeyRange {
    KeyRange::new(b"acct/".to_vec(), Some(b"acct0".to_vec()))
}

fn balance(value: Option<&Value>) -> i64 {
    value.map_or(INITIAL_BALANCE, |v| {
        std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).expect("balances are decimal")
    })
}

fn list(value: Option<&Value>) -> Vec<u64> {
    let text =
        value.map(|v| String::from_utf8(v.clone()).expect("lists are text")).unwrap_or_default();
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("list elements are numbers"))
        .collect()
}

fn encode_list(items: &[u64]) -> Value {
    items.iter().map(u64::to_string).collect::<Vec<_>>().join(",").into_bytes()
}

#[derive(Debug)]
pub(super) enum Outcome {
    Committed,
    Failed(String),
    Unknown,
}

#[derive(Debug)]
enum Program {
    Transfer { from: usize, to: usize, amount: i64, balances: Vec<i64> },
    Audit { balances: Option<BankRead> },
    ListAppend { invoked: Vec<MicroOp>, results: Vec<MicroOp> },
}

#[derive(Debug)]
struct Session {
    txn: Transaction,
    program: Program,
    committing: bool,
    blocked: u32,
}

#[derive(Debug)]
pub(super) struct Clients {
    sessions: Vec<Option<Session>>,
    next_value: u64,
    workload: KvWorkload,
}

impl Clients {
    pub(super) fn new(config: &KvSimConfig) -> Self {
        Clients {
            sessions: (0..config.clients).map(|_| None).collect(),
            next_value: 0,
            workload: config.workload,
        }
    }

    fn new_program<P: KvProtocol>(&mut self, world: &mut KvWorld<P>) -> Program {
        match self.workload {
            KvWorkload::Bank => {
                if world.rng.chance(0.25) {
                    return Program::Audit { balances: None };
                }
                let n = u64::try_from(BANK_ACCOUNTS).expect("few");
                let from = usize::try_from(world.rng.below(n)).expect("few");
                let to = (from + 1 + usize::try_from(world.rng.below(n - 1)).expect("few"))
                    % BANK_ACCOUNTS;
                let amount = i64::try_from(world.rng.range(1, 40)).expect("small");
                Program::Transfer { from, to, amount, balances: Vec::new() }
            }
            KvWorkload::ListAppend => {
                let ops = world.rng.range(1, 4);
                let invoked = (0..ops)
                    .map(|_| {
                        let key = world.rng.below(LIST_KEYS);
                        if world.rng.chance(0.5) {
                            self.next_value += 1;
                            MicroOp::Append { key, value: self.next_value }
                        } else {
                            MicroOp::Read { key, value: None }
                        }
                    })
                    .collect();
                Program::ListAppend { invoked, results: Vec::new() }
            }
        }
    }

    pub(super) fn step<P: KvProtocol>(&mut self, world: &mut KvWorld<P>, client: usize) {
        if !world.gateway_up() {
            world.schedule_client(client, 5_000);
            return;
        }
        if self.sessions[client].is_none() {
            if world.now_us >= world.config.workload_us {
                return; // the workload is over for this client
            }
            let program = self.new_program(world);
            if let Program::ListAppend { invoked, .. } = &program {
                world.report.history.invoke(client as u64, invoked.clone(), world.now_us * 1_000);
            }
            let start_ts = world.gateway_now();
            let physical = world.physical_us(GATEWAY);
            let txn =
                Transaction::new(start_ts, world.config.isolation, physical, Limits::default());
            self.sessions[client] = Some(Session { txn, program, committing: false, blocked: 0 });
        }
        let session = self.sessions[client].as_mut().expect("just made");
        if session.committing {
            return;
        }
        match advance(world, session) {
            Ok(true) => commit(world, client, session),
            Ok(false) => {
                let delay = world.delay_us() + world.delay_us();
                world.schedule_client(client, delay);
            }
            Err(StopKind::Retry) => world.schedule_client(client, 1_000),
            Err(StopKind::Abort(reason)) => {
                world.report.failed += 1;
                *world.report.aborts_by_reason.entry(short(&reason)).or_default() += 1;
                self.end(world, client, EventType::Fail);
            }
        }
    }

    /// The coordinator's answer to a commit (or the gateway's for a read-only transaction).
    pub(super) fn finished<P: KvProtocol>(
        &mut self,
        world: &mut KvWorld<P>,
        client: usize,
        outcome: Outcome,
    ) {
        match outcome {
            Outcome::Committed => {
                world.report.committed += 1;
                self.end(world, client, EventType::Ok);
            }
            Outcome::Failed(reason) => {
                world.report.failed += 1;
                *world.report.aborts_by_reason.entry(short(&reason)).or_default() += 1;
                self.end(world, client, EventType::Fail);
            }
            Outcome::Unknown => {
                world.report.indeterminate += 1;
                self.end(world, client, EventType::Info);
            }
        }
    }

    fn end<P: KvProtocol>(&mut self, world: &mut KvWorld<P>, client: usize, kind: EventType) {
        let Some(session) = self.sessions[client].take() else { return };
        match session.program {
            Program::ListAppend { invoked, results } => {
                let ops = if kind == EventType::Ok { results } else { invoked };
                world.report.history.complete(client as u64, kind, ops, world.now_us * 1_000);
            }
            Program::Audit { balances: Some(read) } if kind == EventType::Ok => {
                world.report.bank_reads.push(read);
            }
            Program::Audit { .. } | Program::Transfer { .. } => {}
        }
        let think = world.rng.range(200, 2_000);
        world.schedule_client(client, think);
    }

    pub(super) fn gateway_crashed<P: KvProtocol>(&mut self, world: &mut KvWorld<P>) {
        for client in 0..self.sessions.len() {
            let Some(session) = &self.sessions[client] else { continue };
            let outcome = if session.committing {
                Outcome::Unknown
            } else {
                Outcome::Failed("the gateway crashed".into())
            };
            self.finished(world, client, outcome);
        }
    }

    /// After the quiet phase: one more read of everything, which must not be blocked.
    pub(super) fn final_read<P: KvProtocol>(&mut self, world: &mut KvWorld<P>) {
        let ts = world.gateway_now();
        let mut rows = Vec::new();
        for s in 0..world.config.shards {
            let physical = world.physical_us(shard_node(s));
            let range = world.map.range_of(s);
            let shard = world.shard_mut(s);
            shard.set_physical_time(physical);
            match shard.scan(&range, ts, usize::MAX) {
                Ok((found, _)) => rows.extend(found),
                Err(e) => world.report.violations.push(format!("final read of shard {s}: {e}")),
            }
        }
        match self.workload {
            KvWorkload::Bank => {
                let mut read = BankRead { balances: Default::default() };
                for i in 0..BANK_ACCOUNTS {
                    let key = account(i);
                    let value = rows.iter().find(|(k, _)| *k == key).map(|(_, v)| v);
                    read.balances.insert(String::from_utf8(key).expect("text"), balance(value));
                }
                world.report.bank_reads.push(read);
            }
            KvWorkload::ListAppend => {
                let ops: Vec<MicroOp> = (0..LIST_KEYS)
                    .map(|key| {
                        let k = list_key(key);
                        let value = rows.iter().find(|(row, _)| *row == k).map(|(_, v)| v);
                        MicroOp::Read { key, value: Some(list(value)) }
                    })
                    .collect();
                let process = u64::MAX / 2;
                let invoked = ops.iter().map(|op| match op {
                    MicroOp::Read { key, .. } => MicroOp::Read { key: *key, value: None },
                    other => other.clone(),
                });
                world.report.history.invoke(process, invoked.collect(), world.now_us * 1_000);
                world.report.history.complete(process, EventType::Ok, ops, world.now_us * 1_000);
            }
        }
    }
}

/// The words of a refusal before its first detail (a key, an id, a number), to group reasons.
fn short(reason: &str) -> String {
    let words: Vec<&str> = reason
        .split_whitespace()
        .filter(|w| {
            !w.starts_with('`') && !w.starts_with("0x") && !w.contains(|c: char| c.is_ascii_digit())
        })
        .take(8)
        .collect();
    words.join(" ")
}

/// Runs the session's next operation. `Ok(true)`: ready to commit.
fn advance<P: KvProtocol>(world: &mut KvWorld<P>, session: &mut Session) -> Result<bool, StopKind> {
    let physical = world.physical_us(GATEWAY);
    session.txn.check_alive(physical).map_err(|e| StopKind::Abort(e.to_string()))?;
    match &mut session.program {
        Program::Transfer { from, to, amount, balances } => {
            if balances.len() < 2 {
                let key = account(if balances.is_empty() { *from } else { *to });
                let value = read(world, &mut session.txn, &mut session.blocked, &key)?;
                balances.push(balance(value.as_ref()));
                return Ok(false);
            }
            if balances[0] >= *amount {
                let (a, b) = (balances[0] - *amount, balances[1] + *amount);
                put(&mut session.txn, account(*from), a.to_string().into_bytes())?;
                put(&mut session.txn, account(*to), b.to_string().into_bytes())?;
            }
            Ok(true)
        }
        Program::Audit { balances } => {
            let rows = scan(world, &mut session.txn, &mut session.blocked, &bank_range())?;
            let mut read = BankRead { balances: Default::default() };
            for i in 0..BANK_ACCOUNTS {
                let key = account(i);
                let value = rows.iter().find(|(k, _)| *k == key).map(|(_, v)| v);
                read.balances.insert(String::from_utf8(key).expect("text"), balance(value));
            }
            *balances = Some(read);
            Ok(true)
        }
        Program::ListAppend { invoked, results } => {
            let Some(op) = invoked.get(results.len()).cloned() else { return Ok(true) };
            match op {
                MicroOp::Append { key, value } => {
                    let k = list_key(key);
                    let current = read(world, &mut session.txn, &mut session.blocked, &k)?;
                    let mut items = list(current.as_ref());
                    items.push(value);
                    put(&mut session.txn, k, encode_list(&items))?;
                    results.push(MicroOp::Append { key, value });
                }
                MicroOp::Read { key, .. } => {
                    let current =
                        read(world, &mut session.txn, &mut session.blocked, &list_key(key))?;
                    results.push(MicroOp::Read { key, value: Some(list(current.as_ref())) });
                }
            }
            Ok(results.len() == invoked.len())
        }
    }
}

fn put(txn: &mut Transaction, key: Key, value: Value) -> Result<(), StopKind> {
    txn.put(key, value).map_err(|e| StopKind::Abort(e.to_string()))
}

/// Why a step stopped short.
enum StopKind {
    Retry,
    Abort(String),
}

fn read<P: KvProtocol>(
    world: &mut KvWorld<P>,
    txn: &mut Transaction,
    blocked: &mut u32,
    key: &[u8],
) -> Result<Option<Value>, StopKind> {
    if let Some(own) = txn.buffered(key) {
        return Ok(own.cloned());
    }
    txn.check_read(key).map_err(|e| StopKind::Abort(e.to_string()))?;
    let s = world.map.shard_of(key);
    if !world.reachable(s) {
        return Err(StopKind::Abort("shard unreachable".into()));
    }
    let physical = world.physical_us(shard_node(s));
    let shard = world.shard_mut(s);
    shard.set_physical_time(physical);
    let result = shard.get(key, txn.start_ts);
    let shard_clock = shard.clock().last();
    let value = handle_read(world, s, result, blocked)?;
    txn.record_read(key);
    witness(world, shard_clock)?;
    Ok(value)
}

fn scan<P: KvProtocol>(
    world: &mut KvWorld<P>,
    txn: &mut Transaction,
    blocked: &mut u32,
    range: &KeyRange,
) -> Result<Vec<(Key, Value)>, StopKind> {
    let limit = 100;
    let mut rows = Vec::new();
    for (s, piece) in world.map.pieces(range) {
        if !world.reachable(s) {
            return Err(StopKind::Abort("shard unreachable".into()));
        }
        let fetch = txn.scan_fetch_limit(&piece, limit - rows.len());
        let physical = world.physical_us(shard_node(s));
        let shard = world.shard_mut(s);
        shard.set_physical_time(physical);
        let result = shard.scan(&piece, txn.start_ts, fetch);
        let shard_clock = shard.clock().last();
        let (found, exhausted) = handle_read(world, s, result, blocked)?;
        witness(world, shard_clock)?;
        let (merged, complete) =
            txn.merge_scan(&piece, found, exhausted, limit - rows.len(), usize::MAX);
        rows.extend(merged);
        if !complete {
            break;
        }
    }
    Ok(rows)
}

/// Every this many retries, a blocked reader has the shard ask for the intent's outcome.
const RESOLVE_EVERY: u32 = 5;

fn handle_read<T, P: KvProtocol>(
    world: &mut KvWorld<P>,
    shard: usize,
    result: Result<T, ReadError>,
    blocked: &mut u32,
) -> Result<T, StopKind> {
    match result {
        Ok(value) => Ok(value),
        Err(ReadError::Blocked { holder, .. }) => {
            *blocked += 1;
            if blocked.is_multiple_of(RESOLVE_EVERY) {
                world.resolve_intent(shard, holder);
            }
            if *blocked > MAX_BLOCKED_RETRIES {
                Err(StopKind::Abort(format!("blocked by prepared transaction {holder}")))
            } else {
                Err(StopKind::Retry)
            }
        }
        Err(other) => Err(StopKind::Abort(other.to_string())),
    }
}

/// The gateway's clock takes in the shard's (the HLC receive rule).
fn witness<P: KvProtocol>(
    world: &mut KvWorld<P>,
    shard_clock: concord_kv::Timestamp,
) -> Result<(), StopKind> {
    let physical = world.physical_us(GATEWAY);
    world
        .gateway_clock
        .observe(shard_clock, physical)
        .map(|_| ())
        .map_err(|e| StopKind::Abort(e.to_string()))
}

fn commit<P: KvProtocol>(world: &mut KvWorld<P>, client: usize, session: &mut Session) {
    if session.txn.is_read_only() {
        // One consistent snapshot: nothing to validate or write.
        world.finish_later(client, Outcome::Committed);
        return;
    }
    let commit_ts = world.gateway_now();
    let branches = session
        .txn
        .changes(&world.map, commit_ts)
        .into_iter()
        .map(|(s, change)| Branch { node: shard_node(s), writes: change })
        .collect();
    session.committing = true;
    world.begin_commit(client, branches);
}
