//! Core unit tests for Paxos Commit: feed inputs, assert the exact commands emitted.

use concord_types::{Decision, NodeId, RequestId, TxnId, Write};

use super::{Acceptor, Config, Coordinator, Msg, Participant, Record, Timer, Value};
use crate::{Branch, Command, Core, Durability, Input};

type Cmd = Command<Msg, Record, Timer>;

const C: NodeId = NodeId(0);
const P1: NodeId = NodeId(1);
const P2: NodeId = NodeId(2);
const A1: NodeId = NodeId(3);
const A2: NodeId = NodeId(4);
const A3: NodeId = NodeId(5);

fn config() -> Config {
    Config::new(vec![A1, A2, A3])
}

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

fn vote(from: NodeId, value: Value) -> Msg {
    Msg::Phase2a {
        txn: txn(),
        ballot: 0,
        values: vec![(from, value)],
        leader: C,
        participants: vec![P1, P2],
    }
}

fn ready_coordinator() -> Coordinator {
    let mut c = Coordinator::new(C, config());
    run(&mut c, Input::Restart { records: vec![] });
    run(&mut c, Input::Persisted(Record::EpochStarted { epoch: 1 }));
    c
}

fn begin(c: &mut Coordinator) -> Vec<Cmd> {
    let branches = vec![Branch { node: P1, writes: w() }, Branch { node: P2, writes: w() }];
    run(c, Input::Begin { request: RequestId(7), branches })
}

#[test]
fn the_coordinator_prepares_every_participant_and_waits_for_ballot_zero() {
    let mut c = ready_coordinator();
    let t = txn();
    assert_eq!(
        begin(&mut c),
        vec![
            Command::Begun { request: RequestId(7), txn: t },
            send(P1, Msg::Prepare { txn: t, participants: vec![P1, P2], writes: w() }),
            send(P2, Msg::Prepare { txn: t, participants: vec![P1, P2], writes: w() }),
            Command::SetTimer {
                timer: Timer::BallotZero { txn: t },
                after_us: config().vote_timeout_us
            },
        ]
    );
}

#[test]
fn a_participant_votes_to_f_plus_one_acceptors_only_after_its_prepare_is_durable() {
    let cfg = config();
    let mut p = <Participant>::new(P1, cfg.clone());
    run(&mut p, Input::Restart { records: vec![] });
    let t = txn();
    let prepared = Record::Prepared { txn: t, participants: vec![P1, P2], writes: w() };
    assert_eq!(
        run(&mut p, msg(C, Msg::Prepare { txn: t, participants: vec![P1, P2], writes: w() })),
        vec![forced(prepared.clone())]
    );
    assert_eq!(
        run(&mut p, Input::Persisted(prepared)),
        vec![
            send(A1, vote(P1, Value::Prepared)),
            send(A2, vote(P1, Value::Prepared)),
            Command::SetTimer {
                timer: Timer::Inquire { txn: t, attempt: 0 },
                after_us: cfg.inquiry_base_us
            },
        ],
        "the normal case uses the first F + 1 = 2 of 3 acceptors"
    );
}

#[test]
fn a_refusing_participant_forces_its_abort_vote_before_sending_it() {
    let mut p = <Participant>::new(P1, config());
    run(&mut p, Input::Restart { records: vec![] });
    let t = txn();
    let refused = vec![Write { key: 1, delta: -5 }];
    assert_eq!(
        run(&mut p, msg(C, Msg::Prepare { txn: t, participants: vec![P1, P2], writes: refused })),
        vec![forced(Record::Aborted { txn: t })]
    );
    assert_eq!(
        run(&mut p, Input::Persisted(Record::Aborted { txn: t })),
        vec![
            Command::Outcome { txn: t, decision: Decision::Abort },
            send(A1, vote(P1, Value::Aborted)),
            send(A2, vote(P1, Value::Aborted)),
        ]
    );
}

#[test]
fn an_acceptor_bundles_ballot_zero_and_forces_once_the_bundle_is_complete() {
    let mut a = Acceptor::new(A1, config());
    run(&mut a, Input::Restart { records: vec![] });
    let t = txn();
    let lazy = |values| Command::Persist {
        record: Record::Accepted { txn: t, ballot: 0, values, participants: vec![P1, P2] },
        durability: Durability::Lazy,
    };
    assert_eq!(
        run(&mut a, msg(P1, vote(P1, Value::Prepared))),
        vec![lazy(vec![(P1, Value::Prepared)])]
    );
    let last = Record::Accepted {
        txn: t,
        ballot: 0,
        values: vec![(P2, Value::Prepared)],
        participants: vec![P1, P2],
    };
    assert_eq!(run(&mut a, msg(P2, vote(P2, Value::Prepared))), vec![forced(last.clone())]);
    assert_eq!(
        run(&mut a, Input::Persisted(last)),
        vec![send(
            C,
            Msg::Phase2b {
                txn: t,
                ballot: 0,
                values: vec![(P1, Value::Prepared), (P2, Value::Prepared)]
            }
        )]
    );
}

#[test]
fn an_acceptor_promises_only_higher_ballots_and_reports_what_it_accepted() {
    let mut a = Acceptor::new(A1, config());
    run(&mut a, Input::Restart { records: vec![] });
    let t = txn();
    run(&mut a, msg(P1, vote(P1, Value::Prepared)));
    assert_eq!(
        run(&mut a, msg(A2, Msg::Phase1a { txn: t, ballot: 9, leader: A2 })),
        vec![forced(Record::Promised { txn: t, ballot: 9 })]
    );
    assert_eq!(
        run(&mut a, Input::Persisted(Record::Promised { txn: t, ballot: 9 })),
        vec![send(
            A2,
            Msg::Phase1b { txn: t, ballot: 9, accepted: vec![(P1, 0, Value::Prepared)] }
        )]
    );
    assert_eq!(
        run(&mut a, msg(A3, Msg::Phase1a { txn: t, ballot: 5, leader: A3 })),
        vec![send(A3, Msg::Reject { txn: t, promised: 9 })]
    );
    assert_eq!(
        run(&mut a, msg(P2, vote(P2, Value::Prepared))),
        vec![],
        "ballot 0 is below the promise"
    );
}

#[test]
fn the_leader_commits_once_a_majority_chose_prepared_for_every_instance() {
    let mut c = ready_coordinator();
    begin(&mut c);
    let t = txn();
    let both = vec![(P1, Value::Prepared), (P2, Value::Prepared)];
    assert_eq!(
        run(&mut c, msg(A1, Msg::Phase2b { txn: t, ballot: 0, values: both.clone() })),
        vec![]
    );
    assert_eq!(
        run(&mut c, msg(A2, Msg::Phase2b { txn: t, ballot: 0, values: both })),
        vec![
            send(P1, Msg::Decision { txn: t, decision: Decision::Commit }),
            send(P2, Msg::Decision { txn: t, decision: Decision::Commit }),
            Command::Outcome { txn: t, decision: Decision::Commit },
        ],
        "F + 1 = 2 acceptors agree: chosen; no coordinator record is written"
    );
}

#[test]
fn the_vote_timeout_runs_full_paxos_and_proposes_aborted_where_nothing_was_accepted() {
    let cfg = config();
    let mut c = ready_coordinator();
    begin(&mut c);
    let t = txn();
    let out = run(&mut c, Input::Timer(Timer::BallotZero { txn: t }));
    let Some(Command::Send { msg: Msg::Phase1a { ballot, leader: C, .. }, .. }) = out.first()
    else {
        panic!("expected phase 1a, got {out:?}")
    };
    let b = *ballot;
    assert!(b > 0);
    assert_eq!(out.len(), 4, "1a to all three acceptors, and a ballot timer: {out:?}");
    assert_eq!(
        out[3],
        Command::SetTimer {
            timer: Timer::Ballot { txn: t, ballot: b },
            after_us: cfg.ballot_timeout_us
        }
    );
    // A1 accepted P1's Prepared at ballot 0; A3 accepted nothing. P2's instance: nothing anywhere.
    run(
        &mut c,
        msg(A1, Msg::Phase1b { txn: t, ballot: b, accepted: vec![(P1, 0, Value::Prepared)] }),
    );
    let out = run(&mut c, msg(A3, Msg::Phase1b { txn: t, ballot: b, accepted: vec![] }));
    let proposal = vec![(P1, Value::Prepared), (P2, Value::Aborted)];
    for (i, a) in [A1, A2, A3].into_iter().enumerate() {
        assert_eq!(
            out[i],
            send(
                a,
                Msg::Phase2a {
                    txn: t,
                    ballot: b,
                    values: proposal.clone(),
                    leader: C,
                    participants: vec![P1, P2]
                }
            )
        );
    }
    run(&mut c, msg(A1, Msg::Phase2b { txn: t, ballot: b, values: proposal.clone() }));
    let out = run(&mut c, msg(A3, Msg::Phase2b { txn: t, ballot: b, values: proposal }));
    assert!(out.contains(&Command::Outcome { txn: t, decision: Decision::Abort }), "{out:?}");
}

#[test]
fn ballots_of_a_restarted_candidate_are_above_all_of_its_earlier_ones() {
    let mut first = ready_coordinator();
    begin(&mut first);
    let out = run(&mut first, Input::Timer(Timer::BallotZero { txn: txn() }));
    let Some(Command::Send { msg: Msg::Phase1a { ballot: before, .. }, .. }) = out.first() else {
        panic!()
    };

    let mut again = Coordinator::new(C, config());
    run(&mut again, Input::Restart { records: vec![Record::EpochStarted { epoch: 1 }] });
    run(&mut again, Input::Persisted(Record::EpochStarted { epoch: 2 }));
    let out = run(&mut again, msg(P1, Msg::Inquire { txn: txn(), participants: vec![P1, P2] }));
    let Some(Command::Send { msg: Msg::Phase1a { ballot: after, .. }, .. }) = out.first() else {
        panic!("{out:?}")
    };
    assert!(after > before, "ballot {after} after restart must exceed {before}");
}
