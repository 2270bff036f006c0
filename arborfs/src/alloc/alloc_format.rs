//! The alloc btree's per-bucket value and the accounting value.
//!
//! Alloc key position: `0 : bucket : 0`. Value (24 bytes, LE):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0  | 1 | `generation`: bumped each time the bucket empties; pointers carry it |
//! | 1  | 1 | `data_type` ([`DataType`]) |
//! | 2  | 2 | reserved, zero |
//! | 4  | 4 | `dirty_sectors`: live sectors in the bucket |
//! | 8  | 8 | `journal_seq_nonempty`: reserved for the journal sequence of the empty → non-empty change; always written as 0 in format version 1 |
//! | 16 | 8 | `journal_seq_empty`: reserved for the journal sequence of the last non-empty → empty change; always written as 0 in format version 1 |
//!
//! No alloc key means: free, generation 0, never used.
//!
//! Accounting key position: `u64::MAX : 0 : 0` in the alloc btree. Value: a
//! little-endian i64 per [`Counter`], in that order.

pub const ALLOC_VALUE_BYTES: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DataType {
    Free = 0,
    Superblock = 1,
    Journal = 2,
    Btree = 3,
    User = 4,
}

impl DataType {
    pub fn from_u8(v: u8) -> Option<DataType> {
        Some(match v {
            0 => DataType::Free,
            1 => DataType::Superblock,
            2 => DataType::Journal,
            3 => DataType::Btree,
            4 => DataType::User,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            DataType::Free => "free",
            DataType::Superblock => "sb",
            DataType::Journal => "journal",
            DataType::Btree => "btree",
            DataType::User => "user",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocValue {
    pub generation: u8,
    pub data_type: DataType,
    pub dirty_sectors: u32,
    pub journal_seq_nonempty: u64,
    pub journal_seq_empty: u64,
}

impl Default for AllocValue {
    fn default() -> AllocValue {
        AllocValue {
            generation: 0,
            data_type: DataType::Free,
            dirty_sectors: 0,
            journal_seq_nonempty: 0,
            journal_seq_empty: 0,
        }
    }
}

impl AllocValue {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(ALLOC_VALUE_BYTES);
        b.push(self.generation);
        b.push(self.data_type as u8);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&self.dirty_sectors.to_le_bytes());
        b.extend_from_slice(&self.journal_seq_nonempty.to_le_bytes());
        b.extend_from_slice(&self.journal_seq_empty.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<AllocValue> {
        if b.len() != ALLOC_VALUE_BYTES || b[2] != 0 || b[3] != 0 {
            return None;
        }
        Some(AllocValue {
            generation: b[0],
            data_type: DataType::from_u8(b[1])?,
            dirty_sectors: u32::from_le_bytes(b[4..8].try_into().ok()?),
            journal_seq_nonempty: u64::from_le_bytes(b[8..16].try_into().ok()?),
            journal_seq_empty: u64::from_le_bytes(b[16..24].try_into().ok()?),
        })
    }
}

/// Space counters kept exact by the alloc trigger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// Sectors of live user data (as stored, after compression).
    UserSectors = 0,
    /// Sectors reserved by b-tree nodes.
    BtreeSectors = 1,
    /// Buckets with no live data.
    FreeBuckets = 2,
    /// Sectors of user data before compression.
    UncompressedSectors = 3,
}

pub const COUNTERS: usize = 4;

pub fn encode_counters(c: &[i64; COUNTERS]) -> Vec<u8> {
    c.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn decode_counters(b: &[u8]) -> Option<[i64; COUNTERS]> {
    if b.len() != COUNTERS * 8 {
        return None;
    }
    let mut c = [0i64; COUNTERS];
    for (i, v) in c.iter_mut().enumerate() {
        *v = i64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().ok()?);
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_value_layout() {
        let v = AllocValue {
            generation: 9,
            data_type: DataType::User,
            dirty_sectors: 0x0102,
            journal_seq_nonempty: 5,
            journal_seq_empty: 6,
        };
        let b = v.encode();
        assert_eq!(b.len(), ALLOC_VALUE_BYTES);
        assert_eq!(b[0], 9);
        assert_eq!(b[1], DataType::User as u8);
        assert_eq!(&b[4..8], &0x0102u32.to_le_bytes());
        assert_eq!(&b[8..16], &5u64.to_le_bytes());
        assert_eq!(&b[16..24], &6u64.to_le_bytes());
        assert_eq!(AllocValue::decode(&b), Some(v));
        assert_eq!(AllocValue::decode(&b[..23]), None);
        let mut bad = b.clone();
        bad[1] = 77;
        assert_eq!(AllocValue::decode(&bad), None);
    }

    #[test]
    fn counters_round_trip() {
        let c = [1, -2, 3, 4];
        assert_eq!(decode_counters(&encode_counters(&c)), Some(c));
        assert_eq!(decode_counters(&[0; 7]), None);
    }
}
