//! A device backed by an image file or a block device, using positioned IO.

use super::{Device, DeviceError, check_range};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;

/// An image file or block device. Reads and writes are positioned
/// (`pread`/`pwrite`), so the device can be shared between threads.
pub struct FileDevice {
    file: File,
    size: u64,
    /// A block device (discard by BLKDISCARD), not an image file.
    is_block: bool,
    path: String,
}

impl FileDevice {
    /// Opens an existing image file or block device, read-only unless
    /// `writable`.
    pub fn open(path: &Path, writable: bool) -> Result<FileDevice, DeviceError> {
        let open_err = |source| DeviceError::Open {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(open_err)?;
        FileDevice::from_file(file, path).map_err(open_err)
    }

    fn from_file(file: File, path: &Path) -> io::Result<FileDevice> {
        let is_block = file.metadata()?.file_type().is_block_device();
        Ok(FileDevice {
            size: device_size(&file)?,
            file,
            is_block,
            path: path.display().to_string(),
        })
    }

    /// Creates a regular image file of `size` bytes (or extends an existing
    /// shorter one; a longer one is left as is) and opens it writable.
    pub fn create(path: &Path, size: u64) -> Result<FileDevice, DeviceError> {
        let open_err = |source| DeviceError::Open {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if meta.file_type().is_file() && meta.len() < size {
            file.set_len(size).map_err(open_err)?;
        }
        FileDevice::from_file(file, path).map_err(open_err)
    }

    /// The path this device was opened from.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Tries to take an exclusive advisory lock (`flock(LOCK_EX|LOCK_NB)`).
    /// `Ok(true)` if it was taken, `Ok(false)` if someone else holds it.
    pub fn try_lock_exclusive(&self) -> Result<bool, DeviceError> {
        match flock(&self.file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
            Err(source) => Err(DeviceError::Io {
                op: "lock",
                offset: 0,
                len: 0,
                source,
            }),
        }
    }

    /// Takes an exclusive advisory lock, waiting until it is free.
    pub fn lock_exclusive_wait(&self) -> Result<(), DeviceError> {
        flock(&self.file, libc::LOCK_EX).map_err(|source| DeviceError::Io {
            op: "lock",
            offset: 0,
            len: 0,
            source,
        })
    }
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: the descriptor is owned by `file`, which outlives the call;
        // flock takes no pointers.
        let r = unsafe { libc::flock(file.as_raw_fd(), op) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Length of a regular file, or the kernel's size of a block device.
fn device_size(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes exactly one u64 through the pointer,
        // which points at a live, properly aligned local; the descriptor is
        // owned by `file`.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(size)
    } else {
        Ok(meta.len())
    }
}

/// `_IOR(0x12, 114, size_t)` from `<linux/fs.h>`.
#[cfg(target_os = "linux")]
const BLKGETSIZE64: libc::Ioctl =
    (2 << 30) | ((size_of::<usize>() as libc::Ioctl) << 16) | (0x12 << 8) | 114;
#[cfg(not(target_os = "linux"))]
compile_error!("FileDevice block device support is only implemented for Linux");

impl Device for FileDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DeviceError> {
        check_range("read", offset, buf.len(), self.size)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| DeviceError::Io {
                op: "read",
                offset,
                len: buf.len(),
                source,
            })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DeviceError> {
        check_range("write", offset, buf.len(), self.size)?;
        self.file
            .write_all_at(buf, offset)
            .map_err(|source| DeviceError::Io {
                op: "write",
                offset,
                len: buf.len(),
                source,
            })
    }

    fn flush(&self) -> Result<(), DeviceError> {
        self.file.sync_data().map_err(|source| DeviceError::Io {
            op: "flush",
            offset: 0,
            len: 0,
            source,
        })
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        check_range("discard", offset, len as usize, self.size)?;
        let io_err = |source| DeviceError::Io {
            op: "discard",
            offset,
            len: len as usize,
            source,
        };
        let fd = self.file.as_raw_fd();
        let r = if self.is_block {
            let range: [u64; 2] = [offset, len];
            // SAFETY: BLKDISCARD reads two u64s through the pointer, which
            // points at a live local array; the descriptor is owned by
            // `self.file`.
            unsafe { libc::ioctl(fd, BLKDISCARD, range.as_ptr()) }
        } else {
            // SAFETY: fallocate takes no pointers; the descriptor is owned
            // by `self.file`.
            unsafe {
                libc::fallocate(
                    fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset as libc::off_t,
                    len as libc::off_t,
                )
            }
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // Storage that cannot discard simply keeps the bytes.
            Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::EINVAL) => Ok(()),
            _ => Err(io_err(e)),
        }
    }
}

/// `_IO(0x12, 119)` from `<linux/fs.h>`.
const BLKDISCARD: libc::Ioctl = (0x12 << 8) | 119;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_write_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let d = FileDevice::create(&path, 1 << 20).unwrap();
        assert_eq!(d.size(), 1 << 20);
        d.write_at(b"hello", 4096).unwrap();
        d.flush().unwrap();
        drop(d);

        let d = FileDevice::open(&path, false).unwrap();
        assert_eq!(d.size(), 1 << 20);
        let mut b = [0u8; 5];
        d.read_at(&mut b, 4096).unwrap();
        assert_eq!(&b, b"hello");
        // read-only: writes fail with an IO error carrying the range
        match d.write_at(b"x", 0) {
            Err(DeviceError::Io {
                op, offset, len, ..
            }) => {
                assert_eq!((op, offset, len), ("write", 0, 1))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn create_extends_but_never_shrinks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        FileDevice::create(&path, 8192).unwrap();
        assert_eq!(FileDevice::create(&path, 16384).unwrap().size(), 16384);
        assert_eq!(FileDevice::create(&path, 4096).unwrap().size(), 16384);
    }

    #[test]
    fn out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let d = FileDevice::create(&dir.path().join("img"), 8192).unwrap();
        let mut b = [0u8; 2];
        assert!(matches!(
            d.read_at(&mut b, 8191),
            Err(DeviceError::OutOfRange { .. })
        ));
        assert!(matches!(
            d.write_at(&b, 8191),
            Err(DeviceError::OutOfRange { .. })
        ));
        assert!(matches!(
            d.read_at(&mut b, u64::MAX),
            Err(DeviceError::OutOfRange { .. })
        ));
        d.write_at(&b, 8190).unwrap();
    }

    #[test]
    fn open_missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope");
        match FileDevice::open(&path, true) {
            Err(DeviceError::Open { path: p, .. }) => assert!(p.ends_with("nope")),
            other => panic!("unexpected {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn exclusive_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let a = FileDevice::create(&path, 4096).unwrap();
        let b = FileDevice::open(&path, true).unwrap();
        assert!(a.try_lock_exclusive().unwrap());
        assert!(!b.try_lock_exclusive().unwrap());
        drop(a);
        assert!(b.try_lock_exclusive().unwrap());
        b.lock_exclusive_wait().unwrap();
    }
}
