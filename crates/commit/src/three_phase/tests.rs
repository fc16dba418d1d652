//! Core unit tests for three-phase commit: feed inputs, assert the exact commands emitted.

use concord_types::{Decision, NodeId, RequestId, TxnId, Vote, Write};

use super::{Config, Coordinator, Msg, Participant, Record, State, Timer};
use crate::{Branch, Command, Core, Durability, Input};

type Cmd = Command<Msg, Record, Timer>;

const C: NodeId = NodeId(0);
const P1: NodeId = NodeId(1);
const P2: NodeId = NodeId(2);

fn txn() -> TxnId {
    TxnId { coordinator: C, epoch: 1, sequence: 1 }
}

fn run<N: Core<Msg = Msg, Record = Record, Timer = Timer, Change = Vec<Write>>>(
    node: &mut N,
    input: Input<Msg, Record, Timer>,
) -> Vec<Cmd> {
    let mut out = Vec::new();
    node.handle(input, &mut out);
    out
}

fn msg(from: NodeId, m: Msg) -> Input<Msg, Record, Timer> {
    Input::Message { from, msg: m }
}

fn send(to: NodeId, m: Msg) -> Cmd {
    Command::Send { to, msg: m }
}

fn forced(r: Record) -> Cmd {
    Command::Persist { record: r, durability: Durability::Forced }
}

fn w() -> Vec<Write> {
    vec![Write { key: 1, delta: 1 }]
}

fn coordinator_collecting() -> Coordinator {
    let mut c = Coordinator::new(C, Config::default());
    run(&mut c, Input::Restart { records: vec![] });
    run(&mut c, Input::Persisted(Record::EpochStarted { epoch: 1 }));
    let branches = vec![Branch { node: P1, writes: w() }, Branch { node: P2, writes: w() }];
    run(&mut c, Input::Begin { request: RequestId(1), branches });
    c
}

/// A participant that has voted YES (uncertain).
fn voted(id: NodeId) -> Participant {
    let mut p = Participant::new(id, Config::default());
    run(&mut p, Input::Restart { records: vec![] });
    let t = txn();
    run(&mut p, msg(C, Msg::CanCommit { txn: t, participants: vec![P1, P2], writes: w() }));
    run(
        &mut p,
        Input::Persisted(Record::Prepared { txn: t, participants: vec![P1, P2], writes: w() }),
    );
    p
}

#[test]
fn every_yes_brings_precommit_and_every_ack_a_forced_decision_before_docommit() {
    let cfg = Config::default();
    let mut c = coordinator_collecting();
    let t = txn();
    assert_eq!(run(&mut c, msg(P1, Msg::Vote { txn: t, vote: Vote::Yes })), vec![]);
    assert_eq!(
        run(&mut c, msg(P2, Msg::Vote { txn: t, vote: Vote::Yes })),
        vec![
            send(P1, Msg::PreCommit { txn: t, term: 0 }),
            send(P2, Msg::PreCommit { txn: t, term: 0 }),
            Command::SetTimer {
                timer: Timer::PreCommitAckTimeout { txn: t },
                after_us: cfg.precommit_ack_timeout_us
            },
        ]
    );
    assert_eq!(run(&mut c, msg(P1, Msg::PreCommitAck { txn: t, term: 0 })), vec![]);
    let decided = Record::CommitDecided { txn: t, participants: vec![P1, P2] };
    assert_eq!(
        run(&mut c, msg(P2, Msg::PreCommitAck { txn: t, term: 0 })),
        vec![forced(decided.clone())]
    );
    let out = run(&mut c, Input::Persisted(decided));
    assert_eq!(
        out[..3],
        [
            send(P1, Msg::Decision { txn: t, decision: Decision::Commit }),
            send(P2, Msg::Decision { txn: t, decision: Decision::Commit }),
            Command::Outcome { txn: t, decision: Decision::Commit },
        ]
    );
}

#[test]
fn a_participant_acknowledges_precommit_only_once_it_is_durable() {
    let mut p = voted(P1);
    let t = txn();
    assert_eq!(
        run(&mut p, msg(C, Msg::PreCommit { txn: t, term: 0 })),
        vec![forced(Record::PreCommitted { txn: t })]
    );
    let out = run(&mut p, Input::Persisted(Record::PreCommitted { txn: t }));
    assert_eq!(out[0], send(C, Msg::PreCommitAck { txn: t, term: 0 }));
}

#[test]
fn silence_starts_the_next_term_and_its_leader_asks_everyone() {
    let cfg = Config::default();
    let mut p = voted(P1);
    let t = txn();
    // Term 1's leader is participant (1 − 1) mod 2 = P1.
    assert_eq!(
        run(&mut p, Input::Timer(Timer::Termination { txn: t, term: 0 })),
        vec![
            Command::SetTimer {
                timer: Timer::Termination { txn: t, term: 1 },
                after_us: 2 * cfg.termination_timeout_us
            },
            send(P2, Msg::StateRequest { txn: t, term: 1, participants: vec![P1, P2] }),
            Command::SetTimer {
                timer: Timer::Collect { txn: t, term: 1 },
                after_us: cfg.collect_timeout_us
            },
        ]
    );
    // Everyone uncertain: nobody can have committed, so ABORT — forced before it is sent.
    assert_eq!(
        run(&mut p, msg(P2, Msg::StateReport { txn: t, term: 1, state: State::Uncertain })),
        vec![forced(Record::TerminationDecided { txn: t, decision: Decision::Abort })]
    );
    let out = run(
        &mut p,
        Input::Persisted(Record::TerminationDecided { txn: t, decision: Decision::Abort }),
    );
    assert_eq!(
        out[..2],
        [
            send(P2, Msg::Decision { txn: t, decision: Decision::Abort }),
            send(C, Msg::Decision { txn: t, decision: Decision::Abort }),
        ],
        "the coordinator is told too"
    );
    assert!(out.contains(&Command::Outcome { txn: t, decision: Decision::Abort }));
}

#[test]
fn a_precommitted_report_makes_the_leader_precommit_the_uncertain_then_commit() {
    let mut p = voted(P1);
    let t = txn();
    run(&mut p, Input::Timer(Timer::Termination { txn: t, term: 0 }));
    assert_eq!(
        run(&mut p, msg(P2, Msg::StateReport { txn: t, term: 1, state: State::PreCommitted })),
        vec![
            forced(Record::PreCommitted { txn: t }),
            Command::SetTimer {
                timer: Timer::Collect { txn: t, term: 1 },
                after_us: Config::default().collect_timeout_us
            },
        ],
        "the leader itself is the uncertain one: it pre-commits itself first"
    );
    let out = run(&mut p, Input::Persisted(Record::PreCommitted { txn: t }));
    assert_eq!(
        out.last(),
        Some(&forced(Record::TerminationDecided { txn: t, decision: Decision::Commit }))
    );
}

#[test]
fn a_participant_that_never_voted_aborts_durably_when_a_leader_asks() {
    let mut p = Participant::new(P2, Config::default());
    run(&mut p, Input::Restart { records: vec![] });
    let t = txn();
    assert_eq!(
        run(&mut p, msg(P1, Msg::StateRequest { txn: t, term: 1, participants: vec![P1, P2] })),
        vec![forced(Record::Aborted { txn: t })]
    );
    assert_eq!(
        run(&mut p, Input::Persisted(Record::Aborted { txn: t })),
        vec![
            Command::Outcome { txn: t, decision: Decision::Abort },
            send(P1, Msg::StateReport { txn: t, term: 1, state: State::Aborted }),
        ]
    );
    assert_eq!(
        run(&mut p, msg(C, Msg::CanCommit { txn: t, participants: vec![P1, P2], writes: w() })),
        vec![send(C, Msg::Vote { txn: t, vote: Vote::No })]
    );
}

#[test]
fn an_undecided_coordinator_adopts_a_termination_leaders_abort() {
    let mut c = coordinator_collecting();
    let t = txn();
    run(&mut c, msg(P1, Msg::Vote { txn: t, vote: Vote::Yes }));
    let out = run(&mut c, msg(P1, Msg::Decision { txn: t, decision: Decision::Abort }));
    assert!(out.contains(&Command::Outcome { txn: t, decision: Decision::Abort }), "{out:?}");
    assert_eq!(
        run(&mut c, msg(P2, Msg::Vote { txn: t, vote: Vote::Yes })),
        vec![],
        "a late YES changes nothing"
    );
}
