//! The narrow file-system interface the storage engine is written against.
//!
//! Production runs the engine over [`StdVfs`] (real files); the simulator runs
//! the *same* engine over a faulty in-memory disk, and the crate's own tests
//! run it over [`MemVfs`], which can replay any crash. Nothing in
//! `crate::storage` may touch `std::fs` directly: every byte goes through
//! this trait, so the recovery code that runs in production is the recovery
//! code the simulator attacks.
//!
//! # Crash semantics the engine relies on
//!
//! An implementation must provide at least these guarantees, and the engine
//! assumes nothing more:
//!
//! - **File data** written with [`VfsFile::write_at`] is durable only after a
//!   later [`VfsFile::sync_data`] on the same file returns `Ok`. Before that, a
//!   crash may lose it. Size changes made by [`VfsFile::truncate`] are durable
//!   under the same rule (fdatasync flushes the size when data needs it).
//! - **Directory entries** (a file made by [`Vfs::create`], a [`Vfs::rename`], a
//!   [`Vfs::remove`]) are durable only after [`Vfs::sync_dir`] of the parent
//!   directory returns `Ok`. `rename` is atomic: after a crash the destination
//!   names either the old file or the new one, never a mix.
//! - **Torn writes**: the engine's *tail repair* assumes unsynced writes to one
//!   file persist as an ordered prefix, the last one possibly torn at any byte
//!   (the model the tests and the simulator inject). Any other loss pattern
//!   (an unsynced hole followed by persisted data) may make recovery report
//!   corruption — it fails safe, it never silently drops acknowledged data.
//! - **Files are not ordered with each other**: until fsynced, a crash may
//!   keep one file's later writes and lose another file's earlier ones. The
//!   engine orders writes across files only by `sync_data` (a log segment is
//!   written only once every earlier segment is durable).
//! - **Errors are final**: after `write_at` or `sync_data` returns `Err`, the
//!   engine assumes the file's unsynced contents are unknown (Linux may have
//!   dropped the dirty pages and cleared the error) and never retries on that
//!   file; it poisons the owning group instead.
//! - **Reads** return what was last written (synced or not) while the process
//!   lives; after a crash, what survived.
//!
//! The trait is object safe (`Arc<dyn Vfs>`), `Send + Sync` so a driver may
//! move the engine to a dedicated thread, and names files by `&Path`.

use std::io;
use std::path::Path;

mod mem;
mod pooled;
mod std_vfs;

pub use mem::{CrashMode, Faults, MemVfs, Unsynced};
pub use pooled::{open_files_soft_limit, raise_open_files_limit, PoolStats, PooledVfs};
pub use std_vfs::StdVfs;

/// An open file. Positioned I/O only: there is no cursor, so a handle can be
/// shared without coordinating seeks.
#[allow(clippy::len_without_is_empty)] // `len` is fallible I/O; emptiness is never asked.
pub trait VfsFile: Send + Sync + std::fmt::Debug {
    /// Fills all of `buf` from `offset`. Reading past the end of the file is an
    /// `UnexpectedEof` error (the engine always knows the length it reads).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Writes all of `buf` at `offset`, extending the file if needed (a gap
    /// reads as zeros). Not durable until [`VfsFile::sync_data`].
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Makes every previous successful `write_at`/`truncate` of this file
    /// durable (`fdatasync`). Does not make the file's *name* durable: see
    /// [`Vfs::sync_dir`].
    fn sync_data(&self) -> io::Result<()>;

    /// Sets the file length to `len_bytes`: shrinks, or extends with zeros
    /// (preallocation). Durable after `sync_data`.
    fn truncate(&self, len_bytes: u64) -> io::Result<()>;

    /// The current length in bytes (including unsynced growth).
    fn len(&self) -> io::Result<u64>;
}

/// A file system: a tree of directories holding [`VfsFile`]s.
pub trait Vfs: Send + Sync + std::fmt::Debug {
    /// Creates a new empty file, readable and writable. Fails with
    /// `AlreadyExists` if the path exists. The name is durable only after
    /// `sync_dir` of the parent.
    fn create(&self, path: &Path) -> io::Result<Box<dyn VfsFile>>;

    /// Opens an existing file for reading and writing; `NotFound` otherwise.
    fn open(&self, path: &Path) -> io::Result<Box<dyn VfsFile>>;

    /// Atomically renames `from` to `to`, replacing `to` if it exists.
    /// Durable after `sync_dir` of the parent(s).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Removes a file. Durable after `sync_dir` of the parent.
    fn remove(&self, path: &Path) -> io::Result<()>;

    /// The names (not paths) of the entries of directory `dir`, sorted
    /// ascending so that callers iterate deterministically.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;

    /// Makes the entries of `dir` (creates, renames, removes) durable
    /// (`fsync` of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// fdatasyncs several files, one result per file in order. Same
    /// guarantee per file as [`VfsFile::sync_data`]; no order between files.
    /// The engine calls this once per flush with every file the flush wrote,
    /// so an implementation may overlap the syncs (the real one issues them
    /// concurrently: the file system then commits them together). The
    /// default is sequential, which keeps a simulated disk deterministic.
    fn sync_data_batch(&self, files: &[&dyn VfsFile]) -> Vec<io::Result<()>> {
        files.iter().map(|f| f.sync_data()).collect()
    }

    /// Creates `dir` and its missing parents; `Ok` if it already exists.
    /// Durable once the parents are synced (the engine syncs the parent of
    /// every directory it creates).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;

    /// Removes the empty directory `dir`. Durable after `sync_dir` of the
    /// parent. The default reports `Unsupported`: the engine then leaves the
    /// empty directory in place (harmless; `Storage::remove_group` has
    /// already removed every file in it).
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::Unsupported, format!("cannot remove directory {}", dir.display())))
    }
}
