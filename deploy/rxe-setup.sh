#!/usr/bin/env bash
# Creates (up) or removes (down) the testbed's soft-RoCE device: a veth pair with an IP address
# and an rxe device on one end. Used by testbed.sh both on the host (native mode) and inside the
# VM. Prints the device and IP on success.
#
# Environment (defaults in brackets):
#   GDRX_RXE_NAME [rxe0]          rxe device name
#   GDRX_VETH     [gdrxveth0]     veth end the rxe device is bound to (peer: <name>p)
#   GDRX_IP_CIDR  [10.77.0.1/24]  its address
#   GDRX_NETDEV_MTU [9000]        MTU of the veth pair; rxe derives its active MTU from it
#                                 (9000 -> 4096, as on jumbo-frame RoCE networks; 1500 -> 1024)
#   GDRX_HUGEPAGES [64]           2 MiB huge pages to reserve (best effort)
set -euo pipefail
NAME=${GDRX_RXE_NAME:-rxe0}
VETH=${GDRX_VETH:-gdrxveth0}
CIDR=${GDRX_IP_CIDR:-10.77.0.1/24}
MTU=${GDRX_NETDEV_MTU:-9000}
HUGE=${GDRX_HUGEPAGES:-64}
log() { printf '[gdrx rxe-setup] %s\n' "$*" >&2; }

case "${1:-}" in
up)
    modprobe rdma_rxe 2>/dev/null || [ -d /sys/module/rdma_rxe ] || {
        log "cannot load rdma_rxe (kernel without CONFIG_RDMA_RXE?)"; exit 1; }
    modprobe rdma_ucm 2>/dev/null || true
    modprobe udmabuf 2>/dev/null || true
    if ! ip link show "$VETH" >/dev/null 2>&1; then
        ip link add "$VETH" type veth peer name "${VETH}p"
    fi
    ip link set "$VETH" mtu "$MTU"
    ip link set "${VETH}p" mtu "$MTU"
    ip addr replace "$CIDR" dev "$VETH"
    ip link set "$VETH" up
    ip link set "${VETH}p" up
    if ! rdma link show "$NAME/1" >/dev/null 2>&1; then
        rdma link add "$NAME" type rxe netdev "$VETH"
    fi
    for _ in $(seq 1 100); do
        rdma link show "$NAME/1" 2>/dev/null | grep -q 'state ACTIVE' && break
        sleep 0.1
    done
    rdma link show "$NAME/1" | grep -q 'state ACTIVE' || { log "$NAME did not become ACTIVE"; rdma link show >&2; exit 1; }
    if [ -w /proc/sys/vm/nr_hugepages ]; then
        cur=$(cat /proc/sys/vm/nr_hugepages)
        [ "$cur" -ge "$HUGE" ] || echo "$HUGE" > /proc/sys/vm/nr_hugepages || true
    fi
    log "$NAME on $VETH ($CIDR, mtu $MTU) is ACTIVE; hugepages $(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo '?')"
    ;;
down)
    rdma link delete "$NAME" 2>/dev/null || true
    ip link del "$VETH" 2>/dev/null || true
    log "$NAME and $VETH removed"
    ;;
*)
    echo "usage: $0 up|down" >&2; exit 2 ;;
esac
