#!/usr/bin/env bash
# Soft-RoCE on a real host's existing network interface (not the testbed's veth pair).
#
#   deploy/rxe-host.sh up IFACE [NAME]   load rdma_rxe and create NAME (default rxe_IFACE) on IFACE
#   deploy/rxe-host.sh down [NAME]       remove it (default: every rxe device this script made)
#   deploy/rxe-host.sh status            list RDMA links and the IPv4 addresses gdrx can use
#
# Needs root. Both ends of a connection need an RDMA device: run it on both hosts, then point
# gdrx at the interface's IP (RDMA CM does not work over `lo`).
set -euo pipefail
log() { printf '[gdrx rxe-host] %s\n' "$*" >&2; }
need_root() { [ "$(id -u)" = 0 ] || { log "run as root"; exit 1; }; }

case "${1:-}" in
up)
    need_root
    IFACE=${2:?usage: $0 up IFACE [NAME]}
    NAME=${3:-rxe_$IFACE}
    ip link show "$IFACE" >/dev/null || { log "no interface $IFACE"; exit 1; }
    modprobe rdma_rxe || { log "cannot load rdma_rxe: this kernel lacks CONFIG_RDMA_RXE (use deploy/testbed.sh)"; exit 1; }
    modprobe rdma_ucm || true
    if rdma link show "$NAME/1" >/dev/null 2>&1; then
        log "$NAME exists"
    else
        rdma link add "$NAME" type rxe netdev "$IFACE"
    fi
    rdma link show "$NAME/1"
    ip -4 -o addr show dev "$IFACE" | awk '{print "use address " $4}' >&2
    ;;
down)
    need_root
    if [ -n "${2:-}" ]; then
        rdma link delete "$2"
    else
        for d in $(rdma link show | awk '{print $2}' | cut -d/ -f1 | grep '^rxe_' || true); do
            rdma link delete "$d" && log "removed $d"
        done
    fi
    ;;
status)
    rdma link show || true
    for d in /sys/class/infiniband/*; do
        [ -e "$d" ] || continue
        n=$(basename "$d")
        nd=$(cat "$d/ports/1/gid_attrs/ndevs/1" 2>/dev/null || true)
        [ -n "$nd" ] && ip -4 -o addr show dev "$nd" | awk -v n="$n" '{print n ": " $4}'
    done
    ;;
*)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
