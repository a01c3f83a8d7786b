//! `tarn top` (part of the binary, not the library): a view of the cluster
//! refreshed every interval, built from the same per-node status that
//! `tarn status` prints. Each frame merges the nodes' views into one row per
//! group (leader, term, commit index and its rate, the slowest member's
//! applied index, the leader's worst follower lag, unreachable followers) and
//! one row per endpoint (up or down, groups hosted and led, request rate).
//! Rates are differences between two consecutive samples, so the first
//! frame has none.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Instant;

use tarn_core::{GroupId, NodeId};
use tarn_server::protocol::NodeStatus;

/// The role string a leader reports in its status.
const ROLE_LEADER: &str = "Leader";
/// The counter of client requests a node reports in its status.
const COUNTER_REQUESTS: &str = "requests";

/// Every endpoint's answer at one moment.
pub(crate) struct Sample {
    pub(crate) at: Instant,
    /// In endpoint order: the node's status, or why it did not answer.
    pub(crate) nodes: Vec<(SocketAddr, Result<NodeStatus, String>)>,
}

/// One refresh of the view, as `--json` prints it (one object per line).
#[derive(Debug, serde::Serialize)]
pub(crate) struct Frame {
    pub(crate) nodes: Vec<NodeRow>,
    /// The busiest groups first (by commit rate, then id), at most `rows`.
    pub(crate) groups: Vec<GroupRow>,
    /// Groups seen on any node; more than `groups.len()` when cut to `rows`.
    pub(crate) groups_total: usize,
}

#[derive(Debug, serde::Serialize)]
pub(crate) struct NodeRow {
    pub(crate) endpoint: String,
    /// `None` while the endpoint does not answer.
    pub(crate) node: Option<NodeId>,
    pub(crate) up: bool,
    pub(crate) error: Option<String>,
    pub(crate) groups: usize,
    pub(crate) leading: usize,
    /// Client requests per second since the previous sample.
    pub(crate) requests_per_s: Option<f64>,
}

#[derive(Debug, serde::Serialize)]
pub(crate) struct GroupRow {
    pub(crate) group: GroupId,
    /// The leader as seen by the node with the highest term that knows one.
    pub(crate) leader: Option<NodeId>,
    pub(crate) term: u64,
    /// The highest commit index any node reports.
    pub(crate) commit: u64,
    /// Entries committed per second since the previous sample.
    pub(crate) commits_per_s: Option<f64>,
    /// The lowest applied index among the nodes that answered.
    pub(crate) applied_min: u64,
    /// The leader's largest lag, in entries, of a connected follower.
    pub(crate) max_lag: Option<u64>,
    /// Followers the leader has no connection to.
    pub(crate) unreachable: Vec<NodeId>,
}

/// What the nodes say about one group, merged.
#[derive(Default)]
struct GroupView {
    term: u64,
    leader: Option<NodeId>,
    commit: u64,
    applied_min: Option<u64>,
    max_lag: Option<u64>,
    unreachable: Vec<NodeId>,
}

fn merge_groups(sample: &Sample) -> BTreeMap<GroupId, GroupView> {
    let mut groups: BTreeMap<GroupId, GroupView> = BTreeMap::new();
    for status in sample.nodes.iter().filter_map(|(_, s)| s.as_ref().ok()) {
        for g in &status.groups {
            let view = groups.entry(g.group).or_default();
            if g.leader.is_some() && (view.leader.is_none() || g.term > view.term) {
                view.leader = g.leader;
            }
            view.term = view.term.max(g.term);
            view.commit = view.commit.max(g.commit);
            view.applied_min = Some(view.applied_min.map_or(g.applied, |a| a.min(g.applied)));
            if g.role == ROLE_LEADER && g.leader == Some(status.node_id) && g.term >= view.term {
                view.max_lag = g.followers.iter().filter(|f| f.3).map(|f| f.2).max();
                view.unreachable = g.followers.iter().filter(|f| !f.3).map(|f| f.0).collect();
            }
        }
    }
    groups
}

fn per_second(now: u64, before: u64, seconds: f64) -> Option<f64> {
    (seconds > 0.0).then(|| now.saturating_sub(before) as f64 / seconds)
}

fn requests(status: &NodeStatus) -> Option<u64> {
    status.counters.iter().find(|(name, _)| name == COUNTER_REQUESTS).map(|&(_, v)| v)
}

/// The view of `now`, with rates against `before` (the previous sample).
pub(crate) fn frame(before: Option<&Sample>, now: &Sample, rows: usize) -> Frame {
    let seconds = before.map_or(0.0, |b| now.at.saturating_duration_since(b.at).as_secs_f64());
    let groups_before = before.map(merge_groups).unwrap_or_default();
    let nodes = now
        .nodes
        .iter()
        .map(|(endpoint, answer)| match answer {
            Ok(s) => {
                let requests_before = before
                    .and_then(|b| b.nodes.iter().find(|(e, _)| e == endpoint))
                    .and_then(|(_, a)| a.as_ref().ok())
                    .filter(|b| b.node_id == s.node_id)
                    .and_then(requests);
                NodeRow {
                    endpoint: endpoint.to_string(),
                    node: Some(s.node_id),
                    up: true,
                    error: None,
                    groups: s.groups.len(),
                    leading: s
                        .groups
                        .iter()
                        .filter(|g| g.role == ROLE_LEADER && g.leader == Some(s.node_id))
                        .count(),
                    requests_per_s: requests(s)
                        .zip(requests_before)
                        .and_then(|(now, before)| per_second(now, before, seconds)),
                }
            }
            Err(e) => NodeRow {
                endpoint: endpoint.to_string(),
                node: None,
                up: false,
                error: Some(e.clone()),
                groups: 0,
                leading: 0,
                requests_per_s: None,
            },
        })
        .collect();
    let mut groups: Vec<GroupRow> = merge_groups(now)
        .into_iter()
        .map(|(group, v)| GroupRow {
            group,
            leader: v.leader,
            term: v.term,
            commit: v.commit,
            commits_per_s: groups_before.get(&group).and_then(|b| per_second(v.commit, b.commit, seconds)),
            applied_min: v.applied_min.unwrap_or(0),
            max_lag: v.max_lag,
            unreachable: v.unreachable,
        })
        .collect();
    let groups_total = groups.len();
    // Busiest first; `total_cmp` orders every f64, and ties go by group id.
    groups.sort_by(|a, b| {
        let rate = |g: &GroupRow| g.commits_per_s.unwrap_or(0.0);
        rate(b).total_cmp(&rate(a)).then(a.group.cmp(&b.group))
    });
    groups.truncate(rows);
    Frame { nodes, groups, groups_total }
}

fn rate(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"))
}

/// The frame as text: a line of totals, a table of groups, a table of nodes.
pub(crate) fn render(frame: &Frame, interval_ms: u64) -> String {
    let mut out = String::new();
    let up = frame.nodes.iter().filter(|n| n.up).count();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "tarn top: {up} of {} endpoints up, {} group{} (every {interval_ms} ms; rates need two samples)",
        frame.nodes.len(),
        frame.groups_total,
        if frame.groups_total == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        out,
        "{:>6} {:>6} {:>6} {:>10} {:>10} {:>12} {:>8}  UNREACHABLE",
        "GROUP", "LEADER", "TERM", "COMMIT", "COMMITS/S", "APPLIED MIN", "MAX LAG"
    );
    for g in &frame.groups {
        let unreachable: Vec<String> = g.unreachable.iter().map(|id| id.to_string()).collect();
        let _ = writeln!(
            out,
            "{:>6} {:>6} {:>6} {:>10} {:>10} {:>12} {:>8}  {}",
            g.group,
            g.leader.map_or("none".to_owned(), |l| l.to_string()),
            g.term,
            g.commit,
            rate(g.commits_per_s),
            g.applied_min,
            g.max_lag.map_or("-".to_owned(), |l| l.to_string()),
            unreachable.join(",")
        );
    }
    if frame.groups_total > frame.groups.len() {
        let _ = writeln!(out, "  ... and {} quieter groups", frame.groups_total - frame.groups.len());
    }
    let _ = writeln!(
        out,
        "{:>6} {:<22} {:>6} {:>7} {:>10}",
        "NODE", "ENDPOINT", "GROUPS", "LEADING", "REQUESTS/S"
    );
    for n in &frame.nodes {
        match &n.error {
            None => {
                let _ = writeln!(
                    out,
                    "{:>6} {:<22} {:>6} {:>7} {:>10}",
                    n.node.map_or("?".to_owned(), |id| id.to_string()),
                    n.endpoint,
                    n.groups,
                    n.leading,
                    rate(n.requests_per_s)
                );
            }
            Some(e) => {
                let _ = writeln!(out, "{:>6} {:<22} DOWN ({e})", "-", n.endpoint);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tarn_core::LogId;
    use tarn_server::protocol::GroupStatus;

    fn group(group: GroupId, role: &str, leader: NodeId, commit: u64, applied: u64) -> GroupStatus {
        GroupStatus {
            group,
            role: role.into(),
            term: 2,
            leader: Some(leader),
            commit,
            applied,
            last_log_id: LogId { term: 2, index: commit },
            voters: vec![1, 2, 3],
            learners: vec![],
            followers: vec![],
            rejoining: false,
            error: None,
        }
    }

    fn node(id: NodeId, groups: Vec<GroupStatus>, requests: u64) -> NodeStatus {
        NodeStatus {
            node_id: id,
            cluster_id: 7,
            peers: vec![],
            groups,
            counters: vec![(COUNTER_REQUESTS.into(), requests)],
            first_start: None,
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_frame_merges_the_nodes_views_and_rates_need_two_samples() {
        let start = Instant::now();
        let mut leader_view = group(1, ROLE_LEADER, 1, 100, 100);
        leader_view.followers = vec![(2, 90, 10, true), (3, 40, 60, false)];
        let first = Sample {
            at: start,
            nodes: vec![
                (addr(1), Ok(node(1, vec![leader_view.clone()], 1_000))),
                (addr(2), Ok(node(2, vec![group(1, "Follower", 1, 95, 90)], 10))),
                (addr(3), Err("connection refused".into())),
            ],
        };
        let f = frame(None, &first, 10);
        assert_eq!(f.groups.len(), 1);
        let g = &f.groups[0];
        assert_eq!((g.leader, g.term, g.commit, g.applied_min), (Some(1), 2, 100, 90));
        assert_eq!(
            (g.max_lag, g.unreachable.clone()),
            (Some(10), vec![3]),
            "lag of connected followers only"
        );
        assert_eq!(g.commits_per_s, None, "no rate from one sample");
        assert_eq!((f.nodes[0].leading, f.nodes[1].leading, f.nodes[2].up), (1, 0, false));

        leader_view.commit = 300;
        let second = Sample {
            at: start + Duration::from_secs(2),
            nodes: vec![
                (addr(1), Ok(node(1, vec![leader_view], 1_500))),
                (addr(2), Ok(node(2, vec![group(1, "Follower", 1, 300, 300)], 10))),
                (addr(3), Err("connection refused".into())),
            ],
        };
        let f = frame(Some(&first), &second, 10);
        assert_eq!(f.groups[0].commits_per_s, Some(100.0));
        assert_eq!(f.nodes[0].requests_per_s, Some(250.0));
        let text = render(&f, 1_000);
        assert!(text.contains("2 of 3 endpoints up, 1 group (every"), "{text}");
        assert!(text.contains("DOWN (connection refused)"), "{text}");
    }

    #[test]
    fn many_groups_are_cut_to_the_busiest() {
        let at = Instant::now();
        let sample = |commits: [u64; 3], at| Sample {
            at,
            nodes: vec![(
                addr(1),
                Ok(node(
                    1,
                    (1..=3).map(|g| group(g, ROLE_LEADER, 1, commits[g as usize - 1], 0)).collect(),
                    0,
                )),
            )],
        };
        let before = sample([10, 10, 10], at);
        let now = sample([11, 50, 10], at + Duration::from_secs(1));
        let f = frame(Some(&before), &now, 2);
        let order: Vec<GroupId> = f.groups.iter().map(|g| g.group).collect();
        assert_eq!((order, f.groups_total), (vec![2, 1], 3));
        assert!(render(&f, 1_000).contains("and 1 quieter groups"));
    }
}
