//! Reading and writing inodes, and turning them into [`Attr`].

use super::error::{FsError, FsResult};
use super::inode_format::InodeValue;
use super::types::{Attr, FileKind, InodeNo, ROOT_SNAPSHOT};
use super::{FsCore, inode_pos, orphan_pos};
use crate::btree::trans::{Durability, Transaction};
use crate::key::{BtreeId, Key, KeyType, Pos};

/// Largest file offset (bytes) a file may reach.
pub const MAX_FILE_SIZE: u64 = 1 << 50;

pub fn read_inode_opt(tx: &mut Transaction<'_>, ino: InodeNo) -> FsResult<Option<InodeValue>> {
    match tx.get(BtreeId::Inodes, inode_pos(ino))? {
        Some(k) if k.ty == KeyType::Inode => InodeValue::decode(&k.value)
            .map(Some)
            .ok_or_else(|| FsError::Corrupted(format!("undecodable inode {}", ino.0))),
        Some(_) => Err(FsError::Corrupted(format!(
            "key at inode {} is not an inode",
            ino.0
        ))),
        None => Ok(None),
    }
}

pub fn read_inode(tx: &mut Transaction<'_>, ino: InodeNo) -> FsResult<InodeValue> {
    read_inode_opt(tx, ino)?.ok_or(FsError::NotFound)
}

pub fn write_inode(tx: &mut Transaction<'_>, ino: InodeNo, v: &InodeValue) {
    tx.put(
        BtreeId::Inodes,
        Key::new(inode_pos(ino), KeyType::Inode, v.encode()),
    );
}

pub fn to_attr(ino: InodeNo, v: &InodeValue) -> Attr {
    Attr {
        ino,
        kind: FileKind::from_mode(v.mode).unwrap_or(FileKind::Regular),
        perm: v.mode & 0o7777,
        nlink: v.nlink,
        uid: v.uid,
        gid: v.gid,
        size: v.size,
        blocks: v.sectors,
        atime: v.atime,
        mtime: v.mtime,
        ctime: v.ctime,
        btime: v.btime,
        rdev: v.rdev,
        blksize: 1 << 20,
        flags: v.flags,
        generation: v.generation,
    }
}

impl FsCore {
    pub fn getattr(&self, ino: InodeNo) -> FsResult<Attr> {
        let v = self.tx(Durability::Lazy, |tx| read_inode(tx, ino))?;
        Ok(self.overlay_attr(to_attr(ino, &v)))
    }

    /// Frees an inode with no names left: its data, xattrs, the inode
    /// itself and its orphan-list entry, in one transaction.
    pub(crate) fn evict_inode(&self, ino: InodeNo) -> FsResult<()> {
        self.pages.forget(ino.0);
        self.tx(Durability::Lazy, |tx| {
            tx.delete_range(
                BtreeId::Extents,
                ino.0,
                ROOT_SNAPSHOT,
                0,
                MAX_FILE_SIZE / 512,
            );
            // Xattrs and a symlink's target; a directory's leftover
            // whiteouts. Whiteouts are keys too: scan, not iter.
            let end = Pos::new(ino.0, u64::MAX, u32::MAX);
            for btree in [BtreeId::Xattrs, BtreeId::Dirents] {
                let mut start = Pos::new(ino.0, 0, 0);
                loop {
                    let keys = tx.scan(btree, start, end, 256)?;
                    for k in &keys {
                        tx.delete(btree, k.pos);
                    }
                    match keys.last().and_then(|k| k.pos.successor()) {
                        Some(next) if keys.len() == 256 => start = next,
                        _ => break,
                    }
                }
            }
            tx.delete(BtreeId::Inodes, inode_pos(ino));
            tx.delete(BtreeId::Inodes, orphan_pos(ino));
            Ok(())
        })
    }
}
