//! What `GET /metrics` shows, in the Prometheus text format (0.0.4).
//!
//! Nothing here runs on the request path: the counters and histograms are
//! atomics updated where things happen (`ServerCounters`, the driver's
//! `StorageCounters` and `GroupCounters`, the transport's stats); a scrape
//! reads them, asks each group for its status, and encodes a registry built
//! for that scrape with `prometheus-client`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tarn_core::Role;
use tarn_io::driver::HistogramSnapshot;

use super::Shared;
use crate::protocol::ServerError;

/// The `Content-Type` of [`render`]'s text.
pub(super) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A sample's labels, e.g. `[("group", "1")]`.
type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
enum Value {
    Counter(u64),
    Gauge(i64),
    Histogram(HistogramSnapshot),
}

/// One metric's samples, collected for one scrape.
#[derive(Debug)]
struct Samples {
    kind: MetricType,
    samples: Vec<(Labels, Value)>,
}

impl EncodeMetric for Samples {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        for (labels, value) in &self.samples {
            if labels.is_empty() {
                encode_value(&mut encoder, value)?;
            } else {
                encode_value(&mut encoder.encode_family(labels)?, value)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

fn encode_value(encoder: &mut MetricEncoder, value: &Value) -> fmt::Result {
    match value {
        Value::Counter(v) => encoder.encode_counter::<NoLabelSet, _, u64>(v, None),
        Value::Gauge(v) => encoder.encode_gauge(v),
        Value::Histogram(h) => encoder.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None),
    }
}

/// Builds the scrape's registry: `counter`, `gauge` and `histogram` add a
/// metric (counters get `_total` appended by the encoder).
struct Builder(Registry);

impl Builder {
    fn add(&mut self, name: &str, help: &str, kind: MetricType, samples: Vec<(Labels, Value)>) {
        self.0.register(name, help, Samples { kind, samples });
    }

    fn counter(&mut self, name: &str, help: &str, v: &AtomicU64) {
        self.add(name, help, MetricType::Counter, vec![(Vec::new(), Value::Counter(v.load(Relaxed)))]);
    }

    fn gauge(&mut self, name: &str, help: &str, v: u64) {
        self.add(name, help, MetricType::Gauge, vec![(Vec::new(), Value::Gauge(gauge(v)))]);
    }

    fn histogram(&mut self, name: &str, help: &str, h: HistogramSnapshot) {
        self.add(name, help, MetricType::Histogram, vec![(Vec::new(), Value::Histogram(h))]);
    }
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn role_label(role: Role) -> &'static str {
    match role {
        Role::Follower => "follower",
        Role::PreCandidate => "pre_candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

const ROLES: [Role; 4] = [Role::Follower, Role::PreCandidate, Role::Candidate, Role::Leader];

/// The metrics text of this node now.
pub(super) async fn render(shared: &Shared) -> String {
    let mut b = Builder(Registry::default());
    groups(&mut b, shared).await;
    clients(&mut b, shared);
    storage(&mut b, shared);
    peers(&mut b, shared);
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &b.0) {
        tracing::warn!(error = %e, "encoding the metrics failed");
    }
    text
}

/// Per group: role, term, indexes, follower lag, leader changes, snapshots.
async fn groups(b: &mut Builder, shared: &Shared) {
    let mut role = Vec::new();
    let (mut term, mut commit, mut applied, mut last, mut snapshot) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut lag, mut leader_changes, mut taken, mut installed, mut failed, mut durations) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut apply, mut propose) = (Vec::new(), Vec::new());
    let mut quiescent = 0;
    for g in shared.node.groups() {
        let Some(handle) = shared.node.group(g) else { continue };
        let info = handle.info();
        quiescent += u64::from(info.quiescent);
        let group = || vec![("group", g.to_string())];
        for r in ROLES {
            let labels = vec![("group", g.to_string()), ("role", role_label(r).to_string())];
            role.push((labels, Value::Gauge(i64::from(info.role == r))));
        }
        term.push((group(), Value::Gauge(gauge(info.term))));
        commit.push((group(), Value::Gauge(gauge(info.commit))));
        applied.push((group(), Value::Gauge(gauge(info.applied))));
        last.push((group(), Value::Gauge(gauge(info.last_log_id.index))));
        snapshot.push((group(), Value::Gauge(gauge(info.snapshot.index))));
        let c = handle.counters();
        leader_changes.push((group(), Value::Counter(c.leader_changes.load(Relaxed))));
        taken.push((group(), Value::Counter(c.snapshots_taken.load(Relaxed))));
        installed.push((group(), Value::Counter(c.snapshots_installed.load(Relaxed))));
        failed.push((group(), Value::Counter(c.snapshot_failures.load(Relaxed))));
        durations.push((group(), Value::Histogram(c.snapshot_seconds.snapshot())));
        apply.push((group(), Value::Histogram(c.apply_seconds.snapshot())));
        propose.push((group(), Value::Histogram(c.propose_seconds.snapshot())));
        // Progress is known on the leader only.
        if info.role == Role::Leader {
            if let Some(status) = handle.status().await {
                for (follower, matched, _, _) in &status.progress {
                    let labels = vec![("group", g.to_string()), ("follower", follower.to_string())];
                    let behind = status.last_log_id.index.saturating_sub(*matched);
                    lag.push((labels, Value::Gauge(gauge(behind))));
                }
            }
        }
    }
    use MetricType::{Counter, Gauge, Histogram};
    // One number, not a series per group: it is for nodes with many groups.
    b.gauge("tarn_groups_quiescent", "Groups on this node that are quiescent (no timer runs)", quiescent);
    b.add("tarn_group_role", "1 for the group's role on this node, 0 for the others", Gauge, role);
    b.add("tarn_group_term", "Current Raft term", Gauge, term);
    b.add("tarn_group_commit_index", "Highest log index known committed", Gauge, commit);
    b.add("tarn_group_applied_index", "Highest log index applied to the state machine", Gauge, applied);
    b.add("tarn_group_last_index", "Index of the last log entry", Gauge, last);
    b.add("tarn_group_snapshot_index", "Index covered by the newest snapshot held", Gauge, snapshot);
    b.add(
        "tarn_group_follower_match_lag",
        "Entries a follower's acknowledged log is behind the leader's last index (leader only)",
        Gauge,
        lag,
    );
    b.add("tarn_group_leader_changes", "Leaders seen (a new node, or a new term)", Counter, leader_changes);
    b.add("tarn_group_snapshots_taken", "Snapshots this node took of its own state", Counter, taken);
    b.add("tarn_group_snapshots_installed", "Leader snapshots this node installed", Counter, installed);
    b.add("tarn_group_snapshot_failures", "Snapshots that failed (taken or installed)", Counter, failed);
    b.add(
        "tarn_group_snapshot_duration_seconds",
        "Time to write (taken) or decode (installed) a snapshot until durable and recorded",
        Histogram,
        durations,
    );
    b.add(
        "tarn_group_apply_duration_seconds",
        "Time to apply one batch of committed entries, answers included",
        Histogram,
        apply,
    );
    b.add(
        "tarn_group_propose_duration_seconds",
        "Time from a proposal reaching its group on this node to its answer (replicated, durable, applied)",
        Histogram,
        propose,
    );
}

/// Client requests, answers, connections and bytes.
fn clients(b: &mut Builder, shared: &Shared) {
    let c = &shared.counters;
    b.counter("tarn_client_requests", "Client requests read (every kind)", &c.requests);
    b.counter("tarn_client_writes", "Client write requests read", &c.writes);
    b.counter("tarn_client_reads", "Client read requests read", &c.reads);
    b.counter("tarn_client_proposals", "Raft entries proposed for client writes", &c.proposals);
    let errors = ServerError::KINDS
        .iter()
        .zip(&c.errors)
        .map(|(kind, n)| (vec![("kind", kind.to_string())], Value::Counter(n.load(Relaxed))))
        .collect();
    b.add("tarn_client_errors", "Error answers sent, by kind", MetricType::Counter, errors);
    b.counter(
        "tarn_client_bad_frames",
        "Client frames that did not decode (connection closed)",
        &c.bad_frames,
    );
    b.histogram(
        "tarn_write_duration_seconds",
        "From a write request read to its answer (proposal, commit, apply)",
        c.write_seconds.snapshot(),
    );
    b.histogram(
        "tarn_read_duration_seconds",
        "From a read request read to running it (with its ReadIndex or lease check)",
        c.read_seconds.snapshot(),
    );
    b.counter("tarn_client_connections", "Client connections accepted", &c.client_connections);
    b.gauge(
        "tarn_client_connections_open",
        "Client connections open",
        c.client_connections_open.load(Relaxed),
    );
    b.counter(
        "tarn_client_connections_refused",
        "Client connections closed at accept: max_connections reached",
        &c.client_connections_refused,
    );
    b.counter(
        "tarn_client_tls_refusals",
        "Client connections whose TLS handshake failed (plaintext client, wrong CA, no client certificate)",
        &c.client_tls_refusals,
    );
    b.counter(
        "tarn_client_auth_refusals",
        "Client authentications refused (unknown or revoked token)",
        &c.client_auth_refusals,
    );
    b.counter("tarn_client_received_bytes", "Bytes read from client connections", &c.client_bytes_received);
    b.counter("tarn_client_sent_bytes", "Bytes written to client connections", &c.client_bytes_sent);
    b.gauge(
        "tarn_client_queued_replies",
        "Answers queued for clients",
        c.client_queued_replies.load(Relaxed),
    );
    b.counter(
        "tarn_client_backpressure",
        "Times a connection stopped reading: its answer queue was full",
        &c.client_backpressure,
    );
    b.counter(
        "tarn_client_slow_disconnects",
        "Connections closed: their client did not read its answers",
        &c.client_slow_disconnects,
    );
    b.counter("tarn_client_idle_disconnects", "Connections closed as idle", &c.client_idle_disconnects);
    b.counter(
        "tarn_client_large_request_waits",
        "Times a connection waited for room in the large-request budget",
        &c.client_large_request_waits,
    );
    b.gauge(
        "tarn_client_large_request_bytes",
        "Bytes of large requests buffered",
        c.client_large_request_bytes.load(Relaxed),
    );
}

/// The storage worker: flushes, syncs and their durations, batch sizes.
fn storage(b: &mut Builder, shared: &Shared) {
    let s = shared.node.storage_counters();
    b.counter("tarn_storage_flushes", "Storage flush rounds (all groups)", &s.flushes);
    b.counter("tarn_storage_syncs", "fdatasync rounds", &s.syncs);
    b.counter("tarn_storage_entries_written", "Log entries appended", &s.entries_written);
    b.histogram(
        "tarn_storage_fsync_duration_seconds",
        "One durable round: a flush's writes and fdatasync (sync mode) or a background fdatasync (async mode)",
        s.sync_seconds.snapshot(),
    );
    b.histogram(
        "tarn_storage_flush_entries",
        "Log entries appended per storage flush",
        s.flush_entries.snapshot(),
    );
    // The process's descriptor pool (shared by every node in it).
    let pool = tarn_io::vfs::PooledVfs::shared().stats();
    b.gauge(
        "tarn_storage_open_files",
        "Log and hard-state files open now (pooled descriptors)",
        pool.open as u64,
    );
    b.gauge("tarn_storage_open_files_limit", "The descriptor pool's target", pool.limit as u64);
    b.counter(
        "tarn_storage_file_reopens",
        "Descriptors reopened for files the pool had closed (idle groups waking)",
        &AtomicU64::new(pool.reopens),
    );
    b.counter(
        "tarn_storage_file_evictions",
        "Idle, synced descriptors closed to stay under the pool's target",
        &AtomicU64::new(pool.evictions),
    );
}

/// The peer transport: connection states and message counts.
fn peers(b: &mut Builder, shared: &Shared) {
    let dropped = AtomicU64::new(shared.node.dropped_inbound());
    b.counter(
        "tarn_peer_inbound_dropped",
        "Peer messages dropped on arrival: unknown group or full queue",
        &dropped,
    );
    let (Some(transport), Some(stats)) = (shared.node.transport(), shared.node.transport_stats()) else {
        return;
    };
    let connected = transport
        .peers()
        .into_keys()
        .map(|peer| {
            let up = transport.is_connected(peer).unwrap_or(false);
            (vec![("peer", peer.to_string())], Value::Gauge(i64::from(up)))
        })
        .collect();
    b.add("tarn_peer_connected", "1 while the connection to a peer is up", MetricType::Gauge, connected);
    let t = stats.snapshot();
    let n = AtomicU64::new;
    b.counter("tarn_peer_messages_sent", "Peer messages sent", &n(t.messages_sent));
    b.counter("tarn_peer_messages_received", "Peer messages received", &n(t.messages_received));
    b.counter(
        "tarn_peer_messages_dropped",
        "Peer messages dropped: queue full, peer unknown or unreachable",
        &n(t.messages_dropped),
    );
    b.counter("tarn_peer_sent_bytes", "Bytes written to peers", &n(t.bytes_sent));
    b.counter("tarn_peer_flushes", "Peer connection write flushes", &n(t.flushes));
    b.counter("tarn_peer_connects", "Peer connections established", &n(t.connects));
    b.counter("tarn_peer_pings_sent", "Node-level liveness pings written", &n(t.pings_sent));
    b.counter(
        "tarn_peer_heartbeat_batches",
        "Frames that carried the heartbeats of several groups to a peer at once (coalesced heartbeats)",
        &n(t.heartbeat_batches),
    );
    b.counter(
        "tarn_peer_heartbeat_batched_messages",
        "Heartbeat-class messages those frames carried (per batch: how well heartbeats coalesce)",
        &n(t.heartbeat_batched_messages),
    );
    b.counter(
        "tarn_peer_suspicions",
        "Times a peer became suspected down (node-level liveness; wakes quiet groups it leads)",
        &n(t.peer_suspicions),
    );
    b.gauge(
        "tarn_peer_liveness_lag_ms",
        "How late this node's own liveness checks run (decaying): added to the suspicion timeout",
        t.own_lag_ms,
    );
    b.counter("tarn_peer_connect_failures", "Failed peer dials", &n(t.connect_failures));
    b.counter(
        "tarn_peer_bad_connections",
        "Inbound peer connections closed: bad frame or handshake",
        &n(t.bad_connections),
    );
    b.gauge("tarn_peer_connections_open", "Peer connections open", t.connections_open);
    b.gauge(
        "tarn_peer_handshakes_pending",
        "Inbound connections waiting for their Hello",
        t.handshakes_pending,
    );
    b.counter(
        "tarn_peer_handshakes_evicted",
        "Inbound connections closed before their Hello by newer ones",
        &n(t.handshakes_evicted),
    );
    b.counter(
        "tarn_peer_idle_disconnects",
        "Peer connections closed as idle or stalled",
        &n(t.idle_disconnects),
    );
    b.counter(
        "tarn_peer_security_refusals",
        "Peer connections refused by TLS (wrong CA, expired certificate, certificate of another node)",
        &n(t.security_refusals),
    );
}
