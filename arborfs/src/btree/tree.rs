//! Operations on one b-tree: lookups, range scans, inserts and deletes with
//! splits and merges, and writing dirty nodes at a checkpoint.
//!
//! The caller holds the b-tree's lock (shared for reads, exclusive for
//! changes); nodes are reached through the [`NodeCache`].

use std::sync::atomic::{AtomicU64, Ordering};

use super::cache::{NodeCache, NodeRef, is_temp};

type NodeReadGuard = parking_lot::ArcRwLockReadGuard<parking_lot::RawRwLock, Node>;
type NodeWriteGuard = parking_lot::ArcRwLockWriteGuard<parking_lot::RawRwLock, Node>;
use super::node::{Node, Val};
use super::node_format::BtreePtr;
use crate::SECTOR_BYTES;
use crate::device::Device;
use crate::error::{Error, Result, Structure};
use crate::key::{BtreeId, Key, KeyType, Pos};

/// Most bsets a node may have before the next write compacts it.
const MAX_BSETS: u16 = 32;

/// The state of one b-tree, guarded by that b-tree's lock.
pub struct TreeState {
    pub id: BtreeId,
    pub root: BtreePtr,
    /// Bumped by every commit that changes the tree (read validation).
    pub mod_seq: u64,
    /// Written nodes dropped since the last checkpoint; their space is
    /// released by the next checkpoint.
    pub freed: Vec<BtreePtr>,
    /// The root node as last seen by a change of the tree (see `root_guard`).
    root_node: Option<NodeRef>,
}

/// What tree operations need besides the tree itself.
pub struct TreeCtx<'a> {
    pub cache: &'a NodeCache,
    pub dev: &'a dyn Device,
    pub magic: u64,
    pub node_size: usize,
    pub node_seq: &'a AtomicU64,
}

impl TreeCtx<'_> {
    fn split_threshold(&self) -> usize {
        self.node_size * 3 / 4
    }

    fn merge_threshold(&self) -> usize {
        self.node_size / 4
    }

    /// Largest value a key may have so that a split always makes room.
    pub fn max_value_bytes(&self) -> usize {
        self.node_size / 4 - 64
    }

    pub fn next_node_seq(&self) -> u64 {
        self.node_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// A new empty node with a temporary id, in the cache.
    fn new_node(&self, btree: BtreeId, level: u8, min: Pos, max: Pos) -> (BtreePtr, NodeRef) {
        let ptr = BtreePtr {
            offset: self.cache.new_temp_id(),
            seq: self.next_node_seq(),
            sectors: 0,
            generation: 0,
            level,
        };
        let node = Node::new_empty(btree, level, min, max, ptr);
        (ptr, self.cache.insert(ptr.offset, node))
    }

    /// The node at `ptr`, from the cache or the device.
    pub fn load(&self, btree: BtreeId, ptr: BtreePtr, min: Pos, max: Pos) -> Result<NodeRef> {
        if let Some(n) = self.cache.get(ptr.offset) {
            let g = n.read();
            if g.ptr.seq == ptr.seq && !g.evicted {
                drop(g);
                return Ok(n);
            }
            drop(g);
            if is_temp(ptr.offset) {
                return Err(Error::corrupted(
                    Structure::BtreeNode,
                    0,
                    "unwritten node lost from the cache",
                ));
            }
            self.cache.remove(ptr.offset);
        } else if is_temp(ptr.offset) {
            return Err(Error::corrupted(
                Structure::BtreeNode,
                0,
                "unwritten node missing from the cache",
            ));
        }
        let len = ptr.sectors as u64 * SECTOR_BYTES;
        if len == 0 || len > self.node_size as u64 || !ptr.offset.is_multiple_of(SECTOR_BYTES) {
            return Err(Error::corrupted(
                Structure::BtreeNode,
                ptr.offset,
                format!(
                    "node pointer with {} sectors (node size {})",
                    ptr.sectors, self.node_size
                ),
            ));
        }
        let mut buf = vec![0u8; len as usize];
        self.dev.read_at(&mut buf, ptr.offset)?;
        self.cache.disk_reads.fetch_add(1, Ordering::Relaxed);
        let node = Node::decode(&buf, self.magic, ptr, btree, min, max)?;
        let n = self.cache.insert(ptr.offset, node);
        self.cache.evict_if_needed();
        Ok(n)
    }

    /// Runs `f` on the node with exclusive access, reloading it if the cache
    /// dropped it in the meantime (it was clean, so the disk copy is current).
    fn with_node_mut<R>(
        &self,
        btree: BtreeId,
        ptr: BtreePtr,
        min: Pos,
        max: Pos,
        f: impl FnOnce(&mut Node) -> R,
    ) -> Result<R> {
        loop {
            let n = self.load(btree, ptr, min, max)?;
            let mut g = n.write();
            if g.evicted {
                continue;
            }
            let r = f(&mut g);
            self.cache.recharge(&mut g);
            return Ok(r);
        }
    }
}

struct ChildRef {
    key: Pos,
    ptr: BtreePtr,
    min: Pos,
}

fn child_ptr(node: &Node, key: Pos, val: &Val) -> Result<BtreePtr> {
    let ptr = Node::child_ptr(val).ok_or_else(|| {
        Error::corrupted(
            Structure::BtreeNode,
            node.ptr.offset,
            format!("bad child pointer at {key:?}"),
        )
    })?;
    if ptr.level + 1 != node.level {
        return Err(Error::corrupted(
            Structure::BtreeNode,
            node.ptr.offset,
            format!(
                "child at {key:?} has level {} under a level {} node",
                ptr.level, node.level
            ),
        ));
    }
    Ok(ptr)
}

/// Key and pointer of the child of interior `node` whose range holds `pos`.
fn child_for(node: &Node, pos: Pos) -> Result<(Pos, BtreePtr)> {
    let (key, val) = node.keys.range(pos..).next().ok_or_else(|| {
        Error::corrupted(
            Structure::BtreeNode,
            node.ptr.offset,
            format!("no child covers {pos:?}"),
        )
    })?;
    Ok((*key, child_ptr(node, *key, val)?))
}

/// Lower bound of the range of the child stored under `key` in `node`.
fn child_min(node: &Node, key: Pos) -> Pos {
    match node.keys.range(..key).next_back() {
        Some((prev, _)) => prev.successor().unwrap_or(Pos::MAX),
        None => node.min,
    }
}

/// The node at `ptr` (whose range ends at `max`), locked for writing:
/// `hint` if that is the node and it is still cached, else loaded through
/// the cache (`min`, the range's lower bound, is only computed then).
fn lock_node(
    ctx: &TreeCtx,
    btree: BtreeId,
    ptr: BtreePtr,
    max: Pos,
    hint: Option<NodeRef>,
    min: impl FnOnce() -> Pos,
) -> Result<NodeWriteGuard> {
    if let Some(h) = hint {
        let g = h.write_arc();
        if g.ptr.seq == ptr.seq && g.ptr.offset == ptr.offset && !g.evicted {
            return Ok(g);
        }
    }
    let min = min();
    loop {
        let g = ctx.load(btree, ptr, min, max)?.write_arc();
        if !g.evicted {
            return Ok(g);
        }
    }
}

/// Children of interior `node` whose ranges meet `[start, end]`, in order.
fn children_in_range(node: &Node, start: Pos, end: Pos) -> Result<Vec<ChildRef>> {
    let mut out = Vec::new();
    let mut min = match node.keys.range(..start).next_back() {
        Some((prev, _)) => prev.successor().unwrap_or(Pos::MAX),
        None => node.min,
    };
    for (key, val) in node.keys.range(start..) {
        if min > end {
            break;
        }
        out.push(ChildRef {
            key: *key,
            ptr: child_ptr(node, *key, val)?,
            min,
        });
        min = match key.successor() {
            Some(s) => s,
            None => break,
        };
    }
    Ok(out)
}

fn ptr_val(ptr: BtreePtr) -> Val {
    Val {
        size: 0,
        ty: KeyType::BtreePtr,
        value: super::node::ValBytes::new(&ptr.encode()),
    }
}

impl TreeState {
    pub fn new(id: BtreeId, root: BtreePtr) -> TreeState {
        TreeState {
            id,
            root,
            mod_seq: 0,
            freed: Vec::new(),
            root_node: None,
        }
    }

    /// The value at exactly `pos`.
    pub fn get(&self, ctx: &TreeCtx, pos: Pos) -> Result<Option<Val>> {
        self.get_with(ctx, pos, |v| v.clone())
    }

    /// Runs `f` on the value at exactly `pos` without copying it first.
    pub fn get_with<R>(
        &self,
        ctx: &TreeCtx,
        pos: Pos,
        f: impl FnOnce(&Val) -> R,
    ) -> Result<Option<R>> {
        let g = self.leaf_for(ctx, pos, |_| {})?;
        Ok(g.keys.get(&pos).map(f))
    }

    /// A read guard on the leaf whose range holds `pos`; `visit` sees every
    /// node on the way, the leaf last.
    ///
    /// Each level takes one read lock: the child's guard is taken (and its
    /// sequence checked) while the parent's is still held, as in `scan_rec`.
    #[inline(always)]
    fn leaf_for(
        &self,
        ctx: &TreeCtx,
        pos: Pos,
        mut visit: impl FnMut(&NodeReadGuard),
    ) -> Result<NodeReadGuard> {
        let mut g = match self.root_guard() {
            Some(g) => g,
            None => ctx.load(self.id, self.root, Pos::MIN, Pos::MAX)?.read_arc(),
        };
        loop {
            visit(&g);
            if g.is_leaf() {
                return Ok(g);
            }
            let (key, val) = g.keys.range(pos..).next().ok_or_else(|| {
                Error::corrupted(
                    Structure::BtreeNode,
                    g.ptr.offset,
                    format!("no child covers {pos:?}"),
                )
            })?;
            let (key, cptr) = (*key, child_ptr(&g, *key, val)?);
            // The child's lower bound is only needed to validate a read from disk.
            let cached = ctx.cache.get(cptr.offset).and_then(|c| {
                let cg = c.read_arc();
                (cg.ptr.seq == cptr.seq && !cg.evicted).then_some(cg)
            });
            g = match cached {
                Some(cg) => cg,
                None => {
                    let min = child_min(&g, key);
                    drop(g);
                    ctx.load(self.id, cptr, min, key)?.read_arc()
                }
            };
        }
    }

    /// A read guard on the root node if the cached reference is current.
    fn root_guard(&self) -> Option<NodeReadGuard> {
        let g = self.root_node.as_ref()?.read_arc();
        (g.ptr.seq == self.root.seq && !g.evicted).then_some(g)
    }

    /// Remembers the root node, so lookups need no cache lookup for it.
    /// Called after every change of the tree (a stale reference is detected
    /// by `root_guard` and ignored).
    fn refresh_root_node(&mut self, ctx: &TreeCtx) {
        self.root_node = ctx.cache.get(self.root.offset);
    }

    /// Appends up to `limit` keys in `[start, end]` to `out`, in order.
    pub fn scan(
        &self,
        ctx: &TreeCtx,
        start: Pos,
        end: Pos,
        limit: usize,
        out: &mut Vec<Key>,
    ) -> Result<()> {
        if start > end {
            return Ok(());
        }
        self.scan_rec(ctx, self.root, Pos::MIN, Pos::MAX, start, end, limit, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn scan_rec(
        &self,
        ctx: &TreeCtx,
        ptr: BtreePtr,
        min: Pos,
        max: Pos,
        start: Pos,
        end: Pos,
        limit: usize,
        out: &mut Vec<Key>,
    ) -> Result<()> {
        let n = ctx.load(self.id, ptr, min, max)?;
        let g = n.read();
        if g.is_leaf() {
            for (p, v) in g.keys.range(start..=end) {
                if out.len() >= limit {
                    break;
                }
                out.push(v.to_key(*p));
            }
            return Ok(());
        }
        // Holding a node's read guard while descending is safe: writers need
        // the b-tree's write lock, and eviction only ever tries.
        let mut min = match g.keys.range(..start).next_back() {
            Some((prev, _)) => prev.successor().unwrap_or(Pos::MAX),
            None => g.min,
        };
        for (key, val) in g.keys.range(start..) {
            if min > end || out.len() >= limit {
                break;
            }
            let cptr = child_ptr(&g, *key, val)?;
            self.scan_rec(
                ctx,
                cptr,
                min,
                *key,
                start.max(min),
                end.min(*key),
                limit,
                out,
            )?;
            min = match key.successor() {
                Some(s) => s,
                None => break,
            };
        }
        Ok(())
    }

    /// Appends up to `limit` keys in `[start, end]` to `out`, last first.
    pub fn scan_rev(
        &self,
        ctx: &TreeCtx,
        start: Pos,
        end: Pos,
        limit: usize,
        out: &mut Vec<Key>,
    ) -> Result<()> {
        if start > end {
            return Ok(());
        }
        self.scan_rev_rec(ctx, self.root, Pos::MIN, Pos::MAX, start, end, limit, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn scan_rev_rec(
        &self,
        ctx: &TreeCtx,
        ptr: BtreePtr,
        min: Pos,
        max: Pos,
        start: Pos,
        end: Pos,
        limit: usize,
        out: &mut Vec<Key>,
    ) -> Result<()> {
        let n = ctx.load(self.id, ptr, min, max)?;
        let g = n.read();
        if g.is_leaf() {
            for (p, v) in g.keys.range(start..=end).rev() {
                if out.len() >= limit {
                    break;
                }
                out.push(v.to_key(*p));
            }
            return Ok(());
        }
        let mut keys = g.keys.range(..=end).rev().peekable();
        // The child holding `end` is the first key >= end, which may be past it.
        let last = g.keys.range(end..).next();
        let mut pending: Option<(Pos, &Val)> = last.map(|(k, v)| (*k, v));
        if let Some((k, _)) = pending
            && k == end
        {
            keys.next();
        }
        while let Some((key, val)) = pending.take().or_else(|| keys.next().map(|(k, v)| (*k, v))) {
            if out.len() >= limit {
                break;
            }
            let min = match keys.peek() {
                Some((prev, _)) => prev.successor().unwrap_or(Pos::MAX),
                None => g.min,
            };
            if key < start {
                break;
            }
            let cptr = child_ptr(&g, key, val)?;
            self.scan_rev_rec(
                ctx,
                cptr,
                min,
                key,
                start.max(min),
                end.min(key),
                limit,
                out,
            )?;
            if min <= start {
                break;
            }
        }
        Ok(())
    }

    /// Loads every node on the paths to `[start, end]` so a following change
    /// of that range needs no I/O, and adds them to `pins`: the cache does
    /// not evict a node while a reference to it is held. For a single
    /// position the leaf is pushed last.
    pub fn touch(
        &self,
        ctx: &TreeCtx,
        start: Pos,
        end: Pos,
        pins: &mut Vec<NodeRef>,
    ) -> Result<()> {
        if start == end {
            // One position: the path of a lookup.
            return self.touch_point(ctx, start, pins);
        }
        self.touch_rec(ctx, self.root, Pos::MIN, Pos::MAX, start, end, pins)
    }

    /// [`TreeState::touch`] of one position: the path of a lookup.
    fn touch_point(&self, ctx: &TreeCtx, pos: Pos, pins: &mut Vec<NodeRef>) -> Result<()> {
        self.leaf_for(ctx, pos, |g| pins.push(NodeReadGuard::rwlock(g).clone()))
            .map(|_| ())
    }

    #[allow(clippy::too_many_arguments)]
    fn touch_rec(
        &self,
        ctx: &TreeCtx,
        ptr: BtreePtr,
        min: Pos,
        max: Pos,
        start: Pos,
        end: Pos,
        pins: &mut Vec<NodeRef>,
    ) -> Result<()> {
        let n = ctx.load(self.id, ptr, min, max)?;
        let g = n.read();
        if g.is_leaf() {
            drop(g);
            pins.push(n);
            return Ok(());
        }
        if start == end {
            drop(g);
            pins.push(n);
            return self.touch_point(ctx, start, pins);
        }
        let children = children_in_range(&g, start, end)?;
        drop(g);
        pins.push(n);
        for c in children {
            let (s, e) = (start.max(c.min), end.min(c.key));
            self.touch_rec(ctx, c.ptr, c.min, c.key, s, e, pins)?;
        }
        Ok(())
    }

    /// Inserts or replaces the key at `key.pos`; returns the old value.
    pub fn insert(&mut self, ctx: &TreeCtx, pos: Pos, val: Val) -> Result<Option<Val>> {
        if val.value.len() > ctx.max_value_bytes() {
            return Err(Error::InvalidArgument(format!(
                "value of {} bytes is larger than the node size allows ({})",
                val.value.len(),
                ctx.max_value_bytes()
            )));
        }
        let mut val = Some(val);
        self.modify(ctx, pos, &mut |n: &mut Node| {
            n.insert(pos, val.take().expect("called once"))
        })
    }

    /// [`TreeState::insert`] straight into `leaf` (a node a commit's touch
    /// phase found for `pos`) when it still is the leaf whose range holds
    /// `pos` and it is dirty already: then its parent and every node above
    /// are marked dirty for it, and the descent would change nothing but
    /// the leaf. A change that makes the leaf need a split or merge is
    /// followed by a regular descent that does it.
    pub fn insert_in(
        &mut self,
        ctx: &TreeCtx,
        leaf: Option<&NodeRef>,
        pos: Pos,
        val: Val,
    ) -> Result<Option<Val>> {
        let Some(leaf) = leaf else {
            return self.insert(ctx, pos, val);
        };
        let mut g = leaf.write();
        if !(g.is_leaf() && !g.evicted && g.is_dirty() && g.min <= pos && pos <= g.max) {
            drop(g);
            return self.insert(ctx, pos, val);
        }
        if val.value.len() > ctx.max_value_bytes() {
            drop(g);
            return self.insert(ctx, pos, val);
        }
        let old = g.insert(pos, val);
        ctx.cache.recharge(&mut g);
        let bytes = g.live_bytes;
        drop(g);
        if bytes > ctx.split_threshold() || bytes < ctx.merge_threshold() {
            self.modify(ctx, pos, &mut |_| None)?;
        }
        Ok(old)
    }

    /// Removes the key at `pos`; returns the old value.
    pub fn remove(&mut self, ctx: &TreeCtx, pos: Pos) -> Result<Option<Val>> {
        // A missing key changes nothing and dirties no node.
        if self.get(ctx, pos)?.is_none() {
            return Ok(None);
        }
        self.modify(ctx, pos, &mut |n: &mut Node| n.remove(&pos))
    }

    fn modify(
        &mut self,
        ctx: &TreeCtx,
        pos: Pos,
        f: &mut dyn FnMut(&mut Node) -> Option<Val>,
    ) -> Result<Option<Val>> {
        let g = lock_node(
            ctx,
            self.id,
            self.root,
            Pos::MAX,
            self.root_node.clone(),
            || Pos::MIN,
        )?;
        let (r, root) = self.modify_rec(ctx, g, pos, f)?;
        let reshape = {
            let g = root.read();
            g.live_bytes > ctx.split_threshold() || (g.level > 0 && g.keys.len() == 1)
        };
        if reshape {
            self.fix_root(ctx)?;
            self.refresh_root_node(ctx);
        } else if !self
            .root_node
            .as_ref()
            .is_some_and(|n| std::sync::Arc::ptr_eq(n, &root))
        {
            self.root_node = Some(root);
        }
        Ok(r)
    }

    /// Changes the leaf holding `pos` below the node `g` holds, then splits
    /// or merges on the way back up. Each node is marked dirty before
    /// descending past it, so the cache cannot drop it while this holds a
    /// reference. The child is locked before the parent is released (the
    /// order lookups take too). Returns the node.
    fn modify_rec(
        &mut self,
        ctx: &TreeCtx,
        mut g: NodeWriteGuard,
        pos: Pos,
        f: &mut dyn FnMut(&mut Node) -> Option<Val>,
    ) -> Result<(Option<Val>, NodeRef)> {
        let n = NodeWriteGuard::rwlock(&g).clone();
        if g.is_leaf() {
            let r = f(&mut g);
            ctx.cache.recharge(&mut g);
            return Ok((r, n));
        }
        let (key, cptr) = child_for(&g, pos)?;
        // The child's pointer is rewritten at the next checkpoint (a node
        // written in full rewrites every pointer anyway).
        g.note_changed(key);
        ctx.cache.recharge(&mut g);
        let (ptr, min, max) = (g.ptr, g.min, g.max);
        let hint = ctx.cache.get(cptr.offset);
        let cg = lock_node(ctx, self.id, cptr, key, hint, || child_min(&g, key))?;
        drop(g);
        let (r, child_node) = self.modify_rec(ctx, cg, pos, f)?;
        let bytes = child_node.read().live_bytes;
        let (split, merge) = (bytes > ctx.split_threshold(), bytes < ctx.merge_threshold());
        if split || merge {
            let child = ChildRef {
                key,
                ptr: cptr,
                min: child_min(&n.read(), key),
            };
            if split {
                self.split_child(ctx, ptr, min, max, child)?;
            } else {
                self.try_merge_child(ctx, ptr, min, max, child)?;
            }
        }
        Ok((r, n))
    }

    fn split_child(
        &mut self,
        ctx: &TreeCtx,
        parent: BtreePtr,
        pmin: Pos,
        pmax: Pos,
        c: ChildRef,
    ) -> Result<()> {
        let split = ctx.with_node_mut(self.id, c.ptr, c.min, c.key, |child| {
            let half = child.live_bytes / 2;
            let mut acc = 0;
            let mut split_key = *child.keys.keys().next().expect("overfull node has keys");
            for (p, v) in &child.keys {
                acc += v.encoded_len();
                split_key = *p;
                if acc >= half {
                    break;
                }
            }
            // Interior nodes keep their last key equal to their max.
            if split_key == child.max {
                return None;
            }
            let right_min = split_key.successor().expect("split key below max");
            let right_keys = child.keys.split_off(&right_min);
            let moved: usize = right_keys.values().map(Val::encoded_len).sum();
            child.live_bytes -= moved;
            let (right_ptr, right) = ctx.new_node(self.id, child.level, right_min, child.max);
            {
                // A new node is written in full: no per-key dirty tracking.
                let mut r = right.write();
                debug_assert!(r.keys.is_empty() && r.needs_full_write);
                r.keys = right_keys;
                r.live_bytes += moved;
                r.journal_seq = child.journal_seq;
            }
            ctx.cache.recharge(&mut right.write());
            child.max = split_key;
            child.needs_full_write = true;
            child.dirty.retain(|p| *p <= split_key);
            Some((right_ptr, split_key))
        })?;
        let Some((right_ptr, split_key)) = split else {
            return Ok(());
        };
        let left_ptr = c.ptr;
        ctx.with_node_mut(self.id, parent, pmin, pmax, |p| {
            p.remove(&c.key);
            p.insert(split_key, ptr_val(left_ptr));
            p.insert(c.key, ptr_val(right_ptr));
        })?;
        Ok(())
    }

    fn try_merge_child(
        &mut self,
        ctx: &TreeCtx,
        parent: BtreePtr,
        pmin: Pos,
        pmax: Pos,
        c: ChildRef,
    ) -> Result<()> {
        // Pick a sibling: the next child, else the previous one.
        let sibling = {
            let pn = ctx.load(self.id, parent, pmin, pmax)?;
            let g = pn.read();
            let next = g.keys.range(c.key.successor().unwrap_or(Pos::MAX)..).next();
            match next {
                Some((k, v)) if *k > c.key => Some((
                    false,
                    ChildRef {
                        key: *k,
                        ptr: child_ptr(&g, *k, v)?,
                        min: c.key.successor().unwrap(),
                    },
                )),
                _ => match g.keys.range(..c.key).next_back() {
                    Some((k, v)) => {
                        let min = match g.keys.range(..*k).next_back() {
                            Some((pk, _)) => pk.successor().unwrap(),
                            None => g.min,
                        };
                        Some((
                            true,
                            ChildRef {
                                key: *k,
                                ptr: child_ptr(&g, *k, v)?,
                                min,
                            },
                        ))
                    }
                    None => None,
                },
            }
        };
        let Some((sibling_is_left, s)) = sibling else {
            return Ok(());
        };
        // Merging is optional: never read a sibling from disk for it.
        let Some(sn) = ctx.cache.get(s.ptr.offset) else {
            return Ok(());
        };
        if sn.read().ptr.seq != s.ptr.seq {
            return Ok(());
        }
        let (left, right) = if sibling_is_left { (s, c) } else { (c, s) };
        let ln = ctx.load(self.id, left.ptr, left.min, left.key)?;
        let rn = ctx.load(self.id, right.ptr, right.min, right.key)?;
        let mut lg = ln.write();
        let mut rg = rn.write();
        if lg.evicted || rg.evicted {
            return Ok(());
        }
        if lg.live_bytes + rg.live_bytes > ctx.node_size * 2 / 3 {
            return Ok(());
        }
        let moved = std::mem::take(&mut rg.keys);
        for (p, v) in moved {
            lg.insert(p, v);
        }
        lg.max = rg.max;
        lg.needs_full_write = true;
        lg.journal_seq = lg.journal_seq.max(rg.journal_seq);
        rg.evicted = true;
        let right_ptr = rg.ptr;
        ctx.cache.recharge(&mut lg);
        drop(lg);
        drop(rg);
        self.drop_node(ctx, right_ptr);
        ctx.with_node_mut(self.id, parent, pmin, pmax, |p| {
            p.remove(&left.key);
            p.insert(right.key, ptr_val(left.ptr));
        })?;
        Ok(())
    }

    /// Forgets a node; if it was written, its space is released at the next checkpoint.
    fn drop_node(&mut self, ctx: &TreeCtx, ptr: BtreePtr) {
        ctx.cache.remove(ptr.offset);
        if !is_temp(ptr.offset) && ptr.sectors > 0 {
            self.freed.push(ptr);
        }
    }

    fn fix_root(&mut self, ctx: &TreeCtx) -> Result<()> {
        loop {
            let root = ctx.load(self.id, self.root, Pos::MIN, Pos::MAX)?;
            let (bytes, level, only_child) = {
                let g = root.read();
                let only = if g.level > 0 && g.keys.len() == 1 {
                    let (k, v) = g.keys.iter().next().unwrap();
                    Some(child_ptr(&g, *k, v)?)
                } else {
                    None
                };
                (g.live_bytes, g.level, only)
            };
            if bytes > ctx.split_threshold() {
                let old = self.root;
                let (new_ptr, new_root) = ctx.new_node(self.id, level + 1, Pos::MIN, Pos::MAX);
                new_root.write().insert(Pos::MAX, ptr_val(old));
                self.root = new_ptr;
                self.split_child(
                    ctx,
                    new_ptr,
                    Pos::MIN,
                    Pos::MAX,
                    ChildRef {
                        key: Pos::MAX,
                        ptr: old,
                        min: Pos::MIN,
                    },
                )?;
                continue;
            }
            if let Some(child) = only_child {
                let old = self.root;
                self.root = child;
                self.drop_node(ctx, old);
                continue;
            }
            return Ok(());
        }
    }

    /// Visits every node of the tree, reading each from disk if needed (so
    /// every checksum and key range is checked): `f(ptr)` per node.
    pub fn walk(&self, ctx: &TreeCtx, f: &mut dyn FnMut(BtreePtr)) -> Result<()> {
        self.walk_rec(ctx, self.root, Pos::MIN, Pos::MAX, f)
    }

    fn walk_rec(
        &self,
        ctx: &TreeCtx,
        ptr: BtreePtr,
        min: Pos,
        max: Pos,
        f: &mut dyn FnMut(BtreePtr),
    ) -> Result<()> {
        let n = ctx.load(self.id, ptr, min, max)?;
        f(ptr);
        let children = {
            let g = n.read();
            if g.is_leaf() {
                return Ok(());
            }
            children_in_range(&g, Pos::MIN, Pos::MAX)?
        };
        for c in children {
            self.walk_rec(ctx, c.ptr, c.min, c.key, f)?;
        }
        Ok(())
    }

    /// Number of dirty nodes (a walk over the dirty part of the tree).
    pub fn count_dirty(&self, ctx: &TreeCtx) -> Result<usize> {
        self.count_dirty_rec(ctx, self.root)
    }

    fn count_dirty_rec(&self, ctx: &TreeCtx, ptr: BtreePtr) -> Result<usize> {
        let Some(n) = ctx.cache.get(ptr.offset) else {
            return Ok(0);
        };
        let children = {
            let g = n.read();
            if !g.is_dirty() {
                return Ok(0);
            }
            if g.is_leaf() {
                return Ok(1);
            }
            dirty_children(&g)?
        };
        let mut total = 1;
        for c in children {
            total += self.count_dirty_rec(ctx, c.ptr)?;
        }
        Ok(total)
    }

    /// Writes every dirty node, children before parents. `alloc_slot` gives
    /// the device offset and bucket generation of a fresh node-sized slot.
    /// Returns true if the root moved.
    pub fn write_dirty(
        &mut self,
        ctx: &TreeCtx,
        alloc_slot: &mut dyn FnMut() -> Result<(u64, u8)>,
    ) -> Result<bool> {
        let old = self.root;
        let new = self.write_rec(ctx, self.root, Pos::MIN, Pos::MAX, alloc_slot)?;
        self.root = new;
        self.refresh_root_node(ctx);
        Ok(new != old)
    }

    fn write_rec(
        &mut self,
        ctx: &TreeCtx,
        ptr: BtreePtr,
        min: Pos,
        max: Pos,
        alloc_slot: &mut dyn FnMut() -> Result<(u64, u8)>,
    ) -> Result<BtreePtr> {
        let Some(n) = ctx.cache.get(ptr.offset) else {
            if is_temp(ptr.offset) {
                return Err(Error::corrupted(
                    Structure::BtreeNode,
                    0,
                    "unwritten node missing at checkpoint",
                ));
            }
            return Ok(ptr);
        };
        let children = {
            let g = n.read();
            if !g.is_dirty() {
                return Ok(ptr);
            }
            if g.is_leaf() {
                Vec::new()
            } else {
                dirty_children(&g)?
            }
        };
        let mut new_ptrs = Vec::new();
        for c in children {
            let np = self.write_rec(ctx, c.ptr, c.min, c.key, alloc_slot)?;
            if np != c.ptr {
                new_ptrs.push((c.key, np));
            }
        }
        let mut g = n.write();
        for (k, np) in new_ptrs {
            g.insert(k, ptr_val(np));
        }
        debug_assert!(g.min == min && g.max == max, "node range drifted");
        let old = g.ptr;
        let delta_fits = !g.needs_full_write
            && old.sectors > 0
            && g.bsets < MAX_BSETS
            && !is_temp(old.offset)
            && old.sectors as usize * SECTOR_BYTES as usize + delta_len_bound(&g) <= ctx.node_size;
        if delta_fits {
            let buf = g.encode_delta(ctx.magic, g.bsets);
            if old.sectors as usize * 512 + buf.len() <= ctx.node_size {
                ctx.dev
                    .write_at(&buf, old.offset + old.sectors as u64 * SECTOR_BYTES)?;
                g.ptr.sectors += (buf.len() / 512) as u32;
                g.bsets += 1;
                g.dirty.clear();
                ctx.cache.recharge(&mut g);
                return Ok(g.ptr);
            }
        }
        let len = g.live_bytes.next_multiple_of(crate::BLOCK_BYTES as usize);
        if len > ctx.node_size {
            return Err(Error::InvalidArgument(format!(
                "node of {len} bytes exceeds the node size {}",
                ctx.node_size
            )));
        }
        let (offset, generation) = alloc_slot()?;
        let seq = ctx.next_node_seq();
        g.ptr = BtreePtr {
            offset,
            seq,
            sectors: (len / 512) as u32,
            generation,
            level: g.level,
        };
        let buf = g.encode_full(ctx.magic);
        debug_assert_eq!(buf.len(), len);
        ctx.dev.write_at(&buf, offset)?;
        g.bsets = 1;
        g.dirty.clear();
        g.needs_full_write = false;
        let newp = g.ptr;
        ctx.cache.recharge(&mut g);
        drop(g);
        ctx.cache.rekey(old.offset, offset);
        if !is_temp(old.offset) && old.sectors > 0 {
            self.freed.push(old);
        }
        Ok(newp)
    }
}

/// Upper bound of the encoded delta bset of `n`.
fn delta_len_bound(n: &Node) -> usize {
    let keys: usize = n
        .dirty
        .iter()
        .map(|p| n.keys.get(p).map_or(32, |v| v.encoded_len()))
        .sum();
    (super::node_format::BSET_HEADER_BYTES + keys).next_multiple_of(crate::BLOCK_BYTES as usize)
}

/// Children of a dirty interior node that may be dirty themselves.
fn dirty_children(n: &Node) -> Result<Vec<ChildRef>> {
    let all = n.needs_full_write;
    let mut out = Vec::new();
    let mut min = n.min;
    for (k, v) in &n.keys {
        if all || n.dirty.contains(k) {
            out.push(ChildRef {
                key: *k,
                ptr: child_ptr(n, *k, v)?,
                min,
            });
        }
        min = k.successor().unwrap_or(Pos::MAX);
    }
    Ok(out)
}

/// A node fsck found unreadable and replaced (its keys are lost).
#[derive(Clone, Debug)]
pub struct DroppedNode {
    pub btree: BtreeId,
    pub min: Pos,
    pub max: Pos,
    pub level: u8,
    pub error: String,
}

impl TreeState {
    /// Replaces every node that cannot be read (bad checksum, wrong range
    /// or level, read error) with an empty subtree of the same level and
    /// key range, so the rest of the tree stays usable; the keys the node
    /// held are lost. Returns what was dropped.
    pub fn drop_damaged(&mut self, ctx: &TreeCtx) -> Result<Vec<DroppedNode>> {
        let mut dropped = Vec::new();
        if let Err(e) = ctx.load(self.id, self.root, Pos::MIN, Pos::MAX) {
            dropped.push(DroppedNode {
                btree: self.id,
                min: Pos::MIN,
                max: Pos::MAX,
                level: self.root.level,
                error: e.to_string(),
            });
            let old = self.root;
            self.root = self.empty_subtree(ctx, 0, Pos::MIN, Pos::MAX);
            self.forget_damaged(ctx, old);
        } else {
            self.drop_damaged_rec(ctx, self.root, Pos::MIN, Pos::MAX, &mut dropped)?;
        }
        if !dropped.is_empty() {
            self.mod_seq += 1;
        }
        Ok(dropped)
    }

    fn drop_damaged_rec(
        &mut self,
        ctx: &TreeCtx,
        ptr: BtreePtr,
        min: Pos,
        max: Pos,
        dropped: &mut Vec<DroppedNode>,
    ) -> Result<bool> {
        let children = {
            let n = ctx.load(self.id, ptr, min, max)?;
            let g = n.read();
            if g.is_leaf() {
                return Ok(false);
            }
            children_in_range(&g, Pos::MIN, Pos::MAX)?
        };
        let mut changed = Vec::new();
        for c in children {
            match ctx.load(self.id, c.ptr, c.min, c.key) {
                Ok(_) => {
                    if self.drop_damaged_rec(ctx, c.ptr, c.min, c.key, dropped)? {
                        changed.push((c.key, None));
                    }
                }
                Err(e) => {
                    dropped.push(DroppedNode {
                        btree: self.id,
                        min: c.min,
                        max: c.key,
                        level: c.ptr.level,
                        error: e.to_string(),
                    });
                    let fresh = self.empty_subtree(ctx, c.ptr.level, c.min, c.key);
                    self.forget_damaged(ctx, c.ptr);
                    changed.push((c.key, Some(fresh)));
                }
            }
        }
        if changed.is_empty() {
            return Ok(false);
        }
        ctx.with_node_mut(self.id, ptr, min, max, |g| {
            for (key, fresh) in changed {
                match fresh {
                    Some(p) => {
                        g.insert(key, ptr_val(p));
                    }
                    None => g.note_changed(key),
                }
            }
        })?;
        Ok(true)
    }

    /// A chain of new nodes from `level` down to an empty leaf covering
    /// `[min, max]`; returns the top one.
    fn empty_subtree(&self, ctx: &TreeCtx, level: u8, min: Pos, max: Pos) -> BtreePtr {
        let (mut ptr, _) = ctx.new_node(self.id, 0, min, max);
        for l in 1..=level {
            let (up, node) = ctx.new_node(self.id, l, min, max);
            node.write().insert(max, ptr_val(ptr));
            ptr = up;
        }
        ptr
    }

    /// Drops a damaged node from the cache and frees its slot.
    fn forget_damaged(&mut self, ctx: &TreeCtx, ptr: BtreePtr) {
        ctx.cache.remove(ptr.offset);
        if !is_temp(ptr.offset) && ptr.sectors > 0 && ptr.sectors as usize * 512 <= ctx.node_size {
            self.freed.push(ptr);
        }
    }
}
