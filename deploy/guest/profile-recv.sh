#!/usr/bin/env bash
# Runs inside the testbed (deploy/testbed.sh): profiles both receivers fed by the same sender,
# perftest's `ib_send_bw -R`: perftest's own server, then `gdrx-bench server --perftest`, with
# `perf record -a -g` (cpu-clock: the VM has no PMU) over each run, and prints where the
# receiving process and the whole guest spent their time.
#   deploy/run-bench.sh profile [SIZE...]        (default 64 512; from the host)
#   deploy/guest/profile-recv.sh BENCH_BINARY [SIZE...]
set -uo pipefail
bench=${1:?usage: $0 GDRX_BENCH_BINARY [SIZE...]}
shift
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(64 512)
dev=${GDRX_RDMA_DEV:?} ip=${GDRX_RDMA_IP:?}
out=${GDRX_OUT:-/tmp}/profile
mkdir -p "$out"
iters=20000
port=18700
command -v perf >/dev/null || { echo "perf is missing (deploy/install-deps.sh installs linux-perf)"; exit 1; }
echo "== profile on $dev ($ip), kernel $(uname -r), $(nproc) vCPU(s); $iters messages per run"
for size in "${sizes[@]}"; do
    for rx in perftest gdrx; do
        port=$((port + 1))
        case $rx in
            perftest) server=(stdbuf -oL ib_send_bw -d "$dev" -s "$size" -F -R -p "$port" -n "$iters") ;;
            gdrx) server=("$bench" server --dev "$dev" --ip "$ip" --port "$port" --perftest -s "$size" -n "$iters" --runs 1 --idle-timeout 60) ;;
        esac
        "${server[@]}" >"$out/$rx-$size.server.log" 2>&1 &
        spid=$!
        sleep 2
        data="$out/$rx-$size.perf.data"
        perf record -q -e cpu-clock -F 999 -a -g -o "$data" -- \
            timeout 120 ib_send_bw -d "$dev" -s "$size" -F -R -p "$port" -n "$iters" "$ip" \
            >"$out/$rx-$size.client.log" 2>&1
        rc=$?
        wait "$spid"; src=$?
        echo
        echo "== $size B, receiver $rx (server exit $src, client exit $rc)"
        grep -E "^ *$size " "$out/$rx-$size.server.log" "$out/$rx-$size.client.log" | head -2
        grep -E '^\{' "$out/$rx-$size.server.log" | head -1 | cut -c1-300
        echo "-- where the guest's CPU went (all processes, by command):"
        perf report -i "$data" --stdio --no-children --sort comm -q 2>/dev/null | head -8
        echo "-- the receiving process (pid $spid), by symbol (self time):"
        perf report -i "$data" --stdio --no-children --pid "$spid" --sort dso,sym -q -g none 2>/dev/null \
            | grep -v '^$' | head -25
    done
done
