//! Compression through the filesystem layer: space used (from the
//! persistent accounting counters, as `arborfs usage` reports it) and
//! byte-identical read-back for zstd, lz4 and incompressible data; the
//! per-directory option and its inheritance.

use std::sync::Arc;
use std::time::Instant;

use arborfs::alloc::alloc_format::Counter;
use arborfs::device::{Device, FileDevice};
use arborfs::engine::EngineOptions;
use arborfs::fs::compress::Compression;
use arborfs::fs::{Caller, Fs, FsError, FsOptions, InodeNo, ROOT_INO, S_IFREG, XattrSet};
use arborfs::sb::{CompressionType, FormatOptions};

const MIB: u64 = 1 << 20;
const XATTR: &[u8] = b"user.arborfs.compression";

fn opts(compression: Option<&str>) -> FsOptions {
    FsOptions {
        engine: EngineOptions {
            background: false,
            ..Default::default()
        },
        compression: compression.map(|c| Compression::parse(c).unwrap()),
        ..Default::default()
    }
}

/// A fresh filesystem in a sparse image file of `size` bytes.
fn new_fs(
    dir: &tempfile::TempDir,
    size: u64,
    sb: CompressionType,
    mount: Option<&str>,
) -> (Arc<dyn Device>, Fs) {
    let dev: Arc<dyn Device> = Arc::new(FileDevice::create(&dir.path().join("img"), size).unwrap());
    Fs::format(
        dev.clone(),
        &FormatOptions {
            compression: sb,
            ..Default::default()
        },
    )
    .unwrap();
    let fs = Fs::open(dev.clone(), opts(mount)).unwrap();
    (dev, fs)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Varied but compressible text: words from a small vocabulary (frequent
/// ones more often, as in prose), numbers, punctuation and line breaks,
/// chosen at random. Chunk `i` is always the same bytes.
fn text_chunk(i: u64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 48] = [
        "the",
        "of",
        "and",
        "to",
        "in",
        "is",
        "that",
        "for",
        "it",
        "as",
        "was",
        "with",
        "be",
        "by",
        "on",
        "not",
        "he",
        "this",
        "are",
        "or",
        "his",
        "from",
        "at",
        "which",
        "but",
        "have",
        "an",
        "had",
        "they",
        "you",
        "were",
        "their",
        "one",
        "all",
        "we",
        "can",
        "her",
        "has",
        "there",
        "been",
        "if",
        "more",
        "when",
        "will",
        "would",
        "who",
        "so",
        "filesystem",
    ];
    let mut r = Rng(0x9E37_79B9_7F4A_7C15 ^ (i + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut s = Vec::with_capacity(len + 32);
    while s.len() < len {
        let x = r.next();
        match x % 32 {
            0 => s.extend_from_slice(format!("{} ", (x >> 8) % 10_000).as_bytes()),
            1 | 2 => s.extend_from_slice(b". "),
            3 => s.push(b'\n'),
            _ => {
                // Skewed towards the first words: P(index < k) = sqrt(k / n).
                let u = (x >> 8) % 4096;
                let w = (u * u * WORDS.len() as u64 / (4096 * 4096)) as usize;
                s.extend_from_slice(WORDS[w].as_bytes());
                s.push(b' ');
            }
        }
    }
    s.truncate(len);
    s
}

fn random_chunk(i: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(0x2545_F491_4F6C_DD1D ^ (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

fn mkfile(fs: &Fs, dir: InodeNo, name: &[u8]) -> InodeNo {
    fs.mknod(&Caller::root(), dir, name, S_IFREG | 0o644, 0)
        .unwrap()
        .ino
}

/// (stored, uncompressed) bytes of user data, from the accounting counters.
fn usage(fs: &Fs) -> (u64, u64) {
    let c = fs.engine().counters();
    (
        c[Counter::UserSectors as usize] as u64 * 512,
        c[Counter::UncompressedSectors as usize] as u64 * 512,
    )
}

/// Writes `total` bytes of `gen` chunks of 1 MiB; returns the bytes the
/// write stored and took on disk.
fn fill(fs: &Fs, ino: InodeNo, total: u64, generate: fn(u64, usize) -> Vec<u8>) -> (u64, u64) {
    let before = usage(fs);
    let t = Instant::now();
    for i in 0..total / MIB {
        let chunk = generate(i, MIB as usize);
        fs.write(&Caller::root(), ino, i * MIB, &chunk).unwrap();
    }
    // Buffered data is on disk (and counted) once written back.
    fs.fsync(ino, false).unwrap();
    let after = usage(fs);
    let (stored, logical) = (after.0 - before.0, after.1 - before.1);
    eprintln!(
        "wrote {} MiB in {:.2?}: stored {stored} of {logical} bytes, ratio {:.4}",
        total / MIB,
        t.elapsed(),
        stored as f64 / logical as f64
    );
    assert_eq!(logical, total);
    (stored, logical)
}

fn verify(fs: &Fs, ino: InodeNo, total: u64, generate: fn(u64, usize) -> Vec<u8>) {
    let t = Instant::now();
    let mut buf = vec![0u8; MIB as usize];
    for i in 0..total / MIB {
        assert_eq!(fs.read(ino, i * MIB, &mut buf).unwrap(), MIB as usize);
        assert!(buf == generate(i, MIB as usize), "chunk {i} differs");
    }
    eprintln!("read back {} MiB in {:.2?}", total / MIB, t.elapsed());
}

/// 256 MiB of text (set `ARBORFS_COMPRESS_TEST_MIB` for another size).
fn text_size() -> u64 {
    std::env::var("ARBORFS_COMPRESS_TEST_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
        * MIB
}

#[test]
fn zstd_text_takes_under_35_percent_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let total = text_size();
    let (dev, fs) = new_fs(&dir, total + 256 * MIB, CompressionType::Zstd, None);
    let f = mkfile(&fs, ROOT_INO, b"text");
    assert_eq!(fs.getxattr(&Caller::root(), f, XATTR).unwrap(), b"zstd");
    let (stored, logical) = fill(&fs, f, total, text_chunk);
    assert!(
        (stored as f64) < 0.35 * logical as f64,
        "zstd text: {stored} of {logical} bytes"
    );
    verify(&fs, f, total, text_chunk);
    // And after a clean remount, with the counters read back from disk.
    fs.close().unwrap();
    let fs = Fs::open(dev, opts(None)).unwrap();
    assert_eq!(usage(&fs), (stored, logical));
    verify(&fs, f, total, text_chunk);
    fs.close().unwrap();
}

#[test]
fn random_data_with_zstd_is_stored_raw() {
    let dir = tempfile::tempdir().unwrap();
    let total = 64 * MIB;
    let (_dev, fs) = new_fs(&dir, 256 * MIB, CompressionType::Zstd, None);
    let f = mkfile(&fs, ROOT_INO, b"random");
    let (stored, logical) = fill(&fs, f, total, random_chunk);
    assert!(
        stored as f64 <= 1.01 * logical as f64,
        "random: {stored} of {logical} bytes"
    );
    verify(&fs, f, total, random_chunk);
}

#[test]
fn lz4_mount_option_round_trip_with_overwrites_and_truncate() {
    let dir = tempfile::tempdir().unwrap();
    let total = 32 * MIB;
    // The superblock says none; the mount option says lz4.
    let (dev, fs) = new_fs(&dir, 256 * MIB, CompressionType::None, Some("lz4"));
    let me = Caller::root();
    let f = mkfile(&fs, ROOT_INO, b"lz4");
    assert_eq!(fs.getxattr(&me, f, XATTR).unwrap(), b"lz4");
    let (stored, logical) = fill(&fs, f, total, text_chunk);
    assert!(
        (stored as f64) < 0.6 * logical as f64,
        "lz4 text: {stored} of {logical} bytes"
    );
    verify(&fs, f, total, text_chunk);
    // Partial overwrites cut compressed extents at both ends; a truncate
    // cuts the last one. Compare with a model.
    let mut model: Vec<u8> = (0..total / MIB)
        .flat_map(|i| text_chunk(i, MIB as usize))
        .collect();
    let mut r = Rng(7);
    for _ in 0..200 {
        let off = r.next() % (total - 10_000);
        let len = 1 + (r.next() % 9_000) as usize;
        let data = random_chunk(r.next(), len);
        fs.write(&me, f, off, &data).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&data);
    }
    let cut = total - 3 * MIB - 12_345;
    fs.set_size(&me, f, cut).unwrap();
    model.truncate(cut as usize);
    fs.close().unwrap();
    let fs = Fs::open(dev, opts(Some("lz4"))).unwrap();
    let mut back = vec![0u8; model.len() + 10];
    assert_eq!(fs.read(f, 0, &mut back).unwrap(), model.len());
    assert!(back[..model.len()] == model[..]);
    // Deleting the file gives all of its space back.
    fs.unlink(&me, ROOT_INO, b"lz4").unwrap();
    assert_eq!(usage(&fs), (0, 0));
    fs.close().unwrap();
}

#[test]
fn directory_option_is_inherited_and_file_option_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (dev, fs) = new_fs(&dir, 256 * MIB, CompressionType::None, None);
    let me = Caller::root();
    // Unset, the xattr reads as the effective setting but isn't listed.
    assert_eq!(fs.getxattr(&me, ROOT_INO, XATTR).unwrap(), b"none");
    assert!(
        !fs.listxattr(&me, ROOT_INO)
            .unwrap()
            .contains(&XATTR.to_vec())
    );
    assert!(matches!(
        fs.removexattr(&me, ROOT_INO, XATTR),
        Err(FsError::NoAttr)
    ));
    let plain = mkfile(&fs, ROOT_INO, b"plain");
    let z = fs.mkdir(&me, ROOT_INO, b"z", 0o755).unwrap().ino;
    for bad in [&b"gzip"[..], b"zstd:99", b"", b"none:3"] {
        assert!(matches!(
            fs.setxattr(&me, z, XATTR, bad, XattrSet::Any),
            Err(FsError::Invalid(_))
        ));
    }
    fs.setxattr(&me, z, XATTR, b"zstd:5", XattrSet::Any)
        .unwrap();
    assert_eq!(fs.getxattr(&me, z, XATTR).unwrap(), b"zstd:5");
    assert!(fs.listxattr(&me, z).unwrap().contains(&XATTR.to_vec()));
    assert!(matches!(
        fs.setxattr(&me, z, XATTR, b"lz4", XattrSet::Create),
        Err(FsError::Exists)
    ));
    // New children copy the directory's option, down the tree.
    let sub = fs.mkdir(&me, z, b"sub", 0o755).unwrap().ino;
    assert_eq!(fs.getxattr(&me, sub, XATTR).unwrap(), b"zstd:5");
    let zf = mkfile(&fs, sub, b"zf");
    assert_eq!(fs.getxattr(&me, zf, XATTR).unwrap(), b"zstd:5");
    // A file set to none inside the zstd directory.
    let nf = mkfile(&fs, z, b"nf");
    fs.setxattr(&me, nf, XATTR, b"none", XattrSet::Replace)
        .unwrap();
    assert_eq!(fs.getxattr(&me, nf, XATTR).unwrap(), b"none");
    let total = 8 * MIB;
    let (s_plain, _) = fill(&fs, plain, total, text_chunk);
    let (s_zf, _) = fill(&fs, zf, total, text_chunk);
    let (s_nf, _) = fill(&fs, nf, total, text_chunk);
    assert_eq!(s_plain, total, "uncompressed filesystem");
    assert!(s_zf < total * 35 / 100, "zstd directory: {s_zf}");
    assert_eq!(s_nf, total, "none inside the zstd directory");
    // Removing resets to inherit (here: the filesystem's none); data
    // written before stays readable.
    fs.removexattr(&me, zf, XATTR).unwrap();
    assert_eq!(fs.getxattr(&me, zf, XATTR).unwrap(), b"none");
    assert!(!fs.listxattr(&me, zf).unwrap().contains(&XATTR.to_vec()));
    // The option persists.
    fs.close().unwrap();
    let fs = Fs::open(dev, opts(Some("lz4"))).unwrap();
    assert_eq!(fs.getxattr(&me, z, XATTR).unwrap(), b"zstd:5");
    assert_eq!(fs.getxattr(&me, nf, XATTR).unwrap(), b"none");
    // Inheriting inodes follow the mount option now.
    assert_eq!(fs.getxattr(&me, zf, XATTR).unwrap(), b"lz4");
    assert_eq!(fs.getxattr(&me, ROOT_INO, XATTR).unwrap(), b"lz4");
    for f in [plain, zf, nf] {
        verify(&fs, f, total, text_chunk);
    }
    // fsck agrees with the accounting.
    let report = arborfs::fs::fsck::check(&fs, false, &mut |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    fs.close().unwrap();
}
