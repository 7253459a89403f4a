"""The data service across separate kernels (deploy/rehearse.sh): one feeder VM, N rank VMs, and
a training job under torchrun whose batches arrive over RDMA.

    service.py data DIR          (this machine) the dataset: scikit-learn's digits (1797 8x8
                                 images of handwritten digits, shipped inside the package), 1500
                                 of them for training in 5 .npy shards (DIR/data), 297 held out
                                 (DIR/test.npz)
    service.py run DIR           (in every VM of deploy/hosts.sh) host 0 runs the feeder command,
                                 which hosts the TCPStore (collated batches of 100); host i runs
                                 torchrun (c10d rendezvous on host 1) with one rank of
                                 deploy/k8s/train.py, which trains a small model with DDP on the
                                 batches it receives over RDMA. Rank 1 is SIGKILLed in the middle
                                 of epoch 1 (of 0 and 1); torchrun restarts both ranks, each loads its
                                 checkpoint (model, optimizer, data cursor) and the feeder resumes
                                 each stream at its cursor. Then the same processes train the same
                                 model again from the shards on local disk (torch's DataLoader,
                                 the same plan) for comparison.
    service.py check DIR RANKS   (this machine) what the ranks trained on, batch by batch, is
                                 exactly the plan (every sample once per epoch across the ranks,
                                 in each rank's order, bit-identical to the shards), the run killed
                                 and resumed included; the local run's batches are the same bits;
                                 both runs end with the same parameters, bit for bit, and the same
                                 accuracy on the held-out images

Each rank logs one JSON line per event to DIR/rank<r>.jsonl (deploy/k8s/train.py's --events).
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHARDS, PER_SHARD, SEED, EPOCHS, BATCH, LR = 5, 300, 3, 2, 100, 0.03
STORE, RDZV, DONE = 29500, 29400, 29501  # the feeder's TCPStore, torchrun's rendezvous, "finished"
CKPT_EVERY, KILL = 3, (1, 12)  # rank 1 dies before step 12 (epoch 1, batch 4 of 8), after a checkpoint at 11
TRAIN = Path(__file__).resolve().parents[1] / "k8s" / "train.py"


def data(out: Path) -> None:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = (x[order] / 16).astype(np.float32), y[order].astype(np.int64)
    n = SHARDS * PER_SHARD
    d = out / "data"
    d.mkdir(parents=True, exist_ok=True)
    for s in range(SHARDS):
        np.save(d / f"{s:03}.x.npy", x[s * PER_SHARD : (s + 1) * PER_SHARD])
        np.save(d / f"{s:03}.y.npy", y[s * PER_SHARD : (s + 1) * PER_SHARD])
    np.savez(out / "test.npz", x=x[n:], y=y[n:])


def feeder_host(out: Path, ranks: int) -> int:
    """Host 0: the feeder command hosting the TCPStore (as deploy/k8s/feeder.yaml runs it), then
    forwarding until every rank host finished (the ranks' gloo traffic crosses this host)."""
    done = socket.create_server(("0.0.0.0", DONE))
    with open(out / "feeder.jsonl", "w") as f:
        rc = subprocess.call(
            [sys.executable, "-m", "gdrx.feeder", "--data", str(out / "data"), "--store", f"0.0.0.0:{STORE}",
             "--host-store", "--world", str(ranks), "--seed", str(SEED), "--epochs", str(EPOCHS),
             "--batch-size", str(BATCH), "--rejoin-timeout", "900"],
            stdout=f,
        )
    done.settimeout(900)
    for _ in range(ranks):
        conn, _ = done.accept()
        print("finished:", conn.recv(100).decode(), flush=True)
        conn.close()
    return rc


def rank_host(out: Path, host: int, ranks: int) -> int:
    """Host i: torchrun with one rank of the trainer; then tells host 0 it finished."""
    feeder = os.environ["GDRX_FEEDER_IP"]
    # A fresh worker store per rendezvous round (TORCH_DISABLE_SHARE_RDZV_TCP_STORE): with the
    # agent's shared store, a restarted worker that comes up before its peer reads the peer's
    # previous gloo address from the last round and gives up connecting to it.
    env = dict(os.environ, GLOO_SOCKET_IFNAME=os.environ["GDRX_IFACE"], OMP_NUM_THREADS="1",
               TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", GDRX_REHEARSAL_KILL=f"{KILL[0]}:{KILL[1]}")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nnodes={ranks}", "--nproc-per-node=1",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=10.91.1.2:{RDZV}", "--rdzv-id=gdrx-rehearsal",
        f"--rdzv-conf=is_host={int(host == 1)}", f"--local-addr={os.environ['GDRX_RDMA_IP']}",
        "--max-restarts=3", "--monitor-interval=0.5",
        str(TRAIN), "--store", f"{feeder}:{STORE}", "--slot-size", "32768", "--slots", "32",
        "--ckpt", str(out / "ckpt"), "--ckpt-every", str(CKPT_EVERY), "--eval", str(out / "test.npz"),
        "--events", str(out), "--reference", str(out / "data"), "--seed", str(SEED),
        "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--lr", str(LR),
    ]
    rc = 1
    try:
        rc = subprocess.call(cmd, env=env)
    finally:
        for _ in range(120):
            try:
                with socket.create_connection((feeder, DONE), timeout=5) as c:
                    c.sendall(f"host {host} rc {rc}".encode())
                break
            except OSError:
                time.sleep(1)
    return rc


def run(out: Path) -> int:
    host, ranks = int(os.environ["GDRX_HOST"]), int(os.environ["GDRX_RANKS"])
    return feeder_host(out, ranks) if host == 0 else rank_host(out, host, ranks)


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def planned_batches(out: Path, ranks: int):
    """Rank r's batches as the plan makes them from the shards: [(epoch, [(shard, item)], x, y)]."""
    import gdrx

    d = out / "data"
    xs = [np.load(d / f"{s:03}.x.npy") for s in range(SHARDS)]
    ys = [np.load(d / f"{s:03}.y.npy") for s in range(SHARDS)]
    want = {}
    for r in range(ranks):
        want[r] = []
        for e in range(EPOCHS):
            plan = gdrx.plan([PER_SHARD] * SHARDS, seed=SEED, epoch=e, world=ranks, rank=r)
            for k in range(0, len(plan), BATCH):
                items = [(s, i) for _, s, i in plan[k : k + BATCH]]
                x = np.stack([xs[s][i] for s, i in items])
                y = np.stack([ys[s][i] for s, i in items])
                want[r].append((e, items, digest(x), digest(y)))
    return want


def runs_of(path: Path):
    """The rank's log split into its processes' runs (a run starts at its "start" event)."""
    runs = []
    for line in path.read_text().splitlines():
        ev = json.loads(line)
        if ev["event"] == "start":
            runs.append([])
        runs[-1].append(ev)
    return runs


def check(out: Path, ranks: int) -> int:
    want = planned_batches(out, ranks)
    # Every sample exactly once per epoch across the ranks.
    for e in range(EPOCHS):
        seen = sorted(it for r in range(ranks) for ep, items, _, _ in want[r] if ep == e for it in items)
        assert seen == [(s, i) for s in range(SHARDS) for i in range(PER_SHARD)], f"epoch {e}"
    finals = {}
    for r in range(ranks):
        runs = runs_of(out / f"rank{r}.jsonl")
        assert len(runs) >= 2, f"rank {r}: {len(runs)} run(s); the job was to be restarted once"
        first, last = runs[0], runs[-1]
        assert first[0]["restored"] is None, f"rank {r}'s first run started from a checkpoint"
        # What the model saw: the first run's steps up to the checkpoint the last run restored,
        # then the last run's (a run in between would have to have restored the same).
        restored = last[0]["restored"]
        assert restored is not None, f"rank {r}: the restarted run did not load its checkpoint"
        cut = restored["step"]
        ckpts = [ev for ev in first if ev["event"] == "checkpoint"]
        assert ckpts and ckpts[-1]["step"] == cut, f"rank {r}: restored step {cut}, saved {ckpts[-1:]}"
        steps = [ev for ev in first if ev["event"] == "step" and ev.get("run") is None and ev["step"] <= cut]
        steps += [ev for ev in last if ev["event"] == "step" and ev.get("run") is None]
        assert [ev["step"] for ev in steps] == list(range(len(want[r]))), f"rank {r}: steps {[ev['step'] for ev in steps]}"
        for ev, (e, items, x, y) in zip(steps, want[r]):
            assert (ev["x"], ev["y"], ev["n"]) == (x, y, len(items)), (
                f"rank {r} step {ev['step']} (epoch {e}): the batch differs from the shards' planned one"
            )
        local = [ev for ev in last if ev.get("run") == "local" and ev["event"] == "step"]
        assert [(ev["x"], ev["y"]) for ev in local] == [(x, y) for _, _, x, y in want[r]], (
            f"rank {r}: the local run's batches differ from the plan's"
        )
        done = [ev for ev in last if ev["event"] == "done" and ev.get("run") is None]
        ref = [ev for ev in last if ev["event"] == "done" and ev.get("run") == "local"]
        assert done and ref, f"rank {r}: a run did not finish"
        finals[r] = (done[0], ref[0], cut, restored["data"], first, len(runs))
    # The fault happened where it was meant to: rank KILL[0] died in the middle of epoch 1.
    killed = [ev for ev in finals[KILL[0]][4] if ev["event"] == "killed"]
    assert killed and killed[0]["step"] == KILL[1], f"rank {KILL[0]} was not killed at step {KILL[1]}"
    per_epoch = len(want[KILL[0]]) // EPOCHS
    state = finals[KILL[0]][3]
    assert state["epoch"] == 1 and 0 < state["next"] < per_epoch * BATCH, f"resumed at {state}"
    # Both runs trained the same model, bit for bit.
    for r, (done, ref, *_rest) in finals.items():
        assert done["params"] == ref["params"], f"rank {r}: RDMA and local runs ended with different parameters"
        assert done["accuracy"] == ref["accuracy"], f"rank {r}: accuracy {done['accuracy']} vs {ref['accuracy']}"
    acc = finals[0][0]["accuracy"]
    assert acc >= 0.85, f"held-out accuracy {acc}: the model did not learn"
    # The feeder resumed each restarted rank at the cursor its checkpoint held.
    feeder = [json.loads(line) for line in (out / "feeder.jsonl").read_text().splitlines()]
    served = {row["rank"]: row for row in feeder if "rank" in row}
    assert sorted(served) == list(range(ranks)), feeder
    for r, (_, _, cut, state, _, nruns) in finals.items():
        resumed = [tuple(c) for c in served[r]["resumed_at"]]
        assert (state["epoch"], state["next"]) in resumed, f"rank {r}: feeder resumed at {resumed}, rank at {state}"
        print(f"rank {r}: {len(want[r])} batches of up to {BATCH} over RDMA, {nruns} runs, resumed after step "
              f"{cut} at epoch {state['epoch']} sample {state['next']}; feeder: {served[r]}")
    print(f"rehearsal: {ranks} ranks x {EPOCHS} epochs of {SHARDS * PER_SHARD} digits under torchrun, rank "
          f"{KILL[0]} killed at step {KILL[1]} and resumed: every batch bit-identical to the shards' plan "
          f"and to the local run, every sample once per epoch; parameters identical to the local run, "
          f"held-out accuracy {acc:.4f} in both")
    return 0


if __name__ == "__main__":
    cmd, d = sys.argv[1], Path(sys.argv[2])
    if cmd == "data":
        data(d)
        sys.exit(0)
    if cmd == "run":
        sys.exit(run(d))
    if cmd == "check":
        sys.exit(check(d, int(sys.argv[3])))
    sys.exit(f"unknown command {cmd}")
