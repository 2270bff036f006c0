//! Loom models of the locks: every interleaving of a few threads (up to
//! each model's preemption bound) on the real lock code, built on loom's `Mutex`
//! and `Condvar`. Loom fails a model on a deadlock (all threads blocked),
//! so "every thread finishes" is checked by every model.
//!
//! Run with `scripts/loom.sh`. `LOOM_MAX_PREEMPTIONS` overrides the bounds.
#![cfg(loom)]

mod common;

use common::{Probe, critical};
use loom::sync::Arc;
use loom::thread;

use arborfs_iolock::{IoLock, IoLockTable, IoMode, LockReq, PagecacheMode, TwoStateLock};

/// Checks `f` on every interleaving with at most `bound` preemptions
/// (`None`: all interleavings), unless `LOOM_MAX_PREEMPTIONS` says
/// otherwise. Each model's bound is the largest that keeps it at a few
/// seconds (measured in docs/testing.md); lock bugs need only one or two
/// preemptions to show.
fn model(bound: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = bound;
    }
    b.check(f);
}

/// ADD and BLOCK are never held together; blocking and try lockers of both
/// states all finish.
#[test]
fn two_state_add_and_block_exclude() {
    model(Some(3), || {
        let lock = Arc::new(TwoStateLock::new());
        let probe = Arc::new(Probe::default());
        let adder = {
            let (l, p) = (lock.clone(), probe.clone());
            thread::spawn(move || p.section(&p.add, Some(l.lock_add())))
        };
        let blocker = {
            let (l, p) = (lock.clone(), probe.clone());
            thread::spawn(move || p.section(&p.block, Some(l.lock_block())))
        };
        probe.section(&probe.add, lock.try_lock_add());
        probe.section(&probe.block, lock.try_lock_block());
        probe.section(&probe.add, Some(lock.lock_add()));
        adder.join().unwrap();
        blocker.join().unwrap();
        assert_eq!(lock.held(), None);
    });
}

/// Two BLOCK holders and one ADD: the batch handoff (all BLOCK waiters at
/// once) loses no wakeup.
#[test]
fn two_state_batch_handoff() {
    model(Some(5), || {
        let lock = Arc::new(TwoStateLock::new());
        let probe = Arc::new(Probe::default());
        let blockers: Vec<_> = (0..2)
            .map(|_| {
                let (l, p) = (lock.clone(), probe.clone());
                thread::spawn(move || p.section(&p.block, Some(l.lock_block())))
            })
            .collect();
        probe.section(&probe.add, Some(lock.lock_add()));
        for b in blockers {
            b.join().unwrap();
        }
        assert_eq!(lock.held(), None);
    });
}

/// IO lock: exclusive excludes shared and exclusive; two exclusive waiters
/// are granted one at a time; try variants.
#[test]
fn io_lock_exclusive_excludes() {
    model(Some(5), || {
        let lock = Arc::new(IoLock::new());
        let probe = Arc::new(Probe::default());
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let (l, p) = (lock.clone(), probe.clone());
                thread::spawn(move || p.section(&p.exclusive, Some(l.lock_exclusive())))
            })
            .collect();
        probe.section(&probe.shared, Some(lock.lock_shared()));
        probe.section(&probe.exclusive, lock.try_lock_exclusive());
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(lock.held(), None);
    });
}

#[test]
fn io_lock_try_variants() {
    model(None, || {
        let lock = Arc::new(IoLock::new());
        let probe = Arc::new(Probe::default());
        let reader = {
            let (l, p) = (lock.clone(), probe.clone());
            thread::spawn(move || {
                p.section(&p.shared, l.try_lock_shared());
                p.section(&p.shared, Some(l.lock_shared()));
            })
        };
        probe.section(&probe.exclusive, lock.try_lock_exclusive());
        probe.section(&probe.shared, lock.try_lock_shared());
        reader.join().unwrap();
        assert_eq!(lock.held(), None);
    });
}

/// Runs `ops` on two threads, each through a `LockSet` with `acquire`
/// (retrying on out-of-order failures), checking exclusion in the critical
/// section. Loom fails the model if both threads can block forever.
fn two_locksets(bound: Option<usize>, ops: [[LockReq; 2]; 2]) {
    model(bound, move || {
        let table = Arc::new(IoLockTable::with_shards(1));
        let probes = Arc::new([Probe::default(), Probe::default()]);
        let threads: Vec<_> = ops
            .into_iter()
            .map(|reqs| {
                let (table, probes) = (table.clone(), probes.clone());
                thread::spawn(move || {
                    let mut set = table.lock_set();
                    set.acquire(|l| reqs.iter().try_for_each(|&r| l.lock(r)));
                    critical(&set, &probes[..]);
                    assert!(set.retries() <= 2);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(table.is_empty(), "entries forgotten when unused");
    });
}

/// Thread 1 wants A then B, thread 2 B then A, both exclusive: thread 2's
/// second lock is out of order, so it is tried and retried.
#[test]
fn lockset_opposite_order_io() {
    use IoMode::Exclusive;
    two_locksets(
        Some(6),
        [
            [LockReq::Io(0, Exclusive), LockReq::Io(1, Exclusive)],
            [LockReq::Io(1, Exclusive), LockReq::Io(0, Exclusive)],
        ],
    );
}

/// copy_file_range 1→0 and 0→1 at the pagecache level: BLOCK on the
/// destination first, then ADD on the source. Taken blindly, each would
/// hold the BLOCK the other's ADD waits for.
#[test]
fn lockset_opposite_order_pagecache() {
    use PagecacheMode::{Add, Block};
    two_locksets(
        Some(6),
        [
            [LockReq::Pagecache(0, Block), LockReq::Pagecache(1, Add)],
            [LockReq::Pagecache(1, Block), LockReq::Pagecache(0, Add)],
        ],
    );
}

/// An upgrade (shared, then exclusive, of one inode: copy_file_range
/// within a file) racing a thread that shares that inode and then wants the
/// other one out of order.
#[test]
fn lockset_upgrade_against_opposite_order() {
    use IoMode::{Exclusive, Shared};
    two_locksets(
        None,
        [
            [LockReq::Io(1, Shared), LockReq::Io(1, Exclusive)],
            [LockReq::Io(1, Shared), LockReq::Io(0, Exclusive)],
        ],
    );
}

/// Two threads get, lock and drop the same inode while its entry may be
/// being removed: never two live lock objects for one inode, and the table
/// ends empty.
#[test]
fn table_get_and_drop_race() {
    model(None, || {
        let table = Arc::new(IoLockTable::with_shards(1));
        let probe = Arc::new(Probe::default());
        let other = {
            let (t, p) = (table.clone(), probe.clone());
            thread::spawn(move || {
                let io = t.get(5);
                p.section(&p.exclusive, Some(io.io().lock_exclusive()));
            })
        };
        for _ in 0..2 {
            let io = table.get(5);
            probe.section(&probe.exclusive, Some(io.io().lock_exclusive()));
        }
        other.join().unwrap();
        assert!(table.is_empty());
    });
}
