//! The node cache: every node in memory, keyed by its location.
//!
//! Clean nodes are evicted (CLOCK order) when the cache is over its byte
//! limit; dirty nodes stay until a checkpoint writes them. Nodes created since
//! the last checkpoint have a temporary id (top bit set) instead of a disk
//! offset until they are written.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::RwLock;

use super::node::Node;

pub type NodeRef = Arc<RwLock<Node>>;

const TEMP_BIT: u64 = 1 << 63;
const SHARDS: usize = 16;

/// True for ids of nodes that have no disk location yet.
pub fn is_temp(id: u64) -> bool {
    id & TEMP_BIT != 0
}

struct Entry {
    node: NodeRef,
    referenced: AtomicBool,
}

/// Node ids are device offsets or counters: multiply-shift mixes them well
/// enough, far cheaper than SipHash.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) ^ *b as u64;
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<u64, Entry, BuildHasherDefault<IdHasher>>,
    clock: VecDeque<u64>,
}

pub struct NodeCache {
    shards: Vec<RwLock<Shard>>,
    limit: usize,
    used: AtomicUsize,
    next_temp: AtomicU64,
    /// Nodes read from the device (cache misses), for tests and statistics.
    pub disk_reads: AtomicU64,
    evict_cursor: AtomicUsize,
}

impl NodeCache {
    pub fn new(limit: usize) -> NodeCache {
        NodeCache {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            limit,
            used: AtomicUsize::new(0),
            next_temp: AtomicU64::new(1),
            disk_reads: AtomicU64::new(0),
            evict_cursor: AtomicUsize::new(0),
        }
    }

    fn shard(&self, id: u64) -> &RwLock<Shard> {
        let h = (id >> 12).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60;
        &self.shards[h as usize % SHARDS]
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn new_temp_id(&self) -> u64 {
        TEMP_BIT | self.next_temp.fetch_add(1, Ordering::Relaxed) << 12
    }

    pub fn get(&self, id: u64) -> Option<NodeRef> {
        let shard = self.shard(id).read();
        let e = shard.map.get(&id)?;
        if !e.referenced.load(Ordering::Relaxed) {
            e.referenced.store(true, Ordering::Relaxed);
        }
        Some(e.node.clone())
    }

    /// Inserts `node` under `id` unless another thread got there first, and
    /// returns whichever is cached.
    ///
    /// Memory accounting: a cached node carries the bytes it is charged
    /// (`Node::charged`, changed only under its lock); `used` is their sum.
    pub fn insert(&self, id: u64, mut node: Node) -> NodeRef {
        let mem = node.mem_bytes();
        node.charged = mem;
        let node = Arc::new(RwLock::new(node));
        {
            let mut shard = self.shard(id).write();
            if let Some(e) = shard.map.get_mut(&id) {
                *e.referenced.get_mut() = true;
                return e.node.clone();
            }
            shard.map.insert(
                id,
                Entry {
                    node: node.clone(),
                    referenced: AtomicBool::new(true),
                },
            );
            shard.clock.push_back(id);
        }
        self.used.fetch_add(mem, Ordering::Relaxed);
        node
    }

    pub fn remove(&self, id: u64) {
        let mut shard = self.shard(id).write();
        if let Some(e) = shard.map.remove(&id) {
            let mut node = e.node.write();
            self.uncharge(&mut node);
            node.evicted = true;
        }
    }

    /// Moves a node to a new id (it was written to a new location).
    pub fn rekey(&self, old: u64, new: u64) {
        let entry = {
            let mut shard = self.shard(old).write();
            shard.map.remove(&old)
        };
        if let Some(e) = entry {
            let mut shard = self.shard(new).write();
            shard.clock.push_back(new);
            shard.map.insert(new, e);
        }
    }

    /// Refreshes the memory charged for a cached node after it changed
    /// (the caller holds its write lock). A node no longer cached is not
    /// charged.
    pub fn recharge(&self, node: &mut Node) {
        if node.evicted || node.charged == 0 {
            return;
        }
        let mem = node.mem_bytes();
        if mem >= node.charged {
            self.used.fetch_add(mem - node.charged, Ordering::Relaxed);
        } else {
            self.used.fetch_sub(node.charged - mem, Ordering::Relaxed);
        }
        node.charged = mem;
    }

    fn uncharge(&self, node: &mut Node) {
        self.used
            .fetch_sub(std::mem::take(&mut node.charged), Ordering::Relaxed);
    }

    /// Drops clean nodes until the cache is under its limit or only dirty
    /// (or busy) nodes are left.
    pub fn evict_if_needed(&self) {
        if self.used() <= self.limit {
            return;
        }
        let mut idle_shards = 0;
        while self.used() > self.limit && idle_shards < SHARDS {
            let i = self.evict_cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
            if self.evict_from_shard(i) {
                idle_shards = 0;
            } else {
                idle_shards += 1;
            }
        }
    }

    /// One CLOCK sweep over a shard; true if anything was evicted.
    fn evict_from_shard(&self, i: usize) -> bool {
        let mut shard = self.shards[i].write();
        let mut evicted = false;
        let n = shard.clock.len();
        for _ in 0..n {
            if self.used() <= self.limit {
                break;
            }
            let Some(id) = shard.clock.pop_front() else {
                break;
            };
            let Some(e) = shard.map.get_mut(&id) else {
                continue;
            };
            // A node someone holds a reference to is in use (e.g. pinned by
            // a commit between loading and changing it): not a candidate.
            // New references are only handed out under the shard lock, which
            // this holds, so the count cannot grow meanwhile.
            if *e.referenced.get_mut() || Arc::strong_count(&e.node) > 1 {
                *e.referenced.get_mut() = false;
                shard.clock.push_back(id);
                continue;
            }
            let can_evict = match e.node.try_write() {
                Some(mut node) if !node.is_dirty() && !is_temp(id) => {
                    self.uncharge(&mut node);
                    node.evicted = true;
                    true
                }
                _ => false,
            };
            if can_evict {
                shard.map.remove(&id).expect("entry present");
                evicted = true;
            } else {
                shard.clock.push_back(id);
            }
        }
        evicted
    }

    /// Ids of every cached node (tests and checkpoint bookkeeping).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btree::node::Val;
    use crate::btree::node_format::BtreePtr;
    use crate::key::{BtreeId, KeyType, Pos};

    fn clean_node(offset: u64, keys: u64) -> Node {
        let ptr = BtreePtr {
            offset,
            seq: 1,
            sectors: 8,
            generation: 0,
            level: 0,
        };
        let mut n = Node::new_empty(BtreeId::Inodes, 0, Pos::MIN, Pos::MAX, ptr);
        for i in 0..keys {
            n.insert(
                Pos::new(i, 0, 0),
                Val {
                    size: 0,
                    ty: KeyType::Blob,
                    value: vec![0; 100].into(),
                },
            );
        }
        n.dirty.clear();
        n.needs_full_write = false;
        n
    }

    #[test]
    fn evicts_clean_nodes_to_the_limit_but_keeps_dirty_ones() {
        let cache = NodeCache::new(100_000);
        let mut dirty_ids = Vec::new();
        for i in 0..50u64 {
            let id = (i + 1) << 20;
            let mut n = clean_node(id, 50);
            if i % 10 == 0 {
                n.needs_full_write = true;
                dirty_ids.push(id);
            }
            cache.insert(id, n);
            cache.evict_if_needed();
        }
        assert!(cache.used() <= 100_000 + 50 * 300, "used {}", cache.used());
        for id in dirty_ids {
            assert!(cache.get(id).is_some(), "dirty node {id} was evicted");
        }
        assert!(cache.len() < 50);
    }

    #[test]
    fn evicted_nodes_are_flagged() {
        let cache = NodeCache::new(1);
        let n = cache.insert(1 << 20, clean_node(1 << 20, 10));
        cache.insert(2 << 20, clean_node(2 << 20, 10));
        cache.evict_if_needed();
        cache.evict_if_needed();
        assert!(n.read().evicted || cache.get(1 << 20).is_some());
        assert!(cache.len() <= 1);
    }
}
