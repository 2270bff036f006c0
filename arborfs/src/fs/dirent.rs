//! Directory entries: a hash table in the dirents btree with linear
//! probing. A slot holds an entry or a whiteout (a deleted entry inside a
//! probe chain); the first empty slot ends a chain.

use super::dirent_format::{DirentValue, NAME_MAX, name_slot};
use super::error::{FsError, FsResult};
use super::types::{InodeNo, ROOT_SNAPSHOT};
use crate::btree::trans::Transaction;
use crate::key::{BtreeId, Key, KeyType, Pos};

const PROBE_BATCH: usize = 16;

pub fn dirent_pos(dir: InodeNo, slot: u64) -> Pos {
    Pos::new(dir.0, slot, ROOT_SNAPSHOT)
}

pub fn check_name(name: &[u8]) -> FsResult<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(FsError::Invalid(format!(
            "bad file name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    Ok(())
}

fn decode(k: &Key) -> FsResult<DirentValue> {
    DirentValue::decode(&k.value)
        .ok_or_else(|| FsError::Corrupted(format!("bad dirent at {:?}", k.pos)))
}

/// Walks the probe chain of `name`: returns the slot holding it (if any)
/// and the first free-or-whiteout slot seen (where it could be inserted).
fn probe(
    tx: &mut Transaction<'_>,
    dir: InodeNo,
    name: &[u8],
) -> FsResult<(Option<(u64, DirentValue)>, u64)> {
    let mut slot = name_slot(name);
    let mut insert_at = None;
    loop {
        let keys = tx.scan(
            BtreeId::Dirents,
            dirent_pos(dir, slot),
            dirent_pos(dir, slot + PROBE_BATCH as u64 - 1),
            PROBE_BATCH,
        )?;
        let mut expect = slot;
        for k in &keys {
            if k.pos.offset != expect {
                // A gap: the chain ends at `expect`.
                return Ok((None, insert_at.unwrap_or(expect)));
            }
            if k.ty == KeyType::Whiteout {
                insert_at.get_or_insert(expect);
            } else {
                let d = decode(k)?;
                if d.name == name {
                    return Ok((Some((expect, d)), insert_at.unwrap_or(expect)));
                }
            }
            expect += 1;
        }
        if keys.len() < PROBE_BATCH {
            return Ok((None, insert_at.unwrap_or(expect)));
        }
        slot = expect;
    }
}

/// The entry `name` in `dir`: (slot, value).
pub fn lookup(
    tx: &mut Transaction<'_>,
    dir: InodeNo,
    name: &[u8],
) -> FsResult<Option<(u64, DirentValue)>> {
    Ok(probe(tx, dir, name)?.0)
}

/// Adds `name` → `target`; fails with `Exists` if the name is taken.
pub fn insert(
    tx: &mut Transaction<'_>,
    dir: InodeNo,
    name: &[u8],
    target: InodeNo,
    d_type: u8,
) -> FsResult<u64> {
    check_name(name)?;
    let (found, slot) = probe(tx, dir, name)?;
    if found.is_some() {
        return Err(FsError::Exists);
    }
    let v = DirentValue {
        target: target.0,
        d_type,
        name: name.to_vec(),
    };
    tx.put(
        BtreeId::Dirents,
        Key::new(dirent_pos(dir, slot), KeyType::Dirent, v.encode()),
    );
    Ok(slot)
}

/// Points an existing entry at another inode (rename over a target).
pub fn replace(
    tx: &mut Transaction<'_>,
    dir: InodeNo,
    slot: u64,
    name: &[u8],
    target: InodeNo,
    d_type: u8,
) {
    let v = DirentValue {
        target: target.0,
        d_type,
        name: name.to_vec(),
    };
    tx.put(
        BtreeId::Dirents,
        Key::new(dirent_pos(dir, slot), KeyType::Dirent, v.encode()),
    );
}

/// Removes the entry at `slot`, leaving a whiteout if a chain continues past it.
pub fn remove(tx: &mut Transaction<'_>, dir: InodeNo, slot: u64) -> FsResult<()> {
    let next = tx.get(BtreeId::Dirents, dirent_pos(dir, slot + 1))?;
    if next.is_some() {
        tx.put(BtreeId::Dirents, Key::whiteout(dirent_pos(dir, slot)));
    } else {
        tx.delete(BtreeId::Dirents, dirent_pos(dir, slot));
    }
    Ok(())
}

/// True if `dir` has no entries (whiteouts don't count).
pub fn is_empty(tx: &mut Transaction<'_>, dir: InodeNo) -> FsResult<bool> {
    let mut start = dirent_pos(dir, 0);
    let end = dirent_pos(dir, u64::MAX);
    loop {
        let keys = tx.scan(BtreeId::Dirents, start, end, 64)?;
        if keys.iter().any(|k| k.ty != KeyType::Whiteout) {
            return Ok(false);
        }
        match keys.last() {
            Some(k) if keys.len() == 64 => start = k.pos.successor().unwrap_or(end),
            _ => return Ok(true),
        }
    }
}

/// One entry for readdir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: InodeNo,
    pub kind: super::types::FileKind,
    pub name: Vec<u8>,
    /// Cookie that resumes the listing after this entry.
    pub next_cookie: u64,
}

/// Up to `limit` entries of `dir` with slot ≥ `from_slot`, whiteouts skipped.
pub fn list(
    tx: &mut Transaction<'_>,
    dir: InodeNo,
    from_slot: u64,
    limit: usize,
) -> FsResult<Vec<(u64, DirentValue)>> {
    let mut out = Vec::new();
    let mut start = dirent_pos(dir, from_slot);
    let end = dirent_pos(dir, u64::MAX);
    while out.len() < limit {
        let keys = tx.scan(BtreeId::Dirents, start, end, limit)?;
        for k in &keys {
            if k.ty != KeyType::Whiteout {
                out.push((k.pos.offset, decode(k)?));
            }
        }
        match keys.last() {
            Some(k) if keys.len() == limit => start = k.pos.successor().unwrap_or(end),
            _ => break,
        }
    }
    out.truncate(limit);
    Ok(out)
}
