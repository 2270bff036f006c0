//! The exerciser checked against a local directory: it passes where the
//! filesystem is right, is deterministic for a seed, and reports damage.

use std::path::Path;

use arborfs_fsx::{BoxError, Config, FailureKind, OpKind, run};

fn quick(seed: u64, ops: u64) -> Config {
    Config {
        seed,
        ops,
        max_size: 512 << 10,
        max_len: 64 << 10,
        check_every: 500,
        quiet: true,
        ..Config::default()
    }
}

#[test]
fn passes_on_a_local_directory_with_every_op() {
    let dir = tempfile::tempdir().unwrap();
    let mut remounts = 0;
    let mut cb = || -> Result<(), BoxError> {
        remounts += 1;
        Ok(())
    };
    let cfg = Config {
        remount_every: 1000,
        ..quick(7, 3000)
    };
    let s = run(dir.path(), &cfg, Some(&mut cb)).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(s.ops, 3000);
    assert_eq!(s.remounts, 3);
    assert_eq!(remounts, 3);
    for k in [
        OpKind::Read,
        OpKind::Write,
        OpKind::MapRead,
        OpKind::MapWrite,
        OpKind::Truncate,
        OpKind::Reopen,
    ] {
        assert!(
            s.counts.iter().any(|&(c, n)| c == k && n > 0),
            "{k} never ran: {s}"
        );
    }
    // The files are removed after a passing run.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn the_same_seed_makes_the_same_run() {
    let dir = tempfile::tempdir().unwrap();
    let a = run(dir.path(), &quick(42, 1500), None).unwrap();
    let b = run(dir.path(), &quick(42, 1500), None).unwrap();
    let c = run(dir.path(), &quick(43, 1500), None).unwrap();
    assert_eq!(a.counts, b.counts);
    assert_eq!(a.bytes_written, b.bytes_written);
    assert_eq!(a.bytes_read, b.bytes_read);
    assert_ne!(
        (a.counts, a.bytes_written),
        (c.counts, c.bytes_written),
        "another seed, the same run"
    );
}

/// Changes one byte of the first non-empty file (or grows an empty one).
fn damage(dir: &Path) {
    for i in 0..8 {
        let p = dir.join(format!("fsx.{i}"));
        let Ok(mut data) = std::fs::read(&p) else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let mid = data.len() / 2;
        data[mid] ^= 0x40;
        std::fs::write(&p, &data).unwrap();
        return;
    }
    std::fs::write(dir.join("fsx.0"), b"x").unwrap();
}

#[test]
fn damage_behind_its_back_is_reported_with_seed_log_and_hexdump() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mut cb = || -> Result<(), BoxError> {
        damage(&path);
        Ok(())
    };
    let cfg = Config {
        remount_every: 300,
        log_len: 16,
        ..quick(5, 1000)
    };
    let fail = run(dir.path(), &cfg, Some(&mut cb)).expect_err("damage went unnoticed");
    assert_eq!(fail.op, 300);
    assert_eq!(fail.seed, 5);
    assert!(fail.log.len() <= 16);
    let text = fail.to_string();
    match &fail.kind {
        FailureKind::Data(m) => {
            assert!(m.diff_bytes >= 1, "{text}");
            assert!(text.contains("expected"), "{text}");
            assert!(text.contains("first difference at file offset"), "{text}");
        }
        FailureKind::Size { .. } => assert!(text.contains("size mismatch"), "{text}"),
        k => panic!("unexpected failure {k:?}"),
    }
    assert!(text.contains("seed 5"), "{text}");
    assert!(text.contains("REMOUNT"), "{text}");
    assert!(
        text.contains("replay: fsx --seed 5 --ops 300"),
        "no replay line: {text}"
    );
    // A failed run keeps its files for a look.
    assert!(dir.path().join("fsx.0").exists());
}

#[test]
fn a_failing_remount_and_a_bad_config_are_typed_failures() {
    let dir = tempfile::tempdir().unwrap();
    let mut cb = || -> Result<(), BoxError> { Err("no such mount".into()) };
    let cfg = Config {
        remount_every: 10,
        ..quick(1, 100)
    };
    let fail = run(dir.path(), &cfg, Some(&mut cb)).unwrap_err();
    assert!(
        matches!(&fail.kind, FailureKind::Remount(m) if m.contains("no such mount")),
        "{fail}"
    );
    let bad = Config {
        files: 0,
        ..quick(1, 10)
    };
    let fail = run(dir.path(), &bad, None).unwrap_err();
    assert!(matches!(fail.kind, FailureKind::Setup(_)), "{fail}");
    let missing = dir.path().join("does/not/exist");
    let fail = run(&missing, &quick(1, 10), None).unwrap_err();
    assert!(matches!(fail.kind, FailureKind::Setup(_)), "{fail}");
}
