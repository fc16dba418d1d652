//! The entry points Concord's fuzzers drive: every decoder and handler that bytes from outside
//! reach — peer-link and call-link frames, log records and checkpoints, `concord.toml` and
//! `databases.toml`, saga start requests, HTTP requests — and the protocol cores fed whatever
//! a forged peer could send. Each function must return for any input: a panic is a bug (the
//! door validates, the core asserts only what input cannot reach).
//!
//! `fuzz/fuzz_targets/*.rs` calls these under libFuzzer (`scripts/fuzz.sh`, bounded, in CI);
//! `tests/corpus.rs` replays `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` in the
//! ordinary test run.

use concord_commit::{paxos_commit, two_phase, Checkpoint, Command, Core, Input};
use concord_kv::{KvChange, KvSnapshot, MvccShard};
use concord_types::codec::Encode;
use concord_types::NodeId;

/// One fuzz target: bytes in, and it returns (a panic is the bug).
pub type Target = fn(&[u8]);

/// The fuzz targets, by name: what `fuzz/fuzz_targets/<name>.rs` runs and what the corpus test
/// replays.
pub const TARGETS: &[(&str, Target)] = &[
    ("peer_frames", peer_frames),
    ("call_frames", call_frames),
    ("log_records", log_records),
    ("config", config),
    ("saga_start", saga_start),
    ("http_request", http_request),
    ("participant_messages", participant_messages),
    ("access", access),
    ("replica_link", replica_link),
];

type KvMsg2pc = two_phase::Msg<KvChange>;
type KvMsgPaxos = paxos_commit::Msg<KvChange>;

/// Peer-link bytes (after the hello), decoded as every engine's message type.
pub fn peer_frames(data: &[u8]) {
    let _ = concord_node::fuzzing::peer_frames::<KvMsg2pc>(data);
    let _ = concord_node::fuzzing::peer_frames::<two_phase::Msg>(data);
    let _ = concord_node::fuzzing::peer_frames::<KvMsgPaxos>(data);
    let _ = concord_node::fuzzing::peer_frames::<paxos_commit::Msg>(data);
}

/// A replica link's request or reply (after the hello, one frame's bytes), or a log entry's
/// batch of commands: decoded as each,
/// and what decodes must encode to bytes that decode and encode to the same bytes again.
pub fn replica_link(data: &[u8]) {
    use concord_replication::codec;
    if let Ok(request) = codec::decode_request(data) {
        let once = codec::encode_request(&request);
        let again = codec::decode_request(&once).expect("what was encoded decodes");
        assert_eq!(codec::encode_request(&again), once, "a request changed through the codec");
    }
    // A log entry's payload, as a state machine unpacks it.
    if let Ok(commands) = codec::decode_batch(data) {
        let owned: Vec<Vec<u8>> = commands.iter().map(|c| c.to_vec()).collect();
        assert_eq!(codec::encode_batch(&owned), data, "a batch is exactly its encoding");
    }
    if let Ok(reply) = codec::decode_reply(data) {
        let once = codec::encode_reply(&reply);
        let again = codec::decode_reply(&once).expect("what was encoded decodes");
        assert_eq!(codec::encode_reply(&again), once, "a reply changed through the codec");
    }
    // The coordinator's record machine: any command applies or is counted malformed, never
    // half; any snapshot restores whole or is refused, and what restored snapshots again.
    use concord_replication::{Machine as _, RecordLog};
    let mut log = RecordLog::default();
    log.apply(1, data);
    assert!(log.malformed() <= 1);
    let mut restored = RecordLog::default();
    if restored.restore(data).is_ok() {
        let mut again = RecordLog::default();
        again.restore(&restored.snapshot()).expect("a snapshot taken restores");
        assert_eq!(again.records(), restored.records(), "records changed through a snapshot");
        assert_eq!(again.timestamp_bound(), restored.timestamp_bound());
        assert_eq!(again.last_index(), restored.last_index());
    }
}

/// Call-link bytes (after the magic): frames, their headers and every request body.
pub fn call_frames(data: &[u8]) {
    let _ = concord_node::fuzzing::call_frames(data);
}

/// Decodes `bytes` as a `T`; if that works, encoding it again must decode to the same value.
fn round_trip<T: Encode + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(value) = T::from_bytes(bytes) {
        let again = T::from_bytes(&value.to_bytes()).expect("what was encoded decodes");
        assert_eq!(again, value, "a record changed through encode and decode");
    }
}

/// A log segment's bytes: the recovery scan, then every payload (and the bytes themselves, as
/// a record whose checksum held but whose contents are anything) as every record type,
/// checkpoints included.
pub fn log_records(data: &[u8]) {
    let mut payloads = vec![data];
    if let Ok(scanned) = concord_wal::scan(data) {
        payloads.extend(scanned.payloads);
    }
    for payload in payloads {
        round_trip::<two_phase::Record<KvChange, KvSnapshot>>(payload);
        round_trip::<two_phase::Record>(payload);
        round_trip::<paxos_commit::Record<KvChange, KvSnapshot>>(payload);
        round_trip::<paxos_commit::Record>(payload);
        round_trip::<KvMsg2pc>(payload);
        round_trip::<KvMsgPaxos>(payload);
    }
}

/// Configuration files: `concord.toml` and `databases.toml`.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = concord_node::config::ClusterConfig::parse(text) {
        // What parses must say the same when written back.
        let again = concord_node::config::ClusterConfig::parse(&config.to_toml());
        assert_eq!(again.ok().as_ref(), Some(&config), "concord.toml did not survive to_toml");
    }
    let _ = concord_db_coordinator::config::DatabasesConfig::parse(text);
}

/// A saga start request (the body of `POST /v1/sagas`): parsed, checked, and if accepted,
/// started and replayed by the orchestrator core, whose arithmetic must hold for any value
/// the door lets through.
pub fn saga_start(data: &[u8]) {
    use concord_saga::orchestrator::{Input as SagaInput, Orchestrator};
    let Ok(request) = serde_json::from_slice::<concord_orchestrator::StartRequest>(data) else {
        return;
    };
    let Ok(def) = request.definition() else { return };
    let mut core = Orchestrator::new();
    let mut out = Vec::new();
    let saga = request.id.clone().unwrap_or_else(|| "fuzz".into());
    let start = SagaInput::Start { saga, def, payload: String::new(), now_us: u64::MAX / 2 };
    core.handle(start, &mut out);
    let records: Vec<_> = out
        .iter()
        .filter_map(|c| match c {
            concord_saga::orchestrator::Command::Persist { record, .. } => Some(record.clone()),
            _ => None,
        })
        .collect();
    // What a store shows of it, from the records alone, is what the core shows.
    if !records.is_empty() {
        let stored = concord_saga::view_of_records(&records).expect("a started saga has a view");
        let mut live = core.view(&stored.saga).expect("the core drives it");
        live.current = None;
        assert_eq!(stored, live, "the store's view differs from the core's");
    }
    let mut replayed = Orchestrator::new();
    replayed.handle(SagaInput::Restart { records, now_us: u64::MAX - 1 }, &mut Vec::new());
}

/// An HTTP request as the small server reads it (the database coordinator's and the saga
/// orchestrator's APIs).
pub fn http_request(data: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let mut stream = data;
    if let Ok(request) = runtime.block_on(concord_http::read_request(&mut stream)) {
        // A saga listing's filters and cursor, whatever the target holds.
        let _ = concord_orchestrator::check_listing(&request.target, u64::MAX / 3);
        let _ = concord_orchestrator::check_listing(&request.target, 0);
    }
}

/// What a caller of the HTTP services controls at the door: a statement for the database
/// coordinator (classified before any database sees it) and an `Authorization` header (looked
/// up in a token table).
pub fn access(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = concord_participants::statements::classify(&text);
    // A Redis branch's statements (a configured database; nothing connects to it).
    let redis = concord_participants::config::DatabaseConfig {
        name: "points".into(),
        kind: concord_participants::config::Kind::Redis,
        url: "redis://127.0.0.1:1/0".into(),
        schema_changes: false,
    };
    let redis = concord_participants::database::Database::new(&redis, std::time::Duration::ZERO)
        .expect("a Redis database");
    let _ = redis.check_statement(&text, false);
    let table = concord_types::tokens::TokenTable::new(&[concord_types::tokens::TokenConfig {
        name: "app".into(),
        role: concord_types::tokens::ClientRole::Client,
        sha256: concord_types::tokens::token_sha256("concord_fuzz"),
    }]);
    let _ = table.find_bearer(Some(&text));
    let _ = table.find(data);
}

/// Whatever a forged or buggy peer could send, fed to the protocol cores: a 2PC participant
/// and coordinator, a Paxos Commit participant, acceptor and coordinator, each over the
/// key-value store's shard. `data` is a sequence of steps: `[0..=127][sender][length][message]`
/// delivers a message; a first byte of 128 or more makes every record a core asked to force so
/// far durable (`Persisted`), as a driver's sync would — so messages also arrive while records
/// are pending. A core may ignore nonsense; it must not panic on it.
pub fn participant_messages(data: &[u8]) {
    let me = NodeId(1);
    let acceptors = vec![NodeId(4), NodeId(5), NodeId(6)];
    let paxos_config = paxos_commit::Config::new(acceptors);
    let mut cores = Cores {
        two_pc: Pending::new(two_phase::Participant::<MvccShard>::new(
            me,
            two_phase::Config::default(),
        )),
        coordinator: Pending::new(two_phase::Coordinator::<KvChange, KvSnapshot>::new(
            NodeId(0),
            two_phase::Config::default(),
        )),
        paxos: Pending::new(paxos_commit::Participant::<MvccShard>::new(me, paxos_config.clone())),
        acceptor: Pending::new(paxos_commit::Acceptor::<KvChange, KvSnapshot>::new(
            NodeId(4),
            paxos_config.clone(),
        )),
        paxos_coordinator: Pending::new(paxos_commit::Coordinator::<KvChange, KvSnapshot>::new(
            NodeId(0),
            paxos_config,
        )),
    };
    cores.each_sync();
    let mut rest = data;
    loop {
        match rest {
            [step, tail @ ..] if *step >= 128 => {
                cores.each_sync();
                rest = tail;
            }
            [_, from, length, tail @ ..] => {
                let length = usize::from(*length).min(tail.len());
                let (body, after) = tail.split_at(length);
                rest = after;
                let from = NodeId(u32::from(*from % 8));
                if let Ok(msg) = KvMsg2pc::from_bytes(body) {
                    cores.two_pc.input(Input::Message { from, msg: msg.clone() });
                    cores.coordinator.input(Input::Message { from, msg });
                }
                if let Ok(msg) = KvMsgPaxos::from_bytes(body) {
                    cores.paxos.input(Input::Message { from, msg: msg.clone() });
                    cores.acceptor.input(Input::Message { from, msg: msg.clone() });
                    cores.paxos_coordinator.input(Input::Message { from, msg });
                }
            }
            _ => break,
        }
    }
    cores.each_sync();
    // And what they would write at a checkpoint rebuilds them.
    let _ = cores.two_pc.core.live_records();
    let _ = cores.paxos.core.live_records();
    let _ = cores.acceptor.core.live_records();
}

struct Cores {
    two_pc: Pending<two_phase::Participant<MvccShard>>,
    coordinator: Pending<two_phase::Coordinator<KvChange, KvSnapshot>>,
    paxos: Pending<paxos_commit::Participant<MvccShard>>,
    acceptor: Pending<paxos_commit::Acceptor<KvChange, KvSnapshot>>,
    paxos_coordinator: Pending<paxos_commit::Coordinator<KvChange, KvSnapshot>>,
}

impl Cores {
    fn each_sync(&mut self) {
        self.two_pc.sync();
        self.coordinator.sync();
        self.paxos.sync();
        self.acceptor.sync();
        self.paxos_coordinator.sync();
    }
}

/// A core and the records it asked to force that are not durable yet (the first sync makes
/// them durable, answering `Restart` first).
struct Pending<C: Core> {
    core: C,
    started: bool,
    forced: Vec<C::Record>,
}

impl<C: Core> Pending<C>
where
    C::Record: Clone,
{
    fn new(core: C) -> Self {
        Pending { core, started: false, forced: Vec::new() }
    }

    fn input(&mut self, input: Input<C::Msg, C::Record, C::Timer, C::Change>) {
        if !self.started {
            self.started = true;
            self.input(Input::Restart { records: Vec::new() });
        }
        let mut out: Vec<Command<C::Msg, C::Record, C::Timer>> = Vec::new();
        self.core.handle(input, &mut out);
        for command in out {
            if let Command::Persist { record, durability: concord_commit::Durability::Forced } =
                command
            {
                self.forced.push(record);
            }
        }
    }

    /// Makes every pending forced record durable, and those their answers force, a bounded
    /// number of rounds.
    fn sync(&mut self) {
        if !self.started {
            self.started = true;
            self.input(Input::Restart { records: Vec::new() });
        }
        for _ in 0..8 {
            let durable = std::mem::take(&mut self.forced);
            if durable.is_empty() {
                return;
            }
            for record in durable {
                self.input(Input::Persisted(record));
            }
        }
    }
}
