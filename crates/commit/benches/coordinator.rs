//! The 2PC cores' CPU cost per transaction, without I/O: `cargo bench -p concord-commit`.
//! A coordinator runs one two-branch transaction from Begin to its last acknowledgement; a
//! participant one branch from PREPARE to its commit record. What the runtime adds on top —
//! encoding, the log, the network — is measured end to end by `concord bench transfer`.

use concord_commit::two_phase::{Config, Coordinator, Msg, Participant, Record, Timer};
use concord_commit::{Branch, Command, Core, Durability, Input};
use concord_types::{NodeId, RequestId, TxnId, Vote, Write};

fn main() {
    divan::main();
}

const C: NodeId = NodeId(0);
const P1: NodeId = NodeId(1);
const P2: NodeId = NodeId(2);

type Cmd = Command<Msg, Record, Timer>;

fn feed<N: Core<Msg = Msg, Record = Record, Timer = Timer, Change = Vec<Write>>>(
    node: &mut N,
    input: Input<Msg, Record, Timer>,
    out: &mut Vec<Cmd>,
) {
    out.clear();
    node.handle(input, out);
}

/// Answers every forced record at once, as a log that syncs instantly would.
fn persist_all<N: Core<Msg = Msg, Record = Record, Timer = Timer, Change = Vec<Write>>>(
    node: &mut N,
    out: &mut Vec<Cmd>,
) {
    let forced: Vec<Record> = out
        .iter()
        .filter_map(|c| match c {
            Command::Persist { record, durability: Durability::Forced } => Some(record.clone()),
            _ => None,
        })
        .collect();
    for record in forced {
        feed(node, Input::Persisted(record), out);
    }
}

#[divan::bench]
fn coordinator_two_branch_commit(bencher: divan::Bencher) {
    let mut c: Coordinator = Coordinator::new(C, Config::default());
    let mut out = Vec::new();
    feed(&mut c, Input::Restart { records: vec![] }, &mut out);
    persist_all(&mut c, &mut out);
    let mut request = 0;
    bencher.bench_local(|| {
        request += 1;
        let branches = vec![
            Branch { node: P1, writes: vec![Write { key: 1, delta: -5 }] },
            Branch { node: P2, writes: vec![Write { key: 2, delta: 5 }] },
        ];
        feed(&mut c, Input::Begin { request: RequestId(request), branches }, &mut out);
        let txn = out
            .iter()
            .find_map(|cmd| match cmd {
                Command::Begun { txn, .. } => Some(*txn),
                _ => None,
            })
            .expect("begun");
        for from in [P1, P2] {
            feed(
                &mut c,
                Input::Message { from, msg: Msg::Vote { txn, vote: Vote::Yes } },
                &mut out,
            );
        }
        persist_all(&mut c, &mut out); // the commit decision
        for from in [P1, P2] {
            feed(&mut c, Input::Message { from, msg: Msg::Ack { txn } }, &mut out);
        }
        divan::black_box(&out);
    });
}

#[divan::bench]
fn participant_prepare_and_commit(bencher: divan::Bencher) {
    let mut p: Participant = Participant::new(P1, Config::default());
    let mut out = Vec::new();
    feed(&mut p, Input::Restart { records: vec![] }, &mut out);
    let mut sequence = 0;
    bencher.bench_local(|| {
        sequence += 1;
        let txn = TxnId { coordinator: C, epoch: 1, sequence };
        let writes = vec![Write { key: u64::from(sequence % 1_000), delta: 1 }];
        feed(
            &mut p,
            Input::Message {
                from: C,
                msg: Msg::Prepare { txn, peers: vec![P1, P2], writes, early_ack: false },
            },
            &mut out,
        );
        persist_all(&mut p, &mut out); // the prepare record ⇒ YES
        let decision = Msg::Decision { txn, decision: concord_types::Decision::Commit };
        feed(&mut p, Input::Message { from: C, msg: decision }, &mut out);
        persist_all(&mut p, &mut out); // the commit record ⇒ applied
        divan::black_box(&out);
    });
}
