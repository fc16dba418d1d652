//! Concord's transactional key-value store, as pure parts the drivers assemble.
//!
//! * [`hlc`] — hybrid logical clocks: timestamps for snapshots and commits, and the
//!   maximum-offset refusal.
//! * [`change`] — keys, ranges, isolation levels, and [`KvChange`]: what one transaction asks
//!   of one shard at commit.
//! * [`shard`] — [`MvccShard`], the multi-version store behind a 2PC participant
//!   (`concord_commit::two_phase::Participant<MvccShard>`): versions, intents, read
//!   timestamps, validation, garbage collection.
//! * [`session`] — a transaction as its gateway keeps it: snapshot, read set, buffered writes,
//!   limits; and [`ShardMap`], range sharding by split points.
//!
//! Cross-shard commits run through the 2PC core unchanged: `two_phase::Coordinator<KvChange,
//! KvSnapshot>` routes each shard's change; a single-shard transaction commits in one phase.

pub mod change;
pub mod hlc;
pub mod session;
pub mod shard;

pub use change::{Isolation, Key, KeyRange, KvChange, Value};
pub use hlc::{Hlc, Timestamp};
pub use session::{LimitError, Limits, ShardMap, Transaction, ENTRY_OVERHEAD_BYTES};
pub use shard::{
    decode_versions, encode_versions, KvSnapshot, MvccShard, ReadError, Refusal, StoreSeal, Version,
};

/// The 2PC participant of a KV shard.
pub type ShardParticipant = concord_commit::two_phase::Participant<MvccShard>;
/// The records a KV shard's 2PC participant writes.
pub type KvRecord = concord_commit::two_phase::Record<KvChange, KvSnapshot>;
