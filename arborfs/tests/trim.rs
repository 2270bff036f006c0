//! `Fs::trim` (fstrim) gives the space of free buckets back to an image
//! file's host filesystem (holes), and never touches what lives: files read
//! back, new writes land in trimmed buckets, fsck stays clean, and writers
//! racing a trim lose nothing.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arborfs::fs::fsck::check;
use arborfs::fs::{Caller, Fs, InodeNo, ROOT_INO, S_IFREG};
use common::{fs_opts, pattern};

const MIB: u64 = 1 << 20;

fn open(path: &Path) -> Fs {
    Fs::open_image(path, 256 * MIB, fs_opts()).unwrap()
}

/// Bytes the image really occupies on the host filesystem.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn create(fs: &Fs, name: &str, data: &[u8]) -> InodeNo {
    let me = Caller::root();
    let ino = fs
        .mknod(&me, ROOT_INO, name.as_bytes(), S_IFREG | 0o644, 0)
        .unwrap()
        .ino;
    for (i, chunk) in data.chunks(MIB as usize).enumerate() {
        fs.write(&me, ino, i as u64 * MIB, chunk).unwrap();
    }
    ino
}

fn read_all(fs: &Fs, ino: InodeNo, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = fs.read(ino, done as u64, &mut buf[done..]).unwrap();
        assert!(n > 0, "short read at {done} of {len}");
        done += n;
    }
    buf
}

#[test]
fn trim_punches_free_buckets_and_keeps_live_data() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let fs = open(&img);
    let (a, b) = (pattern(1, 64 * MIB as usize), pattern(2, 8 * MIB as usize));
    create(&fs, "a", &a);
    let ib = create(&fs, "b", &b);
    fs.sync().unwrap();
    let with_a = allocated(&img);
    assert!(with_a >= 72 * MIB, "image holds {with_a} bytes");

    fs.unlink(&Caller::root(), ROOT_INO, b"a").unwrap();
    let r = fs.trim().unwrap();
    let after = allocated(&img);
    assert!(r.bytes >= 60 * MIB, "{r:?}");
    assert!(
        with_a - after >= 60 * MIB,
        "the host got back {} bytes",
        with_a - after
    );
    assert_eq!(read_all(&fs, ib, b.len()), b);

    // New data goes into trimmed buckets and reads back.
    let c = pattern(3, 32 * MIB as usize);
    let ic = create(&fs, "c", &c);
    fs.sync().unwrap();
    assert_eq!(read_all(&fs, ic, c.len()), c);
    // Trimming again is harmless.
    fs.trim().unwrap();
    fs.close().unwrap();

    let fs = open(&img);
    let report = check(&fs, false, &mut |_| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(read_all(&fs, ib, b.len()), b);
    assert_eq!(read_all(&fs, ic, c.len()), c);
    fs.close().unwrap();
}

#[test]
fn trims_racing_writers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let fs = Arc::new(open(&img));
    let stop = Arc::new(AtomicBool::new(false));
    let trimmer = {
        let (fs, stop) = (fs.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut trims = 0;
            while !stop.load(Ordering::Relaxed) {
                fs.trim().unwrap();
                trims += 1;
            }
            trims
        })
    };
    // Files are rewritten, deleted and recreated while trims run; each is
    // checked right after it is written and again at the end.
    let me = Caller::root();
    let mut live: Vec<(String, InodeNo, Vec<u8>)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut round = 0u64;
    while Instant::now() < deadline || round < 20 {
        let name = format!("f{}", round % 6);
        if let Some(i) = live.iter().position(|(n, _, _)| *n == name) {
            let (n, _, _) = live.swap_remove(i);
            fs.unlink(&me, ROOT_INO, n.as_bytes()).unwrap();
        }
        let data = pattern(round, (1 + round as usize % 5) * MIB as usize);
        let ino = create(&fs, &name, &data);
        if round.is_multiple_of(3) {
            fs.sync().unwrap();
        }
        assert_eq!(read_all(&fs, ino, data.len()), data, "round {round}");
        live.push((name, ino, data));
        round += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let trims = trimmer.join().unwrap();
    assert!(trims >= 2, "only {trims} trims ran");
    for (name, ino, data) in &live {
        assert_eq!(&read_all(&fs, *ino, data.len()), data, "{name}");
    }
    let fs = Arc::into_inner(fs).unwrap();
    fs.close().unwrap();
    let fs = open(&img);
    let report = check(&fs, false, &mut |_| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    for (name, ino, data) in &live {
        assert_eq!(
            &read_all(&fs, *ino, data.len()),
            data,
            "{name} after reopen"
        );
    }
    fs.close().unwrap();
}

/// Detaches a loop device when dropped, so a failing test leaves none.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

/// On a block device trim discards (BLKDISCARD): a loop device turns that
/// into holes in its backing file.
#[test]
fn trim_discards_on_a_block_device() {
    use arborfs::device::{Device, FileDevice};
    use arborfs::sb::FormatOptions;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let losetup = std::process::Command::new("losetup")
        .arg("--version")
        .output();
    if !root || losetup.is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this as root with losetup"
        );
        eprintln!("skipped: needs root and losetup");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(256 * MIB)
        .unwrap();
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&backing)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev_path = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let _detach = Loop(dev_path.clone());

    let dev = Arc::new(FileDevice::open(Path::new(&dev_path), true).unwrap());
    Fs::format(dev.clone(), &FormatOptions::for_device(dev.size())).unwrap();
    let fs = Fs::open(dev, fs_opts()).unwrap();
    let keep = pattern(5, 4 * MIB as usize);
    let ik = create(&fs, "keep", &keep);
    create(&fs, "big", &pattern(6, 64 * MIB as usize));
    fs.sync().unwrap();
    let with_big = allocated(&backing);
    assert!(with_big >= 64 * MIB, "backing file holds {with_big} bytes");
    fs.unlink(&Caller::root(), ROOT_INO, b"big").unwrap();
    let r = fs.trim().unwrap();
    assert!(r.bytes >= 60 * MIB, "{r:?}");
    let after = allocated(&backing);
    assert!(
        with_big - after >= 56 * MIB,
        "the backing file went from {with_big} to {after} bytes"
    );
    assert_eq!(read_all(&fs, ik, keep.len()), keep);
    fs.close().unwrap();
}
