//! The page cache: small buffered writes become large extents, memory stays
//! within the limit, dirty data reaches the disk after a delay without any
//! fsync, direct IO and the cache stay coherent, and concurrent buffered,
//! direct and truncating IO on one file ends in a state a model explains.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arborfs::device::{Device, MemDevice};
use arborfs::engine::EngineOptions;
use arborfs::fs::{Caller, Fs, FsOptions, InodeNo, ROOT_INO, S_IFREG};
use arborfs::key::Pos;
use arborfs::sb::FormatOptions;
use arborfs::{BtreeId, KeyType};
use common::pattern;

fn opts(background: bool, page_cache_bytes: usize) -> FsOptions {
    FsOptions {
        engine: EngineOptions {
            background,
            ..Default::default()
        },
        page_cache_bytes,
        ..Default::default()
    }
}

fn new_fs(size: u64, o: FsOptions) -> (Arc<MemDevice>, Fs) {
    let dev = Arc::new(MemDevice::new(size));
    Fs::format(dev.clone(), &FormatOptions::default()).unwrap();
    let fs = Fs::open(dev.clone() as Arc<dyn Device>, o).unwrap();
    (dev, fs)
}

fn file(fs: &Fs, name: &[u8]) -> InodeNo {
    fs.mknod(&Caller::root(), ROOT_INO, name, S_IFREG | 0o644, 0)
        .unwrap()
        .ino
}

fn extents(fs: &Fs, ino: InodeNo) -> Vec<(u64, u64)> {
    fs.engine()
        .iter(
            BtreeId::Extents,
            Pos::new(ino.0, 0, 0),
            Pos::new(ino.0, u64::MAX, u32::MAX),
        )
        .map(|k| k.unwrap())
        .filter(|k| k.ty == KeyType::Extent)
        .map(|k| (k.start(), k.end()))
        .collect()
}

#[test]
fn small_sequential_writes_become_large_extents() {
    let (_dev, fs) = new_fs(64 << 20, opts(false, 0));
    let me = Caller::root();
    let ino = file(&fs, b"log");
    let data = pattern(1, 4 << 20);
    for (i, chunk) in data.chunks(4096).enumerate() {
        fs.write(&me, ino, (i * 4096) as u64, chunk).unwrap();
    }
    // Nothing on disk yet, but the size and contents are visible.
    assert!(extents(&fs, ino).is_empty(), "written before any writeback");
    assert_eq!(fs.getattr(ino).unwrap().size, 4 << 20);
    fs.fsync(ino, false).unwrap();
    let ext = extents(&fs, ino);
    // 1024 writes of 4 KiB: extents of 128 KiB (the largest checksummed
    // unit), not one per write.
    assert!(ext.len() <= 40, "{} extents for 4 MiB", ext.len());
    let mut buf = vec![0u8; data.len()];
    assert_eq!(fs.read(ino, 0, &mut buf).unwrap(), data.len());
    assert!(buf == data);
    assert_eq!(fs.page_cache_stats().dirty_bytes, 0);
}

#[test]
fn memory_stays_within_the_cache_limit() {
    let limit = 2 << 20;
    let (_dev, fs) = new_fs(256 << 20, opts(false, limit));
    let me = Caller::root();
    let ino = file(&fs, b"big");
    let total = 64 << 20;
    let mut peak = 0;
    for i in 0..total / (64 << 10) {
        let chunk = pattern(i as u64, 64 << 10);
        fs.write(&me, ino, (i * (64 << 10)) as u64, &chunk).unwrap();
        let s = fs.page_cache_stats();
        peak = peak.max(s.bytes);
        assert!(
            s.dirty_bytes <= limit / 2 + (64 << 10),
            "dirty {} over half the limit",
            s.dirty_bytes
        );
    }
    assert!(peak <= limit + (64 << 10), "peak {peak} over {limit}");
    let mut buf = vec![0u8; 64 << 10];
    for i in 0..total / (64 << 10) {
        fs.read(ino, (i * (64 << 10)) as u64, &mut buf).unwrap();
        assert!(buf == pattern(i as u64, 64 << 10), "chunk {i}");
        assert!(fs.page_cache_stats().bytes <= limit + (256 << 10));
    }
}

#[test]
fn dirty_data_reaches_the_disk_after_a_delay_without_fsync() {
    let (dev, fs) = new_fs(64 << 20, opts(true, 0));
    let me = Caller::root();
    let ino = file(&fs, b"lazy");
    let data = pattern(7, 300_000);
    fs.write(&me, ino, 0, &data).unwrap();
    assert!(fs.page_cache_stats().dirty_bytes > 0);
    // A process crash at any point keeps what was written to the device:
    // poll copies of it until one holds the file.
    let started = Instant::now();
    loop {
        let copy = Arc::new(MemDevice::from_bytes(dev.to_bytes()));
        let crashed = Fs::open(copy as Arc<dyn Device>, opts(false, 0)).unwrap();
        let ino2 = crashed.lookup(&me, ROOT_INO, b"lazy").map(|a| a.ino);
        if let Ok(ino2) = ino2
            && crashed.getattr(ino2).unwrap().size == data.len() as u64
        {
            let mut buf = vec![0u8; data.len()];
            crashed.read(ino2, 0, &mut buf).unwrap();
            assert!(buf == data, "written back data differs");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "dirty data not written back within 30 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "written back too eagerly"
    );
    fs.close().unwrap();
}

#[test]
fn direct_io_and_the_cache_stay_coherent() {
    let (dev, fs) = new_fs(64 << 20, opts(false, 0));
    let me = Caller::root();
    let ino = file(&fs, b"mixed");
    fs.write(&me, ino, 0, &[1u8; 20_000]).unwrap();
    // A direct read sees buffered data (written back first).
    let mut buf = vec![0u8; 20_000];
    assert_eq!(fs.read_direct(ino, 0, &mut buf).unwrap(), 20_000);
    assert!(buf.iter().all(|&b| b == 1));
    // Cache the pages, then overwrite part of them directly.
    fs.read(ino, 0, &mut buf).unwrap();
    fs.write_direct(&me, ino, 4096, &[2u8; 8192]).unwrap();
    fs.read(ino, 0, &mut buf).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 1));
    assert!(
        buf[4096..12288].iter().all(|&b| b == 2),
        "stale cached page"
    );
    assert!(buf[12288..].iter().all(|&b| b == 1));
    // A buffered write after the direct one wins, and survives a reopen.
    fs.write(&me, ino, 5000, b"buffered").unwrap();
    fs.close().unwrap();
    let fs = Fs::open(dev.clone() as Arc<dyn Device>, opts(false, 0)).unwrap();
    fs.read(ino, 0, &mut buf).unwrap();
    assert_eq!(&buf[5000..5008], b"buffered");
    assert_eq!(buf[4999], 2);
    // Truncate drops cached pages: growing again reads zeros.
    fs.set_size(&me, ino, 100).unwrap();
    fs.set_size(&me, ino, 20_000).unwrap();
    fs.read(ino, 0, &mut buf).unwrap();
    assert!(buf[..100].iter().all(|&b| b == 1));
    assert!(
        buf[100..].iter().all(|&b| b == 0),
        "old data after truncate"
    );
}

/// Writers of whole, stamped 4 KiB blocks through buffered and direct IO,
/// readers of both kinds, and a truncater, all on one file: every block
/// read is zeros or a valid stamp for its index, and after the storm the
/// file reads the same through the cache, directly and after a reopen.
#[test]
fn concurrent_buffered_direct_and_truncate_stay_consistent() {
    const BLOCKS: u64 = 256;
    let (dev, fs) = new_fs(128 << 20, opts(true, 1 << 20));
    let fs = Arc::new(fs);
    let ino = file(&fs, b"shared");
    let stamp = |writer: u64, seq: u64, idx: u64| -> Vec<u8> {
        let mut b = pattern(writer << 40 | seq << 16 | idx, 4096);
        b[..8].copy_from_slice(&idx.to_le_bytes());
        let sum: u64 = b[16..].iter().map(|&x| x as u64).sum();
        b[8..16].copy_from_slice(&sum.to_le_bytes());
        b
    };
    let valid = |b: &[u8], idx: u64| -> bool {
        if b.iter().all(|&x| x == 0) {
            return true;
        }
        let sum: u64 = b[16..].iter().map(|&x| x as u64).sum();
        b[..8] == idx.to_le_bytes() && b[8..16] == sum.to_le_bytes()
    };
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut threads = Vec::new();
    for t in 0..4u64 {
        let fs = fs.clone();
        threads.push(std::thread::spawn(move || {
            let me = Caller::root();
            let mut x = t * 7919 + 1;
            let mut seq = 0;
            let mut buf = vec![0u8; 4096 * 4];
            while Instant::now() < deadline {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let idx = x % BLOCKS;
                seq += 1;
                match (x >> 20) % 6 {
                    0 | 1 => {
                        fs.write(&me, ino, idx * 4096, &stamp(t, seq, idx)).unwrap();
                    }
                    2 => {
                        fs.write_direct(&me, ino, idx * 4096, &stamp(t, seq, idx))
                            .unwrap();
                    }
                    3 | 4 => {
                        let n = if x & 1 == 0 {
                            fs.read(ino, idx * 4096, &mut buf).unwrap()
                        } else {
                            fs.read_direct(ino, idx * 4096, &mut buf).unwrap()
                        };
                        for (i, b) in buf[..n / 4096 * 4096].chunks(4096).enumerate() {
                            assert!(
                                valid(b, idx + i as u64),
                                "torn or misplaced block {}",
                                idx + i as u64
                            );
                        }
                    }
                    _ if t == 0 => {
                        fs.set_size(&me, ino, (x >> 8) % (BLOCKS * 4096) / 4096 * 4096)
                            .unwrap();
                    }
                    _ => fs.fsync(ino, false).unwrap(),
                }
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let size = fs.getattr(ino).unwrap().size as usize;
    let mut cached = vec![0u8; size];
    let mut direct = vec![0u8; size];
    assert_eq!(fs.read(ino, 0, &mut cached).unwrap(), size);
    assert_eq!(fs.read_direct(ino, 0, &mut direct).unwrap(), size);
    assert!(cached == direct, "cache and disk disagree");
    for (i, b) in cached.chunks(4096).enumerate() {
        assert!(valid(b, i as u64), "block {i}");
    }
    let fs = Arc::try_unwrap(fs).ok().unwrap();
    fs.close().unwrap();
    let fs = Fs::open(dev.clone() as Arc<dyn Device>, opts(false, 0)).unwrap();
    let mut again = vec![0u8; size];
    assert_eq!(fs.getattr(ino).unwrap().size as usize, size);
    fs.read(ino, 0, &mut again).unwrap();
    assert!(again == cached, "contents changed across close and reopen");
}

/// copy_file_range A→B and B→A at the same time (locks wanted in opposite
/// orders), with buffered writers on both files: every copy finishes (a
/// deadlock fails the deadline) and the copied ranges hold their sources.
#[test]
fn opposite_copy_file_ranges_do_not_deadlock() {
    let (_dev, fs) = new_fs(128 << 20, opts(true, 1 << 20));
    let fs = Arc::new(fs);
    let me = Caller::root();
    let a = file(&fs, b"a");
    let b = file(&fs, b"b");
    let (pa, pb) = (pattern(11, 64 << 10), pattern(12, 64 << 10));
    fs.write(&me, a, 0, &pa).unwrap();
    fs.write(&me, b, 0, &pb).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut threads = Vec::new();
    for (from, to) in [(a, b), (b, a)] {
        let (fs, tx) = (fs.clone(), tx.clone());
        threads.push(std::thread::spawn(move || {
            for _ in 0..200 {
                let n = fs
                    .copy_file_range(&Caller::root(), from, 0, to, 64 << 10, 64 << 10)
                    .unwrap();
                assert_eq!(n, 64 << 10);
            }
            tx.send(()).unwrap();
        }));
    }
    for ino in [a, b] {
        let (fs, tx) = (fs.clone(), tx.clone());
        threads.push(std::thread::spawn(move || {
            for i in 0..400u64 {
                let at = (128 << 10) + (i % 64) * 4096;
                fs.write(&Caller::root(), ino, at, &[i as u8; 4096])
                    .unwrap();
            }
            tx.send(()).unwrap();
        }));
    }
    for _ in 0..threads.len() {
        rx.recv_timeout(Duration::from_secs(120))
            .expect("a copy or write did not finish: deadlock?");
    }
    for t in threads {
        t.join().unwrap();
    }
    let mut buf = vec![0u8; 64 << 10];
    fs.read(b, 64 << 10, &mut buf).unwrap();
    assert!(buf == pa, "b's copy of a");
    fs.read(a, 64 << 10, &mut buf).unwrap();
    assert!(buf == pb, "a's copy of b");
    // Within one file: disjoint ranges copy; overlapping ones are refused.
    fs.copy_file_range(&me, a, 0, a, 1 << 20, 64 << 10).unwrap();
    fs.read(a, 1 << 20, &mut buf).unwrap();
    assert!(buf == pa);
    assert!(fs.copy_file_range(&me, a, 0, a, 4096, 64 << 10).is_err());
}

/// Counts device reads, to tell cache hits from disk reads.
struct CountingDevice {
    inner: MemDevice,
    reads: std::sync::atomic::AtomicU64,
}

impl Device for CountingDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), arborfs::device::DeviceError> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), arborfs::device::DeviceError> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> Result<(), arborfs::device::DeviceError> {
        self.inner.flush()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
}

#[test]
fn a_small_read_keeps_the_rest_of_its_unit() {
    use arborfs::fs::compress::Compression;
    use std::sync::atomic::Ordering::Relaxed;
    for (compression, upper_cache) in [(None, false), (None, true), (Some("zstd"), true)] {
        let dev = Arc::new(CountingDevice {
            inner: MemDevice::new(64 << 20),
            reads: Default::default(),
        });
        Fs::format(dev.clone(), &FormatOptions::default()).unwrap();
        let fs = Fs::open(
            dev.clone() as Arc<dyn Device>,
            FsOptions {
                upper_cache,
                compression: compression.map(|c| Compression::parse(c).unwrap()),
                readahead_bytes: Some(0),
                ..opts(false, 8 << 20)
            },
        )
        .unwrap();
        let me = Caller::root();
        let ino = file(&fs, b"f");
        // Compressible but not constant: a repeated 1 KiB pattern.
        let data: Vec<u8> = pattern(7, 1024).repeat(256);
        fs.write(&me, ino, 0, &data).unwrap();
        fs.fsync(ino, false).unwrap();
        fs.drop_caches().unwrap();
        let page = |i: usize| &data[i * 4096..(i + 1) * 4096];

        // Page 20 is rewritten in the cache: the unit's old copy of it must
        // not replace the dirty page.
        let new20 = pattern(9, 4096);
        fs.write(&me, ino, 20 * 4096, &new20).unwrap();

        let mut buf = vec![0u8; 4096];
        fs.read(ino, 3 * 4096, &mut buf).unwrap();
        assert!(buf == page(3), "{compression:?}: page 3");
        let after_first = dev.reads.load(Relaxed);
        // Every other page of the first 128 KiB unit is now cached.
        for i in (0..32).filter(|&i| i != 3) {
            fs.read(ino, i as u64 * 4096, &mut buf).unwrap();
            let want = if i == 20 { &new20[..] } else { page(i) };
            assert!(buf == want, "{compression:?}: page {i}");
        }
        assert_eq!(
            dev.reads.load(Relaxed),
            after_first,
            "{compression:?}: neighbours of a small read were read from disk again"
        );
        // The second unit was not touched: reading it goes to disk.
        fs.read(ino, 40 * 4096, &mut buf).unwrap();
        assert!(buf == page(40));
        assert!(dev.reads.load(Relaxed) > after_first);
        fs.close().unwrap();
    }
}
