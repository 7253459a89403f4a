#!/usr/bin/env bash
# gdrx main job: the receive-path benchmark over soft-RoCE, setting everything up first.
#   deploy/run-bench.sh                 # size sweep 2 B .. 64 KiB, 2000 messages per size
#   deploy/run-bench.sh -s 65536 -n 5000 --events
# Arguments are those of `gdrx-bench loopback` (see `gdrx-bench loopback --help`). The table is
# also written to target/testbed/bench.txt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
deploy/install-deps.sh
cargo build --locked --release -p gdrx-bench
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(-a -n 2000)
mkdir -p target/testbed
deploy/testbed.sh -- target/release/gdrx-bench loopback "${args[@]}" | tee target/testbed/bench.txt
