//! File data: extents in the extents btree, each pointing at checksummed
//! data in a bucket.
//!
//! Writes are copy-on-write: new data goes to freshly allocated space, is
//! written, and then one transaction inserts the extent keys (the engine
//! trims what they overwrite and its alloc trigger releases that space) and
//! updates the inode. Reads verify the checksum of every stored unit they
//! touch and fail with EIO rather than return wrong bytes.
//!
//! Units are compressed when that saves space (see [`super::compress`] for
//! the stored layout); a read decompresses the whole unit it touches.

use std::borrow::Cow;
use std::collections::HashMap;

use arborfs_iolock::{IoMode, PagecacheMode};

use super::FsCore;
use super::compress::{self, Compression};
use super::error::{FsError, FsResult};
use super::inode::{MAX_FILE_SIZE, read_inode, to_attr, write_inode};
use super::inode_format::InodeValue;
use super::types::*;
use crate::SECTOR_BYTES;
use crate::alloc::extent_format::{ExtentPtr, ExtentValue};
use crate::btree::trans::{Durability, MAX_EXTENT_SECTORS, Transaction, extent_scan_batches};
use crate::key::{BtreeId, Key, KeyType, Pos};
use crate::sb::ChecksumType;

/// Unit of file data in bytes: writes are read-modify-write below it.
pub const BLOCK: u64 = 4096;
/// Largest checksummed unit: a read verifies at most this much extra.
pub const MAX_EXTENT_BYTES: u64 = 128 << 10;
/// Largest single device read when prefetching contiguous units.
const PREFETCH_MAX_SECTORS: u64 = (4 << 20) / SECTOR_BYTES;

const _: () = assert!(MAX_EXTENT_BYTES / SECTOR_BYTES <= MAX_EXTENT_SECTORS as u64);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
/// What `fallocate` does; all false preallocates (and extends the size).
pub struct FallocFlags {
    /// Do not change the file size (FALLOC_FL_KEEP_SIZE).
    pub keep_size: bool,
    /// Deallocate the range; it reads as zeros (FALLOC_FL_PUNCH_HOLE, needs keep_size).
    pub punch_hole: bool,
    /// Make the range read as zeros (FALLOC_FL_ZERO_RANGE).
    pub zero_range: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// What `lseek` looks for.
pub enum SeekWhence {
    /// The next offset holding data (SEEK_DATA).
    Data,
    /// The next offset in a hole, or the end of the file (SEEK_HOLE).
    Hole,
}

pub(crate) fn checksum(kind: ChecksumType, data: &[u8]) -> u64 {
    match kind {
        ChecksumType::None => 0,
        ChecksumType::Crc32c => crc32c::crc32c(data) as u64,
        ChecksumType::Xxh3 => xxhash_rust::xxh3::xxh3_64(data),
    }
}

pub(crate) fn checksum_type(v: u8) -> FsResult<ChecksumType> {
    ChecksumType::from_u8(v).ok_or_else(|| FsError::Corrupted(format!("unknown checksum type {v}")))
}

pub(crate) fn regular(v: &InodeValue) -> FsResult<()> {
    match v.mode & S_IFMT {
        S_IFREG => Ok(()),
        S_IFDIR => Err(FsError::IsDir),
        _ => Err(FsError::Invalid("not a regular file".into())),
    }
}

/// Clears setuid, and setgid when group-executable, as a write or truncate
/// by a caller without CAP_FSETID does.
pub(crate) fn kill_suid(caller: &Caller, v: &mut InodeValue) {
    if caller.fsetid {
        return;
    }
    v.mode &= !S_ISUID;
    if v.mode & 0o010 != 0 {
        v.mode &= !S_ISGID;
    }
}

fn extent_range(ino: InodeNo, start_sector: u64, end_sector: u64) -> (Pos, Pos) {
    (
        Pos::new(ino.0, start_sector + 1, ROOT_SNAPSHOT),
        Pos::new(
            ino.0,
            end_sector.saturating_add(MAX_EXTENT_SECTORS as u64),
            ROOT_SNAPSHOT,
        ),
    )
}

/// Extent keys of `ino` overlapping sectors `[start, end)`, in order.
pub(crate) fn extents_in(
    tx: &mut Transaction<'_>,
    ino: InodeNo,
    start: u64,
    end: u64,
) -> FsResult<Vec<Key>> {
    let (lo, hi) = extent_range(ino, start, end);
    let mut out = Vec::new();
    let mut cursor = lo;
    let mut batches = extent_scan_batches(start, end, 256);
    loop {
        let limit = batches.next().unwrap_or(256);
        let batch = tx.scan(BtreeId::Extents, cursor, hi, limit)?;
        let full = batch.len() == limit;
        for k in batch {
            cursor = k.pos.successor().unwrap_or(hi);
            if k.pos.snapshot != ROOT_SNAPSHOT {
                continue;
            }
            if k.start() >= end {
                return Ok(out);
            }
            out.push(k);
        }
        if !full {
            return Ok(out);
        }
    }
}

/// Inserts `keys`, the new data of bytes `[start, end)` of a regular
/// file, and returns its inode with the allocated sectors updated (for the
/// caller to finish and write).
pub(crate) fn put_extents(
    tx: &mut Transaction<'_>,
    ino: InodeNo,
    start: u64,
    end: u64,
    keys: &[Key],
) -> FsResult<InodeValue> {
    let mut v = read_inode(tx, ino)?;
    regular(&v)?;
    add_extents(tx, ino, start, end, keys, &mut v)?;
    Ok(v)
}

/// `put_extents` into an inode value the caller read (and writes): for
/// several disjoint ranges in one transaction.
pub(crate) fn add_extents(
    tx: &mut Transaction<'_>,
    ino: InodeNo,
    start: u64,
    end: u64,
    keys: &[Key],
    v: &mut InodeValue,
) -> FsResult<()> {
    let (s, e) = (start / SECTOR_BYTES, end / SECTOR_BYTES);
    let old = overlap_sectors(&extents_in(tx, ino, s, e)?, s, e);
    for k in keys {
        tx.put(BtreeId::Extents, k.clone());
    }
    v.sectors = v.sectors + (e - s) - old;
    Ok(())
}

/// Sectors of `keys` that fall inside `[start, end)`.
pub(crate) fn overlap_sectors(keys: &[Key], start: u64, end: u64) -> u64 {
    keys.iter()
        .map(|k| k.end().min(end).saturating_sub(k.start().max(start)))
        .sum()
}

/// One extent key's share of a read: file bytes `[from, to)` come from
/// `in_unit` bytes into the unit `ptr` points at.
struct Piece {
    key_start: u64,
    key_end: u64,
    from: u64,
    to: u64,
    in_unit: u64,
    v: ExtentValue,
    ptr: ExtentPtr,
    /// The key is a whole raw unit inside the read: read it in place.
    whole: bool,
}

/// Takes verified file bytes a read got beyond what it was asked for:
/// `(file offset, bytes)`, whole pages. Called as each unit is verified
/// (also during an attempt that is retried: the bytes are still what the
/// file held).
pub(crate) type Around<'f> = dyn FnMut(u64, &[u8]) + 'f;

/// Units read ahead by `prefetch_units`: their bytes, back to back, and
/// where each unit (by device sector) lies in them.
struct Prefetched {
    bytes: Vec<u8>,
    at: HashMap<u64, (usize, usize)>,
}

impl Prefetched {
    fn get(&self, sector: u64) -> Option<&[u8]> {
        self.at.get(&sector).map(|&(a, b)| &self.bytes[a..b])
    }
}

/// Zeroes the bytes of `out` (file offset `offset`) no piece covers: holes.
fn zero_gaps(out: &mut [u8], offset: u64, pieces: &[Piece]) {
    let mut at = 0usize;
    for p in pieces {
        let from = (p.from - offset) as usize;
        if from > at {
            out[at..from].fill(0);
        }
        at = at.max((p.to - offset) as usize);
    }
    out[at..].fill(0);
}

/// Checks a stored unit's checksum.
fn verify_unit(v: &ExtentValue, ptr: &ExtentPtr, stored: &[u8]) -> FsResult<()> {
    let kind = checksum_type(v.csum_type)?;
    if checksum(kind, stored) != v.csum {
        tracing::error!(sector = ptr.dev_sector, "data checksum mismatch");
        return Err(FsError::Io(format!(
            "checksum mismatch in data at sector {}",
            ptr.dev_sector
        )));
    }
    Ok(())
}

/// The plain bytes of a stored unit read from disk: its checksum verified,
/// then decompressed if it is compressed.
pub(crate) fn plain_unit<'a>(
    v: &ExtentValue,
    ptr: &ExtentPtr,
    stored: Cow<'a, [u8]>,
) -> FsResult<Cow<'a, [u8]>> {
    verify_unit(v, ptr, &stored)?;
    if v.compression == 0 {
        return Ok(stored);
    }
    let len = v.uncompressed_sectors as usize * SECTOR_BYTES as usize;
    let plain = compress::decompress_unit(v.compression, &stored, len).map_err(|e| {
        tracing::error!(sector = ptr.dev_sector, "bad compressed data: {e}");
        FsError::Io(format!(
            "bad compressed data at sector {}: {e}",
            ptr.dev_sector
        ))
    })?;
    Ok(Cow::Owned(plain))
}

/// Data written by `store`: the keys to commit, and the pins that keep
/// their buckets from being freed until the commit (drop after it).
pub(crate) struct Stored {
    pub(crate) keys: Vec<Key>,
    pub(crate) _pins: Vec<crate::engine::PinnedAlloc>,
}

impl FsCore {
    fn data_checksum(&self) -> ChecksumType {
        self.engine.superblock().data_checksum
    }

    /// Reads from disk, bypassing the page cache, for a caller that holds
    /// the inode's IO lock; short only at the on-disk end of file.
    pub(crate) fn read_inner(&self, ino: InodeNo, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        self.read_inner_around(ino, offset, buf, None)
    }

    /// `read_inner` that also hands `around` the other verified
    /// bytes of the units it had to read whole (checksummed or compressed
    /// units a small read lies inside), for the page cache to keep.
    pub(crate) fn read_inner_around(
        &self,
        ino: InodeNo,
        offset: u64,
        buf: &mut [u8],
        mut around: Option<&mut Around<'_>>,
    ) -> FsResult<usize> {
        // Between our lookup and the data read, copygc may move an extent
        // or a writeback (which runs beside reads) replace it, and its old
        // bucket be reused with a new generation: then look it up again.
        let mut tries = 0;
        loop {
            let seq = self.engine.data_move_seq();
            let mut used = Vec::new();
            match self.read_once(ino, offset, buf, &mut used, around.as_deref_mut()) {
                Err(FsError::Io(_))
                    if tries < 16
                        && (seq % 2 == 1
                            || self.engine.data_move_seq() != seq
                            || self.extents_now(ino, offset, buf.len())?.1 != used) =>
                {
                    tries += 1
                }
                r => return r,
            }
        }
    }

    /// The on-disk size, and the extent keys a read of `len` bytes at
    /// `offset` looks up, in one transaction.
    fn extents_now(&self, ino: InodeNo, offset: u64, len: usize) -> FsResult<(u64, Vec<Key>)> {
        self.tx(Durability::Lazy, |tx| {
            let v = read_inode(tx, ino)?;
            regular(&v)?;
            if offset >= v.size {
                return Ok((v.size, Vec::new()));
            }
            let end = (offset + len as u64).min(v.size);
            let keys = extents_in(tx, ino, offset / SECTOR_BYTES, end.div_ceil(SECTOR_BYTES))?;
            Ok((v.size, keys))
        })
    }

    fn read_once(
        &self,
        ino: InodeNo,
        offset: u64,
        buf: &mut [u8],
        used: &mut Vec<Key>,
        mut around: Option<&mut Around<'_>>,
    ) -> FsResult<usize> {
        let size;
        (size, *used) = self.extents_now(ino, offset, buf.len())?;
        let keys = &*used;
        if offset >= size {
            return Ok(0);
        }
        let n = (size - offset).min(buf.len() as u64) as usize;
        let out = &mut buf[..n];
        let end = offset + n as u64;
        let mut pieces = Vec::with_capacity(keys.len());
        for k in keys {
            let v = ExtentValue::decode(&k.value)
                .ok_or_else(|| FsError::Corrupted(format!("bad extent value at {:?}", k.pos)))?;
            let key_start = k.start() * SECTOR_BYTES;
            let key_end = k.end() * SECTOR_BYTES;
            let from = key_start.max(offset);
            let to = key_end.min(end);
            if from >= to {
                continue;
            }
            let ptr = *v
                .ptrs
                .first()
                .ok_or_else(|| FsError::Corrupted("extent without pointers".into()))?;
            // A whole raw unit inside the range is read straight into place.
            let whole = v.compression == 0
                && v.offset == 0
                && u64::from(v.stored_sectors) == k.end() - k.start()
                && key_start >= offset
                && key_end <= end;
            pieces.push(Piece {
                key_start,
                key_end,
                from,
                to,
                in_unit: v.offset as u64 * SECTOR_BYTES + (from - key_start),
                v,
                ptr,
                whole,
            });
        }
        zero_gaps(out, offset, &pieces);
        self.read_whole_units(out, offset, &pieces)?;
        let partial: Vec<&Piece> = pieces.iter().filter(|p| !p.whole).collect();
        if partial.is_empty() {
            return Ok(n);
        }
        let raw = self.prefetch_units(&partial)?;
        let mut unit: Option<(u64, Cow<'_, [u8]>)> = None;
        for p in partial {
            let data = match &unit {
                Some((at, d)) if *at == p.ptr.dev_sector => d,
                _ => {
                    let stored = self.read_unit(&p.v, &p.ptr, raw.get(p.ptr.dev_sector))?;
                    &unit.insert((p.ptr.dev_sector, stored)).1
                }
            };
            let len = (p.to - p.from) as usize;
            let src = data
                .get(p.in_unit as usize..p.in_unit as usize + len)
                .ok_or_else(|| {
                    FsError::Corrupted(format!(
                        "extent at sector {} points past its data",
                        p.ptr.dev_sector
                    ))
                })?;
            out[(p.from - offset) as usize..(p.to - offset) as usize].copy_from_slice(src);
            if let Some(around) = around.as_deref_mut() {
                // The key's whole pages, if it reaches beyond the read.
                let first = p.key_start.div_ceil(BLOCK) * BLOCK;
                let last = p.key_end.min(size) / BLOCK * BLOCK;
                if first < last && (first < offset || last > end) {
                    let key_in_unit = p.in_unit - (p.from - p.key_start);
                    let at = (key_in_unit + (first - p.key_start)) as usize;
                    if let Some(bytes) = data.get(at..at + (last - first) as usize) {
                        around(first, bytes);
                    }
                }
            }
        }
        Ok(n)
    }

    /// Reads the `whole` pieces (raw units that lie entirely in `out`)
    /// directly into `out`, one device read per run that is contiguous both
    /// on disk and in the file, and verifies each unit in place.
    fn read_whole_units(&self, out: &mut [u8], offset: u64, pieces: &[Piece]) -> FsResult<()> {
        let whole: Vec<&Piece> = pieces.iter().filter(|p| p.whole).collect();
        let mut i = 0;
        while i < whole.len() {
            let first = whole[i];
            let mut j = i + 1;
            let mut sector_end = first.ptr.dev_sector + u64::from(first.v.stored_sectors);
            while j < whole.len()
                && whole[j].ptr.dev_sector == sector_end
                && whole[j].from == whole[j - 1].to
                && sector_end - first.ptr.dev_sector < PREFETCH_MAX_SECTORS
            {
                sector_end += u64::from(whole[j].v.stored_sectors);
                j += 1;
            }
            for p in &whole[i..j] {
                self.check_generation(&p.ptr)?;
            }
            let run = &mut out[(first.from - offset) as usize..(whole[j - 1].to - offset) as usize];
            self.engine.read_data(first.ptr.dev_sector, run)?;
            for p in &whole[i..j] {
                let at = (p.from - first.from) as usize;
                verify_unit(&p.v, &p.ptr, &run[at..at + (p.to - p.from) as usize])?;
            }
            i = j;
        }
        Ok(())
    }

    /// The stored bytes of every unit `pieces` point at, read with one
    /// device read per physically contiguous run (sequentially written
    /// files read in large IOs, not unit by unit).
    fn prefetch_units(&self, pieces: &[&Piece]) -> FsResult<Prefetched> {
        let mut units: Vec<(u64, u64)> = Vec::new();
        for p in pieces {
            if units.last().is_none_or(|u| u.0 != p.ptr.dev_sector) {
                units.push((p.ptr.dev_sector, u64::from(p.v.stored_sectors)));
            }
        }
        units.sort_unstable();
        units.dedup_by_key(|u| u.0);
        let total: u64 = units.iter().map(|u| u.1).sum();
        let mut got = Prefetched {
            bytes: vec![0u8; (total * SECTOR_BYTES) as usize],
            at: HashMap::with_capacity(units.len()),
        };
        let mut filled = 0usize;
        let mut i = 0;
        while i < units.len() {
            let mut j = i + 1;
            let mut end = units[i].0 + units[i].1;
            while j < units.len() && units[j].0 == end && end - units[i].0 < PREFETCH_MAX_SECTORS {
                end += units[j].1;
                j += 1;
            }
            let len = ((end - units[i].0) * SECTOR_BYTES) as usize;
            self.engine
                .read_data(units[i].0, &mut got.bytes[filled..filled + len])?;
            for &(sector, sectors) in &units[i..j] {
                let at = filled + ((sector - units[i].0) * SECTOR_BYTES) as usize;
                got.at
                    .insert(sector, (at, at + (sectors * SECTOR_BYTES) as usize));
            }
            filled += len;
            i = j;
        }
        Ok(got)
    }

    fn check_generation(&self, ptr: &ExtentPtr) -> FsResult<()> {
        let bucket = self.engine.geometry().bucket_of(ptr.dev_sector);
        let gen_now = self.engine.bucket(bucket)?.generation;
        if gen_now != ptr.generation {
            return Err(FsError::Io(format!(
                "stale pointer into bucket {bucket} (generation {} but bucket is at {gen_now})",
                ptr.generation
            )));
        }
        Ok(())
    }

    /// Verifies one stored unit (read now unless `raw` holds its bytes);
    /// returns it uncompressed.
    fn read_unit<'a>(
        &self,
        v: &ExtentValue,
        ptr: &ExtentPtr,
        raw: Option<&'a [u8]>,
    ) -> FsResult<Cow<'a, [u8]>> {
        self.check_generation(ptr)?;
        let want = v.stored_sectors as usize * SECTOR_BYTES as usize;
        let data: Cow<'a, [u8]> = match raw {
            Some(d) if d.len() == want => Cow::Borrowed(d),
            _ => {
                let mut d = vec![0u8; want];
                self.engine.read_data(ptr.dev_sector, &mut d)?;
                Cow::Owned(d)
            }
        };
        plain_unit(v, ptr, data)
    }

    /// Writes `data` at `offset` straight to disk (new extents and the
    /// inode in one transaction), for a caller that holds the inode's IO
    /// lock and has written back and dropped the cached pages of the range.
    pub(crate) fn write_through(
        &self,
        caller: &Caller,
        ino: InodeNo,
        offset: u64,
        data: &[u8],
    ) -> FsResult<usize> {
        let end = offset + data.len() as u64;
        let v = self.tx(Durability::Lazy, |tx| read_inode(tx, ino))?;
        regular(&v)?;
        // Whole blocks: merge the edges with what is there now.
        let blk_start = offset / BLOCK * BLOCK;
        let blk_end = end.div_ceil(BLOCK) * BLOCK;
        let mut buf = vec![0u8; (blk_end - blk_start) as usize];
        if offset != blk_start {
            self.read_inner(ino, blk_start, &mut buf[..BLOCK as usize])?;
        }
        if end != blk_end && (blk_end - BLOCK > blk_start || offset == blk_start) {
            let at = (blk_end - BLOCK - blk_start) as usize;
            self.read_inner(ino, blk_end - BLOCK, &mut buf[at..])?;
        }
        buf[(offset - blk_start) as usize..(end - blk_start) as usize].copy_from_slice(data);
        let Stored { keys, _pins } =
            self.store(ino, blk_start, &buf, self.effective_compression(&v))?;
        self.tx(Durability::Lazy, |tx| {
            let mut v = put_extents(tx, ino, blk_start, blk_end, &keys)?;
            v.size = v.size.max(end);
            let now = Timespec::now();
            v.mtime = now;
            v.ctime = now;
            kill_suid(caller, &mut v);
            write_inode(tx, ino, &v);
            Ok(())
        })?;
        Ok(data.len())
    }

    /// Writes block-aligned `buf` (file offset `at`) to new space, each
    /// unit compressed with `comp` where that saves space; returns the
    /// extent keys to insert, and the pins on their buckets to hold until
    /// those keys are committed.
    pub(crate) fn store(
        &self,
        ino: InodeNo,
        at: u64,
        buf: &[u8],
        comp: Compression,
    ) -> FsResult<Stored> {
        let kind = self.data_checksum();
        let bucket_bytes = self.engine.geometry().bucket_sectors * SECTOR_BYTES;
        let max_unit = MAX_EXTENT_BYTES.min(bucket_bytes) as usize;
        let mut keys = Vec::new();
        let mut pins = Vec::new();
        let mut done = 0usize;
        while done < buf.len() {
            let unit = &buf[done..done + (buf.len() - done).min(max_unit)];
            let packed = compress::compress_unit(comp, unit);
            let need = packed.as_ref().map_or(unit.len(), |(p, _)| p.len()) / SECTOR_BYTES as usize;
            let a = self.engine.alloc_data(need as u32)?;
            let (stored, len, compression) = match &packed {
                Some((p, c)) if a.sectors as usize == need => (&p[..], unit.len(), *c),
                // Raw, in whole blocks of the space we got: also the end of
                // a bucket too short for the compressed unit.
                _ => {
                    let len = (a.sectors as u64 * SECTOR_BYTES / BLOCK * BLOCK) as usize;
                    if len == 0 {
                        // Less than a block left in the bucket: it stays
                        // unused, and the next allocation opens a new one.
                        continue;
                    }
                    (&unit[..len], len, 0)
                }
            };
            self.engine.write_data(a.dev_sector, stored)?;
            let sectors = (len as u64 / SECTOR_BYTES) as u32;
            let v = ExtentValue {
                csum_type: kind as u8,
                compression,
                stored_sectors: (stored.len() as u64 / SECTOR_BYTES) as u32,
                uncompressed_sectors: sectors,
                offset: 0,
                csum: checksum(kind, stored),
                ptrs: vec![ExtentPtr {
                    dev_sector: a.dev_sector,
                    generation: a.generation,
                }],
            };
            let start = (at + done as u64) / SECTOR_BYTES;
            keys.push(Key::extent(
                ino.0,
                start,
                sectors,
                ROOT_SNAPSHOT,
                KeyType::Extent,
                v.encode(),
            ));
            pins.push(a);
            done += len;
        }
        Ok(Stored { keys, _pins: pins })
    }

    /// Truncates or extends a regular file.
    pub fn set_size(&self, caller: &Caller, ino: InodeNo, size: u64) -> FsResult<Attr> {
        if size > MAX_FILE_SIZE {
            return Err(FsError::FileTooBig);
        }
        let _l = self.lock_inode(ino, IoMode::Exclusive, Some(PagecacheMode::Block));
        self.writeback_inode_locked(ino)?;
        self.pages.forget(ino.0);
        self.set_size_locked(caller, ino, size)
    }

    /// `set_size` for a caller that holds the IO lock exclusively and the
    /// pagecache block lock, with no cached pages left.
    fn set_size_locked(&self, caller: &Caller, ino: InodeNo, size: u64) -> FsResult<Attr> {
        let v = self.tx(Durability::Lazy, |tx| read_inode(tx, ino))?;
        regular(&v)?;
        // A partial last block keeps only the bytes below the new size, so
        // growing the file later reads zeros there.
        let tail = if size < v.size && !size.is_multiple_of(BLOCK) {
            let blk = size / BLOCK * BLOCK;
            let mut b = vec![0u8; BLOCK as usize];
            self.read_inner(ino, blk, &mut b)?;
            b[(size - blk) as usize..].fill(0);
            Some(self.store(ino, blk, &b, self.effective_compression(&v))?)
        } else {
            None
        };
        self.tx(Durability::Lazy, |tx| {
            let mut v = read_inode(tx, ino)?;
            regular(&v)?;
            if size < v.size {
                let cut = size.div_ceil(BLOCK) * BLOCK / SECTOR_BYTES;
                let end = v.size.div_ceil(SECTOR_BYTES).max(cut) + MAX_EXTENT_SECTORS as u64;
                let gone = overlap_sectors(&extents_in(tx, ino, cut, end)?, cut, end);
                tx.delete_range(BtreeId::Extents, ino.0, ROOT_SNAPSHOT, cut, end);
                v.sectors = v.sectors.saturating_sub(gone);
                if let Some(Stored { keys, .. }) = &tail {
                    let (s, e) = (keys[0].start(), keys[0].end());
                    let old = overlap_sectors(&extents_in(tx, ino, s, e)?, s, e);
                    for k in keys {
                        tx.put(BtreeId::Extents, k.clone());
                    }
                    v.sectors = v.sectors + (e - s) - old;
                }
            }
            v.size = size;
            let now = Timespec::now();
            v.mtime = now;
            v.ctime = now;
            kill_suid(caller, &mut v);
            write_inode(tx, ino, &v);
            Ok(to_attr(ino, &v))
        })
    }

    /// Preallocates, punches holes or zeroes ranges.
    pub fn fallocate(
        &self,
        caller: &Caller,
        ino: InodeNo,
        offset: u64,
        len: u64,
        flags: FallocFlags,
    ) -> FsResult<()> {
        if len == 0 {
            return Err(FsError::Invalid("fallocate of zero bytes".into()));
        }
        let end = offset.checked_add(len).ok_or(FsError::FileTooBig)?;
        if end > MAX_FILE_SIZE {
            return Err(FsError::FileTooBig);
        }
        if flags.punch_hole && !flags.keep_size {
            return Err(FsError::NotSupported);
        }
        let _l = self.lock_inode(ino, IoMode::Exclusive, Some(PagecacheMode::Block));
        self.writeback_inode_locked(ino)?;
        self.pages.forget(ino.0);
        let size = self.getattr(ino)?.size;
        if flags.punch_hole || flags.zero_range {
            self.zero(caller, ino, offset, end.min(size))?;
            if flags.zero_range && !flags.keep_size && end > size {
                self.set_size_locked(caller, ino, end)?;
            }
            return Ok(());
        }
        // Allocate: fill holes in the range with zeroed extents.
        let holes = self.holes(ino, offset / BLOCK * BLOCK, end.div_ceil(BLOCK) * BLOCK)?;
        for (s, e) in holes {
            let zeros = vec![0u8; (e - s) as usize];
            // Preallocated space stays raw so it is really reserved.
            let Stored { keys, _pins } = self.store(ino, s, &zeros, Compression::NONE)?;
            self.tx(Durability::Lazy, |tx| {
                let mut v = read_inode(tx, ino)?;
                regular(&v)?;
                let (ss, es) = (s / SECTOR_BYTES, e / SECTOR_BYTES);
                let old = overlap_sectors(&extents_in(tx, ino, ss, es)?, ss, es);
                if old != 0 {
                    // Someone wrote here meanwhile: keep their data.
                    return Ok(());
                }
                for k in &keys {
                    tx.put(BtreeId::Extents, k.clone());
                }
                v.sectors += es - ss;
                write_inode(tx, ino, &v);
                Ok(())
            })?;
        }
        if !flags.keep_size && end > size {
            self.set_size_locked(caller, ino, end.max(self.getattr(ino)?.size))?;
        } else {
            self.touch_ctime(ino)?;
        }
        Ok(())
    }

    fn touch_ctime(&self, ino: InodeNo) -> FsResult<()> {
        self.tx(Durability::Lazy, |tx| {
            let mut v = read_inode(tx, ino)?;
            let now = Timespec::now();
            v.mtime = now;
            v.ctime = now;
            write_inode(tx, ino, &v);
            Ok(())
        })
    }

    /// Makes `[start, end)` read as zeros: whole blocks are punched, partial
    /// edge blocks rewritten. The caller holds the IO lock exclusively and
    /// the pagecache block lock, with no cached pages left.
    fn zero(&self, caller: &Caller, ino: InodeNo, start: u64, end: u64) -> FsResult<()> {
        if start >= end {
            return self.touch_ctime(ino);
        }
        let inner_s = start.div_ceil(BLOCK) * BLOCK;
        let inner_e = end / BLOCK * BLOCK;
        if inner_s < inner_e {
            self.tx(Durability::Lazy, |tx| {
                let mut v = read_inode(tx, ino)?;
                regular(&v)?;
                let (s, e) = (inner_s / SECTOR_BYTES, inner_e / SECTOR_BYTES);
                let gone = overlap_sectors(&extents_in(tx, ino, s, e)?, s, e);
                tx.delete_range(BtreeId::Extents, ino.0, ROOT_SNAPSHOT, s, e);
                v.sectors = v.sectors.saturating_sub(gone);
                let now = Timespec::now();
                v.mtime = now;
                v.ctime = now;
                write_inode(tx, ino, &v);
                Ok(())
            })?;
        }
        // Partial blocks at the edges are rewritten with zeros.
        let size = self.getattr(ino)?.size;
        let edges = if inner_s < inner_e {
            [(start, inner_s), (inner_e, end)]
        } else {
            [(start, end), (end, end)]
        };
        for (s, e) in edges {
            let e = e.min(size);
            if s < e {
                self.write_through(caller, ino, s, &vec![0u8; (e - s) as usize])?;
            }
        }
        Ok(())
    }

    /// Byte ranges in `[start, end)` (block aligned) not covered by extents.
    fn holes(&self, ino: InodeNo, start: u64, end: u64) -> FsResult<Vec<(u64, u64)>> {
        let keys = self.tx(Durability::Lazy, |tx| {
            extents_in(tx, ino, start / SECTOR_BYTES, end / SECTOR_BYTES)
        })?;
        let mut out = Vec::new();
        let mut at = start;
        for k in &keys {
            let (ks, ke) = (k.start() * SECTOR_BYTES, k.end() * SECTOR_BYTES);
            if ks > at {
                out.push((at, ks.min(end)));
            }
            at = at.max(ke);
        }
        if at < end {
            out.push((at, end));
        }
        // Large holes go in bounded pieces.
        let mut split = Vec::new();
        for (s, e) in out {
            let mut p = s;
            while p < e {
                let q = (p + (8 << 20)).min(e);
                split.push((p, q));
                p = q;
            }
        }
        Ok(split)
    }

    /// SEEK_DATA / SEEK_HOLE.
    pub fn lseek(&self, ino: InodeNo, offset: u64, whence: SeekWhence) -> FsResult<u64> {
        // Cached data is written first: the extents are what is searched.
        let _l = self.lock_inode(ino, IoMode::Shared, None);
        self.writeback_inode_locked(ino)?;
        self.tx(Durability::Lazy, |tx| {
            let v = read_inode(tx, ino)?;
            regular(&v)?;
            if offset >= v.size {
                return Err(FsError::NoData);
            }
            let keys = extents_in(
                tx,
                ino,
                offset / SECTOR_BYTES,
                v.size.div_ceil(SECTOR_BYTES),
            )?;
            match whence {
                SeekWhence::Data => {
                    for k in &keys {
                        let ks = (k.start() * SECTOR_BYTES).max(offset);
                        if k.end() * SECTOR_BYTES > offset {
                            return if ks < v.size {
                                Ok(ks)
                            } else {
                                Err(FsError::NoData)
                            };
                        }
                    }
                    Err(FsError::NoData)
                }
                SeekWhence::Hole => {
                    let mut at = offset;
                    for k in &keys {
                        let (ks, ke) = (k.start() * SECTOR_BYTES, k.end() * SECTOR_BYTES);
                        if ks > at {
                            break;
                        }
                        at = at.max(ke);
                    }
                    Ok(at.min(v.size))
                }
            }
        })
    }
}
