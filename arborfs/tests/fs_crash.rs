//! Crash consistency of the filesystem layer, with the recording device.
//!
//! Workloads run through [`arborfs::fs::Fs`] (background thread off, so
//! every run is deterministic) on a [`RecordingDevice`]:
//!
//! * (a) `files`: create, write and fsync many files of many sizes;
//! * (b) `editor`: write a temp file, fsync it, rename it over the
//!   original, sync (the fsync of the directory);
//! * (c) `unlink_open`: unlink open files and keep writing to them;
//! * (d) `truncate`: truncate up and down, writes across the cut;
//! * (e) `links`: hard links across directories, unlinks of either name;
//! * (f) `xattrs`: set, replace and remove extended attributes;
//! * (g) `bigdir`: a directory with thousands of entries;
//! * `mixed`: all of the above, randomly interleaved.
//!
//! The harness keeps a model of the whole tree (path → inode number; inode →
//! type, link count, content or symlink target, xattrs) and records, after
//! every operation, the device op count at its start and a fingerprint of
//! the model; after every `fsync`/`sync` it records what became durable.
//! Our `fsync` is a full journal flush, so after it returns every change made
//! before it is durable, not only the fsynced file's.
//!
//! Then, for many crash points (every flush point, plus random points in
//! between whose unflushed writes are randomly kept, lost or torn), it
//! builds the crash image, opens it with `Fs::open` and checks that
//!
//! * `fsck::check` (no repair) finds no problem;
//! * the tree equals the model after some operation `k`, with `k` at least
//!   the last operation acknowledged durable before the crash point and at
//!   most the last operation that had started — so everything fsynced is
//!   there, exact, and nothing half-done is visible (a rename is old or new,
//!   never both or neither);
//! * no space or inode leaks: every inode key belongs to a reachable inode,
//!   the orphan list is empty (files unlinked while open are gone) and the
//!   user-data counter equals the sectors the reachable files hold;
//! * the filesystem keeps working: for some states a new file is written and
//!   fsynced, the fs is closed and reopened, fsck is clean again and the
//!   tree is the recovered one plus that file.
//!
//! The default run checks about 3000 crash states (see [`DEFAULT_STATES`]).
//! A longer run:
//!
//! ```text
//! ARBORFS_FS_CRASH_STATES=20000 CARGO_TARGET_DIR=/work/target-fscrash \
//!     cargo test -p arborfs --test fs_crash -- --ignored --nocapture
//! ```
//!
//! Failures print the workload, seed, crash point and fate seed;
//! `ARBORFS_FS_CRASH_SEED=<n>` reruns one workload seed only.

mod common;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use arborfs::alloc::alloc_format::Counter;
use arborfs::device::{Device, MemDevice, RecordingDevice, WriteFate};
use arborfs::engine::EngineOptions;
use arborfs::fs::{
    Caller, FileKind, Fs, FsOptions, InodeNo, ROOT_INO, RenameFlags, S_IFREG, XattrSet, fsck,
};
use arborfs::key::{BtreeId, Pos};
use arborfs::sb::FormatOptions;

/// Crash states checked by the default test (over all workloads).
const DEFAULT_STATES: usize = 3000;
/// Device size: 256 buckets of 64 KiB.
const DEV_BYTES: u64 = 16 << 20;
/// Every `KEEP_WORKING_EVERY`-th crash state also checks that the recovered
/// filesystem takes a write, a clean close and a reopen.
const KEEP_WORKING_EVERY: usize = 4;

// ---------------------------------------------------------------- rng

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
    /// A size with many edge cases: block and sector boundaries, holes,
    /// several checksummed units.
    fn size(&mut self, max: u64) -> u64 {
        let s = match self.below(10) {
            0 => 0,
            1 => *self.pick(&[1, 511, 512, 513, 4095, 4096, 4097, 8192]),
            2 => 128 * 1024 + self.below(3) - 1,
            3..=6 => self.below(16 * 1024),
            _ => self.below(max),
        };
        s.min(max)
    }
}

/// Deterministic content: `len` bytes of `tag`'s pattern starting at `at`.
fn pattern(tag: u64, at: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let x = (at + i).wrapping_mul(0x9e37_79b9).wrapping_add(tag * 131);
            (x ^ (x >> 13) ^ tag) as u8
        })
        .collect()
}

// ---------------------------------------------------------------- model

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    File,
    Dir,
    Symlink,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Inode {
    kind: Kind,
    nlink: u32,
    /// File content, or a symlink's target (shared between model clones).
    data: Arc<Vec<u8>>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Inode {
    fn new(kind: Kind) -> Inode {
        Inode {
            kind,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            data: Arc::new(Vec::new()),
            xattrs: BTreeMap::new(),
        }
    }
}

/// The visible tree. `fp` is an order-independent fingerprint kept up to
/// date incrementally (sum of per-name and per-inode hashes), so recording
/// it after every operation is cheap even for huge directories.
#[derive(Clone, Debug, Default)]
struct Model {
    /// `"d/f"` → inode number (the root, `""`, is not in here).
    names: BTreeMap<String, u64>,
    /// Every reachable inode, the root included.
    inodes: BTreeMap<u64, Inode>,
    fp: u64,
}

fn h64(x: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    x.hash(&mut h);
    h.finish()
}

fn name_term(path: &str, ino: u64) -> u64 {
    h64((0u8, path, ino))
}

fn inode_term(ino: u64, i: &Inode) -> u64 {
    h64((1u8, ino, i))
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

fn base_of(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, b)| b)
}

impl Model {
    fn with_root() -> Model {
        let mut m = Model::default();
        m.insert_inode(ROOT_INO.0, Inode::new(Kind::Dir));
        m
    }

    fn ino(&self, path: &str) -> u64 {
        if path.is_empty() {
            return ROOT_INO.0;
        }
        *self
            .names
            .get(path)
            .unwrap_or_else(|| panic!("model has no {path}"))
    }

    fn set_name(&mut self, path: &str, ino: Option<u64>) -> Option<u64> {
        let old = match ino {
            Some(i) => self.names.insert(path.to_string(), i),
            None => self.names.remove(path),
        };
        if let Some(o) = old {
            self.fp = self.fp.wrapping_sub(name_term(path, o));
        }
        if let Some(i) = ino {
            self.fp = self.fp.wrapping_add(name_term(path, i));
        }
        old
    }

    fn insert_inode(&mut self, ino: u64, i: Inode) {
        self.fp = self.fp.wrapping_add(inode_term(ino, &i));
        assert!(self.inodes.insert(ino, i).is_none());
    }

    fn remove_inode(&mut self, ino: u64) {
        let i = self.inodes.remove(&ino).unwrap();
        self.fp = self.fp.wrapping_sub(inode_term(ino, &i));
    }

    fn update(&mut self, ino: u64, f: impl FnOnce(&mut Inode)) {
        let i = self.inodes.get_mut(&ino).unwrap();
        self.fp = self.fp.wrapping_sub(inode_term(ino, i));
        f(i);
        self.fp = self.fp.wrapping_add(inode_term(ino, i));
    }

    /// Drops one link of `ino`; the inode leaves the tree at zero.
    fn drop_link(&mut self, ino: u64) {
        let mut gone = false;
        self.update(ino, |i| {
            i.nlink -= 1;
            gone = i.nlink == 0;
        });
        if gone {
            self.remove_inode(ino);
        }
    }

    /// Up to `max` lines describing how `self` differs from `want`.
    fn diff(&self, want: &Model, max: usize) -> Vec<String> {
        let mut out = Vec::new();
        let describe = |m: &Model, p: &str| -> String {
            match m.names.get(p) {
                None => "absent".into(),
                Some(i) => match m.inodes.get(i) {
                    None => format!("ino {i} (no inode)"),
                    Some(n) => format!(
                        "ino {i} {:?} nlink {} len {} data hash {:x} xattrs {:?}",
                        n.kind,
                        n.nlink,
                        n.data.len(),
                        h64(&n.data),
                        n.xattrs
                            .keys()
                            .map(|k| String::from_utf8_lossy(k))
                            .collect::<Vec<_>>()
                    ),
                },
            }
        };
        let paths: BTreeSet<&String> = self.names.keys().chain(want.names.keys()).collect();
        for p in paths {
            let (a, b) = (describe(self, p), describe(want, p));
            if a != b {
                out.push(format!("{p}: got {a}, want {b}"));
            }
        }
        if self.inodes.get(&ROOT_INO.0) != want.inodes.get(&ROOT_INO.0) {
            out.push(format!(
                "root: got {:?}, want {:?}",
                self.inodes
                    .get(&ROOT_INO.0)
                    .map(|i| (i.nlink, i.xattrs.len())),
                want.inodes
                    .get(&ROOT_INO.0)
                    .map(|i| (i.nlink, i.xattrs.len()))
            ));
        }
        out.truncate(max);
        out
    }
}

// ---------------------------------------------------------------- history

struct History {
    /// Per model state `k`: device op count when the operation that produced
    /// it started, and the model's fingerprint. State 0 is the fresh fs.
    states: Vec<(usize, u64)>,
    /// `(op count after a returned fsync/sync, state k it made durable)`.
    durable: Vec<(usize, usize)>,
    /// The model at every durable point, for failure reports.
    snaps: HashMap<usize, Model>,
    first_op: usize,
}

impl History {
    /// Allowed states `[lo, hi]` for a crash right before op `upto`.
    fn allowed(&self, upto: usize) -> (usize, usize) {
        let lo = self
            .durable
            .iter()
            .filter(|(op, _)| *op <= upto)
            .map(|(_, k)| *k)
            .max()
            .unwrap_or(0);
        let hi = self
            .states
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, (start, _))| *start < upto)
            .map(|(i, _)| i)
            .max()
            .unwrap_or(0);
        (lo, hi.max(lo))
    }

    fn find(&self, fp: u64, lo: usize, hi: usize) -> Option<usize> {
        (lo..=hi).rev().find(|&k| self.states[k].1 == fp)
    }
}

// ---------------------------------------------------------------- harness

fn opts() -> FsOptions {
    FsOptions {
        engine: EngineOptions {
            background: false,
            cache_bytes: 4 << 20,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn format_opts(seed: u64) -> FormatOptions {
    let mut f = common::small_format();
    // Odd seeds get a tiny journal: it wraps and checkpoints by itself.
    if !seed.is_multiple_of(2) {
        f.journal_bytes = Some(256 << 10);
    }
    f.uuid = Some([seed as u8 ^ 0xa5; 16]);
    f
}

/// A workload in progress: the live fs, its device, the model and history.
struct Harness {
    dev: Arc<RecordingDevice>,
    fs: Fs,
    m: Model,
    h: History,
    rng: Rng,
    caller: Caller,
    /// Inodes with open handles taken by the workload (and how many).
    open: HashMap<u64, u32>,
    /// Next unique number for generated names and content tags.
    next_tag: u64,
}

impl Harness {
    fn new(seed: u64) -> Harness {
        let dev = Arc::new(RecordingDevice::new(DEV_BYTES));
        Fs::format(dev.clone(), &format_opts(seed)).expect("format");
        let first_op = dev.op_count();
        let fs = Fs::open(dev.clone() as Arc<dyn Device>, opts()).expect("open");
        let m = Model::with_root();
        let h = History {
            states: vec![(0, m.fp)],
            durable: vec![(first_op, 0)],
            snaps: HashMap::from([(0, m.clone())]),
            first_op,
        };
        Harness {
            dev,
            fs,
            m,
            h,
            rng: Rng(seed),
            caller: Caller::root(),
            open: HashMap::new(),
            next_tag: 1,
        }
    }

    fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    /// Runs one filesystem operation `f` (which also updates the model).
    fn op<T>(&mut self, f: impl FnOnce(&Fs, &mut Model, &Caller) -> T) -> T {
        let start = self.dev.op_count();
        let v = f(&self.fs, &mut self.m, &self.caller);
        self.h.states.push((start, self.m.fp));
        v
    }

    fn mark_durable(&mut self) {
        let k = self.h.states.len() - 1;
        self.h.durable.push((self.dev.op_count(), k));
        self.h.snaps.entry(k).or_insert_with(|| self.m.clone());
    }

    fn sync(&mut self) {
        self.fs.sync().expect("sync");
        self.mark_durable();
    }

    fn fsync(&mut self, path: &str) {
        let ino = self.m.ino(path);
        self.fsync_ino(ino);
    }

    fn fsync_ino(&mut self, ino: u64) {
        self.fs.fsync(InodeNo(ino), false).expect("fsync");
        self.mark_durable();
    }

    fn create(&mut self, path: &str) -> u64 {
        let parent = self.m.ino(parent_of(path));
        let name = base_of(path).as_bytes().to_vec();
        self.op(|fs, m, c| {
            let a = fs
                .mknod(c, InodeNo(parent), &name, S_IFREG | 0o644, 0)
                .unwrap_or_else(|e| panic!("create {path}: {e}"));
            m.insert_inode(a.ino.0, Inode::new(Kind::File));
            m.set_name(path, Some(a.ino.0));
            a.ino.0
        })
    }

    fn mkdir(&mut self, path: &str) -> u64 {
        let parent = self.m.ino(parent_of(path));
        let name = base_of(path).as_bytes().to_vec();
        self.op(|fs, m, c| {
            let a = fs
                .mkdir(c, InodeNo(parent), &name, 0o755)
                .unwrap_or_else(|e| panic!("mkdir {path}: {e}"));
            m.insert_inode(a.ino.0, Inode::new(Kind::Dir));
            m.set_name(path, Some(a.ino.0));
            m.update(parent, |p| p.nlink += 1);
            a.ino.0
        })
    }

    fn symlink(&mut self, path: &str, target: &[u8]) {
        let parent = self.m.ino(parent_of(path));
        let name = base_of(path).as_bytes().to_vec();
        self.op(|fs, m, c| {
            let a = fs
                .symlink(c, InodeNo(parent), &name, target)
                .unwrap_or_else(|e| panic!("symlink {path}: {e}"));
            let mut i = Inode::new(Kind::Symlink);
            i.data = Arc::new(target.to_vec());
            m.insert_inode(a.ino.0, i);
            m.set_name(path, Some(a.ino.0));
        })
    }

    /// Writes to an inode (reachable or not).
    fn write_ino(&mut self, ino: u64, off: u64, data: &[u8]) {
        self.op(|fs, m, c| {
            let n = fs
                .write(c, InodeNo(ino), off, data)
                .unwrap_or_else(|e| panic!("write ino {ino} at {off} len {}: {e}", data.len()));
            assert_eq!(n, data.len());
            if m.inodes.contains_key(&ino) {
                m.update(ino, |i| {
                    let d = Arc::make_mut(&mut i.data);
                    let end = off as usize + data.len();
                    if d.len() < end {
                        d.resize(end, 0);
                    }
                    d[off as usize..end].copy_from_slice(data);
                });
            }
        })
    }

    fn write(&mut self, path: &str, off: u64, len: usize) {
        let ino = self.m.ino(path);
        let t = self.tag();
        self.write_ino(ino, off, &pattern(t, off, len));
    }

    fn append(&mut self, path: &str, len: usize) {
        let off = self.m.inodes[&self.m.ino(path)].data.len() as u64;
        self.write(path, off, len);
    }

    fn truncate(&mut self, path: &str, size: u64) {
        let ino = self.m.ino(path);
        self.op(|fs, m, c| {
            fs.set_size(c, InodeNo(ino), size)
                .unwrap_or_else(|e| panic!("truncate {path} to {size}: {e}"));
            m.update(ino, |i| Arc::make_mut(&mut i.data).resize(size as usize, 0));
        })
    }

    fn unlink(&mut self, path: &str) {
        let parent = self.m.ino(parent_of(path));
        let name = base_of(path).as_bytes().to_vec();
        self.op(|fs, m, c| {
            fs.unlink(c, InodeNo(parent), &name)
                .unwrap_or_else(|e| panic!("unlink {path}: {e}"));
            let ino = m.set_name(path, None).unwrap();
            m.drop_link(ino);
        })
    }

    fn rmdir(&mut self, path: &str) {
        let parent = self.m.ino(parent_of(path));
        let name = base_of(path).as_bytes().to_vec();
        self.op(|fs, m, c| {
            fs.rmdir(c, InodeNo(parent), &name)
                .unwrap_or_else(|e| panic!("rmdir {path}: {e}"));
            let ino = m.set_name(path, None).unwrap();
            m.remove_inode(ino);
            m.update(parent, |p| p.nlink -= 1);
        })
    }

    /// Renames a non-directory, replacing what `to` names.
    fn rename(&mut self, from: &str, to: &str) {
        let (p1, p2) = (self.m.ino(parent_of(from)), self.m.ino(parent_of(to)));
        let (n1, n2) = (
            base_of(from).as_bytes().to_vec(),
            base_of(to).as_bytes().to_vec(),
        );
        self.op(|fs, m, c| {
            fs.rename(
                c,
                InodeNo(p1),
                &n1,
                InodeNo(p2),
                &n2,
                RenameFlags::default(),
            )
            .unwrap_or_else(|e| panic!("rename {from} -> {to}: {e}"));
            let ino = m.set_name(from, None).unwrap();
            assert_ne!(m.inodes[&ino].kind, Kind::Dir);
            if let Some(old) = m.set_name(to, Some(ino)) {
                m.drop_link(old);
            }
        })
    }

    fn link(&mut self, existing: &str, new: &str) {
        let ino = self.m.ino(existing);
        let parent = self.m.ino(parent_of(new));
        let name = base_of(new).as_bytes().to_vec();
        self.op(|fs, m, c| {
            fs.link(c, InodeNo(ino), InodeNo(parent), &name)
                .unwrap_or_else(|e| panic!("link {existing} -> {new}: {e}"));
            m.set_name(new, Some(ino));
            m.update(ino, |i| i.nlink += 1);
        })
    }

    fn setxattr(&mut self, path: &str, name: &[u8], value: &[u8], how: XattrSet) {
        let ino = self.m.ino(path);
        self.op(|fs, m, c| {
            fs.setxattr(c, InodeNo(ino), name, value, how)
                .unwrap_or_else(|e| panic!("setxattr {path}: {e}"));
            m.update(ino, |i| {
                i.xattrs.insert(name.to_vec(), value.to_vec());
            });
        })
    }

    fn removexattr(&mut self, path: &str, name: &[u8]) {
        let ino = self.m.ino(path);
        self.op(|fs, m, c| {
            fs.removexattr(c, InodeNo(ino), name)
                .unwrap_or_else(|e| panic!("removexattr {path}: {e}"));
            m.update(ino, |i| {
                i.xattrs.remove(name);
            });
        })
    }

    fn open_inode(&mut self, path: &str) -> u64 {
        let ino = self.m.ino(path);
        self.fs.open_inode(InodeNo(ino)).expect("open_inode");
        *self.open.entry(ino).or_default() += 1;
        ino
    }

    /// Drops one handle; the last close of an unlinked inode frees it (an
    /// operation of its own: it writes).
    fn release(&mut self, ino: u64) {
        self.op(|fs, _, _| fs.release(InodeNo(ino)).expect("release"));
        let n = self.open.get_mut(&ino).unwrap();
        *n -= 1;
        if *n == 0 {
            self.open.remove(&ino);
        }
    }

    /// A random existing path of kind `kind`, if any.
    fn random_path(&mut self, kind: Kind) -> Option<String> {
        let v: Vec<&String> = self
            .m
            .names
            .iter()
            .filter(|(_, i)| self.m.inodes[*i].kind == kind)
            .map(|(p, _)| p)
            .collect();
        if v.is_empty() {
            return None;
        }
        let i = self.rng.below(v.len() as u64) as usize;
        Some(v[i].clone())
    }
}

// ---------------------------------------------------------------- workloads

type Workload = fn(&mut Harness, usize);

/// (a) Many files of many sizes, each written in chunks and (mostly) fsynced.
fn wl_files(h: &mut Harness, scale: usize) {
    h.mkdir("a");
    h.mkdir("a/b");
    let dirs = ["", "a", "a/b"];
    for n in 0..scale * 12 {
        let dir = *h.rng.pick(&dirs);
        let path = if dir.is_empty() {
            format!("f{n}")
        } else {
            format!("{dir}/f{n}")
        };
        h.create(&path);
        let size = h.rng.size(300 << 10);
        let mut off = 0;
        while off < size {
            let chunk = (1 + h.rng.below(100 << 10)).min(size - off);
            h.write(&path, off, chunk as usize);
            off += chunk;
        }
        if h.rng.chance(80) {
            h.fsync(&path);
        }
        if h.rng.chance(20) && n > 0 {
            // append to an older file, sometimes fsynced
            let p = h.random_path(Kind::File).unwrap();
            let len = h.rng.size(20 << 10) as usize;
            h.append(&p, len);
            if h.rng.chance(50) {
                h.fsync(&p);
            }
        }
    }
}

/// (b) The editor pattern: write a temp file, fsync it, rename it over the
/// original, fsync the directory.
fn wl_editor(h: &mut Harness, scale: usize) {
    h.mkdir("docs");
    let docs: Vec<String> = (0..4).map(|i| format!("docs/doc{i}.txt")).collect();
    for d in &docs {
        h.create(d);
        let len = h.rng.size(40 << 10) as usize;
        h.write(d, 0, len);
    }
    h.sync();
    for _ in 0..scale * 12 {
        let d = h.rng.pick(&docs).clone();
        let tmp = format!("{d}.swp");
        h.create(&tmp);
        let len = h.rng.size(60 << 10) as usize;
        let mut off = 0;
        while off < len {
            let chunk = (1 + h.rng.below(16 << 10) as usize).min(len - off);
            h.write(&tmp, off as u64, chunk);
            off += chunk;
        }
        if h.rng.chance(10) {
            h.setxattr(&tmp, b"user.editor", b"vi", XattrSet::Any);
        }
        h.fsync(&tmp);
        h.rename(&tmp, &d);
        if h.rng.chance(85) {
            h.sync(); // fsync of the directory
        }
    }
}

/// (c) Files unlinked while open, written to afterwards; some closed (which
/// frees them), some still open at the crash.
fn wl_unlink_open(h: &mut Harness, scale: usize) {
    h.mkdir("tmp");
    let mut handles: Vec<u64> = Vec::new();
    for n in 0..scale * 6 {
        let path = format!("tmp/scratch{n}");
        let ino = h.create(&path);
        let len = h.rng.size(200 << 10) as usize;
        h.write(&path, 0, len);
        if h.rng.chance(50) {
            h.fsync(&path);
        }
        h.open_inode(&path);
        if h.rng.chance(30) {
            h.open_inode(&path); // two handles
        }
        h.unlink(&path);
        // keep writing to the unlinked file
        for _ in 0..1 + h.rng.below(3) {
            let t = h.tag();
            let off = h.rng.below(300 << 10);
            let len = 1 + h.rng.below(64 << 10) as usize;
            h.write_ino(ino, off, &pattern(t, off, len));
        }
        if h.rng.chance(40) {
            h.fsync_ino(ino);
        }
        // an ordinary file keeps the tree changing
        let keep = format!("keep{n}");
        h.create(&keep);
        let len = h.rng.size(30 << 10) as usize;
        h.write(&keep, 0, len);
        handles.push(ino);
        // close some handles
        while handles.len() > 2 || (!handles.is_empty() && h.rng.chance(30)) {
            let i = h.rng.below(handles.len() as u64) as usize;
            let ino = handles[i];
            h.release(ino);
            if !h.open.contains_key(&ino) {
                handles.swap_remove(i);
            }
        }
        if h.rng.chance(50) {
            h.sync();
        }
    }
    // some stay open: the crash must reap them
}

/// (d) Truncate up and down, with writes across the cut.
fn wl_truncate(h: &mut Harness, scale: usize) {
    let files: Vec<String> = (0..4).map(|i| format!("t{i}")).collect();
    for f in &files {
        h.create(f);
        let len = h.rng.size(200 << 10) as usize;
        h.write(f, 0, len);
    }
    h.sync();
    for _ in 0..scale * 25 {
        let f = h.rng.pick(&files).clone();
        let cur = h.m.inodes[&h.m.ino(&f)].data.len() as u64;
        match h.rng.below(4) {
            0 => {
                let size = h.rng.below(cur + 1);
                h.truncate(&f, size);
            }
            1 => {
                let size = cur + h.rng.size(200 << 10);
                h.truncate(&f, size);
            }
            2 => {
                let off = h.rng.below(cur + 8192);
                let len = 1 + h.rng.size(64 << 10) as usize;
                h.write(&f, off, len);
            }
            _ => {
                let size = h.rng.size(cur.max(1));
                h.truncate(&f, size);
                let len = 1 + h.rng.below(10000) as usize;
                let back = h.rng.below(5000);
                h.write(&f, size.saturating_sub(back), len);
            }
        }
        if h.rng.chance(25) {
            h.fsync(&f);
        }
    }
}

/// (e) Hard links across directories; unlinking any of the names.
fn wl_links(h: &mut Harness, scale: usize) {
    h.mkdir("x");
    h.mkdir("y");
    for n in 0..scale * 15 {
        match h.rng.below(5) {
            0 | 1 => {
                let p = format!("{}/l{n}", h.rng.pick(&["x", "y", ""]));
                let p = p.trim_start_matches('/').to_string();
                h.create(&p);
                let len = h.rng.size(20 << 10) as usize;
                h.write(&p, 0, len);
            }
            2 => {
                if let Some(p) = h.random_path(Kind::File) {
                    let q = format!("{}/h{n}", h.rng.pick(&["x", "y"]));
                    h.link(&p, &q);
                }
            }
            3 => {
                if let Some(p) = h.random_path(Kind::File) {
                    h.unlink(&p);
                }
            }
            _ => {
                if let Some(p) = h.random_path(Kind::File) {
                    let len = 1 + h.rng.below(8000) as usize;
                    h.append(&p, len);
                }
            }
        }
        if h.rng.chance(20) {
            h.sync();
        }
    }
}

/// (f) Extended attributes: set, replace (same and other sizes), remove.
fn wl_xattrs(h: &mut Harness, scale: usize) {
    h.mkdir("d");
    h.create("d/file");
    h.symlink("d/link", b"file");
    let targets = ["d", "d/file", ""];
    for n in 0..scale * 25 {
        let t = *h.rng.pick(&targets);
        let name = format!("user.a{}", h.rng.below(12)).into_bytes();
        let ino = h.m.ino(t);
        let has = h.m.inodes[&ino].xattrs.contains_key(&name);
        if has && h.rng.chance(30) {
            h.removexattr(t, &name);
        } else {
            let len = if h.rng.chance(10) {
                h.rng.below(3000)
            } else {
                h.rng.below(100)
            } as usize;
            let tag = h.tag();
            let how = if has {
                XattrSet::Replace
            } else {
                XattrSet::Create
            };
            h.setxattr(t, &name, &pattern(tag, 0, len), how);
        }
        if n % 7 == 0 {
            h.append("d/file", 3000);
        }
        if h.rng.chance(15) {
            h.fsync(t);
        }
    }
}

/// (g) A directory with thousands of entries: creates, renames, unlinks.
fn wl_bigdir(h: &mut Harness, scale: usize) {
    h.mkdir("big");
    let n = 2000 + scale * 250;
    for i in 0..n {
        let p = format!("big/entry-{i:05}");
        h.create(&p);
        if i % 10 == 0 {
            h.write(&p, 0, 100 + i % 3000);
        }
        if i % 400 == 399 {
            h.sync();
        }
    }
    h.sync();
    for i in 0..n / 4 {
        let p = h.random_path(Kind::File).unwrap();
        if i % 2 == 0 {
            h.unlink(&p);
        } else {
            h.rename(&p, &format!("big/moved-{i:05}"));
        }
        if i % 150 == 149 {
            h.sync();
        }
    }
}

/// Everything, randomly interleaved.
fn wl_mixed(h: &mut Harness, scale: usize) {
    h.mkdir("m");
    for n in 0..scale * 40 {
        let r = h.rng.below(100);
        let file = h.random_path(Kind::File);
        match (r, file) {
            (0..=19, _) | (_, None) => {
                let dir = if h.rng.chance(50) { "m/" } else { "" };
                let p = format!("{dir}n{n}");
                h.create(&p);
                let len = h.rng.size(100 << 10) as usize;
                h.write(&p, 0, len);
            }
            (20..=34, Some(p)) => {
                let off = h.rng.below(h.m.inodes[&h.m.ino(&p)].data.len() as u64 + 1);
                let len = 1 + h.rng.size(50 << 10) as usize;
                h.write(&p, off, len);
            }
            (35..=44, Some(p)) => {
                let size = h.rng.size(150 << 10);
                h.truncate(&p, size);
            }
            (45..=52, Some(p)) => h.unlink(&p),
            (53..=60, Some(p)) => {
                let q = format!("m/r{n}");
                h.rename(&p, &q);
            }
            (61..=67, Some(p)) => h.link(&p, &format!("hl{n}")),
            (68..=77, Some(p)) => {
                let name = format!("user.k{}", h.rng.below(4)).into_bytes();
                if h.m.inodes[&h.m.ino(&p)].xattrs.contains_key(&name) && h.rng.chance(40) {
                    h.removexattr(&p, &name);
                } else {
                    let len = h.rng.below(500) as usize;
                    h.setxattr(&p, &name, &vec![n as u8; len], XattrSet::Any);
                }
            }
            (78..=81, _) => {
                let d = format!("m/sub{n}");
                h.mkdir(&d);
                h.symlink(&format!("{d}/sl"), format!("../n{n}").as_bytes());
            }
            (82..=85, _) => {
                // rmdir an empty-able subdirectory
                if let Some(d) = h.random_path(Kind::Dir).filter(|d| d.starts_with("m/sub")) {
                    let kids: Vec<String> =
                        h.m.names
                            .keys()
                            .filter(|k| parent_of(k) == d)
                            .cloned()
                            .collect();
                    for k in kids {
                        h.unlink(&k);
                    }
                    h.rmdir(&d);
                }
            }
            (86..=89, Some(p)) => {
                let ino = h.open_inode(&p);
                h.unlink(&p);
                let t = h.tag();
                h.write_ino(ino, 0, &pattern(t, 0, 5000));
                if h.rng.chance(50) {
                    h.release(ino);
                }
            }
            (_, Some(p)) => h.fsync(&p),
        }
        if h.rng.chance(8) {
            h.sync();
        }
    }
}

const WORKLOADS: &[(&str, Workload, usize)] = &[
    // name, function, relative share of the crash states
    ("files", wl_files, 3),
    ("editor", wl_editor, 3),
    ("unlink_open", wl_unlink_open, 3),
    ("truncate", wl_truncate, 3),
    ("links", wl_links, 2),
    ("xattrs", wl_xattrs, 2),
    ("bigdir", wl_bigdir, 2),
    ("mixed", wl_mixed, 3),
];

// ---------------------------------------------------------------- checking

/// The tree as the filesystem shows it, and the sectors its files hold.
fn read_tree(fs: &Fs) -> Result<(Model, u64), String> {
    let c = Caller::root();
    let mut m = Model::default();
    let mut sectors = 0u64;
    let mut stack = vec![(String::new(), ROOT_INO)];
    let mut seen = BTreeSet::new();
    let read_inode = |ino: InodeNo, want: Option<FileKind>| -> Result<(Inode, u64), String> {
        let a = fs
            .getattr(ino)
            .map_err(|e| format!("getattr {ino:?}: {e}"))?;
        if let Some(k) = want
            && k != a.kind
        {
            return Err(format!("{ino:?}: dirent says {k:?}, inode {:?}", a.kind));
        }
        let kind = match a.kind {
            FileKind::Regular => Kind::File,
            FileKind::Directory => Kind::Dir,
            FileKind::Symlink => Kind::Symlink,
            k => return Err(format!("{ino:?}: unexpected kind {k:?}")),
        };
        let data = match kind {
            Kind::File => {
                let mut buf = vec![0u8; a.size as usize + 1];
                let n = fs
                    .read(ino, 0, &mut buf)
                    .map_err(|e| format!("read {ino:?}: {e}"))?;
                if n as u64 != a.size {
                    return Err(format!("{ino:?}: size {} but read {n}", a.size));
                }
                buf.truncate(n);
                buf
            }
            Kind::Symlink => fs
                .readlink(ino)
                .map_err(|e| format!("readlink {ino:?}: {e}"))?,
            Kind::Dir => Vec::new(),
        };
        let mut xattrs = BTreeMap::new();
        for name in fs
            .listxattr(&c, ino)
            .map_err(|e| format!("listxattr {ino:?}: {e}"))?
        {
            let v = fs
                .getxattr(&c, ino, &name)
                .map_err(|e| format!("getxattr {ino:?}: {e}"))?;
            xattrs.insert(name, v);
        }
        let i = Inode {
            kind,
            nlink: a.nlink,
            data: Arc::new(data),
            xattrs,
        };
        Ok((i, a.blocks))
    };
    let (root, _) = read_inode(ROOT_INO, Some(FileKind::Directory))?;
    m.insert_inode(ROOT_INO.0, root);
    seen.insert(ROOT_INO.0);
    while let Some((dir, ino)) = stack.pop() {
        let mut entries = Vec::new();
        fs.readdir(ino, 0, |e| {
            entries.push(e);
            true
        })
        .map_err(|e| format!("readdir {dir:?}: {e}"))?;
        for e in entries {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let name = String::from_utf8(e.name).map_err(|_| "non-utf8 name".to_string())?;
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            m.set_name(&path, Some(e.ino.0));
            if seen.insert(e.ino.0) {
                let (i, blocks) = read_inode(e.ino, Some(e.kind))?;
                sectors += blocks;
                if i.kind == Kind::Dir {
                    stack.push((path, e.ino));
                }
                m.insert_inode(e.ino.0, i);
            } else if e.kind == FileKind::Directory {
                return Err(format!("directory {ino:?} reachable twice"));
            }
        }
    }
    Ok((m, sectors))
}

/// Inode keys that are not reachable, and orphan-list entries.
fn leaked_inodes(fs: &Fs, m: &Model) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for k in fs.engine().iter(BtreeId::Inodes, Pos::MIN, Pos::MAX) {
        let k = k.map_err(|e| format!("iterating inodes: {e}"))?;
        match k.pos.inode {
            0 if m.inodes.contains_key(&k.pos.offset) => {}
            0 => out.push(format!("unreachable inode {}", k.pos.offset)),
            1 => out.push(format!(
                "orphan entry for inode {} after open",
                k.pos.offset
            )),
            _ => out.push(format!("unexpected inode key at {:?}", k.pos)),
        }
    }
    Ok(out)
}

/// Checks `fs` with fsck (no repair). Right after a crash recovery the
/// replayed nodes are not written yet and fsck cannot check allocation
/// ("journal replay is pending"); with `allow_pending` that one problem is
/// accepted (the caller checkpoints and checks again).
fn fsck_clean(fs: &Fs, allow_pending: bool) -> Result<(), String> {
    let r = fsck::check(fs, false, &mut |_| {}).map_err(|e| format!("fsck failed: {e}"))?;
    let pending = r.problems.len() == 1 && r.problems[0].contains("journal replay is pending");
    let ok = r.is_clean() || (allow_pending && pending);
    if !ok {
        return Err(format!(
            "fsck found {} problems: {:?}",
            r.problems.len(),
            &r.problems[..r.problems.len().min(10)]
        ));
    }
    Ok(())
}

/// Checks one crash image; `Err` describes the failure.
fn check_image(image: Vec<u8>, h: &History, upto: usize, keep_working: bool) -> Result<(), String> {
    let (lo, hi) = h.allowed(upto);
    let dev = Arc::new(MemDevice::from_bytes(image));
    let fs = Fs::open(dev.clone() as Arc<dyn Device>, opts())
        .map_err(|e| format!("open failed: {e}"))?;
    fsck_clean(&fs, true)?;
    fs.engine()
        .checkpoint()
        .map_err(|e| format!("checkpoint after recovery failed: {e}"))?;
    fsck_clean(&fs, false).map_err(|e| format!("after a checkpoint: {e}"))?;
    let (m, sectors) = read_tree(&fs)?;
    let Some(k) = h.find(m.fp, lo, hi) else {
        let near = h.find(m.fp, 0, h.states.len() - 1);
        let diff = h
            .snaps
            .get(&lo)
            .map(|want| m.diff(want, 12))
            .unwrap_or_default();
        return Err(format!(
            "tree after recovery is no state in [{lo}, {hi}] (it is state {near:?}); \
             {} names; against durable state {lo}:\n    {}",
            m.names.len(),
            diff.join("\n    ")
        ));
    };
    let leaks = leaked_inodes(&fs, &m)?;
    if !leaks.is_empty() {
        return Err(format!("recovered to state {k}, but: {leaks:?}"));
    }
    let user = fs.engine().counters()[Counter::UserSectors as usize];
    if user != sectors as i64 {
        return Err(format!(
            "recovered to state {k}: user-data counter {user} sectors, reachable files hold {sectors}"
        ));
    }
    if !keep_working {
        return Ok(());
    }
    // The filesystem keeps working: write, fsync, close, reopen.
    let c = Caller::root();
    let data = pattern(0xc0ffee, 0, 20_000);
    let a = fs
        .mknod(&c, ROOT_INO, b"after-crash", S_IFREG | 0o600, 0)
        .map_err(|e| format!("create after recovery: {e}"))?;
    fs.write(&c, a.ino, 0, &data)
        .map_err(|e| format!("write after recovery: {e}"))?;
    fs.fsync(a.ino, false)
        .map_err(|e| format!("fsync after recovery: {e}"))?;
    fs.close()
        .map_err(|e| format!("close after recovery: {e}"))?;
    let fs = Fs::open(dev as Arc<dyn Device>, opts()).map_err(|e| format!("reopen failed: {e}"))?;
    fsck_clean(&fs, false).map_err(|e| format!("after write + close + reopen: {e}"))?;
    let (again, _) = read_tree(&fs).map_err(|e| format!("after reopen: {e}"))?;
    let mut want = m.clone();
    let mut i = Inode::new(Kind::File);
    i.data = Arc::new(data);
    want.insert_inode(a.ino.0, i);
    want.set_name("after-crash", Some(a.ino.0));
    if again.fp != want.fp {
        return Err(format!(
            "after write + close + reopen the tree is not state {k} plus the new file: {:?}",
            again.diff(&want, 12)
        ));
    }
    fs.close()
        .map_err(|e| format!("second close failed: {e}"))?;
    Ok(())
}

/// Crash points: flush points at or after `h.first_op` (all of them if they
/// fit in half the budget, else an even sample), the end, plus random points;
/// `budget` in all. `(upto, fate seed)`; `None` keeps every unflushed write.
fn crash_points(
    rng: &mut Rng,
    dev: &RecordingDevice,
    h: &History,
    budget: usize,
) -> Vec<(usize, Option<u64>)> {
    let flushes: Vec<usize> = dev
        .flush_points()
        .into_iter()
        .filter(|&p| p >= h.first_op)
        .collect();
    let want = (budget / 2).max(1);
    let mut pts: Vec<(usize, Option<u64>)> = if flushes.len() <= want {
        flushes.iter().map(|&p| (p, None)).collect()
    } else {
        (0..want)
            .map(|i| (flushes[i * flushes.len() / want], None))
            .collect()
    };
    let total = dev.op_count();
    pts.push((total, None));
    pts.push((total, Some(rng.next())));
    let span = (total - h.first_op) as u64 + 1;
    while pts.len() < budget {
        let upto = h.first_op + rng.below(span) as usize;
        pts.push((upto, Some(rng.next())));
    }
    pts
}

fn image(dev: &RecordingDevice, upto: usize, fate: Option<u64>) -> Vec<u8> {
    match fate {
        None => dev.crash_image(upto, |_, _| WriteFate::Keep),
        Some(s) => dev.random_crash_image(upto, s),
    }
}

/// Runs workload `w` with `seed` and checks `budget` crash states of it;
/// returns how many were checked.
fn run_workload(name: &str, w: Workload, seed: u64, scale: usize, budget: usize) -> usize {
    let t = Instant::now();
    let mut h = Harness::new(seed);
    w(&mut h, scale);
    let ops = h.h.states.len() - 1;
    let mut rng = Rng(seed ^ 0x5eed);
    let pts = crash_points(&mut rng, &h.dev, &h.h, budget);
    let workload_time = t.elapsed();
    let mut failures = Vec::new();
    for (n, &(upto, fate)) in pts.iter().enumerate() {
        let img = image(&h.dev, upto, fate);
        let keep_working = n % KEEP_WORKING_EVERY == 0;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_image(img, &h.h, upto, keep_working)
        }))
        .unwrap_or_else(|p| {
            Err(format!(
                "panicked: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            ))
        });
        if let Err(msg) = r {
            failures.push(format!(
                "workload {name}, seed {seed}: crash before op {upto} (of {}), fate seed {fate:?}: {msg}",
                h.dev.op_count()
            ));
        }
    }
    eprintln!(
        "fs_crash: {name} seed {seed}: {ops} fs ops, {} device ops, {} crash states \
         (workload {workload_time:?}, total {:?})",
        h.dev.op_count(),
        pts.len(),
        t.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {} crash states failed (rerun with ARBORFS_FS_CRASH_SEED={seed}):\n{}",
        failures.len(),
        pts.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    pts.len()
}

/// Runs every workload whose name is in `names` (all if empty) over seeds,
/// about `total` crash states in all.
fn run_states(total: usize, names: &[&str]) -> usize {
    let only_seed: Option<u64> = std::env::var("ARBORFS_FS_CRASH_SEED")
        .ok()
        .map(|s| s.parse().expect("ARBORFS_FS_CRASH_SEED must be a number"));
    let chosen: Vec<_> = WORKLOADS
        .iter()
        .filter(|(n, _, _)| names.is_empty() || names.contains(n))
        .collect();
    let shares: usize = WORKLOADS.iter().map(|w| w.2).sum();
    // Longer runs use more seeds and longer workloads.
    let seeds_per = (total / 2500).clamp(2, 16) as u64;
    let scale = (total / 1000).clamp(3, 8);
    let mut checked = 0;
    for (name, w, share) in chosen {
        let budget = (total * share).div_ceil(shares);
        let per_seed = budget.div_ceil(seeds_per as usize);
        for s in 0..seeds_per {
            let seed =
                1 + s + 100 * (WORKLOADS.iter().position(|x| x.0 == *name).unwrap() as u64 + 1);
            if only_seed.is_some_and(|o| o != seed) {
                continue;
            }
            checked += run_workload(name, *w, seed, scale, per_seed);
        }
    }
    checked
}

fn states_from_env(default: usize) -> usize {
    std::env::var("ARBORFS_FS_CRASH_STATES")
        .ok()
        .map(|s| s.parse().expect("ARBORFS_FS_CRASH_STATES must be a number"))
        .unwrap_or(default)
}

// Split into a few tests so they run in parallel; together they check
// DEFAULT_STATES states.

#[test]
fn crash_states_files_editor_unlink_open() {
    let n = run_states(DEFAULT_STATES, &["files", "editor", "unlink_open"]);
    eprintln!("fs_crash: {n} crash states checked");
}

#[test]
fn crash_states_truncate_links_xattrs() {
    let n = run_states(DEFAULT_STATES, &["truncate", "links", "xattrs"]);
    eprintln!("fs_crash: {n} crash states checked");
}

#[test]
fn crash_states_bigdir_mixed() {
    let n = run_states(DEFAULT_STATES, &["bigdir", "mixed"]);
    eprintln!("fs_crash: {n} crash states checked");
}

/// A case the long run found: replaying this workload merges nodes, whose
/// slots stay charged until the next checkpoint; fsck must count them as in
/// use (it reported "alloc key says btree 96 sectors, contents are 32").
#[test]
fn crash_states_replay_merges_keep_freed_slots_charged() {
    let (name, w, _) = WORKLOADS
        .iter()
        .find(|w| w.0 == "xattrs")
        .expect("xattrs workload");
    let n = run_workload(name, *w, 603, 8, 239);
    eprintln!("fs_crash: {n} crash states checked");
}

/// The long variant: `ARBORFS_FS_CRASH_STATES` states (default 20000) over
/// every workload, with more seeds and longer workloads.
#[test]
#[ignore]
fn crash_states_long() {
    let n = run_states(states_from_env(20_000), &[]);
    eprintln!("fs_crash: {n} crash states checked");
}

// ---------------------------------------------------------------- regressions

/// Data written and then freed while its bucket is still open leaves the
/// bucket's alloc key at "user, 0 sectors" with no freespace key: only a
/// checkpoint after the bucket is closed frees it. A crash (or a clean
/// close) while it is open must not leak it.
fn open_bucket_emptied(crash: bool) {
    let dev = Arc::new(RecordingDevice::new(DEV_BYTES));
    Fs::format(dev.clone(), &format_opts(2)).expect("format");
    let fs = Fs::open(dev.clone() as Arc<dyn Device>, opts()).expect("open");
    let c = Caller::root();
    let a = fs.mknod(&c, ROOT_INO, b"f", S_IFREG | 0o644, 0).unwrap();
    fs.write(&c, a.ino, 0, &pattern(1, 0, 8192)).unwrap();
    fs.sync().unwrap();
    fs.engine().checkpoint().unwrap();
    fs.set_size(&c, a.ino, 0).unwrap();
    fs.sync().unwrap();
    let img = if crash {
        dev.crash_image(usize::MAX, |_, _| WriteFate::Lose)
    } else {
        fs.close().unwrap();
        dev.current_image()
    };
    for read_only in [true, false] {
        let mut o = opts();
        o.engine.read_only = read_only;
        let mem = Arc::new(MemDevice::from_bytes(img.clone()));
        let fs = Fs::open(mem as Arc<dyn Device>, o).expect("reopen");
        if !read_only {
            fs.engine().checkpoint().unwrap();
        }
        if crash && read_only {
            continue; // replay pending: allocation is not checked
        }
        let r = fsck::check(&fs, false, &mut |_| {}).unwrap();
        assert!(
            r.is_clean(),
            "crash {crash}, read-only {read_only}: {:?}",
            r.problems
        );
    }
}

#[test]
fn bucket_emptied_while_open_is_not_leaked_by_a_crash() {
    open_bucket_emptied(true);
}

#[test]
fn bucket_emptied_while_open_is_not_leaked_by_a_clean_close() {
    open_bucket_emptied(false);
}

/// An open bucket drained to 0 sectors and charged again must not be taken
/// off the free-bucket count twice.
#[test]
fn bucket_drained_and_refilled_while_open_keeps_free_count() {
    let dev = Arc::new(MemDevice::new(DEV_BYTES));
    Fs::format(dev.clone(), &format_opts(2)).expect("format");
    let fs = Fs::open(dev.clone() as Arc<dyn Device>, opts()).expect("open");
    let c = Caller::root();
    let a = fs.mknod(&c, ROOT_INO, b"f", S_IFREG | 0o644, 0).unwrap();
    for round in 0..3 {
        fs.write(&c, a.ino, 0, &pattern(round, 0, 8192)).unwrap();
        fs.set_size(&c, a.ino, 0).unwrap();
    }
    fs.write(&c, a.ino, 0, &pattern(9, 0, 8192)).unwrap();
    fs.engine().checkpoint().unwrap();
    let r = fsck::check(&fs, false, &mut |_| {}).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    fs.close().unwrap();
    let fs = Fs::open(dev as Arc<dyn Device>, opts()).expect("reopen");
    let r = fsck::check(&fs, false, &mut |_| {}).unwrap();
    assert!(r.is_clean(), "after reopen: {:?}", r.problems);
}
