//! The FUSE frontend: an adapter from `fuser` to `arborfs::fs::Fs`.
//!
//! This is the only module that knows FUSE and errno numbers. Everything
//! below talks to the filesystem through the inode-number based API of
//! `arborfs::fs` (see docs/fs-api.md); the kernel does the permission
//! checks (`default_permissions`), the filesystem checks again with the
//! caller's ids.
//!
//! Attribute and entry TTLs are 1 s. Longer ones would be safe only because
//! every change goes through this daemon; 1 s keeps a margin for now.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use arborfs::fs::{
    Attr, Caller, FileKind, Fs, FsError, FsResult, InodeNo, ROOT_INO, S_IFMT, S_IFREG, Timespec,
};
use fuser::{
    AccessFlags, Config, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, Session, SessionACL,
    WriteFlags,
};

use arborfs::fs::compress::Compression;
use arborfs::fs::{FallocFlags, RenameFlags, SeekWhence, SetAttr, TimeOrNow, XattrSet};

/// How long the kernel may cache attributes and names.
const TTL: Duration = Duration::from_secs(1);

/// The filesystem type shown in /proc/mounts is `fuse.SUBTYPE`.
pub const SUBTYPE: &str = "arborfs";

/// Largest write the kernel sends in one request.
const MAX_WRITE: u32 = 1 << 20;

/// The kernel's readahead for a mount unless `-o readahead=` says: large
/// enough that sequential reads keep several FUSE reads in flight.
pub const DEFAULT_KERNEL_READAHEAD: u64 = 4 << 20;
const MAX_KERNEL_READAHEAD: u64 = 64 << 20;

thread_local! {
    /// Each dispatch thread's read reply buffer (at most `MAX_WRITE` bytes).
    static READ_BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

// ---------------------------------------------------------------------------
// Node ids. FUSE's root is node 1; every other node id is the inode number
// (ArborFS reserves the numbers below ROOT_INO, so node 1 is never an inode).
// Kept in this one pair so that `(subvolume, inode)` node ids can come later.

/// A FUSE node id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NodeId(u64);

const FUSE_ROOT: NodeId = NodeId(1);

fn node_to_ino(node: INodeNo) -> InodeNo {
    let n = NodeId(node.0);
    if n == FUSE_ROOT {
        ROOT_INO
    } else {
        InodeNo(n.0)
    }
}

fn ino_to_node(ino: InodeNo) -> INodeNo {
    let n = if ino == ROOT_INO {
        FUSE_ROOT
    } else {
        NodeId(ino.0)
    };
    INodeNo(n.0)
}

// ---------------------------------------------------------------------------
// Errors.

/// The errno of every filesystem error.
fn errno(e: &FsError) -> Errno {
    let n = match e {
        FsError::NotFound => libc::ENOENT,
        FsError::Exists => libc::EEXIST,
        FsError::NotDir => libc::ENOTDIR,
        FsError::IsDir => libc::EISDIR,
        FsError::NotEmpty => libc::ENOTEMPTY,
        FsError::NameTooLong => libc::ENAMETOOLONG,
        FsError::Invalid(_) => libc::EINVAL,
        FsError::NotPermitted => libc::EPERM,
        FsError::AccessDenied => libc::EACCES,
        FsError::NoSpace => libc::ENOSPC,
        FsError::ReadOnly => libc::EROFS,
        FsError::NoAttr => libc::ENODATA,
        FsError::Range => libc::ERANGE,
        FsError::TooBig => libc::E2BIG,
        FsError::FileTooBig => libc::EFBIG,
        FsError::TooManyLinks => libc::EMLINK,
        FsError::CrossDevice => libc::EXDEV,
        FsError::Busy => libc::EBUSY,
        FsError::NotSupported => libc::EOPNOTSUPP,
        FsError::Fault => libc::EFAULT,
        FsError::Io(m) => {
            eprintln!("arborfs: I/O error: {m}");
            libc::EIO
        }
        FsError::Corrupted(m) => {
            eprintln!("arborfs: filesystem corrupted: {m}");
            libc::EIO
        }
        FsError::NoData => libc::ENXIO,
        FsError::Restart => {
            eprintln!("arborfs: internal error: transaction restart escaped the fs layer");
            libc::EIO
        }
    };
    Errno::from_i32(n)
}

fn err(n: i32) -> Errno {
    Errno::from_i32(n)
}

// ---------------------------------------------------------------------------
// Callers and attributes.

/// The caller of a request: its uid/gid, and its supplementary groups from
/// /proc/PID/status (only needed for non-root callers).
fn caller(req: &Request) -> Caller {
    let (uid, gid) = (req.uid(), req.gid());
    let groups = if uid == 0 || req.pid() == 0 {
        Vec::new()
    } else {
        proc_groups(req.pid())
    };
    Caller {
        uid,
        gid,
        groups,
        fsetid: uid == 0,
        umask: 0,
    }
}

/// The caller of a request that creates an inode: with FUSE_DONT_MASK the
/// kernel leaves the umask to us (the library applies it unless the
/// directory has a default ACL).
fn creator(req: &Request, umask: u32) -> Caller {
    Caller {
        umask,
        ..caller(req)
    }
}

fn proc_groups(pid: u32) -> Vec<u32> {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    parse_groups(&s)
}

/// `CAP_FSETID` from `<linux/capability.h>`.
const CAP_FSETID: u32 = 4;

/// Whether process `pid` has capability `cap` in its effective set (`None`
/// if it is gone or its status is unreadable).
fn proc_capability(pid: u32, cap: u32) -> Option<bool> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_cap_eff(&s).map(|set| set >> cap & 1 == 1)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

fn to_system_time(t: Timespec) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs())
            + Duration::from_nanos(u64::from(t.nsec))
    }
}

fn to_timespec(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timespec {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            if d.subsec_nanos() == 0 {
                Timespec {
                    sec: -(d.as_secs() as i64),
                    nsec: 0,
                }
            } else {
                Timespec {
                    sec: -(d.as_secs() as i64) - 1,
                    nsec: 1_000_000_000 - d.subsec_nanos(),
                }
            }
        }
    }
}

fn to_time_or_now(t: fuser::TimeOrNow) -> TimeOrNow {
    match t {
        fuser::TimeOrNow::Now => TimeOrNow::Now,
        fuser::TimeOrNow::SpecificTime(t) => TimeOrNow::Time(to_timespec(t)),
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: ino_to_node(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: to_system_time(a.atime),
        mtime: to_system_time(a.mtime),
        ctime: to_system_time(a.ctime),
        crtime: to_system_time(a.btime),
        kind: file_type(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev as u32,
        blksize: a.blksize,
        flags: 0,
    }
}

/// The attributes of a negative lookup reply: only node id 0 matters.
fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: fuser::FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn reply_entry(reply: ReplyEntry, r: FsResult<Attr>) {
    match r {
        Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(a.generation)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_attr(reply: ReplyAttr, r: FsResult<Attr>) {
    match r {
        Ok(a) => reply.attr(&TTL, &file_attr(&a)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_empty(reply: ReplyEmpty, r: FsResult<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Answers an xattr request: `size` 0 asks for the needed size, a buffer
/// that is too small gets ERANGE.
fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(err(libc::ERANGE));
    } else {
        reply.data(value);
    }
}

// ---------------------------------------------------------------------------
// The adapter.

/// Serves one `Fs` to the kernel. The filesystem calls are thread-safe, so
/// the session runs several dispatch threads.
pub struct ArborFuse {
    fs: Arc<Fs>,
    /// Set once the session exists: tells the kernel to drop cached pages
    /// and attributes the filesystem changed behind its back.
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    /// Open handles with write access, per inode (see `lseek`).
    writers: Mutex<HashMap<InodeNo, u32>>,
    /// The kernel took FUSE_HANDLE_KILLPRIV_V2: every write then says
    /// whether its writer lacks CAP_FSETID (FUSE_WRITE_KILL_SUIDGID). Set by
    /// `init`, before any other request.
    killpriv_v2: bool,
}

/// Setting this xattr on any file (as root) writes back all dirty data and
/// drops ArborFS's clean cached pages: `setfattr -n trusted.arborfs.drop_caches
/// -v 1 MOUNTPOINT`, the counterpart of `echo 3 > /proc/sys/vm/drop_caches`
/// for benchmarks of cold reads.
const DROP_CACHES_XATTR: &[u8] = b"trusted.arborfs.drop_caches";

/// Setting this xattr on any file (as root) gives the space of free buckets
/// back to the storage (`Fs::trim`): `arborfs trim MOUNTPOINT`, fstrim's
/// counterpart.
pub const TRIM_XATTR: &[u8] = b"trusted.arborfs.trim";

/// File handles of files opened with O_DIRECT carry this bit: their IO
/// bypasses the kernel's page cache (FOPEN_DIRECT_IO) and ours.
const DIRECT_FH: u64 = 1 << 63;

/// Entries in the READDIRPLUS that starts a directory listing. With
/// READDIRPLUS_AUTO the kernel asks for attributes at the start of every
/// listing, and later only if the reader used them (looked up or stat'ed the
/// entries); a 1 MiB reply would make it set up some 7000 inodes that
/// `ls -f` or `find -name` never look at (30 ms for 20 000 files). `ls -l`
/// and `du` use them, so their later calls are READDIRPLUS again, uncapped.
const FIRST_READDIRPLUS_ENTRIES: usize = 256;

impl ArborFuse {
    pub fn new(fs: Arc<Fs>) -> ArborFuse {
        ArborFuse {
            fs,
            notifier: Arc::new(std::sync::OnceLock::new()),
            writers: Mutex::new(HashMap::new()),
            killpriv_v2: false,
        }
    }

    /// Drops the kernel's cached pages of `[offset, offset + len)` and the
    /// inode's cached attributes. Used after changes the kernel did not
    /// make through its own page cache: direct writes (other descriptors
    /// and mappings of the file may hold older pages), copy_file_range
    /// destinations, fallocate.
    fn invalidate(&self, ino: INodeNo, offset: u64, len: u64) {
        let len = i64::try_from(len).unwrap_or(i64::MAX);
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        self.notify_inval(ino, offset, len);
    }

    /// Makes the kernel forget its cached attributes of `ino` (the mode a
    /// write just changed by clearing setuid/setgid: under
    /// HANDLE_KILLPRIV_V2 the kernel would otherwise keep honoring the
    /// old setuid bit until the attribute timeout).
    fn invalidate_attrs(&self, ino: INodeNo) {
        // A negative offset: attributes only, no pages.
        self.notify_inval(ino, -1, 0);
    }

    fn notify_inval(&self, ino: INodeNo, offset: i64, len: i64) {
        if let Some(n) = self.notifier.get() {
            // ENOENT: the kernel has no such inode cached; nothing to drop.
            if let Err(e) = n.inval_inode(ino, offset, len)
                && e.raw_os_error() != Some(libc::ENOENT)
            {
                eprintln!("arborfs: cache invalidation of inode {} failed: {e}", ino.0);
            }
        }
    }

    /// Counts a handle opened (`opened`) or released with these open flags.
    fn track_writer(&self, ino: InodeNo, flags: i32, opened: bool) {
        if flags & libc::O_ACCMODE == libc::O_RDONLY {
            return;
        }
        let mut w = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        let n = w.entry(ino).or_insert(0);
        if opened {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                w.remove(&ino);
            }
        }
    }

    /// Open flags for a new handle: O_DIRECT handles bypass every cache;
    /// others keep the kernel's cached pages across opens, which is safe
    /// because every change of file data either goes through the kernel's
    /// page cache or is followed by `invalidate`.
    fn open_reply(ino: InodeNo, flags: i32) -> (FileHandle, FopenFlags) {
        if flags & libc::O_DIRECT != 0 {
            // Direct writes that do not extend the file run in parallel (the
            // kernel takes its inode lock shared): the IO locks below order
            // them per page range, as for buffered writes.
            (
                FileHandle(ino.0 | DIRECT_FH),
                FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES,
            )
        } else {
            (FileHandle(ino.0), FopenFlags::FOPEN_KEEP_CACHE)
        }
    }

    fn has_writers(&self, ino: InodeNo) -> bool {
        let w = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        w.contains_key(&ino)
    }
}

impl Filesystem for ArborFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        // Take whatever readahead the kernel offers: `mount` set it.
        if let Err(offered) = config.set_max_readahead(MAX_KERNEL_READAHEAD as u32) {
            let _ = config.set_max_readahead(offered);
        }
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            // POSIX ACLs: the kernel checks permissions with them (reading
            // each inode's ACL once through getxattr, then from its cache),
            // and leaves the umask to us, since a directory's default ACL
            // replaces it; we keep the mode and the ACL in step.
            InitFlags::FUSE_POSIX_ACL,
            InitFlags::FUSE_DONT_MASK,
            // We clear setuid/setgid on write, truncate and chown ourselves
            // (the library does, as a kernel filesystem would). In return
            // the kernel marks the superblock SB_NOSEC, and stops asking
            // for security.capability (a GETXATTR round trip) before every
            // write to a file that has no such attribute.
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ] {
            // Old kernels without one of these still work.
            let taken = config.add_capabilities(cap).is_ok();
            if cap == InitFlags::FUSE_HANDLE_KILLPRIV_V2 {
                self.killpriv_v2 = taken;
            }
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self
            .fs
            .lookup(&caller(req), node_to_ino(parent), name.as_bytes())
        {
            // A negative entry (node 0) the kernel may keep for TTL: builds
            // and shells probe the same missing names (include paths, PATH)
            // over and over. Safe because every change of a name goes
            // through this kernel, which drops the negative entry itself.
            Err(FsError::NotFound) => reply.entry(&TTL, &negative_entry(), Generation(0)),
            r => reply_entry(reply, r),
        }
    }

    fn forget(&self, _req: &Request, _ino: INodeNo, _nlookup: u64) {
        // Inodes live by their links and open handles, not by lookup counts.
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply_attr(reply, self.fs.getattr(node_to_ino(ino)));
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<fuser::TimeOrNow>,
        mtime: Option<fuser::TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let ino = node_to_ino(ino);
        let mut who = caller(req);
        if size.is_some() && who.fsetid && req.pid() != 0 {
            // A truncate by root without CAP_FSETID (a container, setpriv)
            // must clear setuid/setgid as on ext4. The kernel marks such a
            // setattr (FATTR_KILL_SUIDGID) but fuser does not pass that on,
            // so ask the caller's capabilities; truncates by root are rare
            // enough for the /proc read.
            who.fsetid = proc_capability(req.pid(), CAP_FSETID).unwrap_or(true);
        }
        let set = SetAttr {
            mode,
            uid,
            gid,
            atime: atime.map(to_time_or_now),
            mtime: mtime.map(to_time_or_now),
            ctime: ctime.map(to_timespec),
        };
        let others = set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.atime.is_some()
            || set.mtime.is_some()
            || set.ctime.is_some();
        let r = (|| {
            let mut attr = None;
            if let Some(size) = size {
                // The kernel checked write access (at open, for ftruncate).
                // Clearing setuid/setgid is ours (FUSE_HANDLE_KILLPRIV_V2):
                // set_size does it for callers without CAP_FSETID.
                attr = Some(self.fs.set_size(&who, ino, size)?);
            }
            if others || attr.is_none() {
                attr = Some(if others {
                    self.fs.setattr(&who, ino, &set)?
                } else {
                    self.fs.getattr(ino)?
                });
            }
            Ok(attr.expect("set above"))
        })();
        reply_attr(reply, r);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(node_to_ino(ino)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = self.fs.mknod(
            &creator(req, umask),
            node_to_ino(parent),
            name.as_bytes(),
            mode,
            u64::from(rdev),
        );
        reply_entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(
            reply,
            self.fs.mkdir(
                &creator(req, umask),
                node_to_ino(parent),
                name.as_bytes(),
                mode & 0o7777,
            ),
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
            reply,
            self.fs
                .unlink(&caller(req), node_to_ino(parent), name.as_bytes()),
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
            reply,
            self.fs
                .rmdir(&caller(req), node_to_ino(parent), name.as_bytes()),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.fs.symlink(
            &caller(req),
            node_to_ino(parent),
            link_name.as_bytes(),
            target.as_os_str().as_bytes(),
        );
        reply_entry(reply, r);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let known = fuser::RenameFlags::RENAME_NOREPLACE | fuser::RenameFlags::RENAME_EXCHANGE;
        if !known.contains(flags) {
            // RENAME_WHITEOUT is for overlayfs only.
            reply.error(err(libc::EINVAL));
            return;
        }
        let f = RenameFlags {
            noreplace: flags.contains(fuser::RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(fuser::RenameFlags::RENAME_EXCHANGE),
        };
        if f.noreplace && f.exchange {
            reply.error(err(libc::EINVAL));
            return;
        }
        let r = self.fs.rename(
            &caller(req),
            node_to_ino(parent),
            name.as_bytes(),
            node_to_ino(newparent),
            newname.as_bytes(),
            f,
        );
        reply_empty(reply, r);
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // Every link of an inode is the same node; the reply carries the new nlink.
        let r = self.fs.link(
            &caller(req),
            node_to_ino(ino),
            node_to_ino(newparent),
            newname.as_bytes(),
        );
        reply_entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let ino = node_to_ino(ino);
        match self.fs.open_inode(ino) {
            Ok(_) => {
                self.track_writer(ino, flags.0, true);
                let (fh, fl) = Self::open_reply(ino, flags.0);
                reply.opened(fh, fl)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        READ_BUF.with(|cell| {
            // Reused per thread: the fs writes the `n` bytes it returns, and
            // only those are sent, so the buffer needs no zeroing.
            let mut buf = cell.take();
            if buf.len() < size as usize {
                buf.resize(size as usize, 0);
            }
            let buf_ref = &mut buf[..size as usize];
            let r = if fh.0 & DIRECT_FH != 0 {
                self.fs.read_direct(node_to_ino(ino), offset, buf_ref)
            } else {
                self.fs.read(node_to_ino(ino), offset, buf_ref)
            };
            match r {
                Ok(n) => reply.data(&buf_ref[..n.min(buf_ref.len())]),
                Err(e) => reply.error(errno(&e)),
            }
            cell.set(buf);
        })
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut who = caller(req);
        if self.killpriv_v2 {
            // The kernel knows the writer's capabilities; the uid does not
            // (root in a container without CAP_FSETID must clear setuid).
            who.fsetid = !write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        }
        let direct = fh.0 & DIRECT_FH != 0;
        match self
            .fs
            .write_reporting(&who, node_to_ino(ino), offset, data, direct)
        {
            Ok(w) => {
                if direct {
                    self.invalidate(ino, offset, data.len() as u64);
                }
                if w.cleared_setid {
                    self.invalidate_attrs(ino);
                }
                reply.written(w.bytes as u32)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is buffered per handle (writes reach the filesystem before
        // they return), so close has nothing to do here. ENOSYS makes the
        // kernel stop sending FLUSH at all: one round trip less per close.
        reply.error(err(libc::ENOSYS));
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let ino = node_to_ino(ino);
        self.track_writer(ino, flags.0, false);
        reply_empty(reply, self.fs.release(ino));
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.fsync(node_to_ino(ino), datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.getattr(node_to_ino(ino)) {
            Ok(a) if a.kind == FileKind::Directory => {
                reply.opened(FileHandle(0), FopenFlags::empty())
            }
            Ok(_) => reply.error(err(libc::ENOTDIR)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.fs.readdir(node_to_ino(ino), offset, |e| {
            let full = reply.add(
                ino_to_node(e.ino),
                e.next_cookie,
                file_type(e.kind),
                OsStr::from_bytes(&e.name),
            );
            !full
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let mut room = if offset == 0 {
            FIRST_READDIRPLUS_ENTRIES
        } else {
            usize::MAX
        };
        let r = self.fs.readdir(node_to_ino(ino), offset, |e| {
            if room == 0 {
                return false;
            }
            // An entry removed since the listing started is skipped.
            let Ok(a) = self.fs.getattr(e.ino) else {
                return true;
            };
            room -= 1;
            let full = reply.add(
                ino_to_node(e.ino),
                e.next_cookie,
                OsStr::from_bytes(&e.name),
                &TTL,
                &file_attr(&a),
                Generation(a.generation),
            );
            !full
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.sync());
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
        );
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        if position != 0 {
            reply.error(err(libc::EINVAL));
            return;
        }
        // Controls, not attributes: root only (like /proc/sys/vm/drop_caches
        // and fstrim); nothing is stored.
        let control: Option<fn(&Fs) -> FsResult<()>> = match name.as_bytes() {
            DROP_CACHES_XATTR => Some(|fs| fs.drop_caches()),
            TRIM_XATTR => Some(|fs| fs.trim().map(|_| ())),
            _ => None,
        };
        if let Some(run) = control {
            match req.uid() {
                0 => reply_empty(reply, run(&self.fs)),
                _ => reply.error(err(libc::EPERM)),
            }
            return;
        }
        let how = match flags {
            0 => XattrSet::Any,
            libc::XATTR_CREATE => XattrSet::Create,
            libc::XATTR_REPLACE => XattrSet::Replace,
            _ => {
                reply.error(err(libc::EINVAL));
                return;
            }
        };
        let r = self
            .fs
            .setxattr(&caller(req), node_to_ino(ino), name.as_bytes(), value, how);
        reply_empty(reply, r);
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self
            .fs
            .getxattr(&caller(req), node_to_ino(ino), name.as_bytes())
        {
            Ok(v) => reply_xattr(reply, size, &v),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(&caller(req), node_to_ino(ino)) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                reply_xattr(reply, size, &buf);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(
            reply,
            self.fs
                .removexattr(&caller(req), node_to_ino(ino), name.as_bytes()),
        );
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let m = mask.bits() as u32 & 7;
        reply_empty(reply, self.fs.access(&caller(req), node_to_ino(ino), m));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let who = creator(req, umask);
        let parent = node_to_ino(parent);
        let kind = if mode & S_IFMT == 0 {
            S_IFREG
        } else {
            mode & S_IFMT
        };
        let mode = kind | (mode & 0o7777);
        let r = match self.fs.mknod(&who, parent, name.as_bytes(), mode, 0) {
            // Someone else created it since the kernel's lookup: open theirs.
            Err(FsError::Exists) if flags & libc::O_EXCL == 0 => {
                self.fs.lookup(&who, parent, name.as_bytes())
            }
            r => r,
        };
        let r = r.and_then(|a| self.fs.open_inode(a.ino));
        if let Ok(a) = &r {
            self.track_writer(a.ino, flags, true);
        }
        match r {
            Ok(a) => {
                let (fh, fl) = Self::open_reply(a.ino, flags);
                reply.created(&TTL, &file_attr(&a), Generation(a.generation), fh, fl)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 {
            reply.error(err(libc::EOPNOTSUPP));
            return;
        }
        let flags = FallocFlags {
            keep_size: mode & libc::FALLOC_FL_KEEP_SIZE != 0,
            punch_hole: mode & libc::FALLOC_FL_PUNCH_HOLE != 0,
            zero_range: mode & libc::FALLOC_FL_ZERO_RANGE != 0,
        };
        let r = self
            .fs
            .fallocate(&caller(req), node_to_ino(ino), offset, length, flags);
        if r.is_ok() && (flags.punch_hole || flags.zero_range) {
            self.invalidate(ino, offset, length);
        }
        reply_empty(reply, r);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let whence = match whence {
            libc::SEEK_DATA => SeekWhence::Data,
            libc::SEEK_HOLE => SeekWhence::Hole,
            // SEEK_SET/CUR/END never reach the filesystem.
            _ => {
                reply.error(err(libc::EINVAL));
                return;
            }
        };
        if offset < 0 {
            reply.error(err(libc::ENXIO));
            return;
        }
        let ino = node_to_ino(ino);
        // Without writeback_cache the kernel does not write dirty pages of
        // a shared writable mapping back before FUSE_LSEEK, so the extents
        // may not show data that is already in the file: a hole reported
        // there would make `cp` and friends skip it. Such a mapping needs a
        // handle opened for writing (its release comes only after munmap),
        // so while one is open the answer is the conservative one: all data
        // up to EOF.
        let r = if self.has_writers(ino) {
            self.fs.getattr(ino).and_then(|a| {
                if offset as u64 >= a.size {
                    Err(FsError::NoData)
                } else if whence == SeekWhence::Data {
                    Ok(offset as u64)
                } else {
                    Ok(a.size)
                }
            })
        } else {
            self.fs.lseek(ino, offset as u64, whence)
        };
        match r {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        if !flags.is_empty() {
            reply.error(err(libc::EINVAL));
            return;
        }
        // A reply counts at most u32::MAX bytes; the caller loops for more.
        let len = len.min(u64::from(u32::MAX) & !4095);
        let r = self.fs.copy_file_range(
            &caller(req),
            node_to_ino(ino_in),
            offset_in,
            node_to_ino(ino_out),
            offset_out,
            len,
        );
        match r {
            Ok(n) => {
                self.invalidate(ino_out, offset_out, n);
                reply.written(n as u32)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }
}

// ---------------------------------------------------------------------------
// Mounting.

/// Mount options understood by the daemon.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountOpts {
    pub read_only: bool,
    pub allow_other: bool,
    pub noatime: bool,
    pub nodev: bool,
    pub nosuid: bool,
    pub noexec: bool,
    /// `size=`: size of a new image.
    pub size: Option<String>,
    /// `cache_size=SIZE`: byte limit of the page cache (default 64M).
    pub cache_size: Option<u64>,
    /// `remount`: change the flags of a live mount.
    pub remount: bool,
    /// `readahead=SIZE`: the kernel's readahead window for this mount
    /// (default `DEFAULT_KERNEL_READAHEAD`; needs root, else the kernel's
    /// default and the page cache's own readahead are used).
    pub readahead: Option<u64>,
    /// `compression=none|lz4|zstd[:LEVEL]`: overrides the image's default
    /// for files without their own option.
    pub compression: Option<Compression>,
}

/// Parses a `-o` list. Generic mount(8) options are accepted; the ones the
/// kernel knows as flags (nodev, nosuid, noexec, ro, noatime) are applied.
pub fn parse_mount_opts(list: &str) -> Result<MountOpts> {
    // Mounted by root, it behaves like a kernel filesystem: every user may
    // use it (the kernel checks permissions: default_permissions), and
    // devices and setuid work unless nodev/nosuid say otherwise. Mounted by
    // another user, fusermount's rules apply: only that user, nodev, nosuid.
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut o = MountOpts {
        nodev: !root,
        nosuid: !root,
        allow_other: root,
        ..Default::default()
    };
    for opt in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match opt {
            "ro" => o.read_only = true,
            "remount" => o.remount = true,
            "rw" => o.read_only = false,
            "allow_other" => o.allow_other = true,
            "noallow_other" => o.allow_other = false,
            "noatime" => o.noatime = true,
            "atime" | "relatime" | "strictatime" | "nodiratime" => o.noatime = false,
            "dev" => o.nodev = false,
            "nodev" => o.nodev = true,
            "suid" => o.nosuid = false,
            "nosuid" => o.nosuid = true,
            "exec" => o.noexec = false,
            "noexec" => o.noexec = true,
            "default_permissions"
            | "auto"
            | "noauto"
            | "user"
            | "nouser"
            | "users"
            | "defaults"
            | "_netdev"
            | "nofail"
            | "async" => {}
            _ if opt.starts_with("size=") => o.size = Some(opt["size=".len()..].to_string()),
            _ if opt.starts_with("cache_size=") => {
                let v = &opt["cache_size=".len()..];
                let n = crate::parse_size(v).with_context(|| format!("bad cache_size {v:?}"))?;
                if n < 1 << 20 {
                    anyhow::bail!("cache_size {v:?} is below the minimum of 1M");
                }
                o.cache_size = Some(n);
            }
            _ if opt.starts_with("readahead=") => {
                let v = &opt["readahead=".len()..];
                let n = crate::parse_size(v).with_context(|| format!("bad readahead {v:?}"))?;
                if n > MAX_KERNEL_READAHEAD {
                    anyhow::bail!("readahead {v:?} is above the maximum of 64M");
                }
                o.readahead = Some(n);
            }
            _ if opt.starts_with("compression=") => {
                let v = &opt["compression=".len()..];
                o.compression = Some(Compression::parse(v).with_context(|| {
                    format!("bad compression {v:?} (expected none, lz4, zstd or zstd:LEVEL)")
                })?);
            }
            // mount(8) passes a live mount's FUSE options back on a remount.
            _ if [
                "user_id=",
                "group_id=",
                "rootmode=",
                "max_read=",
                "blksize=",
                "fd=",
            ]
            .iter()
            .any(|p| opt.starts_with(p)) => {}
            // mount(8) and fstab pass these along; they mean nothing here.
            _ if opt.starts_with("x-")
                || opt.starts_with("comment=")
                || opt.starts_with("fsname=")
                || opt.starts_with("subtype=") => {}
            _ => bail!("unknown mount option {opt:?}"),
        }
    }
    Ok(o)
}

/// A mounted, initialized FUSE session, ready to run.
pub struct Mounted {
    session: Session<ArborFuse>,
}

impl Mounted {
    /// Serves requests until the filesystem is unmounted.
    pub fn run(self) -> Result<()> {
        self.session.run().context("FUSE session failed")
    }
}

fn dispatch_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(4, 8)
}

/// Mounts `fs` on `mountpoint` as type `fuse.arborfs` with source `image`.
/// As root this is a direct mount(2); otherwise fusermount3 does it.
pub fn mount(fs: Arc<Fs>, image: &Path, mountpoint: &Path, o: &MountOpts) -> Result<Mounted> {
    let mut config = Config::default();
    config.n_threads = Some(dispatch_threads());
    config.clone_fd = true;
    let adapter = ArborFuse::new(fs.clone());
    let notifier = adapter.notifier.clone();
    let mounted = mount_session(adapter, &notifier, image, mountpoint, o, config)?;
    // The INIT reply caps the window at what we reply there; `init`
    // accepts whatever the kernel offers, so the new window holds whether
    // the handshake ran before this write or runs after it. The kernel
    // reading ahead makes the page cache's own readahead a
    // second copy of the same pages: turn that off if it worked (if not,
    // not root: the kernel's default window and ours stay).
    if set_kernel_readahead(mountpoint, o.readahead.unwrap_or(DEFAULT_KERNEL_READAHEAD)).is_ok() {
        fs.set_readahead(0);
    }
    Ok(mounted)
}

/// Writes the readahead window of the FUSE mount on `mountpoint` to its
/// backing device info (root only).
fn set_kernel_readahead(mountpoint: &Path, bytes: u64) -> std::io::Result<()> {
    let entry = crate::mount_cmd::find_mount(mountpoint)
        .ok_or_else(|| std::io::Error::other("not in /proc/self/mountinfo"))?;
    std::fs::write(
        format!("/sys/class/bdi/{}/read_ahead_kb", entry.dev),
        format!("{}\n", bytes / 1024),
    )
}

fn mount_session(
    adapter: ArborFuse,
    notifier: &Arc<std::sync::OnceLock<fuser::Notifier>>,
    image: &Path,
    mountpoint: &Path,
    o: &MountOpts,
    mut config: Config,
) -> Result<Mounted> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let fd = mount_direct(image, mountpoint, o)?;
        config.acl = SessionACL::All; // the kernel enforces allow_other itself
        match Session::from_fd(adapter, fd, SessionACL::All, config) {
            Ok(session) => {
                let _ = notifier.set(session.notifier());
                Ok(Mounted { session })
            }
            Err(e) => {
                let _ = unmount(mountpoint, true);
                Err(e).context("FUSE handshake failed")
            }
        }
    } else {
        let mut opts = vec![
            MountOption::FSName(image.display().to_string()),
            MountOption::Subtype(SUBTYPE.into()),
            MountOption::DefaultPermissions,
        ];
        for (on, opt) in [
            (o.read_only, MountOption::RO),
            (o.noatime, MountOption::NoAtime),
            (o.nodev, MountOption::NoDev),
            (o.nosuid, MountOption::NoSuid),
            (o.noexec, MountOption::NoExec),
        ] {
            if on {
                opts.push(opt);
            }
        }
        config.mount_options = opts;
        config.acl = if o.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        };
        let session = Session::new(adapter, mountpoint, &config).with_context(|| {
            format!(
                "cannot mount on {} (through fusermount3)",
                mountpoint.display()
            )
        })?;
        let _ = notifier.set(session.notifier());
        Ok(Mounted { session })
    }
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).with_context(|| format!("NUL in path {}", p.display()))
}

/// Opens /dev/fuse and mounts it, returning the connection.
fn mount_direct(image: &Path, mountpoint: &Path, o: &MountOpts) -> Result<OwnedFd> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .context("cannot open /dev/fuse (is the fuse module loaded?)")?;
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid},default_permissions",
        dev.as_raw_fd()
    );
    if o.allow_other {
        data.push_str(",allow_other");
    }
    let mut flags: libc::c_ulong = 0;
    for (on, f) in [
        (o.read_only, libc::MS_RDONLY),
        (o.noatime, libc::MS_NOATIME),
        (o.nodev, libc::MS_NODEV),
        (o.nosuid, libc::MS_NOSUID),
        (o.noexec, libc::MS_NOEXEC),
    ] {
        if on {
            flags |= f;
        }
    }
    let source = cstr(image)?;
    let target = cstr(mountpoint)?;
    let fstype = CString::new(format!("fuse.{SUBTYPE}")).expect("no NUL");
    let data = CString::new(data).expect("no NUL");
    // SAFETY: every pointer is a live NUL-terminated string owned above.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        bail!("mount({}) failed: {e}", mountpoint.display());
    }
    Ok(OwnedFd::from(dev))
}

/// Changes the flags of a live mount (`-o remount,...`), as root. FUSE
/// takes a remount without the daemon; a read-only remount makes the
/// kernel refuse writes with EROFS.
pub fn remount(mountpoint: &Path, o: &MountOpts) -> Result<()> {
    if let Some(bytes) = o.readahead {
        set_kernel_readahead(mountpoint, bytes)
            .with_context(|| format!("cannot set the readahead of {}", mountpoint.display()))?;
    }
    let target = cstr(mountpoint)?;
    let mut flags = libc::MS_REMOUNT;
    for (on, f) in [
        (o.read_only, libc::MS_RDONLY),
        (o.noatime, libc::MS_NOATIME),
        (o.nodev, libc::MS_NODEV),
        (o.nosuid, libc::MS_NOSUID),
        (o.noexec, libc::MS_NOEXEC),
    ] {
        if on {
            flags |= f;
        }
    }
    // SAFETY: `target` is a live NUL-terminated string; the others are null,
    // which a remount allows.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        bail!("remount of {} failed: {e}", mountpoint.display());
    }
    Ok(())
}

/// Why an unmount failed.
#[derive(Debug)]
pub enum UnmountError {
    /// Files are still open (EBUSY).
    Busy,
    Other(anyhow::Error),
}

impl std::fmt::Display for UnmountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnmountError::Busy => write!(f, "target is busy"),
            UnmountError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

/// Unmounts a FUSE mount: umount2(2) as root, `fusermount3 -u` otherwise.
/// `lazy` detaches it even while files are open (the daemon then ends when
/// the last one closes).
pub fn unmount(mountpoint: &Path, lazy: bool) -> std::result::Result<(), UnmountError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let target = cstr(mountpoint).map_err(UnmountError::Other)?;
        let flags = if lazy { libc::MNT_DETACH } else { 0 };
        // SAFETY: `target` is a live NUL-terminated string.
        let r = unsafe { libc::umount2(target.as_ptr(), flags) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EBUSY) => Err(UnmountError::Busy),
            _ => Err(UnmountError::Other(anyhow::anyhow!(
                "cannot unmount {}: {e}",
                mountpoint.display()
            ))),
        };
    }
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd
        .arg("--")
        .arg(mountpoint)
        .output()
        .map_err(|e| UnmountError::Other(anyhow::anyhow!("cannot run fusermount3: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if msg.contains("busy") {
        Err(UnmountError::Busy)
    } else {
        Err(UnmountError::Other(anyhow::anyhow!(
            "fusermount3 -u {}: {msg}",
            mountpoint.display()
        )))
    }
}

/// The canonical form of a mount point path, as /proc/self/mountinfo shows it.
pub fn canonical_mountpoint(p: &Path) -> Result<PathBuf> {
    let c = p
        .canonicalize()
        .with_context(|| format!("mount point {}", p.display()))?;
    if !c.is_dir() {
        bail!("mount point {} is not a directory", p.display());
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_round_trip() {
        assert_eq!(node_to_ino(INodeNo(1)), ROOT_INO);
        assert_eq!(ino_to_node(ROOT_INO), INodeNo(1));
        for n in [4097u64, 5000, u64::MAX] {
            assert_eq!(node_to_ino(ino_to_node(InodeNo(n))), InodeNo(n));
        }
    }

    #[test]
    fn times_round_trip() {
        for t in [
            Timespec { sec: 0, nsec: 0 },
            Timespec {
                sec: 1_700_000_000,
                nsec: 123_456_789,
            },
            Timespec { sec: -1, nsec: 500 },
            Timespec {
                sec: -86_400,
                nsec: 0,
            },
        ] {
            assert_eq!(to_timespec(to_system_time(t)), t);
        }
    }

    #[test]
    fn groups_parse() {
        let s = "Name:\tsh\nUid:\t1\t1\t1\t1\nGroups:\t4 24 27 \nNgid:\t0\n";
        assert_eq!(parse_groups(s), vec![4, 24, 27]);
        assert_eq!(parse_groups("Groups:\t\n"), Vec::<u32>::new());
        assert_eq!(
            parse_cap_eff("Name:\tx\nCapEff:\t000001fffeffffef\n"),
            Some(0x1fffeffffef)
        );
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
        // this test process can be asked; a process that is gone cannot
        let me = std::process::id();
        assert!(proc_capability(me, CAP_FSETID).is_some());
        assert_eq!(proc_capability(u32::MAX, CAP_FSETID), None);
    }

    #[test]
    fn errno_covers_variants() {
        assert_eq!(errno(&FsError::NotFound).code(), libc::ENOENT);
        assert_eq!(errno(&FsError::ReadOnly).code(), libc::EROFS);
        assert_eq!(errno(&FsError::NoAttr).code(), libc::ENODATA);
        assert_eq!(errno(&FsError::NotSupported).code(), libc::EOPNOTSUPP);
    }

    #[test]
    fn mount_options_parse() {
        let o = parse_mount_opts("rw,nodev,noatime,allow_other,size=2G,defaults,_netdev").unwrap();
        assert!(!o.read_only && o.noatime && o.allow_other && o.nodev);
        assert_eq!(o.size.as_deref(), Some("2G"));
        let o = parse_mount_opts("ro,dev,suid,exec").unwrap();
        assert!(o.read_only && !o.nodev && !o.nosuid && !o.noexec);
        // What mount(8) hands the helper on `mount -o remount,ro MNT`.
        let o = parse_mount_opts(
            "ro,nosuid,nodev,noatime,remount,user_id=0,group_id=0,default_permissions",
        )
        .unwrap();
        assert!(o.remount && o.read_only && o.noatime);
        assert!(parse_mount_opts("bogus").is_err());
        assert_eq!(
            parse_mount_opts("cache_size=256M").unwrap().cache_size,
            Some(256 << 20)
        );
        assert!(parse_mount_opts("cache_size=1K").is_err());
        assert!(parse_mount_opts("cache_size=lots").is_err());
        assert_eq!(
            parse_mount_opts("readahead=4M").unwrap().readahead,
            Some(4 << 20)
        );
        assert_eq!(parse_mount_opts("readahead=0").unwrap().readahead, Some(0));
        assert!(parse_mount_opts("readahead=1G").is_err());
        let o = parse_mount_opts("rw,compression=zstd:7").unwrap();
        assert_eq!(o.compression, Compression::parse("zstd:7"));
        assert_eq!(
            parse_mount_opts("compression=none").unwrap().compression,
            Some(Compression::NONE)
        );
        assert!(parse_mount_opts("compression=gzip").is_err());
        assert!(parse_mount_opts("compression=zstd:23").is_err());
    }
}
