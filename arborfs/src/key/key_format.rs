//! On-disk encoding of a key (little-endian), as stored in btree nodes and
//! journal entries:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0  | 8 | `pos.inode` |
//! | 8  | 8 | `pos.offset` |
//! | 16 | 4 | `pos.snapshot` |
//! | 20 | 4 | `size` (extents: sectors covered) |
//! | 24 | 1 | `type` ([`KeyType`]) |
//! | 25 | 3 | reserved, zero |
//! | 28 | 4 | `value_len` in bytes |
//! | 32 | `value_len` | value, then zero padding to a multiple of 8 |

use super::{Key, KeyType, Pos};

pub const KEY_HEADER_BYTES: usize = 32;
/// Largest value a key may carry (a full xattr value plus its header fits).
pub const MAX_VALUE_BYTES: usize = 65536 + 512;

/// Bytes a key takes when encoded, including padding.
pub fn encoded_len(value_len: usize) -> usize {
    KEY_HEADER_BYTES + value_len.next_multiple_of(8)
}

pub fn encode_pos(out: &mut Vec<u8>, pos: Pos) {
    out.extend_from_slice(&pos.inode.to_le_bytes());
    out.extend_from_slice(&pos.offset.to_le_bytes());
    out.extend_from_slice(&pos.snapshot.to_le_bytes());
}

pub fn decode_pos(b: &[u8]) -> Pos {
    Pos {
        inode: u64::from_le_bytes(b[0..8].try_into().unwrap()),
        offset: u64::from_le_bytes(b[8..16].try_into().unwrap()),
        snapshot: u32::from_le_bytes(b[16..20].try_into().unwrap()),
    }
}

pub fn encode_key(out: &mut Vec<u8>, key: &Key) {
    encode_parts(out, key.pos, key.size, key.ty, &key.value);
}

pub fn encode_parts(out: &mut Vec<u8>, pos: Pos, size: u32, ty: KeyType, value: &[u8]) {
    encode_pos(out, pos);
    out.extend_from_slice(&size.to_le_bytes());
    out.push(ty as u8);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
    let pad = value.len().next_multiple_of(8) - value.len();
    out.extend_from_slice(&[0u8; 8][..pad]);
}

/// Why a key failed to decode; the caller adds where it was.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyDecodeError {
    Truncated,
    BadType(u8),
    ValueTooLarge(u32),
    ReservedNotZero,
    BadExtent,
}

impl std::fmt::Display for KeyDecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyDecodeError::Truncated => write!(f, "key runs past the end of its container"),
            KeyDecodeError::BadType(t) => write!(f, "unknown key type {t}"),
            KeyDecodeError::ValueTooLarge(n) => write!(f, "value length {n} exceeds the maximum"),
            KeyDecodeError::ReservedNotZero => write!(f, "reserved key bytes are not zero"),
            KeyDecodeError::BadExtent => write!(f, "extent size exceeds its end offset"),
        }
    }
}

/// A decoded key whose value still points into the buffer it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRef<'a> {
    pub pos: Pos,
    pub size: u32,
    pub ty: KeyType,
    pub value: &'a [u8],
}

/// Decodes one key from the front of `b`; returns it and the bytes consumed.
pub fn decode_key(b: &[u8]) -> Result<(Key, usize), KeyDecodeError> {
    let (k, used) = decode_key_ref(b)?;
    Ok((
        Key {
            pos: k.pos,
            size: k.size,
            ty: k.ty,
            value: k.value.to_vec(),
        },
        used,
    ))
}

/// [`decode_key`] without copying the value.
pub fn decode_key_ref(b: &[u8]) -> Result<(KeyRef<'_>, usize), KeyDecodeError> {
    if b.len() < KEY_HEADER_BYTES {
        return Err(KeyDecodeError::Truncated);
    }
    let pos = decode_pos(b);
    let size = u32::from_le_bytes(b[20..24].try_into().unwrap());
    let ty = KeyType::from_u8(b[24]).ok_or(KeyDecodeError::BadType(b[24]))?;
    if b[25..28] != [0, 0, 0] {
        return Err(KeyDecodeError::ReservedNotZero);
    }
    let value_len = u32::from_le_bytes(b[28..32].try_into().unwrap());
    if value_len as usize > MAX_VALUE_BYTES {
        return Err(KeyDecodeError::ValueTooLarge(value_len));
    }
    if (size as u64) > pos.offset {
        return Err(KeyDecodeError::BadExtent);
    }
    let total = encoded_len(value_len as usize);
    if b.len() < total {
        return Err(KeyDecodeError::Truncated);
    }
    let value = &b[KEY_HEADER_BYTES..KEY_HEADER_BYTES + value_len as usize];
    Ok((
        KeyRef {
            pos,
            size,
            ty,
            value,
        },
        total,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let key = Key {
            pos: Pos::new(0x0102, 0x0304, 0x05),
            size: 7,
            ty: KeyType::Blob,
            value: vec![9; 3],
        };
        let mut out = Vec::new();
        encode_key(&mut out, &key);
        assert_eq!(out.len(), 40);
        assert_eq!(out.len(), encoded_len(3));
        assert_eq!(&out[0..8], &0x0102u64.to_le_bytes());
        assert_eq!(&out[8..16], &0x0304u64.to_le_bytes());
        assert_eq!(&out[16..20], &5u32.to_le_bytes());
        assert_eq!(&out[20..24], &7u32.to_le_bytes());
        assert_eq!(out[24], KeyType::Blob as u8);
        assert_eq!(&out[28..32], &3u32.to_le_bytes());
        assert_eq!(&out[32..35], &[9, 9, 9]);
        assert_eq!(&out[35..40], &[0; 5]);
        let (back, used) = decode_key(&out).unwrap();
        assert_eq!(back, key);
        assert_eq!(used, 40);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(decode_key(&[0; 10]), Err(KeyDecodeError::Truncated));
        let mut out = Vec::new();
        encode_key(&mut out, &Key::blob(Pos::new(1, 1, 1), vec![1; 16]));
        assert_eq!(decode_key(&out[..40]), Err(KeyDecodeError::Truncated));
        let mut bad = out.clone();
        bad[24] = 200;
        assert_eq!(decode_key(&bad), Err(KeyDecodeError::BadType(200)));
    }
}
