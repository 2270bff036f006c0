//! Permission checks as the kernel does them for a local filesystem.

use super::acl::Acl;
use super::error::{FsError, FsResult};
use super::inode_format::InodeValue;
use super::types::{Caller, InodeNo, S_IFDIR, S_IFMT, S_ISVTX};
use super::xattr::{AclKind, read_acl};
use crate::btree::trans::Transaction;

pub const MAY_READ: u32 = 4;
pub const MAY_WRITE: u32 = 2;
pub const MAY_EXEC: u32 = 1;

/// Whether an access ACL would decide `caller`'s access to `inode`: as in
/// the kernel, not for root or the owner, and not when the group bits are
/// all clear.
pub(crate) fn acl_applies(caller: &Caller, inode: &InodeValue) -> bool {
    !caller.is_root() && caller.uid != inode.uid && inode.mode & 0o070 != 0
}

/// `check_access` with the inode's access ACL, read (one xattr lookup) only
/// when it applies.
pub(crate) fn may_access(
    tx: &mut Transaction<'_>,
    caller: &Caller,
    ino: InodeNo,
    inode: &InodeValue,
    mask: u32,
) -> FsResult<()> {
    let acl = match acl_applies(caller, inode) {
        true => read_acl(tx, ino, AclKind::Access)?,
        false => None,
    };
    check_access(caller, inode, acl.as_ref(), mask)
}

/// `mask` is a combination of MAY_READ, MAY_WRITE and MAY_EXEC; `acl` the
/// inode's access ACL if it has one.
pub fn check_access(
    caller: &Caller,
    inode: &InodeValue,
    acl: Option<&Acl>,
    mask: u32,
) -> FsResult<()> {
    if caller.is_root() {
        // Root may do anything, except execute a file no one may execute.
        let is_dir = inode.mode & S_IFMT == S_IFDIR;
        if mask & MAY_EXEC != 0 && !is_dir && inode.mode & 0o111 == 0 {
            return Err(FsError::AccessDenied);
        }
        return Ok(());
    }
    if let Some(acl) = acl
        && acl_applies(caller, inode)
    {
        return match acl.permits(caller, inode.uid, inode.gid, mask) {
            true => Ok(()),
            false => Err(FsError::AccessDenied),
        };
    }
    let bits = if caller.uid == inode.uid {
        (inode.mode >> 6) & 7
    } else if caller.in_group(inode.gid) {
        (inode.mode >> 3) & 7
    } else {
        inode.mode & 7
    };
    if bits & mask == mask {
        Ok(())
    } else {
        Err(FsError::AccessDenied)
    }
}

/// May `caller` remove or rename away an entry for `victim` in `dir`
/// (write+search on the directory, and the sticky-bit rule)?
pub(crate) fn may_delete(
    tx: &mut Transaction<'_>,
    caller: &Caller,
    dir_ino: InodeNo,
    dir: &InodeValue,
    victim: &InodeValue,
) -> FsResult<()> {
    may_access(tx, caller, dir_ino, dir, MAY_WRITE | MAY_EXEC)?;
    check_sticky(caller, dir, victim)
}

/// [`may_delete`] by the mode bits alone.
pub fn check_delete(caller: &Caller, dir: &InodeValue, victim: &InodeValue) -> FsResult<()> {
    check_access(caller, dir, None, MAY_WRITE | MAY_EXEC)?;
    check_sticky(caller, dir, victim)
}

/// The sticky-bit rule: in such a directory only the owner of the entry or
/// of the directory (or root) removes it.
fn check_sticky(caller: &Caller, dir: &InodeValue, victim: &InodeValue) -> FsResult<()> {
    if dir.mode & S_ISVTX != 0
        && !caller.is_root()
        && caller.uid != dir.uid
        && caller.uid != victim.uid
    {
        return Err(FsError::NotPermitted);
    }
    Ok(())
}

/// Only the owner (or root) may change mode, times explicitly, flags.
pub fn check_owner(caller: &Caller, inode: &InodeValue) -> FsResult<()> {
    if caller.is_root() || caller.uid == inode.uid {
        Ok(())
    } else {
        Err(FsError::NotPermitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(mode: u32, uid: u32, gid: u32) -> InodeValue {
        InodeValue {
            mode,
            uid,
            gid,
            nlink: 1,
            ..Default::default()
        }
    }

    #[test]
    fn owner_group_other_bits() {
        let f = inode(0o100640, 10, 20);
        let owner = Caller {
            uid: 10,
            gid: 99,
            groups: vec![],
            fsetid: false,
            umask: 0,
        };
        let member = Caller {
            uid: 11,
            gid: 5,
            groups: vec![20],
            fsetid: false,
            umask: 0,
        };
        let other = Caller {
            uid: 12,
            gid: 5,
            groups: vec![],
            fsetid: false,
            umask: 0,
        };
        assert!(check_access(&owner, &f, None, MAY_READ | MAY_WRITE).is_ok());
        assert!(check_access(&member, &f, None, MAY_READ).is_ok());
        assert!(check_access(&member, &f, None, MAY_WRITE).is_err());
        assert!(check_access(&other, &f, None, MAY_READ).is_err());
        assert!(check_access(&Caller::root(), &f, None, MAY_WRITE).is_ok());
        assert!(check_access(&Caller::root(), &f, None, MAY_EXEC).is_err());
    }

    #[test]
    fn sticky_directories() {
        let dir = inode(0o041777, 0, 0);
        let mine = inode(0o100644, 10, 10);
        let a = Caller {
            uid: 10,
            gid: 10,
            groups: vec![],
            fsetid: false,
            umask: 0,
        };
        let b = Caller {
            uid: 11,
            gid: 11,
            groups: vec![],
            fsetid: false,
            umask: 0,
        };
        assert!(check_delete(&a, &dir, &mine).is_ok());
        assert!(matches!(
            check_delete(&b, &dir, &mine),
            Err(FsError::NotPermitted)
        ));
    }
}
