//! Core unit tests: feed inputs, assert the exact commands emitted.

use concord_types::{Decision, NodeId, RequestId, TxnId, Vote, Write};

use super::{Config, Coordinator, Msg, Participant, Record, Timer};
use crate::amnesia::AfterDataLoss as _;
use crate::{Branch, Command, Core, Durability, Input, ParticipantView, Rejection, Switches};

type Cmd = Command<Msg, Record, Timer>;

const C: NodeId = NodeId(0);
const P1: NodeId = NodeId(1);
const P2: NodeId = NodeId(2);

fn txn(sequence: u32) -> TxnId {
    TxnId { coordinator: C, epoch: 1, sequence }
}

fn w(key: u64, delta: i64) -> Vec<Write> {
    vec![Write { key, delta }]
}

fn run<N: Core<Msg = Msg, Record = Record, Timer = Timer, Change = Vec<Write>>>(
    node: &mut N,
    input: Input<Msg, Record, Timer>,
) -> Vec<Cmd> {
    let mut out = Vec::new();
    node.handle(input, &mut out);
    out
}

fn msg(from: NodeId, msg: Msg) -> Input<Msg, Record, Timer> {
    Input::Message { from, msg }
}

fn send(to: NodeId, msg: Msg) -> Cmd {
    Command::Send { to, msg }
}

fn forced(record: Record) -> Cmd {
    Command::Persist { record, durability: Durability::Forced }
}

fn lazy(record: Record) -> Cmd {
    Command::Persist { record, durability: Durability::Lazy }
}

fn decision(txn: TxnId, decision: Decision) -> Msg {
    Msg::Decision { txn, decision }
}

fn config() -> Config {
    Config::default()
}

/// A coordinator whose first epoch is durable.
fn ready_coordinator(config: Config) -> Coordinator {
    let mut c = Coordinator::new(C, config);
    assert_eq!(
        run(&mut c, Input::Restart { records: vec![] }),
        vec![forced(Record::EpochStarted { epoch: 1 })]
    );
    assert_eq!(run(&mut c, Input::Persisted(Record::EpochStarted { epoch: 1 })), vec![]);
    c
}

fn two_branches() -> Vec<Branch> {
    vec![Branch { node: P1, writes: w(10, 5) }, Branch { node: P2, writes: w(20, 7) }]
}

fn prepare(txn: TxnId, writes: Vec<Write>) -> Msg {
    Msg::Prepare { txn, peers: vec![P1, P2], writes, early_ack: false }
}

#[test]
fn coordinator_happy_path_forces_the_decision_before_any_commit_is_sent() {
    let cfg = config();
    let mut c = ready_coordinator(cfg.clone());
    let t = txn(1);
    let out = run(&mut c, Input::Begin { request: RequestId(9), branches: two_branches() });
    assert_eq!(
        out,
        vec![
            Command::Begun { request: RequestId(9), txn: t },
            send(P1, prepare(t, w(10, 5))),
            send(P2, prepare(t, w(20, 7))),
            Command::SetTimer {
                timer: Timer::VoteTimeout { txn: t },
                after_us: cfg.vote_timeout_us
            },
        ]
    );
    assert_eq!(run(&mut c, msg(P1, Msg::Vote { txn: t, vote: Vote::Yes })), vec![]);
    assert_eq!(
        run(&mut c, msg(P2, Msg::Vote { txn: t, vote: Vote::Yes })),
        vec![forced(Record::CommitDecided { txn: t, participants: vec![P1, P2] })],
        "the last YES forces the decision and sends nothing yet"
    );
    // The vote timeout firing now changes nothing: the transaction is no longer collecting.
    assert_eq!(run(&mut c, Input::Timer(Timer::VoteTimeout { txn: t })), vec![]);
    assert_eq!(
        run(&mut c, Input::Persisted(Record::CommitDecided { txn: t, participants: vec![P1, P2] })),
        vec![
            send(P1, decision(t, Decision::Commit)),
            send(P2, decision(t, Decision::Commit)),
            Command::Outcome { txn: t, decision: Decision::Commit },
            Command::SetTimer {
                timer: Timer::ResendCommit { txn: t, attempt: 0 },
                after_us: cfg.resend_base_us
            },
        ]
    );
    assert_eq!(run(&mut c, msg(P1, Msg::Ack { txn: t })), vec![]);
    assert_eq!(run(&mut c, msg(P2, Msg::Ack { txn: t })), vec![lazy(Record::Ended { txn: t })]);
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn coordinator_resends_commit_with_backoff_to_participants_that_have_not_acked() {
    let cfg = config();
    let mut c = ready_coordinator(cfg.clone());
    let t = txn(1);
    run(&mut c, Input::Begin { request: RequestId(1), branches: two_branches() });
    run(&mut c, msg(P1, Msg::Vote { txn: t, vote: Vote::Yes }));
    run(&mut c, msg(P2, Msg::Vote { txn: t, vote: Vote::Yes }));
    run(&mut c, Input::Persisted(Record::CommitDecided { txn: t, participants: vec![P1, P2] }));
    run(&mut c, msg(P1, Msg::Ack { txn: t }));
    assert_eq!(
        run(&mut c, Input::Timer(Timer::ResendCommit { txn: t, attempt: 0 })),
        vec![
            send(P2, decision(t, Decision::Commit)),
            Command::SetTimer {
                timer: Timer::ResendCommit { txn: t, attempt: 1 },
                after_us: 2 * cfg.resend_base_us
            },
        ]
    );
    assert_eq!(
        run(&mut c, Input::Timer(Timer::ResendCommit { txn: t, attempt: 0 })),
        vec![],
        "stale timer"
    );
}

#[test]
fn a_no_vote_aborts_without_logging_and_tells_only_those_that_may_be_prepared() {
    let mut c = ready_coordinator(config());
    let t = txn(1);
    let branches = vec![
        Branch { node: P1, writes: w(10, 5) },
        Branch { node: P2, writes: w(20, 7) },
        Branch { node: NodeId(3), writes: vec![] },
    ];
    run(&mut c, Input::Begin { request: RequestId(1), branches });
    assert_eq!(run(&mut c, msg(NodeId(3), Msg::Vote { txn: t, vote: Vote::ReadOnly })), vec![]);
    assert_eq!(
        run(&mut c, msg(P2, Msg::Vote { txn: t, vote: Vote::No })),
        vec![
            send(P1, decision(t, Decision::Abort)),
            Command::Outcome { txn: t, decision: Decision::Abort }
        ]
    );
}

#[test]
fn vote_timeout_aborts_a_transaction_still_collecting() {
    let mut c = ready_coordinator(config());
    let t = txn(1);
    run(&mut c, Input::Begin { request: RequestId(1), branches: two_branches() });
    run(&mut c, msg(P1, Msg::Vote { txn: t, vote: Vote::Yes }));
    assert_eq!(
        run(&mut c, Input::Timer(Timer::VoteTimeout { txn: t })),
        vec![
            send(P1, decision(t, Decision::Abort)),
            send(P2, decision(t, Decision::Abort)),
            Command::Outcome { txn: t, decision: Decision::Abort },
        ]
    );
}

#[test]
fn all_read_only_commits_with_no_log_write() {
    let mut c = ready_coordinator(config());
    let t = txn(1);
    let branches = vec![Branch { node: P1, writes: vec![] }, Branch { node: P2, writes: vec![] }];
    let out = run(&mut c, Input::Begin { request: RequestId(1), branches });
    assert!(out.contains(&send(
        P1,
        Msg::Prepare { txn: t, peers: vec![], writes: vec![], early_ack: false }
    )));
    run(&mut c, msg(P1, Msg::Vote { txn: t, vote: Vote::ReadOnly }));
    assert_eq!(
        run(&mut c, msg(P2, Msg::Vote { txn: t, vote: Vote::ReadOnly })),
        vec![Command::Outcome { txn: t, decision: Decision::Commit }]
    );
}

#[test]
fn one_participant_commits_in_one_phase_with_no_coordinator_log() {
    let cfg = config();
    let mut c = ready_coordinator(cfg.clone());
    let t = txn(1);
    let out = run(
        &mut c,
        Input::Begin {
            request: RequestId(1),
            branches: vec![Branch { node: P1, writes: w(1, 1) }],
        },
    );
    assert_eq!(
        out,
        vec![
            Command::Begun { request: RequestId(1), txn: t },
            send(P1, Msg::CommitOnePhase { txn: t, writes: w(1, 1) }),
            Command::SetTimer {
                timer: Timer::OnePhaseRetry { txn: t, attempt: 0 },
                after_us: cfg.resend_base_us
            },
        ]
    );
    assert_eq!(
        run(&mut c, msg(P1, Msg::OnePhaseResult { txn: t, decision: Decision::Commit })),
        vec![Command::Outcome { txn: t, decision: Decision::Commit }]
    );
}

#[test]
fn one_phase_switched_off_runs_full_two_phase_for_one_participant() {
    let mut cfg = config();
    cfg.switches.one_phase = false;
    let mut c = ready_coordinator(cfg);
    let out = run(
        &mut c,
        Input::Begin {
            request: RequestId(1),
            branches: vec![Branch { node: P1, writes: w(1, 1) }],
        },
    );
    assert!(matches!(out[1], Command::Send { msg: Msg::Prepare { .. }, .. }));
}

#[test]
fn requests_wait_for_the_epoch_and_ids_are_never_reused_across_restarts() {
    let mut c = Coordinator::new(C, config());
    run(&mut c, Input::Restart { records: vec![] });
    let branches = vec![Branch { node: P1, writes: w(1, 1) }];
    assert_eq!(
        run(&mut c, Input::Begin { request: RequestId(1), branches: branches.clone() }),
        vec![]
    );
    let out = run(&mut c, Input::Persisted(Record::EpochStarted { epoch: 1 }));
    assert_eq!(out[0], Command::Begun { request: RequestId(1), txn: txn(1) });

    let mut c = Coordinator::new(C, config());
    let out = run(&mut c, Input::Restart { records: vec![Record::EpochStarted { epoch: 1 }] });
    assert_eq!(out, vec![forced(Record::EpochStarted { epoch: 2 })]);
    run(&mut c, Input::Persisted(Record::EpochStarted { epoch: 2 }));
    let out = run(&mut c, Input::Begin { request: RequestId(2), branches });
    assert_eq!(
        out[0],
        Command::Begun {
            request: RequestId(2),
            txn: TxnId { coordinator: C, epoch: 2, sequence: 1 }
        }
    );
}

#[test]
fn invalid_and_excess_requests_are_rejected() {
    let mut cfg = config();
    cfg.max_in_flight = 1;
    let mut c = ready_coordinator(cfg);
    let dup = vec![Branch { node: P1, writes: vec![] }, Branch { node: P1, writes: vec![] }];
    assert_eq!(
        run(&mut c, Input::Begin { request: RequestId(1), branches: dup }),
        vec![Command::Rejected { request: RequestId(1), reason: Rejection::Invalid }]
    );
    assert_eq!(
        run(&mut c, Input::Begin { request: RequestId(2), branches: vec![] }),
        vec![Command::Rejected { request: RequestId(2), reason: Rejection::Invalid }]
    );
    run(&mut c, Input::Begin { request: RequestId(3), branches: two_branches() });
    assert_eq!(
        run(&mut c, Input::Begin { request: RequestId(4), branches: two_branches() }),
        vec![Command::Rejected { request: RequestId(4), reason: Rejection::Overloaded }]
    );
}

#[test]
fn coordinator_recovery_redrives_logged_decisions_and_presumes_abort_for_the_rest() {
    let cfg = config();
    let mut c = Coordinator::new(C, cfg.clone());
    let (t1, t2) = (txn(1), txn(2));
    let records = vec![
        Record::EpochStarted { epoch: 1 },
        Record::CommitDecided { txn: t1, participants: vec![P1, P2] },
        Record::CommitDecided { txn: t2, participants: vec![P1] },
        Record::Ended { txn: t2 },
    ];
    assert_eq!(
        run(&mut c, Input::Restart { records }),
        vec![
            send(P1, decision(t1, Decision::Commit)),
            send(P2, decision(t1, Decision::Commit)),
            Command::SetTimer {
                timer: Timer::ResendCommit { txn: t1, attempt: 0 },
                after_us: cfg.resend_base_us
            },
            forced(Record::EpochStarted { epoch: 2 }),
        ]
    );
    // A participant asking about t1 learns COMMIT; about an unlogged t3, ABORT.
    assert_eq!(
        run(&mut c, msg(P2, Msg::Inquire { txn: t1 })),
        vec![send(P2, decision(t1, Decision::Commit))]
    );
    assert_eq!(
        run(&mut c, msg(P2, Msg::Inquire { txn: txn(3) })),
        vec![send(P2, decision(txn(3), Decision::Abort))]
    );
    // A late YES for an earlier incarnation's transaction is not answered by presumption (it
    // may have run with early acknowledgement); the voter's INQUIRE is, as t3's above.
    assert_eq!(run(&mut c, msg(P1, Msg::Vote { txn: txn(4), vote: Vote::Yes })), vec![]);
    // One of this incarnation that it no longer holds is answered ABORT at once.
    run(&mut c, Input::Persisted(Record::EpochStarted { epoch: 2 }));
    let t5 = TxnId { coordinator: C, epoch: 2, sequence: 5 };
    assert_eq!(
        run(&mut c, msg(P1, Msg::Vote { txn: t5, vote: Vote::Yes })),
        vec![send(P1, decision(t5, Decision::Abort))]
    );
}

#[test]
fn coordinator_gives_no_answer_while_undecided() {
    let mut c = ready_coordinator(config());
    let t = txn(1);
    run(&mut c, Input::Begin { request: RequestId(1), branches: two_branches() });
    assert_eq!(run(&mut c, msg(P1, Msg::Inquire { txn: t })), vec![]);
    run(&mut c, msg(P1, Msg::Vote { txn: t, vote: Vote::Yes }));
    run(&mut c, msg(P2, Msg::Vote { txn: t, vote: Vote::Yes }));
    assert_eq!(run(&mut c, msg(P1, Msg::Inquire { txn: t })), vec![], "decision not durable yet");
}

// ---------------------------------------------------------------- participant

fn participant(cfg: Config) -> Participant {
    let mut p = Participant::new(P1, cfg);
    assert_eq!(run(&mut p, Input::Restart { records: vec![] }), vec![]);
    p
}

fn prepared_participant(cfg: Config, t: TxnId) -> Participant {
    let mut p = participant(cfg);
    run(&mut p, msg(C, prepare(t, w(10, 5))));
    run(
        &mut p,
        Input::Persisted(Record::Prepared {
            txn: t,
            peers: vec![P1, P2],
            writes: w(10, 5),
            early_ack: false,
        }),
    );
    p
}

#[test]
fn participant_votes_yes_only_after_its_prepare_record_is_durable() {
    let cfg = config();
    let mut p = participant(cfg.clone());
    let t = txn(1);
    let record =
        Record::Prepared { txn: t, peers: vec![P1, P2], writes: w(10, 5), early_ack: false };
    assert_eq!(run(&mut p, msg(C, prepare(t, w(10, 5)))), vec![forced(record.clone())]);
    assert_eq!(p.store().locked_keys(), 1, "locks are taken at prepare");
    assert_eq!(
        run(&mut p, msg(C, prepare(t, w(10, 5)))),
        vec![],
        "no vote before the record is durable"
    );
    assert_eq!(
        run(&mut p, Input::Persisted(record)),
        vec![
            send(C, Msg::Vote { txn: t, vote: Vote::Yes }),
            Command::SetTimer {
                timer: Timer::Inquire { txn: t, attempt: 0 },
                after_us: cfg.inquiry_base_us
            },
        ]
    );
    assert_eq!(p.in_doubt(), vec![t]);
    assert_eq!(
        run(&mut p, msg(C, prepare(t, w(10, 5)))),
        vec![send(C, Msg::Vote { txn: t, vote: Vote::Yes })]
    );
}

#[test]
fn commit_is_applied_once_and_every_repeat_is_acknowledged() {
    let t = txn(1);
    let mut p = prepared_participant(config(), t);
    assert_eq!(
        run(&mut p, msg(C, decision(t, Decision::Commit))),
        vec![forced(Record::Committed { txn: t })]
    );
    assert_eq!(
        run(&mut p, msg(C, decision(t, Decision::Commit))),
        vec![],
        "ack waits for the record"
    );
    assert_eq!(
        run(&mut p, Input::Persisted(Record::Committed { txn: t })),
        vec![Command::Outcome { txn: t, decision: Decision::Commit }, send(C, Msg::Ack { txn: t })]
    );
    assert_eq!(p.store().value(10), 5);
    assert_eq!(p.store().locked_keys(), 0);
    assert_eq!(
        run(&mut p, msg(C, decision(t, Decision::Commit))),
        vec![send(C, Msg::Ack { txn: t })]
    );
    assert_eq!(run(&mut p, msg(C, decision(t, Decision::Abort))), vec![], "a decision is final");
    assert_eq!(p.store().value(10), 5, "applied exactly once");
}

#[test]
fn a_refused_prepare_votes_no_and_aborts_at_once() {
    let mut p = participant(config());
    let t = txn(1);
    assert_eq!(
        run(&mut p, msg(C, prepare(t, w(10, -1)))),
        vec![
            Command::Outcome { txn: t, decision: Decision::Abort },
            send(C, Msg::Vote { txn: t, vote: Vote::No })
        ]
    );
    assert_eq!(p.store().locked_keys(), 0);
    assert_eq!(
        run(&mut p, msg(C, prepare(t, w(10, -1)))),
        vec![send(C, Msg::Vote { txn: t, vote: Vote::No })]
    );
}

#[test]
fn a_lock_conflict_votes_no() {
    let mut p = prepared_participant(config(), txn(1));
    let t2 = txn(2);
    let out = run(&mut p, msg(C, prepare(t2, w(10, 1))));
    assert_eq!(out.last(), Some(&send(C, Msg::Vote { txn: t2, vote: Vote::No })));
}

#[test]
fn a_participant_with_too_many_undecided_branches_votes_no() {
    let mut cfg = config();
    cfg.max_in_flight = 1;
    let mut p = prepared_participant(cfg, txn(1));
    let t2 = txn(2);
    let out = run(&mut p, msg(C, prepare(t2, w(99, 1))));
    assert_eq!(out.last(), Some(&send(C, Msg::Vote { txn: t2, vote: Vote::No })));
}

#[test]
fn read_only_branch_votes_read_only_and_keeps_nothing() {
    let mut p = participant(config());
    let t = txn(1);
    assert_eq!(
        run(&mut p, msg(C, prepare(t, vec![]))),
        vec![send(C, Msg::Vote { txn: t, vote: Vote::ReadOnly })]
    );
    assert!(p.in_doubt().is_empty());

    let mut cfg = config();
    cfg.switches.read_only = false;
    let mut p = participant(cfg);
    let out = run(&mut p, msg(C, prepare(t, vec![])));
    assert_eq!(
        out,
        vec![forced(Record::Prepared {
            txn: t,
            peers: vec![P1, P2],
            writes: vec![],
            early_ack: false
        })]
    );
}

#[test]
fn abort_releases_locks_with_a_lazy_record() {
    let t = txn(1);
    let mut p = prepared_participant(config(), t);
    assert_eq!(
        run(&mut p, msg(C, decision(t, Decision::Abort))),
        vec![
            lazy(Record::Aborted { txn: t }),
            Command::Outcome { txn: t, decision: Decision::Abort }
        ]
    );
    assert_eq!(p.store().locked_keys(), 0);
    assert!(p.in_doubt().is_empty());
}

#[test]
fn abort_during_prepare_takes_effect_once_the_record_is_durable() {
    let mut p = participant(config());
    let t = txn(1);
    run(&mut p, msg(C, prepare(t, w(10, 5))));
    assert_eq!(run(&mut p, msg(C, decision(t, Decision::Abort))), vec![]);
    assert_eq!(
        run(
            &mut p,
            Input::Persisted(Record::Prepared {
                txn: t,
                peers: vec![P1, P2],
                writes: w(10, 5),
                early_ack: false
            })
        ),
        vec![
            lazy(Record::Aborted { txn: t }),
            Command::Outcome { txn: t, decision: Decision::Abort }
        ],
        "no YES vote after an abort"
    );
}

#[test]
fn in_doubt_participant_asks_coordinator_and_peers_with_backoff() {
    let cfg = config();
    let t = txn(1);
    let mut p = prepared_participant(cfg.clone(), t);
    assert_eq!(
        run(&mut p, Input::Timer(Timer::Inquire { txn: t, attempt: 0 })),
        vec![
            send(C, Msg::Inquire { txn: t }),
            send(P2, Msg::Inquire { txn: t }),
            Command::SetTimer {
                timer: Timer::Inquire { txn: t, attempt: 1 },
                after_us: 2 * cfg.inquiry_base_us
            },
        ]
    );
    let out = run(&mut p, Input::Timer(Timer::Inquire { txn: t, attempt: 1 }));
    assert_eq!(
        out.last(),
        Some(&Command::SetTimer {
            timer: Timer::Inquire { txn: t, attempt: 2 },
            after_us: 4 * cfg.inquiry_base_us
        })
    );
    assert_eq!(p.in_doubt(), vec![t], "it never decides alone");

    let mut cfg = config();
    cfg.switches.cooperative_termination = false;
    let mut p = prepared_participant(cfg, t);
    let out = run(&mut p, Input::Timer(Timer::Inquire { txn: t, attempt: 0 }));
    assert_eq!(out[0], send(C, Msg::Inquire { txn: t }));
    assert_eq!(out.len(), 2, "only the coordinator is asked");
}

#[test]
fn inquiry_backoff_is_capped() {
    let cfg = config();
    let t = txn(1);
    let mut p = prepared_participant(cfg.clone(), t);
    let mut last = 0;
    for attempt in 0..40 {
        let out = run(&mut p, Input::Timer(Timer::Inquire { txn: t, attempt }));
        let Some(Command::SetTimer { after_us, .. }) = out.last() else { panic!("no timer") };
        last = *after_us;
    }
    assert_eq!(last, cfg.inquiry_max_us);
}

#[test]
fn a_peer_that_never_voted_forces_an_abort_before_answering_and_then_votes_no() {
    let mut p = participant(config());
    let t = txn(1);
    assert_eq!(
        run(&mut p, msg(P2, Msg::Inquire { txn: t })),
        vec![forced(Record::Aborted { txn: t })]
    );
    assert_eq!(
        run(&mut p, msg(C, prepare(t, w(10, 5)))),
        vec![send(C, Msg::Vote { txn: t, vote: Vote::No })]
    );
    assert_eq!(
        run(&mut p, Input::Persisted(Record::Aborted { txn: t })),
        vec![
            Command::Outcome { txn: t, decision: Decision::Abort },
            send(P2, decision(t, Decision::Abort))
        ]
    );
    assert_eq!(
        run(&mut p, msg(P2, Msg::Inquire { txn: t })),
        vec![send(P2, decision(t, Decision::Abort))]
    );
}

#[test]
fn a_prepared_peer_cannot_answer_an_inquiry_but_a_committing_one_can() {
    let t = txn(1);
    let mut p = prepared_participant(config(), t);
    assert_eq!(run(&mut p, msg(P2, Msg::Inquire { txn: t })), vec![]);
    run(&mut p, msg(C, decision(t, Decision::Commit)));
    assert_eq!(
        run(&mut p, msg(P2, Msg::Inquire { txn: t })),
        vec![send(P2, decision(t, Decision::Commit))]
    );
}

#[test]
fn participant_recovery_restores_prepared_branches_with_their_locks_and_asks() {
    let mut p = Participant::new(P1, config());
    let (t1, t2, t3) = (txn(1), txn(2), txn(3));
    let records = vec![
        Record::Prepared { txn: t1, peers: vec![P1, P2], writes: w(10, 5), early_ack: false },
        Record::Prepared { txn: t2, peers: vec![P1, P2], writes: w(11, 3), early_ack: false },
        Record::Committed { txn: t2 },
        Record::OnePhaseCommitted { txn: t3, writes: w(12, 4) },
    ];
    assert_eq!(
        run(&mut p, Input::Restart { records }),
        vec![Command::SetTimer { timer: Timer::Inquire { txn: t1, attempt: 0 }, after_us: 0 }]
    );
    assert_eq!(p.in_doubt(), vec![t1]);
    assert_eq!(p.store().locked_keys(), 1);
    assert_eq!((p.store().value(10), p.store().value(11), p.store().value(12)), (0, 3, 4));
    // Recovered decisions answer repeats without applying them again.
    assert_eq!(
        run(&mut p, msg(C, decision(t2, Decision::Commit))),
        vec![send(C, Msg::Ack { txn: t2 })]
    );
    assert_eq!(p.store().value(11), 3);
}

#[test]
fn one_phase_participant_forces_either_outcome_before_answering() {
    let mut p = participant(config());
    let (t1, t2) = (txn(1), txn(2));
    let record = Record::OnePhaseCommitted { txn: t1, writes: w(10, 5) };
    assert_eq!(
        run(&mut p, msg(C, Msg::CommitOnePhase { txn: t1, writes: w(10, 5) })),
        vec![forced(record.clone())]
    );
    assert_eq!(
        run(&mut p, Input::Persisted(record)),
        vec![
            Command::Outcome { txn: t1, decision: Decision::Commit },
            send(C, Msg::OnePhaseResult { txn: t1, decision: Decision::Commit }),
        ]
    );
    assert_eq!(
        run(&mut p, msg(C, Msg::CommitOnePhase { txn: t1, writes: w(10, 5) })),
        vec![send(C, Msg::OnePhaseResult { txn: t1, decision: Decision::Commit })],
        "a resent request gets the same answer and is not applied again"
    );
    assert_eq!(p.store().value(10), 5);

    assert_eq!(
        run(&mut p, msg(C, Msg::CommitOnePhase { txn: t2, writes: w(10, -6) })),
        vec![forced(Record::Aborted { txn: t2 })]
    );
    assert_eq!(
        run(&mut p, Input::Persisted(Record::Aborted { txn: t2 })),
        vec![
            Command::Outcome { txn: t2, decision: Decision::Abort },
            send(C, Msg::OnePhaseResult { txn: t2, decision: Decision::Abort }),
        ]
    );
}

#[test]
fn records_round_trip_through_their_encoding() {
    use concord_types::codec::Encode;
    let t = txn(4);
    for record in [
        Record::EpochStarted { epoch: 3 },
        Record::CommitDecided { txn: t, participants: vec![P1, P2] },
        Record::Ended { txn: t },
        Record::Prepared { txn: t, peers: vec![P2], writes: w(1, -2), early_ack: false },
        Record::Committed { txn: t },
        Record::OnePhaseCommitted { txn: t, writes: w(3, 4) },
        Record::Aborted { txn: t },
    ] {
        assert_eq!(<Record>::from_bytes(&record.to_bytes()).unwrap(), record);
    }
}

#[test]
fn switches_default_to_every_classic_optimisation_and_forgetting_on_and_early_acknowledgement_off()
{
    // Early acknowledgement is the runtime's choice (its configuration), not the cores' default:
    // the simulator's pinned baselines measure classic 2PC.
    assert_eq!(
        Switches::default(),
        Switches {
            read_only: true,
            one_phase: true,
            cooperative_termination: true,
            early_ack: false,
            forget: true,
            forgotten_kept: 100_000,
        }
    );
}

/// Replaying a checkpoint's live records must rebuild exactly what replaying the whole log
/// rebuilds, at every point of a long random history (prepares, both decisions, one-phase
/// commits, refusals, inquiries, records becoming durable in any order).
#[test]
fn a_checkpoint_rebuilds_the_same_participant_as_the_whole_log() {
    use crate::Checkpoint;
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut p = Participant::new(P1, config());
    let mut log: Vec<Record> = Vec::new();
    let mut pending: Vec<Record> = Vec::new();
    // Only a transaction this participant voted YES on may be told COMMIT.
    let mut voted_yes: Vec<TxnId> = Vec::new();
    let feed = |p: &mut Participant, input, log: &mut Vec<Record>, pending: &mut Vec<Record>| {
        let mut yes = Vec::new();
        for cmd in run(p, input) {
            match cmd {
                Command::Persist { record, durability } => {
                    log.push(record.clone());
                    if durability == Durability::Forced {
                        pending.push(record);
                    }
                }
                Command::Send { msg: Msg::Vote { txn, vote: Vote::Yes }, .. } => yes.push(txn),
                _ => {}
            }
        }
        yes
    };
    feed(&mut p, Input::Restart { records: vec![] }, &mut log, &mut pending);
    // FORGET now and then, its mark rising through the run: decisions below it may be missing
    // from the checkpoint (the mark stands for them), never from a restart of the whole log.
    let mut mark = 0;
    for step in 0..3_000u32 {
        let t = txn(1 + step / 100 + u32::try_from(next(40)).unwrap());
        let key = next(6);
        let input = match next(8) {
            0 | 1 => msg(C, prepare(t, w(key, i64::try_from(next(9)).unwrap() - 3))),
            2 if !voted_yes.is_empty() => {
                let i = usize::try_from(next(voted_yes.len() as u64)).unwrap();
                msg(C, decision(voted_yes[i], Decision::Commit))
            }
            3 => msg(C, decision(t, Decision::Abort)),
            4 => msg(C, Msg::CommitOnePhase { txn: t, writes: w(key, 2) }),
            5 => msg(P2, Msg::Inquire { txn: t }),
            6 if step % 50 == 0 => {
                mark = step / 100;
                msg(C, Msg::Forget { epoch: 1, below: mark })
            }
            _ if !pending.is_empty() => {
                let i = usize::try_from(next(pending.len() as u64)).unwrap();
                Input::Persisted(pending.swap_remove(i))
            }
            _ => continue,
        };
        voted_yes.extend(feed(&mut p, input, &mut log, &mut pending));
        if step % 97 == 0 {
            let mut from_log = Participant::new(P1, config());
            let mut from_checkpoint = Participant::new(P1, config());
            let a = run(&mut from_log, Input::Restart { records: log.clone() });
            let b = run(&mut from_checkpoint, Input::Restart { records: p.live_records() });
            assert_eq!(a, b, "step {step}: the same inquiries after restart");
            assert_eq!(from_log.store(), from_checkpoint.store(), "step {step}: values, locks");
            assert_eq!(from_log.in_doubt(), from_checkpoint.in_doubt(), "step {step}");
            // The checkpoint may remember more aborts than the log: a NO vote is decided in
            // memory but never logged (presumed abort). Making it durable only strengthens it.
            let (logged, kept) = (from_log.decisions(), from_checkpoint.decisions());
            for (txn, d) in logged {
                if txn.sequence >= mark {
                    assert_eq!(kept.get(txn), Some(d), "step {step}: {txn} kept its decision");
                }
            }
            for (txn, d) in kept {
                assert!(logged.get(txn) == Some(d) || *d == Decision::Abort, "step {step}: {txn}");
            }
        }
    }
    assert!(p.store().values().values().any(|&v| v > 0), "the history committed something");
}

#[test]
fn a_checkpoint_keeps_the_coordinators_epoch_and_unacknowledged_commits_only() {
    use crate::Checkpoint;
    let mut c = ready_coordinator(config());
    let t1 = txn(1);
    let t2 = txn(2);
    run(&mut c, Input::Begin { request: RequestId(1), branches: two_branches() });
    run(&mut c, Input::Begin { request: RequestId(2), branches: two_branches() });
    for t in [t1, t2] {
        run(&mut c, msg(P1, Msg::Vote { txn: t, vote: Vote::Yes }));
        run(&mut c, msg(P2, Msg::Vote { txn: t, vote: Vote::Yes }));
        run(&mut c, Input::Persisted(Record::CommitDecided { txn: t, participants: vec![P1, P2] }));
    }
    run(&mut c, msg(P1, Msg::Ack { txn: t1 }));
    run(&mut c, msg(P2, Msg::Ack { txn: t1 }));
    run(&mut c, msg(P1, Msg::Ack { txn: t2 }));
    assert_eq!(
        c.live_records(),
        vec![
            Record::EpochStarted { epoch: 1 },
            Record::CommitDecided { txn: t2, participants: vec![P2] }
        ]
    );
    assert!(c.has_issued(t2) && !c.has_issued(txn(3)));
}

#[test]
fn every_message_survives_its_wire_form() {
    use concord_types::codec::Encode;
    let t = txn(7);
    for m in [
        prepare(t, w(1, -4)),
        Msg::Vote { txn: t, vote: Vote::ReadOnly },
        decision(t, Decision::Abort),
        Msg::Ack { txn: t },
        Msg::Inquire { txn: t },
        Msg::CommitOnePhase { txn: t, writes: w(2, 9) },
        Msg::OnePhaseResult { txn: t, decision: Decision::Commit },
    ] {
        assert_eq!(Msg::from_bytes(&m.to_bytes()), Ok(m));
    }
    assert!(<Msg>::from_bytes(&[99]).is_err());
}

#[test]
fn a_blocked_reader_can_make_a_prepared_participant_ask_at_once() {
    let cfg = config();
    let t = txn(1);
    let mut p = prepared_participant(cfg, t);
    let mut out = Vec::new();
    assert!(p.inquire_now(t, &mut out));
    assert_eq!(
        out,
        vec![send(C, Msg::Inquire { txn: t }), send(P2, Msg::Inquire { txn: t })],
        "the coordinator, and the peers under cooperative termination"
    );
    let mut out = Vec::new();
    assert!(!p.inquire_now(txn(2), &mut out), "not prepared here: nothing to ask");
    assert!(out.is_empty());
}

// ---- Early acknowledgement (the `two_phase` module docs) ----

fn early_config() -> Config {
    let mut cfg = config();
    cfg.switches.early_ack = true;
    cfg
}

fn early_prepare(txn: TxnId, writes: Vec<Write>) -> Msg {
    Msg::Prepare { txn, peers: vec![P1, P2], writes, early_ack: true }
}

fn early_prepared_record(txn: TxnId) -> Record {
    Record::Prepared { txn, peers: vec![P1, P2], writes: w(10, 5), early_ack: true }
}

fn early_prepared_participant(t: TxnId) -> Participant {
    let mut p = participant(config());
    assert_eq!(
        run(&mut p, msg(C, early_prepare(t, w(10, 5)))),
        vec![forced(early_prepared_record(t))]
    );
    run(&mut p, Input::Persisted(early_prepared_record(t)));
    p
}

#[test]
fn early_ack_tells_the_client_at_the_last_yes_and_logs_the_decision_lazily() {
    let cfg = early_config();
    let mut c = ready_coordinator(cfg.clone());
    let t = txn(1);
    let out = run(&mut c, Input::Begin { request: RequestId(1), branches: two_branches() });
    assert!(out.contains(&send(P1, early_prepare(t, w(10, 5)))));
    assert!(out.contains(&send(P2, early_prepare(t, w(20, 7)))));
    assert_eq!(run(&mut c, msg(P1, Msg::Vote { txn: t, vote: Vote::Yes })), vec![]);
    assert_eq!(
        run(&mut c, msg(P2, Msg::Vote { txn: t, vote: Vote::Yes })),
        vec![
            Command::Outcome { txn: t, decision: Decision::Commit },
            send(P1, decision(t, Decision::Commit)),
            send(P2, decision(t, Decision::Commit)),
            lazy(Record::CommitDecided { txn: t, participants: vec![P1, P2] }),
            Command::SetTimer {
                timer: Timer::ResendCommit { txn: t, attempt: 0 },
                after_us: cfg.resend_base_us
            },
        ],
        "every prepare is durable: no forced record stands between the votes and the outcome"
    );
    run(&mut c, msg(P1, Msg::Ack { txn: t }));
    assert_eq!(run(&mut c, msg(P2, Msg::Ack { txn: t })), vec![lazy(Record::Ended { txn: t })]);
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn early_ack_is_not_used_when_a_branch_only_reads_or_there_is_one_branch() {
    let mut c = ready_coordinator(early_config());
    let branches = vec![Branch { node: P1, writes: w(10, 5) }, Branch { node: P2, writes: vec![] }];
    let out = run(&mut c, Input::Begin { request: RequestId(1), branches });
    let t = txn(1);
    assert!(
        out.contains(&send(
            P2,
            Msg::Prepare { txn: t, peers: vec![P1], writes: vec![], early_ack: false }
        )),
        "a read-only branch forgets the transaction after voting: the prepares could not decide it"
    );
    let one = vec![Branch { node: P1, writes: w(10, 5) }];
    let out = run(&mut c, Input::Begin { request: RequestId(2), branches: one });
    assert!(out.contains(&send(P1, Msg::CommitOnePhase { txn: txn(2), writes: w(10, 5) })));
}

#[test]
fn early_ack_never_aborts_on_a_vote_timeout_but_asks_the_silent_branches() {
    let cfg = early_config();
    let mut c = ready_coordinator(cfg.clone());
    let t = txn(1);
    run(&mut c, Input::Begin { request: RequestId(1), branches: two_branches() });
    run(&mut c, msg(P1, Msg::Vote { txn: t, vote: Vote::Yes }));
    assert_eq!(
        run(&mut c, Input::Timer(Timer::VoteTimeout { txn: t })),
        vec![
            send(P2, Msg::Inquire { txn: t }),
            Command::SetTimer {
                timer: Timer::VoteTimeout { txn: t },
                after_us: cfg.vote_timeout_us
            },
        ],
        "P2 may be durably prepared with its YES lost: aborting now could contradict its peers"
    );
    // A branch that never saw PREPARE refuses durably and answers ABORT: now abort is final.
    assert_eq!(
        run(&mut c, msg(P2, decision(t, Decision::Abort))),
        vec![
            send(P1, decision(t, Decision::Abort)),
            Command::Outcome { txn: t, decision: Decision::Abort }
        ]
    );
}

#[test]
fn early_ack_counts_a_silent_branchs_repeated_yes_or_its_commit_as_the_lost_vote() {
    let mut c = ready_coordinator(early_config());
    let t = txn(1);
    run(&mut c, Input::Begin { request: RequestId(1), branches: two_branches() });
    run(&mut c, msg(P1, Msg::Vote { txn: t, vote: Vote::Yes }));
    run(&mut c, Input::Timer(Timer::VoteTimeout { txn: t }));
    let out = run(&mut c, msg(P2, decision(t, Decision::Commit)));
    assert_eq!(out[0], Command::Outcome { txn: t, decision: Decision::Commit });

    // Classic 2PC ignores a participant's decision message: only its votes count.
    let mut c = ready_coordinator(config());
    run(&mut c, Input::Begin { request: RequestId(1), branches: two_branches() });
    run(&mut c, msg(P1, Msg::Vote { txn: t, vote: Vote::Yes }));
    assert_eq!(run(&mut c, msg(P2, decision(t, Decision::Abort))), vec![]);
}

#[test]
fn no_presumed_abort_for_a_yes_from_before_the_restart_whatever_the_switch() {
    let t_old = TxnId { coordinator: C, epoch: 1, sequence: 1 };
    let mut c = Coordinator::new(C, early_config());
    run(&mut c, Input::Restart { records: vec![Record::EpochStarted { epoch: 1 }] });
    run(&mut c, Input::Persisted(Record::EpochStarted { epoch: 2 }));
    assert_eq!(
        run(&mut c, msg(P1, Msg::Vote { txn: t_old, vote: Vote::Yes })),
        vec![],
        "its decision record may have been lazy and lost: the prepares may have committed it"
    );
    let t_new = TxnId { coordinator: C, epoch: 2, sequence: 1 };
    assert_eq!(
        run(&mut c, msg(P1, Msg::Vote { txn: t_new, vote: Vote::Yes })),
        vec![send(P1, decision(t_new, Decision::Abort))],
        "one of this incarnation it no longer holds has ended or was refused durably"
    );
    // Nor with the switch off now: it may have been on before the restart.
    let mut c = Coordinator::new(C, config());
    run(&mut c, Input::Restart { records: vec![Record::EpochStarted { epoch: 1 }] });
    assert_eq!(run(&mut c, msg(P1, Msg::Vote { txn: t_old, vote: Vote::Yes })), vec![]);
}

#[test]
fn early_ack_refusal_is_forced_before_the_no_vote() {
    let mut p = participant(config());
    let t = txn(1);
    assert_eq!(
        run(&mut p, msg(C, early_prepare(t, w(10, -1)))),
        vec![forced(Record::Aborted { txn: t })],
        "a refusal forgotten in a crash could let a late PREPARE complete the set of prepares"
    );
    assert_eq!(
        run(&mut p, Input::Persisted(Record::Aborted { txn: t })),
        vec![
            Command::Outcome { txn: t, decision: Decision::Abort },
            send(C, Msg::Vote { txn: t, vote: Vote::No })
        ]
    );
    // After a crash the refusal is still there: a repeated PREPARE cannot prepare.
    let mut restarted: Participant = Participant::new(P1, config());
    run(&mut restarted, Input::Restart { records: vec![Record::Aborted { txn: t }] });
    assert_eq!(
        run(&mut restarted, msg(C, early_prepare(t, w(10, 5)))),
        vec![send(C, Msg::Vote { txn: t, vote: Vote::No })]
    );
}

#[test]
fn early_ack_participant_asks_only_its_peers_and_commits_once_every_peer_is_prepared() {
    let cfg = config();
    let t = txn(1);
    let mut p = early_prepared_participant(t);
    assert_eq!(
        run(&mut p, Input::Timer(Timer::Inquire { txn: t, attempt: 0 })),
        vec![
            send(P2, Msg::Inquire { txn: t }),
            Command::SetTimer {
                timer: Timer::Inquire { txn: t, attempt: 1 },
                after_us: 2 * cfg.inquiry_base_us
            },
        ],
        "not the coordinator: with its lazy decision record lost it would presume abort"
    );
    assert_eq!(
        run(&mut p, msg(NodeId(3), Msg::Vote { txn: t, vote: Vote::Yes })),
        vec![],
        "a node that is not a peer proves nothing"
    );
    assert_eq!(
        run(&mut p, msg(P2, Msg::Vote { txn: t, vote: Vote::Yes })),
        vec![forced(Record::Committed { txn: t })],
        "every branch is durably prepared: the transaction is committed"
    );
}

#[test]
fn early_ack_prepared_participant_answers_an_inquiry_with_its_yes() {
    let t = txn(1);
    let mut p = early_prepared_participant(t);
    assert_eq!(
        run(&mut p, msg(P2, Msg::Inquire { txn: t })),
        vec![send(P2, Msg::Vote { txn: t, vote: Vote::Yes })]
    );
    assert_eq!(
        run(&mut p, msg(C, Msg::Inquire { txn: t })),
        vec![send(C, Msg::Vote { txn: t, vote: Vote::Yes })],
        "the coordinator asks a branch whose vote it missed"
    );
    // A classic prepared branch stays silent (it knows nothing a peer could use).
    let mut classic = prepared_participant(config(), t);
    assert_eq!(run(&mut classic, msg(P2, Msg::Inquire { txn: t })), vec![]);
}

#[test]
fn early_ack_prepared_record_survives_restart_and_checkpoint_with_its_flag() {
    use crate::Checkpoint;
    use concord_types::codec::Encode;
    let t = txn(1);
    let record = early_prepared_record(t);
    assert_eq!(Record::from_bytes(&record.to_bytes()), Ok(record.clone()));
    let m = early_prepare(t, w(1, 2));
    assert_eq!(Msg::from_bytes(&m.to_bytes()), Ok(m));
    let p = early_prepared_participant(t);
    assert!(p.live_records().contains(&record));
    let mut restarted: Participant = Participant::new(P1, config());
    run(&mut restarted, Input::Restart { records: vec![record] });
    assert_eq!(
        run(&mut restarted, Input::Timer(Timer::Inquire { txn: t, attempt: 0 }))[0],
        send(P2, Msg::Inquire { txn: t }),
        "after a restart it still asks its peers, not the coordinator"
    );
}

#[test]
fn a_checkpoint_of_many_decisions_splits_into_records_that_each_fit_and_rebuild_them_all() {
    use crate::Checkpoint;
    use concord_types::codec::Encode;
    let mut p = participant(config());
    let n = u32::try_from(2 * crate::CHECKPOINT_CHUNK + 7).unwrap();
    for sequence in 1..=n {
        // One-phase commits and refused prepares: remembered decisions, nothing left open.
        let t = txn(sequence);
        if sequence % 2 == 0 {
            let writes = w(u64::from(sequence % 100), 1);
            run(&mut p, msg(C, Msg::CommitOnePhase { txn: t, writes: writes.clone() }));
            run(&mut p, Input::Persisted(Record::OnePhaseCommitted { txn: t, writes }));
        } else {
            run(&mut p, msg(C, prepare(t, w(1, -1))));
        }
    }
    let live = p.live_records();
    assert_eq!(live.len(), 3, "a snapshot and two more records of decisions");
    for record in &live {
        let bytes = record.to_bytes();
        assert!(bytes.len() < 1 << 20, "{} bytes", bytes.len());
        assert_eq!(Record::from_bytes(&bytes).as_ref(), Ok(record));
    }
    let mut restarted: Participant = Participant::new(P1, config());
    run(&mut restarted, Input::Restart { records: live });
    assert_eq!(restarted.decisions(), p.decisions());
    assert_eq!(restarted.decisions().len(), n as usize);
}

// ---- Forgetting (the `two_phase` module docs) ----

fn one_phase(c: &mut Coordinator, request: u64, node: NodeId, key: u64) -> TxnId {
    let out = run(
        c,
        Input::Begin {
            request: RequestId(request),
            branches: vec![Branch { node, writes: w(key, 1) }],
        },
    );
    let Some(Command::Begun { txn, .. }) = out.first() else { panic!("not begun: {out:?}") };
    *txn
}

#[test]
fn the_coordinator_says_forget_once_its_low_water_mark_moved_forget_every_transactions() {
    let mut cfg = config();
    cfg.forget_every = 2;
    let mut c = ready_coordinator(cfg);
    let (t1, t2, t3) =
        (one_phase(&mut c, 1, P1, 1), one_phase(&mut c, 2, P2, 2), one_phase(&mut c, 3, P1, 3));
    let result = |txn| Msg::OnePhaseResult { txn, decision: Decision::Commit };
    // t2 finishes first: t1 still runs, so the mark stays at t1.
    assert!(!run(&mut c, msg(P2, result(t2)))
        .iter()
        .any(|c| matches!(c, Command::Send { msg: Msg::Forget { .. }, .. })));
    // t1 finishes: the mark jumps to t3 (sequence 3), two past the start.
    let out = run(&mut c, msg(P1, result(t1)));
    let forgets: Vec<&Cmd> =
        out.iter().filter(|c| matches!(c, Command::Send { msg: Msg::Forget { .. }, .. })).collect();
    assert_eq!(
        forgets,
        vec![
            &send(P1, Msg::Forget { epoch: 1, below: 3 }),
            &send(P2, Msg::Forget { epoch: 1, below: 3 })
        ],
        "every node that was a branch hears it"
    );
    // t3 finishing moves the mark by one only: not yet worth a FORGET.
    assert!(!run(&mut c, msg(P1, result(t3)))
        .iter()
        .any(|c| matches!(c, Command::Send { msg: Msg::Forget { .. }, .. })));
}

#[test]
fn a_participant_forgets_below_the_mark_and_answers_late_duplicates_from_it() {
    let mut p = participant(config());
    let (t1, t2, t3) = (txn(1), txn(2), txn(3));
    // t1 committed in one phase, t2 refused, t3 prepared and still open (its ABORT was lost).
    run(&mut p, msg(C, Msg::CommitOnePhase { txn: t1, writes: w(10, 5) }));
    run(&mut p, Input::Persisted(Record::OnePhaseCommitted { txn: t1, writes: w(10, 5) }));
    run(&mut p, msg(C, prepare(t2, w(11, -1))));
    run(&mut p, msg(C, prepare(t3, w(12, 1))));
    run(
        &mut p,
        Input::Persisted(Record::Prepared {
            txn: t3,
            peers: vec![P1, P2],
            writes: w(12, 1),
            early_ack: false,
        }),
    );
    assert_eq!(p.decisions().len(), 2);

    assert_eq!(run(&mut p, msg(C, Msg::Forget { epoch: 1, below: 4 })), vec![]);
    assert!(p.decisions().is_empty(), "decisions below the mark are forgotten");
    assert_eq!(p.in_doubt(), vec![t3], "an open branch is never forgotten");
    assert_eq!(
        run(&mut p, msg(C, Msg::CommitOnePhase { txn: t1, writes: w(10, 5) })),
        vec![],
        "a late duplicate is not applied twice"
    );
    assert_eq!(p.store().value(10), 5);
    let t0 = txn(0);
    assert_eq!(
        run(&mut p, msg(C, prepare(t0, w(13, 1)))),
        vec![],
        "a late PREPARE below the mark does not prepare"
    );
    assert_eq!(p.store().locked_keys(), 1, "only t3's lock");
    assert_eq!(
        run(&mut p, msg(P2, Msg::Inquire { txn: t2 })),
        vec![send(P2, decision(t2, Decision::Abort))],
        "answered from the mark, with nothing forced"
    );
    assert_eq!(run(&mut p, msg(C, decision(t2, Decision::Abort))), vec![]);
    assert!(p.decisions().is_empty(), "nothing about a forgotten transaction is remembered again");
    // The mark never moves back.
    run(&mut p, msg(C, Msg::Forget { epoch: 1, below: 2 }));
    assert_eq!(
        run(&mut p, msg(C, prepare(txn(3), w(12, 1)))),
        vec![send(C, Msg::Vote { txn: t3, vote: Vote::Yes })]
    );
}

#[test]
fn the_mark_survives_a_checkpoint_and_a_restart() {
    use crate::Checkpoint;
    let mut p = participant(config());
    let t1 = txn(1);
    run(&mut p, msg(C, Msg::CommitOnePhase { txn: t1, writes: w(10, 5) }));
    run(&mut p, Input::Persisted(Record::OnePhaseCommitted { txn: t1, writes: w(10, 5) }));
    run(&mut p, msg(C, Msg::Forget { epoch: 1, below: 2 }));
    let live = p.live_records();
    assert!(live.contains(&Record::Forgotten { coordinator: C, epoch: 1, below: 2 }));
    let mut restarted: Participant = Participant::new(P1, config());
    run(&mut restarted, Input::Restart { records: live });
    assert_eq!(restarted.store().value(10), 5);
    assert_eq!(
        run(&mut restarted, msg(C, Msg::CommitOnePhase { txn: t1, writes: w(10, 5) })),
        vec![],
        "still a duplicate after the restart"
    );
    assert_eq!(restarted.store().value(10), 5, "applied once");
}

fn reservation(r: crate::Reservation) -> Input<Msg, Record, Timer> {
    Input::Reservation(r)
}

#[test]
fn a_reserved_id_runs_once_and_only_while_held() {
    use crate::Reservation::{Begin, Release, Reserve};
    let mut c = ready_coordinator(config());
    let out = run(&mut c, reservation(Reserve { request: RequestId(1) }));
    assert_eq!(out, vec![Command::Reserved { request: RequestId(1), txn: txn(1) }]);
    // The reserved id is the transaction's.
    let out = run(
        &mut c,
        reservation(Begin { request: RequestId(2), txn: txn(1), branches: two_branches() }),
    );
    assert_eq!(out[0], Command::Begun { request: RequestId(2), txn: txn(1) });
    assert!(out.contains(&send(P1, prepare(txn(1), w(10, 5)))));
    // Used once: a second begin under it is refused, as is an id never reserved.
    for (request, txn) in [(3, txn(1)), (4, txn(7))] {
        let out = run(
            &mut c,
            reservation(Begin { request: RequestId(request), txn, branches: two_branches() }),
        );
        let reason = Rejection::NotReserved;
        assert_eq!(out, vec![Command::Rejected { request: RequestId(request), reason }]);
    }
    // Released: never runs.
    run(&mut c, reservation(Reserve { request: RequestId(5) }));
    run(&mut c, reservation(Release { txn: txn(2) }));
    let out = run(
        &mut c,
        reservation(Begin { request: RequestId(6), txn: txn(2), branches: two_branches() }),
    );
    assert_eq!(
        out,
        vec![Command::Rejected { request: RequestId(6), reason: Rejection::NotReserved }]
    );
    // Ids reserved before a restart are not held after it.
    run(&mut c, reservation(Reserve { request: RequestId(7) }));
    run(&mut c, Input::Restart { records: vec![Record::EpochStarted { epoch: 1 }] });
    run(&mut c, Input::Persisted(Record::EpochStarted { epoch: 2 }));
    let out = run(
        &mut c,
        reservation(Begin { request: RequestId(8), txn: txn(3), branches: two_branches() }),
    );
    assert_eq!(
        out,
        vec![Command::Rejected { request: RequestId(8), reason: Rejection::NotReserved }]
    );
}

#[test]
fn a_reserved_id_holds_the_forget_mark_below_it() {
    use crate::Reservation::{Begin, Reserve};
    let mut cfg = config();
    cfg.forget_every = 1;
    let mut c = ready_coordinator(cfg);
    run(&mut c, reservation(Reserve { request: RequestId(1) })); // txn 1, held
    let t2 = one_phase(&mut c, 2, P1, 2);
    let out = run(&mut c, msg(P1, Msg::OnePhaseResult { txn: t2, decision: Decision::Commit }));
    assert!(
        !out.iter().any(|c| matches!(c, Command::Send { msg: Msg::Forget { .. }, .. })),
        "t2 finished, but reserved t1 may still run: no FORGET past it"
    );
    let one = vec![Branch { node: P1, writes: w(1, 1) }];
    run(&mut c, reservation(Begin { request: RequestId(3), txn: txn(1), branches: one }));
    let out = run(&mut c, msg(P1, Msg::OnePhaseResult { txn: txn(1), decision: Decision::Commit }));
    assert!(out.contains(&send(P1, Msg::Forget { epoch: 1, below: 3 })), "{out:?}");
}

/// After an accepted loss of data the participant cannot tell "never voted" from "voted and
/// lost the record": for a transaction issued before the loss it votes no second time, answers
/// no inquiry with ABORT, and takes COMMIT from its coordinator (reporting the lost writes).
/// Transactions at or past the coordinator's horizon run as ever.
#[test]
fn a_participant_that_lost_data_presumes_nothing_about_what_it_may_have_forgotten() {
    let mut p = participant(config());
    p.set_amnesia(crate::amnesia::Amnesia::default());
    let old = txn(5);
    assert_eq!(run(&mut p, msg(C, prepare(old, w(10, 5)))), vec![], "no second vote");
    assert_eq!(run(&mut p, msg(P2, Msg::Inquire { txn: old })), vec![], "no presumed abort");
    assert_eq!(
        run(&mut p, msg(C, Msg::CommitOnePhase { txn: old, writes: w(10, 1) })),
        vec![],
        "a one-phase commit that may have been applied is neither applied again nor refused"
    );
    assert_eq!(run(&mut p, msg(P2, decision(old, Decision::Commit))), vec![], "only from C");
    assert_eq!(
        run(&mut p, msg(C, decision(old, Decision::Commit))),
        vec![send(C, Msg::Ack { txn: old })]
    );
    assert_eq!(p.lost_commits(), &[old]);
    assert_eq!(p.store().value(10), 0, "nothing to apply: the writes were lost");

    // Until the horizon is learned every id is suspect; after it, new ids vote as ever.
    let new = txn(9);
    assert_eq!(run(&mut p, msg(C, prepare(new, w(10, 5)))), vec![]);
    p.learn_horizon(txn(8));
    let record =
        Record::Prepared { txn: new, peers: vec![P1, P2], writes: w(10, 5), early_ack: false };
    assert_eq!(run(&mut p, msg(C, prepare(new, w(10, 5)))), vec![forced(record)]);
    assert_eq!(run(&mut p, msg(C, prepare(txn(7), w(11, 5)))), vec![], "below it: still none");
    let never = txn(12);
    assert_eq!(
        run(&mut p, msg(P2, Msg::Inquire { txn: never })),
        vec![forced(Record::Aborted { txn: never })],
        "past the horizon, never voted means never voted"
    );
}
