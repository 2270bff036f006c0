//! Transactions: read with lookups and scans, queue updates, commit them
//! atomically across b-trees.
//!
//! Concurrency is optimistic: a transaction remembers each b-tree's change
//! counter when it first reads it. Commit takes the write locks of every
//! b-tree it touches in [`BtreeId`] order (so commits never deadlock),
//! checks that nothing it read changed, and otherwise fails with
//! [`Error::Restart`]; [`Engine::transact`] runs the closure again from the
//! top. Committed transactions are therefore serializable.

use std::sync::atomic::Ordering;

use parking_lot::RwLockWriteGuard;

use super::cache::NodeRef;
use super::node::Val;
use super::tree::{TreeCtx, TreeState};
use crate::alloc::{BucketDeltas, apply_bucket_deltas};
use crate::engine::{Engine, Inner, change_bytes, items_bytes};
use crate::error::{Error, Result};
use crate::journal::{ItemBatch, JournalItem};
use crate::key::{BtreeId, Key, KeyType, Pos};

/// Longest extent, in sectors: bounds how far an overwrite looks for overlaps.
pub const MAX_EXTENT_SECTORS: u32 = 1 << 16;

/// One queued change.
#[derive(Clone, Debug)]
pub enum Update {
    /// Insert or replace. In an extents btree, first trims every extent of the
    /// same inode and snapshot that overlaps the new key's range.
    Put(Key),
    /// Remove the key at this position (if any).
    Delete(Pos),
    /// Extents btrees: remove `[start, end)` sectors of `inode` in `snapshot`,
    /// trimming extents that straddle the ends.
    DeleteRange {
        inode: u64,
        snapshot: u32,
        start: u64,
        end: u64,
    },
}

/// How durable a commit must be before it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// In the journal's memory buffer: written within ~50 ms, flushed within ~1 s.
    Lazy,
    /// Journal entry written and the device flushed (fsync semantics).
    Durable,
}

pub struct Transaction<'e> {
    inner: &'e Inner,
    reads: [Option<u64>; BtreeId::COUNT],
    updates: Vec<(BtreeId, Update)>,
}

impl Engine {
    pub fn begin(&self) -> Transaction<'_> {
        Transaction {
            inner: &self.inner,
            reads: [None; BtreeId::COUNT],
            updates: Vec::new(),
        }
    }

    /// Runs `f` in a transaction and commits it, retrying from the top when
    /// the commit races with another one.
    pub fn transact<T>(
        &self,
        durability: Durability,
        mut f: impl FnMut(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        loop {
            let mut tx = self.begin();
            let r = match f(&mut tx) {
                Ok(v) => v,
                Err(Error::Restart(_)) => continue,
                Err(e) => return Err(e),
            };
            match tx.commit(durability) {
                Ok(_) => return Ok(r),
                Err(Error::Restart(_)) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Committed value at `pos` (outside any transaction).
    pub fn get(&self, btree: BtreeId, pos: Pos) -> Result<Option<Key>> {
        let ctx = self.inner.ctx();
        self.inner
            .tree(btree)
            .read()
            .get_with(&ctx, pos, |v| v.to_key(pos))
    }
}

impl<'e> Transaction<'e> {
    fn note_read(&mut self, btree: BtreeId, tree: &TreeState) -> Result<()> {
        match self.reads[btree.index()] {
            None => {
                self.reads[btree.index()] = Some(tree.mod_seq);
                Ok(())
            }
            Some(seq) if seq == tree.mod_seq => Ok(()),
            Some(_) => Err(Error::Restart(
                "b-tree changed since this transaction read it",
            )),
        }
    }

    /// The key at exactly `pos`, seeing this transaction's own queued point
    /// updates.
    pub fn get(&mut self, btree: BtreeId, pos: Pos) -> Result<Option<Key>> {
        for (b, u) in self.updates.iter().rev() {
            if *b != btree || btree.is_extents() {
                continue;
            }
            match u {
                Update::Put(k) if k.pos == pos => return Ok(Some(k.clone())),
                Update::Delete(p) if *p == pos => return Ok(None),
                _ => {}
            }
        }
        let ctx = self.inner.ctx();
        let tree = self.inner.tree(btree).read();
        self.note_read(btree, &tree)?;
        tree.get_with(&ctx, pos, |v| v.to_key(pos))
    }

    /// Up to `limit` committed keys in `[start, end]`, in order. Queued
    /// updates of this transaction are not merged in.
    pub fn scan(&mut self, btree: BtreeId, start: Pos, end: Pos, limit: usize) -> Result<Vec<Key>> {
        let ctx = self.inner.ctx();
        let tree = self.inner.tree(btree).read();
        self.note_read(btree, &tree)?;
        let mut out = Vec::new();
        tree.scan(&ctx, start, end, limit, &mut out)?;
        Ok(out)
    }

    /// Like [`Transaction::scan`], last key first.
    pub fn scan_rev(
        &mut self,
        btree: BtreeId,
        start: Pos,
        end: Pos,
        limit: usize,
    ) -> Result<Vec<Key>> {
        let ctx = self.inner.ctx();
        let tree = self.inner.tree(btree).read();
        self.note_read(btree, &tree)?;
        let mut out = Vec::new();
        tree.scan_rev(&ctx, start, end, limit, &mut out)?;
        Ok(out)
    }

    pub fn put(&mut self, btree: BtreeId, key: Key) {
        self.updates.push((btree, Update::Put(key)));
    }

    pub fn delete(&mut self, btree: BtreeId, pos: Pos) {
        self.updates.push((btree, Update::Delete(pos)));
    }

    pub fn delete_range(
        &mut self,
        btree: BtreeId,
        inode: u64,
        snapshot: u32,
        start: u64,
        end: u64,
    ) {
        self.updates.push((
            btree,
            Update::DeleteRange {
                inode,
                snapshot,
                start,
                end,
            },
        ));
    }

    pub fn update(&mut self, btree: BtreeId, u: Update) {
        self.updates.push((btree, u));
    }

    pub fn is_empty(&self) -> bool {
        self.updates.is_empty()
    }

    fn validate(&self) -> Result<()> {
        for (btree, u) in &self.updates {
            if let Update::Put(k) = u {
                if matches!(k.ty, KeyType::Deleted | KeyType::BtreePtr) {
                    return Err(Error::InvalidArgument(format!(
                        "key type {} cannot be inserted",
                        k.ty.name()
                    )));
                }
                if btree.is_extents()
                    && !k.is_whiteout()
                    && (k.size == 0 || k.size > MAX_EXTENT_SECTORS)
                {
                    return Err(Error::InvalidArgument(format!(
                        "extent at {:?} has size {} (must be 1..={MAX_EXTENT_SECTORS})",
                        k.pos, k.size
                    )));
                }
                if !btree.is_extents() && k.size != 0 {
                    return Err(Error::InvalidArgument(format!(
                        "non-extent key at {:?} has a size",
                        k.pos
                    )));
                }
            }
            if let Update::DeleteRange { start, end, .. } = u
                && (!btree.is_extents() || start > end)
            {
                return Err(Error::InvalidArgument(
                    "delete_range needs an extents btree and start <= end".into(),
                ));
            }
        }
        Ok(())
    }

    /// Applies the updates atomically. Returns the journal sequence that
    /// holds them.
    pub fn commit(self, durability: Durability) -> Result<u64> {
        let inner = self.inner;
        inner.check_writable()?;
        if self.updates.is_empty() {
            return Ok(inner.journal.current_seq());
        }
        self.validate()?;
        if inner.journal.fill_ratio() > 0.85 {
            // Make room before taking locks; the commit then starts over.
            inner.checkpoint()?;
        }
        let mut writes = [false; BtreeId::COUNT];
        for (b, _) in &self.updates {
            writes[b.index()] = true;
            if b.has_alloc_trigger() {
                writes[BtreeId::Alloc.index()] = true;
                writes[BtreeId::Freespace.index()] = true;
            }
        }
        // Lock every b-tree read or written, in id order.
        let mut write_guards: [Option<RwLockWriteGuard<'_, TreeState>>; BtreeId::COUNT] =
            std::array::from_fn(|_| None);
        let mut read_guards = Vec::new();
        for id in BtreeId::ALL {
            if writes[id.index()] {
                let g = inner.tree(id).write();
                if self.reads[id.index()].is_some_and(|s| s != g.mod_seq) {
                    return Err(Error::Restart(
                        "b-tree changed since this transaction read it",
                    ));
                }
                write_guards[id.index()] = Some(g);
            } else if let Some(seq) = self.reads[id.index()] {
                let g = inner.tree(id).read();
                if g.mod_seq != seq {
                    return Err(Error::Restart(
                        "b-tree changed since this transaction read it",
                    ));
                }
                read_guards.push(g);
            }
        }
        let ctx = inner.ctx();
        // Load what the updates will change while an error can still abort
        // cleanly; after this point an error leaves memory half-updated and
        // stops the filesystem from writing. The loaded nodes stay pinned
        // (not evictable) until the updates are applied.
        // A point update also remembers its leaf (the last node pinned).
        let mut pins = Vec::with_capacity(self.updates.len() * 3);
        let mut leaves = Vec::with_capacity(self.updates.len());
        for (btree, u) in &self.updates {
            let tree = write_guards[btree.index()].as_ref().expect("locked");
            let (start, end) = touch_range(*btree, u);
            tree.touch(&ctx, start, end, &mut pins)?;
            leaves.push((start == end).then(|| pins.len() - 1));
        }
        let mut log = Logged {
            batch: ItemBatch::with_capacity(self.updates.len() * 48 + 256),
            dirty_bytes: 0,
        };
        let leaves: Vec<Option<&NodeRef>> = leaves.iter().map(|l| l.map(|p| &pins[p])).collect();
        let r = apply_all(
            inner,
            &ctx,
            &mut write_guards,
            &self.updates,
            &leaves,
            &mut log,
        );
        let emptied = match r {
            Ok(e) => e,
            Err(e) => {
                inner.fail(&e);
                return Err(e);
            }
        };
        drop(leaves);
        drop(pins);
        for g in write_guards.iter_mut().flatten() {
            g.mod_seq += 1;
        }
        let seq = match inner.journal.add_batch(&log.batch) {
            Ok(s) => s,
            Err(e) => {
                inner.fail(&e);
                return Err(e);
            }
        };
        if !emptied.is_empty() {
            let mut st = inner.alloc.lock();
            for b in emptied {
                st.pending_empty.insert(b, seq);
            }
        }
        inner
            .dirty_bytes
            .fetch_add(log.dirty_bytes, Ordering::Relaxed);
        drop(write_guards);
        drop(read_guards);
        if durability == Durability::Durable {
            inner.journal.flush_seq(seq)?;
        }
        if inner.wants_checkpoint() {
            inner.checkpoint()?;
        }
        Ok(seq)
    }
}

/// Key range an update may change (for loading nodes up front).
fn touch_range(btree: BtreeId, u: &Update) -> (Pos, Pos) {
    let extent_range = |inode: u64, start: u64, end: u64| {
        (
            Pos::new(inode, start.saturating_add(1), 0),
            Pos::new(
                inode,
                end.saturating_add(MAX_EXTENT_SECTORS as u64),
                u32::MAX,
            ),
        )
    };
    match u {
        Update::Put(k) if btree.is_extents() => extent_range(k.pos.inode, k.start(), k.end()),
        Update::Put(k) => (k.pos, k.pos),
        Update::Delete(p) => (*p, *p),
        Update::DeleteRange {
            inode, start, end, ..
        } => extent_range(*inode, *start, *end),
    }
}

/// The journal items of a commit, encoded as they are produced, and their
/// dirty-memory estimate.
struct Logged {
    batch: ItemBatch,
    dirty_bytes: usize,
}

impl Logged {
    fn put(&mut self, btree: BtreeId, key: &Key) {
        self.dirty_bytes += change_bytes(Some(key.value.len()));
        self.batch.put(btree, key);
    }

    fn delete(&mut self, btree: BtreeId, pos: Pos) {
        self.dirty_bytes += change_bytes(None);
        self.batch.delete(btree, pos);
    }

    fn extend(&mut self, items: &[JournalItem]) {
        self.dirty_bytes += items_bytes(items);
        for it in items {
            self.batch.push(it);
        }
    }
}

fn apply_all(
    inner: &Inner,
    ctx: &TreeCtx,
    guards: &mut [Option<RwLockWriteGuard<'_, TreeState>>],
    updates: &[(BtreeId, Update)],
    leaves: &[Option<&NodeRef>],
    log: &mut Logged,
) -> Result<Vec<u64>> {
    let geo = inner.alloc.lock().geo;
    let mut deltas = BucketDeltas::default();
    for (i, (btree, u)) in updates.iter().enumerate() {
        let tree = guards[btree.index()].as_mut().expect("locked");
        let trigger = btree.has_alloc_trigger();
        match u {
            Update::Put(k) if btree.is_extents() => {
                trim_extents(
                    ctx,
                    tree,
                    *btree,
                    k.pos.inode,
                    k.pos.snapshot,
                    k.start(),
                    k.end(),
                    log,
                    &mut deltas,
                    &geo,
                )?;
                tree.insert(ctx, k.pos, Val::from_key(k))?;
                if trigger {
                    deltas.charge_key(&geo, k, 1)?;
                }
                log.put(*btree, k);
            }
            Update::Put(k) => {
                tree.insert_in(ctx, leaves[i], k.pos, Val::from_key(k))?;
                log.put(*btree, k);
            }
            Update::Delete(p) => {
                if let Some(old) = tree.remove(ctx, *p)? {
                    if trigger {
                        deltas.charge_key(&geo, &old.to_key(*p), -1)?;
                    }
                    log.delete(*btree, *p);
                }
            }
            Update::DeleteRange {
                inode,
                snapshot,
                start,
                end,
            } => {
                trim_extents(
                    ctx,
                    tree,
                    *btree,
                    *inode,
                    *snapshot,
                    *start,
                    *end,
                    log,
                    &mut deltas,
                    &geo,
                )?;
            }
        }
    }
    if deltas.is_empty() {
        return Ok(Vec::new());
    }
    let (left, right) = guards.split_at_mut(BtreeId::Freespace.index());
    let alloc = left[BtreeId::Alloc.index()].as_mut().expect("alloc locked");
    let freespace = right[0].as_mut().expect("freespace locked");
    let mut st = inner.alloc.lock();
    let mut items = Vec::new();
    let emptied = apply_bucket_deltas(ctx, alloc, freespace, &mut st, &deltas, &mut items)?;
    log.extend(&items);
    Ok(emptied)
}

/// Batch sizes for scanning the extent keys that overlap sectors
/// `[start, end)`: keys past `end` are decoded for nothing, so the first
/// batch holds about as many keys as 4 KiB extents would fill the range
/// with, and each next one twice as many, up to `max`.
pub(crate) fn extent_scan_batches(start: u64, end: u64, max: usize) -> impl Iterator<Item = usize> {
    let first = (end.saturating_sub(start) / 8 + 2).min(max as u64) as usize;
    std::iter::successors(Some(first), move |&n| Some((n * 2).min(max)))
}

/// Removes `[start, end)` of `inode` in `snapshot`: extents inside go, ones
/// that straddle an end are cut back to the part outside.
#[allow(clippy::too_many_arguments)]
fn trim_extents(
    ctx: &TreeCtx,
    tree: &mut TreeState,
    btree: BtreeId,
    inode: u64,
    snapshot: u32,
    start: u64,
    end: u64,
    log: &mut Logged,
    deltas: &mut BucketDeltas,
    geo: &crate::alloc::Geometry,
) -> Result<()> {
    if start >= end {
        return Ok(());
    }
    let trigger = btree.has_alloc_trigger();
    let (lo, hi) = (
        Pos::new(inode, start + 1, 0),
        Pos::new(
            inode,
            end.saturating_add(MAX_EXTENT_SECTORS as u64),
            u32::MAX,
        ),
    );
    let mut overlapping = Vec::new();
    let mut cursor = lo;
    let mut batches = extent_scan_batches(start, end, 128);
    'scan: loop {
        let mut batch = Vec::new();
        let limit = batches.next().unwrap_or(128);
        tree.scan(ctx, cursor, hi, limit, &mut batch)?;
        let full = batch.len() == limit;
        for k in batch {
            cursor = match k.pos.successor() {
                Some(s) => s,
                None => break 'scan,
            };
            if k.pos.snapshot != snapshot {
                continue;
            }
            if k.start() >= end {
                break 'scan;
            }
            overlapping.push(k);
        }
        if !full {
            break;
        }
    }
    for k in overlapping {
        tree.remove(ctx, k.pos)?;
        log.delete(btree, k.pos);
        if trigger {
            deltas.charge_key(geo, &k, -1)?;
        }
        if k.start() < start {
            let front = Key {
                pos: Pos::new(inode, start, snapshot),
                size: (start - k.start()) as u32,
                ty: k.ty,
                value: k.value.clone(),
            };
            tree.insert(ctx, front.pos, Val::from_key(&front))?;
            if trigger {
                deltas.charge_key(geo, &front, 1)?;
            }
            log.put(btree, &front);
        }
        if k.end() > end {
            let cut = end - k.start();
            let back = Key {
                pos: k.pos,
                size: (k.end() - end) as u32,
                ty: k.ty,
                value: cut_front(k.ty, &k.value, cut)?,
            };
            tree.insert(ctx, back.pos, Val::from_key(&back))?;
            if trigger {
                deltas.charge_key(geo, &back, 1)?;
            }
            log.put(btree, &back);
        }
    }
    Ok(())
}

/// The value of an extent whose first `sectors` were cut away.
pub fn cut_front(ty: KeyType, value: &[u8], sectors: u64) -> Result<Vec<u8>> {
    match ty {
        KeyType::Extent => {
            let mut v =
                crate::alloc::extent_format::ExtentValue::decode(value).ok_or_else(|| {
                    Error::corrupted(crate::error::Structure::Value, 0, "bad extent value")
                })?;
            v.offset += sectors as u32;
            Ok(v.encode())
        }
        _ => Ok(value.to_vec()),
    }
}
