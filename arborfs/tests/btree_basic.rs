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
    let all: Vec<_> = e
        .iter(BtreeId::Dirents, Pos::MIN, Pos::MAX)
        .map(|k| k.unwrap())
        .collect();
    assert_eq!(all.len(), model.len());
    for (k, (mp, mv)) in all.iter().zip(model.iter()) {
        assert_eq!((k.pos, &k.value), (*mp, mv));
    }
    assert!(
        e.stats().node_reads > 10,
        "expected cache misses, got {:?}",
        e.stats()
    );
}
