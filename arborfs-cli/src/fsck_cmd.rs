//! `arborfs fsck`: check (and with `-y` repair) an unmounted image.
//!
//! Exit codes as e2fsck: 0 clean, 1 errors repaired, 4 errors left
//! unrepaired, 8 operational error (cannot open, I/O, corrupted beyond
//! what fsck handles).

use std::path::Path;
use std::sync::Arc;

use arborfs::device::{Device, FileDevice};
use arborfs::engine::EngineOptions;
use arborfs::fs::FsOptions;
use arborfs::fs::fsck::check_device;
use serde_json::json;

pub const EXIT_CLEAN: i32 = 0;
pub const EXIT_REPAIRED: i32 = 1;
pub const EXIT_UNREPAIRED: i32 = 4;
pub const EXIT_ERROR: i32 = 8;

/// Runs fsck; `repair` is `-y`, otherwise nothing is written (`-n`).
pub fn run(image: &Path, repair: bool, as_json: bool) -> i32 {
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
    if repair {
        match dev.try_lock_exclusive() {
            Ok(true) => {}
            Ok(false) => {
                return fail(format!(
                    "{} is in use (mounted?); unmount it first",
                    image.display()
                ));
            }
            Err(e) => return fail(format!("cannot lock {}: {e}", image.display())),
        }
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
    let report = match check_device(dev, opts, repair, &mut progress) {
        Ok(r) => r,
        Err(e) => {
            return fail(format!(
                "cannot open or check the filesystem in {}: {e}",
                image.display()
            ));
        }
    };
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
    }
    code
}
