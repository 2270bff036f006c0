//! A full filesystem fails writes and creates with ENOSPC (never EIO, never
//! a damaged image), deletes still work on it, and after deleting files
//! writing succeeds again; fsck is clean throughout.

use std::sync::Arc;

use arborfs::device::{Device, MemDevice};
use arborfs::engine::EngineOptions;
use arborfs::fs::fsck::check;
use arborfs::fs::{Caller, Fs, FsError, FsOptions, InodeNo, ROOT_INO, S_IFREG};
use arborfs::sb::FormatOptions;

fn opts() -> FsOptions {
    FsOptions {
        engine: EngineOptions {
            background: true,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn fsck_clean(fs: &Fs) {
    let r = check(fs, false, &mut |_| {}).unwrap();
    assert!(r.is_clean(), "fsck: {:?}", r.problems);
}

#[test]
fn fill_to_enospc_delete_half_write_again() {
    let dev = Arc::new(MemDevice::new(256 << 20));
    Fs::format(dev.clone(), &FormatOptions::default()).unwrap();
    let fs = Fs::open(dev.clone() as Arc<dyn Device>, opts()).unwrap();
    let me = Caller::root();
    let sizes = [1usize << 10, 17 << 10, 300 << 10, 2 << 20, 5 << 20];
    let mut files: Vec<(InodeNo, Vec<u8>, String)> = Vec::new();
    let mut full = 0;
    'fill: for i in 0u32.. {
        let name = format!("f{i}");
        let ino = match fs.mknod(&me, ROOT_INO, name.as_bytes(), S_IFREG | 0o644, 0) {
            Ok(a) => a.ino,
            Err(FsError::NoSpace) => break 'fill,
            Err(e) => panic!("create failed with {e:?}, not ENOSPC"),
        };
        let len = sizes[i as usize % sizes.len()];
        let data: Vec<u8> = (0..len)
            .map(|j| (j as u32 ^ i.wrapping_mul(2654435761)) as u8)
            .collect();
        let mut off = 0;
        while off < len {
            let n = (len - off).min(1 << 20);
            match fs.write(&me, ino, off as u64, &data[off..off + n]) {
                Ok(w) => off += w,
                Err(FsError::NoSpace) => {
                    full += 1;
                    break;
                }
                Err(e) => panic!("write failed with {e:?}, not ENOSPC"),
            }
        }
        files.push((ino, data[..off].to_vec(), name));
        if full >= 3 {
            break;
        }
        assert!(i < 100_000, "never ran out of space");
    }
    assert!(full > 0, "never hit ENOSPC");
    let st = fs.statfs();
    assert!(
        st.bavail * 4096 < 8 << 20,
        "statfs says {} bytes free on a full filesystem",
        st.bavail * 4096
    );
    // Every byte written before ENOSPC reads back.
    for (ino, data, _) in &files {
        let mut buf = vec![0u8; data.len()];
        assert_eq!(fs.read(*ino, 0, &mut buf).unwrap(), data.len());
        assert!(buf == *data);
    }
    fsck_clean(&fs);
    // Deletes work on a full filesystem.
    let mut kept = Vec::new();
    for (k, (ino, data, name)) in files.into_iter().enumerate() {
        if k % 2 == 0 {
            fs.unlink(&me, ROOT_INO, name.as_bytes()).unwrap();
        } else {
            kept.push((ino, data));
        }
    }
    fs.sync().unwrap();
    // Writing works again.
    let ino = fs
        .mknod(&me, ROOT_INO, b"after", S_IFREG | 0o644, 0)
        .unwrap()
        .ino;
    let data = vec![0x5au8; 8 << 20];
    assert_eq!(fs.write(&me, ino, 0, &data).unwrap(), data.len());
    fsck_clean(&fs);
    fs.close().unwrap();
    let fs = Fs::open(dev as Arc<dyn Device>, opts()).unwrap();
    for (ino, data) in &kept {
        let mut buf = vec![0u8; data.len()];
        assert_eq!(fs.read(*ino, 0, &mut buf).unwrap(), data.len());
        assert!(buf == *data);
    }
    fsck_clean(&fs);
    fs.close().unwrap();
}
