//! What clients ask for, and how it travels inside a Raft entry.
//!
//! A Raft entry's payload is opaque bytes. `KvEntry` is what tarn puts there: the leader's
//! clock at proposal time (so every node computes the same create/update times and session
//! expiries) and one or more requests. Encoding is postcard behind a version byte; decoding
//! is bounded by the input length (postcard never allocates more than the bytes it reads)
//! and by `MAX_ENTRY_SIZE_BYTES`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use tarn_core::Nanos;

use crate::config::KvConfig;
use crate::error::{DecodeError, KvError};
use crate::key::{is_reserved, validate_key, validate_key_or_root, validate_value};
use crate::response::Response;

/// Identifies a client session. Chosen by the client at random (64 bits make collisions
/// negligible); `0` is reserved for commands the leader proposes itself (expiry).
pub type ClientId = u64;

/// The client id of commands the leader proposes on its own behalf.
pub const SYSTEM_CLIENT_ID: ClientId = 0;

/// Format version of encoded entries and responses. Bump on any incompatible change.
pub const ENTRY_FORMAT_VERSION: u8 = 1;

/// Largest encoded entry or response `decode_*` accepts. Derived from the chain of limits:
/// it is the largest `max_entry_bytes` any valid core configuration allows, so every entry a
/// leader may replicate also decodes on every node.
pub const MAX_ENTRY_SIZE_BYTES: usize = tarn_core::MAX_ENTRY_BYTES_LIMIT;

/// The most bytes an encoded [`KvEntry`] adds around its requests: the version byte and the
/// varints of the leader's clock and of the request count (at most 10 bytes each). An entry
/// of `requests` encodes to at most this plus the sum of [`encoded_request_bytes`], which
/// lets the server pack requests into entries under `max_entry_bytes` without encoding twice.
pub const ENTRY_ENVELOPE_MAX_BYTES: usize = 1 + 10 + 10;

/// Exactly how many bytes `request` takes inside an encoded [`KvEntry`] (postcard's
/// size count: a walk over the request, no copying).
pub fn encoded_request_bytes(request: &Request) -> usize {
    // Counting fails only where serializing would, which plain data never does; saturate so
    // a failure refuses the request rather than admitting it.
    postcard::experimental::serialized_size(request).unwrap_or(usize::MAX)
}

/// One operation on the tree. Variants are part of the wire format: append, never reorder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Reads a node (`None` when missing). Reads normally bypass the log (ReadIndex); this
    /// variant exists for clients that prefer to send everything through one path.
    Get { key: String },
    /// Reads many keys at once, each its own result.
    BatchGet { keys: Vec<String> },
    /// Lists the direct children of a directory, in key order: those whose name (last
    /// segment) sorts after `after`, at most `limit` of them (`None`: no bound, though the reply
    /// must still fit a client frame). The reply says whether more remain, so a client pages
    /// through a large directory with the last name it got as the next `after`.
    List { key: String, limit: Option<u32>, after: Option<String> },
    /// Creates or overwrites a value node. The parent directory must exist.
    Put { key: String, value: Bytes },
    /// Removes a value node or an empty directory. A missing key is success.
    Remove { key: String },
    /// Creates a directory. An existing directory is success.
    Mkdir { key: String },
    /// Puts many keys in one entry; each item succeeds or fails on its own.
    BatchPut { items: Vec<(String, Bytes)> },
    /// Removes many keys in one entry; each item succeeds or fails on its own.
    BatchRemove { keys: Vec<String> },
    /// Compare-and-set. `expected: None` = create only if absent; `new: None` = delete if the
    /// value equals `expected`; both `None` is refused.
    CompareAndSet { key: String, expected: Option<Bytes>, new: Option<Bytes> },
    /// Creates or updates a temporary value node owned by the requesting client; (re)arms its
    /// TTL.
    PutTemp { key: String, value: Bytes, ttl_nanos: Nanos },
    /// Creates a temporary directory owned by the requesting client; its whole subtree
    /// expires with it. An existing temporary directory of the same owner is re-armed.
    MkdirTemp { key: String, ttl_nanos: Nanos },
    /// Re-arms the TTL of a temporary node (owner only).
    UpdateTtl { key: String, ttl_nanos: Nanos },
    /// Tries to take the lock at `key`: acquire now, or queue for at most `wait_nanos` (0 =
    /// do not queue). Once held, the lock is lost if not renewed within `lease_nanos`.
    TryLock { key: String, lease_nanos: Nanos, wait_nanos: Nanos },
    /// Releases a held lock (handing it to the next waiter), or leaves the wait queue.
    Unlock { key: String },
    /// Renews the lease of a held lock.
    UpdateLease { key: String, lease_nanos: Nanos },
    /// Proposed by the leader (client id 0) when a deadline passed by its clock. Applies only
    /// if the TTL at `key` is still the one armed as `arm_id`; otherwise it is a no-op.
    Expire { key: String, arm_id: u64 },
    /// Does nothing but keep the session alive (and the de-duplication window moving).
    KeepAlive,
    /// Re-arms the TTL of a temporary node (value or directory, not a lock) to `ttl_nanos`
    /// from now, whoever owns it: an operator keeps a node alive (`tarn ttl`), or a process
    /// takes over renewing what its predecessor wrote. It changes neither the value nor the
    /// owner, so it needs no ownership; [`Command::UpdateTtl`] is the owner's own renewal.
    /// Last in the enum: the encoding of the variants before it is unchanged.
    RenewTtl { key: String, ttl_nanos: Nanos },
}

impl Command {
    /// True for commands that change nothing; they skip session bookkeeping.
    pub fn is_read_only(&self) -> bool {
        matches!(self, Command::Get { .. } | Command::BatchGet { .. } | Command::List { .. })
    }

    /// The checks that need no state: key and value rules, TTL bounds, batch sizes. A client
    /// can call this before sending and a server before proposing, to refuse bad input without
    /// a log write; a command that fails here fails with the same error when applied. Batch
    /// items are not checked (each item gets its own result when applied).
    pub fn validate(&self, config: &KvConfig) -> Result<(), KvError> {
        let ttl = |key: &str, ttl_nanos: Nanos| {
            if ttl_nanos < config.min_ttl_nanos || ttl_nanos > config.max_ttl_nanos {
                return Err(KvError::InvalidTtl {
                    key: key.to_owned(),
                    ttl_nanos,
                    min_nanos: config.min_ttl_nanos,
                    max_nanos: config.max_ttl_nanos,
                });
            }
            Ok(())
        };
        let batch = |count: usize| {
            if count > config.max_batch_items {
                return Err(KvError::TooManyItems { count, max: config.max_batch_items });
            }
            Ok(())
        };
        match self {
            Command::Get { key } | Command::List { key, .. } => validate_key_or_root(key, config),
            Command::BatchGet { keys } | Command::BatchRemove { keys } => batch(keys.len()),
            Command::BatchPut { items } => batch(items.len()),
            Command::Put { key, value } => {
                validate_key(key, config)?;
                validate_value(key, value, config)
            }
            Command::Remove { key } | Command::Mkdir { key } | Command::Unlock { key } => {
                validate_key(key, config)
            }
            Command::CompareAndSet { key, expected, new } => {
                validate_key(key, config)?;
                if expected.is_none() && new.is_none() {
                    return Err(KvError::CasBothAbsent { key: key.clone() });
                }
                match new {
                    Some(new) => validate_value(key, new, config),
                    None => Ok(()),
                }
            }
            Command::PutTemp { key, value, ttl_nanos } => {
                validate_key(key, config)?;
                validate_value(key, value, config)?;
                ttl(key, *ttl_nanos)
            }
            Command::MkdirTemp { key, ttl_nanos }
            | Command::UpdateTtl { key, ttl_nanos }
            | Command::RenewTtl { key, ttl_nanos } => {
                validate_key(key, config)?;
                ttl(key, *ttl_nanos)
            }
            Command::TryLock { key, lease_nanos, wait_nanos } => {
                validate_key(key, config)?;
                ttl(key, *lease_nanos)?;
                if *wait_nanos > 0 {
                    ttl(key, *wait_nanos)?;
                }
                Ok(())
            }
            Command::UpdateLease { key, lease_nanos } => {
                validate_key(key, config)?;
                ttl(key, *lease_nanos)
            }
            Command::Expire { .. } | Command::KeepAlive => Ok(()),
        }
    }

    /// The first key this command would write that lies in the reserved namespace (`_tarn`
    /// and below), if any. Reads write nothing and return `None`; so do `Expire` (only the
    /// leader proposes it) and `KeepAlive`.
    pub fn reserved_key(&self) -> Option<&str> {
        match self {
            Command::Get { .. } | Command::BatchGet { .. } | Command::List { .. } => None,
            Command::Expire { .. } | Command::KeepAlive => None,
            Command::BatchPut { items } => items.iter().map(|(k, _)| k.as_str()).find(|k| is_reserved(k)),
            Command::BatchRemove { keys } => keys.iter().map(String::as_str).find(|k| is_reserved(k)),
            Command::Put { key, .. }
            | Command::Remove { key }
            | Command::Mkdir { key }
            | Command::CompareAndSet { key, .. }
            | Command::PutTemp { key, .. }
            | Command::MkdirTemp { key, .. }
            | Command::UpdateTtl { key, .. }
            | Command::RenewTtl { key, .. }
            | Command::TryLock { key, .. }
            | Command::Unlock { key }
            | Command::UpdateLease { key, .. } => Some(key.as_str()).filter(|k| is_reserved(k)),
        }
    }

    /// Every key this command reads or writes (what a server checks a
    /// client's key permissions against); none for `KeepAlive`.
    pub fn keys(&self) -> Vec<&str> {
        match self {
            Command::KeepAlive => Vec::new(),
            Command::BatchGet { keys } | Command::BatchRemove { keys } => {
                keys.iter().map(String::as_str).collect()
            }
            Command::BatchPut { items } => items.iter().map(|(k, _)| k.as_str()).collect(),
            Command::Get { key }
            | Command::List { key, .. }
            | Command::Put { key, .. }
            | Command::Remove { key }
            | Command::Mkdir { key }
            | Command::CompareAndSet { key, .. }
            | Command::PutTemp { key, .. }
            | Command::MkdirTemp { key, .. }
            | Command::UpdateTtl { key, .. }
            | Command::TryLock { key, .. }
            | Command::Unlock { key }
            | Command::UpdateLease { key, .. }
            | Command::RenewTtl { key, .. }
            | Command::Expire { key, .. } => vec![key.as_str()],
        }
    }

    /// Whether this is a write a system request (client id 0, proposed by a server itself,
    /// never admitted from a client) may make besides `Expire` and `KeepAlive`: a plain put,
    /// mkdir or remove in the reserved namespace (the server's peer directory). Applied with
    /// no session, like expiry.
    pub fn is_system_write(&self) -> bool {
        match self {
            Command::Put { key, .. } | Command::Mkdir { key } | Command::Remove { key } => is_reserved(key),
            _ => false,
        }
    }

    /// A short stable name, for metrics and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Get { .. } => "get",
            Command::BatchGet { .. } => "batch-get",
            Command::List { .. } => "list",
            Command::Put { .. } => "put",
            Command::Remove { .. } => "remove",
            Command::Mkdir { .. } => "mkdir",
            Command::BatchPut { .. } => "batch-put",
            Command::BatchRemove { .. } => "batch-remove",
            Command::CompareAndSet { .. } => "compare-and-set",
            Command::PutTemp { .. } => "put-temp",
            Command::MkdirTemp { .. } => "mkdir-temp",
            Command::UpdateTtl { .. } => "update-ttl",
            Command::RenewTtl { .. } => "renew-ttl",
            Command::TryLock { .. } => "try-lock",
            Command::Unlock { .. } => "unlock",
            Command::UpdateLease { .. } => "update-lease",
            Command::Expire { .. } => "expire",
            Command::KeepAlive => "keep-alive",
        }
    }
}

/// A command in its session envelope.
///
/// `(client_id, seq)` names the write: a retry carries the same pair and gets the first
/// result without being applied twice. `first_unacked_seq` is the lowest seq whose response
/// the client has not yet received: the session may forget every response below it (Raft
/// thesis §6.3). A client starts at seq 1; a session unknown to the state machine is created
/// only by a request with `first_unacked_seq <= 1` (nothing acknowledged yet), otherwise the
/// client learns its session expired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub client_id: ClientId,
    pub seq: u64,
    pub first_unacked_seq: u64,
    pub command: Command,
}

impl Request {
    /// What a server checks before proposing a request that came from a client: the client id
    /// is not the leader's own (`0`, which may expire any temporary node), the command is not
    /// one only the leader proposes, it writes nothing in the reserved namespace (`_tarn`,
    /// where the cluster keeps its peer directory), and `Command::validate` passes.
    pub fn validate_from_client(&self, config: &KvConfig) -> Result<(), KvError> {
        if self.client_id == SYSTEM_CLIENT_ID {
            return Err(KvError::ReservedClientId);
        }
        if let Command::Expire { .. } = self.command {
            return Err(KvError::SystemOnly { command: "expire".to_owned() });
        }
        if let Some(key) = self.command.reserved_key() {
            return Err(KvError::ReservedKey { key: key.to_owned() });
        }
        self.command.validate(config)
    }

    /// Checks that this request alone fits a Raft entry of `max_entry_bytes` (the core's bound,
    /// which storage and peer frames are sized for); returns its encoded size. Measured on the
    /// encoding, so a batch's keys, values and framing all count.
    pub fn check_fits_entry(&self, max_entry_bytes: usize) -> Result<usize, KvError> {
        let size = encoded_request_bytes(self);
        let alone = ENTRY_ENVELOPE_MAX_BYTES.saturating_add(size);
        if alone > max_entry_bytes {
            return Err(KvError::RequestTooLarge {
                command: self.command.name().to_owned(),
                size_bytes: alone,
                max_bytes: max_entry_bytes,
            });
        }
        Ok(size)
    }

    /// A request proposed by the leader itself (expiry): no session.
    pub fn system(command: Command) -> Self {
        Request { client_id: SYSTEM_CLIENT_ID, seq: 0, first_unacked_seq: 0, command }
    }
}

/// The payload of one Raft entry: the proposing leader's clock and the requests it batched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    /// The leader's clock when it proposed the entry (its local monotonic nanoseconds).
    pub leader_time_nanos: Nanos,
    pub requests: Vec<Request>,
}

fn encode_versioned<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail: postcard errors only on unsupported
    // types (none here) or a full fixed buffer (a Vec grows).
    // Sized up front: a batched entry runs to hundreds of KiB, and growing the Vec from one
    // byte copied it about twenty times (memmove was ~4% of a 1-node tarn bench profile).
    // Counting is a cheap walk with no copying; it fails only where serializing would.
    let size_bytes = postcard::experimental::serialized_size(value).unwrap_or(0);
    let mut buf = Vec::with_capacity(1 + size_bytes);
    buf.push(ENTRY_FORMAT_VERSION);
    postcard::to_extend(value, buf).expect("postcard into a Vec cannot fail")
}

fn decode_versioned<'a, T: Deserialize<'a>>(what: &'static str, bytes: &'a [u8]) -> Result<T, DecodeError> {
    let Some((&version, body)) = bytes.split_first() else {
        return Err(DecodeError::Empty { what });
    };
    if bytes.len() > MAX_ENTRY_SIZE_BYTES {
        return Err(DecodeError::TooLarge { what, size_bytes: bytes.len(), max_bytes: MAX_ENTRY_SIZE_BYTES });
    }
    if version != ENTRY_FORMAT_VERSION {
        return Err(DecodeError::Version { what, found: version, expected: ENTRY_FORMAT_VERSION });
    }
    let (value, rest) = postcard::take_from_bytes::<T>(body)
        .map_err(|error| DecodeError::Malformed { what, detail: error.to_string() })?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing { what, extra: rest.len() });
    }
    Ok(value)
}

/// Encodes an entry payload (version byte + postcard).
pub fn encode_entry(entry: &KvEntry) -> Vec<u8> {
    encode_versioned(entry)
}

/// Decodes an entry payload; never panics, allocates at most in proportion to `bytes`.
pub fn decode_entry(bytes: &[u8]) -> Result<KvEntry, DecodeError> {
    decode_versioned("kv entry", bytes)
}

/// Encodes one request (version byte + postcard), e.g. for a client → server frame.
pub fn encode_request(request: &Request) -> Vec<u8> {
    encode_versioned(request)
}

/// Decodes one request; never panics, allocates at most in proportion to `bytes`.
pub fn decode_request(bytes: &[u8]) -> Result<Request, DecodeError> {
    decode_versioned("kv request", bytes)
}

/// Encodes one response (version byte + postcard).
pub fn encode_response(response: &Response) -> Vec<u8> {
    encode_versioned(response)
}

/// Decodes one response; never panics, allocates at most in proportion to `bytes`.
pub fn decode_response(bytes: &[u8]) -> Result<Response, DecodeError> {
    decode_versioned("kv response", bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> KvEntry {
        KvEntry {
            leader_time_nanos: 42,
            requests: vec![
                Request {
                    client_id: 7,
                    seq: 3,
                    first_unacked_seq: 2,
                    command: Command::Put { key: "a.b".into(), value: Bytes::from_static(b"v") },
                },
                Request::system(Command::Expire { key: "t".into(), arm_id: 9 }),
            ],
        }
    }

    #[test]
    fn entry_round_trips() {
        let entry = sample();
        let bytes = encode_entry(&entry);
        assert_eq!(bytes[0], ENTRY_FORMAT_VERSION);
        assert_eq!(decode_entry(&bytes), Ok(entry));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(decode_entry(&[]), Err(DecodeError::Empty { .. })));
        assert!(matches!(decode_entry(&[99, 0]), Err(DecodeError::Version { found: 99, .. })));
        let bytes = encode_entry(&sample());
        for cut in 1..bytes.len() {
            assert!(decode_entry(&bytes[..cut]).is_err(), "prefix {cut} decoded");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(decode_entry(&trailing), Err(DecodeError::Trailing { extra: 1, .. })));
        // A huge length prefix must fail on missing bytes, not allocate.
        let huge = [ENTRY_FORMAT_VERSION, 1, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(decode_entry(&huge).is_err());
    }

    #[test]
    fn requests_from_clients_cannot_pose_as_the_leader() {
        let config = KvConfig::default();
        let expire = Command::Expire { key: "t".into(), arm_id: 1 };
        assert_eq!(
            Request::system(Command::KeepAlive).validate_from_client(&config),
            Err(KvError::ReservedClientId)
        );
        let request = Request { client_id: 5, seq: 1, first_unacked_seq: 1, command: expire };
        assert!(matches!(request.validate_from_client(&config), Err(KvError::SystemOnly { .. })));
        let bad_key = Request { command: Command::Remove { key: "a..b".into() }, ..request.clone() };
        assert!(matches!(bad_key.validate_from_client(&config), Err(KvError::InvalidKey { .. })));
        let fine = Request { command: Command::Remove { key: "a.b".into() }, ..request };
        assert_eq!(fine.validate_from_client(&config), Ok(()));
    }

    #[test]
    fn clients_cannot_write_the_reserved_namespace() {
        let config = KvConfig::default();
        let v = || Bytes::from_static(b"127.0.0.1:1");
        let k = |s: &str| s.to_string();
        let writes = [
            Command::Mkdir { key: k("_tarn") },
            Command::Mkdir { key: k("_tarn.peers") },
            Command::Put { key: k("_tarn.peers.3"), value: v() },
            Command::Remove { key: k("_tarn.peers.3") },
            Command::BatchPut { items: vec![(k("ok"), v()), (k("_tarn.peers.3"), v())] },
            Command::BatchRemove { keys: vec![k("ok"), k("_tarn.peers.3")] },
            Command::CompareAndSet { key: k("_tarn.peers.3"), expected: None, new: Some(v()) },
            Command::PutTemp { key: k("_tarn.peers.3"), value: v(), ttl_nanos: 1_000_000_000 },
            Command::MkdirTemp { key: k("_tarn.x"), ttl_nanos: 1_000_000_000 },
            Command::UpdateTtl { key: k("_tarn.x"), ttl_nanos: 1_000_000_000 },
            Command::RenewTtl { key: k("_tarn.x"), ttl_nanos: 1_000_000_000 },
            Command::TryLock { key: k("_tarn.lock"), lease_nanos: 1_000_000_000, wait_nanos: 0 },
            Command::Unlock { key: k("_tarn.lock") },
            Command::UpdateLease { key: k("_tarn.lock"), lease_nanos: 1_000_000_000 },
        ];
        for command in writes {
            let request = Request { client_id: 5, seq: 1, first_unacked_seq: 1, command: command.clone() };
            let err = request.validate_from_client(&config).expect_err(command.name());
            assert!(matches!(&err, KvError::ReservedKey { key } if key.starts_with("_tarn")), "{err:?}");
            assert!(err.to_string().contains("reserved namespace _tarn"), "{err}");
        }
        // Reads of the namespace and look-alike keys stay allowed.
        for command in [
            Command::Get { key: k("_tarn.peers.3") },
            Command::List { key: k("_tarn.peers"), limit: None, after: None },
            Command::Put { key: k("_tarnish"), value: v() },
        ] {
            let request = Request { client_id: 5, seq: 1, first_unacked_seq: 1, command };
            assert_eq!(request.validate_from_client(&config), Ok(()));
        }
    }

    #[test]
    fn encoded_sizes_bound_the_entry() {
        let entry = sample();
        let sum: usize = entry.requests.iter().map(encoded_request_bytes).sum();
        let encoded = encode_entry(&KvEntry { leader_time_nanos: u64::MAX, ..entry }).len();
        assert!(encoded <= ENTRY_ENVELOPE_MAX_BYTES + sum, "{encoded} > {ENTRY_ENVELOPE_MAX_BYTES} + {sum}");
        assert!(encoded > sum, "the requests are inside the entry");
    }

    #[test]
    fn request_round_trips() {
        let request = sample().requests[0].clone();
        assert_eq!(decode_request(&encode_request(&request)), Ok(request));
    }
}
