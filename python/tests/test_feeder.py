"""The data service in Python: gdrx.Dataset and gdrx.plan; gdrx.Feeder finding two ranks in a
torch TCPStore and streaming them two epochs through RdmaIterableDataset; a rank stopped in the
middle of an epoch and restarted from its state_dict gets the rest, none lost or repeated."""

import socket
import threading
import time
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


FEEDER_ARGS = ["--world", "1", "--seed", "8", "--epochs", "2", "--rejoin-timeout", "120"]


def feeder_command(data, port) -> dict:
    """The feeder command's main (what `python -m gdrx.feeder` runs) for rank 0 of 1, in this
    process: a process of its own would spend minutes importing torch under emulation, longer
    than the restart it stands for (the rehearsal, deploy/rehearse.sh, runs it as a process).
    Returns its report for the rank."""
    import contextlib
    import io
    import json

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = gdrx.feeder.main(["--data", str(data), "--store", f"127.0.0.1:{port}", *FEEDER_ARGS])
    assert rc == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])


def first_feeder(store, data, procs):
    """The feeder that is killed: gdrx-feed (the binary starts at once) for rank 0 of 1, pointed
    at the address the rank publishes in the store."""
    import json
    import subprocess
    import time

    from test_feed import FEED

    deadline = time.monotonic() + 120
    while not store.check(["gdrx/rank/0"]):
        assert time.monotonic() < deadline, "the rank did not publish itself"
        time.sleep(0.05)
    info = json.loads(store.get("gdrx/rank/0"))
    procs["first"] = subprocess.Popen(
        [FEED, "--data", str(data), "--to", f"{info['ip']}:{info['port']}", "--rank", "0", "--world", "1",
         "--seed", "8", "--epochs", "2", "--timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.parametrize("restart", ["feeder-command", "stale-cursor"])
def test_a_killed_feeder_is_restarted_and_the_rank_resumes_where_it_stopped(rdma, npy_dataset, restart):
    """The feeder process (gdrx-feed) is killed (SIGKILL) in the middle of epoch 0; the rank
    notices that its feeder left without the end of the stream and publishes its cursor again,
    and a new feeder resumes: both epochs arrive complete, in the planned order, none lost or
    repeated. "feeder-command": the feeder command (`python -m gdrx.feeder`'s main) finds the
    rank's cursor in the store and resumes there. "stale-cursor": a feeder resumes from an older
    cursor (the start: one that read the rank's key before the rank published again), and the
    rank drops what it had."""
    import json

    store = tcp_store()
    port = store.port
    procs = {}
    threading.Thread(target=first_feeder, args=(store, npy_dataset, procs), daemon=True).start()
    reports = {}

    def restart_feeder():
        if restart == "feeder-command":
            # Started once the rank has published its cursor again (a feeder that reads the key
            # before that resumes from an older cursor: the stale-cursor case).
            while json.loads(store.get("gdrx/rank/0"))["gen"] < 2:
                time.sleep(0.05)
            reports.update(feeder_command(npy_dataset, port))
        else:
            f = gdrx.Feeder(str(npy_dataset), world=1, seed=8, epochs=2, timeout=60)
            info = json.loads(store.get("gdrx/rank/0"))
            reports.update(f.feed(0, (info["ip"], info["port"]), (0, 0)))

    starter = None
    try:
        # Few slots: the feeder can be only a few samples ahead of the consumer when it dies.
        ds = gdrx.torch.RdmaIterableDataset(typed=True, store=store, rank=0, ip=rdma.ip,
                                            rejoin_timeout=120, **dict(RX, slots=8))
        got = []
        for img, lab in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0):
            s, i = divmod(int(lab), 100)
            assert torch.equal(img, torch.from_numpy(image(s, i)))
            got.append((ds.state_dict()["epoch"], s, i))
            if len(got) == 15:
                procs["first"].kill()
                procs["first"].wait()
                starter = threading.Thread(target=restart_feeder)
                starter.start()
        starter.join(timeout=120)
    except gdrx.GdrxError as e:
        # Say what the feeders said.
        said = {}
        for name, p in procs.items():
            if p.poll() is None:
                p.kill()
            said[name] = p.communicate(timeout=30)
        raise AssertionError(f"{e}; the feeders said: {said}") from e
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    plan = [(e, s, i) for e in (0, 1) for _, s, i in gdrx.plan(SHARDS, seed=8, epoch=e, world=1, rank=0)]
    assert got == plan, "both epochs complete, in order, nothing lost or repeated"
    assert ds.state_dict() == {"rank": 0, "epoch": 1, "next": 40}
    report = reports
    if restart == "feeder-command":
        # Where the rank was: the 15 taken, and what its buffers held when the feeder died.
        epoch, nxt = report["started_at"]
        assert epoch == 0 and 15 <= nxt < 40, report
    else:
        # The stale feeder sent both epochs from the start; the rank kept what it lacked.
        assert report["messages"] == 160 and report["cursor"] == (2, 0), report
    print(f"{restart}: {report}")
