//! Criterion benchmarks of the hot paths below FUSE: cached and uncached
//! 4 KiB reads, buffered 4 KiB writes with their writeback, and unit
//! compression. Whole-system numbers come from `examples/engine_bench.rs`
//! and fsbench (docs/testing.md); these catch regressions in one path.
//!
//! `cargo bench -p arborfs --bench hot_paths`

use std::hint::black_box;
use std::sync::Arc;

use arborfs::device::{Device, MemDevice};
use arborfs::engine::EngineOptions;
use arborfs::fs::compress::{Compression, compress_unit};
use arborfs::fs::{Caller, Fs, FsOptions, InodeNo, ROOT_INO, S_IFREG};
use arborfs::sb::FormatOptions;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[path = "../tests/common/mod.rs"]
mod common;
use common::pattern;

const FILE_BYTES: u64 = 16 << 20;

/// Compressible: numbered lines of text.
fn text(n: usize) -> Vec<u8> {
    let mut s: Vec<u8> = (0..)
        .flat_map(|i| format!("line {i} of a log file\n").into_bytes())
        .take(n)
        .collect();
    s.truncate(n);
    s
}

/// A filesystem in memory with one fsynced file of `FILE_BYTES`.
fn fs_with_file() -> (Fs, InodeNo) {
    let dev = Arc::new(MemDevice::new(256 << 20));
    Fs::format(dev.clone(), &FormatOptions::default()).unwrap();
    let fs = Fs::open(
        dev as Arc<dyn Device>,
        FsOptions {
            engine: EngineOptions {
                background: false,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    let me = Caller::root();
    let ino = fs
        .mknod(&me, ROOT_INO, b"f", S_IFREG | 0o644, 0)
        .unwrap()
        .ino;
    fs.write(&me, ino, 0, &pattern(5, FILE_BYTES as usize))
        .unwrap();
    fs.fsync(ino, false).unwrap();
    (fs, ino)
}

fn offsets() -> impl FnMut() -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % (FILE_BYTES / 4096) * 4096
    }
}

fn reads(c: &mut Criterion) {
    let (fs, ino) = fs_with_file();
    let mut g = c.benchmark_group("read_4k");
    g.throughput(Throughput::Bytes(4096));
    let mut buf = vec![0u8; 4096];
    let mut next = offsets();
    g.bench_function("cached", |b| {
        b.iter(|| fs.read(ino, black_box(next()), &mut buf).unwrap())
    });
    // From the device each time: reads and verifies a whole 128 KiB unit.
    g.bench_function("direct", |b| {
        b.iter(|| fs.read_direct(ino, black_box(next()), &mut buf).unwrap())
    });
    g.finish();
}

fn writes(c: &mut Criterion) {
    let (fs, ino) = fs_with_file();
    let me = Caller::root();
    let data = pattern(9, 4096);
    let mut next = offsets();
    let mut g = c.benchmark_group("write_4k");
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("buffered", |b| {
        b.iter(|| fs.write(&me, ino, black_box(next()), &data).unwrap())
    });
    // 64 scattered pages, then the fsync that writes them back.
    g.throughput(Throughput::Bytes(64 * 4096));
    g.bench_function("64_then_fsync", |b| {
        b.iter(|| {
            for _ in 0..64 {
                fs.write(&me, ino, next(), &data).unwrap();
            }
            fs.fsync(ino, false).unwrap()
        })
    });
    g.finish();
}

fn compression(c: &mut Criterion) {
    let mut g = c.benchmark_group("compress_128k");
    g.throughput(Throughput::Bytes(128 << 10));
    let (txt, rnd) = (text(128 << 10), pattern(3, 128 << 10));
    for name in ["lz4", "zstd"] {
        let comp = Compression::parse(name).unwrap();
        g.bench_function(format!("{name}_text"), |b| {
            b.iter(|| compress_unit(comp, black_box(&txt)))
        });
        g.bench_function(format!("{name}_random"), |b| {
            b.iter(|| compress_unit(comp, black_box(&rnd)))
        });
    }
    g.finish();
}

criterion_group!(benches, reads, writes, compression);
criterion_main!(benches);
