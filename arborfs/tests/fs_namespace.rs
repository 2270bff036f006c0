//! Model test of the namespace: random mkdir/mknod/unlink/rmdir/rename
//! (with flags)/link/setxattr/removexattr over a few names, checked after
//! every step against an in-memory tree (names → inode, link counts, `..`,
//! xattrs), with close and reopen of the filesystem between steps.

use std::collections::BTreeMap;
use std::sync::Arc;

use arborfs::device::{Device, MemDevice};
use arborfs::engine::EngineOptions;
use arborfs::fs::{
    Caller, Fs, FsError, FsOptions, InodeNo, ROOT_INO, RenameFlags, S_IFREG, XattrSet,
};
use arborfs::sb::FormatOptions;
use proptest::prelude::*;

const NAMES: [&[u8]; 3] = [b"a", b"b", b"c"];
const XNAMES: [&[u8]; 3] = [b"user.x", b"user.y", b"trusted.z"];

#[derive(Clone, Debug)]
enum Op {
    Mkdir(usize, usize),
    Mknod(usize, usize),
    Unlink(usize, usize),
    Rmdir(usize, usize),
    /// dir, name, new dir, new name, flags (0 none, 1 noreplace, 2 exchange, 3 both)
    Rename(usize, usize, usize, usize, u8),
    Link(usize, usize, usize, usize),
    SetXattr(usize, usize, u8, u8),
    RemoveXattr(usize, usize),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let d = 0..8usize;
    let n = 0..NAMES.len();
    prop_oneof![
        3 => (d.clone(), n.clone()).prop_map(|(d, n)| Op::Mkdir(d, n)),
        3 => (d.clone(), n.clone()).prop_map(|(d, n)| Op::Mknod(d, n)),
        1 => (d.clone(), n.clone()).prop_map(|(d, n)| Op::Unlink(d, n)),
        1 => (d.clone(), n.clone()).prop_map(|(d, n)| Op::Rmdir(d, n)),
        5 => (d.clone(), n.clone(), d.clone(), n.clone(), 0..4u8).prop_map(|(a, b, c, e, f)| Op::Rename(a, b, c, e, f)),
        2 => (d.clone(), n.clone(), d.clone(), n.clone()).prop_map(|(a, b, c, e)| Op::Link(a, b, c, e)),
        2 => (0..16usize, 0..XNAMES.len(), 0..4u8, 0..3u8).prop_map(|(i, k, v, h)| Op::SetXattr(i, k, v, h)),
        1 => (0..16usize, 0..XNAMES.len()).prop_map(|(i, k)| Op::RemoveXattr(i, k)),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Clone, Debug)]
struct Node {
    dir: bool,
    entries: BTreeMap<Vec<u8>, usize>,
    parent: usize,
    nlink: u32,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    ino: InodeNo,
}

/// Model: node 0 is the root.
struct Model {
    nodes: BTreeMap<usize, Node>,
    next: usize,
    gone: Vec<InodeNo>,
}

type R = Result<(), &'static str>;

fn kind(e: &FsError) -> &'static str {
    match e {
        FsError::NotFound => "NotFound",
        FsError::Exists => "Exists",
        FsError::NotDir => "NotDir",
        FsError::IsDir => "IsDir",
        FsError::NotEmpty => "NotEmpty",
        FsError::Invalid(_) => "Invalid",
        FsError::NotPermitted => "NotPermitted",
        FsError::NoAttr => "NoAttr",
        other => panic!("unexpected error {other:?}"),
    }
}

impl Model {
    fn new() -> Model {
        let root = Node {
            dir: true,
            entries: BTreeMap::new(),
            parent: 0,
            nlink: 2,
            xattrs: BTreeMap::new(),
            ino: ROOT_INO,
        };
        Model {
            nodes: BTreeMap::from([(0, root)]),
            next: 1,
            gone: Vec::new(),
        }
    }

    fn dirs(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.dir)
            .map(|(&i, _)| i)
            .collect()
    }

    fn pick_dir(&self, i: usize) -> usize {
        let d = self.dirs();
        d[i % d.len()]
    }

    fn pick_node(&self, i: usize) -> usize {
        let ids: Vec<usize> = self.nodes.keys().copied().collect();
        ids[i % ids.len()]
    }

    fn lookup(&self, d: usize, n: &[u8]) -> Option<usize> {
        self.nodes[&d].entries.get(n).copied()
    }

    fn is_ancestor(&self, anc: usize, mut d: usize) -> bool {
        loop {
            if d == anc {
                return true;
            }
            if d == 0 {
                return false;
            }
            d = self.nodes[&d].parent;
        }
    }

    fn create(&mut self, d: usize, n: &[u8], dir: bool, ino: InodeNo) -> usize {
        let id = self.next;
        self.next += 1;
        let node = Node {
            dir,
            entries: BTreeMap::new(),
            parent: d,
            nlink: if dir { 2 } else { 1 },
            xattrs: BTreeMap::new(),
            ino,
        };
        self.nodes.insert(id, node);
        self.nodes
            .get_mut(&d)
            .unwrap()
            .entries
            .insert(n.to_vec(), id);
        id
    }

    /// Drops one name of `id`; forgets it at zero.
    fn drop_link(&mut self, id: usize) {
        let node = self.nodes.get_mut(&id).unwrap();
        if node.dir {
            node.nlink = 0;
        } else {
            node.nlink -= 1;
        }
        if node.nlink == 0 {
            let n = self.nodes.remove(&id).unwrap();
            self.gone.push(n.ino);
        }
    }

    fn expect_create(&self, d: usize, n: &[u8]) -> R {
        if self.lookup(d, n).is_some() {
            Err("Exists")
        } else {
            Ok(())
        }
    }

    fn expect_remove(&self, d: usize, n: &[u8], want_dir: bool) -> Result<usize, &'static str> {
        let id = self.lookup(d, n).ok_or("NotFound")?;
        let node = &self.nodes[&id];
        match (want_dir, node.dir) {
            (true, false) => Err("NotDir"),
            (false, true) => Err("IsDir"),
            (true, true) if !node.entries.is_empty() => Err("NotEmpty"),
            _ => Ok(id),
        }
    }

    fn rename(&mut self, d: usize, n: &[u8], d2: usize, n2: &[u8], flags: RenameFlags) -> R {
        if flags.noreplace && flags.exchange {
            return Err("Invalid");
        }
        let s = self.lookup(d, n).ok_or("NotFound")?;
        let t = self.lookup(d2, n2);
        if flags.noreplace && t.is_some() {
            return Err("Exists");
        }
        if flags.exchange && t.is_none() {
            return Err("NotFound");
        }
        let sdir = self.nodes[&s].dir;
        let tdir = t.is_some_and(|t| self.nodes[&t].dir);
        if d != d2 {
            if sdir && self.is_ancestor(s, d2) {
                return Err("Invalid");
            }
            if let Some(t) = t
                && tdir
                && self.is_ancestor(t, d)
            {
                return Err(if flags.exchange {
                    "Invalid"
                } else {
                    "NotEmpty"
                });
            }
        }
        if t == Some(s) {
            return Ok(());
        }
        if let Some(t) = t
            && !flags.exchange
        {
            if sdir && !tdir {
                return Err("NotDir");
            }
            if !sdir && tdir {
                return Err("IsDir");
            }
            if tdir && !self.nodes[&t].entries.is_empty() {
                return Err("NotEmpty");
            }
        }
        match t {
            Some(t) if flags.exchange => {
                self.nodes
                    .get_mut(&d)
                    .unwrap()
                    .entries
                    .insert(n.to_vec(), t);
                self.nodes
                    .get_mut(&d2)
                    .unwrap()
                    .entries
                    .insert(n2.to_vec(), s);
                self.nodes.get_mut(&t).unwrap().parent = d;
            }
            Some(t) => {
                self.nodes
                    .get_mut(&d2)
                    .unwrap()
                    .entries
                    .insert(n2.to_vec(), s);
                self.nodes.get_mut(&d).unwrap().entries.remove(n);
                self.drop_link(t);
            }
            None => {
                self.nodes
                    .get_mut(&d2)
                    .unwrap()
                    .entries
                    .insert(n2.to_vec(), s);
                self.nodes.get_mut(&d).unwrap().entries.remove(n);
            }
        }
        self.nodes.get_mut(&s).unwrap().parent = d2;
        Ok(())
    }
}

fn check_same(r: Result<(), FsError>, want: R, what: &str) -> Result<(), TestCaseError> {
    let got = r.map_err(|e| kind(&e));
    prop_assert_eq!(got, want, "{}", what);
    Ok(())
}

/// The whole tree on disk equals the model.
fn check_tree(fs: &Fs, m: &Model) -> Result<(), TestCaseError> {
    let root = Caller::root();
    for (id, node) in &m.nodes {
        let a = fs
            .getattr(node.ino)
            .map_err(|e| TestCaseError::fail(format!("node {id}: {e}")))?;
        let want_nlink = if node.dir {
            2 + node.entries.values().filter(|c| m.nodes[c].dir).count() as u32
        } else {
            node.nlink
        };
        prop_assert_eq!(a.nlink, want_nlink, "nlink of node {}", id);
        prop_assert_eq!(a.kind == arborfs::fs::FileKind::Directory, node.dir);
        if node.dir {
            let mut seen = BTreeMap::new();
            fs.readdir(node.ino, 0, |e| {
                seen.insert(e.name, e.ino);
                true
            })
            .unwrap();
            prop_assert_eq!(seen.remove(b".".as_slice()), Some(node.ino));
            prop_assert_eq!(
                seen.remove(b"..".as_slice()),
                Some(m.nodes[&node.parent].ino),
                "`..` of node {}",
                id
            );
            let want: BTreeMap<Vec<u8>, InodeNo> = node
                .entries
                .iter()
                .map(|(n, c)| (n.clone(), m.nodes[c].ino))
                .collect();
            prop_assert_eq!(&seen, &want, "entries of node {}", id);
            for (n, ino) in &want {
                prop_assert_eq!(fs.lookup(&root, node.ino, n).unwrap().ino, *ino);
            }
        }
        let mut names = fs.listxattr(&root, node.ino).unwrap();
        names.sort();
        prop_assert_eq!(
            &names,
            &node.xattrs.keys().cloned().collect::<Vec<_>>(),
            "xattrs of node {}",
            id
        );
        for (k, v) in &node.xattrs {
            prop_assert_eq!(&fs.getxattr(&root, node.ino, k).unwrap(), v);
        }
    }
    for ino in &m.gone {
        prop_assert!(
            matches!(fs.getattr(*ino), Err(FsError::NotFound)),
            "{:?} should be freed",
            ino
        );
    }
    Ok(())
}

fn open(dev: &Arc<MemDevice>) -> Fs {
    let opts = FsOptions {
        engine: EngineOptions {
            background: false,
            ..Default::default()
        },
        ..Default::default()
    };
    Fs::open(dev.clone() as Arc<dyn Device>, opts).unwrap()
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dev = Arc::new(MemDevice::new(64 << 20));
    let fmt = FormatOptions {
        bucket_size: 64 << 10,
        node_size: 16 << 10,
        ..Default::default()
    };
    Fs::format(dev.clone() as Arc<dyn Device>, &fmt).unwrap();
    let mut fs = Some(open(&dev));
    let mut m = Model::new();
    let me = Caller::root();
    for op in ops {
        let f = fs.as_ref().unwrap();
        let what = format!("{op:?}");
        let op_kind = op.clone();
        match op {
            Op::Mkdir(d, n) | Op::Mknod(d, n) => {
                let dir = matches!(op, Op::Mkdir(..));
                let d = m.pick_dir(d);
                let want = m.expect_create(d, NAMES[n]);
                let dino = m.nodes[&d].ino;
                let r = if dir {
                    f.mkdir(&me, dino, NAMES[n], 0o755)
                } else {
                    f.mknod(&me, dino, NAMES[n], S_IFREG | 0o644, 0)
                };
                if let Ok(a) = &r {
                    m.create(d, NAMES[n], dir, a.ino);
                }
                check_same(r.map(|_| ()), want, &what)?;
            }
            Op::Unlink(d, n) | Op::Rmdir(d, n) => {
                let dir = matches!(op, Op::Rmdir(..));
                let d = m.pick_dir(d);
                let want = m.expect_remove(d, NAMES[n], dir);
                let dino = m.nodes[&d].ino;
                let r = if dir {
                    f.rmdir(&me, dino, NAMES[n])
                } else {
                    f.unlink(&me, dino, NAMES[n])
                };
                if let Ok(id) = want {
                    m.nodes.get_mut(&d).unwrap().entries.remove(NAMES[n]);
                    m.drop_link(id);
                }
                check_same(r, want.map(|_| ()), &what)?;
            }
            Op::Rename(d, n, d2, n2, fl) => {
                let (d, d2) = (m.pick_dir(d), m.pick_dir(d2));
                let flags = RenameFlags {
                    noreplace: fl & 1 != 0,
                    exchange: fl & 2 != 0,
                };
                let (dino, d2ino) = (m.nodes[&d].ino, m.nodes[&d2].ino);
                let want = m.rename(d, NAMES[n], d2, NAMES[n2], flags);
                let r = f.rename(&me, dino, NAMES[n], d2ino, NAMES[n2], flags);
                check_same(r, want, &what)?;
            }
            Op::Link(d, n, d2, n2) => {
                let (d, d2) = (m.pick_dir(d), m.pick_dir(d2));
                let Some(src) = m.lookup(d, NAMES[n]) else {
                    continue;
                };
                let want = if m.lookup(d2, NAMES[n2]).is_some() {
                    Err("Exists")
                } else if m.nodes[&src].dir {
                    Err("NotPermitted")
                } else {
                    Ok(())
                };
                let r = f.link(&me, m.nodes[&src].ino, m.nodes[&d2].ino, NAMES[n2]);
                if want.is_ok() {
                    m.nodes
                        .get_mut(&d2)
                        .unwrap()
                        .entries
                        .insert(NAMES[n2].to_vec(), src);
                    m.nodes.get_mut(&src).unwrap().nlink += 1;
                }
                check_same(r.map(|_| ()), want, &what)?;
            }
            Op::SetXattr(i, k, v, h) => {
                let id = m.pick_node(i);
                let how = [XattrSet::Any, XattrSet::Create, XattrSet::Replace][h as usize];
                let value = vec![v; v as usize * 3];
                let node = m.nodes.get_mut(&id).unwrap();
                let has = node.xattrs.contains_key(XNAMES[k]);
                let want = match how {
                    XattrSet::Create if has => Err("Exists"),
                    XattrSet::Replace if !has => Err("NoAttr"),
                    _ => Ok(()),
                };
                if want.is_ok() {
                    node.xattrs.insert(XNAMES[k].to_vec(), value.clone());
                }
                check_same(
                    f.setxattr(&me, node.ino, XNAMES[k], &value, how),
                    want,
                    &what,
                )?;
            }
            Op::RemoveXattr(i, k) => {
                let id = m.pick_node(i);
                let node = m.nodes.get_mut(&id).unwrap();
                let want = if node.xattrs.remove(XNAMES[k]).is_some() {
                    Ok(())
                } else {
                    Err("NoAttr")
                };
                check_same(f.removexattr(&me, node.ino, XNAMES[k]), want, &what)?;
            }
            Op::Reopen => {
                fs.take().unwrap().close().unwrap();
                fs = Some(open(&dev));
            }
        }
        check_tree(fs.as_ref().unwrap(), &m)?;
        if matches!(op_kind, Op::Reopen) {
            // A new mount may hand out freed inode numbers again.
            m.gone.clear();
        }
    }
    fs.take().unwrap().close().unwrap();
    check_tree(&open(&dev), &m)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn namespace_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}

#[test]
fn deep_rename_cycle_is_refused() {
    run(vec![
        Op::Mkdir(0, 0),
        Op::Mkdir(1, 0),
        Op::Mkdir(2, 0),
        Op::Rename(0, 0, 3, 1, 0),
        Op::Rename(2, 0, 0, 1, 0),
        Op::Rename(1, 0, 0, 0, 2),
        Op::Reopen,
    ])
    .unwrap();
}
