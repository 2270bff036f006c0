//! The dirents btree's value. Position: `directory inode : slot : snapshot`,
//! where the slot starts at the name's hash and probes upward on collision
//! (so a slot is also a stable readdir cookie for the entry's lifetime).
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0  | 8 | target inode number |
//! | 8  | 1 | `d_type` (DT_* value) |
//! | 9  | 1 | name length (1 ..= 255) |
//! | 10 | 6 | reserved, zero |
//! | 16 | n | name bytes (no NUL) |
//!
//! A deleted entry whose slot is inside a probe chain stays as a key of type
//! `Whiteout` (no value), so lookups keep probing past it.

pub const DIRENT_HEADER_BYTES: usize = 16;
pub const NAME_MAX: usize = 255;

/// Slots below this are never hashed to (0, 1 and 2 are `.`, `..` and the
/// end-of-directory cookie for readdir).
pub const FIRST_SLOT: u64 = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirentValue {
    pub target: u64,
    pub d_type: u8,
    pub name: Vec<u8>,
}

impl DirentValue {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(DIRENT_HEADER_BYTES + self.name.len());
        b.extend_from_slice(&self.target.to_le_bytes());
        b.push(self.d_type);
        b.push(self.name.len() as u8);
        b.extend_from_slice(&[0; 6]);
        b.extend_from_slice(&self.name);
        b
    }

    pub fn decode(b: &[u8]) -> Option<DirentValue> {
        if b.len() < DIRENT_HEADER_BYTES || b[10..16].iter().any(|&x| x != 0) {
            return None;
        }
        let len = b[9] as usize;
        if len == 0 || b.len() != DIRENT_HEADER_BYTES + len {
            return None;
        }
        let name = b[DIRENT_HEADER_BYTES..].to_vec();
        if name.contains(&0) || name.contains(&b'/') {
            return None;
        }
        Some(DirentValue {
            target: u64::from_le_bytes(b[0..8].try_into().unwrap()),
            d_type: b[8],
            name,
        })
    }
}

/// First probe slot of `name` in a directory.
pub fn name_slot(name: &[u8]) -> u64 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(name, 0x6172_626f_7264_6972);
    // Keep the top bit clear so probing never wraps.
    FIRST_SLOT + (h >> 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirent_layout() {
        let v = DirentValue {
            target: 4097,
            d_type: 8,
            name: b"hello".to_vec(),
        };
        let b = v.encode();
        assert_eq!(b.len(), 21);
        assert_eq!(&b[0..8], &4097u64.to_le_bytes());
        assert_eq!((b[8], b[9]), (8, 5));
        assert_eq!(&b[16..], b"hello");
        assert_eq!(DirentValue::decode(&b), Some(v));
        assert_eq!(DirentValue::decode(&b[..20]), None);
        let mut bad = b.clone();
        bad[16] = b'/';
        assert_eq!(DirentValue::decode(&bad), None);
        assert!(name_slot(b"a") >= FIRST_SLOT);
        assert!(name_slot(b"a") < u64::MAX / 2);
    }
}
