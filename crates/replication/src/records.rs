//! The machine a coordinator runs on the replicated log: its records, in order — what its
//! local log held, now on a majority of machines.
//!
//! A coordinator's log is replaced now and then by its live records (a checkpoint) so it does
//! not grow for ever. Here a checkpoint is a command like any other, submitted behind the
//! records it summarises; applying it replaces every record before it. The leader computes it
//! from its core, which has seen exactly the records submitted before it, and the log's order
//! carries that to every replica: the same rule as the local log's checkpoint (`concord_wal`).
//! A replica never builds a core to compact its own records — a core replayed outside the
//! leader would decide things (presume abort) the leader has not.
//!
//! Beside the records the machine keeps one number, the **timestamp bound**: the highest
//! timestamp (wall-clock microseconds) any leader's key-value gateway may have issued. A
//! gateway issues a timestamp only below a bound the log has committed, and a new leader's
//! gateway starts its clock above the bound it finds, so a transaction that begins after
//! another was acknowledged reads above its commit timestamp whichever replica led either.

use crate::codec::{DecodeError, Reader, Writer};
use crate::Machine;

const RECORD: u8 = 1;
const CHECKPOINT: u8 = 2;
const BARRIER: u8 = 3;
const TIMESTAMP_BOUND: u8 = 4;

/// A command carrying one record.
pub fn record_command(record: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(RECORD);
    w.bytes(record);
    w.bytes
}

/// A command replacing every record before it by `live`.
pub fn checkpoint_command(live: &[Vec<u8>]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(CHECKPOINT);
    w.len(live.len());
    live.iter().for_each(|record| w.bytes(record));
    w.bytes
}

/// A command that changes nothing: committed behind everything submitted before it, so a
/// replica that sees it applied knows all of that is applied too (or was refused).
pub fn barrier_command() -> Vec<u8> {
    vec![BARRIER]
}

/// A command raising the timestamp bound to `wall_us` (a lower one changes nothing).
pub fn timestamp_bound_command(wall_us: u64) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(TIMESTAMP_BOUND);
    w.u64(wall_us);
    w.bytes
}

enum Command {
    Record(Vec<u8>),
    Checkpoint(Vec<Vec<u8>>),
    Barrier,
    TimestampBound(u64),
}

fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
    let mut r = Reader::new(bytes);
    let command = decode_one(&mut r)?;
    r.end()?;
    Ok(command)
}

fn decode_one(r: &mut Reader) -> Result<Command, DecodeError> {
    let command = match r.u8()? {
        RECORD => Command::Record(r.bytes()?.to_vec()),
        CHECKPOINT => {
            // Each record costs at least its 4-byte length.
            let n = r.count(4)?;
            let mut live = Vec::with_capacity(n);
            for _ in 0..n {
                live.push(r.bytes()?.to_vec());
            }
            Command::Checkpoint(live)
        }
        BARRIER => Command::Barrier,
        TIMESTAMP_BOUND => Command::TimestampBound(r.u64()?),
        other => return Err(DecodeError(format!("command kind {other}"))),
    };
    Ok(command)
}

/// A coordinator's records as the replicated log has committed them.
#[derive(Debug, Default)]
pub struct RecordLog {
    records: Vec<Vec<u8>>,
    last_index: u64,
    malformed: u64,
    timestamp_bound: u64,
}

impl RecordLog {
    /// The records a coordinator recovers from, in order.
    pub fn records(&self) -> &[Vec<u8>] {
        &self.records
    }

    /// The highest timestamp bound committed (0: none yet).
    pub fn timestamp_bound(&self) -> u64 {
        self.timestamp_bound
    }

    /// The index of the last command applied.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Commands that did not decode (none, unless something other than a coordinator wrote
    /// to the log): skipped and counted, never applied half.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

impl Machine for RecordLog {
    fn apply(&mut self, index: u64, command: &[u8]) {
        assert!(
            index >= self.last_index,
            "applied in log order: {index} after {}",
            self.last_index
        );
        self.last_index = index;
        match decode(command) {
            Ok(Command::Record(record)) => self.records.push(record),
            Ok(Command::Checkpoint(live)) => self.records = live,
            Ok(Command::Barrier) => {}
            Ok(Command::TimestampBound(wall_us)) => {
                self.timestamp_bound = self.timestamp_bound.max(wall_us);
            }
            Err(_) => self.malformed += 1,
        }
    }

    /// The last index, the records as a checkpoint, then the timestamp bound as its command.
    fn snapshot(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u64(self.last_index);
        w.bytes.extend_from_slice(&checkpoint_command(&self.records));
        w.bytes.extend_from_slice(&timestamp_bound_command(self.timestamp_bound));
        w.bytes
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let Some((index, commands)) = snapshot.split_first_chunk::<8>() else {
            return Err("a snapshot shorter than its header".into());
        };
        let mut r = Reader::new(commands);
        let undecodable = |e: DecodeError| format!("a snapshot that does not decode: {}", e.0);
        let Command::Checkpoint(live) = decode_one(&mut r).map_err(undecodable)? else {
            return Err("a snapshot holding a command, not a checkpoint".into());
        };
        if r.end().is_ok() {
            return Err("a snapshot without its timestamp bound".into());
        }
        let Command::TimestampBound(bound) = decode_one(&mut r).map_err(undecodable)? else {
            return Err("a snapshot without its timestamp bound".into());
        };
        r.end().map_err(undecodable)?;
        self.records = live;
        self.timestamp_bound = bound;
        self.last_index = u64::from_le_bytes(*index);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn a_checkpoint_replaces_the_records_before_it_and_a_snapshot_keeps_them() {
        let mut log = RecordLog::default();
        log.apply(1, &record_command(b"epoch 1"));
        log.apply(2, &record_command(b"prepared t1"));
        log.apply(3, &record_command(b"committed t1"));
        log.apply(4, &checkpoint_command(&[r("epoch 1")]));
        log.apply(5, &record_command(b"prepared t2"));
        log.apply(5, &barrier_command());
        log.apply(6, &timestamp_bound_command(9_000));
        log.apply(7, &timestamp_bound_command(8_000));
        assert_eq!(log.records(), &[r("epoch 1"), r("prepared t2")]);
        assert_eq!(log.malformed(), 0, "a barrier is no malformed command");
        assert_eq!(log.timestamp_bound(), 9_000, "a bound only rises");

        let mut copy = RecordLog::default();
        copy.restore(&log.snapshot()).unwrap();
        assert_eq!(copy.records(), log.records());
        assert_eq!(copy.last_index(), 7);
        assert_eq!(copy.timestamp_bound(), 9_000, "a snapshot keeps the bound");
        copy.apply(8, &record_command(b"committed t2"));
        assert_eq!(copy.records().len(), 3);
    }

    #[test]
    fn malformed_commands_are_counted_not_applied_and_bad_snapshots_refused() {
        let mut log = RecordLog::default();
        log.apply(1, &record_command(b"kept"));
        for (i, bad) in
            [vec![], vec![9], vec![1, 255, 255, 255, 255], vec![2, 9, 0, 0, 0]].iter().enumerate()
        {
            log.apply(2 + i as u64, bad);
        }
        let mut trailing = record_command(b"x");
        trailing.push(0);
        log.apply(10, &trailing);
        assert_eq!(log.records(), &[r("kept")]);
        assert_eq!(log.malformed(), 5);

        let mut other = RecordLog::default();
        assert!(other.restore(&[1, 2, 3]).is_err());
        let mut wrong = 7u64.to_le_bytes().to_vec();
        wrong.extend_from_slice(&record_command(b"x"));
        assert!(other.restore(&wrong).is_err());
        let mut unbounded = 7u64.to_le_bytes().to_vec();
        unbounded.extend_from_slice(&checkpoint_command(&[r("x")]));
        assert!(other.restore(&unbounded).unwrap_err().contains("timestamp bound"));
        assert!(other.records().is_empty(), "a refused snapshot changes nothing");
    }
}
