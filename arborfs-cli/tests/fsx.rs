//! The `arborfs-fsx` exerciser and stress workload on a real FUSE mount.
//!
//! * `fsx_100k_ops_with_remounts`: 100 000 random operations of every kind
//!   (buffered, O_DIRECT and mmap IO, truncate, fallocate, copy_file_range,
//!   fsync, reopen) on two files, checked against a model, with a remount
//!   every 10 000 ops; `arborfs fsck -n` must be clean at every remount and
//!   at the end.
//! * `fsx_30k_ops_compressed`: 30 000 ops on a zstd-compressed mount.
//! * `fsx_1m_ops_with_remounts` (ignored): the same with 1 000 000 ops.
//! * `fsx_small_image_under_copygc`: fsx on a 24 MiB
//!   image.
//! * `stress_concurrent_io_paths`: writers (buffered and O_DIRECT),
//!   truncates, copy_file_range in both directions and renames in both
//!   directions at once; the end state is checked, fsck must be clean, and
//!   the state is checked again after a remount.
//!
//! Seeds come from `ARBORFS_FSX_SEED` / `ARBORFS_STRESS_SEED` or the clock
//! and are always printed. Every wait has a timeout and the mount's
//! watchdog kills the daemon of a test that runs too long.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arborfs_fsx::stress::{self, StressConfig, StressError};
use arborfs_fsx::{BoxError, Config};

#[macro_use]
mod common;
use common::*;

fn seed_from_env(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var} must be a number, not {s:?}")),
        Err(_) => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos() as u64
                % 1_000_000_000_000
        }
    }
}

/// The fsx configuration the mount tests use: every op kind, two files of
/// up to 2 MiB, a full compare every 2000 ops, a remount every 10 000.
fn fsx_config(seed: u64, ops: u64) -> Config {
    Config {
        seed,
        ops,
        files: 2,
        max_size: 2 << 20,
        max_len: 128 << 10,
        check_every: 2000,
        remount_every: 10_000,
        // Each msync is an fsync of the whole filesystem (a few ms): a
        // quarter of the mmap writes msync, a quarter keep their mapping
        // (dirty) for a while, the rest rely on munmap (FUSE writes back).
        msync_eighths: 2,
        keep_map_eighths: 2,
        // Keep the files: fsck checks them after the unmount.
        cleanup: false,
        ..Config::default()
    }
}

/// Mounts a fresh image with `opts`, runs fsx with remounts (and fsck at
/// each) through the fixture, then unmounts and runs fsck.
fn fsx_on_arborfs(ops: u64, deadline: Duration, opts: &str) {
    let seed = seed_from_env("ARBORFS_FSX_SEED");
    println!(
        "fsx on ArborFS (-o {opts}): seed {seed} (ARBORFS_FSX_SEED={seed} replays), {ops} ops"
    );
    let mut f = Fixture::with_deadline(deadline);
    f.mount_fg(opts);
    let mnt = f.mnt.clone();
    let cfg = fsx_config(seed, ops);
    let started = Instant::now();
    let result = {
        let mut remounts = 0;
        let mut remount = || -> Result<(), BoxError> {
            f.umount();
            remounts += 1;
            let out = arborfs(&["fsck", "-n", f.image()]);
            if out.status.code() != Some(0) {
                return Err(format!(
                    "fsck -n at remount {remounts} exited with {}: {}{}",
                    out.status, out.stdout, out.stderr
                )
                .into());
            }
            f.mount_fg(opts);
            Ok(())
        };
        arborfs_fsx::run(&mnt, &cfg, Some(&mut remount))
    };
    let summary = result.unwrap_or_else(|fail| {
        panic!(
            "{fail}\n(cargo test -p arborfs-cli --test fsx with ARBORFS_FSX_SEED={seed} replays \
             it on ArborFS; `fsx {}` replays it on a mounted directory)",
            cfg.replay_args(fail.op)
        )
    });
    println!("{summary}");
    println!(
        "fsx on ArborFS: {ops} ops in {:.1?}, {:.0} ops/s",
        started.elapsed(),
        summary.ops_per_sec()
    );
    assert_eq!(summary.remounts, ops / 10_000);
    f.umount();
    f.assert_fsck_clean("fsx");
}

#[test]
fn fsx_100k_ops_with_remounts() {
    require_fuse!();
    fsx_on_arborfs(100_000, Duration::from_secs(170), "size=256M");
}

/// Compressed extents (zstd; half of fsx's data compresses): partial
/// overwrites, truncates and punches inside compressed units.
#[test]
fn fsx_30k_ops_compressed() {
    require_fuse!();
    fsx_on_arborfs(
        30_000,
        Duration::from_secs(120),
        "size=256M,compression=zstd",
    );
}

/// The long run: `cargo test --release -p arborfs-cli --test fsx
/// fsx_1m_ops_with_remounts -- --ignored --nocapture`.
#[test]
#[ignore]
fn fsx_1m_ops_with_remounts() {
    require_fuse!();
    fsx_on_arborfs(1_000_000, Duration::from_secs(3600), "size=256M");
}

/// fsx on a 24 MiB image (two files of up to 4 MiB), where copy-on-write
/// churn reuses every bucket many times over and copygc has to run.
///
/// This test found extents pointing into a bucket whose generation had been
/// bumped (EIO, fsck errors: a checkpoint between a data write and the commit
/// of its extent could free the bucket; allocations now pin their bucket until
/// committed), and then ENOSPC in 4 runs of 5: with fixed 1 MiB buckets and
/// 256 KiB nodes such an image had 23 buckets and 11.8 MiB free when empty.
/// `format` now scales buckets and nodes to the device (191 buckets of
/// 128 KiB, 64 KiB nodes, 21.3 MiB free).
#[test]
fn fsx_small_image_under_copygc() {
    require_fuse!();
    let seed = seed_from_env("ARBORFS_FSX_SEED");
    println!("fsx on a 24 MiB ArborFS image: seed {seed} (ARBORFS_FSX_SEED={seed})");
    let mut f = Fixture::new();
    f.mount_fg("size=24M");
    let cfg = Config {
        seed,
        ops: 8000,
        max_size: 4 << 20,
        cleanup: false,
        ..Config::default()
    };
    let r = arborfs_fsx::run(&f.mnt.clone(), &cfg, None);
    f.umount();
    let fsck = arborfs(&["fsck", "-n", f.image()]);
    match r {
        Ok(s) => println!("{s}"),
        Err(fail) => panic!("{fail}\nfsck -n: {}", fsck.stdout),
    }
    assert_eq!(fsck.status.code(), Some(0), "fsck -n: {}", fsck.stdout);
}

fn stress_secs() -> u64 {
    std::env::var("ARBORFS_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15)
}

/// Runs the workload in a thread; a hang (reported by the workload, or the
/// workload not returning at all) unmounts lazily, kills the daemon and
/// fails the test.
fn run_stress(f: &Fixture, cfg: &StressConfig) -> stress::StressReport {
    let (tx, rx) = mpsc::channel();
    let (mnt, c) = (f.mnt.clone(), cfg.clone());
    std::thread::spawn(move || {
        let _ = tx.send(stress::run(&mnt, &c));
    });
    let limit = cfg.duration + cfg.grace + Duration::from_secs(60);
    fn hang(mnt: &Path, msg: String) -> ! {
        kill_daemons(mnt);
        panic!("{msg}\n(the mount was unmounted lazily and its daemon killed)");
    }
    match rx.recv_timeout(limit) {
        Ok(Ok(r)) => r,
        Ok(Err(e @ StressError::Hang { .. })) => hang(&f.mnt, format!("seed {}: {e}", cfg.seed)),
        Ok(Err(e)) => panic!("seed {}: {e}", cfg.seed),
        Err(_) => hang(
            &f.mnt,
            format!(
                "seed {}: the stress run did not return within {limit:?} (setup or the final check hung)",
                cfg.seed
            ),
        ),
    }
}

#[test]
fn stress_concurrent_io_paths() {
    require_fuse!();
    let seed = seed_from_env("ARBORFS_STRESS_SEED");
    let secs = stress_secs();
    println!(
        "stress on ArborFS: seed {seed} (ARBORFS_STRESS_SEED={seed}; the thread interleaving \
         differs every run), {secs} s (ARBORFS_STRESS_SECS)"
    );
    let cfg = StressConfig {
        duration: Duration::from_secs(secs),
        grace: Duration::from_secs(30),
        seed,
        // Two O_DIRECT writers into the same files: their non-extending
        // writes run in parallel (FOPEN_PARALLEL_DIRECT_WRITES).
        direct_writers: 2,
        ..StressConfig::default()
    };
    let mut f = Fixture::with_deadline(cfg.duration + Duration::from_secs(150));
    f.mount_fg("size=256M");
    let report = run_stress(&f, &cfg);
    println!("{report}");
    // Every kind of worker got work done.
    for w in &report.workers {
        assert!(w.ops > 0, "worker {} did nothing: {report}", w.name);
    }
    f.umount();
    f.assert_clean();
    f.assert_fsck_clean("the stress run");
    // What was checked through the mount is also what is on disk.
    f.mount_fg("");
    let again = report
        .verify(Path::new(f.mnt()))
        .unwrap_or_else(|e| panic!("seed {seed}, after a remount: {e}"));
    assert_eq!(
        again, report.verified,
        "the end state changed across a remount"
    );
    f.umount();
}
