//! Snapshots: the whole replicated state as a stream of checksummed chunks, and its digest.
//!
//! Chunk layout (little endian):
//! ```text
//! magic "TKVS" | version u8 | flags u8 (bit 0 = last) | chunk_no u32 | payload_len u32
//! payload (postcard records, never split across chunks) | crc32c u32 over all of the above
//! ```
//! Records, in order: one `Header`, every node in pre-order (parents first, children in key
//! order, the root first), every session in client-id order, then `End { digest }`.
//! The encoding is canonical, so the digest is simply a 64-bit hash of the record bytes: two
//! states are equal iff their record streams are. The decoder re-hashes what it reads and
//! compares with `End`, checks every structural rule (parents exist and are directories, no
//! duplicate keys, kinds consistent) and builds a new state machine, or fails leaving
//! nothing behind.
//!
//! What is not in a snapshot: TTL deadlines (local, restarted from the next clock reading)
//! and watch history (local; watchers of an installing node are cut off).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use tarn_core::{Index, Nanos};

use crate::command::{ClientId, MAX_ENTRY_SIZE_BYTES};
use crate::config::KvConfig;
use crate::error::SnapshotError;
use crate::key::{check_key, parent_key};
use crate::machine::KvStateMachine;
use crate::response::{NodeKind, Response, TempInfo};
use crate::session::Session;
use crate::tree::{Body, NodeId, Stamps, Waiter, ROOT};

const CHUNK_MAGIC: [u8; 4] = *b"TKVS";
/// Format version of snapshot chunks. Bump on any incompatible change.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 1;
const CHUNK_HEADER_BYTES: usize = 4 + 1 + 1 + 4 + 4;
const CHUNK_TRAILER_BYTES: usize = 4;
const FLAG_LAST: u8 = 1;
/// Default payload size at which the encoder closes a chunk.
pub const SNAPSHOT_CHUNK_TARGET_BYTES: usize = 1024 * 1024;

/// Largest chunk payload the decoder accepts: a target-sized chunk plus one record as large
/// as an entry can make (a record never spans chunks).
pub fn max_chunk_payload_bytes(config: &KvConfig) -> usize {
    SNAPSHOT_CHUNK_TARGET_BYTES.max(config.max_value_size_bytes + config.max_key_size_bytes)
        + MAX_ENTRY_SIZE_BYTES
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct HeaderRecord {
    applied_index: Index,
    time_nanos: Nanos,
    next_arm_id: u64,
    session_last_sweep_nanos: Nanos,
    node_count: u64,
    session_count: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct WaiterRecord {
    client: ClientId,
    lease_nanos: Nanos,
    wait_nanos: Nanos,
    arm_id: u64,
}

#[derive(Serialize)]
struct NodeOut<'a> {
    key: &'a str,
    kind: NodeKind,
    value: &'a Bytes,
    create_index: Index,
    create_time_nanos: Nanos,
    update_index: Index,
    update_time_nanos: Nanos,
    temp: Option<TempInfo>,
    waiters: Vec<WaiterRecord>,
}

#[derive(Deserialize)]
struct NodeIn<'a> {
    key: &'a str,
    kind: NodeKind,
    value: Bytes,
    create_index: Index,
    create_time_nanos: Nanos,
    update_index: Index,
    update_time_nanos: Nanos,
    temp: Option<TempInfo>,
    waiters: Vec<WaiterRecord>,
}

#[derive(Serialize)]
struct SessionOut<'a> {
    client_id: ClientId,
    last_active_nanos: Nanos,
    floor_seq: u64,
    responses: &'a VecDeque<(u64, Response)>,
}

#[derive(Deserialize)]
struct SessionIn {
    client_id: ClientId,
    last_active_nanos: Nanos,
    floor_seq: u64,
    responses: VecDeque<(u64, Response)>,
}

/// Records as written. `RecordIn` must keep the same variants in the same order.
#[derive(Serialize)]
enum RecordOut<'a> {
    Header(HeaderRecord),
    Node(NodeOut<'a>),
    Session(SessionOut<'a>),
    End { digest: u64 },
}

#[derive(Deserialize)]
enum RecordIn<'a> {
    Header(HeaderRecord),
    #[serde(borrow)]
    Node(NodeIn<'a>),
    Session(SessionIn),
    End {
        digest: u64,
    },
}

/// A 64-bit hash fed 8 bytes at a time; only equality matters (not adversarial input).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Digest64 {
    state: u64,
}

impl Digest64 {
    fn new() -> Self {
        Digest64 { state: 0x9E37_79B9_7F4A_7C15 }
    }

    fn mix(&mut self, word: u64) {
        self.state = (self.state ^ word).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        self.state ^= self.state >> 29;
    }

    fn update(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            // chunks_exact yields exactly 8 bytes.
            self.mix(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let mut tail = [0u8; 8];
        tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        self.mix(u64::from_le_bytes(tail) ^ ((bytes.len() as u64) << 56));
    }

    fn finish(&self) -> u64 {
        let mut value = self.state;
        value ^= value >> 31;
        value = value.wrapping_mul(0x94D0_49BB_1331_11EB);
        value ^ (value >> 32)
    }
}

fn node_out<'a>(node: &'a crate::tree::Node, empty: &'a Bytes) -> NodeOut<'a> {
    let (value, waiters) = match &node.body {
        Body::Value(value) => (value, Vec::new()),
        Body::Dir(_) => (empty, Vec::new()),
        Body::Lock(waiters) => (
            empty,
            waiters
                .iter()
                .map(|w| WaiterRecord {
                    client: w.client,
                    lease_nanos: w.lease_nanos,
                    wait_nanos: w.wait_nanos,
                    arm_id: w.arm_id,
                })
                .collect(),
        ),
    };
    NodeOut {
        key: &node.key,
        kind: node.kind(),
        value,
        create_index: node.stamps.create_index,
        create_time_nanos: node.stamps.create_time_nanos,
        update_index: node.stamps.update_index,
        update_time_nanos: node.stamps.update_time_nanos,
        temp: node.temp,
        waiters,
    }
}

fn append_record(buffer: &mut Vec<u8>, record: &RecordOut<'_>) {
    let taken = std::mem::take(buffer);
    // Plain data into a growing Vec: postcard cannot fail.
    *buffer = postcard::to_extend(record, taken).expect("postcard into a Vec cannot fail");
}

enum Stage {
    Header,
    Nodes,
    Sessions,
    End,
    Done,
}

/// Streams a state machine's snapshot as chunks (`Iterator<Item = Bytes>`). Borrows the
/// state machine, so the state cannot change while it is being encoded.
pub struct SnapshotEncoder<'a> {
    machine: &'a KvStateMachine,
    chunk_target_bytes: usize,
    stage: Stage,
    node_stack: Vec<NodeId>,
    session_ids: Vec<ClientId>,
    session_next: usize,
    chunk_no: u32,
    digest: Digest64,
    empty: Bytes,
}

impl<'a> SnapshotEncoder<'a> {
    pub(crate) fn new(machine: &'a KvStateMachine, chunk_target_bytes: usize) -> Self {
        SnapshotEncoder {
            machine,
            chunk_target_bytes: chunk_target_bytes.max(1),
            stage: Stage::Header,
            node_stack: vec![ROOT],
            session_ids: machine.sessions.sorted_ids(),
            session_next: 0,
            chunk_no: 0,
            digest: Digest64::new(),
            empty: Bytes::new(),
        }
    }

    /// Appends the next record to `out` (hashing it); false when none is left.
    fn next_record(&mut self, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        let machine = self.machine;
        loop {
            match self.stage {
                Stage::Header => {
                    let header = HeaderRecord {
                        applied_index: machine.applied_index,
                        time_nanos: machine.time_nanos,
                        next_arm_id: machine.next_arm_id,
                        session_last_sweep_nanos: machine.sessions.last_sweep_nanos,
                        node_count: machine.tree.len() as u64,
                        session_count: machine.sessions.map.len() as u64,
                    };
                    append_record(out, &RecordOut::Header(header));
                    self.stage = Stage::Nodes;
                }
                Stage::Nodes => {
                    let Some(id) = self.node_stack.pop() else {
                        self.stage = Stage::Sessions;
                        continue;
                    };
                    let node = machine.tree.node(id);
                    self.node_stack.extend(machine.tree.sorted_children(id).into_iter().rev());
                    append_record(out, &RecordOut::Node(node_out(node, &self.empty)));
                }
                Stage::Sessions => {
                    let Some(&client_id) = self.session_ids.get(self.session_next) else {
                        self.stage = Stage::End;
                        continue;
                    };
                    self.session_next += 1;
                    let session = &machine.sessions.map[&client_id];
                    let record = SessionOut {
                        client_id,
                        last_active_nanos: session.last_active_nanos,
                        floor_seq: session.floor_seq,
                        responses: &session.responses,
                    };
                    append_record(out, &RecordOut::Session(record));
                }
                Stage::End => {
                    let digest = self.digest.finish();
                    append_record(out, &RecordOut::End { digest });
                    self.stage = Stage::Done;
                    return true;
                }
                Stage::Done => return false,
            }
            self.digest.update(&out[start..]);
            return true;
        }
    }

    /// The digest of everything encoded so far (the state's digest once the encoder is done).
    pub(crate) fn running_digest(&self) -> u64 {
        self.digest.finish()
    }
}

impl Iterator for SnapshotEncoder<'_> {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if matches!(self.stage, Stage::Done) {
            return None;
        }
        let mut chunk = Vec::with_capacity(self.chunk_target_bytes.min(1 << 20) + 64);
        chunk.extend_from_slice(&CHUNK_MAGIC);
        chunk.push(SNAPSHOT_FORMAT_VERSION);
        chunk.push(0);
        chunk.extend_from_slice(&self.chunk_no.to_le_bytes());
        chunk.extend_from_slice(&[0; 4]);
        let mut last = false;
        while chunk.len() - CHUNK_HEADER_BYTES < self.chunk_target_bytes {
            if !self.next_record(&mut chunk) {
                last = true;
                break;
            }
            if matches!(self.stage, Stage::Done) {
                last = true;
                break;
            }
        }
        let payload_len = u32::try_from(chunk.len() - CHUNK_HEADER_BYTES).expect("chunk payload below 4 GiB");
        if last {
            chunk[5] = FLAG_LAST;
        }
        chunk[10..14].copy_from_slice(&payload_len.to_le_bytes());
        let crc = crc32c::crc32c(&chunk);
        chunk.extend_from_slice(&crc.to_le_bytes());
        self.chunk_no += 1;
        Some(Bytes::from(chunk))
    }
}

impl KvStateMachine {
    /// Streams the replicated state as checksummed chunks of about `chunk_target_bytes`.
    pub fn snapshot_chunks(&self, chunk_target_bytes: usize) -> SnapshotEncoder<'_> {
        SnapshotEncoder::new(self, chunk_target_bytes)
    }

    /// A 64-bit digest of the replicated state (tree, sessions, index, time, arm counter).
    /// Equal on every node that applied the same entries, and after a snapshot round trip.
    pub fn digest(&self) -> u64 {
        let mut encoder = SnapshotEncoder::new(self, usize::MAX);
        // Walk the records without building chunks; the End record is not part of the digest.
        let mut scratch = Vec::new();
        while !matches!(encoder.stage, Stage::End | Stage::Done) {
            scratch.clear();
            encoder.next_record(&mut scratch);
        }
        encoder.running_digest()
    }
}

/// Rebuilds a state machine from chunks, checking everything.
pub struct SnapshotDecoder {
    machine: KvStateMachine,
    next_chunk: u32,
    header: Option<HeaderRecord>,
    digest: Digest64,
    sessions_seen: u64,
    last_session: Option<ClientId>,
    finished: Option<u64>,
    max_payload_bytes: usize,
}

impl SnapshotDecoder {
    /// `config` must be the group's configuration (the same as the encoder's).
    pub fn new(config: KvConfig) -> Self {
        let max_payload_bytes = max_chunk_payload_bytes(&config);
        SnapshotDecoder {
            machine: KvStateMachine::new(config),
            next_chunk: 0,
            header: None,
            digest: Digest64::new(),
            sessions_seen: 0,
            last_session: None,
            finished: None,
            max_payload_bytes,
        }
    }

    /// Checks and consumes the next chunk, in order.
    pub fn push_chunk(&mut self, chunk: &[u8]) -> Result<(), SnapshotError> {
        let chunk_no = self.next_chunk;
        let bad = |detail: String| SnapshotError::BadChunk { chunk: chunk_no, detail };
        if self.finished.is_some() {
            return Err(bad("chunk after the final chunk".into()));
        }
        if chunk.len() < CHUNK_HEADER_BYTES + CHUNK_TRAILER_BYTES {
            return Err(bad(format!("{} bytes is shorter than a chunk header", chunk.len())));
        }
        let (body, trailer) = chunk.split_at(chunk.len() - CHUNK_TRAILER_BYTES);
        let stored = u32::from_le_bytes(trailer.try_into().expect("4-byte trailer"));
        let computed = crc32c::crc32c(body);
        if stored != computed {
            return Err(SnapshotError::Checksum { chunk: chunk_no, stored, computed });
        }
        if body[..4] != CHUNK_MAGIC {
            return Err(bad("bad magic; not a tarn kv snapshot chunk".into()));
        }
        if body[4] != SNAPSHOT_FORMAT_VERSION {
            return Err(bad(format!(
                "format version {}, this build reads {}",
                body[4], SNAPSHOT_FORMAT_VERSION
            )));
        }
        let flags = body[5];
        if flags & !FLAG_LAST != 0 {
            return Err(bad(format!("unknown flags {flags:#04x}")));
        }
        let found = u32::from_le_bytes(body[6..10].try_into().expect("4 bytes"));
        if found != chunk_no {
            return Err(SnapshotError::OutOfOrder { expected: chunk_no, found });
        }
        let payload_len = u32::from_le_bytes(body[10..14].try_into().expect("4 bytes")) as usize;
        let payload = &body[CHUNK_HEADER_BYTES..];
        if payload_len != payload.len() {
            return Err(bad(format!("payload length {payload_len} but {} bytes present", payload.len())));
        }
        if payload_len > self.max_payload_bytes {
            return Err(bad(format!("payload of {payload_len} bytes exceeds {}", self.max_payload_bytes)));
        }
        let mut rest = payload;
        while !rest.is_empty() {
            if self.finished.is_some() {
                return Err(bad("records after the end record".into()));
            }
            let (record, after) = postcard::take_from_bytes::<RecordIn<'_>>(rest)
                .map_err(|error| SnapshotError::BadRecord { chunk: chunk_no, detail: error.to_string() })?;
            let record_bytes = &rest[..rest.len() - after.len()];
            self.consume(record, record_bytes)
                .map_err(|detail| SnapshotError::BadRecord { chunk: chunk_no, detail })?;
            rest = after;
        }
        if flags & FLAG_LAST != 0 && self.finished.is_none() {
            return Err(bad("final chunk without an end record".into()));
        }
        if flags & FLAG_LAST == 0 && self.finished.is_some() {
            return Err(bad("end record in a chunk not marked final".into()));
        }
        self.next_chunk += 1;
        Ok(())
    }

    fn consume(&mut self, record: RecordIn<'_>, record_bytes: &[u8]) -> Result<(), String> {
        if let RecordIn::End { digest } = record {
            let header = self.header.as_ref().ok_or("end record before the header")?;
            if self.machine.tree.len() as u64 != header.node_count {
                return Err(format!("{} nodes, header says {}", self.machine.tree.len(), header.node_count));
            }
            if self.sessions_seen != header.session_count {
                return Err(format!("{} sessions, header says {}", self.sessions_seen, header.session_count));
            }
            let computed = self.digest.finish();
            if computed != digest {
                return Err(format!("digest {computed:#018x} but the end record says {digest:#018x}"));
            }
            self.finished = Some(digest);
            return Ok(());
        }
        self.digest.update(record_bytes);
        match record {
            RecordIn::Header(header) => {
                if self.header.is_some() {
                    return Err("second header record".into());
                }
                if header.node_count == 0 || header.next_arm_id == 0 {
                    return Err("header with no root node or arm counter 0".into());
                }
                if header.session_count > self.machine.config.max_sessions as u64 {
                    return Err(format!("{} sessions exceed max_sessions", header.session_count));
                }
                let machine = &mut self.machine;
                machine.applied_index = header.applied_index;
                machine.time_nanos = header.time_nanos;
                machine.next_arm_id = header.next_arm_id;
                machine.sessions.last_sweep_nanos = header.session_last_sweep_nanos;
                machine.watch = crate::watch::WatchHub::new(header.applied_index);
                self.header = Some(header);
                Ok(())
            }
            RecordIn::Node(node) => self.consume_node(node),
            RecordIn::Session(session) => self.consume_session(session),
            RecordIn::End { .. } => unreachable!("handled above"),
        }
    }

    fn consume_node(&mut self, node: NodeIn<'_>) -> Result<(), String> {
        let header = self.header.as_ref().ok_or("node record before the header")?;
        if self.sessions_seen > 0 {
            return Err("node record after session records".into());
        }
        let machine = &mut self.machine;
        if machine.tree.len() as u64 >= header.node_count && !node.key.is_empty() {
            return Err(format!("more nodes than the header's {}", header.node_count));
        }
        let stamps = Stamps {
            create_index: node.create_index,
            create_time_nanos: node.create_time_nanos,
            update_index: node.update_index,
            update_time_nanos: node.update_time_nanos,
        };
        if stamps.create_index > stamps.update_index || stamps.update_index > header.applied_index {
            return Err(format!("node {:?} has inconsistent stamps", node.key));
        }
        if let Some(temp) = node.temp {
            if temp.arm_id >= header.next_arm_id {
                return Err(format!("node {:?} has arm id {} beyond the counter", node.key, temp.arm_id));
            }
        }
        if node.kind != NodeKind::Value && !node.value.is_empty() {
            return Err(format!("{:?} node {:?} carries a value", node.kind, node.key));
        }
        if node.kind != NodeKind::Lock && !node.waiters.is_empty() {
            return Err(format!("non-lock node {:?} has waiters", node.key));
        }
        let body = match node.kind {
            NodeKind::Value => {
                if node.value.is_empty() || node.value.len() > machine.config.max_value_size_bytes {
                    return Err(format!(
                        "value node {:?} has a value of {} bytes",
                        node.key,
                        node.value.len()
                    ));
                }
                Body::Value(node.value)
            }
            NodeKind::Dir => Body::Dir(Default::default()),
            NodeKind::Lock => {
                if node.temp.is_none() {
                    return Err(format!("lock {:?} without a holder", node.key));
                }
                if node.waiters.len() > machine.config.max_lock_waiters {
                    return Err(format!("lock {:?} has too many waiters", node.key));
                }
                Body::Lock(
                    node.waiters
                        .iter()
                        .map(|w| Waiter {
                            client: w.client,
                            lease_nanos: w.lease_nanos,
                            wait_nanos: w.wait_nanos,
                            arm_id: w.arm_id,
                        })
                        .collect::<VecDeque<_>>(),
                )
            }
        };
        if node.key.is_empty() {
            // The root: already present in a fresh tree; take its stamps.
            if machine.tree.len() != 1 || node.kind != NodeKind::Dir || node.temp.is_some() {
                return Err("root record out of place or not a plain directory".into());
            }
            machine.tree.node_mut(ROOT).stamps = stamps;
            return Ok(());
        }
        check_key(node.key, machine.config.max_key_size_bytes)
            .map_err(|problem| format!("key {:?}: {problem}", node.key))?;
        if machine.tree.lookup(node.key).is_some() {
            return Err(format!("duplicate key {:?}", node.key));
        }
        let parent = machine
            .tree
            .lookup(parent_key(node.key))
            .ok_or_else(|| format!("node {:?} before its parent", node.key))?;
        if machine.tree.node(parent).children().is_none() {
            return Err(format!("parent of {:?} is not a directory", node.key));
        }
        let key: Arc<str> = Arc::from(node.key);
        machine.tree.insert(parent, key, body, stamps, node.temp);
        Ok(())
    }

    fn consume_session(&mut self, session: SessionIn) -> Result<(), String> {
        let header = self.header.as_ref().ok_or("session record before the header")?;
        if self.sessions_seen >= header.session_count {
            return Err(format!("more sessions than the header's {}", header.session_count));
        }
        if self.last_session.is_some_and(|last| last >= session.client_id) {
            return Err(format!("session {} out of order", session.client_id));
        }
        if session.responses.len() > self.machine.config.max_session_responses {
            return Err(format!("session {} keeps too many responses", session.client_id));
        }
        if session.responses.iter().zip(session.responses.iter().skip(1)).any(|(a, b)| a.0 >= b.0) {
            return Err(format!("session {} responses out of order", session.client_id));
        }
        if session.responses.front().is_some_and(|&(seq, _)| seq < session.floor_seq) {
            return Err(format!("session {} keeps a response below its floor", session.client_id));
        }
        self.last_session = Some(session.client_id);
        self.sessions_seen += 1;
        self.machine.sessions.map.insert(
            session.client_id,
            Session {
                last_active_nanos: session.last_active_nanos,
                floor_seq: session.floor_seq,
                responses: session.responses,
            },
        );
        Ok(())
    }

    /// The rebuilt state machine, once the final chunk has been pushed.
    pub fn finish(self) -> Result<KvStateMachine, SnapshotError> {
        let Some(expected) = self.finished else { return Err(SnapshotError::Incomplete) };
        let mut machine = self.machine;
        machine.rebuild_ttl();
        let actual = machine.digest();
        if actual != expected {
            return Err(SnapshotError::Digest { expected, actual });
        }
        Ok(machine)
    }
}

/// Decodes a snapshot from its byte stream cut anywhere (by storage reads and network
/// chunks): finds each chunk's end from its header, bounds it, and feeds whole chunks to a
/// [`SnapshotDecoder`]. The server's restore and the simulator's both use it, so the code
/// that splits a leader's stream is the code the simulator runs.
pub struct SnapshotStreamDecoder {
    decoder: SnapshotDecoder,
    pending: Vec<u8>,
    max_chunk_bytes: usize,
}

impl SnapshotStreamDecoder {
    /// A decoder for a snapshot of a state machine configured as `config`.
    pub fn new(config: KvConfig) -> Self {
        let max_chunk_bytes = CHUNK_HEADER_BYTES + max_chunk_payload_bytes(&config) + CHUNK_TRAILER_BYTES;
        SnapshotStreamDecoder { decoder: SnapshotDecoder::new(config), pending: Vec::new(), max_chunk_bytes }
    }

    /// The length of the chunk starting `pending`, once its header is in.
    fn chunk_len(&self) -> Result<Option<usize>, String> {
        if self.pending.len() < CHUNK_HEADER_BYTES {
            return Ok(None);
        }
        let payload = u32::from_le_bytes(self.pending[10..14].try_into().expect("4 bytes")) as usize;
        let len = CHUNK_HEADER_BYTES + payload + CHUNK_TRAILER_BYTES;
        if len > self.max_chunk_bytes {
            return Err(format!(
                "kv snapshot chunk of {len} bytes exceeds the bound of {} bytes (damaged snapshot?)",
                self.max_chunk_bytes
            ));
        }
        Ok(Some(len))
    }

    /// The next bytes of the stream, in order (pieces of any size).
    pub fn push(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            let want = self.chunk_len()?.unwrap_or(CHUNK_HEADER_BYTES);
            let take = want.saturating_sub(self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if let Some(len) = self.chunk_len()? {
                if self.pending.len() == len {
                    self.decoder.push_chunk(&self.pending).map_err(|e| format!("kv snapshot: {e}"))?;
                    self.pending.clear();
                }
            }
        }
        Ok(())
    }

    /// The decoded state, once every byte was pushed (checked whole: digest included).
    pub fn finish(self) -> Result<KvStateMachine, String> {
        if !self.pending.is_empty() {
            return Err(format!("kv snapshot ends inside a chunk ({} bytes left over)", self.pending.len()));
        }
        self.decoder.finish().map_err(|e| format!("kv snapshot: {e}"))
    }
}

impl KvStateMachine {
    /// Writes this state's snapshot (normally a [`KvStateMachine::fork`]'s, on another thread)
    /// to `sink` as chunks of about `chunk_target_bytes`; an error from the sink is returned.
    pub fn write_snapshot(
        &self,
        chunk_target_bytes: usize,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        for chunk in self.snapshot_chunks(chunk_target_bytes) {
            sink(&chunk)?;
        }
        Ok(())
    }
}

/// Decodes a whole snapshot from its chunks.
pub fn decode_snapshot<'c>(
    config: KvConfig,
    chunks: impl IntoIterator<Item = &'c [u8]>,
) -> Result<KvStateMachine, SnapshotError> {
    let mut decoder = SnapshotDecoder::new(config);
    for chunk in chunks {
        decoder.push_chunk(chunk)?;
    }
    decoder.finish()
}
