//! Seed inputs for every target: small inputs that reach deep code, written
//! to `fuzz/corpus/<target>/` by `cargo run -p tarn-fuzz-targets --example
//! write_seeds`.
//!
//! Byte-level targets get hand-built seeds (valid frames, a real hard-state
//! file, real snapshots, each also in a damaged variant). Structured targets
//! (`arbitrary`) get seeds picked by a seeded search: random inputs are run
//! and the ones that reach the most (elections, commits, restarts, recovery
//! after damage, expiries, snapshots) are kept. The search is deterministic,
//! so re-running the writer reproduces the same files.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tarn_core::{
    Entry, EntryPayload, HardState, LogId, Membership, Message, MessageBody, RejectHint, SnapshotMeta,
};
use tarn_io::storage::{FlushReport, Storage};
use tarn_io::vfs::{MemVfs, Vfs};
use tarn_io::wire::{encode_frame, encode_frame_vec, Envelope, HeartbeatBatch, PeerFrame};
use tarn_kv::{encode_entry, encode_request, encode_response, Command, KvEntry, KvStateMachine, Request};
use tarn_server::protocol::{ClientFrame, Consistency, RequestBody, ResponseBody, ServerError, ServerFrame};

use crate::snapshot_decode::{frame_chunks, FLAG_KV, FLAG_RESEAL, SEED_CHUNK_TARGET_BYTES};
use crate::wire_frame::{Frame, FUZZ_MAX_FRAME_BYTES};
use crate::{hard_state, kv_apply, log_recovery, raft_cluster};

/// Seeds kept per structured target, and the climb that finds each.
pub const SEEDS_PER_TARGET: u64 = 3;
pub const CLIMB_ITERATIONS: usize = 1500;

/// One seed: target name, file name, bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// A tiny deterministic generator (splitmix64) for the seed search.
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

fn message(body: MessageBody) -> Frame {
    PeerFrame::Message(Envelope { group: 1, message: Message { from: 2, term: 3, rejoining: false, body } })
}

fn sample_entries() -> Vec<Entry> {
    vec![
        Entry { term: 3, index: 10, payload: EntryPayload::Blank },
        Entry { term: 3, index: 11, payload: EntryPayload::Normal(Bytes::from_static(b"put a.b v1")) },
        Entry { term: 3, index: 12, payload: EntryPayload::Membership(Membership::new_voters([1, 2, 3])) },
    ]
}

fn sample_frames() -> Vec<(&'static str, Frame)> {
    vec![
        ("hello", PeerFrame::Hello { cluster_id: 9, from: 1, to: 2 }),
        (
            "append",
            message(MessageBody::AppendEntries {
                session: 4,
                prev_log_id: LogId::new(2, 9),
                entries: sample_entries(),
                commit: 9,
            }),
        ),
        ("vote", message(MessageBody::VoteRequest { last_log_id: LogId::new(2, 9), transfer: true })),
        (
            "append-reject",
            message(MessageBody::AppendResponse {
                session: 4,
                result: Err(RejectHint { rejected_index: 12, hint: LogId::new(2, 7) }),
            }),
        ),
        ("read-index", message(MessageBody::ReadIndexResponse { id: 77, result: Ok(12) })),
    ]
}

fn sample_requests() -> Vec<Request> {
    let r = |seq, command| Request { client_id: 5, seq, first_unacked_seq: 1, command };
    vec![
        r(1, Command::Mkdir { key: "a".into() }),
        r(2, Command::Put { key: "a.b".into(), value: Bytes::from_static(b"v1") }),
        r(3, Command::PutTemp { key: "a.t".into(), value: Bytes::from_static(b"t"), ttl_nanos: 100 }),
        r(4, Command::TryLock { key: "l".into(), lease_nanos: 50, wait_nanos: 20 }),
        r(
            5,
            Command::CompareAndSet {
                key: "a.b".into(),
                expected: Some(Bytes::from_static(b"v1")),
                new: Some(Bytes::from_static(b"v2")),
            },
        ),
        r(6, Command::BatchGet { keys: vec!["a".into(), "a.b".into(), "zz".into()] }),
        r(7, Command::List { key: "a".into(), limit: Some(2), after: Some("b".into()) }),
    ]
}

/// A small kv state with every kind of node and a session.
pub fn sample_machine() -> KvStateMachine {
    let mut machine = KvStateMachine::new(kv_apply::config());
    for (k, request) in sample_requests().iter().enumerate() {
        let response = machine.apply(k as u64 + 1, 10 * k as u64, request);
        assert!(response.is_ok(), "sample request {request:?} failed: {response:?}");
    }
    machine
}

fn wire_seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    for (name, frame) in sample_frames() {
        let mut bytes = vec![0u8];
        bytes.extend(encode_frame_vec(&frame, FUZZ_MAX_FRAME_BYTES).expect("sample encodes"));
        out.push(("wire_frame", format!("peer-{name}"), bytes));
    }
    let mut stream = vec![1u8, 7];
    for (_, frame) in sample_frames() {
        encode_frame(&frame, FUZZ_MAX_FRAME_BYTES, &mut stream).expect("sample encodes");
    }
    out.push(("wire_frame", "stream-5-frames".into(), stream));
    // Issue 17: the node-level liveness ping, a quiet leader's Quiesce and
    // coalesced heartbeats (three groups' heartbeats and an answer).
    let envelope =
        |group, body| Envelope { group, message: Message { from: 2, term: 3, rejoining: false, body } };
    let batch = HeartbeatBatch(vec![
        envelope(1, MessageBody::Heartbeat { commit: 9, ctx: 4 }),
        envelope(2, MessageBody::Heartbeat { commit: 0, ctx: 1 }),
        envelope(7, MessageBody::HeartbeatResponse { ctx: 5, last_index: 12 }),
    ]);
    let quiet: [(&str, Frame); 3] = [
        ("ping", PeerFrame::Ping),
        ("quiesce", message(MessageBody::Quiesce { commit: 12 })),
        ("heartbeats", PeerFrame::Heartbeats(batch)),
    ];
    for (name, frame) in quiet {
        let mut bytes = vec![0u8];
        bytes.extend(encode_frame_vec(&frame, FUZZ_MAX_FRAME_BYTES).expect("sample encodes"));
        out.push(("wire_frame", format!("peer-{name}"), bytes));
    }
    let mut request = vec![2u8];
    request.extend(encode_request(&sample_requests()[4]));
    out.push(("wire_frame", "kv-request-cas".into(), request));
    let mut entry = vec![3u8];
    entry.extend(encode_entry(&KvEntry { leader_time_nanos: 42, requests: sample_requests() }));
    out.push(("wire_frame", "kv-entry-batch".into(), entry));
    let mut machine = KvStateMachine::new(kv_apply::config());
    for (k, request) in sample_requests().iter().enumerate() {
        let response = machine.apply(k as u64 + 1, 0, request);
        let mut bytes = vec![4u8];
        bytes.extend(encode_response(&response));
        out.push(("wire_frame", format!("kv-response-{k}"), bytes));
        let server = ServerFrame::Response { id: k as u64, result: Ok(ResponseBody::Kv(response)) };
        let mut bytes = vec![6u8];
        encode_frame(&server, FUZZ_MAX_FRAME_BYTES, &mut bytes).expect("sample encodes");
        out.push(("wire_frame", format!("server-response-{k}"), bytes));
    }
    let client_frames = [
        ("write", RequestBody::Write(sample_requests()[1].clone())),
        (
            "read",
            RequestBody::Read {
                command: Command::List { key: "a".into(), limit: Some(2), after: Some("b".into()) },
                consistency: Consistency::Stale,
            },
        ),
        ("watch", RequestBody::Watch { key: "a".into(), subtree: true, after_index: Some(3) }),
    ];
    for (name, body) in client_frames {
        let mut bytes = vec![5u8];
        encode_frame(&ClientFrame { id: 9, group: 1, body }, FUZZ_MAX_FRAME_BYTES, &mut bytes)
            .expect("encodes");
        out.push(("wire_frame", format!("client-{name}"), bytes));
    }
    let not_leader = ServerFrame::Response {
        id: 4,
        result: Err(ServerError::NotLeader { node: 1, group: 1, leader: Some(2) }),
    };
    let mut bytes = vec![6u8];
    encode_frame(&not_leader, FUZZ_MAX_FRAME_BYTES, &mut bytes).expect("encodes");
    out.push(("wire_frame", "server-not-leader".into(), bytes));
    out
}

/// The hard-state file after `updates` hard-state writes.
fn hard_state_file(updates: u64) -> Vec<u8> {
    let vfs = MemVfs::new();
    let mut storage = Storage::open(Arc::new(vfs.clone()), hard_state::config()).expect("fresh disk");
    storage.open_group(hard_state::GROUP).expect("group");
    let mut report = FlushReport::default();
    for k in 1..=updates {
        storage
            .stage_hard_state(hard_state::GROUP, HardState { term: k, vote: Some(k % 3 + 1), commit: k })
            .expect("stage");
        storage.flush(&mut report);
    }
    let path = Path::new("/data").join(format!("group-{:020}", hard_state::GROUP)).join("hardstate");
    vfs.file_bytes(&path).expect("hard state file")
}

fn hard_state_seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    let both = hard_state_file(4);
    out.push(("hard_state", "both-slots-valid".into(), [&[0u8][..], &both].concat()));
    let mut torn = both.clone();
    torn[512 + 20] ^= 0x40;
    out.push(("hard_state", "newest-slot-torn".into(), [&[0u8][..], &torn].concat()));
    let mut rot = both.clone();
    rot[20] ^= 1;
    rot[512 + 30] ^= 1;
    out.push(("hard_state", "both-slots-rotten".into(), [&[0u8][..], &rot].concat()));
    let one = hard_state_file(1);
    out.push(("hard_state", "first-write-only".into(), [&[0u8][..], &one].concat()));
    // Re-sealed slots with extreme sequence numbers: the fuzzer mutates from here.
    let mut extreme = both;
    extreme[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    extreme[512 + 8..512 + 16].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
    out.push(("hard_state", "resealed-max-seq".into(), [&[3u8][..], &extreme].concat()));
    out
}

fn snapshot_seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    let vfs = MemVfs::new();
    let dir = Path::new("/s");
    vfs.create_dir_all(dir).expect("mkdir");
    let meta = SnapshotMeta { last_log_id: LogId::new(3, 42), membership: Membership::new_voters([1, 2, 3]) };
    let data = b"kv state bytes";
    let path = tarn_io::storage::snapshot::write(&vfs, dir, &meta, data).expect("write");
    let file = vfs.file_bytes(&path).expect("snapshot file");
    out.push(("snapshot_decode", "storage-file".into(), [&[0u8][..], &file].concat()));
    let mut damaged = file.clone();
    // The metadata follows the data (format v2); its second byte is the
    // index varint of last_log_id (42 becomes 46, still decodable).
    let meta_start = tarn_io::storage::snapshot::SNAPSHOT_HEADER_BYTES + data.len();
    damaged[meta_start + 1] ^= 4;
    out.push((
        "snapshot_decode",
        "storage-file-resealed-meta".into(),
        [&[FLAG_RESEAL][..], &damaged].concat(),
    ));
    let machine = sample_machine();
    let chunks: Vec<Bytes> = machine.snapshot_chunks(SEED_CHUNK_TARGET_BYTES).collect();
    let framed = frame_chunks(&chunks);
    out.push(("snapshot_decode", "kv-chunks".into(), [&[FLAG_KV][..], &framed].concat()));
    let mut bent = framed.clone();
    let middle = bent.len() / 2;
    bent[middle] ^= 0x10;
    out.push((
        "snapshot_decode",
        "kv-chunks-resealed-damage".into(),
        [&[FLAG_KV | FLAG_RESEAL][..], &bent].concat(),
    ));
    out
}

/// Hill-climbs one input of at most `max_len` bytes: random mutations
/// (append, overwrite, insert, delete a run of bytes) are kept when they do
/// not lower `score`. A tiny, deterministic, coverage-blind fuzzer: enough to
/// find inputs that elect, commit, expire or recover.
/// The first of `tries` random inputs of `len` bytes (from `seed`) that
/// `hit` accepts. Panics if none does: the seed set would silently lose the
/// situation it exists for.
pub fn first_hit(seed: u64, tries: usize, len: usize, hit: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut rng = SplitMix::new(seed);
    for _ in 0..tries {
        let candidate = rng.bytes(len);
        if hit(&candidate) {
            return candidate;
        }
    }
    panic!("no input of {tries} random ones (seed {seed}, {len} bytes) reaches the situation");
}

pub fn climb(seed: u64, iterations: usize, max_len: usize, score: impl Fn(&[u8]) -> u64) -> Vec<u8> {
    let mut rng = SplitMix::new(seed);
    let mut best = rng.bytes(max_len / 4);
    let mut best_score = score(&best);
    for _ in 0..iterations {
        let mut candidate = best.clone();
        let run = 1 + rng.next_u64() as usize % 16;
        let at = if candidate.is_empty() { 0 } else { rng.next_u64() as usize % candidate.len() };
        match rng.next_u64() % 4 {
            0 => candidate.extend(rng.bytes(run)),
            1 => {
                for k in at..(at + run).min(candidate.len()) {
                    candidate[k] = rng.next_u64() as u8;
                }
            }
            2 => {
                let insert = rng.bytes(run);
                candidate.splice(at..at, insert);
            }
            _ => {
                let end = (at + run).min(candidate.len());
                candidate.drain(at..end);
            }
        }
        candidate.truncate(max_len);
        let s = score(&candidate);
        if s >= best_score {
            best = candidate;
            best_score = s;
        }
    }
    best
}

fn arbitrary_seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    let raft_score = |data: &[u8]| {
        raft_cluster::parse(data).map_or(0, |input| {
            let r = raft_cluster::run(&input);
            r.committed * 4
                + r.proposals_applied * 8
                + r.reads_ready * 8
                + r.restarts * 6
                + r.max_term
                + r.conf_changes * 12
                + r.installs * 12
                + r.wipes * 6
                + r.rejoined * 24
        })
    };
    for k in 0..SEEDS_PER_TARGET {
        out.push(("raft_cluster", format!("climb-{k}"), climb(100 + k, CLIMB_ITERATIONS, 800, raft_score)));
    }
    // Four objectives: a long log recovered after damage and compaction, a
    // corruption report, a torn tail repaired after compaction, and a log of
    // several segments recovered (since compaction renames covered segments
    // away at once, the first objective ends on one segment).
    let log_weights: [[u64; 8]; 4] = [
        [2, 1, 4, 8, 40, 20, 1, 60],
        [1, 0, 1, 1, 0, 1000, 0, 0],
        [1, 1, 1, 1, 1000, 0, 1, 60],
        [1, 4, 40, 1, 0, 0, 0, 0],
    ];
    for (k, w) in log_weights.iter().enumerate() {
        let log_score = |data: &[u8]| {
            log_recovery::parse(data).map_or(0, |input| {
                let r = log_recovery::run(&input);
                r.acked_entries * w[0]
                    + r.recovered_entries * w[1]
                    + r.segments as u64 * w[2]
                    + r.damaged_files as u64 * w[3]
                    + u64::from(r.torn_tail_repaired) * w[4]
                    + u64::from(r.corruption_reported) * w[5]
                    + r.snapshot_index * w[6]
                    + u64::from(r.compacted) * w[7]
            })
        };
        out.push((
            "log_recovery",
            format!("climb-{k}"),
            climb(200 + k as u64, CLIMB_ITERATIONS, 400, log_score),
        ));
    }
    let kv_score = |data: &[u8]| {
        kv_apply::parse(data).map_or(0, |input| {
            let r = kv_apply::run(&input);
            r.ok_writes * 3
                + r.expiries * 10
                + r.snapshots * 10
                + r.renewals * 10
                + r.nodes as u64 * 2
                + r.entries
        })
    };
    for k in 0..SEEDS_PER_TARGET {
        out.push(("kv_apply", format!("climb-{k}"), climb(300 + k, CLIMB_ITERATIONS, 600, kv_score)));
    }
    // A renewal by any client needs a live temporary node at a valid key and
    // a second, well-formed command on it: about 1 random input in 10,000,
    // which no climb above meets. Draw until one does.
    let renews = |data: &[u8]| kv_apply::parse(data).is_some_and(|input| kv_apply::run(&input).renewals > 0);
    out.push(("kv_apply", "renewal".to_owned(), first_hit(310, 200_000, 300, renews)));
    out
}

/// Scenario inputs of `raft_cluster` written op by op: paths too long for
/// the climb to find (a wiped node rejoining through remove → learner →
/// promote; a lagging node catching up by snapshot install).
pub fn raft_scenarios() -> Vec<(&'static str, raft_cluster::ClusterInput)> {
    use raft_cluster::Op::*;
    // Node k is `node: k - 1` (ids 1..=3, the spare is 4).
    let settle = [DeliverAll, DeliverAll, DeliverAll];
    let mut rejoin = vec![Tick { node: 0 }];
    rejoin.extend(settle.clone());
    rejoin.extend([Propose { node: 0 }, Propose { node: 0 }, Propose { node: 0 }]);
    rejoin.extend(settle.clone());
    rejoin.extend([Tick { node: 0 }, Wipe { node: 2 }, Tick { node: 0 }]);
    rejoin.extend(settle.clone());
    rejoin.push(ChangeMembership { node: 0, change: 2, target: 2 });
    rejoin.extend(settle.clone());
    rejoin.push(ChangeMembership { node: 0, change: 1, target: 2 });
    rejoin.extend(settle.clone());
    rejoin.extend([Tick { node: 0 }, Propose { node: 0 }]);
    rejoin.extend(settle.clone());
    rejoin.push(ChangeMembership { node: 0, change: 3, target: 2 });
    rejoin.extend(settle.clone());
    rejoin.extend([Crash { node: 0 }, Tick { node: 1 }, Tick { node: 2 }]);
    rejoin.extend(settle.clone());
    rejoin.extend([Tick { node: 1 }, Tick { node: 2 }]);
    rejoin.extend(settle.clone());
    rejoin.extend([Propose { node: 1 }, Propose { node: 2 }, Restart { node: 0 }, Read { node: 1 }]);
    rejoin.extend(settle.clone());

    let mut install = vec![Tick { node: 0 }];
    install.extend(settle.clone());
    install.push(Isolate { node: 2 });
    install.extend((0..16).map(|_| Propose { node: 0 }));
    install.extend(settle.clone());
    install.extend([Heal, Tick { node: 0 }]);
    install.extend(settle.clone());
    install.extend([Tick { node: 0 }]);
    install.extend(settle.clone());
    install.extend([ChangeMembership { node: 0, change: 1, target: 3 }]);
    install.extend(settle.clone());
    install.extend([Tick { node: 0 }]);
    install.extend(settle);

    [("rejoin", rejoin), ("snapshot-install", install)]
        .into_iter()
        .map(|(name, ops)| (name, raft_cluster::ClusterInput { seed: 1, five_nodes: false, ops }))
        .collect()
}

/// The hand-built seeds of the byte-level targets and the scenario seeds of
/// `raft_cluster` (cheap to rebuild).
pub fn hand_built() -> Vec<Seed> {
    let mut out = wire_seeds();
    for (name, input) in raft_scenarios() {
        out.push(("raft_cluster", format!("scenario-{name}"), raft_cluster::encode(&input)));
    }
    out.extend(hard_state_seeds());
    out.extend(snapshot_seeds());
    out
}

/// Every seed of every target (the climbs take a minute or two in release).
pub fn all() -> Vec<Seed> {
    let mut out = hand_built();
    out.extend(arbitrary_seeds());
    out
}
