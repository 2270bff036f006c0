//! Shared by `threads.rs` (std atomics) and `loom.rs` (loom atomics, so loom
//! sees the counters): per-inode counters of lock holders, updated inside
//! the critical sections to check that each lock excludes what it must.

#[cfg(loom)]
use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use arborfs_iolock::{IoMode, LockReq, LockSet, PagecacheMode};

/// Holders of each state of one inode's locks.
#[derive(Default)]
pub struct Probe {
    pub shared: AtomicUsize,
    pub exclusive: AtomicUsize,
    pub add: AtomicUsize,
    pub block: AtomicUsize,
}

impl Probe {
    fn counter(&self, req: LockReq) -> &AtomicUsize {
        match req {
            LockReq::Io(_, IoMode::Shared) => &self.shared,
            LockReq::Io(_, IoMode::Exclusive) => &self.exclusive,
            LockReq::Pagecache(_, PagecacheMode::Add) => &self.add,
            LockReq::Pagecache(_, PagecacheMode::Block) => &self.block,
        }
    }

    /// Panics if the counted holders break IO or pagecache exclusion.
    pub fn check(&self) {
        let (s, x) = (self.shared.load(SeqCst), self.exclusive.load(SeqCst));
        assert!(
            x <= 1 && (x == 0 || s == 0),
            "IO lock: {s} shared, {x} exclusive"
        );
        let (a, b) = (self.add.load(SeqCst), self.block.load(SeqCst));
        assert!(a == 0 || b == 0, "pagecache: {a} ADD and {b} BLOCK at once");
    }

    /// Counts one holder in `state` while `guard` holds the lock (nothing
    /// if it is `None`, a failed try), checking exclusion.
    pub fn section<G>(&self, state: &AtomicUsize, guard: Option<G>) {
        if let Some(g) = guard {
            state.fetch_add(1, SeqCst);
            self.check();
            pause();
            self.check();
            state.fetch_sub(1, SeqCst);
            drop(g);
        }
    }
}

/// Enters the critical section of every lock `set` holds (`probes` indexed
/// by inode number), checks, leaves.
pub fn critical(set: &LockSet<'_>, probes: &[Probe]) {
    let held = set.held();
    let probe = |r: &LockReq| &probes[r.ino() as usize];
    for r in &held {
        probe(r).counter(*r).fetch_add(1, SeqCst);
    }
    for r in &held {
        probe(r).check();
    }
    pause();
    for r in &held {
        probe(r).check();
        probe(r).counter(*r).fetch_sub(1, SeqCst);
    }
}

/// Widens the critical section for real threads; loom already tries every
/// interleaving around the atomic operations.
fn pause() {
    #[cfg(not(loom))]
    std::thread::yield_now();
}
