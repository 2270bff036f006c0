//! What a run does: operation kinds, weights and sizes.

use std::fmt;

/// The kinds of random operation. Remounts and full-file checks are not
/// drawn: they run every `remount_every` / `check_every` operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// pread through the buffered fd.
    Read,
    /// pwrite through the buffered fd (extending, or past EOF leaving a hole).
    Write,
    /// pread through an O_DIRECT fd (4096-aligned offset, length, buffer).
    DirectRead,
    /// pwrite through an O_DIRECT fd (aligned).
    DirectWrite,
    /// Read through a MAP_SHARED mapping.
    MapRead,
    /// Write through a MAP_SHARED mapping (ftruncate first if it extends),
    /// then msync(MS_SYNC) and munmap, or just munmap, or keep the mapping
    /// (dirty) for a while.
    MapWrite,
    /// ftruncate, shrinking or growing.
    Truncate,
    /// fallocate mode 0 (may extend the size).
    Falloc,
    /// fallocate FALLOC_FL_KEEP_SIZE.
    FallocKeepSize,
    /// fallocate FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE.
    PunchHole,
    /// fallocate FALLOC_FL_ZERO_RANGE (half the time with KEEP_SIZE).
    ZeroRange,
    /// copy_file_range between two files or within one (non-overlapping).
    CopyRange,
    /// fsync.
    Fsync,
    /// fdatasync.
    Fdatasync,
    /// Close every fd and open again.
    Reopen,
    /// lseek SEEK_DATA or SEEK_HOLE: what it reports as a hole must read
    /// as zeros, and past EOF it must fail with ENXIO.
    Seek,
}

impl OpKind {
    /// Every kind, in a fixed order (the order weights are drawn in).
    pub const ALL: [OpKind; 16] = [
        OpKind::Read,
        OpKind::Write,
        OpKind::DirectRead,
        OpKind::DirectWrite,
        OpKind::MapRead,
        OpKind::MapWrite,
        OpKind::Truncate,
        OpKind::Falloc,
        OpKind::FallocKeepSize,
        OpKind::PunchHole,
        OpKind::ZeroRange,
        OpKind::CopyRange,
        OpKind::Fsync,
        OpKind::Fdatasync,
        OpKind::Reopen,
        OpKind::Seek,
    ];

    /// The name used in logs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::DirectRead => "dread",
            OpKind::DirectWrite => "dwrite",
            OpKind::MapRead => "mapread",
            OpKind::MapWrite => "mapwrite",
            OpKind::Truncate => "truncate",
            OpKind::Falloc => "falloc",
            OpKind::FallocKeepSize => "falloc_keep",
            OpKind::PunchHole => "punch",
            OpKind::ZeroRange => "zero",
            OpKind::CopyRange => "copy",
            OpKind::Fsync => "fsync",
            OpKind::Fdatasync => "fdatasync",
            OpKind::Reopen => "reopen",
            OpKind::Seek => "seek",
        }
    }

    /// The kind with this name.
    pub fn from_name(s: &str) -> Option<OpKind> {
        OpKind::ALL.into_iter().find(|k| k.name() == s)
    }

    fn index(self) -> usize {
        OpKind::ALL
            .iter()
            .position(|&k| k == self)
            .expect("every kind is in ALL")
    }

    /// The default relative frequency.
    pub fn default_weight(self) -> u32 {
        match self {
            OpKind::Read | OpKind::Write => 10,
            OpKind::DirectRead | OpKind::DirectWrite => 4,
            OpKind::MapRead | OpKind::MapWrite => 4,
            OpKind::Truncate => 3,
            OpKind::CopyRange => 4,
            OpKind::PunchHole | OpKind::ZeroRange | OpKind::Seek => 2,
            OpKind::Falloc | OpKind::FallocKeepSize => 1,
            OpKind::Fsync | OpKind::Fdatasync | OpKind::Reopen => 1,
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Relative frequencies of the op kinds; 0 disables a kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Weights([u32; OpKind::ALL.len()]);

impl Default for Weights {
    fn default() -> Weights {
        Weights(OpKind::ALL.map(OpKind::default_weight))
    }
}

impl Weights {
    pub fn get(&self, k: OpKind) -> u32 {
        self.0[k.index()]
    }

    pub fn set(&mut self, k: OpKind, w: u32) {
        self.0[k.index()] = w;
    }

    /// Parses `name=weight,...` on top of these weights.
    pub fn apply(&mut self, spec: &str) -> Result<(), String> {
        for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, w) = part
                .split_once('=')
                .ok_or_else(|| format!("expected NAME=WEIGHT, got {part:?}"))?;
            let k = OpKind::from_name(name.trim())
                .ok_or_else(|| format!("unknown op {name:?} (known: {})", known_names()))?;
            let w = w
                .trim()
                .parse()
                .map_err(|_| format!("bad weight in {part:?}"))?;
            self.set(k, w);
        }
        Ok(())
    }
}

/// Most mmap-write mappings kept at once.
pub const MAX_KEPT_MAPS: usize = 4;

/// The names of all op kinds, comma separated.
pub fn known_names() -> String {
    OpKind::ALL.map(OpKind::name).join(", ")
}

/// How a run behaves. `Config::default()` is a sensible run of 10 000 ops
/// on two files of up to 4 MiB.
#[derive(Clone, Debug)]
pub struct Config {
    /// Seeds every random choice: the same seed on the same filesystem
    /// makes the same operations.
    pub seed: u64,
    /// Number of operations.
    pub ops: u64,
    /// Number of files (1 to 8); copies go between them.
    pub files: usize,
    /// Largest file size (rounded down to 4096; at least 64 KiB).
    pub max_size: u64,
    /// Longest single read or write.
    pub max_len: u64,
    pub weights: Weights,
    /// Compare every file completely every this many ops (0: only at the end).
    pub check_every: u64,
    /// Remount (through the callback) every this many ops (0: never).
    pub remount_every: u64,
    /// How many recent operations a failure report shows.
    pub log_len: usize,
    /// Out of 8 mmap writes, how many are msynced before munmap (the
    /// others are just unmapped, leaving dirty pages to writeback).
    pub msync_eighths: u64,
    /// Out of 8 mmap writes, how many keep their mapping (dirty pages left
    /// to writeback) until the next reopen or until more than
    /// [`MAX_KEPT_MAPS`] are kept; counted after `msync_eighths`.
    pub keep_map_eighths: u64,
    /// Print a progress line every this many ops (0: never).
    pub progress_every: u64,
    /// Do not print notes (disabled ops) to stderr as they happen.
    pub quiet: bool,
    /// Remove the files at the end of a run that passed.
    pub cleanup: bool,
    /// Names of the files: `PREFIX.0`, `PREFIX.1`, ...
    pub prefix: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            seed: 1,
            ops: 10_000,
            files: 2,
            max_size: 4 << 20,
            max_len: 256 << 10,
            weights: Weights::default(),
            check_every: 1000,
            remount_every: 0,
            log_len: 64,
            msync_eighths: 5,
            keep_map_eighths: 1,
            progress_every: 0,
            quiet: false,
            cleanup: true,
            prefix: "fsx".into(),
        }
    }
}

impl Config {
    /// Disables one kind of op.
    pub fn disable(&mut self, k: OpKind) -> &mut Config {
        self.weights.set(k, 0);
        self
    }

    /// Command-line arguments of the `fsx` binary for this configuration
    /// with `ops` operations (options at their defaults left out).
    pub fn replay_args(&self, ops: u64) -> String {
        let d = Config::default();
        let mut a = vec![format!("--seed {}", self.seed), format!("--ops {ops}")];
        if self.files != d.files {
            a.push(format!("--files {}", self.files));
        }
        if self.max_size != d.max_size {
            a.push(format!("--max-size {}", self.max_size));
        }
        if self.max_len != d.max_len {
            a.push(format!("--max-len {}", self.max_len));
        }
        if self.check_every != d.check_every {
            a.push(format!("--check-every {}", self.check_every));
        }
        if self.remount_every != d.remount_every {
            a.push(format!(
                "--remount-every {} --remount-cmd '...'",
                self.remount_every
            ));
        }
        if self.msync_eighths != d.msync_eighths {
            a.push(format!("--msync-eighths {}", self.msync_eighths));
        }
        if self.keep_map_eighths != d.keep_map_eighths {
            a.push(format!("--keep-map-eighths {}", self.keep_map_eighths));
        }
        if self.prefix != d.prefix {
            a.push(format!("--prefix {}", self.prefix));
        }
        let changed: Vec<String> = OpKind::ALL
            .iter()
            .filter(|&&k| self.weights.get(k) != k.default_weight())
            .map(|&k| format!("{}={}", k.name(), self.weights.get(k)))
            .collect();
        if !changed.is_empty() {
            a.push(format!("--weights {}", changed.join(",")));
        }
        a.push("DIR".into());
        a.join(" ")
    }
}

/// Parses a size such as `4096`, `64K`, `8M`, `1G` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("bad size unit in {s:?} (K, M or G)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("bad size {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in OpKind::ALL {
            assert_eq!(OpKind::from_name(k.name()), Some(k));
        }
        assert_eq!(OpKind::from_name("nope"), None);
    }

    #[test]
    fn weights_parse() {
        let mut w = Weights::default();
        w.apply("read=3, mapwrite=0").unwrap();
        assert_eq!(w.get(OpKind::Read), 3);
        assert_eq!(w.get(OpKind::MapWrite), 0);
        assert!(w.apply("bogus=1").is_err());
        assert!(w.apply("read").is_err());
        assert!(w.apply("read=x").is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("8m"), Ok(8 << 20));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn replay_args_name_what_differs() {
        let mut c = Config {
            seed: 5,
            max_size: 1 << 20,
            ..Config::default()
        };
        c.disable(OpKind::MapWrite);
        assert_eq!(
            c.replay_args(99),
            "--seed 5 --ops 99 --max-size 1048576 --weights mapwrite=0 DIR"
        );
    }
}
