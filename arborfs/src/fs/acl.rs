//! POSIX access control lists, as Linux (and ext4, btrfs, bcachefs) apply
//! them. An ACL is stored as the `system.posix_acl_access` or
//! `system.posix_acl_default` xattr in the kernel's xattr encoding (a
//! little-endian u32 version 2, then 8-byte entries: u16 tag, u16 permission
//! bits, u32 uid or gid).
//!
//! - The mode's permission bits mirror the access ACL: owner = the owner
//!   entry, group = the mask entry (the owning group's entry when there is no
//!   mask), other = the other entry. Setting an ACL sets the mode; `chmod`
//!   rewrites those three entries. An ACL that says no more than the mode
//!   (three entries) is not stored at all.
//! - Access: the owner gets the owner entry; else a matching named user entry
//!   (limited by the mask); else the owning group and named group entries
//!   the caller belongs to (any one that grants all of the request, limited by
//!   the mask; denied if some matched and none grants); else the other entry.
//!   As in the kernel, the ACL is consulted only when the mode's group bits
//!   are not all clear.
//! - A new inode in a directory with a default ACL gets that ACL as its
//!   access ACL, limited by the mode it was created with (the umask is not
//!   applied), and a new directory also gets it as its default ACL.

use super::error::{FsError, FsResult};
use super::types::Caller;

pub const ACL_USER_OBJ: u16 = 0x01;
pub const ACL_USER: u16 = 0x02;
pub const ACL_GROUP_OBJ: u16 = 0x04;
pub const ACL_GROUP: u16 = 0x08;
pub const ACL_MASK: u16 = 0x10;
pub const ACL_OTHER: u16 = 0x20;

/// The xattr encoding's version field.
const ACL_VERSION: u32 = 2;
/// Bytes of the header and of each entry in the xattr encoding.
const HEADER_BYTES: usize = 4;
const ENTRY_BYTES: usize = 8;

/// One entry: a tag, its `rwx` bits (4, 2, 1) and, for named entries, the id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclEntry {
    pub tag: u16,
    pub perm: u16,
    pub id: u32,
}

/// A valid ACL: entries in the kernel's order (by tag, then id), exactly one
/// owner, owning group and other entry, named entries unique and only with a
/// mask entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<AclEntry>,
}

impl Acl {
    /// Decodes and validates the xattr encoding (`Invalid` otherwise).
    pub fn decode(b: &[u8]) -> FsResult<Acl> {
        let bad = |why: &str| FsError::Invalid(format!("malformed POSIX ACL: {why}"));
        if b.len() < HEADER_BYTES || !(b.len() - HEADER_BYTES).is_multiple_of(ENTRY_BYTES) {
            return Err(bad("length"));
        }
        if b[..HEADER_BYTES] != ACL_VERSION.to_le_bytes() {
            return Err(bad("version"));
        }
        let entries: Vec<AclEntry> = b[HEADER_BYTES..]
            .chunks_exact(ENTRY_BYTES)
            .map(|e| {
                let tag = u16::from_le_bytes([e[0], e[1]]);
                AclEntry {
                    tag,
                    perm: u16::from_le_bytes([e[2], e[3]]),
                    // Only named entries have an id (others: undefined).
                    id: match tag {
                        ACL_USER | ACL_GROUP => u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
                        _ => u32::MAX,
                    },
                }
            })
            .collect();
        let count = |tag| entries.iter().filter(|e| e.tag == tag).count();
        for e in &entries {
            if e.perm & !7 != 0 {
                return Err(bad("permission bits"));
            }
            if !matches!(
                e.tag,
                ACL_USER_OBJ | ACL_USER | ACL_GROUP_OBJ | ACL_GROUP | ACL_MASK | ACL_OTHER
            ) {
                return Err(bad("tag"));
            }
        }
        if count(ACL_USER_OBJ) != 1 || count(ACL_GROUP_OBJ) != 1 || count(ACL_OTHER) != 1 {
            return Err(bad("owner, group and other need one entry each"));
        }
        let named = count(ACL_USER) + count(ACL_GROUP);
        match count(ACL_MASK) {
            0 if named > 0 => return Err(bad("named entries need a mask entry")),
            0 | 1 => {}
            _ => return Err(bad("more than one mask entry")),
        }
        // The kernel's order: by tag, named entries by id, no duplicates.
        let key = |e: &AclEntry| (e.tag, e.id);
        if entries.windows(2).any(|w| key(&w[0]) >= key(&w[1])) {
            return Err(bad("entries out of order or repeated"));
        }
        Ok(Acl { entries })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_BYTES + ENTRY_BYTES * self.entries.len());
        b.extend_from_slice(&ACL_VERSION.to_le_bytes());
        for e in &self.entries {
            b.extend_from_slice(&e.tag.to_le_bytes());
            b.extend_from_slice(&e.perm.to_le_bytes());
            b.extend_from_slice(&e.id.to_le_bytes());
        }
        b
    }

    pub fn entries(&self) -> &[AclEntry] {
        &self.entries
    }

    /// Only the owner, owning group and other entries: the mode says it all.
    pub fn is_minimal(&self) -> bool {
        self.entries.len() == 3
    }

    fn entry_mut(&mut self, tag: u16) -> Option<&mut AclEntry> {
        self.entries.iter_mut().find(|e| e.tag == tag)
    }

    fn perm_of(&self, tag: u16) -> u16 {
        self.entries
            .iter()
            .find(|e| e.tag == tag)
            .map_or(0, |e| e.perm)
    }

    /// The entries the mode's owner, group and other bits stand for (the
    /// group bits: the mask, or the owning group's entry without one), with
    /// each one's shift in the mode.
    fn mode_entries(&self) -> [(u16, u32); 3] {
        let group = match self.entries.iter().any(|e| e.tag == ACL_MASK) {
            true => ACL_MASK,
            false => ACL_GROUP_OBJ,
        };
        [(ACL_USER_OBJ, 6), (group, 3), (ACL_OTHER, 0)]
    }

    /// The permission bits (`0o777` part of a mode) the ACL stands for.
    pub fn mode_bits(&self) -> u32 {
        self.mode_entries().iter().fold(0, |m, &(tag, shift)| {
            m | (self.perm_of(tag) as u32) << shift
        })
    }

    /// Rewrites the entries of [`Acl::mode_bits`] from the permission bits
    /// of `mode` (chmod).
    pub fn chmod(&mut self, mode: u32) {
        for (tag, shift) in self.mode_entries() {
            if let Some(e) = self.entry_mut(tag) {
                e.perm = ((mode >> shift) & 7) as u16;
            }
        }
    }

    /// A new inode's access ACL from its directory's default ACL: the
    /// entries of [`Acl::mode_bits`] are limited by `mode`'s bits. Returns
    /// the ACL and the new permission bits.
    pub fn for_new_inode(&self, mode: u32) -> (Acl, u32) {
        let mut acl = self.clone();
        for (tag, shift) in acl.mode_entries() {
            if let Some(e) = acl.entry_mut(tag) {
                e.perm &= ((mode >> shift) & 7) as u16;
            }
        }
        let bits = acl.mode_bits();
        (acl, bits)
    }

    /// Whether the ACL grants `caller` every bit of `mask` (MAY_READ 4,
    /// MAY_WRITE 2, MAY_EXEC 1) on an inode owned by `uid` and `gid`.
    pub fn permits(&self, caller: &Caller, uid: u32, gid: u32, mask: u32) -> bool {
        let mask_bits = match self.entries.iter().find(|e| e.tag == ACL_MASK) {
            Some(m) => m.perm as u32,
            None => 7,
        };
        let grants = |perm: u16, masked: bool| {
            let p = if masked {
                perm as u32 & mask_bits
            } else {
                perm as u32
            };
            p & mask == mask
        };
        if caller.uid == uid {
            return grants(self.perm_of(ACL_USER_OBJ), false);
        }
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| e.tag == ACL_USER && e.id == caller.uid)
        {
            return grants(e.perm, true);
        }
        let mut matched = false;
        for e in &self.entries {
            let member = match e.tag {
                ACL_GROUP_OBJ => caller.in_group(gid),
                ACL_GROUP => caller.in_group(e.id),
                _ => false,
            };
            if member {
                if grants(e.perm, true) {
                    return true;
                }
                matched = true;
            }
        }
        if matched {
            return false;
        }
        grants(self.perm_of(ACL_OTHER), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(tag: u16, perm: u16, id: u32) -> AclEntry {
        AclEntry { tag, perm, id }
    }

    fn acl(entries: &[AclEntry]) -> Acl {
        Acl::decode(
            &Acl {
                entries: entries.to_vec(),
            }
            .encode(),
        )
        .unwrap()
    }

    fn user(uid: u32, gid: u32, groups: &[u32]) -> Caller {
        Caller {
            uid,
            gid,
            groups: groups.to_vec(),
            fsetid: false,
            umask: 0,
        }
    }

    const U: u32 = u32::MAX;

    #[test]
    fn encoding_round_trips_and_rejects_malformed_lists() {
        let a = acl(&[
            e(ACL_USER_OBJ, 6, U),
            e(ACL_USER, 6, 1000),
            e(ACL_GROUP_OBJ, 4, U),
            e(ACL_MASK, 6, U),
            e(ACL_OTHER, 0, U),
        ]);
        assert_eq!(Acl::decode(&a.encode()).unwrap(), a);
        assert_eq!(a.encode().len(), 4 + 5 * 8);
        let bad = |entries: &[AclEntry]| {
            Acl::decode(
                &Acl {
                    entries: entries.to_vec(),
                }
                .encode(),
            )
            .is_err()
        };
        // named entry without a mask
        assert!(bad(&[
            e(ACL_USER_OBJ, 6, U),
            e(ACL_USER, 6, 1000),
            e(ACL_GROUP_OBJ, 4, U),
            e(ACL_OTHER, 0, U),
        ]));
        // no owner entry; two other entries; out of order; duplicate user
        assert!(bad(&[e(ACL_GROUP_OBJ, 4, U), e(ACL_OTHER, 0, U)]));
        assert!(bad(&[
            e(ACL_USER_OBJ, 6, U),
            e(ACL_GROUP_OBJ, 4, U),
            e(ACL_OTHER, 0, U),
            e(ACL_OTHER, 0, U),
        ]));
        assert!(bad(&[
            e(ACL_GROUP_OBJ, 4, U),
            e(ACL_USER_OBJ, 6, U),
            e(ACL_OTHER, 0, U),
        ]));
        assert!(bad(&[
            e(ACL_USER_OBJ, 6, U),
            e(ACL_USER, 6, 7),
            e(ACL_USER, 4, 7),
            e(ACL_GROUP_OBJ, 4, U),
            e(ACL_MASK, 6, U),
            e(ACL_OTHER, 0, U),
        ]));
        // bad perm bits, bad tag, bad version, truncated
        assert!(bad(&[
            e(ACL_USER_OBJ, 8, U),
            e(ACL_GROUP_OBJ, 4, U),
            e(ACL_OTHER, 0, U)
        ]));
        assert!(bad(&[
            e(ACL_USER_OBJ, 6, U),
            e(0x40, 4, U),
            e(ACL_GROUP_OBJ, 4, U),
            e(ACL_OTHER, 0, U)
        ]));
        let mut v = a.encode();
        v[0] = 1;
        assert!(Acl::decode(&v).is_err());
        assert!(Acl::decode(&a.encode()[..11]).is_err());
        assert!(Acl::decode(&[]).is_err());
    }

    #[test]
    fn mode_bits_follow_the_mask_and_chmod_rewrites_it() {
        let mut a = acl(&[
            e(ACL_USER_OBJ, 6, U),
            e(ACL_USER, 7, 1000),
            e(ACL_GROUP_OBJ, 4, U),
            e(ACL_MASK, 5, U),
            e(ACL_OTHER, 1, U),
        ]);
        assert_eq!(a.mode_bits(), 0o651);
        a.chmod(0o740);
        assert_eq!(a.mode_bits(), 0o740);
        // the named entry and the owning group's entry are untouched
        assert_eq!(a.entries()[1].perm, 7);
        assert_eq!(a.entries()[2].perm, 4);
        let mut minimal = acl(&[
            e(ACL_USER_OBJ, 6, U),
            e(ACL_GROUP_OBJ, 4, U),
            e(ACL_OTHER, 4, U),
        ]);
        assert!(minimal.is_minimal() && !a.is_minimal());
        assert_eq!(minimal.mode_bits(), 0o644);
        minimal.chmod(0o711);
        assert_eq!(minimal.mode_bits(), 0o711);
    }

    #[test]
    fn access_follows_posix_1e() {
        // owner 10, group 20; user 1000 rw, group 30 r, mask rw, other none
        let a = acl(&[
            e(ACL_USER_OBJ, 7, U),
            e(ACL_USER, 6, 1000),
            e(ACL_USER, 7, 1001),
            e(ACL_GROUP_OBJ, 1, U),
            e(ACL_GROUP, 4, 30),
            e(ACL_MASK, 6, U),
            e(ACL_OTHER, 0, U),
        ]);
        let (r, w, x) = (4, 2, 1);
        // owner: the owner entry, not limited by the mask
        assert!(a.permits(&user(10, 99, &[]), 10, 20, r | w | x));
        // named user: its entry limited by the mask (1001 has rwx, mask rw)
        assert!(a.permits(&user(1000, 99, &[]), 10, 20, r | w));
        assert!(!a.permits(&user(1001, 99, &[]), 10, 20, x));
        assert!(a.permits(&user(1001, 99, &[]), 10, 20, r | w));
        // a named user entry wins over group entries the user is in
        assert!(!a.permits(&user(1000, 30, &[]), 10, 20, x));
        // owning group: x, but the mask (rw) takes it away
        assert!(!a.permits(&user(2000, 20, &[]), 10, 20, x));
        // named group 30 (supplementary) reads; cannot write
        assert!(a.permits(&user(2000, 99, &[30]), 10, 20, r));
        assert!(!a.permits(&user(2000, 99, &[30]), 10, 20, w));
        // a member of two matching groups gets whichever one grants
        let b = acl(&[
            e(ACL_USER_OBJ, 7, U),
            e(ACL_GROUP_OBJ, 4, U),
            e(ACL_GROUP, 2, 30),
            e(ACL_MASK, 7, U),
            e(ACL_OTHER, 7, U),
        ]);
        assert!(b.permits(&user(2000, 20, &[30]), 10, 20, w));
        assert!(b.permits(&user(2000, 20, &[30]), 10, 20, r));
        // ... but not both bits from different entries, and a matched group
        // that does not grant denies even though other would allow it
        assert!(!b.permits(&user(2000, 20, &[30]), 10, 20, r | w));
        assert!(!b.permits(&user(2000, 99, &[30]), 10, 20, r));
        // nobody matching: other
        assert!(b.permits(&user(2000, 99, &[]), 10, 20, r | w | x));
        assert!(!a.permits(&user(2000, 99, &[]), 10, 20, r));
    }

    #[test]
    fn new_inodes_take_the_default_acl_limited_by_their_mode() {
        let default = acl(&[
            e(ACL_USER_OBJ, 7, U),
            e(ACL_USER, 7, 1000),
            e(ACL_GROUP_OBJ, 5, U),
            e(ACL_MASK, 7, U),
            e(ACL_OTHER, 5, U),
        ]);
        let (file, bits) = default.for_new_inode(0o666);
        assert_eq!(bits, 0o664);
        assert_eq!(file.mode_bits(), 0o664);
        // the named entry is kept; the mask limits it to rw
        assert_eq!(file.entries()[1], e(ACL_USER, 7, 1000));
        assert!(file.permits(&user(1000, 99, &[]), 10, 20, 6));
        assert!(!file.permits(&user(1000, 99, &[]), 10, 20, 1));
        let (_, bits) = default.for_new_inode(0o777);
        assert_eq!(bits, 0o775);
    }
}
