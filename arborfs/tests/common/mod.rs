#![allow(dead_code)]
use std::sync::Arc;

use arborfs::device::{Device, MemDevice};
use arborfs::fs::FsOptions;
use arborfs::sb::FormatOptions;
use arborfs::{Engine, EngineOptions};

/// Small geometry so a few thousand keys make multi-level trees.
pub fn small_format() -> FormatOptions {
    FormatOptions {
        bucket_size: 64 << 10,
        node_size: 16 << 10,
        ..Default::default()
    }
}

pub fn mem_engine(size: u64) -> (Arc<MemDevice>, Engine) {
    let dev = Arc::new(MemDevice::new(size));
    Engine::format(dev.clone(), &small_format()).unwrap();
    let e = Engine::open(
        dev.clone() as Arc<dyn Device>,
        EngineOptions {
            background: false,
            ..Default::default()
        },
    )
    .unwrap();
    (dev, e)
}

/// Filesystem options without the background thread: the test drives
/// every flush and checkpoint.
pub fn fs_opts() -> FsOptions {
    FsOptions {
        engine: EngineOptions {
            background: false,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// `len` pseudo-random bytes (xorshift), the same for the same `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
