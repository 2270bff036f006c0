//! Persistence without rebuilds: opening reads a number of nodes that does
//! not depend on the tree's size, the journal is reclaimed so a workload many
//! times its size keeps working, and a clean shutdown replays nothing.

mod common;

use std::sync::Arc;

use arborfs::device::{Device, MemDevice};
use arborfs::sb::FormatOptions;
use arborfs::{BtreeId, Durability, Engine, EngineOptions, Key, Pos};

fn open(dev: &Arc<MemDevice>) -> Engine {
    Engine::open(
        dev.clone() as Arc<dyn Device>,
        EngineOptions {
            background: false,
            ..Default::default()
        },
    )
    .unwrap()
}

fn key_pos(i: u64) -> Pos {
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Pos::new(h >> 40, h & 0xFF_FFFF_FFFF, 0)
}

#[test]
fn open_cost_is_independent_of_tree_size() {
    const N: u64 = 1_000_000;
    let dev = Arc::new(MemDevice::new(512 << 20));
    Engine::format(dev.clone(), &FormatOptions::default()).unwrap();
    let e = open(&dev);
    for chunk in (0..N).collect::<Vec<_>>().chunks(2000) {
        let mut tx = e.begin();
        for &i in chunk {
            tx.put(
                BtreeId::Inodes,
                Key::blob(key_pos(i), i.to_le_bytes().to_vec()),
            );
        }
        tx.commit(Durability::Lazy).unwrap();
    }
    e.close().unwrap();

    // Clean open: nothing replayed, at most a root-to-leaf path read.
    let e = open(&dev);
    let s = e.stats();
    assert_eq!(
        (s.journal_entries_replayed, s.journal_keys_replayed),
        (0, 0),
        "clean open replays nothing"
    );
    assert!(s.node_reads < 50, "clean open read {} nodes", s.node_reads);
    assert_eq!(
        e.get(BtreeId::Inodes, key_pos(777)).unwrap().unwrap().value,
        777u64.to_le_bytes()
    );

    // Crash after a few durable commits: replay reads only the paths it changes.
    for i in 0..10u64 {
        e.transact(Durability::Durable, |tx| {
            tx.put(BtreeId::Inodes, Key::blob(key_pos(N + i), vec![1; 8]));
            Ok(())
        })
        .unwrap();
    }
    drop(e);
    let e = open(&dev);
    let s = e.stats();
    assert!(s.journal_keys_replayed >= 10);
    assert!(
        s.node_reads < 50,
        "unclean open read {} nodes",
        s.node_reads
    );
    for i in 0..10u64 {
        assert!(
            e.get(BtreeId::Inodes, key_pos(N + i)).unwrap().is_some(),
            "durable commit {i} lost"
        );
    }
    let count = e.iter(BtreeId::Inodes, Pos::MIN, Pos::MAX).count() as u64;
    assert_eq!(count, N + 10);
}

#[test]
fn workload_of_twenty_journals_keeps_working() {
    let dev = Arc::new(MemDevice::new(64 << 20));
    let opts = FormatOptions {
        journal_bytes: Some(256 << 10),
        ..common::small_format()
    };
    let sb = Engine::format(dev.clone(), &opts).unwrap();
    let journal_len = sb.journal_len();
    let e = open(&dev);
    let value = vec![0xabu8; 200];
    let per_key = 32 + 8 + value.len() as u64;
    let keys = 20 * journal_len / per_key + 1;
    for i in 0..keys {
        e.transact(Durability::Lazy, |tx| {
            // Overwrite a bounded key set so the tree stays small while the
            // journal sees 20x its size.
            tx.put(
                BtreeId::Dirents,
                Key::blob(
                    Pos::new(1, i % 3000, 0),
                    [&i.to_le_bytes()[..], &value].concat(),
                ),
            );
            Ok(())
        })
        .unwrap_or_else(|err| panic!("commit {i} of {keys}: {err}"));
    }
    e.sync().unwrap();
    assert!(
        e.stats().checkpoints >= 10,
        "expected journal reclaim, got {:?}",
        e.stats()
    );
    let check = |e: &Engine| {
        for j in 0..3000u64 {
            let last = (0..keys).rev().find(|i| i % 3000 == j).unwrap();
            let k = e.get(BtreeId::Dirents, Pos::new(1, j, 0)).unwrap().unwrap();
            assert_eq!(&k.value[..8], &last.to_le_bytes());
        }
    };
    check(&e);
    drop(e); // crash: replay from the journal
    let e = open(&dev);
    check(&e);
    e.close().unwrap();
    let e = open(&dev);
    check(&e);
}
