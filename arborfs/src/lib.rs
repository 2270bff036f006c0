//! ArborFS: a copy-on-write filesystem engine after bcachefs.
//!
//! Every piece of metadata is a key in a b-tree, keyed `inode:offset:snapshot`.
//! See `docs/architecture.md` for the layers and `docs/format.md` for every
//! on-disk byte.

pub mod alloc;
pub mod btree;
pub mod device;
pub mod engine;
pub mod error;
pub mod fs;
pub mod journal;
pub mod key;
pub mod sb;

pub use btree::iter::SnapshotAncestry;
pub use btree::trans::{Durability, Transaction, Update};
pub use engine::{Engine, EngineOptions, TrimReport};
pub use error::{Error, Result};
pub use key::{BtreeId, Key, KeyType, Pos};

/// Bytes in a sector, the unit of extent offsets and sizes.
pub const SECTOR_BYTES: u64 = 512;
/// Bytes in a block, the unit every metadata write is rounded to.
pub const BLOCK_BYTES: u64 = 4096;
