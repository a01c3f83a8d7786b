//! Snapshot chunks: round trip, and every kind of damage is refused with a clear error.

mod support;

use bytes::Bytes;
use support::{mkdir, put, Harness};
use tarn_kv::{decode_snapshot, Command, SnapshotDecoder, SnapshotError};

fn populated() -> Harness {
    let mut h = Harness::new();
    h.run(1, mkdir("app")).unwrap();
    for i in 0..200 {
        h.run(1 + i % 3, put(&format!("app.k{i:03}"), &format!("value-{i}"))).unwrap();
    }
    h.run(4, Command::PutTemp { key: "app.temp".into(), value: support::b("t"), ttl_nanos: 500 }).unwrap();
    h.run(5, Command::TryLock { key: "app.lock".into(), lease_nanos: 500, wait_nanos: 0 }).unwrap();
    h.run(6, Command::TryLock { key: "app.lock".into(), lease_nanos: 500, wait_nanos: 900 }).unwrap();
    h
}

fn chunks(h: &Harness, target: usize) -> Vec<Bytes> {
    h.kv.snapshot_chunks(target).collect()
}

fn decode(chunks: &[Vec<u8>]) -> Result<tarn_kv::KvStateMachine, SnapshotError> {
    decode_snapshot(support::config(), chunks.iter().map(|c| &c[..]))
}

#[test]
fn round_trip_rebuilds_an_identical_state() {
    let h = populated();
    let original: Vec<Vec<u8>> = chunks(&h, 512).into_iter().map(|c| c.to_vec()).collect();
    assert!(original.len() > 5);
    let decoded = decode(&original).unwrap();
    assert_eq!(decoded.digest(), h.kv.digest());
    assert_eq!(decoded.node_count(), h.kv.node_count());
    assert_eq!(decoded.session_count(), 6);
    assert_eq!(decoded.get("app.lock").unwrap(), h.kv.get("app.lock").unwrap());
    assert_eq!(decoded.ttl_count(), 3, "temp node, lock holder and waiter re-armed");
    // Chunking does not change the content.
    let single: Vec<Vec<u8>> = chunks(&h, usize::MAX).into_iter().map(|c| c.to_vec()).collect();
    assert_eq!(single.len(), 1);
    assert_eq!(decode(&single).unwrap().digest(), h.kv.digest());
}

#[test]
fn digest_changes_with_any_replicated_change() {
    let mut h = populated();
    let before = h.kv.digest();
    h.run(1, put("app.k000", "other")).unwrap();
    assert_ne!(h.kv.digest(), before);
    let before = h.kv.digest();
    h.run(4, Command::UpdateTtl { key: "app.temp".into(), ttl_nanos: 600 }).unwrap();
    assert_ne!(h.kv.digest(), before, "TTL state is replicated state");
}

#[test]
fn every_flipped_bit_is_caught() {
    let h = populated();
    let original: Vec<Vec<u8>> = chunks(&h, 4096).into_iter().map(|c| c.to_vec()).collect();
    for chunk_no in 0..original.len() {
        for byte in (0..original[chunk_no].len()).step_by(7) {
            let mut damaged = original.clone();
            damaged[chunk_no][byte] ^= 0x10;
            assert!(decode(&damaged).is_err(), "flip in chunk {chunk_no} byte {byte} went unnoticed");
        }
    }
}

#[test]
fn missing_reordered_or_extra_chunks_are_refused() {
    let h = populated();
    let original: Vec<Vec<u8>> = chunks(&h, 1024).into_iter().map(|c| c.to_vec()).collect();
    assert!(original.len() >= 3);
    let mut missing_last = original.clone();
    missing_last.pop();
    assert_eq!(decode(&missing_last).unwrap_err(), SnapshotError::Incomplete);
    let mut swapped = original.clone();
    swapped.swap(0, 1);
    assert_eq!(decode(&swapped).unwrap_err(), SnapshotError::OutOfOrder { expected: 0, found: 1 });
    let mut extra = original.clone();
    extra.push(original[0].clone());
    assert!(matches!(decode(&extra).unwrap_err(), SnapshotError::BadChunk { .. }));
    assert!(matches!(decode(&[vec![1, 2, 3]]).unwrap_err(), SnapshotError::BadChunk { chunk: 0, .. }));
    assert!(matches!(decode(&[]).unwrap_err(), SnapshotError::Incomplete));
}

#[test]
fn a_well_checksummed_but_inconsistent_snapshot_is_refused() {
    // Re-checksum a chunk after damaging its payload: structure checks must still catch it.
    let h = populated();
    let original: Vec<Vec<u8>> = chunks(&h, usize::MAX).into_iter().map(|c| c.to_vec()).collect();
    let mut chunk = original[0].clone();
    let body_len = chunk.len() - 4;
    let mut caught = 0;
    for byte in (14..body_len).step_by(13) {
        let mut damaged = chunk.clone();
        damaged[byte] ^= 0x01;
        let crc = crc32c_of(&damaged[..body_len]);
        damaged[body_len..].copy_from_slice(&crc.to_le_bytes());
        let mut decoder = SnapshotDecoder::new(support::config());
        let result = decoder.push_chunk(&damaged).and_then(|()| decoder.finish().map(|_| ()));
        if result.is_err() {
            caught += 1;
        }
    }
    let tried = (14..body_len).step_by(13).count();
    assert_eq!(caught, tried, "the end digest catches what the structure checks do not");
    chunk.truncate(10);
    assert!(decode(&[chunk]).is_err());
}

/// CRC-32C (Castagnoli), bitwise, so the test does not need the crc32c crate.
fn crc32c_of(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// Wraps `payload` in a well-formed, correctly checksummed chunk.
fn frame(chunk_no: u32, last: bool, payload: &[u8]) -> Vec<u8> {
    let mut chunk = b"TKVS".to_vec();
    chunk.push(1);
    chunk.push(u8::from(last));
    chunk.extend_from_slice(&chunk_no.to_le_bytes());
    chunk.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    chunk.extend_from_slice(payload);
    let crc = crc32c_of(&chunk);
    chunk.extend_from_slice(&crc.to_le_bytes());
    chunk
}

#[test]
fn random_payloads_in_valid_frames_are_errors_not_panics() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Start from a real payload so the decoder gets past the first records sometimes.
    let h = populated();
    let real = chunks(&h, usize::MAX)[0].to_vec();
    let real_payload = &real[14..real.len() - 4];
    for round in 0..2_000 {
        let mut payload = if round % 2 == 0 {
            real_payload[..(next() as usize % real_payload.len())].to_vec()
        } else {
            (0..next() % 300).map(|_| next() as u8).collect()
        };
        for _ in 0..(next() % 4) {
            if !payload.is_empty() {
                let at = next() as usize % payload.len();
                payload[at] = next() as u8;
            }
        }
        let chunk = frame(0, next() % 2 == 0, &payload);
        let mut decoder = SnapshotDecoder::new(support::config());
        if decoder.push_chunk(&chunk).is_ok() {
            // Accepted chunks must still not produce a state unless everything checks out.
            if let Ok(machine) = decoder.finish() {
                machine.check_invariants();
            }
        }
    }
}

#[test]
fn a_fork_has_the_same_digest_and_lives_on_its_own() {
    let mut h = populated();
    let fork = h.kv.fork();
    assert_eq!(fork.digest(), h.kv.digest());
    fork.check_invariants();
    h.run(1, put("app.k000", "changed")).unwrap();
    assert_ne!(fork.digest(), h.kv.digest());
    assert_eq!(fork.get("app.k000").unwrap().unwrap().value, support::b("value-0"));
    // The fork can be encoded on another thread while the original keeps applying.
    let encoder = std::thread::spawn(move || fork.snapshot_chunks(4096).collect::<Vec<Bytes>>());
    h.run(1, put("app.k001", "changed")).unwrap();
    let chunks = encoder.join().unwrap();
    let decoded = decode_snapshot(support::config(), chunks.iter().map(|c| &c[..])).unwrap();
    assert_eq!(decoded.get("app.k001").unwrap().unwrap().value, support::b("value-1"));
}

/// The stream a leader sends (and storage reads back) is cut anywhere: the
/// stream decoder rebuilds the same state whatever the piece sizes, refuses
/// a stream that ends inside a chunk, and bounds a chunk's claimed length
/// before buffering it.
#[test]
fn the_stream_decoder_takes_pieces_of_any_size_and_bounds_chunks() {
    use tarn_kv::SnapshotStreamDecoder;
    let h = populated();
    let stream: Vec<u8> = chunks(&h, 256).concat();
    for piece in [1, 7, 13, 256, 4096, stream.len()] {
        let mut d = SnapshotStreamDecoder::new(support::config());
        for p in stream.chunks(piece) {
            d.push(p).unwrap();
        }
        assert_eq!(d.finish().unwrap().digest(), h.kv.digest(), "pieces of {piece} bytes");
    }
    let mut cut = SnapshotStreamDecoder::new(support::config());
    cut.push(&stream[..stream.len() - 3]).unwrap();
    assert!(cut.finish().unwrap_err().contains("ends inside a chunk"));
    let mut huge = stream[..14].to_vec();
    huge[10..14].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = SnapshotStreamDecoder::new(support::config()).push(&huge).unwrap_err();
    assert!(err.contains("exceeds the bound"), "{err}");
}
