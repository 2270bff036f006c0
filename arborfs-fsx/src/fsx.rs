//! The exerciser: random operations on a few files, every read checked
//! against an in-memory model of their contents.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::{Config, MAX_KEPT_MAPS, OpKind};
use crate::report::{DataMismatch, Failure, FailureKind, LoggedOp, MapEnd, Op, Summary};
use crate::rng::Rng;
use crate::sys::{self, AlignedBuf, DIRECT_ALIGN, Mapping};

/// The error a remount callback returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A remount callback: called with every file of the run closed; when it
/// returns `Ok` the directory must be usable again.
pub type RemountFn<'a> = dyn FnMut() -> Result<(), BoxError> + 'a;

const ALIGN: u64 = DIRECT_ALIGN as u64;
/// Largest read of a full-file check.
const CHECK_CHUNK: u64 = 1 << 20;

type FsxResult<T> = Result<T, Box<Failure>>;

struct FileState {
    path: PathBuf,
    /// What the file must contain; its length is the file size.
    model: Vec<u8>,
    fd: Option<File>,
    direct: Option<File>,
}

/// Runs `cfg.ops` random operations on files in `dir` (created, or
/// truncated if they exist) and checks every read. `remount`, if given,
/// runs every `cfg.remount_every` ops with all files closed.
///
/// Returns a [`Summary`] when every check passed, else a [`Failure`] with
/// the seed, the failing op, the recent op log and the first difference.
/// The files are removed after a passing run (unless `cfg.cleanup` is off)
/// and kept after a failing one.
pub fn run(
    dir: &Path,
    cfg: &Config,
    remount: Option<&mut RemountFn<'_>>,
) -> Result<Summary, Box<Failure>> {
    let mut x = Exerciser::new(dir, cfg, remount)?;
    x.setup()?;
    for no in 1..=cfg.ops {
        x.no = no;
        if cfg.remount_every > 0 && no % cfg.remount_every == 0 {
            x.remount()?;
        }
        x.one_op()?;
        if cfg.check_every > 0 && no % cfg.check_every == 0 {
            x.check_all()?;
        }
        if cfg.progress_every > 0 && no % cfg.progress_every == 0 {
            eprintln!(
                "fsx: op {no}/{} ({:.0} ops/s)",
                cfg.ops,
                no as f64 / x.started.elapsed().as_secs_f64()
            );
        }
    }
    x.check_all()?;
    x.finish()
}

struct Exerciser<'c, 'r, 'f> {
    cfg: &'c Config,
    dir: PathBuf,
    max_size: u64,
    page: u64,
    files: Vec<FileState>,
    rng: Rng,
    log: VecDeque<LoggedOp>,
    /// The current op number.
    no: u64,
    weights: crate::config::Weights,
    counts: [u64; OpKind::ALL.len()],
    notes: Vec<String>,
    remount: Option<&'r mut RemountFn<'f>>,
    direct_ok: bool,
    /// Mappings of mmap writes left in place (dirty), oldest first.
    kept_maps: VecDeque<Mapping>,
    buf: Vec<u8>,
    prebuf: Vec<u8>,
    abuf: AlignedBuf,
    started: Instant,
    remounts: u64,
    full_checks: u64,
    bytes_written: u64,
    bytes_read: u64,
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::ENOTTY)
    )
}

/// Fills `buf` with data for one write: half the time random bytes, half
/// the time a random motif repeated (with a random byte here and there),
/// which compresses, so that compressing filesystems store it compressed.
fn fill_data(rng: &mut Rng, buf: &mut [u8]) {
    if rng.chance(1, 2) {
        rng.fill(buf);
        return;
    }
    let mut motif = [0u8; 64];
    let m = 1 + rng.below(64) as usize;
    rng.fill(&mut motif[..m]);
    for (i, b) in buf.iter_mut().enumerate() {
        *b = motif[i % m];
    }
    if rng.chance(1, 2) {
        let mut at = rng.below(512) as usize;
        while at < buf.len() {
            buf[at] = rng.next_u64() as u8;
            at += 1 + rng.below(1024) as usize;
        }
    }
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

impl<'c, 'r, 'f> Exerciser<'c, 'r, 'f> {
    fn new(
        dir: &Path,
        cfg: &'c Config,
        remount: Option<&'r mut RemountFn<'f>>,
    ) -> FsxResult<Exerciser<'c, 'r, 'f>> {
        let x = Exerciser {
            cfg,
            dir: dir.to_path_buf(),
            max_size: cfg.max_size / ALIGN * ALIGN,
            page: sys::page_size(),
            files: Vec::new(),
            rng: Rng::new(cfg.seed),
            log: VecDeque::with_capacity(cfg.log_len + 1),
            no: 0,
            weights: cfg.weights.clone(),
            counts: [0; OpKind::ALL.len()],
            notes: Vec::new(),
            remount,
            direct_ok: true,
            kept_maps: VecDeque::new(),
            buf: Vec::new(),
            prebuf: Vec::new(),
            abuf: AlignedBuf::new(round_up(cfg.max_len.max(1), ALIGN) as usize),
            started: Instant::now(),
            remounts: 0,
            full_checks: 0,
            bytes_written: 0,
            bytes_read: 0,
        };
        let bad = if !(1..=8).contains(&cfg.files) {
            Some(format!("files must be 1 to 8, not {}", cfg.files))
        } else if x.max_size < 64 << 10 {
            Some(format!("max size {} is below 64 KiB", cfg.max_size))
        } else if cfg.max_len == 0 {
            Some("max length is 0".to_string())
        } else if OpKind::ALL.iter().all(|&k| x.weights.get(k) == 0) {
            Some("every op is disabled".to_string())
        } else {
            None
        };
        if let Some(m) = bad {
            return Err(x.fail(FailureKind::Setup(m)));
        }
        Ok(x)
    }

    // ----------------------------------------------------------- plumbing

    fn fail(&self, kind: FailureKind) -> Box<Failure> {
        Box::new(Failure {
            seed: self.cfg.seed,
            op: self.no,
            kind,
            log: self.log.iter().copied().collect(),
            replay: self.cfg.replay_args(self.no.max(1)),
        })
    }

    fn syscall(&self, file: usize, call: &'static str, error: io::Error) -> Box<Failure> {
        self.fail(FailureKind::Syscall { file, call, error })
    }

    fn log(&mut self, file: usize, op: Op) {
        if self.log.len() == self.cfg.log_len.max(1) {
            self.log.pop_front();
        }
        self.log.push_back(LoggedOp {
            no: self.no,
            file,
            op,
        });
    }

    fn note(&mut self, msg: String) {
        if !self.cfg.quiet {
            eprintln!("fsx: {msg}");
        }
        self.notes.push(msg);
    }

    fn disable(&mut self, k: OpKind, why: String) {
        self.weights.set(k, 0);
        self.note(format!("{k} disabled at op {}: {why}", self.no));
    }

    fn fd(&self, f: usize) -> FsxResult<&File> {
        self.files[f].fd.as_ref().ok_or_else(|| {
            self.syscall(
                f,
                "use of a closed fd",
                io::Error::other("file not open (internal error)"),
            )
        })
    }

    fn compare(
        &self,
        f: usize,
        how: &'static str,
        off: u64,
        expected: &[u8],
        got: &[u8],
    ) -> FsxResult<()> {
        match DataMismatch::find(f, self.files[f].path.clone(), how, off, expected, got) {
            None => Ok(()),
            Some(m) => Err(self.fail(FailureKind::Data(Box::new(m)))),
        }
    }

    /// fstat's size must be the model's.
    fn check_size(&self, f: usize) -> FsxResult<()> {
        let got = sys::file_size(self.fd(f)?).map_err(|e| self.syscall(f, "fstat", e))?;
        let expected = self.files[f].model.len() as u64;
        if got != expected {
            return Err(self.fail(FailureKind::Size {
                file: f,
                path: self.files[f].path.clone(),
                expected,
                got,
            }));
        }
        Ok(())
    }

    fn model_write(&mut self, f: usize, off: u64, data: &[u8]) {
        let m = &mut self.files[f].model;
        let end = off as usize + data.len();
        if end > m.len() {
            m.resize(end, 0);
        }
        m[off as usize..end].copy_from_slice(data);
    }

    fn model_zero(&mut self, f: usize, off: u64, end: u64) {
        let m = &mut self.files[f].model;
        let end = (end as usize).min(m.len());
        if (off as usize) < end {
            m[off as usize..end].fill(0);
        }
    }

    fn open_all(&mut self) -> FsxResult<()> {
        for f in 0..self.files.len() {
            self.open_file(f)?;
        }
        Ok(())
    }

    /// Opens file `f`'s buffered fd and (if in use) its O_DIRECT fd.
    fn open_file(&mut self, f: usize) -> FsxResult<()> {
        let path = self.files[f].path.clone();
        let fd = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| self.syscall(f, "open", e))?;
        self.files[f].fd = Some(fd);
        if self.direct_ok {
            match OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
            {
                Ok(d) => self.files[f].direct = Some(d),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.direct_ok = false;
                    self.disable(OpKind::DirectRead, format!("open with O_DIRECT: {e}"));
                    self.disable(OpKind::DirectWrite, format!("open with O_DIRECT: {e}"));
                }
                Err(e) => return Err(self.syscall(f, "open O_DIRECT", e)),
            }
        }
        self.check_size(f)
    }

    fn close_all(&mut self) {
        // Kept mappings go first: their dirty pages are written back by
        // munmap or at the latest by the close (or the remount) after it.
        self.kept_maps.clear();
        for s in &mut self.files {
            s.fd = None;
            s.direct = None;
        }
    }

    fn setup(&mut self) -> FsxResult<()> {
        for f in 0..self.cfg.files {
            let path = self.dir.join(format!("{}.{f}", self.cfg.prefix));
            if let Err(e) = File::create(&path) {
                return Err(self.fail(FailureKind::Setup(format!(
                    "cannot create {}: {e}",
                    path.display()
                ))));
            }
            self.files.push(FileState {
                path,
                model: Vec::new(),
                fd: None,
                direct: None,
            });
        }
        let weights = self.weights.clone();
        if weights.get(OpKind::DirectRead) == 0 && weights.get(OpKind::DirectWrite) == 0 {
            self.direct_ok = false;
        }
        self.open_all()
    }

    fn finish(mut self) -> FsxResult<Summary> {
        self.close_all();
        if self.cfg.cleanup {
            for f in 0..self.files.len() {
                if let Err(e) = std::fs::remove_file(&self.files[f].path) {
                    return Err(self.syscall(f, "unlink", e));
                }
            }
        }
        Ok(Summary {
            seed: self.cfg.seed,
            ops: self.cfg.ops,
            elapsed: self.started.elapsed(),
            counts: OpKind::ALL
                .iter()
                .zip(self.counts)
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| (*k, n))
                .collect(),
            remounts: self.remounts,
            full_checks: self.full_checks,
            bytes_written: self.bytes_written,
            bytes_read: self.bytes_read,
            notes: self.notes,
        })
    }

    // ------------------------------------------------------ random choices

    fn draw(&mut self) -> Option<OpKind> {
        let total: u64 = OpKind::ALL
            .iter()
            .map(|&k| u64::from(self.weights.get(k)))
            .sum();
        let mut r = self.rng.below(total);
        for k in OpKind::ALL {
            let w = u64::from(self.weights.get(k));
            if r < w {
                return Some(k);
            }
            r -= w;
        }
        None
    }

    /// A length from 1 to `max_len`: small, medium or large, equally often.
    fn pick_len(&mut self) -> u64 {
        let cap = match self.rng.below(3) {
            0 => 512,
            1 => 16 << 10,
            _ => self.cfg.max_len,
        }
        .min(self.cfg.max_len);
        1 + self.rng.below(cap)
    }

    /// An offset below `max_size`: anywhere, near the end of the file,
    /// block aligned, or inside the file.
    fn pick_off(&mut self, size: u64) -> u64 {
        let max = self.max_size;
        let off = match self.rng.below(4) {
            0 => self.rng.below(max),
            1 => (size + self.rng.below(2 * 8192 + 1)).saturating_sub(8192),
            2 => self.rng.below(max / ALIGN) * ALIGN,
            _ => self.rng.below(size + 1),
        };
        off.min(max - 1)
    }

    /// `(off, len)` clipped to end at or before `max_size`.
    fn pick_range(&mut self, size: u64) -> (u64, u64) {
        let off = self.pick_off(size);
        let len = self.pick_len().min(self.max_size - off);
        (off, len)
    }

    /// A 4096-aligned `(off, len)` ending at or before `max_size`.
    fn pick_aligned(&mut self, size: u64) -> (u64, u64) {
        let off = self.pick_off(size) / ALIGN * ALIGN;
        let len = round_up(self.pick_len(), ALIGN).min(self.max_size - off);
        (off, len)
    }

    // ------------------------------------------------------------- the ops

    fn one_op(&mut self) -> FsxResult<()> {
        let Some(kind) = self.draw() else {
            return Err(self.fail(FailureKind::Setup("every op is disabled".into())));
        };
        let f = self.rng.below(self.files.len() as u64) as usize;
        let ran = match kind {
            OpKind::Read => self.op_read(f)?,
            OpKind::Write => self.op_write(f)?,
            OpKind::DirectRead => self.op_direct_read(f)?,
            OpKind::DirectWrite => self.op_direct_write(f)?,
            OpKind::MapRead => self.op_map_read(f)?,
            OpKind::MapWrite => self.op_map_write(f)?,
            OpKind::Truncate => self.op_truncate(f)?,
            OpKind::Falloc | OpKind::FallocKeepSize | OpKind::PunchHole | OpKind::ZeroRange => {
                self.op_fallocate(f, kind)?
            }
            OpKind::CopyRange => self.op_copy(f)?,
            OpKind::Fsync | OpKind::Fdatasync => {
                let data_only = kind == OpKind::Fdatasync;
                self.log(f, Op::Sync { data_only });
                let fd = self.fd(f)?;
                let r = if data_only {
                    fd.sync_data()
                } else {
                    fd.sync_all()
                };
                r.map_err(|e| self.syscall(f, kind.name(), e))?;
                true
            }
            OpKind::Seek => self.op_seek(f)?,
            OpKind::Reopen => {
                self.log(f, Op::Reopen);
                self.close_all();
                self.open_all()?;
                true
            }
        };
        if ran {
            let i = OpKind::ALL.iter().position(|&k| k == kind).unwrap_or(0);
            self.counts[i] += 1;
        }
        Ok(())
    }

    fn op_read(&mut self, f: usize) -> FsxResult<bool> {
        let size = self.files[f].model.len() as u64;
        let (off, len) = self.pick_range(size);
        self.log(
            f,
            Op::Read {
                kind: OpKind::Read,
                off,
                len,
            },
        );
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len as usize, 0);
        let r = sys::pread_full(self.fd(f)?, &mut buf, off, false);
        let n = r.map_err(|e| self.syscall(f, "pread", e))?;
        let m = &self.files[f].model;
        let exp = &m[(off as usize).min(m.len())..((off + len) as usize).min(m.len())];
        let res = self.compare(f, "pread", off, exp, &buf[..n]);
        self.bytes_read += n as u64;
        self.buf = buf;
        res.map(|()| true)
    }

    fn op_write(&mut self, f: usize) -> FsxResult<bool> {
        let size = self.files[f].model.len() as u64;
        let (off, len) = self.pick_range(size);
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len as usize, 0);
        fill_data(&mut self.rng, &mut buf);
        self.log(
            f,
            Op::Write {
                kind: OpKind::Write,
                off,
                len,
                size_before: size,
                map_end: None,
            },
        );
        let r = sys::pwrite_all(self.fd(f)?, &buf, off);
        if let Err(e) = r {
            self.buf = buf;
            return Err(self.syscall(f, "pwrite", e));
        }
        self.model_write(f, off, &buf);
        self.buf = buf;
        self.bytes_written += len;
        self.check_size(f)?;
        Ok(true)
    }

    fn direct_fd(&self, f: usize) -> FsxResult<&File> {
        self.files[f].direct.as_ref().ok_or_else(|| {
            self.syscall(
                f,
                "use of the O_DIRECT fd",
                io::Error::other("no O_DIRECT fd (internal error)"),
            )
        })
    }

    fn op_direct_read(&mut self, f: usize) -> FsxResult<bool> {
        let size = self.files[f].model.len() as u64;
        let (off, len) = self.pick_aligned(size);
        self.log(
            f,
            Op::Read {
                kind: OpKind::DirectRead,
                off,
                len,
            },
        );
        let mut abuf = std::mem::replace(&mut self.abuf, AlignedBuf::new(0));
        let r = sys::pread_full(self.direct_fd(f)?, &mut abuf[..len as usize], off, true);
        let res = match r {
            Err(e) => Err(self.syscall(f, "O_DIRECT pread", e)),
            Ok(n) => {
                self.bytes_read += n as u64;
                let m = &self.files[f].model;
                let exp = &m[(off as usize).min(m.len())..((off + len) as usize).min(m.len())];
                self.compare(f, "O_DIRECT pread", off, exp, &abuf[..n])
            }
        };
        self.abuf = abuf;
        res.map(|()| true)
    }

    fn op_direct_write(&mut self, f: usize) -> FsxResult<bool> {
        let size = self.files[f].model.len() as u64;
        let (off, len) = self.pick_aligned(size);
        let mut abuf = std::mem::replace(&mut self.abuf, AlignedBuf::new(0));
        let data = &mut abuf[..len as usize];
        fill_data(&mut self.rng, data);
        self.log(
            f,
            Op::Write {
                kind: OpKind::DirectWrite,
                off,
                len,
                size_before: size,
                map_end: None,
            },
        );
        let r = sys::pwrite_all(self.direct_fd(f)?, data, off);
        let res = match r {
            Err(e) => Err(self.syscall(f, "O_DIRECT pwrite", e)),
            Ok(()) => {
                self.model_write(f, off, &abuf[..len as usize]);
                self.bytes_written += len;
                Ok(())
            }
        };
        self.abuf = abuf;
        res?;
        self.check_size(f)?;
        Ok(true)
    }

    fn op_map_read(&mut self, f: usize) -> FsxResult<bool> {
        let size = self.files[f].model.len() as u64;
        if size == 0 {
            self.log(
                f,
                Op::Skipped {
                    kind: OpKind::MapRead,
                    why: "empty file",
                },
            );
            return Ok(false);
        }
        let off = self.pick_off(size) % size;
        let len = self.pick_len().min(size - off);
        self.log(
            f,
            Op::Read {
                kind: OpKind::MapRead,
                off,
                len,
            },
        );
        // The file must be as long as the model before anything is mapped:
        // touching a mapped page past EOF raises SIGBUS.
        self.check_size(f)?;
        let pg = off / self.page * self.page;
        let map_end = round_up(off + len, self.page);
        self.read_before_mapping(f, pg, map_end)?;
        let map = Mapping::new(self.fd(f)?, pg, (map_end - pg) as usize, false)
            .map_err(|e| self.syscall(f, "mmap", e))?;
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len as usize, 0);
        map.read((off - pg) as usize, &mut buf);
        let m = &self.files[f].model;
        let mut res = self.compare(
            f,
            "mmap read",
            off,
            &m[off as usize..(off + len) as usize],
            &buf,
        );
        // The rest of the last page, past EOF, must read as zeros.
        if res.is_ok() && map_end > size {
            let tail = (map_end - size) as usize;
            buf.resize(tail, 0);
            map.read((size - pg) as usize, &mut buf[..tail]);
            res = self.compare(f, "mmap past EOF", size, &vec![0; tail], &buf[..tail]);
        }
        self.buf = buf;
        res?;
        map.unmap().map_err(|e| self.syscall(f, "munmap", e))?;
        self.bytes_read += len;
        Ok(true)
    }

    fn op_map_write(&mut self, f: usize) -> FsxResult<bool> {
        let size = self.files[f].model.len() as u64;
        let (off, len) = self.pick_range(size);
        let r = self.rng.below(8);
        let end = if r < self.cfg.msync_eighths {
            MapEnd::Msync
        } else if r < self.cfg.msync_eighths + self.cfg.keep_map_eighths {
            MapEnd::Keep
        } else {
            MapEnd::Munmap
        };
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len as usize, 0);
        fill_data(&mut self.rng, &mut buf);
        self.log(
            f,
            Op::Write {
                kind: OpKind::MapWrite,
                off,
                len,
                size_before: size,
                map_end: Some(end),
            },
        );
        let res = self.map_write(f, off, &buf, end);
        if res.is_ok() {
            self.model_write(f, off, &buf);
            self.bytes_written += len;
        }
        self.buf = buf;
        res?;
        self.check_size(f)?;
        Ok(true)
    }

    /// Reads the pages `[from, to)` (up to EOF) that a mapping is about to
    /// touch: a page that cannot be read faults with SIGBUS through a
    /// mapping, but comes back from pread as an error to report.
    fn read_before_mapping(&mut self, f: usize, from: u64, to: u64) -> FsxResult<()> {
        let to = to.min(self.files[f].model.len() as u64);
        if from >= to {
            return Ok(());
        }
        let mut scratch = std::mem::take(&mut self.prebuf);
        scratch.resize((to - from) as usize, 0);
        let r = sys::pread_full(self.fd(f)?, &mut scratch, from, false);
        self.prebuf = scratch;
        r.map(|_| ())
            .map_err(|e| self.syscall(f, "pread (of the pages to map)", e))
    }

    fn map_write(&mut self, f: usize, off: u64, data: &[u8], how: MapEnd) -> FsxResult<()> {
        let end = off + data.len() as u64;
        if end > self.files[f].model.len() as u64 {
            // A mapping cannot extend a file: make room first.
            self.fd(f)?
                .set_len(end)
                .map_err(|e| self.syscall(f, "ftruncate (for mmap write)", e))?;
            self.files[f].model.resize(end as usize, 0);
        }
        self.check_size(f)?;
        let pg = off / self.page * self.page;
        self.read_before_mapping(f, pg, round_up(end, self.page))?;
        let mut map = Mapping::new(self.fd(f)?, pg, (end - pg) as usize, true)
            .map_err(|e| self.syscall(f, "mmap", e))?;
        map.write((off - pg) as usize, data);
        match how {
            MapEnd::Msync => {
                map.sync().map_err(|e| self.syscall(f, "msync", e))?;
                map.unmap().map_err(|e| self.syscall(f, "munmap", e))
            }
            MapEnd::Munmap => map.unmap().map_err(|e| self.syscall(f, "munmap", e)),
            MapEnd::Keep => {
                // Never touched again, only unmapped later: the file may
                // shrink under it meanwhile without any access faulting.
                self.kept_maps.push_back(map);
                if self.kept_maps.len() > MAX_KEPT_MAPS {
                    self.kept_maps.pop_front();
                }
                Ok(())
            }
        }
    }

    fn op_truncate(&mut self, f: usize) -> FsxResult<bool> {
        let size = self.files[f].model.len() as u64;
        let mut to = match self.rng.below(3) {
            0 => self.rng.below(size + 1),
            1 => self.rng.range(size, self.max_size + 1),
            _ => self.rng.below(self.max_size + 1),
        };
        if self.rng.chance(1, 4) {
            to = to / ALIGN * ALIGN;
        }
        self.log(f, Op::Truncate { from: size, to });
        self.fd(f)?
            .set_len(to)
            .map_err(|e| self.syscall(f, "ftruncate", e))?;
        self.files[f].model.resize(to as usize, 0);
        self.check_size(f)?;
        Ok(true)
    }

    fn op_fallocate(&mut self, f: usize, kind: OpKind) -> FsxResult<bool> {
        let size = self.files[f].model.len() as u64;
        let (off, len) = self.pick_range(size);
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        let mode = match kind {
            OpKind::Falloc => 0,
            OpKind::FallocKeepSize => keep,
            OpKind::PunchHole => libc::FALLOC_FL_PUNCH_HOLE | keep,
            _ if self.rng.chance(1, 2) => libc::FALLOC_FL_ZERO_RANGE | keep,
            _ => libc::FALLOC_FL_ZERO_RANGE,
        };
        self.log(
            f,
            Op::Fallocate {
                kind,
                mode,
                off,
                len,
                size_before: size,
            },
        );
        match sys::fallocate(self.fd(f)?, mode, off, len) {
            Err(e) if is_unsupported(&e) => {
                self.disable(kind, format!("fallocate mode {mode:#x}: {e}"));
                return Ok(false);
            }
            Err(e) => return Err(self.syscall(f, "fallocate", e)),
            Ok(()) => {}
        }
        let end = off + len;
        if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 || mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
            self.model_zero(f, off, end);
        }
        if mode & keep == 0 && end > size {
            self.files[f].model.resize(end as usize, 0);
        }
        self.check_size(f)?;
        Ok(true)
    }

    fn op_copy(&mut self, dst: usize) -> FsxResult<bool> {
        let src = self.rng.below(self.files.len() as u64) as usize;
        let src_size = self.files[src].model.len() as u64;
        let dst_size = self.files[dst].model.len() as u64;
        // Sometimes past the source's EOF (copies nothing there).
        let src_off = self
            .rng
            .below(src_size + src_size / 8 + 1)
            .min(self.max_size - 1);
        let mut len = self.pick_len();
        let mut dst_off = self.pick_off(dst_size);
        let mut tries = 0;
        while src == dst && dst_off < src_off + len && src_off < dst_off + len && tries < 4 {
            dst_off = self.pick_off(dst_size);
            tries += 1;
        }
        len = len.min(self.max_size - dst_off);
        if src == dst && dst_off < src_off + len && src_off < dst_off + len {
            self.log(
                dst,
                Op::Skipped {
                    kind: OpKind::CopyRange,
                    why: "ranges overlap",
                },
            );
            return Ok(false);
        }
        self.log(
            dst,
            Op::Copy {
                src,
                src_off,
                dst_off,
                len,
            },
        );
        let expected = len.min(src_size.saturating_sub(src_off));
        let mut copied = 0u64;
        // The first call asks for everything (past EOF too); later calls
        // only for what the source had when the copy began, since a copy
        // into the same file past its end makes that file longer.
        while copied < len {
            let ask = if copied == 0 {
                len
            } else {
                expected.saturating_sub(copied)
            };
            if ask == 0 {
                break;
            }
            let r = sys::copy_file_range(
                self.fd(src)?,
                src_off + copied,
                self.fd(dst)?,
                dst_off + copied,
                ask as usize,
            );
            match r {
                Ok(0) => break,
                Ok(n) => copied += n as u64,
                Err(e)
                    if copied == 0
                        && (is_unsupported(&e) || e.raw_os_error() == Some(libc::EXDEV)) =>
                {
                    self.disable(OpKind::CopyRange, format!("copy_file_range: {e}"));
                    return Ok(false);
                }
                Err(e) => return Err(self.syscall(dst, "copy_file_range", e)),
            }
        }
        if copied != expected {
            return Err(self.fail(FailureKind::Count {
                file: dst,
                call: "copy_file_range",
                expected,
                got: copied,
            }));
        }
        if copied > 0 {
            let s = src_off as usize;
            let data = self.files[src].model[s..s + copied as usize].to_vec();
            self.model_write(dst, dst_off, &data);
        }
        self.bytes_written += copied;
        self.check_size(dst)?;
        Ok(true)
    }

    fn op_seek(&mut self, f: usize) -> FsxResult<bool> {
        let size = self.files[f].model.len() as u64;
        let data = self.rng.chance(1, 2);
        let off = if size == 0 || self.rng.chance(1, 8) {
            self.rng.range(size, size + 8192)
        } else {
            self.rng.below(size)
        };
        // Half the time through a read-only fd with every writable fd of
        // the file closed (and kept mappings gone): a filesystem may answer
        // differently while the file is open for writing.
        let read_only = self.rng.chance(1, 2);
        self.log(
            f,
            Op::Seek {
                data,
                read_only,
                off,
                result: None,
            },
        );
        let whence = if data {
            libc::SEEK_DATA
        } else {
            libc::SEEK_HOLE
        };
        let r = if read_only {
            self.kept_maps.clear();
            self.files[f].fd = None;
            self.files[f].direct = None;
            let ro =
                File::open(&self.files[f].path).map_err(|e| self.syscall(f, "open O_RDONLY", e))?;
            let r = sys::lseek(&ro, off, whence);
            drop(ro);
            self.open_file(f)?;
            r
        } else {
            sys::lseek(self.fd(f)?, off, whence)
        };
        if let Some(LoggedOp {
            op: Op::Seek { result, .. },
            ..
        }) = self.log.back_mut()
        {
            *result = Some(match &r {
                Ok(p) => *p as i64,
                Err(e) => -i64::from(e.raw_os_error().unwrap_or(0)),
            });
        }
        let name = if data { "SEEK_DATA" } else { "SEEK_HOLE" };
        let zero = |m: &[u8], from: u64, to: u64| {
            m[from as usize..to as usize]
                .iter()
                .position(|&b| b != 0)
                .map(|i| from + i as u64)
        };
        let m = &self.files[f].model;
        let wrong = match r {
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                if off < size && !data {
                    Some(format!(
                        "{name} from {off:#x} inside the file (size {size:#x}) gave ENXIO"
                    ))
                } else if off < size {
                    zero(m, off, size).map(|at| {
                        format!("{name} from {off:#x} gave ENXIO (no data), but byte {at:#x} is not zero")
                    })
                } else {
                    None
                }
            }
            Err(e) if is_unsupported(&e) || e.raw_os_error() == Some(libc::EINVAL) => {
                self.disable(OpKind::Seek, format!("lseek {name}: {e}"));
                return Ok(false);
            }
            Err(e) => return Err(self.syscall(f, "lseek", e)),
            Ok(p) if off >= size => Some(format!(
                "{name} from {off:#x}, at or past EOF {size:#x}, gave {p:#x} instead of ENXIO"
            )),
            Ok(p) if p < off || p > size || (data && p == size) => Some(format!(
                "{name} from {off:#x} gave {p:#x}, outside [{off:#x}, {size:#x}{}",
                if data { ")" } else { "]" }
            )),
            Ok(p) if data => zero(m, off, p).map(|at| {
                format!("{name} from {off:#x} skipped to {p:#x}, but byte {at:#x} is not zero")
            }),
            // A hole reads as zeros: at least up to the end of the sector
            // it starts in.
            Ok(p) => zero(m, p, round_up(p + 1, 512).min(size)).map(|at| {
                format!(
                    "{name} from {off:#x} reported a hole at {p:#x}, but byte {at:#x} is not zero"
                )
            }),
        };
        match wrong {
            Some(what) => Err(self.fail(FailureKind::Wrong { file: f, what })),
            None => Ok(true),
        }
    }

    // ------------------------------------------------- remount and checks

    fn remount(&mut self) -> FsxResult<()> {
        self.log(0, Op::Remount);
        self.close_all();
        if let Some(cb) = self.remount.as_mut() {
            if let Err(e) = cb() {
                return Err(self.fail(FailureKind::Remount(e.to_string())));
            }
            self.remounts += 1;
        }
        self.open_all()?;
        self.check_all()
    }

    /// Reads every file completely and compares it with the model.
    fn check_all(&mut self) -> FsxResult<()> {
        let mut buf = std::mem::take(&mut self.buf);
        let mut res = Ok(());
        for f in 0..self.files.len() {
            res = self.check_file(f, &mut buf);
            if res.is_err() {
                break;
            }
        }
        self.buf = buf;
        self.full_checks += 1;
        res
    }

    fn check_file(&mut self, f: usize, buf: &mut Vec<u8>) -> FsxResult<()> {
        let size = self.files[f].model.len() as u64;
        self.log(f, Op::FullCheck { size });
        self.check_size(f)?;
        let mut off = 0;
        // One chunk past the end too: the file must end where the model does.
        while off <= size {
            let len = CHECK_CHUNK.min(size - off + 1);
            buf.resize(len as usize, 0);
            let n = sys::pread_full(self.fd(f)?, buf, off, false)
                .map_err(|e| self.syscall(f, "pread (full check)", e))?;
            let m = &self.files[f].model;
            let exp = &m[off as usize..((off + len) as usize).min(m.len())];
            self.compare(f, "pread (full check)", off, exp, &buf[..n])?;
            self.bytes_read += n as u64;
            off += len;
        }
        Ok(())
    }
}
