//! Every on-disk decoder never panics on arbitrary bytes and round-trips
//! valid values; an engine opened on garbage (or on a valid image with a
//! range overwritten by garbage) returns an error or works, never panics or
//! hangs.

mod common;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use arborfs::alloc::alloc_format::{
    AllocValue, COUNTERS, DataType, decode_counters, encode_counters,
};
use arborfs::alloc::extent_format::{ExtentPtr, ExtentValue};
use arborfs::btree::node::{Node, Val, node_magic};
use arborfs::btree::node_format::{
    BSET_HEADER_BYTES, BsetHeader, BtreePtr, decode_bset_header, encode_bset_header,
};
use arborfs::device::{Device, MemDevice};
use arborfs::journal::journal_format::{
    EntryHeader, JOURNAL_VERSION, OFF_CSUM, decode_item, decode_items, encode_item, entry_csum,
    entry_total_bytes, magic_for,
};
use arborfs::journal::{JournalItem, decode_entry};
use arborfs::key::key_format::{decode_key, encode_key, encoded_len};
use arborfs::sb::{CleanState, FormatOptions, Superblock};
use arborfs::{BtreeId, Durability, Engine, EngineOptions, Key, KeyType, Pos};
use proptest::prelude::*;

// ---------------------------------------------------------------- strategies

fn pos() -> impl Strategy<Value = Pos> {
    prop_oneof![
        (0..8u64, 0..1000u64, 0..4u32).prop_map(|(i, o, s)| Pos::new(i, o, s)),
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(i, o, s)| Pos::new(i, o, s)),
    ]
}

fn key_type() -> impl Strategy<Value = KeyType> {
    (0..15u8).prop_map(|t| KeyType::from_u8(t).unwrap())
}

fn key() -> impl Strategy<Value = Key> {
    (
        pos(),
        any::<u32>(),
        key_type(),
        prop::collection::vec(any::<u8>(), 0..100),
    )
        .prop_map(|(pos, size, ty, value)| Key {
            size: (size as u64).min(pos.offset) as u32,
            pos,
            ty,
            value,
        })
}

fn btree_id() -> impl Strategy<Value = BtreeId> {
    (0..BtreeId::COUNT as u8).prop_map(|b| BtreeId::from_u8(b).unwrap())
}

fn btree_ptr() -> impl Strategy<Value = BtreePtr> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u8>(),
        any::<u8>(),
    )
        .prop_map(|(offset, seq, sectors, generation, level)| BtreePtr {
            offset,
            seq,
            sectors,
            generation,
            level,
        })
}

fn journal_item() -> impl Strategy<Value = JournalItem> {
    prop_oneof![
        (btree_id(), key()).prop_map(|(btree, key)| JournalItem::Put { btree, key }),
        (btree_id(), pos()).prop_map(|(btree, pos)| JournalItem::Delete { btree, pos }),
        (btree_id(), prop::option::of(btree_ptr()))
            .prop_map(|(btree, ptr)| JournalItem::Root { btree, ptr }),
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// Arbitrary bytes, or a valid encoding with a few bytes changed.
fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = valid.len().max(1);
    (prop::collection::vec((0..n, any::<u8>()), 0..4), 0..=n).prop_map(move |(edits, cut)| {
        let mut v = valid.clone();
        for (i, b) in edits {
            if i < v.len() {
                v[i] = b;
            }
        }
        v.truncate(cut);
        v
    })
}

// ---------------------------------------------------------------- keys

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decode_key_never_panics(b in bytes(200)) {
        if let Ok((k, used)) = decode_key(&b) {
            prop_assert!(used <= b.len());
            prop_assert_eq!(used, encoded_len(k.value.len()));
        }
    }

    #[test]
    fn key_round_trips(k in key()) {
        let mut out = Vec::new();
        encode_key(&mut out, &k);
        prop_assert_eq!(out.len(), encoded_len(k.value.len()));
        let (back, used) = decode_key(&out).unwrap();
        prop_assert_eq!(used, out.len());
        prop_assert_eq!(back, k);
    }

    #[test]
    fn decode_mutated_key_never_panics(b in key().prop_flat_map(|k| {
        let mut out = Vec::new();
        encode_key(&mut out, &k);
        mutated(out)
    })) {
        let _ = decode_key(&b);
    }
}

// ---------------------------------------------------------------- nodes

fn bset_header() -> impl Strategy<Value = BsetHeader> {
    (
        (
            any::<u64>(),
            any::<u32>(),
            any::<u8>(),
            any::<u8>(),
            any::<u16>(),
        ),
        (
            any::<u64>(),
            any::<u64>(),
            pos(),
            pos(),
            any::<u32>(),
            any::<u32>(),
        ),
    )
        .prop_map(
            |(
                (magic, csum, btree, level, bset_index),
                (node_seq, journal_seq, min, max, nkeys, bset_bytes),
            )| {
                BsetHeader {
                    magic,
                    csum,
                    btree,
                    level,
                    bset_index,
                    node_seq,
                    journal_seq,
                    min,
                    max,
                    nkeys,
                    bset_bytes,
                }
            },
        )
}

/// A valid encoded node (one full bset, possibly a delta), with its pointer.
fn valid_node() -> impl Strategy<Value = (Vec<u8>, u64, BtreePtr, BtreeId, Vec<(Pos, Val)>)> {
    (
        btree_id(),
        any::<[u8; 16]>(),
        prop::collection::vec((0..50u64, 1..200u64, 0..3u32, bytes(40)), 0..40),
        prop::collection::vec(
            (0..50u64, 1..200u64, 0..3u32, prop::option::of(bytes(20))),
            0..10,
        ),
        any::<u64>(),
    )
        .prop_map(|(btree, uuid, first, second, seq)| {
            let magic = node_magic(&uuid);
            let ptr = BtreePtr {
                offset: 1 << 20,
                seq,
                sectors: 0,
                generation: 0,
                level: 0,
            };
            let val = |v: Vec<u8>| Val {
                size: 1,
                ty: KeyType::Blob,
                value: v.into(),
            };
            let mut n = Node::new_empty(btree, 0, Pos::MIN, Pos::MAX, ptr);
            for (i, o, s, v) in first {
                n.insert(Pos::new(i, o, s), val(v));
            }
            let mut disk = n.encode_full(magic);
            if !second.is_empty() {
                // As after a full write: changes from here on go in a delta.
                n.dirty.clear();
                n.needs_full_write = false;
                for (i, o, s, v) in second {
                    let p = Pos::new(i, o, s);
                    match v {
                        Some(v) => {
                            n.insert(p, val(v));
                        }
                        None => {
                            n.remove(&p);
                        }
                    }
                }
                if !n.dirty.is_empty() {
                    disk.extend(n.encode_delta(magic, 1));
                }
            }
            let mut p = ptr;
            p.sectors = (disk.len() / 512) as u32;
            let keys = n.keys.into_iter().collect();
            (disk, magic, p, btree, keys)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn bset_header_round_trips(h in bset_header()) {
        let mut out = vec![0u8; BSET_HEADER_BYTES];
        encode_bset_header(&h, &mut out);
        prop_assert_eq!(decode_bset_header(&out), Some(h));
        prop_assert_eq!(decode_bset_header(&out[..BSET_HEADER_BYTES - 1]), None);
    }

    #[test]
    fn decode_bset_header_never_panics(b in bytes(200)) {
        let _ = decode_bset_header(&b);
    }

    #[test]
    fn btree_ptr_round_trips(p in btree_ptr(), junk in bytes(40)) {
        prop_assert_eq!(BtreePtr::decode(&p.encode()), Some(p));
        let _ = BtreePtr::decode(&junk);
    }

    #[test]
    fn node_decode_never_panics(
        buf in bytes(9000),
        magic in any::<u64>(),
        ptr in btree_ptr(),
        btree in btree_id(),
        min in pos(),
        max in pos(),
    ) {
        let _ = Node::decode(&buf, magic, ptr, btree, min, max);
    }

    #[test]
    fn node_round_trips((disk, magic, ptr, btree, keys) in valid_node()) {
        let n = Node::decode(&disk, magic, ptr, btree, Pos::MIN, Pos::MAX).unwrap();
        let got: Vec<(Pos, Val)> = n.keys.into_iter().collect();
        prop_assert_eq!(got, keys);
    }

    #[test]
    fn mutated_node_never_panics(
        (disk, magic, ptr, btree, keys, edits) in valid_node().prop_flat_map(|(d, m, p, b, k)| {
            let n = d.len();
            (Just(d), Just(m), Just(p), Just(b), Just(k),
             prop::collection::vec((0..n, any::<u8>()), 1..4))
        })
    ) {
        let mut bad = disk.clone();
        for (i, b) in edits {
            bad[i] = b;
        }
        match Node::decode(&bad, magic, ptr, btree, Pos::MIN, Pos::MAX) {
            Err(arborfs::Error::Corrupted { .. }) => {}
            Err(e) => prop_assert!(false, "untyped error {e}"),
            // only possible if the edits did not change anything checked
            Ok(n) => {
                let got: Vec<(Pos, Val)> = n.keys.into_iter().collect();
                prop_assert_eq!(got, keys);
            }
        }
    }
}

// ---------------------------------------------------------------- journal

fn encode_items(items: &[JournalItem]) -> Vec<u8> {
    let mut out = Vec::new();
    for it in items {
        encode_item(&mut out, it);
    }
    out
}

/// A valid padded entry as the journal writes it.
fn build_entry(uuid: &[u8; 16], seq: u64, offset: u64, items: &[JournalItem]) -> Vec<u8> {
    let payload = encode_items(items);
    let hdr = EntryHeader {
        magic: magic_for(uuid),
        csum: 0,
        version: JOURNAL_VERSION,
        seq,
        prev_seq: seq - 1,
        last_seq: seq,
        offset,
        payload_len: payload.len() as u32,
        item_count: items.len() as u32,
    };
    let mut buf = hdr.encode().to_vec();
    buf.extend_from_slice(&payload);
    buf.resize(entry_total_bytes(payload.len()) as usize, 0);
    let csum = entry_csum(uuid, &buf);
    buf[OFF_CSUM..OFF_CSUM + 4].copy_from_slice(&csum.to_le_bytes());
    buf
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn journal_item_round_trips(items in prop::collection::vec(journal_item(), 0..20)) {
        let payload = encode_items(&items);
        prop_assert_eq!(decode_items(&payload, items.len() as u32).unwrap(), items.clone());
        if let Some(first) = items.first() {
            let (back, used) = decode_item(&payload).unwrap();
            prop_assert_eq!(&back, first);
            prop_assert!(used <= payload.len());
        }
    }

    #[test]
    fn journal_decoders_never_panic(b in bytes(600), count in any::<u32>()) {
        let _ = decode_item(&b);
        let _ = decode_items(&b, count);
        let _ = decode_items(&b, count % 8);
        let _ = EntryHeader::decode(&b);
        let _ = decode_entry(&[3; 16], &b, 0, 1 << 20);
    }

    #[test]
    fn mutated_journal_items_never_panic(b in prop::collection::vec(journal_item(), 1..6)
        .prop_flat_map(|items| mutated(encode_items(&items)))) {
        let _ = decode_item(&b);
        for n in 0..6 {
            let _ = decode_items(&b, n);
        }
    }

    #[test]
    fn entry_header_round_trips(
        seq in 1..u64::MAX, prev in any::<u64>(), last in any::<u64>(), offset in any::<u64>(),
        payload_len in any::<u32>(), item_count in any::<u32>(), csum in any::<u32>(), magic in any::<u64>()
    ) {
        let h = EntryHeader {
            magic, csum, version: JOURNAL_VERSION, seq, prev_seq: prev, last_seq: last,
            offset, payload_len, item_count,
        };
        prop_assert_eq!(EntryHeader::decode(&h.encode()), Some(h));
    }

    #[test]
    fn entry_round_trips(
        uuid in any::<[u8; 16]>(),
        seq in 1..1_000_000u64,
        block in 0..16u64,
        items in prop::collection::vec(journal_item(), 0..20),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
    ) {
        let offset = block * 4096;
        let region = 1 << 20;
        let e = build_entry(&uuid, seq, offset, &items);
        let (hdr, back) = decode_entry(&uuid, &e, offset, region).unwrap();
        prop_assert_eq!(hdr.seq, seq);
        prop_assert_eq!(back, items.clone());
        // wrong place, wrong filesystem, truncated
        prop_assert!(decode_entry(&uuid, &e, offset + 4096, region).is_err());
        let mut other = uuid;
        other[0] ^= 1;
        prop_assert!(decode_entry(&other, &e, offset, region).is_err());
        prop_assert!(decode_entry(&uuid, &e[..e.len() - 1], offset, region).is_err());
        // any change is detected
        let mut bad = e.clone();
        for (i, b) in &edits {
            let at = i.index(bad.len());
            bad[at] = *b;
        }
        if bad != e {
            prop_assert!(decode_entry(&uuid, &bad, offset, region).is_err());
        }
    }
}

// ---------------------------------------------------------------- values

fn extent_value() -> impl Strategy<Value = ExtentValue> {
    (
        0..=2u8,
        0..=2u8,
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        prop::collection::vec((any::<u64>(), any::<u8>()), 1..=4),
    )
        .prop_map(
            |(csum_type, compression, stored, unc, offset, csum, ptrs)| ExtentValue {
                csum_type,
                compression,
                stored_sectors: stored,
                uncompressed_sectors: unc,
                offset,
                csum,
                ptrs: ptrs
                    .into_iter()
                    .map(|(dev_sector, generation)| ExtentPtr {
                        dev_sector,
                        generation,
                    })
                    .collect(),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn alloc_value_round_trips(
        generation in any::<u8>(), dt in 0..5u8, dirty in any::<u32>(),
        ne in any::<u64>(), e in any::<u64>(), junk in bytes(40),
    ) {
        let v = AllocValue {
            generation,
            data_type: DataType::from_u8(dt).unwrap(),
            dirty_sectors: dirty,
            journal_seq_nonempty: ne,
            journal_seq_empty: e,
        };
        prop_assert_eq!(AllocValue::decode(&v.encode()), Some(v));
        let _ = AllocValue::decode(&junk);
    }

    #[test]
    fn counters_round_trip(c in any::<[i64; COUNTERS]>(), junk in bytes(64)) {
        prop_assert_eq!(decode_counters(&encode_counters(&c)), Some(c));
        let _ = decode_counters(&junk);
    }

    #[test]
    fn extent_value_round_trips(v in extent_value(), junk in bytes(120)) {
        prop_assert_eq!(ExtentValue::decode(&v.encode()), Some(v.clone()));
        let _ = ExtentValue::decode(&junk);
    }
}

// ---------------------------------------------------------------- superblock

fn superblock() -> impl Strategy<Value = Superblock> {
    (
        (16..=20u32, 14..=20u32, 4..=64u64, any::<[u8; 16]>()),
        (
            any::<u64>(),
            prop::option::of((1..1000u64, 1..1000u64, 0..64u64, any::<u64>())),
        ),
        prop::collection::vec(
            prop::option::of((0..64u64, 1..=32u32, any::<u8>(), any::<u64>(), 0..4u8)),
            BtreeId::COUNT,
        ),
    )
        .prop_filter_map(
            "invalid geometry",
            |((bucket_shift, node_shift, mib, uuid), (seq, clean), roots)| {
                let opts = FormatOptions {
                    bucket_size: 1 << bucket_shift,
                    node_size: 1 << node_shift.min(bucket_shift),
                    uuid: Some(uuid),
                    ..Default::default()
                };
                let mut sb = Superblock::new(mib << 20, &opts).ok()?;
                sb.seq = seq;
                if let Some((last, more, off_blocks, _)) = clean {
                    let data_start = sb.bucket_offset(sb.first_data_bucket());
                    let node_sectors = sb.node_size / 512;
                    let mut r = [None; BtreeId::COUNT];
                    for (slot, root) in r.iter_mut().zip(roots) {
                        *slot = root.map(|(blk, sectors, generation, seq, level)| BtreePtr {
                            offset: data_start + blk * 4096,
                            seq,
                            sectors: sectors.min(node_sectors),
                            generation,
                            level,
                        });
                    }
                    sb.clean = Some(CleanState {
                        journal_next_seq: last + more,
                        journal_next_offset: (off_blocks * 4096).min(sb.journal_len()),
                        journal_last_seq: last,
                        roots: r,
                    });
                }
                sb.validate().is_ok().then_some(sb)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn superblock_round_trips(sb in superblock()) {
        let b = sb.encode();
        prop_assert_eq!(Superblock::decode(&b, 4096).unwrap(), sb);
    }

    #[test]
    fn superblock_decode_never_panics(b in bytes(5000)) {
        let _ = Superblock::decode(&b, 0);
    }

    #[test]
    fn mutated_superblock_never_panics(b in superblock().prop_flat_map(|sb| mutated(sb.encode().to_vec()))) {
        let _ = Superblock::decode(&b, 0);
    }
}

// ---------------------------------------------------------------- whole engine

/// Runs `f` on another thread; fails if it panics or takes longer than `secs`.
fn no_panic_no_hang(what: String, secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => h.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: still running after {secs} s"),
    }
}

fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u8
        })
        .collect()
}

/// Opens, reads every b-tree, and if all went well commits and closes.
/// Returns how far it got: 0 open failed, 1 a read failed, 2 the commit or
/// close failed, 3 everything worked.
fn exercise(dev: Arc<MemDevice>) -> u8 {
    let opts = EngineOptions {
        background: false,
        ..Default::default()
    };
    let Ok(e) = Engine::open(dev as Arc<dyn Device>, opts) else {
        return 0;
    };
    for b in BtreeId::ALL {
        for k in e.iter(b, Pos::MIN, Pos::MAX) {
            if k.is_err() {
                return 1;
            }
        }
    }
    let mut tx = e.begin();
    tx.put(BtreeId::Xattrs, Key::blob(Pos::new(5, 5, 0), vec![5]));
    match tx.commit(Durability::Durable).and_then(|_| e.close()) {
        Ok(()) => 3,
        Err(_) => 2,
    }
}

const DEV_BYTES: u64 = 4 << 20;

#[test]
fn engine_on_garbage_never_panics() {
    for seed in 0..6u64 {
        let img = if seed.is_multiple_of(2) {
            garbage(seed, DEV_BYTES as usize)
        } else {
            // mostly zeros with a few garbage blocks where the superblocks live
            let mut v = vec![0u8; DEV_BYTES as usize];
            v[4096..8192].copy_from_slice(&garbage(seed, 4096));
            v
        };
        no_panic_no_hang(format!("garbage device, seed {seed}"), 60, move || {
            let dev = Arc::new(MemDevice::from_bytes(img));
            let opts = EngineOptions {
                background: false,
                ..Default::default()
            };
            assert!(Engine::open(dev as Arc<dyn Device>, opts).is_err());
        });
    }
}

/// A valid image (clean or not) with a random range overwritten by garbage.
#[test]
fn engine_on_partly_overwritten_image_never_panics() {
    let base = |clean: bool| {
        let dev = Arc::new(MemDevice::new(DEV_BYTES));
        Engine::format(dev.clone(), &common::small_format()).unwrap();
        let e = Engine::open(
            dev.clone() as Arc<dyn Device>,
            EngineOptions {
                background: false,
                ..Default::default()
            },
        )
        .unwrap();
        for i in 0..400u64 {
            let mut tx = e.begin();
            tx.put(
                BtreeId::Inodes,
                Key::new(Pos::new(i, 0, 0), KeyType::Inode, vec![i as u8; 50]),
            );
            tx.put(
                BtreeId::Extents,
                Key::extent(1, i * 4, 3, 1, KeyType::Blob, vec![1; 8]),
            );
            tx.commit(Durability::Lazy).unwrap();
            if i == 200 {
                e.checkpoint().unwrap();
            }
        }
        if clean {
            e.close().unwrap();
        } else {
            e.sync().unwrap();
        }
        dev.to_bytes()
    };
    let images = [base(true), base(false)];
    let outcomes = Arc::new(std::sync::Mutex::new([0usize; 4]));
    let mut s = 12345u64;
    for case in 0..200u64 {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(case);
        let img = &images[(case % 2) as usize];
        let len = 1 + ((s >> 20) % 65536) as usize;
        // bias towards the metadata at the start of the device
        let start = if case.is_multiple_of(3) {
            ((s >> 8) % (DEV_BYTES - len as u64)) as usize
        } else {
            ((s >> 8) % (1 << 20)) as usize
        };
        let mut img = img.clone();
        img[start..start + len].copy_from_slice(&garbage(s, len));
        no_panic_no_hang(format!("case {case}: garbage at {start}+{len}"), 60, {
            let outcomes = outcomes.clone();
            move || {
                let r = exercise(Arc::new(MemDevice::from_bytes(img)));
                outcomes.lock().unwrap()[r as usize] += 1;
            }
        });
    }
    eprintln!(
        "overwritten images: [open failed, read failed, commit/close failed, worked] = {:?}",
        outcomes.lock().unwrap()
    );
}

// ---------------------------------------------------------------- fs values

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Inode, directory entry, xattr and POSIX ACL values (what fsck and
    /// every lookup decode from the b-trees) never panic on arbitrary bytes.
    #[test]
    fn fs_value_decoders_never_panic(b in bytes(300)) {
        use arborfs::fs::acl::Acl;
        use arborfs::fs::dirent_format::DirentValue;
        use arborfs::fs::inode_format::InodeValue;
        use arborfs::fs::xattr_format::XattrValue;
        let _ = InodeValue::decode(&b);
        let _ = DirentValue::decode(&b);
        let _ = XattrValue::decode(&b);
        if let Ok(acl) = Acl::decode(&b) {
            // what decodes is valid: it encodes back to what was read
            // (named entries keep their ids, the others carry none)
            prop_assert_eq!(Acl::decode(&acl.encode()).unwrap(), acl.clone());
            prop_assert!(acl.mode_bits() <= 0o777);
        }
    }

    /// A valid ACL built from arbitrary named entries round-trips, and the
    /// mode it stands for follows its owner, mask and other entries.
    #[test]
    fn acls_round_trip(
        owner in 0u16..8, group in 0u16..8, other in 0u16..8, mask in 0u16..8,
        users in proptest::collection::btree_map(0u32..5000, 0u16..8, 0..6),
        groups in proptest::collection::btree_map(0u32..5000, 0u16..8, 0..6),
    ) {
        use arborfs::fs::acl::{ACL_GROUP, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER, ACL_USER, ACL_USER_OBJ, Acl};
        let mut b = 2u32.to_le_bytes().to_vec();
        let mut push = |tag: u16, perm: u16, id: u32| {
            b.extend_from_slice(&tag.to_le_bytes());
            b.extend_from_slice(&perm.to_le_bytes());
            b.extend_from_slice(&id.to_le_bytes());
        };
        push(ACL_USER_OBJ, owner, u32::MAX);
        for (&id, &p) in &users { push(ACL_USER, p, id); }
        push(ACL_GROUP_OBJ, group, u32::MAX);
        for (&id, &p) in &groups { push(ACL_GROUP, p, id); }
        let named = !users.is_empty() || !groups.is_empty();
        if named { push(ACL_MASK, mask, u32::MAX); }
        push(ACL_OTHER, other, u32::MAX);
        let acl = Acl::decode(&b).unwrap();
        prop_assert_eq!(acl.encode(), b);
        let g = if named { mask } else { group };
        prop_assert_eq!(acl.mode_bits(), (owner as u32) << 6 | (g as u32) << 3 | other as u32);
        prop_assert_eq!(acl.is_minimal(), !named);
    }
}
