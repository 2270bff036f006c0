//! Creates N empty files (in directories of 1000) in an image, for
//! measuring fsck and mount time on a large filesystem.
//!
//! `cargo run --release --example fill_inodes -- IMAGE N`

use arborfs::fs::{Caller, Fs, FsOptions, ROOT_INO, S_IFREG};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [image, n] = &args[..] else {
        eprintln!("usage: fill_inodes IMAGE N");
        std::process::exit(2);
    };
    let n: u64 = n.parse()?;
    let fs = Fs::open_image(image, 8 << 30, FsOptions::default())?;
    let me = Caller::root();
    let t = std::time::Instant::now();
    let mut dir = ROOT_INO;
    for i in 0..n {
        if i % 1000 == 0 {
            dir = fs
                .mkdir(&me, ROOT_INO, format!("d{}", i / 1000).as_bytes(), 0o755)?
                .ino;
        }
        fs.mknod(&me, dir, format!("f{i}").as_bytes(), S_IFREG | 0o644, 0)?;
    }
    fs.close()?;
    println!("created {n} files in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}
