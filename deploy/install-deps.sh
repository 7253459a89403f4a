#!/usr/bin/env bash
# Installs what gdrx's build, tests and soft-RoCE testbed need, idempotently:
#   - Debian packages: rdma-core and friends, perftest, the build tools sideway needs (cmake,
#     clang/libclang), qemu and busybox for the VM testbed;
#   - a Debian 6.12 kernel image (it has rdma_rxe and udmabuf) for the VM testbed;
#   - virtme-ng (PyPI) in a virtualenv.
# Runs as root or through sudo. Safe to run again: it only installs what is missing.
#
# Environment:
#   GDRX_VENV          virtualenv for virtme-ng (default: $HOME/.local/share/gdrx/venv)
#   GDRX_SKIP_KERNEL=1 do not install the 6.12 kernel image (native-only hosts)
#   GDRX_SKIP_VM=1     skip everything the VM testbed needs (qemu, kernel, virtme-ng)
set -euo pipefail

log() { printf '[gdrx install-deps] %s\n' "$*" >&2; }
SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { log "need root or sudo to install packages"; exit 1; }
    SUDO="sudo"
fi

PKGS=(
    # RDMA user space and tools
    rdma-core ibverbs-providers ibverbs-utils librdmacm1 rdmacm-utils perftest iproute2 kmod
    # deploy/run-bench.sh profile: perf record in the guest
    linux-perf
    # build: sideway's rdma-mummy-sys builds a C shim with cmake and runs bindgen (libclang)
    build-essential cmake make pkg-config clang libclang-dev
    # the python venv for virtme-ng (its pip comes from python3-venv's ensurepip)
    python3 python3-venv
)
if [ "${GDRX_SKIP_VM:-0}" != 1 ]; then
    PKGS+=(qemu-system-x86 busybox-static)
fi

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
updated=0
apt_update() {
    if [ "$updated" = 0 ]; then
        log "apt-get update"
        $SUDO apt-get update -qq
        updated=1
    fi
}
if [ "${#missing[@]}" -gt 0 ]; then
    apt_update
    log "installing: ${missing[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    log "Debian packages: all present"
fi

if [ "${GDRX_SKIP_VM:-0}" != 1 ] && [ "${GDRX_SKIP_KERNEL:-0}" != 1 ]; then
    if ls /boot/vmlinuz-6.12.* >/dev/null 2>&1; then
        log "kernel for the VM testbed: $(ls /boot/vmlinuz-6.12.* | sort -V | tail -n1)"
    else
        apt_update
        # Package names change with every security update: pick the newest plain amd64 image.
        pkg=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9.]+\+deb[0-9]+-amd64-unsigned$' \
              | awk '{print $1}' | sort -V | tail -n1)
        if [ -z "$pkg" ]; then
            log "no linux-image-6.12.*-amd64-unsigned package found; the VM testbed needs a kernel with"
            log "rdma_rxe and udmabuf: install one and set GDRX_KERNEL=/boot/vmlinuz-..."
            exit 1
        fi
        log "installing kernel image $pkg (rdma_rxe + udmabuf) for the VM testbed"
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
    fi
fi

if [ "${GDRX_SKIP_VM:-0}" != 1 ]; then
    VENV=${GDRX_VENV:-$HOME/.local/share/gdrx/venv}
    if [ -x "$VENV/bin/vng" ]; then
        log "virtme-ng: $("$VENV/bin/vng" --version 2>/dev/null | head -n1)"
    else
        log "installing virtme-ng into $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check 'virtme-ng>=1.30'
    fi
fi

if ! command -v cargo >/dev/null; then
    log "cargo not found: install a stable Rust toolchain (https://rustup.rs) and re-run"
    exit 1
fi
log "done"
