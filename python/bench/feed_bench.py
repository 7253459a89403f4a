"""The data service against the loaders users have: samples per second into a training loop.

    python feed_bench.py --feed target/release/gdrx-feed [--samples 4000] [--shape 3,64,64]
                         [--reps 3] [--slow-us 2000] [--json OUT] [--data DIR]

Runs inside the soft-RoCE testbed (GDRX_RDMA_IP, GDRX_RDMA_DEV; `deploy/run-bench.sh feed`), or
across two VMs of deploy/hosts.sh (`deploy/run-bench.sh feed --hosts`): there the senders (gdrx-feed
and the TCP sender) run in host 0 and the training loop in host 1, so that RDMA and TCP both cross
a link between two kernels (`--hosts-role`: host 0 runs the senders it is asked for, host 1 the
benchmark). It writes a dataset of .npy shards (float32 images of --shape, int64 labels; or takes
the one in --data, `--make-data DIR` writes it), copies it to local disk (/tmp), then, per
repetition and in an order that alternates between repetitions, feeds the same samples in the
same shuffled order (gdrx's plan, seed 0) into the same loop (`image.sum()` and the label,
which reads every byte) five ways:

- gdrx:         `gdrx-feed` (its own process) over RDMA into a typed `gdrx.Receiver` (header
                split, 256 slots), torch tensors by DLPack as `gdrx.torch.RdmaIterableDataset`
                makes them: 0 copies in the training process (checked for every sample: the
                tensor's data pointer is its receive buffer);
- gdrx-nocredit: the same with `gdrx-feed --no-credits` (flow control by RNR NAKs);
- dataloader-0: `torch.utils.data.DataLoader(num_workers=0, batch_size=None)` over a map-style
                dataset reading each sample from the shards on local disk (np.load with
                mmap_mode="r", then a copy out of the page cache: 1 copy);
- dataloader-2: the same with 2 worker processes (the sample then also crosses from the worker
                through shared memory: 2 copies);
- tcp:          the same samples streamed over one TCP connection (the way tf.data service
                moves data) by a sender process reading them from the shards, received with
                `recv_into` a fresh buffer per part and `torch.frombuffer` (1 copy: kernel to
                user).

Rates are taken from the first sample to the last, so start-up (connection, worker start) is
not counted. The loop's machine's CPU time per sample (user, and kernel: system, irq and softirq,
where soft-RoCE does the work a hardware NIC would) is taken over each whole run, from
/proc/stat. Then RNR NAKs with credits on and off: the rxe device's `send_rnr_err` over a run
whose consumer sleeps --slow-us per sample with 16 slots, where without credits the feeder
overruns the posted buffers. Prints a table of medians (min-max) and the ratios
gdrx/DataLoader and gdrx/TCP; only ratios measured in one boot mean something under emulation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.utils.data

import gdrx

SHARDS = 8
SENDERS_PORT = 29601  # --hosts-role: host 0 serves the senders here


def rnr_naks() -> int:
    dev = os.environ["GDRX_RDMA_DEV"]
    return int(Path(f"/sys/class/infiniband/{dev}/ports/1/hw_counters/send_rnr_err").read_text())


def cpu_seconds() -> dict:
    """This machine's CPU time so far (all CPUs), from /proc/stat: user (user + nice) and kernel
    (system + irq + softirq: where soft-RoCE does the NIC's work, and the TCP stack its)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    return {"user": (f[0] + f[1]) / hz, "kernel": (f[2] + f[5] + f[6]) / hz}


def make_dataset(d: Path, samples: int, shape: tuple) -> list:
    """Writes the shards; returns their sizes."""
    rng = np.random.default_rng(7)
    sizes = [samples // SHARDS + (1 if s < samples % SHARDS else 0) for s in range(SHARDS)]
    for s, n in enumerate(sizes):
        np.save(d / f"{s:03}.image.npy", rng.standard_normal((n, *shape), dtype=np.float32))
        np.save(d / f"{s:03}.label.npy", rng.integers(0, 10, n, dtype=np.int64))
    return sizes


def order(sizes: list) -> list:
    """The (shard, item) of each sample in the order gdrx-feed sends them (rank 0 of 1, seed 0)."""
    return [(s, i) for (_, s, i) in gdrx.plan(sizes, seed=0, epoch=0, world=1, rank=0)]


class Loop:
    """The training loop's side: what each method hands it, timed from the first sample."""

    def __init__(self) -> None:
        self.n, self.t0, self.t1, self.check = 0, None, None, 0.0

    def step(self, image: torch.Tensor, label: torch.Tensor) -> None:
        if self.t0 is None:
            self.t0 = time.perf_counter()
        self.check += float(image.sum()) + int(label)
        self.n += 1
        self.t1 = time.perf_counter()

    def rate(self) -> float:
        return (self.n - 1) / (self.t1 - self.t0) if self.n > 1 else 0.0


class Local:
    """Senders started in this machine: ``start(argv)`` where ``{data}`` in argv is the dataset."""

    def __init__(self, data: Path) -> None:
        self.data = data

    def start(self, argv: list) -> subprocess.Popen:
        argv = [str(a).replace("{data}", str(self.data)) for a in argv]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class Remote:
    """Senders started in another host by its ``serve_senders`` (one JSON request per
    connection, answered when the process exits): ``start(argv).communicate()``, like Popen's."""

    class Run:
        def __init__(self, conn: socket.socket) -> None:
            self.conn, self.returncode = conn, None

        def communicate(self, timeout: float = 300.0):
            self.conn.settimeout(timeout)
            with self.conn, self.conn.makefile() as f:
                r = json.loads(f.readline() or '{"rc": -1, "out": "", "err": "the sender host hung up"}')
            self.returncode = r["rc"]
            return r["out"], r["err"]

    def __init__(self, addr: tuple) -> None:
        self.addr = addr

    def _connect(self) -> socket.socket:
        # The sender host may still be starting (Python and torch under emulation).
        for _ in range(300):
            try:
                return socket.create_connection(self.addr, timeout=60)
            except OSError:
                time.sleep(1)
        raise RuntimeError(f"no sender host at {self.addr[0]}:{self.addr[1]}")

    def start(self, argv: list) -> "Remote.Run":
        conn = self._connect()
        conn.sendall((json.dumps({"argv": [str(a) for a in argv]}) + "\n").encode())
        return Remote.Run(conn)

    def quit(self) -> None:
        with self._connect() as conn:
            conn.sendall(b'{"quit": true}\n')


def serve_senders(port: int, data: Path) -> int:
    """Host 0 of the two-host benchmark: runs each sender asked for (``{data}`` -> ``data``) and
    answers its exit status and output, until asked to quit."""
    with socket.create_server(("0.0.0.0", port)) as ls:
        print(f"senders: listening on {port}", file=sys.stderr, flush=True)
        while True:
            conn, _ = ls.accept()
            with conn, conn.makefile("rw") as f:
                req = json.loads(f.readline())
                if req.get("quit"):
                    return 0
                argv = [a.replace("{data}", str(data)) for a in req["argv"]]
                p = subprocess.run(argv, capture_output=True, text=True)
                f.write(json.dumps({"rc": p.returncode, "out": p.stdout, "err": p.stderr}) + "\n")


def run_gdrx(senders, sub: str, feed: str, nbytes: int, credits: bool, slots: int = 256,
             slow_us: int = 0) -> dict:
    ip = os.environ["GDRX_RDMA_IP"]
    rx = gdrx.Receiver(ip=ip, slot_size=nbytes, slots=slots, header_split=True, timeout=300)
    naks = rnr_naks()
    port = rx.address[1]
    p = senders.start(
        [feed, "--data", "{data}/" + sub, "--to", f"{ip}:{port}", "--rank", "0", "--world", "1",
         "--seed", "0", "--timeout", "300"] + ([] if credits else ["--no-credits"]))
    loop, copied = Loop(), 0
    try:
        # What RdmaIterableDataset(typed=True) does, with the tensors' buffers in view.
        for img, lab in gdrx.tensors(rx):
            image, label = torch.from_dlpack(img), torch.from_dlpack(lab)
            copied += image.data_ptr() != img.address  # the tensor is the receive buffer
            del img, lab
            loop.step(image, label)
            del image, label
            if slow_us:
                time.sleep(slow_us / 1e6)
    finally:
        rx.close()
    if copied:
        raise RuntimeError(f"{copied} image tensors were not their receive buffers")
    out, err = p.communicate(timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"gdrx-feed exited {p.returncode}: {err.strip()[-2000:]}")
    report = json.loads(out.strip().splitlines()[-1])
    return {"rate": loop.rate(), "samples": loop.n, "check": loop.check,
            "rnr_naks": rnr_naks() - naks, "credits": report["credits"]}


class NpyShards(torch.utils.data.Dataset):
    """Sample k of `order`, read from the shards on disk (opened lazily, in each worker)."""

    def __init__(self, d: Path, order: list) -> None:
        self.d, self.order, self.images, self.labels = d, order, None, None

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int):
        if self.images is None:
            self.images = [np.load(self.d / f"{s:03}.image.npy", mmap_mode="r") for s in range(SHARDS)]
            self.labels = [np.load(self.d / f"{s:03}.label.npy", mmap_mode="r") for s in range(SHARDS)]
        s, i = self.order[k]
        return torch.from_numpy(np.array(self.images[s][i])), torch.tensor(int(self.labels[s][i]))


def run_dataloader(data: Path, sizes: list, workers: int) -> dict:
    dl = torch.utils.data.DataLoader(NpyShards(data, order(sizes)), batch_size=None,
                                     num_workers=workers, shuffle=False)
    loop = Loop()
    for image, label in dl:
        loop.step(image, label)
    return {"rate": loop.rate(), "samples": loop.n, "check": loop.check}


def recv_exact(conn: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        r = conn.recv_into(view[got:], n - got)
        if r == 0:
            raise EOFError
        got += r
    return buf


def run_tcp(senders, sub: str) -> dict:
    ip = os.environ["GDRX_RDMA_IP"]
    ls = socket.create_server((ip, 0))
    port = ls.getsockname()[1]
    p = senders.start([sys.executable, str(Path(__file__).with_name("tcp_sender.py")), "{data}/" + sub, ip, str(port)])
    ls.settimeout(300)
    conn, _ = ls.accept()
    loop = Loop()
    try:
        while True:
            parts = []
            try:
                for _ in range(2):
                    h = gdrx.SampleHeader.decode(bytes(recv_exact(conn, 64)))
                    buf = recv_exact(conn, h.nbytes)
                    t = torch.frombuffer(buf, dtype=getattr(torch, h.dtype)) if h.nbytes else \
                        torch.empty(0, dtype=getattr(torch, h.dtype))
                    parts.append(t.view(h.shape))
            except EOFError:
                break
            loop.step(*parts)
    finally:
        conn.close()
        ls.close()
    _, err = p.communicate(timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"the TCP sender exited {p.returncode}: {err.strip()[-2000:]}")
    return {"rate": loop.rate(), "samples": loop.n, "check": loop.check}


COPIES = {"gdrx": 0, "gdrx-nocredit": 0, "dataloader-0": 1, "dataloader-2": 2, "tcp": 1}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--feed", help="the gdrx-feed binary")
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--shape", default="3,64,64", help="image shape (float32)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--slow-us", type=int, default=2000, help="the slow consumer's sleep per sample")
    ap.add_argument("--slow-samples", type=int, default=400, help="samples of each slow-consumer run")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--data", help="the datasets --make-data wrote (copied to /tmp first)")
    ap.add_argument("--make-data", metavar="DIR", help="write the datasets to DIR and exit")
    ap.add_argument("--hosts-role", action="store_true",
                    help="in a deploy/hosts.sh VM: host 0 serves the senders, host 1 runs the loop")
    a = ap.parse_args(argv)
    shape = tuple(int(x) for x in a.shape.split(","))
    if a.make_data:
        make_data(Path(a.make_data), a.samples, a.slow_samples, shape)
        return 0
    if not a.feed:
        ap.error("--feed is required")
    # The datasets on local disk (the guest's /tmp), as a training host would have them.
    root = Path(tempfile.mkdtemp(prefix="gdrx-feed-bench-"))
    if a.data:
        shutil.copytree(a.data, root, dirs_exist_ok=True)
    else:
        make_data(root, a.samples, a.slow_samples, shape)
    hosts = a.hosts_role
    if hosts and os.environ.get("GDRX_HOST") == "0":
        return serve_senders(SENDERS_PORT, root)
    senders = Remote((os.environ["GDRX_FEEDER_IP"], SENDERS_PORT)) if hosts else Local(root)
    try:
        return bench(a, senders, root, shape, hosts)
    finally:
        if hosts:
            senders.quit()


def make_data(d: Path, samples: int, slow_samples: int, shape: tuple) -> None:
    """The benchmark's dataset (DIR/main) and the slow-consumer runs' (DIR/slow)."""
    for sub, n in (("main", samples), ("slow", slow_samples)):
        (d / sub).mkdir(parents=True, exist_ok=True)
        make_dataset(d / sub, n, shape)


def bench(a, senders, root: Path, shape: tuple, hosts: bool) -> int:
    sizes = gdrx.Dataset(str(root / "main")).shard_sizes
    if sum(sizes) != a.samples:
        raise RuntimeError(f"the dataset in {a.data} has {sum(sizes)} samples, not --samples {a.samples}")
    nbytes = int(np.prod(shape)) * 4
    methods = {
        "gdrx": lambda: run_gdrx(senders, "main", a.feed, nbytes, credits=True),
        "gdrx-nocredit": lambda: run_gdrx(senders, "main", a.feed, nbytes, credits=False),
        "dataloader-0": lambda: run_dataloader(root / "main", sizes, 0),
        "dataloader-2": lambda: run_dataloader(root / "main", sizes, 2),
        "tcp": lambda: run_tcp(senders, "main"),
    }
    runs: dict = {m: [] for m in methods}
    names = list(methods)
    for rep in range(a.reps):
        for m in names if rep % 2 == 0 else reversed(names):
            c0 = cpu_seconds()
            r = methods[m]()
            c1 = cpu_seconds()
            # The loop's machine, the whole run (start-up included), per sample.
            r["cpu_us"] = {k: (c1[k] - c0[k]) / a.samples * 1e6 for k in c0}
            if r["samples"] != a.samples:
                raise RuntimeError(f"{m}: {r['samples']} of {a.samples} samples")
            runs[m].append(r)
            print(f"rep {rep} {m:14} {r['rate']:10.1f} samples/s"
                  + (f"  rnr_naks {r['rnr_naks']}" if "rnr_naks" in r else ""), file=sys.stderr, flush=True)
    # Every method fed the same samples: the loop's checksums agree.
    checks = {m: round(rs[0]["check"], 1) for m, rs in runs.items()}
    if len(set(checks.values())) != 1:
        raise RuntimeError(f"the methods fed different data: {checks}")

    slow = {}
    for credits in (True, False, True, False):
        r = run_gdrx(senders, "slow", a.feed, nbytes, credits=credits, slots=16, slow_us=a.slow_us)
        slow.setdefault("on" if credits else "off", []).append(r)

    med = {m: statistics.median(r["rate"] for r in rs) for m, rs in runs.items()}
    rows = []
    where = ("senders in host 0, the loop in host 1: RDMA and TCP cross a link between two kernels"
             if hosts else "senders and the loop in one VM")
    print(f"\n{a.samples} samples of float32 {list(shape)} ({nbytes} B) + int64 label, "
          f"{a.reps} interleaved repetitions (under emulation: compare ratios only); {where}")
    print(f"{'method':15} {'samples/s median':>17} {'min-max':>19} {'copies':>7} {'gdrx/this':>10} "
          f"{'CPU us/sample user+kernel':>26}")
    for m, rs in runs.items():
        lo, hi = min(r["rate"] for r in rs), max(r["rate"] for r in rs)
        ratio = med["gdrx"] / med[m] if med[m] else float("nan")
        cpu = {k: statistics.median(r["cpu_us"][k] for r in rs) for k in ("user", "kernel")}
        print(f"{m:15} {med[m]:17.1f} {lo:9.1f}-{hi:<9.1f} {COPIES[m]:7} {ratio:9.2f}x "
              f"{cpu['user']:14.0f} + {cpu['kernel']:<9.0f}")
        rows.append({"method": m, "median": med[m], "min": lo, "max": hi, "copies": COPIES[m],
                     "cpu_us_per_sample": cpu, "runs": [r["rate"] for r in rs],
                     "rnr_naks": [r["rnr_naks"] for r in rs] if "rnr_naks" in rs[0] else None})
    print("CPU: the loop's machine over each whole run"
          + (" (the senders run in host 0)" if hosts else " (the senders' included: one VM)"))
    print(f"\nslow consumer ({a.slow_us} us per sample, 16 slots, {a.slow_samples} samples): RNR NAKs "
          f"with credits {[r['rnr_naks'] for r in slow['on']]}, without {[r['rnr_naks'] for r in slow['off']]}; "
          f"samples/s with {[round(r['rate'], 1) for r in slow['on']]}, without "
          f"{[round(r['rate'], 1) for r in slow['off']]}; the feeder waited for credit "
          f"{[r['credits']['waits'] for r in slow['on']]} times")
    print(f"targets: gdrx/dataloader-0 {med['gdrx'] / med['dataloader-0']:.2f}x, "
          f"gdrx/dataloader-2 {med['gdrx'] / med['dataloader-2']:.2f}x (>= 1.0x), "
          f"gdrx/tcp {med['gdrx'] / med['tcp']:.2f}x (>= 1.5x)")
    if a.json:
        Path(a.json).write_text(json.dumps({
            "schema": 1, "emulated": True,
            "config": {"samples": a.samples, "shape": list(shape), "reps": a.reps,
                       "slow_us": a.slow_us, "slow_samples": a.slow_samples, "slots": 256,
                       "hosts": hosts},
            "methods": rows,
            "slow_consumer": {k: [{"rate": r["rate"], "rnr_naks": r["rnr_naks"], "credits": r["credits"]}
                                  for r in v] for k, v in slow.items()},
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
