//! What a run reports: the op log, failures with a hexdump of the first
//! difference, and the summary of a run that passed.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::OpKind;

/// Bytes shown either side of the first difference.
const WINDOW_BEFORE: u64 = 16;
const WINDOW_AFTER: u64 = 48;

/// What one logged operation did (offsets and lengths in bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A read through the buffered fd (pread), the O_DIRECT fd or a mapping.
    Read { kind: OpKind, off: u64, len: u64 },
    /// A write through the buffered fd (pwrite), the O_DIRECT fd or a
    /// mapping (`map_end`: what happened to the mapping afterwards;
    /// `size_before`: the size before the write, or before the ftruncate
    /// that made room for a mapping).
    Write {
        kind: OpKind,
        off: u64,
        len: u64,
        size_before: u64,
        map_end: Option<MapEnd>,
    },
    /// ftruncate from one size to another.
    Truncate { from: u64, to: u64 },
    /// fallocate of `[off, off + len)`; `mode` is the flags passed.
    Fallocate {
        kind: OpKind,
        mode: i32,
        off: u64,
        len: u64,
        size_before: u64,
    },
    /// copy_file_range from file `src` into the logged file.
    Copy {
        src: usize,
        src_off: u64,
        dst_off: u64,
        len: u64,
    },
    /// fsync (`data_only`: fdatasync).
    Sync { data_only: bool },
    /// lseek from `off` for data (`data`) or a hole; `result` is the
    /// offset returned or the errno (negative), once known.
    Seek {
        data: bool,
        /// Through a read-only fd with the file's writable fds closed.
        read_only: bool,
        off: u64,
        result: Option<i64>,
    },
    /// All fds closed and opened again.
    Reopen,
    /// All fds closed, the caller's remount ran, fds opened again.
    Remount,
    /// A full-file read compared with the model.
    FullCheck { size: u64 },
    /// An op that was chosen but had nothing to do (e.g. mmap of an empty
    /// file), or was disabled because the filesystem does not support it.
    Skipped { kind: OpKind, why: &'static str },
}

/// How an mmap write ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapEnd {
    /// msync(MS_SYNC), then munmap.
    Msync,
    /// munmap only.
    Munmap,
    /// The mapping stays (its pages dirty until writeback) until the next
    /// reopen, or until more than a few mappings are kept.
    Keep,
}

/// One entry of the op log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoggedOp {
    /// 1-based operation number (remounts and checks carry the number of
    /// the operation they ran before or after).
    pub no: u64,
    /// The file acted on (the destination of a copy).
    pub file: usize,
    pub op: Op,
}

impl LoggedOp {
    /// Whether this op could have changed or read byte `at` of `file`.
    pub fn touches(&self, file: usize, at: u64) -> bool {
        let within = |off: u64, len: u64| at >= off && at < off.saturating_add(len);
        match self.op {
            Op::Read { .. } | Op::FullCheck { .. } | Op::Sync { .. } | Op::Seek { .. } => false,
            Op::Write { off, len, .. } => self.file == file && within(off, len),
            Op::Truncate { from, to } => self.file == file && at >= from.min(to),
            Op::Fallocate { off, len, .. } => self.file == file && within(off, len),
            Op::Copy { dst_off, len, .. } => self.file == file && within(dst_off, len),
            Op::Reopen | Op::Remount | Op::Skipped { .. } => false,
        }
    }
}

fn range(f: &mut fmt::Formatter<'_>, off: u64, len: u64) -> fmt::Result {
    write!(
        f,
        "{off:#x} thru {:#x} ({len:#x} bytes)",
        (off + len).saturating_sub(1)
    )
}

impl fmt::Display for LoggedOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>8} ", self.no)?;
        match self.op {
            Op::Read { kind, off, len } => {
                write!(f, "{:<11} f{} ", kind.name(), self.file)?;
                range(f, off, len)
            }
            Op::Write {
                kind,
                off,
                len,
                size_before,
                map_end,
            } => {
                write!(f, "{:<11} f{} ", kind.name(), self.file)?;
                range(f, off, len)?;
                if off > size_before {
                    write!(f, " HOLE")?;
                } else if off + len > size_before {
                    write!(f, " EXTEND")?;
                }
                match map_end {
                    Some(MapEnd::Msync) => write!(f, " msync"),
                    Some(MapEnd::Munmap) => write!(f, " munmap-only"),
                    Some(MapEnd::Keep) => write!(f, " kept-mapped"),
                    None => Ok(()),
                }
            }
            Op::Truncate { from, to } => write!(
                f,
                "{:<11} f{} {from:#x} -> {to:#x} {}",
                "truncate",
                self.file,
                if to < from { "DOWN" } else { "UP" }
            ),
            Op::Fallocate {
                kind,
                mode,
                off,
                len,
                size_before,
            } => {
                write!(f, "{:<11} f{} ", kind.name(), self.file)?;
                range(f, off, len)?;
                write!(f, " mode {mode:#x} (size was {size_before:#x})")
            }
            Op::Copy {
                src,
                src_off,
                dst_off,
                len,
            } => write!(
                f,
                "{:<11} f{src} {src_off:#x} -> f{} {dst_off:#x} ({len:#x} bytes)",
                "copy_range", self.file
            ),
            Op::Sync { data_only } => write!(
                f,
                "{:<11} f{}",
                if data_only { "fdatasync" } else { "fsync" },
                self.file
            ),
            Op::Seek {
                data,
                read_only,
                off,
                result,
            } => {
                let name = if data { "seek_data" } else { "seek_hole" };
                let ro = if read_only { " (O_RDONLY)" } else { "" };
                write!(f, "{name:<11} f{}{ro} from {off:#x} -> ", self.file)?;
                match result {
                    Some(r) if r >= 0 => write!(f, "{r:#x}"),
                    Some(r) => write!(f, "{}", io::Error::from_raw_os_error(-r as i32)),
                    None => write!(f, "?"),
                }
            }
            Op::Reopen => write!(f, "{:<11} all files", "reopen"),
            Op::Remount => write!(f, "{:<11} all files closed, remounted", "REMOUNT"),
            Op::FullCheck { size } => {
                write!(f, "{:<11} f{} size {size:#x}", "fullcheck", self.file)
            }
            Op::Skipped { kind, why } => {
                write!(f, "{:<11} f{} skipped: {why}", kind.name(), self.file)
            }
        }
    }
}

/// Bytes that differ between what the model says and what was read.
#[derive(Debug)]
pub struct DataMismatch {
    pub file: usize,
    pub path: PathBuf,
    /// How the bytes were read: "pread", "O_DIRECT pread", "mmap", ...
    pub how: &'static str,
    /// The file offset and length of the read.
    pub read_off: u64,
    pub expected_len: u64,
    pub got_len: u64,
    /// First differing file offset (or where a short read stopped).
    pub first_diff: u64,
    /// Last differing file offset within what both sides have.
    pub last_diff: u64,
    /// Number of differing bytes within what both sides have.
    pub diff_bytes: u64,
    /// The window shown: file offset of its first byte, expected and got.
    pub window_off: u64,
    pub expected: Vec<u8>,
    pub got: Vec<u8>,
}

impl DataMismatch {
    /// Compares `got` (read at `read_off`) with `expected`; `None` if equal.
    pub fn find(
        file: usize,
        path: PathBuf,
        how: &'static str,
        read_off: u64,
        expected: &[u8],
        got: &[u8],
    ) -> Option<DataMismatch> {
        if expected == got {
            return None;
        }
        let common = expected.len().min(got.len());
        let first = (0..common)
            .find(|&i| expected[i] != got[i])
            .unwrap_or(common);
        let last = (0..common)
            .rev()
            .find(|&i| expected[i] != got[i])
            .unwrap_or(first);
        let diff_bytes = (0..common).filter(|&i| expected[i] != got[i]).count() as u64;
        let ws = (first as u64).saturating_sub(WINDOW_BEFORE) / 16 * 16;
        let we = first as u64 + WINDOW_AFTER;
        let slice = |b: &[u8]| {
            let e = (we as usize).min(b.len());
            b.get(ws as usize..e).unwrap_or(&[]).to_vec()
        };
        Some(DataMismatch {
            file,
            path,
            how,
            read_off,
            expected_len: expected.len() as u64,
            got_len: got.len() as u64,
            first_diff: read_off + first as u64,
            last_diff: read_off + last as u64,
            diff_bytes,
            window_off: read_off + ws,
            expected: slice(expected),
            got: slice(got),
        })
    }
}

fn hexdump(f: &mut fmt::Formatter<'_>, m: &DataMismatch) -> fmt::Result {
    let rows = m.expected.len().max(m.got.len()).div_ceil(16);
    writeln!(f, "  {:<10}  {:<48}  {:<48}", "offset", "expected", "got")?;
    for r in 0..rows {
        let hex = |b: &[u8], other: &[u8]| {
            let mut s = String::new();
            for i in r * 16..r * 16 + 16 {
                match b.get(i) {
                    Some(x) => {
                        let mark = if other.get(i) != Some(x) { '*' } else { ' ' };
                        s.push_str(&format!("{x:02x}{mark}"));
                    }
                    None => s.push_str("-- "),
                }
            }
            s
        };
        writeln!(
            f,
            "  {:#010x}  {}  {}",
            m.window_off + (r * 16) as u64,
            hex(&m.expected, &m.got),
            hex(&m.got, &m.expected)
        )?;
    }
    Ok(())
}

/// What went wrong.
#[derive(Debug)]
pub enum FailureKind {
    /// A read returned bytes (or a length) other than the model's.
    Data(Box<DataMismatch>),
    /// fstat's size is not the model's.
    Size {
        file: usize,
        path: PathBuf,
        expected: u64,
        got: u64,
    },
    /// A call transferred another number of bytes than the model says.
    Count {
        file: usize,
        call: &'static str,
        expected: u64,
        got: u64,
    },
    /// A system call failed that should not have.
    Syscall {
        file: usize,
        call: &'static str,
        error: io::Error,
    },
    /// A result breaks a rule other than the bytes and size (e.g. lseek
    /// reported a hole where the model has data).
    Wrong { file: usize, what: String },
    /// The remount callback failed.
    Remount(String),
    /// The run could not start (bad configuration, cannot create files).
    Setup(String),
}

/// A failed run: everything needed to understand and replay it.
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    /// The operation number that failed (0: during setup).
    pub op: u64,
    pub kind: FailureKind,
    /// The last operations, oldest first (the failing one last).
    pub log: Vec<LoggedOp>,
    /// Arguments that replay the run with the `fsx` binary, up to the
    /// failing operation.
    pub replay: String,
}

impl Failure {
    /// The file offset the failure is about, if any.
    fn offset(&self) -> Option<(usize, u64)> {
        match &self.kind {
            FailureKind::Data(m) => Some((m.file, m.first_diff)),
            FailureKind::Size {
                file,
                expected,
                got,
                ..
            } => Some((*file, (*expected).min(*got))),
            _ => None,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "fsx FAILED at op {} (seed {})", self.op, self.seed)?;
        match &self.kind {
            FailureKind::Data(m) => {
                writeln!(
                    f,
                    "data mismatch in f{} ({}) via {}: at {:#x} expected {:#x} bytes, got {:#x}",
                    m.file,
                    m.path.display(),
                    m.how,
                    m.read_off,
                    m.expected_len,
                    m.got_len
                )?;
                writeln!(
                    f,
                    "first difference at file offset {:#x} ({}), last at {:#x}, {} bytes differ",
                    m.first_diff, m.first_diff, m.last_diff, m.diff_bytes
                )?;
                hexdump(f, m)?;
            }
            FailureKind::Size {
                file,
                path,
                expected,
                got,
            } => writeln!(
                f,
                "size mismatch in f{file} ({}): model {expected:#x} ({expected}), fstat {got:#x} ({got})",
                path.display()
            )?,
            FailureKind::Count {
                file,
                call,
                expected,
                got,
            } => writeln!(
                f,
                "{call} into f{file} transferred {got:#x} bytes, the model says {expected:#x}"
            )?,
            FailureKind::Syscall { file, call, error } => {
                writeln!(f, "{call} on f{file} failed: {error}")?
            }
            FailureKind::Wrong { file, what } => writeln!(f, "wrong result on f{file}: {what}")?,
            FailureKind::Remount(m) => writeln!(f, "remount failed: {m}")?,
            FailureKind::Setup(m) => writeln!(f, "setup failed: {m}")?,
        }
        writeln!(
            f,
            "last {} operations (* = touched the failing offset):",
            self.log.len()
        )?;
        let at = self.offset();
        for op in &self.log {
            let mark = match at {
                Some((file, off)) if op.touches(file, off) => '*',
                _ => ' ',
            };
            writeln!(f, "{mark}{op}")?;
        }
        write!(f, "replay: fsx {}", self.replay)
    }
}

impl std::error::Error for Failure {}

/// The result of a run that passed.
#[derive(Clone, Debug)]
pub struct Summary {
    pub seed: u64,
    pub ops: u64,
    pub elapsed: Duration,
    /// How often each kind ran (skips not counted).
    pub counts: Vec<(OpKind, u64)>,
    pub remounts: u64,
    pub full_checks: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
    /// Ops disabled during the run and why.
    pub notes: Vec<String>,
}

impl Summary {
    /// Operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fsx passed: seed {}, {} ops in {:.2?} ({:.0} ops/s), {} remounts, {} full checks, {} MiB written, {} MiB read",
            self.seed,
            self.ops,
            self.elapsed,
            self.ops_per_sec(),
            self.remounts,
            self.full_checks,
            self.bytes_written >> 20,
            self.bytes_read >> 20
        )?;
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(k, n)| format!("{} {n}", k.name()))
            .collect();
        write!(f, "  ops: {}", counts.join(", "))?;
        for n in &self.notes {
            write!(f, "\n  note: {n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_finds_first_and_last_difference() {
        let exp = vec![1u8; 100];
        let mut got = exp.clone();
        got[40] = 9;
        got[70] = 9;
        let m = DataMismatch::find(0, "f".into(), "pread", 1000, &exp, &got).unwrap();
        assert_eq!(m.first_diff, 1040);
        assert_eq!(m.last_diff, 1070);
        assert_eq!(m.diff_bytes, 2);
        assert_eq!(m.window_off, 1016);
        assert!(DataMismatch::find(0, "f".into(), "pread", 0, &exp, &exp).is_none());
        // A short read differs where it stops.
        let m = DataMismatch::find(0, "f".into(), "pread", 0, &exp, &exp[..50]).unwrap();
        assert_eq!(m.first_diff, 50);
        assert_eq!(m.diff_bytes, 0);
    }

    #[test]
    fn failure_prints_seed_log_and_hexdump() {
        let exp = vec![0u8; 64];
        let mut got = exp.clone();
        got[20] = 0xab;
        let fail = Failure {
            seed: 77,
            op: 12,
            kind: FailureKind::Data(Box::new(
                DataMismatch::find(1, "x".into(), "mmap", 4096, &exp, &got).unwrap(),
            )),
            log: vec![LoggedOp {
                no: 11,
                file: 1,
                op: Op::Write {
                    kind: OpKind::Write,
                    off: 4100,
                    len: 100,
                    size_before: 0,
                    map_end: None,
                },
            }],
            replay: "--seed 77 --ops 12 DIR".into(),
        };
        let s = fail.to_string();
        assert!(s.contains("seed 77"), "{s}");
        assert!(s.contains("0x1014"), "{s}");
        assert!(s.contains("ab*"), "{s}");
        assert!(s.contains("*      11 write"), "{s}");
        assert!(s.contains("replay: fsx --seed 77 --ops 12"), "{s}");
    }
}
