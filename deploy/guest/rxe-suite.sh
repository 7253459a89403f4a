#!/usr/bin/env bash
# Runs inside the testbed (deploy/testbed.sh): the rxe suite GDRX_RXE_RUNS times in this boot
# (default 1; 2 shows that no test leaves the device in a state the next run trips on), then
# checks that the suite FAILS when told to use a device that does not exist.
#   deploy/guest/rxe-suite.sh SUITE_BINARY [TEST_FILTER...]
set -uo pipefail
exe=${1:?usage: $0 SUITE_BINARY [FILTER...]}
shift
out=${GDRX_OUT:-/tmp}
echo "== gdrx rxe suite on ${GDRX_RDMA_DEV:?} (${GDRX_RDMA_IP:?}), testbed ${GDRX_TESTBED:-?}, kernel $(uname -r)"
ibv_devinfo -d "$GDRX_RDMA_DEV" | grep -E 'hca_id|transport|max_mtu|active_mtu|state|link_layer' || true
runs=${GDRX_RXE_RUNS:-1}
for run in $(seq 1 "$runs"); do
    echo "== rxe suite, run $run of $runs (same boot)"
    start=$(date +%s)
    "$exe" --ignored --test-threads=1 --nocapture "$@" 2>&1 | tee "$out/rxe-suite-run$run.log"
    rc=${PIPESTATUS[0]}
    echo "== run $run: exit $rc after $(( $(date +%s) - start )) s"
    [ "$rc" = 0 ] || { echo "rxe suite run $run FAILED"; exit "$rc"; }
done
echo "== negative check: told to use a missing device, the suite must fail"
if GDRX_RDMA_DEV=gdrx_missing0 "$exe" --ignored --test-threads=1 capability_report >"$out/rxe-negative.log" 2>&1; then
    echo "FAILED: the suite passed although its device does not exist"; cat "$out/rxe-negative.log"; exit 1
fi
grep -q "gdrx_missing0" "$out/rxe-negative.log" || { echo "FAILED: no clear message"; cat "$out/rxe-negative.log"; exit 1; }
echo "negative check OK: $(grep -m1 -o "the rxe suite was told to use.*" "$out/rxe-negative.log")"
if [ "${GDRX_TESTBED:-}" = vm ] && [ "$(id -u)" = 0 ]; then
    # This guest kernel can load rdma_rxe, so the testbed's native mode can run here for real:
    # a second rxe device on its own veth pair and subnet, created, used and removed again.
    echo "== native-mode check: deploy/testbed.sh --native inside the guest"
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    if ! GDRX_RXE_NAME=gdrx_rxe1 GDRX_VETH=gdrxnat0 GDRX_IP_CIDR=10.78.0.1/24 GDRX_OUT="$out/native" \
        "$here/testbed.sh" --native -- "$exe" --ignored --test-threads=1 --nocapture \
        capability_report plain_send >"$out/rxe-native.log" 2>&1; then
        echo "FAILED: native mode"; cat "$out/rxe-native.log"; exit 1
    fi
    grep -q "device gdrx_rxe1 " "$out/rxe-native.log" || { echo "FAILED: native run did not use gdrx_rxe1"; cat "$out/rxe-native.log"; exit 1; }
    grep -E "^test |test result" "$out/rxe-native.log" | cut -c1-160
    if rdma link show | grep -q gdrx_rxe1 || ip link show gdrxnat0 >/dev/null 2>&1; then
        echo "FAILED: native mode left gdrx_rxe1 / gdrxnat0 behind"; exit 1
    fi
    echo "native-mode check OK: gdrx_rxe1 on gdrxnat0 (10.78.0.1) created, tested and removed"
fi
echo "== rxe suite: all runs passed"
