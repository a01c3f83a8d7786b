//! Wire framing shared by the peer transport and the client protocol.
//!
//! A frame is `[len: u32 little-endian][version: u8][postcard payload]`, where
//! `len` counts the version byte and the payload. The length comes first so a
//! reader knows how much to buffer; the version byte lets a future format
//! refuse an old peer with a clear error instead of misreading its bytes.
//!
//! Every decoder here is a pure function over a byte slice. It never panics on
//! any input and bounds every allocation: a claimed length above
//! `max_frame_bytes` is refused *before* any byte of the body is buffered, and
//! postcard only ever borrows from the (already bounded) frame body, with
//! serde's cautious pre-allocation cap for sequences. The fuzz targets call
//! [`decode_frame`] and [`FrameDecoder`] directly.

use bytes::{Buf, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tarn_core::{GroupId, NodeId};

/// The format version written in every frame. Bump it when any type carried
/// on the wire changes its encoding (including `tarn-core` and `tarn-kv` types).
pub const WIRE_VERSION: u8 = 2;

/// Bytes before the body: the `u32` length.
pub const FRAME_LEN_BYTES: usize = 4;

/// The smallest legal body: the version byte alone (an empty payload is legal
/// for unit-like messages).
pub const FRAME_BODY_MIN_BYTES: usize = 1;

/// Default bound on one frame's body (version byte + payload).
///
/// Big enough for a batch of AppendEntries under the core's
/// `max_size_per_msg_bytes`, small enough that a hostile length cannot make a
/// reader buffer more than this.
pub const MAX_FRAME_BYTES_DEFAULT: usize = 16 * 1024 * 1024;

/// Why a frame could not be encoded or decoded. Every variant names the bound
/// or byte that failed so a log line says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame body of {len_bytes} bytes exceeds the limit of {max_frame_bytes} bytes (raise max_frame_bytes on both ends, or send smaller messages)")]
    FrameTooLarge { len_bytes: usize, max_frame_bytes: usize },
    #[error("frame declares an empty body; every frame carries at least a version byte")]
    FrameEmpty,
    #[error("frame has wire version {got}, this build speaks version {expected} (upgrade the older side)")]
    UnsupportedVersion { got: u8, expected: u8 },
    #[error("frame payload does not decode: {reason}")]
    Decode { reason: String },
    #[error("frame payload has {extra_bytes} unexpected trailing bytes after the message")]
    TrailingBytes { extra_bytes: usize },
    #[error("message does not encode: {reason}")]
    Encode { reason: String },
}

/// Appends one frame holding `message` to `out`.
///
/// On error `out` is left exactly as it was, so a caller batching many frames
/// into one buffer can skip one bad message without corrupting the others.
pub fn encode_frame<T: Serialize + ?Sized>(
    message: &T,
    max_frame_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_LEN_BYTES]);
    out.push(WIRE_VERSION);
    if let Err(e) = postcard::to_extend(message, Appender(out)) {
        out.truncate(start);
        return Err(WireError::Encode { reason: e.to_string() });
    }
    let body_bytes = out.len() - start - FRAME_LEN_BYTES;
    if body_bytes > max_frame_bytes {
        out.truncate(start);
        return Err(WireError::FrameTooLarge { len_bytes: body_bytes, max_frame_bytes });
    }
    // body_bytes <= max_frame_bytes, and max_frame_bytes is validated to fit in
    // u32 by `check_max_frame_bytes`; saturate anyway so a misconfigured bound
    // can never wrap the length silently.
    let len = u32::try_from(body_bytes).unwrap_or(u32::MAX);
    out[start..start + FRAME_LEN_BYTES].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Lets postcard append to a caller's buffer without taking ownership of it,
/// so a failed encode can be rolled back.
struct Appender<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Appender<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

/// The body length (version byte included) [`encode_frame`] would write for
/// `message`, measured without encoding it: lets a sender refuse a message
/// over the frame bound in words before queueing it.
pub fn frame_body_bytes<T: Serialize + ?Sized>(message: &T) -> Result<usize, WireError> {
    let size = postcard::serialize_with_flavor(message, postcard::ser_flavors::Size::default())
        .map_err(|e| WireError::Encode { reason: e.to_string() })?;
    Ok(size + 1)
}

/// Encodes one frame into a fresh vector.
pub fn encode_frame_vec<T: Serialize + ?Sized>(
    message: &T,
    max_frame_bytes: usize,
) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    encode_frame(message, max_frame_bytes, &mut out)?;
    Ok(out)
}

/// A frame bound must leave room for the version byte and fit the `u32` length.
pub fn check_max_frame_bytes(max_frame_bytes: usize) -> Result<(), String> {
    if max_frame_bytes < FRAME_BODY_MIN_BYTES {
        return Err(format!(
            "max_frame_bytes {max_frame_bytes} is below the {FRAME_BODY_MIN_BYTES}-byte minimum"
        ));
    }
    if u32::try_from(max_frame_bytes).is_err() {
        return Err(format!("max_frame_bytes {max_frame_bytes} does not fit the 32-bit frame length"));
    }
    Ok(())
}

/// Looks at the front of `buf` and says how long the first frame is.
///
/// `Ok(None)`: not enough bytes yet to know, or to hold the whole frame.
/// `Ok(Some(total))`: the first `total` bytes are one whole frame (length
/// prefix included). Errors as soon as the length prefix is readable and bad,
/// so a hostile peer cannot make us wait for (and buffer) a giant body.
pub fn frame_len(buf: &[u8], max_frame_bytes: usize) -> Result<Option<usize>, WireError> {
    let Some(prefix) = buf.get(..FRAME_LEN_BYTES) else { return Ok(None) };
    let mut len_bytes = [0u8; FRAME_LEN_BYTES];
    len_bytes.copy_from_slice(prefix);
    let body = u32::from_le_bytes(len_bytes) as usize;
    if body < FRAME_BODY_MIN_BYTES {
        return Err(WireError::FrameEmpty);
    }
    if body > max_frame_bytes {
        return Err(WireError::FrameTooLarge { len_bytes: body, max_frame_bytes });
    }
    let total = FRAME_LEN_BYTES + body;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(total))
}

/// Decodes the body of one frame (version byte + payload, without the length).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    let Some((&version, payload)) = body.split_first() else { return Err(WireError::FrameEmpty) };
    if version != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion { got: version, expected: WIRE_VERSION });
    }
    let (message, rest) =
        postcard::take_from_bytes::<T>(payload).map_err(|e| WireError::Decode { reason: e.to_string() })?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes { extra_bytes: rest.len() });
    }
    Ok(message)
}

/// Decodes the first frame at the front of `buf`.
///
/// `Ok(None)` means "incomplete, read more"; `Ok(Some((message, consumed)))`
/// gives the message and how many bytes of `buf` it used. Never panics.
pub fn decode_frame<T: DeserializeOwned>(
    buf: &[u8],
    max_frame_bytes: usize,
) -> Result<Option<(T, usize)>, WireError> {
    let Some(total) = frame_len(buf, max_frame_bytes)? else { return Ok(None) };
    let message = decode_body(&buf[FRAME_LEN_BYTES..total])?;
    Ok(Some((message, total)))
}

/// The most a [`FrameDecoder`] reserves ahead of the bytes it holds. A header
/// may declare a frame of up to `max_frame_bytes`; reserving all of it at once
/// let 1,000 connections that each sent a 5-byte header declaring 16 MiB take
/// gigabytes. The buffer grows only as bytes actually arrive.
pub const DECODER_RESERVE_AHEAD_BYTES: usize = 64 * 1024;

/// What a new [`FrameDecoder`] allocates (it grows as frames arrive).
const DECODER_INITIAL_BYTES: usize = 4 * 1024;

/// Incremental decoder over a stream of bytes (a socket).
///
/// Push whatever the socket gave with [`FrameDecoder::extend`] (or read
/// straight into [`FrameDecoder::buffer_mut`]), then pull whole frames with
/// [`FrameDecoder::next_frame`]. The buffer never holds more than one frame
/// plus one read's worth of bytes, because the length is checked first, and
/// its capacity runs at most [`DECODER_RESERVE_AHEAD_BYTES`] (or the
/// allocator's doubling) ahead of the bytes received.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame_bytes: usize,
}

impl FrameDecoder {
    /// A decoder for frames of at most `max_frame_bytes`. Its buffer starts
    /// small (an idle connection costs little; thousands may be open) and
    /// grows as bytes arrive.
    pub fn new(max_frame_bytes: usize) -> Self {
        FrameDecoder { buf: BytesMut::with_capacity(DECODER_INITIAL_BYTES), max_frame_bytes }
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Changes the largest frame accepted from now on (bytes already buffered
    /// are checked against it when decoded). A peer connection starts with a
    /// small bound for the Hello and raises it once the peer is known.
    pub fn set_max_frame_bytes(&mut self, max_frame_bytes: usize) {
        self.max_frame_bytes = max_frame_bytes;
    }

    /// For `AsyncReadExt::read_buf`: the decoder's own buffer.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// The whole size (length prefix included) of the frame whose start is
    /// buffered but which is not complete yet, as its header declares it;
    /// `None` if no header is buffered or the buffered frame is complete.
    /// Lets a server budget the memory of large frames before reading them.
    pub fn pending_frame_bytes(&self) -> Option<usize> {
        let prefix = self.buf.get(..FRAME_LEN_BYTES)?;
        let mut len_bytes = [0u8; FRAME_LEN_BYTES];
        len_bytes.copy_from_slice(prefix);
        let total = FRAME_LEN_BYTES.saturating_add(u32::from_le_bytes(len_bytes) as usize);
        (self.buf.len() < total).then_some(total)
    }

    /// Gives back the memory of a large frame already decoded (call it after
    /// one): the buffer, whose allocation still holds the whole frame, is
    /// replaced by a small one if what remains fits, so a connection that
    /// once sent a 16 MiB request does not keep 16 MiB while idle.
    pub fn release_excess(&mut self) {
        if self.buf.len() <= DECODER_INITIAL_BYTES {
            let mut small = BytesMut::with_capacity(DECODER_INITIAL_BYTES);
            small.extend_from_slice(&self.buf);
            self.buf = small;
        }
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed. After an
    /// error the stream is out of sync: the caller must drop the connection.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, WireError> {
        let Some(total) = frame_len(&self.buf, self.max_frame_bytes)? else {
            // The length, if readable, was validated above. Reserve room for
            // the rest of the frame, but never more than a bounded step ahead
            // of what arrived: a header alone must not cost the whole frame.
            if let Some(prefix) = self.buf.get(..FRAME_LEN_BYTES) {
                let mut len_bytes = [0u8; FRAME_LEN_BYTES];
                len_bytes.copy_from_slice(prefix);
                let want = FRAME_LEN_BYTES + u32::from_le_bytes(len_bytes) as usize;
                let missing = want.saturating_sub(self.buf.len());
                self.buf.reserve(missing.min(DECODER_RESERVE_AHEAD_BYTES));
            }
            return Ok(None);
        };
        let result = decode_body(&self.buf[FRAME_LEN_BYTES..total]);
        self.buf.advance(total);
        result.map(Some)
    }
}

/// What travels on a peer connection. The first frame on every connection is
/// `Hello`; everything after it is `Message`. A connection that starts with
/// `Probe` instead gets one `ProbeReply` and is closed (see
/// [`crate::transport::probe`]).
///
/// Generic over the Raft message type so the transport can be tested without
/// the core; in production `M` is `tarn_core::Message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame<M> {
    /// Names the sender and the cluster, so a node never accepts messages
    /// from a process of another cluster that happens to reuse an address.
    Hello { cluster_id: u64, from: NodeId, to: NodeId },
    /// One Raft message for one group. All groups share the connection; the
    /// group id lives here, not inside the core's message.
    Message(Envelope<M>),
    /// A node whose data directory holds no Raft state asks a peer, before
    /// it may vote, whether the cluster already has a history.
    /// `incarnation` names this data directory (random, chosen when it was
    /// created empty), so a peer can tell a late first start from a wipe.
    Probe { cluster_id: u64, from: NodeId, to: NodeId, incarnation: u64 },
    /// The answer to a `Probe`, then the connection closes.
    ProbeReply { cluster_id: u64, from: NodeId, answer: ProbeAnswer },
    /// Node-level liveness (issue 17): sent on an established connection
    /// every `TransportConfig::ping_interval_ms`, so a pair whose groups are
    /// all quiescent still hears from each other, and a silent peer is
    /// suspected down within `suspect_after_ms` whatever its groups do.
    Ping,
    /// Coalesced heartbeats (issue 17): the heartbeats, heartbeat responses
    /// and quiesce notices of many groups for the same peer, written in one
    /// flush, travel as one frame instead of one `Message` frame each. The
    /// reader hands each envelope to its group as if it had come alone.
    /// Appended after `Ping`, so every older variant keeps its encoding; a
    /// node of a build without it closes a connection that carries one, so
    /// a rolling upgrade runs with coalescing off (`heartbeat_coalesce` 0)
    /// until every node speaks it.
    Heartbeats(HeartbeatBatch<M>),
}

/// The most envelopes one [`PeerFrame::Heartbeats`] carries. A sender splits
/// larger batches; a decoder refuses a frame that declares more before it
/// allocates anything, so a hostile count costs nothing. 4,096 heartbeats of
/// about 30 bytes each make a frame of about 120 KiB, well under the frame
/// bound, and a node with more groups than that per peer sends two frames.
pub const MAX_HEARTBEATS_PER_FRAME: usize = 4096;

/// The envelopes of a [`PeerFrame::Heartbeats`]: at most
/// [`MAX_HEARTBEATS_PER_FRAME`], which decoding enforces. On the wire it is
/// a postcard sequence (a varint count, then the envelopes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeartbeatBatch<M>(pub Vec<Envelope<M>>);

impl<M: Serialize> Serialize for HeartbeatBatch<M> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

impl<'de, M: Deserialize<'de>> Deserialize<'de> for HeartbeatBatch<M> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<M>(std::marker::PhantomData<M>);
        impl<'de, M: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<M> {
            type Value = HeartbeatBatch<M>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "at most {MAX_HEARTBEATS_PER_FRAME} heartbeat envelopes")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // The declared count is checked before anything is allocated
                // (postcard declares none when the frame's remaining bytes
                // cannot hold it, so a hostile count allocates nothing and
                // fails at the end of the frame); the loop enforces the
                // bound for formats that declare none.
                let declared = seq.size_hint().unwrap_or(0);
                if declared > MAX_HEARTBEATS_PER_FRAME {
                    return Err(serde::de::Error::invalid_length(declared, &self));
                }
                let mut out = Vec::with_capacity(declared.min(MAX_HEARTBEATS_PER_FRAME));
                while let Some(envelope) = seq.next_element()? {
                    if out.len() == MAX_HEARTBEATS_PER_FRAME {
                        return Err(serde::de::Error::invalid_length(out.len() + 1, &self));
                    }
                    out.push(envelope);
                }
                Ok(HeartbeatBatch(out))
            }
        }
        deserializer.deserialize_seq(Visitor(std::marker::PhantomData))
    }
}

/// What a node answers to a [`PeerFrame::Probe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeAnswer {
    /// This node holds no Raft state either: it is itself still waiting to
    /// learn whether the cluster is new.
    Fresh {
        /// The answering data directory's incarnation.
        incarnation: u64,
    },
    /// This node is a member with a history (it may have voted, and may
    /// hold votes given by the asker before a wipe).
    Member {
        /// The asker's incarnation is the one this node saw fresh when the
        /// cluster was born: the asker's directory was never wiped since,
        /// so it never voted and may start as a voter.
        knew_you: bool,
        /// Every node's incarnation at the cluster's birth, as this node
        /// recorded it (empty if it knows none). A node that starts late
        /// records it too, so it recognizes the others' late starts.
        born_with: Vec<(NodeId, u64)>,
    },
}

/// One Raft message addressed to a group on the receiving node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<M> {
    pub group: GroupId,
    pub message: M,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_large_frame_is_measured_and_its_memory_given_back() {
        let mut d = FrameDecoder::new(MAX_FRAME_BYTES_DEFAULT);
        assert_eq!(d.pending_frame_bytes(), None);
        let body: Vec<u8> = vec![7; 1 << 20];
        let frame = encode_frame_vec(&Bytes::from(body), MAX_FRAME_BYTES_DEFAULT).unwrap();
        d.extend(&frame[..frame.len() / 2]);
        assert_eq!(d.pending_frame_bytes(), Some(frame.len()));
        d.extend(&frame[frame.len() / 2..]);
        assert_eq!(d.pending_frame_bytes(), None, "complete");
        assert!(d.next_frame::<Bytes>().unwrap().is_some());
        d.extend(b"next");
        d.release_excess();
        assert!(d.buffer_mut().capacity() <= DECODER_INITIAL_BYTES);
        assert_eq!(&d.buffer_mut()[..], b"next", "what was buffered stays");
    }
    use bytes::Bytes;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    struct Sample {
        id: u64,
        name: String,
        data: Bytes,
        list: Vec<u32>,
    }

    fn sample(i: u64) -> Sample {
        Sample {
            id: i,
            name: format!("n{i}"),
            data: Bytes::from(vec![i as u8; i as usize % 300]),
            list: vec![1, 2, 3],
        }
    }

    const MAX: usize = 1024 * 1024;

    #[test]
    fn round_trip_one_frame() {
        let frame = encode_frame_vec(&sample(7), MAX).unwrap();
        let (decoded, used) = decode_frame::<Sample>(&frame, MAX).unwrap().unwrap();
        assert_eq!(decoded, sample(7));
        assert_eq!(used, frame.len());
    }

    #[test]
    fn round_trip_peer_frames() {
        let hello: PeerFrame<Sample> = PeerFrame::Hello { cluster_id: 9, from: 1, to: 2 };
        let msg = PeerFrame::Message(Envelope { group: 3, message: sample(4) });
        let mut buf = Vec::new();
        encode_frame(&hello, MAX, &mut buf).unwrap();
        encode_frame(&msg, MAX, &mut buf).unwrap();
        let (a, n) = decode_frame::<PeerFrame<Sample>>(&buf, MAX).unwrap().unwrap();
        let (b, m) = decode_frame::<PeerFrame<Sample>>(&buf[n..], MAX).unwrap().unwrap();
        assert_eq!((a, b), (hello, msg));
        assert_eq!(n + m, buf.len());
    }

    /// The liveness ping (issue 17) is appended to the enum: the frames
    /// before it keep their encodings, and it round-trips in a few bytes.
    #[test]
    fn a_ping_is_a_tiny_frame_and_older_frames_keep_their_bytes() {
        let ping = encode_frame_vec(&PeerFrame::<Sample>::Ping, MAX).unwrap();
        assert!(ping.len() <= 8, "{} bytes", ping.len());
        let (back, n) = decode_frame::<PeerFrame<Sample>>(&ping, MAX).unwrap().unwrap();
        assert_eq!((back, n), (PeerFrame::Ping, ping.len()));
        let hello =
            encode_frame_vec(&PeerFrame::<Sample>::Hello { cluster_id: 9, from: 1, to: 2 }, MAX).unwrap();
        assert_eq!(hello[FRAME_LEN_BYTES + 1], 0, "Hello is still variant 0");
        assert_eq!(ping[FRAME_LEN_BYTES + 1], 4, "Ping is variant 4, after ProbeReply");
    }

    /// Coalesced heartbeats (issue 17) round-trip, come after `Ping` (so the
    /// older variants keep their bytes), and cost far less than one frame
    /// per message.
    #[test]
    fn a_heartbeat_batch_round_trips_as_one_frame() {
        let envelopes: Vec<Envelope<Sample>> =
            (0..100).map(|g| Envelope { group: g, message: sample(g % 7) }).collect();
        let frame = PeerFrame::Heartbeats(HeartbeatBatch(envelopes.clone()));
        let bytes = encode_frame_vec(&frame, MAX).unwrap();
        assert_eq!(bytes[FRAME_LEN_BYTES + 1], 5, "Heartbeats is variant 5, after Ping");
        let (back, n) = decode_frame::<PeerFrame<Sample>>(&bytes, MAX).unwrap().unwrap();
        assert_eq!((back, n), (frame, bytes.len()));
        let singles: usize =
            envelopes.into_iter().map(|e| encode_frame_vec(&PeerFrame::Message(e), MAX).unwrap().len()).sum();
        assert!(bytes.len() < singles, "{} bytes batched, {singles} one by one", bytes.len());
        let empty =
            encode_frame_vec(&PeerFrame::Heartbeats(HeartbeatBatch::<Sample>(Vec::new())), MAX).unwrap();
        let (back, _) = decode_frame::<PeerFrame<Sample>>(&empty, MAX).unwrap().unwrap();
        assert_eq!(back, PeerFrame::Heartbeats(HeartbeatBatch(Vec::new())));
    }

    /// A frame declaring more than `MAX_HEARTBEATS_PER_FRAME` envelopes is
    /// refused from its count alone: a hostile peer that declares four
    /// billion (in a 12-byte frame) makes the decoder allocate nothing.
    #[test]
    fn a_heartbeat_batch_over_the_cap_is_refused_without_allocating() {
        // Variant 5, then a varint count, then nothing (or one envelope).
        let hostile = |count: u64| {
            let mut payload = vec![5u8];
            let mut c = count;
            loop {
                let byte = (c & 0x7f) as u8;
                c >>= 7;
                if c == 0 {
                    payload.push(byte);
                    break;
                }
                payload.push(byte | 0x80);
            }
            let mut frame = ((payload.len() + 1) as u32).to_le_bytes().to_vec();
            frame.push(WIRE_VERSION);
            frame.extend(payload);
            frame
        };
        for count in [MAX_HEARTBEATS_PER_FRAME as u64 + 1, u32::MAX as u64, u64::MAX] {
            let frame = hostile(count);
            let allocated = count_allocations(|| decode_frame::<PeerFrame<Sample>>(&frame, MAX));
            let (result, bytes) = allocated;
            assert!(matches!(result, Err(WireError::Decode { .. })), "count {count}: {result:?}");
            assert!(bytes < 4096, "count {count}: decoding allocated {bytes} bytes");
        }
        // At the cap the count is legal; the missing envelopes are what fail.
        let frame = hostile(MAX_HEARTBEATS_PER_FRAME as u64);
        assert!(matches!(decode_frame::<PeerFrame<Sample>>(&frame, MAX), Err(WireError::Decode { .. })));
        // A full batch of exactly the cap decodes; one more envelope,
        // really there in the frame, is refused (by its declared count).
        let mut full: Vec<Envelope<u8>> =
            (0..MAX_HEARTBEATS_PER_FRAME as u64).map(|g| Envelope { group: g, message: 1 }).collect();
        let bytes = encode_frame_vec(&PeerFrame::Heartbeats(HeartbeatBatch(full.clone())), MAX).unwrap();
        assert!(decode_frame::<PeerFrame<u8>>(&bytes, MAX).is_ok());
        full.push(Envelope { group: 0, message: 2 });
        let bytes = encode_frame_vec(&PeerFrame::Heartbeats(HeartbeatBatch(full)), MAX).unwrap();
        let (result, allocated) = count_allocations(|| decode_frame::<PeerFrame<u8>>(&bytes, MAX));
        assert!(matches!(result, Err(WireError::Decode { .. })), "one over the cap: {result:?}");
        assert!(allocated < 4096, "refused before allocating the batch: {allocated} bytes");
    }

    /// A pass-through allocator for this test binary that records, on the
    /// threads that ask, the largest single allocation.
    mod alloc_probe {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            pub static ACTIVE: Cell<bool> = const { Cell::new(false) };
            pub static LARGEST: Cell<usize> = const { Cell::new(0) };
        }

        struct Probe;

        // SAFETY: every call is forwarded to `System` unchanged; the probe
        // only reads the requested size (const thread locals never allocate).
        unsafe impl GlobalAlloc for Probe {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                record(layout.size());
                System.alloc(layout)
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                System.dealloc(ptr, layout)
            }
            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                record(new_size);
                System.realloc(ptr, layout, new_size)
            }
        }

        fn record(size: usize) {
            let _ = ACTIVE.try_with(|a| {
                if a.get() {
                    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
                }
            });
        }

        #[global_allocator]
        static PROBE: Probe = Probe;
    }

    /// Runs `f` and returns its result with the largest single allocation
    /// this thread asked for meanwhile.
    fn count_allocations<T>(f: impl FnOnce() -> T) -> (T, usize) {
        alloc_probe::LARGEST.with(|l| l.set(0));
        alloc_probe::ACTIVE.with(|a| a.set(true));
        let out = f();
        alloc_probe::ACTIVE.with(|a| a.set(false));
        (out, alloc_probe::LARGEST.with(|l| l.get()))
    }

    #[test]
    fn incremental_decoding_byte_by_byte() {
        let mut stream = Vec::new();
        for i in 0..50 {
            encode_frame(&sample(i), MAX, &mut stream).unwrap();
        }
        let mut dec = FrameDecoder::new(MAX);
        let mut got = Vec::new();
        for b in &stream {
            dec.extend(std::slice::from_ref(b));
            while let Some(s) = dec.next_frame::<Sample>().unwrap() {
                got.push(s);
            }
        }
        assert_eq!(got, (0..50).map(sample).collect::<Vec<_>>());
        assert_eq!(dec.buffered_bytes(), 0);
    }

    #[test]
    fn incomplete_prefix_and_body_ask_for_more() {
        let frame = encode_frame_vec(&sample(3), MAX).unwrap();
        for cut in 0..frame.len() {
            assert_eq!(decode_frame::<Sample>(&frame[..cut], MAX).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut buf = (MAX as u32 + 1).to_le_bytes().to_vec();
        buf.push(WIRE_VERSION);
        assert_eq!(
            decode_frame::<Sample>(&buf, MAX),
            Err(WireError::FrameTooLarge { len_bytes: MAX + 1, max_frame_bytes: MAX })
        );
        // u32::MAX claims are refused just the same.
        assert!(matches!(
            decode_frame::<Sample>(&u32::MAX.to_le_bytes(), MAX),
            Err(WireError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn encode_refuses_oversized_message_and_leaves_buffer_intact() {
        let mut out = encode_frame_vec(&sample(1), MAX).unwrap();
        let before = out.clone();
        let big = Sample { data: Bytes::from(vec![0u8; 2000]), ..sample(1) };
        assert!(matches!(encode_frame(&big, 1000, &mut out), Err(WireError::FrameTooLarge { .. })));
        assert_eq!(out, before);
    }

    #[test]
    fn empty_body_wrong_version_trailing_bytes_are_errors() {
        assert_eq!(decode_frame::<Sample>(&0u32.to_le_bytes(), MAX), Err(WireError::FrameEmpty));

        let mut frame = encode_frame_vec(&sample(2), MAX).unwrap();
        frame[FRAME_LEN_BYTES] = WIRE_VERSION + 1;
        assert_eq!(
            decode_frame::<Sample>(&frame, MAX),
            Err(WireError::UnsupportedVersion { got: WIRE_VERSION + 1, expected: WIRE_VERSION })
        );

        let mut frame = encode_frame_vec(&sample(2), MAX).unwrap();
        frame.push(0);
        let len = (frame.len() - FRAME_LEN_BYTES) as u32;
        frame[..FRAME_LEN_BYTES].copy_from_slice(&len.to_le_bytes());
        assert_eq!(decode_frame::<Sample>(&frame, MAX), Err(WireError::TrailingBytes { extra_bytes: 1 }));
    }

    #[test]
    fn truncated_payload_inside_a_whole_frame_is_a_decode_error() {
        let frame = encode_frame_vec(&sample(200), MAX).unwrap();
        let mut short = frame[..frame.len() - 10].to_vec();
        let len = (short.len() - FRAME_LEN_BYTES) as u32;
        short[..FRAME_LEN_BYTES].copy_from_slice(&len.to_le_bytes());
        assert!(matches!(decode_frame::<Sample>(&short, MAX), Err(WireError::Decode { .. })));
    }

    /// Garbage never panics and never makes the decoder allocate past the
    /// bound: a tiny deterministic generator feeds random and mutated frames.
    #[test]
    fn garbage_input_never_panics() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid =
            encode_frame_vec(&PeerFrame::Message(Envelope { group: 1, message: sample(40) }), MAX).unwrap();
        for round in 0..20_000 {
            let mut buf = if round % 2 == 0 {
                let len = (next() % 64) as usize;
                (0..len).map(|_| next() as u8).collect::<Vec<_>>()
            } else {
                let mut v = valid.clone();
                for _ in 0..1 + next() % 4 {
                    let i = (next() as usize) % v.len();
                    v[i] = next() as u8;
                }
                v
            };
            if round % 3 == 0 {
                // Make the length prefix consistent so the body decoder is hit.
                if buf.len() > FRAME_LEN_BYTES {
                    let len = (buf.len() - FRAME_LEN_BYTES) as u32;
                    buf[..FRAME_LEN_BYTES].copy_from_slice(&len.to_le_bytes());
                }
            }
            let _ = decode_frame::<PeerFrame<Sample>>(&buf, 4096);
            let mut dec = FrameDecoder::new(4096);
            dec.extend(&buf);
            let _ = dec.next_frame::<PeerFrame<Sample>>();
            assert!(dec.buffered_bytes() <= buf.len());
        }
    }

    /// A header declaring a 16 MiB frame, then nothing: the decoder must not
    /// reserve the frame (1,000 such connections took 2.2 GB of RSS).
    #[test]
    fn a_declared_length_alone_does_not_grow_the_buffer() {
        let mut dec = FrameDecoder::new(MAX_FRAME_BYTES_DEFAULT);
        let mut header = ((16 << 20) as u32).to_le_bytes().to_vec();
        header.push(WIRE_VERSION);
        dec.extend(&header);
        for _ in 0..3 {
            assert_eq!(dec.next_frame::<Sample>(), Ok(None));
        }
        let bound = 64 * 1024 + DECODER_RESERVE_AHEAD_BYTES;
        assert!(dec.buffer_mut().capacity() <= bound, "capacity {} > {bound}", dec.buffer_mut().capacity());
        // The frame still arrives whole when its bytes do.
        let frame = encode_frame_vec(&sample(5), MAX).unwrap();
        let mut dec = FrameDecoder::new(MAX);
        for chunk in frame.chunks(3) {
            assert_eq!(dec.next_frame::<Sample>(), Ok(None));
            dec.extend(chunk);
        }
        assert_eq!(dec.next_frame::<Sample>(), Ok(Some(sample(5))));
    }

    #[test]
    fn frame_body_bytes_is_what_encode_frame_writes() {
        for id in [0, 1, 300, u64::MAX] {
            let m = sample(id);
            let frame = encode_frame_vec(&m, MAX).unwrap();
            assert_eq!(frame_body_bytes(&m).unwrap(), frame.len() - FRAME_LEN_BYTES);
        }
    }

    #[test]
    fn a_raised_frame_bound_applies_to_bytes_already_buffered() {
        let frame = encode_frame_vec(&sample(7), MAX).unwrap();
        let mut dec = FrameDecoder::new(4);
        dec.extend(&frame);
        dec.set_max_frame_bytes(MAX);
        assert_eq!(dec.next_frame::<Sample>(), Ok(Some(sample(7))));
        let mut dec = FrameDecoder::new(4);
        dec.extend(&frame);
        assert!(matches!(dec.next_frame::<Sample>(), Err(WireError::FrameTooLarge { .. })));
    }

    #[test]
    fn max_frame_bytes_bounds_are_checked() {
        assert!(check_max_frame_bytes(0).is_err());
        assert!(check_max_frame_bytes(MAX_FRAME_BYTES_DEFAULT).is_ok());
        #[cfg(target_pointer_width = "64")]
        assert!(check_max_frame_bytes(u32::MAX as usize + 1).is_err());
    }
}
