//! `arborfs mount`, `umount` and `usage`: the daemon's life cycle around
//! the FUSE adapter in `fuse.rs`.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arborfs::alloc::alloc_format::Counter;
use arborfs::device::{Device, FileDevice};
use arborfs::fs::{Fs, FsOptions};
use arborfs::sb::{FormatOptions, Superblock};
use arborfs::{EngineOptions, SECTOR_BYTES};
use serde_json::json;

use crate::fuse::{self, MountOpts, UnmountError};

/// How long `mount` waits for a previous daemon to release the image.
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// How long `umount` waits for the daemon to finish.
const UMOUNT_WAIT: Duration = Duration::from_secs(30);
/// Default size of an image that `mount` formats.
const DEFAULT_IMAGE_SIZE: u64 = 1 << 30;

// ---------------------------------------------------------------------------
// /proc/self/mountinfo

/// One line of /proc/self/mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mounted filesystem (its st_dev; for FUSE also
    /// the name of its backing device info in /sys/class/bdi).
    pub dev: String,
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
    pub options: String,
}

/// Undoes the octal escapes (`\040` for a space) of mountinfo fields.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            Some(MountEntry {
                dev: pre.get(2)?.to_string(),
                mountpoint: PathBuf::from(unescape(pre.get(4)?)),
                options: pre.get(5)?.to_string(),
                fstype: post.first()?.to_string(),
                source: unescape(post.get(1)?),
            })
        })
        .collect()
}

/// The topmost mount on `mountpoint`, if any.
pub fn find_mount(mountpoint: &Path) -> Option<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&text)
        .into_iter()
        .rev()
        .find(|e| e.mountpoint == mountpoint)
}

fn is_arborfs_mount(mountpoint: &Path) -> bool {
    find_mount(mountpoint).is_some_and(|e| e.fstype == format!("fuse.{}", fuse::SUBTYPE))
}

// ---------------------------------------------------------------------------
// mount

/// `arborfs mount [-f] [-o OPTS] IMAGE MOUNTPOINT`.
pub fn cmd_mount(image: &Path, mountpoint: &Path, opts: &str, foreground: bool) -> Result<()> {
    let o = fuse::parse_mount_opts(opts)?;
    let mnt = fuse::canonical_mountpoint(mountpoint)?;
    if o.remount {
        return fuse::remount(&mnt, &o);
    }
    if foreground {
        return run_daemon(image, &mnt, &o, None);
    }
    daemonize(image, &mnt, &o)
}

/// Forks before anything is opened (no threads exist yet, so the child is
/// whole); the child mounts and reports through a pipe; the parent exits 0
/// only once the mount shows in /proc/self/mountinfo.
fn daemonize(image: &Path, mnt: &Path, o: &MountOpts) -> Result<()> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a live array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe");
    }
    // SAFETY: both descriptors were just created and are owned only here.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the process has one thread here, so the child gets a whole copy.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        drop(rd);
        // SAFETY: setsid has no preconditions; it detaches from the terminal.
        unsafe { libc::setsid() };
        // An error before the mount was live goes to the parent through the
        // pipe; after, stdio is /dev/null.
        let code = i32::from(run_daemon(image, mnt, o, Some(wr)).is_err());
        std::process::exit(code);
    }
    drop(wr);
    let mut msg = String::new();
    let _ = std::fs::File::from(rd).read_to_string(&mut msg);
    if let Some(rest) = msg.strip_prefix("OK") {
        let _ = rest;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_arborfs_mount(mnt) {
            if Instant::now() > deadline {
                bail!(
                    "the daemon reported success but {} is not in /proc/self/mountinfo",
                    mnt.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        return Ok(());
    }
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is a live int.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let msg = msg.strip_prefix("ERR ").unwrap_or(&msg).trim();
    if msg.is_empty() {
        bail!("the mount daemon exited without mounting (status {status:#x})");
    }
    bail!("{msg}")
}

/// Tells the parent how the mount went; a no-op in the foreground.
struct Notify {
    fd: Option<OwnedFd>,
    /// Started by `daemonize`, so it drops its terminal once mounted.
    daemon: bool,
}

impl Notify {
    fn send(&mut self, msg: &str) {
        if let Some(fd) = self.fd.take() {
            let mut f = std::fs::File::from(fd);
            let _ = f.write_all(msg.as_bytes());
        }
    }
}

/// Opens (formatting if new or empty) and locks the image, mounts it and
/// serves until unmounted; then closes the filesystem cleanly.
fn run_daemon(image: &Path, mnt: &Path, o: &MountOpts, notify: Option<OwnedFd>) -> Result<()> {
    let mut notify = Notify {
        daemon: notify.is_some(),
        fd: notify,
    };
    match serve(image, mnt, o, &mut notify) {
        Ok(()) => Ok(()),
        Err(e) => {
            notify.send(&format!("ERR {e:#}"));
            Err(e)
        }
    }
}

fn serve(image: &Path, mnt: &Path, o: &MountOpts, notify: &mut Notify) -> Result<()> {
    // SIGTERM/SIGINT/SIGHUP are taken by a thread (sigwait) once the mount
    // is live; block them now so every later thread inherits the mask.
    let sigs = blocked_signals()?;

    let was_new = std::fs::metadata(image).map_or(true, |m| m.is_file() && m.len() == 0);
    if was_new && o.read_only {
        bail!(
            "{} is empty or missing; a read-only mount cannot format it",
            image.display()
        );
    }
    let dev = if was_new {
        let size = match &o.size {
            Some(s) => crate::parse_size(s)?,
            None => DEFAULT_IMAGE_SIZE,
        };
        FileDevice::create(image, size)
            .with_context(|| format!("cannot create {}", image.display()))?
    } else {
        FileDevice::open(image, !o.read_only)
            .with_context(|| format!("cannot open {}", image.display()))?
    };
    let dev = Arc::new(dev);
    lock_image(&dev, image)?;
    if was_new && Superblock::read(&*dev).is_err() {
        Fs::format(dev.clone(), &FormatOptions::for_device(dev.size()))
            .with_context(|| format!("cannot format {}", image.display()))?;
    }
    let image_abs = image.canonicalize().unwrap_or_else(|_| image.to_path_buf());
    let fs = Fs::open(
        dev.clone(),
        FsOptions {
            engine: EngineOptions {
                read_only: o.read_only,
                ..Default::default()
            },
            noatime: o.noatime,
            compression: o.compression,
            page_cache_bytes: o.cache_size.unwrap_or(0) as usize,
            // The kernel's page cache keeps what FUSE reads return.
            upper_cache: true,
            ..Default::default()
        },
    )
    .with_context(|| format!("cannot open the filesystem on {}", image.display()))?;
    let fs = Arc::new(fs);

    let mounted = match fuse::mount(fs.clone(), &image_abs, mnt, o) {
        Ok(m) => m,
        Err(e) => {
            close_fs(fs)?;
            return Err(e);
        }
    };
    spawn_signal_thread(sigs, mnt.to_path_buf())?;
    notify.send("OK\n");
    if notify.daemon {
        detach_stdio();
    }
    let served = mounted.run();
    let closed = close_fs(fs);
    drop(dev); // releases the image lock, after the superblock is clean
    served?;
    closed
}

fn close_fs(fs: Arc<Fs>) -> Result<()> {
    let Some(fs) = Arc::into_inner(fs) else {
        bail!(
            "internal error: the filesystem is still in use after the session ended; not closing it"
        );
    };
    fs.close()
        .context("closing the filesystem failed; the next mount replays the journal")
}

/// Takes the image's exclusive lock, waiting (up to LOCK_WAIT) for a
/// previous daemon that may still be finishing an unmount.
fn lock_image(dev: &FileDevice, image: &Path) -> Result<()> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        if dev
            .try_lock_exclusive()
            .with_context(|| format!("cannot lock {}", image.display()))?
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} is in use by another arborfs process (still locked after {} s); is it mounted elsewhere?",
                image.display(),
                LOCK_WAIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which this process owns.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

fn blocked_signals() -> Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialize it,
    // and pthread_sigmask reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            bail!("pthread_sigmask: {}", std::io::Error::from_raw_os_error(r));
        }
        Ok(set)
    }
}

/// On SIGTERM/SIGINT/SIGHUP: unmount, so the session ends and the
/// filesystem is closed cleanly (lazily if files are still open).
fn spawn_signal_thread(set: libc::sigset_t, mnt: PathBuf) -> Result<()> {
    std::thread::Builder::new()
        .name("arborfs-signals".into())
        .spawn(move || {
            loop {
                let mut sig = 0;
                // SAFETY: `set` and `sig` are live locals.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    return;
                }
                match fuse::unmount(&mnt, false) {
                    Ok(()) => {}
                    Err(UnmountError::Busy) => {
                        eprintln!("arborfs: {} is busy; detaching it, the daemon ends when the last file closes", mnt.display());
                        let _ = fuse::unmount(&mnt, true);
                    }
                    Err(e) => eprintln!("arborfs: unmount on signal {sig}: {e}"),
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

// ---------------------------------------------------------------------------
// umount

/// The canonical mount point and mount entry of the ArborFS mount at
/// `mountpoint`, or an error saying what is there instead.
fn arborfs_mount(mountpoint: &Path) -> Result<(PathBuf, MountEntry)> {
    let mnt = mountpoint
        .canonicalize()
        .with_context(|| format!("mount point {}", mountpoint.display()))?;
    let entry = find_mount(&mnt).with_context(|| format!("{} is not mounted", mnt.display()))?;
    let want = format!("fuse.{}", fuse::SUBTYPE);
    if entry.fstype != want {
        bail!("{} is a {} mount, not {want}", mnt.display(), entry.fstype);
    }
    Ok((mnt, entry))
}

/// `arborfs sync MOUNTPOINT`: everything written to the mount so far is on
/// disk when it returns. Linux sends no FUSE request for sync(2) or
/// syncfs(2) (FUSE_SYNCFS goes to virtiofs only), so this fsyncs the mount
/// point directory, which the daemon answers by writing back all cached
/// data and flushing the journal and the device.
pub fn cmd_sync(mountpoint: &Path) -> Result<()> {
    let (mnt, _) = arborfs_mount(mountpoint)?;
    let dir =
        std::fs::File::open(&mnt).with_context(|| format!("cannot open {}", mnt.display()))?;
    // First the kernel's own dirty pages (shared mappings) go to the
    // daemon, then the daemon writes everything out.
    // SAFETY: `dir` is an open descriptor for the duration of the call.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("syncfs of {} failed", mnt.display()));
    }
    dir.sync_all()
        .with_context(|| format!("sync of {} failed", mnt.display()))
}

/// `arborfs trim MOUNTPOINT|IMAGE`: gives the space of free buckets back to
/// the storage (holes in an image file, discards on a block device), like
/// fstrim. On a mount the daemon does it (a control xattr, root only); an
/// unmounted image is opened and trimmed here.
pub fn cmd_trim(path: &Path) -> Result<()> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    if meta.is_dir() {
        let (mnt, entry) = arborfs_mount(path)?;
        let image = PathBuf::from(&entry.source);
        let before = host_bytes(&image);
        set_control_xattr(&mnt, fuse::TRIM_XATTR, b"1")
            .with_context(|| format!("trim of {} failed (as root?)", mnt.display()))?;
        match (before, host_bytes(&image)) {
            (Some(b), Some(a)) => println!(
                "{}: {} returned to the host; the image now takes {}",
                image.display(),
                human(b.saturating_sub(a)),
                human(a)
            ),
            _ => println!("{}: trimmed", mnt.display()),
        }
        return Ok(());
    }
    let dev =
        FileDevice::open(path, true).with_context(|| format!("cannot open {}", path.display()))?;
    if !dev
        .try_lock_exclusive()
        .with_context(|| format!("cannot lock {}", path.display()))?
    {
        bail!(
            "{} is in use (mounted?); trim the mount point instead: arborfs trim MOUNTPOINT",
            path.display()
        );
    }
    let fs = Fs::open(Arc::new(dev), FsOptions::default())
        .with_context(|| format!("cannot open the filesystem on {}", path.display()))?;
    let r = fs
        .trim()
        .with_context(|| format!("trim of {} failed", path.display()))?;
    fs.close()?;
    println!(
        "{}: {} free buckets ({}) discarded",
        path.display(),
        r.buckets,
        human(r.bytes)
    );
    Ok(())
}

/// What an image file takes on its host filesystem (`None` for a block
/// device or what cannot be read).
fn host_bytes(image: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(image)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
}

/// Sets a control xattr (see `fuse::TRIM_XATTR`) on the mount point.
fn set_control_xattr(dir: &Path, name: &[u8], value: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let name = std::ffi::CString::new(name)?;
    // SAFETY: both strings are NUL-terminated and outlive the call; `value`
    // points at `value.len()` readable bytes.
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `arborfs umount MOUNTPOINT`: unmounts and waits until the daemon has
/// closed the image (its lock is free) and the image is clean.
pub fn cmd_umount(mountpoint: &Path) -> Result<()> {
    let (mnt, entry) = arborfs_mount(mountpoint)?;
    let image = PathBuf::from(&entry.source);
    match fuse::unmount(&mnt, false) {
        Ok(()) => {}
        Err(UnmountError::Busy) => bail!(
            "{} is busy (files or directories in use); close them and retry, or `umount -l` it",
            mnt.display()
        ),
        Err(e) => bail!("{e}"),
    }
    wait_for_daemon(&image, UMOUNT_WAIT)?;
    let dev = FileDevice::open(&image, false)
        .with_context(|| format!("cannot open {}", image.display()))?;
    let (sb, _) = Superblock::read(&dev)
        .with_context(|| format!("cannot read the superblock of {}", image.display()))?;
    if sb.clean.is_none() {
        bail!(
            "{} was unmounted but the image is not clean (the daemon failed to close it)",
            image.display()
        );
    }
    Ok(())
}

/// Waits until nothing holds the image's lock: the daemon has closed it.
pub fn wait_for_daemon(image: &Path, timeout: Duration) -> Result<()> {
    let dev = FileDevice::open(image, false)
        .with_context(|| format!("cannot open {}", image.display()))?;
    let deadline = Instant::now() + timeout;
    loop {
        if dev.try_lock_exclusive()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the arborfs daemon of {} has not finished {} s after the unmount",
                image.display(),
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// usage

#[derive(Debug, Default)]
struct Usage {
    capacity: u64,
    free: u64,
    data: Option<u64>,
    metadata: Option<u64>,
    /// User data before compression (logical bytes in extents).
    uncompressed: Option<u64>,
}

fn usage_of_image(image: &Path) -> Result<Usage> {
    let dev: Arc<dyn Device> = Arc::new(
        FileDevice::open(image, false)
            .with_context(|| format!("cannot open {}", image.display()))?,
    );
    let fs = Fs::open(
        dev,
        FsOptions {
            engine: EngineOptions::inspect(),
            ..Default::default()
        },
    )
    .with_context(|| format!("cannot open the filesystem on {}", image.display()))?;
    let s = fs.statfs();
    let c = fs.engine().counters();
    let u = Usage {
        capacity: s.blocks * u64::from(s.bsize),
        free: s.bavail * u64::from(s.bsize),
        data: Some(c[Counter::UserSectors as usize].max(0) as u64 * SECTOR_BYTES),
        metadata: Some(c[Counter::BtreeSectors as usize].max(0) as u64 * SECTOR_BYTES),
        uncompressed: Some(c[Counter::UncompressedSectors as usize].max(0) as u64 * SECTOR_BYTES),
    };
    fs.close()?;
    Ok(u)
}

fn usage_of_mount(mnt: &Path) -> Result<Usage> {
    let entry = find_mount(mnt)
        .with_context(|| format!("{} is a directory but not a mount point", mnt.display()))?;
    if entry.fstype != format!("fuse.{}", fuse::SUBTYPE) {
        bail!("{} is a {} mount, not ArborFS", mnt.display(), entry.fstype);
    }
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(mnt.as_os_str()))?;
    // SAFETY: statvfs is plain data, filled by the call; `c` is live.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", mnt.display()));
    }
    let frsize = st.f_frsize as u64;
    let mut u = Usage {
        capacity: st.f_blocks as u64 * frsize,
        free: st.f_bavail as u64 * frsize,
        ..Default::default()
    };
    // The split into data and metadata comes from the image, read without
    // writing; while mounted it may lag the daemon's last commits.
    if let Ok(from_image) = usage_of_image(Path::new(&entry.source)) {
        u.data = from_image.data;
        u.metadata = from_image.metadata;
        u.uncompressed = from_image.uncompressed;
    }
    Ok(u)
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// `arborfs usage IMAGE|MOUNTPOINT [--json]`.
pub fn cmd_usage(path: &Path, as_json: bool) -> Result<()> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    let (u, source, image) = if meta.is_dir() {
        let mnt = path.canonicalize()?;
        let image = find_mount(&mnt).map(|e| PathBuf::from(e.source));
        (usage_of_mount(&mnt)?, "mount", image)
    } else {
        (usage_of_image(path)?, "image", Some(path.to_path_buf()))
    };
    let host = image.as_deref().and_then(host_bytes);
    let used = u.capacity.saturating_sub(u.free);
    // Compression: logical bytes of user data per byte stored (1 when
    // nothing is compressed or there is no data).
    let ratio = match (u.uncompressed, u.data) {
        (Some(l), Some(s)) if s > 0 => Some(l as f64 / s as f64),
        (Some(_), Some(_)) => Some(1.0),
        _ => None,
    };
    if as_json {
        let v = json!({
            "path": path.display().to_string(),
            "source": source,
            "capacity_bytes": u.capacity,
            "used_bytes": used,
            "data_bytes": u.data,
            "metadata_bytes": u.metadata,
            "free_bytes": u.free,
            "image_host_bytes": host,
            "compression": {
                "uncompressed_bytes": u.uncompressed,
                "stored_bytes": u.data,
                "ratio": ratio,
            },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let opt = |x: Option<u64>| {
        x.map_or("unknown".to_string(), |b| {
            format!("{} ({b} bytes)", human(b))
        })
    };
    println!("ArborFS usage of {}", path.display());
    println!(
        "  capacity:          {} ({} bytes)",
        human(u.capacity),
        u.capacity
    );
    println!("  used:              {} ({used} bytes)", human(used));
    println!("    data:            {}", opt(u.data));
    println!("    metadata:        {}", opt(u.metadata));
    println!("  free:              {} ({} bytes)", human(u.free), u.free);
    if let (Some(l), Some(s), Some(r)) = (u.uncompressed, u.data, ratio) {
        println!(
            "  compression:       {} of data stored in {} (ratio {r:.2})",
            human(l),
            human(s)
        );
    }
    if let Some(h) = host {
        // Space freed inside the filesystem stays allocated in a sparse
        // image until it is trimmed.
        let hint = if h > used + used / 8 + (64 << 20) {
            " (`arborfs trim` gives free space back)"
        } else {
            ""
        };
        println!("  image on host:     {}{hint}", human(h));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_parses() {
        let t = "36 35 98:0 / /mnt/my\\040dir rw,nosuid,nodev shared:1 - fuse.arborfs /img/a\\040b.img rw,user_id=0\n\
                 37 35 98:0 / /proc rw - proc proc rw\n";
        let v = parse_mountinfo(t);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].mountpoint, PathBuf::from("/mnt/my dir"));
        assert_eq!(v[0].dev, "98:0");
        assert_eq!(v[0].fstype, "fuse.arborfs");
        assert_eq!(v[0].source, "/img/a b.img");
        assert_eq!(v[1].fstype, "proc");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1 << 30), "1.0 GiB");
    }
}
