//! Inode number → [`InodeIo`], created on demand, forgotten when unused.

use std::collections::HashMap;
use std::fmt;
use std::ptr;
use std::sync::{Arc, Weak};

use crate::io_lock::{InodeIo, IoMode};
use crate::lockset::{LockReq, LockSet};
use crate::sync::{Mutex, lock};

/// Default number of shards (a power of two).
const DEFAULT_SHARDS: usize = 64;

/// A shard map is shrunk (to no less than this) when it is at most a quarter
/// full and its capacity is above four times this: after a burst of open
/// inodes the memory goes back, and small maps are never rehashed.
const SHRINK_FLOOR: usize = 64;

/// Per-inode lock objects, one live instance per inode number.
///
/// [`get`](Self::get) returns the inode's [`InodeIo`], creating it if no one
/// holds it. The table only keeps a `Weak` reference: when the last `Arc`
/// (a handle, or a [`LockSet`] entry) goes away, the `InodeIo` removes its
/// own entry, so the table's size follows the number of inodes in use, not
/// the number of inodes ever touched. Sharded by a hash of the inode number
/// so lookups of different inodes rarely meet on one mutex.
///
/// The shard mutexes are leaf locks: held only for a map operation, never
/// while waiting for an inode lock.
pub struct IoLockTable {
    shards: Arc<Shards>,
}

/// One shard: the live entries of the inode numbers that hash to it.
type Shard = Mutex<HashMap<u64, Weak<InodeIo>>>;

pub(crate) struct Shards {
    maps: Box<[Shard]>,
    /// log2 of the number of shards.
    bits: u32,
}

impl Shards {
    fn shard(&self, ino: u64) -> &Shard {
        let i = if self.bits == 0 {
            0
        } else {
            // Fibonacci hashing: consecutive inode numbers spread out.
            (ino.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - self.bits)) as usize
        };
        &self.maps[i]
    }

    /// Called from `InodeIo::drop`: removes `ino`'s entry if it is still
    /// `this` one. A `get` may already have replaced the dead entry with a
    /// new instance, which must stay.
    pub(crate) fn unregister(&self, ino: u64, this: &InodeIo) {
        let mut map = lock(self.shard(ino));
        if map.get(&ino).is_some_and(|w| ptr::eq(w.as_ptr(), this)) {
            map.remove(&ino);
            if map.capacity() > 4 * SHRINK_FLOOR && map.len() * 4 < map.capacity() {
                let keep = (map.len() * 2).max(SHRINK_FLOOR);
                map.shrink_to(keep);
            }
        }
    }
}

impl IoLockTable {
    /// A table with the default number of shards (64).
    pub fn new() -> Self {
        Self::with_shards(DEFAULT_SHARDS)
    }

    /// A table with `n` shards, rounded up to a power of two (at least 1).
    pub fn with_shards(n: usize) -> Self {
        let n = n.max(1).next_power_of_two();
        IoLockTable {
            shards: Arc::new(Shards {
                maps: (0..n).map(|_| Mutex::new(HashMap::new())).collect(),
                bits: n.trailing_zeros(),
            }),
        }
    }

    /// The locks of `ino`: the live instance if anybody holds one, else a
    /// new one. Every caller that gets a lock for `ino` while another holds
    /// an `Arc` of it gets the same instance.
    pub fn get(&self, ino: u64) -> Arc<InodeIo> {
        let mut map = lock(self.shards.shard(ino));
        if let Some(live) = map.get(&ino).and_then(Weak::upgrade) {
            return live;
        }
        // Absent, or its last Arc is being dropped (its `unregister` will
        // see that the entry is no longer its own).
        let new = Arc::new(InodeIo::with_home(ino, Some(Arc::downgrade(&self.shards))));
        map.insert(ino, Arc::downgrade(&new));
        new
    }

    /// Number of inodes with live lock objects (a snapshot, for tests and
    /// diagnostics).
    pub fn len(&self) -> usize {
        self.shards.maps.iter().map(|m| lock(m).len()).sum()
    }

    /// True if no inode has a live lock object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty [`LockSet`] on this table.
    pub fn lock_set(&self) -> LockSet<'_> {
        LockSet::new(self)
    }

    /// Takes all of `reqs` in the global order (IO locks by ascending inode
    /// number, then pagecache locks by ascending inode number), each lock
    /// once in the strongest mode asked for. Blocks; never needs a retry
    /// because nothing is held before.
    pub fn lock_many(&self, reqs: &[LockReq]) -> LockSet<'_> {
        let mut set = LockSet::new(self);
        set.lock_sorted(reqs);
        set
    }

    /// [`lock_many`](Self::lock_many) for IO locks only.
    pub fn lock_io_many(&self, reqs: &[(u64, IoMode)]) -> LockSet<'_> {
        let reqs: Vec<LockReq> = reqs.iter().map(|&(ino, m)| LockReq::Io(ino, m)).collect();
        self.lock_many(&reqs)
    }
}

impl Default for IoLockTable {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for IoLockTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoLockTable")
            .field("shards", &self.shards.maps.len())
            .field("live", &self.len())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn one_instance_per_live_inode_and_forgotten_after() {
        let t = IoLockTable::with_shards(4);
        let a = t.get(7);
        let b = t.get(7);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.ino(), 7);
        let c = t.get(8);
        assert_eq!(t.len(), 2);
        drop(a);
        assert_eq!(t.len(), 2, "b still holds inode 7");
        drop(b);
        assert_eq!(t.len(), 1);
        drop(c);
        assert!(t.is_empty());
    }

    /// A lock held through one handle is seen through a handle obtained
    /// later, so the table never gives two lock objects to one inode.
    #[test]
    fn later_handle_sees_held_lock() {
        let t = IoLockTable::new();
        let a = t.get(3);
        let _g = a.io().lock_exclusive();
        assert!(t.get(3).io().try_lock_shared().is_none());
        assert!(t.get(4).io().try_lock_shared().is_some());
    }

    /// Memory stays bounded: a million inodes touched one after another
    /// leave nothing behind, and the shards give their capacity back.
    #[test]
    fn million_inodes_leave_nothing_behind() {
        let t = IoLockTable::new();
        let held: Vec<_> = (0..100_000).map(|i| t.get(i)).collect();
        assert_eq!(t.len(), 100_000);
        drop(held);
        for i in 0..1_000_000u64 {
            let io = t.get(i);
            drop(io.pagecache().lock_add());
        }
        assert!(t.is_empty());
        let cap: usize = t.shards.maps.iter().map(|m| lock(m).capacity()).sum();
        assert!(
            cap <= DEFAULT_SHARDS * 4 * SHRINK_FLOOR,
            "capacity kept: {cap}"
        );
    }

    #[test]
    fn table_dropped_before_handles() {
        let t = IoLockTable::new();
        let a = t.get(1);
        drop(t);
        let _g = a.io().lock_exclusive();
    }

    #[test]
    fn shard_counts_round_up() {
        assert_eq!(IoLockTable::with_shards(0).shards.maps.len(), 1);
        assert_eq!(IoLockTable::with_shards(5).shards.maps.len(), 8);
        let t = IoLockTable::with_shards(1);
        let v: Vec<_> = (0..10).map(|i| t.get(i)).collect();
        assert_eq!(t.len(), 10);
        drop(v);
        assert!(t.is_empty());
    }
}
