//! Core unit tests for Paxos Commit: feed inputs, assert the exact commands emitted.

use concord_types::{Decision, NodeId, RequestId, TxnId, Write};

use super::{Acceptor, Config, Coordinator, Msg, Participant, Record, Timer, Value};
use crate::amnesia::AfterDataLoss as _;
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
            send(P1, Msg::Prepare { txn: t, participants: vec![P1, P2], writes: w(), wide: false }),
            send(P2, Msg::Prepare { txn: t, participants: vec![P1, P2], writes: w(), wide: false }),
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
        run(
            &mut p,
            msg(C, Msg::Prepare { txn: t, participants: vec![P1, P2], writes: w(), wide: false })
        ),
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
        run(
            &mut p,
            msg(
                C,
                Msg::Prepare { txn: t, participants: vec![P1, P2], writes: refused, wide: false }
            )
        ),
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
            // Forgetting: the decision is resent until every participant acknowledges it.
            Command::SetTimer {
                timer: Timer::DecisionRetry { txn: t, attempt: 0 },
                after_us: config().ballot_timeout_us
            },
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

#[test]
fn every_message_and_record_survives_its_wire_form() {
    use concord_types::codec::Encode;
    let t = txn();
    for m in [
        Msg::Prepare { txn: t, participants: vec![P1, P2], writes: w(), wide: false },
        vote(P1, Value::Prepared),
        Msg::Phase2b {
            txn: t,
            ballot: 9,
            values: vec![(P1, Value::Prepared), (P2, Value::Aborted)],
        },
        Msg::Phase1a { txn: t, ballot: 17, leader: A2 },
        Msg::Phase1b {
            txn: t,
            ballot: 17,
            accepted: vec![(P1, 0, Value::Prepared), (P2, 9, Value::Aborted)],
        },
        Msg::Reject { txn: t, promised: 33 },
        Msg::Decision { txn: t, decision: Decision::Commit },
        Msg::Inquire { txn: t, participants: vec![P1, P2] },
    ] {
        assert_eq!(Msg::from_bytes(&m.to_bytes()), Ok(m));
    }
    assert!(<Msg>::from_bytes(&[99]).is_err());
    let snapshot: Record = Record::Snapshot {
        values: w(),
        committed: vec![t],
        aborted: vec![TxnId { sequence: 2, ..t }],
    };
    assert_eq!(Record::from_bytes(&snapshot.to_bytes()), Ok(snapshot));
}

/// A small deterministic generator for the random histories below.
fn rng(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut state = seed;
    move |n| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    }
}

/// Feeds `input`, keeping every record in `log` and the forced ones in `pending` (they become
/// durable later, in any order).
fn feed<N: Core<Msg = Msg, Record = Record, Timer = Timer, Change = Vec<Write>>>(
    node: &mut N,
    input: Input<Msg, Record, Timer>,
    log: &mut Vec<Record>,
    pending: &mut Vec<Record>,
) -> Vec<Cmd> {
    let out = run(node, input);
    for cmd in &out {
        if let Command::Persist { record, durability } = cmd {
            log.push(record.clone());
            if *durability == Durability::Forced {
                pending.push(record.clone());
            }
        }
    }
    out
}

/// Replaying a participant's checkpoint rebuilds what replaying its whole log rebuilds, at
/// every point of a random history (prepares, refusals, both decisions, records becoming
/// durable in any order).
#[test]
fn a_checkpoint_rebuilds_the_same_participant_as_the_whole_log() {
    use crate::{Checkpoint, ParticipantView};
    let mut next = rng(0x2545_f491_4f6c_dd1d);
    let mut p: Participant = Participant::new(P1, config());
    let (mut log, mut pending) = (Vec::new(), Vec::new());
    let mut voted_prepared: Vec<TxnId> = Vec::new();
    let mut mark = 1;
    feed(&mut p, Input::Restart { records: vec![] }, &mut log, &mut pending);
    for step in 0..3_000u32 {
        let t = TxnId { sequence: 1 + u32::try_from(next(40)).unwrap(), ..txn() };
        if next(60) == 0 {
            // Now and then a FORGET (switch `forget` is on): the log and the checkpoint must
            // agree on what it dropped, kept and aborted too.
            mark += u32::try_from(next(4)).unwrap();
            let forget = Msg::Forget { coordinator: C, epoch: 1, below: mark };
            feed(&mut p, msg(C, forget), &mut log, &mut pending);
        }
        let input = match next(6) {
            0 | 1 => {
                let key = next(6);
                let delta = i64::try_from(next(9)).unwrap() - 3;
                let writes = vec![Write { key, delta }];
                msg(C, Msg::Prepare { txn: t, participants: vec![P1, P2], writes, wide: false })
            }
            2 if !voted_prepared.is_empty() => {
                let i = usize::try_from(next(voted_prepared.len() as u64)).unwrap();
                msg(C, Msg::Decision { txn: voted_prepared[i], decision: Decision::Commit })
            }
            3 => msg(C, Msg::Decision { txn: t, decision: Decision::Abort }),
            _ if !pending.is_empty() => {
                let i = usize::try_from(next(pending.len() as u64)).unwrap();
                Input::Persisted(pending.swap_remove(i))
            }
            _ => continue,
        };
        for cmd in feed(&mut p, input, &mut log, &mut pending) {
            if let Command::Send { msg: Msg::Phase2a { txn, values, .. }, .. } = cmd {
                if values == [(P1, Value::Prepared)] {
                    voted_prepared.push(txn);
                }
            }
        }
        if step % 97 == 0 {
            let mut from_log: Participant = Participant::new(P1, config());
            let mut from_checkpoint: Participant = Participant::new(P1, config());
            let a = run(&mut from_log, Input::Restart { records: log.clone() });
            let b = run(&mut from_checkpoint, Input::Restart { records: p.live_records() });
            assert_eq!(a, b, "step {step}: the same votes and inquiries after restart");
            assert_eq!(from_log.store(), from_checkpoint.store(), "step {step}: values, locks");
            assert_eq!(from_log.in_doubt(), from_checkpoint.in_doubt(), "step {step}");
            // The checkpoint may remember more aborts than the log: an ABORT for a branch
            // never prepared here is remembered in memory only. Durable only strengthens it.
            let logged: Vec<_> = from_log.decisions().collect();
            let kept: std::collections::BTreeMap<_, _> = from_checkpoint.decisions().collect();
            for (txn, d) in &logged {
                assert_eq!(kept.get(txn), Some(d), "step {step}: {txn} kept its decision");
            }
            for (txn, d) in &kept {
                assert!(logged.contains(&(*txn, *d)) || *d == Decision::Abort, "step {step}");
            }
        }
    }
    assert!(p.store().values().values().any(|&v| v != 0), "the history committed something");
}

/// An acceptor rebuilt from its checkpoint is the acceptor rebuilt from its whole log: same
/// promises, same accepted values at the same ballots, same next epoch.
#[test]
fn a_checkpoint_rebuilds_the_same_acceptor_as_the_whole_log() {
    use crate::Checkpoint;
    let mut next = rng(0x9e37_79b9_7f4a_7c15);
    let mut a: Acceptor = Acceptor::new(A1, config());
    let (mut log, mut pending) = (Vec::new(), Vec::new());
    let mut mark = 1;
    feed(&mut a, Input::Restart { records: vec![] }, &mut log, &mut pending);
    for step in 0..3_000u32 {
        let t = TxnId { sequence: 1 + u32::try_from(next(30)).unwrap(), ..txn() };
        if next(80) == 0 {
            mark += u32::try_from(next(3)).unwrap();
            let forget = Msg::Forget { coordinator: C, epoch: 1, below: mark };
            feed(&mut a, msg(C, forget), &mut log, &mut pending);
        }
        let ballot = next(4) * 10;
        let value = if next(5) == 0 { Value::Aborted } else { Value::Prepared };
        let input = match next(5) {
            0 | 1 => {
                let instance = if next(2) == 0 { P1 } else { P2 };
                msg(
                    instance,
                    Msg::Phase2a {
                        txn: t,
                        ballot,
                        values: vec![(instance, value)],
                        leader: C,
                        participants: vec![P1, P2],
                    },
                )
            }
            2 => msg(A2, Msg::Phase1a { txn: t, ballot, leader: A2 }),
            _ if !pending.is_empty() => {
                let i = usize::try_from(next(pending.len() as u64)).unwrap();
                Input::Persisted(pending.swap_remove(i))
            }
            _ => continue,
        };
        feed(&mut a, input, &mut log, &mut pending);
        if step % 89 == 0 {
            let mut from_log: Acceptor = Acceptor::new(A1, config());
            let mut from_checkpoint: Acceptor = Acceptor::new(A1, config());
            let x = run(&mut from_log, Input::Restart { records: log.clone() });
            let y = run(&mut from_checkpoint, Input::Restart { records: a.live_records() });
            assert_eq!(x, y, "step {step}: the same next epoch");
            assert_eq!(from_log, from_checkpoint, "step {step}: promises and acceptances");
        }
    }
    assert!(log.iter().any(|r| matches!(r, Record::Accepted { ballot, .. } if *ballot > 0)));
}

/// The coordinator asks about a transaction it forgot: a participant that never prepared it
/// promises durably never to (so it cannot commit) before answering ABORT; a decided one
/// answers its decision; a prepared one stays silent; anyone but the coordinator is ignored.
#[test]
fn a_participant_answers_its_coordinators_status_query() {
    let t = txn();
    let query = Msg::Inquire { txn: t, participants: vec![] };
    let mut p: Participant = Participant::new(P1, config());
    run(&mut p, Input::Restart { records: vec![] });
    assert_eq!(run(&mut p, msg(A1, query.clone())), vec![], "only the coordinator asks");
    assert_eq!(run(&mut p, msg(C, query.clone())), vec![forced(Record::Aborted { txn: t })]);
    let prepare = Msg::Prepare { txn: t, participants: vec![P1, P2], writes: w(), wide: false };
    assert_eq!(run(&mut p, msg(C, prepare.clone())), vec![], "promised: never prepares it");
    let answer = Msg::Decision { txn: t, decision: Decision::Abort };
    assert_eq!(
        run(&mut p, Input::Persisted(Record::Aborted { txn: t })),
        vec![send(C, answer.clone())]
    );
    assert_eq!(run(&mut p, msg(C, query.clone())), vec![send(C, answer)], "decided: answers");
    assert_eq!(run(&mut p, msg(C, prepare)), vec![], "still never prepares it");

    let t2 = TxnId { sequence: 2, ..t };
    let mut q: Participant = Participant::new(P1, config());
    run(&mut q, Input::Restart { records: vec![] });
    let prepare = Msg::Prepare { txn: t2, participants: vec![P1, P2], writes: w(), wide: false };
    run(&mut q, msg(C, prepare));
    let query = Msg::Inquire { txn: t2, participants: vec![] };
    assert_eq!(run(&mut q, msg(C, query)), vec![], "in doubt: no answer yet");
}

#[test]
fn a_checkpoint_of_many_decisions_splits_into_records_that_each_fit_and_rebuild_them_all() {
    use crate::Checkpoint;
    use concord_types::codec::Encode;
    let n = u32::try_from(2 * crate::CHECKPOINT_CHUNK + 7).unwrap();
    let mut log = Vec::new();
    for sequence in 1..=n {
        let t = TxnId { coordinator: C, epoch: 1, sequence };
        if sequence % 3 == 0 {
            log.push(Record::Prepared { txn: t, participants: vec![P1, P2], writes: w() });
            log.push(Record::Committed { txn: t });
        } else {
            log.push(Record::Aborted { txn: t });
        }
    }
    let mut p = <Participant>::new(P1, config());
    run(&mut p, Input::Restart { records: log });
    let live = p.live_records();
    assert_eq!(live.len(), 2, "aborts (2/3 of {n}) need two chunks");
    for record in &live {
        let bytes = record.to_bytes();
        assert!(bytes.len() < 1 << 20, "{} bytes", bytes.len());
        assert_eq!(Record::from_bytes(&bytes).as_ref(), Ok(record));
    }
    let mut restarted = <Participant>::new(P1, config());
    run(&mut restarted, Input::Restart { records: live });
    let before: Vec<_> = p.decisions().collect();
    let after: Vec<_> = restarted.decisions().collect();
    assert_eq!(after.len(), n as usize);
    assert_eq!(after, before);
}

#[test]
fn one_participant_commits_in_one_phase_without_the_acceptors() {
    let cfg = config();
    let mut c = ready_coordinator();
    let t = txn();
    let out = run(
        &mut c,
        Input::Begin { request: RequestId(1), branches: vec![Branch { node: P1, writes: w() }] },
    );
    assert_eq!(
        out,
        vec![
            Command::Begun { request: RequestId(1), txn: t },
            send(P1, Msg::CommitOnePhase { txn: t, writes: w() }),
            Command::SetTimer {
                timer: Timer::OnePhaseRetry { txn: t, attempt: 0 },
                after_us: cfg.ballot_timeout_us
            },
        ],
        "no PREPARE, no ballot: the only participant's vote is the outcome"
    );
    assert_eq!(c.in_flight(), 1);
    let resent = run(&mut c, Input::Timer(Timer::OnePhaseRetry { txn: t, attempt: 0 }));
    assert_eq!(resent[0], send(P1, Msg::CommitOnePhase { txn: t, writes: w() }));
    assert_eq!(
        run(&mut c, Input::Timer(Timer::OnePhaseRetry { txn: t, attempt: 0 })),
        vec![],
        "stale"
    );
    let result = Msg::OnePhaseResult { txn: t, decision: Decision::Commit };
    assert_eq!(run(&mut c, msg(P2, result.clone())), vec![], "only the branch answers");
    assert_eq!(
        run(&mut c, msg(P1, result)),
        vec![Command::Outcome { txn: t, decision: Decision::Commit }]
    );
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn a_one_phase_participant_forces_either_outcome_and_repeats_it() {
    let mut p = <Participant>::new(P1, config());
    run(&mut p, Input::Restart { records: vec![] });
    let t = txn();
    let record = Record::OnePhaseCommitted { txn: t, writes: w() };
    assert_eq!(
        run(&mut p, msg(C, Msg::CommitOnePhase { txn: t, writes: w() })),
        vec![forced(record.clone())]
    );
    assert_eq!(run(&mut p, msg(C, Msg::CommitOnePhase { txn: t, writes: w() })), vec![], "pending");
    let committed = Msg::OnePhaseResult { txn: t, decision: Decision::Commit };
    assert_eq!(
        run(&mut p, Input::Persisted(record)),
        vec![Command::Outcome { txn: t, decision: Decision::Commit }, send(C, committed.clone())]
    );
    assert_eq!(p.resource().value(1), 1);
    assert_eq!(
        run(&mut p, msg(C, Msg::CommitOnePhase { txn: t, writes: w() })),
        vec![send(C, committed)]
    );
    assert_eq!(p.resource().value(1), 1, "applied once");

    let t2 = TxnId { sequence: 2, ..t };
    let refused = vec![Write { key: 1, delta: -5 }];
    assert_eq!(
        run(&mut p, msg(C, Msg::CommitOnePhase { txn: t2, writes: refused })),
        vec![forced(Record::Aborted { txn: t2 })]
    );
    let aborted = Msg::OnePhaseResult { txn: t2, decision: Decision::Abort };
    assert_eq!(
        run(&mut p, Input::Persisted(Record::Aborted { txn: t2 })),
        vec![Command::Outcome { txn: t2, decision: Decision::Abort }, send(C, aborted)]
    );
    // A restart keeps both outcomes.
    use crate::Checkpoint;
    let mut again = <Participant>::new(P1, config());
    run(&mut again, Input::Restart { records: p.live_records() });
    assert_eq!(again.resource().value(1), 1);
    assert_eq!(
        again.decisions().collect::<Vec<_>>(),
        vec![(t, Decision::Commit), (t2, Decision::Abort)]
    );
}

/// Whether the PREPAREs among `out` say wide.
fn prepares_wide(out: &[Cmd]) -> Vec<bool> {
    out.iter()
        .filter_map(|c| match c {
            Command::Send { msg: Msg::Prepare { wide, .. }, .. } => Some(*wide),
            _ => None,
        })
        .collect()
}

fn begun(out: &[Cmd]) -> TxnId {
    out.iter()
        .find_map(|c| match c {
            Command::Begun { txn, .. } => Some(*txn),
            _ => None,
        })
        .expect("begun")
}

#[test]
fn a_ballot_zero_timeout_sends_votes_to_every_acceptor_until_all_answer_again() {
    let mut c = ready_coordinator();
    let first = begin(&mut c);
    assert_eq!(prepares_wide(&first), vec![false, false], "the normal case: F + 1 acceptors");
    // Acceptor 1 is down: ballot 0 never completes, and its timer fires.
    let t1 = begun(&first);
    run(&mut c, Input::Timer(Timer::BallotZero { txn: t1 }));
    let second = begin(&mut c);
    assert_eq!(prepares_wide(&second), vec![true, true], "wide after a ballot-0 timeout");
    let t2 = begun(&second);
    // Only A2 and A3 answer the wide transaction: still wide.
    let b = |t: TxnId| Msg::Phase2b { txn: t, ballot: 0, values: vec![(P1, Value::Prepared)] };
    run(&mut c, msg(A2, b(t2)));
    run(&mut c, msg(A3, b(t2)));
    assert_eq!(prepares_wide(&begin(&mut c)), vec![true, true]);
    // A1 is back and answers too: the normal case again.
    run(&mut c, msg(A1, b(t2)));
    assert_eq!(prepares_wide(&begin(&mut c)), vec![false, false]);
    // A timer of a transaction no longer in ballot 0 says nothing about the acceptors.
    run(&mut c, Input::Timer(Timer::BallotZero { txn: TxnId { sequence: 99, ..t1 } }));
    assert_eq!(prepares_wide(&begin(&mut c)), vec![false, false]);
}

#[test]
fn a_wide_prepare_sends_the_vote_to_every_acceptor() {
    let mut p: Participant = Participant::new(P1, config());
    run(&mut p, Input::Restart { records: vec![] });
    let t = txn();
    run(
        &mut p,
        msg(C, Msg::Prepare { txn: t, participants: vec![P1, P2], writes: w(), wide: true }),
    );
    let out = run(
        &mut p,
        Input::Persisted(Record::Prepared { txn: t, participants: vec![P1, P2], writes: w() }),
    );
    let to: Vec<NodeId> = out
        .iter()
        .filter_map(|c| match c {
            Command::Send { to, msg: Msg::Phase2a { .. } } => Some(*to),
            _ => None,
        })
        .collect();
    assert_eq!(to, vec![A1, A2, A3]);
}

fn lazy(r: Record) -> Cmd {
    Command::Persist { record: r, durability: Durability::Lazy }
}

fn forgetting_config(forgotten_kept: u32) -> Config {
    let mut cfg = Config { forget_every: 1, ..config() };
    cfg.switches.forgotten_kept = forgotten_kept;
    cfg
}

/// The coordinator keeps a decided transaction until both participants acknowledge it,
/// resending the decision to the silent one, then sends FORGET to every participant and every
/// acceptor — and answers an inquiry below its mark with the mark.
#[test]
fn the_coordinator_forgets_once_every_participant_acknowledged_the_decision() {
    let cfg = forgetting_config(0);
    let mut c = Coordinator::new(C, cfg.clone());
    run(&mut c, Input::Restart { records: vec![] });
    run(&mut c, Input::Persisted(Record::EpochStarted { epoch: 1 }));
    begin(&mut c);
    let t = txn();
    let both = vec![(P1, Value::Prepared), (P2, Value::Prepared)];
    run(&mut c, msg(A1, Msg::Phase2b { txn: t, ballot: 0, values: both.clone() }));
    let decided = run(&mut c, msg(A2, Msg::Phase2b { txn: t, ballot: 0, values: both }));
    assert!(decided.contains(&Command::Outcome { txn: t, decision: Decision::Commit }));
    let ack = |d| Msg::Ack { txn: t, decision: d };
    assert_eq!(run(&mut c, msg(P1, ack(Decision::Commit))), vec![], "P2 has not acknowledged");
    let retry = Input::Timer(Timer::DecisionRetry { txn: t, attempt: 0 });
    let resent = run(&mut c, retry);
    assert_eq!(resent[0], send(P2, Msg::Decision { txn: t, decision: Decision::Commit }));
    assert_eq!(resent.len(), 2, "only to the silent participant, and a timer: {resent:?}");
    let forget = Msg::Forget { coordinator: C, epoch: 1, below: 2 };
    assert_eq!(
        run(&mut c, msg(P2, ack(Decision::Commit))),
        [P1, P2, A1, A2, A3].map(|to| send(to, forget.clone())).to_vec()
    );
    let retry = Input::Timer(Timer::DecisionRetry { txn: t, attempt: 1 });
    assert_eq!(run(&mut c, retry), vec![], "acknowledged: no more resends");
    let inquiry = Msg::Inquire { txn: t, participants: vec![P1, P2] };
    assert_eq!(run(&mut c, msg(P1, inquiry)), vec![send(P1, forget)]);
}

/// An acknowledgement carries a chosen decision: a coordinator whose ballot 0 is still open
/// (an acceptor led the ballot that chose) finishes with it.
#[test]
fn an_acknowledgement_tells_an_undecided_coordinator_the_decision() {
    let mut c = Coordinator::new(C, forgetting_config(0));
    run(&mut c, Input::Restart { records: vec![] });
    run(&mut c, Input::Persisted(Record::EpochStarted { epoch: 1 }));
    begin(&mut c);
    let t = txn();
    let out = run(&mut c, msg(P1, Msg::Ack { txn: t, decision: Decision::Abort }));
    assert!(out.contains(&Command::Outcome { txn: t, decision: Decision::Abort }), "{out:?}");
    assert!(out.contains(&send(P2, Msg::Decision { txn: t, decision: Decision::Abort })));
}

/// A participant acknowledges a commit once it is durable; FORGET drops its decision (kept
/// for status, or answered FORGOTTEN when none are kept); a late PREPARE below the mark is
/// ignored and a late decision acknowledged again.
#[test]
fn a_participant_forgets_below_the_mark_and_never_answers_abort_for_what_it_forgot() {
    for kept in [0, 10] {
        let mut p: Participant = Participant::new(P1, forgetting_config(kept));
        run(&mut p, Input::Restart { records: vec![] });
        let t = txn();
        let prepare = Msg::Prepare { txn: t, participants: vec![P1, P2], writes: w(), wide: false };
        run(&mut p, msg(C, prepare.clone()));
        run(
            &mut p,
            Input::Persisted(Record::Prepared { txn: t, participants: vec![P1, P2], writes: w() }),
        );
        let commit = Msg::Decision { txn: t, decision: Decision::Commit };
        assert_eq!(run(&mut p, msg(C, commit.clone())), vec![forced(Record::Committed { txn: t })]);
        let ack = send(C, Msg::Ack { txn: t, decision: Decision::Commit });
        let durable = run(&mut p, Input::Persisted(Record::Committed { txn: t }));
        assert_eq!(durable.last(), Some(&ack), "acknowledged once durable: {durable:?}");

        let forget = Msg::Forget { coordinator: C, epoch: 1, below: 2 };
        assert_eq!(
            run(&mut p, msg(C, forget)),
            vec![lazy(Record::Forgotten { coordinator: C, epoch: 1, below: 2 })]
        );
        assert_eq!(p.decisions().count(), 0, "the decision is forgotten");
        let query = Msg::Inquire { txn: t, participants: vec![] };
        let answer = if kept > 0 {
            Msg::Decision { txn: t, decision: Decision::Commit }
        } else {
            Msg::Forgotten { txn: t }
        };
        assert_eq!(run(&mut p, msg(C, query)), vec![send(C, answer)], "kept {kept}");
        assert_eq!(run(&mut p, msg(C, prepare)), vec![], "a late PREPARE must not prepare again");
        assert_eq!(run(&mut p, msg(C, commit)), vec![ack], "a late decision: acknowledged");
    }
}

/// A branch still prepared below a mark lost its lazy ABORTED record in a crash (a committed
/// transaction is acknowledged by every participant, and only once durable): it aborts, when
/// FORGET arrives, when an acceptor answers its inquiry with the mark, or at restart.
#[test]
fn a_branch_found_prepared_below_the_mark_aborts() {
    let t = txn();
    let prepared = Record::Prepared { txn: t, participants: vec![P1, P2], writes: w() };
    let mut p: Participant = Participant::new(P1, forgetting_config(10));
    run(&mut p, Input::Restart { records: vec![prepared.clone()] });
    assert_eq!(p.in_doubt(), vec![t]);
    let out = run(&mut p, msg(A1, Msg::Forget { coordinator: C, epoch: 1, below: 2 }));
    assert!(out.contains(&Command::Outcome { txn: t, decision: Decision::Abort }), "{out:?}");
    assert!(out.contains(&lazy(Record::Aborted { txn: t })));
    assert!(p.in_doubt().is_empty());
    assert_eq!(p.resource().locked_keys(), 0, "its locks are released");

    let mark = Record::Forgotten { coordinator: C, epoch: 1, below: 2 };
    let mut q: Participant = Participant::new(P1, forgetting_config(10));
    run(&mut q, Input::Restart { records: vec![mark.clone(), prepared.clone()] });
    assert!(q.in_doubt().is_empty(), "aborted at restart");

    // A mark already known, repeated by a candidate, still settles a branch that became
    // prepared after it arrived (its prepare record was on its way then).
    let t2 = TxnId { sequence: 2, ..t };
    let mut r: Participant = Participant::new(P1, forgetting_config(10));
    run(&mut r, Input::Restart { records: vec![] });
    let prepare = Msg::Prepare { txn: t2, participants: vec![P1, P2], writes: w(), wide: false };
    run(&mut r, msg(C, prepare));
    run(&mut r, msg(C, Msg::Forget { coordinator: C, epoch: 1, below: 3 }));
    let late = Record::Prepared { txn: t2, participants: vec![P1, P2], writes: w() };
    run(&mut r, Input::Persisted(late));
    assert_eq!(r.in_doubt(), vec![t2]);
    run(&mut r, msg(A2, Msg::Forget { coordinator: C, epoch: 1, below: 3 }));
    assert!(r.in_doubt().is_empty(), "the repeated mark aborts it");
}

/// An acceptor drops the instances below a mark, writes the mark, ignores every later message
/// about them (an acceptor that stopped, for those instances), and answers an inquiry with it.
#[test]
fn an_acceptor_forgets_the_instances_below_the_mark_and_ignores_them_after() {
    use crate::Checkpoint;
    let t = txn();
    let mut a: Acceptor = Acceptor::new(A1, forgetting_config(0));
    run(&mut a, Input::Restart { records: vec![] });
    run(&mut a, msg(P1, vote(P1, Value::Prepared)));
    assert!(a.live_records().iter().any(|r| matches!(r, Record::Accepted { .. })));
    let forget = Msg::Forget { coordinator: C, epoch: 1, below: 2 };
    let mark = Record::Forgotten { coordinator: C, epoch: 1, below: 2 };
    assert_eq!(run(&mut a, msg(C, forget.clone())), vec![lazy(mark.clone())]);
    assert_eq!(a.live_records(), vec![Record::EpochStarted { epoch: 1 }, mark]);
    assert_eq!(run(&mut a, msg(C, forget.clone())), vec![], "an old mark moves nothing");
    // Whoever still asks is told the mark (and nothing is promised, accepted or written).
    let ballot = Msg::Phase1a { txn: t, ballot: 7, leader: A2 };
    assert_eq!(run(&mut a, msg(A2, ballot)), vec![send(A2, forget.clone())]);
    assert_eq!(run(&mut a, msg(P2, vote(P2, Value::Prepared))), vec![send(P2, forget.clone())]);
    assert_eq!(run(&mut a, msg(A2, Msg::Phase2b { txn: t, ballot: 7, values: vec![] })), vec![]);
    let inquiry = Msg::Inquire { txn: t, participants: vec![P1, P2] };
    assert_eq!(run(&mut a, msg(P1, inquiry)), vec![send(P1, forget)]);
    assert_eq!(a.live_records().len(), 2, "still only the epoch and the mark");
    let above = TxnId { sequence: 2, ..t };
    let later = Msg::Phase1a { txn: above, ballot: 7, leader: A2 };
    assert_eq!(run(&mut a, msg(A2, later)).len(), 1, "above the mark: business as usual");
}

/// A restarted coordinator asked about a transaction of its earlier epoch starts a ballot; the
/// acceptors, which forgot it, answer with the mark, and the round ends instead of retrying
/// its ballot for ever.
#[test]
fn a_ballot_below_the_mark_ends_when_an_acceptor_answers_with_the_mark() {
    let mut c = Coordinator::new(C, forgetting_config(0));
    run(&mut c, Input::Restart { records: vec![Record::EpochStarted { epoch: 1 }] });
    run(&mut c, Input::Persisted(Record::EpochStarted { epoch: 2 }));
    let old = txn(); // epoch 1
    let inquiry = Msg::Inquire { txn: old, participants: vec![P1, P2] };
    let out = run(&mut c, msg(P1, inquiry));
    assert!(out.iter().any(|cmd| matches!(cmd, Command::Send { msg: Msg::Phase1a { .. }, .. })));
    assert_eq!(c.in_flight(), 1);
    run(&mut c, msg(A1, Msg::Forget { coordinator: C, epoch: 1, below: 5 }));
    assert_eq!(c.in_flight(), 0, "the round is gone");
    let retry = out.iter().find_map(|cmd| match cmd {
        Command::SetTimer { timer: timer @ Timer::Ballot { .. }, .. } => Some(*timer),
        _ => None,
    });
    assert_eq!(run(&mut c, Input::Timer(retry.expect("a ballot timer"))), vec![], "no retry");
}

/// After an accepted loss of data a Paxos Commit participant casts no second ballot-0 vote for
/// a transaction it may have voted on (two values in one ballot would break Paxos), promises
/// no ABORT to a status query, and takes COMMIT, acknowledging it and reporting the writes
/// lost. Past the coordinator's horizon it votes as ever.
#[test]
fn a_participant_that_lost_data_casts_no_second_vote_and_promises_nothing() {
    let t = txn();
    let mut p: Participant = Participant::new(P1, config());
    run(&mut p, Input::Restart { records: vec![] });
    p.set_amnesia(crate::amnesia::Amnesia::default());
    let prepare = Msg::Prepare { txn: t, participants: vec![P1, P2], writes: w(), wide: false };
    assert_eq!(run(&mut p, msg(C, prepare)), vec![], "no second vote");
    let query = Msg::Inquire { txn: t, participants: vec![] };
    assert_eq!(run(&mut p, msg(C, query)), vec![], "no promise of ABORT");
    let one_phase = Msg::CommitOnePhase { txn: t, writes: w() };
    assert_eq!(run(&mut p, msg(C, one_phase)), vec![], "neither applied again nor refused");
    let commit = Msg::Decision { txn: t, decision: Decision::Commit };
    assert_eq!(
        run(&mut p, msg(C, commit)),
        vec![send(C, Msg::Ack { txn: t, decision: Decision::Commit })]
    );
    assert_eq!(p.lost_commits(), &[t]);

    let new = TxnId { sequence: 5, ..t };
    p.learn_horizon(new);
    let prepare = Msg::Prepare { txn: new, participants: vec![P1, P2], writes: w(), wide: false };
    assert_eq!(
        run(&mut p, msg(C, prepare)),
        vec![forced(Record::Prepared { txn: new, participants: vec![P1, P2], writes: w() })]
    );
}
