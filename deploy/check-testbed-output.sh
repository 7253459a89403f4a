#!/usr/bin/env bash
# Checks deploy/testbed.sh with its output redirected to a file, the way users log it
# (`deploy/run-bench.sh > log 2>&1`): what the host printed before the VM started must still be
# there, followed by the guest's output, with no NUL bytes (QEMU once truncated the file and the
# guest wrote from offset 0), and the command's exit status must come back.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "before the testbed" > "$log"
deploy/testbed.sh -- sh -c 'echo "guest says hello"; exit 3' >> "$log" 2>&1
rc=$?
python3 - "$log" "$rc" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
rc = int(sys.argv[2])
fail = []
nuls = data.count(b"\0")
if nuls:
    fail.append(f"{nuls} NUL bytes")
text = data.decode(errors="replace")
order = ["before the testbed", "[gdrx testbed]", "guest says hello"]
at = [text.find(s) for s in order]
if -1 in at or at != sorted(at):
    fail.append(f"lines missing or out of order: {dict(zip(order, at))}")
if rc != 3:
    fail.append(f"exit status {rc}, the command's was 3")
if fail:
    print("testbed output check FAILED: " + "; ".join(fail) + "\n--- log:\n" + text[-3000:])
    sys.exit(1)
print(f"testbed output check: {len(data)} bytes, no NUL, host lines before the guest's, exit status 3 kept")
PY
