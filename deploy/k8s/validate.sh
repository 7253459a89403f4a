#!/usr/bin/env bash
# Validates the Kubernetes manifests (deploy/k8s/*.yaml) against the Kubernetes API's JSON
# schemas with kubernetes-validate (PyPI; it ships the schemas, so no cluster or network is
# needed), strictly (unknown fields are errors), for the versions in K8S_VERSIONS. First it
# checks that the validator rejects a manifest with a misspelled field, so a validator that
# passes everything cannot go unnoticed. Also compiles train.py.
#   deploy/k8s/validate.sh [VENV]     (default: deploy/python-env.sh's venv)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VENV=${1:-${GDRX_PY_VENV:-$HOME/.local/share/gdrx/py}}
K8S_VERSIONS=${K8S_VERSIONS:-"1.31.0 1.37.0"}
py="$VENV/bin/python"
"$py" -c 'import kubernetes_validate' 2>/dev/null \
    || "$py" -m pip --disable-pip-version-check -q install "kubernetes-validate>=1.31"
kv() { "$VENV/bin/kubernetes-validate" --strict --quiet "$@"; }

bad=$(mktemp --suffix=.yaml)
trap 'rm -f "$bad"' EXIT
sed 's/completionMode: Indexed/completionMod: Indexed/' "$HERE/trainer.yaml" > "$bad"
if kv -k 1.37.0 "$bad" >/dev/null 2>&1; then
    echo "kubernetes-validate accepted a Job with a misspelled field: the check is broken" >&2
    exit 1
fi
for v in $K8S_VERSIONS; do
    kv -k "$v" "$HERE"/*.yaml
    echo "deploy/k8s: $(ls "$HERE"/*.yaml | wc -l) manifests valid for Kubernetes $v (strict)"
done
"$py" -c 'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' "$HERE/train.py"
