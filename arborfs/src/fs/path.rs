//! A path-based API for programs that embed ArborFS without FUSE.
//!
//! Paths are resolved from the filesystem's root (a leading `/` is
//! optional); symlinks in the middle of a path are followed, the last
//! component is followed by the functions that say so. Operations run as
//! root; use the inode-number API with a [`Caller`] for permission checks.
//!
//! ```
//! use std::io::{Read, Write};
//! use std::sync::Arc;
//! use arborfs::device::MemDevice;
//! use arborfs::fs::{Fs, FsOptions};
//!
//! let dev = Arc::new(MemDevice::new(64 << 20));
//! Fs::format(dev.clone(), &Default::default()).unwrap();
//! let fs = Fs::open(dev, FsOptions::default()).unwrap();
//! fs.create_dir_all("/docs/notes").unwrap();
//! let mut f = fs.create_file("/docs/notes/hello.txt").unwrap();
//! f.write_all(b"hello, tree").unwrap();
//! drop(f);
//! let mut s = String::new();
//! fs.open_file("/docs/notes/hello.txt").unwrap().read_to_string(&mut s).unwrap();
//! assert_eq!(s, "hello, tree");
//! let names: Vec<_> = fs.read_dir("/docs/notes").unwrap().map(|e| e.unwrap().name).collect();
//! assert_eq!(names, vec![b"hello.txt".to_vec()]);
//! fs.close().unwrap();
//! ```

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::sync::Arc;

use super::data::FallocFlags;
use super::dirent::DirEntry;
use super::error::{FsError, FsResult};
use super::rename::RenameFlags;
use super::setattr::{SetAttr, TimeOrNow};
use super::types::*;
use super::xattr::XattrSet;
use super::{Fs, FsCore, FsOptions};
use crate::device::{Device, FileDevice};
use crate::sb::FormatOptions;

const MAX_SYMLINK_HOPS: usize = 40;

impl From<FsError> for io::Error {
    fn from(e: FsError) -> io::Error {
        let kind = match &e {
            FsError::NotFound => io::ErrorKind::NotFound,
            FsError::Exists => io::ErrorKind::AlreadyExists,
            FsError::NotDir => io::ErrorKind::NotADirectory,
            FsError::IsDir => io::ErrorKind::IsADirectory,
            FsError::NotEmpty => io::ErrorKind::DirectoryNotEmpty,
            FsError::NameTooLong => io::ErrorKind::InvalidFilename,
            FsError::Invalid(_) => io::ErrorKind::InvalidInput,
            FsError::NotPermitted | FsError::AccessDenied => io::ErrorKind::PermissionDenied,
            FsError::NoSpace => io::ErrorKind::StorageFull,
            FsError::ReadOnly => io::ErrorKind::ReadOnlyFilesystem,
            FsError::FileTooBig => io::ErrorKind::FileTooLarge,
            FsError::TooManyLinks => io::ErrorKind::TooManyLinks,
            FsError::CrossDevice => io::ErrorKind::CrossesDevices,
            FsError::Busy => io::ErrorKind::ResourceBusy,
            FsError::NotSupported => io::ErrorKind::Unsupported,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

impl Fs {
    /// Opens the filesystem in an image file or block device; an image
    /// file that does not exist (or is empty) is created with
    /// `size_if_new` bytes and formatted first ([`FormatOptions::for_device`]).
    pub fn open_image(path: impl AsRef<Path>, size_if_new: u64, opts: FsOptions) -> FsResult<Fs> {
        let path = path.as_ref();
        let fresh = std::fs::metadata(path).map_or(true, |m| m.is_file() && m.len() == 0);
        let dev: Arc<dyn Device> = if fresh {
            let d =
                Arc::new(FileDevice::create(path, size_if_new).map_err(crate::error::Error::from)?);
            Fs::format(d.clone(), &FormatOptions::for_device(size_if_new))?;
            d
        } else {
            Arc::new(
                FileDevice::open(path, !opts.engine.read_only)
                    .map_err(crate::error::Error::from)?,
            )
        };
        Fs::open(dev, opts)
    }
}

impl FsCore {
    /// The inode a path names. With `follow`, a symlink as the last
    /// component is followed too.
    pub fn resolve(&self, path: impl AsRef<Path>, follow: bool) -> FsResult<InodeNo> {
        let me = Caller::root();
        let mut hops = 0;
        let mut stack: Vec<Vec<u8>> = components(path.as_ref())?.into_iter().rev().collect();
        let mut dir = ROOT_INO;
        while let Some(name) = stack.pop() {
            let attr = self.lookup(&me, dir, &name)?;
            let last = stack.is_empty();
            if attr.kind == FileKind::Symlink && (!last || follow) {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(FsError::Invalid("too many levels of symbolic links".into()));
                }
                let target = self.readlink(attr.ino)?;
                let t = Path::new(std::ffi::OsStr::from_bytes(&target));
                if t.is_absolute() {
                    dir = ROOT_INO;
                }
                stack.extend(components(t)?.into_iter().rev());
                continue;
            }
            if last {
                return Ok(attr.ino);
            }
            dir = attr.ino;
        }
        Ok(dir)
    }

    /// The directory holding the last component, and that component.
    fn parent_and_name(&self, path: &Path) -> FsResult<(InodeNo, Vec<u8>)> {
        let mut comps = components(path)?;
        let name = comps
            .pop()
            .ok_or_else(|| FsError::Invalid("path has no last component".into()))?;
        let mut parent = std::path::PathBuf::from("/");
        for c in comps {
            parent.push(std::ffi::OsStr::from_bytes(&c));
        }
        Ok((self.resolve(&parent, true)?, name))
    }

    /// Creates (or truncates) a regular file and opens it for writing.
    pub fn create_file(&self, path: impl AsRef<Path>) -> FsResult<File<'_>> {
        let (parent, name) = self.parent_and_name(path.as_ref())?;
        let me = Caller::root();
        let ino = match self.mknod(&me, parent, &name, S_IFREG | 0o644, 0) {
            Ok(a) => a.ino,
            Err(FsError::Exists) => {
                let ino = self.resolve(path.as_ref(), true)?;
                self.set_size(&me, ino, 0)?;
                ino
            }
            Err(e) => return Err(e),
        };
        File::new(self, ino)
    }

    /// Opens an existing regular file for reading and writing.
    pub fn open_file(&self, path: impl AsRef<Path>) -> FsResult<File<'_>> {
        let ino = self.resolve(path, true)?;
        if self.getattr(ino)?.kind == FileKind::Directory {
            return Err(FsError::IsDir);
        }
        File::new(self, ino)
    }

    /// Creates one directory (its parent must exist).
    pub fn create_dir(&self, path: impl AsRef<Path>, mode: u32) -> FsResult<Attr> {
        let (parent, name) = self.parent_and_name(path.as_ref())?;
        self.mkdir(&Caller::root(), parent, &name, mode)
    }

    /// Creates a directory and any missing parents (mode 0755).
    pub fn create_dir_all(&self, path: impl AsRef<Path>) -> FsResult<()> {
        let mut cur = std::path::PathBuf::from("/");
        for c in components(path.as_ref())? {
            cur.push(std::ffi::OsStr::from_bytes(&c));
            match self.create_dir(&cur, 0o755) {
                Ok(_) | Err(FsError::Exists) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Removes a name of a non-directory (unlink).
    pub fn remove_file(&self, path: impl AsRef<Path>) -> FsResult<()> {
        let (parent, name) = self.parent_and_name(path.as_ref())?;
        self.unlink(&Caller::root(), parent, &name)
    }

    /// Removes an empty directory (rmdir).
    pub fn remove_dir(&self, path: impl AsRef<Path>) -> FsResult<()> {
        let (parent, name) = self.parent_and_name(path.as_ref())?;
        self.rmdir(&Caller::root(), parent, &name)
    }

    /// Renames `from` to `to`, replacing `to` if it exists (as rename(2)).
    pub fn rename_path(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> FsResult<()> {
        let (p1, n1) = self.parent_and_name(from.as_ref())?;
        let (p2, n2) = self.parent_and_name(to.as_ref())?;
        self.rename(&Caller::root(), p1, &n1, p2, &n2, RenameFlags::default())
    }

    /// Creates a symlink at `link` pointing at `target`.
    pub fn symlink_path(&self, target: impl AsRef<Path>, link: impl AsRef<Path>) -> FsResult<Attr> {
        let (parent, name) = self.parent_and_name(link.as_ref())?;
        self.symlink(
            &Caller::root(),
            parent,
            &name,
            target.as_ref().as_os_str().as_bytes(),
        )
    }

    /// Creates a hard link `link` to the existing file `original`.
    pub fn hard_link(&self, original: impl AsRef<Path>, link: impl AsRef<Path>) -> FsResult<Attr> {
        let ino = self.resolve(original, false)?;
        let (parent, name) = self.parent_and_name(link.as_ref())?;
        self.link(&Caller::root(), ino, parent, &name)
    }

    /// Attributes, following a final symlink (as stat(2)).
    pub fn metadata(&self, path: impl AsRef<Path>) -> FsResult<Attr> {
        self.getattr(self.resolve(path, true)?)
    }

    /// Attributes of the path itself (as lstat(2)).
    pub fn symlink_metadata(&self, path: impl AsRef<Path>) -> FsResult<Attr> {
        self.getattr(self.resolve(path, false)?)
    }

    /// The target of the symlink at `path`.
    pub fn read_link(&self, path: impl AsRef<Path>) -> FsResult<Vec<u8>> {
        self.readlink(self.resolve(path, false)?)
    }

    /// Sets the permission bits (chmod).
    pub fn set_permissions(&self, path: impl AsRef<Path>, mode: u32) -> FsResult<Attr> {
        let ino = self.resolve(path, true)?;
        self.setattr(
            &Caller::root(),
            ino,
            &SetAttr {
                mode: Some(mode & 0o7777),
                ..Default::default()
            },
        )
    }

    /// Sets owner and group (chown); `None` leaves one unchanged.
    pub fn set_owner(
        &self,
        path: impl AsRef<Path>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> FsResult<Attr> {
        let ino = self.resolve(path, false)?;
        self.setattr(
            &Caller::root(),
            ino,
            &SetAttr {
                uid,
                gid,
                ..Default::default()
            },
        )
    }

    /// Sets access and modification times.
    pub fn set_times(
        &self,
        path: impl AsRef<Path>,
        atime: Timespec,
        mtime: Timespec,
    ) -> FsResult<Attr> {
        let ino = self.resolve(path, false)?;
        let set = SetAttr {
            atime: Some(TimeOrNow::Time(atime)),
            mtime: Some(TimeOrNow::Time(mtime)),
            ..Default::default()
        };
        self.setattr(&Caller::root(), ino, &set)
    }

    /// Sets extended attribute `name` (with its namespace prefix, e.g. `user.`).
    pub fn set_xattr(&self, path: impl AsRef<Path>, name: &[u8], value: &[u8]) -> FsResult<()> {
        let ino = self.resolve(path, false)?;
        self.setxattr(&Caller::root(), ino, name, value, XattrSet::Any)
    }

    /// The value of extended attribute `name`.
    pub fn get_xattr(&self, path: impl AsRef<Path>, name: &[u8]) -> FsResult<Vec<u8>> {
        let ino = self.resolve(path, false)?;
        self.getxattr(&Caller::root(), ino, name)
    }

    /// The names of all extended attributes, with prefixes.
    pub fn list_xattr(&self, path: impl AsRef<Path>) -> FsResult<Vec<Vec<u8>>> {
        let ino = self.resolve(path, false)?;
        self.listxattr(&Caller::root(), ino)
    }

    /// Removes extended attribute `name`.
    pub fn remove_xattr(&self, path: impl AsRef<Path>, name: &[u8]) -> FsResult<()> {
        let ino = self.resolve(path, false)?;
        self.removexattr(&Caller::root(), ino, name)
    }

    /// The entries of a directory, without `.` and `..`.
    pub fn read_dir(&self, path: impl AsRef<Path>) -> FsResult<ReadDir<'_>> {
        let dir = self.resolve(path, true)?;
        if self.getattr(dir)?.kind != FileKind::Directory {
            return Err(FsError::NotDir);
        }
        Ok(ReadDir {
            fs: self,
            dir,
            cookie: 2,
            buf: Vec::new().into_iter(),
            done: false,
        })
    }
}

fn components(path: &Path) -> FsResult<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => out.push(b"..".to_vec()),
            Component::Normal(n) => out.push(n.as_bytes().to_vec()),
            Component::Prefix(_) => {
                return Err(FsError::Invalid("path prefixes are not supported".into()));
            }
        }
    }
    Ok(out)
}

/// Iterator over a directory's entries, fetched in batches.
pub struct ReadDir<'a> {
    fs: &'a FsCore,
    dir: InodeNo,
    cookie: u64,
    buf: std::vec::IntoIter<DirEntry>,
    done: bool,
}

impl Iterator for ReadDir<'_> {
    type Item = FsResult<DirEntry>;

    fn next(&mut self) -> Option<FsResult<DirEntry>> {
        if let Some(e) = self.buf.next() {
            return Some(Ok(e));
        }
        if self.done {
            return None;
        }
        let mut batch = Vec::new();
        let r = self.fs.readdir(self.dir, self.cookie, |e| {
            batch.push(e);
            batch.len() < 256
        });
        if let Err(e) = r {
            self.done = true;
            return Some(Err(e));
        }
        if batch.len() < 256 {
            self.done = true;
        }
        if let Some(last) = batch.last() {
            self.cookie = last.next_cookie;
        }
        self.buf = batch.into_iter();
        self.buf.next().map(Ok)
    }
}

/// An open regular file: `Read`, `Write` and `Seek` at a cursor, plus
/// positioned IO. Closing (drop) releases it.
pub struct File<'a> {
    fs: &'a FsCore,
    ino: InodeNo,
    pos: u64,
}

impl<'a> File<'a> {
    fn new(fs: &'a FsCore, ino: InodeNo) -> FsResult<File<'a>> {
        fs.open_inode(ino)?;
        Ok(File { fs, ino, pos: 0 })
    }

    /// The file's inode number.
    pub fn ino(&self) -> InodeNo {
        self.ino
    }

    /// Reads at `offset` without moving the cursor; short only at end of file.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> FsResult<usize> {
        self.fs.read(self.ino, offset, buf)
    }

    /// Writes at `offset` without moving the cursor.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> FsResult<usize> {
        self.fs.write(&Caller::root(), self.ino, offset, buf)
    }

    /// Truncates or extends the file to `size` bytes.
    pub fn set_len(&self, size: u64) -> FsResult<()> {
        self.fs
            .set_size(&Caller::root(), self.ino, size)
            .map(|_| ())
    }

    /// Preallocates `len` bytes at `offset` (posix_fallocate).
    pub fn allocate(&self, offset: u64, len: u64) -> FsResult<()> {
        self.fs.fallocate(
            &Caller::root(),
            self.ino,
            offset,
            len,
            FallocFlags::default(),
        )
    }

    /// The file's attributes.
    pub fn metadata(&self) -> FsResult<Attr> {
        self.fs.getattr(self.ino)
    }

    /// Makes the file's data and metadata durable.
    pub fn sync_all(&self) -> FsResult<()> {
        self.fs.fsync(self.ino, false)
    }
}

impl Drop for File<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.fs.release(self.ino) {
            tracing::warn!("release of inode {} failed: {e}", self.ino.0);
        }
    }
}

impl Read for File<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.fs.read(self.ino, self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for File<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.fs.write(&Caller::root(), self.ino, self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for File<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let base = match to {
            SeekFrom::Start(p) => {
                self.pos = p;
                return Ok(p);
            }
            SeekFrom::Current(d) => (self.pos, d),
            SeekFrom::End(d) => (self.fs.getattr(self.ino)?.size, d),
        };
        let p = base
            .0
            .checked_add_signed(base.1)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        self.pos = p;
        Ok(p)
    }
}
