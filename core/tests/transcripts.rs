//! Data-driven scenario transcripts (etcd-raft's `testdata/*.txt` style).
//!
//! Each file in `tests/testdata/` is a list of blocks:
//!
//! ```text
//! # a comment
//! command arg arg
//! ----
//! expected output (possibly empty)
//!
//! ```
//!
//! The runner executes every command against an in-memory cluster and
//! compares its output with the text below `----`. `REWRITE=1 cargo test -p
//! tarn-core --test transcripts` rewrites the files with the actual output
//! (review the diff!).
//!
//! Commands:
//! - `cluster n=3 seed=7 [pre_vote=false] [check_quorum=false] [lease=false]`
//! - `tick <id>`: move time to node's deadline and tick it
//! - `deliver`: deliver all messages, printing each (the transcript)
//! - `stabilize`: deliver all messages silently
//! - `run <ms>`: run the cluster (timers, delivery) for a duration
//! - `isolate <id>`, `partition <ids> | <ids>`, `heal`, `crash <id>`, `restart <id>`
//! - `propose <node> <id> <text>`, `read <node> <id>`, `transfer <leader> <to>`
//! - `status`: one line per node; `outcome <node> <id>`

use std::fmt::Write as _;
use std::path::Path;

use tarn_core::testkit::Cluster;
use tarn_core::{Input, Message, MessageBody, NodeId};

const MS: u64 = 1_000_000;

fn fmt_message(to: NodeId, m: &Message) -> String {
    let body = match &m.body {
        MessageBody::PreVoteRequest { last_log_id } => format!("PreVote last={last_log_id}"),
        MessageBody::PreVoteResponse { granted } => format!("PreVoteResp granted={granted}"),
        MessageBody::VoteRequest { last_log_id, transfer } => {
            format!("Vote last={last_log_id}{}", if *transfer { " transfer" } else { "" })
        }
        MessageBody::VoteResponse { granted } => format!("VoteResp granted={granted}"),
        MessageBody::AppendEntries { prev_log_id, entries, commit, .. } => {
            let ids: Vec<String> = entries.iter().map(|e| e.log_id().to_string()).collect();
            format!("App prev={prev_log_id} entries=[{}] commit={commit}", ids.join(" "))
        }
        MessageBody::AppendResponse { result: Ok(i), .. } => format!("AppResp ok={i}"),
        MessageBody::AppendResponse { result: Err(h), .. } => {
            format!("AppResp reject={} hint={}", h.rejected_index, h.hint)
        }
        MessageBody::Heartbeat { commit, ctx } => format!("Heartbeat commit={commit} ctx={ctx}"),
        MessageBody::HeartbeatResponse { ctx, last_index } => {
            format!("HeartbeatResp ctx={ctx} last={last_index}")
        }
        MessageBody::TimeoutNow => "TimeoutNow".to_string(),
        MessageBody::ReadIndexRequest { id } => format!("ReadIndex id={id}"),
        MessageBody::ReadIndexResponse { id, result } => format!("ReadIndexResp id={id} {result:?}"),
        MessageBody::InstallSnapshot { meta, offset, data, done, .. } => {
            format!("Snap {} off={offset} len={} done={done}", meta.last_log_id, data.len())
        }
        MessageBody::SnapshotResponse { snapshot, next_offset, .. } => {
            format!("SnapResp {snapshot} next={next_offset}")
        }
        MessageBody::Quiesce { commit } => format!("Quiesce commit={commit}"),
    };
    format!("{}->{to} t{} {body}", m.from, m.term)
}

fn ids(s: &str) -> Vec<NodeId> {
    s.split(',').map(|x| x.trim().parse().expect("node id")).collect()
}

fn run_command(c: &mut Option<Cluster>, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut out = String::new();
    if words[0] == "cluster" {
        let arg = |k: &str| words.iter().find_map(|w| w.strip_prefix(&format!("{k}=")));
        let n: u64 = arg("n").unwrap_or("3").parse().unwrap();
        let seed: u64 = arg("seed").unwrap_or("1").parse().unwrap();
        let flag = |k: &str| arg(k).map(|v| v == "true");
        *c = Some(Cluster::with_config(n, seed, |cfg| {
            cfg.pre_vote = flag("pre_vote").unwrap_or(cfg.pre_vote);
            cfg.check_quorum = flag("check_quorum").unwrap_or(cfg.check_quorum);
            cfg.lease_read = flag("lease").unwrap_or(cfg.lease_read);
        }));
        return out;
    }
    let c = c.as_mut().expect("`cluster` first");
    let num =
        |k: usize| -> u64 { words[k].parse().unwrap_or_else(|_| panic!("number expected in `{line}`")) };
    match words[0] {
        "tick" => c.tick(num(1)),
        "deliver" => {
            while let Some((to, m)) = c.network.pop_front() {
                let cut = c.cut.contains(&(m.from, to)) || !c.node(to).up;
                writeln!(out, "{}{}", fmt_message(to, &m), if cut { "  (dropped)" } else { "" }).unwrap();
                if !cut {
                    c.step(to, Input::Message(m));
                }
            }
        }
        "stabilize" => c.stabilize(),
        "run" => c.run_for(num(1) * MS),
        "isolate" => c.isolate(num(1)),
        "partition" => {
            let rest = words[1..].join(" ");
            let (a, b) = rest.split_once('|').expect("partition a,b | c");
            c.partition(&ids(a), &ids(b));
        }
        "heal" => c.heal(),
        "crash" => c.crash(num(1)),
        "restart" => c.restart(num(1)),
        "propose" => c.propose(num(1), num(2), words[3].as_bytes()),
        "read" => c.read(num(1), num(2)),
        "transfer" => c.step(num(1), Input::TransferLeadership { to: num(2) }),
        "outcome" => writeln!(out, "{:?}", c.outcome(num(1), num(2))).unwrap(),
        "status" => {
            for (id, n) in &c.nodes {
                let s = n.raft.status();
                let state = if n.up { format!("{:?}", s.role) } else { "Down".to_string() };
                writeln!(
                    out,
                    "{id}: {state} term={} leader={:?} commit={} last={} applied={:?}",
                    s.term,
                    s.leader,
                    s.commit,
                    s.last_log_id,
                    c.applied_payloads(*id)
                        .iter()
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .collect::<Vec<_>>()
                )
                .unwrap();
            }
        }
        other => panic!("unknown command `{other}`"),
    }
    c.check_invariants();
    out
}

fn run_file(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut cluster = None;
    let mut rewritten = String::new();
    let mut failures = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            rewritten.push_str(line);
            rewritten.push('\n');
            continue;
        }
        assert_eq!(lines.next(), Some("----"), "{}: `{line}` must be followed by ----", path.display());
        let mut expected = String::new();
        while let Some(l) = lines.peek() {
            if l.is_empty() {
                break;
            }
            expected.push_str(l);
            expected.push('\n');
            lines.next();
        }
        let actual = run_command(&mut cluster, line);
        if actual != expected {
            failures
                .push(format!("{}: `{line}`\n--- expected\n{expected}--- actual\n{actual}", path.display()));
        }
        rewritten.push_str(line);
        rewritten.push_str("\n----\n");
        rewritten.push_str(&actual);
    }
    if std::env::var("REWRITE").is_ok() {
        std::fs::write(path, rewritten).unwrap();
    } else {
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

#[test]
fn transcripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 4, "found the transcripts in {}", dir.display());
    for f in files {
        run_file(&f);
    }
}
