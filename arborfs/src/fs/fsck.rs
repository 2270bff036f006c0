//! Offline check and repair.
//!
//! Reads every node (so every checksum and key range is verified), then
//! cross-checks: directory entries against inodes (dangling entries, wrong
//! d_type), link counts, directory parents, reachability, extents against
//! their inode (owner exists, within i_size, sector counts), extended
//! attributes (owner exists, decodable, valid POSIX ACLs), the orphan list,
//! and allocation: alloc keys, the freespace index and the accounting totals
//! are recomputed from the extents and b-tree nodes and compared.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use super::acl::Acl;
use super::dirent_format::DirentValue;
use super::error::FsResult;
use super::inode_format::InodeValue;
use super::types::*;
use super::xattr_format::{Namespace, SYSTEM_NAMES, XattrValue};
use super::{Fs, hashtab, inode_pos, orphan_pos};
use crate::alloc::alloc_format::{AllocValue, COUNTERS, Counter, DataType, encode_counters};
use crate::alloc::extent_format::ExtentValue;
use crate::alloc::{ACCOUNTING_POS, bucket_pos};
use crate::btree::cache::is_temp;
use crate::btree::trans::Durability;
use crate::key::{BtreeId, Key, KeyType, Pos};

/// What fsck found and did.
#[derive(Clone, Debug, Default)]
pub struct FsckReport {
    /// One line per problem found, in the order found.
    pub problems: Vec<String>,
    /// Problems repaired (only with `repair`).
    pub repaired: usize,
    /// Problems found and left as they are.
    pub unrepaired: usize,
    /// B-tree nodes read and verified.
    pub nodes: u64,
    /// Inodes checked.
    pub inodes: u64,
    /// Directory entries checked.
    pub dirents: u64,
    /// Extents checked.
    pub extents: u64,
}

impl FsckReport {
    fn problem(&mut self, fixed: bool, msg: String) {
        tracing::warn!("fsck: {msg}");
        self.problems.push(msg);
        if fixed {
            self.repaired += 1;
        } else {
            self.unrepaired += 1;
        }
    }

    /// True if nothing was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks the filesystem on `dev` (opening it with `opts`, read-only
/// unless `repair`). With `repair`, b-tree nodes that cannot be read are
/// first replaced by empty ones (their keys are lost; the checks that
/// follow reconnect or drop what depended on them), then [`check`] runs.
/// Without it, a filesystem whose damaged nodes keep it from opening is
/// reported as a problem left unrepaired.
pub fn check_device(
    dev: std::sync::Arc<dyn crate::device::Device>,
    opts: super::FsOptions,
    repair: bool,
    progress: &mut dyn FnMut(&str),
) -> FsResult<FsckReport> {
    let mut r = FsckReport::default();
    if repair {
        progress("replacing unreadable b-tree nodes");
        let engine = crate::engine::Engine::open(dev.clone(), opts.engine.clone())?;
        for d in engine.drop_damaged_nodes()? {
            r.problem(
                true,
                format!(
                    "{} b-tree node (level {}) for {}..{} is unreadable ({}): replaced by an empty one, its keys are lost",
                    d.btree.name(),
                    d.level,
                    d.min,
                    d.max,
                    d.error
                ),
            );
        }
        engine.close()?;
    }
    let fs = match Fs::open(dev, opts) {
        Ok(fs) => fs,
        Err(super::error::FsError::Corrupted(e)) if !repair => {
            r.problem(false, format!("the filesystem does not open: {e}"));
            return Ok(r);
        }
        Err(e) => return Err(e),
    };
    let more = check(&fs, repair, progress)?;
    if repair {
        fs.close()?;
    }
    r.problems.extend(more.problems);
    r.repaired += more.repaired;
    r.unrepaired += more.unrepaired;
    r.nodes = more.nodes;
    r.inodes = more.inodes;
    r.dirents = more.dirents;
    r.extents = more.extents;
    Ok(r)
}

/// Checks the filesystem; with `repair`, fixes what it finds. `progress`
/// gets short status lines for long runs.
pub fn check(fs: &Fs, repair: bool, progress: &mut dyn FnMut(&str)) -> FsResult<FsckReport> {
    let mut r = FsckReport::default();
    let engine = fs.engine();
    if repair {
        // Every node gets a real location, so allocation can be checked exactly.
        engine.checkpoint()?;
    }
    progress("checking b-tree nodes");
    let mut node_slots: Vec<(BtreeId, u64)> = Vec::new();
    let mut temp_nodes = false;
    let walked = engine.walk_nodes(&mut |b, p| {
        if is_temp(p.offset) {
            temp_nodes = true;
        } else {
            node_slots.push((b, p.offset));
        }
    });
    if let Err(e @ crate::error::Error::Corrupted { .. }) = walked {
        // Repair replaces unreadable nodes before this (`check_device`);
        // nothing else can be checked over a tree with a hole in it.
        r.problem(false, format!("damaged b-tree node: {e}"));
        return Ok(r);
    }
    walked?;
    r.nodes = node_slots.len() as u64;
    // Slots freed since the last checkpoint (a merge during replay, say)
    // stay charged until the next one: count them as in use.
    node_slots.extend(
        engine
            .freed_node_slots()
            .into_iter()
            .map(|(b, p)| (b, p.offset)),
    );

    progress("checking inodes");
    let mut inodes: BTreeMap<u64, InodeValue> = BTreeMap::new();
    let mut orphans: HashSet<u64> = HashSet::new();
    for k in engine.iter(BtreeId::Inodes, Pos::MIN, Pos::MAX) {
        let k = k?;
        if k.pos.inode == 1 {
            orphans.insert(k.pos.offset);
            continue;
        }
        match InodeValue::decode(&k.value) {
            Some(v) if k.ty == KeyType::Inode && k.pos.inode == 0 => {
                inodes.insert(k.pos.offset, v);
            }
            _ => {
                if repair {
                    fs.tx(Durability::Lazy, |tx| {
                        tx.delete(BtreeId::Inodes, k.pos);
                        Ok(())
                    })?;
                }
                r.problem(repair, format!("undecodable inode key at {:?}", k.pos));
            }
        }
    }
    r.inodes = inodes.len() as u64;
    if !inodes.contains_key(&ROOT_INO.0) {
        r.problem(false, "root directory missing".into());
        return Ok(r);
    }

    progress("checking directory entries");
    let mut links: HashMap<u64, u32> = HashMap::new();
    let mut subdirs: HashMap<u64, u32> = HashMap::new();
    let mut parent_of: HashMap<u64, u64> = HashMap::new();
    let mut children: HashMap<u64, Vec<u64>> = HashMap::new();
    for k in engine.iter(BtreeId::Dirents, Pos::MIN, Pos::MAX) {
        let k = k?;
        if k.ty == KeyType::Whiteout {
            continue;
        }
        r.dirents += 1;
        let dir_ok = inodes
            .get(&k.pos.inode)
            .is_some_and(|d| d.mode & S_IFMT == S_IFDIR);
        let d = DirentValue::decode(&k.value);
        let target = d
            .as_ref()
            .and_then(|d| inodes.get(&d.target).map(|t| (d, t)));
        let Some((d, t)) = target.filter(|_| dir_ok) else {
            if repair {
                fs.tx(Durability::Lazy, |tx| {
                    tx.delete(BtreeId::Dirents, k.pos);
                    Ok(())
                })?;
            }
            r.problem(
                repair,
                format!("dangling or bad directory entry at {:?}", k.pos),
            );
            continue;
        };
        let kind = FileKind::from_mode(t.mode).unwrap_or(FileKind::Regular);
        if d.d_type != kind.d_type() {
            if repair {
                let fixed = DirentValue {
                    d_type: kind.d_type(),
                    ..d.clone()
                };
                fs.tx(Durability::Lazy, |tx| {
                    tx.put(
                        BtreeId::Dirents,
                        Key::new(k.pos, KeyType::Dirent, fixed.encode()),
                    );
                    Ok(())
                })?;
            }
            r.problem(
                repair,
                format!(
                    "entry {:?} in {} has the wrong type",
                    String::from_utf8_lossy(&d.name),
                    k.pos.inode
                ),
            );
        }
        *links.entry(d.target).or_default() += 1;
        children.entry(k.pos.inode).or_default().push(d.target);
        if kind == FileKind::Directory {
            *subdirs.entry(k.pos.inode).or_default() += 1;
            if parent_of.insert(d.target, k.pos.inode).is_some() {
                r.problem(
                    false,
                    format!("directory {} has more than one name", d.target),
                );
            }
        }
    }

    progress("checking connectivity");
    // Everything must be reachable from the root. What is not (no name, or
    // only names inside a cycle cut off from the root) and is not waiting
    // on the orphan list goes to /lost+found.
    // Inodes with no name at all are reconnected first; what they contain
    // becomes reachable through them, so reachability is computed again
    // until only inodes named from inside cut-off cycles remain.
    let mut lf: Option<InodeNo> = None;
    loop {
        let mut reachable: HashSet<u64> = HashSet::new();
        let mut queue = vec![ROOT_INO.0];
        while let Some(d) = queue.pop() {
            if !reachable.insert(d) {
                continue;
            }
            if let Some(c) = children.get(&d) {
                queue.extend(c.iter().copied());
            }
        }
        let lost: Vec<u64> = inodes
            .keys()
            .copied()
            .filter(|i| !reachable.contains(i) && !orphans.contains(i))
            .collect();
        let (tops, in_cycles): (Vec<u64>, Vec<u64>) = lost
            .into_iter()
            .partition(|i| links.get(i).copied().unwrap_or(0) == 0);
        if tops.is_empty() {
            for ino in in_cycles {
                let is_dir = inodes[&ino].mode & S_IFMT == S_IFDIR;
                let what = if is_dir { "directory" } else { "inode" };
                r.problem(
                    false,
                    format!("{what} {ino} is in a directory cycle not reachable from the root"),
                );
            }
            break;
        }
        if repair && lf.is_none() {
            lf = Some(lost_and_found(fs)?);
        }
        for ino in tops {
            let is_dir = inodes[&ino].mode & S_IFMT == S_IFDIR;
            let what = if is_dir { "directory" } else { "inode" };
            // Without repair, pretend it was reconnected under the root so
            // its contents count as reachable.
            let new_parent = lf.map_or(ROOT_INO.0, |l| l.0);
            if let Some(lf) = lf {
                let name = format!("#{ino}");
                let kind = FileKind::from_mode(inodes[&ino].mode).unwrap_or(FileKind::Regular);
                fs.tx(Durability::Lazy, |tx| {
                    super::dirent::insert(tx, lf, name.as_bytes(), InodeNo(ino), kind.d_type())?;
                    if is_dir {
                        let mut v = super::inode::read_inode(tx, InodeNo(ino))?;
                        v.parent = lf.0;
                        super::inode::write_inode(tx, InodeNo(ino), &v);
                    }
                    Ok(())
                })?;
                if is_dir && let Some(v) = inodes.get_mut(&ino) {
                    v.parent = lf.0;
                }
                // A lost+found made just now is an inode to check too.
                if let std::collections::btree_map::Entry::Vacant(e) = inodes.entry(lf.0)
                    && let Some(v) =
                        fs.tx(Durability::Lazy, |tx| super::inode::read_inode_opt(tx, lf))?
                {
                    e.insert(v);
                    // mkdir also changed the root's link count.
                    if let Some(root) = fs.tx(Durability::Lazy, |tx| {
                        super::inode::read_inode_opt(tx, ROOT_INO)
                    })? {
                        inodes.insert(ROOT_INO.0, root);
                    }
                    *links.entry(lf.0).or_default() += 1;
                    *subdirs.entry(ROOT_INO.0).or_default() += 1;
                    parent_of.insert(lf.0, ROOT_INO.0);
                    children.entry(ROOT_INO.0).or_default().push(lf.0);
                }
            }
            *links.entry(ino).or_default() += 1;
            children.entry(new_parent).or_default().push(ino);
            if is_dir {
                *subdirs.entry(new_parent).or_default() += 1;
                parent_of.insert(ino, new_parent);
            }
            let done = if repair {
                "moved to /lost+found"
            } else {
                "would be moved to /lost+found"
            };
            r.problem(
                repair,
                format!("{what} {ino} is not reachable from the root; {done}"),
            );
        }
    }

    progress("checking link counts");
    let mut inode_fixes: Vec<(u64, InodeValue)> = Vec::new();
    for (&ino, v) in &inodes {
        let is_dir = v.mode & S_IFMT == S_IFDIR;
        let names = links.get(&ino).copied().unwrap_or(0);
        let mut fixed = v.clone();
        if is_dir {
            let want = 2 + subdirs.get(&ino).copied().unwrap_or(0);
            if ino != ROOT_INO.0 && names == 0 {
                continue; // reported above
            }
            if v.nlink != want {
                r.problem(
                    repair,
                    format!(
                        "directory {ino} has link count {} but {want} links",
                        v.nlink
                    ),
                );
                fixed.nlink = want;
            }
            let parent = if ino == ROOT_INO.0 {
                ROOT_INO.0
            } else {
                parent_of.get(&ino).copied().unwrap_or(v.parent)
            };
            if v.parent != parent {
                r.problem(
                    repair,
                    format!(
                        "directory {ino} records parent {} but lives in {parent}",
                        v.parent
                    ),
                );
                fixed.parent = parent;
            }
        } else if names == 0 {
            continue; // on the orphan list (freed at the next mount) or reported above
        } else if v.nlink != names {
            r.problem(
                repair,
                format!("inode {ino} has link count {} but {names} names", v.nlink),
            );
            fixed.nlink = names;
        }
        if &fixed != v {
            inode_fixes.push((ino, fixed));
        }
    }
    for o in &orphans {
        if links.get(o).copied().unwrap_or(0) > 0 || !inodes.contains_key(o) {
            if repair {
                fs.tx(Durability::Lazy, |tx| {
                    tx.delete(BtreeId::Inodes, orphan_pos(InodeNo(*o)));
                    Ok(())
                })?;
            }
            r.problem(
                repair,
                format!("orphan list entry for inode {o}, which is linked or gone"),
            );
        }
    }

    progress("checking extended attributes");
    for k in engine.iter(BtreeId::Xattrs, Pos::MIN, Pos::MAX) {
        let k = k?;
        if k.ty == KeyType::Whiteout {
            continue;
        }
        let owner = inodes.get(&k.pos.inode);
        let problem = match (owner, k.pos.offset) {
            (None, _) => Some("belongs to no inode".to_string()),
            (Some(v), 0) if v.mode & S_IFMT != S_IFLNK => {
                Some("is a symlink target of a non-symlink".into())
            }
            (Some(_), 0) => None,
            (Some(v), _) => xattr_problem(&k, v),
        };
        let Some(why) = problem else { continue };
        if repair {
            fs.tx(Durability::Lazy, |tx| match k.pos.offset {
                0 => {
                    tx.delete(BtreeId::Xattrs, k.pos);
                    Ok(())
                }
                slot => hashtab::remove(tx, BtreeId::Xattrs, k.pos.inode, slot),
            })?;
        }
        r.problem(
            repair,
            format!("extended attribute key at {:?} {why}", k.pos),
        );
    }

    progress("checking extents");
    let geo = engine.geometry();
    let mut bucket_sectors: HashMap<u64, i64> = HashMap::new();
    let mut counters = [0i64; COUNTERS];
    let mut file_sectors: HashMap<u64, u64> = HashMap::new();
    let mut gens: HashMap<u64, u8> = HashMap::new();
    let mut zero_csums = HashMap::new();
    for k in engine.iter(BtreeId::Extents, Pos::MIN, Pos::MAX) {
        let k = k?;
        r.extents += 1;
        let owner = inodes.get(&k.pos.inode);
        let v = ExtentValue::decode(&k.value);
        let bad = match (owner, &v) {
            (None, _) => Some("belongs to no inode".to_string()),
            (Some(o), _) if o.mode & S_IFMT != S_IFREG => {
                Some("belongs to a non-regular inode".into())
            }
            (Some(o), Some(v))
                if k.start() * 512 >= o.size.div_ceil(4096) * 4096
                    && !is_preallocation(v, &mut zero_csums) =>
            {
                Some("lies past the end of the file".into())
            }
            (_, None) if k.ty == KeyType::Extent => Some("has an undecodable value".into()),
            _ => None,
        };
        let stale = match &v {
            Some(v) => v.ptrs.iter().find_map(|p| {
                let b = geo.bucket_of(p.dev_sector);
                let g = *gens.entry(b).or_insert_with(|| {
                    engine
                        .bucket(b)
                        .map(|a| a.generation)
                        .unwrap_or(p.generation)
                });
                (g != p.generation).then_some(format!(
                    "points into bucket {b} with stale generation {}",
                    p.generation
                ))
            }),
            None => None,
        };
        if let Some(why) = bad.or(stale) {
            if repair {
                fs.tx(Durability::Lazy, |tx| {
                    tx.delete(BtreeId::Extents, k.pos);
                    Ok(())
                })?;
            }
            r.problem(repair, format!("extent {:?} {why}", k.pos));
            continue;
        }
        *file_sectors.entry(k.pos.inode).or_default() += k.size as u64;
        if let Some(v) = v {
            let charge = v.charged_sectors(k.size) as i64;
            for p in &v.ptrs {
                *bucket_sectors
                    .entry(geo.bucket_of(p.dev_sector))
                    .or_default() += charge;
            }
            counters[Counter::UserSectors as usize] += charge * v.ptrs.len() as i64;
            counters[Counter::UncompressedSectors as usize] += k.size as i64;
        }
    }
    for (&ino, v) in &inodes {
        let have = file_sectors.get(&ino).copied().unwrap_or(0);
        if v.mode & S_IFMT == S_IFREG && v.sectors != have {
            r.problem(
                repair,
                format!("inode {ino} records {} sectors but has {have}", v.sectors),
            );
            match inode_fixes.iter_mut().find(|(i, _)| *i == ino) {
                Some((_, f)) => f.sectors = have,
                None => inode_fixes.push((
                    ino,
                    InodeValue {
                        sectors: have,
                        ..v.clone()
                    },
                )),
            }
        }
    }
    if repair && !inode_fixes.is_empty() {
        for chunk in inode_fixes.chunks(256) {
            fs.tx(Durability::Lazy, |tx| {
                for (ino, v) in chunk {
                    tx.put(
                        BtreeId::Inodes,
                        Key::new(inode_pos(InodeNo(*ino)), KeyType::Inode, v.encode()),
                    );
                }
                Ok(())
            })?;
        }
    }

    progress("checking allocation");
    if temp_nodes {
        r.problem(
            false,
            "journal replay is pending (image not clean): allocation not checked; run with -y"
                .into(),
        );
        return Ok(r);
    }
    let node_sectors = geo.node_sectors as i64;
    let mut btree_buckets: HashSet<u64> = HashSet::new();
    for (_, off) in &node_slots {
        let b = geo.bucket_of(off / 512);
        *bucket_sectors.entry(b).or_default() += node_sectors;
        btree_buckets.insert(b);
        counters[Counter::BtreeSectors as usize] += node_sectors;
    }
    let sb = engine.superblock();
    let reserved_sectors = geo.bucket_sectors as i64;
    let open = engine.open_buckets();
    let mut alloc_fixes: Vec<Key> = Vec::new();
    let mut free_fixes: Vec<(u64, bool)> = Vec::new();
    let mut free_count = 0i64;
    let alloc_keys: HashMap<u64, AllocValue> = engine
        .iter(
            BtreeId::Alloc,
            Pos::new(0, 0, 0),
            Pos::new(0, u64::MAX, u32::MAX),
        )
        .filter_map(|k| k.ok())
        .filter_map(|k| AllocValue::decode(&k.value).map(|v| (k.pos.offset, v)))
        .collect();
    let free_keys: HashSet<u64> = engine
        .iter(BtreeId::Freespace, Pos::MIN, Pos::MAX)
        .filter_map(|k| k.ok())
        .map(|k| k.pos.offset)
        .collect();
    for b in 0..geo.nbuckets {
        let cur = alloc_keys.get(&b).copied().unwrap_or_default();
        let (want_sectors, want_type) = if b == 0 {
            (reserved_sectors, DataType::Superblock)
        } else if b < sb.journal_first_bucket + sb.journal_nbuckets {
            (reserved_sectors, DataType::Journal)
        } else {
            let s = bucket_sectors.get(&b).copied().unwrap_or(0);
            let t = if s == 0 {
                if open.contains(&b) {
                    cur.data_type
                } else {
                    DataType::Free
                }
            } else if btree_buckets.contains(&b) {
                DataType::Btree
            } else {
                DataType::User
            };
            (s, t)
        };
        if cur.dirty_sectors as i64 != want_sectors || cur.data_type != want_type {
            r.problem(
                repair,
                format!(
                    "bucket {b}: alloc key says {} {} sectors, contents are {} {want_sectors}",
                    cur.data_type.name(),
                    cur.dirty_sectors,
                    want_type.name()
                ),
            );
            let v = AllocValue {
                dirty_sectors: want_sectors as u32,
                data_type: want_type,
                ..cur
            };
            alloc_fixes.push(Key::new(bucket_pos(b), KeyType::Alloc, v.encode()));
        }
        let want_free = b >= geo.first_data_bucket && want_sectors == 0 && !open.contains(&b);
        if want_free {
            free_count += 1;
        }
        if want_free != free_keys.contains(&b) && !(open.contains(&b) && want_sectors == 0) {
            r.problem(
                repair,
                format!(
                    "bucket {b}: freespace index says {}",
                    if want_free {
                        "used, but it is free"
                    } else {
                        "free, but it is used"
                    }
                ),
            );
            free_fixes.push((b, want_free));
        }
    }
    // Open buckets that never held data keep their freespace key.
    let open_free = open
        .iter()
        .filter(|b| bucket_sectors.get(b).copied().unwrap_or(0) == 0 && free_keys.contains(b))
        .count();
    counters[Counter::FreeBuckets as usize] = free_count + open_free as i64;
    let have = engine.counters();
    if have != counters {
        r.problem(
            repair,
            format!("accounting totals {have:?} differ from the recomputed {counters:?}"),
        );
    }
    if repair && (!alloc_fixes.is_empty() || !free_fixes.is_empty() || have != counters) {
        for chunk in alloc_fixes.chunks(1024) {
            fs.tx(Durability::Lazy, |tx| {
                for k in chunk {
                    tx.put(BtreeId::Alloc, k.clone());
                }
                Ok(())
            })?;
        }
        for chunk in free_fixes.chunks(1024) {
            fs.tx(Durability::Lazy, |tx| {
                for &(b, free) in chunk {
                    if free {
                        tx.put(
                            BtreeId::Freespace,
                            Key::new(bucket_pos(b), KeyType::Free, Vec::new()),
                        );
                    } else {
                        tx.delete(BtreeId::Freespace, bucket_pos(b));
                    }
                }
                Ok(())
            })?;
        }
        engine.set_counters(counters);
        fs.tx(Durability::Lazy, |tx| {
            tx.put(
                BtreeId::Alloc,
                Key::new(
                    ACCOUNTING_POS,
                    KeyType::Accounting,
                    encode_counters(&counters),
                ),
            );
            Ok(())
        })?;
    }
    if repair {
        fs.sync()?;
    }
    Ok(r)
}

/// Reads every stored unit of file data once and verifies its checksum, and
/// that a compressed unit decompresses: an offline scrub, like
/// `btrfs check --check-data-csum`. There is one copy of the data, so
/// nothing is repaired: each bad unit is reported with the files and byte
/// ranges that use it. `verified` hears the
/// stored bytes read so far, out of [`data_bytes`].
pub fn check_data(
    fs: &Fs,
    progress: &mut dyn FnMut(&str),
    verified: &mut dyn FnMut(u64),
) -> FsResult<FsckReport> {
    let mut r = FsckReport::default();
    let engine = fs.engine();
    progress("checking file data");
    // (inode, first byte, end byte, why) of each damaged piece.
    let mut damaged: Vec<(u64, u64, u64, String)> = Vec::new();
    // Verdict per stored unit (device sector), so that the pieces of a unit
    // split by overwrites are read once. Bounded: a filesystem may hold far
    // more units than memory; past the bound a unit may be read again.
    const SEEN_MAX: usize = 1 << 16;
    let mut seen: HashMap<u64, Option<String>> = HashMap::new();
    let mut buf = Vec::new();
    let mut read = 0u64;
    for k in engine.iter(BtreeId::Extents, Pos::MIN, Pos::MAX) {
        let k = k?;
        let Some(v) = ExtentValue::decode(&k.value).filter(|_| k.ty == KeyType::Extent) else {
            continue; // the metadata pass reports undecodable extents
        };
        r.extents += 1;
        if seen.len() >= SEEN_MAX {
            seen.clear();
        }
        for ptr in &v.ptrs {
            let verdict = seen.entry(ptr.dev_sector).or_insert_with(|| {
                buf.resize(v.stored_sectors as usize * 512, 0);
                // What the read path does with the unit's bytes.
                let checked = engine
                    .read_data(ptr.dev_sector, &mut buf)
                    .map_err(super::error::FsError::from)
                    .and_then(|()| super::data::plain_unit(&v, ptr, Cow::Borrowed(&buf)))
                    .map(|_| ());
                read += buf.len() as u64;
                verified(read);
                checked.err().map(|e| e.to_string())
            });
            if let Some(why) = verdict {
                damaged.push((
                    k.pos.inode,
                    k.start() * 512,
                    k.pos.offset * 512,
                    why.clone(),
                ));
            }
        }
    }
    if !damaged.is_empty() {
        progress("naming damaged files");
        let names = names_of(fs, damaged.iter().map(|d| d.0).collect())?;
        for (ino, from, to, why) in damaged {
            let path = path_of(&names, ino);
            r.problem(
                false,
                format!(
                    "file data of inode {ino} ({path}) at bytes {from}..{to} is damaged: {why}"
                ),
            );
        }
    }
    Ok(r)
}

/// The directory entry (parent, name) of each inode in `wanted` and of
/// every directory above them: one pass over the entries per level, so
/// memory stays proportional to the inodes asked about.
fn names_of(fs: &Fs, mut wanted: HashSet<u64>) -> FsResult<HashMap<u64, (u64, Vec<u8>)>> {
    let mut names: HashMap<u64, (u64, Vec<u8>)> = HashMap::new();
    for _level in 0..256 {
        wanted.retain(|i| *i != ROOT_INO.0 && !names.contains_key(i));
        if wanted.is_empty() {
            break;
        }
        let mut found = HashSet::new();
        for k in fs.engine().iter(BtreeId::Dirents, Pos::MIN, Pos::MAX) {
            let k = k?;
            let Some(d) = DirentValue::decode(&k.value).filter(|_| k.ty == KeyType::Dirent) else {
                continue;
            };
            if wanted.contains(&d.target) && !names.contains_key(&d.target) {
                found.insert(k.pos.inode);
                names.insert(d.target, (k.pos.inode, d.name));
            }
        }
        // Inodes without any entry stay unnamed ("?"); go up one level.
        wanted = found;
    }
    Ok(names)
}

/// Bytes of stored file data (from the persistent accounting): what
/// [`check_data`] reads.
pub fn data_bytes(fs: &Fs) -> u64 {
    let c = fs.engine().counters();
    c[Counter::UserSectors as usize].max(0) as u64 * 512
}

/// A path of inode `ino` from the directory entries in `names` (child ->
/// parent and name), or `?` where the chain breaks.
fn path_of(names: &HashMap<u64, (u64, Vec<u8>)>, mut ino: u64) -> String {
    let mut parts = Vec::new();
    while ino != ROOT_INO.0 && parts.len() < 4096 {
        match names.get(&ino) {
            Some((parent, name)) => {
                parts.push(String::from_utf8_lossy(name).into_owned());
                ino = *parent;
            }
            None => {
                parts.push("?".into());
                break;
            }
        }
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}

/// What is wrong with xattr key `k` of inode `v`, if anything: it must
/// decode, and POSIX ACLs must be valid (a default ACL only on a directory).
fn xattr_problem(k: &Key, v: &InodeValue) -> Option<String> {
    let Some(x) = XattrValue::decode(&k.value).filter(|_| k.ty == KeyType::Xattr) else {
        return Some("does not decode".into());
    };
    if x.ns != Namespace::System {
        return None;
    }
    if let Err(e) = Acl::decode(&x.value) {
        return Some(format!("holds an invalid ACL ({e})"));
    }
    if x.name == SYSTEM_NAMES[1] && v.mode & S_IFMT != S_IFDIR {
        return Some("is a default ACL of a non-directory".into());
    }
    None
}

/// Whether an extent is space preallocated by fallocate (which stores
/// zeros raw): allowed past the end of the file, as with `KEEP_SIZE`.
/// Recognized by its checksum, that of a unit of zeros of its length.
fn is_preallocation(v: &ExtentValue, zero_csums: &mut HashMap<(u8, u32), u64>) -> bool {
    if v.compression != 0 {
        return false;
    }
    let Some(kind) = crate::sb::ChecksumType::from_u8(v.csum_type) else {
        return false;
    };
    let want = *zero_csums
        .entry((v.csum_type, v.stored_sectors))
        .or_insert_with(|| {
            super::data::checksum(kind, &vec![0u8; v.stored_sectors as usize * 512])
        });
    v.csum == want
}

/// `/lost+found`, created if missing.
fn lost_and_found(fs: &Fs) -> FsResult<InodeNo> {
    let me = Caller::root();
    match fs.lookup(&me, ROOT_INO, b"lost+found") {
        Ok(a) if a.kind == FileKind::Directory => Ok(a.ino),
        Ok(_) => Err(super::error::FsError::Corrupted(
            "/lost+found exists and is not a directory".into(),
        )),
        Err(super::error::FsError::NotFound) => {
            Ok(fs.mkdir(&me, ROOT_INO, b"lost+found", 0o700)?.ino)
        }
        Err(e) => Err(e),
    }
}
