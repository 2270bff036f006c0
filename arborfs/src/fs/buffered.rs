//! The IO paths through the page cache: buffered reads and writes,
//! writeback, fsync, and direct IO that bypasses the cache.
//!
//! Locks, taken in this order (see docs/locking.md, "Filesystem IO locks"):
//! the inode's IO lock (shared for reads and writes inside the file,
//! exclusive for writes that extend it and for size changes), then its
//! pagecache lock ("add", shared, for paths that put pages in the cache;
//! "block", exclusive, for paths that change the file underneath the
//! cache), then the writeback lock (one writeback of an inode at a time),
//! then engine locks. A writeback needs the IO lock held by its caller.

use std::sync::atomic::Ordering;

use arborfs_iolock::{IoMode, LockSet, PagecacheMode};
use parking_lot::Mutex;

use super::FsCore;
use super::data::{Stored, add_extents, kill_suid, regular};
use super::error::{FsError, FsResult};
use super::inode::{MAX_FILE_SIZE, read_inode, write_inode};
use super::inode_format::InodeValue;
use super::pagecache::PAGE;
use super::types::*;
use crate::SECTOR_BYTES;
use crate::btree::trans::Durability;

/// Pages a writeback run may hold: runs become extents of up to
/// `MAX_EXTENT_BYTES` each, written together.
const MAX_RUN_PAGES: usize = 256;
/// Writeback commits at most this many runs, or this many bytes of them,
/// per transaction.
const RUNS_PER_TX: usize = 64;
const BYTES_PER_TX: usize = 4 << 20;
/// Free space kept beyond the dirty data before a buffered write falls
/// back to writing through (so ENOSPC is reported by the write itself).
const SPACE_MARGIN: u64 = 16 << 20;

impl FsCore {
    /// Takes one inode's IO lock and, if asked, its pagecache lock (in
    /// order, so it never has to retry). Released when the set drops.
    pub(crate) fn lock_inode(
        &self,
        ino: InodeNo,
        io: IoMode,
        pagecache: Option<PagecacheMode>,
    ) -> LockSet<'_> {
        let mut l = self.locks.lock_set();
        l.acquire(|s| {
            s.lock_io(ino.0, io)?;
            if let Some(m) = pagecache {
                s.lock_pagecache(ino.0, m)?;
            }
            Ok(())
        });
        l
    }

    /// Adds the pagecache lock of an inode whose IO lock `l` holds (in
    /// order after it: never retries).
    fn add_pagecache_lock(l: &mut LockSet<'_>, ino: InodeNo, mode: PagecacheMode) {
        l.acquire(|s| s.lock_pagecache(ino.0, mode));
    }

    fn writeback_lock(&self, ino: InodeNo) -> &Mutex<()> {
        &self.writeback_locks[stripe(ino, self.writeback_locks.len())]
    }

    /// The file's size including buffered writes not written back yet.
    /// Reads the cache first: a writeback that finishes in between has
    /// already put the size on disk.
    fn cached_size(&self, ino: InodeNo) -> FsResult<u64> {
        Ok(self.inode_and_cached_size(ino)?.1)
    }

    /// The inode as on disk, and [`Self::cached_size`] from the same read.
    fn inode_and_cached_size(&self, ino: InodeNo) -> FsResult<(InodeValue, u64)> {
        let pending = self.pages.pending(ino.0).size;
        let v = self.tx(Durability::Lazy, |tx| read_inode(tx, ino))?;
        regular(&v)?;
        let size = pending.map_or(v.size, |p| p.max(v.size));
        Ok((v, size))
    }

    /// Overlays what buffered writes changed and has not been written back
    /// (size, times, blocks about to be allocated) on attributes read from
    /// disk.
    pub(crate) fn overlay_attr(&self, mut a: Attr) -> Attr {
        if a.kind != FileKind::Regular {
            return a;
        }
        let p = self.pages.pending(a.ino.0);
        if let Some(size) = p.size {
            a.size = a.size.max(size);
        }
        if let Some(t) = p.times {
            a.mtime = t;
            a.ctime = t;
        }
        a.blocks += self.pages.dirty_pages(a.ino.0) as u64 * (PAGE / SECTOR_BYTES);
        a
    }

    /// Reads `buf.len()` bytes at `offset`; short only at end of file.
    /// Served from the page cache; missing pages are read from disk and
    /// cached, with readahead when reads are sequential.
    pub fn read(&self, ino: InodeNo, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        let _l = self.lock_inode(ino, IoMode::Shared, Some(PagecacheMode::Add));
        self.read_locked(ino, offset, buf)
    }

    /// `read` for a caller holding the IO lock and pagecache add lock.
    fn read_locked(&self, ino: InodeNo, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        let size = self.cached_size(ino)?;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let n = (size - offset).min(buf.len() as u64) as usize;
        let out = &mut buf[..n];
        let mut hit = Vec::new();
        let sequential = self.pages.read(ino.0, offset, out, &mut hit);
        let first = offset / PAGE;
        let size_pages = size.div_ceil(PAGE);
        let mut i = 0;
        while i < hit.len() {
            if hit[i] {
                i += 1;
                continue;
            }
            let mut j = i;
            while j < hit.len() && !hit[j] {
                j += 1;
            }
            let (a, b) = (first + i as u64, first + j as u64);
            let readahead = self.readahead_pages.load(Ordering::Relaxed);
            let fill_end = if sequential && j == hit.len() {
                (b + readahead).min(size_pages).max(b)
            } else {
                b
            };
            // The part of [a, b) the caller asked for.
            let from = (a * PAGE).max(offset);
            let to = (b * PAGE).min(offset + n as u64);
            let generation = self.pages.generation(ino.0);
            if self.opts.upper_cache {
                // Straight into the caller's buffer; only readahead is kept.
                let dst = &mut out[(from - offset) as usize..(to - offset) as usize];
                let mut keep =
                    |off: u64, bytes: &[u8]| self.keep_around(ino, off, bytes, (a, b), generation);
                let got = self.read_inner_around(ino, from, dst, Some(&mut keep))?;
                dst[got..].fill(0);
                if fill_end > b {
                    self.fill_pages(ino, b, fill_end, generation)?;
                }
            } else {
                with_scratch(((fill_end - a) * PAGE) as usize, |data| {
                    let mut keep = |off: u64, bytes: &[u8]| {
                        self.keep_around(ino, off, bytes, (a, fill_end), generation)
                    };
                    let got = self.read_inner_around(ino, a * PAGE, data, Some(&mut keep))?;
                    // Past the on-disk end: zeros up to the in-memory size.
                    data[got..].fill(0);
                    out[(from - offset) as usize..(to - offset) as usize].copy_from_slice(
                        &data[(from - a * PAGE) as usize..(to - a * PAGE) as usize],
                    );
                    self.pages.fill(ino.0, a, data, generation);
                    Ok::<_, FsError>(())
                })?;
            }
            i = j;
        }
        Ok(n)
    }

    /// Caches the whole pages `bytes` at file offset `off` (verified bytes a
    /// read got beyond what it asked for) outside `skip`, a page range the
    /// caller handles: a small read inside a checksummed or compressed unit
    /// reads the whole unit, and its neighbours are then free to serve.
    fn keep_around(&self, ino: InodeNo, off: u64, bytes: &[u8], skip: (u64, u64), generation: u64) {
        let (first, end) = (off / PAGE, off / PAGE + bytes.len() as u64 / PAGE);
        let page_bytes = |p: u64| ((p - first) * PAGE) as usize;
        if first < skip.0 {
            let to = end.min(skip.0);
            self.pages
                .fill(ino.0, first, &bytes[..page_bytes(to)], generation);
        }
        if end > skip.1 {
            let from = first.max(skip.1);
            self.pages
                .fill(ino.0, from, &bytes[page_bytes(from)..], generation);
        }
    }

    /// Reads pages `[a, b)` from disk into the cache (if nothing changed the
    /// file since `generation`).
    fn fill_pages(&self, ino: InodeNo, a: u64, b: u64, generation: u64) -> FsResult<()> {
        with_scratch(((b - a) * PAGE) as usize, |data| {
            let got = self.read_inner(ino, a * PAGE, data)?;
            data[got..].fill(0);
            self.pages.fill(ino.0, a, data, generation);
            Ok(())
        })
    }

    /// Sets how far sequential reads are read ahead into the page cache
    /// (0: not at all), e.g. when a kernel above reads ahead itself.
    pub fn set_readahead(&self, bytes: u64) {
        self.readahead_pages.store(bytes / PAGE, Ordering::Relaxed);
    }

    /// Writes `data` at `offset` into the page cache, extending the file as
    /// needed; written back later (fsync, sync, memory pressure, age,
    /// unmount). When free space runs low it writes through instead, so a
    /// full filesystem fails the write itself with `NoSpace`.
    pub fn write(
        &self,
        caller: &Caller,
        ino: InodeNo,
        offset: u64,
        data: &[u8],
    ) -> FsResult<usize> {
        self.write_reporting(caller, ino, offset, data, false)
            .map(|w| w.bytes)
    }

    /// `write` (or, if `direct`, `write_direct`), also saying whether it
    /// cleared setuid/setgid (a cache above, like the kernel's, then holds
    /// an outdated mode).
    pub fn write_reporting(
        &self,
        caller: &Caller,
        ino: InodeNo,
        offset: u64,
        data: &[u8],
        direct: bool,
    ) -> FsResult<Written> {
        if data.is_empty() {
            return Ok(Written::default());
        }
        let (mut l, v, size) = self.lock_for_write(ino, offset, data.len())?;
        let cleared_setid = clears_setid(caller, &v);
        if direct {
            let bytes = self.write_uncached(&mut l, caller, ino, offset, data)?;
            return Ok(Written {
                bytes,
                cleared_setid,
            });
        }
        let written = |bytes| Written {
            bytes,
            cleared_setid,
        };
        if cleared_setid {
            self.tx(Durability::Lazy, |tx| {
                let mut v = read_inode(tx, ino)?;
                kill_suid(caller, &mut v);
                v.ctime = Timespec::now();
                write_inode(tx, ino, &v);
                Ok(())
            })?;
        }
        if !self.room_for_buffered(data.len() as u64) {
            return self
                .write_uncached(&mut l, caller, ino, offset, data)
                .map(written);
        }
        Self::add_pagecache_lock(&mut l, ino, PagecacheMode::Add);
        let now = Timespec::now();
        loop {
            match self.pages.write(ino.0, offset, data, size, now) {
                Ok(()) => break,
                Err(missing) => {
                    // Partial pages keep the bytes around the write.
                    for idx in missing {
                        let generation = self.pages.generation(ino.0);
                        let mut page = vec![0u8; PAGE as usize];
                        self.read_inner(ino, idx * PAGE, &mut page)?;
                        self.pages.fill(ino.0, idx, &page, generation);
                    }
                }
            }
        }
        if self.pages.over_dirty_limit() {
            self.writeback_inode_locked(ino)?;
        }
        self.pages.evict_if_needed();
        Ok(written(data.len()))
    }

    /// Whether free space covers all dirty data plus this write and a margin.
    fn room_for_buffered(&self, len: u64) -> bool {
        let s = self.statfs();
        let free = s.bfree * s.bsize as u64;
        let dirty = self.pages.stats().dirty_bytes as u64;
        free > dirty.saturating_add(len).saturating_add(SPACE_MARGIN)
    }

    /// Direct read (O_DIRECT): cached dirty data of the file is written
    /// back first, then the disk is read; the cache is neither used nor
    /// filled.
    pub fn read_direct(&self, ino: InodeNo, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        let _l = self.lock_inode(ino, IoMode::Shared, None);
        self.writeback_inode_locked(ino)?;
        self.read_inner(ino, offset, buf)
    }

    /// Direct write (O_DIRECT): holds the pagecache block lock while it
    /// runs, writes back the file's dirty pages and drops the cached pages
    /// of the range, then writes to disk. No read by any path returns older
    /// data afterwards.
    pub fn write_direct(
        &self,
        caller: &Caller,
        ino: InodeNo,
        offset: u64,
        data: &[u8],
    ) -> FsResult<usize> {
        self.write_reporting(caller, ino, offset, data, true)
            .map(|w| w.bytes)
    }

    /// Writes to disk with the pagecache block lock held, after writing
    /// back the file's dirty pages and dropping the cached pages of the
    /// range. The caller holds the IO lock as `lock_for_write` took it.
    fn write_uncached(
        &self,
        l: &mut LockSet<'_>,
        caller: &Caller,
        ino: InodeNo,
        offset: u64,
        data: &[u8],
    ) -> FsResult<usize> {
        Self::add_pagecache_lock(l, ino, PagecacheMode::Block);
        self.writeback_inode_locked(ino)?;
        self.pages
            .invalidate_range(ino.0, offset, offset + data.len() as u64);
        self.write_through(caller, ino, offset, data)
    }

    /// Checks a write of `len` bytes at `offset` and takes the inode's IO
    /// lock: exclusive if the write extends the file, else shared. Returns
    /// the locks with the inode and its cached size as read under them.
    fn lock_for_write(
        &self,
        ino: InodeNo,
        offset: u64,
        len: usize,
    ) -> FsResult<(LockSet<'_>, InodeValue, u64)> {
        let end = offset.checked_add(len as u64).ok_or(FsError::FileTooBig)?;
        if end > MAX_FILE_SIZE {
            return Err(FsError::FileTooBig);
        }
        if self.is_read_only() {
            return Err(FsError::ReadOnly);
        }
        loop {
            let extending = end > self.cached_size(ino)?;
            let mode = if extending {
                IoMode::Exclusive
            } else {
                IoMode::Shared
            };
            let io = self.lock_inode(ino, mode, None);
            let (v, size) = self.inode_and_cached_size(ino)?;
            // Shrunk since we looked: take the exclusive lock instead.
            if extending || end <= size {
                return Ok((io, v, size));
            }
            drop(io);
        }
    }

    /// Copies `len` bytes between files (a copy; reflink comes later).
    /// Holds the source's IO lock shared and pagecache add, the
    /// destination's IO lock exclusive and pagecache block, taken in inode
    /// order (out-of-order ones only tried, then everything retaken). The
    /// destination is written through, after its cached pages of the range
    /// were written back and dropped. Ranges of one file must not overlap.
    pub fn copy_file_range(
        &self,
        caller: &Caller,
        src: InodeNo,
        src_off: u64,
        dst: InodeNo,
        dst_off: u64,
        len: u64,
    ) -> FsResult<u64> {
        if src == dst
            && src_off < dst_off.saturating_add(len)
            && dst_off < src_off.saturating_add(len)
        {
            return Err(FsError::Invalid("overlapping copy within one file".into()));
        }
        if dst_off.checked_add(len).is_none_or(|e| e > MAX_FILE_SIZE) {
            return Err(FsError::FileTooBig);
        }
        if self.is_read_only() {
            return Err(FsError::ReadOnly);
        }
        let mut l = self.locks.lock_set();
        l.acquire(|s| {
            s.lock_io(src.0, IoMode::Shared)?;
            s.lock_io(dst.0, IoMode::Exclusive)?;
            s.lock_pagecache(dst.0, PagecacheMode::Block)?;
            if src != dst {
                s.lock_pagecache(src.0, PagecacheMode::Add)?;
            }
            Ok(())
        });
        let len = len.min(self.cached_size(src)?.saturating_sub(src_off));
        self.writeback_inode_locked(dst)?;
        self.pages.invalidate_range(dst.0, dst_off, dst_off + len);
        let mut done = 0u64;
        let mut buf = vec![0u8; (len.min(1 << 20)) as usize];
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            // One file: its pages are written back, read the disk (the
            // cache needs the add lock, which block excludes).
            let got = if src == dst {
                self.read_inner(src, src_off + done, &mut buf[..n])?
            } else {
                self.read_locked(src, src_off + done, &mut buf[..n])?
            };
            if got == 0 {
                break;
            }
            self.write_through(caller, dst, dst_off + done, &buf[..got])?;
            done += got as u64;
        }
        Ok(done)
    }

    /// Makes the file's data and metadata durable.
    pub fn fsync(&self, ino: InodeNo, _datasync: bool) -> FsResult<()> {
        {
            let _l = self.lock_inode(ino, IoMode::Shared, None);
            self.writeback_inode_locked(ino)?;
        }
        self.engine.sync()?;
        Ok(())
    }

    /// Writes the inode's dirty pages and pending size/times to disk. The
    /// caller holds the inode's IO lock (either mode).
    pub(crate) fn writeback_inode_locked(&self, ino: InodeNo) -> FsResult<()> {
        if !self.pages.needs_writeback(ino.0) {
            return Ok(());
        }
        let _wb = self.writeback_lock(ino).lock();
        let (runs, meta) = self.pages.dirty_runs(ino.0, MAX_RUN_PAGES);
        if runs.is_empty() && meta.size.is_none() && meta.times.is_none() {
            return Ok(());
        }
        let v = match self.tx(Durability::Lazy, |tx| read_inode(tx, ino)) {
            Ok(v) => v,
            Err(FsError::NotFound) => {
                // Deleted meanwhile: nothing to write.
                self.pages.forget(ino.0);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let comp = self.effective_compression(&v);
        // Runs are committed in batches: scattered small writes would
        // otherwise cost a transaction per page.
        let mut i = 0;
        while i < runs.len() {
            let mut stored = Vec::new();
            let mut bytes = 0;
            let mut failed = None;
            while i < runs.len() && stored.len() < RUNS_PER_TX && bytes < BYTES_PER_TX {
                let run = &runs[i];
                let start = run.first * PAGE;
                match self.store(ino, start, &run.data, comp) {
                    Ok(st) => stored.push((start, st, run)),
                    // Commit what is stored (e.g. up to ENOSPC), then fail.
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
                bytes += run.data.len();
                i += 1;
            }
            if stored.is_empty()
                && let Some(e) = failed
            {
                return Err(e);
            }
            self.tx(Durability::Lazy, |tx| {
                let mut v = read_inode(tx, ino)?;
                regular(&v)?;
                let mut end_max = 0;
                for (start, Stored { keys, .. }, run) in &stored {
                    let end = start + run.data.len() as u64;
                    add_extents(tx, ino, *start, end, keys, &mut v)?;
                    end_max = end_max.max(end);
                }
                if let Some(size) = meta.size {
                    v.size = v.size.max(size.min(end_max));
                }
                if let Some(t) = meta.times {
                    v.mtime = t;
                    v.ctime = t;
                }
                write_inode(tx, ino, &v);
                Ok(())
            })?;
            for (_, _, run) in &stored {
                self.pages.run_written(ino.0, run);
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
        if meta.size.is_some() || meta.times.is_some() {
            self.tx(Durability::Lazy, |tx| {
                let mut v = read_inode(tx, ino)?;
                let mut changed = false;
                if let Some(size) = meta.size
                    && size > v.size
                {
                    v.size = size;
                    changed = true;
                }
                if let Some(t) = meta.times
                    && (v.mtime != t || v.ctime != t)
                {
                    v.mtime = t;
                    v.ctime = t;
                    changed = true;
                }
                if changed {
                    write_inode(tx, ino, &v);
                }
                Ok(())
            })?;
        }
        self.pages.meta_written(ino.0, &meta);
        Ok(())
    }

    /// Writes back inodes whose dirty data is older than
    /// [`super::DIRTY_EXPIRE`], or all of them when over the dirty limit;
    /// skips inodes whose IO lock is taken (their users write back).
    pub(crate) fn writeback_background(&self) -> FsResult<()> {
        let inos = if self.pages.over_dirty_limit() {
            self.pages.dirty_inodes()
        } else {
            self.pages.expired(super::DIRTY_EXPIRE)
        };
        for ino in inos {
            let ino = InodeNo(ino);
            let locks = self.locks.get(ino.0);
            if let Some(_io) = locks.io().try_lock_shared() {
                self.writeback_inode_locked(ino)?;
            }
        }
        Ok(())
    }

    /// Writes back every inode's cached data (sync, unmount).
    pub(crate) fn writeback_all(&self) -> FsResult<()> {
        for ino in self.pages.dirty_inodes() {
            let ino = InodeNo(ino);
            let _l = self.lock_inode(ino, IoMode::Shared, None);
            self.writeback_inode_locked(ino)?;
        }
        Ok(())
    }

    /// Writes back all dirty data and drops every clean cached page (for
    /// cold-cache benchmarks; dirty pages written meanwhile stay).
    pub fn drop_caches(&self) -> FsResult<()> {
        self.writeback_all()?;
        self.pages.drop_clean();
        Ok(())
    }

    /// Page cache usage (bytes cached, dirty, limit).
    pub fn page_cache_stats(&self) -> super::pagecache::PageCacheStats {
        self.pages.stats()
    }
}

fn stripe(ino: InodeNo, n: usize) -> usize {
    (ino.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % n
}

/// What a write did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Bytes written.
    pub bytes: usize,
    /// The write cleared setuid/setgid (the writer lacks CAP_FSETID).
    pub cleared_setid: bool,
}

/// Whether a write by `caller` clears setuid/setgid of `v`.
fn clears_setid(caller: &Caller, v: &InodeValue) -> bool {
    let mut killed = v.clone();
    kill_suid(caller, &mut killed);
    killed.mode != v.mode
}

/// Largest scratch buffer a thread keeps between reads.
const SCRATCH_KEEP: usize = 4 << 20;

thread_local! {
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` on a buffer of `len` bytes of unspecified content, reused
/// between calls of one thread: disk reads fill it whole, so it needs
/// neither a fresh allocation nor zeroing each time.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    let mut buf = SCRATCH.with(|s| s.take());
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let r = f(&mut buf[..len]);
    if buf.len() <= SCRATCH_KEEP {
        SCRATCH.with(|s| s.set(buf));
    }
    r
}
