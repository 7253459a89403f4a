#!/usr/bin/env bash
# Inside the testbed: the Python package's pytest suite (python/tests) with the environment
# deploy/python-env.sh built (its path is the first argument). A missing RDMA device fails it.
set -uo pipefail
VENV=$1; shift
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT/python/tests"
# The guest sees the host's file system read-only: no bytecode or pytest caches.
export PYTHONDONTWRITEBYTECODE=1 GDRX_REQUIRE_RDMA=1
exec "$VENV/bin/python" -m pytest -p no:cacheprovider -v -rs --durations=10 "$@"
