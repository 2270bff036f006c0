//! The locks' properties with real threads (what `cargo test --workspace`
//! runs; `tests/loom.rs` checks the same exhaustively on small models).
//! Every test runs under a watchdog, so a deadlock fails instead of hanging.
#![cfg(not(loom))]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use arborfs_iolock::{IoLock, IoLockTable, IoMode, LockReq, PagecacheMode, Retry, TwoStateLock};
use common::{Probe, critical};

/// Runs `f` on a thread and fails if it takes longer than `secs`.
fn watchdog(secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let t = thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => t.join().unwrap(),
        // The body panicked: re-raise its panic.
        Err(mpsc::RecvTimeoutError::Disconnected) => t.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("no progress in {secs} s: deadlock?"),
    }
}

/// xorshift: deterministic per-thread pseudo-randomness.
fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// 4 threads × 20 000 random operations on `lock`: `op(lock, choice,
/// probe)` takes it one of four ways (chosen by `choice % 4`: each kind
/// blocking or tried) and runs [`Probe::section`] while holding it.
fn hammer<L: Send + Sync + 'static>(lock: L, op: fn(&L, u64, &Probe)) -> L {
    let lock = Arc::new(lock);
    let probe = Arc::new(Probe::default());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (lock, probe) = (lock.clone(), probe.clone());
            thread::spawn(move || {
                let mut r = rng(t + 1);
                for _ in 0..20_000 {
                    op(&lock, r(), &probe);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    Arc::into_inner(lock).unwrap()
}

#[test]
fn two_state_never_add_and_block_together() {
    watchdog(60, || {
        let lock = hammer(TwoStateLock::new(), |l, choice, p| match choice % 4 {
            0 => p.section(&p.add, Some(l.lock_add())),
            1 => p.section(&p.block, Some(l.lock_block())),
            2 => p.section(&p.add, l.try_lock_add()),
            _ => p.section(&p.block, l.try_lock_block()),
        });
        assert_eq!(lock.held(), None);
    });
}

/// Two threads keep ADD held at all times between them (their holds
/// overlap); BLOCK still gets in, repeatedly, because new ADDs queue behind
/// a waiting BLOCK. An unfair lock starves it here.
#[test]
fn add_stream_does_not_starve_block() {
    watchdog(60, || {
        let lock = Arc::new(TwoStateLock::new());
        let stop = Arc::new(AtomicBool::new(false));
        let adds = Arc::new(AtomicUsize::new(0));
        let adders: Vec<_> = (0..2)
            .map(|_| {
                let (lock, stop, adds) = (lock.clone(), stop.clone(), adds.clone());
                thread::spawn(move || {
                    while !stop.load(SeqCst) {
                        let _a = lock.lock_add();
                        adds.fetch_add(1, SeqCst);
                        thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        while adds.load(SeqCst) < 10 {
            thread::sleep(Duration::from_millis(1));
        }
        let start = Instant::now();
        for _ in 0..20 {
            let before = adds.load(SeqCst);
            drop(lock.lock_block());
            // ADD also keeps making progress between the BLOCKs.
            while adds.load(SeqCst) < before + 2 {
                thread::sleep(Duration::from_millis(1));
            }
        }
        stop.store(true, SeqCst);
        for t in adders {
            t.join().unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "BLOCK waited too long"
        );
    });
}

#[test]
fn io_lock_exclusive_excludes_shared() {
    watchdog(60, || {
        let lock = hammer(IoLock::new(), |l, choice, p| match choice % 4 {
            0 => p.section(&p.shared, Some(l.lock_shared())),
            1 => p.section(&p.exclusive, Some(l.lock_exclusive())),
            2 => p.section(&p.shared, l.try_lock_shared()),
            _ => p.section(&p.exclusive, l.try_lock_exclusive()),
        });
        assert_eq!(lock.held(), None);
    });
}

/// copy_file_range A→B and B→A, each written in its "natural" order (source
/// IO lock first), so one of the two always has an out-of-order lock.
#[test]
fn lockset_opposite_orders_finish() {
    watchdog(60, || {
        let table = Arc::new(IoLockTable::with_shards(4));
        let probes: Arc<Vec<Probe>> = Arc::new((0..2).map(|_| Probe::default()).collect());
        let retries = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = [(0u64, 1u64), (1, 0), (0, 1), (1, 0)]
            .into_iter()
            .map(|(src, dst)| {
                let (table, probes, retries) = (table.clone(), probes.clone(), retries.clone());
                thread::spawn(move || {
                    for _ in 0..5_000 {
                        let mut set = table.lock_set();
                        set.acquire(|l| {
                            l.lock_io(src, IoMode::Shared)?;
                            l.lock_io(dst, IoMode::Exclusive)?;
                            l.lock_pagecache(dst, PagecacheMode::Block)?;
                            l.lock_pagecache(src, PagecacheMode::Add)
                        });
                        critical(&set, &probes);
                        retries.fetch_add(set.retries() as usize, SeqCst);
                        assert!(
                            set.retries() <= 4,
                            "retries are bounded by the locks needed"
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(table.is_empty());
        eprintln!("{} retries", retries.load(SeqCst));
    });
}

/// Random operations on random inodes in random order, with every mode;
/// plus single-inode paths that bypass the set. Nothing deadlocks, every
/// lock excludes what it must, the table ends empty.
#[test]
fn lockset_random_operations() {
    watchdog(120, || {
        const INODES: u64 = 5;
        let table = Arc::new(IoLockTable::with_shards(2));
        let probes: Arc<Vec<Probe>> = Arc::new((0..INODES).map(|_| Probe::default()).collect());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (table, probes) = (table.clone(), probes.clone());
                thread::spawn(move || {
                    let mut r = rng(t + 100);
                    for _ in 0..3_000 {
                        let n = 1 + r() % 4;
                        let reqs: Vec<LockReq> = (0..n)
                            .map(|_| {
                                let ino = r() % INODES;
                                match r() % 4 {
                                    0 => LockReq::Io(ino, IoMode::Shared),
                                    1 => LockReq::Io(ino, IoMode::Exclusive),
                                    2 => LockReq::Pagecache(ino, PagecacheMode::Add),
                                    _ => LockReq::Pagecache(ino, PagecacheMode::Block),
                                }
                            })
                            .collect();
                        match r() % 3 {
                            0 => {
                                let set = table.lock_many(&reqs);
                                assert_eq!(set.retries(), 0);
                                critical(&set, &probes);
                            }
                            1 => {
                                let mut set = table.lock_set();
                                set.acquire(|l| reqs.iter().try_for_each(|&q| l.lock(q)));
                                assert!(set.retries() as usize <= 2 * reqs.len());
                                critical(&set, &probes);
                            }
                            _ => {
                                // A single-inode path: guards straight from
                                // the inode, IO lock then pagecache lock.
                                let ino = reqs[0].ino();
                                let io = table.get(ino);
                                let _i = io.io().lock_shared();
                                let _p = io.pagecache().lock_add();
                                let p = &probes[ino as usize];
                                p.shared.fetch_add(1, SeqCst);
                                p.add.fetch_add(1, SeqCst);
                                p.check();
                                p.add.fetch_sub(1, SeqCst);
                                p.shared.fetch_sub(1, SeqCst);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(table.is_empty());
    });
}

/// Many threads get, lock and drop handles of the same few inodes, racing
/// the entry's removal: the table must never give two live lock objects to
/// one inode (exclusivity would break), and ends empty.
#[test]
fn table_get_and_drop_race() {
    watchdog(60, || {
        let table = Arc::new(IoLockTable::with_shards(1));
        let probes: Arc<Vec<Probe>> = Arc::new((0..3).map(|_| Probe::default()).collect());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (table, probes) = (table.clone(), probes.clone());
                thread::spawn(move || {
                    let mut r = rng(t + 1000);
                    for _ in 0..20_000 {
                        let ino = r() % 3;
                        let io = table.get(ino);
                        let _x = io.io().lock_exclusive();
                        let p = &probes[ino as usize];
                        p.exclusive.fetch_add(1, SeqCst);
                        p.check();
                        p.exclusive.fetch_sub(1, SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(table.is_empty());
    });
}

/// `acquire` passes through a caller's own result, and the retry error
/// reads sensibly.
#[test]
fn acquire_returns_the_closure_value() {
    let table = IoLockTable::new();
    let mut set = table.lock_set();
    let r: Result<u64, &str> = set.acquire(|l| {
        l.lock_io(3, IoMode::Shared)?;
        Ok(Err("not found"))
    });
    assert_eq!(r, Err("not found"));
    assert_eq!(set.len(), 1);
    assert!(Retry.to_string().contains("retry"));
}
