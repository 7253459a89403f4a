#!/usr/bin/env bash
# gdrx soft-RoCE testbed: runs COMMAND where an rxe device exists and returns its exit status.
#
#   deploy/testbed.sh [--native | --vm] [--out DIR] [--] COMMAND [ARGS...]
#
# Native mode (the default when this kernel can load rdma_rxe and we are root): creates a veth
# pair with an address and an rxe device on it, runs COMMAND, removes them again.
# VM mode (the default otherwise, e.g. kernels built without RDMA): boots Debian's 6.12 kernel
# (which has rdma_rxe and udmabuf) with virtme-ng over this machine's own root filesystem, so
# binaries built here run unchanged; sets rxe up inside and runs COMMAND there.
# Missing pieces (Debian packages, the kernel image, virtme-ng) are installed first.
#
# COMMAND gets:
#   GDRX_RDMA_DEV   the rxe device name          GDRX_RDMA_IP  its IPv4 address
#   GDRX_OUT        a directory shared with the host (VM: the only place writes survive)
#   GDRX_TESTBED    native | vm
#
# Environment:
#   GDRX_TESTBED=auto|native|vm   mode (default auto)
#   GDRX_OUT=DIR                  shared output directory (default target/testbed)
#   GDRX_IP_CIDR=10.77.0.1/24     address of the rxe interface
#   GDRX_VM_MEMORY=2G  GDRX_VM_CPUS=<nproc, at most 4>  GDRX_KERNEL=/boot/vmlinuz-...
#   GDRX_TESTBED_KVM=1            use KVM in the VM (off by default: where /dev/kvm exists but
#                                 nested virtualisation is broken, qemu hangs or aborts)
#   GDRX_TESTBED_TIMEOUT=3600     seconds before the run is killed
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
log() { printf '[gdrx testbed] %s\n' "$*" >&2; }
usage() { sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

MODE=${GDRX_TESTBED:-auto}
OUT=${GDRX_OUT:-$REPO/target/testbed}
while [ $# -gt 0 ]; do
    case "$1" in
        --native) MODE=native; shift ;;
        --vm) MODE=vm; shift ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) log "unknown option $1"; usage ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || usage
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export GDRX_IP_CIDR=${GDRX_IP_CIDR:-10.77.0.1/24}
IP=${GDRX_IP_CIDR%/*}
TIMEOUT=${GDRX_TESTBED_TIMEOUT:-3600}

can_native() {
    [ "$(id -u)" = 0 ] || return 1
    command -v rdma >/dev/null || return 1
    [ -d /sys/module/rdma_rxe ] || modprobe rdma_rxe 2>/dev/null
}

if [ "$MODE" = auto ]; then
    if can_native; then MODE=native; else MODE=vm; fi
fi

run_native() {
    command -v rdma >/dev/null || "$HERE/install-deps.sh"
    can_native || { log "native mode needs root and a kernel that can load rdma_rxe"; exit 1; }
    export GDRX_RXE_NAME=${GDRX_RXE_NAME:-gdrx_rxe0}
    "$HERE/rxe-setup.sh" up
    trap '"$HERE/rxe-setup.sh" down' EXIT
    log "native: $GDRX_RXE_NAME at $IP; running: $*"
    set +e
    GDRX_RDMA_DEV=$GDRX_RXE_NAME GDRX_RDMA_IP=$IP GDRX_OUT=$OUT GDRX_TESTBED=native \
        timeout "$TIMEOUT" "$@"
    rc=$?
    set -e
    [ "$rc" = 124 ] && log "timed out after ${TIMEOUT}s"
    return "$rc"
}

# shellcheck source=deploy/vm-lib.sh
. "$HERE/vm-lib.sh"

run_vm() {
    vm_prepare
    local vng=$VM_VNG kernel=$VM_KERNEL
    local cpus=${GDRX_VM_CPUS:-$(nproc)}
    [ "$cpus" -gt 4 ] && cpus=4
    local mem=${GDRX_VM_MEMORY:-2G}
    local kvm=(--disable-kvm)
    [ "${GDRX_TESTBED_KVM:-0}" = 1 ] && kvm=()

    # The command, its working directory and environment travel in a script in the shared dir.
    local guest="$OUT/.gdrx-guest.sh" rcfile="$OUT/.gdrx-guest.rc"
    rm -f "$rcfile"
    {
        vm_guest_env
        printf 'export GDRX_RXE_NAME=rxe0 GDRX_RDMA_DEV=rxe0 GDRX_RDMA_IP=%q GDRX_OUT=%q GDRX_TESTBED=vm\n' "$IP" "$OUT"
        printf '%q up || { echo 97 > %q; exit 97; }\n' "$HERE/rxe-setup.sh" "$rcfile"
        printf 'cd %q || exit 98\n' "$PWD"
        printf '%q ' "$@"; echo
        echo 'rc=$?'
        printf 'echo $rc > %q\n' "$rcfile"
        # Let the console drain: the VM powers off as soon as this script ends.
        echo 'sync; sleep 1'
        echo 'exit $rc'
    } > "$guest"
    chmod +x "$guest"
    log "vm: $(basename "$kernel"), ${cpus} vCPUs, ${mem}, $([ ${#kvm[@]} = 0 ] && echo KVM || echo 'TCG (no KVM)'); running: $*"
    set +e
    # Under emulation the guest's clocksource watchdog finds the TSC "unstable" within a minute
    # and switches to the HPET: every clock_gettime then traps into an emulated device, timed
    # code slows down by a factor that depends on when the switch happened, and perftest's
    # cycle-counter calibration fails. QEMU's TSC is derived from the host clock and monotonic:
    # keep it.
    # virtme-ng hands QEMU `-chardev file,path=/proc/self/fd/1`, which QEMU opens with O_TRUNC:
    # redirected to a file, everything written before the VM started would be lost (and the
    # guest's output would land at offset 0 behind NUL padding). A pipe cannot be truncated.
    timeout "$TIMEOUT" setsid -w "$vng" --run "$kernel" "${kvm[@]}" --memory "$mem" --cpus "$cpus" \
        --append "clocksource=tsc tsc=reliable" --rwdir "$OUT" --exec "$guest" </dev/null 2>&1 | cat
    local rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" = 124 ]; then
        log "timed out after ${TIMEOUT}s"
        return 124
    fi
    if [ ! -f "$rcfile" ]; then
        log "the VM exited ($rc) without running the command: boot failure? (try GDRX_TESTBED_KVM=0, check $kernel)"
        return 125
    fi
    return "$(cat "$rcfile")"
}

case "$MODE" in
    native) run_native "$@" ;;
    vm) run_vm "$@" ;;
    *) log "GDRX_TESTBED must be auto, native or vm"; exit 2 ;;
esac
