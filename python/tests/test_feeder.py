"""The data service in Python: gdrx.Dataset and gdrx.plan; gdrx.Feeder finding two ranks in a
torch TCPStore and streaming them two epochs through RdmaIterableDataset; a rank stopped in the
middle of an epoch and restarted from its state_dict gets the rest, none lost or repeated."""

import socket
import threading
from datetime import timedelta

import numpy as np
import pytest

import gdrx
from payload import SHARDS, shard_image as image, shard_label as label

torch = pytest.importorskip("torch", reason="torch is installed by deploy/python-env.sh")
import gdrx.torch  # noqa: E402

RX = dict(slot_size=192, slots=32, timeout=120, header_split=True)


def tcp_store():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return torch.distributed.TCPStore(
        "127.0.0.1", port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=120)
    )


def test_dataset_and_plan(npy_dataset):
    ds = gdrx.Dataset(str(npy_dataset))
    assert ds.shard_sizes == SHARDS and len(ds) == 40 and ds.parts == ["image", "label"]
    img, lab = ds.read(2, 5)
    np.testing.assert_array_equal(img, image(2, 5))
    assert int(lab) == label(2, 5)
    p0 = gdrx.plan(SHARDS, seed=3, epoch=1, world=2, rank=0)
    p1 = gdrx.plan(SHARDS, seed=3, epoch=1, world=2, rank=1)
    assert p0 == gdrx.plan(SHARDS, seed=3, epoch=1, world=2, rank=0)
    assert sorted(s for _, s, _ in p0 + p1) == sorted(s for s, n in enumerate(SHARDS) for _ in range(n))
    assert sorted((s, i) for _, s, i in p0 + p1) == [(s, i) for s, n in enumerate(SHARDS) for i in range(n)]
    assert [x for x, _, _ in p0] == list(range(0, 40, 2))
    with pytest.raises(gdrx.ConfigError, match="not in a world"):
        gdrx.plan(SHARDS, seed=1, epoch=0, world=2, rank=2)
    with pytest.raises(gdrx.ConfigError, match="missing: No such file"):
        gdrx.Dataset(str(npy_dataset / "missing"))


def consume(ds, limit=None):
    """(epoch, shard, item) of what the dataset yields (each checked against the shards)."""
    got = []
    it = iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0))
    for img, lab in it:
        assert img.dtype == torch.float32 and img.shape == (3, 4, 4) and lab.dtype == torch.int64
        # Which sample: the label says (shard * 100 + item); the image must match it.
        s, i = divmod(int(lab), 100)
        assert torch.equal(img, torch.from_numpy(image(s, i)))
        got.append((ds.state_dict()["epoch"], s, i))
        if limit is not None and len(got) == limit:
            break
    del it  # closes the generator: the receiver closes
    return got


def test_feeder_serves_two_ranks_from_a_tcp_store_and_a_restarted_rank_resumes(rdma, npy_dataset):
    store = tcp_store()
    feeder = gdrx.Feeder(str(npy_dataset), world=2, seed=21, epochs=2, timeout=30)
    served = {}
    t = threading.Thread(target=lambda: served.update(feeder.serve(store, rejoin_timeout=120)))
    t.start()
    got = {}

    def rank(r, stop_at=None):
        ds = gdrx.torch.RdmaIterableDataset(typed=True, store=store, rank=r, ip=rdma.ip, **RX)
        first = consume(ds, stop_at)
        got[r] = first
        if stop_at is None:
            return
        # Stopped in the middle of epoch 0; restart from the saved state.
        state = ds.state_dict()
        assert state == {"rank": r, "epoch": 0, "next": stop_at}
        again = gdrx.torch.RdmaIterableDataset(typed=True, store=store, rank=r, ip=rdma.ip, **RX)
        again.load_state_dict(state)
        got[r] = first + consume(again)

    ranks = [threading.Thread(target=rank, args=(0,)), threading.Thread(target=rank, args=(1, 9))]
    for th in ranks:
        th.start()
    for th in ranks:
        th.join(timeout=300)
    t.join(timeout=300)
    assert set(served) == {0, 1}, served
    assert served[0]["feeds"] == 1 and served[1]["feeds"] == 2, served
    assert served[1]["resumed_at"] == [(0, 9)], served
    for r in (0, 1):
        for epoch in (0, 1):
            planned = [(s, i) for _, s, i in feeder.plan(r, epoch)]
            assert [(s, i) for (e, s, i) in got[r] if e == epoch] == planned, (r, epoch)
    every = sorted((s, i) for s, n in enumerate(SHARDS) for i in range(n))
    for epoch in (0, 1):
        assert sorted((s, i) for r in (0, 1) for (e, s, i) in got[r] if e == epoch) == every


def test_a_rank_that_never_comes_is_a_timeout(npy_dataset):
    store = tcp_store()
    feeder = gdrx.Feeder(str(npy_dataset), world=1, seed=0)
    with pytest.raises(gdrx.Timeout, match="rank 0 did not publish itself"):
        feeder.serve(store, rejoin_timeout=0.5)


def test_the_feeder_command_hosts_the_store_and_serves_a_rank(rdma, npy_dataset):
    """What the Kubernetes feeder runs: python -m gdrx.feeder --host-store; the rank connects to
    the store as a client."""
    import json
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen(
        [sys.executable, "-m", "gdrx.feeder", "--data", str(npy_dataset), "--store", f"127.0.0.1:{port}",
         "--host-store", "--world", "1", "--seed", "4", "--rejoin-timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert json.loads(p.stdout.readline())["samples"] == 40
        store = torch.distributed.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=60))
        ds = gdrx.torch.RdmaIterableDataset(typed=True, store=store, rank=0, ip=rdma.ip, **RX)
        got = consume(ds)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["messages"] == 80 and report["feeds"] == 1
    assert [(s, i) for _, s, i in got] == [(s, i) for _, s, i in gdrx.plan(SHARDS, seed=4, epoch=0, world=1, rank=0)]
