//! Several threads of random transactions over overlapping keys finish (no
//! deadlock), and the result equals a serial execution of the committed
//! transactions: no lost update, and the alloc accounting adds up.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arborfs::alloc::alloc_format::Counter;
use arborfs::alloc::extent_format::{ExtentPtr, ExtentValue};
use arborfs::device::{Device, MemDevice};
use arborfs::{BtreeId, Durability, Engine, EngineOptions, Key, KeyType, Pos};

const THREADS: u64 = 4;
const TXNS: u64 = 400;
const COUNTERS: u64 = 40;

fn counter_pos(c: u64) -> Pos {
    Pos::new(1, c, 0)
}

#[test]
fn concurrent_read_modify_write_transactions_are_serializable() {
    let dev = Arc::new(MemDevice::new(128 << 20));
    Engine::format(dev.clone(), &common::small_format()).unwrap();
    let e = Arc::new(
        Engine::open(
            dev.clone() as Arc<dyn Device>,
            EngineOptions {
                cache_bytes: 2 << 20,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let start = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
                let mut rnd = move || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                };
                // What this thread committed: counter -> increments.
                let mut mine: BTreeMap<u64, u64> = BTreeMap::new();
                let mut sectors = 0u64;
                for i in 0..TXNS {
                    let picks: Vec<u64> = (0..1 + rnd() % 4).map(|_| rnd() % COUNTERS).collect();
                    let mut uniq = picks.clone();
                    uniq.sort();
                    uniq.dedup();
                    let with_extent = rnd() % 3 == 0;
                    let extent = if with_extent {
                        let a = e.alloc_data(8).unwrap();
                        let v = ExtentValue {
                            csum_type: 0,
                            compression: 0,
                            stored_sectors: a.sectors,
                            uncompressed_sectors: a.sectors,
                            offset: 0,
                            csum: 0,
                            ptrs: vec![ExtentPtr {
                                dev_sector: a.dev_sector,
                                generation: a.generation,
                            }],
                        };
                        // Each thread overwrites within its own inode, so old
                        // extents are trimmed and their space released.
                        Some(Key::extent(
                            100 + t,
                            (rnd() % 64) * 4,
                            a.sectors,
                            1,
                            KeyType::Extent,
                            v.encode(),
                        ))
                    } else {
                        None
                    };
                    e.transact(Durability::Lazy, |tx| {
                        for &c in &uniq {
                            let cur = tx
                                .get(BtreeId::Inodes, counter_pos(c))?
                                .map(|k| u64::from_le_bytes(k.value[..8].try_into().unwrap()))
                                .unwrap_or(0);
                            tx.put(
                                BtreeId::Inodes,
                                Key::blob(counter_pos(c), (cur + 1).to_le_bytes().to_vec()),
                            );
                        }
                        tx.put(
                            BtreeId::Dirents,
                            Key::blob(Pos::new(2 + t, i, 0), vec![t as u8; 16]),
                        );
                        if let Some(k) = &extent {
                            tx.put(BtreeId::Extents, k.clone());
                        }
                        Ok(())
                    })
                    .unwrap();
                    for &c in &uniq {
                        *mine.entry(c).or_default() += 1;
                    }
                    if extent.is_some() {
                        sectors += 8;
                    }
                    if i % 100 == 0 && t == 0 {
                        e.checkpoint().unwrap();
                    }
                }
                (mine, sectors)
            })
        })
        .collect();
    let mut expected: BTreeMap<u64, u64> = BTreeMap::new();
    for h in handles {
        let (mine, _) = h.join().expect("worker panicked");
        for (c, n) in mine {
            *expected.entry(c).or_default() += n;
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(120),
        "took too long: {:?}",
        start.elapsed()
    );
    for (c, n) in &expected {
        let got = e.get(BtreeId::Inodes, counter_pos(*c)).unwrap().unwrap();
        assert_eq!(
            u64::from_le_bytes(got.value[..8].try_into().unwrap()),
            *n,
            "counter {c} lost updates"
        );
    }
    let log = e.iter(BtreeId::Dirents, Pos::MIN, Pos::MAX).count() as u64;
    assert_eq!(log, THREADS * TXNS);
    // Accounting equals the live extents.
    let live: u64 = e
        .iter(BtreeId::Extents, Pos::MIN, Pos::MAX)
        .map(|k| k.unwrap().size as u64)
        .sum();
    assert_eq!(e.counters()[Counter::UserSectors as usize] as u64, live);
    let e = Arc::try_unwrap(e).ok().expect("sole owner");
    e.close().unwrap();
}
