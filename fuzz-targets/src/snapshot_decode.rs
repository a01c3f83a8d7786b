//! `snapshot_decode`: arbitrary bytes into both snapshot decoders.
//!
//! Input: a flag byte, then the bytes. Flag bit 7 picks the decoder:
//! - clear: a storage snapshot file (`snap-<index>-<term>.snap`, header +
//!   postcard meta + data) read back with `snapshot::read` and `verify`;
//!   bit 0 re-seals the header checksum so the fuzzer reaches the metadata
//!   decoder, not only the checksum check.
//! - set: a kv snapshot, as chunks framed `[u16 little-endian length][chunk]`
//!   for `decode_snapshot`; bit 0 re-seals each chunk (chunk number, payload
//!   length and CRC) so the fuzzer reaches the record decoder and the
//!   structural checks.
//!
//! Properties: no panic, errors are typed; `read` and `verify` agree; a
//! storage snapshot that reads back writes back to the same metadata and
//! data; a kv snapshot that decodes passes the state machine's invariant
//! checks, its digest matches the digest in its end record (the decoder
//! checks; we check again by re-encoding: the canonical record stream of the
//! rebuilt state is byte-for-byte the stream that was decoded), and a second
//! round trip keeps the digest.

use std::path::Path;

use bytes::Bytes;
use tarn_io::storage::snapshot::{self, SNAPSHOT_HEADER_BYTES};
use tarn_io::storage::StorageError;
use tarn_io::vfs::{MemVfs, Vfs};
use tarn_kv::{decode_snapshot, KvConfig, KvStateMachine};

/// Bound on a snapshot file the target reads (the input is far smaller).
pub const MAX_SNAPSHOT_FILE_BYTES: u64 = 1 << 20;
/// Chunk framing in the input: little-endian u16 length before each chunk.
pub const CHUNK_LEN_PREFIX_BYTES: usize = 2;
/// Matches tarn-kv's chunk layout: magic 4, version 1, flags 1, number 4,
/// payload length 4; a CRC32C of all that and the payload follows.
pub const KV_CHUNK_HEADER_BYTES: usize = 14;
pub const KV_CHUNK_TRAILER_BYTES: usize = 4;
/// Small so the seeds span several chunks.
pub const SEED_CHUNK_TARGET_BYTES: usize = 96;

pub const FLAG_RESEAL: u8 = 1;
pub const FLAG_KV: u8 = 0x80;

pub fn snapshot_decode(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    if flags & FLAG_KV == 0 {
        storage_snapshot(rest, flags & FLAG_RESEAL != 0);
    } else {
        kv_snapshot(rest, flags & FLAG_RESEAL != 0);
    }
}

/// The kv configuration of the fuzz targets (small bounds, so the fuzzer
/// meets them).
pub fn kv_config() -> KvConfig {
    crate::kv_apply::config()
}

fn storage_snapshot(bytes: &[u8], reseal: bool) {
    let mut file = bytes.to_vec();
    if reseal && file.len() >= SNAPSHOT_HEADER_BYTES {
        let mut crc = crc32c::crc32c(&file[..24]);
        crc = crc32c::crc32c_append(crc, &file[SNAPSHOT_HEADER_BYTES..]);
        file[24..28].copy_from_slice(&crc.to_le_bytes());
    }
    let vfs = MemVfs::new();
    let dir = Path::new("/snap");
    vfs.create_dir_all(dir).expect("mkdir");
    let path = dir.join(snapshot::file_name(9, 2));
    vfs.create(&path).expect("create").write_at(&file, 0).expect("write");
    let read = snapshot::read(&vfs, &path, MAX_SNAPSHOT_FILE_BYTES);
    let verified = snapshot::verify(&vfs, &path);
    match (&read, &verified) {
        (Ok((meta, data)), Ok(verified_meta)) => {
            assert_eq!(meta, verified_meta, "read and verify disagree on the metadata");
            let out = Path::new("/again");
            vfs.create_dir_all(out).expect("mkdir");
            let written = snapshot::write(&vfs, out, meta, data).expect("a read snapshot writes back");
            let back = snapshot::read(&vfs, &written, MAX_SNAPSHOT_FILE_BYTES).expect("and reads again");
            assert_eq!(&back, read.as_ref().expect("matched Ok"), "snapshot round trip changed it");
        }
        (
            Err(StorageError::Corruption { path: p, offset, .. }),
            Err(StorageError::Corruption { path: q, .. }),
        ) => {
            assert_eq!(p, &path);
            assert_eq!(q, &path);
            assert!(*offset <= file.len() as u64);
        }
        other => panic!("read and verify disagree, or fail with a non-corruption error: {other:?}"),
    }
}

/// Splits the framed input into chunks (a short final frame takes the rest).
fn split_chunks(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    while bytes.len() >= CHUNK_LEN_PREFIX_BYTES {
        let len = u16::from_le_bytes([bytes[0], bytes[1]]) as usize;
        let rest = &bytes[CHUNK_LEN_PREFIX_BYTES..];
        let take = len.min(rest.len());
        chunks.push(rest[..take].to_vec());
        bytes = &rest[take..];
    }
    chunks
}

/// Frames chunks as the target's input expects them (for seeds and tests).
pub fn frame_chunks(chunks: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in chunks {
        let len = u16::try_from(chunk.len()).expect("seed chunks are small");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

fn reseal_chunk(chunk: &mut [u8], chunk_no: u32) {
    if chunk.len() < KV_CHUNK_HEADER_BYTES + KV_CHUNK_TRAILER_BYTES {
        return;
    }
    let payload_len = (chunk.len() - KV_CHUNK_HEADER_BYTES - KV_CHUNK_TRAILER_BYTES) as u32;
    chunk[6..10].copy_from_slice(&chunk_no.to_le_bytes());
    chunk[10..14].copy_from_slice(&payload_len.to_le_bytes());
    let body_end = chunk.len() - KV_CHUNK_TRAILER_BYTES;
    let crc = crc32c::crc32c(&chunk[..body_end]);
    chunk[body_end..].copy_from_slice(&crc.to_le_bytes());
}

/// The concatenated payloads of well-formed chunks: the record stream.
fn record_stream<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend_from_slice(&chunk[KV_CHUNK_HEADER_BYTES..chunk.len() - KV_CHUNK_TRAILER_BYTES]);
    }
    out
}

fn kv_snapshot(bytes: &[u8], reseal: bool) {
    let mut chunks = split_chunks(bytes);
    if reseal {
        for (k, chunk) in chunks.iter_mut().enumerate() {
            reseal_chunk(chunk, k as u32);
        }
    }
    let decoded = decode_snapshot(kv_config(), chunks.iter().map(Vec::as_slice));
    let Ok(machine) = decoded else { return };
    machine.check_invariants();
    let digest = machine.digest();
    let encoded: Vec<Bytes> = machine.snapshot_chunks(SEED_CHUNK_TARGET_BYTES).collect();
    assert_eq!(
        record_stream(encoded.iter().map(|c| &c[..])),
        record_stream(chunks.iter().map(Vec::as_slice)),
        "the decoded record stream is not the canonical encoding of the state it rebuilt"
    );
    let again: KvStateMachine =
        decode_snapshot(kv_config(), encoded.iter().map(|c| &c[..])).expect("a re-encoded snapshot decodes");
    assert_eq!(again.digest(), digest, "snapshot round trip changed the digest");
}
