//! A linearizability checker for the recorded client history.
//!
//! Wing & Gong's search with Lowe's memoisation (the algorithm behind
//! Knossos and Porcupine), run separately for each key: every operation in
//! the workload touches one key, and linearizability is local (Herlihy &
//! Wing), so the history is linearizable iff each key's sub-history is.
//! (A multi-key batch is recorded as one operation per key with the batch's
//! interval: that checks each key's effect but not the batch's atomicity.)
//!
//! The search is bounded by `search_steps_max`: a history too large to decide
//! is reported as [`Verdict::TooBig`], never as a pass.
//!
//! Operations whose outcome the client never learned (a timed-out write)
//! have `return_ns = Nanos::MAX`: they may take effect at any point after
//! their invocation, or never (linearised at the very end, where nothing can
//! observe them). Reads without a result carry no information and are left
//! out by the recorder.

use std::collections::{BTreeMap, HashSet};

use tarn_core::Nanos;

/// Values are unique per write (the workload numbers them), 0 is never used.
pub type Value = u64;
/// The workload's keys are small integers mapped to kv paths.
pub type Key = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Write(Value),
    Read,
    /// Compare-and-set: if the register holds `expect`, set it to `new`.
    Cas {
        expect: Option<Value>,
        new: Value,
    },
    Remove,
    /// Lock operations ride in the same history but on lock keys; the
    /// register checker skips them (see `crate::world`'s mutual-exclusion check).
    TryLock,
    Unlock,
    /// `UpdateTtl` of a temporary register: by its owner (`own`), it re-arms
    /// the TTL; by anyone else the kv must refuse it (owner check). Either
    /// way it reports whether the register exists, and changes no value.
    Refresh {
        own: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// The client never learned the outcome: it may or may not have happened.
    Unknown,
    Ok,
    Read(Option<Value>),
    Cas(bool),
    /// A remove reports whether the key existed.
    Removed(bool),
    /// A try-lock: acquired or busy.
    Lock(bool),
    /// A try-lock with a wait: queued behind the holder.
    Queued,
    /// A refresh: whether the register existed.
    Exists(bool),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    pub client: u32,
    pub key: Key,
    pub kind: OpKind,
    pub result: OpResult,
    pub invoke_ns: Nanos,
    /// `Nanos::MAX` when the result is unknown.
    pub return_ns: Nanos,
}

/// The register model: the state after `op`, or `None` if `op`'s recorded
/// result is impossible in state `state`.
pub fn step(state: Option<Value>, op: &Op) -> Option<Option<Value>> {
    match (op.kind, op.result) {
        (OpKind::Write(v), OpResult::Ok | OpResult::Unknown) => Some(Some(v)),
        (OpKind::Read, OpResult::Read(seen)) => (seen == state).then_some(state),
        (OpKind::Cas { expect, new }, OpResult::Cas(true)) => (state == expect).then_some(Some(new)),
        (OpKind::Cas { expect, .. }, OpResult::Cas(false)) => (state != expect).then_some(state),
        (OpKind::Cas { expect, new }, OpResult::Unknown) => {
            Some(if state == expect { Some(new) } else { state })
        }
        (OpKind::Remove, OpResult::Removed(existed)) => (existed == state.is_some()).then_some(None),
        // The kv's remove succeeds whether or not the key existed.
        (OpKind::Remove, OpResult::Ok | OpResult::Unknown) => Some(None),
        // A read without a result says nothing; a mismatched pair is a
        // recorder bug and must not pass silently.
        (OpKind::Read, OpResult::Unknown) => Some(state),
        (OpKind::Refresh { .. }, OpResult::Exists(exists)) => (exists == state.is_some()).then_some(state),
        (OpKind::Refresh { .. }, OpResult::Unknown) => Some(state),
        (kind, result) => panic!("history recorder bug: {kind:?} cannot have result {result:?}"),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order of `key`'s operations explains the results. `ops` are the
    /// key's operations (sorted by invocation), `stuck_at` the operation
    /// that could never be placed at the deepest point of the search.
    NotLinearizable {
        key: Key,
        ops: Vec<Op>,
        linearized_max: usize,
        stuck_at: Op,
    },
    /// The search for `key` hit the step bound: undecided, not a pass.
    TooBig {
        key: Key,
        ops: usize,
        steps: u64,
    },
}

impl Verdict {
    pub fn is_ok(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// Checks a whole history, key by key in ascending key order.
pub fn check(history: &[Op], search_steps_max: u64) -> Verdict {
    let mut by_key: BTreeMap<Key, Vec<Op>> = BTreeMap::new();
    for op in history {
        if op.kind == OpKind::Read && op.result == OpResult::Unknown {
            continue;
        }
        if matches!(op.kind, OpKind::TryLock | OpKind::Unlock) {
            continue;
        }
        by_key.entry(op.key).or_default().push(*op);
    }
    for (key, mut ops) in by_key {
        ops.sort_by_key(|o| (o.invoke_ns, o.return_ns));
        let verdict = check_key(key, &ops, search_steps_max);
        if !verdict.is_ok() {
            return verdict;
        }
    }
    Verdict::Linearizable
}

const NONE: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Node {
    op: usize,
    is_call: bool,
    /// For a call: the node of its return.
    ret: usize,
    prev: usize,
    next: usize,
}

/// A doubly linked list over call/return events with O(1) lift and unlift.
struct EventList {
    nodes: Vec<Node>,
    head: usize,
}

impl EventList {
    fn new(ops: &[Op]) -> Self {
        // Calls sort before returns at the same instant: touching intervals
        // count as concurrent, the conservative reading (no false alarms).
        let mut events: Vec<(Nanos, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            assert!(op.invoke_ns <= op.return_ns, "op returns before it is invoked: {op:?}");
            events.push((op.invoke_ns, false, i));
            events.push((op.return_ns, true, i));
        }
        events.sort_unstable();
        let mut nodes: Vec<Node> = Vec::with_capacity(events.len());
        let mut call_of = vec![NONE; ops.len()];
        for (pos, &(_, is_return, op)) in events.iter().enumerate() {
            let prev = if pos == 0 { NONE } else { pos - 1 };
            let next = if pos + 1 == events.len() { NONE } else { pos + 1 };
            nodes.push(Node { op, is_call: !is_return, ret: NONE, prev, next });
            if is_return {
                nodes[call_of[op]].ret = pos;
            } else {
                call_of[op] = pos;
            }
        }
        EventList { head: if nodes.is_empty() { NONE } else { 0 }, nodes }
    }

    fn unlink(&mut self, n: usize) {
        let Node { prev, next, .. } = self.nodes[n];
        if prev == NONE {
            self.head = next;
        } else {
            self.nodes[prev].next = next;
        }
        if next != NONE {
            self.nodes[next].prev = prev;
        }
    }

    fn relink(&mut self, n: usize) {
        let Node { prev, next, .. } = self.nodes[n];
        if prev == NONE {
            self.head = n;
        } else {
            self.nodes[prev].next = n;
        }
        if next != NONE {
            self.nodes[next].prev = n;
        }
    }

    /// Removes a call and its return (return first, so unlift can reverse).
    fn lift(&mut self, call: usize) {
        let ret = self.nodes[call].ret;
        self.unlink(call);
        self.unlink(ret);
    }

    fn unlift(&mut self, call: usize) {
        let ret = self.nodes[call].ret;
        self.relink(ret);
        self.relink(call);
    }
}

fn check_key(key: Key, ops: &[Op], search_steps_max: u64) -> Verdict {
    let words = ops.len().div_ceil(64);
    let mut list = EventList::new(ops);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<Value>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<Value>)> = Vec::new();
    let mut state: Option<Value> = None;
    let mut entry = list.head;
    let mut steps: u64 = 0;
    let (mut deepest, mut stuck_at) = (0usize, ops.first().copied());
    while list.head != NONE {
        steps += 1;
        if steps > search_steps_max {
            return Verdict::TooBig { key, ops: ops.len(), steps };
        }
        debug_assert!(entry != NONE, "walked off the event list");
        let node = list.nodes[entry];
        if node.is_call {
            if let Some(next_state) = step(state, &ops[node.op]) {
                linearized[node.op / 64] |= 1 << (node.op % 64);
                if cache.insert((linearized.clone(), next_state)) {
                    stack.push((entry, state));
                    state = next_state;
                    list.lift(entry);
                    entry = list.head;
                    continue;
                }
                linearized[node.op / 64] &= !(1 << (node.op % 64));
            }
            entry = node.next;
        } else {
            // A return whose call is still unplaced: this prefix is a dead end.
            if stack.len() >= deepest {
                deepest = stack.len();
                stuck_at = Some(ops[node.op]);
            }
            let Some((call, previous_state)) = stack.pop() else {
                return Verdict::NotLinearizable {
                    key,
                    ops: ops.to_vec(),
                    linearized_max: deepest,
                    // The history is non-empty here (the list was), so some
                    // op was recorded as stuck.
                    stuck_at: stuck_at.expect("non-empty history"),
                };
            };
            let op = list.nodes[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            state = previous_state;
            list.unlift(call);
            entry = list.nodes[call].next;
        }
    }
    Verdict::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: u64 = 1_000_000;

    fn op(client: u32, kind: OpKind, result: OpResult, invoke_ns: Nanos, return_ns: Nanos) -> Op {
        Op { client, key: 1, kind, result, invoke_ns, return_ns }
    }
    fn w(c: u32, v: Value, a: Nanos, b: Nanos) -> Op {
        op(c, OpKind::Write(v), OpResult::Ok, a, b)
    }
    fn r(c: u32, v: Option<Value>, a: Nanos, b: Nanos) -> Op {
        op(c, OpKind::Read, OpResult::Read(v), a, b)
    }

    #[test]
    fn empty_and_sequential_histories_pass() {
        assert!(check(&[], STEPS).is_ok());
        let h = [r(0, None, 0, 1), w(0, 1, 2, 3), r(0, Some(1), 4, 5), w(1, 2, 6, 7), r(0, Some(2), 8, 9)];
        assert!(check(&h, STEPS).is_ok());
    }

    #[test]
    fn concurrent_write_may_be_seen_or_not() {
        // Read overlaps the write: both answers are linearizable.
        for seen in [None, Some(1)] {
            let h = [w(0, 1, 0, 10), r(1, seen, 5, 6)];
            assert!(check(&h, STEPS).is_ok(), "{seen:?}");
        }
    }

    #[test]
    fn stale_read_after_write_completed_is_caught() {
        let h = [w(0, 1, 0, 10), w(0, 2, 20, 30), r(1, Some(1), 40, 50)];
        let v = check(&h, STEPS);
        let Verdict::NotLinearizable { key, stuck_at, .. } = v else { panic!("{v:?}") };
        assert_eq!(key, 1);
        assert_eq!(stuck_at.kind, OpKind::Read);
    }

    #[test]
    fn reads_going_back_in_time_are_caught() {
        // Two reads concurrent with a write, but sequential with each other:
        // once a read has seen the new value, a later read may not see the old.
        let h = [w(0, 1, 0, 5), w(0, 2, 10, 100), r(1, Some(2), 20, 30), r(2, Some(1), 40, 50)];
        assert!(!check(&h, STEPS).is_ok());
        // Swapped order is fine.
        let h = [w(0, 1, 0, 5), w(0, 2, 10, 100), r(1, Some(1), 20, 30), r(2, Some(2), 40, 50)];
        assert!(check(&h, STEPS).is_ok());
    }

    #[test]
    fn value_never_written_is_caught() {
        let h = [w(0, 1, 0, 5), r(1, Some(7), 10, 20)];
        assert!(!check(&h, STEPS).is_ok());
    }

    #[test]
    fn unknown_write_may_or_may_not_have_happened() {
        let lost = op(0, OpKind::Write(9), OpResult::Unknown, 0, Nanos::MAX);
        assert!(check(&[lost, r(1, None, 10, 20)], STEPS).is_ok());
        assert!(check(&[lost, r(1, Some(9), 10, 20)], STEPS).is_ok());
        // But it cannot flicker: seen, then unseen.
        assert!(!check(&[lost, r(1, Some(9), 10, 20), r(1, None, 30, 40)], STEPS).is_ok());
    }

    #[test]
    fn cas_and_remove_follow_the_register() {
        let cas = |c, e, n, ok, a, b| op(c, OpKind::Cas { expect: e, new: n }, OpResult::Cas(ok), a, b);
        let rm = |c, existed, a, b| op(c, OpKind::Remove, OpResult::Removed(existed), a, b);
        let good = [
            w(0, 1, 0, 1),
            cas(0, Some(1), 2, true, 2, 3),
            cas(1, Some(1), 3, false, 4, 5),
            rm(0, true, 6, 7),
            rm(1, false, 8, 9),
            cas(0, None, 4, true, 10, 11),
            r(1, Some(4), 12, 13),
        ];
        assert!(check(&good, STEPS).is_ok());
        // Two successful CAS from the same expected value, sequentially: impossible.
        let bad = [w(0, 1, 0, 1), cas(0, Some(1), 2, true, 2, 3), cas(1, Some(1), 3, true, 4, 5)];
        assert!(!check(&bad, STEPS).is_ok());
        let bad = [w(0, 1, 0, 1), rm(0, false, 2, 3)];
        assert!(!check(&bad, STEPS).is_ok());
    }

    #[test]
    fn lock_operations_are_left_to_the_lock_checker() {
        let lock = op(0, OpKind::TryLock, OpResult::Lock(true), 0, 1);
        let unlock = op(0, OpKind::Unlock, OpResult::Ok, 2, 3);
        assert!(check(&[lock, unlock, w(1, 1, 4, 5), r(1, Some(1), 6, 7)], STEPS).is_ok());
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut a = w(0, 1, 0, 10);
        a.key = 1;
        let mut b = r(1, None, 20, 30);
        b.key = 2;
        assert!(check(&[a, b], STEPS).is_ok());
        b.key = 1;
        assert!(!check(&[a, b], STEPS).is_ok());
    }

    #[test]
    fn many_concurrent_ops_are_decided_or_reported_too_big() {
        // 12 writers all concurrent, then a read of one of them: linearizable.
        let mut h: Vec<Op> = (0..12).map(|i| w(i, u64::from(i) + 1, 0, 1000)).collect();
        h.push(r(99, Some(7), 2000, 2001));
        assert!(check(&h, STEPS).is_ok());
        // The same with a tiny bound is "too big", never a pass.
        h.push(r(99, Some(8), 3000, 3001));
        assert!(matches!(check(&h, 10), Verdict::TooBig { .. }));
        assert!(!check(&h, STEPS).is_ok());
    }

    #[test]
    fn randomized_sequential_histories_always_pass() {
        use crate::rng::{SimRng, Stream};
        let mut rng = SimRng::new(3, Stream::Workload);
        for _ in 0..50 {
            let mut state = None;
            let mut h = Vec::new();
            let mut t = 0;
            for i in 0..60u64 {
                let kind = match rng.below(4) {
                    0 => OpKind::Write(i + 1),
                    1 => OpKind::Read,
                    2 => OpKind::Cas {
                        expect: if rng.chance(500_000) { state } else { Some(999) },
                        new: i + 1,
                    },
                    _ => OpKind::Remove,
                };
                let result = match kind {
                    OpKind::Write(_) => OpResult::Ok,
                    OpKind::Read => OpResult::Read(state),
                    OpKind::Cas { expect, .. } => OpResult::Cas(state == expect),
                    OpKind::Remove => OpResult::Removed(state.is_some()),
                    OpKind::TryLock | OpKind::Unlock | OpKind::Refresh { .. } => {
                        unreachable!("not drawn above")
                    }
                };
                let o = Op { client: 0, key: 1, kind, result, invoke_ns: t, return_ns: t + 5 };
                state = step(state, &o).expect("sequential op must step");
                h.push(o);
                t += 3; // overlapping intervals, consistent real order
            }
            assert!(check(&h, STEPS).is_ok());
        }
    }
}
