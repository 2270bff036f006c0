//! Media corruption: flipping a bit anywhere in a b-tree node, a journal
//! entry or a superblock copy gives a typed [`Error::Corrupted`] (or falls
//! back to a good copy), never a panic and never wrong data.
//!
//! * Nodes: a small filesystem is built and closed cleanly; every node
//!   reachable from the clean roots is located by walking the trees. For
//!   every byte of every bset header and a stride through the rest of the
//!   node a bit is flipped, the engine is opened and every b-tree iterated:
//!   either `Corrupted` comes back, or the contents are exactly the original.
//! * Journal: the filesystem is left unclean (synced, then dropped without
//!   `close`), and bits are flipped in every journal entry: either open
//!   fails with `Corrupted`, or the state is that after some prefix of the
//!   committed transactions.
//! * Superblock: a flip in either copy falls back to the other.

mod common;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use arborfs::btree::node::{Node, node_magic};
use arborfs::btree::node_format::{BSET_HEADER_BYTES, BtreePtr, decode_bset_header};
use arborfs::device::{Device, MemDevice};
use arborfs::journal::journal_format::{EntryHeader, HEADER_BYTES, JOURNAL_BLOCK};
use arborfs::sb::{SB_BYTES, SB_PRIMARY_OFFSET, Superblock, backup_offset};
use arborfs::{BtreeId, Durability, Engine, EngineOptions, Error, Key, KeyType, Pos};

const DEV_BYTES: u64 = 4 << 20;
const UUID: [u8; 16] = *b"corruption-test!";

type Contents = BTreeMap<BtreeId, Vec<Key>>;

fn opts(read_only: bool) -> EngineOptions {
    EngineOptions {
        background: false,
        read_only,
        ..Default::default()
    }
}

fn format(dev: &Arc<MemDevice>) {
    let mut f = common::small_format();
    f.uuid = Some(UUID);
    Engine::format(dev.clone(), &f).unwrap();
}

/// Every key of the given b-trees, or the first error.
fn contents(e: &Engine, trees: &[BtreeId]) -> Result<Contents, Error> {
    let mut out = BTreeMap::new();
    for &b in trees {
        let keys = e
            .iter(b, Pos::MIN, Pos::MAX)
            .collect::<Result<Vec<_>, _>>()?;
        out.insert(b, keys);
    }
    Ok(out)
}

const USER_TREES: [BtreeId; 3] = [BtreeId::Extents, BtreeId::Inodes, BtreeId::Xattrs];

/// Transaction `i` of the workload: inode keys, an extent, sometimes deletes.
fn tx_updates(tx: &mut arborfs::Transaction<'_>, i: u64) {
    for j in 0..8 {
        let n = i * 8 + j;
        tx.put(
            BtreeId::Inodes,
            Key::new(
                Pos::new(1 + n % 500, 0, 0),
                KeyType::Inode,
                vec![n as u8; 40 + (n % 50) as usize],
            ),
        );
    }
    tx.put(
        BtreeId::Extents,
        Key::extent(
            1 + i % 4,
            (i * 13) % 900,
            1 + (i % 40) as u32,
            1,
            KeyType::Blob,
            vec![i as u8; 16],
        ),
    );
    if i.is_multiple_of(3) {
        tx.delete(BtreeId::Inodes, Pos::new(1 + (i * 7) % 500, 0, 0));
        tx.put(BtreeId::Xattrs, Key::blob(Pos::new(2, i, 0), vec![1, 2, 3]));
    }
}

/// Opens (read-only, so the device is not changed) and reads everything.
/// `Ok(None)`: a `Corrupted` error was reported. Panics on other errors.
fn open_and_read(dev: &Arc<MemDevice>, what: &str) -> Option<Contents> {
    let r = catch_unwind(AssertUnwindSafe(|| {
        let e = match Engine::open(dev.clone() as Arc<dyn Device>, opts(true)) {
            Ok(e) => e,
            Err(Error::Corrupted { .. }) => return Ok(None),
            Err(err) => return Err(format!("open: {err}")),
        };
        match contents(&e, &BtreeId::ALL) {
            Ok(c) => Ok(Some(c)),
            Err(Error::Corrupted { .. }) => Ok(None),
            Err(err) => Err(format!("iteration: {err}")),
        }
    }));
    match r {
        Ok(Ok(c)) => c,
        Ok(Err(msg)) => panic!("{what}: untyped error: {msg}"),
        Err(_) => panic!("{what}: the engine panicked"),
    }
}

fn flip(dev: &MemDevice, offset: u64, bit: u32) {
    let mut b = [0u8];
    dev.read_at(&mut b, offset).unwrap();
    b[0] ^= 1 << (bit % 8);
    dev.write_at(&b, offset).unwrap();
}

/// A node found by walking the clean roots.
struct Located {
    btree: BtreeId,
    ptr: BtreePtr,
    /// Node-relative offsets where bsets start.
    bsets: Vec<usize>,
}

fn walk(
    dev: &MemDevice,
    magic: u64,
    btree: BtreeId,
    ptr: BtreePtr,
    min: Pos,
    max: Pos,
    out: &mut Vec<Located>,
) {
    let mut buf = vec![0u8; ptr.bytes() as usize];
    dev.read_at(&mut buf, ptr.offset).unwrap();
    let node = Node::decode(&buf, magic, ptr, btree, min, max).unwrap();
    let mut bsets = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let h = decode_bset_header(&buf[at..]).unwrap();
        bsets.push(at);
        at += (h.bset_bytes as usize).next_multiple_of(JOURNAL_BLOCK as usize);
    }
    out.push(Located { btree, ptr, bsets });
    let mut child_min = min;
    for (key, val) in &node.keys {
        if ptr.level > 0 {
            let child = Node::child_ptr(val).unwrap();
            walk(dev, magic, btree, child, child_min, *key, out);
            child_min = key.successor().unwrap_or(Pos::MAX);
        }
    }
}

/// A closed filesystem with multi-level trees and nodes of several bsets.
fn build_clean() -> (Arc<MemDevice>, Contents) {
    let dev = Arc::new(MemDevice::new(DEV_BYTES));
    format(&dev);
    let e = Engine::open(dev.clone() as Arc<dyn Device>, opts(false)).unwrap();
    for i in 0..90u64 {
        let mut tx = e.begin();
        tx_updates(&mut tx, i);
        tx.commit(Durability::Lazy).unwrap();
        if i % 30 == 29 {
            e.checkpoint().unwrap();
        }
    }
    e.close().unwrap();
    let e = Engine::open(dev.clone() as Arc<dyn Device>, opts(true)).unwrap();
    let c = contents(&e, &BtreeId::ALL).unwrap();
    drop(e);
    (dev, c)
}

#[test]
fn flipped_bits_in_btree_nodes_are_detected() {
    let (dev, original) = build_clean();
    let (sb, _) = Superblock::read(&*dev).unwrap();
    let clean = sb.clean.clone().expect("closed cleanly");
    let magic = node_magic(&sb.uuid);
    let mut nodes = Vec::new();
    for b in BtreeId::ALL {
        if let Some(root) = clean.roots[b.index()] {
            walk(&dev, magic, b, root, Pos::MIN, Pos::MAX, &mut nodes);
        }
    }
    assert!(
        nodes.iter().any(|n| n.ptr.level > 0),
        "want an interior node"
    );
    assert!(
        nodes.iter().any(|n| n.bsets.len() > 1),
        "want a node with appended bsets"
    );
    let (mut trials, mut detected) = (0, 0);
    for n in &nodes {
        let len = n.ptr.bytes() as usize;
        let mut offsets: Vec<usize> = n
            .bsets
            .iter()
            .flat_map(|&b| b..b + BSET_HEADER_BYTES)
            .collect();
        offsets.extend((0..len).step_by(29));
        offsets.push(len - 1);
        offsets.sort_unstable();
        offsets.dedup();
        for off in offsets {
            let at = n.ptr.offset + off as u64;
            flip(&dev, at, off as u32);
            let what = format!(
                "{} node at {} (level {}), byte {off}",
                n.btree.name(),
                n.ptr.offset,
                n.ptr.level
            );
            trials += 1;
            match open_and_read(&dev, &what) {
                None => detected += 1,
                Some(c) => assert!(c == original, "{what}: wrong data after a bit flip"),
            }
            flip(&dev, at, off as u32);
        }
    }
    eprintln!(
        "nodes: {} nodes, {trials} flips, {detected} detected as corrupted",
        nodes.len()
    );
    assert!(detected > trials / 2);
    // Untouched again: reads back the original.
    assert!(open_and_read(&dev, "restored") == Some(original));
}

#[test]
fn flipped_bits_in_a_superblock_copy_fall_back_to_the_other() {
    let (dev, original) = build_clean();
    let backup = backup_offset(DEV_BYTES);
    for copy in [SB_PRIMARY_OFFSET, backup] {
        let offsets = (0..512).chain((512..SB_BYTES).step_by(61));
        for off in offsets {
            let at = copy + off as u64;
            flip(&dev, at, off as u32);
            let what = format!("superblock copy at {copy}, byte {off}");
            let got = open_and_read(&dev, &what);
            assert!(got == Some(original.clone()), "{what}: no fallback");
            flip(&dev, at, off as u32);
        }
    }
}

/// Valid journal entries of the region: `(region offset, total bytes)`.
fn journal_entries(dev: &MemDevice, sb: &Superblock) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut off = 0;
    let mut block = vec![0u8; JOURNAL_BLOCK as usize];
    while off < sb.journal_len() {
        dev.read_at(&mut block, sb.journal_offset() + off).unwrap();
        if let Some(h) = EntryHeader::decode(&block)
            && h.check(&sb.uuid, off, sb.journal_len()).is_ok()
        {
            let mut bytes = vec![0u8; h.total_bytes() as usize];
            dev.read_at(&mut bytes, sb.journal_offset() + off).unwrap();
            if arborfs::journal::decode_entry(&sb.uuid, &bytes, off, sb.journal_len()).is_ok() {
                out.push((off, h.total_bytes()));
                off += h.total_bytes();
                continue;
            }
        }
        off += JOURNAL_BLOCK;
    }
    out
}

#[test]
fn flipped_bits_in_journal_entries_give_a_prefix_or_corrupted() {
    let dev = Arc::new(MemDevice::new(DEV_BYTES));
    format(&dev);
    let e = Engine::open(dev.clone() as Arc<dyn Device>, opts(false)).unwrap();
    let mut history = vec![contents(&e, &USER_TREES).unwrap()];
    for i in 0..60u64 {
        let mut tx = e.begin();
        tx_updates(&mut tx, i);
        let d = if i.is_multiple_of(5) {
            Durability::Durable
        } else {
            Durability::Lazy
        };
        tx.commit(d).unwrap();
        history.push(contents(&e, &USER_TREES).unwrap());
        if i == 20 {
            e.checkpoint().unwrap();
        } else if i.is_multiple_of(3) {
            e.sync().unwrap();
        }
    }
    e.sync().unwrap();
    let last = history.last().unwrap().clone();
    drop(e);
    // Dropping without close must not mark the filesystem clean.
    let (sb, _) = Superblock::read(&*dev).unwrap();
    assert!(sb.clean.is_none(), "Drop wrote a clean superblock");
    // Unflipped, the journal replays to the last commit.
    let e = Engine::open(dev.clone() as Arc<dyn Device>, opts(true)).unwrap();
    assert!(contents(&e, &USER_TREES).unwrap() == last);
    assert!(e.stats().journal_entries_replayed > 5);
    drop(e);

    let entries = journal_entries(&dev, &sb);
    assert!(entries.len() > 5, "entries: {entries:?}");
    let (mut trials, mut detected, mut older) = (0, 0, 0);
    for &(start, len) in &entries {
        let mut offsets: Vec<u64> = (0..HEADER_BYTES as u64).collect();
        offsets.extend((HEADER_BYTES as u64..len).step_by(23));
        offsets.push(len - 1);
        for off in offsets {
            let at = sb.journal_offset() + start + off;
            flip(&dev, at, off as u32);
            let what = format!("journal entry at region offset {start}, byte {off}");
            trials += 1;
            match open_and_read(&dev, &what) {
                None => detected += 1,
                Some(c) => {
                    let user: Contents = c
                        .into_iter()
                        .filter(|(b, _)| USER_TREES.contains(b))
                        .collect();
                    let k = history.iter().rposition(|h| *h == user);
                    assert!(
                        k.is_some(),
                        "{what}: state after replay is no prefix of the history"
                    );
                    if user != last {
                        older += 1;
                    }
                }
            }
            flip(&dev, at, off as u32);
        }
    }
    eprintln!(
        "journal: {} entries, {trials} flips, {detected} open/read errors, {older} older prefixes",
        entries.len()
    );
}
