//! The DtKV state machine under the driver: `tarn_kv::KvStateMachine` plus
//! the server-local parts (watch delivery to connections, TTL expiry on the
//! leader).

use bytes::Bytes;
use tarn_core::{Index, Nanos};
use tarn_io::driver::{SnapshotInstaller, SnapshotProducer, SnapshotRestore, StateMachine};
use tarn_kv::snapshot::SNAPSHOT_CHUNK_TARGET_BYTES;
use tarn_kv::{KvConfig, KvStateMachine, SnapshotStreamDecoder};
use tarn_service::watch::WatchSinks;
pub use tarn_service::watch::{WatchDelivery, WatchSink};
use tarn_service::KvHost;

/// Expiry requests the leader proposes per driver tick.
const MAX_EXPIRE_PER_TICK: usize = 1024;

/// The kv and the sinks of the watches connections started on it.
pub struct KvMachine {
    kv: KvStateMachine,
    sinks: WatchSinks,
}

impl KvMachine {
    /// An empty tree under `config`.
    pub fn new(config: KvConfig) -> Self {
        KvMachine { kv: KvStateMachine::new(config), sinks: WatchSinks::default() }
    }

    /// The kv, for reads.
    pub fn kv(&self) -> &KvStateMachine {
        &self.kv
    }
}

impl KvHost for KvMachine {
    fn kv(&self) -> &KvStateMachine {
        &self.kv
    }

    fn kv_and_sinks(&mut self) -> (&mut KvStateMachine, &mut WatchSinks) {
        (&mut self.kv, &mut self.sinks)
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
        self.sinks.deliver_ready(&mut self.kv);
    }

    fn on_leadership(&mut self, is_leader: bool, wall_clock_nanos: Nanos) {
        if is_leader {
            // Deadlines restart from this leader's clock: they never shrink.
            self.kv.rearm_ttls(wall_clock_nanos);
        }
    }

    fn wants_leader_ticks(&self) -> bool {
        self.kv.ttl_armed() > 0
    }

    fn leader_proposals(&mut self, wall_clock_nanos: Nanos) -> Vec<Bytes> {
        self.kv
            .expiry_entry(wall_clock_nanos, MAX_EXPIRE_PER_TICK)
            .map(|(data, _)| Bytes::from(data))
            .into_iter()
            .collect()
    }

    /// A fork (keys and values shared, one pass over the nodes) encoded as
    /// kv's checksummed chunks on the blocking thread.
    fn snapshot(&mut self) -> Option<SnapshotProducer> {
        let fork = self.kv.fork();
        Some(Box::new(move |sink| fork.write_snapshot(SNAPSHOT_CHUNK_TARGET_BYTES, sink)))
    }

    fn snapshot_restore(&mut self) -> Option<Box<dyn SnapshotRestore<Self>>> {
        Some(Box::new(KvRestore::new(self.kv.config().clone())))
    }
}

/// Decodes the snapshot's byte stream (cut anywhere by storage and the
/// network) with kv's stream decoder; nothing of the running state changes
/// until the installer runs.
struct KvRestore {
    decoder: SnapshotStreamDecoder,
}

impl KvRestore {
    fn new(config: KvConfig) -> Self {
        KvRestore { decoder: SnapshotStreamDecoder::new(config) }
    }
}

impl SnapshotRestore<KvMachine> for KvRestore {
    fn push(&mut self, data: &[u8]) -> Result<(), String> {
        self.decoder.push(data)
    }

    fn finish(self: Box<Self>) -> Result<SnapshotInstaller<KvMachine>, String> {
        let decoded = self.decoder.finish()?;
        Ok(Box::new(move |m: &mut KvMachine| {
            m.kv.install(decoded);
            // Every watcher is cut off with a resumable reason.
            m.sinks.deliver_ready(&mut m.kv);
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tarn_kv::{encode_entry, Command, KvEntry, Request};

    use super::*;

    fn put(m: &mut KvMachine, index: Index, key: &str, value: &str) {
        let request = Request {
            client_id: 1,
            seq: index,
            first_unacked_seq: index,
            command: Command::Put { key: key.into(), value: Bytes::from(value.to_owned()) },
        };
        let entry = encode_entry(&KvEntry { leader_time_nanos: index * 1000, requests: vec![request] });
        m.apply(index, &Bytes::from(entry)).expect("entry decodes");
    }

    fn snapshot_bytes(m: &mut KvMachine) -> Vec<u8> {
        let producer = m.snapshot().expect("kv takes snapshots");
        let mut out = Vec::new();
        producer(&mut |b: &[u8]| {
            out.extend_from_slice(b);
            Ok(())
        })
        .expect("encodes");
        out
    }

    /// Restores `bytes` fed in pieces of `piece` bytes.
    fn restore(target: &mut KvMachine, bytes: &[u8], piece: usize) -> Result<(), String> {
        let mut r = target.snapshot_restore().expect("kv restores snapshots");
        for p in bytes.chunks(piece) {
            r.push(p)?;
        }
        let install = r.finish()?;
        install(target);
        Ok(())
    }

    #[test]
    fn snapshot_round_trips_through_any_split_and_cuts_watchers_off() {
        let mut leader = KvMachine::new(KvConfig::default());
        for i in 1..=300 {
            put(&mut leader, i, &format!("k{i:04}"), &"v".repeat(i as usize % 97 + 1));
        }
        let bytes = snapshot_bytes(&mut leader);
        // The fork is independent: applying more does not change what was taken.
        put(&mut leader, 301, "late", "x");
        for piece in [1, 13, 4096, bytes.len()] {
            let mut follower = KvMachine::new(KvConfig::default());
            put(&mut follower, 1, "stale", "old");
            let seen: Arc<Mutex<Vec<WatchDelivery>>> = Arc::default();
            let sink_seen = seen.clone();
            follower
                .watch(
                    "stale",
                    false,
                    None,
                    Box::new(move |d| {
                        sink_seen.lock().unwrap().push(d);
                        true
                    }),
                )
                .unwrap();
            restore(&mut follower, &bytes, piece).unwrap();
            assert_eq!(follower.applied_index(), 300);
            assert!(follower.kv().get("stale").unwrap().is_none(), "the old state is replaced");
            assert!(follower.kv().get("k0300").unwrap().is_some());
            assert!(follower.kv().get("late").unwrap().is_none());
            let seen = seen.lock().unwrap();
            assert!(
                matches!(seen.last(), Some(WatchDelivery::Ended(reason)) if reason.contains("snapshot at 300")),
                "{seen:?}"
            );
            assert!(follower.sinks.is_empty(), "the cut-off watch is removed");
        }
        let mut copy = KvMachine::new(KvConfig::default());
        restore(&mut copy, &bytes, 777).unwrap();
        let mut at_300 = KvMachine::new(KvConfig::default());
        for i in 1..=300 {
            put(&mut at_300, i, &format!("k{i:04}"), &"v".repeat(i as usize % 97 + 1));
        }
        assert_eq!(copy.kv().digest(), at_300.kv().digest());
    }

    #[test]
    fn damaged_or_cut_snapshots_are_refused_and_change_nothing() {
        let mut leader = KvMachine::new(KvConfig::default());
        for i in 1..=50 {
            put(&mut leader, i, &format!("k{i}"), "value");
        }
        let bytes = snapshot_bytes(&mut leader);
        let mut target = KvMachine::new(KvConfig::default());
        put(&mut target, 1, "mine", "stays");
        let before = target.kv().digest();
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 0x20;
        assert!(restore(&mut target, &flipped, 100).is_err());
        assert!(restore(&mut target, &bytes[..bytes.len() - 3], 100).is_err(), "cut inside a chunk");
        let mut huge = bytes.clone();
        huge[10..14].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = restore(&mut target, &huge, 100).unwrap_err();
        assert!(err.contains("exceeds the bound"), "{err}");
        assert_eq!(target.kv().digest(), before);
    }
}
