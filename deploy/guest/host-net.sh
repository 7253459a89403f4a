#!/usr/bin/env bash
# Inside a deploy/hosts.sh VM: brings up this host's links (found by their MAC addresses) with
# an rxe device on each, and prints the environment for the command (eval'd by the guest script).
# Host 0 forwards IP between its links and the ranks route 10.91.0.0/16 through it, so that the
# rank hosts reach each other over TCP too (torch.distributed's gloo and rendezvous).
#   host-net.sh INDEX RANKS
set -euo pipefail
i=$1 ranks=$2
log() { printf '[gdrx host %s] %s\n' "$i" "$*" >&2; }
iface_of() {  # the interface with MAC $1
    local d
    for d in /sys/class/net/*; do
        [ "$(cat "$d/address" 2>/dev/null)" = "$1" ] && { basename "$d"; return; }
    done
    return 1
}
modprobe rdma_rxe
up() {  # up MAC IP RXE
    local ifc
    ifc=$(iface_of "$1") || { log "no interface with MAC $1"; exit 1; }
    ip link set "$ifc" mtu 9000 up
    ip addr add "$2/24" dev "$ifc"
    rdma link add "$3" type rxe netdev "$ifc"
    log "$3 on $ifc ($2)"
    IFACE=$ifc
}
if [ "$i" = 0 ]; then
    ips=()
    for l in $(seq 1 "$ranks"); do
        up "52:54:00:91:0$l:01" "10.91.$l.1" "rxe_l$l"
        ips+=("10.91.$l.1")
    done
    echo 1 > /proc/sys/net/ipv4/ip_forward
    echo "export GDRX_RDMA_IP=10.91.1.1 GDRX_RDMA_DEV=rxe_l1 GDRX_LINK_IPS=$(IFS=,; echo "${ips[*]}")"
else
    up "52:54:00:91:0$i:02" "10.91.$i.2" rxe0
    ip route add 10.91.0.0/16 via "10.91.$i.1"
    echo "export GDRX_RDMA_IP=10.91.$i.2 GDRX_RDMA_DEV=rxe0 GDRX_FEEDER_IP=10.91.$i.1 GDRX_IFACE=$IFACE"
fi
# The ports come up ACTIVE within a second or two.
for _ in $(seq 1 100); do
    if ! rdma link show 2>/dev/null | grep -v ACTIVE | grep -q 'link '; then break; fi
    sleep 0.1
done
