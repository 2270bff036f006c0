//! Hash tables in a b-tree with linear probing, shared by directory entries
//! and xattrs. An entry of inode `i` lives at `i : slot : ROOT_SNAPSHOT`,
//! where the slot starts at the entry's hash and probes upward on collision.
//! A slot holds an entry or a whiteout (a deleted entry inside a probe
//! chain); the first empty slot ends a chain.
//!
//! Reads see committed keys only (the engine's scans don't merge a
//! transaction's queued updates), so a transaction that inserts and removes
//! in the same table must insert first: removal then sees the queued insert
//! in the next slot and leaves a whiteout instead of cutting the chain.

use super::error::FsResult;
use super::types::ROOT_SNAPSHOT;
use crate::btree::trans::Transaction;
use crate::key::{BtreeId, Key, KeyType, Pos};

const PROBE_BATCH: usize = 16;

pub fn slot_pos(inode: u64, slot: u64) -> Pos {
    Pos::new(inode, slot, ROOT_SNAPSHOT)
}

/// Walks the probe chain starting at `start`: returns the first slot whose
/// key `is_match` accepts (with that key), and the first free-or-whiteout
/// slot seen (where a new entry could go).
pub fn probe(
    tx: &mut Transaction<'_>,
    btree: BtreeId,
    inode: u64,
    start: u64,
    mut is_match: impl FnMut(&Key) -> FsResult<bool>,
) -> FsResult<(Option<(u64, Key)>, u64)> {
    let mut slot = start;
    let mut insert_at = None;
    loop {
        let keys = tx.scan(
            btree,
            slot_pos(inode, slot),
            slot_pos(inode, slot + PROBE_BATCH as u64 - 1),
            PROBE_BATCH,
        )?;
        let mut expect = slot;
        for k in keys.iter() {
            if k.pos.offset != expect {
                // A gap: the chain ends at `expect`.
                return Ok((None, insert_at.unwrap_or(expect)));
            }
            if k.ty == KeyType::Whiteout {
                insert_at.get_or_insert(expect);
            } else if is_match(k)? {
                return Ok((Some((expect, k.clone())), insert_at.unwrap_or(expect)));
            }
            expect += 1;
        }
        if keys.len() < PROBE_BATCH {
            return Ok((None, insert_at.unwrap_or(expect)));
        }
        slot = expect;
    }
}

/// Removes the entry at `slot`, leaving a whiteout if a chain continues past it.
pub fn remove(tx: &mut Transaction<'_>, btree: BtreeId, inode: u64, slot: u64) -> FsResult<()> {
    let next = tx.get(btree, slot_pos(inode, slot + 1))?;
    if next.is_some() {
        tx.put(btree, Key::whiteout(slot_pos(inode, slot)));
    } else {
        tx.delete(btree, slot_pos(inode, slot));
    }
    Ok(())
}

/// Up to `limit` entries of `inode` with slot ≥ `from_slot`, whiteouts skipped.
pub fn list(
    tx: &mut Transaction<'_>,
    btree: BtreeId,
    inode: u64,
    from_slot: u64,
    limit: usize,
) -> FsResult<Vec<Key>> {
    let mut out = Vec::new();
    let mut start = slot_pos(inode, from_slot);
    let end = slot_pos(inode, u64::MAX);
    while out.len() < limit {
        let keys = tx.scan(btree, start, end, limit)?;
        let full = keys.len() == limit;
        let last = keys.last().map(|k| k.pos);
        out.extend(keys.into_iter().filter(|k| k.ty != KeyType::Whiteout));
        match last {
            Some(p) if full => match p.successor() {
                Some(s) if s <= end => start = s,
                _ => break,
            },
            _ => break,
        }
    }
    out.truncate(limit);
    Ok(out)
}
