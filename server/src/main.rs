//! The `tarn` command: server, client and benchmark in one binary.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use tarn_core::{GroupId, NodeId};
use tarn_io::driver::WriteMode;
use tarn_kv::{ChildView, EventKind, LockOutcome, NodeKind, NodeView, WatchEvent};
use tarn_server::bench::{self, BenchConfig};
use tarn_server::client::{Client, ClientConfig, ClientError};
use tarn_server::protocol::{Consistency, MemberChange, NodeStatus, DEFAULT_GROUP};
use tarn_server::server::{Server, ServerConfig, DEFAULT_CLIENT_ADDR, DEFAULT_DATA_DIR};

mod cli_security;
mod top;

/// Exit code for "the key does not exist".
const EXIT_NOT_FOUND: u8 = 3;
/// Exit code for every other failure.
const EXIT_ERROR: u8 = 1;

/// tarn: a Raft-replicated, tree-structured key-value store.
///
/// Keys are paths with `.` between segments (`app.db.url`); a key's parent
/// directory must exist (`tarn mkdir app`). Every write goes through Raft
/// and is applied once even if the client retries; reads are linearizable
/// unless you ask for `--stale`.
///
/// Start a server, then talk to it:
///
///   tarn serve                       # one node on 127.0.0.1:7700, data in ./tarn-data
///   tarn mkdir app
///   tarn put app.greeting hello
///   tarn get app.greeting            # prints: hello
///   tarn ls app
///   tarn watch app --subtree         # streams every change under app
///
/// A three-node cluster in three shells:
///
///   tarn serve --id 1 --data-dir d1 --client 127.0.0.1:7701 --peer 127.0.0.1:7801 \
///              --cluster 1=127.0.0.1:7801,2=127.0.0.1:7802,3=127.0.0.1:7803
///   (same with --id 2 / 7702 / 7802 and --id 3 / 7703 / 7803)
///   tarn --endpoints 127.0.0.1:7701,127.0.0.1:7702,127.0.0.1:7703 status
///
/// Or all three in one process: `tarn cluster --nodes 3`.
///
/// Exit codes: 0 success, 1 error (one line on stderr), 2 bad usage, 3 key not found.
#[derive(Parser, Debug)]
#[command(name = "tarn", version, verbatim_doc_comment)]
struct Cli {
    /// The client flags, also accepted before the command (`tarn --endpoints
    /// A get k`); a flag given after the command wins.
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: Cmd,
}

/// The flags of every client command: where the cluster is, which group,
/// how to print, how long to wait. Servers (`serve`, `cluster`) take none of
/// them (`serve --join` has `--join-endpoints`).
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
#[command(next_help_heading = "Client options (before or after the command)")]
struct ClientArgs {
    /// Client addresses of the cluster's nodes, comma separated (default
    /// 127.0.0.1:7700). Any subset works: the client finds the leader itself.
    #[arg(long, value_delimiter = ',', value_name = "ADDRS")]
    endpoints: Option<Vec<SocketAddr>>,
    /// The Raft group to talk to (default 1, the group every server hosts;
    /// see `tarn group`).
    #[arg(long, value_name = "ID")]
    group: Option<GroupId>,
    /// Print results as JSON (one object per line) instead of plain text.
    #[arg(long)]
    json: bool,
    /// Give up on a request after this many milliseconds, retries included
    /// (default 10000).
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    #[command(flatten)]
    security: cli_security::ClientSecurityArgs,
}

/// Default of `--timeout-ms`.
const CLIENT_TIMEOUT_MS_DEFAULT: u64 = 10_000;

impl ClientArgs {
    /// Whether any flag was given.
    fn any(&self) -> bool {
        *self != ClientArgs::default()
    }

    /// Fills what this one lacks from `outer` (the flags given before the command).
    fn fill_from(&mut self, outer: &ClientArgs) {
        if self.endpoints.is_none() {
            self.endpoints.clone_from(&outer.endpoints);
        }
        self.group = self.group.or(outer.group);
        self.json |= outer.json;
        self.timeout_ms = self.timeout_ms.or(outer.timeout_ms);
        self.security.fill_from(&outer.security);
    }

    fn endpoints(&self) -> Vec<SocketAddr> {
        self.endpoints.clone().unwrap_or_else(|| vec![default_client_addr()])
    }

    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(self.endpoints());
        config.group = self.group.unwrap_or(DEFAULT_GROUP);
        config.request_timeout = Duration::from_millis(self.timeout_ms.unwrap_or(CLIENT_TIMEOUT_MS_DEFAULT));
        config
    }

    /// The flags given, as the user would type them (for error messages).
    fn given(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        if self.endpoints.is_some() {
            given.push("--endpoints");
        }
        if self.group.is_some() {
            given.push("--group");
        }
        if self.json {
            given.push("--json");
        }
        if self.timeout_ms.is_some() {
            given.push("--timeout-ms");
        }
        given.extend(self.security.given());
        given
    }
}

fn default_client_addr() -> SocketAddr {
    // Invariant: DEFAULT_CLIENT_ADDR is a literal `IP:PORT`, checked by a unit test.
    DEFAULT_CLIENT_ADDR.parse().expect("DEFAULT_CLIENT_ADDR parses")
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a server node (single node by default; add --cluster for a cluster member).
    Serve(ServeArgs),
    /// Run a local cluster of N nodes in this process (for trying things out).
    /// Its cluster id differs from that of hand-started nodes on the same
    /// addresses, so neither can take the other's data directories.
    Cluster(ClusterArgs),
    /// Print the value of KEY (exit code 3 if it does not exist).
    Get {
        /// The key, a path with `.` between segments (`app.db.url`).
        key: String,
        /// Read from whichever node answers, possibly stale (no leader round trip).
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set KEY to VALUE (the parent directory must exist).
    Put {
        /// The key, a path with `.` between segments; its parent directory must exist.
        key: String,
        /// The value; `-` reads it from stdin (a command line caps values
        /// near 128 KiB; stdin and --file take up to the server's limit).
        #[arg(required_unless_present = "file")]
        value: Option<String>,
        /// Read the value from file F instead.
        #[arg(long, value_name = "F", conflicts_with = "value")]
        file: Option<PathBuf>,
        /// Make it a temporary node, removed this many ms after it was
        /// written unless renewed (`tarn ttl KEY --ttl-ms N`).
        #[arg(long, value_name = "N")]
        ttl_ms: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Renew the TTL of temporary node KEY (made with `--ttl-ms`): it is
    /// removed N ms from now unless renewed again. Any client may renew a
    /// node; its value and owner stay. Exit code 3 if KEY does not exist.
    Ttl {
        /// The temporary node (value or directory) to renew.
        key: String,
        /// The new TTL, from now (1 ms to 30 days).
        #[arg(long, value_name = "N")]
        ttl_ms: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove KEY (a value or an empty directory). A missing key is success.
    Rm {
        /// The key to remove.
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create directory KEY.
    Mkdir {
        /// The directory's key; its parent must exist (the root always does).
        key: String,
        /// Make it a temporary directory, removed with its whole subtree this
        /// many ms after it was made unless renewed (`tarn ttl KEY --ttl-ms N`).
        #[arg(long, value_name = "N")]
        ttl_ms: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the children of directory KEY (the root if omitted). A listing
    /// larger than a reply frame (16 MiB) is refused: page it with --limit and
    /// --after.
    Ls {
        /// The directory to list; empty lists the root.
        #[arg(default_value = "")]
        key: String,
        /// Print at most N children; if more remain, stderr says which --after
        /// continues the listing.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Start after this child (its name, or its full key).
        #[arg(long, value_name = "CHILD")]
        after: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Compare-and-set: change KEY only if its value is the expected one.
    Cas {
        /// The key to change.
        key: String,
        /// The value KEY must hold now; omit to require that KEY does not exist.
        #[arg(long)]
        expect: Option<String>,
        /// The new value; omit to delete KEY.
        #[arg(long)]
        new: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print every change to KEY (or, with --subtree, below it) as it happens.
    Watch {
        /// The key to watch; empty watches the root (with --subtree: everything).
        #[arg(default_value = "")]
        key: String,
        /// Also report changes to every key below KEY, not only KEY itself.
        #[arg(long)]
        subtree: bool,
        /// Start after this Raft index (replays history); default: from now.
        #[arg(long)]
        after: Option<u64>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Take the lock KEY, hold it (renewing the lease) for --hold-ms or until Ctrl-C, release it.
    Lock {
        /// The lock's key (its parent directory must exist).
        key: String,
        /// The lease: if this process dies, the lock frees itself this many
        /// ms after its last renewal (renewed every third of it while held).
        #[arg(long, default_value_t = 10_000)]
        lease_ms: u64,
        /// How long to wait in line for the lock.
        #[arg(long, default_value_t = 30_000)]
        wait_ms: u64,
        /// Release after this long (default: hold until Ctrl-C).
        #[arg(long)]
        hold_ms: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show each endpoint's node: its groups, roles, terms, indexes, follower lag, counters.
    /// A node with many groups gets a summary (counts by role, the worst lag)
    /// unless --all-groups.
    Status {
        /// Print every group even when there are many.
        #[arg(long)]
        all_groups: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A live view of the cluster, refreshed every --interval-ms until
    /// Ctrl-C: per group the leader, term, commits per second, the slowest
    /// applied index, the worst follower lag and unreachable followers; per
    /// endpoint its groups, leaderships and requests per second. Built on
    /// `tarn status`; rates start with the second frame.
    Top {
        /// Milliseconds between refreshes.
        #[arg(long, value_name = "MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
        interval_ms: u64,
        /// Stop after N frames (the exit code then says, like `tarn status`,
        /// whether every endpoint answered the last one).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        iterations: Option<u64>,
        /// Print one frame and exit: --iterations 1 (a single frame has no rates).
        #[arg(long, conflicts_with = "iterations")]
        once: bool,
        /// Show at most N groups, the busiest first.
        #[arg(long, value_name = "N", default_value_t = 20)]
        rows: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ask the group's leader to hand leadership to node --to.
    TransferLeader {
        /// The node id of a voter of the group to hand leadership to.
        #[arg(long)]
        to: NodeId,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add or remove Raft groups at runtime (multi-raft).
    #[command(subcommand)]
    Group(GroupCmd),
    /// Change the members of a group (`member add ID PEER_ADDR` for a node started with --join).
    #[command(subcommand)]
    Member(MemberCmd),
    /// Load generator: throughput and latency percentiles (defaults mirror Dongting's benchmark).
    Bench(BenchArgs),
    /// Development certificates for TLS: a CA, node and client certificates.
    #[command(subcommand)]
    Cert(cli_security::CertCmd),
    /// Client tokens and roles of an auth file (`tarn serve --auth-file`).
    #[command(subcommand)]
    Auth(cli_security::AuthCmd),
}

#[derive(Subcommand, Debug)]
enum GroupCmd {
    /// Start group ID (or every group of a range FIRST..LAST, both included)
    /// on every endpoint with the given voters (each endpoint must be one).
    Add {
        /// The new group's id (1 is the default group every server hosts),
        /// or an inclusive range such as 2..10001 (created in batches).
        #[arg(value_parser = parse_group_range)]
        id: (GroupId, GroupId),
        /// The group's voters, comma separated node ids (e.g. 1,2,3); every
        /// endpoint given must be one of them.
        #[arg(long, value_delimiter = ',')]
        voters: Vec<NodeId>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop group ID and delete its data on every endpoint (cannot be
    /// undone; needs --yes).
    Remove {
        /// The group to delete.
        id: GroupId,
        /// Confirm: the group's data is deleted on every endpoint.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
enum MemberCmd {
    /// Add node ID as a voter (or, with --learner, as a learner to promote
    /// later). PEER_ADDR (its --peer) is needed for a node not in --cluster:
    /// it is replicated to every node, which then connects to it.
    Add {
        /// The node's id (its --id).
        id: NodeId,
        /// The node's peer address (its --peer); needed unless it is in --cluster.
        peer_addr: Option<SocketAddr>,
        /// Add it as a learner: it replicates but does not vote until promoted.
        #[arg(long)]
        learner: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove node ID (voter or learner) from the group.
    Remove {
        /// The node to remove.
        id: NodeId,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make learner ID a voter (refused while it lags too far behind).
    Promote {
        /// The learner to promote.
        id: NodeId,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Drop node ID's address from the replicated peer directory (written by
    /// `member add ID PEER_ADDR`), so nodes stop dialing a node removed for good.
    Forget {
        /// The node removed for good.
        id: NodeId,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// Acknowledge a write after fdatasync.
    Sync,
    /// Acknowledge after the write reaches the OS; sync in the background.
    Async,
}

impl Mode {
    fn write_mode(self) -> WriteMode {
        match self {
            Mode::Sync => WriteMode::Sync,
            Mode::Async => WriteMode::Async { sync_interval: Duration::from_millis(100) },
        }
    }
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// This node's id (>= 1); must be in --cluster if that is given.
    #[arg(long, default_value_t = 1)]
    id: NodeId,
    /// Where this node keeps its log, snapshots and identity (created if
    /// missing; one directory per node, never shared).
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Address clients connect to.
    #[arg(long, default_value = DEFAULT_CLIENT_ADDR)]
    client: SocketAddr,
    /// Address peers connect to (this node's entry in --cluster).
    #[arg(long)]
    peer: Option<SocketAddr>,
    /// Every voter and its peer address: 1=127.0.0.1:7801,2=127.0.0.1:7802,...
    #[arg(long, value_delimiter = ',', value_parser = parse_member)]
    cluster: Vec<(NodeId, SocketAddr)>,
    /// Override the cluster id derived from --cluster.
    #[arg(long)]
    cluster_id: Option<u64>,
    /// Join the running cluster at --join-endpoints instead of starting one:
    /// the node starts empty, waits until `tarn member add <id> <its --peer>
    /// --learner` and catches up; promote it afterwards. Pass --join on every
    /// start of this node.
    #[arg(long)]
    join: bool,
    /// With --join: client addresses of the running cluster's nodes, comma
    /// separated (default 127.0.0.1:7700); any one that answers will do.
    // `--endpoints`, a hidden alias, is what this flag was called before.
    #[arg(long, value_delimiter = ',', value_name = "ADDRS", alias = "endpoints", requires = "join")]
    join_endpoints: Option<Vec<SocketAddr>>,
    /// When a write is acknowledged: after fdatasync (sync), or once the
    /// OS has it, with a sync every 100 ms (async).
    #[arg(long, value_enum, default_value_t = Mode::Sync)]
    write_mode: Mode,
    /// A follower that hears no leader for this long (randomized up to
    /// twice it) starts an election; every node of a cluster should agree.
    #[arg(long, default_value_t = 300)]
    election_timeout_ms: u64,
    /// How often a leader sends heartbeats; well below the election timeout.
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
    /// Keep every idle group ticking and heartbeating (no quiescence): each
    /// idle group then costs CPU on every node. Default: idle groups go
    /// quiet and node-level liveness on the peer port watches their leaders.
    #[arg(long)]
    no_quiesce: bool,
    /// Run every group's timers on a node-wide grid of this many
    /// milliseconds, so the heartbeats of all groups to a peer go out as
    /// one frame per grid tick (a timer runs less than this late; capped at
    /// a quarter of the heartbeat interval). 0: off, which a rolling
    /// upgrade from a build without coalesced heartbeats needs until every
    /// node runs this one.
    #[arg(long, default_value_t = 10)]
    heartbeat_coalesce_ms: u64,
    /// Snapshot the state and compact the log after this many applied
    /// entries (default 100000)...
    #[arg(long)]
    snapshot_after_entries: Option<u64>,
    /// ...or after this many bytes of applied entries (default 64 MiB).
    #[arg(long)]
    snapshot_after_bytes: Option<u64>,
    /// Entries kept before a snapshot so slightly slow followers catch up
    /// from the log rather than a snapshot (default 10000).
    #[arg(long)]
    log_keep_tail_entries: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9100); off by default. Anyone who can reach ADDR can read
    /// them: bind it to a private interface.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Log lines as text, or as one JSON object per line (for log
    /// shippers). The level comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    security: Box<cli_security::ServeSecurityArgs>,
    /// With --join: how to reach a cluster that serves clients over TLS or
    /// with tokens (the client flags, also accepted before `serve`).
    #[command(flatten)]
    join_security: cli_security::ClientSecurityArgs,
}

/// How the server writes its log lines (to stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    Text,
    /// One JSON object per line: timestamp, level, fields, target, spans.
    Json,
}

#[derive(Args, Debug)]
struct ClusterArgs {
    /// How many nodes (1 to 7 make sense; each is a voter of group 1).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Client ports are base+1..base+N, peer ports base+101..base+100+N;
    /// 0 lets the OS pick free ports (printed at start).
    #[arg(long, default_value_t = 7700)]
    base_port: u16,
    /// Where the nodes keep their data: one subdirectory per node (n1, n2, ...).
    #[arg(long, default_value = "./tarn-cluster")]
    data_dir: PathBuf,
    /// Serve each node's Prometheus metrics at http://ADDR/metrics, node i
    /// on ADDR's port + i - 1 (port 0: a free port each); the addresses are
    /// printed at start. Off by default.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Keep idle groups ticking and heartbeating (no quiescence), e.g. to
    /// compare what idle groups cost with and without it.
    #[arg(long)]
    no_quiesce: bool,
    /// The nodes' heartbeat coalescing grid in milliseconds (as `serve
    /// --heartbeat-coalesce-ms`); 0: off, e.g. to compare.
    #[arg(long, default_value_t = 10)]
    heartbeat_coalesce_ms: u64,
    /// How often the groups' leaders heartbeat (as `serve --heartbeat-ms`),
    /// e.g. to compare the grid's cost at an equal heartbeat rate.
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Start the servers in this process (data in a temporary directory).
    #[arg(long)]
    embedded: bool,
    /// Nodes to start with --embedded.
    #[arg(long, default_value_t = 1)]
    nodes: u64,
    /// Write mode of the --embedded servers.
    #[arg(long, value_enum, default_value_t = Mode::Sync)]
    write_mode: Mode,
    /// Client connections the load is spread over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Requests outstanding at once, over all connections.
    #[arg(long, default_value_t = 2_000)]
    in_flight: usize,
    /// Share of gets (0.0 = all puts, 1.0 = all gets).
    #[arg(long, default_value_t = 0.0)]
    get_ratio: f64,
    /// Distinct keys, chosen at random per request.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Bytes per value written.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 3)]
    warmup_s: u64,
    /// Gets read whatever the contacted node has (no leadership check).
    #[arg(long)]
    stale: bool,
    /// Spread the keys over groups 1..=N (with --embedded the groups are
    /// created first, on every node; otherwise they must exist).
    #[arg(long, default_value_t = 1)]
    groups: u64,
    /// Put every key once before the warm-up, so gets read present keys.
    #[arg(long)]
    prefill: bool,
    /// With --embedded: the servers snapshot after this many applied
    /// entries (the server default is 100000); a large value such as
    /// 1000000000 runs without snapshots, to compare tail latency with and
    /// without them.
    #[arg(long)]
    snapshot_after_entries: Option<u64>,
    #[command(flatten)]
    client: ClientArgs,
}

/// `N` or `FIRST..LAST` (inclusive).
fn parse_group_range(s: &str) -> Result<(GroupId, GroupId), String> {
    let number = |t: &str| t.trim().parse::<GroupId>().map_err(|_| format!("{t:?} is not a group id"));
    let (first, last) = match s.split_once("..") {
        Some((a, b)) => (number(a)?, number(b.strip_prefix('=').unwrap_or(b))?),
        None => (number(s)?, number(s)?),
    };
    if first == 0 || last < first {
        return Err(format!(
            "{s:?}: expected a group id >= 1 or a range FIRST..LAST with 1 <= FIRST <= LAST"
        ));
    }
    Ok((first, last))
}

fn parse_member(s: &str) -> Result<(NodeId, SocketAddr), String> {
    let (id, addr) =
        s.split_once('=').ok_or_else(|| format!("{s:?}: expected ID=HOST:PORT, e.g. 1=127.0.0.1:7801"))?;
    let id = id.trim().parse().map_err(|_| format!("{s:?}: node id {id:?} is not a number"))?;
    let addr = addr.trim().parse().map_err(|_| format!("{s:?}: {addr:?} is not a HOST:PORT address"))?;
    Ok((id, addr))
}

/// Logs to stderr at `RUST_LOG`'s levels (`default` without it), as text
/// or JSON lines.
fn init_logging(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
    };
}

impl Cmd {
    /// The client flags of a client command; `None` for the servers.
    fn client_args_mut(&mut self) -> Option<&mut ClientArgs> {
        match self {
            Cmd::Serve(_) | Cmd::Cluster(_) | Cmd::Cert(_) | Cmd::Auth(_) => None,
            Cmd::Get { client, .. }
            | Cmd::Put { client, .. }
            | Cmd::Ttl { client, .. }
            | Cmd::Rm { client, .. }
            | Cmd::Mkdir { client, .. }
            | Cmd::Ls { client, .. }
            | Cmd::Cas { client, .. }
            | Cmd::Watch { client, .. }
            | Cmd::Lock { client, .. }
            | Cmd::Status { client, .. }
            | Cmd::Top { client, .. }
            | Cmd::TransferLeader { client, .. }
            | Cmd::Group(GroupCmd::Add { client, .. } | GroupCmd::Remove { client, .. })
            | Cmd::Member(
                MemberCmd::Add { client, .. }
                | MemberCmd::Remove { client, .. }
                | MemberCmd::Promote { client, .. }
                | MemberCmd::Forget { client, .. },
            ) => Some(client),
            Cmd::Bench(args) => Some(&mut args.client),
        }
    }
}

/// Places the client flags given before the command. A client command takes
/// each one it was not given itself. `serve --join` takes `--endpoints` as
/// the cluster to join (`tarn --endpoints A serve --join` predates
/// `--join-endpoints`). Any other client flag before `serve` or `cluster` is
/// a usage error, not silently ignored.
fn resolve(cli: Cli) -> Result<Cmd, clap::Error> {
    let Cli { client: outer, mut command } = cli;
    if let Some(inner) = command.client_args_mut() {
        inner.fill_from(&outer);
        return Ok(command);
    }
    let usage = |message: String| Cli::command().error(clap::error::ErrorKind::ArgumentConflict, message);
    match &mut command {
        Cmd::Serve(args) => {
            let not_endpoints = ClientArgs { endpoints: None, security: Default::default(), ..outer.clone() };
            if not_endpoints.any() {
                return Err(usage(format!(
                    "{} is a client flag; `tarn serve` does not take it",
                    not_endpoints.given().join(", ")
                )));
            }
            if let Some(endpoints) = outer.endpoints {
                if !args.join {
                    return Err(usage(
                        "--endpoints before `serve` names the cluster to join: add --join, or drop --endpoints"
                            .into(),
                    ));
                }
                if args.join_endpoints.is_some() {
                    return Err(usage(
                        "the cluster to join is given twice: keep --join-endpoints, drop --endpoints".into(),
                    ));
                }
                args.join_endpoints = Some(endpoints);
            }
            if outer.security != cli_security::ClientSecurityArgs::default() {
                if !args.join {
                    return Err(usage(format!(
                        "{} before `serve` is how to reach the cluster to join: add --join, or drop it \
                         (the server's own TLS flags are --tls-* and --peer-tls-*)",
                        outer.security.given().join(", ")
                    )));
                }
                args.join_security.fill_from(&outer.security);
            }
        }
        Cmd::Cert(_) | Cmd::Auth(_) if outer.any() => {
            return Err(usage(format!(
                "{} is a client flag; `tarn cert` and `tarn auth` work on local files and take none",
                outer.given().join(", ")
            )));
        }
        Cmd::Cluster(_) if outer.any() => {
            return Err(usage(format!(
                "{} is a client flag; `tarn cluster` does not take it (it prints its nodes' endpoints)",
                outer.given().join(", ")
            )));
        }
        _ => {}
    }
    Ok(command)
}

/// Only the binary picks the allocator: a library embedding tarn keeps its own. glibc malloc
/// and free were about a fifth of the CPU in a 1-node `tarn bench` profile (many small
/// short-lived buffers per request); mimalloc measured +24% throughput at equal CPU time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let command = match resolve(Cli::parse()) {
        Ok(command) => command,
        Err(e) => e.exit(),
    };
    let server_side = matches!(command, Cmd::Serve(_) | Cmd::Cluster(_));
    let log_format = match &command {
        Cmd::Serve(args) => args.log_format,
        _ => LogFormat::Text,
    };
    init_logging(if server_side { "info" } else { "warn" }, log_format);
    if server_side || matches!(command, Cmd::Bench(_)) {
        // Every group keeps files open (the descriptor pool closes idle ones,
        // but sockets and busy groups need room; `bench --embedded` runs
        // servers too): take what the hard limit allows, as Go's runtime
        // does at start.
        let limit = tarn_io::vfs::raise_open_files_limit();
        tracing::debug!(limit, "open files limit");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(run(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::NotFound(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(EXIT_NOT_FOUND)
        }
        Err(Failure::Other(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(EXIT_ERROR)
        }
        Err(Failure::Quiet(summary)) => {
            eprintln!("{summary}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

enum Failure {
    NotFound(String),
    Other(String),
    /// The details were printed already; stderr gets only this summary.
    Quiet(String),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        if e.is_not_found() {
            Failure::NotFound(e.to_string())
        } else {
            Failure::Other(e.to_string())
        }
    }
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Other(e)
    }
}

/// Waits for SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(mut command: Cmd) -> Result<(), Failure> {
    let client_args = command.client_args_mut().map(|a| a.clone()).unwrap_or_default();
    let mut client_config = client_args.config();
    client_config.security = client_args.security.client().map_err(Failure::Other)?;
    let endpoints = client_args.endpoints();
    let json = client_args.json;
    let client = || Client::new(client_config.clone());
    match command {
        Cmd::Serve(args) => serve(args).await,
        Cmd::Cluster(args) => cluster(args).await,
        Cmd::Cert(cmd) => Ok(cli_security::cert_cmd(cmd)?),
        Cmd::Auth(cmd) => Ok(cli_security::auth_cmd(cmd)?),
        Cmd::Get { key, stale, .. } => {
            let consistency = if stale { Consistency::Stale } else { Consistency::Linearizable };
            match client().get_with(&key, consistency).await? {
                Some(node) => {
                    print_node(&key, &node, json);
                    Ok(())
                }
                None => Err(Failure::NotFound(format!("key {key:?} does not exist"))),
            }
        }
        Cmd::Put { key, value, file, ttl_ms, .. } => {
            let value = put_value(value, file)?;
            let c = client();
            match ttl_ms {
                Some(ms) => c.put_temp(&key, value, Duration::from_millis(ms)).await?,
                None => c.put(&key, value).await?,
            }
            done(json);
            Ok(())
        }
        Cmd::Ttl { key, ttl_ms, .. } => {
            client().renew_ttl(&key, Duration::from_millis(ttl_ms)).await?;
            done(json);
            Ok(())
        }
        Cmd::Rm { key, .. } => {
            client().remove(&key).await?;
            done(json);
            Ok(())
        }
        Cmd::Mkdir { key, ttl_ms, .. } => {
            let c = client();
            match ttl_ms {
                Some(ms) => c.mkdir_temp(&key, Duration::from_millis(ms)).await?,
                None => c.mkdir(&key).await?,
            }
            done(json);
            Ok(())
        }
        Cmd::Ls { key, limit, after, .. } => {
            // `--after app.x` and `--after x` name the same child of `app`.
            let prefix = format!("{key}.");
            let after = after.map(|a| a.strip_prefix(&prefix).map(str::to_owned).unwrap_or(a));
            let (children, more) = client().list_page(&key, limit, after.as_deref()).await?;
            print_children(&children, json);
            if more {
                if let Some(last) = children.last() {
                    eprintln!("more children remain; continue with --after {}", last.name);
                }
            }
            Ok(())
        }
        Cmd::Cas { key, expect, new, .. } => {
            client().compare_and_set(&key, expect.map(Bytes::from), new.map(Bytes::from)).await?;
            done(json);
            Ok(())
        }
        Cmd::Watch { key, subtree, after, count, .. } => {
            let mut stream = client().watch(&key, subtree, after);
            let mut seen = 0u64;
            loop {
                let event = tokio::select! {
                    e = stream.next() => e,
                    _ = shutdown_signal() => return Ok(()),
                };
                match event {
                    Some(Ok(e)) => print_event(&e, json),
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(Failure::Other("watch stream ended".into())),
                }
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    return Ok(());
                }
            }
        }
        Cmd::Lock { key, lease_ms, wait_ms, hold_ms, .. } => {
            let c = client();
            let lease = Duration::from_millis(lease_ms);
            match c.try_lock(&key, lease, Duration::from_millis(wait_ms)).await? {
                LockOutcome::Acquired => {}
                LockOutcome::Queued { position } => {
                    eprintln!("waiting for lock {key:?} (position {position} in line)");
                    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
                    loop {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if let LockOutcome::Acquired =
                            c.try_lock(&key, lease, Duration::from_millis(wait_ms)).await?
                        {
                            break;
                        }
                        if tokio::time::Instant::now() >= deadline {
                            return Err(Failure::Other(format!(
                                "lock {key:?} not acquired within {wait_ms} ms"
                            )));
                        }
                    }
                }
            }
            if json {
                print_json(&serde_json::json!({ "lock": key, "held": true, "client_id": c.client_id() }));
            } else {
                println!("acquired lock {key} (client {})", c.client_id());
            }
            let hold = async {
                match hold_ms {
                    Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                    None => shutdown_signal().await,
                }
            };
            tokio::pin!(hold);
            loop {
                tokio::select! {
                    _ = &mut hold => break,
                    _ = tokio::time::sleep(lease / 3) => c.update_lease(&key, lease).await?,
                }
            }
            c.unlock(&key).await?;
            if !json {
                println!("released lock {key}");
            }
            Ok(())
        }
        Cmd::Status { all_groups, .. } => {
            // Each unreachable endpoint is reported once, in place; the exit
            // code says whether every endpoint answered.
            let c = client();
            let mut down = 0;
            for (i, endpoint) in endpoints.iter().enumerate() {
                match c.status_of(i).await {
                    Ok(s) => print_status(*endpoint, &s, json, all_groups),
                    Err(e) => {
                        down += 1;
                        if json {
                            let endpoint = endpoint.to_string();
                            print_json(
                                &serde_json::json!({ "endpoint": endpoint, "unreachable": e.to_string() }),
                            );
                        } else {
                            println!("{endpoint}: UNREACHABLE ({e})");
                        }
                    }
                }
            }
            if down > 0 {
                return Err(Failure::Quiet(format!("{down} of {} endpoints unreachable", endpoints.len())));
            }
            Ok(())
        }
        Cmd::Top { interval_ms, iterations, once, rows, .. } => {
            let iterations = if once { Some(1) } else { iterations };
            top_cmd(client(), &endpoints, Duration::from_millis(interval_ms), iterations, rows, json).await
        }
        Cmd::TransferLeader { to, .. } => {
            client().transfer_leader(to).await?;
            done(json);
            Ok(())
        }
        Cmd::Group(GroupCmd::Add { id: (first, last), voters, .. }) => {
            if voters.is_empty() {
                return Err(Failure::Other("--voters is required, e.g. --voters 1,2,3".into()));
            }
            if first == last {
                client().add_group(first, voters).await?;
            } else {
                client().add_groups(first, last, voters).await?;
            }
            done(json);
            Ok(())
        }
        Cmd::Group(GroupCmd::Remove { id, yes, .. }) => {
            if !yes {
                let default =
                    if id == DEFAULT_GROUP { " (the default group, where `tarn put` writes)" } else { "" };
                return Err(Failure::Other(format!(
                    "`group remove {id}` deletes group {id}{default} and all its data on every endpoint ({}); it cannot be undone. Add --yes to confirm",
                    endpoints.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",")
                )));
            }
            client().remove_group(id).await?;
            done(json);
            Ok(())
        }
        Cmd::Member(cmd) => {
            let change = match cmd {
                MemberCmd::Add { id, peer_addr, learner, .. } => {
                    client().add_member(id, peer_addr, learner).await?;
                    done(json);
                    return Ok(());
                }
                MemberCmd::Forget { id, .. } => {
                    client().forget_peer(id).await?;
                    done(json);
                    return Ok(());
                }
                MemberCmd::Remove { id, .. } => MemberChange::Remove(id),
                MemberCmd::Promote { id, .. } => MemberChange::Promote(id),
            };
            client().change_membership(vec![change]).await?;
            done(json);
            Ok(())
        }
        Cmd::Bench(args) => bench_cmd(args, client_config, json).await,
    }
}

async fn serve(args: ServeArgs) -> Result<(), Failure> {
    let cluster: BTreeMap<NodeId, SocketAddr> = args.cluster.iter().copied().collect();
    if cluster.len() != args.cluster.len() {
        return Err(Failure::Other("--cluster lists a node id twice".into()));
    }
    let mut config = if args.join {
        if !cluster.is_empty() {
            return Err(Failure::Other(
                "--join and --cluster exclude each other: a joining node learns the cluster from --join-endpoints"
                    .into(),
            ));
        }
        let Some(peer) = args.peer else {
            return Err(Failure::Other("--join needs --peer: the address other nodes connect to".into()));
        };
        let mut c = ServerConfig::single(&args.data_dir, args.client);
        c.peer_addr = Some(peer);
        c.join = Some(args.join_endpoints.clone().unwrap_or_else(|| vec![default_client_addr()]));
        c
    } else if cluster.is_empty() {
        if args.peer.is_some() {
            return Err(Failure::Other(
                "--peer needs --cluster (the list of every voter's peer address)".into(),
            ));
        }
        ServerConfig::single(&args.data_dir, args.client)
    } else {
        let mut c = ServerConfig::cluster(args.id, &args.data_dir, args.client, cluster);
        if args.peer.is_some() {
            c.peer_addr = args.peer;
        }
        c
    };
    config.node_id = args.id;
    config.cluster_id = args.cluster_id;
    config.write_mode = args.write_mode.write_mode();
    config.election_timeout_ms = args.election_timeout_ms;
    config.heartbeat_interval_ms = args.heartbeat_ms;
    config.quiesce = !args.no_quiesce;
    config.heartbeat_coalesce_ms = args.heartbeat_coalesce_ms;
    config.snapshot_after_entries = args.snapshot_after_entries.unwrap_or(config.snapshot_after_entries);
    config.snapshot_after_bytes = args.snapshot_after_bytes.unwrap_or(config.snapshot_after_bytes);
    config.log_keep_tail_entries = args.log_keep_tail_entries.unwrap_or(config.log_keep_tail_entries);
    config.metrics_addr = args.metrics_addr;
    let client = args.join_security.client().map_err(Failure::Other)?;
    config.security = cli_security::server_security(&args.security, client, &config)?;
    if let Some(table) = &config.security.auth {
        cli_security::reload_auth_on_sighup(table.clone());
    }
    let server = Server::start(config).await.map_err(|e| e.to_string())?;
    // JSON logs are for machines: every stderr line must be a JSON object,
    // and the log lines already say all this.
    let text = args.log_format == LogFormat::Text;
    if text {
        eprintln!(
            "tarn node {} serving clients on {} (Ctrl-C to stop)",
            server.node_id(),
            server.client_addr()
        );
        if let Some(addr) = server.metrics_addr() {
            eprintln!("metrics at http://{addr}/metrics");
        }
    }
    shutdown_signal().await;
    if text {
        eprintln!("shutting down: flushing and syncing");
    }
    server.shutdown().await;
    Ok(())
}

/// The value of `tarn put`: the argument, stdin (`-`) or a file.
fn put_value(value: Option<String>, file: Option<PathBuf>) -> Result<Bytes, Failure> {
    match (value, file) {
        (Some(v), None) if v == "-" => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                .map_err(|e| Failure::Other(format!("cannot read the value from stdin: {e}")))?;
            Ok(buf.into())
        }
        (Some(v), None) => Ok(v.into()),
        (None, Some(f)) => std::fs::read(&f)
            .map(Bytes::from)
            .map_err(|e| Failure::Other(format!("cannot read the value from {}: {e}", f.display()))),
        // clap enforces exactly one of them.
        _ => Err(Failure::Other("give a VALUE, `-` for stdin, or --file F".into())),
    }
}

/// Mixed into the cluster id of `tarn cluster`, so a hand-started cluster on
/// the same addresses (same `--cluster` text) never shares its id.
const LOCAL_CLUSTER_ID_SALT: u64 = 0x7461_726e_2d6c_6f63; // "tarn-loc"

/// Starts `nodes` servers on consecutive ports and returns them.
async fn start_local_cluster(
    nodes: u64,
    client_port: impl Fn(u64) -> u16,
    peer_port: impl Fn(u64) -> u16,
    data_dir: &std::path::Path,
    write_mode: WriteMode,
    tweak: impl Fn(&mut ServerConfig),
) -> Result<Vec<Server>, Failure> {
    if nodes == 0 {
        return Err(Failure::Other("--nodes must be at least 1".into()));
    }
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let cluster: BTreeMap<NodeId, SocketAddr> =
        if nodes == 1 { BTreeMap::new() } else { (1..=nodes).map(|i| (i, local(peer_port(i)))).collect() };
    let mut servers = Vec::new();
    for i in 1..=nodes {
        let dir = data_dir.join(format!("n{i}"));
        let mut config = if nodes == 1 {
            ServerConfig::single(&dir, local(client_port(i)))
        } else {
            ServerConfig::cluster(i, &dir, local(client_port(i)), cluster.clone())
        };
        config.cluster_id = Some(config.effective_cluster_id() ^ LOCAL_CLUSTER_ID_SALT);
        config.write_mode = write_mode;
        tweak(&mut config);
        servers.push(Server::start(config).await.map_err(|e| e.to_string())?);
    }
    Ok(servers)
}

/// Where node `node` (1-based) of `tarn cluster --metrics-addr ADDR` serves
/// its metrics: ADDR's port + node - 1, or ADDR itself for port 0 (each node
/// binds a free port). `None` past port 65535.
fn node_metrics_addr(addr: SocketAddr, node: NodeId) -> Option<SocketAddr> {
    if addr.port() == 0 {
        return Some(addr);
    }
    let port = u64::from(addr.port()).checked_add(node.checked_sub(1)?)?;
    Some(SocketAddr::new(addr.ip(), u16::try_from(port).ok()?))
}

/// Client port, peer port: base+i and base+100+i, or free ports for base 0.
fn local_cluster_ports(
    base_port: u16,
    nodes: u64,
) -> Result<(impl Fn(u64) -> u16, impl Fn(u64) -> u16), Failure> {
    let last_peer_port = u64::from(base_port) + 100 + nodes;
    if base_port != 0 && last_peer_port > u64::from(u16::MAX) {
        return Err(Failure::Other(format!(
            "--base-port {base_port} with {nodes} nodes needs peer ports up to {last_peer_port}, past 65535"
        )));
    }
    // Both fit a u16 for i <= nodes: checked just above.
    let port = move |offset: u64, i: u64| {
        if base_port == 0 {
            0
        } else {
            (u64::from(base_port) + offset + i) as u16
        }
    };
    let peer = move |i: u64| if base_port == 0 { free_port(i) } else { port(100, i) };
    Ok((move |i| port(0, i), peer))
}

async fn cluster(args: ClusterArgs) -> Result<(), Failure> {
    let ClusterArgs {
        nodes,
        base_port,
        data_dir,
        metrics_addr,
        no_quiesce,
        heartbeat_coalesce_ms,
        heartbeat_ms,
    } = args;
    if let Some(addr) = metrics_addr {
        if node_metrics_addr(addr, nodes.max(1)).is_none() {
            return Err(Failure::Other(format!(
                "--metrics-addr {addr} with {nodes} nodes needs ports {}..{}, past 65535",
                addr.port(),
                u64::from(addr.port()) + nodes.saturating_sub(1)
            )));
        }
    }
    let (client_port, peer_port) = local_cluster_ports(base_port, nodes)?;
    let servers = start_local_cluster(nodes, client_port, peer_port, &data_dir, WriteMode::Sync, |c| {
        c.metrics_addr = metrics_addr.and_then(|addr| node_metrics_addr(addr, c.node_id));
        c.quiesce = !no_quiesce;
        c.heartbeat_coalesce_ms = heartbeat_coalesce_ms;
        c.heartbeat_interval_ms = heartbeat_ms;
    })
    .await?;
    let endpoints: Vec<String> = servers.iter().map(|s| s.client_addr().to_string()).collect();
    println!("tarn cluster of {nodes} nodes, data in {}", data_dir.display());
    for s in &servers {
        let metrics = s.metrics_addr().map_or(String::new(), |a| format!(", metrics http://{a}/metrics"));
        println!("node {}: client {}{metrics}", s.node_id(), s.client_addr());
    }
    println!("endpoints: {}", endpoints.join(","));
    println!("try: tarn --endpoints {} status", endpoints.join(","));
    shutdown_signal().await;
    eprintln!("shutting down");
    for s in servers {
        s.shutdown().await;
    }
    Ok(())
}

async fn bench_cmd(args: BenchArgs, mut client_config: ClientConfig, json: bool) -> Result<(), Failure> {
    let mut servers = Vec::new();
    let _tmp;
    if args.snapshot_after_entries.is_some() && !args.embedded {
        return Err(Failure::Other(
            "--snapshot-after-entries sets the servers that --embedded starts; for a running cluster use `tarn serve --snapshot-after-entries`".into(),
        ));
    }
    if args.embedded {
        let dir = std::env::temp_dir().join(format!("tarn-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let snapshot_after = args.snapshot_after_entries;
        servers = start_local_cluster(
            args.nodes,
            |_| 0,
            free_port,
            &dir,
            args.write_mode.write_mode(),
            |c| {
                if let Some(n) = snapshot_after {
                    c.snapshot_after_entries = n;
                }
            },
        )
        .await?;
        client_config.endpoints = servers.iter().map(|s| s.client_addr()).collect();
        _tmp = RemoveOnDrop(dir);
        if args.groups > 1 {
            let voters: Vec<NodeId> = (1..=args.nodes).collect();
            Client::new(client_config.clone()).add_groups(2, args.groups, voters).await?;
        }
    }
    let config = BenchConfig {
        connections: args.connections,
        in_flight: args.in_flight,
        get_ratio: args.get_ratio,
        keys: args.keys,
        value_size_bytes: args.value_size,
        duration: Duration::from_secs(args.duration_s),
        warmup: Duration::from_secs(args.warmup_s),
        consistency: if args.stale { Consistency::Stale } else { Consistency::Linearizable },
        groups: args.groups,
        prefill: args.prefill,
    };
    eprintln!(
        "bench: {} connection(s), {} in flight, {:.0}% gets, {} keys over {} group(s){}, {}-byte values, {} s + {} s warm-up{}",
        config.connections,
        config.in_flight,
        config.get_ratio * 100.0,
        config.keys,
        config.groups,
        if config.prefill { " (prefilled)" } else { "" },
        config.value_size_bytes,
        args.duration_s,
        args.warmup_s,
        if args.embedded {
            let snapshots = args.snapshot_after_entries.map_or(String::new(), |n| format!(", snapshot every {n} entries"));
            format!(", embedded {} node(s), {:?} writes{snapshots}", args.nodes, args.write_mode)
        } else {
            String::new()
        }
    );
    let report = bench::run(client_config, config).await?;
    if json {
        print_json(&report);
    } else {
        println!("{report}");
    }
    for s in servers {
        s.shutdown().await;
    }
    Ok(())
}

/// `tarn top`: samples every endpoint's status each `interval` (all at
/// once), prints a frame, until `iterations` frames or Ctrl-C.
async fn top_cmd(
    client: Client,
    endpoints: &[SocketAddr],
    interval: Duration,
    iterations: Option<u64>,
    rows: usize,
    json: bool,
) -> Result<(), Failure> {
    use std::io::IsTerminal;
    let clear_screen = !json && std::io::stdout().is_terminal();
    let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    let mut before: Option<top::Sample> = None;
    let mut shown = 0u64;
    loop {
        let at = tokio::time::Instant::now();
        let asks: Vec<_> = (0..endpoints.len())
            .map(|i| {
                let c = client.clone();
                tokio::spawn(async move { c.status_of(i).await.map_err(|e| e.to_string()) })
            })
            .collect();
        let mut nodes = Vec::with_capacity(endpoints.len());
        for (endpoint, ask) in endpoints.iter().zip(asks) {
            nodes.push((*endpoint, ask.await.unwrap_or_else(|e| Err(format!("status request failed: {e}")))));
        }
        let sample = top::Sample { at: at.into_std(), nodes };
        let frame = top::frame(before.as_ref(), &sample, rows);
        if json {
            print_json(&frame);
        } else {
            if clear_screen {
                print!("\x1b[H\x1b[2J");
            } else if shown > 0 {
                println!();
            }
            print!("{}", top::render(&frame, interval_ms));
        }
        shown += 1;
        if iterations.is_some_and(|n| shown >= n) {
            let down = frame.nodes.iter().filter(|n| !n.up).count();
            if down > 0 {
                return Err(Failure::Quiet(format!("{down} of {} endpoints unreachable", endpoints.len())));
            }
            return Ok(());
        }
        before = Some(sample);
        tokio::select! {
            _ = tokio::time::sleep_until(at + interval) => {}
            _ = shutdown_signal() => return Ok(()),
        }
    }
}

/// A free peer port for embedded clusters: the OS picks one and we release
/// it right away (a small race, acceptable for a local benchmark).
fn free_port(_: u64) -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ----- output ---------------------------------------------------------------------------

fn done(json: bool) {
    if json {
        print_json(&serde_json::json!({ "ok": true }));
    } else {
        println!("ok");
    }
}

/// One JSON object on one line (`--json`: one object per line).
fn print_json<T: serde::Serialize + ?Sized>(value: &T) {
    match serde_json::to_string(value) {
        Ok(line) => println!("{line}"),
        // Only a non-string map key or a failing Serialize impl can fail,
        // and the output types here have neither.
        Err(e) => eprintln!("error: cannot write JSON output: {e}"),
    }
}

fn kind_name(k: NodeKind) -> &'static str {
    match k {
        NodeKind::Value => "value",
        NodeKind::Dir => "dir",
        NodeKind::Lock => "lock",
    }
}

/// A key and its node, as `--json` prints it.
#[derive(serde::Serialize)]
struct NodeJson<'a> {
    key: &'a str,
    kind: &'static str,
    value: std::borrow::Cow<'a, str>,
    create_index: u64,
    update_index: u64,
    owner: Option<u64>,
}

impl<'a> NodeJson<'a> {
    fn new(key: &'a str, n: &'a NodeView) -> Self {
        NodeJson {
            key,
            kind: kind_name(n.kind),
            value: String::from_utf8_lossy(&n.value),
            create_index: n.create_index,
            update_index: n.update_index,
            owner: n.temp.map(|t| t.owner),
        }
    }
}

fn print_node(key: &str, n: &NodeView, json: bool) {
    if json {
        print_json(&NodeJson::new(key, n));
    } else {
        match n.kind {
            NodeKind::Value => println!("{}", String::from_utf8_lossy(&n.value)),
            NodeKind::Dir => println!("{key}/ (directory)"),
            NodeKind::Lock => println!("{key} (lock held by client {})", n.temp.map_or(0, |t| t.owner)),
        }
    }
}

fn print_children(children: &[ChildView], json: bool) {
    for c in children {
        if json {
            print_json(&NodeJson::new(&c.name, &c.node));
        } else if c.node.kind == NodeKind::Dir {
            println!("{}/", c.name);
        } else {
            println!("{}", c.name);
        }
    }
}

/// A watch event, as `--json` prints it.
#[derive(serde::Serialize)]
struct EventJson<'a> {
    index: u64,
    key: &'a str,
    event: &'static str,
    value: Option<String>,
}

fn print_event(e: &WatchEvent, json: bool) {
    let (kind, value) = match &e.kind {
        EventKind::Put { value } => ("put", Some(String::from_utf8_lossy(value).into_owned())),
        EventKind::DirCreated => ("mkdir", None),
        EventKind::Removed => ("removed", None),
        EventKind::LockHolder { holder } => ("lock-holder", Some(holder.to_string())),
    };
    if json {
        print_json(&EventJson { index: e.index, key: &e.key, event: kind, value });
    } else {
        match value {
            Some(v) => println!("{} {kind} {} {v}", e.index, e.key),
            None => println!("{} {kind} {}", e.index, e.key),
        }
    }
}

/// One node's status, as `--json` prints it.
#[derive(serde::Serialize)]
struct StatusJson<'a> {
    endpoint: String,
    node: u64,
    cluster_id: u64,
    first_start: Option<&'a str>,
    groups: Vec<GroupJson<'a>>,
    /// In the server's order (a map keyed by counter name).
    counters: serde_json::Map<String, serde_json::Value>,
}

#[derive(serde::Serialize)]
struct GroupJson<'a> {
    group: u64,
    role: &'a str,
    term: u64,
    leader: Option<u64>,
    commit: u64,
    applied: u64,
    last_index: u64,
    voters: &'a [u64],
    learners: &'a [u64],
    rejoining: bool,
    followers: Vec<FollowerJson>,
}

#[derive(serde::Serialize)]
struct FollowerJson {
    id: u64,
    #[serde(rename = "match")]
    matched: u64,
    lag: u64,
    reachable: bool,
}

/// Above this many groups, `tarn status` prints a summary per node.
const STATUS_GROUPS_LISTED_MAX: usize = 20;

fn print_status(endpoint: SocketAddr, s: &NodeStatus, json: bool, all_groups: bool) {
    if json {
        let groups = s
            .groups
            .iter()
            .map(|g| GroupJson {
                group: g.group,
                role: &g.role,
                term: g.term,
                leader: g.leader,
                commit: g.commit,
                applied: g.applied,
                last_index: g.last_log_id.index,
                voters: &g.voters,
                learners: &g.learners,
                rejoining: g.rejoining,
                followers: g
                    .followers
                    .iter()
                    .map(|&(id, matched, lag, reachable)| FollowerJson { id, matched, lag, reachable })
                    .collect(),
            })
            .collect();
        let counters = s.counters.iter().map(|(k, v)| (k.clone(), serde_json::Value::from(*v))).collect();
        print_json(&StatusJson {
            endpoint: endpoint.to_string(),
            node: s.node_id,
            cluster_id: s.cluster_id,
            first_start: s.first_start.as_deref(),
            groups,
            counters,
        });
        return;
    }
    println!("node {} at {endpoint} (cluster {:#x})", s.node_id, s.cluster_id);
    if let Some(note) = &s.first_start {
        println!("  {note}");
    }
    if !all_groups && s.groups.len() > STATUS_GROUPS_LISTED_MAX {
        print_group_summary(s);
    } else {
        print_groups(s);
    }
    let counters: Vec<String> = s.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("  counters: {}", counters.join(" "));
}

/// Many groups in a few lines: how many in each role, and where it is worst.
fn print_group_summary(s: &NodeStatus) {
    let mut roles: BTreeMap<&str, usize> = BTreeMap::new();
    for g in &s.groups {
        let member = g.voters.contains(&s.node_id) || g.learners.contains(&s.node_id);
        *roles.entry(if member { g.role.as_str() } else { "NotAMember" }).or_default() += 1;
    }
    let roles: Vec<String> = roles.iter().map(|(r, n)| format!("{r} {n}")).collect();
    println!("  {} groups: {} (--all-groups lists them)", s.groups.len(), roles.join(", "));
    let worst = s
        .groups
        .iter()
        .flat_map(|g| g.followers.iter().map(move |f| (g.group, f)))
        .max_by_key(|(_, (_, _, lag, connected))| (!connected, *lag));
    if let Some((g, (id, m, lag, connected))) = worst {
        let how =
            if *connected { format!("lag {lag} entries") } else { format!("UNREACHABLE (last match {m})") };
        println!("  worst follower: group {g} follower {id}, {how}");
    }
    let no_leader: Vec<u64> = s.groups.iter().filter(|g| g.leader.is_none()).map(|g| g.group).collect();
    if !no_leader.is_empty() {
        println!(
            "  without a leader: {} groups, e.g. {:?}",
            no_leader.len(),
            &no_leader[..no_leader.len().min(10)]
        );
    }
    let troubled: Vec<String> = s
        .groups
        .iter()
        .filter(|g| g.rejoining || g.error.is_some())
        .take(10)
        .map(|g| format!("group {}: {}", g.group, g.error.as_deref().unwrap_or("REJOINING")))
        .collect();
    for t in troubled {
        println!("  {t}");
    }
}

fn print_groups(s: &NodeStatus) {
    for g in &s.groups {
        // A node outside the configuration keeps a role (a removed voter
        // campaigns in vain as PreCandidate); what matters is that it is out.
        let member = g.voters.contains(&s.node_id) || g.learners.contains(&s.node_id);
        println!(
            "  group {}: {} term {} leader {} commit {} applied {} last {} voters {:?} learners {:?}{}{}",
            g.group,
            if member { g.role.as_str() } else { "NOT A MEMBER (removed, or not yet added)" },
            g.term,
            g.leader.map_or("none".into(), |l| l.to_string()),
            g.commit,
            g.applied,
            g.last_log_id.index,
            g.voters,
            g.learners,
            if g.rejoining {
                " REJOINING (does not vote yet; promote it only after this clears)"
            } else {
                ""
            },
            g.error.as_deref().map_or(String::new(), |e| format!(" ERROR: {e}"))
        );
        for (id, m, lag, connected) in &g.followers {
            if *connected {
                println!("    follower {id}: match {m}, lag {lag} entries");
            } else {
                println!("    follower {id}: UNREACHABLE (no connection; last known match {m})");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag and argument of every subcommand says what it is for.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "tarn", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
        assert_eq!(default_client_addr().to_string(), DEFAULT_CLIENT_ADDR);
    }

    fn parse(args: &[&str]) -> Result<Cmd, clap::Error> {
        resolve(Cli::try_parse_from(std::iter::once("tarn").chain(args.iter().copied()))?)
    }

    fn addrs(s: &str) -> Option<Vec<SocketAddr>> {
        Some(s.split(',').map(|a| a.parse().expect("test address")).collect())
    }

    fn client_of(cmd: Cmd) -> ClientArgs {
        let mut cmd = cmd;
        cmd.client_args_mut().expect("a client command").clone()
    }

    #[test]
    fn client_flags_go_before_or_after_the_command_and_after_wins() {
        let before = client_of(parse(&["--endpoints", "127.0.0.1:1", "--json", "get", "k"]).unwrap());
        let after = client_of(parse(&["get", "k", "--endpoints", "127.0.0.1:1", "--json"]).unwrap());
        assert_eq!(before, after);
        assert_eq!(before.endpoints, addrs("127.0.0.1:1"));
        let both = client_of(
            parse(&["--endpoints", "127.0.0.1:1", "--group", "2", "get", "k", "--endpoints", "127.0.0.1:2"])
                .unwrap(),
        );
        assert_eq!((both.endpoints, both.group), (addrs("127.0.0.1:2"), Some(2)));
        let nested = client_of(parse(&["group", "add", "3", "--voters", "1", "--timeout-ms", "5"]).unwrap());
        assert_eq!(nested.timeout_ms, Some(5));
        let defaults = client_of(parse(&["status"]).unwrap());
        assert_eq!(defaults.endpoints(), vec![default_client_addr()]);
        assert_eq!(defaults.config().request_timeout, Duration::from_millis(CLIENT_TIMEOUT_MS_DEFAULT));
    }

    fn join_endpoints(cmd: Cmd) -> Option<Vec<SocketAddr>> {
        match cmd {
            Cmd::Serve(args) => args.join_endpoints,
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn serve_takes_the_cluster_to_join_in_every_documented_form() {
        let a = addrs("127.0.0.1:1,127.0.0.1:2");
        let forms: [&[&str]; 3] = [
            &["serve", "--join", "--join-endpoints", "127.0.0.1:1,127.0.0.1:2"],
            &["serve", "--join", "--endpoints", "127.0.0.1:1,127.0.0.1:2"],
            &["--endpoints", "127.0.0.1:1,127.0.0.1:2", "serve", "--join"],
        ];
        for form in forms {
            assert_eq!(join_endpoints(parse(form).unwrap()), a, "{form:?}");
        }
        assert_eq!(join_endpoints(parse(&["serve"]).unwrap()), None);
    }

    #[test]
    fn local_cluster_nodes_get_consecutive_metrics_ports_or_free_ones() {
        let at = |s: &str| -> SocketAddr { s.parse().expect("test address") };
        assert_eq!(node_metrics_addr(at("127.0.0.1:9100"), 1), Some(at("127.0.0.1:9100")));
        assert_eq!(node_metrics_addr(at("127.0.0.1:9100"), 3), Some(at("127.0.0.1:9102")));
        assert_eq!(node_metrics_addr(at("0.0.0.0:0"), 3), Some(at("0.0.0.0:0")));
        assert_eq!(node_metrics_addr(at("127.0.0.1:65535"), 1), Some(at("127.0.0.1:65535")));
        assert_eq!(node_metrics_addr(at("127.0.0.1:65535"), 2), None);
        let Ok((client, peer)) = local_cluster_ports(7700, 3) else { panic!("7700 fits") };
        assert_eq!((client(1), client(3), peer(1), peer(3)), (7701, 7703, 7801, 7803));
        let Ok((client, peer)) = local_cluster_ports(0, 3) else { panic!("0 fits") };
        assert_eq!(client(2), 0, "the OS picks the client port");
        assert_ne!(peer(2), 0, "a free peer port, known before the nodes start");
        assert!(local_cluster_ports(65500, 3).is_err());
    }

    #[test]
    fn client_flags_with_a_server_command_are_usage_errors() {
        let refused: [&[&str]; 7] = [
            &["--json", "serve"],
            &["serve", "--json"],
            &["--endpoints", "127.0.0.1:1", "serve"],
            &["serve", "--join-endpoints", "127.0.0.1:1"],
            &["--endpoints", "127.0.0.1:1", "serve", "--join", "--join-endpoints", "127.0.0.1:2"],
            &["--timeout-ms", "5", "cluster"],
            &["cluster", "--group", "2"],
        ];
        for args in refused {
            let e = parse(args).expect_err(&format!("{args:?} must be refused"));
            assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
        }
    }

    #[test]
    fn tls_and_token_flags_go_before_or_after_a_client_command_and_reach_serve_join_only() {
        let security = |cmd: Cmd| match cmd {
            Cmd::Get { client, .. } => client.security,
            Cmd::Serve(args) => args.join_security,
            other => panic!("unexpected command {other:?}"),
        };
        for form in [
            &["--cacert", "ca.crt", "--token", "t", "get", "k"][..],
            &["get", "k", "--cacert", "ca.crt", "--token", "t"],
            &["--token", "old", "get", "k", "--cacert", "ca.crt", "--token", "t"],
            &["--cacert", "ca.crt", "--token", "t", "serve", "--join"],
            &["serve", "--join", "--cacert", "ca.crt", "--token", "t"],
        ] {
            let s = security(parse(form).unwrap_or_else(|e| panic!("{form:?}: {e}")));
            assert_eq!(s.cacert.as_deref(), Some(std::path::Path::new("ca.crt")), "{form:?}");
            assert_eq!(s.token.as_deref(), Some("t"), "{form:?}: the flag after the command wins");
        }
        for refused in [
            &["--token", "t", "serve"][..],
            &["--cacert", "ca.crt", "cluster"],
            &["--token", "t", "cert", "init", "dir"],
        ] {
            let e = parse(refused).expect_err(&format!("{refused:?} must be refused"));
            assert_eq!(e.exit_code(), 2, "{refused:?}: {e}");
        }
    }
}
