#!/usr/bin/env bash
# Model-checks the filesystem IO locks (arborfs-iolock) with loom: every
# interleaving of the models in arborfs-iolock/tests/loom.rs, up to a
# preemption bound per model (set in tests/loom.rs; LOOM_MAX_PREEMPTIONS
# overrides them all).
#
#   scripts/loom.sh [extra cargo test args]
#
# `--cfg loom` changes how every crate is compiled, so it builds in its own
# target dir, ${CARGO_TARGET_DIR:-target}/loom, and leaves the normal build
# alone. Only the loom test binary runs: the other tests are compiled out
# under loom, and the doctests would run loom locks outside a model (rustdoc
# does not get RUSTFLAGS).
# From cold about 95 s of CPU, mostly building loom's dependencies; the
# models alone about 11 s of CPU (measurements in docs/testing.md).
set -euo pipefail

cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom"
export RUSTFLAGS="${RUSTFLAGS:-} --cfg loom"
exec cargo test -p arborfs-iolock --release --test loom "$@"
