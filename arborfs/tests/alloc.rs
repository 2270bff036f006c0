//! The alloc trigger keeps bucket counts, the freespace index and the
//! accounting key exact; buckets are reused only with a bumped generation.

mod common;

use arborfs::alloc::alloc_format::{Counter, DataType};
use arborfs::alloc::extent_format::{ExtentPtr, ExtentValue};
use arborfs::{BtreeId, Durability, Engine, Key, KeyType, Pos};

fn extent(e: &Engine, inode: u64, start: u64, sectors: u32) -> Key {
    let a = e.alloc_data(sectors).unwrap();
    assert_eq!(a.sectors, sectors, "test writes fit in one bucket");
    let v = ExtentValue {
        csum_type: 0,
        compression: 0,
        stored_sectors: sectors,
        uncompressed_sectors: sectors,
        offset: 0,
        csum: 0,
        ptrs: vec![ExtentPtr {
            dev_sector: a.dev_sector,
            generation: a.generation,
        }],
    };
    Key::extent(inode, start, sectors, 1, KeyType::Extent, v.encode())
}

fn bucket_of(e: &Engine, k: &Key) -> u64 {
    let v = ExtentValue::decode(&k.value).unwrap();
    e.geometry().bucket_of(v.ptrs[0].dev_sector)
}

#[test]
fn extent_inserts_and_overwrites_update_alloc_keys() {
    let (_dev, e) = common::mem_engine(64 << 20);
    let free0 = e.counters()[Counter::FreeBuckets as usize];
    let k1 = extent(&e, 5, 0, 16);
    let b = bucket_of(&e, &k1);
    e.transact(Durability::Lazy, |tx| {
        tx.put(BtreeId::Extents, k1.clone());
        Ok(())
    })
    .unwrap();
    let a = e.bucket(b).unwrap();
    assert_eq!((a.dirty_sectors, a.data_type), (16, DataType::User));
    assert_eq!(e.counters()[Counter::UserSectors as usize], 16);
    assert_eq!(e.counters()[Counter::FreeBuckets as usize], free0 - 1);
    assert!(
        e.get(BtreeId::Freespace, Pos::new(0, b, 0))
            .unwrap()
            .is_none(),
        "bucket left the freespace index"
    );

    // Overwrite the middle 4 sectors with data elsewhere in the same bucket.
    let k2 = extent(&e, 5, 6, 4);
    e.transact(Durability::Lazy, |tx| {
        tx.put(BtreeId::Extents, k2.clone());
        Ok(())
    })
    .unwrap();
    assert_eq!(
        e.bucket(b).unwrap().dirty_sectors,
        16,
        "12 of the old extent + 4 new"
    );
    let keys: Vec<_> = e
        .iter(BtreeId::Extents, Pos::MIN, Pos::MAX)
        .map(|k| k.unwrap())
        .collect();
    assert_eq!(
        keys.iter()
            .map(|k| (k.start(), k.end()))
            .collect::<Vec<_>>(),
        vec![(0, 6), (6, 10), (10, 16)]
    );
    // The back piece points 10 sectors into the original data.
    assert_eq!(ExtentValue::decode(&keys[2].value).unwrap().offset, 10);

    // Punch everything: the bucket keeps its alloc key but is still open, so
    // it is freed when closed, at a checkpoint.
    e.transact(Durability::Lazy, |tx| {
        tx.delete_range(BtreeId::Extents, 5, 1, 0, 100);
        Ok(())
    })
    .unwrap();
    assert_eq!(e.bucket(b).unwrap().dirty_sectors, 0);
    assert_eq!(e.counters()[Counter::UserSectors as usize], 0);
}

#[test]
fn emptied_bucket_is_reused_with_a_new_generation() {
    let (_dev, e) = common::mem_engine(64 << 20);
    let bucket_sectors = e.geometry().bucket_sectors as u32;
    // Fill one whole bucket so it is closed, then delete its data.
    let k = extent(&e, 9, 0, bucket_sectors);
    let b = bucket_of(&e, &k);
    let gen0 = ExtentValue::decode(&k.value).unwrap().ptrs[0].generation;
    e.transact(Durability::Durable, |tx| {
        tx.put(BtreeId::Extents, k.clone());
        Ok(())
    })
    .unwrap();
    // The next allocation closes the full bucket.
    let other = extent(&e, 10, 0, 8);
    assert_ne!(bucket_of(&e, &other), b);
    e.transact(Durability::Durable, |tx| {
        tx.delete_range(BtreeId::Extents, 9, 1, 0, bucket_sectors as u64);
        Ok(())
    })
    .unwrap();
    let a = e.bucket(b).unwrap();
    assert_eq!(a.dirty_sectors, 0);
    assert_eq!(a.data_type, DataType::Free);
    assert_eq!(
        a.generation,
        gen0.wrapping_add(1),
        "emptying bumps the generation"
    );
    assert!(
        e.get(BtreeId::Freespace, Pos::new(0, b, 0))
            .unwrap()
            .is_some()
    );
    e.sync().unwrap();
    // Allocate (without keeping data) until the freed bucket comes around again.
    let mut seen = false;
    for _ in 0..2000 {
        let a = e.alloc_data(bucket_sectors).unwrap();
        if e.geometry().bucket_of(a.dev_sector) == b {
            assert_eq!(a.generation, gen0.wrapping_add(1));
            seen = true;
            break;
        }
    }
    assert!(seen, "freed bucket was never reused");
}

#[test]
fn allocation_runs_out_with_enospc_not_a_panic() {
    let (_dev, e) = common::mem_engine(16 << 20);
    let mut n = 0;
    let err = loop {
        match e.alloc_data(64) {
            Ok(a) => {
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
                e.transact(Durability::Lazy, |tx| {
                    tx.put(
                        BtreeId::Extents,
                        Key::extent(1, n * 64, a.sectors, 1, KeyType::Extent, v.encode()),
                    );
                    Ok(())
                })
                .unwrap();
                n += 1;
            }
            Err(err) => break err,
        }
        assert!(n < 100_000);
    };
    assert!(matches!(err, arborfs::Error::NoSpace), "{err}");
    // Deletes still work on a full filesystem, and checkpoints find room.
    e.transact(Durability::Lazy, |tx| {
        tx.delete_range(BtreeId::Extents, 1, 1, 0, u64::MAX / 2);
        Ok(())
    })
    .unwrap();
    e.checkpoint().unwrap();
}

/// Space handed out but not committed yet pins its bucket: after the write
/// point moved past it and checkpoints ran, the bucket is neither freed nor
/// handed out again (allocation wraps around the device several times
/// meanwhile), and the key committed afterwards is live, with the bucket's
/// generation unchanged. Without the pin a checkpoint between a write and
/// its commit could free the bucket and a reuse turn the key stale.
#[test]
fn uncommitted_allocation_pins_its_bucket() {
    let (_dev, e) = common::mem_engine(64 << 20);
    let geo = e.geometry();
    let bucket_sectors = geo.bucket_sectors as u32;
    let a = e.alloc_data(bucket_sectors).unwrap();
    assert_eq!(a.sectors, bucket_sectors);
    let b = geo.bucket_of(a.dev_sector);
    for round in 0..(3 * geo.nbuckets) {
        // Each allocation closes the previous write point, uncommitted.
        let x = e.alloc_data(bucket_sectors).unwrap();
        assert_ne!(
            geo.bucket_of(x.dev_sector),
            b,
            "round {round}: a pinned bucket was handed out again"
        );
        if round % 16 == 0 {
            e.checkpoint().unwrap();
            e.sync().unwrap();
        }
    }
    let v = ExtentValue {
        csum_type: 0,
        compression: 0,
        stored_sectors: bucket_sectors,
        uncompressed_sectors: bucket_sectors,
        offset: 0,
        csum: 0,
        ptrs: vec![ExtentPtr {
            dev_sector: a.dev_sector,
            generation: a.generation,
        }],
    };
    let k = Key::extent(9, 0, bucket_sectors, 1, KeyType::Extent, v.encode());
    e.transact(Durability::Lazy, |tx| {
        tx.put(BtreeId::Extents, k.clone());
        Ok(())
    })
    .unwrap();
    drop(a);
    e.checkpoint().unwrap();
    let info = e.bucket(b).unwrap();
    assert_eq!(info.generation, v.ptrs[0].generation, "bucket was reused");
    assert_eq!(
        (info.dirty_sectors, info.data_type),
        (bucket_sectors, DataType::User)
    );
}
