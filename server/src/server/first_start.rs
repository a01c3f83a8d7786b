//! The first start of a `--cluster` node: may an empty data directory vote?
//!
//! A node whose data directory was wiped, restarted with its original
//! `--cluster` command, has forgotten the votes it gave; voting again could
//! elect two leaders in one term. An empty directory looks the same whether
//! the cluster is new or the node lost its disk, so a `--cluster` node whose
//! directory has no identity file yet asks every peer before any of its
//! groups starts (`tarn_io::transport::probe`, whose documentation has the
//! safety argument), and records the answer before acting on it:
//!
//! - new cluster (every peer still fresh) or a late first start (a peer saw
//!   this very directory fresh): the node starts as a voter;
//! - the cluster has a history without this directory: the node lost its
//!   data. It starts like `--join` would, with the core's
//!   `rejoin_after_data_loss`, and votes again only once a committed
//!   configuration lists it as a non-voter (`tarn member remove N`, then
//!   `tarn member add N ADDR --learner`, then promote it).
//!
//! Chosen over etcd's `--initial-cluster-state new|existing` because the
//! operator's original command stays correct on every start: nothing to
//! remember to change after the first one, and no flag whose wrong value
//! re-opens the double vote. The price: a new cluster elects its first
//! leader only once every node of `--cluster` has started (a node that is
//! never started must be taken out of `--cluster` on the others first).
//!
//! Files, written atomically in this order so a crash never leaves a state
//! that claims more than was decided:
//! - [`INCARNATION_FILE`]: a random id for this empty directory, written
//!   before it answers any probe;
//! - [`REJOIN_REQUIRED_FILE`] (data lost) or [`BORN_WITH_FILE`] (new
//!   cluster: the incarnations of the peers seen fresh);
//! - the identity file last: its presence means "decided".

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use tarn_core::NodeId;
use tarn_io::transport::probe::{probe, Prober};
use tarn_io::wire::ProbeAnswer;

use super::{write_atomic, ServerConfig, StartError};

/// A random id of this data directory, chosen when it was found empty.
pub(super) const INCARNATION_FILE: &str = "tarn-incarnation";
/// `node=incarnation` lines: every node's incarnation at the cluster's
/// birth (this node answers their late probes with "I knew you").
pub(super) const BORN_WITH_FILE: &str = "tarn-born-with";
/// Present: this directory was found empty in a cluster with a history, so
/// every start is a rejoin until `tarn-rejoined` appears.
pub(super) const REJOIN_REQUIRED_FILE: &str = "tarn-rejoin-required";

/// One probe's bound, and the pause between rounds.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const ROUND_PAUSE: Duration = Duration::from_millis(200);
/// How often the log says who is still awaited.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(5);

/// What the first start decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decision {
    /// Every peer was fresh: a new cluster, born with these incarnations
    /// (this node's included).
    New(BTreeMap<NodeId, u64>),
    /// A peer knows this directory from the cluster's birth, which it
    /// recorded as `born_with`.
    LateStart { peer: NodeId, born_with: BTreeMap<NodeId, u64> },
    /// A peer has a history this directory was not part of.
    DataLost { peer: NodeId },
}

impl Decision {
    /// The groups start with `rejoin_after_data_loss`.
    pub(super) fn rejoin(&self) -> bool {
        matches!(self, Decision::DataLost { .. })
    }

    /// Every node's incarnation at the cluster's birth, as far as known.
    pub(super) fn born_with(&self) -> BTreeMap<NodeId, u64> {
        match self {
            Decision::New(born) | Decision::LateStart { born_with: born, .. } => born.clone(),
            Decision::DataLost { .. } => BTreeMap::new(),
        }
    }
}

/// This directory's incarnation: read, or chosen and made durable.
pub(super) fn incarnation(config: &ServerConfig) -> Result<u64, StartError> {
    let dir = &config.data_dir;
    let err = |reason: String| StartError::DataDir { dir: dir.clone(), reason };
    match std::fs::read_to_string(dir.join(INCARNATION_FILE)) {
        Ok(text) => text.trim().parse().map_err(|_| {
            err(format!(
                "{INCARNATION_FILE} holds {text:?}, not a number; the directory is damaged: move it aside and start again"
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let chosen = random_u64();
            write_atomic(dir, INCARNATION_FILE, format!("{chosen}\n").as_bytes())
                .map_err(|e| err(format!("cannot write {INCARNATION_FILE}: {e}")))?;
            Ok(chosen)
        }
        Err(e) => Err(err(format!("cannot read {INCARNATION_FILE}: {e}"))),
    }
}

/// Every node's incarnation at the cluster's birth (empty for a directory
/// that lost its data, or older than this file).
pub(super) fn born_with(config: &ServerConfig) -> Result<BTreeMap<NodeId, u64>, StartError> {
    let dir = &config.data_dir;
    let err = |reason: String| StartError::DataDir { dir: dir.clone(), reason };
    let text = match std::fs::read_to_string(dir.join(BORN_WITH_FILE)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(err(format!("cannot read {BORN_WITH_FILE}: {e}"))),
    };
    let mut born = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parsed =
            line.split_once('=').and_then(|(n, i)| Some((n.trim().parse().ok()?, i.trim().parse().ok()?)));
        let (node, inc) = parsed
            .ok_or_else(|| err(format!("{BORN_WITH_FILE}: expected `node=incarnation`, got {line:?}")))?;
        born.insert(node, inc);
    }
    Ok(born)
}

/// Whether this directory must rejoin (it was found empty in a cluster with
/// a history).
pub(super) fn rejoin_required(config: &ServerConfig) -> bool {
    !config.in_memory && config.data_dir.join(REJOIN_REQUIRED_FILE).exists()
}

/// Makes `decision` durable, before the identity file that marks the
/// directory as decided (written by the caller afterwards).
pub(super) fn record(config: &ServerConfig, decision: &Decision) -> std::io::Result<()> {
    let dir = &config.data_dir;
    match decision {
        Decision::New(born) | Decision::LateStart { born_with: born, .. } => {
            let text: String = born.iter().map(|(n, i)| format!("{n}={i}\n")).collect();
            write_atomic(dir, BORN_WITH_FILE, text.as_bytes())
        }
        Decision::DataLost { peer } => write_atomic(
            dir,
            REJOIN_REQUIRED_FILE,
            format!("found empty; node {peer} has a history\n").as_bytes(),
        ),
    }
}

/// Probes every peer of `--cluster` until the answers decide (see the
/// module documentation). Never gives up: a new cluster waits for all its
/// nodes, and `waiting` always names the ones not heard from.
pub(super) async fn decide(
    config: &ServerConfig,
    incarnation: u64,
    waiting: &std::sync::Mutex<Option<String>>,
) -> Decision {
    let me = config.node_id;
    let prober = Prober {
        cluster_id: config.effective_cluster_id(),
        node_id: me,
        incarnation,
        security: config.security.peer.clone(),
    };
    let peers: BTreeMap<NodeId, std::net::SocketAddr> =
        config.cluster.iter().filter(|(id, _)| **id != me).map(|(i, a)| (*i, *a)).collect();
    // Fresh answers of the last complete round: "new" needs two complete
    // rounds in a row, every peer fresh in both with the same incarnation.
    // Answers gathered over time could mix a peer that has since decided
    // (and may have counted a vote) with a successor of a directory wiped
    // meanwhile; a second round after the first one ended sees every peer
    // still undecided after all of the first round's answers.
    let mut previous: Option<BTreeMap<NodeId, u64>> = None;
    let mut last_error: BTreeMap<NodeId, String> = BTreeMap::new();
    let started = Instant::now();
    let mut next_log = started + WAITING_LOG_EVERY;
    loop {
        let answers =
            futures_join(peers.iter().map(|(id, addr)| probe(prober.clone(), *id, *addr, PROBE_TIMEOUT)))
                .await;
        let mut fresh: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut unknown_to: Option<NodeId> = None;
        for (id, answer) in peers.keys().zip(answers) {
            match answer {
                Ok(ProbeAnswer::Fresh { incarnation }) => {
                    fresh.insert(*id, incarnation);
                }
                Ok(ProbeAnswer::Member { knew_you: true, born_with }) => {
                    let born_with = born_with.into_iter().collect();
                    return Decision::LateStart { peer: *id, born_with };
                }
                // Wait for this round's other answers: one of them may know
                // this directory (a peer that recorded no birth knows none).
                Ok(ProbeAnswer::Member { knew_you: false, .. }) => unknown_to = Some(*id),
                Err(e) => {
                    last_error.insert(*id, e.to_string());
                }
            }
        }
        if let Some(peer) = unknown_to {
            return Decision::DataLost { peer };
        }
        if fresh.len() == peers.len() {
            if previous.as_ref() == Some(&fresh) {
                fresh.insert(me, incarnation);
                return Decision::New(fresh);
            }
            previous = Some(fresh);
            continue;
        }
        previous = None;
        let missing: BTreeSet<NodeId> = peers.keys().filter(|id| !fresh.contains_key(id)).copied().collect();
        let note = format!(
            "first start: waiting for nodes {missing:?} to answer before this empty data directory may vote (every node of --cluster must start once)"
        );
        if Instant::now() >= next_log {
            next_log = Instant::now() + WAITING_LOG_EVERY;
            let problems: Vec<String> = missing
                .iter()
                .filter_map(|id| last_error.get(id).map(|e| format!("node {id}: {e}")))
                .collect();
            tracing::warn!(node = me, waited_s = started.elapsed().as_secs(), ?problems, "{note}");
        }
        *waiting.lock().unwrap_or_else(|e| e.into_inner()) = Some(note);
        tokio::time::sleep(ROUND_PAUSE).await;
    }
}

/// Awaits every future concurrently (a handful of probes: no dependency
/// on a futures crate for this).
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            // A probe only panics on a bug; the round cannot go on without
            // its answer's slot, so let the panic through.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out
}

/// 64 random bits from the standard library's OS-seeded hasher keys, mixed
/// with the time and the process id (no rand dependency for one number).
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path) -> ServerConfig {
        let cluster = [(1, "127.0.0.1:1".parse().unwrap()), (2, "127.0.0.1:2".parse().unwrap())].into();
        ServerConfig::cluster(1, dir, "127.0.0.1:0".parse().unwrap(), cluster)
    }

    #[test]
    fn an_incarnation_is_chosen_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let first = incarnation(&c).unwrap();
        assert_eq!(incarnation(&c).unwrap(), first);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(incarnation(&config(other.path())).unwrap(), first, "two directories, two incarnations");
    }

    #[test]
    fn a_recorded_birth_reads_back_and_a_loss_requires_rejoining() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        assert!(born_with(&c).unwrap().is_empty());
        record(&c, &Decision::New([(1, 5), (2, 99), (3, 7)].into())).unwrap();
        assert_eq!(born_with(&c).unwrap(), [(1, 5), (2, 99), (3, 7)].into());
        assert!(!rejoin_required(&c));
        record(&c, &Decision::DataLost { peer: 2 }).unwrap();
        assert!(rejoin_required(&c));
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        std::fs::write(dir.path().join(BORN_WITH_FILE), "2=x\n").unwrap();
        assert!(born_with(&c).unwrap_err().to_string().contains(BORN_WITH_FILE));
        std::fs::write(dir.path().join(INCARNATION_FILE), "nope").unwrap();
        assert!(incarnation(&c).unwrap_err().to_string().contains(INCARNATION_FILE));
    }
}
