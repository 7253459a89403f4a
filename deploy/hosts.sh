#!/usr/bin/env bash
# gdrx multi-host rehearsal on one machine: boots 1 + N small VMs, each its own kernel with its
# own soft-RoCE device, joined by QEMU network links over Unix sockets, and runs COMMAND in each.
#
#   deploy/hosts.sh [--ranks N] [--out DIR] [--] COMMAND [ARGS...]
#
# Host 0 (the feeder) has one link to each of hosts 1..N (the ranks); link i is its own /24:
# host 0 is 10.91.i.1 (rxe device rxe_l<i>), host i is 10.91.i.2 (rxe device rxe0). RDMA CM
# resolves over these links between separate kernels, and TCP (torch's TCPStore) runs over them
# too. No IP network of this machine is touched: each link is a socket under DIR.
# (Network namespaces do not work for rxe on this kernel: ../shared/notes/TESTBED.md.)
#
# COMMAND runs in every VM, from this directory, with:
#   GDRX_HOST       this VM's index (0: the feeder, 1..N: the ranks)
#   GDRX_RANKS      N
#   GDRX_RDMA_IP    this VM's address (host 0: the address on link 1; GDRX_LINK_IPS lists all)
#   GDRX_RDMA_DEV   this VM's rxe device (host 0: the one on link 1)
#   GDRX_FEEDER_IP  (ranks) the feeder's address on this rank's link
#   GDRX_IFACE      (ranks) the link's interface (host 0 forwards between the links, so rank
#                   hosts reach each other at 10.91.i.2 through it)
#   GDRX_OUT        DIR, shared with this machine (the only place writes survive)
# The exit status is 0 when every VM's COMMAND exited 0; each VM's console goes to
# DIR/host<i>.log.
#
# Environment: GDRX_HOST_MEMORY=1G, GDRX_HOST_CPUS=1 (per VM; three fit on a 2-core machine),
# GDRX_KERNEL, GDRX_TESTBED_TIMEOUT=1800.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '[gdrx hosts] %s\n' "$*" >&2; }
usage() { sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

RANKS=2
OUT=$(dirname "$HERE")/target/hosts
while [ $# -gt 0 ]; do
    case "$1" in
        --ranks) RANKS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) log "unknown option $1"; usage ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || usage
case "$RANKS" in ''|*[!0-9]*) log "--ranks must be a number"; exit 2 ;; esac
{ [ "$RANKS" -ge 1 ] && [ "$RANKS" -le 8 ]; } || { log "--ranks must be 1..8"; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TIMEOUT=${GDRX_TESTBED_TIMEOUT:-1800}
MEM=${GDRX_HOST_MEMORY:-1G}
CPUS=${GDRX_HOST_CPUS:-1}

# shellcheck source=deploy/vm-lib.sh
. "$HERE/vm-lib.sh"
vm_prepare

# One guest script per VM: the network, then the command.
guest_script() {
    local i=$1 f="$OUT/.host$1.sh"
    shift
    {
        vm_guest_env
        printf 'export GDRX_HOST=%s GDRX_RANKS=%s GDRX_OUT=%q\n' "$i" "$RANKS" "$OUT"
        printf 'net=$(%q %s %s) || { echo 97 > %q; exit 97; }\n' "$HERE/guest/host-net.sh" "$i" "$RANKS" "$OUT/.host$i.rc"
        echo 'eval "$net"'
        printf 'cd %q || exit 98\n' "$PWD"
        printf '%q ' "$@"; echo
        echo 'rc=$?'
        printf 'echo $rc > %q\n' "$OUT/.host$i.rc"
        echo 'sync; sleep 1'
        echo 'exit $rc'
    } > "$f"
    chmod +x "$f"
    echo "$f"
}

# The links: host 0 listens on each socket, host i connects to socket i.
net_opts() {
    local i=$1 opts="" l
    if [ "$i" = 0 ]; then
        for l in $(seq 1 "$RANKS"); do
            opts+=" -netdev stream,id=l$l,server=on,addr.type=unix,addr.path=$OUT/.link$l.sock"
            opts+=" -device virtio-net-pci,netdev=l$l,mac=52:54:00:91:0$l:01,host_mtu=9000"
        done
    else
        opts+=" -netdev stream,id=l$i,server=off,addr.type=unix,addr.path=$OUT/.link$i.sock"
        opts+=" -device virtio-net-pci,netdev=l$i,mac=52:54:00:91:0$i:02,host_mtu=9000"
    fi
    echo "$opts"
}

rm -f "$OUT"/.link*.sock "$OUT"/.host*.rc
pids=()
cleanup() { for p in "${pids[@]}"; do kill -- "-$p" 2>/dev/null || true; done; }
trap cleanup EXIT
for i in $(seq 0 "$RANKS"); do
    script=$(guest_script "$i" "$@")
    log "host $i: $(basename "$VM_KERNEL"), $CPUS vCPU, $MEM; console in $OUT/host$i.log"
    setsid timeout "$TIMEOUT" "$VM_VNG" --run "$VM_KERNEL" --disable-kvm --memory "$MEM" --cpus "$CPUS" \
        --append "clocksource=tsc tsc=reliable" --rwdir "$OUT" --qemu-opts="$(net_opts "$i")" \
        --exec "$script" </dev/null > >(cat > "$OUT/host$i.log") 2>&1 &
    pids+=($!)
    if [ "$i" = 0 ]; then
        # The ranks connect to host 0's sockets: wait until QEMU listens on all of them.
        n=0
        for _ in $(seq 1 600); do
            n=$(find "$OUT" -maxdepth 1 -name '.link*.sock' | wc -l)
            [ "$n" -ge "$RANKS" ] && break
            sleep 0.1
        done
        [ "$n" -ge "$RANKS" ] || { log "host 0 did not open its links (see $OUT/host0.log)"; exit 1; }
    fi
done
rc=0
for i in $(seq 0 "$RANKS"); do
    wait "${pids[$i]}" || true
    if [ ! -f "$OUT/.host$i.rc" ]; then
        log "host $i exited without running the command (boot failure? see $OUT/host$i.log)"
        rc=1
    elif [ "$(cat "$OUT/.host$i.rc")" != 0 ]; then
        log "host $i: the command exited $(cat "$OUT/.host$i.rc") (see $OUT/host$i.log)"
        rc=1
    fi
done
pids=()
exit "$rc"
