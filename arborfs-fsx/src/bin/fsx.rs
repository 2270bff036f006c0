//! `fsx DIR`: random file operations checked against a model, in any
//! directory. `fsx --stress SECS DIR` runs the concurrency workload instead.
//!
//! Exit status: 0 passed, 1 a check failed, 2 bad usage or setup.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use arborfs_fsx::stress::{self, StressConfig};
use arborfs_fsx::{BoxError, Config, OpKind, Weights, known_names, parse_size};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "fsx",
    about = "Randomized file-operation exerciser (after the classic fsx) and concurrency stress test",
    after_help = "Op names for --weights: read, write, dread, dwrite, mapread, mapwrite, truncate, \
                  falloc, falloc_keep, punch, zero, copy, fsync, fdatasync, reopen, seek.\n\
                  A failure prints the seed, the op log and the replay command."
)]
struct Args {
    /// Directory to work in (files fsx.0, fsx.1, ... are created there).
    dir: PathBuf,
    /// Seed of every random choice (default: from the clock; always printed).
    #[arg(short = 'S', long)]
    seed: Option<u64>,
    /// Number of operations.
    #[arg(short = 'N', long, default_value_t = 10_000)]
    ops: u64,
    /// Number of files (1-8).
    #[arg(long, default_value_t = 2)]
    files: usize,
    /// Largest file size (K, M, G suffixes).
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    max_size: u64,
    /// Longest single read or write.
    #[arg(long, default_value = "256K", value_parser = parse_size)]
    max_len: u64,
    /// Relative op frequencies, e.g. `read=5,copy=0` (0 disables).
    #[arg(long)]
    weights: Option<String>,
    /// Compare whole files every N ops (0: only at the end).
    #[arg(long, default_value_t = 1000)]
    check_every: u64,
    /// Shell command that remounts DIR's filesystem (run with all files
    /// closed; must exit 0).
    #[arg(long)]
    remount_cmd: Option<String>,
    /// Remount every N ops (default 10000 when --remount-cmd is given).
    #[arg(long)]
    remount_every: Option<u64>,
    /// How many of 8 mmap writes are msynced before munmap.
    #[arg(long, default_value_t = 5)]
    msync_eighths: u64,
    /// How many of 8 mmap writes keep the mapping (dirty) for a while.
    #[arg(long, default_value_t = 1)]
    keep_map_eighths: u64,
    /// Recent ops shown on a failure.
    #[arg(long, default_value_t = 64)]
    log_len: usize,
    /// Print progress every N ops.
    #[arg(long, default_value_t = 0)]
    progress: u64,
    /// Keep the files after a passing run.
    #[arg(long)]
    keep: bool,
    /// File name prefix.
    #[arg(long, default_value = "fsx")]
    prefix: String,
    /// Disable O_DIRECT reads and writes.
    #[arg(long)]
    no_direct: bool,
    /// Disable mmap reads and writes.
    #[arg(long)]
    no_mmap: bool,
    /// Disable every fallocate mode.
    #[arg(long)]
    no_fallocate: bool,
    /// Disable copy_file_range.
    #[arg(long)]
    no_copy: bool,
    /// Disable ftruncate.
    #[arg(long)]
    no_truncate: bool,
    /// Do not print notes as they happen.
    #[arg(short, long)]
    quiet: bool,
    /// Run the concurrency stress workload for SECS seconds instead.
    #[arg(long, value_name = "SECS")]
    stress: Option<u64>,
}

fn config(a: &Args, seed: u64) -> Result<Config, String> {
    let mut weights = Weights::default();
    let off: &[(bool, &[OpKind])] = &[
        (a.no_direct, &[OpKind::DirectRead, OpKind::DirectWrite]),
        (a.no_mmap, &[OpKind::MapRead, OpKind::MapWrite]),
        (
            a.no_fallocate,
            &[
                OpKind::Falloc,
                OpKind::FallocKeepSize,
                OpKind::PunchHole,
                OpKind::ZeroRange,
            ],
        ),
        (a.no_copy, &[OpKind::CopyRange]),
        (a.no_truncate, &[OpKind::Truncate]),
    ];
    for (on, kinds) in off {
        if *on {
            for &k in *kinds {
                weights.set(k, 0);
            }
        }
    }
    if let Some(w) = &a.weights {
        weights.apply(w)?;
    }
    let remount_every = match (&a.remount_cmd, a.remount_every) {
        (Some(_), n) => n.unwrap_or(10_000),
        (None, Some(n)) if n > 0 => return Err("--remount-every needs --remount-cmd".into()),
        (None, _) => 0,
    };
    Ok(Config {
        seed,
        ops: a.ops,
        files: a.files,
        max_size: a.max_size,
        max_len: a.max_len,
        weights,
        check_every: a.check_every,
        remount_every,
        log_len: a.log_len,
        msync_eighths: a.msync_eighths.min(8),
        keep_map_eighths: a.keep_map_eighths.min(8),
        progress_every: a.progress,
        quiet: a.quiet,
        cleanup: !a.keep,
        prefix: a.prefix.clone(),
    })
}

fn clock_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    t % 1_000_000_000_000
}

fn run_shell(cmd: &str) -> Result<(), BoxError> {
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("remount command {cmd:?} exited with {st}").into())
    }
}

fn main() -> ExitCode {
    let a = Args::parse();
    let seed = a.seed.unwrap_or_else(clock_seed);
    if let Some(secs) = a.stress {
        let cfg = StressConfig {
            duration: Duration::from_secs(secs),
            seed,
            direct_writers: if a.no_direct { 0 } else { 1 },
            copy_range: !a.no_copy,
            truncate: !a.no_truncate,
            ..StressConfig::default()
        };
        println!("fsx --stress {secs}: seed {seed}, {}", a.dir.display());
        return match stress::run(&a.dir, &cfg) {
            Ok(r) => {
                println!("{r}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        };
    }
    let cfg = match config(&a, seed) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fsx: {e} (ops: {})", known_names());
            return ExitCode::from(2);
        }
    };
    println!(
        "fsx: seed {seed}, {} ops, {} files of up to {} bytes in {}",
        cfg.ops,
        cfg.files,
        cfg.max_size,
        a.dir.display()
    );
    let remount = |cmd: &str| run_shell(cmd);
    let mut cb;
    let cb_ref: Option<&mut arborfs_fsx::RemountFn<'_>> = match &a.remount_cmd {
        Some(cmd) => {
            cb = || remount(cmd);
            Some(&mut cb)
        }
        None => None,
    };
    match arborfs_fsx::run(&a.dir, &cfg, cb_ref) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("{f}");
            match f.kind {
                arborfs_fsx::FailureKind::Setup(_) => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}
