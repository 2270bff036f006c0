#!/bin/bash
# Mounts the three targets of docs/testing.md's fsbench runs under $B
# (default /tmp/b): ext4 on a loop device (direct IO), bindfs over a
# directory on it, and ArborFS on an image file (release binary).
# Usage: scripts/bench/setup.sh [extra arborfs -o options]
set -e
B=${B:-/tmp/b}
BIN=${BIN:-$(dirname "$0")/../../target/release/arborfs}
mkdir -p $B/ext4 $B/bindfs $B/arborfs
if ! mountpoint -q $B/ext4; then
  rm -f $B/ext4.img; truncate -s 4G $B/ext4.img; mkfs.ext4 -q -F $B/ext4.img
  LOOP=$(losetup --direct-io=on -f --show $B/ext4.img); mount $LOOP $B/ext4
fi
mkdir -p $B/ext4/under
mountpoint -q $B/bindfs || bindfs $B/ext4/under $B/bindfs
if ! mountpoint -q $B/arborfs; then
  rm -f $B/arborfs.img
  "$BIN" mount -o "size=4G${1:+,$1}" $B/arborfs.img $B/arborfs
fi
findmnt $B/ext4 $B/bindfs $B/arborfs
