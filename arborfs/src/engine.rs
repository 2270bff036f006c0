//! The storage engine: opens a device, owns the b-trees, the node cache,
//! the journal and the allocator, and runs checkpoints.
//!
//! Lock order (see `docs/locking.md`): the checkpoint lock, then b-tree locks
//! in [`BtreeId`] order, then the allocator, then the journal's own locks,
//! then node locks (never contended: the b-tree lock already excludes), then
//! cache shards.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::alloc::alloc_format::{AllocValue, COUNTERS, Counter, DataType, encode_counters};
use crate::alloc::{
    ACCOUNTING_POS, AllocState, BucketDeltas, DataAlloc, Geometry, apply_bucket_deltas, bucket_pos,
    find_empty_in_use, free_closed_empty, read_counters,
};
use crate::btree::cache::NodeCache;
use crate::btree::node::{Val, node_magic};
use crate::btree::tree::{TreeCtx, TreeState};
use crate::device::Device;
use crate::error::{Error, Result, Structure};
use crate::journal::{Journal, JournalConfig, JournalItem, JournalPosition};
use crate::key::{BtreeId, Key, KeyType, Pos};
use crate::sb::{CleanState, FormatOptions, Superblock};

/// Default byte limit of the node cache.
pub const DEFAULT_CACHE_BYTES: usize = 256 << 20;

/// With the node cache over its limit after evicting clean nodes, a
/// checkpoint waits for changes worth `limit / this` bytes (unless the cache
/// passes 1.5 times its limit).
pub const CACHE_CHECKPOINT_MIN_DIVISOR: usize = 64;

/// How an engine is opened.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Byte limit of the b-tree node cache.
    pub cache_bytes: usize,
    /// Open without writing anything (no replay is persisted, no commits).
    pub read_only: bool,
    /// Run a background thread that writes the journal and checkpoints.
    pub background: bool,
}

impl Default for EngineOptions {
    fn default() -> EngineOptions {
        EngineOptions {
            cache_bytes: DEFAULT_CACHE_BYTES,
            read_only: false,
            background: true,
        }
    }
}

impl EngineOptions {
    /// For inspecting an image (list, usage, fsck -n): nothing written, no
    /// background thread.
    pub fn inspect() -> EngineOptions {
        EngineOptions {
            read_only: true,
            background: false,
            ..Default::default()
        }
    }
}

/// What [`Engine::trim`] handed back to the storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrimReport {
    /// Free buckets discarded.
    pub buckets: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Statistics for tests and tools.
#[derive(Clone, Copy, Debug, Default)]
pub struct EngineStats {
    pub node_reads: u64,
    pub checkpoints: u64,
    pub cache_bytes: usize,
    pub journal_entries_replayed: usize,
    pub journal_keys_replayed: usize,
    /// Copygc passes that had victims, buckets they freed, sectors moved.
    pub copygc_passes: u64,
    pub copygc_buckets_freed: u64,
    pub copygc_sectors_moved: u64,
}

pub(crate) struct Inner {
    pub dev: Arc<dyn Device>,
    pub sb: Mutex<Superblock>,
    pub trees: Vec<RwLock<TreeState>>,
    pub cache: NodeCache,
    pub journal: Journal,
    pub alloc: Mutex<AllocState>,
    pub node_seq: AtomicU64,
    pub magic: u64,
    pub node_size: usize,
    pub read_only: bool,
    checkpoint_lock: Mutex<()>,
    /// One copygc pass at a time; taken before every other engine lock.
    pub copygc_lock: Mutex<()>,
    /// See [`Engine::data_move_seq`].
    pub move_seq: AtomicU64,
    /// Totals for [`EngineStats`]: passes, buckets freed, sectors moved.
    pub copygc_totals: [AtomicU64; 3],
    failed: Mutex<Option<String>>,
    /// Bytes of key changes since the last checkpoint (a dirty-memory estimate).
    pub dirty_bytes: AtomicUsize,
    checkpoints: AtomicU64,
    shutdown: AtomicBool,
    wake: (Mutex<bool>, Condvar),
    replayed: (usize, usize),
}

/// An open filesystem image at the storage level: b-trees and transactions.
/// Space handed out for data ([`Engine::alloc_data`]). Its bucket is
/// pinned while this lives: not freed, not reopened, not collected, so the
/// keys that will point at the space can be committed after the write
/// without racing a checkpoint that would free the bucket (a later reuse
/// would bump its generation and turn those keys into stale pointers).
#[must_use = "drop it only after the keys pointing at the space are committed"]
pub struct PinnedAlloc {
    alloc: DataAlloc,
    bucket: u64,
    inner: Arc<Inner>,
}

impl PinnedAlloc {
    pub(crate) fn new(inner: Arc<Inner>, alloc: DataAlloc, geo: &Geometry) -> PinnedAlloc {
        PinnedAlloc {
            bucket: geo.bucket_of(alloc.dev_sector),
            alloc,
            inner,
        }
    }
}

impl std::ops::Deref for PinnedAlloc {
    type Target = DataAlloc;
    fn deref(&self) -> &DataAlloc {
        &self.alloc
    }
}

impl Drop for PinnedAlloc {
    fn drop(&mut self) {
        self.inner.alloc.lock().unpin(self.bucket);
    }
}

pub struct Engine {
    pub(crate) inner: Arc<Inner>,
    background: Option<JoinHandle<()>>,
}

pub(crate) type WriteGuards<'a> = Vec<RwLockWriteGuard<'a, TreeState>>;

impl Inner {
    pub fn ctx(&self) -> TreeCtx<'_> {
        TreeCtx {
            cache: &self.cache,
            dev: &*self.dev,
            magic: self.magic,
            node_size: self.node_size,
            node_seq: &self.node_seq,
        }
    }

    pub fn tree(&self, id: BtreeId) -> &RwLock<TreeState> {
        &self.trees[id.index()]
    }

    pub fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        if let Some(why) = &*self.failed.lock() {
            return Err(Error::ReadOnlyAfterError(why.clone()));
        }
        Ok(())
    }

    /// Stops all further writes after an error that may have left memory
    /// inconsistent with the journal (the disk stays consistent).
    pub fn fail(&self, e: &Error) {
        let mut f = self.failed.lock();
        if f.is_none() {
            tracing::error!("arborfs: going read-only after error: {e}");
            *f = Some(e.to_string());
        }
    }

    /// Whether a checkpoint is due: the journal is half full, the changes
    /// since the last checkpoint pass an eighth of the cache limit, or the
    /// cache is over its limit with only dirty nodes left to drop (a
    /// checkpoint makes them clean, so evictable).
    ///
    /// Clean nodes are evicted first. Dirty nodes may take the cache up to
    /// half its limit past it before a checkpoint is forced; below that, a
    /// checkpoint waits until the changes since the last one reach
    /// [`CACHE_CHECKPOINT_MIN_DIVISOR`]th of the limit, so a tree larger
    /// than the cache does not checkpoint on every commit.
    pub fn wants_checkpoint(&self) -> bool {
        let dirty = self.dirty_bytes.load(Ordering::Relaxed);
        let limit = self.cache.limit();
        if self.journal.fill_ratio() > 0.5 || dirty > limit / 8 {
            return true;
        }
        if dirty == 0 || self.cache.used() <= limit {
            return false;
        }
        self.cache.evict_if_needed();
        let used = self.cache.used();
        used > limit + limit / 2 || (used > limit && dirty >= limit / CACHE_CHECKPOINT_MIN_DIVISOR)
    }

    pub fn dirty_nodes(&self) -> Result<usize> {
        let ctx = self.ctx();
        let mut n = 0;
        for t in &self.trees {
            n += t.read().count_dirty(&ctx)?;
        }
        Ok(n)
    }

    fn all_write_guards(&self) -> WriteGuards<'_> {
        self.trees.iter().map(|t| t.write()).collect()
    }

    /// Writes every dirty node, then a journal entry holding the new roots:
    /// after it is durable, older journal entries are no longer needed.
    pub fn checkpoint(&self) -> Result<()> {
        self.check_writable()?;
        let _one = self.checkpoint_lock.lock();
        let mut guards = self.all_write_guards();
        let r = self.checkpoint_locked(&mut guards);
        if let Err(e) = &r
            && !matches!(e, Error::NoSpace)
        {
            self.fail(e);
        }
        drop(guards);
        self.cache.evict_if_needed();
        r
    }

    fn checkpoint_locked(&self, guards: &mut WriteGuards<'_>) -> Result<()> {
        let ctx = self.ctx();
        // Everything committed so far goes into entries before ours.
        self.journal.write_pending(false)?;
        let mut dirty = 0;
        for g in guards.iter() {
            dirty += g.count_dirty(&ctx)?;
        }
        let mut st = self.alloc.lock();
        let durable = self.journal.durable_seq();
        {
            let (a, f) = (
                &guards[BtreeId::Alloc.index()],
                &guards[BtreeId::Freespace.index()],
            );
            // Slots for every dirty node, plus a margin for the alloc and
            // freespace nodes the deltas below dirty again.
            st.reserve_btree_slots(&ctx, a, f, durable, dirty + 8)?;
        }
        let node_sectors = st.geo.node_sectors as i64;
        let mut deltas = BucketDeltas::default();
        let mut items = Vec::new();
        for g in guards.iter_mut() {
            let mut alloc_slot = || -> Result<(u64, u8)> {
                let (offset, generation, bucket) = st.take_btree_slot()?;
                deltas.add(bucket, node_sectors, DataType::Btree);
                Ok((offset, generation))
            };
            g.write_dirty(&ctx, &mut alloc_slot)?;
        }
        self.dev.flush()?;
        for g in guards.iter_mut() {
            for freed in std::mem::take(&mut g.freed) {
                deltas.add(
                    st.geo.bucket_of(freed.offset / crate::SECTOR_BYTES),
                    -node_sectors,
                    DataType::Btree,
                );
            }
            items.push(JournalItem::Root {
                btree: g.id,
                ptr: Some(g.root),
            });
        }
        let (left, right) = guards.split_at_mut(BtreeId::Freespace.index());
        let (alloc, freespace) = (&mut left[BtreeId::Alloc.index()], &mut right[0]);
        let mut emptied =
            apply_bucket_deltas(&ctx, alloc, freespace, &mut st, &deltas, &mut items)?;
        emptied.extend(free_closed_empty(
            &ctx, alloc, freespace, &mut st, &mut items,
        )?);
        alloc.mod_seq += 1;
        freespace.mod_seq += 1;
        // The entry holding the roots records itself as the oldest entry
        // needed; the journal reuses older space only once it is durable.
        let seq = self.journal.current_seq();
        self.journal.set_last_seq(seq);
        let got = self.journal.add(&items)?;
        debug_assert_eq!(got, seq, "checkpoint entry must be the open entry");
        self.journal.write_pending(true)?;
        self.journal.flush_seq(got)?;
        for b in emptied {
            st.pending_empty.insert(b, seq);
        }
        st.note_durable(self.journal.durable_seq());
        self.dirty_bytes
            .store(items_bytes(&items), Ordering::Relaxed);
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Dirty-memory estimate of one journaled change: a put of a value of
/// `put_value_len` bytes, or (`None`) a delete or root.
pub(crate) fn change_bytes(put_value_len: Option<usize>) -> usize {
    match put_value_len {
        Some(n) => 64 + n,
        None => 48,
    }
}

pub(crate) fn items_bytes(items: &[JournalItem]) -> usize {
    items
        .iter()
        .map(|i| match i {
            JournalItem::Put { key, .. } => change_bytes(Some(key.value.len())),
            _ => change_bytes(None),
        })
        .sum()
}

/// Every valid journal entry on `dev` (see [`crate::journal::scan_entries`]),
/// read without opening the filesystem.
pub fn scan_journal(dev: &dyn Device) -> Result<Vec<crate::journal::ScannedEntry>> {
    let (sb, _) = Superblock::read(dev)?;
    crate::journal::scan_entries(dev, &journal_config(&sb))
}

fn journal_config(sb: &Superblock) -> JournalConfig {
    JournalConfig {
        region_offset: sb.journal_offset(),
        region_len: sb.journal_len(),
        uuid: sb.uuid,
        max_entry_bytes: (1 << 20).min(sb.journal_len() as usize / 8),
    }
}

fn geometry(sb: &Superblock) -> Geometry {
    Geometry {
        bucket_sectors: sb.bucket_size as u64 / crate::SECTOR_BYTES,
        nbuckets: sb.nbuckets,
        first_data_bucket: sb.first_data_bucket(),
        node_sectors: sb.node_size as u64 / crate::SECTOR_BYTES,
    }
}

impl Engine {
    /// Writes a new, empty filesystem onto `dev`.
    pub fn format(dev: Arc<dyn Device>, opts: &FormatOptions) -> Result<Superblock> {
        let mut sb = Superblock::new(dev.size(), opts)?;
        let roots = BtreeId::ALL
            .iter()
            .map(|&btree| JournalItem::Root { btree, ptr: None })
            .collect();
        // The superblock goes last: until the closing write below, a crash
        // leaves a device that is not recognized as a filesystem at all,
        // never one that opens without its space described.
        let zeros = vec![0u8; crate::sb::SB_BYTES];
        dev.write_at(&zeros, crate::sb::SB_PRIMARY_OFFSET)?;
        dev.write_at(&zeros, crate::sb::backup_offset(dev.size()))?;
        dev.flush()?;
        Journal::format(dev.clone(), journal_config(&sb), roots)?;
        sb.clean = None;
        // Describe the space: sb and journal buckets in use, data buckets free.
        let engine = Engine::open_with(
            dev.clone(),
            sb.clone(),
            EngineOptions {
                background: false,
                ..Default::default()
            },
            false,
        )?;
        {
            let inner = &engine.inner;
            let ctx = inner.ctx();
            let mut alloc = inner.tree(BtreeId::Alloc).write();
            let mut free = inner.tree(BtreeId::Freespace).write();
            let bucket_sectors = sb.bucket_size / crate::SECTOR_BYTES as u32;
            let reserved = |dt: DataType| AllocValue {
                data_type: dt,
                dirty_sectors: bucket_sectors,
                ..Default::default()
            };
            let mut items = Vec::new();
            let put = |tree: &mut TreeState,
                       btree: BtreeId,
                       key: Key,
                       items: &mut Vec<JournalItem>|
             -> Result<()> {
                tree.insert(&ctx, key.pos, Val::from_key(&key))?;
                items.push(JournalItem::Put { btree, key });
                Ok(())
            };
            put(
                &mut alloc,
                BtreeId::Alloc,
                Key::new(
                    bucket_pos(0),
                    KeyType::Alloc,
                    reserved(DataType::Superblock).encode(),
                ),
                &mut items,
            )?;
            for b in sb.journal_first_bucket..sb.journal_first_bucket + sb.journal_nbuckets {
                put(
                    &mut alloc,
                    BtreeId::Alloc,
                    Key::new(
                        bucket_pos(b),
                        KeyType::Alloc,
                        reserved(DataType::Journal).encode(),
                    ),
                    &mut items,
                )?;
            }
            let first = sb.first_data_bucket();
            for b in first..sb.nbuckets {
                put(
                    &mut free,
                    BtreeId::Freespace,
                    Key::new(bucket_pos(b), KeyType::Free, Vec::new()),
                    &mut items,
                )?;
                if items.len() > 4096 {
                    inner.journal.add(&std::mem::take(&mut items))?;
                }
            }
            let mut counters = [0i64; COUNTERS];
            counters[Counter::FreeBuckets as usize] = (sb.nbuckets - first) as i64;
            inner.alloc.lock().counters = counters;
            put(
                &mut alloc,
                BtreeId::Alloc,
                Key::new(
                    ACCOUNTING_POS,
                    KeyType::Accounting,
                    encode_counters(&counters),
                ),
                &mut items,
            )?;
            inner.journal.add(&items)?;
        }
        engine.close()?;
        let (sb, _) = Superblock::read(&*dev)?;
        Ok(sb)
    }

    /// Opens the filesystem on `dev`, replaying the journal after a crash.
    pub fn open(dev: Arc<dyn Device>, opts: EngineOptions) -> Result<Engine> {
        let (sb, report) = Superblock::read(&*dev)?;
        if report.needs_repair() && !opts.read_only {
            tracing::warn!("superblock: {report}; rewriting both copies");
        }
        Engine::open_with(dev, sb, opts, true)
    }

    /// Opens with a given superblock; `mark_unclean` records the open on
    /// disk (format skips it: it writes the superblock only when done).
    fn open_with(
        dev: Arc<dyn Device>,
        mut sb: Superblock,
        opts: EngineOptions,
        mark_unclean: bool,
    ) -> Result<Engine> {
        let cfg = journal_config(&sb);
        let clean_pos = sb.clean.as_ref().map(|c| JournalPosition {
            next_seq: c.journal_next_seq,
            next_offset: c.journal_next_offset,
            last_seq: c.journal_last_seq,
        });
        let journal_offset = cfg.region_offset;
        let (journal, replay) = Journal::open(dev.clone(), cfg, clean_pos)?;
        let magic = node_magic(&sb.uuid);
        let cache = NodeCache::new(opts.cache_bytes.max(sb.node_size as usize * 16));
        let node_seq = AtomicU64::new(journal.current_seq() << 24);
        let mut roots: Vec<Option<Option<crate::btree::node_format::BtreePtr>>> =
            vec![None; BtreeId::COUNT];
        if let Some(clean) = &sb.clean {
            for (i, r) in clean.roots.iter().enumerate() {
                roots[i] = Some(*r);
            }
        } else {
            let first = replay.entries.first().ok_or_else(|| {
                Error::corrupted(
                    Structure::JournalEntry,
                    journal_offset,
                    "no journal entries to replay",
                )
            })?;
            for item in &first.items {
                if let JournalItem::Root { btree, ptr } = item {
                    roots[btree.index()] = Some(*ptr);
                }
            }
        }
        let ctx_cache = &cache;
        let mut trees = Vec::with_capacity(BtreeId::COUNT);
        for id in BtreeId::ALL {
            let root = match roots[id.index()] {
                Some(Some(ptr)) => ptr,
                Some(None) => {
                    let ptr = crate::btree::node_format::BtreePtr {
                        offset: ctx_cache.new_temp_id(),
                        seq: node_seq.fetch_add(1, Ordering::Relaxed),
                        sectors: 0,
                        generation: 0,
                        level: 0,
                    };
                    ctx_cache.insert(
                        ptr.offset,
                        crate::btree::node::Node::new_empty(id, 0, Pos::MIN, Pos::MAX, ptr),
                    );
                    ptr
                }
                None => {
                    return Err(Error::corrupted(
                        Structure::JournalEntry,
                        journal_offset,
                        format!("no root recorded for the {} btree", id.name()),
                    ));
                }
            };
            trees.push(RwLock::new(TreeState::new(id, root)));
        }
        let geo = geometry(&sb);
        let inner = Inner {
            dev: dev.clone(),
            sb: Mutex::new(sb.clone()),
            trees,
            cache,
            journal,
            alloc: Mutex::new(AllocState::new(geo, [0; COUNTERS])),
            node_seq,
            magic,
            node_size: sb.node_size as usize,
            read_only: opts.read_only,
            checkpoint_lock: Mutex::new(()),
            copygc_lock: Mutex::new(()),
            move_seq: AtomicU64::new(0),
            copygc_totals: Default::default(),
            failed: Mutex::new(None),
            dirty_bytes: AtomicUsize::new(0),
            checkpoints: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
            wake: (Mutex::new(false), Condvar::new()),
            replayed: (
                replay.entries.len(),
                replay.entries.iter().map(|e| e.items.len()).sum(),
            ),
        };
        // Replay: key changes newer than the nodes, in journal order. The
        // alloc trigger's effects were journaled as keys too.
        {
            let ctx = inner.ctx();
            let mut dirty = 0;
            for entry in &replay.entries {
                for item in &entry.items {
                    match item {
                        JournalItem::Put { btree, key } => {
                            inner
                                .tree(*btree)
                                .write()
                                .insert(&ctx, key.pos, Val::from_key(key))?;
                            dirty += change_bytes(Some(key.value.len()));
                        }
                        JournalItem::Delete { btree, pos } => {
                            inner.tree(*btree).write().remove(&ctx, *pos)?;
                            dirty += change_bytes(None);
                        }
                        JournalItem::Root { .. } => {}
                    }
                }
            }
            inner.dirty_bytes.store(dirty, Ordering::Relaxed);
            let counters = read_counters(&ctx, &inner.tree(BtreeId::Alloc).read())?;
            inner.alloc.lock().counters = counters;
            if !opts.read_only {
                // Buckets emptied while open before a crash: freed by a
                // checkpoint before the engine is handed out.
                let empty = find_empty_in_use(&ctx, &inner.tree(BtreeId::Alloc).read(), &geo)?;
                inner.alloc.lock().closed = empty;
            }
        }
        if !opts.read_only {
            sb.clean = None;
            if mark_unclean {
                sb.write(&*dev)?;
            }
            *inner.sb.lock() = sb;
        }
        let inner = Arc::new(inner);
        if !inner.alloc.lock().closed.is_empty() {
            inner.checkpoint()?;
        }
        let background = if opts.background && !opts.read_only {
            let weak = Arc::downgrade(&inner);
            Some(
                std::thread::Builder::new()
                    .name("arborfs-journal".into())
                    .spawn(move || background_loop(weak))
                    .map_err(|e| {
                        Error::InvalidArgument(format!("cannot start the background thread: {e}"))
                    })?,
            )
        } else {
            None
        };
        Ok(Engine { inner, background })
    }

    /// Writes everything and records a clean shutdown.
    pub fn close(mut self) -> Result<()> {
        self.stop_background();
        let inner = &self.inner;
        if inner.read_only {
            return Ok(());
        }
        inner.check_writable()?;
        // A checkpoint charges the nodes it writes to alloc keys, which
        // dirties the alloc btree again; the next one only appends to those
        // nodes, so this settles in two or three rounds.
        let mut rounds = 0;
        loop {
            // Closed buckets left empty are freed by the checkpoint; an open
            // one would stay allocated with no data after the unmount.
            inner.alloc.lock().close_all();
            inner.checkpoint()?;
            rounds += 1;
            if inner.dirty_nodes()? == 0 {
                break;
            }
            if rounds >= 8 {
                // Leave the filesystem unclean: the next open replays the journal.
                tracing::warn!("b-trees still dirty after {rounds} checkpoints; not marking clean");
                return Ok(());
            }
        }
        let _one = inner.checkpoint_lock.lock();
        let guards: Vec<RwLockReadGuard<'_, TreeState>> =
            inner.trees.iter().map(|t| t.read()).collect();
        inner.journal.write_pending(true)?;
        let pos = inner.journal.position();
        let mut roots = [None; BtreeId::COUNT];
        for g in &guards {
            roots[g.id.index()] = Some(g.root);
        }
        let mut sb = inner.sb.lock();
        sb.clean = Some(CleanState {
            journal_next_seq: pos.next_seq,
            journal_next_offset: pos.next_offset,
            journal_last_seq: pos.last_seq,
            roots,
        });
        sb.write(&*inner.dev)?;
        Ok(())
    }

    fn stop_background(&mut self) {
        self.inner.shutdown.store(true, Ordering::Relaxed);
        {
            let (m, cv) = &self.inner.wake;
            *m.lock() = true;
            cv.notify_all();
        }
        if let Some(h) = self.background.take() {
            let _ = h.join();
        }
    }

    pub fn superblock(&self) -> Superblock {
        self.inner.sb.lock().clone()
    }

    pub fn device(&self) -> &Arc<dyn Device> {
        &self.inner.dev
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            node_reads: self.inner.cache.disk_reads.load(Ordering::Relaxed),
            checkpoints: self.inner.checkpoints.load(Ordering::Relaxed),
            cache_bytes: self.inner.cache.used(),
            journal_entries_replayed: self.inner.replayed.0,
            journal_keys_replayed: self.inner.replayed.1,
            copygc_passes: self.inner.copygc_totals[0].load(Ordering::Relaxed),
            copygc_buckets_freed: self.inner.copygc_totals[1].load(Ordering::Relaxed),
            copygc_sectors_moved: self.inner.copygc_totals[2].load(Ordering::Relaxed),
        }
    }

    /// Space counters from the persistent accounting key.
    pub fn counters(&self) -> [i64; COUNTERS] {
        self.inner.alloc.lock().counters
    }

    pub fn geometry(&self) -> Geometry {
        self.inner.alloc.lock().geo
    }

    /// Writes all dirty nodes now.
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.checkpoint()
    }

    /// Discards every free bucket, as fstrim does: an image file gets holes
    /// where nothing lives, a block device may unmap the space. A bucket is
    /// discarded only when it could be handed out for reuse right now (in
    /// the freespace index, not open or pinned, its emptying durable), and
    /// the allocator stays locked while its batch is discarded, so no write
    /// lands in a bucket being discarded. Whatever later reads a discarded
    /// bucket through a stale pointer fails its generation check first.
    pub fn trim(&self) -> Result<TrimReport> {
        self.inner.check_writable()?;
        const BATCH: usize = 256;
        let geo = self.geometry();
        let bucket_bytes = geo.bucket_sectors * crate::SECTOR_BYTES;
        let mut report = TrimReport::default();
        let mut start = geo.first_data_bucket;
        loop {
            let ctx = self.inner.ctx();
            let free = self.inner.tree(BtreeId::Freespace).read();
            let mut st = self.inner.alloc.lock();
            st.note_durable(self.inner.journal.durable_seq());
            let mut batch = Vec::new();
            free.scan(
                &ctx,
                bucket_pos(start),
                Pos::new(0, u64::MAX, u32::MAX),
                BATCH,
                &mut batch,
            )?;
            // Runs of neighbouring discardable buckets, one call each.
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for k in &batch {
                let b = k.pos.offset;
                if b < geo.first_data_bucket || b >= geo.nbuckets || !st.reusable_now(b) {
                    continue;
                }
                match runs.last_mut() {
                    Some((first, n)) if *first + *n == b => *n += 1,
                    _ => runs.push((b, 1)),
                }
            }
            for (first, n) in runs {
                self.inner
                    .dev
                    .discard(first * bucket_bytes, n * bucket_bytes)?;
                report.buckets += n;
                report.bytes += n * bucket_bytes;
            }
            drop(st);
            drop(free);
            match batch.last() {
                Some(k) if batch.len() == BATCH => start = k.pos.offset + 1,
                _ => return Ok(report),
            }
        }
    }

    /// Makes every commit so far durable.
    pub fn sync(&self) -> Result<()> {
        self.inner.check_writable()?;
        // Every commit so far is in the open entry or an earlier one.
        let seq = self.inner.journal.current_seq();
        self.inner.journal.flush_seq(seq)?;
        Ok(())
    }

    /// Space for up to `sectors` of user data (possibly fewer: a write that
    /// gets fewer asks again for the rest).
    ///
    /// Before returning `NoSpace` it makes buckets emptied by recent commits
    /// reusable (a journal flush), then runs a copygc pass (a second, more
    /// aggressive one if the first freed nothing), retrying after each.
    ///
    /// The bucket stays pinned until the returned [`PinnedAlloc`] is
    /// dropped: drop it only after the keys pointing at the space were
    /// committed (or abandoned).
    pub fn alloc_data(&self, sectors: u32) -> Result<PinnedAlloc> {
        match self.alloc_data_once(sectors) {
            Err(Error::NoSpace) => {}
            r => return r,
        }
        if self.has_pending_empty() {
            self.sync()?;
            match self.alloc_data_once(sectors) {
                Err(Error::NoSpace) => {}
                r => return r,
            }
        }
        for max_live_fraction in [0.5, 0.875] {
            let report = self.copygc_with(crate::alloc::copygc::CopygcOptions {
                max_live_fraction,
                ..Default::default()
            })?;
            if report.buckets_freed > 0 {
                return self.alloc_data_once(sectors);
            }
        }
        Err(Error::NoSpace)
    }

    fn alloc_data_once(&self, sectors: u32) -> Result<PinnedAlloc> {
        self.inner.check_writable()?;
        let ctx = self.inner.ctx();
        let alloc = self.inner.tree(BtreeId::Alloc).read();
        let free = self.inner.tree(BtreeId::Freespace).read();
        let mut st = self.inner.alloc.lock();
        st.alloc_data(
            &ctx,
            &alloc,
            &free,
            self.inner.journal.durable_seq(),
            sectors,
        )
        .map(|a| PinnedAlloc::new(self.inner.clone(), a, &st.geo))
    }

    /// Writes file data at `dev_sector`. Keys pointing at it may be
    /// committed afterwards: the journal flushes the device before writing
    /// the entry that holds them.
    pub fn write_data(&self, dev_sector: u64, buf: &[u8]) -> Result<()> {
        self.inner
            .dev
            .write_at(buf, dev_sector * crate::SECTOR_BYTES)?;
        self.inner.journal.note_data_written();
        Ok(())
    }

    /// Reads stored file data at `dev_sector`.
    pub fn read_data(&self, dev_sector: u64, buf: &mut [u8]) -> Result<()> {
        self.inner
            .dev
            .read_at(buf, dev_sector * crate::SECTOR_BYTES)?;
        Ok(())
    }

    /// Buckets currently being filled (not free, even if empty).
    pub fn open_buckets(&self) -> std::collections::HashSet<u64> {
        self.inner.alloc.lock().open.clone()
    }

    /// Replaces the in-memory space counters (fsck, after recomputing them;
    /// the caller also rewrites the accounting key).
    pub fn set_counters(&self, c: [i64; COUNTERS]) {
        self.inner.alloc.lock().counters = c;
    }

    /// Every node of every b-tree, read and verified: (btree, pointer).
    /// Nodes not written yet have temporary offsets (`btree::cache::is_temp`).
    pub fn walk_nodes(
        &self,
        f: &mut dyn FnMut(BtreeId, crate::btree::node_format::BtreePtr),
    ) -> Result<()> {
        let ctx = self.inner.ctx();
        for t in &self.inner.trees {
            let g = t.read();
            let id = g.id;
            g.walk(&ctx, &mut |p| f(id, p))?;
        }
        Ok(())
    }

    /// Node slots no longer in any tree (merged away, replaced) but still
    /// charged: the last checkpoint's trees on disk reference them until the
    /// next checkpoint writes roots that do not and releases them.
    pub fn freed_node_slots(&self) -> Vec<(BtreeId, crate::btree::node_format::BtreePtr)> {
        let mut out = Vec::new();
        for t in &self.inner.trees {
            let g = t.read();
            out.extend(g.freed.iter().map(|p| (g.id, *p)));
        }
        out
    }

    /// Replaces every b-tree node that cannot be read with an empty one of
    /// the same range (fsck repair; the keys it held are lost), then
    /// checkpoints. Returns the nodes dropped.
    pub fn drop_damaged_nodes(&self) -> Result<Vec<crate::btree::tree::DroppedNode>> {
        self.inner.check_writable()?;
        let ctx = self.inner.ctx();
        let mut all = Vec::new();
        for t in &self.inner.trees {
            all.extend(t.write().drop_damaged(&ctx)?);
        }
        if !all.is_empty() {
            self.checkpoint()?;
        }
        Ok(all)
    }

    /// The alloc key of `bucket` (defaults for a never-used bucket).
    pub fn bucket(&self, bucket: u64) -> Result<AllocValue> {
        let ctx = self.inner.ctx();
        match self
            .inner
            .tree(BtreeId::Alloc)
            .read()
            .get(&ctx, bucket_pos(bucket))?
        {
            Some(v) => crate::alloc::decode_alloc(&v, bucket),
            None => Ok(AllocValue::default()),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Only the handle that owns the background thread stops it (the
        // background thread borrows a handle of its own for copygc).
        if self.background.is_some() {
            self.stop_background();
        }
    }
}

/// Writes the journal every 50 ms (flushing at most every second),
/// checkpoints when the journal or dirty memory passes its threshold, and
/// runs copygc when free buckets run low.
fn background_loop(inner: Weak<Inner>) {
    let mut ticks = 0u32;
    // Counters when a copygc pass last freed nothing: no new pass until
    // they change (nothing was overwritten, so nothing new to collect).
    let mut fruitless: Option<[i64; COUNTERS]> = None;
    loop {
        let Some(i) = inner.upgrade() else { return };
        {
            let (m, cv) = &i.wake;
            let mut woken = m.lock();
            if !*woken {
                cv.wait_for(&mut woken, Duration::from_millis(50));
            }
            *woken = false;
        }
        if i.shutdown.load(Ordering::Relaxed) {
            return;
        }
        if i.check_writable().is_err() {
            continue;
        }
        ticks += 1;
        let flush = ticks.is_multiple_of(20);
        if let Err(e) = i.journal.write_pending(flush) {
            i.fail(&e);
            continue;
        }
        if i.wants_checkpoint()
            && let Err(e) = i.checkpoint()
        {
            tracing::warn!("background checkpoint failed: {e}");
        }
        let counters = {
            let st = i.alloc.lock();
            crate::alloc::copygc::wants_copygc(&st).then_some(st.counters)
        };
        if let Some(c) = counters
            && fruitless != Some(c)
        {
            let engine = Engine {
                inner: i.clone(),
                background: None,
            };
            match engine.try_copygc(Default::default()) {
                Some(Ok(r)) => fruitless = (r.buckets_freed == 0).then_some(c),
                Some(Err(e)) => tracing::warn!("background copygc failed: {e}"),
                None => {}
            }
        }
    }
}
