//! Thin wrappers over the system calls the exerciser makes: every one
//! returns `io::Result` (no panics on IO errors), retries EINTR, and the
//! unsafe ones (aligned memory, mmap) keep their invariants in one place.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;

/// Alignment (and length granularity) of O_DIRECT buffers.
pub const DIRECT_ALIGN: usize = 4096;

/// A zeroed heap buffer aligned to [`DIRECT_ALIGN`], for O_DIRECT.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: AlignedBuf uniquely owns its allocation (like Vec<u8>); nothing
// else holds the pointer.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// `len` bytes (rounded up to a whole number of alignment units, at
    /// least one), zeroed.
    pub fn new(len: usize) -> AlignedBuf {
        let size = len.max(1).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        let layout =
            Layout::from_size_align(size, DIRECT_ALIGN).expect("buffer size fits a Layout");
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, layout }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `layout.size()` initialized (zeroed at
        // allocation) bytes that live as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout, freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reads until `buf` is full or a read returns 0 (end of file). With
/// `direct`, also stops after a read that is not a whole number of
/// alignment units (O_DIRECT's short read at end of file).
pub fn pread_full(f: &File, buf: &mut [u8], off: u64, direct: bool) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = retry(|| f.read_at(&mut buf[done..], off + done as u64))?;
        if n == 0 {
            break;
        }
        done += n;
        if direct && !n.is_multiple_of(DIRECT_ALIGN) {
            break;
        }
    }
    Ok(done)
}

/// Writes all of `buf` at `off` (pwrite, continuing after short writes).
pub fn pwrite_all(f: &File, buf: &[u8], off: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = retry(|| f.write_at(&buf[done..], off + done as u64))?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwrite wrote 0 bytes",
            ));
        }
        done += n;
    }
    Ok(())
}

/// fallocate(2).
pub fn fallocate(f: &File, mode: libc::c_int, off: u64, len: u64) -> io::Result<()> {
    retry(|| {
        // SAFETY: fallocate only reads its integer arguments.
        cvt(unsafe { libc::fallocate(f.as_raw_fd(), mode, off as libc::off_t, len as libc::off_t) })
    })
}

/// One copy_file_range(2) call; returns the bytes it copied.
pub fn copy_file_range(
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: usize,
) -> io::Result<usize> {
    retry(|| {
        let mut i = src_off as libc::loff_t;
        let mut o = dst_off as libc::loff_t;
        // SAFETY: `i` and `o` are live locals the call may update.
        let r = unsafe {
            libc::copy_file_range(src.as_raw_fd(), &mut i, dst.as_raw_fd(), &mut o, len, 0)
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    })
}

/// renameat2(2) with RENAME_NOREPLACE.
pub fn rename_noreplace(from: &std::path::Path, to: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &std::path::Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
    };
    let (a, b) = (c(from)?, c(to)?);
    retry(|| {
        // SAFETY: `a` and `b` are live NUL-terminated strings.
        cvt(unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        })
    })
}

/// lseek(2) with SEEK_DATA or SEEK_HOLE; returns the new offset.
pub fn lseek(f: &File, off: u64, whence: libc::c_int) -> io::Result<u64> {
    retry(|| {
        // SAFETY: lseek only reads its integer arguments.
        let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as u64)
        }
    })
}

/// The system page size (mmap offsets must be multiples of it).
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

/// A MAP_SHARED mapping of `[offset, offset + len)` of a file, unmapped on
/// drop. The creator promises the file is at least `offset + len` bytes
/// long rounded up to a page (checked with fstat just before), so that no
/// access through it can raise SIGBUS while the file keeps that size.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

impl Mapping {
    /// Maps `len` (> 0) bytes at page-aligned `offset`, read-only or
    /// read-write.
    pub fn new(f: &File, offset: u64, len: usize, writable: bool) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping chosen by the kernel (addr null) aliases
        // no Rust object; the fd is live for the call.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Mapping { ptr, len, writable })
    }

    /// Copies `out.len()` bytes at `at` (relative to the mapping) out.
    pub fn read(&self, at: usize, out: &mut [u8]) {
        assert!(at + out.len() <= self.len, "read past the mapping");
        // SAFETY: the range is inside the mapping (asserted), which is
        // readable and backed by the file (see the type's contract); the
        // destination is a distinct Rust buffer. Another process may change
        // the shared pages concurrently, so this is a raw byte copy, never
        // a reference into the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(at), out.as_mut_ptr(), out.len())
        }
    }

    /// Copies `data` into the (writable) mapping at `at`.
    pub fn write(&mut self, at: usize, data: &[u8]) {
        assert!(self.writable, "write into a read-only mapping");
        assert!(at + data.len() <= self.len, "write past the mapping");
        // SAFETY: as in `read`, and the mapping is writable (asserted).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(at), data.len())
        }
    }

    /// msync(MS_SYNC) of the whole mapping.
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: `ptr`/`len` describe a live mapping created by mmap.
        cvt(unsafe { libc::msync(self.ptr.as_ptr().cast(), self.len, libc::MS_SYNC) })
    }

    /// munmap, reporting its error (drop ignores it).
    pub fn unmap(self) -> io::Result<()> {
        let (p, l) = (self.ptr, self.len);
        std::mem::forget(self);
        // SAFETY: unmapping our own live mapping exactly once (forgotten
        // above, so Drop will not unmap it again).
        cvt(unsafe { libc::munmap(p.as_ptr().cast(), l) })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own live mapping, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The size fstat(2) reports.
pub fn file_size(f: &File) -> io::Result<u64> {
    Ok(f.metadata()?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffer_is_aligned_and_zeroed() {
        let b = AlignedBuf::new(5000);
        assert_eq!(b.as_ptr() as usize % DIRECT_ALIGN, 0);
        assert_eq!(b.len(), 8192);
        assert!(b.iter().all(|&x| x == 0));
    }

    #[test]
    fn mapping_reads_and_writes_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 10_000]).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let mut m = Mapping::new(&f, 4096, 10_000 - 4096, true).unwrap();
        m.write(10, b"hello");
        m.sync().unwrap();
        let mut out = [0u8; 6];
        m.read(9, &mut out);
        assert_eq!(&out, b"\x07hello");
        m.unmap().unwrap();
        assert_eq!(&std::fs::read(&p).unwrap()[4106..4111], b"hello");
        assert!(Mapping::new(&f, 0, 0, false).is_err());
    }
}
