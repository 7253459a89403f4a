#!/usr/bin/env bash
# gdrx GPU checks: run on a machine with an NVIDIA GPU and its driver (no RDMA NIC needed).
#   deploy/gpu-checks.sh [--out DIR] [gdrx-gpu-check options, e.g. --gpu 1 --bytes 4294967296]
# What runs (see gpu/src/bin/gpu_check.rs): the GPU's attributes; a dma-buf export checked in
# /proc/self/fdinfo; host staging end to end with payload verification and event-gated
# recycling; a blocked consumer stream holding its slot back; the staging copy's throughput
# against plain pinned cuMemcpyHtoD. Then gdrx-doctor's report of the machine.
# Builds both binaries (release, --features cuda) when cargo is there. On a GPU machine without
# a Rust toolchain, build them elsewhere (same architecture: `cargo build --release -p gdrx-gpu
# --features cuda --bins`), copy target/release/gdrx-gpu-check and gdrx-doctor over, and point
# GDRX_BIN_DIR at them (default: target/release).
# Results: DIR/gpu-check.{txt,json} and DIR/doctor.{txt,json} (DIR defaults to target/gpu-checks).
# Exit status: that of gdrx-gpu-check (0 when every check passed or was skipped with a reason).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=target/gpu-checks
if [ "${1:-}" = --out ]; then out=${2:?--out needs a folder}; shift 2; fi
mkdir -p "$out"
bin=${GDRX_BIN_DIR:-target/release}
if [ -z "${GDRX_BIN_DIR:-}" ] && command -v cargo >/dev/null; then
    cargo build --release -p gdrx-gpu --features cuda --bins
fi
for b in gdrx-gpu-check gdrx-doctor; do
    [ -x "$bin/$b" ] || { echo "no $bin/$b: build it with cargo build --release -p gdrx-gpu --features cuda --bins"; exit 2; }
done
echo "== GPUs (nvidia-smi)"
nvidia-smi -L 2>&1 || echo "(nvidia-smi not available)"
echo "== gdrx-gpu-check $*"
set +e
"$bin/gdrx-gpu-check" --json "$out/gpu-check.json" "$@" 2>&1 | tee "$out/gpu-check.txt"
rc=${PIPESTATUS[0]}
set -e
echo "== gdrx-doctor"
"$bin/gdrx-doctor" 2>&1 | tee "$out/doctor.txt" || true
"$bin/gdrx-doctor" --json >"$out/doctor.json" 2>/dev/null || true
echo "== gdrx-gpu-check exit $rc; results in $out/"
exit "$rc"
