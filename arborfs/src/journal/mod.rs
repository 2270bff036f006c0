//! The journal: a ring of checksummed entries of btree updates.
//!
//! The journal lives in a fixed byte range of the device (the *region*,
//! `[region_offset, region_offset + region_len)`, both multiples of 4096) and
//! is used as a ring. The engine [`Journal::add`]s the key changes of each
//! committed transaction; they are buffered in the *open* entry, which is
//! written when it grows past `max_entry_bytes`, on [`Journal::write_pending`]
//! and on [`Journal::flush_seq`]. After a checkpoint (every dirty btree node
//! written) the engine adds an entry with [`JournalItem::Root`] items and, once
//! that entry `s` is durable, calls [`Journal::set_last_seq`]`(s)`: entries
//! older than `s` are no longer needed and their space may be reused.
//!
//! # Wire format
//!
//! Documented byte by byte in [`journal_format`] and `docs/format.md`.
//! In short: each entry starts at a 4096-aligned offset of the region with a
//! 64-byte header (magic mixed with the filesystem UUID, crc32c seeded with
//! the UUID over the whole padded entry except the checksum field, version,
//! `seq`, `prev_seq`, `last_seq`, the entry's own region offset, payload
//! length, item count), then the items, then zeros up to a multiple of 4096.
//! An entry never wraps around the end of the region: if it does not fit
//! before the end it goes to region offset 0.
//!
//! # Replay
//!
//! Every 4096-aligned block of the region is checked for a valid entry (magic,
//! version, recorded offset, sane seqs and lengths, checksum, items decode);
//! the blocks of a valid entry are skipped. Valid entries never overlap (a
//! write into a valid entry changes bytes its checksum covers), so skipping
//! only hides bytes inside an entry's payload, such as a key value that
//! happens to look like an entry.
//!
//! The *tail* is the valid entry with the highest seq whose chain is intact:
//! following `prev_seq` links from it, every linked seq `>= tail.last_seq`
//! names a valid entry (seqs strictly decrease along the chain by
//! construction, `prev_seq < seq` is checked). If the highest candidate's
//! chain is broken (an entry lost or torn while a later one reached disk),
//! the next highest is tried. The entries replayed are the chain from the
//! tail down to its `last_seq`, in chain order. A seq held by two different
//! valid entries counts as missing (this never happens; see below).
//!
//! After a replay the writer continues right after the tail entry, with
//! `prev_seq` = tail seq and the new seq = (highest seq of ANY valid entry
//! seen) + 1. **Why a stale entry (valid, but not in the replayed chain) can
//! never be replayed later:** every stale entry with a seq above the tail has
//! a broken chain (otherwise it, or something above it, would have been the
//! tail); its first missing link `p` is below its own seq, so below every
//! seq the journal will ever write again. No future entry can fill the hole,
//! since its seq is higher; and no future entry links to a stale entry, since
//! new entries link to the tail or to newer entries. So the hole stays a hole
//! forever, through any number of further crashes (each later open again
//! starts above every seq still on disk, and an entry's links never change).
//! Stale entries below the tail are either older than the tail's `last_seq`
//! or off the chain entirely, and a future tail's chain passes through the
//! current tail, never through them. Seqs are never reused while an entry
//! carrying them is valid on disk, so a lookup by seq is unambiguous.
//!
//! # Which space may be reused
//!
//! An entry `E` records the `last_seq` current when it was written, and its
//! chain down to that value must survive for `E` to be a usable tail. So
//! space is not reclaimed by the engine's [`Journal::set_last_seq`] directly:
//! entries are overwritten only below the `last_seq` recorded in the newest
//! *durable* (written and flushed) entry `D`. Then `D`'s chain is always
//! intact (flushed in order and never overwritten), so a crash can lose
//! unflushed entries but never falls back below `D`. When the next entry
//! would only fit by overwriting entries that the newest *written* entry
//! already released, the device is flushed first. If it would overwrite an
//! entry still needed, [`Error::JournalFull`] is returned and nothing is
//! written (the engine checkpoints when [`Journal::fill_ratio`] passes 0.5, so
//! this is a bug path). [`Journal::fill_ratio`] reports the engine's view:
//! everything from the first entry `>= last_seq` to the write head.
//!
//! After [`Journal::set_last_seq`] the released space only becomes reusable
//! once an entry recording the new value is written (and flushed), so that
//! entry must always fit: every other entry is placed only if one more entry
//! of `max_entry_bytes` still fits after it. `max_entry_bytes` is clamped to
//! `region_len / 8`, so the reserve plus the space wasted when an entry skips
//! the end of the region stays within the half the engine keeps free. (A
//! single batch larger than `max_entry_bytes` gets its own entry, up to
//! `region_len / 2`; such an entry may not find room and return
//! `JournalFull`.)
//!
//! # Atomicity of a batch
//!
//! The items of one [`Journal::add`] call always land in one entry, so replay
//! (which yields whole entries) never applies part of a transaction.
//!
//! # Clean open
//!
//! With a [`JournalPosition`] from a clean shutdown nothing is scanned or
//! replayed; the entry `last_seq` that must end at `next_offset` is read back
//! and its chain followed down to the `last_seq` it records (reading only
//! those entries), so that space accounting knows which blocks must not be
//! overwritten. A position that does not match the disk is reported as
//! corruption (the engine may then open with `None`).

pub mod journal_format;

use crate::btree::node_format::BtreePtr;
use crate::device::Device;
use crate::error::{Error, Result, Structure};
use crate::key::{BtreeId, Key, Pos};
use journal_format::{
    EntryHeader, HEADER_BYTES, JOURNAL_BLOCK, JOURNAL_VERSION, OFF_CSUM, decode_items, encode_item,
    entry_csum, entry_total_bytes, magic_for,
};
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One logged btree update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalItem {
    /// Insert or overwrite the key at `key.pos`.
    Put { btree: BtreeId, key: Key },
    /// Remove the key at `pos`.
    Delete { btree: BtreeId, pos: Pos },
    /// The btree's root after a checkpoint (`None`: empty tree).
    Root {
        btree: BtreeId,
        ptr: Option<BtreePtr>,
    },
}

/// Items encoded as they are produced, for [`Journal::add_batch`]: the
/// bytes [`Journal::add`] would encode for the same items, without building
/// (and cloning keys into) [`JournalItem`]s first.
#[derive(Debug, Default)]
pub struct ItemBatch {
    buf: Vec<u8>,
    count: u32,
}

impl ItemBatch {
    pub fn with_capacity(bytes: usize) -> ItemBatch {
        ItemBatch {
            buf: Vec::with_capacity(bytes),
            count: 0,
        }
    }

    pub fn put(&mut self, btree: BtreeId, key: &Key) {
        journal_format::encode_put(&mut self.buf, btree, key);
        self.count += 1;
    }

    pub fn delete(&mut self, btree: BtreeId, pos: Pos) {
        journal_format::encode_delete(&mut self.buf, btree, pos);
        self.count += 1;
    }

    pub fn push(&mut self, item: &JournalItem) {
        encode_item(&mut self.buf, item);
        self.count += 1;
    }

    /// Number of items.
    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    pub seq: u64,
    pub last_seq: u64,
    pub items: Vec<JournalItem>,
}

#[derive(Clone, Debug)]
pub struct JournalConfig {
    /// Device byte offset of the region (multiple of 4096).
    pub region_offset: u64,
    /// Bytes in the region (multiple of 4096, at least 32 KiB).
    pub region_len: u64,
    pub uuid: [u8; 16],
    /// Entries are written out once they would grow past this (e.g. 1 MiB);
    /// clamped to `[4096, region_len / 8]` (one such entry is kept in reserve,
    /// see [`Journal::fill_ratio`]).
    pub max_entry_bytes: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayResult {
    /// In seq order, from the tail's `last_seq` to the tail: all to be replayed.
    pub entries: Vec<JournalEntry>,
    /// 0 if the journal is empty (never happens after format, and not after a clean open).
    pub tail_seq: u64,
}

/// Where writing resumes after a clean shutdown (recorded in the superblock by the engine).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalPosition {
    /// Seq the next entry gets.
    pub next_seq: u64,
    /// Region-relative byte offset where the last written entry ends.
    pub next_offset: u64,
    /// Seq of the last written entry.
    pub last_seq: u64,
}

/// A written entry whose space may still be needed (ring order = seq order).
#[derive(Clone, Copy, Debug)]
struct Placed {
    seq: u64,
    start: u64,
}

/// The entry being filled.
struct OpenEntry {
    seq: u64,
    buf: Vec<u8>,
    count: u32,
}

/// Ring state, protected by `Journal::ring`.
struct Ring {
    /// Region-relative end of the last written entry.
    head: u64,
    /// Seq of the last written entry (the next one's `prev_seq`).
    prev_seq: u64,
    /// Written entries not yet known reusable, ascending seq.
    placed: VecDeque<Placed>,
    /// The engine's last_seq, recorded in every new entry.
    last_seq: u64,
    /// last_seq recorded in the newest written entry.
    written_ls: u64,
    /// last_seq recorded in the newest durable entry: entries below may be overwritten.
    durable_ls: u64,
    written_seq: u64,
    durable_seq: u64,
}

/// The journal writer. All methods take `&self`; share it in an `Arc`.
pub struct Journal {
    dev: Arc<dyn Device>,
    region_offset: u64,
    region_len: u64,
    uuid: [u8; 16],
    max_entry_bytes: u64,
    /// Largest entry ever written: a single batch may exceed `max_entry_bytes` up to this.
    hard_max_entry: u64,
    open: Mutex<OpenEntry>,
    ring: Mutex<Ring>,
    /// True while one thread runs a device flush for `flush_seq` callers.
    flushing: Mutex<bool>,
    flush_done: Condvar,
    current_seq: AtomicU64,
    written_seq: AtomicU64,
    durable_seq: AtomicU64,
    failed: Mutex<Option<String>>,
    /// File data was written since the last device flush: flush before the
    /// next entry so no entry can reach the disk ahead of the data its keys
    /// point at.
    data_dirty: AtomicBool,
}

fn corrupt(offset: u64, detail: impl Into<String>) -> Error {
    Error::corrupted(Structure::JournalEntry, offset, detail)
}

/// Validated configuration values.
struct Geometry {
    max_entry: u64,
    hard_max: u64,
}

fn check_config(dev: &dyn Device, cfg: &JournalConfig) -> Result<Geometry> {
    let bad = |m: String| Err(Error::InvalidArgument(m));
    if !cfg.region_offset.is_multiple_of(JOURNAL_BLOCK)
        || !cfg.region_len.is_multiple_of(JOURNAL_BLOCK)
    {
        return bad(format!(
            "journal region {}+{} is not 4096-aligned",
            cfg.region_offset, cfg.region_len
        ));
    }
    if cfg.region_len < 8 * JOURNAL_BLOCK {
        return bad(format!(
            "journal region of {} bytes is too small",
            cfg.region_len
        ));
    }
    match cfg.region_offset.checked_add(cfg.region_len) {
        Some(end) if end <= dev.size() => {}
        _ => {
            return bad(format!(
                "journal region {}+{} is past the end of the device ({} bytes)",
                cfg.region_offset,
                cfg.region_len,
                dev.size()
            ));
        }
    }
    let max_entry = (cfg.max_entry_bytes as u64)
        .min(cfg.region_len / 8)
        .max(JOURNAL_BLOCK)
        .next_multiple_of(JOURNAL_BLOCK);
    let hard_max = (cfg.region_len / 2).min(1 << 30).max(max_entry);
    Ok(Geometry {
        max_entry,
        hard_max,
    })
}

/// Builds the padded bytes of an entry.
fn build_entry(uuid: &[u8; 16], mut hdr: EntryHeader, payload: &[u8]) -> Vec<u8> {
    let total = entry_total_bytes(payload.len()) as usize;
    hdr.payload_len = payload.len() as u32;
    hdr.magic = magic_for(uuid);
    hdr.version = JOURNAL_VERSION;
    hdr.csum = 0;
    let mut buf = Vec::with_capacity(total);
    buf.extend_from_slice(&hdr.encode());
    buf.extend_from_slice(payload);
    buf.resize(total, 0);
    let csum = entry_csum(uuid, &buf);
    buf[OFF_CSUM..OFF_CSUM + 4].copy_from_slice(&csum.to_le_bytes());
    buf
}

/// Validates a whole entry whose header was decoded from `bytes[..64]`.
/// `bytes` is exactly the padded entry. Never panics.
fn validate_entry(
    uuid: &[u8; 16],
    hdr: &EntryHeader,
    bytes: &[u8],
) -> Result<Vec<crate::journal::JournalItem>, String> {
    if bytes.len() as u64 != hdr.total_bytes() || bytes.len() < HEADER_BYTES {
        return Err("entry length mismatch".into());
    }
    if entry_csum(uuid, bytes) != hdr.csum {
        return Err("bad checksum".into());
    }
    let payload = &bytes[HEADER_BYTES..HEADER_BYTES + hdr.payload_len as usize];
    decode_items(payload, hdr.item_count)
}

/// Decodes and validates one entry from the front of `bytes`, which were read
/// from region offset `offset`. Returns the header and the items; never panics.
pub fn decode_entry(
    uuid: &[u8; 16],
    bytes: &[u8],
    offset: u64,
    region_len: u64,
) -> Result<(EntryHeader, Vec<JournalItem>), String> {
    let hdr = EntryHeader::decode(bytes).ok_or("short or malformed header")?;
    hdr.check(uuid, offset, region_len)?;
    let total = hdr.total_bytes();
    if (bytes.len() as u64) < total {
        return Err("entry truncated".into());
    }
    let items = validate_entry(uuid, &hdr, &bytes[..total as usize])?;
    Ok((hdr, items))
}

/// A valid entry found on disk.
struct Found {
    hdr: EntryHeader,
    items: Vec<JournalItem>,
}

/// Reads the region in large chunks while scanning.
struct RegionReader<'a> {
    dev: &'a dyn Device,
    region_offset: u64,
    region_len: u64,
    win_start: u64,
    win: Vec<u8>,
}

const SCAN_CHUNK: u64 = 1 << 20;

impl RegionReader<'_> {
    /// `len` bytes at region offset `off` (the caller keeps them in range).
    fn read(&mut self, off: u64, len: u64) -> Result<Vec<u8>> {
        let win_end = self.win_start + self.win.len() as u64;
        if off >= self.win_start && off + len <= win_end {
            let a = (off - self.win_start) as usize;
            return Ok(self.win[a..a + len as usize].to_vec());
        }
        if len <= JOURNAL_BLOCK {
            let n = SCAN_CHUNK.min(self.region_len - off).max(len);
            self.win.resize(n as usize, 0);
            self.dev.read_at(&mut self.win, self.region_offset + off)?;
            self.win_start = off;
            return Ok(self.win[..len as usize].to_vec());
        }
        let mut v = vec![0; len as usize];
        self.dev.read_at(&mut v, self.region_offset + off)?;
        Ok(v)
    }

    /// The valid entry starting at region offset `off`, if any.
    fn entry_at(&mut self, uuid: &[u8; 16], off: u64) -> Result<Option<Found>> {
        let head = self.read(off, JOURNAL_BLOCK)?;
        let Some(hdr) = EntryHeader::decode(&head) else {
            return Ok(None);
        };
        if hdr.check(uuid, off, self.region_len).is_err() {
            return Ok(None);
        }
        let bytes = if hdr.total_bytes() == JOURNAL_BLOCK {
            head
        } else {
            self.read(off, hdr.total_bytes())?
        };
        match validate_entry(uuid, &hdr, &bytes) {
            Ok(items) => Ok(Some(Found { hdr, items })),
            Err(e) => {
                tracing::debug!(offset = off, "journal block rejected: {e}");
                Ok(None)
            }
        }
    }
}

/// Every valid entry of the region, in region order.
fn scan_region(
    dev: &dyn Device,
    region_offset: u64,
    region_len: u64,
    uuid: &[u8; 16],
) -> Result<Vec<Found>> {
    let mut rd = RegionReader {
        dev,
        region_offset,
        region_len,
        win_start: 0,
        win: Vec::new(),
    };
    let mut found = Vec::new();
    let mut off = 0;
    while off < region_len {
        match rd.entry_at(uuid, off)? {
            Some(f) => {
                off += f.hdr.total_bytes();
                found.push(f);
            }
            None => off += JOURNAL_BLOCK,
        }
    }
    Ok(found)
}

/// One valid entry found by [`scan_entries`], for inspection tools.
#[derive(Clone, Debug)]
pub struct ScannedEntry {
    pub header: EntryHeader,
    pub items: Vec<JournalItem>,
    /// Whether the replay of this region would apply this entry.
    pub in_replay_chain: bool,
}

/// Every valid entry of the region in region order, each marked with
/// whether a crash replay would apply it (`list-journal`, debugging).
pub fn scan_entries(dev: &dyn Device, cfg: &JournalConfig) -> Result<Vec<ScannedEntry>> {
    check_config(dev, cfg)?;
    let found = scan_region(dev, cfg.region_offset, cfg.region_len, &cfg.uuid)?;
    let all: Vec<(EntryHeader, Vec<JournalItem>)> =
        found.iter().map(|f| (f.hdr, f.items.clone())).collect();
    let chain: HashSet<(u64, u64)> = pick_tail(found)
        .chain
        .iter()
        .map(|f| (f.hdr.seq, f.hdr.offset))
        .collect();
    Ok(all
        .into_iter()
        .map(|(header, items)| ScannedEntry {
            in_replay_chain: chain.contains(&(header.seq, header.offset)),
            header,
            items,
        })
        .collect())
}

/// The outcome of picking a tail among scanned entries.
struct Picked {
    /// Replay chain, ascending seq (empty if no tail).
    chain: Vec<Found>,
    /// Highest seq of any valid entry.
    max_seen: u64,
}

/// Picks the tail and its chain (see the module doc).
fn pick_tail(found: Vec<Found>) -> Picked {
    let max_seen = found.iter().map(|f| f.hdr.seq).max().unwrap_or(0);
    let mut by_seq: HashMap<u64, Found> = HashMap::with_capacity(found.len());
    let mut ambiguous = HashSet::new();
    for f in found {
        let s = f.hdr.seq;
        if ambiguous.contains(&s) {
            continue;
        }
        if let Some(old) = by_seq.get(&s) {
            if old.hdr != f.hdr {
                tracing::warn!(seq = s, "two different journal entries carry the same seq");
                by_seq.remove(&s);
                ambiguous.insert(s);
            }
            continue;
        }
        by_seq.insert(s, f);
    }
    let mut seqs: Vec<u64> = by_seq.keys().copied().collect();
    seqs.sort_unstable();
    // broken_at[s]: highest missing link on the walk back from s (0: none).
    let mut broken_at: HashMap<u64, u64> = HashMap::with_capacity(seqs.len());
    for &s in &seqs {
        let p = by_seq[&s].hdr.prev_seq;
        let b = if p == 0 {
            0
        } else {
            match broken_at.get(&p) {
                Some(&b) => b,
                None => p, // missing (prev < seq, so present ones were computed)
            }
        };
        broken_at.insert(s, b);
    }
    let Some(&tail) = seqs
        .iter()
        .rev()
        .find(|&&s| broken_at[&s] < by_seq[&s].hdr.last_seq)
    else {
        return Picked {
            chain: Vec::new(),
            max_seen,
        };
    };
    let low = by_seq[&tail].hdr.last_seq;
    let mut chain = Vec::new();
    let mut s = tail;
    while s >= low && s != 0 {
        let f = by_seq.remove(&s).expect("intact chain");
        s = f.hdr.prev_seq;
        chain.push(f);
    }
    chain.reverse();
    Picked { chain, max_seen }
}

/// Geometry of placing an entry of `len` bytes: at `head` if it fits before
/// the end of the region, else at 0; never over `[protected_start, head)`
/// (ring-wise). `None`: it would overwrite protected entries.
fn fit(head: u64, len: u64, protected_start: Option<u64>, region_len: u64) -> Option<u64> {
    let at_head = head + len <= region_len;
    match protected_start {
        None if at_head => Some(head),
        None => (len <= region_len).then_some(0),
        Some(ps) if ps < head => {
            if at_head {
                Some(head)
            } else {
                (len <= ps).then_some(0)
            }
        }
        Some(ps) => (head + len <= ps).then_some(head),
    }
}

impl Journal {
    /// Format: zero nothing; write a first entry (seq 1, prev 0, last_seq 1)
    /// holding `items` at region offset 0, flushed.
    pub fn format(dev: Arc<dyn Device>, cfg: JournalConfig, items: Vec<JournalItem>) -> Result<()> {
        let geo = check_config(dev.as_ref(), &cfg)?;
        let mut payload = Vec::new();
        for it in &items {
            encode_item(&mut payload, it);
        }
        if entry_total_bytes(payload.len()) > geo.hard_max {
            return Err(Error::InvalidArgument(format!(
                "{} bytes of journal items do not fit in the journal",
                payload.len()
            )));
        }
        let hdr = EntryHeader {
            magic: 0,
            csum: 0,
            version: 0,
            seq: 1,
            prev_seq: 0,
            last_seq: 1,
            offset: 0,
            payload_len: 0,
            item_count: items.len() as u32,
        };
        let buf = build_entry(&cfg.uuid, hdr, &payload);
        dev.write_at(&buf, cfg.region_offset)?;
        dev.flush()?;
        Ok(())
    }

    /// Opens the journal. `clean` = `None` (after a crash, or always): scan
    /// the whole region, return the entries to replay and position the writer
    /// after the tail. `clean` = `Some`: replay nothing and continue at that
    /// position.
    pub fn open(
        dev: Arc<dyn Device>,
        cfg: JournalConfig,
        clean: Option<JournalPosition>,
    ) -> Result<(Journal, ReplayResult)> {
        let geo = check_config(dev.as_ref(), &cfg)?;
        let (chain, next_seq) = match clean {
            None => {
                let found =
                    scan_region(dev.as_ref(), cfg.region_offset, cfg.region_len, &cfg.uuid)?;
                let picked = pick_tail(found);
                if picked.chain.is_empty() {
                    return Err(corrupt(cfg.region_offset, "no valid journal entry"));
                }
                (picked.chain, picked.max_seen + 1)
            }
            Some(pos) => {
                let chain = Self::walk_clean_chain(dev.as_ref(), &cfg, &geo, pos)?;
                (chain, pos.next_seq)
            }
        };
        let tail = &chain.last().expect("nonempty chain").hdr;
        let ring = Ring {
            head: tail.offset + tail.total_bytes(),
            prev_seq: tail.seq,
            placed: chain
                .iter()
                .map(|f| Placed {
                    seq: f.hdr.seq,
                    start: f.hdr.offset,
                })
                .collect(),
            last_seq: tail.last_seq,
            written_ls: tail.last_seq,
            durable_ls: tail.last_seq,
            written_seq: tail.seq,
            durable_seq: tail.seq,
        };
        let tail_seq = tail.seq;
        let journal = Journal {
            dev,
            region_offset: cfg.region_offset,
            region_len: cfg.region_len,
            uuid: cfg.uuid,
            max_entry_bytes: geo.max_entry,
            hard_max_entry: geo.hard_max,
            open: Mutex::new(OpenEntry {
                seq: next_seq,
                buf: Vec::new(),
                count: 0,
            }),
            ring: Mutex::new(ring),
            flushing: Mutex::new(false),
            flush_done: Condvar::new(),
            current_seq: AtomicU64::new(next_seq),
            written_seq: AtomicU64::new(tail_seq),
            durable_seq: AtomicU64::new(tail_seq),
            failed: Mutex::new(None),
            data_dirty: AtomicBool::new(false),
        };
        let replay = match clean {
            Some(_) => ReplayResult {
                entries: Vec::new(),
                tail_seq,
            },
            None => ReplayResult {
                entries: chain
                    .into_iter()
                    .map(|f| JournalEntry {
                        seq: f.hdr.seq,
                        last_seq: f.hdr.last_seq,
                        items: f.items,
                    })
                    .collect(),
                tail_seq,
            },
        };
        Ok((journal, replay))
    }

    /// For a clean open: reads back the last written entry and the chain it
    /// needs, without scanning the region.
    fn walk_clean_chain(
        dev: &dyn Device,
        cfg: &JournalConfig,
        geo: &Geometry,
        pos: JournalPosition,
    ) -> Result<Vec<Found>> {
        let r = cfg.region_len;
        let bad = |d: String| corrupt(cfg.region_offset + pos.next_offset.min(r), d);
        if pos.next_offset == 0
            || pos.next_offset > r
            || !pos.next_offset.is_multiple_of(JOURNAL_BLOCK)
            || pos.last_seq == 0
            || pos.next_seq <= pos.last_seq
        {
            return Err(bad(format!("clean shutdown position {pos:?} is not valid")));
        }
        let mut rd = RegionReader {
            dev,
            region_offset: cfg.region_offset,
            region_len: r,
            win_start: 0,
            win: Vec::new(),
        };
        // Search backwards from `hi` (exclusive) for the entry `seq` whose end is in `ends`.
        let mut find =
            |hi: u64, seq: u64, ends: std::ops::RangeInclusive<u64>| -> Result<Option<Found>> {
                let lo = hi.saturating_sub(geo.hard_max + (ends.end() - ends.start()));
                let mut start = hi;
                while start > lo {
                    start -= JOURNAL_BLOCK;
                    if let Some(f) = rd.entry_at(&cfg.uuid, start)? {
                        let end = f.hdr.offset + f.hdr.total_bytes();
                        if f.hdr.seq == seq && ends.contains(&end) {
                            return Ok(Some(f));
                        }
                    }
                }
                Ok(None)
            };
        let last = find(
            pos.next_offset,
            pos.last_seq,
            pos.next_offset..=pos.next_offset,
        )?
        .ok_or_else(|| {
            bad(format!(
                "clean shutdown position {pos:?}: no entry {} ends at {}",
                pos.last_seq, pos.next_offset
            ))
        })?;
        let low = last.hdr.last_seq;
        let mut chain = vec![last];
        loop {
            let cur = &chain.last().unwrap().hdr;
            let p = cur.prev_seq;
            if p < low || p == 0 {
                break;
            }
            let f = if cur.offset > 0 {
                find(cur.offset, p, cur.offset..=cur.offset)?
            } else {
                // It wrapped: the previous entry ended too close to the end.
                find(r, p, (r - cur.total_bytes() + 1).max(1)..=r)?
            };
            let f = f.ok_or_else(|| {
                corrupt(
                    cfg.region_offset + cur.offset,
                    format!("clean open: entry {p} needed by the journal chain not found"),
                )
            })?;
            chain.push(f);
        }
        chain.reverse();
        Ok(chain)
    }

    fn check_failed(&self) -> Result<()> {
        match &*self.failed.lock() {
            Some(m) => Err(Error::ReadOnlyAfterError(m.clone())),
            None => Ok(()),
        }
    }

    fn fail<T>(&self, e: Error) -> Result<T> {
        let mut f = self.failed.lock();
        if f.is_none() {
            *f = Some(format!("journal: {e}"));
        }
        Err(e)
    }

    /// Queues `items` in the open entry; returns that entry's seq. The items
    /// of one call always end up in the same entry. If the open entry would
    /// grow past `max_entry_bytes` it is first written out (no device flush).
    pub fn add(&self, items: &[JournalItem]) -> Result<u64> {
        let mut batch =
            Vec::with_capacity(items.iter().map(journal_format::item_encoded_len).sum());
        for it in items {
            encode_item(&mut batch, it);
        }
        self.add_encoded(&batch, items.len() as u32)
    }

    /// [`Journal::add`] for items collected in an [`ItemBatch`].
    pub fn add_batch(&self, batch: &ItemBatch) -> Result<u64> {
        self.add_encoded(&batch.buf, batch.count)
    }

    /// [`Journal::add`] for a batch already encoded with
    /// [`journal_format::encode_item`] (`count` items), e.g. built before
    /// taking the engine's locks.
    pub fn add_encoded(&self, batch: &[u8], count: u32) -> Result<u64> {
        if entry_total_bytes(batch.len()) > self.hard_max_entry {
            return Err(Error::InvalidArgument(format!(
                "journal batch of {} bytes exceeds the largest entry ({} bytes)",
                batch.len(),
                self.hard_max_entry
            )));
        }
        let mut open = self.open.lock();
        self.check_failed()?;
        if count == 0 {
            return Ok(open.seq);
        }
        while open.count > 0
            && entry_total_bytes(open.buf.len() + batch.len()) > self.max_entry_bytes
        {
            self.write_open_locked(&mut open, false)?;
        }
        open.buf.extend_from_slice(batch);
        open.count += count;
        Ok(open.seq)
    }

    /// Writes the open entry if it has items (or if `force`). Holding the
    /// open lock on entry; it is released during the device write and held
    /// again on return. Returns the seq written, if any.
    fn write_open_locked(
        &self,
        open: &mut MutexGuard<'_, OpenEntry>,
        force: bool,
    ) -> Result<Option<u64>> {
        if open.count == 0 && !force {
            return Ok(None);
        }
        self.check_failed()?;
        let mut ring = self.ring.lock();
        let total = entry_total_bytes(open.buf.len());
        let seq = open.seq;
        let advancing = ring.last_seq.clamp(1, seq) > ring.written_ls;
        let start = self.place(&mut ring, total, advancing)?;
        let payload = std::mem::take(&mut open.buf);
        let count = std::mem::take(&mut open.count);
        open.seq += 1;
        self.current_seq.store(open.seq, Ordering::Release);
        // The ring lock (taken under the open lock) orders the writes by seq;
        // adders may continue into the next entry meanwhile.
        MutexGuard::unlocked(open, move || {
            let mut ring = ring;
            let hdr = EntryHeader {
                magic: 0,
                csum: 0,
                version: 0,
                seq,
                prev_seq: ring.prev_seq,
                last_seq: ring.last_seq.clamp(1, seq),
                offset: start,
                payload_len: 0,
                item_count: count,
            };
            let buf = build_entry(&self.uuid, hdr, &payload);
            if self.data_dirty.swap(false, Ordering::AcqRel)
                && let Err(e) = self.dev.flush()
            {
                return self.fail(e.into());
            }
            if let Err(e) = self.dev.write_at(&buf, self.region_offset + start) {
                return self.fail(e.into());
            }
            ring.head = start + total;
            ring.prev_seq = seq;
            ring.placed.push_back(Placed { seq, start });
            ring.written_ls = hdr.last_seq.clamp(1, seq);
            ring.written_seq = seq;
            self.written_seq.store(seq, Ordering::Release);
            Ok(Some(seq))
        })
    }

    /// Where the next entry of `len` bytes goes; may flush the device to make
    /// released space reusable. `Err(JournalFull)` if it would overwrite a
    /// needed entry. Unless the entry is `advancing` (records a higher
    /// last_seq than the newest written entry), room for one more entry of
    /// `max_entry_bytes` must remain after it: that reserve guarantees that
    /// the entry recording a new last_seq after a checkpoint can be written,
    /// which is what makes the released space reusable.
    fn place(&self, ring: &mut Ring, len: u64, advancing: bool) -> Result<u64> {
        loop {
            while ring.placed.front().is_some_and(|p| p.seq < ring.durable_ls) {
                ring.placed.pop_front();
            }
            let ps = ring.placed.front().map(|p| p.start);
            if let Some(at) = fit(ring.head, len, ps, self.region_len) {
                let after = Some(ps.unwrap_or(at));
                if advancing
                    || fit(at + len, self.max_entry_bytes, after, self.region_len).is_some()
                {
                    return Ok(at);
                }
            }
            if ring.written_ls > ring.durable_ls {
                // The newest written entry releases more: make it durable.
                if let Err(e) = self.dev.flush() {
                    return self.fail(e.into());
                }
                ring.durable_ls = ring.written_ls;
                ring.durable_seq = ring.written_seq;
                self.durable_seq
                    .fetch_max(ring.written_seq, Ordering::AcqRel);
                continue;
            }
            return Err(Error::JournalFull);
        }
    }

    /// Records that data was written that keys added from now on may point
    /// at: the next entry write is preceded by a device flush.
    pub fn note_data_written(&self) {
        self.data_dirty.store(true, Ordering::Release);
    }

    /// Writes the open entry if it has items, then, if `flush`, flushes the
    /// device. Returns the seq of the last entry written.
    pub fn write_pending(&self, flush: bool) -> Result<u64> {
        self.write_open(false, flush)
    }

    /// Like [`Journal::write_pending`], but with `force` an entry is written
    /// even when the open entry has no items (e.g. to record a new last_seq).
    pub fn write_open(&self, force: bool, flush: bool) -> Result<u64> {
        {
            let mut open = self.open.lock();
            self.write_open_locked(&mut open, force)?;
        }
        // Another thread may have taken an earlier entry out of the open
        // slot and still be writing it (under the ring lock): wait for it,
        // or `written` would not cover everything added before this call.
        drop(self.ring.lock());
        let written = self.written_seq();
        if flush {
            self.flush_written(written)?;
        }
        Ok(written)
    }

    /// Makes sure entry `seq` and all before it are written and flushed.
    /// Concurrent callers share device flushes (group commit).
    pub fn flush_seq(&self, seq: u64) -> Result<()> {
        if seq <= self.durable_seq() {
            return Ok(());
        }
        self.check_failed()?;
        {
            let mut open = self.open.lock();
            if open.seq <= seq {
                self.write_open_locked(&mut open, false)?;
            }
        }
        // An entry taken out of the open slot by another thread is written
        // under the ring lock: wait for that write to finish.
        drop(self.ring.lock());
        self.check_failed()?;
        self.flush_written(seq.min(self.written_seq()))
    }

    /// Waits until every entry up to `target` (already written) is durable,
    /// running a device flush unless another thread's covers it.
    fn flush_written(&self, target: u64) -> Result<()> {
        let mut flushing = self.flushing.lock();
        loop {
            if self.durable_seq() >= target {
                return Ok(());
            }
            self.check_failed()?;
            if *flushing {
                self.flush_done.wait(&mut flushing);
                continue;
            }
            *flushing = true;
            let res = MutexGuard::unlocked(&mut flushing, || {
                let (wseq, wls) = {
                    let r = self.ring.lock();
                    (r.written_seq, r.written_ls)
                };
                self.dev.flush()?;
                let mut r = self.ring.lock();
                if wseq > r.durable_seq {
                    r.durable_seq = wseq;
                    r.durable_ls = r.durable_ls.max(wls);
                }
                self.durable_seq.fetch_max(wseq, Ordering::AcqRel);
                Ok::<(), crate::device::DeviceError>(())
            });
            *flushing = false;
            self.flush_done.notify_all();
            if let Err(e) = res {
                return self.fail(e.into());
            }
        }
    }

    /// Highest seq known flushed to stable storage.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::Acquire)
    }

    /// Highest seq written (maybe not flushed).
    pub fn written_seq(&self) -> u64 {
        self.written_seq.load(Ordering::Acquire)
    }

    /// Seq of the open entry.
    pub fn current_seq(&self) -> u64 {
        self.current_seq.load(Ordering::Acquire)
    }

    /// Entries below `s` are no longer needed (call once the checkpoint entry
    /// `s` is durable). Never moves backwards; clamped to the open entry.
    pub fn set_last_seq(&self, s: u64) {
        let cur = self.current_seq();
        let mut ring = self.ring.lock();
        ring.last_seq = ring.last_seq.max(s.min(cur));
    }

    /// The engine's last_seq.
    pub fn last_seq(&self) -> u64 {
        self.ring.lock().last_seq
    }

    /// Fraction of the ring holding entries still needed (from last_seq to
    /// the write head, plus the open entry), 0.0..=1.0.
    pub fn fill_ratio(&self) -> f64 {
        let open_bytes = {
            let open = self.open.lock();
            if open.count > 0 {
                entry_total_bytes(open.buf.len())
            } else {
                0
            }
        };
        let ring = self.ring.lock();
        let i = ring.placed.partition_point(|p| p.seq < ring.last_seq);
        let used = match ring.placed.get(i) {
            None => 0,
            Some(p) if p.start < ring.head => ring.head - p.start,
            Some(p) => self.region_len - p.start + ring.head,
        };
        ((used + open_bytes) as f64 / self.region_len as f64).clamp(0.0, 1.0)
    }

    /// Position for a clean shutdown record (call after `write_pending(true)`;
    /// items still in the open entry are not covered).
    pub fn position(&self) -> JournalPosition {
        let open = self.open.lock();
        let ring = self.ring.lock();
        JournalPosition {
            next_seq: open.seq,
            next_offset: ring.head,
            last_seq: ring.prev_seq,
        }
    }
}

#[cfg(test)]
mod tests;
