//! Engine benchmark: prints one JSON line per operation.
//!
//! `cargo run --release --example engine_bench -- --keys 1000000 [--image PATH]`
//!
//! Phases: random inserts in transactions of 100 keys with a 64 MiB node
//! cache (with peak RSS), then with the default cache: random inserts, warm
//! random point lookups, a full scan.

use std::sync::Arc;
use std::time::Instant;

use arborfs::device::{Device, FileDevice};
use arborfs::sb::FormatOptions;
use arborfs::{BtreeId, Durability, Engine, EngineOptions, Key, Pos};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// CPU seconds used by the whole process so far (all threads): unlike wall
/// time it does not count time spent waiting for a core, so it stays
/// comparable on a machine shared with other jobs.
fn cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Wall clock and CPU clock of one phase.
struct Timer(Instant, f64);

impl Timer {
    fn start() -> Timer {
        Timer(Instant::now(), cpu_s())
    }

    /// `(ops per wall second, ops per CPU second)`.
    fn rates(&self, ops: f64) -> (f64, f64) {
        (
            ops / self.0.elapsed().as_secs_f64(),
            ops / (cpu_s() - self.1),
        )
    }
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
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

fn key_of(i: u64) -> Pos {
    // Spread keys over inodes and offsets like inode numbers and dirent hashes.
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Pos::new(h >> 44, h & 0xFFF_FFFF_FFFF, 0)
}

fn fresh(path: &std::path::Path, cache: usize) -> Engine {
    let _ = std::fs::remove_file(path);
    let dev: Arc<dyn Device> = Arc::new(FileDevice::create(path, 8 << 30).expect("create image"));
    Engine::format(dev.clone(), &FormatOptions::default()).expect("format");
    Engine::open(
        dev,
        EngineOptions {
            cache_bytes: cache,
            ..Default::default()
        },
    )
    .expect("open")
}

fn insert_all(e: &Engine, n: u64) -> (f64, f64) {
    let mut order: Vec<u64> = (0..n).collect();
    let mut rng = Rng(42);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let t = Timer::start();
    for chunk in order.chunks(100) {
        let mut tx = e.begin();
        for &i in chunk {
            tx.put(
                BtreeId::Inodes,
                Key::blob(key_of(i), i.to_le_bytes().to_vec()),
            );
        }
        tx.commit(Durability::Lazy).expect("commit");
    }
    e.sync().expect("sync");
    t.rates(n as f64)
}

fn main() {
    let n: u64 = arg("--keys").map_or(1_000_000, |s| s.parse().expect("--keys N"));
    let image = std::path::PathBuf::from(
        arg("--image").unwrap_or_else(|| "/tmp/arborfs-engine-bench.img".into()),
    );

    if !std::env::args().any(|a| a == "--skip-small-cache") {
        let e = fresh(&image, 64 << 20);
        let (ops, cpu) = insert_all(&e, n);
        e.close().expect("close");
        println!(
            "{{\"op\":\"insert_64m_cache\",\"keys\":{n},\"ops_per_s\":{ops:.0},\"ops_per_cpu_s\":{cpu:.0},\"peak_rss_mb\":{:.1}}}",
            peak_rss_mb()
        );
    }

    let e = fresh(&image, arborfs::engine::DEFAULT_CACHE_BYTES);
    let (ops, cpu) = insert_all(&e, n);
    println!(
        "{{\"op\":\"insert\",\"keys\":{n},\"ops_per_s\":{ops:.0},\"ops_per_cpu_s\":{cpu:.0}}}"
    );
    let lookup_repeat: u64 =
        arg("--lookup-repeat").map_or(1, |s| s.parse().expect("--lookup-repeat N"));

    let mut rng = Rng(7);
    let lookups = n.max(1_000_000) * lookup_repeat;
    let t = Timer::start();
    for _ in 0..lookups {
        let i = rng.next() % n;
        let k = e
            .get(BtreeId::Inodes, key_of(i))
            .expect("get")
            .expect("present");
        debug_assert_eq!(k.value, i.to_le_bytes());
    }
    let (ops, cpu) = t.rates(lookups as f64);
    println!(
        "{{\"op\":\"lookup\",\"keys\":{n},\"ops_per_s\":{ops:.0},\"ops_per_cpu_s\":{cpu:.0}}}"
    );

    let repeat: u64 = arg("--scan-repeat").map_or(1, |s| s.parse().expect("--scan-repeat N"));
    let t = Timer::start();
    let mut count = 0u64;
    for _ in 0..repeat {
        for k in e.iter(BtreeId::Inodes, Pos::MIN, Pos::MAX) {
            k.expect("scan");
            count += 1;
        }
    }
    assert_eq!(count, n * repeat);
    let (ops, cpu) = t.rates(count as f64);
    println!("{{\"op\":\"scan\",\"keys\":{n},\"ops_per_s\":{ops:.0},\"ops_per_cpu_s\":{cpu:.0}}}");

    eprintln!("stats after the default-cache phases: {:?}", e.stats());
    e.close().expect("close");
    let dev: Arc<dyn Device> = Arc::new(FileDevice::open(&image, true).expect("open image"));
    let t = Instant::now();
    let e = Engine::open(dev, EngineOptions::default()).expect("reopen");
    println!(
        "{{\"op\":\"open\",\"keys\":{n},\"node_reads\":{},\"ms\":{:.1}}}",
        e.stats().node_reads,
        t.elapsed().as_secs_f64() * 1000.0
    );
    e.close().expect("close");
    let _ = std::fs::remove_file(&image);
}
