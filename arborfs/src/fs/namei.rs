//! Names: lookup, creating and removing files, directories, symlinks and
//! device nodes, and listing directories.

use super::dirent::{self, DirEntry};
use super::error::{FsError, FsResult};
use super::inode::{read_inode, to_attr, write_inode};
use super::inode_format::{INODE_UNLINKED, InodeValue};
use super::perm::{MAY_EXEC, MAY_WRITE, may_access, may_delete};
use super::types::*;
use super::xattr::{AclKind, read_acl, write_acl};
use super::{FsCore, orphan_pos};
use crate::btree::trans::{Durability, Transaction};
use crate::key::{BtreeId, Key, KeyType, Pos};

/// Longest symlink target, as Linux's PATH_MAX.
pub const SYMLINK_MAX: usize = 4095;

/// Where a symlink's target is kept: slot 0 of its xattrs (real xattrs
/// start at `dirent_format::FIRST_SLOT`).
pub(crate) fn symlink_pos(ino: InodeNo) -> Pos {
    Pos::new(ino.0, 0, ROOT_SNAPSHOT)
}

/// Cookies 0 and 1 are "." and ".."; entries resume at slot = cookie.
const COOKIE_DOTDOT: u64 = 1;
const COOKIE_ENTRIES: u64 = 2;

pub(crate) fn dir_inode(tx: &mut Transaction<'_>, dir: InodeNo) -> FsResult<InodeValue> {
    let v = read_inode(tx, dir)?;
    if v.mode & S_IFMT != S_IFDIR {
        return Err(FsError::NotDir);
    }
    Ok(v)
}

impl FsCore {
    /// The inode `name` in directory `parent`.
    pub fn lookup(&self, caller: &Caller, parent: InodeNo, name: &[u8]) -> FsResult<Attr> {
        if name.len() > dirent_format_name_max() {
            return Err(FsError::NameTooLong);
        }
        self.tx(Durability::Lazy, |tx| {
            let d = dir_inode(tx, parent)?;
            may_access(tx, caller, parent, &d, MAY_EXEC)?;
            let target = match name {
                b"." => parent,
                b".." => InodeNo(d.parent),
                _ => match dirent::lookup(tx, parent, name)? {
                    Some((_, e)) => InodeNo(e.target),
                    None => return Err(FsError::NotFound),
                },
            };
            let v = read_inode(tx, target)?;
            Ok(to_attr(target, &v))
        })
        .map(|a| self.overlay_attr(a))
    }

    /// Creates a regular file, device node, FIFO or socket (`mode` holds the
    /// type). The permission bits are used as given (umask already applied).
    pub fn mknod(
        &self,
        caller: &Caller,
        parent: InodeNo,
        name: &[u8],
        mode: u32,
        rdev: u64,
    ) -> FsResult<Attr> {
        let kind = FileKind::from_mode(mode).unwrap_or(FileKind::Regular);
        if matches!(kind, FileKind::Directory | FileKind::Symlink) {
            return Err(FsError::Invalid(
                "mknod cannot make directories or symlinks".into(),
            ));
        }
        self.create_node(caller, parent, name, kind, mode & 0o7777, rdev, None)
    }

    /// Creates a directory `name` in `parent` with permission bits `mode` (umask already applied).
    pub fn mkdir(
        &self,
        caller: &Caller,
        parent: InodeNo,
        name: &[u8],
        mode: u32,
    ) -> FsResult<Attr> {
        self.create_node(
            caller,
            parent,
            name,
            FileKind::Directory,
            mode & 0o7777,
            0,
            None,
        )
    }

    /// Creates a symlink `name` in `parent` pointing at `target` (at most 4095 bytes).
    pub fn symlink(
        &self,
        caller: &Caller,
        parent: InodeNo,
        name: &[u8],
        target: &[u8],
    ) -> FsResult<Attr> {
        if target.is_empty() {
            return Err(FsError::NotFound);
        }
        if target.len() > SYMLINK_MAX {
            return Err(FsError::NameTooLong);
        }
        self.create_node(
            caller,
            parent,
            name,
            FileKind::Symlink,
            0o777,
            0,
            Some(target),
        )
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: InodeNo) -> FsResult<Vec<u8>> {
        self.tx(Durability::Lazy, |tx| {
            let v = read_inode(tx, ino)?;
            if v.mode & S_IFMT != S_IFLNK {
                return Err(FsError::Invalid("not a symlink".into()));
            }
            match tx.get(BtreeId::Xattrs, symlink_pos(ino))? {
                Some(k) => Ok(k.value),
                None => Err(FsError::Corrupted(format!(
                    "symlink {} has no target",
                    ino.0
                ))),
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn create_node(
        &self,
        caller: &Caller,
        parent: InodeNo,
        name: &[u8],
        kind: FileKind,
        perm: u32,
        rdev: u64,
        symlink: Option<&[u8]>,
    ) -> FsResult<Attr> {
        dirent::check_name(name)?;
        let ino = self.alloc_ino();
        let generation = self.next_generation();
        let durability = Durability::Lazy;
        self.tx(durability, |tx| {
            let mut d = dir_inode(tx, parent)?;
            if d.nlink == 0 {
                return Err(FsError::NotFound);
            }
            may_access(tx, caller, parent, &d, MAY_WRITE | MAY_EXEC)?;
            let now = Timespec::now();
            // A directory's default ACL replaces the umask: the new inode
            // gets it as its access ACL, limited by the mode asked for.
            // Symlinks have neither (always 0777).
            let default_acl = match kind {
                FileKind::Symlink => None,
                _ => read_acl(tx, parent, AclKind::Default)?,
            };
            let (perm, access_acl) = match (&default_acl, kind) {
                (_, FileKind::Symlink) => (perm, None),
                (Some(dacl), _) => {
                    let (acl, bits) = dacl.for_new_inode(perm);
                    ((perm & 0o7000) | bits, (!acl.is_minimal()).then_some(acl))
                }
                (None, _) => (perm & !(caller.umask & 0o777), None),
            };
            let mut mode = kind.mode_bits() | perm;
            let gid = if d.mode & S_ISGID != 0 {
                if kind == FileKind::Directory {
                    mode |= S_ISGID;
                }
                d.gid
            } else {
                caller.gid
            };
            if kind != FileKind::Directory
                && mode & S_ISGID != 0
                && mode & 0o010 != 0
                && !caller.is_root()
                && !caller.in_group(gid)
            {
                mode &= !S_ISGID;
            }
            let v = InodeValue {
                mode,
                uid: caller.uid,
                gid,
                nlink: if kind == FileKind::Directory { 2 } else { 1 },
                size: symlink.map_or(0, |t| t.len() as u64),
                atime: now,
                mtime: now,
                ctime: now,
                btime: now,
                rdev,
                generation,
                parent: parent.0,
                // Children inherit the directory's compression option.
                compression: d.compression,
                compression_level: d.compression_level,
                ..Default::default()
            };
            dirent::insert(tx, parent, name, ino, kind.d_type())?;
            write_inode(tx, ino, &v);
            if access_acl.is_some() {
                write_acl(tx, ino, AclKind::Access, access_acl.as_ref())?;
            }
            if kind == FileKind::Directory && default_acl.is_some() {
                write_acl(tx, ino, AclKind::Default, default_acl.as_ref())?;
            }
            if let Some(t) = symlink {
                tx.put(BtreeId::Xattrs, Key::blob(symlink_pos(ino), t.to_vec()));
            }
            if kind == FileKind::Directory {
                d.nlink += 1;
            }
            d.mtime = now;
            d.ctime = now;
            write_inode(tx, parent, &d);
            Ok(to_attr(ino, &v))
        })
    }

    /// Removes the name of a non-directory.
    pub fn unlink(&self, caller: &Caller, parent: InodeNo, name: &[u8]) -> FsResult<()> {
        self.remove_name(caller, parent, name, false)
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, caller: &Caller, parent: InodeNo, name: &[u8]) -> FsResult<()> {
        if name == b"." {
            return Err(FsError::Invalid("rmdir of \".\"".into()));
        }
        if name == b".." {
            return Err(FsError::NotEmpty);
        }
        self.remove_name(caller, parent, name, true)
    }

    fn remove_name(
        &self,
        caller: &Caller,
        parent: InodeNo,
        name: &[u8],
        want_dir: bool,
    ) -> FsResult<()> {
        if name.len() > dirent_format_name_max() {
            return Err(FsError::NameTooLong);
        }
        let evict = self.tx(Durability::Lazy, |tx| {
            let mut d = dir_inode(tx, parent)?;
            let (slot, e) = dirent::lookup(tx, parent, name)?.ok_or(FsError::NotFound)?;
            let target = InodeNo(e.target);
            let mut v = read_inode(tx, target)?;
            let is_dir = v.mode & S_IFMT == S_IFDIR;
            may_delete(tx, caller, parent, &d, &v)?;
            if want_dir && !is_dir {
                return Err(FsError::NotDir);
            }
            if !want_dir && is_dir {
                return Err(FsError::IsDir);
            }
            if is_dir && !dirent::is_empty(tx, target)? {
                return Err(FsError::NotEmpty);
            }
            dirent::remove(tx, parent, slot)?;
            let now = Timespec::now();
            d.mtime = now;
            d.ctime = now;
            if is_dir {
                d.nlink = d.nlink.saturating_sub(1);
            }
            write_inode(tx, parent, &d);
            Ok(self.drop_link(tx, target, &mut v, now))
        })?;
        if let Some(ino) = evict {
            self.evict_inode(ino)?;
        }
        Ok(())
    }

    /// Takes one name away from `v` (every name, for a directory), sets its
    /// ctime and queues the write. At zero links the inode goes on the
    /// orphan list in the same transaction (so a crash cannot leak it); if
    /// no handle has it open it is returned, to be evicted after the commit.
    pub(crate) fn drop_link(
        &self,
        tx: &mut Transaction<'_>,
        ino: InodeNo,
        v: &mut InodeValue,
        now: Timespec,
    ) -> Option<InodeNo> {
        if v.mode & S_IFMT == S_IFDIR {
            v.nlink = 0;
        } else {
            v.nlink = v.nlink.saturating_sub(1);
        }
        v.ctime = now;
        let gone = v.nlink == 0;
        if gone {
            v.flags |= INODE_UNLINKED;
            tx.put(
                BtreeId::Inodes,
                Key::new(orphan_pos(ino), KeyType::Blob, Vec::new()),
            );
        }
        write_inode(tx, ino, v);
        (gone && self.open_count(ino) == 0).then_some(ino)
    }

    /// Lists `dir` from `cookie` (0 to start); `f` gets each entry and
    /// returns false to stop. Cookies stay valid while the directory changes.
    pub fn readdir(
        &self,
        dir: InodeNo,
        cookie: u64,
        mut f: impl FnMut(DirEntry) -> bool,
    ) -> FsResult<()> {
        let (d, _) = self.tx(Durability::Lazy, |tx| Ok((dir_inode(tx, dir)?, ())))?;
        let mut cookie = cookie;
        if cookie == 0 {
            if !f(DirEntry {
                ino: dir,
                kind: FileKind::Directory,
                name: b".".to_vec(),
                next_cookie: COOKIE_DOTDOT,
            }) {
                return Ok(());
            }
            cookie = COOKIE_DOTDOT;
        }
        if cookie == COOKIE_DOTDOT {
            let e = DirEntry {
                ino: InodeNo(d.parent),
                kind: FileKind::Directory,
                name: b"..".to_vec(),
                next_cookie: COOKIE_ENTRIES,
            };
            if !f(e) {
                return Ok(());
            }
            cookie = COOKIE_ENTRIES;
        }
        let mut from = cookie.max(super::dirent_format::FIRST_SLOT);
        loop {
            let batch = self.tx(Durability::Lazy, |tx| dirent::list(tx, dir, from, 128))?;
            let n = batch.len();
            for (slot, e) in batch {
                let kind = FileKind::from_d_type(e.d_type).unwrap_or(FileKind::Regular);
                if !f(DirEntry {
                    ino: InodeNo(e.target),
                    kind,
                    name: e.name,
                    next_cookie: slot + 1,
                }) {
                    return Ok(());
                }
                from = slot + 1;
            }
            if n < 128 {
                return Ok(());
            }
        }
    }
}

fn dirent_format_name_max() -> usize {
    super::dirent_format::NAME_MAX
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::device::MemDevice;
    use crate::fs::Fs;
    use crate::fs::FsOptions;

    pub(crate) fn fs() -> Fs {
        let dev = Arc::new(MemDevice::new(64 << 20));
        let opts = crate::sb::FormatOptions {
            bucket_size: 64 << 10,
            node_size: 16 << 10,
            ..Default::default()
        };
        Fs::format(dev.clone(), &opts).unwrap();
        Fs::open(
            dev,
            FsOptions {
                engine: crate::engine::EngineOptions {
                    background: false,
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn create_lookup_list_remove() {
        let fs = fs();
        let me = Caller::root();
        let d = fs.mkdir(&me, ROOT_INO, b"dir", 0o755).unwrap();
        assert_eq!(d.kind, FileKind::Directory);
        assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 3);
        for i in 0..300 {
            fs.mknod(&me, d.ino, format!("f{i}").as_bytes(), S_IFREG | 0o644, 0)
                .unwrap();
        }
        assert!(matches!(
            fs.mknod(&me, d.ino, b"f7", S_IFREG | 0o644, 0),
            Err(FsError::Exists)
        ));
        assert_eq!(
            fs.lookup(&me, d.ino, b"f7").unwrap().kind,
            FileKind::Regular
        );
        let mut names = Vec::new();
        fs.readdir(d.ino, 0, |e| {
            names.push(String::from_utf8(e.name).unwrap());
            true
        })
        .unwrap();
        assert_eq!(names.len(), 302);
        assert!(matches!(
            fs.rmdir(&me, ROOT_INO, b"dir"),
            Err(FsError::NotEmpty)
        ));
        for i in 0..300 {
            fs.unlink(&me, d.ino, format!("f{i}").as_bytes()).unwrap();
        }
        assert!(matches!(
            fs.lookup(&me, d.ino, b"f7"),
            Err(FsError::NotFound)
        ));
        fs.rmdir(&me, ROOT_INO, b"dir").unwrap();
        assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 2);
        let long = vec![b'x'; 256];
        assert!(matches!(
            fs.mkdir(&me, ROOT_INO, &long, 0o755),
            Err(FsError::NameTooLong)
        ));
        let s = fs.symlink(&me, ROOT_INO, b"l", b"/some/where").unwrap();
        assert_eq!(fs.readlink(s.ino).unwrap(), b"/some/where");
    }
}
