//! Armed timers, soonest first, for a driver's loop: one heap the loop owns instead of a
//! sleeping task per timer (a loop under load arms hundreds of thousands; most never matter,
//! because the cores ignore a timer that no longer fits their state, and a task each costs an
//! allocation, a wake-up and a channel send even then).
//!
//! Pure: the deadline is any ordered value (a driver's `Instant`, a simulator's virtual time);
//! the caller reads its own clock.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// Timers of type `T` due at deadlines of type `D`.
#[derive(Debug)]
pub struct TimerHeap<D, T> {
    heap: BinaryHeap<Reverse<Entry<D, T>>>,
    next_id: u64,
}

/// Ordered by deadline, then by arming order (so equal deadlines fire first-armed first).
#[derive(Debug)]
struct Entry<D, T> {
    at: D,
    id: u64,
    timer: T,
}

impl<D: Ord, T> PartialEq for Entry<D, T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<D: Ord, T> Eq for Entry<D, T> {}
impl<D: Ord, T> PartialOrd for Entry<D, T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<D: Ord, T> Ord for Entry<D, T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (&self.at, self.id).cmp(&(&other.at, other.id))
    }
}

impl<D: Ord + Copy, T> Default for TimerHeap<D, T> {
    fn default() -> Self {
        TimerHeap { heap: BinaryHeap::new(), next_id: 0 }
    }
}

impl<D: Ord + Copy, T> TimerHeap<D, T> {
    pub fn push(&mut self, at: D, timer: T) {
        self.heap.push(Reverse(Entry { at, id: self.next_id, timer }));
        self.next_id += 1;
    }

    /// The soonest deadline, if any timer is armed.
    pub fn next_deadline(&self) -> Option<D> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// The soonest timer if it is due at `now`.
    pub fn pop_due(&mut self, now: D) -> Option<T> {
        if self.next_deadline()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| e.timer)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_soonest_first_and_equal_deadlines_in_arming_order() {
        let mut timers = TimerHeap::default();
        for (at, name) in [(30, "c"), (10, "a"), (20, "b1"), (20, "b2"), (50, "late")] {
            timers.push(at, name);
        }
        assert_eq!(timers.next_deadline(), Some(10));
        assert_eq!(timers.pop_due(5), None, "nothing is due before its deadline");
        let mut fired = Vec::new();
        while let Some(t) = timers.pop_due(30) {
            fired.push(t);
        }
        assert_eq!(fired, ["a", "b1", "b2", "c"]);
        assert_eq!((timers.len(), timers.next_deadline()), (1, Some(50)));
    }
}
