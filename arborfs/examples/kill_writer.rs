//! Appends to files and fsyncs, printing `ACK name len` after each fsync;
//! meant to be killed with SIGKILL at a random moment (crash testing).
//!
//! `kill_writer IMAGE SEED` — or `kill_writer --check IMAGE` to print each
//! file's length after recovery.

use std::io::Write;

use arborfs::fs::{Caller, Fs, FsOptions, ROOT_INO, S_IFREG};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args[0] == "--check" {
        let fs = Fs::open_image(&args[1], 256 << 20, FsOptions::default()).unwrap();
        for e in fs.read_dir("/").unwrap() {
            let e = e.unwrap();
            let a = fs.getattr(e.ino).unwrap();
            println!("{} {}", String::from_utf8_lossy(&e.name), a.size);
        }
        fs.close().unwrap();
        return;
    }
    let fs = Fs::open_image(&args[0], 256 << 20, FsOptions::default()).unwrap();
    let mut seed: u64 = args[1].parse().unwrap();
    let me = Caller::root();
    let out = std::io::stdout();
    loop {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let name = format!("w{:02}", seed % 20);
        let ino = match fs.lookup(&me, ROOT_INO, name.as_bytes()) {
            Ok(a) => a.ino,
            Err(_) => {
                fs.mknod(&me, ROOT_INO, name.as_bytes(), S_IFREG | 0o644, 0)
                    .unwrap()
                    .ino
            }
        };
        let size = fs.getattr(ino).unwrap().size;
        if size > 1 << 20 {
            continue;
        }
        let len = 1 + (seed >> 20) as usize % 20000;
        fs.write(&me, ino, size, &vec![(seed & 0xff) as u8; len])
            .unwrap();
        fs.fsync(ino, false).unwrap();
        writeln!(out.lock(), "ACK {name} {}", size + len as u64).unwrap();
    }
}
