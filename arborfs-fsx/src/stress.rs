//! A concurrency stress workload with an end state that can be checked
//! despite the races.
//!
//! For a bounded time, threads hammer one directory:
//!
//! * **block writers** (buffered and O_DIRECT) write whole 4 KiB blocks into
//!   shared files, each block *stamped* with (family, writer, sequence,
//!   block index) and a payload and checksum derived from them;
//! * a **truncater** ftruncates the shared files to random block multiples
//!   and punches holes of whole blocks;
//! * two **copiers** run `copy_file_range` A→B and B→A at the same offsets
//!   while a writer stamps new blocks into A and B;
//! * two **renamers** move a fixed set of files between two directories in
//!   opposite directions (`RENAME_NOREPLACE`);
//! * a **reader** reads blocks and lists the directories.
//!
//! Afterwards every block of a shared file must be zeros or a valid stamp
//! of one of its writers at that index with a sequence number that writer
//! issued; every block of A and B a valid stamp (never zeros); sizes within
//! bounds; and each renamed file must exist exactly once, intact, in one of
//! the two directories.
//!
//! Every worker records what it is doing; a worker that does not finish
//! within the grace period after the deadline is reported as a hang (with
//! that operation) instead of blocking the caller forever.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use crate::rng::Rng;
use crate::sys::{self, AlignedBuf};

/// Block size of the workload: every write, copy, truncate and punch is in
/// whole blocks.
pub const BLOCK: usize = 4096;
const MAGIC: &[u8; 8] = b"ARBSTRS1";
/// Stamp family of the copy pair A/B (shared file `s` is family `s + 1`).
const COPY_FAMILY: u32 = 100;
const RENAME_FAMILY: u32 = 200;
/// Writer id of the blocks written during setup.
const SETUP_WRITER: u32 = 0;

/// What the workload does and for how long.
#[derive(Clone, Debug)]
pub struct StressConfig {
    /// How long the workers run.
    pub duration: Duration,
    /// How long after `duration` a worker may take to finish its last
    /// operation before it counts as hung.
    pub grace: Duration,
    pub seed: u64,
    /// Shared files written by the block writers and the truncater.
    pub shared_files: usize,
    /// Largest shared file, in blocks.
    pub shared_blocks: u64,
    pub buffered_writers: usize,
    /// O_DIRECT block writers (0: none).
    pub direct_writers: usize,
    /// Whether a truncater runs (ftruncate and punch hole).
    pub truncate: bool,
    /// Size of the copy pair A/B, in blocks.
    pub copy_blocks: u64,
    /// Whether the copiers run.
    pub copy_range: bool,
    /// Files moved between the two rename directories.
    pub rename_files: usize,
    /// Whether the reader runs.
    pub reader: bool,
}

impl Default for StressConfig {
    fn default() -> StressConfig {
        StressConfig {
            duration: Duration::from_secs(10),
            grace: Duration::from_secs(30),
            seed: 1,
            shared_files: 2,
            shared_blocks: 256,
            buffered_writers: 2,
            direct_writers: 1,
            truncate: true,
            copy_blocks: 128,
            copy_range: true,
            rename_files: 64,
            reader: true,
        }
    }
}

/// Why a stress run failed.
#[derive(Debug)]
pub enum StressError {
    /// The directory could not be prepared.
    Setup(String),
    /// A worker's system call failed (or renames found a file twice).
    Worker {
        worker: String,
        op: String,
        error: String,
    },
    /// Workers did not finish within the grace period: they are stuck in
    /// the operations listed (their threads are left behind).
    Hang {
        waited: Duration,
        stuck: Vec<String>,
    },
    /// The end state is wrong: one line per problem found.
    Verify(Vec<String>),
}

impl fmt::Display for StressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StressError::Setup(m) => write!(f, "stress setup failed: {m}"),
            StressError::Worker { worker, op, error } => {
                write!(f, "stress worker {worker} failed in {op}: {error}")
            }
            StressError::Hang { waited, stuck } => {
                write!(
                    f,
                    "stress HANG: after {waited:.1?} these workers had not finished:"
                )?;
                for s in stuck {
                    write!(f, "\n  {s}")?;
                }
                write!(
                    f,
                    "\n(the filesystem does not answer: their calls return, and this process can \
                     exit, once it is unmounted with umount -l or its server is killed)"
                )
            }
            StressError::Verify(problems) => {
                write!(
                    f,
                    "stress end state is wrong ({} problems):",
                    problems.len()
                )?;
                for p in problems {
                    write!(f, "\n  {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for StressError {}

/// Operations per worker after a run.
#[derive(Clone, Debug)]
pub struct WorkerStats {
    pub name: String,
    pub ops: u64,
}

/// What the end-state check saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyStats {
    /// Sizes of the shared files, in blocks.
    pub shared_sizes: Vec<u64>,
    pub zero_blocks: u64,
    pub stamped_blocks: u64,
    /// Renamed files found in the first and the second directory.
    pub in_dir1: usize,
    pub in_dir2: usize,
}

/// A run that passed; [`StressReport::verify`] checks the directory again
/// (for example after a remount).
#[derive(Clone, Debug)]
pub struct StressReport {
    pub seed: u64,
    pub elapsed: Duration,
    pub workers: Vec<WorkerStats>,
    pub notes: Vec<String>,
    pub verified: VerifyStats,
    plan: Plan,
}

impl StressReport {
    /// Total operations of all workers.
    pub fn total_ops(&self) -> u64 {
        self.workers.iter().map(|w| w.ops).sum()
    }

    /// Checks the end state in `dir` (the directory given to [`run`]) again.
    pub fn verify(&self, dir: &Path) -> Result<VerifyStats, StressError> {
        self.plan.verify(dir)
    }
}

impl fmt::Display for StressReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ops = self.total_ops();
        writeln!(
            f,
            "stress passed: seed {}, {ops} ops in {:.1?} ({:.0} ops/s)",
            self.seed,
            self.elapsed,
            ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
        )?;
        let w: Vec<String> = self
            .workers
            .iter()
            .map(|w| format!("{} {}", w.name, w.ops))
            .collect();
        writeln!(f, "  workers: {}", w.join(", "))?;
        let v = &self.verified;
        write!(
            f,
            "  end state: shared sizes {:?} blocks, {} stamped and {} zero blocks, renamed files {} + {}",
            v.shared_sizes, v.stamped_blocks, v.zero_blocks, v.in_dir1, v.in_dir2
        )?;
        for n in &self.notes {
            write!(f, "\n  note: {n}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- stamps

fn fnv(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h = (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Fills `b` (one block) with the stamp of (family, writer, seq, index).
fn stamp(b: &mut [u8], family: u32, writer: u32, seq: u64, index: u64) {
    b[..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&family.to_le_bytes());
    b[12..16].copy_from_slice(&writer.to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    b[24..32].copy_from_slice(&index.to_le_bytes());
    let seed = (u64::from(family) << 48) ^ (u64::from(writer) << 32) ^ seq.rotate_left(17) ^ index;
    let mut rng = Rng::new(seed);
    let payload = &mut b[32..BLOCK - 8];
    if seq.is_multiple_of(2) {
        rng.fill(payload);
    } else {
        // Every other stamp compresses (a repeated motif), so compressing
        // filesystems store some blocks compressed.
        let mut motif = [0u8; 64];
        let m = 1 + rng.below(64) as usize;
        rng.fill(&mut motif[..m]);
        for (i, x) in payload.iter_mut().enumerate() {
            *x = motif[i % m];
        }
    }
    let sum = fnv(&b[..BLOCK - 8]);
    b[BLOCK - 8..BLOCK].copy_from_slice(&sum.to_le_bytes());
}

/// Why a block is wrong.
#[derive(Debug)]
enum BlockProblem {
    /// Neither zeros nor an intact stamp (torn, garbage, or zeros where
    /// none may be).
    Damaged(String),
    /// An intact stamp that does not belong here: another file or index,
    /// a writer of another file, or a sequence number never issued.
    Misplaced(String),
}

impl BlockProblem {
    fn message(self) -> String {
        match self {
            BlockProblem::Damaged(m) | BlockProblem::Misplaced(m) => m,
        }
    }
}

/// What a block read back holds.
#[derive(Debug, PartialEq, Eq)]
enum Block {
    Zero,
    Stamp {
        family: u32,
        writer: u32,
        seq: u64,
        index: u64,
    },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes a block: zeros, or a stamp whose every byte is what its header
/// says; anything else is described in the error.
fn decode(b: &[u8]) -> Result<Block, String> {
    if b.iter().all(|&x| x == 0) {
        return Ok(Block::Zero);
    }
    if &b[..8] != MAGIC {
        let nz = b.iter().position(|&x| x != 0).unwrap_or(0);
        return Err(format!(
            "neither zeros nor a stamp (first non-zero byte at {nz}: {:02x?})",
            &b[nz..(nz + 16).min(BLOCK)]
        ));
    }
    let (family, writer, seq, index) = (u32_at(b, 8), u32_at(b, 12), u64_at(b, 16), u64_at(b, 24));
    let mut want = vec![0u8; BLOCK];
    stamp(&mut want, family, writer, seq, index);
    if let Some(i) = (0..BLOCK).find(|&i| want[i] != b[i]) {
        return Err(format!(
            "torn or corrupted stamp (family {family} writer {writer} seq {seq} index {index}): \
             differs from byte {i} on ({} bytes differ)",
            (0..BLOCK).filter(|&j| want[j] != b[j]).count()
        ));
    }
    Ok(Block::Stamp {
        family,
        writer,
        seq,
        index,
    })
}

// ------------------------------------------------------------------ plan

/// The layout and the facts the end-state check needs.
#[derive(Clone, Debug)]
struct Plan {
    root: PathBuf,
    shared_files: usize,
    shared_blocks: u64,
    copy_blocks: u64,
    rename_files: usize,
    /// Stamps issued by each writer id (index = id; 0 is setup).
    issued: Vec<u64>,
    /// Writer ids that write the shared files.
    block_writers: Vec<u32>,
    /// Writer id that writes A and B.
    copy_writer: u32,
}

impl Plan {
    fn shared(&self, s: usize) -> PathBuf {
        self.root.join(format!("shared{s}"))
    }

    fn copy_file(&self, b: bool) -> PathBuf {
        self.root.join(if b { "copyB" } else { "copyA" })
    }

    fn rename_dir(&self, second: bool) -> PathBuf {
        self.root.join(if second { "r2" } else { "r1" })
    }

    /// Name of file `i`: the shared files, then copyA and copyB.
    fn file_name(&self, i: usize) -> String {
        match i.checked_sub(self.shared_files) {
            None => format!("shared{i}"),
            Some(0) => "copyA".into(),
            Some(_) => "copyB".into(),
        }
    }

    fn rename_name(j: usize) -> String {
        format!("n{j:04}")
    }

    /// Checks one block read from file `what` at `index`: `Ok(true)` for a
    /// stamp, `Ok(false)` for zeros. `issued` gives the stamps a writer has
    /// issued so far.
    #[allow(clippy::too_many_arguments)]
    fn check_block(
        what: &str,
        b: &[u8],
        family: u32,
        index: u64,
        writers: &[u32],
        zero_ok: bool,
        issued: impl Fn(u32) -> u64,
    ) -> Result<bool, BlockProblem> {
        let at = format!("{what} block {index} (offset {:#x})", index * BLOCK as u64);
        let block = decode(b).map_err(|e| BlockProblem::Damaged(format!("{at}: {e}")))?;
        let misplaced = |m: String| Err(BlockProblem::Misplaced(format!("{at}: {m}")));
        match block {
            Block::Zero if zero_ok => Ok(false),
            Block::Zero => Err(BlockProblem::Damaged(format!(
                "{at}: zeros where only stamps may be"
            ))),
            Block::Stamp {
                family: fam,
                writer,
                seq,
                index: idx,
            } => {
                if fam != family || idx != index {
                    return misplaced(format!(
                        "a block of family {fam} index {idx} (writer {writer} seq {seq}) \
                         is here, expected family {family} index {index}"
                    ));
                }
                if !writers.contains(&writer) {
                    return misplaced(format!(
                        "written by writer {writer}, which never writes this file"
                    ));
                }
                let issued = issued(writer);
                if seq >= issued {
                    return misplaced(format!(
                        "writer {writer} seq {seq}, but that writer issued only {issued}"
                    ));
                }
                Ok(true)
            }
        }
    }

    /// Checks the end state under `dir/stress`.
    fn verify(&self, dir: &Path) -> Result<VerifyStats, StressError> {
        let here = Plan {
            root: dir.join("stress"),
            ..self.clone()
        };
        here.check()
    }

    fn check(&self) -> Result<VerifyStats, StressError> {
        let issued = |w: u32| self.issued.get(w as usize).copied().unwrap_or(0);
        let mut problems = Vec::new();
        let mut stats = VerifyStats::default();
        let mut add = |p: String| {
            if problems.len() < 40 {
                problems.push(p);
            }
        };
        for s in 0..self.shared_files {
            let p = self.shared(s);
            let data = match std::fs::read(&p) {
                Ok(d) => d,
                Err(e) => {
                    add(format!("{}: {e}", p.display()));
                    continue;
                }
            };
            let name = format!("shared{s}");
            if data.len() % BLOCK != 0 || data.len() as u64 > self.shared_blocks * BLOCK as u64 {
                add(format!(
                    "{name}: size {} is not a whole number of blocks up to {}",
                    data.len(),
                    self.shared_blocks
                ));
            }
            stats.shared_sizes.push((data.len() / BLOCK) as u64);
            for (i, b) in data.chunks_exact(BLOCK).enumerate() {
                let fam = s as u32 + 1;
                let writers = &self.block_writers;
                match Plan::check_block(&name, b, fam, i as u64, writers, true, issued) {
                    Ok(true) => stats.stamped_blocks += 1,
                    Ok(false) => stats.zero_blocks += 1,
                    Err(e) => add(e.message()),
                }
            }
        }
        let copy_writers = [SETUP_WRITER, self.copy_writer];
        for second in [false, true] {
            let p = self.copy_file(second);
            let name = if second { "copyB" } else { "copyA" };
            let data = match std::fs::read(&p) {
                Ok(d) => d,
                Err(e) => {
                    add(format!("{}: {e}", p.display()));
                    continue;
                }
            };
            if data.len() as u64 != self.copy_blocks * BLOCK as u64 {
                add(format!(
                    "{name}: size {} changed (was {} blocks)",
                    data.len(),
                    self.copy_blocks
                ));
            }
            for (i, b) in data.chunks_exact(BLOCK).enumerate() {
                let (fam, w) = (COPY_FAMILY, &copy_writers);
                match Plan::check_block(name, b, fam, i as u64, w, false, issued) {
                    Ok(_) => stats.stamped_blocks += 1,
                    Err(e) => add(e.message()),
                }
            }
        }
        let mut seen: Vec<BTreeSet<String>> = Vec::new();
        for second in [false, true] {
            let d = self.rename_dir(second);
            let mut names = BTreeSet::new();
            match std::fs::read_dir(&d) {
                Err(e) => add(format!("{}: {e}", d.display())),
                Ok(it) => {
                    for e in it {
                        match e {
                            Ok(e) => {
                                let n = e.file_name().to_string_lossy().into_owned();
                                if !names.insert(n.clone()) {
                                    add(format!("{}: {n} listed twice", d.display()));
                                }
                            }
                            Err(e) => add(format!("{}: readdir: {e}", d.display())),
                        }
                    }
                }
            }
            seen.push(names);
        }
        stats.in_dir1 = seen[0].len();
        stats.in_dir2 = seen[1].len();
        let expected: BTreeSet<String> = (0..self.rename_files).map(Plan::rename_name).collect();
        for n in seen[0].union(&seen[1]) {
            if !expected.contains(n) {
                add(format!("unexpected file {n} in the rename directories"));
            }
        }
        for (j, n) in (0..self.rename_files).map(|j| (j, Plan::rename_name(j))) {
            let (a, b) = (seen[0].contains(&n), seen[1].contains(&n));
            if a == b {
                add(format!(
                    "{n}: in {} of the two rename directories, not exactly one",
                    if a { "both" } else { "neither" }
                ));
                continue;
            }
            let p = self.rename_dir(b).join(&n);
            match std::fs::read(&p) {
                Ok(d) if d.len() == BLOCK => {
                    let (fam, w) = (RENAME_FAMILY, &[SETUP_WRITER]);
                    if let Err(e) = Plan::check_block(&n, &d, fam, j as u64, w, false, issued) {
                        add(e.message());
                    }
                }
                Ok(d) => add(format!(
                    "{}: size {} instead of {BLOCK}",
                    p.display(),
                    d.len()
                )),
                Err(e) => add(format!("{}: {e}", p.display())),
            }
        }
        if problems.is_empty() {
            Ok(stats)
        } else {
            Err(StressError::Verify(problems))
        }
    }
}

// --------------------------------------------------------------- workers

/// What a worker is doing, for the hang report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Doing {
    Starting,
    Pwrite,
    DirectPwrite,
    Ftruncate,
    PunchHole,
    CopyRange,
    Rename,
    Pread,
    Readdir,
    Finished,
}

impl Doing {
    const ALL: [Doing; 10] = [
        Doing::Starting,
        Doing::Pwrite,
        Doing::DirectPwrite,
        Doing::Ftruncate,
        Doing::PunchHole,
        Doing::CopyRange,
        Doing::Rename,
        Doing::Pread,
        Doing::Readdir,
        Doing::Finished,
    ];

    fn name(self) -> &'static str {
        match self {
            Doing::Starting => "opening its files",
            Doing::Pwrite => "pwrite",
            Doing::DirectPwrite => "O_DIRECT pwrite",
            Doing::Ftruncate => "ftruncate",
            Doing::PunchHole => "fallocate(PUNCH_HOLE)",
            Doing::CopyRange => "copy_file_range",
            Doing::Rename => "renameat2",
            Doing::Pread => "pread",
            Doing::Readdir => "readdir",
            Doing::Finished => "nothing (finished)",
        }
    }
}

/// What a worker publishes while it runs.
struct Slot {
    name: String,
    ops: AtomicU64,
    doing: AtomicU8,
    /// File (an index into [`Plan::file_name`]) and offset or name number
    /// of the current operation, for the hang report.
    file: AtomicU64,
    target: AtomicU64,
}

impl Slot {
    fn set(&self, d: Doing, file: usize, target: u64) {
        self.doing.store(d as u8, Ordering::Relaxed);
        self.file.store(file as u64, Ordering::Relaxed);
        self.target.store(target, Ordering::Relaxed);
    }

    fn describe(&self, plan: &Plan) -> String {
        let d = Doing::ALL
            .get(self.doing.load(Ordering::Relaxed) as usize)
            .copied()
            .unwrap_or(Doing::Starting);
        let (file, target) = (
            self.file.load(Ordering::Relaxed) as usize,
            self.target.load(Ordering::Relaxed),
        );
        let on = match d {
            Doing::Starting | Doing::Finished | Doing::Readdir => String::new(),
            Doing::Rename => format!(" of {}", Plan::rename_name(target as usize)),
            Doing::Ftruncate => format!(" of {} to {target:#x}", plan.file_name(file)),
            _ => format!(" on {} at {target:#x}", plan.file_name(file)),
        };
        format!(
            "{}: in {}{on} after {} ops",
            self.name,
            d.name(),
            self.ops.load(Ordering::Relaxed)
        )
    }
}

#[derive(Clone, Copy, Debug)]
enum Role {
    BlockWriter {
        direct: bool,
    },
    Truncater,
    CopyWriter,
    Copier {
        a_to_b: bool,
    },
    Renamer {
        forward: bool,
    },
    /// Reads blocks (buffered, and O_DIRECT if `direct`) and checks those
    /// that are intact; lists the rename directories.
    Reader {
        direct: bool,
    },
}

struct Ctx {
    plan: Plan,
    /// Stamps issued by each writer id so far (counted before each write
    /// is sent, so a stamp read back always has a smaller sequence).
    issued: Vec<AtomicU64>,
    /// Blocks the reader saw neither zeros nor intact (torn by a racing
    /// write: allowed while writes are in flight, unlike at the end).
    torn_reads: AtomicU64,
    deadline: Instant,
    stop: AtomicBool,
    notes: std::sync::Mutex<Vec<String>>,
}

impl Ctx {
    fn note(&self, m: String) {
        if let Ok(mut n) = self.notes.lock() {
            n.push(m);
        }
    }

    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && Instant::now() < self.deadline
    }
}

type WorkerResult = Result<(), StressError>;

fn werr(slot: &Slot, what: &str, e: io::Error) -> StressError {
    StressError::Worker {
        worker: slot.name.clone(),
        op: what.to_string(),
        error: e.to_string(),
    }
}

fn open_rw(p: &Path, direct: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(p)
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EXDEV | libc::ENOTTY)
    )
}

fn worker(role: Role, id: u32, mut rng: Rng, slot: &Slot, ctx: &Ctx) -> WorkerResult {
    let plan = &ctx.plan;
    let open_all = |paths: Vec<PathBuf>, direct: bool| -> Result<Vec<File>, StressError> {
        paths
            .iter()
            .map(|p| {
                open_rw(p, direct).map_err(|e| werr(slot, &format!("open {}", p.display()), e))
            })
            .collect()
    };
    let shared: Vec<PathBuf> = (0..plan.shared_files).map(|s| plan.shared(s)).collect();
    let copies = vec![plan.copy_file(false), plan.copy_file(true)];
    let mut buf = AlignedBuf::new(BLOCK);
    let mut seq = 0u64;
    match role {
        Role::BlockWriter { direct } => {
            let fds = open_all(shared, direct)?;
            while ctx.running() {
                let s = rng.below(fds.len() as u64) as usize;
                let i = rng.below(plan.shared_blocks);
                stamp(&mut buf[..BLOCK], s as u32 + 1, id, seq, i);
                seq += 1;
                ctx.issued[id as usize].store(seq, Ordering::SeqCst);
                let off = i * BLOCK as u64;
                let d = if direct {
                    Doing::DirectPwrite
                } else {
                    Doing::Pwrite
                };
                slot.set(d, s, off);
                sys::pwrite_all(&fds[s], &buf[..BLOCK], off)
                    .map_err(|e| werr(slot, d.name(), e))?;
                slot.ops.fetch_add(1, Ordering::Relaxed);
            }
        }
        Role::Truncater => {
            let fds = open_all(shared, false)?;
            let mut punch = true;
            while ctx.running() {
                let s = rng.below(fds.len() as u64) as usize;
                if punch && rng.chance(1, 3) {
                    let k = 1 + rng.below(16);
                    let i = rng.below(plan.shared_blocks);
                    let (off, len) = (i * BLOCK as u64, k * BLOCK as u64);
                    slot.set(Doing::PunchHole, s, off);
                    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                    match sys::fallocate(&fds[s], mode, off, len) {
                        Err(e) if unsupported(&e) => {
                            ctx.note(format!("punch hole disabled: {e}"));
                            punch = false;
                        }
                        r => r.map_err(|e| werr(slot, "fallocate(PUNCH_HOLE)", e))?,
                    }
                } else {
                    let to = rng.below(plan.shared_blocks + 1) * BLOCK as u64;
                    slot.set(Doing::Ftruncate, s, to);
                    fds[s].set_len(to).map_err(|e| werr(slot, "ftruncate", e))?;
                }
                slot.ops.fetch_add(1, Ordering::Relaxed);
                // Let the writers fill the files between truncates.
                std::thread::sleep(Duration::from_millis(rng.below(3)));
            }
        }
        Role::CopyWriter => {
            let fds = open_all(copies, false)?;
            while ctx.running() {
                let f = rng.below(2) as usize;
                let i = rng.below(plan.copy_blocks);
                stamp(&mut buf[..BLOCK], COPY_FAMILY, id, seq, i);
                seq += 1;
                ctx.issued[id as usize].store(seq, Ordering::SeqCst);
                let off = i * BLOCK as u64;
                slot.set(Doing::Pwrite, plan.shared_files + f, off);
                sys::pwrite_all(&fds[f], &buf[..BLOCK], off)
                    .map_err(|e| werr(slot, "pwrite", e))?;
                slot.ops.fetch_add(1, Ordering::Relaxed);
            }
        }
        Role::Copier { a_to_b } => {
            let fds = open_all(copies, false)?;
            let (src, dst) = if a_to_b { (0, 1) } else { (1, 0) };
            while ctx.running() {
                let k = 1 + rng.below(32.min(plan.copy_blocks));
                let i = rng.below(plan.copy_blocks - k + 1);
                let off = i * BLOCK as u64;
                slot.set(Doing::CopyRange, plan.shared_files + src, off);
                match sys::copy_file_range(&fds[src], off, &fds[dst], off, k as usize * BLOCK) {
                    Err(e) if unsupported(&e) => {
                        ctx.note(format!("copy_file_range disabled: {e}"));
                        break;
                    }
                    r => {
                        r.map_err(|e| werr(slot, "copy_file_range", e))?;
                    }
                }
                slot.ops.fetch_add(1, Ordering::Relaxed);
            }
        }
        Role::Renamer { forward } => {
            let (from, to) = (plan.rename_dir(!forward), plan.rename_dir(forward));
            while ctx.running() {
                let j = rng.below(plan.rename_files as u64) as usize;
                let n = Plan::rename_name(j);
                slot.set(Doing::Rename, 0, j as u64);
                match sys::rename_noreplace(&from.join(&n), &to.join(&n)) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                        return Err(StressError::Worker {
                            worker: slot.name.clone(),
                            op: format!("rename {n}"),
                            error: format!(
                                "{n} exists in both {} and {}",
                                from.display(),
                                to.display()
                            ),
                        });
                    }
                    Err(e) => return Err(werr(slot, &format!("rename {n}"), e)),
                }
                slot.ops.fetch_add(1, Ordering::Relaxed);
            }
        }
        Role::Reader { direct } => {
            // Files 0..shared_files are the shared ones, then A and B.
            let mut fds = open_all(shared.clone(), false)?;
            fds.extend(open_all(copies.clone(), false)?);
            let mut dfds = Vec::new();
            if direct {
                dfds = open_all(shared, true)?;
                dfds.extend(open_all(copies, true)?);
            }
            let issued = |w: u32| {
                ctx.issued
                    .get(w as usize)
                    .map_or(0, |n| n.load(Ordering::SeqCst))
            };
            let copy_writers = [SETUP_WRITER, plan.copy_writer];
            while ctx.running() {
                if rng.chance(1, 8) {
                    let d = plan.rename_dir(rng.chance(1, 2));
                    slot.set(Doing::Readdir, 0, 0);
                    let it = std::fs::read_dir(&d).map_err(|e| werr(slot, "readdir", e))?;
                    for e in it {
                        e.map_err(|e| werr(slot, "readdir", e))?;
                    }
                    slot.ops.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let f = rng.below(fds.len() as u64) as usize;
                let shared_file = f < plan.shared_files;
                let blocks = if shared_file {
                    plan.shared_blocks
                } else {
                    plan.copy_blocks
                };
                let i = rng.below(blocks);
                let off = i * BLOCK as u64;
                let use_direct = !dfds.is_empty() && rng.chance(1, 2);
                slot.set(Doing::Pread, f, off);
                let fd = if use_direct { &dfds[f] } else { &fds[f] };
                let n = sys::pread_full(fd, &mut buf[..BLOCK], off, use_direct)
                    .map_err(|e| werr(slot, "pread", e))?;
                slot.ops.fetch_add(1, Ordering::Relaxed);
                if n < BLOCK {
                    // Past EOF of a shared file (it was truncated).
                    continue;
                }
                let (b, name) = (&buf[..BLOCK], plan.file_name(f));
                let r = if shared_file {
                    let fam = f as u32 + 1;
                    Plan::check_block(&name, b, fam, i, &plan.block_writers, true, issued)
                } else {
                    Plan::check_block(&name, b, COPY_FAMILY, i, &copy_writers, false, issued)
                };
                match r {
                    Ok(_) => {}
                    Err(BlockProblem::Damaged(_)) => {
                        ctx.torn_reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(BlockProblem::Misplaced(m)) => {
                        return Err(StressError::Worker {
                            worker: slot.name.clone(),
                            op: format!(
                                "{} of a block",
                                if use_direct {
                                    "O_DIRECT pread"
                                } else {
                                    "pread"
                                }
                            ),
                            error: m,
                        });
                    }
                }
            }
        }
    }
    slot.set(Doing::Finished, 0, 0);
    Ok(())
}

fn setup(plan: &Plan) -> io::Result<()> {
    if plan.root.exists() {
        std::fs::remove_dir_all(&plan.root)?;
    }
    std::fs::create_dir(&plan.root)?;
    std::fs::create_dir(plan.rename_dir(false))?;
    std::fs::create_dir(plan.rename_dir(true))?;
    for s in 0..plan.shared_files {
        File::create(plan.shared(s))?;
    }
    let mut b = vec![0u8; BLOCK];
    for second in [false, true] {
        let mut data = Vec::with_capacity(plan.copy_blocks as usize * BLOCK);
        for i in 0..plan.copy_blocks {
            stamp(&mut b, COPY_FAMILY, SETUP_WRITER, 0, i);
            data.extend_from_slice(&b);
        }
        std::fs::write(plan.copy_file(second), &data)?;
    }
    for j in 0..plan.rename_files {
        stamp(&mut b, RENAME_FAMILY, SETUP_WRITER, 0, j as u64);
        std::fs::write(plan.rename_dir(j % 2 == 1).join(Plan::rename_name(j)), &b)?;
    }
    Ok(())
}

/// Runs the workload in `dir/stress` (replaced if it exists) for
/// `cfg.duration`, then checks the end state.
pub fn run(dir: &Path, cfg: &StressConfig) -> Result<StressReport, StressError> {
    if cfg.shared_files == 0 || cfg.shared_blocks == 0 || cfg.copy_blocks == 0 {
        return Err(StressError::Setup(
            "shared_files, shared_blocks and copy_blocks must be at least 1".into(),
        ));
    }
    let mut roles = Vec::new();
    for _ in 0..cfg.buffered_writers {
        roles.push(("bufwriter", Role::BlockWriter { direct: false }));
    }
    for _ in 0..cfg.direct_writers {
        roles.push(("directwriter", Role::BlockWriter { direct: true }));
    }
    if cfg.truncate {
        roles.push(("truncater", Role::Truncater));
    }
    if cfg.copy_range {
        roles.push(("copywriter", Role::CopyWriter));
        roles.push(("copier-A>B", Role::Copier { a_to_b: true }));
        roles.push(("copier-B>A", Role::Copier { a_to_b: false }));
    }
    if cfg.rename_files > 0 {
        roles.push(("renamer-1>2", Role::Renamer { forward: true }));
        roles.push(("renamer-2>1", Role::Renamer { forward: false }));
    }
    if cfg.reader {
        roles.push((
            "reader",
            Role::Reader {
                direct: cfg.direct_writers > 0,
            },
        ));
    }
    // Writer ids: 0 is setup, then one per worker that stamps blocks.
    let mut ids = Vec::new();
    let mut next_id = 1u32;
    for (_, r) in &roles {
        let id = match r {
            Role::BlockWriter { .. } | Role::CopyWriter => {
                next_id += 1;
                next_id - 1
            }
            _ => 0,
        };
        ids.push(id);
    }
    let block_writers = roles
        .iter()
        .zip(&ids)
        .filter(|((_, r), _)| matches!(r, Role::BlockWriter { .. }))
        .map(|(_, &id)| id)
        .collect();
    let copy_writer = roles
        .iter()
        .zip(&ids)
        .find(|((_, r), _)| matches!(r, Role::CopyWriter))
        .map_or(u32::MAX, |(_, &id)| id);
    let mut plan = Plan {
        root: dir.join("stress"),
        shared_files: cfg.shared_files,
        shared_blocks: cfg.shared_blocks,
        copy_blocks: cfg.copy_blocks,
        rename_files: cfg.rename_files,
        issued: vec![0; next_id as usize],
        block_writers,
        copy_writer,
    };
    plan.issued[SETUP_WRITER as usize] = 1;
    setup(&plan).map_err(|e| StressError::Setup(format!("{}: {e}", plan.root.display())))?;

    let started = Instant::now();
    let ctx = Arc::new(Ctx {
        plan: plan.clone(),
        issued: plan.issued.iter().map(|&n| AtomicU64::new(n)).collect(),
        torn_reads: AtomicU64::new(0),
        deadline: started + cfg.duration,
        stop: AtomicBool::new(false),
        notes: std::sync::Mutex::new(Vec::new()),
    });
    let (tx, rx) = mpsc::channel();
    let mut slots = Vec::new();
    let mut master = Rng::new(cfg.seed);
    for (i, ((name, role), id)) in roles.iter().zip(&ids).enumerate() {
        let slot = Arc::new(Slot {
            name: format!("{name}#{i}"),
            ops: AtomicU64::new(0),
            doing: AtomicU8::new(Doing::Starting as u8),
            file: AtomicU64::new(0),
            target: AtomicU64::new(0),
        });
        slots.push(slot.clone());
        let (wctx, tx, role, id) = (ctx.clone(), tx.clone(), *role, *id);
        let rng = Rng::new(master.next_u64());
        let spawned = std::thread::Builder::new()
            .name(slot.name.clone())
            .spawn(move || {
                let r = worker(role, id, rng, &slot, &wctx);
                if r.is_err() {
                    wctx.stop.store(true, Ordering::Relaxed);
                }
                let _ = tx.send((i, r));
            });
        if let Err(e) = spawned {
            ctx.stop.store(true, Ordering::Relaxed);
            return Err(StressError::Setup(format!("cannot start a thread: {e}")));
        }
    }
    drop(tx);
    let hard_deadline = started + cfg.duration + cfg.grace;
    let mut results: Vec<Option<WorkerResult>> = (0..roles.len()).map(|_| None).collect();
    let mut left = roles.len();
    while left > 0 {
        let wait = hard_deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok((i, r)) => {
                results[i] = Some(r);
                left -= 1;
            }
            Err(_) => break,
        }
    }
    if left > 0 {
        ctx.stop.store(true, Ordering::Relaxed);
        let stuck = slots
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_none())
            .map(|(s, _)| s.describe(&plan))
            .collect();
        return Err(StressError::Hang {
            waited: started.elapsed(),
            stuck,
        });
    }
    let elapsed = started.elapsed();
    for r in results.into_iter().flatten() {
        r?;
    }
    for (n, live) in plan.issued.iter_mut().zip(&ctx.issued) {
        *n = live.load(Ordering::SeqCst);
    }
    let verified = plan.verify(dir)?;
    let mut notes = ctx.notes.lock().map(|n| n.clone()).unwrap_or_default();
    let torn = ctx.torn_reads.load(Ordering::Relaxed);
    if torn > 0 {
        notes.push(format!(
            "the reader saw {torn} torn blocks while writes were in flight"
        ));
    }
    Ok(StressReport {
        seed: cfg.seed,
        elapsed,
        workers: slots
            .iter()
            .map(|s| WorkerStats {
                name: s.name.clone(),
                ops: s.ops.load(Ordering::Relaxed),
            })
            .collect(),
        notes,
        verified,
        plan,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_decode_and_damage_is_found() {
        let mut b = vec![0u8; BLOCK];
        assert_eq!(decode(&b), Ok(Block::Zero));
        stamp(&mut b, 3, 4, 5, 6);
        assert_eq!(
            decode(&b),
            Ok(Block::Stamp {
                family: 3,
                writer: 4,
                seq: 5,
                index: 6
            })
        );
        b[2000] ^= 1;
        assert!(decode(&b).unwrap_err().contains("from byte 2000"));
        let mut z = vec![0u8; BLOCK];
        z[100] = 1;
        assert!(decode(&z).unwrap_err().contains("neither zeros"));
    }

    #[test]
    fn short_run_on_a_local_directory_passes_and_reverifies() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StressConfig {
            duration: Duration::from_millis(300),
            shared_blocks: 32,
            copy_blocks: 16,
            rename_files: 8,
            // O_DIRECT is not available on every temporary directory.
            direct_writers: 0,
            ..StressConfig::default()
        };
        let r = run(dir.path(), &cfg).unwrap_or_else(|e| panic!("{e}"));
        assert!(r.total_ops() > 0, "{r}");
        assert_eq!(r.verified.in_dir1 + r.verified.in_dir2, 8);
        r.verify(dir.path()).unwrap();
        // Damage one renamed file: the check finds it.
        let p = dir.path().join("stress/r1/n0000");
        let p = if p.exists() {
            p
        } else {
            dir.path().join("stress/r2/n0000")
        };
        std::fs::write(&p, vec![1u8; BLOCK]).unwrap();
        let e = r.verify(dir.path()).unwrap_err().to_string();
        assert!(e.contains("n0000"), "{e}");
    }
}
