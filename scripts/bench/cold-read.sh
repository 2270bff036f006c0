#!/bin/bash
# One cold-cache fio row on a mounted directory, with the ArborFS daemon's
# CPU time when DIR is an ArborFS mount.
# Usage: scripts/bench/cold-read.sh DIR read|randread [MiB]
#   read:     sequential 1 MiB reads of a MiB-sized file (default 512)
#   randread: 16384 random 4 KiB reads of a 256 MiB file (as fsbench)
set -e
d=$1; rw=${2:-read}; n=${3:-512}
if [ "$rw" = randread ]; then n=256; bs=4k; io="--io_size=64M"; else bs=1M; io=""; fi
f=$d/cold-$rw.dat
[ -f "$f" ] || { fio --name=w --filename="$f" --rw=write --bs=1M --size=${n}M \
  --ioengine=psync --end_fsync=1 >/dev/null; }
sync; echo 3 > /proc/sys/vm/drop_caches
pid=$(findmnt -n -o SOURCE --target "$d" >/dev/null && pgrep -f "arborfs mount.* $d\$" | head -1 || true)
[ -n "$pid" ] && setfattr -n trusted.arborfs.drop_caches -v 1 "$d"
cpu() { [ -n "$pid" ] && awk '{print $14+$15}' /proc/$pid/stat || echo 0; }
c0=$(cpu)
fio --name=r --filename="$f" --rw=$rw --bs=$bs --size=${n}M $io --ioengine=psync \
  --output-format=json 2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)["jobs"][0]["read"]
print(sys.argv[1], round(r["bw"] / 1024), "MiB/s", round(r["iops"]), "IOPS", end=" ")' "$d"
c1=$(cpu); echo "daemon_cpu_ms=$(( (c1 - c0) * 10 ))"
