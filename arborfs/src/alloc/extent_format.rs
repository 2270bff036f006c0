//! The value of a data extent key (`KeyType::Extent`).
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0  | 1 | `nr_ptrs` (1 ..= 4) |
//! | 1  | 1 | `csum_type` (0 none, 1 crc32c, 2 xxh3) |
//! | 2  | 1 | `compression` (0 none, 1 lz4, 2 zstd) |
//! | 3  | 1 | reserved, zero |
//! | 4  | 4 | `stored_sectors`: length of the data as stored (compressed) |
//! | 8  | 4 | `uncompressed_sectors`: length of the whole checksummed extent before compression |
//! | 12 | 4 | `offset`: sectors into the uncompressed data where this key's range starts |
//! | 16 | 8 | `csum` of the stored bytes |
//! | 24 | 16 × nr_ptrs | pointers: `dev_sector` u64 (start of the stored data), `generation` u8, 7 zero bytes |
//!
//! Trimming the front of an extent only advances `offset`; the stored,
//! checksummed data stays whole so it can always be verified.
//!
//! Compressed stored data starts with a 4-byte little-endian length of the
//! compressed stream, then the stream, then zeros to a sector multiple; see
//! `fs::compress` and docs/format.md §9.1.

pub const EXTENT_HEADER_BYTES: usize = 24;
pub const EXTENT_PTR_BYTES: usize = 16;
pub const MAX_PTRS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtentPtr {
    pub dev_sector: u64,
    pub generation: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentValue {
    pub csum_type: u8,
    pub compression: u8,
    pub stored_sectors: u32,
    pub uncompressed_sectors: u32,
    pub offset: u32,
    pub csum: u64,
    pub ptrs: Vec<ExtentPtr>,
}

impl ExtentValue {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(EXTENT_HEADER_BYTES + EXTENT_PTR_BYTES * self.ptrs.len());
        b.push(self.ptrs.len() as u8);
        b.push(self.csum_type);
        b.push(self.compression);
        b.push(0);
        b.extend_from_slice(&self.stored_sectors.to_le_bytes());
        b.extend_from_slice(&self.uncompressed_sectors.to_le_bytes());
        b.extend_from_slice(&self.offset.to_le_bytes());
        b.extend_from_slice(&self.csum.to_le_bytes());
        for p in &self.ptrs {
            b.extend_from_slice(&p.dev_sector.to_le_bytes());
            b.push(p.generation);
            b.extend_from_slice(&[0; 7]);
        }
        b
    }

    pub fn decode(b: &[u8]) -> Option<ExtentValue> {
        if b.len() < EXTENT_HEADER_BYTES || b[3] != 0 {
            return None;
        }
        let n = b[0] as usize;
        if n == 0
            || n > MAX_PTRS
            || b.len() != EXTENT_HEADER_BYTES + n * EXTENT_PTR_BYTES
            || b[1] > 2
            || b[2] > 2
        {
            return None;
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let mut ptrs = Vec::with_capacity(n);
        for i in 0..n {
            let o = EXTENT_HEADER_BYTES + i * EXTENT_PTR_BYTES;
            if b[o + 9..o + 16].iter().any(|&x| x != 0) {
                return None;
            }
            ptrs.push(ExtentPtr {
                dev_sector: u64::from_le_bytes(b[o..o + 8].try_into().unwrap()),
                generation: b[o + 8],
            });
        }
        Some(ExtentValue {
            csum_type: b[1],
            compression: b[2],
            stored_sectors: u32_at(4),
            uncompressed_sectors: u32_at(8),
            offset: u32_at(12),
            csum: u64::from_le_bytes(b[16..24].try_into().unwrap()),
            ptrs,
        })
    }

    /// Sectors this key charges to each bucket it points into. Uncompressed
    /// extents charge what they cover; compressed ones the whole stored size.
    pub fn charged_sectors(&self, key_size: u32) -> u32 {
        if self.compression == 0 {
            key_size
        } else {
            self.stored_sectors
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_value_layout() {
        let v = ExtentValue {
            csum_type: 1,
            compression: 0,
            stored_sectors: 8,
            uncompressed_sectors: 8,
            offset: 2,
            csum: 0xabcd,
            ptrs: vec![ExtentPtr {
                dev_sector: 4096,
                generation: 3,
            }],
        };
        let b = v.encode();
        assert_eq!(b.len(), 40);
        assert_eq!(b[0], 1);
        assert_eq!(&b[12..16], &2u32.to_le_bytes());
        assert_eq!(&b[16..24], &0xabcdu64.to_le_bytes());
        assert_eq!(&b[24..32], &4096u64.to_le_bytes());
        assert_eq!(b[32], 3);
        assert_eq!(ExtentValue::decode(&b), Some(v));
        assert_eq!(ExtentValue::decode(&b[..39]), None);
        let mut bad = b.clone();
        bad[0] = 0;
        assert_eq!(ExtentValue::decode(&bad), None);
    }
}
