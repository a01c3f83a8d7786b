//! `wire_frame`: arbitrary bytes into every decoder that reads from a socket.
//!
//! The first byte picks the decoder, the rest is its input:
//! - 0: one peer frame (`PeerFrame<tarn_core::Message>`) with `decode_frame`;
//! - 1: a stream of peer frames through `FrameDecoder`, fed in pieces, which
//!   must agree frame for frame with `decode_frame` over the whole buffer;
//! - 2, 3, 4: the kv payloads (`decode_request`, `decode_entry`,
//!   `decode_response`);
//! - 5, 6: one client-protocol frame, `ClientFrame` (what a server reads
//!   from a client) and `ServerFrame` (what a client reads from a server).
//!
//! Properties: no panic; no single allocation above the frame bound
//! ([`FUZZ_MAX_FRAME_BYTES`]) however large a length the input claims;
//! anything that decodes re-encodes to a message that decodes to the same
//! value, is no longer than the input (the encoder's form is the shortest),
//! and is a fixed point of decode → encode.

use tarn_core::Message;
use tarn_io::wire::{decode_frame, encode_frame_vec, FrameDecoder, PeerFrame, WireError, FRAME_LEN_BYTES};
use tarn_kv::{decode_entry, decode_request, decode_response, encode_entry, encode_request, encode_response};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tarn_server::protocol::{ClientFrame, ServerFrame};

use crate::alloc_probe::measure;

/// The frame bound the target configures. Not below serde's cautious
/// pre-allocation cap (1 MiB per sequence), which a claimed sequence length
/// can reach inside any frame; see the notes of issue 8.
pub const FUZZ_MAX_FRAME_BYTES: usize = 1 << 20;

/// The stream decoder starts with this much buffer (`FrameDecoder::new`).
const STREAM_INITIAL_BUFFER_BYTES: usize = 64 * 1024;

/// Peer frames carry core messages; the group id rides in the envelope.
pub type Frame = PeerFrame<Message>;

pub fn wire_frame(data: &[u8]) {
    let Some((&selector, input)) = data.split_first() else { return };
    match selector % 7 {
        0 => one_frame::<Frame>(input),
        1 => stream(input),
        2 => versioned(input, decode_request, encode_request),
        3 => versioned(input, decode_entry, encode_entry),
        4 => versioned(input, decode_response, encode_response),
        5 => one_frame::<ClientFrame>(input),
        _ => one_frame::<ServerFrame>(input),
    }
}

fn one_frame<T>(input: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let (decoded, largest) = measure(|| decode_frame::<T>(input, FUZZ_MAX_FRAME_BYTES));
    assert!(largest <= FUZZ_MAX_FRAME_BYTES, "decode_frame allocated {largest} bytes at once");
    if let Ok(Some((frame, used))) = decoded {
        assert!((FRAME_LEN_BYTES + 1..=input.len()).contains(&used), "consumed {used} of {}", input.len());
        check_frame_round_trip(&frame, &input[..used]);
    }
}

/// Re-encodes a decoded frame and checks the round trip properties.
fn check_frame_round_trip<T>(frame: &T, original: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let encoded = encode_frame_vec(frame, FUZZ_MAX_FRAME_BYTES).expect("a decoded frame re-encodes");
    assert!(
        encoded.len() <= original.len(),
        "re-encoding grew the frame: {} > {}",
        encoded.len(),
        original.len()
    );
    let (again, used) = decode_frame::<T>(&encoded, FUZZ_MAX_FRAME_BYTES)
        .expect("a re-encoded frame decodes")
        .expect("a re-encoded frame is whole");
    assert_eq!(used, encoded.len());
    assert_eq!(&again, frame, "decode -> encode -> decode changed the message");
    let fixed = encode_frame_vec(&again, FUZZ_MAX_FRAME_BYTES).expect("re-encodes");
    assert_eq!(fixed, encoded, "encode(decode(encode(m))) differs from encode(m)");
}

fn stream(input: &[u8]) {
    let Some((&piece, bytes)) = input.split_first() else { return };
    let piece_bytes = 1 + piece as usize % 64;
    // What the slice decoder makes of the whole buffer: frames until the
    // first error or the incomplete end.
    let mut expected: Vec<Result<Frame, WireError>> = Vec::new();
    let mut at = 0;
    loop {
        match decode_frame::<Frame>(&bytes[at..], FUZZ_MAX_FRAME_BYTES) {
            Ok(Some((frame, used))) => {
                check_frame_round_trip(&frame, &bytes[at..at + used]);
                expected.push(Ok(frame));
                at += used;
            }
            Ok(None) => break,
            Err(e) => {
                expected.push(Err(e));
                break;
            }
        }
    }
    let (got, largest) = measure(|| {
        let mut decoder = FrameDecoder::new(FUZZ_MAX_FRAME_BYTES);
        let mut got = Vec::new();
        'feed: for chunk in bytes.chunks(piece_bytes) {
            decoder.extend(chunk);
            loop {
                match decoder.next_frame::<Frame>() {
                    Ok(Some(frame)) => got.push(Ok(frame)),
                    Ok(None) => break,
                    Err(e) => {
                        got.push(Err(e));
                        break 'feed;
                    }
                }
            }
            assert!(decoder.buffered_bytes() <= bytes.len());
        }
        got
    });
    let bound = FUZZ_MAX_FRAME_BYTES + FRAME_LEN_BYTES + STREAM_INITIAL_BUFFER_BYTES.max(bytes.len());
    assert!(largest <= bound, "FrameDecoder allocated {largest} bytes at once (bound {bound})");
    assert_eq!(got, expected, "stream decoder and slice decoder disagree (pieces of {piece_bytes})");
}

fn versioned<T, E>(input: &[u8], decode: fn(&[u8]) -> Result<T, E>, encode: fn(&T) -> Vec<u8>)
where
    T: PartialEq + std::fmt::Debug,
    E: std::fmt::Debug,
{
    let (decoded, largest) = measure(|| decode(input));
    assert!(largest <= FUZZ_MAX_FRAME_BYTES, "kv decoder allocated {largest} bytes at once");
    if let Ok(value) = decoded {
        let encoded = encode(&value);
        assert!(encoded.len() <= input.len(), "re-encoding grew the payload");
        let again = decode(&encoded).expect("a re-encoded payload decodes");
        assert_eq!(again, value, "decode -> encode -> decode changed the value");
        assert_eq!(encode(&again), encoded, "encoding is not a fixed point");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tarn_io::wire::WIRE_VERSION;

    /// Why the round trip is checked on values, not bytes: postcard accepts
    /// overlong varints (here `0x80 0x00` for 0), so two byte strings decode
    /// to one message; the encoder always writes the shortest form.
    #[test]
    fn overlong_varints_decode_and_re_encode_shorter() {
        let hello: Frame = PeerFrame::Hello { cluster_id: 0, from: 1, to: 2 };
        let canonical = encode_frame_vec(&hello, FUZZ_MAX_FRAME_BYTES).unwrap();
        // [len u32][version][variant 0][cluster_id 0][from 1][to 2]
        assert_eq!(canonical[FRAME_LEN_BYTES..], [WIRE_VERSION, 0, 0, 1, 2]);
        let mut overlong = vec![0u8; FRAME_LEN_BYTES];
        overlong.extend_from_slice(&[WIRE_VERSION, 0, 0x80, 0x00, 1, 2]);
        let len = (overlong.len() - FRAME_LEN_BYTES) as u32;
        overlong[..FRAME_LEN_BYTES].copy_from_slice(&len.to_le_bytes());
        let (decoded, _) = decode_frame::<Frame>(&overlong, FUZZ_MAX_FRAME_BYTES).unwrap().unwrap();
        assert_eq!(decoded, hello);
        wire_frame(&[&[0u8][..], &overlong].concat());
    }

    #[test]
    fn a_huge_claimed_sequence_length_allocates_at_most_the_bound() {
        // AppendEntries claiming u32::MAX entries in a tiny frame:
        // [version][Message][group 1][from 2][term 3][rejoining 0]
        // [AppendEntries][session 5][prev 2@3][entry count ...].
        let mut body = vec![WIRE_VERSION, 1, 1, 2, 3, 0, 4, 5, 2, 3];
        body.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        let (decoded, largest) = measure(|| decode_frame::<Frame>(&frame, FUZZ_MAX_FRAME_BYTES));
        // Refused for the length it claims, not for the version (which
        // would pass this test without decoding anything).
        assert!(
            matches!(decoded, Err(ref e) if !matches!(e, WireError::UnsupportedVersion { .. })),
            "{decoded:?}"
        );
        assert!(largest <= FUZZ_MAX_FRAME_BYTES, "{largest}");
    }
}
