#!/usr/bin/env python3
"""How the kernel caches a file: large folios or 4 KiB pages.

Usage (root): scripts/bench/folios.py FILE [PAGES]

Maps the first PAGES pages (default 4096 = 16 MiB) of FILE, touches them
(reading the file through the page cache first is up to you, e.g. `cat`),
and classifies each cached page by /proc/kpageflags: the head or a tail page
of a large folio, or a small (order-0) page. On kernel 6.18, ext4 caches a
sequentially read file mostly in large folios and FUSE (any daemon) in 4 KiB
pages only, which costs a FUSE reader a page allocation, a page-cache insert
and a memcg charge per 4 KiB (docs/testing.md, "cold seq-read").
"""
import mmap
import os
import struct
import sys

KPF_COMPOUND_HEAD = 15
KPF_COMPOUND_TAIL = 16


def main():
    path = sys.argv[1]
    pages = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
    size = os.path.getsize(path)
    pages = min(pages, size // 4096)
    fd = os.open(path, os.O_RDONLY)
    m = mmap.mmap(fd, pages * 4096, prot=mmap.PROT_READ)
    for i in range(pages):
        m[i * 4096]
    base = None
    real = os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith(real):
                base = int(line.split("-")[0], 16)
                break
    if base is None:
        sys.exit("mapping not found in /proc/self/maps")
    heads = tails = small = absent = 0
    with open("/proc/self/pagemap", "rb") as pm, open("/proc/kpageflags", "rb") as kf:
        for i in range(pages):
            pm.seek((base // 4096 + i) * 8)
            entry = struct.unpack("Q", pm.read(8))[0]
            if not entry >> 63:
                absent += 1
                continue
            pfn = entry & ((1 << 55) - 1)
            kf.seek(pfn * 8)
            flags = struct.unpack("Q", kf.read(8))[0]
            if flags >> KPF_COMPOUND_HEAD & 1:
                heads += 1
            elif flags >> KPF_COMPOUND_TAIL & 1:
                tails += 1
            else:
                small += 1
    print(f"{path}: {pages} pages: {heads} large-folio heads, {tails} tails, "
          f"{small} small pages, {absent} not present")


if __name__ == "__main__":
    main()
