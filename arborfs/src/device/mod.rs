//! The device layer: byte ranges of an image file, block device or memory.
//!
//! Nothing here knows about the filesystem above it.

mod file;
mod mem;
mod recording;

pub use file::FileDevice;
pub use mem::MemDevice;
pub use recording::{Op, RecordingDevice, WriteFate};

use std::io;

/// Storage that the filesystem lives on. All methods take `&self` so one
/// device can be shared by every thread of the engine.
pub trait Device: Send + Sync {
    /// Fills `buf` from `offset`. Reading past the end is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DeviceError>;
    /// Writes all of `buf` at `offset`. Not durable until [`Device::flush`].
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), DeviceError>;
    /// Makes every completed write durable (fdatasync / cache flush).
    fn flush(&self) -> Result<(), DeviceError>;
    /// Tells the storage that `[offset, offset + len)` holds nothing needed:
    /// an image file gives the space back to the host filesystem (a hole),
    /// a block device may unmap it. Later reads of the range return zeros
    /// or the old bytes. The default does nothing, which is also correct.
    fn discard(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        check_range("discard", offset, len as usize, self.size())
    }
    /// Size in bytes.
    fn size(&self) -> u64;
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("I/O error during {op} of {len} bytes at offset {offset}: {source}")]
    Io {
        op: &'static str,
        offset: u64,
        len: usize,
        source: io::Error,
    },
    #[error("{op} of {len} bytes at offset {offset} is past the end of the device ({size} bytes)")]
    OutOfRange {
        op: &'static str,
        offset: u64,
        len: usize,
        size: u64,
    },
    #[error("injected failure during {op} (test device)")]
    Injected { op: &'static str },
    #[error("cannot open device {path}: {source}")]
    Open { path: String, source: io::Error },
}

pub(crate) fn check_range(
    op: &'static str,
    offset: u64,
    len: usize,
    size: u64,
) -> Result<(), DeviceError> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(DeviceError::OutOfRange {
            op,
            offset,
            len,
            size,
        }),
    }
}
