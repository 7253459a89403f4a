"""Fixtures for the Python suite. The tests need an RDMA device: they run inside the soft-RoCE
testbed (`deploy/testbed.sh`), which sets GDRX_RDMA_IP and GDRX_RDMA_DEV. Outside it they are
skipped, saying why; with GDRX_REQUIRE_RDMA=1 (as the README's test command runs them) a missing
device fails the run instead."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


class Env:
    def __init__(self, ip: str, dev: str) -> None:
        self.ip = ip
        self.dev = dev


@pytest.fixture(scope="session")
def rdma() -> Env:
    ip, dev = os.environ.get("GDRX_RDMA_IP"), os.environ.get("GDRX_RDMA_DEV")
    if not ip or not dev:
        msg = "needs an RDMA device: run inside deploy/testbed.sh (sets GDRX_RDMA_IP, GDRX_RDMA_DEV)"
        if os.environ.get("GDRX_REQUIRE_RDMA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return Env(ip, dev)


class SenderProc:
    """A sender in another process (sender_proc.py)."""

    def __init__(self, ip: str, port: int, tag: int, count: int, size: int, typed: bool = False,
                 options: tuple = ()) -> None:
        env = dict(os.environ, PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.tag, self.count, self.size = tag, count, size
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "sender_proc.py"), ip, str(port), str(tag), str(count), str(size)]
            + (["typed"] if typed else []) + list(options),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def finish(self, timeout: float = 300.0) -> dict:
        out, err = self.proc.communicate(timeout=timeout)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            raise AssertionError(f"sender {self.tag} exited {self.proc.returncode}: {err.strip()}")
        return json.loads(lines[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def senders():
    """Starts senders; kills the ones still running at the end of the test."""
    started = []

    def start(rx, tag: int, count: int, size: int, typed: bool = False, options: tuple = ()) -> SenderProc:
        ip, port = rx.address
        s = SenderProc(ip, port, tag, count, size, typed, options)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


@pytest.fixture(scope="session")
def npy_dataset(tmp_path_factory) -> Path:
    """A dataset of .npy shards: payload.SHARDS samples of (image, label) per shard."""
    import numpy as np

    from payload import SHARDS, shard_image, shard_label

    d = tmp_path_factory.mktemp("npy")
    for s, n in enumerate(SHARDS):
        np.save(d / f"{s:03}.image.npy", np.stack([shard_image(s, i) for i in range(n)]))
        np.save(d / f"{s:03}.label.npy", np.array([shard_label(s, i) for i in range(n)], dtype=np.int64))
    return d
