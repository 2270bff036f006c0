//! `arborfs`: format, inspect and mount ArborFS images.
//!
//! Also a multi-call binary: named `mount.fuse.arborfs` it is mount(8)'s
//! helper for `-t fuse.arborfs`, `mkfs.arborfs` is `arborfs format` and
//! `fsck.arborfs` is fsck(8)'s helper.

mod fsck_cmd;
mod fuse;
mod mount_cmd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arborfs::alloc::alloc_format::{AllocValue, Counter, decode_counters};
use arborfs::alloc::extent_format::ExtentValue;
use arborfs::device::{Device, FileDevice};
use arborfs::fs::Fs;
use arborfs::sb::{ChecksumType, CompressionType, FormatOptions, Superblock};
use arborfs::{BtreeId, Engine, EngineOptions, Key, KeyType, Pos};
use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "arborfs",
    version,
    about = "ArborFS: a copy-on-write filesystem after bcachefs"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check an unmounted filesystem and, with -y, repair it. Exit codes as
    /// e2fsck: 0 clean, 1 repaired, 4 errors left, 8 operational error.
    Fsck {
        /// Check only; change nothing (the default).
        #[arg(short = 'n', conflicts_with = "yes")]
        no: bool,
        /// Repair everything found.
        #[arg(short = 'y', visible_short_aliases = ['p', 'a'])]
        yes: bool,
        /// Print a JSON summary instead of text.
        #[arg(long)]
        json: bool,
        /// Also read every unit of file data and verify its checksum (an
        /// offline scrub; damaged data is reported, not repaired).
        #[arg(long)]
        check_data: bool,
        image: PathBuf,
    },
    /// Create a new filesystem on an image file (created if missing) or block device.
    Format {
        /// Size of the image, e.g. 1G, 512M, 1073741824 (default 1G for a new file).
        #[arg(long)]
        size: Option<String>,
        /// Overwrite an existing ArborFS filesystem.
        #[arg(long)]
        force: bool,
        /// Checksum for file data.
        #[arg(long, default_value = "crc32c")]
        checksum: ChecksumType,
        /// Compression for file data.
        #[arg(long, default_value = "none")]
        compression: CompressionType,
        /// Bucket size, e.g. 1M (a power of two, at least 64K). Default:
        /// 1M, smaller on devices under 512 MiB (at least 512 buckets, 128K
        /// or more).
        #[arg(long)]
        bucket_size: Option<String>,
        /// B-tree node size, e.g. 256K (a power of two, 16K to 1M, at most
        /// the bucket size). Default: 256K, or half a bucket if that is less.
        #[arg(long)]
        node_size: Option<String>,
        image: PathBuf,
    },
    /// Mount an image with FUSE (formatting it first if it is missing or empty).
    Mount {
        /// Stay in the foreground instead of daemonizing.
        #[arg(short = 'f', long)]
        foreground: bool,
        /// Mount options: ro, rw, allow_other, noatime, nodev, nosuid, noexec,
        /// size=SIZE (of a new image, default 1G), remount,
        /// compression=none|lz4|zstd[:LEVEL] (files without their own
        /// option; default: the image's), cache_size=SIZE (page cache,
        /// default 64M), readahead=SIZE (kernel readahead, default 4M; root),
        /// and the generic mount(8) options, which are ignored.
        #[arg(short = 'o', default_value = "")]
        options: Vec<String>,
        image: PathBuf,
        mountpoint: PathBuf,
    },
    /// Unmount and wait until the daemon has closed the image cleanly.
    Umount { mountpoint: PathBuf },
    /// Write back and make durable everything on a mounted filesystem
    /// (sync(1) and syncfs(2) do not reach a FUSE daemon).
    Sync { mountpoint: PathBuf },
    /// Give the space of free buckets back to the storage: holes in an image
    /// file, discards on a block device (like fstrim). Root on a mount.
    Trim {
        /// A mount point, or an unmounted image.
        path: PathBuf,
    },
    /// Show capacity, data, metadata and free space of an image or mount.
    Usage {
        #[arg(long)]
        json: bool,
        /// An image file or the mount point of a mounted one.
        path: PathBuf,
    },
    /// Print the superblock.
    ShowSuper {
        #[arg(long)]
        json: bool,
        image: PathBuf,
    },
    /// Print the keys of one b-tree, one per line.
    List {
        /// extents, inodes, dirents, xattrs, reflink, subvolumes, snapshots, alloc or freespace.
        #[arg(long)]
        btree: String,
        /// First position, inode:offset:snapshot.
        #[arg(long, default_value = "0:0:0")]
        start: Pos,
        /// Last position, inode:offset:snapshot.
        #[arg(long, default_value = "max:max:max")]
        end: Pos,
        #[arg(long)]
        json: bool,
        image: PathBuf,
    },
    /// Print every valid journal entry of an image (its header, whether a
    /// crash replay would apply it, and its items)
    ListJournal {
        /// Print the items of each entry, not only the headers.
        #[arg(long)]
        items: bool,
        image: PathBuf,
    },
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let argv0 = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match argv0.as_str() {
        "mount.fuse.arborfs" => return report(mount_helper(&args[1..])),
        "mkfs.arborfs" => {
            let mut v: Vec<std::ffi::OsString> = vec!["mkfs.arborfs".into(), "format".into()];
            v.extend(args[1..].iter().cloned());
            return run(Cli::parse_from(v));
        }
        "fsck.arborfs" => {
            let mut v: Vec<std::ffi::OsString> = vec!["fsck.arborfs".into(), "fsck".into()];
            v.extend(args[1..].iter().cloned());
            return run(Cli::parse_from(v));
        }
        _ => {}
    }
    run(Cli::parse())
}

fn report(r: Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("arborfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// mount(8) runs `mount.fuse.arborfs SOURCE TARGET [-n] [-s] [-f] [-v] [-o OPTS]`.
fn mount_helper(args: &[std::ffi::OsString]) -> Result<()> {
    let mut pos = Vec::new();
    let mut opts = Vec::new();
    let mut fake = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-o") => opts.push(
                it.next()
                    .context("-o needs an argument")?
                    .to_str()
                    .context("mount options must be UTF-8")?
                    .to_string(),
            ),
            Some(o) if o.starts_with("-o") => opts.push(o[2..].to_string()),
            // -f is mount(8)'s "fake": do everything but the mount.
            Some("-f") => fake = true,
            Some("-n" | "-s" | "-v") => {}
            Some(o) if o.starts_with('-') && o.len() > 1 => bail!("unknown option {o}"),
            _ => pos.push(PathBuf::from(a)),
        }
    }
    let [image, mountpoint] = pos.as_slice() else {
        bail!("usage: mount.fuse.arborfs IMAGE MOUNTPOINT [-o OPTIONS]");
    };
    if fake {
        return Ok(());
    }
    mount_cmd::cmd_mount(image, mountpoint, &opts.join(","), false)
}

fn run(cli: Cli) -> ExitCode {
    let r = match cli.cmd {
        Cmd::Fsck {
            no: _,
            yes,
            json,
            check_data,
            image,
        } => {
            return ExitCode::from(fsck_cmd::run(&image, yes, check_data, json) as u8);
        }
        Cmd::Format {
            size,
            force,
            checksum,
            compression,
            bucket_size,
            node_size,
            image,
        } => format(
            &image,
            size.as_deref(),
            force,
            checksum,
            compression,
            bucket_size.as_deref(),
            node_size.as_deref(),
        ),
        Cmd::Mount {
            foreground,
            options,
            image,
            mountpoint,
        } => mount_cmd::cmd_mount(&image, &mountpoint, &options.join(","), foreground),
        Cmd::Umount { mountpoint } => mount_cmd::cmd_umount(&mountpoint),
        Cmd::Sync { mountpoint } => mount_cmd::cmd_sync(&mountpoint),
        Cmd::Trim { path } => mount_cmd::cmd_trim(&path),
        Cmd::Usage { json, path } => mount_cmd::cmd_usage(&path, json),
        Cmd::ShowSuper { json, image } => show_super(&image, json),
        Cmd::List {
            btree,
            start,
            end,
            json,
            image,
        } => list(&image, &btree, start, end, json),
        Cmd::ListJournal { items, image } => list_journal(&image, items),
    };
    report(r)
}

/// Parses sizes like `4096`, `64K`, `1M`, `2G`, `1GiB`, `1T`.
pub(crate) fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    let n: u64 = digits.parse().with_context(|| format!("bad size {s:?}"))?;
    let mult: u64 = match unit {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => bail!("bad size unit in {s:?} (use K, M, G or T)"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("size {s:?} is too large"))
}

fn open_dev(image: &Path, writable: bool) -> Result<Arc<dyn Device>> {
    let dev = FileDevice::open(image, writable)
        .with_context(|| format!("cannot open {}", image.display()))?;
    Ok(Arc::new(dev))
}

fn format(
    image: &Path,
    size: Option<&str>,
    force: bool,
    checksum: ChecksumType,
    compression: CompressionType,
    bucket_size: Option<&str>,
    node_size: Option<&str>,
) -> Result<()> {
    let size = size.map(parse_size).transpose()?;
    let exists = image.exists();
    if exists && !force {
        let dev = open_dev(image, false)?;
        if dev.size() > 0 && Superblock::read(&*dev).is_ok() {
            bail!(
                "{} already holds an ArborFS filesystem; use --force to overwrite it",
                image.display()
            );
        }
    }
    let dev: Arc<dyn Device> = if !exists || std::fs::metadata(image)?.is_file() {
        let cur = if exists {
            std::fs::metadata(image)?.len()
        } else {
            0
        };
        let want = size.unwrap_or(if exists { cur } else { 1 << 30 });
        if want == 0 {
            bail!("{} is empty; give --size", image.display());
        }
        if cur > want {
            std::fs::OpenOptions::new()
                .write(true)
                .open(image)?
                .set_len(want)?;
        }
        Arc::new(FileDevice::create(image, want)?)
    } else {
        open_dev(image, true)?
    };
    let auto = FormatOptions::for_device(dev.size());
    let size_arg = |s: Option<&str>, what: &str| -> Result<Option<u32>> {
        s.map(|s| {
            parse_size(s)?
                .try_into()
                .with_context(|| format!("{what} too large"))
        })
        .transpose()
    };
    let (bucket_arg, node_arg) = (
        size_arg(bucket_size, "bucket size")?,
        size_arg(node_size, "node size")?,
    );
    // What was not given follows what was: a chosen node size gets buckets
    // at least that large, a chosen bucket size nodes no larger.
    let bucket_size = bucket_arg.unwrap_or(match node_arg {
        Some(n) => auto.bucket_size.max(n),
        None => auto.bucket_size,
    });
    let node_size = node_arg.unwrap_or(auto.node_size.min(bucket_size));
    let opts = FormatOptions {
        bucket_size,
        node_size,
        data_checksum: checksum,
        compression,
        ..auto
    };
    // The filesystem layer's format also creates the root directory.
    let sb =
        Fs::format(dev, &opts).with_context(|| format!("cannot format {}", image.display()))?;
    println!(
        "formatted {}: {} bytes, {} buckets of {} bytes, uuid {}",
        image.display(),
        sb.device_size,
        sb.nbuckets,
        sb.bucket_size,
        uuid_str(&sb.uuid)
    );
    Ok(())
}

fn uuid_str(u: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*u).hyphenated().to_string()
}

fn show_super(image: &Path, as_json: bool) -> Result<()> {
    let dev = open_dev(image, false)?;
    let (sb, report) = Superblock::read(&*dev)
        .with_context(|| format!("cannot read the superblock of {}", image.display()))?;
    let roots: Vec<_> = BtreeId::ALL
        .iter()
        .map(|b| {
            let r = sb.clean.as_ref().and_then(|c| c.roots[b.index()]);
            json!({"btree": b.name(), "root": r.map(|p| json!({"offset": p.offset, "seq": p.seq, "sectors": p.sectors, "level": p.level}))})
        })
        .collect();
    let v = json!({
        "magic_ok": true,
        "version": sb.version,
        "uuid": uuid_str(&sb.uuid),
        "device_size": sb.device_size,
        "block_size": sb.block_size,
        "bucket_size": sb.bucket_size,
        "node_size": sb.node_size,
        "nbuckets": sb.nbuckets,
        "journal_first_bucket": sb.journal_first_bucket,
        "journal_nbuckets": sb.journal_nbuckets,
        "data_checksum": sb.data_checksum.to_string(),
        "compression": sb.compression.to_string(),
        "compression_level": sb.compression_level,
        "seq": sb.seq,
        "clean": sb.clean.is_some(),
        "journal_next_seq": sb.clean.as_ref().map(|c| c.journal_next_seq),
        "roots": roots,
        "copies": report.to_string(),
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("ArborFS superblock of {}", image.display());
    println!("  format version:    {}", sb.version);
    println!("  uuid:              {}", uuid_str(&sb.uuid));
    println!("  device size:       {} bytes", sb.device_size);
    println!("  block size:        {}", sb.block_size);
    println!("  bucket size:       {}", sb.bucket_size);
    println!("  node size:         {}", sb.node_size);
    println!("  buckets:           {}", sb.nbuckets);
    println!(
        "  journal:           buckets {}..{}",
        sb.journal_first_bucket,
        sb.journal_first_bucket + sb.journal_nbuckets
    );
    println!("  data checksum:     {}", sb.data_checksum);
    println!(
        "  compression:       {} (level {})",
        sb.compression, sb.compression_level
    );
    println!("  superblock seq:    {}", sb.seq);
    println!(
        "  state:             {}",
        if sb.clean.is_some() {
            "clean"
        } else {
            "not clean (journal replay on next open)"
        }
    );
    println!("  copies:            {report}");
    Ok(())
}

fn describe(key: &Key) -> serde_json::Value {
    match key.ty {
        KeyType::Alloc => match AllocValue::decode(&key.value) {
            Some(a) => {
                json!({"gen": a.generation, "data_type": a.data_type.name(), "dirty_sectors": a.dirty_sectors})
            }
            None => json!({"invalid": true}),
        },
        KeyType::Accounting => match decode_counters(&key.value) {
            Some(c) => json!({
                "user_sectors": c[Counter::UserSectors as usize],
                "btree_sectors": c[Counter::BtreeSectors as usize],
                "free_buckets": c[Counter::FreeBuckets as usize],
                "uncompressed_sectors": c[Counter::UncompressedSectors as usize],
            }),
            None => json!({"invalid": true}),
        },
        KeyType::Extent => match ExtentValue::decode(&key.value) {
            Some(e) => json!({
                "ptrs": e.ptrs.iter().map(|p| json!({"sector": p.dev_sector, "gen": p.generation})).collect::<Vec<_>>(),
                "offset": e.offset, "stored_sectors": e.stored_sectors, "csum_type": e.csum_type,
                "compression": e.compression, "csum": format!("{:#x}", e.csum),
            }),
            None => json!({"invalid": true}),
        },
        KeyType::Free | KeyType::Whiteout | KeyType::Deleted => json!(null),
        _ => json!({"bytes": key.value.len(), "hex": hex_prefix(&key.value)}),
    }
}

fn hex_prefix(b: &[u8]) -> String {
    let mut s: String = b.iter().take(32).map(|x| format!("{x:02x}")).collect();
    if b.len() > 32 {
        s.push_str("...");
    }
    s
}

fn list(image: &Path, btree: &str, start: Pos, end: Pos, as_json: bool) -> Result<()> {
    let id = BtreeId::from_name(btree).with_context(|| {
        let names: Vec<_> = BtreeId::ALL.iter().map(|b| b.name()).collect();
        format!("unknown btree {btree:?}; one of: {}", names.join(", "))
    })?;
    let dev = open_dev(image, false)?;
    let engine = Engine::open(dev, EngineOptions::inspect())
        .with_context(|| format!("cannot open {}", image.display()))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    use std::io::Write;
    for k in engine.iter(id, start, end) {
        let k = k?;
        let v = describe(&k);
        if as_json {
            let line =
                json!({"pos": k.pos.to_string(), "type": k.ty.name(), "size": k.size, "value": v});
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{} {} size {} {}", k.pos, k.ty.name(), k.size, v)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn list_journal(image: &Path, with_items: bool) -> Result<()> {
    let dev = open_dev(image, false)?;
    let entries = arborfs::engine::scan_journal(dev.as_ref())
        .with_context(|| format!("cannot read the journal of {}", image.display()))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    use std::io::Write;
    for e in &entries {
        let h = &e.header;
        writeln!(
            out,
            "seq {} prev {} last_seq {} offset {} items {}{}",
            h.seq,
            h.prev_seq,
            h.last_seq,
            h.offset,
            h.item_count,
            if e.in_replay_chain { " replay" } else { "" }
        )?;
        if with_items {
            for it in &e.items {
                match it {
                    arborfs::journal::JournalItem::Put { btree, key } => writeln!(
                        out,
                        "  put {} {} {} size {} {}",
                        btree.name(),
                        key.pos,
                        key.ty.name(),
                        key.size,
                        describe(key)
                    )?,
                    arborfs::journal::JournalItem::Delete { btree, pos } => {
                        writeln!(out, "  delete {} {pos}", btree.name())?
                    }
                    arborfs::journal::JournalItem::Root { btree, ptr } => {
                        writeln!(out, "  root {} {ptr:?}", btree.name())?
                    }
                }
            }
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
