//! Model test: random inserts, deletes, overwrites, extent writes and range
//! scans on several b-trees, with close/reopen between steps, compared with
//! simple in-memory models (including snapshot-filtered reads against a
//! model of the snapshot tree).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use arborfs::device::{Device, MemDevice};
use arborfs::{BtreeId, Durability, Engine, EngineOptions, Key, KeyType, Pos, SnapshotAncestry};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

/// A fixed snapshot tree: 100 is the root; 90 and 80 its children; 70 and 60
/// under 90; 50 under 80. Ancestors have larger ids.
struct Snapshots;

const SNAPSHOTS: [u32; 6] = [100, 90, 80, 70, 60, 50];

fn parent(id: u32) -> Option<u32> {
    match id {
        90 | 80 => Some(100),
        70 | 60 => Some(90),
        50 => Some(80),
        _ => None,
    }
}

impl SnapshotAncestry for Snapshots {
    fn is_ancestor_or_self(&self, ancestor: u32, id: u32) -> bool {
        let mut cur = Some(id);
        while let Some(c) = cur {
            if c == ancestor {
                return true;
            }
            cur = parent(c);
        }
        false
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Point key in the inodes btree (snapshot-aware), value byte.
    Put {
        inode: u64,
        offset: u64,
        snap: u32,
        val: u8,
        len: usize,
    },
    Delete {
        inode: u64,
        offset: u64,
        snap: u32,
    },
    Whiteout {
        inode: u64,
        offset: u64,
        snap: u32,
    },
    /// Extent `[start, start+len)` of inode in snapshot 100, value tag.
    Extent {
        inode: u64,
        start: u64,
        len: u32,
        tag: u8,
    },
    Punch {
        inode: u64,
        start: u64,
        len: u64,
    },
    /// Plain keys in the xattrs btree, to have several trees in one transaction.
    Xattr {
        n: u64,
        val: u8,
    },
    Commit,
    Checkpoint,
    Reopen,
    /// `sync`, then drop the engine without closing it (a crash after the
    /// sync): everything committed must come back through journal replay.
    CrashReopen,
    Scan {
        inode: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let snap = prop::sample::select(SNAPSHOTS.to_vec());
    prop_oneof![
        6 => (0..4u64, 0..300u64, snap.clone(), any::<u8>(), 0..200usize)
            .prop_map(|(inode, offset, snap, val, len)| Op::Put { inode, offset, snap, val, len }),
        2 => (0..4u64, 0..300u64, snap.clone()).prop_map(|(inode, offset, snap)| Op::Delete { inode, offset, snap }),
        1 => (0..4u64, 0..300u64, snap).prop_map(|(inode, offset, snap)| Op::Whiteout { inode, offset, snap }),
        4 => (0..3u64, 0..2000u64, 1..300u32, any::<u8>()).prop_map(|(inode, start, len, tag)| Op::Extent { inode, start, len, tag }),
        1 => (0..3u64, 0..2000u64, 1..500u64).prop_map(|(inode, start, len)| Op::Punch { inode, start, len }),
        2 => (0..500u64, any::<u8>()).prop_map(|(n, val)| Op::Xattr { n, val }),
        3 => Just(Op::Commit),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Reopen),
        1 => Just(Op::CrashReopen),
        1 => (0..4u64).prop_map(|inode| Op::Scan { inode }),
    ]
}

#[derive(Default, Clone)]
struct Model {
    /// (inode, offset, snapshot) -> Some(value) or None for a whiteout.
    points: BTreeMap<(u64, u64, u32), Option<Vec<u8>>>,
    /// (inode, sector) -> tag, for snapshot 100 of the extents btree.
    sectors: BTreeMap<(u64, u64), u8>,
    xattrs: BTreeMap<u64, Vec<u8>>,
}

impl Model {
    fn visible(&self, snapshot: u32) -> Vec<(u64, u64, u32, Vec<u8>)> {
        let mut out = Vec::new();
        type Versions<'a> = Vec<(u32, &'a Option<Vec<u8>>)>;
        let mut groups: BTreeMap<(u64, u64), Versions> = BTreeMap::new();
        for ((i, o, s), v) in &self.points {
            groups.entry((*i, *o)).or_default().push((*s, v));
        }
        for ((i, o), mut vs) in groups {
            vs.sort_by_key(|(s, _)| *s);
            if let Some((s, v)) = vs
                .into_iter()
                .find(|(s, _)| Snapshots.is_ancestor_or_self(*s, snapshot))
                && let Some(v) = v
            {
                out.push((i, o, s, v.clone()));
            }
        }
        out
    }
}

fn open(dev: &Arc<MemDevice>) -> Engine {
    Engine::open(
        dev.clone() as Arc<dyn Device>,
        EngineOptions {
            background: false,
            cache_bytes: 1 << 20,
            read_only: false,
        },
    )
    .expect("open")
}

fn check(e: &Engine, m: &Model) {
    // Raw contents of the inodes btree.
    let raw: Vec<_> = e
        .iter(BtreeId::Inodes, Pos::MIN, Pos::MAX)
        .map(|k| k.unwrap())
        .collect();
    assert_eq!(raw.len(), m.points.len(), "inodes key count");
    for (k, ((i, o, s), v)) in raw.iter().zip(&m.points) {
        assert_eq!(k.pos, Pos::new(*i, *o, *s));
        match v {
            Some(v) => assert_eq!((&k.value, k.ty), (v, KeyType::Blob)),
            None => assert!(k.is_whiteout()),
        }
    }
    // Snapshot-filtered views.
    for snap in SNAPSHOTS {
        let got: Vec<_> = e
            .iter_snapshot(BtreeId::Inodes, Pos::MIN, Pos::MAX, snap, &Snapshots)
            .map(|k| {
                let k = k.unwrap();
                (k.pos.inode, k.pos.offset, k.pos.snapshot, k.value)
            })
            .collect();
        assert_eq!(got, m.visible(snap), "snapshot {snap} view");
    }
    // Extents: expand to sectors, check no overlaps, compare.
    let mut sectors = BTreeMap::new();
    let mut last_end: BTreeMap<u64, u64> = BTreeMap::new();
    for k in e.iter(BtreeId::Extents, Pos::MIN, Pos::MAX) {
        let k = k.unwrap();
        assert_eq!(k.pos.snapshot, 100);
        let prev = last_end.insert(k.pos.inode, k.end()).unwrap_or(0);
        assert!(k.start() >= prev, "overlapping extents at {:?}", k.pos);
        for s in k.start()..k.end() {
            sectors.insert((k.pos.inode, s), k.value[0]);
        }
    }
    assert_eq!(sectors, m.sectors, "extent contents");
    // Extent lookup by sector.
    for (&(inode, s), &tag) in m.sectors.iter().step_by(97) {
        let k = e
            .extent_at(BtreeId::Extents, inode, 100, s)
            .unwrap()
            .expect("extent present");
        assert!(k.start() <= s && s < k.end());
        assert_eq!(k.value[0], tag);
    }
    let x: BTreeMap<u64, Vec<u8>> = e
        .iter(BtreeId::Xattrs, Pos::MIN, Pos::MAX)
        .map(|k| k.unwrap())
        .map(|k| (k.pos.offset, k.value))
        .collect();
    assert_eq!(x, m.xattrs);
}

fn run(ops: Vec<Op>) {
    let dev = Arc::new(MemDevice::new(32 << 20));
    Engine::format(dev.clone(), &common::small_format()).unwrap();
    let mut e = open(&dev);
    let mut committed = Model::default();
    let mut pending = committed.clone();
    let mut tx_ops: Vec<Op> = Vec::new();
    let flush = |e: &Engine, tx_ops: &mut Vec<Op>| {
        let mut tx = e.begin();
        for op in tx_ops.drain(..) {
            match op {
                Op::Put {
                    inode,
                    offset,
                    snap,
                    val,
                    len,
                } => tx.put(
                    BtreeId::Inodes,
                    Key::blob(Pos::new(inode, offset, snap), vec![val; len]),
                ),
                Op::Delete {
                    inode,
                    offset,
                    snap,
                } => tx.delete(BtreeId::Inodes, Pos::new(inode, offset, snap)),
                Op::Whiteout {
                    inode,
                    offset,
                    snap,
                } => tx.put(
                    BtreeId::Inodes,
                    Key::whiteout(Pos::new(inode, offset, snap)),
                ),
                Op::Extent {
                    inode,
                    start,
                    len,
                    tag,
                } => tx.put(
                    BtreeId::Extents,
                    Key::extent(inode, start, len, 100, KeyType::Blob, vec![tag; 8]),
                ),
                Op::Punch { inode, start, len } => {
                    tx.delete_range(BtreeId::Extents, inode, 100, start, start + len)
                }
                Op::Xattr { n, val } => {
                    tx.put(BtreeId::Xattrs, Key::blob(Pos::new(7, n, 0), vec![val; 3]))
                }
                _ => unreachable!(),
            }
        }
        tx.commit(Durability::Lazy).unwrap();
    };
    for op in ops {
        match op {
            Op::Put {
                inode,
                offset,
                snap,
                val,
                len,
            } => {
                pending
                    .points
                    .insert((inode, offset, snap), Some(vec![val; len]));
                tx_ops.push(op);
            }
            Op::Delete {
                inode,
                offset,
                snap,
            } => {
                pending.points.remove(&(inode, offset, snap));
                tx_ops.push(op);
            }
            Op::Whiteout {
                inode,
                offset,
                snap,
            } => {
                pending.points.insert((inode, offset, snap), None);
                tx_ops.push(op);
            }
            Op::Extent {
                inode,
                start,
                len,
                tag,
            } => {
                for s in start..start + len as u64 {
                    pending.sectors.insert((inode, s), tag);
                }
                tx_ops.push(op);
            }
            Op::Punch { inode, start, len } => {
                for s in start..start + len {
                    pending.sectors.remove(&(inode, s));
                }
                tx_ops.push(op);
            }
            Op::Xattr { n, val } => {
                pending.xattrs.insert(n, vec![val; 3]);
                tx_ops.push(op);
            }
            Op::Commit => {
                flush(&e, &mut tx_ops);
                committed = pending.clone();
            }
            Op::Checkpoint => e.checkpoint().unwrap(),
            Op::Reopen => {
                flush(&e, &mut tx_ops);
                committed = pending.clone();
                e.close().unwrap();
                e = open(&dev);
                check(&e, &committed);
            }
            Op::CrashReopen => {
                flush(&e, &mut tx_ops);
                committed = pending.clone();
                e.sync().unwrap();
                drop(e);
                e = open(&dev);
                check(&e, &committed);
            }
            Op::Scan { inode } => {
                let got: Vec<_> = e
                    .iter(
                        BtreeId::Inodes,
                        Pos::new(inode, 0, 0),
                        Pos::new(inode, u64::MAX, u32::MAX),
                    )
                    .map(|k| k.unwrap().pos)
                    .collect();
                let want: Vec<_> = committed
                    .points
                    .range((inode, 0, 0)..=(inode, u64::MAX, u32::MAX))
                    .map(|((i, o, s), _)| Pos::new(*i, *o, *s))
                    .collect();
                assert_eq!(got, want);
            }
        }
    }
    flush(&e, &mut tx_ops);
    check(&e, &pending);
    e.close().unwrap();
    let e = open(&dev);
    check(&e, &pending);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_model(ops in prop::collection::vec(op(), 1..400)) {
        run(ops);
    }
}

#[test]
fn engine_matches_model_long_run() {
    // One long deterministic run that grows trees to several levels.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let ops = prop::collection::vec(op(), 3000..3001)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    run(ops);
}
