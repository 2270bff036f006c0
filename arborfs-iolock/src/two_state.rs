//! The two-state pagecache lock (bcachefs's "pagecache add/block" lock).

use std::fmt;

use crate::raw::{Kind, RawLock, guard};

pub(crate) const ADD: Kind = 0;
pub(crate) const BLOCK: Kind = 1;

/// A state of the [`TwoStateLock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PagecacheMode {
    /// Held by paths that may put pages into the cache: buffered read and
    /// write, page fill, readahead (try only).
    Add,
    /// Held by paths that must keep new pages out while they change the
    /// file's data behind the cache: O_DIRECT write, truncate, fallocate,
    /// the destination of copy_file_range. The stronger of the two where a
    /// [`LockSet`](crate::LockSet) has to pick one.
    Block,
}

impl PagecacheMode {
    pub(crate) fn kind(self) -> Kind {
        match self {
            PagecacheMode::Add => ADD,
            PagecacheMode::Block => BLOCK,
        }
    }

    pub(crate) fn from_kind(k: Kind) -> Self {
        if k == ADD {
            PagecacheMode::Add
        } else {
            PagecacheMode::Block
        }
    }
}

/// A lock with two shared states, ADD and BLOCK: any number of holders of
/// one state at a time, never both states at once.
///
/// Waiting sleeps on a condvar. Fairness: once anybody waits, new lockers of
/// either state queue too, and when the last holder of one state leaves, all
/// queued waiters of the other state get the lock together. So a stream of
/// ADD holders cannot starve a BLOCK waiter (nor the reverse): the states
/// alternate under contention. `try_lock_*` fail while anybody waits.
///
/// Not reentrant: taking the state you already hold again deadlocks as soon
/// as a waiter of the other state is queued.
pub struct TwoStateLock {
    pub(crate) raw: RawLock,
}

impl TwoStateLock {
    /// A new, unlocked lock.
    pub fn new() -> Self {
        TwoStateLock {
            raw: RawLock::new([false, false]),
        }
    }

    /// Takes the lock in ADD state, waiting while it is in BLOCK state or
    /// anybody is queued.
    pub fn lock_add(&self) -> AddGuard<'_> {
        self.raw.lock(ADD);
        AddGuard { lock: self }
    }

    /// Takes the lock in BLOCK state, waiting while it is in ADD state or
    /// anybody is queued.
    pub fn lock_block(&self) -> BlockGuard<'_> {
        self.raw.lock(BLOCK);
        BlockGuard { lock: self }
    }

    /// Takes ADD if that needs no waiting.
    pub fn try_lock_add(&self) -> Option<AddGuard<'_>> {
        // Not `then_some`: it would build (and on failure drop, i.e.
        // unlock) the guard eagerly.
        if self.raw.try_lock(ADD) {
            Some(AddGuard { lock: self })
        } else {
            None
        }
    }

    /// Takes BLOCK if that needs no waiting.
    pub fn try_lock_block(&self) -> Option<BlockGuard<'_>> {
        if self.raw.try_lock(BLOCK) {
            Some(BlockGuard { lock: self })
        } else {
            None
        }
    }

    /// The current state and number of holders, `None` when free. Only a
    /// snapshot: for debug assertions and diagnostics.
    pub fn held(&self) -> Option<(PagecacheMode, usize)> {
        let s = self.raw.state();
        (s.holders > 0).then(|| (PagecacheMode::from_kind(s.kind), s.holders))
    }
}

impl Default for TwoStateLock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for TwoStateLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.raw.state();
        f.debug_struct("TwoStateLock")
            .field("held", &self.held())
            .field("waiting_add", &s.waiting(ADD))
            .field("waiting_block", &s.waiting(BLOCK))
            .finish()
    }
}

guard!(
    /// Proof of holding a [`TwoStateLock`] in ADD state; releases it on drop.
    AddGuard,
    TwoStateLock,
    ADD
);

guard!(
    /// Proof of holding a [`TwoStateLock`] in BLOCK state; releases it on
    /// drop.
    BlockGuard,
    TwoStateLock,
    BLOCK
);

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    /// Spins (sleeping) until `lock` has `n` waiters of kind `k`.
    fn wait_queued(lock: &TwoStateLock, k: Kind, n: u64) {
        for _ in 0..10_000 {
            if lock.raw.state().waiting(k) == n {
                return;
            }
            thread::sleep(Duration::from_millis(1));
        }
        panic!("waiter never queued: {lock:?}");
    }

    #[test]
    fn same_state_shares_other_state_excludes() {
        let l = TwoStateLock::new();
        let a1 = l.lock_add();
        let a2 = l.try_lock_add().expect("ADD is shared");
        assert_eq!(l.held(), Some((PagecacheMode::Add, 2)));
        assert!(l.try_lock_block().is_none());
        drop(a1);
        assert!(l.try_lock_block().is_none(), "one ADD still held");
        drop(a2);
        assert_eq!(l.held(), None);
        let b1 = l.lock_block();
        let b2 = l.try_lock_block().expect("BLOCK is shared");
        assert!(l.try_lock_add().is_none());
        assert_eq!(l.held(), Some((PagecacheMode::Block, 2)));
        drop((b1, b2));
        assert!(l.try_lock_add().is_some());
        assert_eq!(l.held(), None);
    }

    /// Once a BLOCK waiter is queued, new ADDs (try or blocking) wait behind
    /// it, and get in after it together.
    #[test]
    fn queued_block_stops_new_adds() {
        let l = Arc::new(TwoStateLock::new());
        let held = l.lock_add();
        let (tx, rx) = mpsc::channel();
        let blocker = {
            let (l, tx) = (l.clone(), tx.clone());
            thread::spawn(move || {
                let _b = l.lock_block();
                tx.send("block in").unwrap();
                thread::sleep(Duration::from_millis(20));
                tx.send("block out").unwrap();
            })
        };
        wait_queued(&l, BLOCK, 1);
        assert!(l.try_lock_add().is_none(), "a try must not jump the queue");
        let adders: Vec<_> = (0..2)
            .map(|_| {
                let (l, tx) = (l.clone(), tx.clone());
                thread::spawn(move || {
                    let _a = l.lock_add();
                    tx.send("add in").unwrap();
                })
            })
            .collect();
        wait_queued(&l, ADD, 2);
        drop(held);
        blocker.join().unwrap();
        for a in adders {
            a.join().unwrap();
        }
        drop(tx);
        let log: Vec<_> = rx.iter().collect();
        assert_eq!(log, ["block in", "block out", "add in", "add in"]);
    }

    /// The reverse: a queued ADD waiter stops new BLOCKs.
    #[test]
    fn queued_add_stops_new_blocks() {
        let l = Arc::new(TwoStateLock::new());
        let held = l.lock_block();
        let adder = {
            let l = l.clone();
            thread::spawn(move || drop(l.lock_add()))
        };
        wait_queued(&l, ADD, 1);
        assert!(l.try_lock_block().is_none());
        drop(held);
        adder.join().unwrap();
        assert!(l.try_lock_block().is_some());
    }
}
