//! fsck finds nothing on a healthy filesystem, and finds and repairs each
//! class of damage (a second run is then clean).

mod common;

use std::sync::Arc;

use arborfs::alloc::alloc_format::AllocValue;
use arborfs::device::{Device, MemDevice};
use arborfs::engine::EngineOptions;
use arborfs::fs::fsck::{check, check_device};
use arborfs::fs::{Caller, Fs, FsOptions, InodeNo, ROOT_INO, S_IFREG};
use arborfs::sb::FormatOptions;
use arborfs::{BtreeId, Durability, Key, KeyType, Pos};

use common::fs_opts as opts;

/// A fresh 64 MiB filesystem in memory with b-tree nodes of `node_size`.
fn new_fs(node_size: u32) -> (Arc<MemDevice>, Fs) {
    let dev = Arc::new(MemDevice::new(64 << 20));
    Fs::format(
        dev.clone(),
        &FormatOptions {
            bucket_size: 256 << 10,
            node_size,
            ..Default::default()
        },
    )
    .unwrap();
    let fs = Fs::open(dev.clone() as Arc<dyn Device>, opts()).unwrap();
    (dev, fs)
}

/// A filesystem with directories, files with data, a symlink and a hard link.
fn populated() -> (Arc<MemDevice>, InodeNo, InodeNo) {
    let (dev, fs) = new_fs(64 << 10);
    let me = Caller::root();
    let d = fs.mkdir(&me, ROOT_INO, b"dir", 0o755).unwrap().ino;
    let mut last = ROOT_INO;
    for i in 0..50u32 {
        let f = fs
            .mknod(&me, d, format!("file{i}").as_bytes(), S_IFREG | 0o644, 0)
            .unwrap()
            .ino;
        fs.write(&me, f, 0, &vec![i as u8; 5000 + i as usize * 300])
            .unwrap();
        last = f;
    }
    fs.symlink(&me, ROOT_INO, b"link", b"dir/file1").unwrap();
    fs.mkdir(&me, d, b"sub", 0o700).unwrap();
    fs.close().unwrap();
    (dev, d, last)
}

fn fsck(dev: &Arc<MemDevice>, repair: bool) -> arborfs::fs::fsck::FsckReport {
    let fs = Fs::open(dev.clone() as Arc<dyn Device>, opts()).unwrap();
    let r = check(&fs, repair, &mut |_| {}).unwrap();
    fs.close().unwrap();
    r
}

fn damage(dev: &Arc<MemDevice>, f: impl Fn(&Fs)) {
    let fs = Fs::open(dev.clone() as Arc<dyn Device>, opts()).unwrap();
    f(&fs);
    fs.close().unwrap();
}

fn assert_repairs(dev: &Arc<MemDevice>, what: &str) {
    let r = fsck(dev, false);
    assert!(!r.is_clean(), "{what}: fsck -n found nothing");
    let r = fsck(dev, true);
    assert!(
        r.repaired > 0 && r.unrepaired == 0,
        "{what}: {:?}",
        r.problems
    );
    let r = fsck(dev, false);
    assert!(
        r.is_clean(),
        "{what}: still damaged after repair: {:?}",
        r.problems
    );
}

#[test]
fn healthy_filesystem_is_clean() {
    let (dev, _, _) = populated();
    let r = fsck(&dev, false);
    assert!(r.is_clean(), "{:?}", r.problems);
    assert!(
        r.inodes >= 53 && r.dirents >= 53 && r.extents >= 50 && r.nodes >= 9,
        "{r:?}"
    );
}

#[test]
fn dangling_dirent_is_removed() {
    let (dev, _, f) = populated();
    damage(&dev, |fs| {
        fs.engine()
            .transact(Durability::Lazy, |tx| {
                tx.delete(BtreeId::Inodes, Pos::new(0, f.0, u32::MAX));
                Ok(())
            })
            .unwrap();
    });
    assert_repairs(&dev, "dangling dirent");
}

#[test]
fn wrong_link_count_is_fixed() {
    let (dev, d, _) = populated();
    damage(&dev, |fs| {
        let k = fs
            .engine()
            .get(BtreeId::Inodes, Pos::new(0, d.0, u32::MAX))
            .unwrap()
            .unwrap();
        let mut v = arborfs::fs::inode_format::InodeValue::decode(&k.value).unwrap();
        v.nlink = 7;
        fs.engine()
            .transact(Durability::Lazy, |tx| {
                tx.put(BtreeId::Inodes, Key::new(k.pos, KeyType::Inode, v.encode()));
                Ok(())
            })
            .unwrap();
    });
    assert_repairs(&dev, "nlink");
}

#[test]
fn wrong_alloc_key_is_fixed() {
    let (dev, _, _) = populated();
    damage(&dev, |fs| {
        let e = fs.engine();
        let k = e
            .iter(
                BtreeId::Alloc,
                Pos::new(0, 0, 0),
                Pos::new(0, u64::MAX, u32::MAX),
            )
            .map(|k| k.unwrap())
            .find(|k| {
                AllocValue::decode(&k.value)
                    .is_some_and(|v| v.data_type == arborfs::alloc::alloc_format::DataType::User)
            })
            .unwrap();
        let mut v = AllocValue::decode(&k.value).unwrap();
        v.dirty_sectors += 13;
        e.transact(Durability::Lazy, |tx| {
            tx.put(BtreeId::Alloc, Key::new(k.pos, KeyType::Alloc, v.encode()));
            Ok(())
        })
        .unwrap();
    });
    assert_repairs(&dev, "alloc");
}

/// The first extent key of file `f`.
fn first_extent(fs: &Fs, f: InodeNo) -> Key {
    fs.engine()
        .iter(
            BtreeId::Extents,
            Pos::new(f.0, 0, 0),
            Pos::new(f.0, u64::MAX, u32::MAX),
        )
        .next()
        .expect("an extent of the file")
        .unwrap()
}

#[test]
fn extent_past_end_of_file_is_dropped() {
    let (dev, _, f) = populated();
    damage(&dev, |fs| {
        let k = first_extent(fs, f);
        let mut far = k.clone();
        far.pos.offset += 1 << 20;
        fs.engine()
            .transact(Durability::Lazy, |tx| {
                tx.put(
                    BtreeId::Extents,
                    Key {
                        ty: KeyType::Extent,
                        ..far.clone()
                    },
                );
                Ok(())
            })
            .unwrap();
    });
    assert_repairs(&dev, "extent past EOF");
}

/// fallocate with KEEP_SIZE leaves zero-filled space past the end of the
/// file on purpose: fsck accepts it (and still drops real data there, see
/// `extent_past_end_of_file_is_dropped`).
#[test]
fn preallocation_past_end_of_file_is_clean() {
    let (dev, _, f) = populated();
    damage(&dev, |fs| {
        let size = fs.getattr(f).unwrap().size;
        fs.fallocate(
            &Caller::root(),
            f,
            size + 8192,
            256 << 10,
            arborfs::fs::FallocFlags {
                keep_size: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(fs.getattr(f).unwrap().size, size);
    });
    let r = fsck(&dev, false);
    assert!(r.is_clean(), "{:?}", r.problems);
}

#[test]
fn unreachable_inode_goes_to_lost_and_found() {
    let (dev, d, f) = populated();
    damage(&dev, |fs| {
        // Drop the file's only directory entry, keep the inode.
        let e = fs.engine();
        let k = e
            .iter(
                BtreeId::Dirents,
                Pos::new(d.0, 0, 0),
                Pos::new(d.0, u64::MAX, u32::MAX),
            )
            .map(|k| k.unwrap())
            .find(|k| {
                arborfs::fs::dirent_format::DirentValue::decode(&k.value)
                    .is_some_and(|v| v.target == f.0)
            })
            .unwrap();
        e.transact(Durability::Lazy, |tx| {
            tx.delete(BtreeId::Dirents, k.pos);
            Ok(())
        })
        .unwrap();
    });
    assert_repairs(&dev, "unreachable inode");
    let fs = Fs::open(dev.clone() as Arc<dyn Device>, opts()).unwrap();
    let me = Caller::root();
    let lf = fs.lookup(&me, ROOT_INO, b"lost+found").unwrap().ino;
    let found = fs.lookup(&me, lf, format!("#{}", f.0).as_bytes()).unwrap();
    assert_eq!(found.ino, f);
    assert_eq!(found.size, 5000 + 49 * 300, "data kept");
    fs.close().unwrap();
}

#[test]
fn wrong_dirent_type_is_fixed() {
    let (dev, d, _) = populated();
    damage(&dev, |fs| {
        let e = fs.engine();
        let k = e
            .iter(
                BtreeId::Dirents,
                Pos::new(d.0, 0, 0),
                Pos::new(d.0, u64::MAX, u32::MAX),
            )
            .next()
            .unwrap()
            .unwrap();
        let mut v = arborfs::fs::dirent_format::DirentValue::decode(&k.value).unwrap();
        v.d_type = 12; // socket
        e.transact(Durability::Lazy, |tx| {
            tx.put(
                BtreeId::Dirents,
                Key::new(k.pos, KeyType::Dirent, v.encode()),
            );
            Ok(())
        })
        .unwrap();
    });
    assert_repairs(&dev, "d_type");
}

#[test]
fn freespace_and_accounting_mismatches_are_fixed() {
    let (dev, _, _) = populated();
    damage(&dev, |fs| {
        let e = fs.engine();
        let free = e
            .iter(BtreeId::Freespace, Pos::MIN, Pos::MAX)
            .nth(5)
            .unwrap()
            .unwrap();
        let used = e
            .iter(
                BtreeId::Alloc,
                Pos::new(0, 0, 0),
                Pos::new(0, u64::MAX, u32::MAX),
            )
            .map(|k| k.unwrap())
            .find(|k| {
                AllocValue::decode(&k.value)
                    .is_some_and(|v| v.data_type == arborfs::alloc::alloc_format::DataType::User)
            })
            .unwrap();
        e.transact(Durability::Lazy, |tx| {
            // A free bucket missing from the index, a used one listed as free.
            tx.delete(BtreeId::Freespace, free.pos);
            tx.put(
                BtreeId::Freespace,
                Key::new(used.pos, KeyType::Free, Vec::new()),
            );
            Ok(())
        })
        .unwrap();
    });
    assert_repairs(&dev, "freespace");
}

#[test]
fn stale_pointer_is_dropped() {
    let (dev, _, f) = populated();
    damage(&dev, |fs| {
        let e = fs.engine();
        let k = e
            .iter(
                BtreeId::Extents,
                Pos::new(f.0, 0, 0),
                Pos::new(f.0, u64::MAX, u32::MAX),
            )
            .next()
            .unwrap()
            .unwrap();
        let mut v = arborfs::alloc::extent_format::ExtentValue::decode(&k.value).unwrap();
        v.ptrs[0].generation = v.ptrs[0].generation.wrapping_add(3);
        e.transact(Durability::Lazy, |tx| {
            // Replace the value without the trigger seeing a new bucket.
            tx.put(
                BtreeId::Extents,
                Key {
                    value: v.encode(),
                    ..k.clone()
                },
            );
            Ok(())
        })
        .unwrap();
    });
    assert_repairs(&dev, "stale pointer");
}

#[test]
fn damaged_node_is_reported_not_a_panic() {
    let (dev, _, _) = populated();
    let (sb, _) = arborfs::sb::Superblock::read(&*dev).unwrap();
    let root = sb.clean.as_ref().unwrap().roots[BtreeId::Dirents.index()].unwrap();
    let mut img = dev.to_bytes();
    // Inside the first bset's header (after it may come padding, which no
    // checksum covers and no reader looks at).
    img[root.offset as usize + 40] ^= 0xff;
    let dev = Arc::new(MemDevice::from_bytes(img));
    // The CLI maps an error here to exit code 8 (or 4): never a panic.
    let r = Fs::open(dev as Arc<dyn Device>, opts()).and_then(|fs| check(&fs, false, &mut |_| {}));
    match r {
        Err(e) => assert!(e.to_string().contains("corrupted"), "{e}"),
        Ok(rep) => assert!(!rep.is_clean()),
    }
}

/// A leaf of the dirents tree damaged on disk: fsck -n reports it, fsck -y
/// replaces it by an empty node (those names are lost), the files it named
/// go to lost+found, and a second fsck is clean; every other file still
/// reads back.
#[test]
fn damaged_leaf_node_is_replaced_and_orphans_reconnected() {
    let (dev, fs) = new_fs(16 << 10);
    let me = Caller::root();
    let d = fs.mkdir(&me, ROOT_INO, b"d", 0o755).unwrap().ino;
    let mut files = Vec::new();
    for i in 0..600u32 {
        let name = format!("a-rather-long-file-name-to-fill-nodes-{i:05}");
        let f = fs
            .mknod(&me, d, name.as_bytes(), S_IFREG | 0o644, 0)
            .unwrap()
            .ino;
        fs.write(&me, f, 0, &i.to_le_bytes()).unwrap();
        files.push(f);
    }
    fs.close().unwrap();
    // Damage one leaf of the dirents tree (not the root: it has several).
    let mut leaf = None;
    {
        let fs = Fs::open(dev.clone() as Arc<dyn Device>, opts()).unwrap();
        fs.engine()
            .walk_nodes(&mut |b, p| {
                if b == BtreeId::Dirents && p.level == 0 && leaf.is_none() {
                    leaf = Some(p);
                }
            })
            .unwrap();
        fs.close().unwrap();
    }
    let leaf = leaf.expect("a dirents leaf");
    let mut img = dev.to_bytes();
    img[leaf.offset as usize + 100] ^= 0x5a;
    let dev = Arc::new(MemDevice::from_bytes(img));
    let r = check_device(
        dev.clone() as Arc<dyn Device>,
        ro_opts(),
        false,
        &mut |_| {},
    )
    .unwrap();
    assert!(r.unrepaired > 0, "fsck -n: {:?}", r.problems);
    let r = check_device(dev.clone() as Arc<dyn Device>, opts(), true, &mut |_| {}).unwrap();
    assert!(
        r.repaired > 0 && r.unrepaired == 0,
        "fsck -y: {:?}",
        r.problems
    );
    assert!(
        r.problems.iter().any(|p| p.contains("unreadable")),
        "{:?}",
        r.problems
    );
    let r = check_device(
        dev.clone() as Arc<dyn Device>,
        ro_opts(),
        false,
        &mut |_| {},
    )
    .unwrap();
    assert!(r.is_clean(), "after repair: {:?}", r.problems);
    // Every file is still there, by its name or in lost+found, with its data.
    let fs = Fs::open(dev.clone() as Arc<dyn Device>, opts()).unwrap();
    let lf = fs.lookup(&me, ROOT_INO, b"lost+found").map(|a| a.ino);
    let mut named = 0;
    for (i, f) in files.iter().enumerate() {
        let mut buf = [0u8; 4];
        fs.read(*f, 0, &mut buf).unwrap();
        assert_eq!(u32::from_le_bytes(buf), i as u32);
        let name = format!("a-rather-long-file-name-to-fill-nodes-{i:05}");
        if fs.lookup(&me, d, name.as_bytes()).is_ok() {
            named += 1;
        }
    }
    assert!(named < files.len(), "no name was lost?");
    assert!(lf.is_ok(), "orphans went to lost+found");
    fs.close().unwrap();
}

fn ro_opts() -> FsOptions {
    FsOptions {
        engine: EngineOptions::inspect(),
        ..Default::default()
    }
}

#[test]
fn bad_acls_and_stray_xattrs_are_removed() {
    use arborfs::fs::XattrSet;
    use arborfs::fs::xattr_format::{Namespace, XattrValue};
    let (dev, d, f) = populated();
    // A valid ACL (user 1000 rw) on f and a default ACL on d stay.
    let acl = |entries: &[(u16, u16, u32)]| {
        let mut b = 2u32.to_le_bytes().to_vec();
        for &(tag, perm, id) in entries {
            b.extend_from_slice(&tag.to_le_bytes());
            b.extend_from_slice(&perm.to_le_bytes());
            b.extend_from_slice(&id.to_le_bytes());
        }
        b
    };
    let good = acl(&[
        (0x01, 6, u32::MAX),
        (0x02, 6, 1000),
        (0x04, 4, u32::MAX),
        (0x10, 6, u32::MAX),
        (0x20, 4, u32::MAX),
    ]);
    damage(&dev, |fs| {
        let me = Caller::root();
        fs.setxattr(&me, f, b"system.posix_acl_access", &good, XattrSet::Any)
            .unwrap();
        fs.setxattr(&me, d, b"system.posix_acl_default", &good, XattrSet::Any)
            .unwrap();
        fs.setxattr(&me, f, b"user.keep", b"1", XattrSet::Any)
            .unwrap();
    });
    let r = fsck(&dev, false);
    assert!(r.is_clean(), "{:?}", r.problems);

    let raw = |ino: u64, slot: u64, name: &[u8], value: Vec<u8>| {
        let v = XattrValue {
            ns: Namespace::System,
            name: name.to_vec(),
            value,
        };
        Key::new(Pos::new(ino, slot, u32::MAX), KeyType::Xattr, v.encode())
    };
    damage(&dev, |fs| {
        fs.engine()
            .transact(Durability::Lazy, |tx| {
                // an ACL without its owner entry, in a slot of its own
                tx.put(
                    BtreeId::Xattrs,
                    raw(
                        f.0,
                        1 << 40,
                        b"posix_acl_access",
                        acl(&[(0x20, 4, u32::MAX)]),
                    ),
                );
                // a default ACL on a regular file
                tx.put(
                    BtreeId::Xattrs,
                    raw(f.0, (1 << 40) + 7, b"posix_acl_default", good.clone()),
                );
                // attributes and a symlink target of an inode that does not exist
                tx.put(
                    BtreeId::Xattrs,
                    raw(987_654, 1 << 30, b"posix_acl_access", good.clone()),
                );
                tx.put(
                    BtreeId::Xattrs,
                    Key::blob(Pos::new(987_655, 0, u32::MAX), b"x".to_vec()),
                );
                // garbage
                tx.put(
                    BtreeId::Xattrs,
                    Key::new(Pos::new(f.0, 1 << 41, u32::MAX), KeyType::Xattr, vec![9; 3]),
                );
                Ok(())
            })
            .unwrap();
    });
    let r = fsck(&dev, false);
    assert_eq!(r.problems.len(), 5, "{:?}", r.problems);
    assert_repairs(&dev, "bad ACLs and stray xattrs");
    // what was valid is still there
    let fs = Fs::open(dev.clone() as Arc<dyn Device>, opts()).unwrap();
    let me = Caller::root();
    assert_eq!(
        fs.getxattr(&me, f, b"system.posix_acl_access").unwrap(),
        good
    );
    assert_eq!(
        fs.getxattr(&me, d, b"system.posix_acl_default").unwrap(),
        good
    );
    assert_eq!(fs.getxattr(&me, f, b"user.keep").unwrap(), b"1");
    fs.close().unwrap();
}

#[test]
fn damaged_file_data_is_reported_with_its_path() {
    use arborfs::alloc::extent_format::ExtentValue;
    use arborfs::fs::fsck::check_data;
    let (dev, _, f) = populated();
    let data = |dev: &Arc<MemDevice>| {
        let fs = Fs::open(dev.clone() as Arc<dyn Device>, opts()).unwrap();
        let mut last = 0;
        let r = check_data(&fs, &mut |_| {}, &mut |b| last = b).unwrap();
        // every stored byte was read once (no reflinks here)
        assert_eq!(last, arborfs::fs::fsck::data_bytes(&fs));
        fs.close().unwrap();
        r
    };
    let r = data(&dev);
    assert!(r.is_clean(), "{:?}", r.problems);
    assert!(r.extents >= 50, "{r:?}");
    // Flip one byte inside the last file's stored data.
    let sector = {
        let fs = Fs::open(dev.clone() as Arc<dyn Device>, opts()).unwrap();
        let k = first_extent(&fs, f);
        let s = ExtentValue::decode(&k.value).unwrap().ptrs[0].dev_sector;
        fs.close().unwrap();
        s
    };
    let mut b = [0u8; 1];
    dev.read_at(&mut b, sector * 512 + 100).unwrap();
    b[0] ^= 0x40;
    dev.write_at(&b, sector * 512 + 100).unwrap();
    // The metadata checks cannot see it; the data check names the file.
    assert!(fsck(&dev, false).is_clean());
    let r = data(&dev);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert_eq!(r.unrepaired, 1);
    let p = &r.problems[0];
    assert!(p.contains(&format!("inode {}", f.0)), "{p}");
    assert!(p.contains("/dir/file49"), "{p}");
    assert!(p.contains("checksum mismatch"), "{p}");
}
