#!/usr/bin/env bash
# Runs inside the testbed (deploy/testbed.sh): the rxe suite twice in this boot, then checks that
# the suite FAILS when told to use a device that does not exist.
#   deploy/guest/rxe-suite.sh SUITE_BINARY [TEST_FILTER...]
set -uo pipefail
exe=${1:?usage: $0 SUITE_BINARY [FILTER...]}
shift
out=${GDRX_OUT:-/tmp}
echo "== gdrx rxe suite on ${GDRX_RDMA_DEV:?} (${GDRX_RDMA_IP:?}), testbed ${GDRX_TESTBED:-?}, kernel $(uname -r)"
ibv_devinfo -d "$GDRX_RDMA_DEV" | grep -E 'hca_id|transport|max_mtu|active_mtu|state|link_layer' || true
for run in 1 2; do
    echo "== rxe suite, run $run of 2 (same boot)"
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
echo "== rxe suite: all runs passed"
