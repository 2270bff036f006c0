//! Buckets, generations, alloc keys, the freespace index and the allocator.
//!
//! The device is cut into buckets. Every bucket that ever held data has an
//! alloc key (generation, data type, live sectors); every free bucket has a
//! key in the freespace btree. Both are kept exact by the alloc trigger, which
//! runs inside the commit of every change to keys that point at disk space,
//! so nothing is rebuilt at mount.
//!
//! Buckets are written append-only while *open*. A bucket whose last live
//! sector goes away becomes free again with its generation bumped, which
//! makes every old pointer into it detectably stale; it is handed out again
//! only after the journal entry that emptied it is durable.

pub mod alloc_format;
pub mod copygc;
pub mod extent_format;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use alloc_format::{AllocValue, COUNTERS, Counter, DataType, decode_counters, encode_counters};
use extent_format::ExtentValue;

use crate::btree::node::Val;
use crate::btree::tree::{TreeCtx, TreeState};
use crate::error::{Error, Result, Structure};
use crate::journal::JournalItem;
use crate::key::{BtreeId, Key, KeyType, Pos};

/// Position of the accounting key in the alloc btree.
pub const ACCOUNTING_POS: Pos = Pos {
    inode: u64::MAX,
    offset: 0,
    snapshot: 0,
};

pub fn bucket_pos(bucket: u64) -> Pos {
    Pos::new(0, bucket, 0)
}

/// Geometry the allocator needs.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub bucket_sectors: u64,
    pub nbuckets: u64,
    pub first_data_bucket: u64,
    pub node_sectors: u64,
}

impl Geometry {
    pub fn bucket_of(&self, dev_sector: u64) -> u64 {
        dev_sector / self.bucket_sectors
    }

    /// Buckets kept back from user data so b-tree writes (and so deletes and
    /// fsck) always find space.
    pub fn reserved_buckets(&self) -> u64 {
        let data = self.nbuckets - self.first_data_bucket;
        (data / 50).clamp(4, 256).min(data / 2)
    }

    /// Buckets even copygc leaves alone (half the reserve, at least 2), so
    /// b-tree writes still find space while copygc runs.
    pub fn copygc_reserved_buckets(&self) -> u64 {
        (self.reserved_buckets() / 2).max(2)
    }
}

/// How much of the reserve an allocation must leave alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reserve {
    /// User data: all of [`Geometry::reserved_buckets`].
    User,
    /// Copygc: half of it ([`Geometry::copygc_reserved_buckets`]).
    Copygc,
    /// B-tree nodes: none.
    None,
}

/// A bucket being filled.
#[derive(Clone, Copy, Debug)]
pub struct OpenBucket {
    pub bucket: u64,
    pub generation: u8,
    pub used_sectors: u64,
}

/// Space handed out for a data write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataAlloc {
    pub dev_sector: u64,
    pub sectors: u32,
    pub generation: u8,
}

/// In-memory allocator state. Lock order: after every b-tree lock.
pub struct AllocState {
    pub geo: Geometry,
    pub open: HashSet<u64>,
    pub data_bucket: Option<OpenBucket>,
    /// Copygc's own write point: moved data is never mixed with new writes.
    pub copygc_bucket: Option<OpenBucket>,
    pub btree_buckets: VecDeque<OpenBucket>,
    /// Buckets emptied by journal entries that may not be durable yet.
    pub pending_empty: HashMap<u64, u64>,
    /// Buckets closed while possibly empty: checked at the next checkpoint.
    pub closed: Vec<u64>,
    /// Space handed out but not yet committed, per bucket: a pinned bucket
    /// is never freed or reopened, even after its write point moved on, so
    /// a key committed after the allocation never points into a bucket
    /// that was meanwhile freed, reused and given a new generation.
    pins: HashMap<u64, u32>,
    cursor: u64,
    /// Mirror of the accounting key.
    pub counters: [i64; COUNTERS],
}

/// Per-bucket sector changes a commit makes.
#[derive(Default)]
pub struct BucketDeltas {
    pub buckets: BTreeMap<u64, (i64, DataType)>,
    pub counters: [i64; COUNTERS],
}

impl BucketDeltas {
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty() && self.counters.iter().all(|&c| c == 0)
    }

    pub fn add(&mut self, bucket: u64, sectors: i64, dt: DataType) {
        let e = self.buckets.entry(bucket).or_insert((0, dt));
        e.0 += sectors;
        let counter = if dt == DataType::Btree {
            Counter::BtreeSectors
        } else {
            Counter::UserSectors
        };
        self.counters[counter as usize] += sectors;
    }

    /// Adds (sign = 1) or removes (sign = -1) the space a key points at.
    pub fn charge_key(&mut self, geo: &Geometry, key: &Key, sign: i64) -> Result<()> {
        if key.ty != KeyType::Extent {
            return Ok(());
        }
        let v = ExtentValue::decode(&key.value).ok_or_else(|| {
            Error::corrupted(
                Structure::Value,
                0,
                format!("bad extent value at {:?}", key.pos),
            )
        })?;
        let charge = v.charged_sectors(key.size) as i64;
        for p in &v.ptrs {
            self.add(geo.bucket_of(p.dev_sector), sign * charge, DataType::User);
        }
        self.counters[Counter::UncompressedSectors as usize] += sign * key.size as i64;
        Ok(())
    }
}

impl AllocState {
    pub fn new(geo: Geometry, counters: [i64; COUNTERS]) -> AllocState {
        AllocState {
            geo,
            open: HashSet::new(),
            data_bucket: None,
            copygc_bucket: None,
            btree_buckets: VecDeque::new(),
            pending_empty: HashMap::new(),
            closed: Vec::new(),
            pins: HashMap::new(),
            cursor: geo.first_data_bucket,
            counters,
        }
    }

    pub fn free_buckets(&self) -> i64 {
        self.counters[Counter::FreeBuckets as usize]
    }

    /// A bucket is done being filled: if it ended up empty, the next
    /// checkpoint frees it (`free_closed_empty`). A pinned bucket goes on
    /// the closed list when its last pin is released.
    fn close_bucket(&mut self, bucket: u64) {
        self.open.remove(&bucket);
        if !self.pins.contains_key(&bucket) {
            self.closed.push(bucket);
        }
    }

    /// Open for writing, or holding space handed out but not committed:
    /// such a bucket is neither freed nor opened again.
    pub fn is_busy(&self, bucket: u64) -> bool {
        self.open.contains(&bucket) || self.pins.contains_key(&bucket)
    }

    /// Buckets that are busy (see [`AllocState::is_busy`]); they may still
    /// count as free in the accounting until their data is committed.
    pub fn busy_count(&self) -> i64 {
        (self.open.len() + self.pins.keys().filter(|b| !self.open.contains(b)).count()) as i64
    }

    /// Every busy bucket.
    pub fn busy_buckets(&self) -> HashSet<u64> {
        self.open.iter().chain(self.pins.keys()).copied().collect()
    }

    /// Notes that space in `bucket` was handed out (see `pins`).
    pub fn pin(&mut self, bucket: u64) {
        *self.pins.entry(bucket).or_default() += 1;
    }

    /// The allocation's keys were committed (or it was abandoned).
    pub fn unpin(&mut self, bucket: u64) {
        match self.pins.get_mut(&bucket) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.pins.remove(&bucket);
                if !self.open.contains(&bucket) {
                    self.closed.push(bucket);
                }
            }
            None => debug_assert!(false, "unpin of bucket {bucket} that is not pinned"),
        }
    }

    /// Whether free bucket `bucket` may be handed out (or discarded) now:
    /// not busy, and its emptying durable (call `note_durable` first).
    pub fn reusable_now(&self, bucket: u64) -> bool {
        !self.is_busy(bucket) && !self.pending_empty.contains_key(&bucket)
    }

    /// Forgets emptied buckets whose emptying is now durable.
    pub fn note_durable(&mut self, durable_seq: u64) {
        self.pending_empty.retain(|_, seq| *seq > durable_seq);
    }

    /// Finds a free bucket that may be reused now and opens it.
    fn open_bucket(
        &mut self,
        ctx: &TreeCtx,
        alloc: &TreeState,
        freespace: &TreeState,
        durable_seq: u64,
        keep_reserve: Reserve,
    ) -> Result<OpenBucket> {
        self.note_durable(durable_seq);
        let available = self.free_buckets() - self.busy_count();
        let reserve = match keep_reserve {
            Reserve::User => self.geo.reserved_buckets() as i64,
            Reserve::Copygc => self.geo.copygc_reserved_buckets() as i64,
            Reserve::None => 0,
        };
        if available <= reserve {
            return Err(Error::NoSpace);
        }
        let geo = self.geo;
        let mut start = self.cursor.max(geo.first_data_bucket);
        let mut wrapped = false;
        loop {
            let mut batch = Vec::new();
            freespace.scan(
                ctx,
                bucket_pos(start),
                Pos::new(0, u64::MAX, u32::MAX),
                256,
                &mut batch,
            )?;
            for k in &batch {
                let b = k.pos.offset;
                if b < geo.first_data_bucket || b >= geo.nbuckets {
                    return Err(Error::corrupted(
                        Structure::Key,
                        0,
                        format!("freespace key for bucket {b} outside the data area"),
                    ));
                }
                if !self.reusable_now(b) {
                    continue;
                }
                let generation = match alloc.get(ctx, bucket_pos(b))? {
                    Some(v) => decode_alloc(&v, b)?.generation,
                    None => 0,
                };
                self.cursor = b + 1;
                self.open.insert(b);
                return Ok(OpenBucket {
                    bucket: b,
                    generation,
                    used_sectors: 0,
                });
            }
            match batch.last() {
                Some(k) if batch.len() == 256 => start = k.pos.offset + 1,
                _ if !wrapped => {
                    wrapped = true;
                    start = geo.first_data_bucket;
                }
                _ => return Err(Error::NoSpace),
            }
        }
    }

    /// Space for up to `sectors` of user data, appended to the open data bucket.
    pub fn alloc_data(
        &mut self,
        ctx: &TreeCtx,
        alloc: &TreeState,
        freespace: &TreeState,
        durable_seq: u64,
        sectors: u32,
    ) -> Result<DataAlloc> {
        let bs = self.geo.bucket_sectors;
        if let Some(ob) = self.data_bucket
            && ob.used_sectors >= bs
        {
            self.close_bucket(ob.bucket);
            self.data_bucket = None;
        }
        let mut ob = match self.data_bucket {
            Some(ob) => ob,
            None => self.open_bucket(ctx, alloc, freespace, durable_seq, Reserve::User)?,
        };
        let n = (bs - ob.used_sectors).min(sectors as u64) as u32;
        let dev_sector = ob.bucket * bs + ob.used_sectors;
        ob.used_sectors += n as u64;
        self.data_bucket = Some(ob);
        self.pin(ob.bucket);
        Ok(DataAlloc {
            dev_sector,
            sectors: n,
            generation: ob.generation,
        })
    }

    /// Contiguous space for exactly `sectors` (at most a bucket) of data moved
    /// by copygc, from copygc's own open bucket. It may dip into half of the
    /// user reserve, so copygc can run when user writes already get
    /// `NoSpace`. A request that does not fit in the rest of the bucket
    /// closes it; the unused tail is never charged and counts as free the
    /// next time the bucket is collected.
    pub fn alloc_copygc(
        &mut self,
        ctx: &TreeCtx,
        alloc: &TreeState,
        freespace: &TreeState,
        durable_seq: u64,
        sectors: u32,
    ) -> Result<DataAlloc> {
        let bs = self.geo.bucket_sectors;
        if sectors as u64 > bs || sectors == 0 {
            return Err(Error::InvalidArgument(format!(
                "copygc allocation of {sectors} sectors"
            )));
        }
        if let Some(ob) = self.copygc_bucket
            && ob.used_sectors + sectors as u64 > bs
        {
            self.close_bucket(ob.bucket);
            self.copygc_bucket = None;
        }
        let mut ob = match self.copygc_bucket {
            Some(ob) => ob,
            None => self.open_bucket(ctx, alloc, freespace, durable_seq, Reserve::Copygc)?,
        };
        let dev_sector = ob.bucket * bs + ob.used_sectors;
        ob.used_sectors += sectors as u64;
        self.copygc_bucket = Some(ob);
        self.pin(ob.bucket);
        Ok(DataAlloc {
            dev_sector,
            sectors,
            generation: ob.generation,
        })
    }

    /// Free buckets copygc may still open (beyond its own reserve), plus
    /// what is left of its open bucket, in sectors.
    pub fn copygc_space(&self) -> u64 {
        let available =
            self.free_buckets() - self.busy_count() - self.geo.copygc_reserved_buckets() as i64;
        let left = self
            .copygc_bucket
            .map_or(0, |b| self.geo.bucket_sectors - b.used_sectors);
        available.max(0) as u64 * self.geo.bucket_sectors + left
    }

    /// Closes every open bucket (at unmount), so the next checkpoint frees
    /// those whose data all went away while they were open. Otherwise they
    /// would stay "in use, 0 sectors" with no freespace key: leaked.
    pub fn close_all(&mut self) {
        let mut all: Vec<OpenBucket> = self.btree_buckets.drain(..).collect();
        all.extend(self.data_bucket.take());
        all.extend(self.copygc_bucket.take());
        for ob in all {
            self.close_bucket(ob.bucket);
        }
    }

    /// Makes sure at least `slots` node slots are available in open btree buckets.
    pub fn reserve_btree_slots(
        &mut self,
        ctx: &TreeCtx,
        alloc: &TreeState,
        freespace: &TreeState,
        durable_seq: u64,
        slots: usize,
    ) -> Result<()> {
        let per_bucket = self.geo.bucket_sectors / self.geo.node_sectors;
        loop {
            let have: u64 = self
                .btree_buckets
                .iter()
                .map(|b| (self.geo.bucket_sectors - b.used_sectors) / self.geo.node_sectors)
                .sum();
            if have >= slots as u64 {
                return Ok(());
            }
            let ob = self.open_bucket(ctx, alloc, freespace, durable_seq, Reserve::None)?;
            debug_assert!(per_bucket >= 1);
            self.btree_buckets.push_back(ob);
        }
    }

    /// Takes a reserved node slot: (device byte offset, generation, bucket).
    pub fn take_btree_slot(&mut self) -> Result<(u64, u8, u64)> {
        let geo = self.geo;
        while let Some(ob) = self.btree_buckets.front_mut() {
            if ob.used_sectors + geo.node_sectors <= geo.bucket_sectors {
                let sector = ob.bucket * geo.bucket_sectors + ob.used_sectors;
                ob.used_sectors += geo.node_sectors;
                return Ok((sector * crate::SECTOR_BYTES, ob.generation, ob.bucket));
            }
            let full = self.btree_buckets.pop_front().expect("front exists");
            self.close_bucket(full.bucket);
        }
        Err(Error::NoSpace)
    }
}

pub fn decode_alloc(v: &Val, bucket: u64) -> Result<AllocValue> {
    AllocValue::decode(&v.value).ok_or_else(|| {
        Error::corrupted(
            Structure::Value,
            0,
            format!("bad alloc value for bucket {bucket}"),
        )
    })
}

fn put(
    tree: &mut TreeState,
    ctx: &TreeCtx,
    btree: BtreeId,
    key: Key,
    items: &mut Vec<JournalItem>,
) -> Result<()> {
    tree.insert(ctx, key.pos, Val::from_key(&key))?;
    items.push(JournalItem::Put { btree, key });
    Ok(())
}

fn del(
    tree: &mut TreeState,
    ctx: &TreeCtx,
    btree: BtreeId,
    pos: Pos,
    items: &mut Vec<JournalItem>,
) -> Result<()> {
    tree.remove(ctx, pos)?;
    items.push(JournalItem::Delete { btree, pos });
    Ok(())
}

/// The alloc trigger: applies bucket sector deltas to alloc keys, the
/// freespace index and the accounting key, appending the resulting key
/// changes to `items`. Returns the buckets that became free (reusable once
/// the journal entry holding `items` is durable).
pub fn apply_bucket_deltas(
    ctx: &TreeCtx,
    alloc: &mut TreeState,
    freespace: &mut TreeState,
    st: &mut AllocState,
    deltas: &BucketDeltas,
    items: &mut Vec<JournalItem>,
) -> Result<Vec<u64>> {
    let mut emptied = Vec::new();
    let mut counters = deltas.counters;
    for (&bucket, &(delta, dt)) in &deltas.buckets {
        if delta == 0 {
            continue;
        }
        let old = match alloc.get(ctx, bucket_pos(bucket))? {
            Some(v) => decode_alloc(&v, bucket)?,
            None => AllocValue::default(),
        };
        let mut new = old;
        let sectors = old.dirty_sectors as i64 + delta;
        if sectors < 0 {
            tracing::error!(
                bucket,
                delta,
                old = old.dirty_sectors,
                "bucket sector count would go negative"
            );
        }
        new.dirty_sectors = sectors.clamp(0, u32::MAX as i64) as u32;
        if old.dirty_sectors == 0 && new.dirty_sectors > 0 && old.data_type != DataType::Free {
            // Emptied while open, now charged again: it never went back to
            // the freespace index, so it does not leave it either.
            new.data_type = dt;
        } else if old.dirty_sectors == 0 && new.dirty_sectors > 0 {
            new.data_type = dt;
            // An open bucket that drained to 0 was never freed: it has no
            // freespace key and is already off the free count.
            if old.data_type == DataType::Free {
                del(
                    freespace,
                    ctx,
                    BtreeId::Freespace,
                    bucket_pos(bucket),
                    items,
                )?;
                counters[Counter::FreeBuckets as usize] -= 1;
            }
        } else if old.dirty_sectors > 0 && new.dirty_sectors == 0 && !st.is_busy(bucket) {
            mark_free(ctx, freespace, &mut new, bucket, items)?;
            counters[Counter::FreeBuckets as usize] += 1;
            emptied.push(bucket);
        }
        put(
            alloc,
            ctx,
            BtreeId::Alloc,
            Key::new(bucket_pos(bucket), KeyType::Alloc, new.encode()),
            items,
        )?;
    }
    update_counters(ctx, alloc, st, &counters, items)?;
    Ok(emptied)
}

fn mark_free(
    ctx: &TreeCtx,
    freespace: &mut TreeState,
    v: &mut AllocValue,
    bucket: u64,
    items: &mut Vec<JournalItem>,
) -> Result<()> {
    v.generation = v.generation.wrapping_add(1);
    v.data_type = DataType::Free;
    put(
        freespace,
        ctx,
        BtreeId::Freespace,
        Key::new(bucket_pos(bucket), KeyType::Free, Vec::new()),
        items,
    )
}

/// Frees closed buckets that ended up with no live data (they could not be
/// freed while open). Returns the buckets freed.
pub fn free_closed_empty(
    ctx: &TreeCtx,
    alloc: &mut TreeState,
    freespace: &mut TreeState,
    st: &mut AllocState,
    items: &mut Vec<JournalItem>,
) -> Result<Vec<u64>> {
    let mut emptied = Vec::new();
    let mut counters = [0i64; COUNTERS];
    for bucket in std::mem::take(&mut st.closed) {
        // A busy bucket is listed again when it stops being busy.
        if st.is_busy(bucket) {
            continue;
        }
        let Some(v) = alloc.get(ctx, bucket_pos(bucket))? else {
            continue;
        };
        let mut v = decode_alloc(&v, bucket)?;
        if v.dirty_sectors > 0 || v.data_type == DataType::Free {
            continue;
        }
        mark_free(ctx, freespace, &mut v, bucket, items)?;
        put(
            alloc,
            ctx,
            BtreeId::Alloc,
            Key::new(bucket_pos(bucket), KeyType::Alloc, v.encode()),
            items,
        )?;
        counters[Counter::FreeBuckets as usize] += 1;
        emptied.push(bucket);
    }
    update_counters(ctx, alloc, st, &counters, items)?;
    Ok(emptied)
}

fn update_counters(
    ctx: &TreeCtx,
    alloc: &mut TreeState,
    st: &mut AllocState,
    delta: &[i64; COUNTERS],
    items: &mut Vec<JournalItem>,
) -> Result<()> {
    if delta.iter().all(|&d| d == 0) {
        return Ok(());
    }
    for (c, d) in st.counters.iter_mut().zip(delta) {
        *c += d;
    }
    let key = Key::new(
        ACCOUNTING_POS,
        KeyType::Accounting,
        encode_counters(&st.counters),
    );
    put(alloc, ctx, BtreeId::Alloc, key, items)
}

/// Reads the accounting key (all zero if absent).
/// Data-area buckets whose alloc key says in use with no live sectors.
/// Nothing is open right after a mount, so these are buckets emptied while
/// open when the engine crashed (or was closed by an older version): they
/// belong on the `closed` list, for the next checkpoint to free.
pub fn find_empty_in_use(ctx: &TreeCtx, alloc: &TreeState, geo: &Geometry) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    let mut start = bucket_pos(geo.first_data_bucket);
    let end = Pos::new(0, u64::MAX, u32::MAX);
    loop {
        let mut batch = Vec::new();
        alloc.scan(ctx, start, end, 1024, &mut batch)?;
        for k in &batch {
            let b = k.pos.offset;
            if k.ty != KeyType::Alloc || b < geo.first_data_bucket || b >= geo.nbuckets {
                continue;
            }
            let v = AllocValue::decode(&k.value).ok_or_else(|| {
                Error::corrupted(Structure::Value, 0, format!("bad alloc key for bucket {b}"))
            })?;
            if v.dirty_sectors == 0 && v.data_type != DataType::Free {
                out.push(b);
            }
        }
        match batch.last().and_then(|k| k.pos.successor()) {
            Some(next) if batch.len() == 1024 => start = next,
            _ => return Ok(out),
        }
    }
}

pub fn read_counters(ctx: &TreeCtx, alloc: &TreeState) -> Result<[i64; COUNTERS]> {
    match alloc.get(ctx, ACCOUNTING_POS)? {
        Some(v) => decode_counters(&v.value)
            .ok_or_else(|| Error::corrupted(Structure::Value, 0, "bad accounting value")),
        None => Ok([0; COUNTERS]),
    }
}
