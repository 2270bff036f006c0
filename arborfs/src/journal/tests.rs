use super::journal_format::*;
use super::*;
use crate::device::MemDevice;
use proptest::prelude::*;

const UUID: [u8; 16] = *b"0123456789abcdef";
const REGION_OFF: u64 = 8192;

fn cfg(region_len: u64) -> JournalConfig {
    JournalConfig {
        region_offset: REGION_OFF,
        region_len,
        uuid: UUID,
        max_entry_bytes: 1 << 20,
    }
}

fn new_dev(region_len: u64) -> Arc<MemDevice> {
    Arc::new(MemDevice::new(REGION_OFF + region_len + 4096))
}

fn roots() -> Vec<JournalItem> {
    BtreeId::ALL
        .iter()
        .map(|&btree| JournalItem::Root { btree, ptr: None })
        .collect()
}

/// A put whose value identifies `tag` and has a size varying with it.
fn put(tag: u64, len: usize) -> JournalItem {
    JournalItem::Put {
        btree: BtreeId::Extents,
        key: Key::blob(Pos::new(tag, 1, 0), vec![(tag % 251) as u8; len]),
    }
}

fn fresh(region_len: u64) -> (Arc<MemDevice>, Journal) {
    let dev = new_dev(region_len);
    Journal::format(dev.clone(), cfg(region_len), roots()).unwrap();
    let (j, r) = Journal::open(dev.clone(), cfg(region_len), None).unwrap();
    assert_eq!(r.tail_seq, 1);
    assert_eq!(r.entries.len(), 1);
    (dev, j)
}

fn reopen_bytes(bytes: Vec<u8>, region_len: u64) -> Result<(Journal, ReplayResult)> {
    Journal::open(
        Arc::new(MemDevice::from_bytes(bytes)),
        cfg(region_len),
        None,
    )
}

/// What the test knows was written: seq -> (items, recorded last_seq).
#[derive(Default, Clone)]
struct Model {
    written: std::collections::BTreeMap<u64, (Vec<JournalItem>, u64)>,
}

/// Records what the open entry holds; call `commit_written` after writes.
struct Tracker {
    pending: std::collections::BTreeMap<u64, Vec<JournalItem>>,
    model: Model,
}

impl Tracker {
    fn new() -> Tracker {
        Tracker {
            pending: Default::default(),
            model: Model::default(),
        }
    }
    fn add(&mut self, j: &Journal, items: &[JournalItem]) -> Result<u64> {
        let s = j.add(items)?;
        self.pending.entry(s).or_default().extend_from_slice(items);
        self.sync(j);
        Ok(s)
    }
    /// Moves entries now written into the model, reading their recorded last_seq from disk.
    fn sync(&mut self, j: &Journal) {
        let w = j.written_seq();
        let done: Vec<u64> = self.pending.range(..=w).map(|(s, _)| *s).collect();
        for s in done {
            let items = self.pending.remove(&s).unwrap();
            let ls = recorded_last_seq(j, s);
            self.model.written.insert(s, (items, ls));
        }
    }
}

/// The header of written entry `seq` (must still be tracked in the ring).
fn placed_of(j: &Journal, seq: u64) -> Placed {
    *j.ring
        .lock()
        .placed
        .iter()
        .find(|p| p.seq == seq)
        .expect("entry placed")
}

fn header_at(j: &Journal, start: u64) -> EntryHeader {
    let mut b = [0u8; HEADER_BYTES];
    j.dev.read_at(&mut b, REGION_OFF + start).unwrap();
    EntryHeader::decode(&b).unwrap()
}

fn recorded_last_seq(j: &Journal, seq: u64) -> u64 {
    header_at(j, placed_of(j, seq).start).last_seq
}

/// Checks a replay against the model: a contiguous run of written entries
/// ending at the tail, starting at the tail's recorded last_seq.
fn check_replay(r: &ReplayResult, model: &Model) {
    let tail = r.tail_seq;
    let (_, tail_ls) = &model.written[&tail];
    let expect: Vec<u64> = model
        .written
        .range(*tail_ls..=tail)
        .map(|(s, _)| *s)
        .collect();
    let got: Vec<u64> = r.entries.iter().map(|e| e.seq).collect();
    assert_eq!(got, expect, "replayed seqs");
    for e in &r.entries {
        let (items, ls) = &model.written[&e.seq];
        assert_eq!(&e.items, items, "items of entry {}", e.seq);
        assert_eq!(e.last_seq, *ls);
    }
}

/// An engine-like workload step: add, sometimes write, checkpoint past 0.5.
fn step(j: &Journal, t: &mut Tracker, i: u64, rng: &mut u64) {
    *rng = rng
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let r = *rng >> 33;
    let len = (r % 3000) as usize;
    t.add(
        j,
        &[
            put(i, len),
            JournalItem::Delete {
                btree: BtreeId::Inodes,
                pos: Pos::new(i, 0, 0),
            },
        ],
    )
    .unwrap();
    if r.is_multiple_of(3) {
        j.write_pending(r.is_multiple_of(2)).unwrap();
        t.sync(j);
    }
    if j.fill_ratio() > 0.5 {
        let s = t.add(j, &roots()).unwrap();
        j.flush_seq(s).unwrap();
        t.sync(j);
        j.set_last_seq(s);
    }
}

#[test]
fn round_trip_every_item_kind() {
    let (dev, j) = fresh(64 * 1024);
    let ptr = BtreePtr {
        offset: 1 << 20,
        seq: 42,
        sectors: 8,
        generation: 3,
        level: 1,
    };
    let items = vec![
        put(7, 0),
        put(8, 13),
        JournalItem::Put {
            btree: BtreeId::Extents,
            key: Key::extent(5, 100, 8, 2, crate::KeyType::Extent, vec![1, 2, 3]),
        },
        JournalItem::Delete {
            btree: BtreeId::Dirents,
            pos: Pos::new(u64::MAX, 3, u32::MAX),
        },
        JournalItem::Root {
            btree: BtreeId::Inodes,
            ptr: Some(ptr),
        },
        JournalItem::Root {
            btree: BtreeId::Xattrs,
            ptr: None,
        },
    ];
    assert_eq!(j.current_seq(), 2);
    assert_eq!(j.add(&items).unwrap(), 2);
    assert_eq!(j.written_seq(), 1);
    assert_eq!(j.write_pending(true).unwrap(), 2);
    assert_eq!(j.durable_seq(), 2);
    assert_eq!(j.current_seq(), 3);
    let (_, r) = Journal::open(dev, cfg(64 * 1024), None).unwrap();
    assert_eq!(r.tail_seq, 2);
    assert_eq!(
        r.entries,
        vec![
            JournalEntry {
                seq: 1,
                last_seq: 1,
                items: roots()
            },
            JournalEntry {
                seq: 2,
                last_seq: 1,
                items
            }
        ]
    );
}

#[test]
fn entry_header_on_disk() {
    let (dev, j) = fresh(64 * 1024);
    j.add(&[put(1, 5000)]).unwrap();
    j.write_pending(false).unwrap();
    let bytes = dev.to_bytes();
    let e = &bytes[(REGION_OFF + 4096) as usize..];
    let h = EntryHeader::decode(e).unwrap();
    assert_eq!(h.magic, magic_for(&UUID));
    assert_eq!(h.version, JOURNAL_VERSION);
    assert_eq!((h.seq, h.prev_seq, h.last_seq, h.offset), (2, 1, 1, 4096));
    assert_eq!(h.item_count, 1);
    assert_eq!(h.payload_len as usize, 8 + 32 + 5000);
    assert_eq!(h.total_bytes(), 8192);
    assert_eq!(entry_csum(&UUID, &e[..8192]), h.csum);
    let (h2, items) = decode_entry(&UUID, &e[..8192], 4096, 64 * 1024).unwrap();
    assert_eq!(h2, h);
    assert_eq!(items, vec![put(1, 5000)]);
    // Wrong filesystem, wrong place.
    let mut other = UUID;
    other[15] ^= 1;
    assert!(decode_entry(&other, &e[..8192], 4096, 64 * 1024).is_err());
    assert!(decode_entry(&UUID, &e[..8192], 0, 64 * 1024).is_err());
}

#[test]
fn every_byte_flip_invalidates_the_entry() {
    let len = 64 * 1024;
    let (dev, j) = fresh(len);
    j.add(&[put(1, 4500), put(2, 10)]).unwrap();
    j.write_pending(true).unwrap();
    let good = dev.to_bytes();
    let start = (REGION_OFF + 4096) as usize;
    for i in start..start + 8192 {
        let mut b = good.clone();
        b[i] ^= 1 << (i % 8);
        assert!(
            decode_entry(&UUID, &b[start..start + 8192], 4096, len).is_err(),
            "byte {i}"
        );
        let (_, r) = reopen_bytes(b, len).unwrap();
        assert_eq!(r.tail_seq, 1, "flip at {i}");
        assert_eq!(r.entries.len(), 1);
    }
    // Damage to the only entry: an error, no panic.
    for i in [0usize, 8, 12, 20, 40, 48, 60, 100, 4095] {
        let mut b = good.clone();
        b[REGION_OFF as usize + i] ^= 0x80;
        b[start..start + 8192].fill(0);
        assert!(matches!(
            reopen_bytes(b, len),
            Err(Error::Corrupted {
                structure: Structure::JournalEntry,
                ..
            })
        ));
    }
}

#[test]
fn previous_filesystem_entries_are_ignored() {
    let len = 64 * 1024;
    let dev = new_dev(len);
    let mut old = cfg(len);
    old.uuid = [9; 16];
    Journal::format(dev.clone(), old.clone(), roots()).unwrap();
    let (j, _) = Journal::open(dev.clone(), old, None).unwrap();
    for i in 0..5 {
        j.add(&[put(i, 100)]).unwrap();
        j.write_pending(true).unwrap();
    }
    Journal::format(dev.clone(), cfg(len), vec![]).unwrap();
    let (_, r) = Journal::open(dev, cfg(len), None).unwrap();
    assert_eq!(r.tail_seq, 1);
    assert_eq!(r.entries[0].items, vec![]);
}

#[test]
fn fit_geometry() {
    let r = 100;
    assert_eq!(fit(0, 10, None, r), Some(0));
    assert_eq!(fit(95, 10, None, r), Some(0));
    assert_eq!(fit(50, 10, Some(20), r), Some(50));
    assert_eq!(fit(95, 10, Some(20), r), Some(0));
    assert_eq!(fit(95, 30, Some(20), r), None);
    assert_eq!(fit(10, 10, Some(20), r), Some(10));
    assert_eq!(fit(10, 11, Some(20), r), None);
    assert_eq!(fit(20, 1, Some(20), r), None);
}

#[test]
fn wraparound_and_reopen() {
    let len = 64 * 1024;
    let (dev, j) = fresh(len);
    let mut t = Tracker::new();
    t.model.written.insert(1, (roots(), 1));
    let mut rng = 1;
    for i in 0..600 {
        step(&j, &mut t, i, &mut rng);
    }
    j.write_pending(true).unwrap();
    t.sync(&j);
    assert!(t.model.written.len() > 100, "wrapped several times");
    let (_, r) = Journal::open(dev.clone(), cfg(len), None).unwrap();
    assert_eq!(r.tail_seq, j.written_seq());
    check_replay(&r, &t.model);
    assert!(r.entries.len() < t.model.written.len());
}

#[test]
fn crash_snapshots_replay_a_prefix() {
    let len = 64 * 1024;
    for seed in 1..6u64 {
        let (dev, j) = fresh(len);
        let mut t = Tracker::new();
        t.model.written.insert(1, (roots(), 1));
        let mut rng = seed;
        for i in 0..300 {
            step(&j, &mut t, i, &mut rng);
            if (rng >> 40) % 7 != 0 || j.written_seq() < 4 {
                continue;
            }
            let durable = j.durable_seq();
            let newest = j.written_seq();
            let snap = dev.to_bytes();
            // As is.
            let (_, r) = reopen_bytes(snap.clone(), len).unwrap();
            assert!(r.tail_seq >= durable && r.tail_seq <= newest);
            assert_eq!(r.tail_seq, newest);
            check_replay(&r, &t.model);

            // Only unflushed entries can be lost in a crash.
            if newest <= durable {
                continue;
            }
            // Newest entry torn: its second block (or its only block) zeroed.
            let p = placed_of(&j, newest);
            let mut b = snap.clone();
            let plen = header_at(&j, p.start).total_bytes();
            let blk = if plen > 4096 { p.start + 4096 } else { p.start };
            let at = (REGION_OFF + blk) as usize;
            b[at..at + 4096].fill(0);
            let (_, r) = reopen_bytes(b, len).unwrap();
            assert_eq!(r.tail_seq, newest - 1);
            check_replay(&r, &t.model);

            // The entry before the newest never reached disk, the newest did.
            if newest - 1 <= durable {
                continue;
            }
            let q = placed_of(&j, newest - 1);
            let mut b = snap.clone();
            let at = (REGION_OFF + q.start) as usize;
            b[at..at + 4096].fill(0);
            let (_, r) = reopen_bytes(b, len).unwrap();
            let newest_ls = t.model.written[&newest].1;
            let expect = if newest_ls > newest - 1 {
                newest
            } else {
                newest - 2
            };
            assert_eq!(r.tail_seq, expect);
            check_replay(&r, &t.model);
        }
    }
}

/// Session after session with crashes that leave a stale later entry on
/// disk: nothing stale is ever replayed.
#[test]
fn no_stale_entry_after_repeated_crashes() {
    let len = 64 * 1024;
    let (dev, j) = fresh(len);
    let mut j = j;
    let mut dev = dev;
    let mut t = Tracker::new();
    t.model.written.insert(1, (roots(), 1));
    let mut rng = 77;
    let mut tag = 0;
    let mut stale_tags: Vec<u64> = Vec::new();
    for session in 0..8 {
        for _ in 0..(20 + session * 7) {
            tag += 1;
            step(&j, &mut t, tag, &mut rng);
        }
        // Make sure the last two entries are written separately.
        tag += 1;
        t.add(&j, &[put(tag, 10)]).unwrap();
        j.write_pending(false).unwrap();
        tag += 1;
        t.add(&j, &[put(tag, 10)]).unwrap();
        j.write_pending(false).unwrap();
        t.sync(&j);
        let newest = j.written_seq();
        // Crash: the second newest is lost, the newest reached disk.
        let q = placed_of(&j, newest - 1);
        let mut b = dev.to_bytes();
        let at = (REGION_OFF + q.start) as usize;
        b[at..at + 4096].fill(0);
        for s in [newest - 1, newest] {
            let (items, _) = t.model.written.remove(&s).unwrap();
            for it in items {
                if let JournalItem::Put { key, .. } = it {
                    stale_tags.push(key.pos.inode);
                }
            }
        }
        dev = Arc::new(MemDevice::from_bytes(b));
        let (nj, r) = Journal::open(dev.clone(), cfg(len), None).unwrap();
        assert_eq!(r.tail_seq, newest - 2);
        check_replay(&r, &t.model);
        for e in &r.entries {
            for it in &e.items {
                if let JournalItem::Put { key, .. } = it {
                    assert!(!stale_tags.contains(&key.pos.inode), "stale entry replayed");
                }
            }
        }
        // New seqs start above the stale entry.
        assert_eq!(nj.current_seq(), newest + 1);
        j = nj;
    }
}

#[test]
fn journal_full_instead_of_overwriting() {
    let len = 64 * 1024;
    let (dev, j) = fresh(len);
    let mut t = Tracker::new();
    t.model.written.insert(1, (roots(), 1));
    let mut full = false;
    for i in 0..100 {
        match t
            .add(&j, &[put(i, 3000)])
            .and_then(|_| j.write_pending(false))
        {
            Ok(_) => t.sync(&j),
            Err(Error::JournalFull) => {
                full = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(full);
    assert!(j.fill_ratio() > 0.9);
    t.sync(&j);
    // The open entry was not lost: write_pending keeps failing, nothing overwritten.
    assert!(matches!(j.write_pending(true), Err(Error::JournalFull)));
    let (_, r) = reopen_bytes(dev.to_bytes(), len).unwrap();
    assert_eq!(r.entries[0].seq, 1);
    check_replay(&r, &t.model);
    // A checkpoint releases space: the entry recording it uses the reserve,
    // and then writing goes on.
    let s = j.written_seq();
    j.set_last_seq(s);
    j.write_pending(true).unwrap();
    t.sync(&j);
    for i in 100..103 {
        t.add(&j, &[put(i, 3000)]).unwrap();
        j.write_pending(false).unwrap();
        t.sync(&j);
    }
    let (_, r) = reopen_bytes(dev.to_bytes(), len).unwrap();
    assert_eq!(r.entries[0].seq, s);
    check_replay(&r, &t.model);
}

#[test]
fn journal_full_recovers_after_checkpoint() {
    let len = 64 * 1024;
    let (dev, j) = fresh(len);
    // Fill to about 60%, checkpoint, then keep going far past the ring size.
    let mut t = Tracker::new();
    t.model.written.insert(1, (roots(), 1));
    for i in 0..200 {
        t.add(&j, &[put(i, 2000)]).unwrap();
        j.write_pending(false).unwrap();
        t.sync(&j);
        if j.fill_ratio() > 0.6 {
            let s = t.add(&j, &roots()).unwrap();
            j.flush_seq(s).unwrap();
            t.sync(&j);
            j.set_last_seq(s);
            assert!(j.fill_ratio() < 0.2);
        }
    }
    let (_, r) = reopen_bytes(dev.to_bytes(), len).unwrap();
    check_replay(&r, &t.model);
}

#[test]
fn batches_are_never_split_and_entries_rotate() {
    let len = 256 * 1024;
    let dev = new_dev(len);
    Journal::format(dev.clone(), cfg(len), vec![]).unwrap();
    let mut c = cfg(len);
    c.max_entry_bytes = 8192;
    let (j, _) = Journal::open(dev.clone(), c.clone(), None).unwrap();
    let a = j.add(&[put(1, 3000), put(2, 3000)]).unwrap();
    let b = j.add(&[put(3, 3000)]).unwrap();
    assert_eq!(b, a + 1, "second batch started a new entry");
    assert_eq!(j.written_seq(), a);
    // A batch above max_entry_bytes gets an entry of its own.
    let big: Vec<_> = (10..16).map(|i| put(i, 3000)).collect();
    let s = j.add(&big).unwrap();
    assert_eq!(s, b + 1);
    j.write_pending(true).unwrap();
    let (_, r) = Journal::open(dev.clone(), c.clone(), None).unwrap();
    assert_eq!(r.entries.last().unwrap().items, big);
    // Larger than half the region: refused.
    let huge: Vec<_> = (0..50).map(|i| put(i, 3000)).collect();
    assert!(matches!(j.add(&huge), Err(Error::InvalidArgument(_))));
    assert_eq!(j.add(&[]).unwrap(), j.current_seq());
}

#[test]
fn clean_open_continues_without_replay() {
    let len = 64 * 1024;
    let (dev, j) = fresh(len);
    let mut t = Tracker::new();
    t.model.written.insert(1, (roots(), 1));
    let mut rng = 5;
    for i in 0..150 {
        step(&j, &mut t, i, &mut rng);
    }
    j.write_pending(true).unwrap();
    t.sync(&j);
    let pos = j.position();
    assert_eq!(pos.last_seq, j.written_seq());
    assert_eq!(pos.next_seq, j.current_seq());
    let (j2, r) = Journal::open(dev.clone(), cfg(len), Some(pos)).unwrap();
    assert!(r.entries.is_empty());
    assert_eq!(r.tail_seq, pos.last_seq);
    assert_eq!(j2.position(), pos);
    // Continue, crash: the replay spans the clean shutdown.
    for i in 150..400 {
        step(&j2, &mut t, i, &mut rng);
    }
    j2.write_pending(false).unwrap();
    t.sync(&j2);
    let (_, r) = reopen_bytes(dev.to_bytes(), len).unwrap();
    assert_eq!(r.tail_seq, j2.written_seq());
    check_replay(&r, &t.model);

    // A position that does not match the disk.
    let mut bad = j2.position();
    bad.last_seq -= 1;
    assert!(matches!(
        Journal::open(dev.clone(), cfg(len), Some(bad)),
        Err(Error::Corrupted { .. })
    ));
    let mut bad = j2.position();
    bad.next_offset = 3;
    assert!(Journal::open(dev.clone(), cfg(len), Some(bad)).is_err());
}

#[test]
fn clean_open_right_after_format_and_wrap() {
    let len = 64 * 1024;
    let (dev, j) = fresh(len);
    j.write_pending(true).unwrap();
    let pos = j.position();
    assert_eq!(
        pos,
        JournalPosition {
            next_seq: 2,
            next_offset: 4096,
            last_seq: 1
        }
    );
    let (j, _) = Journal::open(dev.clone(), cfg(len), Some(pos)).unwrap();
    // Write until the newest entry sits at offset 0 after a wrap.
    let mut t = Tracker::new();
    t.model.written.insert(1, (roots(), 1));
    let mut i = 0;
    loop {
        i += 1;
        t.add(&j, &[put(i, 3000)]).unwrap();
        j.write_pending(true).unwrap();
        t.sync(&j);
        if j.fill_ratio() > 0.5 {
            let s = t.add(&j, &roots()).unwrap();
            j.flush_seq(s).unwrap();
            t.sync(&j);
            j.set_last_seq(s);
        }
        if i > 20 && placed_of(&j, j.written_seq()).start == 0 {
            break;
        }
    }
    let pos = j.position();
    let (j3, r) = Journal::open(dev.clone(), cfg(len), Some(pos)).unwrap();
    assert!(r.entries.is_empty());
    let placed: Vec<u64> = j3.ring.lock().placed.iter().map(|p| p.seq).collect();
    let ls = t.model.written[&pos.last_seq].1;
    let expect: Vec<u64> = t.model.written.range(ls..).map(|(s, _)| *s).collect();
    assert_eq!(
        placed, expect,
        "clean open found the needed chain across the wrap"
    );
}

#[test]
fn concurrent_flush_seq() {
    let len = 16 << 20;
    let dev = new_dev(len);
    Journal::format(dev.clone(), cfg(len), roots()).unwrap();
    let (j, _) = Journal::open(dev.clone(), cfg(len), None).unwrap();
    let j = Arc::new(j);
    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                for i in 0..150u64 {
                    let s = j.add(&[put(t * 1000 + i, (i % 50) as usize)]).unwrap();
                    j.flush_seq(s).unwrap();
                    assert!(j.durable_seq() >= s);
                    assert!(j.written_seq() >= s);
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let (_, r) = Journal::open(dev, cfg(len), None).unwrap();
    let mut seen: Vec<Vec<u64>> = vec![Vec::new(); 6];
    for e in &r.entries {
        for it in &e.items {
            if let JournalItem::Put { key, .. } = it {
                let t = key.pos.inode / 1000;
                seen[t as usize].push(key.pos.inode % 1000);
            }
        }
    }
    for s in seen {
        assert_eq!(s, (0..150).collect::<Vec<_>>());
    }
    let seqs: Vec<u64> = r.entries.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
}

#[test]
fn bad_config_is_rejected() {
    let dev = new_dev(64 * 1024);
    let mut c = cfg(64 * 1024);
    c.region_offset = 100;
    assert!(Journal::format(dev.clone(), c, vec![]).is_err());
    let mut c = cfg(64 * 1024);
    c.region_len = 1 << 30;
    assert!(Journal::format(dev.clone(), c, vec![]).is_err());
    let (_, r) = (0, Journal::open(dev, cfg(64 * 1024), None));
    assert!(matches!(r, Err(Error::Corrupted { .. })));
}

proptest! {
    #[test]
    fn decode_arbitrary_bytes_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..9000),
        off in 0u64..20,
    ) {
        let _ = decode_entry(&UUID, &bytes, off * 4096, 64 * 1024);
        let _ = decode_items(&bytes, (bytes.len() / 40) as u32);
        let _ = decode_item(&bytes);
    }

    /// Mutations of a valid entry with the checksum fixed up, so item
    /// decoding itself sees the damage.
    #[test]
    fn decode_mutated_entries_never_panics(
        muts in proptest::collection::vec((0usize..8192, any::<u8>()), 1..8),
    ) {
        let mut payload = Vec::new();
        for it in [put(1, 100), JournalItem::Delete { btree: BtreeId::Alloc, pos: Pos::new(1, 2, 3) }] {
            encode_item(&mut payload, &it);
        }
        for r in roots().iter().take(3) {
            encode_item(&mut payload, r);
        }
        let hdr = EntryHeader {
            magic: 0, csum: 0, version: 0, seq: 5, prev_seq: 4, last_seq: 2,
            offset: 4096, payload_len: 0, item_count: 5,
        };
        let mut e = build_entry(&UUID, hdr, &payload);
        for (i, v) in muts {
            let i = i % e.len();
            if !(8..12).contains(&i) {
                e[i] = v;
            }
        }
        let c = entry_csum(&UUID, &e);
        e[8..12].copy_from_slice(&c.to_le_bytes());
        let _ = decode_entry(&UUID, &e, 4096, 64 * 1024);
    }
}
