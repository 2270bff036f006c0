//! Copies a host directory tree into an ArborFS image and back out again,
//! through the library API alone (no FUSE, no kernel module).
//!
//! `cargo run --example copy_dir -- SRC_DIR IMAGE DEST_DIR`
//!
//! IMAGE is created (1 GiB, sparse) and formatted if it does not exist.
//! Regular files, directories, symlinks, permission bits, modification
//! times and `user.*` xattrs are copied; `diff -r SRC_DIR DEST_DIR` should
//! then print nothing.

use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use arborfs::fs::{FileKind, Fs, FsOptions, Timespec};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn copy_in(fs: &Fs, host: &Path, inside: &Path) -> Res<u64> {
    let mut n = 0;
    for entry in std::fs::read_dir(host)? {
        let entry = entry?;
        let hp = entry.path();
        let ip = inside.join(entry.file_name());
        let md = std::fs::symlink_metadata(&hp)?;
        let ft = md.file_type();
        if ft.is_dir() {
            fs.create_dir(&ip, md.mode() & 0o7777)?;
            n += copy_in(fs, &hp, &ip)?;
        } else if ft.is_symlink() {
            fs.symlink_path(std::fs::read_link(&hp)?, &ip)?;
        } else if ft.is_file() {
            let mut src = std::fs::File::open(&hp)?;
            let mut dst = fs.create_file(&ip)?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let k = src.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                dst.write_all(&buf[..k])?;
            }
            fs.set_permissions(&ip, md.mode() & 0o7777)?;
        } else {
            continue;
        }
        if !ft.is_symlink()
            && let Ok(names) = xattr_names(&hp)
        {
            for name in names.iter().filter(|n| n.starts_with(b"user.")) {
                if let Some(v) = get_host_xattr(&hp, name) {
                    fs.set_xattr(&ip, name, &v)?;
                }
            }
        }
        let mtime = Timespec {
            sec: md.mtime(),
            nsec: md.mtime_nsec() as u32,
        };
        let atime = Timespec {
            sec: md.atime(),
            nsec: md.atime_nsec() as u32,
        };
        fs.set_times(&ip, atime, mtime)?;
        n += 1;
    }
    Ok(n)
}

fn copy_out(fs: &Fs, inside: &Path, host: &Path) -> Res<()> {
    for e in fs.read_dir(inside)? {
        let e = e?;
        let name = std::ffi::OsStr::from_bytes(&e.name);
        let ip = inside.join(name);
        let hp = host.join(name);
        let attr = fs.symlink_metadata(&ip)?;
        match attr.kind {
            FileKind::Directory => {
                std::fs::create_dir(&hp)?;
                copy_out(fs, &ip, &hp)?;
                std::fs::set_permissions(&hp, std::fs::Permissions::from_mode(attr.perm))?;
            }
            FileKind::Symlink => {
                let t = fs.read_link(&ip)?;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&t), &hp)?;
            }
            FileKind::Regular => {
                let mut src = fs.open_file(&ip)?;
                let mut dst = std::fs::File::create(&hp)?;
                std::io::copy(&mut src, &mut dst)?;
                std::fs::set_permissions(&hp, std::fs::Permissions::from_mode(attr.perm))?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn xattr_names(p: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let out = std::process::Command::new("getfattr")
        .arg("--absolute-names")
        .arg("-d")
        .arg(p)
        .output();
    // getfattr is optional: without it, xattrs are simply not copied.
    let Ok(out) = out else { return Ok(Vec::new()) };
    Ok(out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"user."))
        .filter_map(|l| l.split(|&b| b == b'=').next().map(|n| n.to_vec()))
        .collect())
}

fn get_host_xattr(p: &Path, name: &[u8]) -> Option<Vec<u8>> {
    let out = std::process::Command::new("getfattr")
        .args(["--absolute-names", "--only-values", "-n"])
        .arg(std::ffi::OsStr::from_bytes(name))
        .arg(p)
        .output()
        .ok()?;
    out.status.success().then_some(out.stdout)
}

fn main() -> Res<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [src, image, dest] = &args[..] else {
        eprintln!("usage: copy_dir SRC_DIR IMAGE DEST_DIR");
        std::process::exit(2);
    };
    let fs = Fs::open_image(image, 1 << 30, FsOptions::default())?;
    fs.create_dir_all("/copy")?;
    let n = copy_in(&fs, src, Path::new("/copy"))?;
    fs.close()?;
    // Reopen to show everything came from the image, not from memory.
    let fs = Fs::open_image(image, 0, FsOptions::default())?;
    std::fs::create_dir_all(dest)?;
    copy_out(&fs, Path::new("/copy"), dest)?;
    let s = fs.statfs();
    fs.close()?;
    println!(
        "copied {n} entries in and out; {} of {} blocks free",
        s.bfree, s.blocks
    );
    Ok(())
}
