mod common;

use std::collections::BTreeMap;

use arborfs::{BtreeId, Durability, Key, Pos};

#[test]
fn many_inserts_deletes_and_scans_match_a_map() {
    let (_dev, e) = common::mem_engine(64 << 20);
    let mut model = BTreeMap::new();
    let mut x: u64 = 12345;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..200 {
        let mut tx = e.begin();
        for _ in 0..50 {
            let k = rnd() % 5000;
            let pos = Pos::new(k % 7, k, 0);
            if rnd() % 4 == 0 {
                tx.delete(BtreeId::Inodes, pos);
                model.remove(&pos);
            } else {
                let v = vec![(k % 251) as u8; (rnd() % 40) as usize];
                tx.put(BtreeId::Inodes, Key::blob(pos, v.clone()));
                model.insert(pos, v);
            }
        }
        tx.commit(Durability::Lazy)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        if round % 37 == 0 {
            e.checkpoint()
                .unwrap_or_else(|e| panic!("ckpt round {round}: {e}"));
        }
    }
    let all: Vec<_> = e
        .iter(BtreeId::Inodes, Pos::MIN, Pos::MAX)
        .map(|k| k.unwrap())
        .collect();
    assert_eq!(all.len(), model.len());
    for (k, (mp, mv)) in all.iter().zip(model.iter()) {
        assert_eq!(k.pos, *mp);
        assert_eq!(&k.value, mv);
    }
    let rev: Vec<_> = e
        .iter_rev(BtreeId::Inodes, Pos::MIN, Pos::MAX)
        .map(|k| k.unwrap().pos)
        .collect();
    let mut fwd: Vec<_> = model.keys().copied().collect();
    fwd.reverse();
    assert_eq!(rev, fwd);
    for (p, v) in model.iter().take(300) {
        assert_eq!(e.get(BtreeId::Inodes, *p).unwrap().unwrap().value, *v);
    }
}

#[test]
fn tiny_cache_evicts_and_reloads_correctly() {
    use std::sync::Arc;
    let dev = Arc::new(arborfs::device::MemDevice::new(64 << 20));
    arborfs::Engine::format(dev.clone(), &common::small_format()).unwrap();
    let e = arborfs::Engine::open(
        dev.clone(),
        arborfs::EngineOptions {
            background: false,
            cache_bytes: 1,
            read_only: false,
        },
    )
    .unwrap();
    let mut model = BTreeMap::new();
    for round in 0..100u64 {
        let mut tx = e.begin();
        for i in 0..100u64 {
            let k = (i * 7919 + round * 104729) % 20000;
            let pos = Pos::new(1, k, 0);
            let v = vec![(round % 251) as u8; 24];
            tx.put(BtreeId::Dirents, Key::blob(pos, v.clone()));
            model.insert(pos, v);
        }
        tx.commit(Durability::Lazy)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    e.checkpoint().unwrap();
    assert_dirents_match(&e, &model);
    assert!(
        e.stats().node_reads > 10,
        "expected cache misses, got {:?}",
        e.stats()
    );
}

/// A tree several times larger than the node cache, changed a few keys per
/// commit: checkpoints come in batches (not on every commit), the cache
/// stays near its limit, and nothing is lost across a close and reopen.
#[test]
fn tree_larger_than_cache_checkpoints_in_batches() {
    use std::sync::Arc;
    let dev = Arc::new(arborfs::device::MemDevice::new(64 << 20));
    arborfs::Engine::format(dev.clone(), &common::small_format()).unwrap();
    let opts = arborfs::EngineOptions {
        background: false,
        // Clamped to 16 nodes (256 KiB with 16 KiB nodes).
        cache_bytes: 1,
        read_only: false,
    };
    let e = arborfs::Engine::open(dev.clone(), opts.clone()).unwrap();
    let limit = 16 * (16 << 10);
    let mut model = BTreeMap::new();
    let mut x: u64 = 99;
    let commits = 3000u64;
    let mut max_cache = 0;
    for round in 0..commits {
        let mut tx = e.begin();
        for _ in 0..2 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let pos = Pos::new(x % 5, x % 100_000, 0);
            let v = vec![(round % 251) as u8; 40];
            tx.put(BtreeId::Dirents, Key::blob(pos, v.clone()));
            model.insert(pos, v);
        }
        tx.commit(Durability::Lazy)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        max_cache = max_cache.max(e.stats().cache_bytes);
    }
    let stats = e.stats();
    assert!(stats.node_reads > 100, "tree should not fit: {stats:?}");
    assert!(
        stats.checkpoints < commits / 4,
        "a checkpoint on (nearly) every commit: {stats:?}"
    );
    assert!(
        max_cache < 3 * limit,
        "cache grew to {max_cache} bytes (limit {limit})"
    );
    e.close().unwrap();
    let e = arborfs::Engine::open(dev, opts).unwrap();
    assert_dirents_match(&e, &model);
}

/// The dirents btree holds exactly `model`.
fn assert_dirents_match(e: &arborfs::Engine, model: &BTreeMap<Pos, Vec<u8>>) {
    let all: Vec<_> = e
        .iter(BtreeId::Dirents, Pos::MIN, Pos::MAX)
        .map(|k| k.unwrap())
        .collect();
    assert_eq!(all.len(), model.len());
    for (k, (mp, mv)) in all.iter().zip(model.iter()) {
        assert_eq!((k.pos, &k.value), (*mp, mv));
    }
}
