//! Virtual time and the event queue.
//!
//! The queue is a binary heap keyed by `(time, seq)`: `seq` is a counter
//! assigned at insertion, so two events at the same virtual instant always
//! pop in insertion order. That makes the run independent of heap internals
//! and gives FIFO order per instant, which is what a seed replay relies on.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use tarn_core::Nanos;

pub const NANOS_PER_MICRO: Nanos = 1_000;
pub const NANOS_PER_MILLI: Nanos = 1_000_000;
pub const NANOS_PER_SECOND: Nanos = 1_000_000_000;

/// Heap entries stay small (time, sequence, slot): the events themselves sit
/// in a slab, so sifting the heap moves 24 bytes, not whole messages.
#[derive(Clone, Copy)]
struct Scheduled {
    at: Nanos,
    seq: u64,
    slot: u32,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Reversed: BinaryHeap is a max-heap and we want the earliest first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Events ordered by virtual time, ties broken by insertion order.
pub struct EventQueue<E> {
    heap: BinaryHeap<Scheduled>,
    slots: Vec<Option<E>>,
    free: Vec<u32>,
    next_seq: u64,
    now: Nanos,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E> EventQueue<E> {
    pub fn new() -> Self {
        EventQueue {
            heap: BinaryHeap::with_capacity(1024),
            slots: Vec::with_capacity(1024),
            free: Vec::with_capacity(1024),
            next_seq: 0,
            now: 0,
        }
    }

    /// The virtual time of the last popped event.
    pub fn now(&self) -> Nanos {
        self.now
    }

    /// Schedules `event` at `at`; an instant in the past is clamped to now
    /// (time never runs backwards).
    pub fn push(&mut self, at: Nanos, event: E) {
        let at = at.max(self.now);
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = match self.free.pop() {
            Some(slot) => {
                debug_assert!(self.slots[slot as usize].is_none());
                self.slots[slot as usize] = Some(event);
                slot
            }
            None => {
                self.slots.push(Some(event));
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 pending events")
            }
        };
        self.heap.push(Scheduled { at, seq, slot });
    }

    /// Pops the earliest event and advances virtual time to it.
    pub fn pop(&mut self) -> Option<(Nanos, E)> {
        let s = self.heap.pop()?;
        debug_assert!(s.at >= self.now, "event queue went back in time");
        self.now = s.at;
        self.free.push(s.slot);
        // Every heap entry names a filled slot: slots are emptied only here.
        let event = self.slots[s.slot as usize].take().expect("scheduled slot holds its event");
        Some((s.at, event))
    }

    pub fn peek_time(&self) -> Option<Nanos> {
        self.heap.peek().map(|s| s.at)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Every event still scheduled, in no particular (but deterministic) order.
    pub fn pending(&self) -> impl Iterator<Item = &E> {
        self.slots.iter().flatten()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_by_time_then_insertion_order() {
        let mut q = EventQueue::new();
        q.push(30, "c");
        q.push(10, "a1");
        q.push(20, "b");
        q.push(10, "a2");
        q.push(10, "a3");
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, vec![(10, "a1"), (10, "a2"), (10, "a3"), (20, "b"), (30, "c")]);
        assert_eq!(q.now(), 30);
    }

    #[test]
    fn past_events_are_clamped_to_now() {
        let mut q = EventQueue::new();
        q.push(100, 1);
        assert_eq!(q.pop(), Some((100, 1)));
        q.push(5, 2);
        assert_eq!(q.pop(), Some((100, 2)));
    }
}
