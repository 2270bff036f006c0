//! On-disk layout of a pointer to a b-tree node (the node layout itself is
//! specified in `docs/format.md` and implemented beside this).

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
