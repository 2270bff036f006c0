//! A randomized file-operation exerciser in the spirit of the classic
//! `fsx`, and a concurrency stress workload, for any directory.
//!
//! [`run`] performs random operations on a few files — buffered
//! `pread`/`pwrite`, O_DIRECT reads and writes, reads and writes through
//! `MAP_SHARED` mappings, `ftruncate`, `fallocate` (plain, KEEP_SIZE,
//! PUNCH_HOLE, ZERO_RANGE), `copy_file_range`, `fsync`/`fdatasync`,
//! close-and-reopen and remounts through a callback — and checks every read
//! against an in-memory model. A run is determined by its seed; a failure
//! comes back as a [`Failure`] with the seed, the op number, the recent op
//! log and a hexdump of the first difference.
//!
//! [`stress::run`] runs writers, truncaters, copiers and renamers in
//! threads for a bounded time and then checks an end state that is
//! well-defined despite the races.
//!
//! Nothing here knows about a particular filesystem: compare a run on
//! tmpfs or ext4 with one on the filesystem under test.

mod config;
mod fsx;
mod report;
pub mod rng;
pub mod stress;
mod sys;

pub use config::{Config, OpKind, Weights, known_names, parse_size};
pub use fsx::{BoxError, RemountFn, run};
pub use report::{DataMismatch, Failure, FailureKind, LoggedOp, MapEnd, Op, Summary};
