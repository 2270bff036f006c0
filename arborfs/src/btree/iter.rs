//! Iterators over committed keys: forward, backward, and filtered by
//! snapshot.
//!
//! An iterator reads a batch of keys under the b-tree's shared lock and
//! releases it between batches, so long scans never block commits; each
//! batch is consistent, and a scan sees every key that stays put while it
//! runs.

use std::collections::VecDeque;

use super::trans::MAX_EXTENT_SECTORS;
use crate::engine::Engine;
use crate::error::Result;
use crate::key::{BtreeId, Key, Pos};

const BATCH: usize = 512;

/// Answers "is `ancestor` the snapshot `id` itself or one of its ancestors?".
/// Ancestors always have larger ids than their descendants.
pub trait SnapshotAncestry {
    fn is_ancestor_or_self(&self, ancestor: u32, id: u32) -> bool;
}

pub struct Iter<'e> {
    engine: &'e Engine,
    btree: BtreeId,
    /// Next position to read from (forward) or up to (backward); None when done.
    cursor: Option<Pos>,
    bound: Pos,
    reverse: bool,
    buf: VecDeque<Key>,
}

impl Engine {
    /// Keys in `[start, end]`, in order.
    pub fn iter(&self, btree: BtreeId, start: Pos, end: Pos) -> Iter<'_> {
        Iter {
            engine: self,
            btree,
            cursor: Some(start),
            bound: end,
            reverse: false,
            buf: VecDeque::new(),
        }
    }

    /// Keys in `[start, end]`, last first.
    pub fn iter_rev(&self, btree: BtreeId, start: Pos, end: Pos) -> Iter<'_> {
        Iter {
            engine: self,
            btree,
            cursor: Some(end),
            bound: start,
            reverse: true,
            buf: VecDeque::new(),
        }
    }

    /// Keys in `[start, end]` as snapshot `snapshot` sees them: for each
    /// `inode:offset`, the key of the snapshot itself or its nearest
    /// ancestor; whiteouts hide the position.
    pub fn iter_snapshot<'a>(
        &'a self,
        btree: BtreeId,
        start: Pos,
        end: Pos,
        snapshot: u32,
        ancestry: &'a dyn SnapshotAncestry,
    ) -> SnapshotIter<'a> {
        SnapshotIter {
            inner: self.iter(btree, start, end),
            snapshot,
            ancestry,
            peeked: None,
        }
    }

    /// The extent of `inode` in `snapshot` that covers `sector`, if any.
    pub fn extent_at(
        &self,
        btree: BtreeId,
        inode: u64,
        snapshot: u32,
        sector: u64,
    ) -> Result<Option<Key>> {
        let start = Pos::new(inode, sector.saturating_add(1), 0);
        let end = Pos::new(
            inode,
            sector.saturating_add(MAX_EXTENT_SECTORS as u64),
            u32::MAX,
        );
        for k in self.iter(btree, start, end) {
            let k = k?;
            if k.pos.snapshot == snapshot {
                return Ok((k.start() <= sector).then_some(k));
            }
        }
        Ok(None)
    }
}

impl Iter<'_> {
    fn refill(&mut self) -> Result<()> {
        let Some(cursor) = self.cursor else {
            return Ok(());
        };
        let ctx = self.engine.inner.ctx();
        let tree = self.engine.inner.tree(self.btree).read();
        let mut out = Vec::with_capacity(BATCH);
        if self.reverse {
            tree.scan_rev(&ctx, self.bound, cursor, BATCH, &mut out)?;
            self.cursor = if out.len() < BATCH {
                None
            } else {
                out.last().and_then(|k| k.pos.predecessor())
            };
        } else {
            tree.scan(&ctx, cursor, self.bound, BATCH, &mut out)?;
            self.cursor = if out.len() < BATCH {
                None
            } else {
                out.last().and_then(|k| k.pos.successor())
            };
        }
        self.buf.extend(out);
        Ok(())
    }
}

impl Iterator for Iter<'_> {
    type Item = Result<Key>;

    fn next(&mut self) -> Option<Result<Key>> {
        if self.buf.is_empty()
            && let Err(e) = self.refill()
        {
            self.cursor = None;
            return Some(Err(e));
        }
        self.buf.pop_front().map(Ok)
    }
}

pub struct SnapshotIter<'a> {
    inner: Iter<'a>,
    snapshot: u32,
    ancestry: &'a dyn SnapshotAncestry,
    peeked: Option<Key>,
}

impl Iterator for SnapshotIter<'_> {
    type Item = Result<Key>;

    fn next(&mut self) -> Option<Result<Key>> {
        loop {
            let first = match self.peeked.take() {
                Some(k) => k,
                None => match self.inner.next()? {
                    Ok(k) => k,
                    Err(e) => return Some(Err(e)),
                },
            };
            // Keys of one inode:offset come in ascending snapshot order, so
            // the first visible one is the nearest ancestor's.
            let mut chosen = None;
            let mut k = first;
            loop {
                if chosen.is_none()
                    && self
                        .ancestry
                        .is_ancestor_or_self(k.pos.snapshot, self.snapshot)
                {
                    chosen = Some(k.clone());
                }
                match self.inner.next() {
                    Some(Ok(n)) if n.pos.inode == k.pos.inode && n.pos.offset == k.pos.offset => {
                        k = n
                    }
                    Some(Ok(n)) => {
                        self.peeked = Some(n);
                        break;
                    }
                    Some(Err(e)) => return Some(Err(e)),
                    None => break,
                }
            }
            match chosen {
                Some(c) if !c.is_whiteout() => return Some(Ok(c)),
                _ => continue,
            }
        }
    }
}
