//! Replays every checked-in fuzz input through its target: the seed corpus
//! (`fuzz/corpus/<target>/`) and every input a fuzzer once crashed on
//! (`fuzz/regressions/<target>/`), so a fixed crash stays fixed in the ordinary test run. The
//! seed corpus is written by `write_seed_corpus` (ignored; run it by name to regenerate).

use std::path::{Path, PathBuf};

use concord_commit::{paxos_commit, two_phase};
use concord_kv::{Isolation, KeyRange, KvChange, KvSnapshot, Timestamp};
use concord_types::codec::Encode;
use concord_types::{Decision, NodeId, TxnId, Vote, Write};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).expect("readable"))).collect()
}

#[test]
fn every_checked_in_input_runs_through_its_target_without_a_panic() {
    let mut ran = 0;
    for (name, target) in concord_fuzzing::TARGETS {
        let seeds = inputs("corpus", name);
        assert!(!seeds.is_empty(), "no seed corpus for {name} in {}", fuzz_dir().display());
        for (path, bytes) in seeds.iter().chain(inputs("regressions", name).iter()) {
            let outcome = std::panic::catch_unwind(|| target(bytes));
            assert!(outcome.is_ok(), "{name} panicked on {}", path.display());
            ran += 1;
        }
    }
    assert!(ran >= concord_fuzzing::TARGETS.len());
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn txn(sequence: u32) -> TxnId {
    TxnId { coordinator: NodeId(0), epoch: 1, sequence }
}

fn change() -> KvChange {
    KvChange {
        start_ts: Timestamp::new(10, 0),
        commit_ts: Timestamp::new(20, 1),
        isolation: Isolation::Serializable,
        writes: vec![(b"k".to_vec(), Some(b"v".to_vec())), (b"d".to_vec(), None)],
        reads: vec![b"r".to_vec()],
        ranges: vec![KeyRange::new(b"a".to_vec(), Some(b"c".to_vec()))],
    }
}

fn two_pc_messages() -> Vec<two_phase::Msg<KvChange>> {
    use two_phase::Msg;
    vec![
        Msg::Prepare {
            txn: txn(1),
            peers: vec![NodeId(1), NodeId(2)],
            writes: change(),
            early_ack: false,
        },
        Msg::Vote { txn: txn(1), vote: Vote::Yes },
        Msg::Decision { txn: txn(1), decision: Decision::Commit },
        Msg::Ack { txn: txn(1) },
        Msg::Inquire { txn: txn(2) },
        Msg::CommitOnePhase { txn: txn(3), writes: change() },
        Msg::OnePhaseResult { txn: txn(3), decision: Decision::Abort },
        Msg::Forget { epoch: 1, below: 3 },
        Msg::Forgotten { txn: txn(2) },
    ]
}

fn paxos_messages() -> Vec<paxos_commit::Msg<KvChange>> {
    use paxos_commit::{Msg, Value};
    let participants = vec![NodeId(1), NodeId(2)];
    vec![
        Msg::Prepare {
            txn: txn(1),
            participants: participants.clone(),
            writes: change(),
            wide: true,
        },
        Msg::Phase2a {
            txn: txn(1),
            ballot: 0,
            values: vec![(NodeId(1), Value::Prepared)],
            leader: NodeId(0),
            participants: participants.clone(),
        },
        Msg::Phase2b { txn: txn(1), ballot: 0, values: vec![(NodeId(1), Value::Prepared)] },
        Msg::Phase1a { txn: txn(1), ballot: 7, leader: NodeId(4) },
        Msg::Phase1b { txn: txn(1), ballot: 7, accepted: vec![(NodeId(1), 0, Value::Aborted)] },
        Msg::Reject { txn: txn(1), promised: 9 },
        Msg::Decision { txn: txn(1), decision: Decision::Commit },
        Msg::Inquire { txn: txn(1), participants },
        Msg::CommitOnePhase { txn: txn(2), writes: change() },
        Msg::OnePhaseResult { txn: txn(2), decision: Decision::Commit },
    ]
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

#[test]
#[ignore = "writes fuzz/corpus; run by name to regenerate the seeds"]
fn write_seed_corpus() {
    // Peer frames: every message of each protocol, several to a buffer.
    let two_pc = two_pc_messages();
    let paxos = paxos_messages();
    let framed = |bodies: Vec<Vec<u8>>| bodies.iter().flat_map(|b| frame(b)).collect::<Vec<u8>>();
    write("peer_frames", "2pc", &framed(two_pc.iter().map(Encode::to_bytes).collect()));
    write("peer_frames", "paxos", &framed(paxos.iter().map(Encode::to_bytes).collect()));
    let deltas = two_phase::Msg::Prepare {
        txn: txn(4),
        peers: vec![NodeId(1)],
        writes: vec![Write { key: 7, delta: -3 }],
        early_ack: true,
    };
    write("peer_frames", "deltas", &frame(&deltas.to_bytes()));

    // Call frames: id · method · request, a few methods.
    use concord_node::proto;
    use prost_free::encode_get;
    let mut calls = Vec::new();
    for (method, body) in
        [(2u8, encode_get()), (7u8, vec![8, 1]), (1u8, Vec::new()), (99u8, vec![1, 2])]
    {
        let mut call = 5u64.to_le_bytes().to_vec();
        call.push(method);
        call.extend_from_slice(&body);
        calls.extend(frame(&call));
    }
    write("call_frames", "calls", &calls);
    let _ = proto::KvAbortRequest { session: 1 };

    // Log records: real frames (length, crc32c, payload) of each record kind.
    let records: Vec<Vec<u8>> = vec![
        two_phase::Record::<KvChange, KvSnapshot>::EpochStarted { epoch: 3 }.to_bytes(),
        two_phase::Record::<KvChange, KvSnapshot>::Prepared {
            txn: txn(1),
            peers: vec![NodeId(2)],
            writes: change(),
            early_ack: true,
        }
        .to_bytes(),
        two_phase::Record::<KvChange, KvSnapshot>::Committed { txn: txn(1) }.to_bytes(),
        two_phase::Record::<KvChange, KvSnapshot>::Snapshot {
            values: KvSnapshot::default(),
            decided: vec![(txn(1), Decision::Commit)],
        }
        .to_bytes(),
        two_phase::Record::<KvChange, KvSnapshot>::Forgotten {
            coordinator: NodeId(0),
            epoch: 1,
            below: 9,
        }
        .to_bytes(),
        two_phase::Record::<KvChange, KvSnapshot>::KeptOutcomes {
            kept: vec![(txn(2), Decision::Abort)],
        }
        .to_bytes(),
        paxos_commit::Record::<KvChange, KvSnapshot>::Accepted {
            txn: txn(1),
            ballot: 7,
            values: vec![(NodeId(1), paxos_commit::Value::Prepared)],
            participants: vec![NodeId(1)],
        }
        .to_bytes(),
    ];
    let mut segment = Vec::new();
    for record in &records {
        concord_wal::append_frame(&mut segment, record);
    }
    write("log_records", "segment", &segment);
    write("log_records", "torn", &segment[..segment.len() - 3]);

    // Configuration files.
    let mut kv = concord_node::config::ClusterConfig::local("dev", 2, 7700);
    write("config", "delta", kv.to_toml().as_bytes());
    kv.kv = Some(concord_node::config::KvConfig::default());
    write("config", "kv", kv.to_toml().as_bytes());
    write("config", "paxos", kv.clone().with_paxos_commit(3).to_toml().as_bytes());
    write(
        "config",
        "databases",
        b"cluster = \"t\"\nnode_id = 9\nlisten = \"127.0.0.1:7800\"\n[[database]]\nname = \"ledger\"\nkind = \"postgres\"\nurl = \"host=127.0.0.1 user=postgres dbname=test\"\n[recovery]\ninterval_ms = 5000\ngrace_ms = 30000\n",
    );

    // Saga starts.
    write(
        "saga_start",
        "order",
        br#"{"id":"order-1","name":"checkout","steps":[{"name":"reserve","action":"http://127.0.0.1:9001/reserve","compensation":"http://127.0.0.1:9001/release","timeout_ms":5000,"retry_base_ms":100,"retry_max_ms":5000},{"name":"charge","action":"http://127.0.0.1:9002/charge","compensation":"http://127.0.0.1:9002/refund"}],"deadline_ms":30000,"payload":{"order":1}}"#,
    );
    write(
        "saga_start",
        "tcc",
        br#"{"name":"t","kind":"tcc","steps":[{"name":"a","action":"http://h:1/try","compensation":"http://h:1/cancel","confirm":"http://h:1/confirm"}]}"#,
    );

    // HTTP requests.
    write("http_request", "post", b"POST /v1/sagas HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}");
    write("http_request", "get", b"GET /v1/sagas?running HTTP/1.1\r\nHost: x\r\n\r\n");

    // Message sequences for the cores: [0][from][length][message] steps, and 255 to sync.
    let step = |sequence: &mut Vec<u8>, from: u8, msg: &[u8]| {
        if let Ok(length) = u8::try_from(msg.len()) {
            sequence.extend_from_slice(&[0, from, length]);
            sequence.extend_from_slice(msg);
        }
    };
    let mut sequence = Vec::new();
    for msg in two_pc.iter().map(Encode::to_bytes).chain(paxos.iter().map(Encode::to_bytes)) {
        step(&mut sequence, 0, &msg);
        sequence.push(255);
    }
    write("participant_messages", "both", &sequence);
    // A prepare, then its decision before the prepare record is durable, then a sync.
    let mut racing = Vec::new();
    step(&mut racing, 0, &two_pc[0].to_bytes());
    step(&mut racing, 0, &two_pc[2].to_bytes());
    racing.push(255);
    write("participant_messages", "decision-while-preparing", &racing);

    // Replica links: one of every request and reply, a frame's bytes each.
    use concord_replication::codec;
    for (i, request) in codec::examples::requests().iter().enumerate() {
        write("replica_link", &format!("request-{i}"), &codec::encode_request(request));
    }
    for (i, reply) in codec::examples::replies().iter().enumerate() {
        write("replica_link", &format!("reply-{i}"), &codec::encode_reply(reply));
    }
}

/// A KvGetRequest's protobuf bytes, written by hand (field 1 session = 3, field 2 key = "k"),
/// so the test needs no protobuf dependency of its own.
mod prost_free {
    pub fn encode_get() -> Vec<u8> {
        vec![8, 3, 18, 1, b'k']
    }
}
