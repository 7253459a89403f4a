"""gdrx-feed (the feeder binary) streaming a dataset to ranks: every sample once per epoch
across the ranks, each verified against the shards on disk; the shuffled order reproduced on
every run; a feeder started at a cursor continues the same order; .npy and WebDataset tar
shards; collated batches; clear errors for bad arguments."""

import io
import json
import os
import subprocess
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

import gdrx
from payload import SHARDS, shard_image as image, shard_label as label

ROOT = Path(__file__).resolve().parents[2]
FEED = os.environ.get("GDRX_FEED", str(ROOT / "target" / "release" / "gdrx-feed"))


def feeder(data: Path, rx, rank: int, world: int, *args: str) -> subprocess.Popen:
    ip, port = rx.address
    if not os.path.exists(FEED):
        pytest.fail(f"{FEED} is missing: cargo build --release -p gdrx-feed (run-tests.sh does)")
    return subprocess.Popen(
        [FEED, "--data", str(data), "--to", f"{ip}:{port}", "--rank", str(rank), "--world", str(world),
         "--timeout", "120", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(p: subprocess.Popen) -> dict:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, f"gdrx-feed exited {p.returncode}: {err.strip()}"
    return json.loads(out.strip().splitlines()[-1])


def consume(rx) -> list:
    """(epoch, index, shard, item) of each sample of `rx`, each checked against the shards."""
    got = []
    for img, lab in gdrx.tensors(rx):
        h = img.header
        assert lab.header.index == h.index and (h.part, lab.header.part, h.parts) == (0, 1, 2)
        assert (img.dtype, img.shape, lab.dtype, lab.shape) == ("float32", [3, 4, 4], "int64", [])
        np.testing.assert_array_equal(img.numpy(), image(h.shard, h.item))
        assert int(lab.numpy()) == label(h.shard, h.item)
        got.append((h.epoch, h.index, h.shard, h.item))
    return got


def test_two_ranks_get_every_sample_once_per_epoch(rdma, npy_dataset):
    rxs = [gdrx.Receiver(ip=rdma.ip, slot_size=192, slots=32, timeout=120, header_split=True) for _ in range(2)]
    try:
        feeds = [feeder(npy_dataset, rx, r, 2, "--seed", "11", "--epochs", "2") for r, rx in enumerate(rxs)]
        got: dict = {}
        threads = [threading.Thread(target=lambda r=r: got.__setitem__(r, consume(rxs[r]))) for r in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        reports = [finish(p) for p in feeds]
    finally:
        for rx in rxs:
            rx.close()
    assert set(got) == {0, 1}, "both consumers finished"
    assert [len(got[0]), len(got[1])] == [40, 40], "20 samples per rank per epoch, 2 epochs"
    assert [r["messages"] for r in reports] == [80, 80]
    # Each feeder was held back by its rank's credits, which covered every message sent.
    assert all(r["credits"] is not None and r["credits"]["grant"] >= 80 for r in reports), reports
    for epoch in (0, 1):
        samples = sorted((s, i) for r in (0, 1) for (e, _, s, i) in got[r] if e == epoch)
        assert samples == [(s, i) for s, n in enumerate(SHARDS) for i in range(n)], "each sample once"
        indexes = sorted(x for r in (0, 1) for (e, x, _, _) in got[r] if e == epoch)
        assert indexes == list(range(40))
        # Rank r holds the epoch's positions r, r + 2, ...
        assert all(x % 2 == r for r in (0, 1) for (e, x, _, _) in got[r] if e == epoch)
    order = lambda r, e: [(s, i) for (ep, _, s, i) in got[r] if ep == e]  # noqa: E731
    assert order(0, 0) != order(0, 1), "each epoch has its own order"


def run_rank0(rdma, data: Path, *args: str) -> list:
    with gdrx.Receiver(ip=rdma.ip, slot_size=192, slots=64, timeout=120, header_split=True) as rx:
        p = feeder(data, rx, 0, 2, *args)
        got = consume(rx)
        finish(p)
    return [(s, i) for (_, _, s, i) in got]


def test_the_order_is_reproduced_and_a_feeder_resumes_at_a_cursor(rdma, npy_dataset):
    first = run_rank0(rdma, npy_dataset, "--seed", "5")
    again = run_rank0(rdma, npy_dataset, "--seed", "5")
    assert first == again, "the same seed gives the same order on every run"
    assert run_rank0(rdma, npy_dataset, "--seed", "6") != first
    resumed = run_rank0(rdma, npy_dataset, "--seed", "5", "--from", "7")
    assert resumed == first[7:], "a feeder started at cursor 7 continues the same order"
    plain = run_rank0(rdma, npy_dataset, "--no-shuffle")
    every = [(s, i) for s, n in enumerate(SHARDS) for i in range(n)]
    assert plain == every[0::2]


def test_batches_are_the_planned_samples_stacked_zero_copy(rdma, npy_dataset):
    """--batch-size 8: each message per part is up to 8 consecutive planned samples stacked,
    as torch's default_collate stacks them; the epoch's last batch is shorter."""
    batches = []
    with gdrx.Receiver(ip=rdma.ip, slot_size=8 * 192, slots=16, timeout=120, header_split=True) as rx:
        p = feeder(npy_dataset, rx, 1, 2, "--seed", "4", "--epochs", "2", "--batch-size", "8")
        for img, lab in gdrx.tensors(rx):
            h = img.header
            assert h.batch and lab.header.batch and h.count == lab.header.count == img.shape[0]
            assert (img.dtype, img.shape[1:], lab.dtype, lab.shape) == ("float32", [3, 4, 4], "int64", [h.count])
            x = np.from_dlpack(img)
            assert x.ctypes.data == img.address, "the batch is the receive buffer"
            batches.append((h.epoch, h.index, x.copy(), np.from_dlpack(lab).copy()))
        report = finish(p)
    # 20 samples per epoch for rank 1 of 2: batches of 8, 8 and 4, two parts each.
    assert [(e, len(x)) for e, _, x, _ in batches] == [(0, 8), (0, 8), (0, 4), (1, 8), (1, 8), (1, 4)]
    assert report["messages"] == 12 and report["cursor"] == {"epoch": 2, "next": 0}
    for epoch in (0, 1):
        plan = gdrx.plan(SHARDS, seed=4, epoch=epoch, world=2, rank=1)
        mine = [b for b in batches if b[0] == epoch]
        starts = [0, 8, 16]
        for (_, index, x, y), k in zip(mine, starts):
            chunk = plan[k : k + 8]
            assert index == chunk[0][0], "a batch carries its first sample's index"
            np.testing.assert_array_equal(x, np.stack([image(s, i) for _, s, i in chunk]))
            np.testing.assert_array_equal(y, np.stack([np.int64(label(s, i)) for _, s, i in chunk]))


def test_webdataset_tar_shards(rdma, tmp_path):
    for s in range(2):
        with tarfile.open(tmp_path / f"shard-{s}.tar", "w") as tar:
            for i in range(5):
                for ext, data in (("image.npy", image(s, i)), ("cls", str(label(s, i)).encode())):
                    if isinstance(data, np.ndarray):
                        buf = io.BytesIO()
                        np.save(buf, data)
                        data = buf.getvalue()
                    info = tarfile.TarInfo(f"sample{s}{i:02}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    with gdrx.Receiver(ip=rdma.ip, slot_size=192, slots=32, timeout=120, header_split=True) as rx:
        p = feeder(tmp_path, rx, 0, 1, "--seed", "1")
        seen = []
        for img, cls in gdrx.tensors(rx):
            h = img.header
            np.testing.assert_array_equal(img.numpy(), image(h.shard, h.item))
            assert cls.dtype == "uint8" and bytes(cls.numpy()) == str(label(h.shard, h.item)).encode()
            seen.append((h.shard, h.item))
        assert finish(p)["messages"] == 20
    assert sorted(seen) == [(s, i) for s in range(2) for i in range(5)]


def test_bad_arguments_are_clear_errors(tmp_path):
    if not os.path.exists(FEED):
        pytest.fail(f"{FEED} is missing: cargo build --release -p gdrx-feed (run-tests.sh does)")
    run = lambda *a: subprocess.run([FEED, *a], capture_output=True, text=True, timeout=60)  # noqa: E731
    r = run("--data", str(tmp_path / "nope"), "--to", "10.0.0.1:1", "--rank", "0", "--world", "1")
    assert r.returncode != 0 and "nope" in r.stderr, r.stderr
    r = run("--data", str(tmp_path), "--to", "10.0.0.1:1", "--rank", "0", "--world", "1")
    assert r.returncode != 0 and "no shards" in r.stderr, r.stderr
    r = run("--data", str(tmp_path), "--to", "10.0.0.1:1", "--rank", "2", "--world", "2")
    assert r.returncode != 0 and "not in a world of 2" in r.stderr, r.stderr
