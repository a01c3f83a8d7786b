//! The DtKV state machine under the driver: `tarn_kv::KvStateMachine` plus
//! the server-local parts (watch delivery to connections, TTL expiry on the
//! leader).

use std::collections::HashMap;

use bytes::Bytes;
use tarn_core::{Index, Nanos};
use tarn_io::driver::{SnapshotInstaller, SnapshotProducer, SnapshotRestore, StateMachine};
use tarn_kv::snapshot::{max_chunk_payload_bytes, SNAPSHOT_CHUNK_TARGET_BYTES};
use tarn_kv::{
    encode_entry, CutOffReason, KvConfig, KvEntry, KvStateMachine, SnapshotDecoder, WatchEvent, WatchId,
    WatchPoll,
};

/// What a watcher's sink receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchDelivery {
    Events(Vec<WatchEvent>),
    /// The watch is over (cut off); the client resumes after its last index.
    Ended(String),
}

/// Delivers to one watcher; returns false once nobody listens (the watch is
/// then removed).
pub type WatchSink = Box<dyn FnMut(WatchDelivery) -> bool + Send>;

/// Events taken from one watcher per poll (whole indexes are never split).
const MAX_WATCH_EVENTS_PER_POLL: usize = 1024;
/// Expiry requests the leader proposes per driver tick.
const MAX_EXPIRE_PER_TICK: usize = 1024;

pub struct KvMachine {
    kv: KvStateMachine,
    sinks: HashMap<WatchId, WatchSink>,
}

impl KvMachine {
    pub fn new(config: KvConfig) -> Self {
        KvMachine { kv: KvStateMachine::new(config), sinks: HashMap::new() }
    }

    pub fn kv(&self) -> &KvStateMachine {
        &self.kv
    }

    /// Registers a watch and delivers whatever history is already due.
    pub fn watch(
        &mut self,
        key: &str,
        subtree: bool,
        after_index: Option<Index>,
        sink: WatchSink,
    ) -> Result<WatchId, String> {
        let id = self.kv.watch(key, subtree, after_index).map_err(|e| e.to_string())?;
        self.sinks.insert(id, sink);
        self.deliver(id);
        Ok(id)
    }

    pub fn unwatch(&mut self, id: WatchId) {
        self.kv.unwatch(id);
        self.sinks.remove(&id);
    }

    fn deliver(&mut self, id: WatchId) {
        let Some(sink) = self.sinks.get_mut(&id) else {
            self.kv.unwatch(id);
            return;
        };
        let alive = match self.kv.poll_watch(id, MAX_WATCH_EVENTS_PER_POLL) {
            WatchPoll::Events(events) if events.is_empty() => true,
            WatchPoll::Events(events) => sink(WatchDelivery::Events(events)),
            WatchPoll::CutOff(reason) => {
                let text = match reason {
                    CutOffReason::QueueFull { max_events, last_delivered_index } => format!(
                        "watcher fell {max_events} events behind; resume after index {last_delivered_index}"
                    ),
                    CutOffReason::SnapshotInstalled { snapshot_index } => {
                        format!("node installed a snapshot at {snapshot_index}; re-read and watch again")
                    }
                };
                sink(WatchDelivery::Ended(text));
                false
            }
            WatchPoll::Unknown => false,
        };
        if !alive {
            self.unwatch(id);
        }
    }
}

impl StateMachine for KvMachine {
    /// One response per request in the entry, or why the entry did not decode.
    type Response = Result<Vec<tarn_kv::Response>, String>;

    fn apply(&mut self, index: Index, data: &Bytes) -> Self::Response {
        self.kv.apply_entry_bytes(index, data).map_err(|e| e.to_string())
    }

    fn apply_noop(&mut self, index: Index) {
        self.kv.advance_to(index);
    }

    fn applied_index(&self) -> Index {
        self.kv.applied_index()
    }

    fn after_apply(&mut self) {
        for id in self.kv.ready_watches() {
            self.deliver(id);
        }
    }

    fn on_leadership(&mut self, is_leader: bool, wall_clock_nanos: Nanos) {
        if is_leader {
            // Deadlines restart from this leader's clock: they never shrink.
            self.kv.rearm_ttls(wall_clock_nanos);
        }
    }

    fn leader_proposals(&mut self, wall_clock_nanos: Nanos) -> Vec<Bytes> {
        let requests = self.kv.expired(wall_clock_nanos, MAX_EXPIRE_PER_TICK);
        if requests.is_empty() {
            return Vec::new();
        }
        vec![Bytes::from(encode_entry(&KvEntry { leader_time_nanos: wall_clock_nanos, requests }))]
    }

    /// A fork (keys and values shared, one pass over the nodes) encoded as
    /// kv's checksummed chunks on the blocking thread.
    fn snapshot(&mut self) -> Option<SnapshotProducer> {
        let fork = self.kv.fork();
        Some(Box::new(move |sink| {
            for chunk in fork.snapshot_chunks(SNAPSHOT_CHUNK_TARGET_BYTES) {
                sink(&chunk)?;
            }
            Ok(())
        }))
    }

    fn snapshot_restore(&mut self) -> Option<Box<dyn SnapshotRestore<Self>>> {
        Some(Box::new(KvRestore::new(self.kv.config().clone())))
    }
}

/// kv chunk framing (see `tarn_kv::snapshot`): a 14-byte header whose bytes
/// 10..14 hold the payload length, the payload, a 4-byte CRC.
const KV_CHUNK_HEADER_BYTES: usize = 14;
const KV_CHUNK_TRAILER_BYTES: usize = 4;

/// Splits the snapshot's byte stream (cut anywhere by storage and the
/// network) back into kv chunks and decodes them; nothing of the running
/// state changes until the installer runs.
struct KvRestore {
    decoder: SnapshotDecoder,
    pending: Vec<u8>,
    max_chunk_bytes: usize,
}

impl KvRestore {
    fn new(config: KvConfig) -> Self {
        let max_chunk_bytes =
            KV_CHUNK_HEADER_BYTES + max_chunk_payload_bytes(&config) + KV_CHUNK_TRAILER_BYTES;
        KvRestore { decoder: SnapshotDecoder::new(config), pending: Vec::new(), max_chunk_bytes }
    }

    /// The length of the chunk starting `pending`, once its header is in.
    fn chunk_len(&self) -> Result<Option<usize>, String> {
        if self.pending.len() < KV_CHUNK_HEADER_BYTES {
            return Ok(None);
        }
        let payload = u32::from_le_bytes(self.pending[10..14].try_into().expect("4 bytes")) as usize;
        let len = KV_CHUNK_HEADER_BYTES + payload + KV_CHUNK_TRAILER_BYTES;
        if len > self.max_chunk_bytes {
            return Err(format!(
                "kv snapshot chunk of {len} bytes exceeds the bound of {} bytes (damaged snapshot?)",
                self.max_chunk_bytes
            ));
        }
        Ok(Some(len))
    }
}

impl SnapshotRestore<KvMachine> for KvRestore {
    fn push(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            let want = self.chunk_len()?.unwrap_or(KV_CHUNK_HEADER_BYTES);
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

    fn finish(self: Box<Self>) -> Result<SnapshotInstaller<KvMachine>, String> {
        if !self.pending.is_empty() {
            return Err(format!("kv snapshot ends inside a chunk ({} bytes left over)", self.pending.len()));
        }
        let decoded = self.decoder.finish().map_err(|e| format!("kv snapshot: {e}"))?;
        Ok(Box::new(move |m: &mut KvMachine| {
            m.kv.install(decoded);
            // Every watcher is cut off with a resumable reason.
            for id in m.kv.ready_watches() {
                m.deliver(id);
            }
        }))
    }
}
