//! The inodes btree's value. Position: `0 : inode number : snapshot`.
//!
//! Fixed 128 bytes, little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0   | 4 | `mode` (file type and permission bits) |
//! | 4   | 4 | `uid` |
//! | 8   | 4 | `gid` |
//! | 12  | 4 | `nlink` |
//! | 16  | 8 | `size` in bytes |
//! | 24  | 8 | `sectors`: 512-byte sectors of data allocated to the file |
//! | 32  | 8 | `atime` seconds (i64) |
//! | 40  | 4 | `atime` nanoseconds |
//! | 44  | 4 | `mtime` nanoseconds |
//! | 48  | 8 | `mtime` seconds |
//! | 56  | 8 | `ctime` seconds |
//! | 64  | 4 | `ctime` nanoseconds |
//! | 68  | 4 | `btime` nanoseconds |
//! | 72  | 8 | `btime` seconds |
//! | 80  | 8 | `rdev` |
//! | 88  | 8 | `generation` |
//! | 96  | 4 | `flags` ([`INODE_UNLINKED`], ...) |
//! | 100 | 1 | `compression` option: 0 inherit (mount option, else superblock), 1 none, 2 lz4, 3 zstd |
//! | 101 | 1 | `checksum` option (0 = inherit) |
//! | 102 | 1 | `compression_level` (0 = library default; meaningful only when byte 100 is 2 or 3) |
//! | 103 | 1 | reserved, zero |
//! | 104 | 8 | `parent`: directory the inode was created in (fsck hint) |
//! | 112 | 16 | reserved, zero |

use super::types::Timespec;

pub const INODE_BYTES: usize = 128;

/// The inode has no names left but is still open; its data goes at release
/// (or at the next mount after a crash).
pub const INODE_UNLINKED: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct InodeValue {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub sectors: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub btime: Timespec,
    pub rdev: u64,
    pub generation: u64,
    pub flags: u32,
    pub compression: u8,
    pub checksum: u8,
    pub compression_level: u8,
    pub parent: u64,
}

impl InodeValue {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; INODE_BYTES];
        b[0..4].copy_from_slice(&self.mode.to_le_bytes());
        b[4..8].copy_from_slice(&self.uid.to_le_bytes());
        b[8..12].copy_from_slice(&self.gid.to_le_bytes());
        b[12..16].copy_from_slice(&self.nlink.to_le_bytes());
        b[16..24].copy_from_slice(&self.size.to_le_bytes());
        b[24..32].copy_from_slice(&self.sectors.to_le_bytes());
        b[32..40].copy_from_slice(&self.atime.sec.to_le_bytes());
        b[40..44].copy_from_slice(&self.atime.nsec.to_le_bytes());
        b[44..48].copy_from_slice(&self.mtime.nsec.to_le_bytes());
        b[48..56].copy_from_slice(&self.mtime.sec.to_le_bytes());
        b[56..64].copy_from_slice(&self.ctime.sec.to_le_bytes());
        b[64..68].copy_from_slice(&self.ctime.nsec.to_le_bytes());
        b[68..72].copy_from_slice(&self.btime.nsec.to_le_bytes());
        b[72..80].copy_from_slice(&self.btime.sec.to_le_bytes());
        b[80..88].copy_from_slice(&self.rdev.to_le_bytes());
        b[88..96].copy_from_slice(&self.generation.to_le_bytes());
        b[96..100].copy_from_slice(&self.flags.to_le_bytes());
        b[100] = self.compression;
        b[101] = self.checksum;
        b[102] = self.compression_level;
        b[104..112].copy_from_slice(&self.parent.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<InodeValue> {
        if b.len() != INODE_BYTES || b[103] != 0 || b[112..128].iter().any(|&x| x != 0) {
            return None;
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let ts = |s: usize, n: usize| Timespec {
            sec: u64_at(s) as i64,
            nsec: u32_at(n),
        };
        let v = InodeValue {
            mode: u32_at(0),
            uid: u32_at(4),
            gid: u32_at(8),
            nlink: u32_at(12),
            size: u64_at(16),
            sectors: u64_at(24),
            atime: ts(32, 40),
            mtime: ts(48, 44),
            ctime: ts(56, 64),
            btime: ts(72, 68),
            rdev: u64_at(80),
            generation: u64_at(88),
            flags: u32_at(96),
            compression: b[100],
            checksum: b[101],
            compression_level: b[102],
            parent: u64_at(104),
        };
        // A mode without a file type is damage.
        super::types::FileKind::from_mode(v.mode)?;
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_layout() {
        let v = InodeValue {
            mode: 0o100644,
            uid: 1,
            gid: 2,
            nlink: 3,
            size: 4,
            sectors: 5,
            atime: Timespec { sec: 6, nsec: 7 },
            mtime: Timespec { sec: 8, nsec: 9 },
            ctime: Timespec { sec: 10, nsec: 11 },
            btime: Timespec { sec: -12, nsec: 13 },
            rdev: 14,
            generation: 15,
            flags: INODE_UNLINKED,
            compression: 3,
            checksum: 1,
            compression_level: 7,
            parent: 4096,
        };
        let b = v.encode();
        assert_eq!(b.len(), INODE_BYTES);
        assert_eq!(&b[0..4], &0o100644u32.to_le_bytes());
        assert_eq!(&b[16..24], &4u64.to_le_bytes());
        assert_eq!(&b[44..48], &9u32.to_le_bytes());
        assert_eq!(&b[48..56], &8u64.to_le_bytes());
        assert_eq!(&b[72..80], &(-12i64).to_le_bytes());
        assert_eq!(&b[100..104], &[3, 1, 7, 0]);
        assert_eq!(&b[104..112], &4096u64.to_le_bytes());
        assert_eq!(InodeValue::decode(&b), Some(v));
        assert_eq!(InodeValue::decode(&b[..127]), None);
        let mut bad = b.clone();
        bad[0..4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(InodeValue::decode(&bad), None, "mode without a file type");
    }
}
