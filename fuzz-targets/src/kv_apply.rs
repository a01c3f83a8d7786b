//! `kv_apply`: arbitrary command streams applied to the real kv state machine
//! and to the reference model (`tarn_kv::model::Checked` runs both and
//! compares every response, the whole state and the watch event stream).
//!
//! The input is decoded with `arbitrary` into steps: entries of requests from
//! a few clients (new writes, retries of earlier ones, acknowledgements,
//! invalid keys and values, small TTLs so that expiry and lock hand-over
//! happen), leader expiry rounds (`expired` → `Expire` requests, as the
//! leader proposes them), raw entry payloads (the entry decoder), time
//! jumps, and snapshots.
//!
//! Properties: machine and model agree after every step; a snapshot taken at
//! any point decodes to a state with the same digest, passing the invariant
//! checks; and that restored state, fed every later entry too, keeps the
//! same responses and digest as the original.

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use tarn_core::{Index, Nanos};
use tarn_kv::model::Checked;
use tarn_kv::{
    decode_snapshot, ClientId, Command, KvConfig, KvError, KvStateMachine, Request, SYSTEM_CLIENT_ID,
};

/// Bounds on the work one input can ask for.
pub const STEPS_MAX: usize = 48;
pub const REQUESTS_PER_ENTRY_MAX: usize = 6;
pub const BATCH_ITEMS_MAX: usize = 6;
pub const RAW_ENTRY_MAX_BYTES: usize = 256;
pub const CLIENTS: usize = 4;

/// Keys: a small tree (so operations collide), lock keys, and invalid ones.
pub const KEYS: &[&str] = &[
    "a",
    "b",
    "a.b",
    "a.c",
    "b.a",
    "a.b.c",
    "l",
    "a.l",
    "c",
    "",
    "a..b",
    ".a",
    "a.",
    "a b",
    "abcdefghijklmnopq",
];
/// Values: empty (invalid), small, and one above the value bound.
pub const VALUES: &[&[u8]] = &[b"", b"v0", b"v1", b"v2", b"12345678", b"123456789"];
/// TTLs and leases in nanoseconds, around the configured bounds (10..=1000).
pub const TTLS: &[Nanos] = &[0, 5, 10, 30, 60, 120, 400, 1_000, 5_000];

/// The kv configuration of the fuzz targets: the model-check bounds, small
/// enough that the fuzzer meets every one of them.
pub fn config() -> KvConfig {
    tarn_kv::model::small_bounds_config()
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Cmd {
    Get { key: u8 },
    BatchGet { keys: Vec<u8> },
    List { key: u8 },
    Put { key: u8, value: u8 },
    Remove { key: u8 },
    Mkdir { key: u8 },
    BatchPut { items: Vec<(u8, u8)> },
    BatchRemove { keys: Vec<u8> },
    CompareAndSet { key: u8, expected: Option<u8>, new: Option<u8> },
    PutTemp { key: u8, value: u8, ttl: u8 },
    MkdirTemp { key: u8, ttl: u8 },
    UpdateTtl { key: u8, ttl: u8 },
    TryLock { key: u8, lease: u8, wait: u8 },
    Unlock { key: u8 },
    UpdateLease { key: u8, lease: u8 },
    Expire { key: u8, arm_id: u8 },
    KeepAlive,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Req {
    /// `client % (CLIENTS + 1) == CLIENTS` sends as the system client.
    pub client: u8,
    /// Resend this client's previous request (same seq).
    pub retry: bool,
    /// Acknowledge this request's response afterwards (moves first_unacked).
    pub ack: bool,
    pub cmd: Cmd,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Step {
    Entry {
        advance: u16,
        requests: Vec<Req>,
    },
    /// The leader proposes the expiries due by its clock.
    ExpireDue {
        advance: u16,
        max: u8,
    },
    /// An undecodable or odd payload: both sides must refuse it alike.
    Raw {
        bytes: Vec<u8>,
    },
    /// Snapshot now and keep the restored copy running alongside.
    Snapshot {
        chunk_target: u16,
    },
}

#[derive(Debug, Clone)]
pub struct KvInput {
    pub steps: Vec<Step>,
}

/// What one run reached, for tests that check the corpus goes deep.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reached {
    pub entries: u64,
    pub ok_writes: u64,
    pub expiries: u64,
    pub snapshots: u64,
    /// `RenewTtl`s that re-armed a temporary node (any client may).
    pub renewals: u64,
    pub nodes: usize,
}

pub fn kv_apply(data: &[u8]) {
    if let Some(input) = parse(data) {
        run(&input);
    }
}

/// The structured input `data` encodes (`None`: too short to say).
pub fn parse(data: &[u8]) -> Option<KvInput> {
    let mut u = Unstructured::new(data);
    Some(KvInput { steps: crate::elements_until_empty(&mut u, STEPS_MAX) })
}

struct Client {
    id: ClientId,
    next_seq: u64,
    first_unacked: u64,
    last: Option<Request>,
}

fn key(k: u8) -> String {
    KEYS[k as usize % KEYS.len()].to_owned()
}

fn value(v: u8) -> Bytes {
    Bytes::from_static(VALUES[v as usize % VALUES.len()])
}

fn ttl(t: u8) -> Nanos {
    TTLS[t as usize % TTLS.len()]
}

fn command(cmd: &Cmd) -> Command {
    let keys = |ks: &[u8]| ks.iter().take(BATCH_ITEMS_MAX).map(|&k| key(k)).collect();
    match cmd {
        Cmd::Get { key: k } => Command::Get { key: key(*k) },
        Cmd::BatchGet { keys: ks } => Command::BatchGet { keys: keys(ks) },
        Cmd::List { key: k } => Command::List { key: key(*k), limit: None, after: None },
        Cmd::Put { key: k, value: v } => Command::Put { key: key(*k), value: value(*v) },
        Cmd::Remove { key: k } => Command::Remove { key: key(*k) },
        Cmd::Mkdir { key: k } => Command::Mkdir { key: key(*k) },
        Cmd::BatchPut { items } => Command::BatchPut {
            items: items.iter().take(BATCH_ITEMS_MAX).map(|&(k, v)| (key(k), value(v))).collect(),
        },
        Cmd::BatchRemove { keys: ks } => Command::BatchRemove { keys: keys(ks) },
        Cmd::CompareAndSet { key: k, expected, new } => {
            Command::CompareAndSet { key: key(*k), expected: expected.map(value), new: new.map(value) }
        }
        Cmd::PutTemp { key: k, value: v, ttl: t } => {
            Command::PutTemp { key: key(*k), value: value(*v), ttl_nanos: ttl(*t) }
        }
        Cmd::MkdirTemp { key: k, ttl: t } => Command::MkdirTemp { key: key(*k), ttl_nanos: ttl(*t) },
        // The TTL byte's high bit picks `RenewTtl` (anyone may re-arm) over
        // the owner-only `UpdateTtl`: no new variant, so the corpus decodes as
        // before and keeps its depth.
        Cmd::UpdateTtl { key: k, ttl: t } if *t >= 0x80 => {
            Command::RenewTtl { key: key(*k), ttl_nanos: ttl(*t) }
        }
        Cmd::UpdateTtl { key: k, ttl: t } => Command::UpdateTtl { key: key(*k), ttl_nanos: ttl(*t) },
        Cmd::TryLock { key: k, lease, wait } => {
            Command::TryLock { key: key(*k), lease_nanos: ttl(*lease), wait_nanos: ttl(*wait) }
        }
        Cmd::Unlock { key: k } => Command::Unlock { key: key(*k) },
        Cmd::UpdateLease { key: k, lease } => Command::UpdateLease { key: key(*k), lease_nanos: ttl(*lease) },
        Cmd::Expire { key: k, arm_id } => Command::Expire { key: key(*k), arm_id: *arm_id as u64 },
        Cmd::KeepAlive => Command::KeepAlive,
    }
}

struct Harness {
    pair: Checked,
    /// A state restored from a snapshot, fed the same entries since.
    restored: Option<KvStateMachine>,
    clients: Vec<Client>,
    next_client_id: ClientId,
    index: Index,
    now: Nanos,
    reached: Reached,
}

impl Harness {
    /// One committed entry: every request applied to the pair (compared) and
    /// to the restored copy (compared with the pair's response).
    fn entry(&mut self, requests: &[(Option<usize>, Request, bool)]) {
        self.index += 1;
        self.reached.entries += 1;
        let index = self.index;
        for (client, request, ack) in requests {
            let response = self.pair.apply(index, self.now, request);
            if let Some(restored) = &mut self.restored {
                let again = restored.apply(index, self.now, request);
                assert_eq!(again, response, "restored state answers differently at {index}: {request:?}");
            }
            if response.is_ok() && !request.command.is_read_only() {
                self.reached.ok_writes += 1;
                if matches!(request.command, Command::RenewTtl { .. }) {
                    self.reached.renewals += 1;
                }
            }
            let Some(at) = *client else { continue };
            if let Err(KvError::SessionExpired { .. }) = response {
                self.clients[at] =
                    Client { id: self.next_client_id, next_seq: 1, first_unacked: 1, last: None };
                self.next_client_id += 1;
            } else if *ack {
                let c = &mut self.clients[at];
                c.first_unacked = c.first_unacked.max(request.seq + 1);
            }
        }
        self.pair.machine.advance_to(index);
        self.pair.model.applied_index = self.pair.model.applied_index.max(index);
        if let Some(restored) = &mut self.restored {
            restored.advance_to(index);
        }
    }

    fn request(&mut self, req: &Req) -> (Option<usize>, Request, bool) {
        let command = command(&req.cmd);
        let slot = req.client as usize % (CLIENTS + 1);
        if slot == CLIENTS {
            return (None, Request::system(command), false);
        }
        let client = &mut self.clients[slot];
        if req.retry {
            if let Some(last) = &client.last {
                let retry = Request { first_unacked_seq: client.first_unacked, ..last.clone() };
                return (Some(slot), retry, req.ack);
            }
        }
        let request = Request {
            client_id: client.id,
            seq: client.next_seq,
            first_unacked_seq: client.first_unacked,
            command,
        };
        client.next_seq += 1;
        client.last = Some(request.clone());
        (Some(slot), request, req.ack)
    }

    fn snapshot(&mut self, chunk_target: u16) {
        let chunk_target_bytes = 16 + chunk_target as usize % 512;
        let chunks: Vec<Bytes> = self.pair.machine.snapshot_chunks(chunk_target_bytes).collect();
        let mut restored = decode_snapshot(config(), chunks.iter().map(|c| &c[..]))
            .unwrap_or_else(|e| panic!("a fresh snapshot does not decode: {e}"));
        restored.check_invariants();
        assert_eq!(restored.digest(), self.pair.machine.digest(), "snapshot round trip changed the digest");
        restored.rearm_ttls(self.now);
        self.restored = Some(restored);
        self.reached.snapshots += 1;
    }

    fn check(&mut self) {
        self.pair.check();
        if let Some(restored) = &self.restored {
            restored.check_invariants();
            assert_eq!(restored.digest(), self.pair.machine.digest(), "restored state diverged");
        }
    }
}

pub fn run(input: &KvInput) -> Reached {
    let mut h = Harness {
        pair: Checked::new(config()),
        restored: None,
        clients: (1..=CLIENTS as u64)
            .map(|id| Client { id, next_seq: 1, first_unacked: 1, last: None })
            .collect(),
        next_client_id: CLIENTS as u64 + 1,
        index: 0,
        now: 0,
        reached: Reached::default(),
    };
    for step in input.steps.iter().take(STEPS_MAX) {
        match step {
            Step::Entry { advance, requests } => {
                h.now += *advance as Nanos % 512;
                let requests: Vec<_> =
                    requests.iter().take(REQUESTS_PER_ENTRY_MAX).map(|r| h.request(r)).collect();
                h.entry(&requests);
            }
            Step::ExpireDue { advance, max } => {
                h.now += *advance as Nanos % 2048;
                let due = h.pair.machine.expired(h.now, 1 + *max as usize % 8);
                assert!(due.iter().all(|r| r.client_id == SYSTEM_CLIENT_ID), "expiry proposed by a client");
                h.reached.expiries += due.len() as u64;
                let requests: Vec<_> = due.into_iter().map(|r| (None, r, false)).collect();
                if !requests.is_empty() {
                    h.entry(&requests);
                }
            }
            Step::Raw { bytes } => {
                h.index += 1;
                let bytes = &bytes[..bytes.len().min(RAW_ENTRY_MAX_BYTES)];
                h.pair.apply_entry_bytes(h.index, bytes);
                if let Some(restored) = &mut h.restored {
                    let _ = restored.apply_entry_bytes(h.index, bytes);
                    restored.advance_to(h.index);
                }
            }
            Step::Snapshot { chunk_target } => h.snapshot(*chunk_target),
        }
        h.check();
    }
    h.reached.nodes = h.pair.machine.node_count();
    h.reached
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(client: u8, cmd: Cmd) -> Req {
        Req { client, retry: false, ack: true, cmd }
    }

    /// The high bit of `UpdateTtl`'s TTL byte reaches `RenewTtl`, and another
    /// client's renewal of a temporary node succeeds where its owner-only
    /// update is refused (machine and model agree on both).
    #[test]
    fn another_clients_renewal_re_arms_a_temporary_node() {
        // KEYS[0] = "a", VALUES[1] = "v0", TTLS[7] = 1_000 ns; the renewal's
        // byte 0x83 = 131 picks TTLS[131 % 9] = 120 ns, inside the bounds.
        let renew = Cmd::UpdateTtl { key: 0, ttl: 0x80 + 3 };
        let update = Cmd::UpdateTtl { key: 0, ttl: 3 };
        let input = KvInput {
            steps: vec![
                Step::Entry { advance: 1, requests: vec![req(0, Cmd::PutTemp { key: 0, value: 1, ttl: 7 })] },
                Step::Entry { advance: 1, requests: vec![req(1, update), req(1, renew)] },
            ],
        };
        let reached = run(&input);
        assert_eq!(reached.renewals, 1, "{reached:?}");
        assert_eq!(reached.ok_writes, 2, "only the put and the renewal succeed: {reached:?}");
    }
}
