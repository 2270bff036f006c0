//! File data through the filesystem layer: random buffered and direct
//! writes and reads, truncates and hole punches compared with a byte-vector
//! model (through a 1 MiB page cache), across clean reopens and crashes
//! after fsync; checksums turn damage into EIO.

use std::sync::Arc;

use arborfs::device::{Device, MemDevice};
use arborfs::engine::EngineOptions;
use arborfs::fs::{
    Caller, FallocFlags, Fs, FsError, FsOptions, InodeNo, ROOT_INO, S_IFREG, SeekWhence,
};
use arborfs::sb::FormatOptions;
use proptest::prelude::*;

fn opts() -> FsOptions {
    opts_with(false, None)
}

/// `upper_cache`: reads keep only readahead in the page cache (as under
/// FUSE); `readahead_bytes`: `None` is the default window.
fn opts_with(upper_cache: bool, readahead_bytes: Option<u64>) -> FsOptions {
    FsOptions {
        upper_cache,
        readahead_bytes,
        engine: EngineOptions {
            background: false,
            cache_bytes: 4 << 20,
            ..Default::default()
        },
        // The smallest page cache: writes hit the dirty limit and reads
        // evict, so every path between cache and disk is exercised.
        page_cache_bytes: 1 << 20,
        ..Default::default()
    }
}

fn new_fs(size: u64) -> (Arc<MemDevice>, Fs) {
    new_fs_with(size, opts())
}

fn new_fs_with(size: u64, opts: FsOptions) -> (Arc<MemDevice>, Fs) {
    let dev = Arc::new(MemDevice::new(size));
    Fs::format(
        dev.clone(),
        &FormatOptions {
            bucket_size: 256 << 10,
            node_size: 64 << 10,
            ..Default::default()
        },
    )
    .unwrap();
    let fs = Fs::open(dev.clone() as Arc<dyn Device>, opts).unwrap();
    (dev, fs)
}

fn reopen(dev: &Arc<MemDevice>) -> Fs {
    Fs::open(dev.clone() as Arc<dyn Device>, opts()).unwrap()
}

fn read_all(fs: &Fs, ino: InodeNo) -> Vec<u8> {
    let size = fs.getattr(ino).unwrap().size as usize;
    let mut buf = vec![0u8; size + 100];
    let n = fs.read(ino, 0, &mut buf).unwrap();
    assert_eq!(n, size);
    buf.truncate(n);
    buf
}

#[derive(Clone, Debug)]
enum Op {
    Write { off: u64, len: usize, byte: u8 },
    Truncate { size: u64 },
    Punch { off: u64, len: u64 },
    Read { off: u64, len: usize },
    DirectWrite { off: u64, len: usize, byte: u8 },
    DirectRead { off: u64, len: usize },
    Fsync,
    Reopen,
    CrashAfterFsync,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..400_000u64, 1..70_000usize, any::<u8>()).prop_map(|(off, len, byte)| Op::Write { off, len, byte }),
        2 => (0..500_000u64).prop_map(|size| Op::Truncate { size }),
        2 => (0..400_000u64, 1..100_000u64).prop_map(|(off, len)| Op::Punch { off, len }),
        4 => (0..450_000u64, 1..100_000usize).prop_map(|(off, len)| Op::Read { off, len }),
        3 => (0..400_000u64, 1..70_000usize, any::<u8>()).prop_map(|(off, len, byte)| Op::DirectWrite { off, len, byte }),
        2 => (0..450_000u64, 1..100_000usize).prop_map(|(off, len)| Op::DirectRead { off, len }),
        1 => Just(Op::Fsync),
        1 => Just(Op::Reopen),
        1 => Just(Op::CrashAfterFsync),
    ]
}

fn run(ops: Vec<Op>, opts: FsOptions) {
    let (dev, mut fs) = new_fs_with(64 << 20, opts.clone());
    let me = Caller::root();
    let ino = fs
        .mknod(&me, ROOT_INO, b"f", S_IFREG | 0o644, 0)
        .unwrap()
        .ino;
    let mut model: Vec<u8> = Vec::new();
    for op in ops {
        match op {
            Op::Write { off, len, byte } | Op::DirectWrite { off, len, byte } => {
                let data = vec![byte; len];
                let n = if matches!(op, Op::Write { .. }) {
                    fs.write(&me, ino, off, &data).unwrap()
                } else {
                    fs.write_direct(&me, ino, off, &data).unwrap()
                };
                assert_eq!(n, len);
                let end = off as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].fill(byte);
            }
            Op::Truncate { size } => {
                fs.set_size(&me, ino, size).unwrap();
                model.resize(size as usize, 0);
            }
            Op::Punch { off, len } => {
                fs.fallocate(
                    &me,
                    ino,
                    off,
                    len,
                    FallocFlags {
                        keep_size: true,
                        punch_hole: true,
                        zero_range: false,
                    },
                )
                .unwrap();
                let s = (off as usize).min(model.len());
                let e = ((off + len) as usize).min(model.len());
                model[s..e].fill(0);
            }
            Op::Read { off, len } | Op::DirectRead { off, len } => {
                let mut buf = vec![0xeeu8; len];
                let n = if matches!(op, Op::Read { .. }) {
                    fs.read(ino, off, &mut buf).unwrap()
                } else {
                    fs.read_direct(ino, off, &mut buf).unwrap()
                };
                let want: &[u8] = model
                    .get(off as usize..)
                    .map_or(&[], |t| &t[..t.len().min(len)]);
                assert_eq!(n, want.len());
                assert!(buf[..n] == *want, "read at {off} len {len} differs");
            }
            Op::Fsync => fs.fsync(ino, false).unwrap(),
            Op::Reopen => {
                fs.close().unwrap();
                fs = Fs::open(dev.clone() as Arc<dyn Device>, opts.clone()).unwrap();
                assert!(read_all(&fs, ino) == model);
            }
            Op::CrashAfterFsync => {
                fs.fsync(ino, false).unwrap();
                drop(fs);
                fs = Fs::open(dev.clone() as Arc<dyn Device>, opts.clone()).unwrap();
                assert!(
                    read_all(&fs, ino) == model,
                    "fsynced data lost after a crash"
                );
            }
        }
    }
    assert!(read_all(&fs, ino) == model);
    // Allocated sectors never exceed what the file covers (holes stay holes).
    // Written back first: until then the count includes every dirty page.
    fs.fsync(ino, false).unwrap();
    let attr = fs.getattr(ino).unwrap();
    assert!(
        attr.blocks * 512 <= (model.len() as u64).div_ceil(4096) * 4096,
        "{} sectors for {} bytes",
        attr.blocks,
        model.len()
    );
    fs.close().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    #[test]
    fn file_data_matches_model(
        ops in prop::collection::vec(op(), 1..60),
        upper_cache in any::<bool>(),
        readahead in prop::sample::select(vec![None, Some(0), Some(8192)]),
    ) {
        run(ops, opts_with(upper_cache, readahead));
    }
}

#[test]
fn sparse_files_stay_sparse_and_seek_finds_data() {
    let (_dev, fs) = new_fs(64 << 20);
    let me = Caller::root();
    let ino = fs
        .mknod(&me, ROOT_INO, b"sparse", S_IFREG | 0o644, 0)
        .unwrap()
        .ino;
    fs.write(&me, ino, 10 << 20, b"tail").unwrap();
    let a = fs.getattr(ino).unwrap();
    assert_eq!(a.size, (10 << 20) + 4);
    assert_eq!(a.blocks, 8, "one 4 KiB block allocated");
    let mut buf = vec![1u8; 4096];
    fs.read(ino, 5 << 20, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "holes read as zeros");
    assert_eq!(fs.lseek(ino, 0, SeekWhence::Data).unwrap(), 10 << 20);
    assert_eq!(fs.lseek(ino, 0, SeekWhence::Hole).unwrap(), 0);
    assert_eq!(
        fs.lseek(ino, 10 << 20, SeekWhence::Hole).unwrap(),
        (10 << 20) + 4
    );
    assert!(matches!(
        fs.lseek(ino, 20 << 20, SeekWhence::Data),
        Err(FsError::NoData)
    ));
}

#[test]
fn flipped_data_byte_reads_as_eio_and_other_files_still_read() {
    let (dev, fs) = new_fs(64 << 20);
    let me = Caller::root();
    let a = fs
        .mknod(&me, ROOT_INO, b"a", S_IFREG | 0o644, 0)
        .unwrap()
        .ino;
    let b = fs
        .mknod(&me, ROOT_INO, b"b", S_IFREG | 0o644, 0)
        .unwrap()
        .ino;
    let pattern_a: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + 1) as u8).collect();
    let pattern_b: Vec<u8> = (0..100_000u32).map(|i| (i * 13 + 5) as u8).collect();
    fs.write(&me, a, 0, &pattern_a).unwrap();
    fs.write(&me, b, 0, &pattern_b).unwrap();
    fs.close().unwrap();
    // Find a's data on the device and flip one byte of it.
    let mut img = dev.to_bytes();
    let at = img
        .windows(64)
        .position(|w| w == &pattern_a[4096..4160])
        .expect("data on disk");
    img[at + 10] ^= 0x40;
    let dev2 = Arc::new(MemDevice::from_bytes(img));
    let fs = reopen(&dev2);
    let mut buf = vec![0u8; 100_000];
    assert!(
        matches!(fs.read(a, 0, &mut buf), Err(FsError::Io(_))),
        "damaged data must be EIO"
    );
    assert_eq!(fs.read(b, 0, &mut buf).unwrap(), 100_000);
    assert!(buf == pattern_b);
}

/// A directory of 100 000 entries: every name is found, readdir lists each
/// exactly once (also while entries are removed between batches, since
/// cookies are stable slots), across a reopen.
#[test]
fn directory_of_100k_entries() {
    let (dev, fs) = new_fs(256 << 20);
    let me = Caller::root();
    let d = fs.mkdir(&me, ROOT_INO, b"big", 0o755).unwrap().ino;
    for i in 0..100_000u32 {
        fs.mknod(
            &me,
            d,
            format!("entry-{i:06}").as_bytes(),
            S_IFREG | 0o644,
            0,
        )
        .unwrap();
    }
    fs.close().unwrap();
    let fs = reopen(&dev);
    assert_eq!(
        fs.lookup(&me, d, b"entry-054321").unwrap().kind,
        arborfs::fs::FileKind::Regular
    );
    // List in batches, deleting every tenth entry seen after each batch.
    let mut seen = std::collections::HashSet::new();
    let mut cookie = 0;
    loop {
        let mut batch = Vec::new();
        fs.readdir(d, cookie, |e| {
            batch.push(e);
            batch.len() < 1000
        })
        .unwrap();
        if batch.is_empty() {
            break;
        }
        cookie = batch.last().unwrap().next_cookie;
        for e in &batch {
            if e.name != b"." && e.name != b".." {
                assert!(
                    seen.insert(e.name.clone()),
                    "{:?} listed twice",
                    String::from_utf8_lossy(&e.name)
                );
            }
        }
        for e in batch
            .iter()
            .step_by(10)
            .filter(|e| e.name.starts_with(b"entry-"))
        {
            fs.unlink(&me, d, &e.name).unwrap();
        }
    }
    assert_eq!(seen.len(), 100_000);
    fs.close().unwrap();
}
