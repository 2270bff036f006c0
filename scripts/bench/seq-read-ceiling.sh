#!/bin/bash
# Cold and warm 1 MiB sequential reads of a 1 GiB file on each mounted
# directory, interleaved, to put a FUSE filesystem's cold read next to what
# the kernel's own copy to user space costs (a warm read from the page cache).
# Usage (root): scripts/bench/seq-read-ceiling.sh [REPS] DIR...
# e.g. scripts/bench/seq-read-ceiling.sh 3 /tmp/b/ext4 /tmp/b/bindfs /tmp/b/arborfs
set -e
reps=$1; shift
# fio drops a file's cached pages before it reads (invalidate=1) unless told
# not to: the warm read must keep them.
read1() {
  fio --name=r --filename="$1" --rw=read --bs=1M --size=1024M --ioengine=psync "${@:2}" \
    --output-format=json 2>/dev/null | python3 -c '
import json, sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["bw"] / 1024))'
}
for d in "$@"; do
  f=$d/seq-read-ceiling.dat
  [ -f "$f" ] || fio --name=w --filename="$f" --rw=write --bs=1M --size=1024M \
    --ioengine=psync --end_fsync=1 >/dev/null
done
for r in $(seq "$reps"); do
  for d in "$@"; do
    f=$d/seq-read-ceiling.dat
    sync; echo 3 > /proc/sys/vm/drop_caches
    if [ "$(findmnt -n -o FSTYPE --target "$d")" = fuse.arborfs ]; then
      setfattr -n trusted.arborfs.drop_caches -v 1 "$d"
    fi
    cat /usr/bin/fio >/dev/null
    cold=$(read1 "$f"); warm=$(read1 "$f" --invalidate=0)
    echo "rep $r $d cold ${cold} MiB/s warm ${warm} MiB/s"
  done
done
for d in "$@"; do rm -f "$d/seq-read-ceiling.dat"; done
