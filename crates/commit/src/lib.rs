//! Atomic-commit protocols as pure state machines.
//!
//! ```text
//!            inputs                                   commands
//!  Begin{request, branches} ─┐                 ┌─ Send{to, msg}
//!  Message{from, msg}       ─┤                 ├─ Persist{record, durability}
//!  Timer(timer)             ─┼──► protocol ────┼─ SetTimer{timer, after_us}
//!  Persisted(record)        ─┤     core        ├─ Begun{request, txn} / Rejected{request, reason}
//!  Restart{records}         ─┘  (&mut self)    └─ Outcome{txn, decision}
//! ```
//!
//! A core never touches sockets, files, clocks, randomness or tasks: the driver (the simulator in
//! `concord-sim`, the tokio runtime later) does, and feeds the results back as inputs.
//!
//! **Log before you send is structural.** A core that must not act before a record is durable
//! emits `Persist` and stops; the driver answers with `Persisted(record)` once the record is
//! synced, and only then does the core emit what depended on it (a YES vote, a COMMIT). A
//! `Lazy` record gets no answer: it rides on the next sync, and nothing waits for it.
//!
//! Every node starts with `Restart{records}` — empty on the first start — so first start and
//! recovery are one code path.
//!
//! Modules: [`two_phase`] (2PC with presumed abort, read-only and one-phase optimisations,
//! cooperative termination), [`three_phase`] (3PC with a termination protocol),
//! [`paxos_commit`] (Gray & Lamport's Paxos Commit), [`naive`] (the baseline that shows what
//! 2PC prevents), [`admission`] (the request checks every coordinator makes), [`Resource`]
//! (what a participant commits; [`store`] is the simulator's), [`epoch`] (globally unique transaction ids),
//! [`status`] (status by id, from the participants when the coordinator no longer knows).

pub mod admission;
pub mod amnesia;
pub mod epoch;
pub mod naive;
pub mod paxos_commit;
mod protocol;
mod resource;
pub mod status;
pub mod store;
pub mod three_phase;
pub mod two_phase;
pub mod xa;

pub use protocol::{
    backoff_us, Branch, Checkpoint, Command, Core, Durability, Input, MessageKind, NoRole,
    NodeRole, ParticipantView, Protocol, RecordKind, Rejection, Reservation, ResourceParticipant,
    Switches, Topology,
};
pub use resource::{Change, Resource};

/// Most decisions one checkpoint record carries: a participant that remembers more writes
/// them in several records, so no record outgrows the log's frame (about 13 bytes each: 50,000
/// is ~650 KB, far below 16 MiB).
pub const CHECKPOINT_CHUNK: usize = 50_000;
