//! Permission checks as the kernel does them for a local filesystem.

use super::error::{FsError, FsResult};
use super::inode_format::InodeValue;
use super::types::{Caller, S_IFDIR, S_IFMT, S_ISVTX};

pub const MAY_READ: u32 = 4;
pub const MAY_WRITE: u32 = 2;
pub const MAY_EXEC: u32 = 1;

/// `mask` is a combination of MAY_READ, MAY_WRITE and MAY_EXEC.
pub fn check_access(caller: &Caller, inode: &InodeValue, mask: u32) -> FsResult<()> {
    if caller.is_root() {
        // Root may do anything, except execute a file no one may execute.
        let is_dir = inode.mode & S_IFMT == S_IFDIR;
        if mask & MAY_EXEC != 0 && !is_dir && inode.mode & 0o111 == 0 {
            return Err(FsError::AccessDenied);
        }
        return Ok(());
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
pub fn check_delete(caller: &Caller, dir: &InodeValue, victim: &InodeValue) -> FsResult<()> {
    check_access(caller, dir, MAY_WRITE | MAY_EXEC)?;
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
        };
        let member = Caller {
            uid: 11,
            gid: 5,
            groups: vec![20],
            fsetid: false,
        };
        let other = Caller {
            uid: 12,
            gid: 5,
            groups: vec![],
            fsetid: false,
        };
        assert!(check_access(&owner, &f, MAY_READ | MAY_WRITE).is_ok());
        assert!(check_access(&member, &f, MAY_READ).is_ok());
        assert!(check_access(&member, &f, MAY_WRITE).is_err());
        assert!(check_access(&other, &f, MAY_READ).is_err());
        assert!(check_access(&Caller::root(), &f, MAY_WRITE).is_ok());
        assert!(check_access(&Caller::root(), &f, MAY_EXEC).is_err());
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
        };
        let b = Caller {
            uid: 11,
            gid: 11,
            groups: vec![],
            fsetid: false,
        };
        assert!(check_delete(&a, &dir, &mine).is_ok());
        assert!(matches!(
            check_delete(&b, &dir, &mine),
            Err(FsError::NotPermitted)
        ));
    }
}
