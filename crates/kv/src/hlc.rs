//! Hybrid logical clocks (Kulkarni et al., 2014), as the seed documents give the rules.
//!
//! A timestamp is (wall, logical): wall is the highest physical time seen, in microseconds;
//! logical orders events within one wall value. Rules:
//! * **send / local event**: `wall' = max(wall, physical)`; logical is `logical + 1` if wall
//!   did not move, else 0.
//! * **receive** of a remote `m`: `wall' = max(wall, m.wall, physical)`; logical is
//!   `max(logical, m.logical) + 1`, `logical + 1`, `m.logical + 1` or 0 depending on which
//!   walls tie with the new one.
//!
//! Timestamps so built respect causality and stay within the clock offset of physical time.
//! A node **refuses** a remote timestamp whose wall is more than `max_offset` ahead of its own
//! physical clock: accepting it would drag this clock ahead with it, past every other node's.
//!
//! Physical time is an input (the clock is sans-IO): the runtime passes the system clock, the
//! simulator its virtual clock plus a per-node skew.

use std::fmt;

use concord_types::codec::{DecodeError, Encode, Reader, Writer};

/// A point in hybrid-logical time. Ordered by wall, then logical.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Microseconds since the Unix epoch (or since the simulation began).
    pub wall: u64,
    pub logical: u32,
}

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp { wall: 0, logical: 0 };
    pub const MAX: Timestamp = Timestamp { wall: u64::MAX, logical: u32::MAX };

    pub fn new(wall: u64, logical: u32) -> Self {
        Timestamp { wall, logical }
    }

    /// The smallest timestamp after this one.
    pub fn next(self) -> Timestamp {
        match self.logical.checked_add(1) {
            Some(logical) => Timestamp { wall: self.wall, logical },
            None => Timestamp { wall: self.wall + 1, logical: 0 },
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall, self.logical)
    }
}

impl std::str::FromStr for Timestamp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (wall, logical) = s.split_once('.').unwrap_or((s, "0"));
        Ok(Timestamp {
            wall: wall.parse().map_err(|_| format!("bad timestamp `{s}`"))?,
            logical: logical.parse().map_err(|_| format!("bad timestamp `{s}`"))?,
        })
    }
}

impl Encode for Timestamp {
    fn encode(&self, w: &mut Writer<'_>) {
        w.u64(self.wall);
        w.u32(self.logical);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Timestamp { wall: r.u64()?, logical: r.u32()? })
    }
}

/// A remote timestamp was too far ahead of this node's physical clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("timestamp {remote} is {ahead_us} us ahead of this node's clock (maximum offset {max_offset_us} us); the clocks are further apart than the offset allows: fix the clocks")]
pub struct ClockOffsetError {
    pub remote: Timestamp,
    pub ahead_us: u64,
    pub max_offset_us: u64,
}

/// One node's hybrid logical clock.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Hlc {
    last: Timestamp,
    max_offset_us: u64,
}

impl Hlc {
    pub fn new(max_offset_us: u64) -> Self {
        Hlc { last: Timestamp::ZERO, max_offset_us }
    }

    pub fn max_offset_us(&self) -> u64 {
        self.max_offset_us
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Timestamp {
        self.last
    }

    /// A timestamp for a local event or a send: after everything seen so far.
    pub fn now(&mut self, physical_us: u64) -> Timestamp {
        self.last = if physical_us > self.last.wall {
            Timestamp { wall: physical_us, logical: 0 }
        } else {
            self.last.next()
        };
        self.last
    }

    /// Takes in a remote timestamp (the receive rule), or refuses it if it is beyond the
    /// maximum offset. Returns the clock's new reading.
    pub fn observe(
        &mut self,
        remote: Timestamp,
        physical_us: u64,
    ) -> Result<Timestamp, ClockOffsetError> {
        self.check(remote, physical_us)?;
        let wall = self.last.wall.max(remote.wall).max(physical_us);
        let logical = if wall == self.last.wall && wall == remote.wall {
            self.last.logical.max(remote.logical).saturating_add(1)
        } else if wall == self.last.wall {
            self.last.logical.saturating_add(1)
        } else if wall == remote.wall {
            remote.logical.saturating_add(1)
        } else {
            0
        };
        self.last = Timestamp { wall, logical };
        Ok(self.last)
    }

    /// Moves the clock past `ts` without the offset check: for timestamps this node already
    /// accepted once (replayed from its log) or chose itself.
    pub fn witness(&mut self, ts: Timestamp) {
        self.last = self.last.max(ts);
    }

    /// Whether `remote` is within the maximum offset of `physical_us` (without observing it).
    pub fn check(&self, remote: Timestamp, physical_us: u64) -> Result<(), ClockOffsetError> {
        let ahead_us = remote.wall.saturating_sub(physical_us);
        if ahead_us > self.max_offset_us {
            return Err(ClockOffsetError { remote, ahead_us, max_offset_us: self.max_offset_us });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_events_are_strictly_increasing_even_if_the_physical_clock_stalls_or_steps_back() {
        let mut hlc = Hlc::new(500);
        let a = hlc.now(1_000);
        let b = hlc.now(1_000);
        let c = hlc.now(900);
        let d = hlc.now(2_000);
        assert!(a < b && b < c && c < d);
        assert_eq!(a, Timestamp::new(1_000, 0));
        assert_eq!(c, Timestamp::new(1_000, 2));
        assert_eq!(d, Timestamp::new(2_000, 0));
    }

    #[test]
    fn receiving_moves_past_the_remote_timestamp() {
        let mut hlc = Hlc::new(500);
        hlc.now(1_000);
        let remote = Timestamp::new(1_300, 7);
        let t = hlc.observe(remote, 1_010).unwrap();
        assert_eq!(t, Timestamp::new(1_300, 8));
        assert!(hlc.now(1_020) > remote, "later local events follow the received one");
        // Equal walls on both sides: the larger logical counter wins, plus one.
        let mut other = Hlc::new(500);
        other.now(1_300);
        assert_eq!(
            other.observe(Timestamp::new(1_300, 3), 1_200).unwrap(),
            Timestamp::new(1_300, 4)
        );
    }

    #[test]
    fn a_timestamp_beyond_the_maximum_offset_is_refused_and_leaves_the_clock_alone() {
        let mut hlc = Hlc::new(500);
        let before = hlc.now(1_000);
        let err = hlc.observe(Timestamp::new(1_501, 0), 1_000).unwrap_err();
        assert_eq!(err.ahead_us, 501);
        assert_eq!(hlc.last(), before);
        assert!(
            hlc.observe(Timestamp::new(1_500, 0), 1_000).is_ok(),
            "exactly at the bound is fine"
        );
    }

    #[test]
    fn timestamps_round_trip_through_text_and_bytes() {
        let t = Timestamp::new(123_456, 9);
        assert_eq!(t.to_string().parse::<Timestamp>().unwrap(), t);
        assert_eq!(Timestamp::from_bytes(&t.to_bytes()).unwrap(), t);
        assert!(Timestamp::new(5, u32::MAX).next() == Timestamp::new(6, 0));
    }
}
