#!/usr/bin/env bash
# gdrx: the data service's multi-host rehearsal on one machine. Boots one feeder VM and N rank
# VMs (deploy/hosts.sh: separate kernels, each with its own soft-RoCE device, joined by QEMU
# links), runs the feeder command with torch's TCPStore in the first and a training job under
# torchrun in the others (one rank of deploy/k8s/train.py per VM, DDP over gloo, its batches
# over RDMA; rank 1 killed in the middle of an epoch, the job restarted from its checkpoints),
# then checks on this machine (deploy/rehearsal/service.py): every batch bit-identical to the
# plan's batch from the shards and to a local run's, every sample exactly once per epoch across
# the ranks, the same parameters and held-out accuracy as the local run.
#
#   deploy/rehearse.sh [--ranks N]      (default 2)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ranks=2
[ "${1:-}" = --ranks ] && { ranks=$2; shift 2; }
deploy/install-deps.sh >&2
venv=$(deploy/python-env.sh)
out=target/hosts
rm -rf "$out"
mkdir -p "$out"
"$venv/bin/python" deploy/rehearsal/service.py data "$out"
deploy/hosts.sh --ranks "$ranks" --out "$out" -- "$venv/bin/python" deploy/rehearsal/service.py run "$(pwd)/$out"
"$venv/bin/python" deploy/rehearsal/service.py check "$out" "$ranks"
