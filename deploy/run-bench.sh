#!/usr/bin/env bash
# gdrx main job: the receive-path benchmark over soft-RoCE, side by side with perftest, setting
# everything up first (Debian packages, perftest, the 6.12 kernel image, virtme-ng), booting the
# testbed when this kernel has no rdma_rxe.
#
#   deploy/run-bench.sh                       # gdrx-bench compare: 64 B..64 KiB, 64 MiB per run,
#                                             # 5 runs per size and receiver (ib_send_bw feeding
#                                             # perftest's server and gdrx's, then gdrx-bench
#                                             # client feeding gdrx's): the same-sender table,
#                                             # then tool against tool, min/median/max, ratios
#   deploy/run-bench.sh --sizes 4096 -n 5000 --op write-imm -C 2 --hold exp:50us
#   deploy/run-bench.sh loopback -a -n 2000   # another gdrx-bench mode
#   deploy/run-bench.sh python [--sizes 64,4096,65536 --iters 20000 --reps 3]
#                                             # the Python consumer (gdrx.Receiver + numpy)
#                                             # against the Rust one and a TCP socket, and the
#                                             # binding's per-message overhead
#   deploy/run-bench.sh feed [--samples 4000 --shape 3,64,64 --reps 3]
#                                             # the data service: gdrx-feed over RDMA into the
#                                             # training loop against torch's DataLoader (0 and
#                                             # 2 workers) and a TCP stream; RNR NAKs with
#                                             # credits on and off
#   deploy/run-bench.sh feed --hosts [...]    # the same across two VMs (deploy/hosts.sh): the
#                                             # senders in one, the loop in the other
#   deploy/run-bench.sh profile [64 512]      # perf record -a -g in the guest while ib_send_bw
#                                             # feeds perftest's server, then gdrx's
#
# Arguments are those of `gdrx-bench compare` (see `gdrx-bench compare --help`), or a mode name
# and its arguments. The table is also written to target/testbed/bench.txt; compare writes the
# plot and the JSON to target/testbed/compare/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
deploy/install-deps.sh
cargo build --locked --release -p gdrx-bench
if [ "${1:-}" = profile ]; then
    shift
    mkdir -p target/testbed
    deploy/testbed.sh -- deploy/guest/profile-recv.sh target/release/gdrx-bench "$@" \
        | tee target/testbed/profile.txt
    exit "${PIPESTATUS[0]}"
fi
if [ "${1:-}" = python ]; then
    shift
    venv=$(deploy/python-env.sh)
    mkdir -p target/testbed
    # The guest writes only under GDRX_OUT (target/testbed).
    deploy/testbed.sh -- "$venv/bin/python" python/bench/consumer_bench.py \
        --bench target/release/gdrx-bench --json target/testbed/python-bench.json "$@" \
        | tee target/testbed/python-bench.txt
    exit "${PIPESTATUS[0]}"
fi
if [ "${1:-}" = feed ]; then
    shift
    cargo build --locked --release -p gdrx-feed
    venv=$(deploy/python-env.sh)
    if [ "${1:-}" = --hosts ]; then
        shift
        out=target/hosts-bench
        rm -rf "$out"
        mkdir -p "$out"
        # The datasets are made here; each VM copies them to its own local disk.
        "$venv/bin/python" python/bench/feed_bench.py --make-data "$out/data" "$@"
        rc=0
        GDRX_HOST_MEMORY=${GDRX_HOST_MEMORY:-2G} deploy/hosts.sh --ranks 1 --out "$out" -- \
            "$venv/bin/python" python/bench/feed_bench.py --hosts-role --data "$out/data" \
            --feed target/release/gdrx-feed --json "$out/feed-bench.json" "$@" || rc=$?
        # Host 1 ran the loop: its console has the table.
        sed -n '/samples of float32/,$p' "$out/host1.log" | tee "$out/feed-bench.txt"
        exit "$rc"
    fi
    mkdir -p target/testbed
    GDRX_VM_MEMORY=${GDRX_VM_MEMORY:-4G} deploy/testbed.sh -- "$venv/bin/python" python/bench/feed_bench.py \
        --feed target/release/gdrx-feed --json target/testbed/feed-bench.json "$@" \
        | tee target/testbed/feed-bench.txt
    exit "${PIPESTATUS[0]}"
fi
mode=compare
case "${1:-}" in
    compare|loopback|server|client) mode=$1; shift ;;
esac
args=("$@")
if [ "$mode" = compare ] && [ ${#args[@]} -eq 0 ]; then
    args=(--reps 5)
fi
mkdir -p target/testbed
deploy/testbed.sh -- target/release/gdrx-bench "$mode" "${args[@]}" | tee target/testbed/bench.txt
