//! Copying garbage collection: empties fragmented user buckets by moving
//! their live data elsewhere.
//!
//! Data is copy-on-write and buckets are filled append-only, so overwriting
//! a file leaves buckets partly live; a bucket is reused only once every one
//! of its sectors is dead. A copygc pass:
//!
//! 1. **Picks victims**: closed (not open), user buckets whose
//!    `dirty_sectors` is below a threshold (half a bucket by default),
//!    emptiest first, as many as the space copygc may use allows (and at
//!    most [`CopygcOptions::max_buckets`]). It finds them by scanning the
//!    alloc btree (one key per bucket). bcachefs keeps a fragmentation LRU
//!    index instead, so it never scans; that can come later.
//! 2. **Finds their live data** by scanning the whole extents btree for keys
//!    whose pointer lands in a victim. There are no backpointers yet, so
//!    this costs one pass over every extent key per copygc pass (read in
//!    batches, without holding a lock between batches); that is why one pass
//!    handles many victims at once.
//! 3. **Moves** it, one victim bucket at a time. The keys pointing into the
//!    same stored unit are moved together: the unit is read once and its
//!    checksum verified. For an uncompressed unit each key then gets only
//!    the sectors it still covers, written as a new unit with a new checksum
//!    (computed over bytes just verified against the old one, like
//!    bcachefs's checksum narrowing), so dead parts of partly overwritten
//!    extents are not copied. A compressed unit cannot be cut: it is copied
//!    whole once, and every key into it gets the same new pointer and keeps
//!    its `offset` and checksum. Space comes from copygc's own write point
//!    ([`AllocState::alloc_copygc`]), which may use half of the user
//!    reserve.
//! 4. **Replaces keys only if they are unchanged**: one transaction per
//!    victim re-reads each key at its position and puts the new key(s) only
//!    if it still equals what was read; an overwritten key's copy is simply
//!    dropped (its space was never charged, so nothing leaks). The normal
//!    extent overwrite path and alloc trigger then release the old sectors,
//!    and the victim is emptied by that commit. The data is written before
//!    the commit and the journal flushes the device before any entry that
//!    points at it, so a crash leaves either the old key (old data intact:
//!    the victim is not reused before the emptying entry is durable) or the
//!    new one.
//!
//! Copygc runs on demand ([`Engine::copygc`]), from the background thread
//! when free buckets run low, and from [`Engine::alloc_data`] before it
//! would return `NoSpace`. Only one pass runs at a time (the copygc lock,
//! taken before any other engine lock); a pass holds no b-tree lock while
//! it does IO or commits.
//!
//! Readers that looked up a key just before copygc replaced it find the old
//! bucket's generation bumped: [`Engine::data_move_seq`] tells them to look
//! the key up again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

use super::AllocState;
use super::alloc_format::DataType;
use super::extent_format::{ExtentPtr, ExtentValue};
use crate::btree::trans::Durability;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::key::{BtreeId, Key, KeyType, Pos};
use crate::{SECTOR_BYTES, alloc::bucket_pos};

/// What a copygc pass may do.
#[derive(Clone, Copy, Debug)]
pub struct CopygcOptions {
    /// Buckets with fewer live sectors than this fraction of a bucket are
    /// victims.
    pub max_live_fraction: f64,
    /// At most this many victims per pass (bounds the work of one pass).
    pub max_buckets: usize,
}

impl Default for CopygcOptions {
    fn default() -> CopygcOptions {
        CopygcOptions {
            max_live_fraction: 0.5,
            max_buckets: 64,
        }
    }
}

/// What a copygc pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopygcReport {
    /// Victims chosen.
    pub victims: u64,
    /// Victims that ended the pass free.
    pub buckets_freed: u64,
    /// Sectors written to new space and committed.
    pub sectors_moved: u64,
    /// Extent keys replaced.
    pub keys_moved: u64,
    /// Keys changed by someone else before their copy was committed (the
    /// copy was dropped).
    pub keys_raced: u64,
    /// Units not moved because their data failed its checksum (left alone,
    /// reads report them).
    pub bad_units: u64,
}

/// Checksum of stored data (`csum_type` of the extent value).
pub fn data_checksum(csum_type: u8, data: &[u8]) -> Option<u64> {
    match csum_type {
        0 => Some(0),
        1 => Some(crc32c::crc32c(data) as u64),
        2 => Some(xxhash_rust::xxh3::xxh3_64(data)),
        _ => None,
    }
}

/// One key to move, as read.
struct Candidate {
    key: Key,
    val: ExtentValue,
}

impl Engine {
    /// Runs one copygc pass with the default options.
    pub fn copygc(&self) -> Result<CopygcReport> {
        self.copygc_with(CopygcOptions::default())
    }

    /// Runs one copygc pass.
    pub fn copygc_with(&self, opts: CopygcOptions) -> Result<CopygcReport> {
        self.inner.check_writable()?;
        let _one = self.inner.copygc_lock.lock();
        self.copygc_locked(opts)
    }

    /// A pass, unless one is running already (`None`).
    pub(crate) fn try_copygc(&self, opts: CopygcOptions) -> Option<Result<CopygcReport>> {
        let _one = self.inner.copygc_lock.try_lock()?;
        Some(self.copygc_locked(opts))
    }

    fn copygc_locked(&self, opts: CopygcOptions) -> Result<CopygcReport> {
        let mut report = CopygcReport::default();
        let victims = self.pick_victims(&opts)?;
        if victims.is_empty() {
            return Ok(report);
        }
        report.victims = victims.len() as u64;
        let geo = self.geometry();
        let gens: HashMap<u64, u8> = victims.iter().map(|&(b, g, _)| (b, g)).collect();
        // Live keys per victim, grouped by stored unit (first sector).
        let mut per_bucket: BTreeMap<u64, BTreeMap<u64, Vec<Candidate>>> = BTreeMap::new();
        for k in self.iter(BtreeId::Extents, Pos::MIN, Pos::MAX) {
            let key = k?;
            if key.ty != KeyType::Extent {
                continue;
            }
            let Some(val) = ExtentValue::decode(&key.value) else {
                continue;
            };
            // One device, one pointer: multi-pointer extents are left alone.
            let [ptr] = val.ptrs[..] else { continue };
            let b = geo.bucket_of(ptr.dev_sector);
            if gens.get(&b) != Some(&ptr.generation) {
                continue;
            }
            per_bucket
                .entry(b)
                .or_default()
                .entry(ptr.dev_sector)
                .or_default()
                .push(Candidate { key, val });
        }
        // Emptiest first: each one frees a bucket for the least copying.
        for &(b, _, _) in &victims {
            let Some(units) = per_bucket.remove(&b) else {
                continue;
            };
            if !self.move_bucket(units, &mut report)? {
                break; // out of space for copies
            }
        }
        for &(b, g, _) in &victims {
            let a = self.bucket(b)?;
            if a.data_type == DataType::Free || a.generation != g {
                report.buckets_freed += 1;
            }
        }
        if report.buckets_freed > 0 {
            // Emptied buckets are reusable once the entry emptying them is
            // durable: make them available now.
            self.sync()?;
        }
        let t = &self.inner.copygc_totals;
        t[0].fetch_add(1, Ordering::Relaxed);
        t[1].fetch_add(report.buckets_freed, Ordering::Relaxed);
        t[2].fetch_add(report.sectors_moved, Ordering::Relaxed);
        tracing::debug!(?report, "copygc pass");
        Ok(report)
    }

    /// Victims: (bucket, generation, live sectors), emptiest first.
    fn pick_victims(&self, opts: &CopygcOptions) -> Result<Vec<(u64, u8, u32)>> {
        let geo = self.geometry();
        let limit = (geo.bucket_sectors as f64 * opts.max_live_fraction) as u64;
        let (open, mut budget) = {
            let st = self.inner.alloc.lock();
            (st.busy_buckets(), st.copygc_space())
        };
        let mut found = Vec::new();
        let end = Pos::new(0, u64::MAX, u32::MAX);
        for k in self.iter(BtreeId::Alloc, bucket_pos(geo.first_data_bucket), end) {
            let k = k?;
            let b = k.pos.offset;
            let Some(a) = super::alloc_format::AllocValue::decode(&k.value) else {
                continue;
            };
            if a.data_type != DataType::User
                || a.dirty_sectors == 0
                || (a.dirty_sectors as u64) >= limit
                || open.contains(&b)
            {
                continue;
            }
            found.push((b, a.generation, a.dirty_sectors));
        }
        found.sort_by_key(|&(b, _, live)| (live, b));
        let mut out = Vec::new();
        for v in found {
            // Moving can waste the tail of a copygc bucket: keep a margin.
            let need = v.2 as u64 + v.2 as u64 / 8;
            if out.len() >= opts.max_buckets || need > budget {
                break;
            }
            budget -= need;
            out.push(v);
        }
        Ok(out)
    }

    /// Moves the live data of one victim and commits the new keys. Returns
    /// false when copygc ran out of space (what was copied is committed).
    fn move_bucket(
        &self,
        units: BTreeMap<u64, Vec<Candidate>>,
        report: &mut CopygcReport,
    ) -> Result<bool> {
        // (old key, new keys, sectors written)
        let mut moves: Vec<(Key, Vec<Key>, u64)> = Vec::new();
        // The space the moves were written to stays pinned until committed.
        let mut pins = Vec::new();
        let mut space = true;
        'units: for (first, cands) in units {
            let v0 = &cands[0].val.clone();
            let stored = v0.stored_sectors as usize * SECTOR_BYTES as usize;
            if stored == 0
                || cands
                    .iter()
                    .any(|c| c.val.stored_sectors != v0.stored_sectors || c.val.csum != v0.csum)
            {
                continue; // inconsistent: fsck's business
            }
            let mut data = vec![0u8; stored];
            self.read_data(first, &mut data)?;
            if data_checksum(v0.csum_type, &data) != Some(v0.csum) {
                // Someone may have replaced the keys meanwhile and the bucket
                // been reused; if they are unchanged the data is bad: leave
                // it for reads to report, never move it.
                let unchanged = cands.iter().all(|c| {
                    self.get(BtreeId::Extents, c.key.pos).ok().flatten() == Some(c.key.clone())
                });
                if unchanged {
                    tracing::error!(sector = first, "copygc: data checksum mismatch; not moved");
                    report.bad_units += 1;
                }
                continue;
            }
            if v0.compression != 0 {
                // Compressed: the unit moves whole; every key shares the copy.
                let a = match self.alloc_copygc(v0.stored_sectors) {
                    Err(Error::NoSpace) => {
                        space = false;
                        break 'units;
                    }
                    r => r?,
                };
                self.write_data(a.dev_sector, &data)?;
                let (dev_sector, generation) = (a.dev_sector, a.generation);
                pins.push(a);
                for c in cands {
                    let mut nv = c.val.clone();
                    nv.ptrs = vec![ExtentPtr {
                        dev_sector,
                        generation,
                    }];
                    let nk = Key {
                        value: nv.encode(),
                        ..c.key.clone()
                    };
                    moves.push((c.key, vec![nk], 0));
                }
                if let Some(m) = moves.last_mut() {
                    m.2 = v0.stored_sectors as u64;
                }
                continue;
            }
            // Uncompressed: each key's live sectors become a unit of their own.
            for c in cands {
                let from = c.val.offset as usize * SECTOR_BYTES as usize;
                let len = c.key.size as usize * SECTOR_BYTES as usize;
                let Some(live) = data.get(from..from + len) else {
                    continue; // points past its data: fsck's business
                };
                let a = match self.alloc_copygc(c.key.size) {
                    Err(Error::NoSpace) => {
                        space = false;
                        break 'units;
                    }
                    r => r?,
                };
                self.write_data(a.dev_sector, live)?;
                let nv = ExtentValue {
                    csum_type: c.val.csum_type,
                    compression: 0,
                    stored_sectors: c.key.size,
                    uncompressed_sectors: c.key.size,
                    offset: 0,
                    csum: data_checksum(c.val.csum_type, live).unwrap_or(0),
                    ptrs: vec![ExtentPtr {
                        dev_sector: a.dev_sector,
                        generation: a.generation,
                    }],
                };
                let nk = Key {
                    value: nv.encode(),
                    ..c.key.clone()
                };
                let sectors = c.key.size as u64;
                moves.push((c.key, vec![nk], sectors));
                pins.push(a);
            }
        }
        if moves.is_empty() {
            return Ok(space);
        }
        let inner = &self.inner;
        // Readers compare this before and after a failed read: odd while a
        // move commits, bumped again when done.
        inner.move_seq.fetch_add(1, Ordering::AcqRel);
        let r = self.transact(Durability::Lazy, |tx| {
            let mut done = (0u64, 0u64, 0u64);
            for (old, new, sectors) in &moves {
                if tx.get(BtreeId::Extents, old.pos)?.as_ref() == Some(old) {
                    for k in new {
                        tx.put(BtreeId::Extents, k.clone());
                    }
                    done.0 += 1;
                    done.2 += sectors;
                } else {
                    done.1 += 1;
                }
            }
            Ok(done)
        });
        inner.move_seq.fetch_add(1, Ordering::AcqRel);
        drop(pins);
        let (moved, raced, sectors) = r?;
        report.keys_moved += moved;
        report.keys_raced += raced;
        report.sectors_moved += sectors;
        Ok(space)
    }

    /// Copygc's allocation: see [`AllocState::alloc_copygc`]. When out of
    /// space, makes buckets emptied by earlier moves reusable (a journal
    /// flush) and tries once more.
    fn alloc_copygc(&self, sectors: u32) -> Result<crate::engine::PinnedAlloc> {
        let once = || {
            let inner = &self.inner;
            let ctx = inner.ctx();
            let alloc = inner.tree(BtreeId::Alloc).read();
            let free = inner.tree(BtreeId::Freespace).read();
            let mut st = inner.alloc.lock();
            st.alloc_copygc(&ctx, &alloc, &free, inner.journal.durable_seq(), sectors)
                .map(|a| crate::engine::PinnedAlloc::new(inner.clone(), a, &st.geo))
        };
        match once() {
            Err(Error::NoSpace) if self.has_pending_empty() => {
                self.sync()?;
                once()
            }
            r => r,
        }
    }

    /// Whether buckets wait for a journal flush before they can be reused.
    pub(crate) fn has_pending_empty(&self) -> bool {
        !self.inner.alloc.lock().pending_empty.is_empty()
    }

    /// Changes whenever copygc replaces extent keys (odd while it commits).
    /// A reader whose data read failed (stale generation or checksum) after
    /// this changed, or while it was odd, should look its keys up again.
    pub fn data_move_seq(&self) -> u64 {
        self.inner.move_seq.load(Ordering::Acquire)
    }
}

/// Whether free space is low enough for the background thread to collect:
/// fewer than twice the reserve plus a margin of buckets available.
pub(crate) fn wants_copygc(st: &AllocState) -> bool {
    let available = st.free_buckets() - st.busy_count();
    available < 2 * st.geo.reserved_buckets() as i64 + 8
}
