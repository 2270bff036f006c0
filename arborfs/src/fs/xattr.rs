//! Extended attributes, with Linux's naming and permission rules
//! (`xattr_permission` plus the capability checks of the security module):
//!
//! - names need a known prefix (`user.`, `trusted.`, `security.`, or exactly
//!   `system.posix_acl_access` / `system.posix_acl_default`), else
//!   `NotSupported`; an empty or over-255-byte name is `Range`, a bare
//!   prefix `Invalid`; values over 64 KiB are `TooBig`;
//! - `trusted.*` is root's only (others: writes `NotPermitted`, reads and
//!   lists see nothing);
//! - `security.*`: anyone reads, root writes;
//! - `system.posix_acl_*`: anyone reads, the owner or root writes; the value
//!   must be a valid POSIX ACL in the kernel's xattr encoding. Setting the
//!   access ACL sets the mode, and an ACL the mode expresses is not stored
//!   (see [`super::acl`]);
//! - `user.*` only on regular files and directories (elsewhere writes are
//!   `NotPermitted` and reads `NoAttr`), needs read or write permission on
//!   the file, and in a sticky directory only its owner (or root) writes.
//!
//! Setting or removing one updates the inode's ctime.
//!
//! `user.arborfs.compression` is not stored as an xattr: it reads and writes
//! the inode's compression option (see [`super::compress`]). Reading it gives
//! the effective setting; it is listed only when the inode has its own;
//! removing it makes the inode inherit again.

use super::FsCore;
use super::acl::Acl;
use super::compress::{self, Compression};
use super::error::{FsError, FsResult};
use super::hashtab::{self, slot_pos};
use super::inode::{read_inode, write_inode};
use super::inode_format::InodeValue;
use super::perm::{MAY_READ, MAY_WRITE, check_owner, may_access};
use super::types::*;
use super::xattr_format::{
    Namespace, SYSTEM_NAMES, XATTR_NAME_MAX, XATTR_SIZE_MAX, XattrValue, xattr_slot,
};
use crate::btree::trans::{Durability, Transaction};
use crate::key::{BtreeId, Key, KeyType};

/// How `setxattr` treats an existing attribute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XattrSet {
    /// Create or replace.
    #[default]
    Any,
    /// Fail with `Exists` if it is there (XATTR_CREATE).
    Create,
    /// Fail with `NoAttr` if it is not (XATTR_REPLACE).
    Replace,
}

/// Splits a full name into namespace and the rest.
fn parse_name(name: &[u8]) -> FsResult<(Namespace, &[u8])> {
    if name.is_empty() || name.len() > XATTR_NAME_MAX {
        return Err(FsError::Range);
    }
    if name.contains(&0) {
        return Err(FsError::Invalid("xattr name with a NUL byte".into()));
    }
    for ns in [Namespace::User, Namespace::Trusted, Namespace::Security] {
        if let Some(rest) = name.strip_prefix(ns.prefix()) {
            if rest.is_empty() {
                return Err(FsError::Invalid("xattr name is only a prefix".into()));
            }
            return Ok((ns, rest));
        }
    }
    if let Some(rest) = name.strip_prefix(Namespace::System.prefix())
        && SYSTEM_NAMES.contains(&rest)
    {
        return Ok((Namespace::System, rest));
    }
    Err(FsError::NotSupported)
}

/// Which of an inode's two POSIX ACLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclKind {
    /// `system.posix_acl_access`: who may do what to the inode.
    Access,
    /// `system.posix_acl_default`: what new inodes in a directory get.
    Default,
}

impl AclKind {
    fn short_name(self) -> &'static [u8] {
        match self {
            AclKind::Access => SYSTEM_NAMES[0],
            AclKind::Default => SYSTEM_NAMES[1],
        }
    }
}

/// The inode's stored ACL of `kind` (none when the mode says it all).
pub(crate) fn read_acl(
    tx: &mut Transaction<'_>,
    ino: InodeNo,
    kind: AclKind,
) -> FsResult<Option<Acl>> {
    match probe(tx, ino, Namespace::System, kind.short_name())?.0 {
        Some((_, x)) => Acl::decode(&x.value)
            .map(Some)
            .map_err(|e| FsError::Corrupted(format!("inode {}: stored ACL: {e}", ino.0))),
        None => Ok(None),
    }
}

/// Stores (or with `None` removes) the inode's ACL of `kind`.
pub(crate) fn write_acl(
    tx: &mut Transaction<'_>,
    ino: InodeNo,
    kind: AclKind,
    acl: Option<&Acl>,
) -> FsResult<()> {
    let (hit, free) = probe(tx, ino, Namespace::System, kind.short_name())?;
    match (acl, hit) {
        (Some(acl), hit) => {
            let slot = hit.map_or(free, |(slot, _)| slot);
            let x = XattrValue {
                ns: Namespace::System,
                name: kind.short_name().to_vec(),
                value: acl.encode(),
            };
            tx.put(
                BtreeId::Xattrs,
                Key::new(slot_pos(ino.0, slot), KeyType::Xattr, x.encode()),
            );
        }
        (None, Some((slot, _))) => hashtab::remove(tx, BtreeId::Xattrs, ino.0, slot)?,
        (None, None) => {}
    }
    Ok(())
}

/// May `caller` read (`write` false) or write the attribute?
fn check_perm(
    tx: &mut Transaction<'_>,
    ino: InodeNo,
    caller: &Caller,
    v: &InodeValue,
    ns: Namespace,
    name: &[u8],
    write: bool,
) -> FsResult<()> {
    let kind = FileKind::from_mode(v.mode).unwrap_or(FileKind::Regular);
    match ns {
        Namespace::Trusted if !caller.is_root() => Err(if write {
            FsError::NotPermitted
        } else {
            FsError::NoAttr
        }),
        Namespace::Trusted => Ok(()),
        Namespace::Security if write && !caller.is_root() => Err(FsError::NotPermitted),
        Namespace::Security => Ok(()),
        Namespace::System if !write => Ok(()),
        Namespace::System => {
            if kind == FileKind::Symlink {
                return Err(FsError::NotSupported);
            }
            check_owner(caller, v)?;
            if name == SYSTEM_NAMES[1] && kind != FileKind::Directory {
                return Err(FsError::AccessDenied);
            }
            Ok(())
        }
        Namespace::User => {
            if !matches!(kind, FileKind::Regular | FileKind::Directory) {
                return Err(if write {
                    FsError::NotPermitted
                } else {
                    FsError::NoAttr
                });
            }
            if write
                && kind == FileKind::Directory
                && v.mode & S_ISVTX != 0
                && !(caller.is_root() || caller.uid == v.uid)
            {
                return Err(FsError::NotPermitted);
            }
            may_access(tx, caller, ino, v, if write { MAY_WRITE } else { MAY_READ })
        }
    }
}

fn decode(k: &Key) -> FsResult<XattrValue> {
    if k.ty != KeyType::Xattr {
        return Err(FsError::Corrupted(format!(
            "key at {:?} is not an xattr",
            k.pos
        )));
    }
    XattrValue::decode(&k.value)
        .ok_or_else(|| FsError::Corrupted(format!("bad xattr at {:?}", k.pos)))
}

/// The attribute's slot and value if present, and where it would go.
fn probe(
    tx: &mut Transaction<'_>,
    ino: InodeNo,
    ns: Namespace,
    name: &[u8],
) -> FsResult<(Option<(u64, XattrValue)>, u64)> {
    let (hit, insert_at) = hashtab::probe(tx, BtreeId::Xattrs, ino.0, xattr_slot(ns, name), |k| {
        let x = decode(k)?;
        Ok(x.ns == ns && x.name == name)
    })?;
    let hit = hit
        .map(|(slot, k)| Ok::<_, FsError>((slot, decode(&k)?)))
        .transpose()?;
    Ok((hit, insert_at))
}

impl FsCore {
    /// The value of attribute `name` (full name, with prefix).
    pub fn getxattr(&self, caller: &Caller, ino: InodeNo, name: &[u8]) -> FsResult<Vec<u8>> {
        let (ns, short) = parse_name(name)?;
        self.tx(Durability::Lazy, |tx| {
            let v = read_inode(tx, ino)?;
            check_perm(tx, ino, caller, &v, ns, short, false)?;
            if name == compress::XATTR_NAME {
                return Ok(self.effective_compression(&v).to_string().into_bytes());
            }
            match probe(tx, ino, ns, short)?.0 {
                Some((_, x)) => Ok(x.value),
                None => Err(FsError::NoAttr),
            }
        })
    }

    /// Sets attribute `name` to `value`.
    pub fn setxattr(
        &self,
        caller: &Caller,
        ino: InodeNo,
        name: &[u8],
        value: &[u8],
        how: XattrSet,
    ) -> FsResult<()> {
        let (ns, short) = parse_name(name)?;
        if value.len() > XATTR_SIZE_MAX {
            return Err(FsError::TooBig);
        }
        // The engine bounds a key's value by the node size.
        if XattrValue::encoded_len(short.len(), value.len())
            > self.engine.inner.ctx().max_value_bytes()
        {
            return Err(FsError::TooBig);
        }
        if ns == Namespace::System {
            let acl = Acl::decode(value)?;
            let kind = if short == AclKind::Access.short_name() {
                AclKind::Access
            } else {
                AclKind::Default
            };
            return self.tx(Durability::Lazy, |tx| {
                let mut v = read_inode(tx, ino)?;
                check_perm(tx, ino, caller, &v, ns, short, true)?;
                // Only whether one is there: a damaged stored ACL can still
                // be replaced.
                let exists = probe(tx, ino, ns, short)?.0.is_some();
                match (how, exists) {
                    (XattrSet::Create, true) => return Err(FsError::Exists),
                    (XattrSet::Replace, false) => return Err(FsError::NoAttr),
                    _ => {}
                }
                if kind == AclKind::Access {
                    // The mode mirrors the ACL; an ACL the mode expresses
                    // whole is not kept.
                    v.mode = (v.mode & !0o777) | acl.mode_bits();
                    if !caller.fsetid && !caller.in_group(v.gid) {
                        v.mode &= !S_ISGID;
                    }
                    write_acl(tx, ino, kind, (!acl.is_minimal()).then_some(&acl))?;
                } else {
                    write_acl(tx, ino, kind, Some(&acl))?;
                }
                v.ctime = Timespec::now();
                write_inode(tx, ino, &v);
                Ok(())
            });
        }
        if name == compress::XATTR_NAME {
            let c = compress::parse_xattr(value)?;
            return self.tx(Durability::Lazy, |tx| {
                let mut v = read_inode(tx, ino)?;
                check_perm(tx, ino, caller, &v, ns, short, true)?;
                match (how, v.compression != 0) {
                    (XattrSet::Create, true) => return Err(FsError::Exists),
                    (XattrSet::Replace, false) => return Err(FsError::NoAttr),
                    _ => {}
                }
                (v.compression, v.compression_level) = c.to_inode();
                v.ctime = Timespec::now();
                write_inode(tx, ino, &v);
                Ok(())
            });
        }
        let encoded = XattrValue {
            ns,
            name: short.to_vec(),
            value: value.to_vec(),
        }
        .encode();
        self.tx(Durability::Lazy, |tx| {
            let mut v = read_inode(tx, ino)?;
            check_perm(tx, ino, caller, &v, ns, short, true)?;
            let (hit, free) = probe(tx, ino, ns, short)?;
            let slot = match (how, hit) {
                (XattrSet::Create, Some(_)) => return Err(FsError::Exists),
                (XattrSet::Replace, None) => return Err(FsError::NoAttr),
                (_, Some((slot, _))) => slot,
                (_, None) => free,
            };
            tx.put(
                BtreeId::Xattrs,
                Key::new(slot_pos(ino.0, slot), KeyType::Xattr, encoded.clone()),
            );
            v.ctime = Timespec::now();
            write_inode(tx, ino, &v);
            Ok(())
        })
    }

    /// Full names (with prefix) of the attributes `caller` may see.
    pub fn listxattr(&self, caller: &Caller, ino: InodeNo) -> FsResult<Vec<Vec<u8>>> {
        const BATCH: usize = 128;
        self.tx(Durability::Lazy, |tx| {
            let v = read_inode(tx, ino)?;
            let mut out = Vec::new();
            if Compression::from_inode(v.compression, v.compression_level).is_some()
                && matches!(v.mode & S_IFMT, S_IFREG | S_IFDIR)
            {
                out.push(compress::XATTR_NAME.to_vec());
            }
            let mut from = super::dirent_format::FIRST_SLOT;
            loop {
                let keys = hashtab::list(tx, BtreeId::Xattrs, ino.0, from, BATCH)?;
                for k in &keys {
                    let x = decode(k)?;
                    if x.ns != Namespace::Trusted || caller.is_root() {
                        out.push(x.full_name());
                    }
                }
                match keys.last() {
                    Some(k) if keys.len() == BATCH => from = k.pos.offset + 1,
                    _ => return Ok(out),
                }
            }
        })
    }

    /// Removes attribute `name`.
    pub fn removexattr(&self, caller: &Caller, ino: InodeNo, name: &[u8]) -> FsResult<()> {
        let (ns, short) = parse_name(name)?;
        self.tx(Durability::Lazy, |tx| {
            let mut v = read_inode(tx, ino)?;
            check_perm(tx, ino, caller, &v, ns, short, true)?;
            if name == compress::XATTR_NAME {
                if v.compression == 0 {
                    return Err(FsError::NoAttr);
                }
                (v.compression, v.compression_level) = (0, 0);
                v.ctime = Timespec::now();
                write_inode(tx, ino, &v);
                return Ok(());
            }
            let (slot, _) = probe(tx, ino, ns, short)?.0.ok_or(FsError::NoAttr)?;
            hashtab::remove(tx, BtreeId::Xattrs, ino.0, slot)?;
            v.ctime = Timespec::now();
            write_inode(tx, ino, &v);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::acl::{ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER, ACL_USER, ACL_USER_OBJ};
    use crate::fs::namei::tests::fs;
    use crate::fs::{Fs, SetAttr};

    fn root() -> Caller {
        Caller::root()
    }

    fn user(uid: u32) -> Caller {
        Caller {
            uid,
            gid: uid,
            groups: vec![],
            fsetid: uid == 0,
            umask: 0,
        }
    }

    fn sorted(mut v: Vec<Vec<u8>>) -> Vec<String> {
        v.sort();
        v.into_iter()
            .map(|n| String::from_utf8(n).unwrap())
            .collect()
    }

    #[test]
    fn set_get_list_remove() {
        let fs = fs();
        let f = fs
            .mknod(&root(), ROOT_INO, b"f", S_IFREG | 0o644, 0)
            .unwrap()
            .ino;
        let c0 = fs.getattr(f).unwrap().ctime;
        fs.setxattr(&root(), f, b"user.a", b"1", XattrSet::Any)
            .unwrap();
        assert!(fs.getattr(f).unwrap().ctime >= c0);
        fs.setxattr(&root(), f, b"trusted.t", b"2", XattrSet::Create)
            .unwrap();
        fs.setxattr(&root(), f, b"security.s", b"", XattrSet::Any)
            .unwrap();
        assert!(matches!(
            fs.setxattr(&root(), f, b"user.a", b"x", XattrSet::Create),
            Err(FsError::Exists)
        ));
        assert!(matches!(
            fs.setxattr(&root(), f, b"user.b", b"x", XattrSet::Replace),
            Err(FsError::NoAttr)
        ));
        fs.setxattr(&root(), f, b"user.a", b"11", XattrSet::Replace)
            .unwrap();
        assert_eq!(fs.getxattr(&root(), f, b"user.a").unwrap(), b"11");
        assert_eq!(fs.getxattr(&root(), f, b"security.s").unwrap(), b"");
        assert!(matches!(
            fs.getxattr(&root(), f, b"user.zz"),
            Err(FsError::NoAttr)
        ));
        assert_eq!(
            sorted(fs.listxattr(&root(), f).unwrap()),
            ["security.s", "trusted.t", "user.a"]
        );
        assert_eq!(
            sorted(fs.listxattr(&user(5), f).unwrap()),
            ["security.s", "user.a"]
        );
        fs.removexattr(&root(), f, b"user.a").unwrap();
        assert!(matches!(
            fs.removexattr(&root(), f, b"user.a"),
            Err(FsError::NoAttr)
        ));
        assert!(matches!(
            fs.getxattr(&root(), f, b"user.a"),
            Err(FsError::NoAttr)
        ));
        // Unlinking frees them.
        fs.unlink(&root(), ROOT_INO, b"f").unwrap();
        assert!(matches!(fs.listxattr(&root(), f), Err(FsError::NotFound)));
        assert!(
            fs.engine()
                .iter(BtreeId::Xattrs, slot_pos(f.0, 0), slot_pos(f.0, u64::MAX))
                .next()
                .is_none()
        );
    }

    #[test]
    fn names_and_sizes() {
        let fs = fs();
        let f = fs
            .mknod(&root(), ROOT_INO, b"f", S_IFREG | 0o644, 0)
            .unwrap()
            .ino;
        assert!(matches!(
            fs.setxattr(&root(), f, b"foo.a", b"", XattrSet::Any),
            Err(FsError::NotSupported)
        ));
        assert!(matches!(
            fs.setxattr(&root(), f, b"system.other", b"", XattrSet::Any),
            Err(FsError::NotSupported)
        ));
        assert!(matches!(
            fs.getxattr(&root(), f, b"nope"),
            Err(FsError::NotSupported)
        ));
        assert!(matches!(
            fs.setxattr(&root(), f, b"user.", b"", XattrSet::Any),
            Err(FsError::Invalid(_))
        ));
        assert!(matches!(
            fs.setxattr(&root(), f, b"", b"", XattrSet::Any),
            Err(FsError::Range)
        ));
        let mut long = b"user.".to_vec();
        long.resize(256, b'n');
        assert!(matches!(
            fs.setxattr(&root(), f, &long, b"", XattrSet::Any),
            Err(FsError::Range)
        ));
        long.truncate(255);
        fs.setxattr(&root(), f, &long, b"v", XattrSet::Any).unwrap();
        assert_eq!(fs.getxattr(&root(), f, &long).unwrap(), b"v");
        let huge = vec![7u8; XATTR_SIZE_MAX + 1];
        assert!(matches!(
            fs.setxattr(&root(), f, b"user.h", &huge, XattrSet::Any),
            Err(FsError::TooBig)
        ));
        // The test filesystem has 16 KiB nodes: about 4 KiB per value.
        let limit = fs.engine.inner.ctx().max_value_bytes();
        let fits = vec![1u8; limit - XattrValue::encoded_len(1, 0)];
        fs.setxattr(&root(), f, b"user.h", &fits, XattrSet::Any)
            .unwrap();
        assert_eq!(fs.getxattr(&root(), f, b"user.h").unwrap(), fits);
        let over = vec![1u8; fits.len() + 1];
        assert!(matches!(
            fs.setxattr(&root(), f, b"user.h", &over, XattrSet::Any),
            Err(FsError::TooBig)
        ));
        // ACLs: checked encoding, owner only.
        let acl = acl_bytes(&[
            (ACL_USER_OBJ, 6, NO_ID),
            (ACL_USER, 6, 1000),
            (ACL_GROUP_OBJ, 4, NO_ID),
            (ACL_MASK, 6, NO_ID),
            (ACL_OTHER, 4, NO_ID),
        ]);
        fs.setxattr(&root(), f, b"system.posix_acl_access", &acl, XattrSet::Any)
            .unwrap();
        assert_eq!(
            fs.getxattr(&user(9), f, b"system.posix_acl_access")
                .unwrap(),
            acl
        );
        assert!(matches!(
            fs.setxattr(
                &root(),
                f,
                b"system.posix_acl_access",
                b"junk",
                XattrSet::Any
            ),
            Err(FsError::Invalid(_))
        ));
        assert!(matches!(
            fs.setxattr(&user(9), f, b"system.posix_acl_access", &acl, XattrSet::Any),
            Err(FsError::NotPermitted)
        ));
        assert!(matches!(
            fs.setxattr(&root(), f, b"system.posix_acl_default", &acl, XattrSet::Any),
            Err(FsError::AccessDenied)
        ));
    }

    const NO_ID: u32 = u32::MAX;

    /// The kernel's xattr encoding of an ACL given as (tag, perm, id).
    fn acl_bytes(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut b = 2u32.to_le_bytes().to_vec();
        for &(tag, perm, id) in entries {
            b.extend_from_slice(&tag.to_le_bytes());
            b.extend_from_slice(&perm.to_le_bytes());
            b.extend_from_slice(&id.to_le_bytes());
        }
        b
    }

    #[test]
    fn posix_acls_grant_access_and_follow_the_mode() {
        let fs = fs();
        let owner = Caller {
            umask: 0o077,
            ..user(10)
        };
        fs.setattr(
            &root(),
            ROOT_INO,
            &SetAttr {
                mode: Some(0o777),
                ..Default::default()
            },
        )
        .unwrap();
        let f = fs
            .mknod(&owner, ROOT_INO, b"f", S_IFREG | 0o666, 0)
            .unwrap();
        // no default ACL: the umask applies
        assert_eq!(f.perm, 0o600);
        let (f, mode) = (f.ino, |fs: &Fs, ino| fs.getattr(ino).unwrap().perm);
        let named = acl_bytes(&[
            (ACL_USER_OBJ, 6, NO_ID),
            (ACL_USER, 6, 1000),
            (ACL_GROUP_OBJ, 0, NO_ID),
            (ACL_MASK, 6, NO_ID),
            (ACL_OTHER, 0, NO_ID),
        ]);
        let access = b"system.posix_acl_access";
        fs.setxattr(&owner, f, access, &named, XattrSet::Any)
            .unwrap();
        assert_eq!(mode(&fs, f), 0o660, "group bits show the mask");
        assert_eq!(fs.getxattr(&user(9), f, access).unwrap(), named);
        // user 1000 may write through its entry; 1001 (other: none) not
        assert!(fs.access(&user(1000), f, 6).is_ok());
        assert!(matches!(
            fs.access(&user(1001), f, 4),
            Err(FsError::AccessDenied)
        ));
        // chmod rewrites the mask: 1000 keeps read only
        fs.setattr(
            &owner,
            f,
            &SetAttr {
                mode: Some(0o640),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(fs.access(&user(1000), f, 4).is_ok());
        assert!(matches!(
            fs.access(&user(1000), f, 2),
            Err(FsError::AccessDenied)
        ));
        let stored = Acl::decode(&fs.getxattr(&owner, f, access).unwrap()).unwrap();
        assert_eq!(stored.mode_bits(), 0o640);
        // with the group bits clear the ACL is not consulted (as in Linux)
        fs.setattr(
            &owner,
            f,
            &SetAttr {
                mode: Some(0o604),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(fs.access(&user(1000), f, 4).is_ok(), "other's r");
        // an ACL the mode expresses is not stored, and sets the mode
        let minimal = acl_bytes(&[
            (ACL_USER_OBJ, 7, NO_ID),
            (ACL_GROUP_OBJ, 5, NO_ID),
            (ACL_OTHER, 1, NO_ID),
        ]);
        fs.setxattr(&owner, f, access, &minimal, XattrSet::Any)
            .unwrap();
        assert_eq!(mode(&fs, f), 0o751);
        assert!(matches!(
            fs.getxattr(&owner, f, access),
            Err(FsError::NoAttr)
        ));
        assert!(!fs.listxattr(&owner, f).unwrap().contains(&access.to_vec()));
        // malformed: a named entry without a mask
        let bad = acl_bytes(&[
            (ACL_USER_OBJ, 7, NO_ID),
            (ACL_USER, 7, 5),
            (ACL_GROUP_OBJ, 5, NO_ID),
            (ACL_OTHER, 1, NO_ID),
        ]);
        assert!(matches!(
            fs.setxattr(&owner, f, access, &bad, XattrSet::Any),
            Err(FsError::Invalid(_))
        ));

        // A default ACL replaces the umask for new inodes.
        let d = fs.mkdir(&owner, ROOT_INO, b"d", 0o777).unwrap();
        assert_eq!(d.perm, 0o700);
        let default = acl_bytes(&[
            (ACL_USER_OBJ, 7, NO_ID),
            (ACL_USER, 7, 1000),
            (ACL_GROUP_OBJ, 5, NO_ID),
            (ACL_MASK, 7, NO_ID),
            (ACL_OTHER, 0, NO_ID),
        ]);
        fs.setxattr(
            &owner,
            d.ino,
            b"system.posix_acl_default",
            &default,
            XattrSet::Any,
        )
        .unwrap();
        let new = fs.mknod(&owner, d.ino, b"new", S_IFREG | 0o666, 0).unwrap();
        assert_eq!(new.perm, 0o660, "umask 077 ignored; mask limited by 0o666");
        let inherited = Acl::decode(&fs.getxattr(&owner, new.ino, access).unwrap()).unwrap();
        assert_eq!(inherited.entries()[1].id, 1000);
        assert!(fs.access(&user(1000), new.ino, 6).is_ok());
        assert!(matches!(
            fs.getxattr(&owner, new.ino, b"system.posix_acl_default"),
            Err(FsError::NoAttr)
        ));
        let sub = fs.mkdir(&owner, d.ino, b"sub", 0o777).unwrap();
        assert_eq!(sub.perm, 0o770);
        assert_eq!(
            fs.getxattr(&owner, sub.ino, b"system.posix_acl_default")
                .unwrap(),
            default
        );
        // symlinks get neither the ACL nor the umask
        let l = fs.symlink(&owner, d.ino, b"l", b"new").unwrap();
        assert_eq!(l.perm, 0o777);
    }

    #[test]
    fn permissions() {
        let fs = fs();
        let mine = SetAttr {
            uid: Some(10),
            gid: Some(10),
            ..Default::default()
        };
        let f = fs
            .mknod(&root(), ROOT_INO, b"f", S_IFREG | 0o644, 0)
            .unwrap()
            .ino;
        fs.setattr(&root(), f, &mine).unwrap();
        fs.setxattr(&root(), f, b"trusted.t", b"1", XattrSet::Any)
            .unwrap();
        // trusted: root only.
        assert!(matches!(
            fs.setxattr(&user(10), f, b"trusted.u", b"1", XattrSet::Any),
            Err(FsError::NotPermitted)
        ));
        assert!(matches!(
            fs.getxattr(&user(10), f, b"trusted.t"),
            Err(FsError::NoAttr)
        ));
        assert!(matches!(
            fs.removexattr(&user(10), f, b"trusted.t"),
            Err(FsError::NotPermitted)
        ));
        // security: root writes, anyone reads.
        assert!(matches!(
            fs.setxattr(&user(10), f, b"security.s", b"1", XattrSet::Any),
            Err(FsError::NotPermitted)
        ));
        fs.setxattr(&root(), f, b"security.s", b"1", XattrSet::Any)
            .unwrap();
        assert_eq!(fs.getxattr(&user(11), f, b"security.s").unwrap(), b"1");
        // user: file permissions.
        fs.setxattr(&user(10), f, b"user.u", b"1", XattrSet::Any)
            .unwrap();
        assert!(matches!(
            fs.setxattr(&user(11), f, b"user.u", b"2", XattrSet::Any),
            Err(FsError::AccessDenied)
        ));
        assert!(matches!(
            fs.removexattr(&user(11), f, b"user.u"),
            Err(FsError::AccessDenied)
        ));
        assert_eq!(fs.getxattr(&user(11), f, b"user.u").unwrap(), b"1");
        fs.setattr(
            &user(10),
            f,
            &SetAttr {
                mode: Some(0o600),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(
            fs.getxattr(&user(11), f, b"user.u"),
            Err(FsError::AccessDenied)
        ));
        // user: only files and directories.
        let l = fs.symlink(&root(), ROOT_INO, b"l", b"f").unwrap().ino;
        assert!(matches!(
            fs.setxattr(&root(), l, b"user.u", b"1", XattrSet::Any),
            Err(FsError::NotPermitted)
        ));
        assert!(matches!(
            fs.getxattr(&root(), l, b"user.u"),
            Err(FsError::NoAttr)
        ));
        fs.setxattr(&root(), l, b"trusted.t", b"1", XattrSet::Any)
            .unwrap();
        assert_eq!(fs.readlink(l).unwrap(), b"f", "slot 0 untouched");
        assert_eq!(sorted(fs.listxattr(&root(), l).unwrap()), ["trusted.t"]);
        let fifo = fs
            .mknod(&root(), ROOT_INO, b"p", S_IFIFO | 0o666, 0)
            .unwrap()
            .ino;
        assert!(matches!(
            fs.setxattr(&root(), fifo, b"user.u", b"1", XattrSet::Any),
            Err(FsError::NotPermitted)
        ));
        // Sticky directories: only the owner writes user.*.
        let d = fs.mkdir(&root(), ROOT_INO, b"d", 0o1777).unwrap().ino;
        fs.setattr(&root(), d, &mine).unwrap();
        assert!(matches!(
            fs.setxattr(&user(11), d, b"user.u", b"1", XattrSet::Any),
            Err(FsError::NotPermitted)
        ));
        fs.setxattr(&user(10), d, b"user.u", b"1", XattrSet::Any)
            .unwrap();
        assert_eq!(fs.getxattr(&user(11), d, b"user.u").unwrap(), b"1");
    }

    #[test]
    fn many_attributes_and_whiteouts() {
        let fs = fs();
        let f = fs
            .mknod(&root(), ROOT_INO, b"f", S_IFREG | 0o644, 0)
            .unwrap()
            .ino;
        for i in 0..300 {
            fs.setxattr(
                &root(),
                f,
                format!("user.k{i}").as_bytes(),
                &[i as u8],
                XattrSet::Create,
            )
            .unwrap();
        }
        for i in (0..300).step_by(2) {
            fs.removexattr(&root(), f, format!("user.k{i}").as_bytes())
                .unwrap();
        }
        for i in 0..300 {
            let r = fs.getxattr(&root(), f, format!("user.k{i}").as_bytes());
            if i % 2 == 0 {
                assert!(matches!(r, Err(FsError::NoAttr)));
            } else {
                assert_eq!(r.unwrap(), [i as u8]);
            }
        }
        assert_eq!(fs.listxattr(&root(), f).unwrap().len(), 150);
    }
}
