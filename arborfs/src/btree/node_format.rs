//! On-disk layout of b-tree nodes: the header of each sorted run ("bset")
//! and the pointer a parent (or the journal) holds to a node.
//!
//! A node is a slot of `node_size` bytes holding one or more bsets, each
//! starting on a 4096-byte boundary. Each bset:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0   | 8  | `magic`: [`NODE_MAGIC_BASE`] XOR the first 8 bytes of the filesystem UUID (LE) |
//! | 8   | 4  | `csum`: crc32c of bytes `[12, bset_bytes)` |
//! | 12  | 1  | `btree` id |
//! | 13  | 1  | `level` (0 = leaf) |
//! | 14  | 2  | `bset_index`: 0 for the first bset of the node, then 1, 2, ... |
//! | 16  | 8  | `node_seq`: unique per node incarnation; the parent pointer must match |
//! | 24  | 8  | `journal_seq`: reserved for the highest journal sequence whose updates are in the node; not maintained yet, written as 0 |
//! | 32  | 20 | `min` key (inode u64, offset u64, snapshot u32), then 4 zero bytes |
//! | 56  | 20 | `max` key, then 4 zero bytes |
//! | 80  | 4  | `nkeys` |
//! | 84  | 4  | `bset_bytes`: header plus keys, before padding |
//! | 88  | 40 | reserved, zero |
//! | 128 | .. | `nkeys` keys (see `key::key_format`), sorted, strictly increasing |
//!
//! The bset is zero-padded to a multiple of 4096 bytes.

use crate::key::Pos;
use crate::key::key_format::{decode_pos, encode_pos};

pub const NODE_MAGIC_BASE: u64 = 0x4172_626f_724e_6f64; // "ArborNod"
pub const BSET_HEADER_BYTES: usize = 128;

/// The fixed header of a bset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BsetHeader {
    pub magic: u64,
    pub csum: u32,
    pub btree: u8,
    pub level: u8,
    pub bset_index: u16,
    pub node_seq: u64,
    pub journal_seq: u64,
    pub min: Pos,
    pub max: Pos,
    pub nkeys: u32,
    pub bset_bytes: u32,
}

/// Writes `h` into the first [`BSET_HEADER_BYTES`] of `out`.
pub fn encode_bset_header(h: &BsetHeader, out: &mut [u8]) {
    let mut b = Vec::with_capacity(BSET_HEADER_BYTES);
    b.extend_from_slice(&h.magic.to_le_bytes());
    b.extend_from_slice(&h.csum.to_le_bytes());
    b.push(h.btree);
    b.push(h.level);
    b.extend_from_slice(&h.bset_index.to_le_bytes());
    b.extend_from_slice(&h.node_seq.to_le_bytes());
    b.extend_from_slice(&h.journal_seq.to_le_bytes());
    encode_pos(&mut b, h.min);
    b.extend_from_slice(&[0; 4]);
    encode_pos(&mut b, h.max);
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&h.nkeys.to_le_bytes());
    b.extend_from_slice(&h.bset_bytes.to_le_bytes());
    b.resize(BSET_HEADER_BYTES, 0);
    out[..BSET_HEADER_BYTES].copy_from_slice(&b);
}

/// `None` if `b` is shorter than a header or reserved bytes are not zero.
pub fn decode_bset_header(b: &[u8]) -> Option<BsetHeader> {
    if b.len() < BSET_HEADER_BYTES
        || b[52..56] != [0; 4]
        || b[76..80] != [0; 4]
        || b[88..128].iter().any(|&x| x != 0)
    {
        return None;
    }
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    Some(BsetHeader {
        magic: u64_at(0),
        csum: u32_at(8),
        btree: b[12],
        level: b[13],
        bset_index: u16::from_le_bytes([b[14], b[15]]),
        node_seq: u64_at(16),
        journal_seq: u64_at(24),
        min: decode_pos(&b[32..52]),
        max: decode_pos(&b[56..76]),
        nkeys: u32_at(80),
        bset_bytes: u32_at(84),
    })
}

/// Checksum of an encoded bset (`bset` = header plus keys, unpadded).
pub fn bset_checksum(bset: &[u8]) -> u32 {
    crc32c::crc32c(&bset[12..])
}

/// Where a written node lives and what it must look like when read back.
///
/// Encoded in 24 bytes:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0  | 8 | `offset`: byte offset of the node on the device (block aligned) |
/// | 8  | 8 | `seq`: the node's sequence number; the node header must carry the same |
/// | 16 | 4 | `sectors`: 512-byte sectors written |
/// | 20 | 1 | `generation`: generation of the bucket holding the node |
/// | 21 | 1 | `level`: 0 for a leaf |
/// | 22 | 2 | reserved, zero |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BtreePtr {
    pub offset: u64,
    pub seq: u64,
    pub sectors: u32,
    pub generation: u8,
    pub level: u8,
}

pub const BTREE_PTR_BYTES: usize = 24;

impl BtreePtr {
    pub fn encode(&self) -> [u8; BTREE_PTR_BYTES] {
        let mut b = [0u8; BTREE_PTR_BYTES];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..20].copy_from_slice(&self.sectors.to_le_bytes());
        b[20] = self.generation;
        b[21] = self.level;
        b
    }

    /// `None` when `b` is too short or the reserved bytes are not zero.
    pub fn decode(b: &[u8]) -> Option<BtreePtr> {
        if b.len() < BTREE_PTR_BYTES || b[22] != 0 || b[23] != 0 {
            return None;
        }
        Some(BtreePtr {
            offset: u64::from_le_bytes(b[0..8].try_into().ok()?),
            seq: u64::from_le_bytes(b[8..16].try_into().ok()?),
            sectors: u32::from_le_bytes(b[16..20].try_into().ok()?),
            generation: b[20],
            level: b[21],
        })
    }

    pub fn bytes(&self) -> u64 {
        self.sectors as u64 * 512
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bset_header_layout() {
        let h = BsetHeader {
            magic: 0x1122,
            csum: 0x3344,
            btree: 2,
            level: 1,
            bset_index: 3,
            node_seq: 9,
            journal_seq: 10,
            min: Pos::new(1, 2, 3),
            max: Pos::new(4, 5, 6),
            nkeys: 7,
            bset_bytes: 300,
        };
        let mut b = [0u8; BSET_HEADER_BYTES];
        encode_bset_header(&h, &mut b);
        assert_eq!(&b[0..8], &0x1122u64.to_le_bytes());
        assert_eq!(&b[8..12], &0x3344u32.to_le_bytes());
        assert_eq!((b[12], b[13]), (2, 1));
        assert_eq!(&b[14..16], &3u16.to_le_bytes());
        assert_eq!(&b[16..24], &9u64.to_le_bytes());
        assert_eq!(&b[24..32], &10u64.to_le_bytes());
        assert_eq!(&b[32..40], &1u64.to_le_bytes());
        assert_eq!(&b[56..64], &4u64.to_le_bytes());
        assert_eq!(&b[80..84], &7u32.to_le_bytes());
        assert_eq!(&b[84..88], &300u32.to_le_bytes());
        assert_eq!(decode_bset_header(&b), Some(h));
        assert_eq!(decode_bset_header(&b[..100]), None);
    }

    #[test]
    fn btree_ptr_layout() {
        let p = BtreePtr {
            offset: 0x1000,
            seq: 77,
            sectors: 8,
            generation: 3,
            level: 1,
        };
        let b = p.encode();
        assert_eq!(&b[0..8], &0x1000u64.to_le_bytes());
        assert_eq!(&b[8..16], &77u64.to_le_bytes());
        assert_eq!(&b[16..20], &8u32.to_le_bytes());
        assert_eq!(b[20], 3);
        assert_eq!(b[21], 1);
        assert_eq!(BtreePtr::decode(&b), Some(p));
        let mut bad = b;
        bad[23] = 1;
        assert_eq!(BtreePtr::decode(&bad), None);
        assert_eq!(BtreePtr::decode(&b[..10]), None);
    }
}
