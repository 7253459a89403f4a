#!/usr/bin/env bash
# Sets up the Python environment of gdrx's Python package and its tests: a virtual environment
# with maturin, numpy, pytest, JAX (CPU), PyTorch and scikit-learn (the rehearsal's dataset, its
# digits) from PyPI, and the gdrx package itself
# (`pip install ./python`, built by maturin against the workspace's Cargo.lock and target/).
#
#   deploy/python-env.sh            create/update the environment, (re)install gdrx; prints its path
#   GDRX_PY_VENV=DIR                where it lives (default ~/.local/share/gdrx/py)
#   GDRX_PY_FRAMEWORKS=0            skip torch and jax (numpy only)
#
# The testbed VM sees this machine's file system, so the suite runs the same environment inside.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
VENV=${GDRX_PY_VENV:-$HOME/.local/share/gdrx/py}
log() { echo "[gdrx python-env] $*" >&2; }

PY=${GDRX_PYTHON:-python3}
if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
    log "installing python3-venv"
    apt-get update -qq && apt-get install -y -qq python3-venv python3-pip >/dev/null
fi
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV ($("$PY" --version))"
    "$PY" -m venv "$VENV"
fi
export PATH="$VENV/bin:$PATH"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

want=("maturin>=1.9.4,<2" "numpy>=1.22" "pytest>=7")
if [ "${GDRX_PY_FRAMEWORKS:-1}" = 1 ]; then
    # torch from PyPI is its CUDA build (it runs on the CPU here); jax's PyPI build is CPU-only.
    want+=("torch>=2.4" "jax[cpu]>=0.4.30" "scikit-learn>=1.3")
fi
missing=()
for req in "${want[@]}"; do
    name=${req%%[>=<\[]*}
    "$VENV/bin/python" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$name" 2>/dev/null \
        || missing+=("$req")
done
if [ ${#missing[@]} -gt 0 ]; then
    start=$(date +%s)
    log "installing ${missing[*]}"
    pip install "${missing[@]}"
    log "installed in $(( $(date +%s) - start )) s"
fi

# The gdrx package: built in place by maturin (no build isolation: maturin is in the venv, and
# cargo reuses the workspace's target/ and Cargo.lock).
start=$(date +%s)
pip install --no-build-isolation --no-deps --force-reinstall "$ROOT/python"
log "gdrx $("$VENV/bin/python" -c 'import gdrx; print(gdrx.__version__)') installed in $(( $(date +%s) - start )) s"
echo "$VENV"
