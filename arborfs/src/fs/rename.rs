//! Hard links and rename (with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`),
//! each one transaction.
//!
//! A directory's `parent` field is its `..`; rename keeps it right and
//! moves the directory's link count contribution between parents. Error
//! precedence follows Linux's `do_renameat2`/`vfs_rename`: flags, names,
//! existence (`EEXIST`/`ENOENT` for the flags), loops (`EINVAL`, or
//! `ENOTEMPTY` when the target is an ancestor of the source), then the
//! same-inode no-op, then permissions, types, emptiness and link limits.

use super::FsCore;
use super::dirent;
use super::error::{FsError, FsResult};
use super::inode::{read_inode, to_attr, write_inode};
use super::inode_format::InodeValue;
use super::namei::dir_inode;
use super::perm::{MAY_EXEC, MAY_WRITE, may_access, may_delete};
use super::types::*;
use crate::btree::trans::{Durability, Transaction};

/// Most names an inode (or subdirectories a directory) may have, as ext4.
pub const LINK_MAX: u32 = 65000;

/// `renameat2` flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// Fail with `Exists` instead of replacing a target.
    pub noreplace: bool,
    /// Swap the two names (both must exist).
    pub exchange: bool,
}

fn is_dir(v: &InodeValue) -> bool {
    v.mode & S_IFMT == S_IFDIR
}

fn kind_of(v: &InodeValue) -> FileKind {
    FileKind::from_mode(v.mode).unwrap_or(FileKind::Regular)
}

/// True if directory `anc` is `dir` or one of its ancestors (following
/// `parent` up to the root).
fn is_ancestor(tx: &mut Transaction<'_>, anc: InodeNo, mut dir: InodeNo) -> FsResult<bool> {
    for _ in 0..(1 << 20) {
        if dir == anc {
            return Ok(true);
        }
        if dir == ROOT_INO {
            return Ok(false);
        }
        dir = InodeNo(read_inode(tx, dir)?.parent);
    }
    Err(FsError::Corrupted(format!(
        "directory parent loop above {:?}",
        anc
    )))
}

fn add_nlink(v: &mut InodeValue, delta: i64) {
    v.nlink = (v.nlink as i64 + delta).clamp(0, u32::MAX as i64) as u32;
}

impl FsCore {
    /// Adds the name `new_name` in `new_parent` for `ino` (not a directory).
    pub fn link(
        &self,
        caller: &Caller,
        ino: InodeNo,
        new_parent: InodeNo,
        new_name: &[u8],
    ) -> FsResult<Attr> {
        dirent::check_name(new_name)?;
        self.tx(Durability::Lazy, |tx| {
            let mut v = read_inode(tx, ino)?;
            let mut d = dir_inode(tx, new_parent)?;
            if d.nlink == 0 {
                return Err(FsError::NotFound);
            }
            may_access(tx, caller, new_parent, &d, MAY_EXEC)?;
            if dirent::lookup(tx, new_parent, new_name)?.is_some() {
                return Err(FsError::Exists);
            }
            may_access(tx, caller, new_parent, &d, MAY_WRITE | MAY_EXEC)?;
            if is_dir(&v) {
                return Err(FsError::NotPermitted);
            }
            if v.nlink == 0 {
                return Err(FsError::NotFound);
            }
            if v.nlink >= LINK_MAX {
                return Err(FsError::TooManyLinks);
            }
            dirent::insert(tx, new_parent, new_name, ino, kind_of(&v).d_type())?;
            let now = Timespec::now();
            v.nlink += 1;
            v.ctime = now;
            d.mtime = now;
            d.ctime = now;
            write_inode(tx, ino, &v);
            write_inode(tx, new_parent, &d);
            Ok(to_attr(ino, &v))
        })
        .map(|a| self.overlay_attr(a))
    }

    /// Moves `parent/name` to `new_parent/new_name`, replacing (or, with
    /// `exchange`, swapping with) whatever is there, atomically.
    pub fn rename(
        &self,
        caller: &Caller,
        parent: InodeNo,
        name: &[u8],
        new_parent: InodeNo,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> FsResult<()> {
        if flags.noreplace && flags.exchange {
            return Err(FsError::Invalid(
                "RENAME_NOREPLACE with RENAME_EXCHANGE".into(),
            ));
        }
        dirent::check_name(name)?;
        dirent::check_name(new_name)?;
        let evict = self.tx(Durability::Lazy, |tx| {
            let same_dir = parent == new_parent;
            let mut od = dir_inode(tx, parent)?;
            may_access(tx, caller, parent, &od, MAY_EXEC)?;
            let (src_slot, src_e) = dirent::lookup(tx, parent, name)?.ok_or(FsError::NotFound)?;
            let mut nd = if same_dir {
                od.clone()
            } else {
                dir_inode(tx, new_parent)?
            };
            if nd.nlink == 0 {
                return Err(FsError::NotFound);
            }
            may_access(tx, caller, new_parent, &nd, MAY_EXEC)?;
            let tgt = dirent::lookup(tx, new_parent, new_name)?;
            if flags.noreplace && tgt.is_some() {
                return Err(FsError::Exists);
            }
            if flags.exchange && tgt.is_none() {
                return Err(FsError::NotFound);
            }
            let src = InodeNo(src_e.target);
            let mut sv = read_inode(tx, src)?;
            let src_dir = is_dir(&sv);
            let mut target = match &tgt {
                Some((slot, e)) => {
                    Some((*slot, InodeNo(e.target), read_inode(tx, InodeNo(e.target))?))
                }
                None => None,
            };
            let tgt_dir = target.as_ref().is_some_and(|t| is_dir(&t.2));

            // Loops: the source may not move under itself; a target may not
            // be an ancestor of the source.
            if !same_dir {
                if src_dir && is_ancestor(tx, src, new_parent)? {
                    return Err(FsError::Invalid("rename of a directory into itself".into()));
                }
                if let Some((_, t, _)) = &target
                    && tgt_dir
                    && is_ancestor(tx, *t, parent)?
                {
                    return Err(if flags.exchange {
                        FsError::Invalid("exchange of a directory with its descendant".into())
                    } else {
                        FsError::NotEmpty
                    });
                }
            }
            if target.as_ref().is_some_and(|t| t.1 == src) {
                // Two names of one inode (or one name): nothing to do.
                return Ok(None);
            }

            may_delete(tx, caller, parent, &od, &sv)?;
            match &target {
                Some((_, _, tv)) => may_delete(tx, caller, new_parent, &nd, tv)?,
                None => may_access(tx, caller, new_parent, &nd, MAY_WRITE | MAY_EXEC)?,
            }
            if !flags.exchange && target.is_some() {
                if src_dir && !tgt_dir {
                    return Err(FsError::NotDir);
                }
                if !src_dir && tgt_dir {
                    return Err(FsError::IsDir);
                }
            }
            if !same_dir {
                // A directory changing parents rewrites its "..".
                if src_dir {
                    may_access(tx, caller, src, &sv, MAY_WRITE)?;
                }
                if let Some((_, t, tv)) = &target
                    && flags.exchange
                    && tgt_dir
                {
                    may_access(tx, caller, *t, tv, MAY_WRITE)?;
                }
            }
            if let Some((_, t, _)) = &target
                && !flags.exchange
                && tgt_dir
                && !dirent::is_empty(tx, *t)?
            {
                return Err(FsError::NotEmpty);
            }

            // Link counts of the parents: a directory's ".." counts in its parent.
            let (mut od_delta, mut nd_delta) = (0i64, 0i64);
            if !same_dir {
                if src_dir {
                    od_delta -= 1;
                    nd_delta += 1;
                }
                if flags.exchange && tgt_dir {
                    nd_delta -= 1;
                    od_delta += 1;
                }
            }
            if !flags.exchange && tgt_dir {
                nd_delta -= 1;
            }
            if nd_delta > 0 && nd.nlink >= LINK_MAX {
                return Err(FsError::TooManyLinks);
            }
            if od_delta > 0 && od.nlink >= LINK_MAX {
                return Err(FsError::TooManyLinks);
            }

            let now = Timespec::now();
            let mut evict = None;
            match target.as_mut() {
                Some((tslot, t, tv)) if flags.exchange => {
                    dirent::replace(tx, parent, src_slot, name, *t, kind_of(tv).d_type());
                    dirent::replace(tx, new_parent, *tslot, new_name, src, kind_of(&sv).d_type());
                    tv.parent = parent.0;
                    tv.ctime = now;
                    write_inode(tx, *t, tv);
                }
                Some((tslot, t, tv)) => {
                    dirent::replace(tx, new_parent, *tslot, new_name, src, kind_of(&sv).d_type());
                    dirent::remove(tx, parent, src_slot)?;
                    evict = self.drop_link(tx, *t, tv, now);
                }
                None => {
                    // Insert before removing: see `hashtab`.
                    dirent::insert(tx, new_parent, new_name, src, kind_of(&sv).d_type())?;
                    dirent::remove(tx, parent, src_slot)?;
                }
            }
            sv.parent = new_parent.0;
            sv.ctime = now;
            write_inode(tx, src, &sv);
            if same_dir {
                add_nlink(&mut od, od_delta + nd_delta);
            } else {
                add_nlink(&mut od, od_delta);
                add_nlink(&mut nd, nd_delta);
                nd.mtime = now;
                nd.ctime = now;
                write_inode(tx, new_parent, &nd);
            }
            od.mtime = now;
            od.ctime = now;
            write_inode(tx, parent, &od);
            Ok(evict)
        })?;
        if let Some(ino) = evict {
            self.evict_inode(ino)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::namei::tests::fs;
    use crate::fs::{Fs, SetAttr};

    const NONE: RenameFlags = RenameFlags {
        noreplace: false,
        exchange: false,
    };
    const NOREPLACE: RenameFlags = RenameFlags {
        noreplace: true,
        exchange: false,
    };
    const EXCHANGE: RenameFlags = RenameFlags {
        noreplace: false,
        exchange: true,
    };

    fn root() -> Caller {
        Caller::root()
    }

    fn names(fs: &Fs, dir: InodeNo) -> Vec<String> {
        let mut v = Vec::new();
        fs.readdir(dir, 0, |e| {
            v.push(String::from_utf8(e.name).unwrap());
            true
        })
        .unwrap();
        v.sort();
        v
    }

    fn mkfile(fs: &Fs, dir: InodeNo, name: &[u8]) -> InodeNo {
        fs.mknod(&root(), dir, name, S_IFREG | 0o644, 0)
            .unwrap()
            .ino
    }

    #[test]
    fn link_rules() {
        let fs = fs();
        let f = mkfile(&fs, ROOT_INO, b"f");
        let d = fs.mkdir(&root(), ROOT_INO, b"d", 0o755).unwrap().ino;
        let before = fs.getattr(f).unwrap().ctime;
        let a = fs.link(&root(), f, d, b"g").unwrap();
        assert_eq!(a.nlink, 2);
        assert!(a.ctime >= before);
        assert_eq!(fs.lookup(&root(), d, b"g").unwrap().ino, f);
        assert!(matches!(fs.link(&root(), f, d, b"g"), Err(FsError::Exists)));
        assert!(matches!(
            fs.link(&root(), d, ROOT_INO, b"d2"),
            Err(FsError::NotPermitted)
        ));
        assert!(matches!(fs.link(&root(), f, f, b"x"), Err(FsError::NotDir)));
        let user = Caller {
            uid: 10,
            gid: 10,
            groups: vec![],
            fsetid: false,
            umask: 0,
        };
        assert!(matches!(
            fs.link(&user, f, d, b"h"),
            Err(FsError::AccessDenied)
        ));
        // A removed directory takes no new names.
        let gone = fs.mkdir(&root(), ROOT_INO, b"gone", 0o777).unwrap().ino;
        fs.rmdir(&root(), ROOT_INO, b"gone").unwrap();
        assert!(matches!(
            fs.link(&root(), f, gone, b"x"),
            Err(FsError::NotFound)
        ));
        fs.unlink(&root(), ROOT_INO, b"f").unwrap();
        fs.unlink(&root(), d, b"g").unwrap();
        assert!(matches!(fs.getattr(f), Err(FsError::NotFound)));
    }

    #[test]
    fn link_limit() {
        let fs = fs();
        let f = mkfile(&fs, ROOT_INO, b"f");
        let attr = fs.getattr(f).unwrap();
        // Fake a nearly full link count rather than making 65000 names.
        fs.tx(Durability::Lazy, |tx| {
            let mut v = read_inode(tx, f)?;
            v.nlink = LINK_MAX - 1;
            write_inode(tx, f, &v);
            Ok(())
        })
        .unwrap();
        fs.link(&root(), f, ROOT_INO, b"g").unwrap();
        assert!(matches!(
            fs.link(&root(), f, ROOT_INO, b"h"),
            Err(FsError::TooManyLinks)
        ));
        assert_eq!(attr.nlink, 1);
    }

    #[test]
    fn rename_basic_and_noop() {
        let fs = fs();
        let f = mkfile(&fs, ROOT_INO, b"a");
        let d = fs.mkdir(&root(), ROOT_INO, b"d", 0o755).unwrap().ino;
        fs.rename(&root(), ROOT_INO, b"a", ROOT_INO, b"a", NONE)
            .unwrap();
        assert!(matches!(
            fs.rename(&root(), ROOT_INO, b"a", ROOT_INO, b"a", NOREPLACE),
            Err(FsError::Exists)
        ));
        fs.rename(&root(), ROOT_INO, b"a", d, b"b", NONE).unwrap();
        assert_eq!(names(&fs, d), [".", "..", "b"]);
        assert_eq!(fs.lookup(&root(), d, b"b").unwrap().ino, f);
        assert!(matches!(
            fs.rename(&root(), ROOT_INO, b"a", d, b"c", NONE),
            Err(FsError::NotFound)
        ));
        // Hard links to one inode: a no-op, both names stay.
        fs.link(&root(), f, d, b"c").unwrap();
        fs.rename(&root(), d, b"b", d, b"c", NONE).unwrap();
        assert_eq!(names(&fs, d), [".", "..", "b", "c"]);
        assert_eq!(fs.getattr(f).unwrap().nlink, 2);
        assert!(matches!(
            fs.rename(
                &root(),
                d,
                b"b",
                d,
                b"c",
                RenameFlags {
                    noreplace: true,
                    exchange: true
                }
            ),
            Err(FsError::Invalid(_))
        ));
    }

    #[test]
    fn rename_replace_rules() {
        let fs = fs();
        let d1 = fs.mkdir(&root(), ROOT_INO, b"d1", 0o755).unwrap().ino;
        let d2 = fs.mkdir(&root(), ROOT_INO, b"d2", 0o755).unwrap().ino;
        let full = fs.mkdir(&root(), ROOT_INO, b"full", 0o755).unwrap().ino;
        mkfile(&fs, full, b"x");
        let f = mkfile(&fs, ROOT_INO, b"f");
        let g = mkfile(&fs, ROOT_INO, b"g");
        assert!(matches!(
            fs.rename(&root(), ROOT_INO, b"d1", ROOT_INO, b"full", NONE),
            Err(FsError::NotEmpty)
        ));
        assert!(matches!(
            fs.rename(&root(), ROOT_INO, b"d1", ROOT_INO, b"f", NONE),
            Err(FsError::NotDir)
        ));
        assert!(matches!(
            fs.rename(&root(), ROOT_INO, b"f", ROOT_INO, b"d1", NONE),
            Err(FsError::IsDir)
        ));
        assert!(matches!(
            fs.rename(&root(), ROOT_INO, b"f", ROOT_INO, b"g", NOREPLACE),
            Err(FsError::Exists)
        ));
        // File over file: the target loses its name and is freed.
        fs.rename(&root(), ROOT_INO, b"f", ROOT_INO, b"g", NONE)
            .unwrap();
        assert!(matches!(fs.getattr(g), Err(FsError::NotFound)));
        assert_eq!(fs.lookup(&root(), ROOT_INO, b"g").unwrap().ino, f);
        // An open target stays until released, on the orphan list.
        let h = mkfile(&fs, ROOT_INO, b"h");
        fs.open_inode(h).unwrap();
        fs.rename(&root(), ROOT_INO, b"g", ROOT_INO, b"h", NONE)
            .unwrap();
        assert_eq!(fs.getattr(h).unwrap().nlink, 0);
        fs.release(h).unwrap();
        assert!(matches!(fs.getattr(h), Err(FsError::NotFound)));
        // Directory over empty directory, between parents.
        let sub = fs.mkdir(&root(), d2, b"sub", 0o755).unwrap().ino;
        assert_eq!(fs.getattr(d2).unwrap().nlink, 3);
        fs.rename(&root(), ROOT_INO, b"d1", d2, b"sub", NONE)
            .unwrap();
        assert!(matches!(fs.getattr(sub), Err(FsError::NotFound)));
        assert_eq!(fs.getattr(d2).unwrap().nlink, 3);
        assert_eq!(
            fs.getattr(ROOT_INO).unwrap().nlink,
            4,
            "root: d2, full, and itself"
        );
        assert_eq!(fs.lookup(&root(), d1, b"..").unwrap().ino, d2);
    }

    #[test]
    fn rename_into_own_subtree() {
        let fs = fs();
        let a = fs.mkdir(&root(), ROOT_INO, b"a", 0o755).unwrap().ino;
        let b = fs.mkdir(&root(), a, b"b", 0o755).unwrap().ino;
        let c = fs.mkdir(&root(), b, b"c", 0o755).unwrap().ino;
        assert!(matches!(
            fs.rename(&root(), ROOT_INO, b"a", c, b"x", NONE),
            Err(FsError::Invalid(_))
        ));
        assert!(matches!(
            fs.rename(&root(), ROOT_INO, b"a", a, b"x", NONE),
            Err(FsError::Invalid(_))
        ));
        // Target an ancestor of the source's directory.
        assert!(matches!(
            fs.rename(&root(), b, b"c", ROOT_INO, b"a", NONE),
            Err(FsError::NotEmpty)
        ));
        assert!(matches!(
            fs.rename(&root(), b, b"c", ROOT_INO, b"a", EXCHANGE),
            Err(FsError::Invalid(_))
        ));
        // Moving up is fine.
        fs.rename(&root(), b, b"c", ROOT_INO, b"c", NONE).unwrap();
        assert_eq!(fs.lookup(&root(), c, b"..").unwrap().ino, ROOT_INO);
        assert_eq!(fs.getattr(b).unwrap().nlink, 2);
        assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 4);
    }

    #[test]
    fn exchange() {
        let fs = fs();
        let d = fs.mkdir(&root(), ROOT_INO, b"d", 0o755).unwrap().ino;
        let e = fs.mkdir(&root(), ROOT_INO, b"e", 0o755).unwrap().ino;
        let sub = fs.mkdir(&root(), d, b"sub", 0o755).unwrap().ino;
        let f = mkfile(&fs, e, b"f");
        assert!(matches!(
            fs.rename(&root(), d, b"sub", e, b"nope", EXCHANGE),
            Err(FsError::NotFound)
        ));
        fs.rename(&root(), d, b"sub", e, b"f", EXCHANGE).unwrap();
        assert_eq!(fs.lookup(&root(), d, b"sub").unwrap().ino, f);
        assert_eq!(fs.lookup(&root(), e, b"f").unwrap().ino, sub);
        assert_eq!(fs.lookup(&root(), sub, b"..").unwrap().ino, e);
        assert_eq!(
            (fs.getattr(d).unwrap().nlink, fs.getattr(e).unwrap().nlink),
            (2, 3)
        );
        assert_eq!(fs.readdir_kind(d, b"sub"), FileKind::Regular);
        assert_eq!(fs.readdir_kind(e, b"f"), FileKind::Directory);
    }

    #[test]
    fn rename_permissions() {
        let fs = fs();
        let u1 = Caller {
            uid: 10,
            gid: 10,
            groups: vec![],
            fsetid: false,
            umask: 0,
        };
        let u2 = Caller {
            uid: 11,
            gid: 11,
            groups: vec![],
            fsetid: false,
            umask: 0,
        };
        let tmp = fs.mkdir(&root(), ROOT_INO, b"tmp", 0o1777).unwrap().ino;
        let mine = fs.mknod(&u1, tmp, b"mine", S_IFREG | 0o644, 0).unwrap().ino;
        fs.mknod(&u2, tmp, b"theirs", S_IFREG | 0o644, 0).unwrap();
        // Sticky: u2 can't move u1's file, nor replace it.
        assert!(matches!(
            fs.rename(&u2, tmp, b"mine", tmp, b"x", NONE),
            Err(FsError::NotPermitted)
        ));
        assert!(matches!(
            fs.rename(&u2, tmp, b"theirs", tmp, b"mine", NONE),
            Err(FsError::NotPermitted)
        ));
        fs.rename(&u1, tmp, b"mine", tmp, b"m2", NONE).unwrap();
        assert_eq!(fs.lookup(&u1, tmp, b"m2").unwrap().ino, mine);
        // No write access to the target directory.
        let ro = fs.mkdir(&root(), ROOT_INO, b"ro", 0o755).unwrap().ino;
        assert!(matches!(
            fs.rename(&u1, tmp, b"m2", ro, b"m", NONE),
            Err(FsError::AccessDenied)
        ));
        // Moving a directory to another parent needs write access to it ("..").
        let open = fs.mkdir(&root(), ROOT_INO, b"open", 0o777).unwrap().ino;
        fs.mkdir(&root(), tmp, b"rootdir", 0o755).unwrap();
        fs.setattr(
            &root(),
            tmp,
            &SetAttr {
                mode: Some(0o777),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(
            fs.rename(&u1, tmp, b"rootdir", open, b"x", NONE),
            Err(FsError::AccessDenied)
        ));
        // ... but not within one directory.
        fs.rename(&u1, tmp, b"rootdir", tmp, b"renamed", NONE)
            .unwrap();
    }

    #[test]
    fn times_updated() {
        let fs = fs();
        let d = fs.mkdir(&root(), ROOT_INO, b"d", 0o755).unwrap().ino;
        let f = mkfile(&fs, ROOT_INO, b"f");
        let (r0, d0, f0) = (
            fs.getattr(ROOT_INO).unwrap(),
            fs.getattr(d).unwrap(),
            fs.getattr(f).unwrap(),
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
        fs.rename(&root(), ROOT_INO, b"f", d, b"f", NONE).unwrap();
        let (r1, d1, f1) = (
            fs.getattr(ROOT_INO).unwrap(),
            fs.getattr(d).unwrap(),
            fs.getattr(f).unwrap(),
        );
        assert!(r1.mtime > r0.mtime && r1.ctime > r0.ctime);
        assert!(d1.mtime > d0.mtime && d1.ctime > d0.ctime);
        assert!(f1.ctime > f0.ctime);
        assert_eq!(f1.mtime, f0.mtime);
    }

    #[test]
    fn many_renames_keep_probe_chains() {
        let fs = fs();
        for i in 0..200 {
            mkfile(&fs, ROOT_INO, format!("n{i}").as_bytes());
        }
        for round in 0..3 {
            for i in 0..200 {
                let from = format!("n{i}_{round}");
                let from = if round == 0 { format!("n{i}") } else { from };
                fs.rename(
                    &root(),
                    ROOT_INO,
                    from.as_bytes(),
                    ROOT_INO,
                    format!("n{i}_{}", round + 1).as_bytes(),
                    NONE,
                )
                .unwrap();
            }
            for i in 0..200 {
                fs.lookup(&root(), ROOT_INO, format!("n{i}_{}", round + 1).as_bytes())
                    .unwrap();
            }
        }
        assert_eq!(names(&fs, ROOT_INO).len(), 202);
    }

    impl FsCore {
        fn readdir_kind(&self, dir: InodeNo, name: &[u8]) -> FileKind {
            let mut kind = None;
            self.readdir(dir, 0, |e| {
                if e.name == name {
                    kind = Some(e.kind);
                }
                true
            })
            .unwrap();
            kind.unwrap()
        }
    }
}
