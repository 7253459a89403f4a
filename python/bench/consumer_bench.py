"""The Python consumer against the Rust one, and both against a plain TCP socket, in one boot.

    python consumer_bench.py --bench target/release/gdrx-bench [--sizes 64,4096,65536]
                             [--iters 20000] [--reps 3] [--json OUT]

Runs inside the soft-RoCE testbed (GDRX_RDMA_IP, GDRX_RDMA_DEV; `deploy/python-bench.sh`). The
sender is always `gdrx-bench client` (perftest-like: SEND_WITH_IMM, tx depth 128), in its own
process; per size and repetition, interleaved:

- rust:   `gdrx-bench server --consumers 0` (the Rust Receiver-equivalent pool consumer, inline
          on the polling thread) with 512 receives posted, event mode;
- python: `gdrx.Receiver(slots=512)` iterated in Python, each message made a numpy array with
          `np.from_dlpack` (zero copy) and dropped;
- tcp:    a Python TCP server doing `recv_into` a fresh buffer per message and `np.frombuffer`
          (what users do without RDMA), fed by a Python process `sendall`-ing the same sizes.

Rates are the receiver's, from its first message to its last. Also measured: the binding's
per-message overhead (DLPack capsule, `np.from_dlpack`, the deleter and the lease's return)
over messages already received. Prints a table of medians and the ratios python/rust and
python/tcp; only ratios mean something under emulation.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import numpy as np

import gdrx

DEPTH = 512


def client(bench: str, ip: str, port: int, size: int, iters: int) -> subprocess.Popen:
    return subprocess.Popen(
        [bench, "client", "--dev", os.environ["GDRX_RDMA_DEV"], "--ip", ip, "--port", str(port),
         "--size", str(size), "--iters", str(iters), "--tx-depth", "128", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(p: subprocess.Popen, what: str, timeout: float = 600) -> dict:
    out, err = p.communicate(timeout=timeout)
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if p.returncode != 0 or not rows:
        raise RuntimeError(f"{what} exited {p.returncode}: {err.strip()[-2000:]}")
    return rows[-1]


def run_rust(bench: str, ip: str, size: int, iters: int) -> float:
    srv = subprocess.Popen(
        [bench, "server", "--dev", os.environ["GDRX_RDMA_DEV"], "--ip", ip, "--port", "0",
         "--runs", "1", "--rx-depth", str(DEPTH), "--pool-slots", str(DEPTH), "--consumers", "0",
         "--events", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = srv.stderr.readline()
    if "listening on" not in line:
        srv.kill()
        raise RuntimeError(f"gdrx-bench server: {line}{srv.stderr.read()[-2000:]}")
    port = int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
    c = client(bench, ip, port, size, iters)
    finish(c, "gdrx-bench client")
    row = finish(srv, "gdrx-bench server")
    assert row["messages"] == iters, row
    return row["messages"] / row["secs"]


def run_python(bench: str, ip: str, size: int, iters: int) -> float:
    with gdrx.Receiver(ip=ip, slot_size=size, slots=DEPTH, timeout=120) as rx:
        c = client(bench, ip, rx.address[1], size, iters)
        n, first, last = 0, 0.0, 0.0
        for msg in rx:
            a = np.from_dlpack(msg)
            del a, msg
            last = time.perf_counter()
            if n == 0:
                first = last
            n += 1
        finish(c, "gdrx-bench client")
    assert n == iters, (n, iters)
    # The first message's own time is not in (first, last]: iters - 1 intervals.
    return (n - 1) / (last - first)


TCP_SENDER = r"""
import socket, sys
ip, port, size, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.create_connection((ip, port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
data = bytes(size)
for _ in range(iters):
    s.sendall(data)
s.close()
"""


def run_tcp(ip: str, size: int, iters: int) -> float:
    srv = socket.create_server((ip, 0))
    port = srv.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-c", TCP_SENDER, ip, str(port), str(size), str(iters)])
    conn, _ = srv.accept()
    n, first, last = 0, 0.0, 0.0
    with conn:
        while n < iters:
            buf = bytearray(size)
            view, got = memoryview(buf), 0
            while got < size:
                k = conn.recv_into(view[got:])
                if k == 0:
                    raise RuntimeError(f"the TCP sender closed after {n} messages")
                got += k
            a = np.frombuffer(buf, dtype=np.uint8)
            del a
            last = time.perf_counter()
            if n == 0:
                first = last
            n += 1
    p.wait(timeout=120)
    srv.close()
    return (n - 1) / (last - first)


def overhead(bench: str, ip: str, n: int = 4000) -> dict:
    """Per-message cost of the binding over `n` messages already received and held."""
    with gdrx.Receiver(ip=ip, slot_size=64, slots=n + 64, timeout=120) as rx:
        c = client(bench, ip, rx.address[1], 64, n)
        msgs: list = []
        while len(msgs) < n:
            msgs += rx.poll(timeout=60)
        finish(c, "gdrx-bench client")
        third = n // 3
        t0 = time.perf_counter()
        for m in msgs[:third]:
            a = np.from_dlpack(m)  # capsule, numpy's import, then
            del a                  # the deleter (drops one Arc clone)
            m.release()            # and the lease's return through the recycle ring
        t1 = time.perf_counter()
        for m in msgs[third:2 * third]:
            c = m.__dlpack__()     # the capsule alone (its destructor runs the deleter)
            del c
        t2 = time.perf_counter()
        for m in msgs[2 * third:]:
            m.release()            # the return alone
        t3 = time.perf_counter()
    return {
        "export_and_return_us": (t1 - t0) / third * 1e6,
        "capsule_us": (t2 - t1) / third * 1e6,
        "return_only_us": (t3 - t2) / (n - 2 * third) * 1e6,
        "numpy_self_from_dlpack_us": numpy_floor(),
    }


def numpy_floor(n: int = 20000) -> float:
    """`np.from_dlpack` of a numpy array (numpy exporting to itself): what any exporter's
    import costs on this CPU, and the yardstick for the emulation's slowdown (run
    `python consumer_bench.py --calibrate` natively to compare)."""
    x = np.zeros(64, dtype=np.uint8)
    t0 = time.perf_counter()
    for _ in range(n):
        a = np.from_dlpack(x)
        del a
    return (time.perf_counter() - t0) / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", help="path of gdrx-bench (required unless --calibrate)")
    ap.add_argument("--sizes", default="64,4096,65536")
    ap.add_argument("--iters", type=int, default=20000, help="messages per run (64 KiB: a quarter)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", help="write the raw figures here")
    ap.add_argument("--calibrate", action="store_true",
                    help="only time np.from_dlpack of a numpy array (no RDMA needed)")
    a = ap.parse_args()
    if a.calibrate:
        print(f"np.from_dlpack(numpy array): {statistics.median(numpy_floor() for _ in range(5)):.3f} us")
        return 0
    if not a.bench:
        ap.error("--bench is required")
    ip = os.environ["GDRX_RDMA_IP"]
    sizes = [int(s) for s in a.sizes.split(",")]
    rates: dict = {(k, s): [] for k in ("rust", "python", "tcp") for s in sizes}
    for rep in range(a.reps):
        for size in sizes:
            iters = a.iters if size < 65536 else max(a.iters // 4, 1000)
            for kind in ("rust", "python", "tcp"):
                if kind == "rust":
                    r = run_rust(a.bench, ip, size, iters)
                elif kind == "python":
                    r = run_python(a.bench, ip, size, iters)
                else:
                    r = run_tcp(ip, size, iters)
                rates[(kind, size)].append(r)
                print(f"rep {rep + 1} {size:>6} B {kind:>6}: {r:10.0f} msg/s", flush=True)
    over = [overhead(a.bench, ip) for _ in range(a.reps)]

    print("\nmedians over", a.reps, "repetitions (messages/s, MiB/s):")
    print(f"{'bytes':>7} {'rust':>16} {'python':>16} {'tcp':>16} {'py/rust':>8} {'py/tcp':>7}")
    out = {"sizes": {}, "overhead": over}
    for size in sizes:
        m = {k: statistics.median(rates[(k, size)]) for k in ("rust", "python", "tcp")}
        cell = lambda r: f"{r:8.0f} {r * size / 2**20:7.1f}"  # noqa: E731
        print(f"{size:>7} {cell(m['rust'])} {cell(m['python'])} {cell(m['tcp'])} "
              f"{m['python'] / m['rust']:8.2f} {m['python'] / m['tcp']:7.2f}")
        out["sizes"][size] = {"median": m, "all": {k: rates[(k, size)] for k in m}}
    ex = statistics.median(o["export_and_return_us"] for o in over)
    ret = statistics.median(o["return_only_us"] for o in over)
    cap = statistics.median(o["capsule_us"] for o in over)
    floor = statistics.median(o["numpy_self_from_dlpack_us"] for o in over)
    print(f"\nbinding overhead per message (medians of {a.reps}): np.from_dlpack + deleter + "
          f"return {ex:.2f} us; the capsule alone {cap:.2f} us; release alone {ret:.2f} us; "
          f"np.from_dlpack of a numpy array on this CPU {floor:.2f} us (divide by the same figure "
          f"measured natively, --calibrate, for the emulation's slowdown)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
