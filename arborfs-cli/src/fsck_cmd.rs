//! `arborfs fsck`: check (and with `-y` repair) an unmounted image.
//!
//! Exit codes as e2fsck: 0 clean, 1 errors repaired, 4 errors left
//! unrepaired, 8 operational error (cannot open, I/O, corrupted beyond
//! what fsck handles).

use std::path::Path;
use std::sync::Arc;

use arborfs::device::{Device, FileDevice};
use arborfs::engine::EngineOptions;
use arborfs::fs::fsck::{check_data, check_device, data_bytes};
use arborfs::fs::{Fs, FsOptions};
use serde_json::json;

pub const EXIT_CLEAN: i32 = 0;
pub const EXIT_REPAIRED: i32 = 1;
pub const EXIT_UNREPAIRED: i32 = 4;
pub const EXIT_ERROR: i32 = 8;

/// Runs fsck; `repair` is `-y`, otherwise nothing is written (`-n`).
/// `data`: also read and verify every unit of file data (`--check-data`).
pub fn run(image: &Path, repair: bool, data: bool, as_json: bool) -> i32 {
    let fail = |msg: String| {
        if as_json {
            println!("{}", json!({"status": "error", "error": msg}));
        } else {
            eprintln!("arborfs fsck: {msg}");
        }
        EXIT_ERROR
    };
    let dev = match FileDevice::open(image, repair) {
        Ok(d) => d,
        Err(e) => return fail(format!("cannot open {}: {e}", image.display())),
    };
    match dev.try_lock_exclusive() {
        Ok(true) => {}
        Ok(false) if repair => {
            return fail(format!(
                "{} is in use (mounted?); unmount it first",
                image.display()
            ));
        }
        // As e2fsck -n on a mounted filesystem: go on, but say that what a
        // live filesystem has not written yet looks like damage.
        Ok(false) => eprintln!(
            "arborfs fsck: warning: {} is in use (mounted?); a live filesystem changes \
             under the check, so problems found may not be real",
            image.display()
        ),
        Err(e) => return fail(format!("cannot lock {}: {e}", image.display())),
    }
    let dev: Arc<dyn Device> = Arc::new(dev);
    let opts = FsOptions {
        engine: EngineOptions {
            read_only: !repair,
            background: false,
            ..Default::default()
        },
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let mut progress = |s: &str| {
        if !as_json {
            eprintln!("  {s}...");
        }
    };
    let mut report = match check_device(dev.clone(), opts.clone(), repair, &mut progress) {
        Ok(r) => r,
        Err(e) => {
            return fail(format!(
                "cannot open or check the filesystem in {}: {e}",
                image.display()
            ));
        }
    };
    let mut damaged_data = 0;
    if data {
        let read_only = FsOptions {
            engine: EngineOptions {
                read_only: true,
                ..opts.engine
            },
            ..opts
        };
        let checked = Fs::open(dev, read_only).and_then(|fs| {
            // A bar on a terminal (and not with --json): this pass reads
            // every byte of file data.
            let bar = match as_json {
                true => indicatif::ProgressBar::hidden(),
                false => indicatif::ProgressBar::new(data_bytes(&fs)),
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "  {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let r = check_data(&fs, &mut progress, &mut |done| bar.set_position(done));
            bar.finish_and_clear();
            r
        });
        match checked {
            Ok(d) => {
                damaged_data = d.problems.len();
                report.unrepaired += d.unrepaired;
                report.problems.extend(d.problems);
            }
            Err(e) => {
                return fail(format!(
                    "cannot check the file data in {}: {e}",
                    image.display()
                ));
            }
        }
    }
    let code = if report.unrepaired > 0 {
        EXIT_UNREPAIRED
    } else if report.repaired > 0 {
        EXIT_REPAIRED
    } else {
        EXIT_CLEAN
    };
    if as_json {
        let v = json!({
            "status": match code { EXIT_CLEAN => "clean", EXIT_REPAIRED => "repaired", _ => "unrepaired" },
            "exit_code": code,
            "problems": report.problems,
            "repaired": report.repaired,
            "unrepaired": report.unrepaired,
            "nodes": report.nodes,
            "inodes": report.inodes,
            "dirents": report.dirents,
            "extents": report.extents,
            "damaged_data": damaged_data,
            "seconds": started.elapsed().as_secs_f64(),
        });
        println!("{v}");
    } else {
        for p in &report.problems {
            println!("{p}");
        }
        println!(
            "{}: {} nodes, {} inodes, {} directory entries, {} extents checked in {:.2}s; {}",
            image.display(),
            report.nodes,
            report.inodes,
            report.dirents,
            report.extents,
            started.elapsed().as_secs_f64(),
            match code {
                EXIT_CLEAN => "clean".to_string(),
                EXIT_REPAIRED => format!("{} problems repaired", report.repaired),
                _ if repair => format!("{} problems left unrepaired", report.unrepaired),
                _ => format!(
                    "{} problems found (run with -y to repair)",
                    report.problems.len()
                ),
            }
        );
        if damaged_data > 0 {
            println!(
                "{damaged_data} damaged pieces of file data: there is one copy of the data, so \
                 -y cannot repair them; reads of those ranges fail with EIO (restore the files \
                 from a backup)"
            );
        }
    }
    code
}
