//! The superblock's wire layout: one 4096-byte block, every integer little
//! endian. Only byte positions and their (de)serialization live here; the
//! meaning of the fields and their sanity checks are in [`super`].
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
//! | 104  | 8   | clean: next journal seq (zero when dirty) |
//! | 112  | 8   | clean: next journal offset within the journal region (zero when dirty) |
//! | 120  | 8   | clean: last journal seq written (zero when dirty) |
//! | 128  | 288 | clean: 9 root slots of 32 bytes, in `BtreeId` order (zero when dirty) |
//! | 416  | 3680| reserved, zero |
//!
//! A root slot: byte 0 is 1 if the tree has a root and 0 if not, bytes 1..8
//! are zero, bytes 8..32 are the [`BtreePtr`] encoding (zero when absent).

use super::{ChecksumType, CleanState, CompressionType, FORMAT_VERSION, SB_BYTES, Superblock};
use crate::btree::node_format::{BTREE_PTR_BYTES, BtreePtr};
use crate::error::{Error, Result, Structure};
use crate::key::BtreeId;

pub const MAGIC: [u8; 16] = *b"ArborFS-superblk";

pub const OFF_MAGIC: usize = 0;
pub const OFF_CSUM: usize = 16;
/// First byte covered by the checksum.
pub const CSUM_START: usize = 20;
pub const OFF_VERSION: usize = 20;
pub const OFF_UUID: usize = 24;
pub const OFF_BLOCK_SIZE: usize = 40;
pub const OFF_BUCKET_SIZE: usize = 44;
pub const OFF_NODE_SIZE: usize = 48;
pub const OFF_RESERVED0: usize = 52;
pub const OFF_DEVICE_SIZE: usize = 56;
pub const OFF_NBUCKETS: usize = 64;
pub const OFF_JOURNAL_FIRST_BUCKET: usize = 72;
pub const OFF_JOURNAL_NBUCKETS: usize = 80;
pub const OFF_DATA_CHECKSUM: usize = 88;
pub const OFF_COMPRESSION: usize = 89;
pub const OFF_COMPRESSION_LEVEL: usize = 90;
pub const OFF_CLEAN: usize = 91;
pub const OFF_RESERVED1: usize = 92;
pub const OFF_SEQ: usize = 96;
pub const OFF_JOURNAL_NEXT_SEQ: usize = 104;
pub const OFF_JOURNAL_NEXT_OFFSET: usize = 112;
pub const OFF_JOURNAL_LAST_SEQ: usize = 120;
pub const OFF_ROOTS: usize = 128;
/// Bytes per root slot.
pub const ROOT_SLOT_BYTES: usize = 32;
/// Offset of the `BtreePtr` inside a root slot.
pub const ROOT_SLOT_PTR: usize = 8;
/// First byte after the defined fields; everything from here is zero.
pub const OFF_END: usize = OFF_ROOTS + BtreeId::COUNT * ROOT_SLOT_BYTES;

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// The checksum stored at [`OFF_CSUM`] for a 4096-byte block.
pub fn checksum(block: &[u8]) -> u32 {
    crc32c::crc32c(&block[CSUM_START..SB_BYTES])
}

/// Serializes `sb` into a block, checksum included.
pub fn encode(sb: &Superblock) -> [u8; SB_BYTES] {
    let mut b = [0u8; SB_BYTES];
    b[OFF_MAGIC..OFF_MAGIC + 16].copy_from_slice(&MAGIC);
    put_u32(&mut b, OFF_VERSION, sb.version);
    b[OFF_UUID..OFF_UUID + 16].copy_from_slice(&sb.uuid);
    put_u32(&mut b, OFF_BLOCK_SIZE, sb.block_size);
    put_u32(&mut b, OFF_BUCKET_SIZE, sb.bucket_size);
    put_u32(&mut b, OFF_NODE_SIZE, sb.node_size);
    put_u64(&mut b, OFF_DEVICE_SIZE, sb.device_size);
    put_u64(&mut b, OFF_NBUCKETS, sb.nbuckets);
    put_u64(&mut b, OFF_JOURNAL_FIRST_BUCKET, sb.journal_first_bucket);
    put_u64(&mut b, OFF_JOURNAL_NBUCKETS, sb.journal_nbuckets);
    b[OFF_DATA_CHECKSUM] = sb.data_checksum as u8;
    b[OFF_COMPRESSION] = sb.compression as u8;
    b[OFF_COMPRESSION_LEVEL] = sb.compression_level;
    put_u64(&mut b, OFF_SEQ, sb.seq);
    if let Some(c) = &sb.clean {
        b[OFF_CLEAN] = 1;
        put_u64(&mut b, OFF_JOURNAL_NEXT_SEQ, c.journal_next_seq);
        put_u64(&mut b, OFF_JOURNAL_NEXT_OFFSET, c.journal_next_offset);
        put_u64(&mut b, OFF_JOURNAL_LAST_SEQ, c.journal_last_seq);
        for (i, root) in c.roots.iter().enumerate() {
            if let Some(p) = root {
                let slot = OFF_ROOTS + i * ROOT_SLOT_BYTES;
                b[slot] = 1;
                b[slot + ROOT_SLOT_PTR..slot + ROOT_SLOT_PTR + BTREE_PTR_BYTES]
                    .copy_from_slice(&p.encode());
            }
        }
    }
    let csum = checksum(&b);
    put_u32(&mut b, OFF_CSUM, csum);
    b
}

/// Parses a block read from device offset `dev_offset` (used in errors).
/// Checks magic, checksum, version, enum values and that reserved bytes are
/// zero; the semantic checks are [`Superblock::validate`]'s job.
pub fn decode(b: &[u8], dev_offset: u64) -> Result<Superblock> {
    let bad = |field: usize, detail: String| {
        Error::corrupted(Structure::Superblock, dev_offset + field as u64, detail)
    };
    if b.len() < SB_BYTES {
        return Err(Error::InvalidArgument(format!(
            "superblock buffer is {} bytes, need {SB_BYTES}",
            b.len()
        )));
    }
    let b = &b[..SB_BYTES];
    if b[OFF_MAGIC..OFF_MAGIC + 16] != MAGIC {
        return Err(Error::NotArborfs(format!(
            "no superblock magic at byte {dev_offset}"
        )));
    }
    let stored = get_u32(b, OFF_CSUM);
    let computed = checksum(b);
    if stored != computed {
        return Err(bad(
            OFF_CSUM,
            format!("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"),
        ));
    }
    let version = get_u32(b, OFF_VERSION);
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let zero_ranges = [
        (OFF_RESERVED0, 4),
        (OFF_RESERVED1, 4),
        (OFF_END, SB_BYTES - OFF_END),
    ];
    for (off, len) in zero_ranges {
        if let Some(i) = b[off..off + len].iter().position(|&x| x != 0) {
            return Err(bad(off + i, "reserved byte is not zero".into()));
        }
    }
    let data_checksum = ChecksumType::from_u8(b[OFF_DATA_CHECKSUM]).ok_or_else(|| {
        bad(
            OFF_DATA_CHECKSUM,
            format!("unknown checksum type {}", b[OFF_DATA_CHECKSUM]),
        )
    })?;
    let compression = CompressionType::from_u8(b[OFF_COMPRESSION]).ok_or_else(|| {
        bad(
            OFF_COMPRESSION,
            format!("unknown compression type {}", b[OFF_COMPRESSION]),
        )
    })?;
    let clean = match b[OFF_CLEAN] {
        0 => {
            if let Some(i) = b[OFF_JOURNAL_NEXT_SEQ..OFF_END]
                .iter()
                .position(|&x| x != 0)
            {
                return Err(bad(
                    OFF_JOURNAL_NEXT_SEQ + i,
                    "clean-state byte is not zero in a dirty superblock".into(),
                ));
            }
            None
        }
        1 => {
            let mut roots = [None; BtreeId::COUNT];
            for (i, root) in roots.iter_mut().enumerate() {
                let slot = OFF_ROOTS + i * ROOT_SLOT_BYTES;
                let ptr = &b[slot + ROOT_SLOT_PTR..slot + ROOT_SLOT_BYTES];
                if let Some(j) = b[slot + 1..slot + ROOT_SLOT_PTR]
                    .iter()
                    .position(|&x| x != 0)
                {
                    return Err(bad(
                        slot + 1 + j,
                        "reserved root slot byte is not zero".into(),
                    ));
                }
                match b[slot] {
                    0 => {
                        if ptr.iter().any(|&x| x != 0) {
                            return Err(bad(slot, "absent root has a non-zero pointer".into()));
                        }
                    }
                    1 => {
                        *root = Some(BtreePtr::decode(ptr).ok_or_else(|| {
                            bad(slot + ROOT_SLOT_PTR, "malformed root pointer".into())
                        })?);
                    }
                    v => return Err(bad(slot, format!("root presence byte is {v}, not 0 or 1"))),
                }
            }
            Some(CleanState {
                journal_next_seq: get_u64(b, OFF_JOURNAL_NEXT_SEQ),
                journal_next_offset: get_u64(b, OFF_JOURNAL_NEXT_OFFSET),
                journal_last_seq: get_u64(b, OFF_JOURNAL_LAST_SEQ),
                roots,
            })
        }
        v => return Err(bad(OFF_CLEAN, format!("clean flag is {v}, not 0 or 1"))),
    };
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&b[OFF_UUID..OFF_UUID + 16]);
    Ok(Superblock {
        version,
        uuid,
        block_size: get_u32(b, OFF_BLOCK_SIZE),
        bucket_size: get_u32(b, OFF_BUCKET_SIZE),
        node_size: get_u32(b, OFF_NODE_SIZE),
        device_size: get_u64(b, OFF_DEVICE_SIZE),
        nbuckets: get_u64(b, OFF_NBUCKETS),
        journal_first_bucket: get_u64(b, OFF_JOURNAL_FIRST_BUCKET),
        journal_nbuckets: get_u64(b, OFF_JOURNAL_NBUCKETS),
        data_checksum,
        compression,
        compression_level: b[OFF_COMPRESSION_LEVEL],
        seq: get_u64(b, OFF_SEQ),
        clean,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_offsets_and_sizes() {
        assert_eq!(SB_BYTES, 4096);
        assert_eq!(MAGIC.len(), 16);
        assert_eq!(OFF_CSUM, OFF_MAGIC + 16);
        assert_eq!(CSUM_START, OFF_CSUM + 4);
        assert_eq!(OFF_VERSION, CSUM_START);
        assert_eq!(OFF_UUID, OFF_VERSION + 4);
        assert_eq!(OFF_BLOCK_SIZE, OFF_UUID + 16);
        assert_eq!(OFF_BUCKET_SIZE, OFF_BLOCK_SIZE + 4);
        assert_eq!(OFF_NODE_SIZE, OFF_BUCKET_SIZE + 4);
        assert_eq!(OFF_RESERVED0, OFF_NODE_SIZE + 4);
        assert_eq!(OFF_DEVICE_SIZE, OFF_RESERVED0 + 4);
        assert_eq!(OFF_NBUCKETS, OFF_DEVICE_SIZE + 8);
        assert_eq!(OFF_JOURNAL_FIRST_BUCKET, OFF_NBUCKETS + 8);
        assert_eq!(OFF_JOURNAL_NBUCKETS, OFF_JOURNAL_FIRST_BUCKET + 8);
        assert_eq!(OFF_DATA_CHECKSUM, OFF_JOURNAL_NBUCKETS + 8);
        assert_eq!(OFF_COMPRESSION, OFF_DATA_CHECKSUM + 1);
        assert_eq!(OFF_COMPRESSION_LEVEL, OFF_COMPRESSION + 1);
        assert_eq!(OFF_CLEAN, OFF_COMPRESSION_LEVEL + 1);
        assert_eq!(OFF_RESERVED1, OFF_CLEAN + 1);
        assert_eq!(OFF_SEQ, OFF_RESERVED1 + 4);
        assert_eq!(OFF_JOURNAL_NEXT_SEQ, OFF_SEQ + 8);
        assert_eq!(OFF_JOURNAL_NEXT_OFFSET, OFF_JOURNAL_NEXT_SEQ + 8);
        assert_eq!(OFF_JOURNAL_LAST_SEQ, OFF_JOURNAL_NEXT_OFFSET + 8);
        assert_eq!(OFF_ROOTS, OFF_JOURNAL_LAST_SEQ + 8);
        assert_eq!(ROOT_SLOT_PTR + BTREE_PTR_BYTES, ROOT_SLOT_BYTES);
        assert_eq!(OFF_END, 416);
        // 8-byte fields are 8-byte aligned, 4-byte fields 4-byte aligned
        for off in [
            OFF_DEVICE_SIZE,
            OFF_NBUCKETS,
            OFF_JOURNAL_FIRST_BUCKET,
            OFF_JOURNAL_NBUCKETS,
            OFF_SEQ,
            OFF_JOURNAL_NEXT_SEQ,
            OFF_JOURNAL_NEXT_OFFSET,
            OFF_JOURNAL_LAST_SEQ,
            OFF_ROOTS,
        ] {
            assert_eq!(off % 8, 0, "offset {off}");
        }
        for off in [
            OFF_CSUM,
            OFF_VERSION,
            OFF_BLOCK_SIZE,
            OFF_BUCKET_SIZE,
            OFF_NODE_SIZE,
        ] {
            assert_eq!(off % 4, 0, "offset {off}");
        }
    }

    #[test]
    fn encoded_fields_land_at_their_offsets() {
        let mut sb = Superblock::new(64 << 20, &Default::default()).unwrap();
        sb.seq = 0x1122_3344_5566_7788;
        let mut roots = [None; BtreeId::COUNT];
        let p = BtreePtr {
            offset: 40 << 20,
            seq: 9,
            sectors: 8,
            generation: 1,
            level: 0,
        };
        roots[BtreeId::Inodes.index()] = Some(p);
        sb.clean = Some(CleanState {
            journal_next_seq: 5,
            journal_next_offset: 8192,
            journal_last_seq: 4,
            roots,
        });
        let b = encode(&sb);
        assert_eq!(&b[0..16], b"ArborFS-superblk");
        assert_eq!(get_u32(&b, OFF_CSUM), crc32c::crc32c(&b[20..4096]));
        assert_eq!(get_u32(&b, OFF_VERSION), 1);
        assert_eq!(&b[OFF_UUID..OFF_UUID + 16], &sb.uuid);
        assert_eq!(get_u32(&b, OFF_BLOCK_SIZE), 4096);
        assert_eq!(get_u32(&b, OFF_BUCKET_SIZE), 1 << 20);
        assert_eq!(get_u32(&b, OFF_NODE_SIZE), 256 << 10);
        assert_eq!(get_u64(&b, OFF_DEVICE_SIZE), 64 << 20);
        assert_eq!(get_u64(&b, OFF_NBUCKETS), sb.nbuckets);
        assert_eq!(get_u64(&b, OFF_JOURNAL_FIRST_BUCKET), 1);
        assert_eq!(get_u64(&b, OFF_JOURNAL_NBUCKETS), sb.journal_nbuckets);
        assert_eq!(b[OFF_DATA_CHECKSUM], sb.data_checksum as u8);
        assert_eq!(b[OFF_CLEAN], 1);
        assert_eq!(get_u64(&b, OFF_SEQ), 0x1122_3344_5566_7788);
        assert_eq!(get_u64(&b, OFF_JOURNAL_NEXT_SEQ), 5);
        assert_eq!(get_u64(&b, OFF_JOURNAL_NEXT_OFFSET), 8192);
        assert_eq!(get_u64(&b, OFF_JOURNAL_LAST_SEQ), 4);
        let slot = OFF_ROOTS + BtreeId::Inodes.index() * ROOT_SLOT_BYTES;
        assert_eq!(b[slot], 1);
        assert_eq!(
            &b[slot + ROOT_SLOT_PTR..slot + ROOT_SLOT_BYTES],
            &p.encode()
        );
        assert_eq!(b[OFF_ROOTS], 0);
        assert!(b[OFF_END..].iter().all(|&x| x == 0));
    }
}
