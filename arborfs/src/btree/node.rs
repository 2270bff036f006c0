//! A b-tree node in memory, and its encoding as a log of sorted runs
//! ("bsets") on disk.
//!
//! A node owns the keys in `[min, max]`. On disk it occupies a slot of
//! `node_size` bytes; the first write puts every key in bset 0, later writes
//! append a bset holding only the positions changed since the previous write
//! (removed positions as [`KeyType::Deleted`] markers). Reading merges the
//! bsets in order. A parent pointer records how many sectors were written, so
//! a torn or unreferenced append is never read.

use std::collections::{BTreeMap, BTreeSet};

use super::node_format::{
    BSET_HEADER_BYTES, BsetHeader, BtreePtr, NODE_MAGIC_BASE, bset_checksum, decode_bset_header,
    encode_bset_header,
};
use crate::BLOCK_BYTES;
use crate::error::{Error, Result, Structure};
use crate::key::key_format::{KEY_HEADER_BYTES, decode_key_ref, encode_parts, encoded_len};
use crate::key::{BtreeId, Key, KeyType, Pos};

/// Values up to this many bytes live inside the node's map entry.
const INLINE_VALUE: usize = 24;

/// A value's bytes: small ones (child pointers, alloc keys, most test and
/// counter values) inline, so reading or scanning them touches no other
/// memory and storing them allocates nothing; larger ones on the heap.
#[derive(Clone, PartialEq, Eq)]
pub enum ValBytes {
    Inline { len: u8, buf: [u8; INLINE_VALUE] },
    Heap(Box<[u8]>),
}

impl ValBytes {
    pub fn new(b: &[u8]) -> ValBytes {
        if b.len() <= INLINE_VALUE {
            let mut buf = [0u8; INLINE_VALUE];
            buf[..b.len()].copy_from_slice(b);
            ValBytes::Inline {
                len: b.len() as u8,
                buf,
            }
        } else {
            ValBytes::Heap(b.into())
        }
    }
}

impl std::ops::Deref for ValBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            ValBytes::Inline { len, buf } => &buf[..*len as usize],
            ValBytes::Heap(b) => b,
        }
    }
}

impl std::fmt::Debug for ValBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl From<Vec<u8>> for ValBytes {
    fn from(v: Vec<u8>) -> ValBytes {
        if v.len() <= INLINE_VALUE {
            ValBytes::new(&v)
        } else {
            ValBytes::Heap(v.into_boxed_slice())
        }
    }
}

/// The value part of a key held in a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Val {
    pub size: u32,
    pub ty: KeyType,
    pub value: ValBytes,
}

impl Val {
    pub fn from_key(key: &Key) -> Val {
        Val {
            size: key.size,
            ty: key.ty,
            value: ValBytes::new(&key.value),
        }
    }

    pub fn to_key(&self, pos: Pos) -> Key {
        Key {
            pos,
            size: self.size,
            ty: self.ty,
            value: self.value.to_vec(),
        }
    }

    pub fn encoded_len(&self) -> usize {
        encoded_len(self.value.len())
    }
}

/// Estimated heap bytes of one key held in memory (for the cache limit).
const KEY_MEM_OVERHEAD: usize = 64;
/// Estimated heap bytes of one entry of `Node::dirty`.
const DIRTY_MEM_OVERHEAD: usize = 32;

pub struct Node {
    pub btree: BtreeId,
    pub level: u8,
    pub min: Pos,
    pub max: Pos,
    /// Where the node lives; `ptr.sectors` is how much is written. A node
    /// never written has a temporary offset (see `cache::is_temp`).
    pub ptr: BtreePtr,
    pub keys: BTreeMap<Pos, Val>,
    /// Encoded size of all live keys plus one header: what a full write takes.
    pub live_bytes: usize,
    /// Positions changed since the last write.
    pub dirty: BTreeSet<Pos>,
    /// The next write must be a full write to a new location (new node,
    /// changed key range, or no room left to append).
    pub needs_full_write: bool,
    /// Highest journal sequence of any update held (written into bsets).
    /// Not maintained by commits yet: stays 0 unless read from disk.
    pub journal_seq: u64,
    /// Set by the cache when it drops the node; a holder must look it up again.
    pub evicted: bool,
    /// Bsets written to the node's current location.
    pub bsets: u16,
    /// Bytes this node is charged in the cache's total (see
    /// `NodeCache::recharge`); 0 while it is not in the cache.
    pub charged: usize,
}

impl Node {
    pub fn new_empty(btree: BtreeId, level: u8, min: Pos, max: Pos, ptr: BtreePtr) -> Node {
        Node {
            btree,
            level,
            min,
            max,
            ptr,
            keys: BTreeMap::new(),
            live_bytes: BSET_HEADER_BYTES,
            dirty: BTreeSet::new(),
            needs_full_write: true,
            journal_seq: 0,
            evicted: false,
            bsets: 0,
            charged: 0,
        }
    }

    pub fn is_leaf(&self) -> bool {
        self.level == 0
    }

    pub fn is_dirty(&self) -> bool {
        self.needs_full_write || !self.dirty.is_empty()
    }

    pub fn mem_bytes(&self) -> usize {
        self.live_bytes
            + self.keys.len() * KEY_MEM_OVERHEAD
            + self.dirty.len() * DIRTY_MEM_OVERHEAD
            + 256
    }

    pub fn insert(&mut self, pos: Pos, val: Val) -> Option<Val> {
        self.live_bytes += val.encoded_len();
        let old = self.keys.insert(pos, val);
        if let Some(o) = &old {
            self.live_bytes -= o.encoded_len();
        }
        self.note_changed(pos);
        old
    }

    pub fn remove(&mut self, pos: &Pos) -> Option<Val> {
        let old = self.keys.remove(pos)?;
        self.live_bytes -= old.encoded_len();
        self.note_changed(*pos);
        Some(old)
    }

    /// Records a changed position for the next delta write. A node whose
    /// next write is a full one writes every key anyway, and
    /// `needs_full_write` is only cleared by a full write (which also
    /// clears `dirty`), so it needs no per-key tracking.
    pub fn note_changed(&mut self, pos: Pos) {
        if !self.needs_full_write {
            self.dirty.insert(pos);
        }
    }

    /// Child pointer stored under `pos` in an interior node.
    pub fn child_ptr(val: &Val) -> Option<BtreePtr> {
        BtreePtr::decode(&val.value)
    }

    /// Encodes the whole node as bset 0.
    pub fn encode_full(&self, magic: u64) -> Vec<u8> {
        let keys = self
            .keys
            .iter()
            .map(|(p, v)| (*p, v.size, v.ty, &v.value[..]));
        self.encode_bset(magic, 0, keys)
    }

    /// Encodes the positions changed since the last write as a bset to append.
    pub fn encode_delta(&self, magic: u64, bset_index: u16) -> Vec<u8> {
        let keys = self.dirty.iter().map(|p| match self.keys.get(p) {
            Some(v) => (*p, v.size, v.ty, &v.value[..]),
            None => (*p, 0, KeyType::Deleted, &[][..]),
        });
        self.encode_bset(magic, bset_index, keys)
    }

    fn encode_bset<'a>(
        &self,
        magic: u64,
        bset_index: u16,
        keys: impl Iterator<Item = (Pos, u32, KeyType, &'a [u8])>,
    ) -> Vec<u8> {
        let mut out = vec![0u8; BSET_HEADER_BYTES];
        let mut nkeys = 0u32;
        for (pos, size, ty, value) in keys {
            encode_parts(&mut out, pos, size, ty, value);
            nkeys += 1;
        }
        let hdr = BsetHeader {
            magic,
            csum: 0,
            btree: self.btree as u8,
            level: self.level,
            bset_index,
            node_seq: self.ptr.seq,
            journal_seq: self.journal_seq,
            min: self.min,
            max: self.max,
            nkeys,
            bset_bytes: out.len() as u32,
        };
        encode_bset_header(&hdr, &mut out[..BSET_HEADER_BYTES]);
        let csum = bset_checksum(&out);
        out[8..12].copy_from_slice(&csum.to_le_bytes());
        out.resize((out.len() as u64).next_multiple_of(BLOCK_BYTES) as usize, 0);
        out
    }

    /// Reads a node from the bytes its pointer covers, checking that it is
    /// the node the parent expects (btree, level, key range, sequence).
    pub fn decode(
        buf: &[u8],
        magic: u64,
        ptr: BtreePtr,
        btree: BtreeId,
        min: Pos,
        max: Pos,
    ) -> Result<Node> {
        let corrupt = |at: usize, detail: String| {
            Error::corrupted(Structure::BtreeNode, ptr.offset + at as u64, detail)
        };
        // `needs_full_write` stays set while decoding: no dirty tracking.
        let mut node = Node::new_empty(btree, ptr.level, min, max, ptr);
        let mut at = 0usize;
        let mut index = 0u16;
        while at < buf.len() {
            let rest = &buf[at..];
            let hdr = decode_bset_header(rest)
                .ok_or_else(|| corrupt(at, "bset header truncated".into()))?;
            if hdr.magic != magic {
                return Err(corrupt(
                    at,
                    format!("bad magic {:#x} in bset {index}", hdr.magic),
                ));
            }
            let len = hdr.bset_bytes as usize;
            if len < BSET_HEADER_BYTES || len > rest.len() {
                return Err(corrupt(at, format!("bset length {len} out of bounds")));
            }
            let csum = bset_checksum(&rest[..len]);
            if csum != hdr.csum {
                return Err(corrupt(
                    at,
                    format!(
                        "checksum mismatch in bset {index}: stored {:#x}, computed {csum:#x}",
                        hdr.csum
                    ),
                ));
            }
            if hdr.btree != btree as u8 || hdr.level != ptr.level {
                return Err(corrupt(
                    at,
                    format!(
                        "node belongs to btree {} level {}, expected {} level {}",
                        hdr.btree, hdr.level, btree as u8, ptr.level
                    ),
                ));
            }
            if hdr.node_seq != ptr.seq {
                return Err(corrupt(
                    at,
                    format!(
                        "stale node: sequence {} but pointer expects {}",
                        hdr.node_seq, ptr.seq
                    ),
                ));
            }
            if hdr.bset_index != index {
                return Err(corrupt(
                    at,
                    format!("bset index {} where {index} was expected", hdr.bset_index),
                ));
            }
            if hdr.min != min || hdr.max != max {
                return Err(corrupt(
                    at,
                    format!(
                        "key range {:?}..={:?} but parent expects {min:?}..={max:?}",
                        hdr.min, hdr.max
                    ),
                ));
            }
            let mut kat = BSET_HEADER_BYTES;
            let mut prev: Option<Pos> = None;
            // The first bset holds sorted keys only: collected and built
            // into the map in one go, far cheaper than inserting each.
            let mut first: Vec<(Pos, Val)> = Vec::new();
            if index == 0 {
                first.reserve((hdr.nkeys as usize).min(len / KEY_HEADER_BYTES));
            }
            for _ in 0..hdr.nkeys {
                let (key, used) = decode_key_ref(&rest[kat..len])
                    .map_err(|e| corrupt(at + kat, e.to_string()))?;
                if prev.is_some_and(|p| p >= key.pos) {
                    return Err(corrupt(
                        at + kat,
                        format!("keys out of order at {:?}", key.pos),
                    ));
                }
                if key.pos < min || key.pos > max {
                    return Err(corrupt(
                        at + kat,
                        format!("key {:?} outside node range", key.pos),
                    ));
                }
                if key.ty == KeyType::Deleted {
                    if index == 0 {
                        return Err(corrupt(
                            at + kat,
                            "deletion marker in the first bset".into(),
                        ));
                    }
                    node.remove(&key.pos);
                } else {
                    if (ptr.level > 0) != (key.ty == KeyType::BtreePtr) {
                        return Err(corrupt(
                            at + kat,
                            format!("key type {} at level {}", key.ty.name(), ptr.level),
                        ));
                    }
                    let val = Val {
                        size: key.size,
                        ty: key.ty,
                        value: ValBytes::new(key.value),
                    };
                    if index == 0 {
                        node.live_bytes += val.encoded_len();
                        first.push((key.pos, val));
                    } else {
                        node.insert(key.pos, val);
                    }
                }
                prev = Some(key.pos);
                kat += used;
            }
            if index == 0 {
                node.keys = first.into_iter().collect();
            }
            if kat != len {
                return Err(corrupt(
                    at,
                    format!("bset has {} bytes after its last key", len - kat),
                ));
            }
            node.journal_seq = node.journal_seq.max(hdr.journal_seq);
            at += (len as u64).next_multiple_of(BLOCK_BYTES) as usize;
            index = index
                .checked_add(1)
                .ok_or_else(|| corrupt(at, "too many bsets".into()))?;
        }
        if index == 0 {
            return Err(corrupt(0, "empty node".into()));
        }
        if ptr.level > 0 && node.keys.is_empty() {
            return Err(corrupt(0, "interior node without children".into()));
        }
        if ptr.level > 0 && node.keys.keys().next_back() != Some(&max) {
            return Err(corrupt(
                0,
                "last child does not end at the node's max key".into(),
            ));
        }
        node.dirty.clear();
        node.needs_full_write = false;
        node.bsets = index;
        Ok(node)
    }
}

pub fn node_magic(uuid: &[u8; 16]) -> u64 {
    NODE_MAGIC_BASE ^ u64::from_le_bytes(uuid[0..8].try_into().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ptr(level: u8) -> BtreePtr {
        BtreePtr {
            offset: 1 << 20,
            seq: 42,
            sectors: 0,
            generation: 0,
            level,
        }
    }

    #[test]
    fn full_then_delta_round_trip() {
        let magic = node_magic(&[7; 16]);
        let mut n = Node::new_empty(BtreeId::Inodes, 0, Pos::MIN, Pos::MAX, ptr(0));
        for i in 0..100u64 {
            n.insert(
                Pos::new(1, i, 0),
                Val {
                    size: 0,
                    ty: KeyType::Blob,
                    value: vec![i as u8; (i % 9) as usize].into(),
                },
            );
        }
        let mut disk = n.encode_full(magic);
        // As after a full write: changes from here on are tracked for a delta.
        n.dirty.clear();
        n.needs_full_write = false;
        n.remove(&Pos::new(1, 5, 0));
        n.insert(
            Pos::new(1, 7, 0),
            Val {
                size: 0,
                ty: KeyType::Blob,
                value: vec![0xee].into(),
            },
        );
        n.insert(
            Pos::new(2, 0, 0),
            Val {
                size: 0,
                ty: KeyType::Blob,
                value: vec![].into(),
            },
        );
        disk.extend(n.encode_delta(magic, 1));
        let mut p = ptr(0);
        p.sectors = (disk.len() / 512) as u32;
        let back = Node::decode(&disk, magic, p, BtreeId::Inodes, Pos::MIN, Pos::MAX).unwrap();
        assert_eq!(back.keys, n.keys);
        assert_eq!(back.live_bytes, n.live_bytes);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let magic = node_magic(&[1; 16]);
        let mut n = Node::new_empty(BtreeId::Extents, 0, Pos::MIN, Pos::MAX, ptr(0));
        for i in 0..20u64 {
            n.insert(
                Pos::new(3, i * 8 + 8, 0),
                Val {
                    size: 8,
                    ty: KeyType::Blob,
                    value: vec![1, 2, 3].into(),
                },
            );
        }
        let disk = n.encode_full(magic);
        let used = BSET_HEADER_BYTES + 20 * 40;
        for i in 0..used {
            let mut bad = disk.clone();
            bad[i] ^= 0x10;
            let r = Node::decode(&bad, magic, ptr(0), BtreeId::Extents, Pos::MIN, Pos::MAX);
            assert!(
                matches!(r, Err(Error::Corrupted { .. })),
                "flip at {i} not detected"
            );
        }
    }

    #[test]
    fn stale_or_misplaced_node_is_rejected() {
        let magic = node_magic(&[1; 16]);
        let n = Node::new_empty(BtreeId::Extents, 0, Pos::MIN, Pos::MAX, ptr(0));
        let disk = n.encode_full(magic);
        let mut other_seq = ptr(0);
        other_seq.seq = 43;
        assert!(
            Node::decode(
                &disk,
                magic,
                other_seq,
                BtreeId::Extents,
                Pos::MIN,
                Pos::MAX
            )
            .is_err()
        );
        assert!(Node::decode(&disk, magic, ptr(0), BtreeId::Inodes, Pos::MIN, Pos::MAX).is_err());
        assert!(
            Node::decode(
                &disk,
                magic,
                ptr(0),
                BtreeId::Extents,
                Pos::new(1, 0, 0),
                Pos::MAX
            )
            .is_err()
        );
        assert!(
            Node::decode(
                &disk,
                magic ^ 1,
                ptr(0),
                BtreeId::Extents,
                Pos::MIN,
                Pos::MAX
            )
            .is_err()
        );
    }
}
