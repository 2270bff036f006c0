//! The filesystem's IO locks (see `docs/locking.md`, "Filesystem IO locks").
//!
//! * [`TwoStateLock`]: the pagecache add/block lock. Any number of ADD
//!   holders or any number of BLOCK holders, never both; fair between the
//!   two states.
//! * [`IoLock`]: the per-inode IO lock, shared or exclusive.
//! * [`InodeIo`]: one inode's IO lock and pagecache lock.
//! * [`IoLockTable`]: inode number → shared [`InodeIo`], created on demand
//!   and forgotten when nobody holds it.
//! * [`LockSet`]: several inodes' locks in the global order (IO locks by
//!   ascending inode number, then pagecache locks by ascending inode
//!   number); a lock that comes out of order is only tried, and on failure
//!   everything is dropped and the operation retries ([`Retry`]).
//!
//! All waiting sleeps on a condvar (no spinning). Built on std's `Mutex` and
//! `Condvar`, or on loom's under `--cfg loom` (`scripts/loom.sh`), where
//! `tests/loom.rs` model-checks the locks.

mod io_lock;
mod lockset;
mod raw;
mod sync;
mod table;
mod two_state;

pub use io_lock::{InodeIo, IoExclusiveGuard, IoLock, IoMode, IoSharedGuard};
pub use lockset::{LockReq, LockSet, Retry};
pub use table::IoLockTable;
pub use two_state::{AddGuard, BlockGuard, PagecacheMode, TwoStateLock};

#[cfg(all(test, not(loom)))]
mod tests {
    /// Guards and lock sets may be moved to and released on another thread
    /// (e.g. an O_DIRECT write completing elsewhere).
    #[test]
    fn guards_and_sets_are_send() {
        fn send<T: Send>() {}
        send::<crate::AddGuard<'static>>();
        send::<crate::BlockGuard<'static>>();
        send::<crate::IoSharedGuard<'static>>();
        send::<crate::IoExclusiveGuard<'static>>();
        send::<crate::LockSet<'static>>();
        send::<std::sync::Arc<crate::InodeIo>>();
    }
}
