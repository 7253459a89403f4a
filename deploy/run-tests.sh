#!/usr/bin/env bash
# gdrx: runs every test, installing what it needs first. This is the README's test command and
# what CI runs (.ci/run).
#   1. deploy/install-deps.sh (Debian packages, the 6.12 kernel image, virtme-ng; idempotent)
#   2. cargo fmt --check, cargo clippy -D warnings, rustdoc -D warnings
#   3. host tests: cargo test --workspace (unit and stress tests; the rxe suite is #[ignore]d
#      there), and the recycle ring's loom models (RUSTFLAGS=--cfg loom, own target dir)
#   4. the rxe suite on real soft-RoCE in deploy/testbed.sh (GDRX_RXE_RUNS=2: twice in one boot),
#      plus a check that it fails when told to use a missing device, and the testbed's output
#      into a file
#   5. the Python package (deploy/python-env.sh: a venv with torch, jax, numpy; pip install
#      ./python), the Kubernetes manifests' schema validation, and the pytest suite in the testbed
#   6. the data service's multi-host rehearsal (deploy/rehearse.sh: three VMs, separate kernels)
# Extra arguments are passed to the rxe suite as test-name filters.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
T0=$(date +%s)
step() { printf '\n== [%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }

step "dependencies"
deploy/install-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features, -D warnings)"
cargo clippy --locked --workspace --all-targets --all-features -- -D warnings

step "host tests: cargo test --workspace"
cargo test --locked --workspace --all-features

step "loom: the recycle ring's protocol under the loom model checker"
RUSTFLAGS="--cfg loom" cargo test --locked -p gdrx-ring --release --target-dir target/loom --test loom

step "lean libraries: gdrx-gpu without its binaries' dependencies, gdrx-feed without RDMA"
cargo build --locked -p gdrx-gpu --no-default-features --features cuda --lib
if cargo tree --locked -p gdrx-gpu --no-default-features --features cuda -e normal \
    | grep -E '^[^a-z]*(anyhow|clap|serde_json|tracing-subscriber) '; then
    echo "gdrx-gpu's library pulls in a binary-only dependency (above)"; exit 1
fi
# gdrx-feed without its `rdma` feature: the FFI-free dataset and plan library.
cargo build --locked -p gdrx-feed --no-default-features --lib
if cargo tree --locked -p gdrx-feed --no-default-features -e normal | grep -E '(gdrx-core|gdrx-verbs|sideway|clap) '; then
    echo "gdrx-feed's lean library pulls in the RDMA stack or the CLI (above)"; exit 1
fi

step "docs: cargo doc with -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps --all-features

step "building the rxe suite, gdrx-bench, gdrx-feed, gdrx-doctor and the examples (release)"
cargo build --locked --release -p gdrx-bench
# The Python suite runs the feeder against gdrx.Receiver.
cargo build --locked --release -p gdrx-feed
# The rxe suite runs the examples against its test peer.
cargo build --locked --release -p gdrx-examples --examples
# The doctor's rxe tests check its GPU part too (no libcuda in the testbed: a typed error).
cargo build --locked --release -p gdrx-gpu --features cuda --bin gdrx-doctor
exe=$(cargo test --locked --release -p gdrx-tests --test rxe --no-run --message-format=json \
    | python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "rxe":
        print(m["executable"])')
[ -x "$exe" ] || { echo "could not find the rxe suite binary"; exit 1; }

step "rxe suite in the soft-RoCE testbed"
deploy/testbed.sh -- deploy/guest/rxe-suite.sh "$exe" "$@"

step "testbed output redirected to a file: nothing lost, no NUL bytes, exit status kept"
deploy/check-testbed-output.sh

step "Python package: deploy/python-env.sh (maturin, numpy, pytest, torch, jax; pip install ./python)"
venv=$(deploy/python-env.sh)

step "Kubernetes manifests: strict schema validation (kubernetes-validate)"
deploy/k8s/validate.sh "$venv"

step "Python suite (pytest: numpy, torch and jax consumers, the feeder) in the soft-RoCE testbed"
# torch and jax need more than the VM's default 2 GiB.
GDRX_VM_MEMORY=${GDRX_VM_MEMORY:-4G} deploy/testbed.sh -- deploy/guest/python-suite.sh "$venv"

step "the data service across separate kernels: 1 feeder VM + 2 rank VMs joined by QEMU links (deploy/rehearse.sh)"
deploy/rehearse.sh --ranks 2

step "all tests passed"
