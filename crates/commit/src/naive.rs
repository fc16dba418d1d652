//! The naive baseline: "send COMMIT to everyone, no prepare". Used only to show what 2PC
//! prevents.
//!
//! Each participant applies its writes when told and reports whether it could. Nothing is
//! prepared, so when one participant fails after the others applied, the transaction is
//! partially committed and no one can undo it: the seed documents' "structural failure rate".

use std::collections::BTreeMap;
use std::fmt;

use concord_types::codec::{DecodeError, Encode, Reader, Writer};
use concord_types::{Decision, NodeId, RequestId, TxnId, Write};

use crate::epoch::{EpochClock, Issue};
use crate::store::Store;
use crate::{
    Branch, Command, Core, Durability, Input, MessageKind, NoRole, ParticipantView, Protocol,
    RecordKind, Rejection, Switches, Topology,
};

#[derive(Debug, Clone, Copy)]
pub struct Naive;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Msg {
    Apply { txn: TxnId, writes: Vec<Write> },
    Applied { txn: TxnId, decision: Decision },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Record {
    EpochStarted { epoch: u32 },
    Applied { txn: TxnId, writes: Vec<Write> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Timer {
    ReplyTimeout { txn: TxnId },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// The coordinator reports ABORT to the client if not every participant answered by then.
    pub reply_timeout_us: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config { reply_timeout_us: 50_000 }
    }
}

type Out = Vec<Command<Msg, Record, Timer>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Coordinator {
    id: NodeId,
    config: Config,
    clock: Option<EpochClock>,
    /// Transaction → participants that have not answered yet, and whether any failed.
    waiting: BTreeMap<TxnId, (Vec<NodeId>, bool)>,
}

impl Coordinator {
    fn begin(&mut self, request: RequestId, branches: &[Branch], out: &mut Out) {
        if branches.is_empty() {
            return out.push(Command::Rejected { request, reason: Rejection::Invalid });
        }
        let clock = self.clock.as_mut().expect("drivers deliver Restart before any other input");
        // The baseline keeps no queue: a request that arrives before the epoch is durable, or
        // when the sequence runs out, is refused and may be retried.
        let Issue::Txn(txn) = clock.issue() else {
            return out.push(Command::Rejected { request, reason: Rejection::Overloaded });
        };
        out.push(Command::Begun { request, txn });
        for b in branches {
            out.push(Command::Send {
                to: b.node,
                msg: Msg::Apply { txn, writes: b.writes.clone() },
            });
        }
        out.push(Command::SetTimer {
            timer: Timer::ReplyTimeout { txn },
            after_us: self.config.reply_timeout_us,
        });
        self.waiting.insert(txn, (branches.iter().map(|b| b.node).collect(), false));
    }
}

impl Core for Coordinator {
    type Msg = Msg;
    type Record = Record;
    type Timer = Timer;
    type Change = Vec<concord_types::Write>;

    fn handle(&mut self, input: Input<Msg, Record, Timer>, out: &mut Out) {
        match input {
            Input::Restart { records } => {
                let highest = records
                    .iter()
                    .filter_map(|r| match r {
                        Record::EpochStarted { epoch } => Some(*epoch),
                        Record::Applied { .. } => None,
                    })
                    .max();
                let (clock, epoch) = EpochClock::recover(self.id, highest);
                self.clock = Some(clock);
                self.waiting.clear();
                out.push(Command::Persist {
                    record: Record::EpochStarted { epoch },
                    durability: Durability::Forced,
                });
            }
            Input::Persisted(Record::EpochStarted { epoch }) => {
                if let Some(clock) = self.clock.as_mut() {
                    clock.on_persisted(epoch);
                }
            }
            Input::Persisted(Record::Applied { .. }) => {}
            Input::Begin { request, branches } => self.begin(request, &branches, out),
            Input::Reservation(r) => r.refuse(out),
            Input::Message { from, msg: Msg::Applied { txn, decision } } => {
                let Some((pending, failed)) = self.waiting.get_mut(&txn) else { return };
                pending.retain(|&p| p != from);
                *failed |= decision == Decision::Abort;
                if pending.is_empty() {
                    let failed = *failed;
                    self.waiting.remove(&txn);
                    let decision = if failed { Decision::Abort } else { Decision::Commit };
                    out.push(Command::Outcome { txn, decision });
                }
            }
            Input::Timer(Timer::ReplyTimeout { txn }) => {
                if self.waiting.remove(&txn).is_some() {
                    out.push(Command::Outcome { txn, decision: Decision::Abort });
                }
            }
            Input::Message { msg: Msg::Apply { .. }, .. } => {}
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Participant {
    id: NodeId,
    store: Store,
    /// Branches being made durable.
    applying: BTreeMap<TxnId, Vec<Write>>,
    decided: BTreeMap<TxnId, Decision>,
}

impl Core for Participant {
    type Msg = Msg;
    type Record = Record;
    type Timer = Timer;
    type Change = Vec<concord_types::Write>;

    fn handle(&mut self, input: Input<Msg, Record, Timer>, out: &mut Out) {
        match input {
            Input::Restart { records } => {
                self.store = Store::default();
                self.applying.clear();
                self.decided.clear();
                for record in records {
                    match record {
                        Record::Applied { txn, writes } => {
                            self.store.apply(&writes);
                            self.decided.insert(txn, Decision::Commit);
                        }
                        Record::EpochStarted { .. } => {
                            panic!("participant {} found a coordinator record", self.id)
                        }
                    }
                }
            }
            Input::Message { msg: Msg::Apply { txn, writes }, .. } => {
                if let Some(&decision) = self.decided.get(&txn) {
                    let msg = Msg::Applied { txn, decision };
                    return out.push(Command::Send { to: txn.coordinator, msg });
                }
                if self.applying.contains_key(&txn) {
                    return;
                }
                let refused = self.store.check_constraint(&writes).is_err()
                    || self
                        .applying
                        .values()
                        .flatten()
                        .any(|w| writes.iter().any(|x| x.key == w.key));
                if refused {
                    self.decided.insert(txn, Decision::Abort);
                    out.push(Command::Outcome { txn, decision: Decision::Abort });
                    let msg = Msg::Applied { txn, decision: Decision::Abort };
                    return out.push(Command::Send { to: txn.coordinator, msg });
                }
                out.push(Command::Persist {
                    record: Record::Applied { txn, writes: writes.clone() },
                    durability: Durability::Forced,
                });
                self.applying.insert(txn, writes);
            }
            Input::Persisted(Record::Applied { txn, .. }) => {
                let writes =
                    self.applying.remove(&txn).expect("only applying branches are persisted");
                self.store.apply(&writes);
                self.decided.insert(txn, Decision::Commit);
                out.push(Command::Outcome { txn, decision: Decision::Commit });
                let msg = Msg::Applied { txn, decision: Decision::Commit };
                out.push(Command::Send { to: txn.coordinator, msg });
            }
            Input::Persisted(Record::EpochStarted { .. })
            | Input::Message { msg: Msg::Applied { .. }, .. }
            | Input::Timer(_)
            | Input::Begin { .. }
            | Input::Reservation(_) => {}
        }
    }
}

impl ParticipantView for Participant {
    fn in_doubt(&self) -> Vec<TxnId> {
        Vec::new() // nothing is ever prepared, so nothing is ever in doubt — or safe
    }
    fn store(&self) -> &Store {
        &self.store
    }
}

impl Protocol for Naive {
    const NAME: &'static str = "naive";
    type Msg = Msg;
    type Record = Record;
    type Timer = Timer;
    type Config = Config;
    type Coordinator = Coordinator;
    type Participant = Participant;
    type Acceptor = NoRole<Msg, Record, Timer>;

    fn config(_switches: Switches, _topology: &Topology) -> Config {
        Config::default()
    }
    fn coordinator(id: NodeId, config: &Config) -> Coordinator {
        Coordinator { id, config: config.clone(), clock: None, waiting: BTreeMap::new() }
    }
    fn participant(id: NodeId, _config: &Config) -> Participant {
        Participant {
            id,
            store: Store::default(),
            applying: BTreeMap::new(),
            decided: BTreeMap::new(),
        }
    }
    fn message_kind(_msg: &Msg) -> MessageKind {
        MessageKind::Other
    }
    fn record_kind(record: &Record) -> RecordKind {
        match *record {
            Record::Applied { txn, .. } => {
                RecordKind::BranchDecided { txn, decision: Decision::Commit }
            }
            Record::EpochStarted { .. } => RecordKind::Other,
        }
    }
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Msg::Apply { txn, .. } => write!(f, "APPLY {txn}"),
            Msg::Applied { txn, decision } => write!(f, "APPLIED {decision} {txn}"),
        }
    }
}

impl fmt::Display for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Timer::ReplyTimeout { txn } => write!(f, "reply timeout {txn}"),
        }
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::EpochStarted { epoch } => write!(f, "epoch {epoch}"),
            Record::Applied { txn, .. } => write!(f, "applied {txn}"),
        }
    }
}

impl Encode for Record {
    fn encode(&self, w: &mut Writer<'_>) {
        match self {
            Record::EpochStarted { epoch } => {
                w.u8(1);
                w.u32(*epoch);
            }
            Record::Applied { txn, writes } => {
                w.u8(2);
                w.txn(*txn);
                w.writes(writes);
            }
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8()? {
            1 => Record::EpochStarted { epoch: r.u32()? },
            2 => Record::Applied { txn: r.txn()?, writes: r.writes()? },
            tag => return Err(DecodeError::UnknownTag { what: "naive record", tag }),
        })
    }
}
