//! The superblock: the one block that says how the device is laid out.
//!
//! Two copies: the primary at byte [`SB_PRIMARY_OFFSET`] (inside bucket 0,
//! which holds nothing else) and the backup in the last 4096-byte block of
//! the device ([`backup_offset`]). [`Superblock::write`] bumps `seq` and
//! writes primary, flush, backup, flush, so a crash always leaves at least one
//! valid copy; [`Superblock::read`] takes the valid copy with the higher seq.
//!
//! Device layout:
//!
//! ```text
//! bucket 0                 | buckets 1..=J | buckets J+1..nbuckets | (slack) | backup sb
//! [0,4096) unused, [4096,8192) primary sb | journal | data, b-tree nodes |  | last 4096 bytes
//! ```
//!
//! The wire layout (field offsets) is in [`sb_format`] and
//! `docs/format.md` (section 2):
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0    | 16  | magic `b"ArborFS-superblk"` |
//! | 16   | 4   | crc32c of bytes `20..4096` |
//! | 20   | 4   | format version (1) |
//! | 24   | 16  | filesystem uuid |
//! | 40   | 4   | block size (4096) |
//! | 44   | 4   | bucket size, bytes |
//! | 48   | 4   | b-tree node size, bytes |
//! | 52   | 4   | reserved, zero |
//! | 56   | 8   | device size, bytes |
//! | 64   | 8   | number of buckets |
//! | 72   | 8   | first journal bucket |
//! | 80   | 8   | journal buckets |
//! | 88   | 1   | data checksum type (0 none, 1 crc32c, 2 xxh3) |
//! | 89   | 1   | compression type (0 none, 1 lz4, 2 zstd) |
//! | 90   | 1   | compression level |
//! | 91   | 1   | clean flag (0 dirty, 1 clean) |
//! | 92   | 4   | reserved, zero |
//! | 96   | 8   | superblock sequence number |
//! | 104  | 8   | clean: next journal seq |
//! | 112  | 8   | clean: next journal offset (relative to the journal region) |
//! | 120  | 8   | clean: last journal seq written |
//! | 128  | 288 | clean: 9 root slots of 32 bytes (presence byte, 7 zero, 24-byte `BtreePtr`) |
//! | 416  | 3680| reserved, zero |

pub mod sb_format;

use crate::btree::node_format::BtreePtr;
use crate::device::Device;
use crate::error::{Error, Result, Structure};
use crate::key::BtreeId;
use std::fmt;
use std::str::FromStr;

/// The on-disk format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes in one superblock copy.
pub const SB_BYTES: usize = 4096;
/// Byte offset of the primary copy (inside bucket 0, reserved for it).
pub const SB_PRIMARY_OFFSET: u64 = 4096;
/// The only supported block size.
pub const BLOCK_SIZE: u32 = 4096;
/// Smallest allowed bucket size.
pub const MIN_BUCKET_SIZE: u32 = 64 << 10;
/// Smallest allowed b-tree node size.
pub const MIN_NODE_SIZE: u32 = 16 << 10;
/// Largest allowed b-tree node size.
pub const MAX_NODE_SIZE: u32 = 1 << 20;
/// Data buckets a filesystem needs at the very least.
pub const MIN_DATA_BUCKETS: u64 = 8;
/// Fewest journal buckets.
pub const MIN_JOURNAL_BUCKETS: u64 = 2;

/// Byte offset of the backup copy: the last whole 4096-byte block.
pub fn backup_offset(device_size: u64) -> u64 {
    (device_size / SB_BYTES as u64).saturating_sub(1) * SB_BYTES as u64
}

/// Checksum used for user data extents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum ChecksumType {
    None = 0,
    #[default]
    Crc32c = 1,
    Xxh3 = 2,
}

impl ChecksumType {
    /// The type with on-disk value `v`.
    pub fn from_u8(v: u8) -> Option<ChecksumType> {
        match v {
            0 => Some(ChecksumType::None),
            1 => Some(ChecksumType::Crc32c),
            2 => Some(ChecksumType::Xxh3),
            _ => None,
        }
    }

    /// Lower-case name, as accepted by `FromStr`.
    pub fn name(self) -> &'static str {
        match self {
            ChecksumType::None => "none",
            ChecksumType::Crc32c => "crc32c",
            ChecksumType::Xxh3 => "xxh3",
        }
    }
}

impl fmt::Display for ChecksumType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ChecksumType {
    type Err = Error;
    fn from_str(s: &str) -> Result<ChecksumType> {
        match s {
            "none" => Ok(ChecksumType::None),
            "crc32c" => Ok(ChecksumType::Crc32c),
            "xxh3" => Ok(ChecksumType::Xxh3),
            _ => Err(Error::InvalidArgument(format!(
                "unknown checksum type {s:?} (expected none, crc32c or xxh3)"
            ))),
        }
    }
}

/// Compression used for user data extents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum CompressionType {
    #[default]
    None = 0,
    Lz4 = 1,
    Zstd = 2,
}

impl CompressionType {
    /// The type with on-disk value `v`.
    pub fn from_u8(v: u8) -> Option<CompressionType> {
        match v {
            0 => Some(CompressionType::None),
            1 => Some(CompressionType::Lz4),
            2 => Some(CompressionType::Zstd),
            _ => None,
        }
    }

    /// Lower-case name, as accepted by `FromStr`.
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::None => "none",
            CompressionType::Lz4 => "lz4",
            CompressionType::Zstd => "zstd",
        }
    }

    /// Highest level accepted (0 always means "the library default").
    pub fn max_level(self) -> u8 {
        match self {
            CompressionType::None => 0,
            CompressionType::Lz4 => 12,
            CompressionType::Zstd => 22,
        }
    }
}

impl fmt::Display for CompressionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CompressionType {
    type Err = Error;
    fn from_str(s: &str) -> Result<CompressionType> {
        match s {
            "none" => Ok(CompressionType::None),
            "lz4" => Ok(CompressionType::Lz4),
            "zstd" => Ok(CompressionType::Zstd),
            _ => Err(Error::InvalidArgument(format!(
                "unknown compression type {s:?} (expected none, lz4 or zstd)"
            ))),
        }
    }
}

/// What a clean unmount records so the next mount can skip journal replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CleanState {
    /// Seq the next journal entry gets.
    pub journal_next_seq: u64,
    /// Byte offset, relative to the journal region start, where it goes.
    pub journal_next_offset: u64,
    /// Seq of the last entry written before the clean shutdown.
    pub journal_last_seq: u64,
    /// Root node of each b-tree, indexed by [`BtreeId::index`].
    pub roots: [Option<BtreePtr>; BtreeId::COUNT],
}

/// The filesystem's superblock. See the module doc for the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Format version, [`FORMAT_VERSION`].
    pub version: u32,
    pub uuid: [u8; 16],
    /// Always 4096.
    pub block_size: u32,
    /// Bytes; a power of two, `>= node_size` and `>= 64 KiB`.
    pub bucket_size: u32,
    /// Bytes; a power of two in 16 KiB ..= 1 MiB.
    pub node_size: u32,
    /// Device size at format time, bytes.
    pub device_size: u64,
    /// Bucket `i` is bytes `[i*bucket_size, (i+1)*bucket_size)`; all end
    /// before the backup block.
    pub nbuckets: u64,
    /// Always 1: bucket 0 holds the primary superblock.
    pub journal_first_bucket: u64,
    pub journal_nbuckets: u64,
    pub data_checksum: ChecksumType,
    pub compression: CompressionType,
    pub compression_level: u8,
    /// Bumped on every write; the valid copy with the highest seq wins.
    pub seq: u64,
    /// `Some` when the filesystem was cleanly unmounted.
    pub clean: Option<CleanState>,
}

/// Options for [`Superblock::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatOptions {
    /// Bytes per bucket (default 1 MiB).
    pub bucket_size: u32,
    /// Bytes per b-tree node (default 256 KiB).
    pub node_size: u32,
    /// Journal size, rounded up to whole buckets (at least 2). `None`: one
    /// sixteenth of the buckets, clamped to 4 ..= 1024.
    pub journal_bytes: Option<u64>,
    pub data_checksum: ChecksumType,
    pub compression: CompressionType,
    /// 0 = the compressor's default.
    pub compression_level: u8,
    /// `None`: a random (v4) uuid.
    pub uuid: Option<[u8; 16]>,
}

impl Default for FormatOptions {
    fn default() -> FormatOptions {
        FormatOptions {
            bucket_size: 1 << 20,
            node_size: 256 << 10,
            journal_bytes: None,
            data_checksum: ChecksumType::Crc32c,
            compression: CompressionType::None,
            compression_level: 0,
            uuid: None,
        }
    }
}

/// Buckets a device should have at least before [`FormatOptions::for_device`]
/// moves to the next larger bucket size.
pub const TARGET_MIN_BUCKETS: u64 = 512;
/// Smallest bucket [`FormatOptions::for_device`] picks: one whole data unit
/// (`fs::data::MAX_EXTENT_BYTES`) still fits in a bucket.
pub const AUTO_MIN_BUCKET_SIZE: u32 = 128 << 10;

impl FormatOptions {
    /// The defaults, with bucket and node sizes scaled down for small
    /// devices: at least [`TARGET_MIN_BUCKETS`] buckets where the device
    /// allows (bucket size a power of two, 128 KiB to 1 MiB), and nodes of
    /// half a bucket up to 256 KiB. Copy-on-write and copygc need free
    /// buckets to move data into; with 1 MiB buckets a 24 MiB image has 23
    /// of them and ran out of space with a third of it holding data. Every
    /// b-tree has at least one node, so small nodes also keep an empty
    /// filesystem small. Devices of 512 MiB and more get the plain defaults.
    pub fn for_device(device_size: u64) -> FormatOptions {
        let max = FormatOptions::default();
        let per_bucket = device_size / TARGET_MIN_BUCKETS;
        let bucket_size = if per_bucket >= max.bucket_size as u64 {
            max.bucket_size
        } else {
            // the largest power of two not above per_bucket (0 stays small)
            let p = 1u64 << (63 - per_bucket.max(1).leading_zeros());
            (p as u32).clamp(AUTO_MIN_BUCKET_SIZE, max.bucket_size)
        };
        FormatOptions {
            bucket_size,
            node_size: max.node_size.min(bucket_size / 2),
            ..max
        }
    }
}

/// Which superblock copy [`Superblock::read`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SbCopy {
    Primary,
    Backup,
}

/// What [`Superblock::read`] found in each copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SbReadReport {
    /// The copy returned.
    pub used: SbCopy,
    /// `Ok(seq)` if the primary copy is valid, else why it was rejected.
    pub primary: std::result::Result<u64, String>,
    /// `Ok(seq)` if the backup copy is valid, else why it was rejected.
    pub backup: std::result::Result<u64, String>,
    /// Where the backup was read from.
    pub backup_offset: u64,
}

impl SbReadReport {
    /// True if either copy is invalid or they disagree on seq: the caller
    /// should rewrite the superblock to restore both copies.
    pub fn needs_repair(&self) -> bool {
        match (&self.primary, &self.backup) {
            (Ok(a), Ok(b)) => a != b,
            _ => true,
        }
    }
}

impl fmt::Display for SbReadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let copy = |r: &std::result::Result<u64, String>| match r {
            Ok(seq) => format!("valid, seq {seq}"),
            Err(e) => format!("rejected: {e}"),
        };
        write!(
            f,
            "using {} superblock; primary (byte {SB_PRIMARY_OFFSET}) {}; backup (byte {}) {}",
            match self.used {
                SbCopy::Primary => "primary",
                SbCopy::Backup => "backup",
            },
            copy(&self.primary),
            self.backup_offset,
            copy(&self.backup)
        )
    }
}

fn is_pow2(v: u64) -> bool {
    v != 0 && v & (v - 1) == 0
}

fn check_sizes(bucket_size: u32, node_size: u32) -> std::result::Result<(), String> {
    if !is_pow2(bucket_size as u64) || bucket_size < MIN_BUCKET_SIZE {
        return Err(format!(
            "bucket size {bucket_size} must be a power of two of at least {MIN_BUCKET_SIZE}"
        ));
    }
    if !is_pow2(node_size as u64) || !(MIN_NODE_SIZE..=MAX_NODE_SIZE).contains(&node_size) {
        return Err(format!(
            "node size {node_size} must be a power of two between {MIN_NODE_SIZE} and {MAX_NODE_SIZE}"
        ));
    }
    if node_size > bucket_size {
        return Err(format!(
            "node size {node_size} is larger than the bucket size {bucket_size}"
        ));
    }
    Ok(())
}

fn check_compression(c: CompressionType, level: u8) -> std::result::Result<(), String> {
    if level > c.max_level() {
        return Err(format!(
            "compression level {level} is out of range for {c} (0..={})",
            c.max_level()
        ));
    }
    Ok(())
}

impl Superblock {
    /// A superblock for a new filesystem on a device of `device_size` bytes:
    /// dirty (`clean: None`), `seq` 0.
    pub fn new(device_size: u64, opts: &FormatOptions) -> Result<Superblock> {
        check_sizes(opts.bucket_size, opts.node_size).map_err(Error::InvalidArgument)?;
        check_compression(opts.compression, opts.compression_level)
            .map_err(Error::InvalidArgument)?;
        let bucket = opts.bucket_size as u64;
        let journal_fixed = opts
            .journal_bytes
            .map(|bytes| bytes.div_ceil(bucket).max(MIN_JOURNAL_BUCKETS));
        let nbuckets = device_size.saturating_sub(SB_BYTES as u64) / bucket;
        let journal_nbuckets = journal_fixed.unwrap_or((nbuckets / 16).clamp(4, 1024));
        let needed = journal_nbuckets.saturating_add(1 + MIN_DATA_BUCKETS);
        if nbuckets < needed {
            // with the default journal size, the smallest device has the
            // smallest journal
            let min_journal = journal_fixed.unwrap_or(4);
            let min_buckets = min_journal.saturating_add(1 + MIN_DATA_BUCKETS);
            let min_bytes = min_buckets
                .saturating_mul(bucket)
                .saturating_add(SB_BYTES as u64);
            return Err(Error::InvalidArgument(format!(
                "device is too small: {device_size} bytes hold {nbuckets} buckets of {bucket} bytes; \
                 the minimum is {min_bytes} bytes ({min_buckets} buckets: 1 for the superblock, \
                 {min_journal} for the journal, {MIN_DATA_BUCKETS} for data, plus the backup superblock)"
            )));
        }
        let uuid = opts
            .uuid
            .unwrap_or_else(|| *uuid::Uuid::new_v4().as_bytes());
        Ok(Superblock {
            version: FORMAT_VERSION,
            uuid,
            block_size: BLOCK_SIZE,
            bucket_size: opts.bucket_size,
            node_size: opts.node_size,
            device_size,
            nbuckets,
            journal_first_bucket: 1,
            journal_nbuckets,
            data_checksum: opts.data_checksum,
            compression: opts.compression,
            compression_level: opts.compression_level,
            seq: 0,
            clean: None,
        })
    }

    /// Byte offset of bucket `b`.
    pub fn bucket_offset(&self, b: u64) -> u64 {
        b.saturating_mul(self.bucket_size as u64)
    }

    /// Byte offset where the journal region starts.
    pub fn journal_offset(&self) -> u64 {
        self.bucket_offset(self.journal_first_bucket)
    }

    /// Bytes in the journal region.
    pub fn journal_len(&self) -> u64 {
        self.journal_nbuckets
            .saturating_mul(self.bucket_size as u64)
    }

    /// The first bucket after the journal: data and b-tree nodes start here.
    pub fn first_data_bucket(&self) -> u64 {
        self.journal_first_bucket
            .saturating_add(self.journal_nbuckets)
    }

    /// Serializes to one block (checksum included).
    pub fn encode(&self) -> [u8; SB_BYTES] {
        sb_format::encode(self)
    }

    /// Parses and validates a copy read from device byte `dev_offset` (only
    /// used in error messages). Never panics.
    pub fn decode(buf: &[u8], dev_offset: u64) -> Result<Superblock> {
        let sb = sb_format::decode(buf, dev_offset)?;
        sb.validate()
            .map_err(|detail| Error::corrupted(Structure::Superblock, dev_offset, detail))?;
        Ok(sb)
    }

    /// Checks that the fields are consistent with each other. The error is a
    /// description of the first problem found.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.version != FORMAT_VERSION {
            return Err(format!("version {} is not {FORMAT_VERSION}", self.version));
        }
        if self.block_size != BLOCK_SIZE {
            return Err(format!(
                "block size {} is not {BLOCK_SIZE}",
                self.block_size
            ));
        }
        check_sizes(self.bucket_size, self.node_size)?;
        check_compression(self.compression, self.compression_level)?;
        let bucket = self.bucket_size as u64;
        let data_end = self
            .nbuckets
            .checked_mul(bucket)
            .ok_or_else(|| format!("{} buckets overflow", self.nbuckets))?;
        if self.device_size < 3 * SB_BYTES as u64 || data_end > backup_offset(self.device_size) {
            return Err(format!(
                "{} buckets of {bucket} bytes do not fit before the backup superblock of a {}-byte device",
                self.nbuckets, self.device_size
            ));
        }
        if self.journal_first_bucket != 1 {
            return Err(format!(
                "journal starts at bucket {}, not 1",
                self.journal_first_bucket
            ));
        }
        if self.journal_nbuckets < MIN_JOURNAL_BUCKETS
            || self.first_data_bucket().saturating_add(MIN_DATA_BUCKETS) > self.nbuckets
        {
            return Err(format!(
                "journal of {} buckets leaves too few of {} buckets for data",
                self.journal_nbuckets, self.nbuckets
            ));
        }
        if let Some(c) = &self.clean {
            if c.journal_next_offset > self.journal_len() {
                return Err(format!(
                    "clean journal offset {} is past the journal's {} bytes",
                    c.journal_next_offset,
                    self.journal_len()
                ));
            }
            if c.journal_last_seq >= c.journal_next_seq {
                return Err(format!(
                    "clean journal last seq {} is not below next seq {}",
                    c.journal_last_seq, c.journal_next_seq
                ));
            }
            let data_start = self.bucket_offset(self.first_data_bucket());
            for (id, root) in BtreeId::ALL.iter().zip(&c.roots) {
                let Some(p) = root else { continue };
                let fits = p.offset >= data_start
                    && p.offset % BLOCK_SIZE as u64 == 0
                    && p.sectors > 0
                    && p.bytes() <= self.node_size as u64
                    && p.offset
                        .checked_add(p.bytes())
                        .is_some_and(|e| e <= data_end);
                if !fits {
                    return Err(format!(
                        "{} root {p:?} is not a node-sized, block-aligned range of the data area",
                        id.name()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Bumps `seq` and writes both copies: primary, flush, backup, flush, so
    /// one valid copy exists at every moment.
    pub fn write(&mut self, dev: &dyn Device) -> Result<()> {
        if dev.size() < self.device_size {
            return Err(Error::InvalidArgument(format!(
                "device is {} bytes but the filesystem needs {}",
                dev.size(),
                self.device_size
            )));
        }
        self.validate().map_err(|e| {
            Error::InvalidArgument(format!("refusing to write an invalid superblock: {e}"))
        })?;
        self.seq += 1;
        let block = self.encode();
        dev.write_at(&block, SB_PRIMARY_OFFSET)?;
        dev.flush()?;
        dev.write_at(&block, backup_offset(self.device_size))?;
        dev.flush()?;
        Ok(())
    }

    /// Reads both copies and returns the valid one with the higher seq
    /// (primary on a tie), with a report on both. If neither is valid,
    /// returns the primary's error, unless the primary has no magic and the
    /// backup does, in which case the backup's error.
    pub fn read(dev: &dyn Device) -> Result<(Superblock, SbReadReport)> {
        let size = dev.size();
        let min = 3 * SB_BYTES as u64;
        if size < min {
            return Err(Error::NotArborfs(format!(
                "device is {size} bytes, too small to hold a filesystem (less than {min})"
            )));
        }
        let read_copy = |offset: u64| -> Result<Superblock> {
            let mut buf = vec![0u8; SB_BYTES];
            dev.read_at(&mut buf, offset)?;
            let sb = Superblock::decode(&buf, offset)?;
            if sb.device_size > size {
                return Err(Error::corrupted(
                    Structure::Superblock,
                    offset,
                    format!(
                        "filesystem is {} bytes but the device only {size}",
                        sb.device_size
                    ),
                ));
            }
            Ok(sb)
        };
        let primary = read_copy(SB_PRIMARY_OFFSET);
        // The backup is at the end of the device; if the device grew since
        // format, it is at the end of the size the filesystem records.
        let mut backup_at = backup_offset(size);
        let mut backup = read_copy(backup_at);
        if let Ok(p) = &primary {
            let recorded = backup_offset(p.device_size);
            if backup.is_err() && recorded != backup_at {
                backup_at = recorded;
                backup = read_copy(backup_at);
            }
        }
        let summary = |r: &Result<Superblock>| match r {
            Ok(sb) => Ok(sb.seq),
            Err(e) => Err(e.to_string()),
        };
        let mut report = SbReadReport {
            used: SbCopy::Primary,
            primary: summary(&primary),
            backup: summary(&backup),
            backup_offset: backup_at,
        };
        match (primary, backup) {
            (Ok(p), Ok(b)) => {
                if b.seq > p.seq {
                    report.used = SbCopy::Backup;
                    Ok((b, report))
                } else {
                    Ok((p, report))
                }
            }
            (Ok(p), Err(_)) => Ok((p, report)),
            (Err(_), Ok(b)) => {
                report.used = SbCopy::Backup;
                Ok((b, report))
            }
            (Err(pe @ Error::NotArborfs(_)), Err(be)) => match be {
                Error::NotArborfs(_) => Err(pe),
                be => Err(be),
            },
            (Err(pe), Err(_)) => Err(pe),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{MemDevice, RecordingDevice};
    use proptest::prelude::*;

    const DEV: u64 = 64 << 20;

    #[test]
    fn small_devices_get_smaller_buckets_and_nodes() {
        let geo = |mib: u64| {
            let o = FormatOptions::for_device(mib << 20);
            (o.bucket_size >> 10, o.node_size >> 10)
        };
        // (device MiB, bucket KiB, node KiB)
        for (mib, bucket, node) in [
            (4, 128, 64),
            (24, 128, 64),
            (64, 128, 64),
            (128, 256, 128),
            (256, 512, 256),
            (300, 512, 256),
            (512, 1024, 256),
            (1 << 20, 1024, 256),
        ] {
            assert_eq!(geo(mib), (bucket, node), "{mib} MiB");
        }
        // every choice is a valid format for its device
        for mib in [24u64, 64, 100, 128, 256, 1024] {
            let o = FormatOptions::for_device(mib << 20);
            let sb = Superblock::new(mib << 20, &o).unwrap();
            assert!(sb.nbuckets >= TARGET_MIN_BUCKETS.min((mib << 20) / (128 << 10)) - 1);
        }
        assert_eq!(
            FormatOptions::for_device(0).bucket_size,
            AUTO_MIN_BUCKET_SIZE
        );
        assert_eq!(
            FormatOptions::for_device(u64::MAX),
            FormatOptions::default()
        );
    }

    fn opts() -> FormatOptions {
        FormatOptions {
            uuid: Some([7; 16]),
            ..Default::default()
        }
    }

    fn clean_state(sb: &Superblock) -> CleanState {
        let mut roots = [None; BtreeId::COUNT];
        roots[BtreeId::Extents.index()] = Some(BtreePtr {
            offset: sb.bucket_offset(sb.first_data_bucket()),
            seq: 3,
            sectors: 512,
            generation: 2,
            level: 1,
        });
        roots[BtreeId::Freespace.index()] = Some(BtreePtr {
            offset: sb.bucket_offset(sb.first_data_bucket() + 1) + 4096,
            seq: 4,
            sectors: 8,
            generation: 0,
            level: 0,
        });
        CleanState {
            journal_next_seq: 42,
            journal_next_offset: 12288,
            journal_last_seq: 41,
            roots,
        }
    }

    #[test]
    fn new_computes_layout() {
        let sb = Superblock::new(DEV, &opts()).unwrap();
        assert_eq!(sb.nbuckets, 63); // (64 MiB - 4096) / 1 MiB
        assert_eq!(sb.journal_first_bucket, 1);
        assert_eq!(sb.journal_nbuckets, 4); // 63/16 = 3, clamped to 4
        assert_eq!(sb.journal_offset(), 1 << 20);
        assert_eq!(sb.journal_len(), 4 << 20);
        assert_eq!(sb.first_data_bucket(), 5);
        assert_eq!(sb.uuid, [7; 16]);
        assert!(sb.bucket_offset(sb.nbuckets) <= backup_offset(DEV));
        assert_eq!(backup_offset(DEV), DEV - 4096);
        assert_eq!(backup_offset(DEV + 100), DEV - 4096);
        sb.validate().unwrap();

        let big = Superblock::new(1 << 40, &opts()).unwrap();
        assert_eq!(big.journal_nbuckets, 1024);
        let mid = Superblock::new(1 << 30, &opts()).unwrap();
        assert_eq!(mid.journal_nbuckets, 1023 / 16);

        let j = Superblock::new(
            DEV,
            &FormatOptions {
                journal_bytes: Some((3 << 20) + 1),
                ..opts()
            },
        )
        .unwrap();
        assert_eq!(j.journal_nbuckets, 4);
        let j = Superblock::new(
            DEV,
            &FormatOptions {
                journal_bytes: Some(1),
                ..opts()
            },
        )
        .unwrap();
        assert_eq!(j.journal_nbuckets, 2);

        let a = Superblock::new(DEV, &Default::default()).unwrap();
        let b = Superblock::new(DEV, &Default::default()).unwrap();
        assert_ne!(a.uuid, b.uuid);
    }

    #[test]
    fn new_rejects_bad_options_and_small_devices() {
        let bad = [
            FormatOptions {
                bucket_size: 3 << 20,
                ..opts()
            },
            FormatOptions {
                bucket_size: 32 << 10,
                node_size: 16 << 10,
                ..opts()
            },
            FormatOptions {
                node_size: 8 << 10,
                ..opts()
            },
            FormatOptions {
                node_size: 2 << 20,
                bucket_size: 4 << 20,
                ..opts()
            },
            FormatOptions {
                node_size: 512 << 10,
                bucket_size: 256 << 10,
                ..opts()
            },
            FormatOptions {
                compression_level: 1,
                ..opts()
            },
            FormatOptions {
                compression: CompressionType::Zstd,
                compression_level: 23,
                ..opts()
            },
            FormatOptions {
                journal_bytes: Some(u64::MAX),
                ..opts()
            },
        ];
        for o in bad {
            assert!(
                matches!(Superblock::new(DEV, &o), Err(Error::InvalidArgument(_))),
                "{o:?}"
            );
        }
        // minimum: bucket 0 + 4 journal + 8 data buckets + backup block
        let min = 13 * (1 << 20) + 4096;
        Superblock::new(min, &opts()).unwrap();
        for size in [0, 4096, 8192, min - 1] {
            match Superblock::new(size, &opts()) {
                Err(Error::InvalidArgument(m)) => {
                    assert!(
                        m.contains("too small") && m.contains(&min.to_string()),
                        "{m}"
                    )
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn enum_names_round_trip() {
        for c in [ChecksumType::None, ChecksumType::Crc32c, ChecksumType::Xxh3] {
            assert_eq!(c.to_string().parse::<ChecksumType>().unwrap(), c);
            assert_eq!(ChecksumType::from_u8(c as u8), Some(c));
        }
        for c in [
            CompressionType::None,
            CompressionType::Lz4,
            CompressionType::Zstd,
        ] {
            assert_eq!(c.to_string().parse::<CompressionType>().unwrap(), c);
            assert_eq!(CompressionType::from_u8(c as u8), Some(c));
        }
        assert!("crc64".parse::<ChecksumType>().is_err());
        assert!("gzip".parse::<CompressionType>().is_err());
        assert_eq!(ChecksumType::from_u8(3), None);
    }

    #[test]
    fn round_trip_with_and_without_clean_state() {
        let mut sb = Superblock::new(DEV, &opts()).unwrap();
        sb.seq = 5;
        assert_eq!(Superblock::decode(&sb.encode(), 0).unwrap(), sb);
        sb.clean = Some(clean_state(&sb));
        sb.compression = CompressionType::Zstd;
        sb.compression_level = 19;
        sb.data_checksum = ChecksumType::Xxh3;
        assert_eq!(Superblock::decode(&sb.encode(), 0).unwrap(), sb);
        sb.clean = Some(CleanState {
            journal_next_seq: 1,
            journal_next_offset: 0,
            journal_last_seq: 0,
            roots: [None; BtreeId::COUNT],
        });
        assert_eq!(Superblock::decode(&sb.encode(), 0).unwrap(), sb);
    }

    #[test]
    fn write_then_read_both_copies() {
        let dev = MemDevice::new(DEV);
        let mut sb = Superblock::new(DEV, &opts()).unwrap();
        sb.write(&dev).unwrap();
        assert_eq!(sb.seq, 1);
        let (got, report) = Superblock::read(&dev).unwrap();
        assert_eq!(got, sb);
        assert_eq!(report.used, SbCopy::Primary);
        assert_eq!(report.primary, Ok(1));
        assert_eq!(report.backup, Ok(1));
        assert_eq!(report.backup_offset, DEV - 4096);
        assert!(!report.needs_repair());
        let bytes = dev.to_bytes();
        assert_eq!(&bytes[4096..4112], b"ArborFS-superblk");
        assert_eq!(bytes[4096..8192], bytes[DEV as usize - 4096..]);
    }

    #[test]
    fn write_order_keeps_a_valid_copy_at_every_crash_point() {
        let dev = RecordingDevice::new(DEV);
        let mut sb = Superblock::new(DEV, &opts()).unwrap();
        sb.write(&dev).unwrap();
        let first = dev.op_count();
        sb.clean = Some(clean_state(&sb));
        sb.write(&dev).unwrap();
        for upto in first..=dev.op_count() {
            for seed in 0..8 {
                let img = dev.random_crash_image(upto, seed);
                let (got, _) = Superblock::read(&MemDevice::from_bytes(img)).unwrap();
                assert!(got.seq == 1 || got.seq == 2);
            }
        }
    }

    #[test]
    fn every_byte_flip_is_detected() {
        let mut sb = Superblock::new(DEV, &opts()).unwrap();
        sb.clean = Some(clean_state(&sb));
        let good = sb.encode();
        for off in 0..SB_BYTES {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut b = good;
                b[off] ^= mask;
                assert!(
                    Superblock::decode(&b, 0).is_err(),
                    "flip {mask:#x} at {off}"
                );
            }
        }
    }

    #[test]
    fn damaged_primary_falls_back_to_backup() {
        let dev = MemDevice::new(DEV);
        let mut sb = Superblock::new(DEV, &opts()).unwrap();
        sb.write(&dev).unwrap();
        dev.write_at(&[0xee], SB_PRIMARY_OFFSET + 100).unwrap();
        let (got, report) = Superblock::read(&dev).unwrap();
        assert_eq!(got, sb);
        assert_eq!(report.used, SbCopy::Backup);
        assert!(report.primary.as_ref().unwrap_err().contains("checksum"));
        assert!(report.needs_repair());
        assert!(report.to_string().contains("using backup"));

        // rewriting repairs it
        let mut sb = got;
        sb.write(&dev).unwrap();
        let (_, report) = Superblock::read(&dev).unwrap();
        assert_eq!(report.used, SbCopy::Primary);
        assert!(!report.needs_repair());
    }

    #[test]
    fn higher_seq_wins() {
        let dev = MemDevice::new(DEV);
        let mut sb = Superblock::new(DEV, &opts()).unwrap();
        sb.write(&dev).unwrap();
        // simulate a crash after the primary of the next write
        let mut newer = sb.clone();
        newer.seq += 1;
        newer.clean = Some(clean_state(&newer));
        dev.write_at(&newer.encode(), SB_PRIMARY_OFFSET).unwrap();
        let (got, report) = Superblock::read(&dev).unwrap();
        assert_eq!(got, newer);
        assert_eq!(report.used, SbCopy::Primary);
        assert!(report.needs_repair());
        // and the other way round
        dev.write_at(&sb.encode(), SB_PRIMARY_OFFSET).unwrap();
        dev.write_at(&newer.encode(), backup_offset(DEV)).unwrap();
        let (got, report) = Superblock::read(&dev).unwrap();
        assert_eq!(got, newer);
        assert_eq!(report.used, SbCopy::Backup);
    }

    #[test]
    fn both_damaged_is_an_error() {
        let dev = MemDevice::new(DEV);
        let mut sb = Superblock::new(DEV, &opts()).unwrap();
        sb.write(&dev).unwrap();
        dev.write_at(&[0xee], SB_PRIMARY_OFFSET + 200).unwrap();
        dev.write_at(&[0xee], backup_offset(DEV) + 300).unwrap();
        match Superblock::read(&dev) {
            Err(Error::Corrupted {
                structure: Structure::Superblock,
                offset,
                ..
            }) => {
                assert_eq!(offset, SB_PRIMARY_OFFSET + 16)
            }
            other => panic!("{other:?}"),
        }
        // primary without magic, backup damaged: report the backup's damage
        dev.write_at(&[0; 16], SB_PRIMARY_OFFSET).unwrap();
        assert!(matches!(
            Superblock::read(&dev),
            Err(Error::Corrupted { .. })
        ));
    }

    #[test]
    fn unsupported_version_is_reported() {
        let mut sb = Superblock::new(DEV, &opts()).unwrap();
        sb.version = 2;
        let b = sb.encode();
        assert!(matches!(
            Superblock::decode(&b, 0),
            Err(Error::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        ));
    }

    #[test]
    fn zeroed_and_tiny_devices() {
        assert!(matches!(
            Superblock::read(&MemDevice::new(DEV)),
            Err(Error::NotArborfs(_))
        ));
        for size in [0, 1, 4096, 8191, 8192] {
            assert!(
                matches!(
                    Superblock::read(&MemDevice::new(size)),
                    Err(Error::NotArborfs(_))
                ),
                "{size}"
            );
        }
        assert!(matches!(
            Superblock::decode(&[0; 10], 0),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn truncated_device_is_rejected() {
        let dev = MemDevice::new(DEV);
        let mut sb = Superblock::new(DEV, &opts()).unwrap();
        sb.write(&dev).unwrap();
        let mut bytes = dev.to_bytes();
        bytes.truncate(DEV as usize / 2);
        assert!(Superblock::read(&MemDevice::from_bytes(bytes)).is_err());
    }

    #[test]
    fn grown_device_still_finds_backup() {
        let dev = MemDevice::new(DEV);
        let mut sb = Superblock::new(DEV, &opts()).unwrap();
        sb.write(&dev).unwrap();
        let mut bytes = dev.to_bytes();
        bytes.resize(DEV as usize * 2, 0);
        let grown = MemDevice::from_bytes(bytes);
        let (got, report) = Superblock::read(&grown).unwrap();
        assert_eq!(got, sb);
        assert_eq!(report.backup, Ok(1));
        assert_eq!(report.backup_offset, backup_offset(DEV));
    }

    fn with_valid_checksum(mut b: Vec<u8>) -> Vec<u8> {
        b[..16].copy_from_slice(&sb_format::MAGIC);
        let c = sb_format::checksum(&b);
        b[16..20].copy_from_slice(&c.to_le_bytes());
        b
    }

    proptest! {
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let _ = Superblock::decode(&b, 0);
        }

        #[test]
        fn decode_never_panics_past_the_checksum(b in proptest::collection::vec(any::<u8>(), SB_BYTES)) {
            let _ = Superblock::decode(&with_valid_checksum(b), 0);
        }

        #[test]
        fn decode_never_panics_on_mutated_superblocks(
            edits in proptest::collection::vec((0..sb_format::OFF_END, any::<u8>()), 1..8),
        ) {
            let mut sb = Superblock::new(DEV, &opts()).unwrap();
            sb.clean = Some(clean_state(&sb));
            let mut b = sb.encode().to_vec();
            for (off, v) in edits {
                b[off] = v;
            }
            b[20..24].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
            if let Ok(d) = Superblock::decode(&with_valid_checksum(b), 0) {
                // whatever decodes is self-consistent and re-encodes identically
                d.validate().unwrap();
                prop_assert_eq!(Superblock::decode(&d.encode(), 0).unwrap(), d);
            }
        }
    }
}
