//! Positions, keys and the b-tree ids.
//!
//! Every piece of metadata is a [`Key`] at a [`Pos`] in one of the b-trees
//! named by [`BtreeId`]. Extent keys are indexed by their *end* offset and
//! cover `[pos.offset - size, pos.offset)`.

pub mod key_format;

use std::fmt;

/// A position in a b-tree: ordered by `(inode, offset, snapshot)`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub inode: u64,
    pub offset: u64,
    pub snapshot: u32,
}

impl Pos {
    pub const MIN: Pos = Pos {
        inode: 0,
        offset: 0,
        snapshot: 0,
    };
    pub const MAX: Pos = Pos {
        inode: u64::MAX,
        offset: u64::MAX,
        snapshot: u32::MAX,
    };

    pub const fn new(inode: u64, offset: u64, snapshot: u32) -> Pos {
        Pos {
            inode,
            offset,
            snapshot,
        }
    }

    /// The next position in key order, or `None` at [`Pos::MAX`].
    pub fn successor(self) -> Option<Pos> {
        if self.snapshot < u32::MAX {
            return Some(Pos {
                snapshot: self.snapshot + 1,
                ..self
            });
        }
        if self.offset < u64::MAX {
            return Some(Pos {
                offset: self.offset + 1,
                snapshot: 0,
                ..self
            });
        }
        if self.inode < u64::MAX {
            return Some(Pos {
                inode: self.inode + 1,
                offset: 0,
                snapshot: 0,
            });
        }
        None
    }

    /// The previous position in key order, or `None` at [`Pos::MIN`].
    pub fn predecessor(self) -> Option<Pos> {
        if self.snapshot > 0 {
            return Some(Pos {
                snapshot: self.snapshot - 1,
                ..self
            });
        }
        if self.offset > 0 {
            return Some(Pos {
                offset: self.offset - 1,
                snapshot: u32::MAX,
                ..self
            });
        }
        if self.inode > 0 {
            return Some(Pos {
                inode: self.inode - 1,
                offset: u64::MAX,
                snapshot: u32::MAX,
            });
        }
        None
    }
}

impl fmt::Debug for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.inode, self.offset, self.snapshot)
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::str::FromStr for Pos {
    type Err = String;

    /// Parses `inode:offset:snapshot`; missing trailing parts are 0.
    fn from_str(s: &str) -> Result<Pos, String> {
        let mut parts = s.split(':');
        let mut next = |what: &str| -> Result<u64, String> {
            match parts.next() {
                None | Some("") => Ok(0),
                Some("max") | Some("MAX") => Ok(u64::MAX),
                Some(p) => p
                    .parse::<u64>()
                    .map_err(|e| format!("bad {what} in position {s:?}: {e}")),
            }
        };
        let inode = next("inode")?;
        let offset = next("offset")?;
        let snapshot = next("snapshot")?;
        let snapshot = if snapshot == u64::MAX {
            u32::MAX as u64
        } else {
            snapshot
        };
        let snapshot =
            u32::try_from(snapshot).map_err(|_| format!("snapshot out of range in {s:?}"))?;
        if parts.next().is_some() {
            return Err(format!("position {s:?} has more than three parts"));
        }
        Ok(Pos {
            inode,
            offset,
            snapshot,
        })
    }
}

/// The kind of a key's value. Stored as one byte on disk.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[repr(u8)]
pub enum KeyType {
    /// Marks a position removed since an earlier sorted run of the same node
    /// (only inside b-tree nodes; never returned by lookups).
    Deleted = 0,
    /// A deleted key in a snapshot whose ancestor still has the position.
    Whiteout = 1,
    /// Opaque bytes (tests, and btrees whose value the engine does not interpret).
    Blob = 2,
    /// A data extent: pointers into buckets (see `alloc::extent_format`).
    Extent = 3,
    /// A child pointer in an interior node.
    BtreePtr = 4,
    /// The alloc btree's per-bucket value.
    Alloc = 5,
    /// A free bucket in the freespace btree (no value).
    Free = 6,
    /// Space accounting counters.
    Accounting = 7,
    Inode = 8,
    Dirent = 9,
    Xattr = 10,
    ReflinkPtr = 11,
    IndirectExtent = 12,
    Subvolume = 13,
    Snapshot = 14,
}

impl KeyType {
    pub fn from_u8(v: u8) -> Option<KeyType> {
        use KeyType::*;
        Some(match v {
            0 => Deleted,
            1 => Whiteout,
            2 => Blob,
            3 => Extent,
            4 => BtreePtr,
            5 => Alloc,
            6 => Free,
            7 => Accounting,
            8 => Inode,
            9 => Dirent,
            10 => Xattr,
            11 => ReflinkPtr,
            12 => IndirectExtent,
            13 => Subvolume,
            14 => Snapshot,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use KeyType::*;
        match self {
            Deleted => "deleted",
            Whiteout => "whiteout",
            Blob => "blob",
            Extent => "extent",
            BtreePtr => "btree_ptr",
            Alloc => "alloc",
            Free => "free",
            Accounting => "accounting",
            Inode => "inode",
            Dirent => "dirent",
            Xattr => "xattr",
            ReflinkPtr => "reflink_ptr",
            IndirectExtent => "indirect_extent",
            Subvolume => "subvolume",
            Snapshot => "snapshot",
        }
    }
}

/// A key: position, size (extents: length in sectors), type and value bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    pub pos: Pos,
    pub size: u32,
    pub ty: KeyType,
    pub value: Vec<u8>,
}

impl Key {
    pub fn new(pos: Pos, ty: KeyType, value: Vec<u8>) -> Key {
        Key {
            pos,
            size: 0,
            ty,
            value,
        }
    }

    pub fn blob(pos: Pos, value: impl Into<Vec<u8>>) -> Key {
        Key {
            pos,
            size: 0,
            ty: KeyType::Blob,
            value: value.into(),
        }
    }

    /// An extent key covering `[start, start + size)` sectors of `inode`.
    pub fn extent(
        inode: u64,
        start: u64,
        size: u32,
        snapshot: u32,
        ty: KeyType,
        value: Vec<u8>,
    ) -> Key {
        Key {
            pos: Pos::new(inode, start + size as u64, snapshot),
            size,
            ty,
            value,
        }
    }

    pub fn whiteout(pos: Pos) -> Key {
        Key {
            pos,
            size: 0,
            ty: KeyType::Whiteout,
            value: Vec::new(),
        }
    }

    /// First sector covered (extents); equals `pos.offset` for non-extent keys.
    pub fn start(&self) -> u64 {
        self.pos.offset - self.size as u64
    }

    pub fn end(&self) -> u64 {
        self.pos.offset
    }

    pub fn is_whiteout(&self) -> bool {
        self.ty == KeyType::Whiteout
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {} size {} [{} bytes]",
            self.pos,
            self.ty.name(),
            self.size,
            self.value.len()
        )
    }
}

/// The b-trees. The number is the on-disk id and the lock order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
#[repr(u8)]
pub enum BtreeId {
    Extents = 0,
    Inodes = 1,
    Dirents = 2,
    Xattrs = 3,
    Reflink = 4,
    Subvolumes = 5,
    Snapshots = 6,
    Alloc = 7,
    Freespace = 8,
}

impl BtreeId {
    pub const ALL: [BtreeId; 9] = [
        BtreeId::Extents,
        BtreeId::Inodes,
        BtreeId::Dirents,
        BtreeId::Xattrs,
        BtreeId::Reflink,
        BtreeId::Subvolumes,
        BtreeId::Snapshots,
        BtreeId::Alloc,
        BtreeId::Freespace,
    ];
    pub const COUNT: usize = 9;

    pub fn from_u8(v: u8) -> Option<BtreeId> {
        BtreeId::ALL.get(v as usize).copied()
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            BtreeId::Extents => "extents",
            BtreeId::Inodes => "inodes",
            BtreeId::Dirents => "dirents",
            BtreeId::Xattrs => "xattrs",
            BtreeId::Reflink => "reflink",
            BtreeId::Subvolumes => "subvolumes",
            BtreeId::Snapshots => "snapshots",
            BtreeId::Alloc => "alloc",
            BtreeId::Freespace => "freespace",
        }
    }

    pub fn from_name(name: &str) -> Option<BtreeId> {
        BtreeId::ALL.iter().copied().find(|b| b.name() == name)
    }

    /// Keys carry a snapshot id that reads filter by.
    pub fn is_snapshot_aware(self) -> bool {
        matches!(
            self,
            BtreeId::Extents | BtreeId::Inodes | BtreeId::Dirents | BtreeId::Xattrs
        )
    }

    /// Keys are extents: indexed by end offset, with a size, and overwrites trim overlaps.
    pub fn is_extents(self) -> bool {
        matches!(self, BtreeId::Extents | BtreeId::Reflink)
    }

    /// Inserting or removing keys of this btree updates alloc keys.
    pub fn has_alloc_trigger(self) -> bool {
        matches!(self, BtreeId::Extents | BtreeId::Reflink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pos_orders_by_inode_offset_snapshot() {
        let a = Pos::new(1, 5, 9);
        let b = Pos::new(1, 6, 0);
        let c = Pos::new(2, 0, 0);
        assert!(a < b && b < c);
        assert!(Pos::new(1, 5, 1) < Pos::new(1, 5, 2));
    }

    #[test]
    fn successor_and_predecessor_are_inverse() {
        for p in [
            Pos::new(0, 0, 0),
            Pos::new(1, u64::MAX, u32::MAX),
            Pos::new(3, 7, 2),
        ] {
            let s = p.successor().unwrap();
            assert!(s > p);
            assert_eq!(s.predecessor(), Some(p));
        }
        assert_eq!(Pos::MAX.successor(), None);
        assert_eq!(Pos::MIN.predecessor(), None);
    }

    #[test]
    fn pos_parses() {
        assert_eq!("1:2:3".parse::<Pos>().unwrap(), Pos::new(1, 2, 3));
        assert_eq!("7".parse::<Pos>().unwrap(), Pos::new(7, 0, 0));
        assert_eq!("max:max:max".parse::<Pos>().unwrap(), Pos::MAX);
        assert!("1:x".parse::<Pos>().is_err());
        assert!("1:2:3:4".parse::<Pos>().is_err());
    }

    #[test]
    fn btree_names_round_trip() {
        for b in BtreeId::ALL {
            assert_eq!(BtreeId::from_name(b.name()), Some(b));
            assert_eq!(BtreeId::from_u8(b as u8), Some(b));
        }
    }
}
