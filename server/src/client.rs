//! The async client library.
//!
//! A [`Client`] talks to a cluster through a list of endpoints (client
//! addresses). It finds the leader of its group and caches it, follows
//! `NotLeader` hints, and retries on timeouts and broken connections until
//! the request's deadline. Every write carries the client's session
//! `(client id, seq)`: a retried write keeps its seq, so the state machine
//! applies it once and answers the retry with the first result.
//!
//! Reads are linearizable by default; [`Client::get_with`] takes
//! [`Consistency::Stale`] for a fast read of whatever the contacted node has
//! applied.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tarn_server::client::ClientError> {
//! use tarn_server::client::{Client, ClientConfig};
//! let client = Client::new(ClientConfig::new(vec!["127.0.0.1:7700".parse().unwrap()]));
//! client.put("app.greeting", "hello").await?;
//! let node = client.get("app.greeting").await?.expect("just written");
//! assert_eq!(&node.value[..], b"hello");
//! # Ok(()) }
//! ```
//!
//! Against a server with TLS and an auth file, set
//! [`ClientConfig::security`]: a CA (and, where the server asks for one, a
//! client certificate) and a token.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tarn_core::{GroupId, Index, Nanos, NodeId};
use tarn_io::wire::{self, FrameDecoder};
use tarn_kv::{ChildView, ClientId, Command, KvError, LockOutcome, NodeView, Reply, Request, WatchEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use tarn_service::retry::{self, Backoff, LeaderMove, Next, Route};

use crate::protocol::{
    ClientFrame, Consistency, MemberChange, NodeStatus, RequestBody, ResponseBody, ServerError, ServerFrame,
    DEFAULT_GROUP, MAX_CLIENT_FRAME_BYTES, MAX_GROUPS_PER_REQUEST,
};
use crate::security::ClientSecurity;

/// How a client behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Client addresses of the cluster's nodes (any subset; at least one).
    pub endpoints: Vec<SocketAddr>,
    /// The Raft group requests go to.
    pub group: GroupId,
    /// A request (with all its retries) gives up after this long.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long the first try of a request waits for its endpoint (connect,
    /// hello and answer) before trying another; each try that times out
    /// doubles it, up to what is left of `request_timeout`. About one
    /// election timeout: a frozen leader (SIGSTOP, a stalled VM) is replaced
    /// that fast, and the client should be at the new one by then, not still
    /// waiting on the old. Membership changes wait longer (they are not safe
    /// to send twice at once).
    pub attempt_timeout: Duration,
    /// First pause before a retry when no usable leader answered (an
    /// election is running, an endpoint is down). Pauses double up to
    /// `retry_backoff_max` and are drawn uniformly below that bound (full
    /// jitter), so clients of a leaderless cluster neither hammer the
    /// survivors nor retry in lockstep. Each request starts over at this value.
    pub retry_backoff: Duration,
    /// The largest pause between retries.
    pub retry_backoff_max: Duration,
    /// The session id; random by default. Reuse one only within one process.
    pub client_id: Option<ClientId>,
    /// Once the client has written, a keep-alive write goes out whenever no
    /// write was sent for this long, so that an idle session is not
    /// forgotten (the server forgets a session after `KvConfig::
    /// session_ttl_nanos`, 10 min by default, without a write). Keep it well
    /// below the session TTL; `None` turns keep-alives off.
    pub keep_alive_interval: Option<Duration>,
    /// The servers' `max_entry_bytes`: a write whose entry would be larger is
    /// refused here with `KvError::RequestTooLarge`, before it takes a seq
    /// (the server refuses it too, but a refused first write would leave the
    /// session unborn and the next write "session expired").
    pub max_entry_bytes: usize,
    /// TLS to the client port and the bearer token (default: plaintext, no
    /// token). A certificate or token the server refuses fails the request
    /// at once (no retries): retrying cannot fix it.
    pub security: ClientSecurity,
}

/// Default [`ClientConfig::keep_alive_interval`]: a tenth of the server's
/// default session TTL.
pub const DEFAULT_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(60);

/// Default [`ClientConfig::attempt_timeout`]: a bit above the server's
/// default election timeout (300-600 ms), so a healthy but busy leader is
/// rarely abandoned and a frozen one is left about when its successor is up.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);

/// Per-try wait for a membership change: it completes only after the joint
/// step commits, and a second copy sent while the first runs is refused, so
/// it is not cut short like other requests.
const MEMBERSHIP_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// The latest deadline a client computes: `Instant + Duration` panics on
/// overflow, so a huge `--timeout-ms` means "about a century" instead.
fn deadline_after(start: Instant, wait: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    start.checked_add(wait.min(CENTURY)).unwrap_or(start)
}

impl ClientConfig {
    pub fn new(endpoints: Vec<SocketAddr>) -> Self {
        ClientConfig {
            endpoints,
            group: DEFAULT_GROUP,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            retry_backoff: Duration::from_millis(10),
            retry_backoff_max: Duration::from_millis(200),
            client_id: None,
            keep_alive_interval: Some(DEFAULT_KEEP_ALIVE_INTERVAL),
            max_entry_bytes: tarn_core::MAX_ENTRY_BYTES_DEFAULT,
            security: ClientSecurity::default(),
        }
    }
}

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The state machine refused the command (changed nothing).
    #[error("{0}")]
    Kv(KvError),
    /// The server refused the request itself.
    #[error("{0}")]
    Server(ServerError),
    #[error("no answer within {waited_ms} ms from {endpoints} (last problem: {last})")]
    Timeout { waited_ms: u64, endpoints: String, last: String },
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A duration does not fit the wire's 64-bit nanoseconds (`as u64`
    /// would wrap it into a tiny one: a TTL of ~584 years expiring at once).
    #[error("{what} of {given_ms} ms for key {key:?} is out of range: the longest the server accepts is {max_ms} ms ({max_days} days) by default")]
    DurationOutOfRange { what: &'static str, key: String, given_ms: u128, max_ms: u64, max_days: u64 },
    /// An endpoint is a node's peer port: a configuration mistake, reported
    /// at once instead of retried until the deadline.
    #[error("{addr} is a peer port (of node {node}), not a client port; give --endpoints the nodes' --client addresses")]
    PeerPort { addr: SocketAddr, node: NodeId },
    /// The request does not fit one client frame, so no server could read
    /// it; refused before anything was sent (and, for a write, before it
    /// took a session seq).
    #[error("request encodes to {bytes} bytes, more than the {max}-byte client frame limit; nothing was sent: split it into smaller requests (fewer keys per batch, smaller values)")]
    RequestTooLarge { bytes: usize, max: usize },
    /// TLS with an endpoint failed for a reason retrying cannot fix: its
    /// certificate does not chain to the CA given, names another host, has
    /// expired, or the server refused this client's certificate.
    #[error("TLS with {addr} failed: {reason}")]
    Tls { addr: SocketAddr, reason: String },
    /// A token would cross the network in plaintext: refused before
    /// connecting, so that no one on the path can capture it.
    #[error(
        "refusing to send a token to {addr} without TLS: pass --cacert (the server needs --tls-cert), \
         or reach the server on a loopback address"
    )]
    PlaintextToken { addr: SocketAddr },
}

impl ClientError {
    /// True for "key does not exist" (the CLI's own exit code).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Kv(KvError::NotFound { .. }))
    }
}

/// Refuses `body` for `group` if its frame would exceed
/// [`MAX_CLIENT_FRAME_BYTES`]: the connection's writer could not frame it,
/// and the caller would wait for an answer until its timeout.
fn check_frame_fits(group: GroupId, body: &RequestBody) -> Result<(), ClientError> {
    // The largest request id: the real frame is at most this long.
    let frame = ClientFrame { id: u64::MAX, group, body: body.clone() };
    let bytes = wire::frame_body_bytes(&frame)
        .map_err(|e| ClientError::Protocol(format!("cannot encode the request: {e}")))?;
    if bytes > MAX_CLIENT_FRAME_BYTES {
        return Err(ClientError::RequestTooLarge { bytes, max: MAX_CLIENT_FRAME_BYTES });
    }
    Ok(())
}

/// `d` in the nanoseconds a command carries, refused (never wrapped) when it
/// does not fit in a u64.
fn checked_nanos(what: &'static str, key: &str, d: Duration) -> Result<Nanos, ClientError> {
    u64::try_from(d.as_nanos()).map_err(|_| {
        let max_ms = tarn_kv::KvConfig::default().max_ttl_nanos / 1_000_000;
        ClientError::DurationOutOfRange {
            what,
            key: key.to_owned(),
            given_ms: d.as_millis(),
            max_ms,
            max_days: max_ms / (24 * 3600 * 1000),
        }
    })
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<ResponseBody, ServerError>>>>>;
type WatchRoutes = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<WatchMsg>>>>;

enum WatchMsg {
    Events(Vec<WatchEvent>),
    Ended(String),
}

/// What to tell the user about a TLS refusal.
fn tls_advice(e: &rustls::Error) -> String {
    use rustls::{AlertDescription, CertificateError, Error};
    let advice = match e {
        Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            "the server's certificate does not chain to --cacert (is it the cluster's CA?)"
        }
        Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "the server's certificate has expired"
        }
        Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }) => {
            "the server's certificate does not name the address dialed (add it when making the certificate, or pass --tls-server-name)"
        }
        Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "the server requires a client certificate: pass --cert and --key"
        }
        Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateExpired
            | AlertDescription::DecryptError,
        ) => "the server refused this client's certificate (expired, or not from its --tls-ca)",
        Error::AlertReceived(AlertDescription::NoApplicationProtocol) => {
            "the server does not speak the client protocol here (a peer port?)"
        }
        _ => "",
    };
    if advice.is_empty() {
        e.to_string()
    } else {
        format!("{e}: {advice}")
    }
}

/// Why no connection to an endpoint could be used.
#[derive(Debug)]
enum OpenError {
    /// Worth retrying (refused, reset, no hello in time): the node may come back.
    Retry(String),
    /// Retrying cannot help (a peer port): give up on the request now.
    Fatal(ClientError),
}

/// One connection to one node, shared by every request to it.
struct Conn {
    tx: mpsc::UnboundedSender<ClientFrame>,
    pending: Pending,
    watches: WatchRoutes,
    closed: Arc<AtomicBool>,
    node_id: NodeId,
}

impl Conn {
    async fn open(
        addr: SocketAddr,
        connect_timeout: Duration,
        next_id: &AtomicU64,
        security: &ClientSecurity,
    ) -> Result<Conn, OpenError> {
        let retry = OpenError::Retry;
        let loopback = match addr.ip() {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(v6.is_loopback(), |v4| v4.is_loopback()),
            ip => ip.is_loopback(),
        };
        if security.token.is_some() && security.tls.is_none() && !loopback {
            return Err(OpenError::Fatal(ClientError::PlaintextToken { addr }));
        }
        let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| retry(format!("connect to {addr} timed out")))?
            .map_err(|e| retry(format!("connect to {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let stream = match &security.tls {
            None => tarn_io::transport::stream::Stream::Tcp(tcp),
            Some(tls) => match tokio::time::timeout(connect_timeout, tls.connect(tcp, addr)).await {
                Err(_) => return Err(retry(format!("TLS handshake with {addr} timed out"))),
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => match crate::security::tls::tls_refusal(&e) {
                    Some(refusal) => {
                        return Err(OpenError::Fatal(ClientError::Tls { addr, reason: tls_advice(refusal) }))
                    }
                    None => return Err(retry(format!("TLS handshake with {addr}: {e}"))),
                },
            },
        };
        let (mut reader, mut writer) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<ClientFrame>();
        let pending: Pending = Arc::default();
        let watches: WatchRoutes = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        // What the server said when it closed the connection on its own
        // (an answer with id 0), e.g. "this is a peer port".
        let farewell: Arc<Mutex<Option<ServerError>>> = Arc::default();
        // Dropped when the writer ends (every sender gone, or the socket
        // broke): the reader then stops too, so a connection abandoned
        // mid-hello (a frozen node) does not keep a task and socket alive.
        let (writer_done, mut writer_gone) = oneshot::channel::<()>();
        let c = closed.clone();
        tokio::spawn(async move {
            let _writer_done = writer_done;
            let mut buf = Vec::with_capacity(64 * 1024);
            while let Some(frame) = rx.recv().await {
                // Let concurrent requests queue up: one syscall for many.
                tokio::task::yield_now().await;
                buf.clear();
                let mut next = Some(frame);
                while let Some(f) = next.take() {
                    // Every request was measured before it was queued
                    // (`check_frame_fits`); this cannot fail, but say so if it does.
                    if let Err(e) = wire::encode_frame(&f, MAX_CLIENT_FRAME_BYTES, &mut buf) {
                        tracing::error!(id = f.id, error = %e, "dropping a request that cannot be framed");
                    }
                    if buf.len() < 1024 * 1024 {
                        next = rx.try_recv().ok();
                    }
                }
                // A TLS stream may hold back what `write_all` took until flushed.
                if writer.write_all(&buf).await.is_err() || writer.flush().await.is_err() {
                    break;
                }
            }
            c.store(true, Ordering::Relaxed);
        });
        // Why TLS ended the connection, if it did.
        let tls_failure: Arc<Mutex<Option<String>>> = Arc::default();
        let tls_failure_slot = tls_failure.clone();
        let (p, w, c, f) = (pending.clone(), watches.clone(), closed.clone(), farewell.clone());
        tokio::spawn(async move {
            let tls_failure = tls_failure_slot;
            let mut decoder = FrameDecoder::new(MAX_CLIENT_FRAME_BYTES);
            'read: loop {
                loop {
                    match decoder.next_frame::<ServerFrame>() {
                        Ok(Some(ServerFrame::Response { id: 0, result: Err(e) })) => {
                            // Not an answer to a request: why the server closes.
                            if let Ok(mut f) = f.lock() {
                                *f = Some(e);
                            }
                        }
                        Ok(Some(ServerFrame::Response { id, result })) => {
                            let waiter = p.lock().ok().and_then(|mut p| p.remove(&id));
                            if let Some(waiter) = waiter {
                                let _ = waiter.send(result);
                            }
                        }
                        Ok(Some(ServerFrame::Watch { id, events })) => {
                            if let Some(route) = w.lock().ok().and_then(|w| w.get(&id).cloned()) {
                                let _ = route.send(WatchMsg::Events(events));
                            }
                        }
                        Ok(Some(ServerFrame::WatchEnded { id, reason })) => {
                            if let Some(route) = w.lock().ok().and_then(|mut w| w.remove(&id)) {
                                let _ = route.send(WatchMsg::Ended(reason));
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(%addr, error = %e, "bad frame from server; dropping the connection");
                            break 'read;
                        }
                    }
                }
                let read = tokio::select! {
                    r = reader.read_buf(decoder.buffer_mut()) => r,
                    _ = &mut writer_gone => break,
                };
                match read {
                    Ok(0) => break,
                    Err(e) => {
                        // TLS refusing this client after the handshake (TLS
                        // 1.3 checks the client's certificate then): say why.
                        if let Some(refusal) = crate::security::tls::tls_refusal(&e) {
                            if let Ok(mut t) = tls_failure.lock() {
                                *t = Some(tls_advice(refusal));
                            }
                        }
                        break;
                    }
                    Ok(_) => {}
                }
            }
            c.store(true, Ordering::Relaxed);
            // Waiters and watchers learn the connection is gone.
            if let Ok(mut p) = p.lock() {
                p.clear();
            }
            if let Ok(mut w) = w.lock() {
                for (_, route) in w.drain() {
                    let _ = route.send(WatchMsg::Ended(format!("connection to {addr} closed")));
                }
            }
        });
        let mut conn = Conn { tx, pending, watches, closed, node_id: 0 };
        let tls_refused = || {
            let reason = tls_failure.lock().ok().and_then(|t| t.clone())?;
            Some(OpenError::Fatal(ClientError::Tls { addr, reason }))
        };
        if let Some(token) = &security.token {
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            let body = RequestBody::Authenticate { token: token.clone() };
            match tokio::time::timeout(connect_timeout, conn.call(id, 0, body)).await {
                Ok(Ok(Ok(ResponseBody::Authenticated { enabled, .. }))) => {
                    if !enabled {
                        tracing::warn!(%addr, "the server checks no tokens (started without --auth-file); the token was ignored");
                    }
                }
                Ok(Ok(Err(e))) => return Err(OpenError::Fatal(ClientError::Server(e))),
                Ok(Ok(Ok(other))) => {
                    return Err(retry(format!("{addr} answered authenticate with {other:?}")))
                }
                Ok(Err(e)) => return Err(tls_refused().unwrap_or_else(|| retry(format!("{addr}: {e}")))),
                Err(_) => return Err(retry(format!("{addr} did not answer authenticate in time"))),
            }
        }
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let hello = tokio::time::timeout(connect_timeout, conn.call(id, 0, RequestBody::Hello)).await;
        match farewell.lock().ok().and_then(|f| f.clone()) {
            Some(ServerError::PeerPort { node }) => {
                return Err(OpenError::Fatal(ClientError::PeerPort { addr, node }))
            }
            Some(e @ ServerError::Unauthenticated { .. }) => {
                return Err(OpenError::Fatal(ClientError::Server(e)))
            }
            _ => {}
        }
        if let Some(refused) = tls_refused() {
            return Err(refused);
        }
        match hello {
            Ok(Ok(Ok(ResponseBody::Hello { node_id, .. }))) => conn.node_id = node_id,
            Ok(Ok(Err(ServerError::PeerPort { node }))) => {
                return Err(OpenError::Fatal(ClientError::PeerPort { addr, node }))
            }
            Ok(Ok(Err(e @ (ServerError::Unauthenticated { .. } | ServerError::PermissionDenied { .. })))) => {
                return Err(OpenError::Fatal(ClientError::Server(e)))
            }
            Ok(Ok(other)) => return Err(retry(format!("{addr} answered hello with {other:?}"))),
            Ok(Err(e)) => return Err(retry(format!("{addr}: {e}"))),
            Err(_) => return Err(retry(format!("{addr} did not answer hello in time"))),
        }
        Ok(conn)
    }

    /// Sends one request; the outer error means the connection is gone.
    async fn call(
        &self,
        id: u64,
        group: GroupId,
        body: RequestBody,
    ) -> Result<Result<ResponseBody, ServerError>, String> {
        let (reply, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id, reply);
        }
        if self.tx.send(ClientFrame { id, group, body }).is_err() {
            return Err("connection closed".into());
        }
        rx.await.map_err(|_| "connection closed".to_string())
    }
}

struct Inner {
    config: ClientConfig,
    client_id: ClientId,
    next_request_id: AtomicU64,
    next_seq: AtomicU64,
    /// Seqs sent but not yet answered: the lowest is `first_unacked_seq`.
    outstanding: Mutex<BTreeSet<u64>>,
    conns: Mutex<HashMap<SocketAddr, Arc<Conn>>>,
    /// Index into `endpoints` of the node believed to lead.
    leader: AtomicUsize,
    /// Which endpoint is which node (learned from hellos).
    node_endpoints: Mutex<HashMap<NodeId, usize>>,
    /// When the last write was sent, in ms since `created` (0: never).
    last_write_ms: AtomicU64,
    /// Tries sent to endpoints, retries included (see [`Client::attempts`]).
    attempts: AtomicU64,
    created: Instant,
}

/// An async client of a tarn cluster. Cheap to clone; clones share
/// connections and the session.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

fn random_client_id() -> ClientId {
    // Not cryptographic: a session id only needs to differ between clients.
    let t =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut x = (t as u64) ^ ((std::process::id() as u64) << 32) ^ (&t as *const _ as u64);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x.max(1)
}

impl Client {
    /// A client of the cluster at `config.endpoints`. Connects lazily. Inside
    /// a tokio runtime it also starts the session keep-alive task, which ends
    /// when the last clone of the client is dropped.
    pub fn new(config: ClientConfig) -> Client {
        let client_id = config.client_id.unwrap_or_else(random_client_id);
        let keep_alive = config.keep_alive_interval;
        let client = Client {
            inner: Arc::new(Inner {
                config,
                client_id,
                next_request_id: AtomicU64::new(1),
                next_seq: AtomicU64::new(1),
                outstanding: Mutex::default(),
                conns: Mutex::default(),
                leader: AtomicUsize::new(0),
                node_endpoints: Mutex::default(),
                last_write_ms: AtomicU64::new(0),
                attempts: AtomicU64::new(0),
                created: Instant::now(),
            }),
        };
        if let (Some(interval), Ok(runtime)) = (keep_alive, tokio::runtime::Handle::try_current()) {
            runtime.spawn(keep_alive_task(Arc::downgrade(&client.inner), interval));
        }
        client
    }

    fn note_write(&self) {
        // Never 0 once written: 0 means "no write yet".
        let ms = u64::try_from(self.inner.created.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        self.inner.last_write_ms.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn client_id(&self) -> ClientId {
        self.inner.client_id
    }

    /// The same session on another group.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    async fn conn(&self, endpoint: usize) -> Result<Arc<Conn>, OpenError> {
        let addr = self.inner.config.endpoints[endpoint];
        if let Some(c) = self.cached_conn(endpoint) {
            if !c.closed.load(Ordering::Relaxed) {
                return Ok(c);
            }
        }
        let config = &self.inner.config;
        let conn = Arc::new(
            Conn::open(addr, config.connect_timeout, &self.inner.next_request_id, &config.security).await?,
        );
        if let Ok(mut n) = self.inner.node_endpoints.lock() {
            n.insert(conn.node_id, endpoint);
        }
        if let Ok(mut c) = self.inner.conns.lock() {
            c.insert(addr, conn.clone());
        }
        Ok(conn)
    }

    fn cached_conn(&self, endpoint: usize) -> Option<Arc<Conn>> {
        let addr = self.inner.config.endpoints[endpoint];
        self.inner.conns.lock().ok().and_then(|c| c.get(&addr).cloned())
    }

    fn forget(&self, endpoint: usize) {
        let addr = self.inner.config.endpoints[endpoint];
        if let Ok(mut c) = self.inner.conns.lock() {
            c.remove(&addr);
        }
    }

    /// How many tries this client has sent to endpoints so far, retries
    /// included (each try at one endpoint counts once). Bounded during
    /// failures by the backoff: a test and an operator can check that a
    /// leaderless cluster is not flooded.
    pub fn attempts(&self) -> u64 {
        self.inner.attempts.load(Ordering::Relaxed)
    }

    /// A backoff for one request or stream, seeded so that clients differ.
    fn backoff(&self) -> Backoff {
        let salt = self.inner.next_request_id.fetch_add(1, Ordering::Relaxed);
        let c = &self.inner.config;
        Backoff::new(c.retry_backoff, c.retry_backoff_max, self.inner.client_id ^ salt.rotate_left(32))
    }

    /// Sends `body` to the group's leader (or, with `any_node`, to whichever
    /// node answers), retrying until the request timeout.
    async fn request(&self, body: RequestBody, any_node: bool) -> Result<ResponseBody, ClientError> {
        self.request_to(self.inner.config.group, body, any_node).await
    }

    /// [`Client::request`] for group `group` instead of the configured one.
    ///
    /// Each try gets `attempt_timeout` (doubling after every try that timed
    /// out) for connecting and answering, so a frozen leader costs about one
    /// election timeout, not the whole request. A try that learns nothing
    /// useful (refused connection, no leader known, the leader hint names the
    /// node that just timed out) is followed by a jittered, doubling pause;
    /// following a fresh leader hint is immediate, once in a row.
    async fn request_to(
        &self,
        group: GroupId,
        body: RequestBody,
        any_node: bool,
    ) -> Result<ResponseBody, ClientError> {
        let config = &self.inner.config;
        if config.endpoints.is_empty() {
            return Err(ClientError::Invalid("no endpoints given".into()));
        }
        check_frame_fits(group, &body)?;
        let start = Instant::now();
        let deadline = deadline_after(start, config.request_timeout);
        let n = config.endpoints.len();
        let mut last = String::from("none");
        let attempt_timeout = match body {
            RequestBody::ChangeMembership { .. } => config.attempt_timeout.max(MEMBERSHIP_ATTEMPT_TIMEOUT),
            _ => config.attempt_timeout,
        };
        // Which endpoint next, when, and which hints to trust: the shared
        // decisions (`tarn_service::retry::Route`), so the simulator's
        // clients retry the same way. A try's wait is capped by the deadline.
        let mut route = Route::new(self.backoff(), attempt_timeout, Duration::MAX, n);
        loop {
            let endpoint = self.inner.leader.load(Ordering::Relaxed) % n;
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout {
                    waited_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                    endpoints: config.endpoints.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","),
                    last,
                });
            }
            self.inner.attempts.fetch_add(1, Ordering::Relaxed);
            let try_next = |leader: &AtomicUsize| {
                let _ = leader.compare_exchange(
                    endpoint,
                    (endpoint + 1) % n,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            };
            let id = self.inner.next_request_id.fetch_add(1, Ordering::Relaxed);
            let per_try = (deadline - now).min(route.attempt_timeout());
            let outcome = tokio::time::timeout(per_try, async {
                let conn = self.conn(endpoint).await?;
                let answer = conn.call(id, group, body.clone()).await.map_err(OpenError::Retry)?;
                Ok::<_, OpenError>((conn, answer))
            })
            .await;
            let retry = match outcome {
                Err(_) => {
                    if let Some(conn) = self.cached_conn(endpoint) {
                        if let Ok(mut p) = conn.pending.lock() {
                            p.remove(&id);
                        }
                    }
                    last = format!(
                        "{} did not answer within {} ms",
                        config.endpoints[endpoint],
                        per_try.as_millis()
                    );
                    route.timed_out(endpoint)
                }
                Ok(Err(OpenError::Fatal(e))) => return Err(e),
                Ok(Err(OpenError::Retry(e))) => {
                    last = format!("{}: {e}", config.endpoints[endpoint]);
                    self.forget(endpoint);
                    route.unreachable(endpoint)
                }
                Ok(Ok((conn, answer))) => {
                    let error = match answer {
                        Ok(body) => return Ok(body),
                        Err(error) => error,
                    };
                    let hint = match retry::after_error(&error) {
                        Next::Redirect(Some(l)) => {
                            self.inner.node_endpoints.lock().ok().and_then(|e| e.get(&l).copied())
                        }
                        _ => None,
                    };
                    last = match &error {
                        ServerError::NotLeader { .. } => format!("node {} is not the leader", conn.node_id),
                        ServerError::MaybeCommitted { .. } => "leadership changed during the request".into(),
                        ServerError::Unavailable { reason } => reason.clone(),
                        other => other.to_string(),
                    };
                    match route.refused(endpoint, &error, hint, any_node) {
                        Some(retry) => retry,
                        None => {
                            return Err(match error {
                                ServerError::PeerPort { node } => {
                                    ClientError::PeerPort { addr: config.endpoints[endpoint], node }
                                }
                                e => ClientError::Server(e),
                            })
                        }
                    }
                }
            };
            match retry.leader {
                LeaderMove::Stay => {}
                LeaderMove::Next => try_next(&self.inner.leader),
                LeaderMove::To(e) => self.inner.leader.store(e, Ordering::Relaxed),
            }
            if !retry.pause.is_zero() {
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(retry.pause.min(left)).await;
            }
        }
    }

    /// Runs `command` as a write: through the log, exactly once.
    pub async fn write(&self, command: Command) -> Result<Reply, ClientError> {
        self.write_in(self.inner.config.group, command).await
    }

    /// [`Client::write`] in group `group` (same session). Only for groups
    /// where this client's session lives (its own group, or system writes):
    /// a session is per group, so a client talks to one group
    /// (`ClientConfig::group`); use one client per group.
    async fn write_in(&self, group: GroupId, command: Command) -> Result<Reply, ClientError> {
        // Checked here for a fast, clear error, and again on the server;
        // before taking a seq, so that a refused command never moves the
        // session's first unacknowledged seq past 1 before anything was sent
        // (the server would then answer the first real write "session
        // expired").
        let mut request = Request { client_id: self.inner.client_id, seq: 1, first_unacked_seq: 1, command };
        request.validate_from_client(&tarn_kv::KvConfig::default()).map_err(ClientError::Kv)?;
        request.check_fits_entry(self.inner.config.max_entry_bytes).map_err(ClientError::Kv)?;
        // Measured with the largest seqs, before taking one (values are
        // `Bytes`: the clone copies no payload).
        let widest = Request { seq: u64::MAX, first_unacked_seq: u64::MAX, ..request.clone() };
        check_frame_fits(group, &RequestBody::Write(widest))?;
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        let first_unacked_seq = {
            let mut o =
                self.inner.outstanding.lock().map_err(|_| ClientError::Protocol("poisoned".into()))?;
            o.insert(seq);
            // Invariant: `seq` was inserted just above, so the set is not empty.
            *o.iter().next().expect("just inserted")
        };
        request.seq = seq;
        request.first_unacked_seq = first_unacked_seq;
        self.note_write();
        let r = self.request_to(group, RequestBody::Write(request), false).await;
        if let Ok(mut o) = self.inner.outstanding.lock() {
            // A timed-out write stays outstanding only until we give up on it:
            // its result is unknown to us either way.
            o.remove(&seq);
        }
        match r? {
            ResponseBody::Kv(Ok(reply)) => Ok(reply),
            ResponseBody::Kv(Err(e)) => Err(ClientError::Kv(e)),
            other => Err(ClientError::Protocol(format!("write answered with {other:?}"))),
        }
    }

    /// Runs a read command (`Get`, `BatchGet`, `List`).
    pub async fn read(&self, command: Command, consistency: Consistency) -> Result<Reply, ClientError> {
        let any = consistency == Consistency::Stale;
        match self.request(RequestBody::Read { command, consistency }, any).await? {
            ResponseBody::Kv(Ok(reply)) => Ok(reply),
            ResponseBody::Kv(Err(e)) => Err(ClientError::Kv(e)),
            other => Err(ClientError::Protocol(format!("read answered with {other:?}"))),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<NodeView>, ClientError> {
        self.get_with(key, Consistency::Linearizable).await
    }

    pub async fn get_with(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<NodeView>, ClientError> {
        match self.read(Command::Get { key: key.into() }, consistency).await? {
            Reply::Node(n) => Ok(n),
            other => Err(ClientError::Protocol(format!("get answered with {other:?}"))),
        }
    }

    pub async fn batch_get(
        &self,
        keys: Vec<String>,
    ) -> Result<Vec<Result<Option<NodeView>, KvError>>, ClientError> {
        match self.read(Command::BatchGet { keys }, Consistency::Linearizable).await? {
            Reply::Nodes(n) => Ok(n),
            other => Err(ClientError::Protocol(format!("batch get answered with {other:?}"))),
        }
    }

    /// Every child of directory `key`, in one reply: a listing too large
    /// for a client frame fails with `ServerError::ReplyTooLarge`; page it
    /// with [`Client::list_page`].
    pub async fn list(&self, key: &str) -> Result<Vec<ChildView>, ClientError> {
        self.list_page(key, None, None).await.map(|(children, _)| children)
    }

    /// At most `limit` children of `key` whose name (last segment) sorts
    /// after `after`, and whether more remain: pass the last name returned as
    /// the next `after` to walk a directory of any size.
    pub async fn list_page(
        &self,
        key: &str,
        limit: Option<u32>,
        after: Option<&str>,
    ) -> Result<(Vec<ChildView>, bool), ClientError> {
        let command = Command::List { key: key.into(), limit, after: after.map(str::to_owned) };
        match self.read(command, Consistency::Linearizable).await? {
            Reply::Children { children, more } => Ok((children, more)),
            other => Err(ClientError::Protocol(format!("list answered with {other:?}"))),
        }
    }

    pub async fn put(&self, key: &str, value: impl Into<Bytes>) -> Result<(), ClientError> {
        self.write(Command::Put { key: key.into(), value: value.into() }).await.map(drop)
    }

    pub async fn remove(&self, key: &str) -> Result<(), ClientError> {
        self.write(Command::Remove { key: key.into() }).await.map(drop)
    }

    pub async fn mkdir(&self, key: &str) -> Result<(), ClientError> {
        self.write(Command::Mkdir { key: key.into() }).await.map(drop)
    }

    pub async fn batch_put(
        &self,
        items: Vec<(String, Bytes)>,
    ) -> Result<Vec<Result<(), KvError>>, ClientError> {
        match self.write(Command::BatchPut { items }).await? {
            Reply::Batch(b) => Ok(b),
            other => Err(ClientError::Protocol(format!("batch put answered with {other:?}"))),
        }
    }

    pub async fn batch_remove(&self, keys: Vec<String>) -> Result<Vec<Result<(), KvError>>, ClientError> {
        match self.write(Command::BatchRemove { keys }).await? {
            Reply::Batch(b) => Ok(b),
            other => Err(ClientError::Protocol(format!("batch remove answered with {other:?}"))),
        }
    }

    /// Compare-and-set: `expected: None` creates only if absent, `new: None`
    /// deletes if the value equals `expected`.
    pub async fn compare_and_set(
        &self,
        key: &str,
        expected: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<(), ClientError> {
        self.write(Command::CompareAndSet { key: key.into(), expected, new }).await.map(drop)
    }

    /// A temporary value owned by this client's session, removed when its
    /// TTL passes without [`Client::update_ttl`].
    pub async fn put_temp(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        ttl: Duration,
    ) -> Result<(), ClientError> {
        let ttl_nanos = checked_nanos("TTL", key, ttl)?;
        self.write(Command::PutTemp { key: key.into(), value: value.into(), ttl_nanos }).await.map(drop)
    }

    pub async fn mkdir_temp(&self, key: &str, ttl: Duration) -> Result<(), ClientError> {
        let ttl_nanos = checked_nanos("TTL", key, ttl)?;
        self.write(Command::MkdirTemp { key: key.into(), ttl_nanos }).await.map(drop)
    }

    /// Re-arms this client's temporary node `key`: it expires `ttl` from now
    /// unless renewed again.
    pub async fn update_ttl(&self, key: &str, ttl: Duration) -> Result<(), ClientError> {
        let ttl_nanos = checked_nanos("TTL", key, ttl)?;
        self.write(Command::UpdateTtl { key: key.into(), ttl_nanos }).await.map(drop)
    }

    /// Re-arms the temporary node `key` whoever owns it (`tarn ttl`): it
    /// expires `ttl` from now unless renewed again; its value and owner stay.
    /// Fails with [`KvError::NotFound`] if `key` is missing,
    /// [`KvError::NotTemporary`] if it has no TTL, [`KvError::IsALock`] for a
    /// lock (renew a lock's lease with [`Client::update_lease`]).
    pub async fn renew_ttl(&self, key: &str, ttl: Duration) -> Result<(), ClientError> {
        let ttl_nanos = checked_nanos("TTL", key, ttl)?;
        self.write(Command::RenewTtl { key: key.into(), ttl_nanos }).await.map(drop)
    }

    /// Tries to take the lock at `key` for `lease`; queues for up to `wait`
    /// (zero: do not queue).
    pub async fn try_lock(
        &self,
        key: &str,
        lease: Duration,
        wait: Duration,
    ) -> Result<LockOutcome, ClientError> {
        let command = Command::TryLock {
            key: key.into(),
            lease_nanos: checked_nanos("lease", key, lease)?,
            wait_nanos: checked_nanos("lock wait", key, wait)?,
        };
        match self.write(command).await? {
            Reply::Lock(outcome) => Ok(outcome),
            other => Err(ClientError::Protocol(format!("try-lock answered with {other:?}"))),
        }
    }

    pub async fn unlock(&self, key: &str) -> Result<(), ClientError> {
        self.write(Command::Unlock { key: key.into() }).await.map(drop)
    }

    pub async fn update_lease(&self, key: &str, lease: Duration) -> Result<(), ClientError> {
        let lease_nanos = checked_nanos("lease", key, lease)?;
        self.write(Command::UpdateLease { key: key.into(), lease_nanos }).await.map(drop)
    }

    /// Holds the lock at `key` for as long as the returned handle lives:
    /// acquires (waiting in line), renews the lease every third of it, calls
    /// `on_acquired` each time the lock is won and `on_lost` each time it is
    /// lost (lease not renewed in time), and re-acquires after a loss.
    pub fn auto_lock(
        &self,
        key: &str,
        lease: Duration,
        on_acquired: impl Fn() + Send + Sync + 'static,
        on_lost: impl Fn() + Send + Sync + 'static,
    ) -> AutoLock {
        let client = self.clone();
        let key = key.to_string();
        let held = Arc::new(AtomicBool::new(false));
        let h = held.clone();
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let k = key.clone();
        let task = tokio::spawn(async move {
            let renew_every = lease / 3;
            let mut last_renewed = Instant::now();
            loop {
                let step = async {
                    if h.load(Ordering::Relaxed) {
                        match client.update_lease(&k, lease).await {
                            Ok(()) => last_renewed = Instant::now(),
                            Err(ClientError::Kv(_)) => {
                                h.store(false, Ordering::Relaxed);
                                on_lost();
                            }
                            Err(_) if last_renewed.elapsed() >= lease => {
                                h.store(false, Ordering::Relaxed);
                                on_lost();
                            }
                            Err(_) => {}
                        }
                    } else if let Ok(LockOutcome::Acquired) = client.try_lock(&k, lease, lease).await {
                        last_renewed = Instant::now();
                        h.store(true, Ordering::Relaxed);
                        on_acquired();
                    }
                };
                tokio::select! {
                    _ = step => {}
                    _ = &mut stop_rx => break,
                }
                tokio::select! {
                    _ = tokio::time::sleep(renew_every) => {}
                    _ = &mut stop_rx => break,
                }
            }
            if h.swap(false, Ordering::Relaxed) {
                let _ = client.unlock(&k).await;
            }
        });
        AutoLock { key, held, stop: Some(stop_tx), task: Some(task) }
    }

    /// Streams every event on `key` (or its subtree) after `after_index`
    /// (`None`: from now). The stream survives node failures: it reconnects
    /// to another endpoint and resumes after the last index it delivered.
    pub fn watch(&self, key: &str, subtree: bool, after_index: Option<Index>) -> WatchStream {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = self.clone();
        let key = key.to_string();
        let task = tokio::spawn(async move {
            let mut after = after_index;
            let body = RequestBody::Watch { key: key.clone(), subtree, after_index: after };
            if let Err(e) = check_frame_fits(client.inner.config.group, &body) {
                let _ = tx.send(Err(e));
                return;
            }
            let n = client.inner.config.endpoints.len().max(1);
            let mut endpoint = client.inner.leader.load(Ordering::Relaxed) % n;
            // Reset once a watch is established: a long outage backs off to
            // the maximum pause, a blip reconnects at once.
            let mut backoff = client.backoff();
            loop {
                if tx.is_closed() {
                    return;
                }
                let conn = match client.conn(endpoint).await {
                    Ok(c) => c,
                    Err(OpenError::Fatal(e)) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    Err(OpenError::Retry(_)) => {
                        endpoint = (endpoint + 1) % n;
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                };
                let id = client.inner.next_request_id.fetch_add(1, Ordering::Relaxed);
                let (route_tx, mut route_rx) = mpsc::unbounded_channel();
                if let Ok(mut w) = conn.watches.lock() {
                    w.insert(id, route_tx);
                }
                let body = RequestBody::Watch { key: key.clone(), subtree, after_index: after };
                let r = tokio::time::timeout(
                    Duration::from_secs(5),
                    conn.call(id, client.inner.config.group, body),
                )
                .await;
                match r {
                    Ok(Ok(Ok(ResponseBody::Watching { after_index }))) => {
                        // A watch "from now" resumes from where it started,
                        // even if no event arrived before a reconnect.
                        after = Some(after.map_or(after_index, |a| a.max(after_index)));
                        backoff.reset();
                    }
                    Ok(Ok(Err(
                        e @ (ServerError::BadRequest { .. }
                        | ServerError::PermissionDenied { .. }
                        | ServerError::Unauthenticated { .. }),
                    ))) => {
                        // Retrying cannot help: the request or the credential is refused.
                        let _ = tx.send(Err(ClientError::Server(e)));
                        return;
                    }
                    _ => {
                        if let Ok(mut w) = conn.watches.lock() {
                            w.remove(&id);
                        }
                        // The registration may still land (late, or it did
                        // and the answer was lost): the node would feed a
                        // watch nobody reads until the connection closes.
                        let _ = conn.tx.send(ClientFrame {
                            id: client.inner.next_request_id.fetch_add(1, Ordering::Relaxed),
                            group: client.inner.config.group,
                            body: RequestBody::Unwatch { watch_request_id: id },
                        });
                        endpoint = (endpoint + 1) % n;
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                }
                while let Some(msg) = route_rx.recv().await {
                    match msg {
                        WatchMsg::Events(events) => {
                            for e in events {
                                after = Some(after.map_or(e.index, |a| a.max(e.index)));
                                if tx.send(Ok(e)).is_err() {
                                    let _ = conn.tx.send(ClientFrame {
                                        id: client.inner.next_request_id.fetch_add(1, Ordering::Relaxed),
                                        group: client.inner.config.group,
                                        body: RequestBody::Unwatch { watch_request_id: id },
                                    });
                                    return;
                                }
                            }
                        }
                        WatchMsg::Ended(reason) => {
                            tracing::debug!(%reason, "watch ended; resuming");
                            break;
                        }
                    }
                }
                if let Ok(mut w) = conn.watches.lock() {
                    w.remove(&id);
                }
                endpoint = (endpoint + 1) % n;
                tokio::time::sleep(backoff.next_delay()).await;
            }
        });
        WatchStream { rx, task }
    }

    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        self.status_of(self.inner.leader.load(Ordering::Relaxed) % self.inner.config.endpoints.len().max(1))
            .await
    }

    /// Status of the node at `endpoints[endpoint]`.
    pub async fn status_of(&self, endpoint: usize) -> Result<NodeStatus, ClientError> {
        if endpoint >= self.inner.config.endpoints.len() {
            return Err(ClientError::Invalid(format!("no endpoint number {endpoint}")));
        }
        let conn = self.conn(endpoint).await.map_err(|e| match e {
            OpenError::Fatal(e) => e,
            OpenError::Retry(last) => ClientError::Timeout {
                waited_ms: u64::try_from(self.inner.config.connect_timeout.as_millis()).unwrap_or(u64::MAX),
                endpoints: self.inner.config.endpoints[endpoint].to_string(),
                last,
            },
        })?;
        let id = self.inner.next_request_id.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(
            self.inner.config.request_timeout,
            conn.call(id, self.inner.config.group, RequestBody::Status),
        )
        .await
        {
            Ok(Ok(Ok(ResponseBody::Status(s)))) => Ok(s),
            Ok(Ok(Ok(other))) => Err(ClientError::Protocol(format!("status answered with {other:?}"))),
            Ok(Ok(Err(e))) => Err(ClientError::Server(e)),
            Ok(Err(e)) => Err(ClientError::Protocol(e)),
            Err(_) => Err(ClientError::Timeout {
                waited_ms: u64::try_from(self.inner.config.request_timeout.as_millis()).unwrap_or(u64::MAX),
                endpoints: self.inner.config.endpoints[endpoint].to_string(),
                last: "status".into(),
            }),
        }
    }

    /// Asks the group's leader to hand leadership to node `to`.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), ClientError> {
        self.request(RequestBody::TransferLeader { to }, false).await.map(drop)
    }

    /// Changes the group's membership on its leader; resolves once complete.
    /// The nodes must have known peer addresses (see [`Client::add_member`]).
    pub async fn change_membership(&self, changes: Vec<MemberChange>) -> Result<(), ClientError> {
        self.request(RequestBody::ChangeMembership { changes, peers: Vec::new() }, false).await.map(drop)
    }

    /// Adds node `id` to the group, as a learner (promote it with
    /// [`Client::change_membership`] once it caught up) or a voter. With
    /// `peer_addr`, first records the address in the replicated peer
    /// directory ([`PEER_DIRECTORY`](crate::protocol::PEER_DIRECTORY) in group 1) so that every node connects
    /// to the new node, and hands it to the leader with the change.
    pub async fn add_member(
        &self,
        id: NodeId,
        peer_addr: Option<SocketAddr>,
        learner: bool,
    ) -> Result<(), ClientError> {
        let change = if learner { MemberChange::AddLearner(id) } else { MemberChange::AddVoter(id) };
        let mut peers = Vec::new();
        if let Some(addr) = peer_addr {
            // Group 1's leader writes the directory itself: the reserved
            // namespace refuses client writes. Idempotent, so retries are safe.
            self.request_to(DEFAULT_GROUP, RequestBody::RecordPeer { node: id, addr: Some(addr) }, false)
                .await?;
            peers.push((id, addr));
        }
        self.request(RequestBody::ChangeMembership { changes: vec![change], peers }, false).await.map(drop)
    }

    /// Removes node `id`'s entry from the replicated peer directory
    /// ([`PEER_DIRECTORY`](crate::protocol::PEER_DIRECTORY)), so that nodes stop dialing it (a node listed in
    /// `--cluster` keeps its address from there). For a node removed for good.
    pub async fn forget_peer(&self, id: NodeId) -> Result<(), ClientError> {
        self.request_to(DEFAULT_GROUP, RequestBody::RecordPeer { node: id, addr: None }, false)
            .await
            .map(drop)
    }

    /// Starts group `group` with `voters` on every endpoint (each must be a voter).
    pub async fn add_group(&self, group: GroupId, voters: Vec<NodeId>) -> Result<(), ClientError> {
        self.on_every_endpoint(group, RequestBody::AddGroup { voters }).await
    }

    /// Stops group `group` and deletes its data on every endpoint.
    pub async fn remove_group(&self, group: GroupId) -> Result<(), ClientError> {
        self.on_every_endpoint(group, RequestBody::RemoveGroup).await
    }

    /// Starts groups `first..=last` on every endpoint, each with `voters`,
    /// in batches of [`MAX_GROUPS_PER_REQUEST`] sent to all endpoints at
    /// once. Groups that already run with these voters are skipped, so a
    /// failed call can simply be repeated.
    pub async fn add_groups(
        &self,
        first: GroupId,
        last: GroupId,
        voters: Vec<NodeId>,
    ) -> Result<(), ClientError> {
        let mut start = first;
        loop {
            let end = last.min(start.saturating_add(MAX_GROUPS_PER_REQUEST - 1));
            let body = RequestBody::AddGroups { first: start, last: end, voters: voters.clone() };
            check_frame_fits(start, &body)?;
            let calls: Vec<_> = (0..self.inner.config.endpoints.len())
                .map(|endpoint| {
                    let (client, body) = (self.clone(), body.clone());
                    tokio::spawn(async move { client.admin_call(endpoint, start, body).await })
                })
                .collect();
            for call in calls {
                call.await.map_err(|e| ClientError::Protocol(format!("admin call task: {e}")))??;
            }
            if end >= last {
                return Ok(());
            }
            start = end + 1;
        }
    }

    async fn on_every_endpoint(&self, group: GroupId, body: RequestBody) -> Result<(), ClientError> {
        check_frame_fits(group, &body)?;
        for endpoint in 0..self.inner.config.endpoints.len() {
            self.admin_call(endpoint, group, body.clone()).await?;
        }
        Ok(())
    }

    /// One admin request to one endpoint (no leader discovery, no retry).
    async fn admin_call(
        &self,
        endpoint: usize,
        group: GroupId,
        body: RequestBody,
    ) -> Result<(), ClientError> {
        let addr = self.inner.config.endpoints[endpoint];
        let conn = self.conn(endpoint).await.map_err(|e| match e {
            OpenError::Fatal(e) => e,
            OpenError::Retry(last) => {
                ClientError::Timeout { waited_ms: 0, endpoints: addr.to_string(), last }
            }
        })?;
        let id = self.inner.next_request_id.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.inner.config.request_timeout, conn.call(id, group, body)).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(e))) => Err(ClientError::Server(e)),
            Ok(Err(e)) => Err(ClientError::Protocol(format!("{addr}: {e}"))),
            Err(_) => Err(ClientError::Timeout {
                waited_ms: u64::try_from(self.inner.config.request_timeout.as_millis()).unwrap_or(u64::MAX),
                endpoints: addr.to_string(),
                last: "admin request".into(),
            }),
        }
    }
}

/// Sends a keep-alive write whenever the session has been idle for
/// `interval`; ends with the client (it holds only a weak reference).
async fn keep_alive_task(inner: std::sync::Weak<Inner>, interval: Duration) {
    let mut next_check = interval;
    loop {
        tokio::time::sleep(next_check).await;
        let Some(inner) = inner.upgrade() else { return };
        let client = Client { inner };
        let last = client.inner.last_write_ms.load(Ordering::Relaxed);
        if last == 0 {
            // No session on the server yet: nothing to keep alive.
            next_check = interval;
            continue;
        }
        let idle = client.inner.created.elapsed().saturating_sub(Duration::from_millis(last - 1));
        if idle >= interval {
            if let Err(e) = client.write(Command::KeepAlive).await {
                tracing::warn!(client_id = client.inner.client_id, error = %e, "session keep-alive failed; retrying");
            }
            next_check = interval;
        } else {
            next_check = interval - idle;
        }
        // Dropped before sleeping: an unused client is freed.
        drop(client);
    }
}

/// A stream of watch events; dropping it stops the watch.
pub struct WatchStream {
    rx: mpsc::UnboundedReceiver<Result<WatchEvent, ClientError>>,
    task: tokio::task::JoinHandle<()>,
}

impl WatchStream {
    /// The next event, in index order, none missed.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, ClientError>> {
        self.rx.recv().await
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A lock held in the background by [`Client::auto_lock`].
pub struct AutoLock {
    key: String,
    held: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl AutoLock {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether the lock is believed held right now.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// Stops renewing and releases the lock if held.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for AutoLock {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_beyond_u64_nanoseconds_are_an_error_naming_the_limit() {
        assert_eq!(checked_nanos("TTL", "k", Duration::from_millis(5)), Ok(5_000_000));
        let err = checked_nanos("TTL", "k", Duration::from_millis(18_446_744_073_711)).unwrap_err();
        assert!(
            matches!(err, ClientError::DurationOutOfRange { given_ms: 18_446_744_073_711, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("2592000000 ms (30 days)"), "{err}");
    }

    #[test]
    fn a_request_over_the_frame_bound_is_refused_naming_both_sizes() {
        let put = |len: usize| {
            let command = Command::Put { key: "k".into(), value: Bytes::from(vec![0u8; len]) };
            RequestBody::Write(Request { client_id: 1, seq: 1, first_unacked_seq: 1, command })
        };
        assert_eq!(check_frame_fits(1, &put(1 << 20)), Ok(()));
        let err = check_frame_fits(1, &put(MAX_CLIENT_FRAME_BYTES)).unwrap_err();
        match err {
            ClientError::RequestTooLarge { bytes, max } => {
                assert!(bytes > MAX_CLIENT_FRAME_BYTES, "{bytes}");
                assert_eq!(max, MAX_CLIENT_FRAME_BYTES);
            }
            other => panic!("expected RequestTooLarge, got {other:?}"),
        }
        let text = check_frame_fits(1, &put(MAX_CLIENT_FRAME_BYTES)).unwrap_err().to_string();
        assert!(
            text.contains("nothing was sent") && text.contains("split it into smaller requests"),
            "{text}"
        );
        // The bound is exact: the largest request that fits is accepted.
        let overhead = wire::frame_body_bytes(&ClientFrame { id: u64::MAX, group: 1, body: put(0) }).unwrap();
        let largest = MAX_CLIENT_FRAME_BYTES - overhead;
        // (the value's length prefix grows by a byte or two with the value)
        assert!(check_frame_fits(1, &put(largest - 4)).is_ok());
        assert!(check_frame_fits(1, &put(largest + 1)).is_err());
    }

    #[test]
    fn deadlines_never_overflow() {
        let now = Instant::now();
        assert!(deadline_after(now, Duration::MAX) > now + Duration::from_secs(3600));
        assert_eq!(deadline_after(now, Duration::from_secs(1)), now + Duration::from_secs(1));
    }
}
