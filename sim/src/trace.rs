//! The run's trace: a digest of every event (for `--check-determinism`) and
//! the last events in a fixed ring buffer (printed on failure), or every
//! event printed as it happens with `--trace`.
//!
//! Events are small `Copy` records, so recording one costs a few stores and a
//! hash update: no allocation and no formatting unless someone reads them.

use std::fmt;

use tarn_core::Nanos;

use crate::queue::NANOS_PER_MICRO;

/// How many recent events a failure report shows.
pub const TRACE_RING_EVENTS: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceKind {
    /// Message `kind` (a small code) from `a` to `node`, term `b`.
    Deliver,
    /// Message from `node` to `a` dropped (reason code `b`).
    Drop,
    RoleChanged,
    Crash,
    Restart,
    Pause,
    Partition,
    Heal,
    ClockJump,
    Transfer,
    Membership,
    Invoke,
    Complete,
    Apply,
    DiskError,
    /// Snapshot work on `node`: `a` = 1 taken, 2 log compacted, 3 installed;
    /// at index `b`, term `c`.
    Snapshot,
    /// A TTL expiry proposed by leader `node`: `a` = 1 proposed (`b` requests).
    Expire,
    Note,
    /// Node-level liveness on `node` (quiescence runs): peer `a` suspected
    /// down (`b` = 1) or reachable again (`b` = 0).
    Liveness,
}

/// One event: the world time, the node it happened on (0 = the world), and
/// two kind-specific numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    pub at_ns: Nanos,
    pub node: u64,
    pub kind: TraceKind,
    pub a: u64,
    pub b: u64,
    pub c: u64,
}

impl fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.at_ns / NANOS_PER_MICRO;
        write!(f, "{:>6}.{:06}s ", t / 1_000_000, t % 1_000_000)?;
        let n = self.node;
        let (a, b, c) = (self.a, self.b, self.c);
        match self.kind {
            TraceKind::Deliver => {
                let entries = c & 0xffff_ffff;
                write!(f, "n{n} <- n{a}: {} term={b}", message_kind_name(c >> 32))?;
                if entries > 0 {
                    write!(f, " ({entries} entries)")?;
                }
                Ok(())
            }
            TraceKind::Drop => write!(f, "n{n} -> n{a}: dropped ({})", drop_reason_name(b)),
            TraceKind::RoleChanged => {
                write!(
                    f,
                    "n{n}: role {} term={b} leader={}",
                    role_name(a),
                    if c == 0 { "-".into() } else { format!("n{c}") }
                )
            }
            TraceKind::Crash if a == 2 => {
                write!(f, "n{n}: RESTART IN PLACE (waited for {b} snapshot job(s); {c} left running)")
            }
            TraceKind::Crash => {
                write!(f, "n{n}: CRASH (unsynced writes lost{})", if a == 1 { ", disk wiped" } else { "" })
            }
            TraceKind::Restart => write!(f, "n{n}: restart: term={a} last_index={b} commit={c}"),
            TraceKind::Pause => write!(f, "n{n}: paused for {}ms", a / 1_000_000),
            TraceKind::Partition => {
                write!(f, "partition kind={} sides={a:#b}/{b:#b} for {}ms", c & 0xff, (c >> 8) / 1_000_000)
            }
            TraceKind::Heal => write!(f, "network healed"),
            TraceKind::ClockJump => write!(f, "n{n}: clock jumps +{}us", a / 1_000),
            TraceKind::Transfer => write!(f, "n{n}: asked to transfer leadership to n{a}"),
            TraceKind::Membership => {
                let what = match a {
                    1 => "remove",
                    2 => "add as learner",
                    3 => "promote learner",
                    4 => "add as voter",
                    5 => return write!(f, "n{n}: rejoined as a voter after its disk was wiped"),
                    _ => return write!(f, "n{n}: no longer rejoining (saw its removal committed)"),
                };
                let by = if c == 1 { " (operator, wiped disk)" } else { "" };
                write!(f, "n{n}: proposes membership change: {what} n{b}{by}")
            }
            TraceKind::Invoke => write!(f, "client {a}: invoke op #{b} at n{n}"),
            TraceKind::Complete => write!(f, "client {a}: complete op #{b}: {}", result_name(c)),
            TraceKind::Apply => write!(f, "n{n}: applied up to index {a} (term {b})"),
            TraceKind::DiskError => {
                let what = match a {
                    1 => "I/O error while recovering; retrying",
                    2 => "corruption detected on its bad disk; node retired",
                    3 if b == 1 => "process died in the middle of a flush",
                    3 => "flush failed; node stops",
                    4 => "staging entries failed; node stops",
                    5 => "staging hard state failed; node stops",
                    6 => "reading entries failed; node stops",
                    7 => "snapshot or compaction write failed; node stops",
                    8 => "reading its snapshot back failed; node stops",
                    _ => "disk error",
                };
                write!(f, "n{n}: {what}")
            }
            TraceKind::Snapshot => {
                let what = match a {
                    1 => "took a snapshot",
                    2 => "compacted its log",
                    _ => "installed a snapshot",
                };
                write!(f, "n{n}: {what} up to {c}@{b}")
            }
            TraceKind::Expire => write!(f, "n{n}: proposes {b} TTL expiries"),
            TraceKind::Note => write!(f, "n{n}: note {a} {b} {c}"),
            TraceKind::Liveness if b == 1 => write!(f, "n{n}: suspects n{a} is down"),
            TraceKind::Liveness => write!(f, "n{n}: hears n{a} again"),
        }
    }
}

pub fn role_name(code: u64) -> &'static str {
    match code {
        0 => "Follower",
        1 => "PreCandidate",
        2 => "Candidate",
        3 => "Leader",
        _ => "?",
    }
}

pub fn drop_reason_name(code: u64) -> &'static str {
    match code {
        0 => "loss",
        1 => "partition",
        2 => "queue full",
        3 => "flapping link",
        4 => "receiver down",
        _ => "?",
    }
}

/// Message kind names by code (see `world::message_code`).
pub fn message_kind_name(code: u64) -> &'static str {
    const NAMES: [&str; 14] = [
        "PreVoteRequest",
        "PreVoteResponse",
        "VoteRequest",
        "VoteResponse",
        "AppendEntries",
        "AppendResponse",
        "Heartbeat",
        "HeartbeatResponse",
        "TimeoutNow",
        "ReadIndexRequest",
        "ReadIndexResponse",
        "InstallSnapshot",
        "SnapshotResponse",
        "Quiesce",
    ];
    NAMES.get(code as usize).copied().unwrap_or("Other")
}

/// A message's fields for `--trace`, with entry payloads and snapshot bytes
/// left out (entries as their first and last `term@index`).
pub fn message_detail(message: &tarn_core::Message) -> String {
    use tarn_core::MessageBody;
    let mut m = message.clone();
    match &mut m.body {
        MessageBody::AppendEntries { entries, .. } => {
            let span = match (entries.first(), entries.last()) {
                (Some(f), Some(l)) => format!(" entries {}@{}..{}@{}", f.term, f.index, l.term, l.index),
                _ => String::new(),
            };
            entries.clear();
            format!("{:?}{span}", m.body)
        }
        MessageBody::InstallSnapshot { data, .. } => {
            let len = data.len();
            *data = bytes::Bytes::new();
            format!("{:?} ({len} bytes)", m.body)
        }
        _ => format!("{:?}", m.body),
    }
}

/// FNV-1a style hashing: fast, stable across platforms and Rust versions
/// (unlike `DefaultHasher`), which a digest compared across runs must be.
#[derive(Clone, Copy, Debug)]
pub struct Digest(u64);

impl Default for Digest {
    fn default() -> Self {
        Digest(0xcbf2_9ce4_8422_2325)
    }
}

impl Digest {
    /// Mixes one 64-bit word (a word-at-a-time FNV-style step with a
    /// rotation, so every bit of `w` reaches every bit of the state).
    pub fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(0x0100_0000_01b3).rotate_left(29);
    }

    pub fn bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn value(&self) -> u64 {
        self.0
    }
}

/// Hashes a byte string on its own (payload identity for the checkers).
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut d = Digest::default();
    d.bytes(bytes);
    d.value()
}

pub struct Trace {
    ring: Vec<TraceEvent>,
    next: usize,
    recorded: u64,
    digest: Digest,
    print_all: bool,
}

impl Trace {
    pub fn new(print_all: bool) -> Self {
        Trace {
            ring: Vec::with_capacity(TRACE_RING_EVENTS),
            next: 0,
            recorded: 0,
            digest: Digest::default(),
            print_all,
        }
    }

    pub fn record(&mut self, event: TraceEvent) {
        let d = &mut self.digest;
        d.word(event.at_ns);
        d.word(event.node);
        d.word(event.kind as u64);
        d.word(event.a);
        d.word(event.b);
        d.word(event.c);
        if self.print_all {
            println!("{event}");
        }
        if self.ring.len() < TRACE_RING_EVENTS {
            self.ring.push(event);
        } else {
            self.ring[self.next] = event;
        }
        self.next = (self.next + 1) % TRACE_RING_EVENTS;
        self.recorded += 1;
    }

    /// Whether every event is printed (`--trace`).
    pub fn prints_all(&self) -> bool {
        self.print_all
    }

    /// Mixes extra state into the digest without recording an event.
    pub fn mix(&mut self, word: u64) {
        self.digest.word(word);
    }

    pub fn digest(&self) -> u64 {
        self.digest.value()
    }

    pub fn recorded(&self) -> u64 {
        self.recorded
    }

    /// The last `n` events, oldest first.
    pub fn last(&self, n: usize) -> Vec<TraceEvent> {
        let len = self.ring.len();
        let n = n.min(len);
        let start = if len < TRACE_RING_EVENTS {
            len - n
        } else {
            (self.next + TRACE_RING_EVENTS - n) % TRACE_RING_EVENTS
        };
        (0..n).map(|i| self.ring[(start + i) % len]).collect()
    }
}

/// A completed operation's result, as `world::result_code` packs it: the
/// kind in the low byte, its payload above.
fn result_name(code: u64) -> String {
    let (kind, payload) = (code & 0xff, code >> 8);
    let yes = payload == 1;
    match kind {
        0 => "unknown (no answer: it may or may not have happened)".into(),
        1 => "ok".into(),
        2 => "read: absent".into(),
        3 => format!("read: {payload}"),
        4 => format!("cas: {}", if yes { "applied" } else { "refused (value differs)" }),
        5 => format!("removed: {}", if yes { "it existed" } else { "it was absent" }),
        6 => format!("lock: {}", if yes { "acquired" } else { "busy" }),
        7 => "lock: queued behind the holder".into(),
        8 => format!("refresh: {}", if yes { "it existed" } else { "it was absent" }),
        _ => format!("result code {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_named() {
        assert_eq!(result_name(0), "unknown (no answer: it may or may not have happened)");
        assert_eq!(result_name(3 | (42 << 8)), "read: 42");
        assert_eq!(result_name(4 | (1 << 8)), "cas: applied");
        assert_eq!(result_name(6), "lock: busy");
        assert_eq!(result_name(99), "result code 99");
    }

    fn ev(at: Nanos) -> TraceEvent {
        TraceEvent { at_ns: at, node: 1, kind: TraceKind::Note, a: 0, b: 0, c: 0 }
    }

    #[test]
    fn ring_keeps_the_last_events_in_order() {
        let mut t = Trace::new(false);
        for i in 0..(TRACE_RING_EVENTS as u64 + 10) {
            t.record(ev(i));
        }
        let last = t.last(3);
        let n = TRACE_RING_EVENTS as u64 + 10;
        assert_eq!(last.iter().map(|e| e.at_ns).collect::<Vec<_>>(), vec![n - 3, n - 2, n - 1]);
        assert_eq!(t.last(10_000).len(), TRACE_RING_EVENTS);
        assert_eq!(t.recorded(), n);
        let mut short = Trace::new(false);
        short.record(ev(5));
        assert_eq!(short.last(3), vec![ev(5)]);
    }

    #[test]
    fn digest_depends_on_every_event_and_their_order() {
        let digest = |times: &[Nanos]| {
            let mut t = Trace::new(false);
            times.iter().for_each(|&x| t.record(ev(x)));
            t.digest()
        };
        assert_eq!(digest(&[1, 2, 3]), digest(&[1, 2, 3]));
        assert_ne!(digest(&[1, 2, 3]), digest(&[1, 3, 2]));
        assert_ne!(digest(&[1, 2]), digest(&[1, 2, 3]));
    }
}
