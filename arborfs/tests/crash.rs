//! Crash consistency with the recording device.
//!
//! A deterministic engine (`background: false`) runs a random workload of
//! multi-btree transactions on a [`RecordingDevice`]; after each commit the
//! test records the device's op count, whether the commit was durable, and
//! the model state. Then, for many crash points (every flush point, plus
//! random points in between with random fates for unflushed writes,
//! including torn writes), it builds the crash image, opens an engine on it
//! and checks that
//!
//! * open succeeds;
//! * the contents equal the model after some commit prefix `k`, where `k`
//!   is at least the last commit acknowledged durable before the crash point
//!   (a `Durable` commit, or any commit before a `sync()`/`checkpoint()`
//!   that returned) and at most the last commit that had started;
//! * the engine keeps working: one more durable commit, a clean close, a
//!   reopen, and the contents are checked again.
//!
//! The default run checks about 3000 crash states (see [`DEFAULT_STATES`]).
//! A longer run:
//!
//! ```text
//! ARBORFS_CRASH_STATES=20000 CARGO_TARGET_DIR=/work/target-crash \
//!     cargo test -p arborfs --test crash -- --ignored --nocapture
//! ```
//!
//! `ARBORFS_CRASH_SEED=<n>` runs only that workload seed (seeds are printed
//! on failure).

mod common;

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arborfs::device::{Device, MemDevice, RecordingDevice};
use arborfs::sb::FormatOptions;
use arborfs::{BtreeId, Durability, Engine, EngineOptions, Error, Key, KeyType, Pos};

/// Crash states checked by the default test (over all seeds).
const DEFAULT_STATES: usize = 3000;
/// Device size: 256 buckets of 64 KiB.
const DEV_BYTES: u64 = 16 << 20;
/// Extents live in inodes `1..=EXTENT_INODES`, sectors `0..SECTORS`.
const EXTENT_INODES: u64 = 3;
const SECTORS: u64 = 600;
const EXTENT_SNAPSHOT: u32 = 1;
/// Position of the key written after recovery to check the engine still works.
const MARKER: Pos = Pos::new(999_999, 0, 0);

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
}

// ---------------------------------------------------------------- model

/// Everything the workload touches: point keys of the inodes, dirents and
/// xattrs btrees, and the extents btree as a per-sector map of tags.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Model {
    points: BTreeMap<(u8, Pos), (KeyType, Vec<u8>)>,
    /// `sectors[(inode - 1) * SECTORS + s]`: tag of the extent covering it, 0 = hole.
    sectors: Vec<u8>,
}

impl Model {
    fn new() -> Model {
        Model {
            points: BTreeMap::new(),
            sectors: vec![0; (EXTENT_INODES * SECTORS) as usize],
        }
    }

    fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }

    fn fill(&mut self, inode: u64, start: u64, end: u64, tag: u8) {
        let base = ((inode - 1) * SECTORS) as usize;
        for s in start..end.min(SECTORS) {
            self.sectors[base + s as usize] = tag;
        }
    }
}

const POINT_TREES: [BtreeId; 3] = [BtreeId::Inodes, BtreeId::Dirents, BtreeId::Xattrs];

/// Reads the whole state back; `Err` for errors the engine returned, a
/// string for structural problems (overlapping extents, foreign keys).
fn read_state(e: &Engine) -> Result<Result<Model, String>, Error> {
    let mut m = Model::new();
    for b in POINT_TREES {
        for k in e.iter(b, Pos::MIN, Pos::MAX) {
            let k = k?;
            m.points.insert((b as u8, k.pos), (k.ty, k.value));
        }
    }
    let mut last_end = [0u64; EXTENT_INODES as usize + 1];
    for k in e.iter(BtreeId::Extents, Pos::MIN, Pos::MAX) {
        let k = k?;
        let bad = |why: &str| Ok(Err(format!("extent {k:?}: {why}")));
        if k.pos.snapshot != EXTENT_SNAPSHOT || k.pos.inode == 0 || k.pos.inode > EXTENT_INODES {
            return bad("unexpected position");
        }
        if k.end() > SECTORS || k.size == 0 || k.ty != KeyType::Blob {
            return bad("unexpected size or type");
        }
        let tag = k.value.first().copied().unwrap_or(0);
        if tag == 0 || k.value != vec![tag; 8] {
            return bad("unexpected value");
        }
        let le = &mut last_end[k.pos.inode as usize];
        if k.start() < *le {
            return bad("overlaps the previous extent");
        }
        *le = k.end();
        m.fill(k.pos.inode, k.start(), k.end(), tag);
    }
    Ok(Ok(m))
}

// ---------------------------------------------------------------- workload

/// What the workload recorded about one commit (index 0 = the initial state).
struct Commit {
    /// Device op count when the commit started (its writes come after).
    start_op: usize,
    state: Arc<Model>,
    fingerprint: u64,
}

struct History {
    commits: Vec<Commit>,
    /// `(op, k)`: once the crash point is at or after `op`, commits `..=k` must survive.
    durable: Vec<(usize, usize)>,
    /// Op count when recording started mattering (format finished).
    first_op: usize,
}

impl History {
    fn new(first_op: usize) -> History {
        let m = Model::new();
        History {
            commits: vec![Commit {
                start_op: 0,
                fingerprint: m.fingerprint(),
                state: Arc::new(m),
            }],
            durable: vec![(first_op, 0)],
            first_op,
        }
    }

    /// Allowed commit prefixes for a crash right before op `upto`.
    fn allowed(&self, upto: usize) -> (usize, usize) {
        let lo = self
            .durable
            .iter()
            .filter(|(op, _)| *op <= upto)
            .map(|(_, k)| *k)
            .max()
            .unwrap_or(0);
        let hi = self
            .commits
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, c)| c.start_op < upto)
            .map(|(i, _)| i)
            .max()
            .unwrap_or(0);
        (lo, hi.max(lo))
    }

    /// The commit in `[lo, hi]` whose state equals `m` (latest first).
    fn find(&self, m: &Model, lo: usize, hi: usize) -> Option<usize> {
        let fp = m.fingerprint();
        (lo..=hi)
            .rev()
            .find(|&k| self.commits[k].fingerprint == fp && *self.commits[k].state == *m)
    }
}

fn engine_opts() -> EngineOptions {
    EngineOptions {
        background: false,
        ..Default::default()
    }
}

fn format_opts(seed: u64) -> FormatOptions {
    let mut f = common::small_format();
    // Odd seeds get a tiny journal, so it wraps and commits checkpoint by themselves.
    if !seed.is_multiple_of(2) {
        f.journal_bytes = Some(256 << 10);
    }
    f.uuid = Some([seed as u8 ^ 0x5a; 16]);
    f
}

/// One random transaction: applies it to `m` and queues it in `tx`.
fn random_tx(rng: &mut Rng, tx: &mut arborfs::Transaction<'_>, m: &mut Model) {
    let n = 1 + rng.below(6);
    for _ in 0..n {
        match rng.below(10) {
            0..=2 => {
                // inode put / overwrite, sometimes a whiteout
                let pos = Pos::new(1 + rng.below(60), 0, rng.below(2) as u32);
                let key = if rng.chance(5) {
                    Key::whiteout(pos)
                } else {
                    let max = if rng.chance(10) { 1500 } else { 120 };
                    let len = rng.below(max) as usize;
                    Key::new(pos, KeyType::Inode, vec![rng.below(256) as u8; len])
                };
                m.points
                    .insert((BtreeId::Inodes as u8, pos), (key.ty, key.value.clone()));
                tx.put(BtreeId::Inodes, key);
            }
            3 => {
                let pos = Pos::new(1 + rng.below(4), rng.below(300), 0);
                let key = Key::new(pos, KeyType::Dirent, vec![rng.below(256) as u8; 24]);
                m.points
                    .insert((BtreeId::Dirents as u8, pos), (key.ty, key.value.clone()));
                tx.put(BtreeId::Dirents, key);
            }
            4 => {
                // delete: an existing key most of the time
                let pos = if !m.points.is_empty() && rng.chance(80) {
                    let i = rng.below(m.points.len() as u64) as usize;
                    *m.points.keys().nth(i).unwrap()
                } else {
                    (BtreeId::Dirents as u8, Pos::new(9, rng.below(300), 0))
                };
                let b = BtreeId::from_u8(pos.0).unwrap();
                m.points.remove(&pos);
                tx.delete(b, pos.1);
            }
            5 => {
                let pos = Pos::new(7, rng.below(200), 0);
                let key = Key::blob(pos, vec![rng.below(256) as u8; 3]);
                m.points
                    .insert((BtreeId::Xattrs as u8, pos), (key.ty, key.value.clone()));
                tx.put(BtreeId::Xattrs, key);
            }
            6..=8 => {
                let inode = 1 + rng.below(EXTENT_INODES);
                let len = 1 + rng.below(32);
                let start = rng.below(SECTORS - len);
                let tag = 1 + rng.below(255) as u8;
                m.fill(inode, start, start + len, tag);
                tx.put(
                    BtreeId::Extents,
                    Key::extent(
                        inode,
                        start,
                        len as u32,
                        EXTENT_SNAPSHOT,
                        KeyType::Blob,
                        vec![tag; 8],
                    ),
                );
            }
            _ => {
                let inode = 1 + rng.below(EXTENT_INODES);
                let len = 1 + rng.below(64);
                let start = rng.below(SECTORS - len);
                m.fill(inode, start, start + len, 0);
                tx.delete_range(BtreeId::Extents, inode, EXTENT_SNAPSHOT, start, start + len);
            }
        }
    }
}

/// Runs `commits` random transactions on `e`, recording into `h`.
fn run_workload(rng: &mut Rng, dev: &RecordingDevice, e: &Engine, h: &mut History, commits: usize) {
    let mut m = (*h.commits.last().unwrap().state).clone();
    for _ in 0..commits {
        let start_op = dev.op_count();
        let mut tx = e.begin();
        random_tx(rng, &mut tx, &mut m);
        let durable = rng.chance(12);
        tx.commit(if durable {
            Durability::Durable
        } else {
            Durability::Lazy
        })
        .expect("commit");
        h.commits.push(Commit {
            start_op,
            fingerprint: m.fingerprint(),
            state: Arc::new(m.clone()),
        });
        let k = h.commits.len() - 1;
        if durable {
            h.durable.push((dev.op_count(), k));
        }
        if rng.chance(3) {
            e.checkpoint().expect("checkpoint");
            h.durable.push((dev.op_count(), k));
        } else if rng.chance(4) {
            e.sync().expect("sync");
            h.durable.push((dev.op_count(), k));
        }
    }
}

// ---------------------------------------------------------------- checking

/// Opens the crash image and checks it; `Err` describes a failure.
fn check_image(image: Vec<u8>, h: &History, upto: usize) -> Result<(), String> {
    let (lo, hi) = h.allowed(upto);
    let dev = Arc::new(MemDevice::from_bytes(image));
    let e = Engine::open(dev.clone() as Arc<dyn Device>, engine_opts())
        .map_err(|err| format!("open failed: {err}"))?;
    let state = read_state(&e)
        .map_err(|err| format!("reading after open failed: {err}"))?
        .map_err(|s| format!("bad state after open: {s}"))?;
    let Some(k) = h.find(&state, lo, hi) else {
        let near = h.find(&state, 0, h.commits.len() - 1);
        return Err(format!(
            "state after recovery matches no commit in [{lo}, {hi}] (matches commit {near:?}; \
             {} point keys)",
            state.points.len()
        ));
    };
    // The engine keeps working.
    let mut tx = e.begin();
    tx.put(BtreeId::Xattrs, Key::blob(MARKER, b"after crash".to_vec()));
    tx.commit(Durability::Durable)
        .map_err(|err| format!("commit after recovery failed: {err}"))?;
    e.close()
        .map_err(|err| format!("close after recovery failed: {err}"))?;
    let e = Engine::open(dev as Arc<dyn Device>, engine_opts())
        .map_err(|err| format!("reopen failed: {err}"))?;
    let again = read_state(&e)
        .map_err(|err| format!("reading after reopen failed: {err}"))?
        .map_err(|s| format!("bad state after reopen: {s}"))?;
    let mut want = (*h.commits[k].state).clone();
    want.points.insert(
        (BtreeId::Xattrs as u8, MARKER),
        (KeyType::Blob, b"after crash".to_vec()),
    );
    if again != want {
        return Err(format!(
            "after commit + close + reopen the state is not commit {k} plus the marker"
        ));
    }
    e.close()
        .map_err(|err| format!("second close failed: {err}"))?;
    Ok(())
}

/// Crash points: every flush point at or after `h.first_op`, plus random
/// points, `budget` in all (at least the flush points). `(upto, fate seed)`;
/// fate seed `None` = keep every unflushed write.
fn crash_points(
    rng: &mut Rng,
    dev: &RecordingDevice,
    h: &History,
    budget: usize,
) -> Vec<(usize, Option<u64>)> {
    let mut pts: Vec<(usize, Option<u64>)> = dev
        .flush_points()
        .into_iter()
        .filter(|&p| p >= h.first_op)
        .map(|p| (p, None))
        .collect();
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
        None => dev.crash_image(upto, |_, _| arborfs::device::WriteFate::Keep),
        Some(s) => dev.random_crash_image(upto, s),
    }
}

/// One workload seed: returns the number of crash states checked.
fn run_seed(seed: u64, commits: usize, budget: usize) -> usize {
    let mut rng = Rng(seed);
    let dev = Arc::new(RecordingDevice::new(DEV_BYTES));
    Engine::format(dev.clone(), &format_opts(seed)).expect("format");
    let mut h = History::new(dev.op_count());
    let e = Engine::open(dev.clone() as Arc<dyn Device>, engine_opts()).expect("open");
    run_workload(&mut rng, &dev, &e, &mut h, commits);
    // Crash images are built from the op log; the live engine stays open
    // (it is dropped at the end without a clean shutdown).
    let pts = crash_points(&mut rng, &dev, &h, budget);
    let mut failures = Vec::new();
    for &(upto, fate) in &pts {
        if let Err(msg) = check_image(image(&dev, upto, fate), &h, upto) {
            failures.push(format!(
                "seed {seed}: crash before op {upto} (of {}), fate seed {fate:?}: {msg}",
                dev.op_count()
            ));
        }
    }
    drop(e);
    assert!(
        failures.is_empty(),
        "{} of {} crash states failed (rerun with ARBORFS_CRASH_SEED={seed}):\n{}",
        failures.len(),
        pts.len(),
        failures[..failures.len().min(20)].join("\n")
    );
    pts.len()
}

fn run_states(total: usize) {
    let seeds: Vec<u64> = match std::env::var("ARBORFS_CRASH_SEED") {
        Ok(s) => vec![s.parse().expect("ARBORFS_CRASH_SEED must be a number")],
        Err(_) => (1..=6).collect(),
    };
    let per_seed = total.div_ceil(seeds.len());
    // More states, longer workloads.
    let commits = (per_seed / 2).clamp(250, 3000);
    let mut checked = 0;
    for seed in seeds {
        let t = std::time::Instant::now();
        let n = run_seed(seed, commits, per_seed);
        eprintln!(
            "crash: seed {seed}: {commits} commits, {n} crash states in {:?}",
            t.elapsed()
        );
        checked += n;
    }
    eprintln!("crash: {checked} crash states checked");
}

#[test]
fn crash_states_recover_to_a_commit_prefix() {
    run_states(DEFAULT_STATES);
}

/// The long variant: `ARBORFS_CRASH_STATES` states (default 20000).
#[test]
#[ignore]
fn crash_states_long() {
    let n = std::env::var("ARBORFS_CRASH_STATES")
        .ok()
        .map(|s| s.parse().expect("ARBORFS_CRASH_STATES must be a number"))
        .unwrap_or(20_000);
    run_states(n);
}

/// Crashes anywhere in format, the first open, a few commits and the first
/// checkpoints. Before `format` returns a crash may leave no filesystem (the
/// open may fail, but must not panic); afterwards every state must recover.
#[test]
fn crash_during_format_and_first_checkpoints() {
    let seed = 77;
    let mut rng = Rng(seed);
    let dev = Arc::new(RecordingDevice::new(DEV_BYTES));
    Engine::format(dev.clone(), &format_opts(seed)).expect("format");
    let format_end = dev.op_count();
    let mut h = History::new(format_end);
    let e = Engine::open(dev.clone() as Arc<dyn Device>, engine_opts()).expect("open");
    for _ in 0..3 {
        run_workload(&mut rng, &dev, &e, &mut h, 5);
        e.checkpoint().expect("checkpoint");
        let k = h.commits.len() - 1;
        h.durable.push((dev.op_count(), k));
    }
    let k = h.commits.len() - 1;
    e.close().expect("close");
    h.durable.push((dev.op_count(), k));
    let total = dev.op_count();
    let mut failures = Vec::new();
    let mut opened_before_format_end = 0;
    let mut states = 0;
    for upto in 0..=total {
        for fate in [None, Some(rng.next()), Some(rng.next())] {
            states += 1;
            let img = image(&dev, upto, fate);
            if upto < format_end {
                // Only "no panic" is required; if it opens, it must be empty
                // and readable.
                let mem = Arc::new(MemDevice::from_bytes(img));
                if let Ok(e) = Engine::open(mem as Arc<dyn Device>, engine_opts()) {
                    opened_before_format_end += 1;
                    match read_state(&e) {
                        Ok(Ok(m)) if m == Model::new() => {}
                        other => failures.push(format!(
                            "crash before op {upto} during format: opened with {:?}",
                            other.map(|r| r.map(|m| m.points.len()))
                        )),
                    }
                }
                continue;
            }
            if let Err(msg) = check_image(img, &h, upto) {
                failures.push(format!(
                    "crash before op {upto} (of {total}, format ends at {format_end}), fate seed {fate:?}: {msg}"
                ));
            }
        }
    }
    eprintln!(
        "format crash: {states} states over {total} ops; {opened_before_format_end} \
         images from before format returned opened"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

/// A crash during `Engine::format` leaves either no filesystem (the
/// superblock is written last) or a complete, working one.
#[test]
fn crash_during_format_never_leaves_an_unusable_filesystem() {
    let dev = Arc::new(RecordingDevice::new(DEV_BYTES));
    Engine::format(dev.clone(), &format_opts(3)).expect("format");
    let format_end = dev.op_count();
    let mut bad = Vec::new();
    for upto in 0..format_end {
        let img = dev.crash_image(upto, |_, _| arborfs::device::WriteFate::Lose);
        let mem = Arc::new(MemDevice::from_bytes(img));
        let Ok(e) = Engine::open(mem as Arc<dyn Device>, engine_opts()) else {
            continue; // no filesystem: fine, mkfs is simply run again
        };
        let mut tx = e.begin();
        tx.put(BtreeId::Xattrs, Key::blob(MARKER, b"x".to_vec()));
        let r = tx.commit(Durability::Durable).and_then(|_| e.close());
        if let Err(err) = r {
            bad.push(format!("crash before op {upto} of {format_end}: {err}"));
        }
    }
    assert!(
        bad.is_empty(),
        "images from a crash during format open but do not work:\n{}",
        bad.join("\n")
    );
}
