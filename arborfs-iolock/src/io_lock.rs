//! The per-inode IO lock and the per-inode lock bundle.

use std::fmt;
use std::sync::Weak;

use crate::raw::{Kind, RawLock, guard};
use crate::table::Shards;
use crate::two_state::TwoStateLock;

pub(crate) const SHARED: Kind = 0;
pub(crate) const EXCLUSIVE: Kind = 1;

/// How an [`IoLock`] is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IoMode {
    /// Reads, non-extending writes, fsync, the source of copy_file_range.
    Shared,
    /// Size changes: extending writes, truncate, fallocate, the destination
    /// of copy_file_range. The stronger of the two.
    Exclusive,
}

impl IoMode {
    pub(crate) fn kind(self) -> Kind {
        match self {
            IoMode::Shared => SHARED,
            IoMode::Exclusive => EXCLUSIVE,
        }
    }

    pub(crate) fn from_kind(k: Kind) -> Self {
        if k == SHARED {
            IoMode::Shared
        } else {
            IoMode::Exclusive
        }
    }
}

/// A reader-writer lock taken at the top of an inode's IO paths.
///
/// Same waiting policy as [`TwoStateLock`]: no barging past waiters, and
/// when the last holder leaves the lock goes to the other mode's waiters
/// (all shared waiters at once, or the oldest exclusive one). Neither
/// readers nor writers starve. Not reentrant.
pub struct IoLock {
    pub(crate) raw: RawLock,
}

impl IoLock {
    /// A new, unlocked lock.
    pub fn new() -> Self {
        IoLock {
            raw: RawLock::new([false, true]),
        }
    }

    /// Takes the lock shared.
    pub fn lock_shared(&self) -> IoSharedGuard<'_> {
        self.raw.lock(SHARED);
        IoSharedGuard { lock: self }
    }

    /// Takes the lock exclusive.
    pub fn lock_exclusive(&self) -> IoExclusiveGuard<'_> {
        self.raw.lock(EXCLUSIVE);
        IoExclusiveGuard { lock: self }
    }

    /// Takes the lock shared if that needs no waiting.
    pub fn try_lock_shared(&self) -> Option<IoSharedGuard<'_>> {
        // Not `then_some`: it would build (and on failure drop, i.e.
        // unlock) the guard eagerly.
        if self.raw.try_lock(SHARED) {
            Some(IoSharedGuard { lock: self })
        } else {
            None
        }
    }

    /// Takes the lock exclusive if that needs no waiting.
    pub fn try_lock_exclusive(&self) -> Option<IoExclusiveGuard<'_>> {
        if self.raw.try_lock(EXCLUSIVE) {
            Some(IoExclusiveGuard { lock: self })
        } else {
            None
        }
    }

    /// The current mode and number of holders, `None` when free. Only a
    /// snapshot: for debug assertions and diagnostics.
    pub fn held(&self) -> Option<(IoMode, usize)> {
        let s = self.raw.state();
        (s.holders > 0).then(|| (IoMode::from_kind(s.kind), s.holders))
    }
}

impl Default for IoLock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for IoLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.raw.state();
        f.debug_struct("IoLock")
            .field("held", &self.held())
            .field("waiting_shared", &s.waiting(SHARED))
            .field("waiting_exclusive", &s.waiting(EXCLUSIVE))
            .finish()
    }
}

guard!(
    /// Proof of holding an [`IoLock`] shared; releases it on drop.
    IoSharedGuard,
    IoLock,
    SHARED
);

guard!(
    /// Proof of holding an [`IoLock`] exclusive; releases it on drop.
    IoExclusiveGuard,
    IoLock,
    EXCLUSIVE
);

/// The locks of one inode: the IO lock, then (in lock order) the pagecache
/// lock. Usually obtained from an [`IoLockTable`](crate::IoLockTable), which
/// hands out one shared instance per inode number while anybody holds it.
pub struct InodeIo {
    ino: u64,
    io: IoLock,
    pagecache: TwoStateLock,
    /// The table this entry is registered in, to unregister on drop.
    home: Option<Weak<Shards>>,
}

impl InodeIo {
    /// Locks for `ino` that belong to no table (tests, single-inode tools).
    pub fn new(ino: u64) -> Self {
        Self::with_home(ino, None)
    }

    pub(crate) fn with_home(ino: u64, home: Option<Weak<Shards>>) -> Self {
        InodeIo {
            ino,
            io: IoLock::new(),
            pagecache: TwoStateLock::new(),
            home,
        }
    }

    /// The inode number.
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// The IO lock (take it before the pagecache lock).
    pub fn io(&self) -> &IoLock {
        &self.io
    }

    /// The pagecache add/block lock.
    pub fn pagecache(&self) -> &TwoStateLock {
        &self.pagecache
    }
}

impl Drop for InodeIo {
    fn drop(&mut self) {
        if let Some(shards) = self.home.as_ref().and_then(Weak::upgrade) {
            shards.unregister(self.ino, self);
        }
    }
}

impl fmt::Debug for InodeIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InodeIo")
            .field("ino", &self.ino)
            .field("io", &self.io)
            .field("pagecache", &self.pagecache)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    #[test]
    fn exclusive_excludes_everything_shared_shares() {
        let l = IoLock::new();
        let s1 = l.lock_shared();
        let s2 = l.try_lock_shared().expect("shared is shared");
        assert!(l.try_lock_exclusive().is_none());
        assert_eq!(l.held(), Some((IoMode::Shared, 2)));
        drop((s1, s2));
        let x = l.try_lock_exclusive().expect("free");
        assert!(l.try_lock_exclusive().is_none(), "exclusive is exclusive");
        assert!(l.try_lock_shared().is_none());
        assert_eq!(l.held(), Some((IoMode::Exclusive, 1)));
        drop(x);
        assert_eq!(l.held(), None);
    }

    /// Readers arriving after a queued writer wait for it; two queued
    /// writers get the lock one at a time, in arrival order, with the
    /// readers' batch in between.
    #[test]
    fn writers_queue_and_alternate_with_readers() {
        let l = Arc::new(IoLock::new());
        let r = l.lock_shared();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let spawn = |name: &'static str, excl: bool| {
            let (l, order) = (l.clone(), order.clone());
            thread::spawn(move || {
                let work = || {
                    order.lock().unwrap().push(name);
                    thread::sleep(Duration::from_millis(5));
                };
                if excl {
                    let _g = l.lock_exclusive();
                    work();
                } else {
                    let _g = l.lock_shared();
                    work();
                }
            })
        };
        let queued = |k: Kind, n: u64| {
            while l.raw.state().waiting(k) != n {
                thread::sleep(Duration::from_millis(1));
            }
        };
        let w1 = spawn("w1", true);
        queued(EXCLUSIVE, 1);
        let r2 = spawn("r2", false);
        queued(SHARED, 1);
        let w2 = spawn("w2", true);
        queued(EXCLUSIVE, 2);
        drop(r);
        for t in [w1, r2, w2] {
            t.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["w1", "r2", "w2"]);
    }
}
