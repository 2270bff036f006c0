//! Errors of the filesystem layer, one variant per errno a caller can see.
//! The FUSE adapter maps them to errno numbers; nothing else here knows errno.

use crate::error::Error;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("file name too long")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("operation not permitted")]
    NotPermitted,
    #[error("permission denied")]
    AccessDenied,
    #[error("no space left on device")]
    NoSpace,
    #[error("read-only filesystem")]
    ReadOnly,
    #[error("no such attribute")]
    NoAttr,
    /// No data (or hole) at or after the offset: ENXIO for lseek.
    #[error("no such device or address")]
    NoData,
    #[error("attribute or buffer size out of range")]
    Range,
    #[error("argument list too long")]
    TooBig,
    #[error("file too large")]
    FileTooBig,
    #[error("too many links")]
    TooManyLinks,
    #[error("invalid cross-device link")]
    CrossDevice,
    #[error("device or resource busy")]
    Busy,
    #[error("operation not supported")]
    NotSupported,
    #[error("bad address")]
    Fault,
    /// Data failed its checksum, or the device failed.
    #[error("I/O error: {0}")]
    Io(String),
    /// Metadata is damaged; the filesystem stops writing.
    #[error("filesystem corrupted: {0}")]
    Corrupted(String),
    /// Internal: the transaction must run again (never returned to callers).
    #[doc(hidden)]
    #[error("transaction restart")]
    Restart,
}

impl From<Error> for FsError {
    fn from(e: Error) -> FsError {
        match e {
            Error::NoSpace => FsError::NoSpace,
            Error::Restart(_) => FsError::Restart,
            Error::ReadOnly | Error::ReadOnlyAfterError(_) => FsError::ReadOnly,
            Error::InvalidArgument(m) => FsError::Invalid(m),
            Error::Corrupted { .. } => FsError::Corrupted(e.to_string()),
            other => FsError::Io(other.to_string()),
        }
    }
}

pub type FsResult<T> = std::result::Result<T, FsError>;
