//! Changing attributes (chmod, chown, utimes) and `access`, with the
//! permission rules of Linux's `setattr_prepare` and `notify_change`.
//! Sizes are changed by `set_size` in `data.rs`.

use super::FsCore;
use super::acl::Acl;
use super::error::{FsError, FsResult};
use super::inode::{read_inode, to_attr, write_inode};
use super::inode_format::InodeValue;
use super::perm::{MAY_WRITE, acl_applies, check_access, check_owner, may_access};
use super::types::*;
use super::xattr::{AclKind, read_acl, write_acl};
use crate::btree::trans::Durability;

/// What `setattr` changes; `None` leaves a field alone (chown's -1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// Permission bits (`& 0o7777`); the file type can't change.
    pub mode: Option<u32>,
    /// New owner (only root may change it).
    pub uid: Option<u32>,
    /// New group (root, or the owner to a group it is in).
    pub gid: Option<u32>,
    /// New access time.
    pub atime: Option<TimeOrNow>,
    /// New modification time.
    pub mtime: Option<TimeOrNow>,
    /// An explicit change time; otherwise any change sets ctime to now.
    pub ctime: Option<Timespec>,
}

/// A time to set: the current time, or a given one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeOrNow {
    /// The current time (allowed with write access).
    Now,
    /// An explicit time (owner or root only).
    Time(Timespec),
}

impl TimeOrNow {
    fn resolve(self, now: Timespec) -> Timespec {
        match self {
            TimeOrNow::Now => now,
            TimeOrNow::Time(t) => t,
        }
    }
}

/// Checks `set` against `v` (whose access ACL is `acl`) as Linux does and
/// applies it. `now` is the time of the change.
pub(crate) fn apply(
    caller: &Caller,
    v: &mut InodeValue,
    acl: Option<&Acl>,
    set: &SetAttr,
    now: Timespec,
) -> FsResult<()> {
    let owner = caller.is_root() || caller.uid == v.uid;
    let is_dir = v.mode & S_IFMT == S_IFDIR;

    // chown: only root changes the owner (the owner may "change" it to
    // itself); the owner may change the group to one it is in.
    if let Some(uid) = set.uid
        && !caller.is_root()
        && !(caller.uid == v.uid && uid == v.uid)
    {
        return Err(FsError::NotPermitted);
    }
    if let Some(gid) = set.gid
        && !caller.is_root()
    {
        let keeps_uid = set.uid.is_none_or(|u| u == v.uid);
        if !(caller.uid == v.uid && keeps_uid && (gid == v.gid || caller.in_group(gid))) {
            return Err(FsError::NotPermitted);
        }
    }
    if set.mode.is_some() {
        check_owner(caller, v)?;
    }
    // Times: explicit values only by the owner (or root); "both now" (a
    // plain touch) also by anyone who may write the file.
    let touch = set.atime == Some(TimeOrNow::Now) && set.mtime == Some(TimeOrNow::Now);
    if set.atime.is_some() || set.mtime.is_some() {
        if touch {
            if !owner {
                check_access(caller, v, acl, MAY_WRITE)?;
            }
        } else if !owner {
            return Err(FsError::NotPermitted);
        }
    }
    // An explicit ctime (kernel-side bookkeeping) needs owner or write access.
    if set.ctime.is_some() && !owner {
        check_access(caller, v, acl, MAY_WRITE)?;
    }

    let chown = set.uid.is_some() || set.gid.is_some();
    let new_gid = set.gid.unwrap_or(v.gid);
    if let Some(mode) = set.mode {
        let mut mode = mode & 0o7777;
        // Setting setgid needs membership of the (new) group.
        if !caller.is_root() && !caller.in_group(new_gid) {
            mode &= !S_ISGID;
        }
        v.mode = (v.mode & S_IFMT) | mode;
    } else if chown && !is_dir {
        // chown of a non-directory drops setuid always, and setgid if it
        // means set-group-id (group-exec set) or the caller couldn't set it.
        let mut mode = v.mode & !S_ISUID;
        if v.mode & S_ISGID != 0
            && (v.mode & 0o010 != 0 || !(caller.is_root() || caller.in_group(v.gid)))
        {
            mode &= !S_ISGID;
        }
        v.mode = mode;
    }
    if let Some(uid) = set.uid {
        v.uid = uid;
    }
    v.gid = new_gid;
    if let Some(t) = set.atime {
        v.atime = t.resolve(now);
    }
    if let Some(t) = set.mtime {
        v.mtime = t.resolve(now);
    }
    v.ctime = set.ctime.unwrap_or(now);
    Ok(())
}

impl FsCore {
    /// Changes mode, owner, group and times; returns the new attributes.
    pub fn setattr(&self, caller: &Caller, ino: InodeNo, set: &SetAttr) -> FsResult<Attr> {
        if *set == SetAttr::default() {
            return self.getattr(ino);
        }
        // Buffered writes' pending times go to disk first, so they cannot
        // later overwrite the times set here.
        let _l = self.lock_inode(ino, arborfs_iolock::IoMode::Shared, None);
        self.writeback_inode_locked(ino)?;
        let a = self.tx(Durability::Lazy, |tx| {
            let mut v = read_inode(tx, ino)?;
            // The access ACL matters to a chmod (it follows the mode) and to
            // the access checks of others; spare the lookup otherwise.
            let acl = match set.mode.is_some() || acl_applies(caller, &v) {
                true => read_acl(tx, ino, AclKind::Access)?,
                false => None,
            };
            apply(caller, &mut v, acl.as_ref(), set, Timespec::now())?;
            if let Some(mut acl) = acl
                && set.mode.is_some()
            {
                // chmod rewrites the owner, group class and other entries.
                acl.chmod(v.mode);
                write_acl(tx, ino, AclKind::Access, Some(&acl))?;
            }
            write_inode(tx, ino, &v);
            Ok(to_attr(ino, &v))
        })?;
        Ok(self.overlay_attr(a))
    }

    /// Checks `mask` (R=4, W=2, X=1) for `caller`; 0 only checks existence.
    pub fn access(&self, caller: &Caller, ino: InodeNo, mask: u32) -> FsResult<()> {
        if mask & !7 != 0 {
            return Err(FsError::Invalid(format!("access mask {mask:#o}")));
        }
        self.tx(Durability::Lazy, |tx| {
            let v = read_inode(tx, ino)?;
            if mask == 0 {
                return Ok(());
            }
            may_access(tx, caller, ino, &v, mask)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Fs;
    use crate::fs::namei::tests::fs;

    fn user(uid: u32, gid: u32, groups: &[u32]) -> Caller {
        Caller {
            uid,
            gid,
            groups: groups.to_vec(),
            fsetid: uid == 0,
            umask: 0,
        }
    }

    fn file(fs: &Fs, name: &[u8], mode: u32, uid: u32, gid: u32) -> InodeNo {
        let a = fs
            .mknod(&Caller::root(), ROOT_INO, name, S_IFREG | mode, 0)
            .unwrap();
        let set = SetAttr {
            uid: Some(uid),
            gid: Some(gid),
            ..Default::default()
        };
        fs.setattr(&Caller::root(), a.ino, &set).unwrap();
        fs.setattr(
            &Caller::root(),
            a.ino,
            &SetAttr {
                mode: Some(mode),
                ..Default::default()
            },
        )
        .unwrap();
        a.ino
    }

    fn chmod(m: u32) -> SetAttr {
        SetAttr {
            mode: Some(m),
            ..Default::default()
        }
    }

    fn chown(u: Option<u32>, g: Option<u32>) -> SetAttr {
        SetAttr {
            uid: u,
            gid: g,
            ..Default::default()
        }
    }

    #[test]
    fn chmod_owner_or_root() {
        let fs = fs();
        let f = file(&fs, b"f", 0o644, 10, 20);
        assert!(matches!(
            fs.setattr(&user(11, 20, &[]), f, &chmod(0o777)),
            Err(FsError::NotPermitted)
        ));
        let a = fs.setattr(&user(10, 20, &[]), f, &chmod(0o4755)).unwrap();
        assert_eq!((a.perm, a.kind), (0o4755, FileKind::Regular));
        assert_eq!(
            fs.setattr(&Caller::root(), f, &chmod(0o1600)).unwrap().perm,
            0o1600
        );
    }

    #[test]
    fn chmod_setgid_needs_group() {
        let fs = fs();
        let f = file(&fs, b"f", 0o644, 10, 20);
        assert_eq!(
            fs.setattr(&user(10, 30, &[]), f, &chmod(0o2755))
                .unwrap()
                .perm,
            0o755
        );
        assert_eq!(
            fs.setattr(&user(10, 30, &[20]), f, &chmod(0o2755))
                .unwrap()
                .perm,
            0o2755
        );
        assert_eq!(
            fs.setattr(&Caller::root(), f, &chmod(0o2755)).unwrap().perm,
            0o2755
        );
        // Linux applies the rule to directories too.
        let d = fs
            .mkdir(&Caller::root(), ROOT_INO, b"d", 0o755)
            .unwrap()
            .ino;
        fs.setattr(&Caller::root(), d, &chown(Some(10), Some(20)))
            .unwrap();
        assert_eq!(
            fs.setattr(&user(10, 30, &[]), d, &chmod(0o2755))
                .unwrap()
                .perm,
            0o755
        );
    }

    #[test]
    fn chown_rules() {
        let fs = fs();
        let f = file(&fs, b"f", 0o644, 10, 20);
        let owner = user(10, 20, &[30]);
        assert!(matches!(
            fs.setattr(&owner, f, &chown(Some(11), None)),
            Err(FsError::NotPermitted)
        ));
        // Own uid to itself, group to a member group: fine.
        let a = fs.setattr(&owner, f, &chown(Some(10), Some(30))).unwrap();
        assert_eq!((a.uid, a.gid), (10, 30));
        assert!(matches!(
            fs.setattr(&owner, f, &chown(None, Some(40))),
            Err(FsError::NotPermitted)
        ));
        assert!(matches!(
            fs.setattr(&user(11, 30, &[]), f, &chown(None, Some(30))),
            Err(FsError::NotPermitted)
        ));
        let a = fs
            .setattr(&Caller::root(), f, &chown(Some(11), Some(40)))
            .unwrap();
        assert_eq!((a.uid, a.gid), (11, 40));
    }

    #[test]
    fn chown_clears_setid_bits() {
        let fs = fs();
        let f = file(&fs, b"f", 0o6755, 10, 20);
        // Root: setuid dropped, setgid with group-exec dropped.
        assert_eq!(
            fs.setattr(&Caller::root(), f, &chown(Some(10), None))
                .unwrap()
                .perm,
            0o755
        );
        // Setgid without group-exec (locking marker) stays for root or a member.
        fs.setattr(&Caller::root(), f, &chmod(0o6745)).unwrap();
        assert_eq!(
            fs.setattr(&Caller::root(), f, &chown(None, Some(20)))
                .unwrap()
                .perm,
            0o2745
        );
        fs.setattr(&Caller::root(), f, &chmod(0o6745)).unwrap();
        let owner = user(10, 20, &[21]);
        assert_eq!(
            fs.setattr(&owner, f, &chown(None, Some(21))).unwrap().perm,
            0o2745
        );
        // ... but goes when the caller isn't in the file's group.
        fs.setattr(&Caller::root(), f, &chmod(0o6745)).unwrap();
        let outsider = user(10, 5, &[20]);
        fs.setattr(&Caller::root(), f, &chown(None, Some(22)))
            .unwrap();
        fs.setattr(&Caller::root(), f, &chmod(0o6745)).unwrap();
        assert_eq!(
            fs.setattr(&outsider, f, &chown(None, Some(20)))
                .unwrap()
                .perm,
            0o745
        );
        // Directories keep their bits.
        let d = fs
            .mkdir(&Caller::root(), ROOT_INO, b"d", 0o6755)
            .unwrap()
            .ino;
        fs.setattr(&Caller::root(), d, &chmod(0o6755)).unwrap();
        assert_eq!(
            fs.setattr(&Caller::root(), d, &chown(Some(3), Some(4)))
                .unwrap()
                .perm,
            0o6755
        );
    }

    #[test]
    fn times_and_ctime() {
        let fs = fs();
        let f = file(&fs, b"f", 0o646, 10, 20);
        let t = Timespec { sec: 1000, nsec: 5 };
        let explicit = SetAttr {
            atime: Some(TimeOrNow::Time(t)),
            mtime: Some(TimeOrNow::Time(t)),
            ..Default::default()
        };
        let touch = SetAttr {
            atime: Some(TimeOrNow::Now),
            mtime: Some(TimeOrNow::Now),
            ..Default::default()
        };
        let other = user(11, 21, &[]);
        assert!(matches!(
            fs.setattr(&other, f, &explicit),
            Err(FsError::NotPermitted)
        ));
        // Others may touch with write access (mode 0o646 lets them).
        let before = fs.getattr(f).unwrap();
        let a = fs.setattr(&other, f, &touch).unwrap();
        assert!(a.mtime >= before.mtime && a.ctime >= before.ctime);
        fs.setattr(&Caller::root(), f, &chmod(0o644)).unwrap();
        assert!(matches!(
            fs.setattr(&other, f, &touch),
            Err(FsError::AccessDenied)
        ));
        let half = SetAttr {
            mtime: Some(TimeOrNow::Now),
            ..Default::default()
        };
        assert!(matches!(
            fs.setattr(&other, f, &half),
            Err(FsError::NotPermitted)
        ));
        let a = fs.setattr(&user(10, 20, &[]), f, &explicit).unwrap();
        assert_eq!((a.atime, a.mtime), (t, t));
        assert!(a.ctime > t);
        let c = Timespec { sec: 77, nsec: 0 };
        let a = fs
            .setattr(
                &Caller::root(),
                f,
                &SetAttr {
                    ctime: Some(c),
                    mode: Some(0o600),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!((a.ctime, a.perm), (c, 0o600));
        // Every change updates ctime.
        let a = fs.setattr(&Caller::root(), f, &chmod(0o600)).unwrap();
        assert!(a.ctime > c);
    }

    #[test]
    fn access_checks() {
        let fs = fs();
        let f = file(&fs, b"f", 0o640, 10, 20);
        assert!(fs.access(&user(99, 99, &[]), f, 0).is_ok());
        assert!(fs.access(&user(10, 1, &[]), f, 6).is_ok());
        assert!(fs.access(&user(10, 1, &[]), f, 1).is_err());
        assert!(fs.access(&user(11, 20, &[]), f, 4).is_ok());
        assert!(matches!(
            fs.access(&user(11, 20, &[]), f, 2),
            Err(FsError::AccessDenied)
        ));
        assert!(matches!(
            fs.access(&user(12, 1, &[]), f, 4),
            Err(FsError::AccessDenied)
        ));
        assert!(fs.access(&Caller::root(), f, 6).is_ok());
        assert!(matches!(
            fs.access(&Caller::root(), f, 1),
            Err(FsError::AccessDenied)
        ));
        assert!(matches!(
            fs.access(&Caller::root(), InodeNo(999_999), 0),
            Err(FsError::NotFound)
        ));
    }
}
