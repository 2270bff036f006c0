//! The xattrs btree's value. Position: `inode : slot : snapshot`, a hash
//! table with linear probing and whiteouts like the dirents (see
//! [`super::hashtab`]): the slot starts at the hash of namespace byte and
//! name ([`xattr_slot`], never below `dirent_format::FIRST_SLOT`). Slot 0
//! holds a symlink's target (a `Blob` key), not an xattr.
//!
//! Key type `Xattr`, little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | namespace: 1 `user.`, 2 `trusted.`, 3 `security.`, 4 `system.` (POSIX ACLs) |
//! | 1 | 1 | name length n (1 ..= 255, without the namespace prefix) |
//! | 2 | 2 | reserved, zero |
//! | 4 | 4 | value length v (0 ..= 65536) |
//! | 8 | n | name bytes, without the prefix (no NUL) |
//! | 8 + n | v | value bytes |

pub const XATTR_HEADER_BYTES: usize = 8;
/// Longest full name (with prefix), as Linux's XATTR_NAME_MAX.
pub const XATTR_NAME_MAX: usize = 255;
/// Largest value, as Linux's XATTR_SIZE_MAX (the engine's key size limit
/// may allow less: see `Fs::setxattr`).
pub const XATTR_SIZE_MAX: usize = 65536;

/// Attribute namespaces, by their stored byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Namespace {
    User = 1,
    Trusted = 2,
    Security = 3,
    System = 4,
}

impl Namespace {
    pub fn from_u8(b: u8) -> Option<Namespace> {
        Some(match b {
            1 => Namespace::User,
            2 => Namespace::Trusted,
            3 => Namespace::Security,
            4 => Namespace::System,
            _ => return None,
        })
    }

    pub fn prefix(self) -> &'static [u8] {
        match self {
            Namespace::User => b"user.",
            Namespace::Trusted => b"trusted.",
            Namespace::Security => b"security.",
            Namespace::System => b"system.",
        }
    }
}

/// `system.` names that exist (the POSIX ACLs); no other `system.` name does.
pub const SYSTEM_NAMES: [&[u8]; 2] = [b"posix_acl_access", b"posix_acl_default"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XattrValue {
    pub ns: Namespace,
    /// Without the namespace prefix.
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

impl XattrValue {
    /// Bytes the encoded value takes.
    pub fn encoded_len(name_len: usize, value_len: usize) -> usize {
        XATTR_HEADER_BYTES + name_len + value_len
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::encoded_len(self.name.len(), self.value.len()));
        b.push(self.ns as u8);
        b.push(self.name.len() as u8);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&(self.value.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.name);
        b.extend_from_slice(&self.value);
        b
    }

    pub fn decode(b: &[u8]) -> Option<XattrValue> {
        if b.len() < XATTR_HEADER_BYTES || b[2..4] != [0, 0] {
            return None;
        }
        let ns = Namespace::from_u8(b[0])?;
        let n = b[1] as usize;
        let v = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
        if n == 0 || v > XATTR_SIZE_MAX || b.len() != XATTR_HEADER_BYTES + n + v {
            return None;
        }
        let name = b[XATTR_HEADER_BYTES..XATTR_HEADER_BYTES + n].to_vec();
        if name.contains(&0) {
            return None;
        }
        Some(XattrValue {
            ns,
            name,
            value: b[XATTR_HEADER_BYTES + n..].to_vec(),
        })
    }

    /// The name with its prefix, as `listxattr` shows it.
    pub fn full_name(&self) -> Vec<u8> {
        let mut v = self.ns.prefix().to_vec();
        v.extend_from_slice(&self.name);
        v
    }
}

/// First probe slot of an attribute of an inode.
pub fn xattr_slot(ns: Namespace, name: &[u8]) -> u64 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(name, 0x7861_7474_7200_0000 | ns as u64);
    // Keep the top bits clear so probing never wraps.
    super::dirent_format::FIRST_SLOT + (h >> 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattr_layout() {
        let v = XattrValue {
            ns: Namespace::Trusted,
            name: b"md5".to_vec(),
            value: b"abcd".to_vec(),
        };
        let b = v.encode();
        assert_eq!(b.len(), XattrValue::encoded_len(3, 4));
        assert_eq!(b.len(), 15);
        assert_eq!((b[0], b[1]), (2, 3));
        assert_eq!(&b[2..4], &[0, 0]);
        assert_eq!(&b[4..8], &4u32.to_le_bytes());
        assert_eq!(&b[8..11], b"md5");
        assert_eq!(&b[11..], b"abcd");
        assert_eq!(XattrValue::decode(&b), Some(v.clone()));
        assert_eq!(v.full_name(), b"trusted.md5");
        assert_eq!(XattrValue::decode(&b[..14]), None);
        let mut bad = b.clone();
        bad[0] = 9;
        assert_eq!(XattrValue::decode(&bad), None, "unknown namespace");
        let empty = XattrValue {
            ns: Namespace::User,
            name: b"e".to_vec(),
            value: vec![],
        };
        assert_eq!(XattrValue::decode(&empty.encode()), Some(empty));
        assert!(xattr_slot(Namespace::User, b"a") >= crate::fs::dirent_format::FIRST_SLOT);
        assert_ne!(
            xattr_slot(Namespace::User, b"a"),
            xattr_slot(Namespace::Trusted, b"a")
        );
    }
}
