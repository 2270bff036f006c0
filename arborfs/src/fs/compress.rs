//! Per-extent compression of file data.
//!
//! A write stores each unit of file data (at most 128 KiB, whole 4 KiB
//! blocks) compressed with the inode's effective algorithm when that saves
//! at least one 512-byte sector, and raw otherwise (`compression = 0` in the
//! extent value), so incompressible data costs nothing extra.
//!
//! **Stored layout of a compressed unit** (the extent value has no field for
//! the exact compressed length, so the stored data carries it):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | `clen`: length of the compressed stream in bytes, u32 little-endian |
//! | 4 | `clen` | the compressed stream: an LZ4 *block* (no frame) for lz4, one zstd frame for zstd |
//! | 4 + `clen` | pad | zeros up to the next multiple of 512 bytes (`stored_sectors * 512` in all) |
//!
//! The extent's checksum covers all `stored_sectors * 512` bytes (header,
//! stream and padding). Decompressing must yield exactly
//! `uncompressed_sectors * 512` bytes; anything else (a `clen` past the
//! stored data, a malformed stream, a wrong length) is an IO error, never a
//! panic.
//!
//! **Choosing the algorithm.** The inode's own option (inode bytes 100 and
//! 102, set through the xattr `user.arborfs.compression`) wins; an inode
//! that inherits uses the mount option (`-o compression=`), else the
//! superblock's default (`format --compression`). New inodes copy their
//! directory's option at creation.

use super::FsCore;
use super::error::{FsError, FsResult};
use super::inode_format::InodeValue;
use crate::SECTOR_BYTES;
use crate::sb::CompressionType;

/// Bytes of the length header in front of a compressed stream.
pub const HEADER_BYTES: usize = 4;

/// The xattr that shows and sets an inode's compression option.
pub const XATTR_NAME: &[u8] = b"user.arborfs.compression";

/// An algorithm and its level (0 = the library's default; lz4 ignores it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compression {
    pub kind: CompressionType,
    pub level: u8,
}

impl Compression {
    pub const NONE: Compression = Compression {
        kind: CompressionType::None,
        level: 0,
    };

    /// Parses `none`, `lz4`, `zstd`, `lz4:N` or `zstd:N` (N within the
    /// algorithm's levels; `none` takes no level).
    pub fn parse(s: &str) -> Option<Compression> {
        let (name, level) = match s.split_once(':') {
            Some((n, l)) => {
                if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                (n, l.parse::<u8>().ok()?)
            }
            None => (s, 0),
        };
        let kind = match name {
            "none" if !s.contains(':') => CompressionType::None,
            "lz4" => CompressionType::Lz4,
            "zstd" => CompressionType::Zstd,
            _ => return None,
        };
        (level <= kind.max_level()).then_some(Compression { kind, level })
    }

    /// The inode's option: byte 100 (0 inherit, 1 none, 2 lz4, 3 zstd) and
    /// byte 102 (level). `None` means inherit (or an unknown value).
    pub fn from_inode(kind: u8, level: u8) -> Option<Compression> {
        let kind = CompressionType::from_u8(kind.checked_sub(1)?)?;
        Some(Compression {
            kind,
            level: level.min(kind.max_level()),
        })
    }

    /// Inode bytes 100 and 102 for this option.
    pub fn to_inode(self) -> (u8, u8) {
        (self.kind as u8 + 1, self.level)
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.level == 0 {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}:{}", self.kind, self.level)
        }
    }
}

impl FsCore {
    /// The compression new data of inode `v` gets: its own option, else
    /// the mount's, else the superblock's.
    pub(crate) fn effective_compression(&self, v: &InodeValue) -> Compression {
        Compression::from_inode(v.compression, v.compression_level)
            .or(self.opts.compression)
            .unwrap_or_else(|| {
                let sb = self.engine.superblock();
                Compression {
                    kind: sb.compression,
                    level: sb.compression_level,
                }
            })
    }
}

/// Parses the value written to [`XATTR_NAME`] (a trailing NUL or newline
/// is tolerated).
pub(crate) fn parse_xattr(value: &[u8]) -> FsResult<Compression> {
    let v = value
        .strip_suffix(b"\0")
        .or_else(|| value.strip_suffix(b"\n"))
        .unwrap_or(value);
    std::str::from_utf8(v)
        .ok()
        .and_then(Compression::parse)
        .ok_or_else(|| {
            FsError::Invalid(format!(
                "bad compression {:?} (expected none, lz4, zstd or zstd:LEVEL)",
                String::from_utf8_lossy(value)
            ))
        })
}

/// Bytes of each sample `likely_incompressible` compresses.
const SAMPLE_BYTES: usize = 4096;

/// Whether a quick lz4 pass over three samples (start, middle, end) saves
/// almost nothing: then compressing the whole unit (zstd especially) would
/// be wasted work, as for media, archives or encrypted data. Units too small
/// to sample are always tried.
fn likely_incompressible(input: &[u8]) -> bool {
    if input.len() < 8 * SAMPLE_BYTES {
        return false;
    }
    let starts = [0, input.len() / 2, input.len() - SAMPLE_BYTES];
    let mut buf = vec![0u8; lz4_flex::block::get_maximum_output_size(SAMPLE_BYTES)];
    let packed: usize = starts
        .iter()
        .map(|&at| {
            lz4_flex::block::compress_into(&input[at..at + SAMPLE_BYTES], &mut buf)
                .unwrap_or(SAMPLE_BYTES)
        })
        .sum();
    // Less than 3 % saved on the samples.
    packed * 100 >= 3 * SAMPLE_BYTES * 97
}

/// Compresses one unit for storing. Returns the stored bytes (header,
/// stream, zero padding; a multiple of 512) and the algorithm's on-disk
/// number, or `None` when the unit is better stored raw: compression is off,
/// or it would not save at least one sector.
pub fn compress_unit(c: Compression, input: &[u8]) -> Option<(Vec<u8>, u8)> {
    let sector = SECTOR_BYTES as usize;
    let input_sectors = input.len().div_ceil(sector);
    if input_sectors < 2 {
        return None;
    }
    let limit = (input_sectors - 1) * sector;
    if c.kind == CompressionType::None || likely_incompressible(input) {
        return None;
    }
    let mut out = vec![0u8; HEADER_BYTES];
    match c.kind {
        CompressionType::None => return None,
        CompressionType::Lz4 => {
            out.resize(
                HEADER_BYTES + lz4_flex::block::get_maximum_output_size(input.len()),
                0,
            );
            let n = lz4_flex::block::compress_into(input, &mut out[HEADER_BYTES..]).ok()?;
            out.truncate(HEADER_BYTES + n);
        }
        CompressionType::Zstd => {
            // A buffer of the largest useful size: a bigger result fails
            // here and the unit is stored raw.
            out.resize(limit, 0);
            let n = zstd::bulk::compress_to_buffer(input, &mut out[HEADER_BYTES..], c.level as i32)
                .ok()?;
            out.truncate(HEADER_BYTES + n);
        }
    }
    let clen = out.len() - HEADER_BYTES;
    if out.len() > limit {
        return None;
    }
    out[..HEADER_BYTES].copy_from_slice(&(clen as u32).to_le_bytes());
    out.resize(out.len().div_ceil(sector) * sector, 0);
    Some((out, c.kind as u8))
}

/// Decompresses the stored bytes of a unit compressed with `kind` (the
/// extent's `compression` byte) into exactly `out_len` bytes.
pub fn decompress_unit(kind: u8, stored: &[u8], out_len: usize) -> Result<Vec<u8>, String> {
    let header: [u8; HEADER_BYTES] = stored
        .get(..HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or("compressed extent shorter than its header")?;
    let clen = u32::from_le_bytes(header) as usize;
    let stream = stored
        .get(HEADER_BYTES..HEADER_BYTES.saturating_add(clen))
        .ok_or_else(|| format!("compressed length {clen} runs past the stored data"))?;
    let mut out = vec![0u8; out_len];
    let n =
        match CompressionType::from_u8(kind) {
            Some(CompressionType::Lz4) => lz4_flex::block::decompress_into(stream, &mut out)
                .map_err(|e| format!("lz4: {e}"))?,
            Some(CompressionType::Zstd) => zstd::bulk::decompress_to_buffer(stream, &mut out)
                .map_err(|e| format!("zstd: {e}"))?,
            _ => return Err(format!("unknown compression type {kind}")),
        };
    if n != out_len {
        return Err(format!(
            "compressed extent holds {n} bytes, {out_len} expected"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Vec<u8> {
        let words = ["alpha", "beta", "gamma", "delta", "sector", "bucket"];
        let mut s = Vec::with_capacity(n + 16);
        let mut i = 0u64;
        while s.len() < n {
            s.extend_from_slice(words[(i * 7 % 6) as usize].as_bytes());
            s.extend_from_slice(format!(" {} ", i * 31 % 1000).as_bytes());
            i += 1;
        }
        s.truncate(n);
        s
    }

    /// Incompressible bytes: a hash of each position.
    fn random(n: usize) -> Vec<u8> {
        (0..n as u64)
            .map(|i| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()) as u8)
            .collect()
    }

    #[test]
    fn incompressible_units_are_recognized_by_samples() {
        assert!(likely_incompressible(&random(128 << 10)));
        assert!(!likely_incompressible(&text(128 << 10)));
        // Random bytes with compressible text at the middle sample: tried.
        let mut mixed = random(128 << 10);
        mixed[60 << 10..70 << 10].copy_from_slice(&text(10 << 10));
        assert!(!likely_incompressible(&mixed));
        // Too small to sample: always tried.
        assert!(!likely_incompressible(&random(16 << 10)));
        let zstd = Compression::parse("zstd").unwrap();
        assert!(compress_unit(zstd, &random(128 << 10)).is_none());
        assert!(compress_unit(zstd, &text(128 << 10)).is_some());
    }

    #[test]
    fn parse_and_show() {
        for s in ["none", "lz4", "zstd", "zstd:1", "zstd:22", "lz4:9"] {
            assert_eq!(Compression::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(Compression::parse("zstd:0").unwrap().to_string(), "zstd");
        for s in [
            "", "gzip", "zstd:", "zstd:23", "none:1", "zstd:-1", "zstd:x", "lz4:13",
        ] {
            assert_eq!(Compression::parse(s), None, "{s:?}");
        }
        let z = Compression::parse("zstd:7").unwrap();
        assert_eq!(z.to_inode(), (3, 7));
        assert_eq!(Compression::from_inode(3, 7), Some(z));
        assert_eq!(Compression::from_inode(1, 0), Some(Compression::NONE));
        assert_eq!(Compression::from_inode(0, 0), None);
        assert_eq!(Compression::from_inode(9, 0), None);
    }

    #[test]
    fn round_trip() {
        let input = text(128 << 10);
        for c in ["lz4", "zstd", "zstd:19"] {
            let c = Compression::parse(c).unwrap();
            let (stored, kind) = compress_unit(c, &input).expect("text compresses");
            assert_eq!(kind, c.kind as u8);
            assert!(stored.len().is_multiple_of(512));
            assert!(stored.len() < input.len() / 2, "{c}: {}", stored.len());
            let clen = u32::from_le_bytes(stored[..4].try_into().unwrap()) as usize;
            assert!(stored[4 + clen..].iter().all(|&b| b == 0), "zero padding");
            assert_eq!(decompress_unit(kind, &stored, input.len()).unwrap(), input);
        }
        // Zeros compress to one sector.
        let zeros = vec![0u8; 4096];
        let (stored, kind) = compress_unit(Compression::parse("zstd").unwrap(), &zeros).unwrap();
        assert_eq!(stored.len(), 512);
        assert_eq!(decompress_unit(kind, &stored, 4096).unwrap(), zeros);
    }

    #[test]
    fn incompressible_stays_raw() {
        let input = random(128 << 10);
        for c in ["lz4", "zstd", "zstd:19", "none"] {
            assert!(
                compress_unit(Compression::parse(c).unwrap(), &input).is_none(),
                "{c}"
            );
        }
        assert!(compress_unit(Compression::parse("zstd").unwrap(), &[0u8; 512]).is_none());
        // Saving less than a sector is not worth it: 4 KiB where only the
        // last 400 bytes repeat.
        let mut almost = random(4096);
        almost[3696..].fill(0);
        assert!(compress_unit(Compression::parse("zstd").unwrap(), &almost).is_none());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let input = text(64 << 10);
        for c in ["lz4", "zstd"] {
            let c = Compression::parse(c).unwrap();
            let (stored, kind) = compress_unit(c, &input).unwrap();
            // Wrong expected length.
            assert!(decompress_unit(kind, &stored, input.len() - 512).is_err());
            assert!(decompress_unit(kind, &stored, input.len() + 512).is_err());
            // Length header past the data, or zero.
            let mut bad = stored.clone();
            bad[..4].copy_from_slice(&u32::MAX.to_le_bytes());
            assert!(decompress_unit(kind, &bad, input.len()).is_err());
            bad[..4].copy_from_slice(&0u32.to_le_bytes());
            assert!(decompress_unit(kind, &bad, input.len()).is_err());
            // Flipped bytes anywhere in the stream: an error or (for lz4,
            // which has no checksum) different bytes, never a panic.
            let clen = u32::from_le_bytes(stored[..4].try_into().unwrap()) as usize;
            for at in (4..4 + clen).step_by(97) {
                let mut bad = stored.clone();
                bad[at] ^= 0x5a;
                let _ = decompress_unit(kind, &bad, input.len());
            }
            // Random bytes as a stream.
            let mut junk = random(8192);
            junk[..4].copy_from_slice(&8000u32.to_le_bytes());
            assert!(decompress_unit(kind, &junk, input.len()).is_err());
            assert!(decompress_unit(kind, &[1, 2], input.len()).is_err());
        }
        assert!(decompress_unit(7, &[0; 512], 4096).is_err());
        assert!(decompress_unit(0, &[0; 512], 4096).is_err());
    }
}
