#!/bin/bash
# Runs a command and summarizes the FUSE requests it caused (all FUSE
# mounts): counts per opcode, and latency and requests in flight for
# READ/WRITE. Needs perf with the fuse tracepoints.
# Usage: scripts/bench/fuse-trace.sh COMMAND [ARGS...]
set -e
out=$(mktemp)
perf record -q -e fuse:fuse_request_send -e fuse:fuse_request_end -a -o "$out" -- "$@" >/dev/null
perf script -i "$out" 2>/dev/null | python3 -c '
import collections, re, statistics, sys
send, lat, inflight, samples, ops = {}, [], 0, [], collections.Counter()
for l in sys.stdin:
    m = re.search(r"(\d+\.\d+):\s+fuse:fuse_request_(send|end): connection \d+ req (\d+)", l)
    if not m:
        continue
    t, kind, req = float(m.group(1)), m.group(2), m.group(3)
    if kind == "send":
        op = re.search(r"\((FUSE_\w+)\)", l).group(1)
        ops[op] += 1
        if op in ("FUSE_READ", "FUSE_WRITE"):
            send[req] = t
            inflight += 1
    elif req in send:
        lat.append(t - send.pop(req))
        inflight -= 1
    samples.append(inflight)
print(dict(ops))
if lat:
    lat.sort()
    print("read/write requests", len(lat), "median_us", round(lat[len(lat) // 2] * 1e6),
          "p90_us", round(lat[int(len(lat) * 0.9)] * 1e6),
          "mean_in_flight", round(statistics.mean(samples), 2))'
rm -f "$out"
