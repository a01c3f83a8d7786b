//! The client workload: what a simulated client asks the kv for, how that
//! maps onto real `tarn-kv` requests, and how replies map back onto the
//! register model the linearizability checker understands.
//!
//! Every key is a register `k<n>` at the root; every written value is a
//! fresh number (8 bytes, big-endian), so a read names exactly one write.
//! Temporary registers `t<c>` (key `TEMP_KEY_BASE + c`) are written only by
//! client `c` with a TTL (`PutTemp`) and read by everyone; the leader's
//! expiry removes them (recorded as a system remove, see `crate::world`).

use bytes::Bytes;
use tarn_core::Nanos;
use tarn_kv::{ClientId, Command, KvError, LockOutcome, NodeView, Reply, Request, Response};

use crate::linearizability::{Key, OpKind, OpResult, Value};
use crate::rng::{SimRng, PPM};

/// How a client's operation travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Through the Raft log (every write; reads sometimes).
    Log,
    /// A linearizable read barrier (ReadIndex or lease), then a local read.
    ReadIndex,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientOp {
    pub key: Key,
    pub kind: OpKind,
    pub path: Path,
    /// 1 for a single-key operation. More: a batch put of `batch` keys
    /// `key, key+1, ...` (modulo `keys`) with values `v, v+1, ...` where
    /// `kind` is `Write(v)`; the history records one write per key.
    pub batch: u8,
    /// The number of keys of the workload (for the batch's key wrap-around).
    pub keys: u64,
    /// A temporary write's TTL, or a try-lock's lease.
    pub ttl_ns: Nanos,
    /// A try-lock's wait: 0 fails at once when the lock is held; more queues
    /// the client behind the holder for that long (it then polls with the
    /// same try-lock until it holds the lock, or leaves with an unlock).
    pub wait_ns: Nanos,
    /// A batch put's padding: one more item, on key [`PAD_KEY`] (never
    /// read), with a value of this many bytes, so the batch's entry nears
    /// or passes [`ENTRY_BYTES_MAX`]; admission must refuse one that passes
    /// it (`KvError::RequestTooLarge`) before it reaches the core. 0: none.
    pub pad_bytes: u32,
}

/// The core's entry bound (`Config::max_entry_bytes`) in simulated
/// clusters: small, so the workload's padded batches reach it, and small
/// enough that the padding (the last one stays in the tree) costs snapshots
/// little: at 16 KiB, runs with 64-byte snapshot chunks sent it as hundreds
/// of chunks per transfer and the sweep ran at half speed.
pub const ENTRY_BYTES_MAX: usize = 2 * 1024;
/// The key a padded batch writes its padding to.
pub const PAD_KEY: &str = "pad";
/// Share of batch puts that are padded to about [`ENTRY_BYTES_MAX`] (half
/// fit, half do not).
const PADDED_BATCH_PPM: u32 = 50_000;
/// Padding sizes are drawn this far on either side of [`ENTRY_BYTES_MAX`].
const PAD_SPREAD_BYTES: u64 = 256;

/// Keys at and above this are temporary registers `t<key - TEMP_KEY_BASE>`.
pub const TEMP_KEY_BASE: Key = 1 << 32;

pub fn is_temp_key(key: Key) -> bool {
    key >= TEMP_KEY_BASE
}

impl ClientOp {
    /// The (key, value) pairs of a batch put.
    pub fn batch_items(&self) -> impl Iterator<Item = (Key, Value)> + '_ {
        let OpKind::Write(v) = self.kind else { panic!("batch_items of a non-write {self:?}") };
        (0..u64::from(self.batch)).map(move |i| ((self.key + i) % self.keys.max(1), v + i))
    }
}

pub fn key_path(key: Key) -> String {
    if is_temp_key(key) {
        format!("t{}", key - TEMP_KEY_BASE)
    } else {
        format!("k{key}")
    }
}

pub fn encode_value(v: Value) -> Bytes {
    Bytes::copy_from_slice(&v.to_be_bytes())
}

pub fn decode_value(bytes: &[u8]) -> Option<Value> {
    Some(Value::from_be_bytes(bytes.try_into().ok()?))
}

/// Draws the next operation. `next_value` numbers writes uniquely per run.
pub fn next_op(
    rng: &mut SimRng,
    keys: u64,
    read_ppm: u32,
    log_read_ppm: u32,
    next_value: &mut Value,
) -> ClientOp {
    let key = rng.below(keys.max(1));
    if rng.chance(LOCK_PPM) {
        let lock = rng.below(LOCKS);
        let kind = OpKind::TryLock;
        return ClientOp {
            key: lock,
            kind,
            path: Path::Log,
            batch: 1,
            keys,
            ttl_ns: LOCK_LEASE_NS,
            wait_ns: 0,
            pad_bytes: 0,
        };
    }
    if rng.chance(read_ppm) {
        let path = if rng.chance(log_read_ppm) { Path::Log } else { Path::ReadIndex };
        return ClientOp {
            key,
            kind: OpKind::Read,
            path,
            batch: 1,
            keys,
            ttl_ns: 0,
            wait_ns: 0,
            pad_bytes: 0,
        };
    }
    *next_value += 1;
    let value = *next_value;
    let roll = rng.below(u64::from(PPM));
    if roll < BATCH_PPM && keys >= 2 {
        let batch = rng.between(2, keys.min(BATCH_KEYS_MAX)) as u8;
        *next_value += u64::from(batch) - 1;
        let pad_bytes = if rng.chance(PADDED_BATCH_PPM) {
            let target = ENTRY_BYTES_MAX as u64;
            rng.between(target - PAD_SPREAD_BYTES, target + PAD_SPREAD_BYTES) as u32
        } else {
            0
        };
        return ClientOp {
            key,
            kind: OpKind::Write(value),
            path: Path::Log,
            batch,
            keys,
            ttl_ns: 0,
            wait_ns: 0,
            pad_bytes,
        };
    }
    let kind = if roll < 600_000 {
        OpKind::Write(value)
    } else if roll < 900_000 {
        // Expect a recent value: often right, sometimes not.
        let expect =
            if rng.chance(PPM / 5) { None } else { Some(value.saturating_sub(rng.between(1, 4)).max(1)) };
        OpKind::Cas { expect, new: value }
    } else {
        OpKind::Remove
    };
    ClientOp { key, kind, path: Path::Log, batch: 1, keys, ttl_ns: 0, wait_ns: 0, pad_bytes: 0 }
}

/// Turns `op` into an operation on the temporary registers: client `own`
/// writes or refreshes its own `t<own>` with a TTL, tries to refresh
/// another client's (refused: not the owner), or anyone reads `t<of>`.
pub fn temp_op(
    rng: &mut SimRng,
    own: Key,
    clients: u64,
    ttl_ns: Nanos,
    log_read_ppm: u32,
    next_value: &mut Value,
) -> ClientOp {
    let roll = rng.below(u64::from(PPM));
    let own_op = |kind| ClientOp {
        key: TEMP_KEY_BASE + own,
        kind,
        path: Path::Log,
        batch: 1,
        keys: 1,
        ttl_ns,
        wait_ns: 0,
        pad_bytes: 0,
    };
    if roll < u64::from(PPM) * 3 / 10 {
        *next_value += 1;
        own_op(OpKind::Write(*next_value))
    } else if roll < u64::from(PPM) / 2 {
        // A refresh of the client's own register, often while its arming is
        // about to expire (issue 15 gap 4: refresh-versus-expiry races).
        own_op(OpKind::Refresh { own: true })
    } else if roll < u64::from(PPM) * 55 / 100 && clients > 1 {
        // Someone else's register: the kv's owner check must refuse it.
        let of = (own + 1 + rng.below(clients - 1)) % clients;
        ClientOp { key: TEMP_KEY_BASE + of, ..own_op(OpKind::Refresh { own: false }) }
    } else {
        let of = rng.below(clients.max(1));
        let path = if rng.chance(log_read_ppm) { Path::Log } else { Path::ReadIndex };
        ClientOp {
            key: TEMP_KEY_BASE + of,
            kind: OpKind::Read,
            path,
            batch: 1,
            keys: 1,
            ttl_ns: 0,
            wait_ns: 0,
            pad_bytes: 0,
        }
    }
}

/// Share of operations that try to take one of `LOCKS` locks (the client
/// then releases it as its next operation).
const LOCK_PPM: u32 = 80_000;
const LOCKS: u64 = 2;
/// The default lease, far longer than any run (the world shortens it per
/// profile for some locks, so leases also expire).
pub const LOCK_LEASE_NS: u64 = 3_600_000_000_000;

pub fn lock_path(lock: Key) -> String {
    format!("l{lock}")
}

/// Share of writes that are multi-key batch puts, and their largest size.
const BATCH_PPM: u64 = 100_000;
const BATCH_KEYS_MAX: u64 = 3;

/// The kv request for an operation that goes through the log, in session
/// `client_id` (seqs below `first_unacked_seq` are acknowledged: the session
/// may forget their responses).
pub fn request(client_id: ClientId, seq: u64, first_unacked_seq: u64, op: &ClientOp) -> Request {
    let key = key_path(op.key);
    let command = match op.kind {
        OpKind::Write(_) if op.batch > 1 => {
            let mut items: Vec<(String, Bytes)> =
                op.batch_items().map(|(k, v)| (key_path(k), encode_value(v))).collect();
            if op.pad_bytes > 0 {
                items.push((PAD_KEY.to_owned(), Bytes::from(vec![b'p'; op.pad_bytes as usize])));
            }
            Command::BatchPut { items }
        }
        OpKind::Write(v) if is_temp_key(op.key) => {
            Command::PutTemp { key, value: encode_value(v), ttl_nanos: op.ttl_ns }
        }
        OpKind::Write(v) => Command::Put { key, value: encode_value(v) },
        OpKind::Read => Command::Get { key },
        OpKind::Cas { expect, new } => {
            Command::CompareAndSet { key, expected: expect.map(encode_value), new: Some(encode_value(new)) }
        }
        OpKind::Remove => Command::Remove { key },
        OpKind::TryLock => {
            Command::TryLock { key: lock_path(op.key), lease_nanos: op.ttl_ns, wait_nanos: op.wait_ns }
        }
        OpKind::Unlock => Command::Unlock { key: lock_path(op.key) },
        OpKind::Refresh { .. } => Command::UpdateTtl { key, ttl_nanos: op.ttl_ns },
    };
    Request { client_id, seq, first_unacked_seq, command }
}

/// What a reply means for the register model, or a description of why the
/// reply is impossible for this operation (a bug somewhere).
pub fn interpret(op: &ClientOp, response: &Response) -> Result<OpResult, String> {
    let node_value = |node: &Option<NodeView>| -> Result<Option<Value>, String> {
        match node {
            None => Ok(None),
            Some(view) => decode_value(&view.value).map(Some).ok_or_else(|| {
                format!("key {} holds {} bytes, not a workload value", key_path(op.key), view.value.len())
            }),
        }
    };
    match (op.kind, response) {
        (OpKind::Write(_), Ok(Reply::Done)) | (OpKind::Remove, Ok(Reply::Done)) if op.batch == 1 => {
            Ok(OpResult::Ok)
        }
        (OpKind::Write(_), Ok(Reply::Batch(results)))
            if op.batch > 1
                && results.len() == usize::from(op.batch) + usize::from(op.pad_bytes > 0)
                && results.iter().all(Result::is_ok) =>
        {
            Ok(OpResult::Ok)
        }
        // Too large for any entry: refused by admission, never proposed. It
        // did not happen; `Unknown` allows that (its values are never seen).
        (OpKind::Write(_), Err(KvError::RequestTooLarge { .. })) if op.pad_bytes > 0 => Ok(OpResult::Unknown),
        (OpKind::Read, Ok(Reply::Node(node))) => Ok(OpResult::Read(node_value(node)?)),
        (OpKind::Cas { .. }, Ok(Reply::Done)) => Ok(OpResult::Cas(true)),
        (OpKind::Cas { .. }, Err(KvError::CasMismatch { .. })) => Ok(OpResult::Cas(false)),
        (OpKind::TryLock, Ok(Reply::Lock(LockOutcome::Acquired))) => Ok(OpResult::Lock(true)),
        (OpKind::TryLock, Err(KvError::LockBusy { .. })) if op.wait_ns == 0 => Ok(OpResult::Lock(false)),
        (OpKind::TryLock, Ok(Reply::Lock(LockOutcome::Queued { .. }))) if op.wait_ns > 0 => {
            Ok(OpResult::Queued)
        }
        // The queue is full: the client waits elsewhere (it is not queued).
        (OpKind::TryLock, Err(KvError::TooManyWaiters { .. })) if op.wait_ns > 0 => Ok(OpResult::Lock(false)),
        (OpKind::Refresh { own: true }, Ok(Reply::Done)) => Ok(OpResult::Exists(true)),
        (OpKind::Refresh { own: false }, Err(KvError::NotOwner { .. })) => Ok(OpResult::Exists(true)),
        (OpKind::Refresh { .. }, Err(KvError::NotFound { .. })) => Ok(OpResult::Exists(false)),
        (OpKind::Unlock, Ok(Reply::Done)) => Ok(OpResult::Ok),
        // The lease ran out (the leader expired it) before the unlock, the
        // client's wait timed out, or it never held the lock (an unlock by a
        // non-holder must change nothing, which the lock checkers verify).
        (OpKind::Unlock, Err(KvError::LockNotHeld { .. })) => Ok(OpResult::Ok),
        (kind, other) => Err(format!("{kind:?} on {} got {other:?}", key_path(op.key))),
    }
}

/// The result of a read served locally after a read barrier.
pub fn interpret_local_read(
    op: &ClientOp,
    node: Result<Option<NodeView>, KvError>,
) -> Result<OpResult, String> {
    interpret(op, &node.map(Reply::Node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Stream;
    use tarn_kv::{KvConfig, KvEntry, KvStateMachine};

    #[test]
    fn operations_round_trip_through_the_real_state_machine() {
        let mut sm = KvStateMachine::new(KvConfig::default());
        let mut apply = |index, req: Request| {
            let entry = KvEntry { leader_time_nanos: index, requests: vec![req] };
            sm.apply_entry(index, &entry).pop().expect("one response per request")
        };
        let put = ClientOp {
            key: 3,
            kind: OpKind::Write(7),
            path: Path::Log,
            batch: 1,
            keys: 8,
            ttl_ns: 0,
            wait_ns: 0,
            pad_bytes: 0,
        };
        assert_eq!(interpret(&put, &apply(1, request(1, 1, 1, &put))), Ok(OpResult::Ok));
        let get = ClientOp {
            key: 3,
            kind: OpKind::Read,
            path: Path::Log,
            batch: 1,
            keys: 8,
            ttl_ns: 0,
            wait_ns: 0,
            pad_bytes: 0,
        };
        assert_eq!(interpret(&get, &apply(2, request(1, 2, 2, &get))), Ok(OpResult::Read(Some(7))));
        let cas_bad = ClientOp {
            key: 3,
            kind: OpKind::Cas { expect: Some(1), new: 8 },
            path: Path::Log,
            batch: 1,
            keys: 8,
            ttl_ns: 0,
            wait_ns: 0,
            pad_bytes: 0,
        };
        assert_eq!(interpret(&cas_bad, &apply(3, request(1, 3, 3, &cas_bad))), Ok(OpResult::Cas(false)));
        let cas = ClientOp {
            key: 3,
            kind: OpKind::Cas { expect: Some(7), new: 9 },
            path: Path::Log,
            batch: 1,
            keys: 8,
            ttl_ns: 0,
            wait_ns: 0,
            pad_bytes: 0,
        };
        assert_eq!(interpret(&cas, &apply(4, request(1, 4, 4, &cas))), Ok(OpResult::Cas(true)));
        // A retry of the same seq is answered from the session, not re-applied.
        assert_eq!(interpret(&cas, &apply(5, request(1, 4, 4, &cas))), Ok(OpResult::Cas(true)));
        let rm = ClientOp {
            key: 3,
            kind: OpKind::Remove,
            path: Path::Log,
            batch: 1,
            keys: 8,
            ttl_ns: 0,
            wait_ns: 0,
            pad_bytes: 0,
        };
        assert_eq!(interpret(&rm, &apply(6, request(1, 5, 5, &rm))), Ok(OpResult::Ok));
        assert_eq!(interpret(&get, &apply(7, request(1, 6, 6, &get))), Ok(OpResult::Read(None)));
        let batch = ClientOp {
            key: 7,
            kind: OpKind::Write(20),
            path: Path::Log,
            batch: 3,
            keys: 8,
            ttl_ns: 0,
            wait_ns: 0,
            pad_bytes: 0,
        };
        assert_eq!(batch.batch_items().collect::<Vec<_>>(), vec![(7, 20), (0, 21), (1, 22)]);
        assert_eq!(interpret(&batch, &apply(9, request(1, 8, 8, &batch))), Ok(OpResult::Ok));
        let get0 = ClientOp {
            key: 0,
            kind: OpKind::Read,
            path: Path::Log,
            batch: 1,
            keys: 8,
            ttl_ns: 0,
            wait_ns: 0,
            pad_bytes: 0,
        };
        assert_eq!(interpret(&get0, &apply(10, request(1, 9, 9, &get0))), Ok(OpResult::Read(Some(21))));
        let create = ClientOp {
            key: 3,
            kind: OpKind::Cas { expect: None, new: 10 },
            path: Path::Log,
            batch: 1,
            keys: 8,
            ttl_ns: 0,
            wait_ns: 0,
            pad_bytes: 0,
        };
        assert_eq!(interpret(&create, &apply(11, request(1, 10, 10, &create))), Ok(OpResult::Cas(true)));
    }

    #[test]
    fn generated_ops_cover_every_kind_with_unique_values() {
        let mut rng = SimRng::new(1, Stream::Workload);
        let mut next = 0;
        let ops: Vec<_> = (0..400).map(|_| next_op(&mut rng, 4, PPM / 2, PPM / 2, &mut next)).collect();
        for want in ["Write", "Read", "Cas", "Remove"] {
            assert!(ops.iter().any(|o| format!("{:?}", o.kind).starts_with(want)), "{want} never drawn");
        }
        assert!(ops.iter().any(|o| o.path == Path::ReadIndex));
        assert!(ops.iter().any(|o| o.batch > 1), "no batch drawn");
        assert!(ops.iter().all(|o| o.key < 4));
        let mut written: Vec<Value> = ops
            .iter()
            .flat_map(|o| match o.kind {
                OpKind::Write(_) => o.batch_items().map(|(_, v)| v).collect(),
                OpKind::Cas { new, .. } => vec![new],
                _ => vec![],
            })
            .collect();
        let n = written.len();
        written.dedup();
        assert_eq!(written.len(), n, "values must be unique");
    }
}
