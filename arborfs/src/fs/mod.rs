//! The filesystem layer: POSIX files, directories, links and attributes,
//! every one of them keys in the engine's b-trees.
//!
//! The API is inode-number based (like the kernel's and FUSE's low-level
//! interface); `path` adds a path-based API for embedding. Every operation
//! is one engine transaction, retried on restart.

pub mod acl;
pub mod buffered;
pub mod compress;
pub mod data;
pub mod dirent;
pub mod dirent_format;
pub mod error;
pub mod fsck;
pub mod hashtab;
pub mod inode;
pub mod inode_format;
pub mod namei;
pub mod pagecache;
pub mod path;
pub mod perm;
pub mod rename;
pub mod setattr;
pub mod types;
pub mod xattr;
pub mod xattr_format;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

pub use buffered::Written;
pub use data::{FallocFlags, SeekWhence};
pub use dirent::DirEntry;
pub use error::{FsError, FsResult};
pub use path::{File, ReadDir};
pub use rename::RenameFlags;
pub use setattr::{SetAttr, TimeOrNow};
pub use types::*;
pub use xattr::XattrSet;

use crate::alloc::alloc_format::Counter;
use crate::btree::trans::{Durability, Transaction};
use crate::device::Device;
use crate::engine::{Engine, EngineOptions};
use crate::error::Error;
use crate::key::{BtreeId, Pos};
use crate::sb::{FormatOptions, Superblock};
use inode_format::InodeValue;

/// How a filesystem is opened.
#[derive(Clone, Debug, Default)]
pub struct FsOptions {
    /// How the storage engine is opened (cache size, read-only, background thread).
    pub engine: EngineOptions,
    /// Don't update access times on reads.
    pub noatime: bool,
    /// `-o compression=`: overrides the superblock's default for inodes
    /// that inherit it.
    pub compression: Option<compress::Compression>,
    /// Byte limit of the page cache (0: the default, 64 MiB).
    pub page_cache_bytes: usize,
    /// Bytes read ahead of a sequential reader into the page cache (`None`:
    /// the default, 1 MiB; 0: none). Changed later by [`FsCore::set_readahead`].
    pub readahead_bytes: Option<u64>,
    /// A cache above this layer keeps what reads return (the kernel's page
    /// cache under FUSE): pages read for a caller are then not cached here
    /// too (only readahead and written pages are), which saves a copy and
    /// the memory of a second cached copy.
    pub upper_cache: bool,
}

/// Space and inode counts for `statfs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    /// Fundamental block size (bytes).
    pub bsize: u32,
    /// Capacity for data, in `bsize` blocks.
    pub blocks: u64,
    /// Free blocks (capacity less live data, metadata and the reserve).
    pub bfree: u64,
    /// Free blocks available to unprivileged users (the same as `bfree`).
    pub bavail: u64,
    /// Inode numbers in use or available.
    pub files: u64,
    /// Inode numbers still available.
    pub ffree: u64,
    /// Longest file name in bytes (255).
    pub namelen: u32,
}

/// An open filesystem. Every operation is a method of [`FsCore`], which
/// this dereferences to; `Fs` owns the background writeback thread and the
/// orderly shutdown ([`Fs::close`]).
pub struct Fs {
    // Dropped first: its thread writes back what is dirty before it ends,
    // while `core` is still alive. Dropping an `Fs` without `close` is
    // otherwise like a crash: what was not synced may be lost.
    flusher: Option<Flusher>,
    core: Arc<FsCore>,
}

/// The background writeback thread.
struct Flusher {
    stop: Arc<(Mutex<bool>, parking_lot::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    fn start(core: std::sync::Weak<FsCore>) -> std::io::Result<Flusher> {
        let stop = Arc::new((Mutex::new(false), parking_lot::Condvar::new()));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("arborfs-writeback".into())
            .spawn(move || {
                let (lock, cv) = &*stop2;
                loop {
                    let stopping = {
                        let mut g = lock.lock();
                        if !*g {
                            cv.wait_for(&mut g, std::time::Duration::from_millis(500));
                        }
                        *g
                    };
                    let Some(core) = core.upgrade() else {
                        return;
                    };
                    let r = if stopping {
                        core.writeback_all()
                    } else {
                        core.writeback_background()
                    };
                    if let Err(e) = r {
                        tracing::error!("background writeback failed: {e}");
                    }
                    if stopping {
                        return;
                    }
                }
            })?;
        Ok(Flusher {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::ops::Deref for Fs {
    type Target = FsCore;
    fn deref(&self) -> &FsCore {
        &self.core
    }
}

/// The filesystem's state and operations (reached through [`Fs`]).
pub struct FsCore {
    pub(crate) engine: Engine,
    next_ino: AtomicU64,
    /// Open handles per inode; an unlinked inode lives until its last close.
    open_counts: Mutex<HashMap<u64, u32>>,
    pub(crate) opts: FsOptions,
    generation: AtomicU64,
    /// Per-inode IO locks (shared for reads and writes inside the file,
    /// exclusive for size changes) and pagecache add/block locks, created
    /// on demand and dropped when unused (docs/locking.md).
    pub(crate) locks: arborfs_iolock::IoLockTable,
    /// One writeback of an inode at a time (striped; a leaf lock).
    writeback_locks: Vec<Mutex<()>>,
    pub(crate) pages: pagecache::PageCache,
    /// Readahead of sequential reads, in pages.
    readahead_pages: AtomicU64,
}

/// Readahead of sequential reads unless `FsOptions::readahead_bytes` says.
pub const DEFAULT_READAHEAD_BYTES: u64 = 1 << 20;

/// Dirty data older than this is written back by the background thread.
pub const DIRTY_EXPIRE: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) fn inode_pos(ino: InodeNo) -> Pos {
    Pos::new(0, ino.0, ROOT_SNAPSHOT)
}

/// Position range of the orphan list: inodes unlinked while open.
pub(crate) fn orphan_pos(ino: InodeNo) -> Pos {
    Pos::new(1, ino.0, ROOT_SNAPSHOT)
}

impl Fs {
    /// Formats `dev` and creates the root directory.
    pub fn format(dev: Arc<dyn Device>, opts: &FormatOptions) -> FsResult<Superblock> {
        Engine::format(dev.clone(), opts)?;
        let engine = Engine::open(
            dev.clone(),
            EngineOptions {
                background: false,
                ..Default::default()
            },
        )?;
        let now = Timespec::now();
        let root = InodeValue {
            mode: S_IFDIR | 0o755,
            nlink: 2,
            atime: now,
            mtime: now,
            ctime: now,
            btime: now,
            generation: 1,
            parent: ROOT_INO.0,
            ..Default::default()
        };
        engine.transact(Durability::Durable, |tx| {
            tx.put(
                BtreeId::Inodes,
                crate::key::Key::new(
                    inode_pos(ROOT_INO),
                    crate::key::KeyType::Inode,
                    root.encode(),
                ),
            );
            Ok(())
        })?;
        engine.close()?;
        let (sb, _) = Superblock::read(&*dev)?;
        Ok(sb)
    }

    /// Opens the filesystem on `dev`; removes inodes left unlinked-but-open
    /// by a crash. Unless read-only, starts the thread that writes back
    /// dirty file data after [`DIRTY_EXPIRE`] (and when over the cache's
    /// dirty limit).
    pub fn open(dev: Arc<dyn Device>, opts: FsOptions) -> FsResult<Fs> {
        let engine = Engine::open(dev, opts.engine.clone())?;
        let last = engine
            .iter_rev(
                BtreeId::Inodes,
                Pos::new(0, 0, 0),
                Pos::new(0, u64::MAX, u32::MAX),
            )
            .next()
            .transpose()?
            .map_or(ROOT_INO.0, |k| k.pos.offset);
        let page_cache_bytes = if opts.page_cache_bytes == 0 {
            pagecache::DEFAULT_PAGE_CACHE_BYTES
        } else {
            opts.page_cache_bytes
        };
        let core = FsCore {
            engine,
            next_ino: AtomicU64::new(last.max(ROOT_INO.0) + 1),
            open_counts: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(last),
            locks: arborfs_iolock::IoLockTable::new(),
            writeback_locks: (0..64).map(|_| Mutex::new(())).collect(),
            pages: pagecache::PageCache::new(page_cache_bytes),
            readahead_pages: AtomicU64::new(
                opts.readahead_bytes.unwrap_or(DEFAULT_READAHEAD_BYTES) / pagecache::PAGE,
            ),
            opts,
        };
        if !core.opts.engine.read_only {
            core.reap_orphans()?;
        }
        let core = Arc::new(core);
        let flusher = (!core.opts.engine.read_only && core.opts.engine.background)
            .then(|| Flusher::start(Arc::downgrade(&core)))
            .transpose()
            .map_err(|e| FsError::Io(format!("cannot start the writeback thread: {e}")))?;
        Ok(Fs { core, flusher })
    }

    /// Writes back cached data, writes everything and marks the
    /// filesystem clean.
    pub fn close(self) -> FsResult<()> {
        let Fs { flusher, core } = self;
        drop(flusher);
        if !core.is_read_only() {
            core.writeback_all()?;
        }
        let core = Arc::try_unwrap(core).map_err(|_| FsError::Busy)?;
        core.engine.close()?;
        Ok(())
    }
}

impl FsCore {
    /// The storage engine underneath (transactions, counters, copygc).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// True if opened read-only: every change fails with `ReadOnly`.
    pub fn is_read_only(&self) -> bool {
        self.opts.engine.read_only
    }

    pub(crate) fn alloc_ino(&self) -> InodeNo {
        InodeNo(self.next_ino.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Runs `f` as one transaction, again from the top on a restart.
    pub(crate) fn tx<T>(
        &self,
        durability: Durability,
        mut f: impl FnMut(&mut Transaction<'_>) -> FsResult<T>,
    ) -> FsResult<T> {
        // Reads run through here too; only commits are refused below.
        loop {
            let mut t = self.engine.begin();
            match f(&mut t) {
                Ok(v) => {
                    if t.is_empty() {
                        return Ok(v);
                    }
                    if self.is_read_only() {
                        return Err(FsError::ReadOnly);
                    }
                    match t.commit(durability) {
                        Ok(_) => return Ok(v),
                        Err(Error::Restart(_)) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(FsError::Restart) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Space and inode counts from the persistent accounting.
    pub fn statfs(&self) -> StatFs {
        let c = self.engine.counters();
        let geo = self.engine.geometry();
        let bucket_bytes = geo.bucket_sectors * crate::SECTOR_BYTES;
        let data_buckets = geo.nbuckets - geo.first_data_bucket;
        let bsize = 4096u64;
        let blocks = data_buckets * bucket_bytes / bsize;
        // Free = capacity less live data and metadata, less the reserve that
        // keeps deletes and checkpoints working on a full filesystem.
        let used_bytes = (c[Counter::UserSectors as usize].max(0)
            + c[Counter::BtreeSectors as usize].max(0)) as u64
            * crate::SECTOR_BYTES;
        let reserve = geo.reserved_buckets() * bucket_bytes;
        let bfree = (data_buckets * bucket_bytes).saturating_sub(used_bytes + reserve) / bsize;
        let files = self.next_ino.load(Ordering::Relaxed);
        StatFs {
            bsize: bsize as u32,
            blocks,
            bfree,
            bavail: bfree,
            files: files.max(1 << 20),
            ffree: (1u64 << 32).saturating_sub(files),
            namelen: dirent_format::NAME_MAX as u32,
        }
    }

    /// Makes every change so far durable, cached file data included.
    pub fn sync(&self) -> FsResult<()> {
        self.writeback_all()?;
        self.engine.sync()?;
        Ok(())
    }

    /// Gives the space of every free bucket back to the storage (fstrim):
    /// writes back cached data and makes every change durable first, and
    /// checkpoints, so that buckets emptied by recent deletes count as free.
    pub fn trim(&self) -> FsResult<crate::engine::TrimReport> {
        self.sync()?;
        self.engine.checkpoint()?;
        self.engine.sync()?;
        Ok(self.engine.trim()?)
    }

    pub(crate) fn open_count(&self, ino: InodeNo) -> u32 {
        self.open_counts.lock().get(&ino.0).copied().unwrap_or(0)
    }

    /// Notes a new open handle.
    pub fn open_inode(&self, ino: InodeNo) -> FsResult<Attr> {
        let attr = self.getattr(ino)?;
        *self.open_counts.lock().entry(ino.0).or_default() += 1;
        Ok(attr)
    }

    /// Drops an open handle; the last close of an unlinked inode frees it.
    pub fn release(&self, ino: InodeNo) -> FsResult<()> {
        let last = {
            let mut m = self.open_counts.lock();
            match m.get_mut(&ino.0) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    m.remove(&ino.0);
                    true
                }
                None => false,
            }
        };
        if last && !self.is_read_only() {
            let v = self.tx(Durability::Lazy, |tx| inode::read_inode_opt(tx, ino))?;
            if v.is_some_and(|v| v.nlink == 0) {
                self.evict_inode(ino)?;
            }
        }
        Ok(())
    }

    /// Deletes inodes a crash left unlinked-but-open.
    fn reap_orphans(&self) -> FsResult<()> {
        let orphans: Vec<u64> = self
            .engine
            .iter(
                BtreeId::Inodes,
                orphan_pos(InodeNo(0)),
                orphan_pos(InodeNo(u64::MAX)),
            )
            .map(|k| k.map(|k| k.pos.offset))
            .collect::<Result<_, _>>()?;
        for ino in orphans {
            self.evict_inode(InodeNo(ino))?;
        }
        Ok(())
    }
}
