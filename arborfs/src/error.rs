//! Error types. Each layer has its own enum; [`Error`] is what the engine's
//! public API returns. Damage found on disk is always [`Error::Corrupted`]
//! with enough context to find the damaged structure.

use crate::device::DeviceError;

/// What kind of on-disk structure was found damaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Structure {
    Superblock,
    BtreeNode,
    JournalEntry,
    Key,
    Value,
}

impl std::fmt::Display for Structure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Structure::Superblock => "superblock",
            Structure::BtreeNode => "btree node",
            Structure::JournalEntry => "journal entry",
            Structure::Key => "key",
            Structure::Value => "value",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Device(#[from] DeviceError),

    /// An on-disk structure failed validation (checksum, magic, bounds, ...).
    #[error("corrupted {structure} at byte {offset}: {detail}")]
    Corrupted {
        structure: Structure,
        offset: u64,
        detail: String,
    },

    /// The transaction raced with another commit; run it again from the top.
    #[error("transaction restart: {0}")]
    Restart(&'static str),

    #[error("no space left on device")]
    NoSpace,

    /// Writing the next journal entry would overwrite entries still needed
    /// for replay. The engine checkpoints long before this happens.
    #[error("journal full: checkpoint needed")]
    JournalFull,

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("not an arborfs filesystem: {0}")]
    NotArborfs(String),

    #[error("unsupported format version {found} (this build supports {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },

    /// The engine hit an earlier fatal error and refuses further writes.
    #[error("filesystem is in an error state after an earlier failure: {0}")]
    ReadOnlyAfterError(String),

    #[error("filesystem is mounted read-only")]
    ReadOnly,
}

impl Error {
    pub fn corrupted(structure: Structure, offset: u64, detail: impl Into<String>) -> Error {
        Error::Corrupted {
            structure,
            offset,
            detail: detail.into(),
        }
    }

    pub fn is_restart(&self) -> bool {
        matches!(self, Error::Restart(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
