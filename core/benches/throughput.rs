//! Committed entries per second of a 3-node cluster driven in memory: messages
//! are delivered by a loop, persistence is acknowledged at once, and closed-
//! loop proposers each keep one proposal outstanding (a finished proposal is
//! replaced in the next driver round, so concurrent proposals batch into one
//! `ProposeBatch`, one log append and one message per follower).
//!
//! Also reports heap allocations per committed entry (a counting global
//! allocator; payloads are static `Bytes`, so the count is the core's and
//! this driver's, not the client's).
//!
//! Run: `CARGO_TARGET_DIR=/work/target-core cargo bench -p tarn-core --bench throughput`
//! (`-- --quick` for a short run).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use tarn_core::{Action, Config, Input, Proposal, RawNode, Recovered, Role};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const NODES: usize = 3;
static PAYLOAD: [u8; 256] = [0x5a; 256];

struct Driver {
    nodes: Vec<RawNode>,
    inboxes: Vec<VecDeque<Input>>,
    actions: Vec<Action>,
    now: u64,
    /// Proposals of the leader that finished (applied) since the last round.
    finished: usize,
    committed: u64,
}

impl Driver {
    fn new() -> Driver {
        let nodes = (1..=NODES as u64)
            .map(|id| {
                let mut c = Config::new(id, 7);
                c.max_log_tail_entries = 4096;
                RawNode::new(c, Recovered::new_cluster(1..=NODES as u64)).expect("valid config")
            })
            .collect();
        Driver {
            nodes,
            inboxes: (0..NODES).map(|_| VecDeque::new()).collect(),
            actions: Vec::new(),
            now: 0,
            finished: 0,
            committed: 0,
        }
    }

    /// Steps every node on its queued inputs and executes the actions.
    fn round(&mut self) -> bool {
        let mut any = false;
        for k in 0..NODES {
            while let Some(input) = self.inboxes[k].pop_front() {
                any = true;
                self.nodes[k].step(self.now, input, &mut self.actions);
                let mut actions = std::mem::take(&mut self.actions);
                for a in actions.drain(..) {
                    self.execute(k, a);
                }
                self.actions = actions;
            }
        }
        any
    }

    fn execute(&mut self, k: usize, a: Action) {
        match a {
            Action::Send { to, message } => self.inboxes[to as usize - 1].push_back(Input::Message(message)),
            Action::AppendLog { entries } => {
                let up_to = entries.last().expect("non-empty").log_id();
                self.inboxes[k].push_back(Input::LogPersisted { up_to });
            }
            Action::PersistHardState(hs) => {
                self.inboxes[k].push_back(Input::HardStatePersisted { term: hs.term, vote: hs.vote })
            }
            Action::Apply { entries, proposals } => {
                let last = entries.last().expect("non-empty").index;
                if self.nodes[k].role() == Role::Leader {
                    self.finished += proposals.len();
                    self.committed += proposals.len() as u64;
                }
                self.inboxes[k].push_back(Input::Applied { index: last });
            }
            Action::ProposalDropped { .. } => panic!("no proposal may be dropped in a healthy cluster"),
            _ => {}
        }
    }

    fn elect(&mut self) {
        for _ in 0..100 {
            self.now = self.nodes[0].next_deadline();
            self.inboxes[0].push_back(Input::Tick);
            while self.round() {}
            if self.nodes[0].role() == Role::Leader {
                return;
            }
        }
        panic!("no leader");
    }
}

/// CPU seconds this process has used (user + system), from /proc/self/stat;
/// on a shared machine this is steadier than wall time. None off Linux.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, in clock ticks (100 per second on Linux).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn run(payload_bytes: usize, proposers: usize, entries: u64) -> (f64, f64, Option<f64>) {
    let mut d = Driver::new();
    d.elect();
    let payload = Bytes::from_static(&PAYLOAD[..payload_bytes]);
    let mut next_id = 0u64;
    d.finished = proposers;
    d.committed = 0;
    let allocs_before = ALLOCATIONS.load(Ordering::Relaxed);
    let cpu_before = cpu_seconds();
    let start = Instant::now();
    while d.committed < entries {
        if d.finished > 0 {
            let proposals: Vec<Proposal> = (0..d.finished)
                .map(|_| {
                    next_id += 1;
                    Proposal { id: next_id, data: payload.clone() }
                })
                .collect();
            d.finished = 0;
            d.inboxes[0].push_back(Input::ProposeBatch { proposals });
        }
        if !d.round() {
            panic!("stalled at {} committed", d.committed);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu =
        cpu_seconds().zip(cpu_before).map(|(after, before)| d.committed as f64 / (after - before).max(0.01));
    let allocs = ALLOCATIONS.load(Ordering::Relaxed) - allocs_before;
    (d.committed as f64 / elapsed, allocs as f64 / d.committed as f64, cpu)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    println!("3-node in-memory cluster, persistence acknowledged at once, closed-loop proposers");
    println!(
        "{:>9} {:>10} {:>14} {:>18} {:>12}",
        "payload", "proposers", "entries/s", "entries/cpu-s", "allocs/entry"
    );
    for &payload in &[16usize, 256] {
        for &(proposers, entries) in &[(1usize, 300_000u64), (64, 4_000_000), (1024, 8_000_000)] {
            let (rate, allocs, cpu_rate) = run(payload, proposers, entries / scale);
            let cpu_rate = cpu_rate.map_or("n/a".to_string(), |r| format!("{r:.0}"));
            println!("{:>8}B {:>10} {:>14.0} {:>18} {:>12.2}", payload, proposers, rate, cpu_rate, allocs);
        }
    }
}
