# gdrx: what deploy/testbed.sh and deploy/hosts.sh share to boot a VM with virtme-ng (sourced).
#
#   vm_prepare      installs what is missing; sets VM_VNG, VM_KERNEL and puts vng's helpers on PATH
#   vm_guest_env    prints the lines a guest script starts with: PATH, HOME and the GDRX_*, RUST_*,
#                   CARGO_* variables of this shell

vm_find_vng() {
    local venv=${GDRX_VENV:-$HOME/.local/share/gdrx/venv}
    if [ -x "$venv/bin/vng" ]; then echo "$venv/bin/vng"; elif command -v vng >/dev/null; then command -v vng; fi
}

vm_find_kernel() {
    if [ -n "${GDRX_KERNEL:-}" ]; then echo "$GDRX_KERNEL"; return; fi
    ls /boot/vmlinuz-6.12.* 2>/dev/null | sort -V | tail -n1
}

vm_prepare() {
    local here
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    VM_VNG=$(vm_find_vng)
    VM_KERNEL=$(vm_find_kernel)
    if [ -z "$VM_VNG" ] || [ -z "$VM_KERNEL" ] || ! command -v qemu-system-x86_64 >/dev/null \
        || ! command -v rdma >/dev/null; then
        printf '[gdrx vm] installing what the VM testbed needs\n' >&2
        "$here/install-deps.sh"
        VM_VNG=$(vm_find_vng)
        VM_KERNEL=$(vm_find_kernel)
    fi
    [ -n "$VM_VNG" ] || { printf '[gdrx vm] virtme-ng (vng) not found after install\n' >&2; return 1; }
    [ -r "$VM_KERNEL" ] || { printf '[gdrx vm] kernel image %s not readable\n' "$VM_KERNEL" >&2; return 1; }
    # vng starts its helpers (virtme-run, ...) through PATH: they sit beside it in the venv.
    PATH="$(dirname "$VM_VNG"):$PATH"
}

vm_guest_env() {
    local v
    echo '#!/usr/bin/env bash'
    echo 'set -u'
    printf 'export PATH=%q HOME=%q\n' "$PATH" "$HOME"
    for v in $(compgen -e | grep -E '^(GDRX_|RUST_|CARGO_)' || true); do
        printf 'export %s=%q\n' "$v" "${!v}"
    done
}
