//! Several inodes' locks, taken in one global order, with try-and-retry for
//! locks that come out of order.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::io_lock::{InodeIo, IoMode};
use crate::raw::{Kind, RawLock};
use crate::sync::yield_now;
use crate::table::IoLockTable;
use crate::two_state::PagecacheMode;

/// One lock of one inode, as asked of a [`LockSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockReq {
    /// The inode's IO lock.
    Io(u64, IoMode),
    /// The inode's pagecache lock.
    Pagecache(u64, PagecacheMode),
}

impl LockReq {
    /// The inode number.
    pub fn ino(self) -> u64 {
        self.split().0.ino()
    }

    fn split(self) -> (LockId, Kind) {
        match self {
            LockReq::Io(ino, m) => (LockId::Io(ino), m.kind()),
            LockReq::Pagecache(ino, m) => (LockId::Pagecache(ino), m.kind()),
        }
    }

    fn join(id: LockId, k: Kind) -> Self {
        match id {
            LockId::Io(ino) => LockReq::Io(ino, IoMode::from_kind(k)),
            LockId::Pagecache(ino) => LockReq::Pagecache(ino, PagecacheMode::from_kind(k)),
        }
    }
}

/// A lock's place in the global order. The derived order is the rule: every
/// IO lock (by ascending inode number) before every pagecache lock (by
/// ascending inode number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum LockId {
    Io(u64),
    Pagecache(u64),
}

impl LockId {
    fn ino(self) -> u64 {
        match self {
            LockId::Io(ino) | LockId::Pagecache(ino) => ino,
        }
    }
}

/// Returned by [`LockSet`] when a lock that came out of order (or a mode
/// upgrade) could not be taken without waiting. The set has already dropped
/// every lock it held; run the operation again from the top.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry;

impl fmt::Display for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an out-of-order lock was busy: locks dropped, retry from the top")
    }
}

impl std::error::Error for Retry {}

/// A lock the set holds; released on drop.
struct Held {
    inode: Arc<InodeIo>,
    id: LockId,
    kind: Kind,
}

fn raw_of(inode: &InodeIo, id: LockId) -> &RawLock {
    match id {
        LockId::Io(_) => &inode.io().raw,
        LockId::Pagecache(_) => &inode.pagecache().raw,
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        raw_of(&self.inode, self.id).unlock(self.kind);
    }
}

/// The locks of one operation on several inodes, kept in the global order:
/// IO locks by ascending inode number, then pagecache locks by ascending
/// inode number (engine locks come after all of them).
///
/// [`lock`](Self::lock) (and `lock_io`, `lock_pagecache`):
/// * a lock already held in the same or a stronger mode: nothing to do
///   (duplicates are taken once; Exclusive > Shared, Block > Add);
/// * a lock that comes after everything held: waits for it;
/// * a lock that comes before something held, or a stronger mode of a held
///   lock (an upgrade): only *tries*. On failure the set drops every lock,
///   remembers them together with the one that failed (in the stronger
///   mode), yields, and returns [`Retry`]. The caller starts over from the
///   top; the first `lock` call of the new attempt first takes all the
///   remembered locks, waiting, in global order, so they are all no-ops
///   afterwards.
///
/// The remembered set only grows within an operation, so an operation that
/// asks for the same locks again is retried at most once per lock it needs
/// (twice for an upgrade): no livelock. The set never waits for a lock
/// while holding a later one, so sets cannot deadlock each other.
///
/// Locks are released when the set is dropped (or by
/// [`unlock_all`](Self::unlock_all)). A thread must not hold other IO or
/// pagecache locks (guards from [`InodeIo`]) while it uses a set.
///
/// # Example: copy_file_range
///
/// ```
/// use arborfs_iolock::{IoLockTable, IoMode, PagecacheMode};
///
/// let table = IoLockTable::new();
/// let (src, dst) = (20, 10);
/// let mut locks = table.lock_set();
/// locks.acquire(|l| {
///     l.lock_io(src, IoMode::Shared)?;
///     // 10 < 20: out of order, only tried; on failure `?` returns Retry
///     // and `acquire` runs the closure again.
///     l.lock_io(dst, IoMode::Exclusive)?;
///     l.lock_pagecache(dst, PagecacheMode::Block)?;
///     l.lock_pagecache(src, PagecacheMode::Add)
/// });
/// assert_eq!(locks.io_mode(dst), Some(IoMode::Exclusive));
/// // ... write back and drop dst's cached range, remap/copy ...
/// drop(locks);
/// ```
///
/// When every lock is known up front, [`IoLockTable::lock_many`] sorts them
/// and never retries.
pub struct LockSet<'t> {
    table: &'t IoLockTable,
    held: BTreeMap<LockId, Held>,
    /// Locks to take first on the next attempt, after a retry.
    wanted: BTreeMap<LockId, Kind>,
    retries: u32,
}

impl<'t> LockSet<'t> {
    /// An empty set on `table`.
    pub fn new(table: &'t IoLockTable) -> Self {
        LockSet {
            table,
            held: BTreeMap::new(),
            wanted: BTreeMap::new(),
            retries: 0,
        }
    }

    /// Takes `req`, waiting if it is in order, trying otherwise; see the
    /// type's documentation.
    pub fn lock(&mut self, req: LockReq) -> Result<(), Retry> {
        let (id, kind) = req.split();
        if self.held.is_empty() && !self.wanted.is_empty() {
            let wanted = std::mem::take(&mut self.wanted);
            self.lock_in_order(wanted);
        }
        if let Some(h) = self.held.get(&id) {
            if h.kind >= kind {
                return Ok(());
            }
            // No in-place upgrade: it would wait while holding the lock.
            return Err(self.restart(id, kind));
        }
        let inode = self.table.get(id.ino());
        let in_order = self
            .held
            .last_key_value()
            .is_none_or(|(last, _)| *last < id);
        let raw = raw_of(&inode, id);
        if in_order {
            raw.lock(kind);
        } else if !raw.try_lock(kind) {
            drop(inode);
            return Err(self.restart(id, kind));
        }
        self.held.insert(id, Held { inode, id, kind });
        Ok(())
    }

    /// [`lock`](Self::lock) of an IO lock.
    pub fn lock_io(&mut self, ino: u64, mode: IoMode) -> Result<(), Retry> {
        self.lock(LockReq::Io(ino, mode))
    }

    /// [`lock`](Self::lock) of a pagecache lock.
    pub fn lock_pagecache(&mut self, ino: u64, mode: PagecacheMode) -> Result<(), Retry> {
        self.lock(LockReq::Pagecache(ino, mode))
    }

    /// Runs `f` until it returns `Ok`, starting over after every [`Retry`]
    /// (from a `lock` call, or returned by `f` itself, e.g. because a lookup
    /// it made before locking turned out stale; the set then drops and
    /// remembers what it holds, as [`retry`](Self::retry) does). `f` must be
    /// safe to run again from the top. Other errors belong in `T`.
    pub fn acquire<T>(&mut self, mut f: impl FnMut(&mut Self) -> Result<T, Retry>) -> T {
        loop {
            match f(self) {
                Ok(v) => return v,
                Err(Retry) => {
                    if !self.held.is_empty() {
                        self.retry();
                    }
                }
            }
        }
    }

    /// Drops every held lock, remembering them to be retaken in order by
    /// the next `lock` call, and returns [`Retry`] for the caller to
    /// propagate.
    pub fn retry(&mut self) -> Retry {
        for (id, h) in std::mem::take(&mut self.held) {
            let w = self.wanted.entry(id).or_insert(h.kind);
            *w = (*w).max(h.kind);
            // `h` dropped here: unlocked.
        }
        self.retries += 1;
        // Let the thread that beat us get on with it.
        yield_now();
        Retry
    }

    /// Releases everything and forgets remembered locks: the set is as new
    /// (the retry count is kept).
    pub fn unlock_all(&mut self) {
        self.held.clear();
        self.wanted.clear();
    }

    /// The mode `ino`'s IO lock is held in by this set.
    pub fn io_mode(&self, ino: u64) -> Option<IoMode> {
        self.held
            .get(&LockId::Io(ino))
            .map(|h| IoMode::from_kind(h.kind))
    }

    /// The state `ino`'s pagecache lock is held in by this set.
    pub fn pagecache_mode(&self, ino: u64) -> Option<PagecacheMode> {
        self.held
            .get(&LockId::Pagecache(ino))
            .map(|h| PagecacheMode::from_kind(h.kind))
    }

    /// The locks held, in global order.
    pub fn held(&self) -> Vec<LockReq> {
        self.held
            .values()
            .map(|h| LockReq::join(h.id, h.kind))
            .collect()
    }

    /// Number of locks held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True if the set holds no lock.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// How many times this set returned (or was asked for) a [`Retry`].
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Takes all of `reqs` (the set must hold nothing), strongest mode per
    /// lock, in global order.
    pub(crate) fn lock_sorted(&mut self, reqs: &[LockReq]) {
        let mut wants = BTreeMap::new();
        for r in reqs {
            let (id, kind) = r.split();
            let w = wants.entry(id).or_insert(kind);
            *w = (*w).max(kind);
        }
        self.lock_in_order(wants);
    }

    /// Waits for each of `wants` in ascending order; nothing may be held.
    fn lock_in_order(&mut self, wants: BTreeMap<LockId, Kind>) {
        debug_assert!(self.held.is_empty());
        for (id, kind) in wants {
            let inode = self.table.get(id.ino());
            raw_of(&inode, id).lock(kind);
            self.held.insert(id, Held { inode, id, kind });
        }
    }

    /// Merges `(id, kind)` into what is held and gives up: see `retry`.
    fn restart(&mut self, id: LockId, kind: Kind) -> Retry {
        let w = self.wanted.entry(id).or_insert(kind);
        *w = (*w).max(kind);
        self.retry()
    }
}

impl fmt::Debug for LockSet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockSet")
            .field("held", &self.held())
            .field("retries", &self.retries)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::PagecacheMode::{Add, Block};
    use IoMode::{Exclusive, Shared};

    #[test]
    fn lock_many_sorts_and_takes_strongest_once() {
        let t = IoLockTable::new();
        let s = t.lock_many(&[
            LockReq::Pagecache(5, Add),
            LockReq::Io(9, Shared),
            LockReq::Pagecache(2, Block),
            LockReq::Io(5, Shared),
            LockReq::Io(9, Exclusive),
            LockReq::Pagecache(5, Block),
            LockReq::Io(5, Shared),
        ]);
        assert_eq!(
            s.held(),
            [
                LockReq::Io(5, Shared),
                LockReq::Io(9, Exclusive),
                LockReq::Pagecache(2, Block),
                LockReq::Pagecache(5, Block),
            ]
        );
        assert_eq!(t.get(5).io().held(), Some((Shared, 1)));
        assert_eq!(t.get(9).io().held(), Some((Exclusive, 1)));
        assert_eq!(t.get(2).pagecache().held(), Some((Block, 1)));
        assert_eq!(s.retries(), 0);
        drop(s);
        assert!(t.is_empty(), "locks released and entries forgotten");
    }

    #[test]
    fn lock_io_many_dedups() {
        let t = IoLockTable::new();
        let s = t.lock_io_many(&[(3, Shared), (1, Exclusive), (3, Exclusive), (1, Shared)]);
        assert_eq!(
            s.held(),
            [LockReq::Io(1, Exclusive), LockReq::Io(3, Exclusive)]
        );
    }

    /// Out of order: succeeds by trying when free, and on a busy lock
    /// drops everything (the other inode is free again at once), then the
    /// next attempt takes both in order.
    #[test]
    fn out_of_order_tries_then_retries_in_order() {
        let t = IoLockTable::new();
        let mut s = t.lock_set();
        s.lock_io(8, Exclusive).unwrap();
        s.lock_io(4, Exclusive).unwrap();
        assert_eq!(
            s.held(),
            [LockReq::Io(4, Exclusive), LockReq::Io(8, Exclusive)]
        );
        s.unlock_all();

        let other = t.get(4);
        let busy = other.io().lock_shared();
        s.lock_io(8, Exclusive).unwrap();
        assert_eq!(s.lock_io(4, Exclusive), Err(Retry));
        assert!(s.is_empty());
        assert!(t.get(8).io().try_lock_exclusive().is_some(), "8 released");
        drop(busy);
        // New attempt, same order: 4 and 8 are retaken in order first.
        s.lock_io(8, Exclusive).unwrap();
        assert_eq!(
            s.held(),
            [LockReq::Io(4, Exclusive), LockReq::Io(8, Exclusive)]
        );
        s.lock_io(4, Exclusive).unwrap();
        assert_eq!(s.retries(), 1);
    }

    /// An upgrade of a held lock is a retry; the next attempt starts with
    /// the stronger mode.
    #[test]
    fn upgrade_retries_with_stronger_mode() {
        let t = IoLockTable::new();
        let mut s = t.lock_set();
        let n = s.acquire(|s| {
            s.lock_io(6, Shared)?;
            s.lock_pagecache(6, Add)?;
            s.lock_io(6, Exclusive)?;
            s.lock_pagecache(6, Block)?;
            Ok(s.len())
        });
        assert_eq!(n, 2);
        assert_eq!(s.io_mode(6), Some(Exclusive));
        assert_eq!(s.pagecache_mode(6), Some(Block));
        assert_eq!(s.retries(), 2, "one per upgrade");
    }

    /// A caller-side retry (stale lookup) drops and later retakes what was
    /// held.
    #[test]
    fn caller_retry_remembers_held() {
        let t = IoLockTable::new();
        let mut s = t.lock_set();
        let mut attempt = 0;
        s.acquire(|s| {
            attempt += 1;
            s.lock_io(1, Shared)?;
            if attempt == 1 {
                return Err(Retry);
            }
            Ok(())
        });
        assert_eq!(attempt, 2);
        assert_eq!(s.retries(), 1);
        assert_eq!(s.held(), [LockReq::Io(1, Shared)]);
    }

    /// copy_file_range on one file: one inode, IO exclusive and BLOCK.
    #[test]
    fn same_inode_copy() {
        let t = IoLockTable::new();
        let mut s = t.lock_set();
        s.acquire(|l| {
            l.lock_io(7, Shared)?;
            l.lock_io(7, Exclusive)?;
            l.lock_pagecache(7, Block)?;
            l.lock_pagecache(7, Add)
        });
        let want = [LockReq::Io(7, Exclusive), LockReq::Pagecache(7, Block)];
        assert_eq!(s.held(), want);
        drop(s);
        let same = t.lock_many(&[
            LockReq::Io(7, Shared),
            LockReq::Pagecache(7, Add),
            LockReq::Io(7, Exclusive),
            LockReq::Pagecache(7, Block),
        ]);
        assert_eq!(same.held(), want);
    }
}
