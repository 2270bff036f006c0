//! The filesystem's page cache: file data in 4 KiB pages with a byte limit.
//!
//! Buffered writes land here as dirty pages and are written back later in
//! large runs (so extents, checksums and compression work on big units);
//! reads are served from here and fill pages, with readahead for sequential
//! access. This module is only the data structure: which pages exist, which
//! are dirty, the in-memory size and times of files with unwritten data,
//! and eviction of clean pages. The IO paths in `data.rs` decide when to
//! fill, write back and drop, under the inode's IO and pagecache locks.
//!
//! Staleness: a reader that filled pages from disk must not insert them if
//! the file changed meanwhile (a write dirtied the page, it was written back
//! and evicted, and the disk copy the reader holds is older). Every inode
//! has a generation, unique across the cache and replaced on every change;
//! fills carry the generation they started at and are dropped if it moved.
//! An inode with no entry reports the cache-wide counter; a fill that finds
//! no entry is accepted only if no entry of its shard was removed since.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use super::types::Timespec;

/// Page size: the filesystem block size.
pub const PAGE: u64 = 4096;
const SHARDS: usize = 16;

/// Default byte limit of the page cache.
pub const DEFAULT_PAGE_CACHE_BYTES: usize = 64 << 20;

struct Page {
    data: Box<[u8]>,
    dirty: bool,
    /// Bumped on every change of the page; writeback marks a page clean only
    /// if it still holds the version it wrote.
    version: u64,
    /// CLOCK reference bit.
    referenced: bool,
}

/// The cached state of one inode.
#[derive(Default)]
struct InodePages {
    pages: BTreeMap<u64, Page>,
    /// Size including unwritten buffered writes. Kept after it is written
    /// back (readers take the larger of this and the on-disk size, so a
    /// writeback finishing between their two reads cannot shrink the file
    /// they see); forgotten on truncate.
    size: Option<u64>,
    /// `size` is not on disk yet.
    size_dirty: bool,
    /// mtime = ctime of the last buffered write not yet written back.
    times: Option<Timespec>,
    generation: u64,
    dirty_pages: usize,
    dirty_since: Option<Instant>,
    /// Where the last read ended (sequential detection for readahead).
    last_read_end: u64,
}

impl InodePages {
    fn is_empty(&self) -> bool {
        self.pages.is_empty() && !self.size_dirty && self.times.is_none()
    }

    fn needs_writeback(&self) -> bool {
        self.dirty_pages > 0 || self.size_dirty || self.times.is_some()
    }
}

/// A run of dirty pages copied out for writeback.
pub struct DirtyRun {
    /// First page index.
    pub first: u64,
    /// The pages' bytes, `PAGE` per page.
    pub data: Vec<u8>,
    versions: Vec<u64>,
}

/// What a writeback must record besides the data.
pub struct PendingMeta {
    /// In-memory size (bytes), if it may be larger than what is on disk
    /// (for readers: the latest size buffered writes produced).
    pub size: Option<u64>,
    /// mtime/ctime of the last buffered write.
    pub times: Option<Timespec>,
}

/// Counters for `stats` and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageCacheStats {
    /// Bytes of cached pages.
    pub bytes: usize,
    /// Bytes of dirty pages.
    pub dirty_bytes: usize,
    /// Byte limit.
    pub limit: usize,
}

#[derive(Default)]
struct Shard {
    inodes: HashMap<u64, InodePages>,
    /// Cache-wide counter value at the last removal of an entry.
    removed_at: u64,
}

pub struct PageCache {
    shards: Vec<Mutex<Shard>>,
    limit: usize,
    used: AtomicUsize,
    dirty: AtomicUsize,
    version: AtomicU64,
    clock_hand: AtomicUsize,
}

fn shard_of(ino: u64) -> usize {
    (ino.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS
}

impl PageCache {
    pub fn new(limit: usize) -> PageCache {
        PageCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            limit: limit.max(1 << 20),
            used: AtomicUsize::new(0),
            dirty: AtomicUsize::new(0),
            version: AtomicU64::new(1),
            clock_hand: AtomicUsize::new(0),
        }
    }

    pub fn stats(&self) -> PageCacheStats {
        PageCacheStats {
            bytes: self.used.load(Ordering::Relaxed),
            dirty_bytes: self.dirty.load(Ordering::Relaxed),
            limit: self.limit,
        }
    }

    /// Dirty bytes above which writers write back their own inode.
    pub fn over_dirty_limit(&self) -> bool {
        self.dirty.load(Ordering::Relaxed) > self.limit / 2
    }

    fn shard(&self, ino: u64) -> parking_lot::MutexGuard<'_, Shard> {
        self.shards[shard_of(ino)].lock()
    }

    fn next_generation(&self) -> u64 {
        self.version.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The inode's entry, created with a fresh generation if missing.
    fn entry<'a>(&self, s: &'a mut Shard, ino: u64) -> &'a mut InodePages {
        s.inodes.entry(ino).or_insert_with(|| InodePages {
            generation: self.next_generation(),
            ..Default::default()
        })
    }

    /// The inode's size and times as buffered writes left them, if they
    /// differ from what is on disk.
    pub fn pending(&self, ino: u64) -> PendingMeta {
        let s = self.shard(ino);
        match s.inodes.get(&ino) {
            Some(p) => PendingMeta {
                size: p.size,
                times: p.times,
            },
            None => PendingMeta {
                size: None,
                times: None,
            },
        }
    }

    /// Number of dirty pages of the inode.
    pub fn dirty_pages(&self, ino: u64) -> usize {
        self.shard(ino)
            .inodes
            .get(&ino)
            .map_or(0, |p| p.dirty_pages)
    }

    /// Whether the inode has anything a writeback would write.
    pub fn needs_writeback(&self, ino: u64) -> bool {
        self.shard(ino)
            .inodes
            .get(&ino)
            .is_some_and(InodePages::needs_writeback)
    }

    /// The generation a fill of this inode must still find (see module doc).
    pub fn generation(&self, ino: u64) -> u64 {
        let s = self.shard(ino);
        match s.inodes.get(&ino) {
            Some(p) => p.generation,
            None => self.version.load(Ordering::Relaxed),
        }
    }

    /// Copies cached pages into `buf` (file offset `offset`); returns for
    /// each page of the range whether it was cached. Marks them referenced
    /// and records where the read ended; returns whether the read continues
    /// the previous one (sequential).
    pub fn read(&self, ino: u64, offset: u64, buf: &mut [u8], hit: &mut Vec<bool>) -> bool {
        hit.clear();
        let mut s = self.shard(ino);
        let Some(p) = s.inodes.get_mut(&ino) else {
            hit.resize(pages_spanned(offset, buf.len()), false);
            return offset == 0;
        };
        let sequential = p.last_read_end == offset || offset == 0;
        p.last_read_end = offset + buf.len() as u64;
        let end = offset + buf.len() as u64;
        let mut idx = offset / PAGE;
        while idx * PAGE < end {
            let (ps, pe) = (idx * PAGE, idx * PAGE + PAGE);
            let (from, to) = (ps.max(offset), pe.min(end));
            match p.pages.get_mut(&idx) {
                Some(pg) => {
                    pg.referenced = true;
                    buf[(from - offset) as usize..(to - offset) as usize]
                        .copy_from_slice(&pg.data[(from - ps) as usize..(to - ps) as usize]);
                    hit.push(true);
                }
                None => hit.push(false),
            }
            idx += 1;
        }
        sequential
    }

    /// Inserts clean pages read from disk (`data` starts at page `first`)
    /// unless the inode changed since `generation`; existing pages are kept.
    pub fn fill(&self, ino: u64, first: u64, data: &[u8], generation: u64) {
        let mut added = 0;
        {
            let mut s = self.shard(ino);
            let removed_at = s.removed_at;
            let p = match s.inodes.get_mut(&ino) {
                Some(p) if p.generation == generation => p,
                Some(_) => return,
                // Missing at the start too, and nothing removed since.
                None if generation >= removed_at => {
                    let g = self.next_generation();
                    s.inodes.insert(
                        ino,
                        InodePages {
                            generation: g,
                            ..Default::default()
                        },
                    );
                    s.inodes.get_mut(&ino).expect("just inserted")
                }
                None => return,
            };
            for (i, chunk) in data.chunks(PAGE as usize).enumerate() {
                if chunk.len() < PAGE as usize {
                    break;
                }
                p.pages.entry(first + i as u64).or_insert_with(|| {
                    added += 1;
                    Page {
                        data: chunk.into(),
                        dirty: false,
                        version: 0,
                        referenced: false,
                    }
                });
            }
            self.used
                .fetch_add(added * PAGE as usize, Ordering::Relaxed);
        }
        self.evict_if_needed();
    }

    /// Applies a buffered write of `data` at `offset`. Every page it
    /// touches must be cached already unless the write covers it whole:
    /// `missing` returns the page indexes to fill first (nothing is changed
    /// then). `size` is the file's current size (used when the write
    /// extends it).
    pub fn write(
        &self,
        ino: u64,
        offset: u64,
        data: &[u8],
        size: u64,
        now: Timespec,
    ) -> Result<(), Vec<u64>> {
        let end = offset + data.len() as u64;
        let mut s = self.shard(ino);
        let g = self.next_generation();
        let p = self.entry(&mut s, ino);
        let first = offset / PAGE;
        let last = (end - 1) / PAGE;
        let missing: Vec<u64> = [first, last]
            .into_iter()
            .filter(|&i| {
                let (ps, pe) = (i * PAGE, i * PAGE + PAGE);
                let whole = offset <= ps && end >= pe;
                // A page at or past EOF needs no disk copy: it reads as zeros.
                !whole && ps < size && !p.pages.contains_key(&i)
            })
            .collect();
        if !missing.is_empty() {
            let mut m = missing;
            m.dedup();
            return Err(m);
        }
        let mut added = 0usize;
        let mut newly_dirty = 0usize;
        for idx in first..=last {
            let (ps, pe) = (idx * PAGE, idx * PAGE + PAGE);
            let (from, to) = (ps.max(offset), pe.min(end));
            let version = self.version.fetch_add(1, Ordering::Relaxed);
            let pg = p.pages.entry(idx).or_insert_with(|| {
                added += 1;
                Page {
                    data: vec![0u8; PAGE as usize].into_boxed_slice(),
                    dirty: false,
                    version: 0,
                    referenced: false,
                }
            });
            pg.data[(from - ps) as usize..(to - ps) as usize]
                .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
            if !pg.dirty {
                pg.dirty = true;
                newly_dirty += 1;
            }
            pg.version = version;
            pg.referenced = true;
        }
        p.dirty_pages += newly_dirty;
        p.generation = g;
        p.times = Some(now);
        if end > size {
            p.size = Some(end);
            p.size_dirty = true;
        }
        if p.dirty_since.is_none() {
            p.dirty_since = Some(Instant::now());
        }
        // Counted before the shard is released: a writeback that cleans
        // these pages subtracts only after this (no transient underflow).
        self.used
            .fetch_add(added * PAGE as usize, Ordering::Relaxed);
        self.dirty
            .fetch_add(newly_dirty * PAGE as usize, Ordering::Relaxed);
        drop(s);
        Ok(())
    }

    /// Copies out the inode's dirty pages as runs of at most `max_pages`
    /// contiguous pages, with the pending size and times.
    pub fn dirty_runs(&self, ino: u64, max_pages: usize) -> (Vec<DirtyRun>, PendingMeta) {
        let s = self.shard(ino);
        let Some(p) = s.inodes.get(&ino) else {
            return (
                Vec::new(),
                PendingMeta {
                    size: None,
                    times: None,
                },
            );
        };
        let mut runs: Vec<DirtyRun> = Vec::new();
        for (&idx, pg) in p.pages.iter().filter(|(_, pg)| pg.dirty) {
            match runs.last_mut() {
                Some(r)
                    if r.first + r.versions.len() as u64 == idx && r.versions.len() < max_pages =>
                {
                    r.data.extend_from_slice(&pg.data);
                    r.versions.push(pg.version);
                }
                _ => runs.push(DirtyRun {
                    first: idx,
                    data: pg.data.to_vec(),
                    versions: vec![pg.version],
                }),
            }
        }
        (
            runs,
            PendingMeta {
                size: p.size.filter(|_| p.size_dirty),
                times: p.times,
            },
        )
    }

    /// After a run was committed: its pages are clean unless written again.
    pub fn run_written(&self, ino: u64, run: &DirtyRun) {
        let mut cleaned = 0;
        let mut s = self.shard(ino);
        if let Some(p) = s.inodes.get_mut(&ino) {
            for (i, v) in run.versions.iter().enumerate() {
                if let Some(pg) = p.pages.get_mut(&(run.first + i as u64))
                    && pg.dirty
                    && pg.version == *v
                {
                    pg.dirty = false;
                    cleaned += 1;
                }
            }
            p.dirty_pages -= cleaned;
        }
        drop(s);
        self.dirty
            .fetch_sub(cleaned * PAGE as usize, Ordering::Relaxed);
    }

    /// After a writeback recorded `meta`: forget the pending size and times
    /// if nothing changed them since (no dirty pages left, same values).
    pub fn meta_written(&self, ino: u64, meta: &PendingMeta) {
        let mut s = self.shard(ino);
        if let Some(p) = s.inodes.get_mut(&ino)
            && p.dirty_pages == 0
        {
            if p.size_dirty && p.size == meta.size {
                p.size_dirty = false;
            }
            if p.times == meta.times {
                p.times = None;
            }
            if !p.needs_writeback() {
                p.dirty_since = None;
            }
        }
    }

    /// Drops every page of the inode and its pending size and times (after
    /// a writeback, or when the inode is gone). Bumps its generation so
    /// fills in flight are dropped.
    pub fn forget(&self, ino: u64) {
        let (mut gone, mut dirty) = (0, 0);
        {
            let g = self.next_generation();
            let mut s = self.shard(ino);
            if let Some(p) = s.inodes.get_mut(&ino) {
                gone = p.pages.len();
                dirty = p.dirty_pages;
                p.pages.clear();
                p.dirty_pages = 0;
                p.size = None;
                p.size_dirty = false;
                p.times = None;
                p.dirty_since = None;
                p.generation = g;
            }
        }
        self.used.fetch_sub(gone * PAGE as usize, Ordering::Relaxed);
        self.dirty
            .fetch_sub(dirty * PAGE as usize, Ordering::Relaxed);
    }

    /// Drops the clean pages of `[start, end)` (bytes; whole pages only
    /// inside, partial edge pages too) and bumps the generation. Dirty
    /// pages must have been written back by the caller.
    pub fn invalidate_range(&self, ino: u64, start: u64, end: u64) {
        let mut gone = 0;
        {
            let g = self.next_generation();
            let mut s = self.shard(ino);
            if let Some(p) = s.inodes.get_mut(&ino) {
                let first = start / PAGE;
                let last = end.div_ceil(PAGE);
                let idxs: Vec<u64> = p
                    .pages
                    .range(first..last)
                    .filter(|(_, pg)| !pg.dirty)
                    .map(|(i, _)| *i)
                    .collect();
                for i in idxs {
                    p.pages.remove(&i);
                    gone += 1;
                }
                p.generation = g;
            }
        }
        self.used.fetch_sub(gone * PAGE as usize, Ordering::Relaxed);
    }

    /// Inodes with dirty data older than `age`, oldest first.
    pub fn expired(&self, age: std::time::Duration) -> Vec<u64> {
        let now = Instant::now();
        let mut v: Vec<(Instant, u64)> = Vec::new();
        for sh in &self.shards {
            for (&ino, p) in sh.lock().inodes.iter() {
                if let Some(t) = p.dirty_since
                    && now.duration_since(t) >= age
                {
                    v.push((t, ino));
                }
            }
        }
        v.sort();
        v.into_iter().map(|(_, i)| i).collect()
    }

    /// Every inode with something to write back.
    pub fn dirty_inodes(&self) -> Vec<u64> {
        let mut v = Vec::new();
        for sh in &self.shards {
            for (&ino, p) in sh.lock().inodes.iter() {
                if p.needs_writeback() {
                    v.push(ino);
                }
            }
        }
        v.sort_unstable();
        v
    }

    /// Drops every clean page of every inode.
    pub fn drop_clean(&self) {
        for sh in &self.shards {
            let mut gone = 0usize;
            let g = self.next_generation();
            let mut s = sh.lock();
            for p in s.inodes.values_mut() {
                let before = p.pages.len();
                p.pages.retain(|_, pg| pg.dirty);
                if p.pages.len() != before {
                    gone += before - p.pages.len();
                    p.generation = g;
                }
            }
            self.used.fetch_sub(gone * PAGE as usize, Ordering::Relaxed);
        }
    }

    /// Evicts clean pages (CLOCK over shards) until under 7/8 of the limit.
    pub fn evict_if_needed(&self) {
        if self.used.load(Ordering::Relaxed) <= self.limit {
            return;
        }
        let target = self.limit / 8 * 7;
        // Two sweeps: the first clears reference bits.
        for _ in 0..2 * SHARDS {
            if self.used.load(Ordering::Relaxed) <= target {
                return;
            }
            let i = self.clock_hand.fetch_add(1, Ordering::Relaxed) % SHARDS;
            let mut gone = 0usize;
            {
                let mut s = self.shards[i].lock();
                for p in s.inodes.values_mut() {
                    let mut idxs = Vec::new();
                    for (idx, pg) in p.pages.iter_mut() {
                        if pg.dirty {
                            continue;
                        }
                        if pg.referenced {
                            pg.referenced = false;
                        } else {
                            idxs.push(*idx);
                        }
                    }
                    if !idxs.is_empty() {
                        // A reader that read the disk before these pages
                        // were written back (and then evicted) holds older
                        // bytes for them: its fill must not land.
                        p.generation = self.next_generation();
                    }
                    for idx in idxs {
                        p.pages.remove(&idx);
                        gone += 1;
                    }
                }
                let before = s.inodes.len();
                s.inodes.retain(|_, p| !p.is_empty());
                if s.inodes.len() != before {
                    s.removed_at = self.version.load(Ordering::Relaxed);
                }
            }
            self.used.fetch_sub(gone * PAGE as usize, Ordering::Relaxed);
        }
    }
}

fn pages_spanned(offset: u64, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    ((offset + len as u64 - 1) / PAGE - offset / PAGE + 1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Timespec {
        Timespec { sec: 1, nsec: 0 }
    }

    #[test]
    fn write_then_read_hits_and_writeback_cleans() {
        let c = PageCache::new(1 << 20);
        // A write inside EOF of a page not cached asks for a fill.
        assert_eq!(c.write(7, 100, b"abc", 8192, t()), Err(vec![0]));
        c.fill(7, 0, &vec![1u8; 4096], c.generation(7));
        c.write(7, 100, b"abc", 8192, t()).unwrap();
        let mut buf = vec![0u8; 4096];
        let mut hit = Vec::new();
        c.read(7, 0, &mut buf, &mut hit);
        assert_eq!(hit, vec![true]);
        assert_eq!(&buf[99..104], &[1, b'a', b'b', b'c', 1]);
        assert_eq!(c.dirty_pages(7), 1);
        let (runs, meta) = c.dirty_runs(7, 256);
        assert_eq!(runs.len(), 1);
        assert_eq!(meta.size, None, "not extending");
        assert_eq!(c.pending(7).size, None);
        c.run_written(7, &runs[0]);
        c.meta_written(7, &meta);
        assert_eq!(c.dirty_pages(7), 0);
        assert!(!c.needs_writeback(7));
    }

    #[test]
    fn a_write_during_writeback_keeps_the_page_dirty() {
        let c = PageCache::new(1 << 20);
        c.write(1, 0, &[5u8; 8192], 0, t()).unwrap();
        assert_eq!(c.pending(1).size, Some(8192));
        let (runs, meta) = c.dirty_runs(1, 256);
        c.write(1, 0, &[6u8; 10], 8192, t()).unwrap();
        c.run_written(1, &runs[0]);
        c.meta_written(1, &meta);
        assert_eq!(c.dirty_pages(1), 1, "page 0 changed after the copy");
        assert!(c.needs_writeback(1));
    }

    #[test]
    fn fill_from_before_a_writeback_and_eviction_is_dropped() {
        let c = PageCache::new(1 << 20);
        c.write(4, 5 * PAGE, &[7u8; 8192], 64 * PAGE, t()).unwrap();
        // A reader starts now (after the write) and reads the old disk copy.
        let g = c.generation(4);
        let (runs, meta) = c.dirty_runs(4, 256);
        c.run_written(4, &runs[0]);
        c.meta_written(4, &meta);
        // Other pages of the file push the now clean page 5 out, while
        // page 6, read all along, stays (so the inode's entry stays too).
        let mut buf = vec![0u8; 4096];
        let mut hit = Vec::new();
        for i in 100..700 {
            c.fill(4, i, &[1u8; 4096], c.generation(4));
            c.read(4, 6 * PAGE, &mut buf, &mut hit);
        }
        assert_eq!(hit, vec![true], "page 6 stays");
        c.read(4, 5 * PAGE, &mut buf, &mut hit);
        assert_eq!(hit, vec![false], "evicted");
        c.fill(4, 5, &[0u8; 4096], g);
        c.read(4, 5 * PAGE, &mut buf, &mut hit);
        assert_eq!(hit, vec![false], "the old disk copy was cached");
    }

    #[test]
    fn stale_fill_is_dropped() {
        let c = PageCache::new(1 << 20);
        let g = c.generation(3);
        c.write(3, 0, &[9u8; 4096], 0, t()).unwrap();
        let (runs, meta) = c.dirty_runs(3, 256);
        c.run_written(3, &runs[0]);
        c.meta_written(3, &meta);
        c.invalidate_range(3, 0, 4096);
        // A reader that read the disk before the write must not insert.
        c.fill(3, 0, &[0u8; 4096], g);
        let mut buf = vec![7u8; 4096];
        let mut hit = Vec::new();
        c.read(3, 0, &mut buf, &mut hit);
        assert_eq!(hit, vec![false]);
    }

    #[test]
    fn drop_clean_keeps_only_dirty_pages() {
        let c = PageCache::new(4 << 20);
        c.write(1, 0, &[1u8; 8192], 0, t()).unwrap();
        c.fill(2, 0, &[2u8; 8192], c.generation(2));
        assert_eq!(c.stats().bytes, 16384);
        c.drop_clean();
        assert_eq!(c.stats().bytes, 8192, "the dirty pages stay");
        let mut buf = vec![0u8; 8192];
        let mut hit = Vec::new();
        c.read(2, 0, &mut buf, &mut hit);
        assert_eq!(hit, vec![false, false]);
        c.read(1, 0, &mut buf, &mut hit);
        assert_eq!(hit, vec![true, true]);
    }

    #[test]
    fn eviction_keeps_dirty_pages_and_the_limit() {
        let c = PageCache::new(1 << 20);
        c.write(1, 0, &vec![1u8; 256 << 10], 0, t()).unwrap();
        for ino in 10..20 {
            c.fill(ino, 0, &vec![2u8; 256 << 10], c.generation(ino));
        }
        let s = c.stats();
        assert!(s.bytes <= s.limit, "{s:?}");
        assert_eq!(s.dirty_bytes, 256 << 10);
        assert_eq!(c.dirty_pages(1), 64);
    }
}
