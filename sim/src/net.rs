//! The virtual network: per-link loss, delay with a long tail (and so
//! reordering), duplication, bounded queues, clogging, partitions (symmetric,
//! one-way, an isolated node) and flapping links.
//!
//! The network only decides *whether* and *when* a message arrives; the world
//! owns the messages and schedules their delivery. Nodes are numbered by
//! index `0..nodes`; a set of nodes is a bitmask (`NodeSet`).

use tarn_core::Nanos;

use crate::rng::SimRng;

/// A set of node indices as a bitmask; the simulator runs at most 7 nodes.
pub type NodeSet = u64;

pub const NODES_MAX: usize = 7;

/// Per-run network parameters (drawn by the swarm profile).
#[derive(Clone, Debug)]
pub struct NetConfig {
    pub latency_min_ns: Nanos,
    pub latency_max_ns: Nanos,
    /// Probability that a message takes the long tail instead.
    pub tail_ppm: u32,
    pub tail_max_ns: Nanos,
    pub drop_ppm: u32,
    pub duplicate_ppm: u32,
    /// A link holds at most this many messages in flight; more are dropped
    /// (a full socket buffer / switch queue).
    pub link_queue_max_msgs: u32,
}

impl NetConfig {
    /// A well-behaved LAN: no loss, small jitter.
    pub fn calm() -> Self {
        NetConfig {
            latency_min_ns: 200_000,
            latency_max_ns: 1_000_000,
            tail_ppm: 0,
            tail_max_ns: 1_000_000,
            drop_ppm: 0,
            duplicate_ppm: 0,
            link_queue_max_msgs: 4096,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Link {
    in_flight_msgs: u32,
    /// Partitioned: nothing from `from` reaches `to`.
    blocked: bool,
    /// Until then the link delivers nothing; at that instant, everything.
    clogged_until: Nanos,
    /// A flapping link is down for alternate periods of this length.
    flap_period_ns: Nanos,
}

/// Why the network dropped a message (kept for the trace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    Loss,
    Partition,
    QueueFull,
    Flapping,
}

/// What happens to one sent message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    Dropped(DropReason),
    /// Deliver at `at`; a duplicate also arrives at `duplicate_at`.
    Deliver {
        at: Nanos,
        duplicate_at: Option<Nanos>,
    },
}

pub struct Network {
    nodes: usize,
    config: NetConfig,
    links: Vec<Link>,
    rng: SimRng,
    pub stats: NetStats,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct NetStats {
    pub sent: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub delivered: u64,
}

impl Network {
    pub fn new(nodes: usize, config: NetConfig, rng: SimRng) -> Self {
        assert!((1..=NODES_MAX).contains(&nodes), "network of {nodes} nodes: want 1..={NODES_MAX}");
        assert!(config.latency_min_ns <= config.latency_max_ns);
        assert!(config.link_queue_max_msgs > 0);
        Network {
            nodes,
            config,
            links: vec![Link::default(); nodes * nodes],
            rng,
            stats: NetStats::default(),
        }
    }

    pub fn nodes(&self) -> usize {
        self.nodes
    }

    fn link(&mut self, from: usize, to: usize) -> &mut Link {
        debug_assert!(from < self.nodes && to < self.nodes);
        &mut self.links[from * self.nodes + to]
    }

    fn is_flapping_down(link: &Link, now: Nanos) -> bool {
        link.flap_period_ns > 0 && (now / link.flap_period_ns) % 2 == 1
    }

    fn latency(&mut self) -> Nanos {
        let c = &self.config;
        let (lo, hi, tail_ppm, tail_max) = (c.latency_min_ns, c.latency_max_ns, c.tail_ppm, c.tail_max_ns);
        if self.rng.chance(tail_ppm) {
            // Long tail: log-uniform-ish between the normal max and tail max,
            // so most tail messages are a bit late and a few very late.
            let top = tail_max.max(hi);
            let span = self.rng.between(hi, top);
            self.rng.between(hi, span)
        } else {
            self.rng.between(lo, hi)
        }
    }

    /// Decides the fate of one message sent at `now`.
    pub fn send(&mut self, now: Nanos, from: usize, to: usize) -> SendOutcome {
        self.stats.sent += 1;
        let link = *self.link(from, to);
        let reason = if link.blocked {
            Some(DropReason::Partition)
        } else if Self::is_flapping_down(&link, now) {
            Some(DropReason::Flapping)
        } else if link.in_flight_msgs >= self.config.link_queue_max_msgs {
            Some(DropReason::QueueFull)
        } else if self.rng.chance(self.config.drop_ppm) {
            Some(DropReason::Loss)
        } else {
            None
        };
        if let Some(reason) = reason {
            self.stats.dropped += 1;
            return SendOutcome::Dropped(reason);
        }
        let at = (now + self.latency()).max(link.clogged_until);
        let duplicate_at = if self.rng.chance(self.config.duplicate_ppm)
            && link.in_flight_msgs + 1 < self.config.link_queue_max_msgs
        {
            self.stats.duplicated += 1;
            Some((now + self.latency()).max(link.clogged_until))
        } else {
            None
        };
        self.link(from, to).in_flight_msgs += 1 + u32::from(duplicate_at.is_some());
        SendOutcome::Deliver { at, duplicate_at }
    }

    /// A node-level liveness ping (quiescence runs): a few bytes on the same
    /// connection, so partitions, flapping, loss, latency and clogs apply,
    /// but it takes no slot of the link's message queue (a real ping does
    /// not displace Raft messages). `None`: lost.
    pub fn send_ping(&mut self, now: Nanos, from: usize, to: usize) -> Option<Nanos> {
        let link = *self.link(from, to);
        if link.blocked || Self::is_flapping_down(&link, now) || self.rng.chance(self.config.drop_ppm) {
            return None;
        }
        Some((now + self.latency()).max(link.clogged_until))
    }

    /// A ping reaches the end of its link at `now`: false if the link is cut.
    pub fn ping_arrives(&self, now: Nanos, from: usize, to: usize) -> bool {
        let link = &self.links[from * self.nodes + to];
        !(link.blocked || Self::is_flapping_down(link, now))
    }

    /// A scheduled message reaches the end of its link at `now`; false if a
    /// partition that started meanwhile swallows it.
    pub fn arrive(&mut self, now: Nanos, from: usize, to: usize) -> bool {
        let link = self.link(from, to);
        debug_assert!(link.in_flight_msgs > 0, "arrival on an empty link {from}->{to}");
        link.in_flight_msgs = link.in_flight_msgs.saturating_sub(1);
        let link = *link;
        if link.blocked || Self::is_flapping_down(&link, now) {
            self.stats.dropped += 1;
            false
        } else {
            self.stats.delivered += 1;
            true
        }
    }

    /// Blocks every link from a node in `from` to a node in `to`.
    pub fn block(&mut self, from: NodeSet, to: NodeSet) {
        for f in 0..self.nodes {
            for t in 0..self.nodes {
                if f != t && from & (1 << f) != 0 && to & (1 << t) != 0 {
                    self.link(f, t).blocked = true;
                }
            }
        }
    }

    /// A symmetric partition between `side` and everybody else.
    pub fn partition(&mut self, side: NodeSet) {
        let rest = self.all() & !side;
        self.block(side, rest);
        self.block(rest, side);
    }

    /// Cuts one node off from everybody, both ways.
    pub fn isolate(&mut self, node: usize) {
        self.partition(1 << node);
    }

    /// The link `from -> to` delivers nothing until `until`, then everything.
    pub fn clog(&mut self, from: usize, to: usize, until: Nanos) {
        let link = self.link(from, to);
        link.clogged_until = link.clogged_until.max(until);
    }

    /// The link `from -> to` goes down and up every `period_ns`.
    pub fn flap(&mut self, from: usize, to: usize, period_ns: Nanos) {
        assert!(period_ns > 0);
        self.link(from, to).flap_period_ns = period_ns;
    }

    /// Removes partitions and flapping (clogs drain on their own).
    pub fn heal(&mut self) {
        for link in &mut self.links {
            link.blocked = false;
            link.flap_period_ns = 0;
        }
    }

    pub fn all(&self) -> NodeSet {
        (1u64 << self.nodes) - 1
    }

    /// True if any link is currently partitioned, flapping or clogged.
    pub fn is_faulty(&self, now: Nanos) -> bool {
        self.links.iter().any(|l| l.blocked || l.flap_period_ns > 0 || l.clogged_until > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Stream, PPM};

    fn net(config: NetConfig) -> Network {
        Network::new(3, config, SimRng::new(1, Stream::Network))
    }

    #[test]
    fn calm_network_delivers_within_latency_bounds() {
        let mut n = net(NetConfig::calm());
        for i in 0..100 {
            match n.send(i, 0, 1) {
                SendOutcome::Deliver { at, duplicate_at: None } => {
                    assert!(at >= i + 200_000 && at <= i + 1_000_000);
                    assert!(n.arrive(at, 0, 1));
                }
                other => panic!("calm network: {other:?}"),
            }
        }
    }

    #[test]
    fn partitions_drop_both_ways_and_one_way_only_one_way() {
        let mut n = net(NetConfig::calm());
        n.partition(0b001);
        assert_eq!(n.send(0, 0, 1), SendOutcome::Dropped(DropReason::Partition));
        assert_eq!(n.send(0, 2, 0), SendOutcome::Dropped(DropReason::Partition));
        assert!(matches!(n.send(0, 1, 2), SendOutcome::Deliver { .. }));
        n.heal();
        n.block(0b010, 0b100);
        assert_eq!(n.send(0, 1, 2), SendOutcome::Dropped(DropReason::Partition));
        assert!(matches!(n.send(0, 2, 1), SendOutcome::Deliver { .. }));
    }

    #[test]
    fn in_flight_message_is_lost_when_partition_starts() {
        let mut n = net(NetConfig::calm());
        let SendOutcome::Deliver { at, .. } = n.send(0, 0, 1) else { panic!() };
        n.isolate(1);
        assert!(!n.arrive(at, 0, 1));
    }

    #[test]
    fn clogged_link_delivers_everything_at_the_end() {
        let mut n = net(NetConfig::calm());
        n.clog(0, 1, 50_000_000);
        for _ in 0..10 {
            let SendOutcome::Deliver { at, .. } = n.send(0, 0, 1) else { panic!() };
            assert_eq!(at, 50_000_000);
        }
        assert!(n.is_faulty(0));
        assert!(!n.is_faulty(50_000_000));
    }

    #[test]
    fn bounded_queue_drops_beyond_the_bound() {
        let mut c = NetConfig::calm();
        c.link_queue_max_msgs = 4;
        let mut n = net(c);
        for _ in 0..4 {
            assert!(matches!(n.send(0, 0, 1), SendOutcome::Deliver { .. }));
        }
        assert_eq!(n.send(0, 0, 1), SendOutcome::Dropped(DropReason::QueueFull));
        assert!(n.arrive(1_000_000, 0, 1));
        assert!(matches!(n.send(0, 0, 1), SendOutcome::Deliver { .. }));
    }

    #[test]
    fn lossy_duplicating_long_tail_network_does_all_three() {
        let mut c = NetConfig::calm();
        c.drop_ppm = PPM / 10;
        c.duplicate_ppm = PPM / 10;
        c.tail_ppm = PPM / 10;
        c.tail_max_ns = 500_000_000;
        let mut n = net(c);
        let (mut dropped, mut dups, mut late) = (0, 0, 0);
        for _ in 0..2000 {
            match n.send(0, 0, 1) {
                SendOutcome::Dropped(_) => dropped += 1,
                SendOutcome::Deliver { at, duplicate_at } => {
                    late += u32::from(at > 1_000_000);
                    dups += u32::from(duplicate_at.is_some());
                    n.arrive(at, 0, 1);
                    if let Some(d) = duplicate_at {
                        n.arrive(d, 0, 1);
                    }
                }
            }
        }
        assert!((100..400).contains(&dropped), "dropped {dropped}");
        assert!((100..400).contains(&dups), "dups {dups}");
        assert!((100..400).contains(&late), "late {late}");
    }

    #[test]
    fn flapping_link_alternates() {
        let mut n = net(NetConfig::calm());
        n.flap(0, 1, 100);
        assert!(matches!(n.send(50, 0, 1), SendOutcome::Deliver { .. }));
        assert_eq!(n.send(150, 0, 1), SendOutcome::Dropped(DropReason::Flapping));
    }
}
