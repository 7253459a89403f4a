"""The trainer, one rank under torchrun: its (x, y) batches arrive over RDMA from gdrx's feeder
(collated there: ``python -m gdrx.feeder --batch-size B``), a small model is trained with DDP
(over gloo), and
a checkpoint per rank holds the model, the optimizer and the data cursor
(``RdmaIterableDataset.state_dict()``), so a restarted rank resumes its epoch where its
checkpoint was: torchrun restarts every rank of the job when one dies, each loads its checkpoint
and publishes its cursor, and the feeder resumes each stream there.

    torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT \\
        train.py --store FEEDER:PORT [--provider hugepage] [--slot-size N] [--ckpt DIR]
                 [--eval test.npz] [--events DIR] [--reference SHARDS --seed S --epochs N
                 --batch-size B]

Run by deploy/rehearse.sh (two rank VMs, torchrun's c10d rendezvous, rank 1 killed in the middle
of an epoch and both restarted from their checkpoints) and by the Kubernetes Job
(deploy/k8s/trainer.yaml: validated there, not run). With ``--reference`` the same processes
then train the same model again on batches that torch's DataLoader makes from the shards on
local disk with the same plan (``gdrx.plan``: seed, epoch, rank, world), so the two runs can be
compared batch by batch and parameter by parameter.
"""

import argparse
import hashlib
import json
import os
import signal
import socket
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.utils.data

import gdrx
import gdrx.torch


def model_of(features: int, classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(features, 64), torch.nn.ReLU(), torch.nn.Linear(64, classes)
    )


def digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


class Log:
    """One JSON line per event, in DIR/rank<r>.jsonl (appended to across restarts)."""

    def __init__(self, d, rank: int, attempt: int) -> None:
        self.f = open(Path(d) / f"rank{rank}.jsonl", "a") if d else None
        self.base = {"rank": rank, "attempt": attempt, "pid": os.getpid()}

    def __call__(self, event: str, **kw) -> None:
        if self.f:
            self.f.write(json.dumps({**self.base, "event": event, "t": round(time.time(), 3), **kw}) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.f:
            self.f.close()


def train(model, opt, batches, log: Log, first_step: int, before=None, after=None) -> int:
    """Trains on ``batches`` ((x, y) pairs), numbering the steps from ``first_step``; calls
    ``before(step)`` and ``after(step)`` around each. Returns the next step's number."""
    step = first_step
    with model.join():  # ranks may differ by one batch per epoch
        for x, y in batches:
            if before:
                before(step)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            log("step", step=step, n=len(y), x=digest(x), y=digest(y), loss=round(loss.item(), 6))
            if after:
                after(step)
            step += 1
    return step


def accuracy(model, path) -> float:
    if not path:
        return float("nan")
    t = np.load(path)
    with torch.no_grad():
        pred = model(torch.from_numpy(t["x"])).argmax(1)
    return float((pred == torch.from_numpy(t["y"])).double().mean())


class LocalShards(torch.utils.data.Dataset):
    """The shards on local disk (NNN.x.npy, NNN.y.npy), item (shard, item) -> (x, y)."""

    def __init__(self, d) -> None:
        xs = sorted(Path(d).glob("*.x.npy"))
        self.x = [np.load(p, mmap_mode="r") for p in xs]
        self.y = [np.load(str(p)[: -len(".x.npy")] + ".y.npy", mmap_mode="r") for p in xs]
        self.sizes = [len(x) for x in self.x]

    def __getitem__(self, key):
        s, i = key
        return np.array(self.x[s][i]), np.array(self.y[s][i])

    def __len__(self) -> int:
        return sum(self.sizes)


def local_loader(d, seed: int, epochs: int, batch: int, world: int, rank: int):
    """torch's DataLoader over the local shards, batches in the order gdrx's plan gives this rank."""
    ds = LocalShards(d)
    order = []
    for e in range(epochs):
        plan = gdrx.plan(ds.sizes, seed=seed, epoch=e, world=world, rank=rank)
        order += [[(s, i) for _, s, i in plan[k : k + batch]] for k in range(0, len(plan), batch)]
    return torch.utils.data.DataLoader(ds, batch_sampler=order, num_workers=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="HOST:PORT of the feeder's TCPStore")
    ap.add_argument("--ip", default=os.environ.get("GDRX_RDMA_IP"), help="this rank's RDMA address")
    ap.add_argument("--provider", default="host")
    ap.add_argument("--slot-size", type=int, default=65536)
    ap.add_argument("--slots", type=int, default=256)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--model-seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.01, help="Adam's learning rate")
    ap.add_argument("--ckpt", default="/ckpt")
    ap.add_argument("--ckpt-every", type=int, default=100, help="steps between checkpoints")
    ap.add_argument("--eval", help=".npz with x, y: the held-out set the accuracy is measured on")
    ap.add_argument("--events", help="directory for one JSON line per event (rank<r>.jsonl)")
    ap.add_argument("--reference", help="the shards on local disk: train again from them and compare")
    ap.add_argument("--seed", type=int, default=0, help="the feeder's shuffle seed (--reference)")
    ap.add_argument("--epochs", type=int, default=1, help="the feeder's epochs (--reference)")
    ap.add_argument("--batch-size", type=int, default=1, help="the feeder's batch size (--reference)")
    a = ap.parse_args()
    if not a.ip:
        ap.error("give --ip or set GDRX_RDMA_IP: the address of this rank's RDMA device")

    dist.init_process_group("gloo", timeout=timedelta(seconds=600))
    rank, world = dist.get_rank(), dist.get_world_size()
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    log = Log(a.events, rank, attempt)
    host, _, port = a.store.rpartition(":")
    store = dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=600))
    data = gdrx.torch.RdmaIterableDataset(
        typed=True, store=store, rank=rank, ip=a.ip, provider=a.provider,
        slot_size=a.slot_size, slots=a.slots, header_split=True, timeout=600,
    )
    model = torch.nn.parallel.DistributedDataParallel(model_of(a.features, a.classes, a.model_seed))
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    Path(a.ckpt).mkdir(parents=True, exist_ok=True)
    path = Path(a.ckpt) / f"rank{rank}.pt"
    first, restored = 0, None
    if path.exists():
        ck = torch.load(path)
        model.module.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        data.load_state_dict(ck["data"])
        first, restored = ck["step"] + 1, {"step": ck["step"], "data": ck["data"]}
    log("start", host=socket.gethostname(), ip=a.ip, world=world, restored=restored)

    # The rehearsal's fault: GDRX_REHEARSAL_KILL="RANK:STEP" SIGKILLs that rank when it reaches
    # STEP, unless it was restored from a checkpoint (the restarted rank goes on).
    kill = os.environ.get("GDRX_REHEARSAL_KILL", "")
    kill_rank, _, kill_step = kill.partition(":")

    def before(step: int) -> None:
        if kill and restored is None and rank == int(kill_rank) and step == int(kill_step):
            log("killed", step=step, data=data.state_dict())
            os.kill(os.getpid(), signal.SIGKILL)

    def after(step: int) -> None:
        if (step + 1) % a.ckpt_every == 0:
            # The model after this step and the cursor after its batch (the DataLoader, with no
            # workers, takes the next batch only when asked): what a restart resumes from.
            tmp = path.with_suffix(".tmp")
            torch.save({"model": model.module.state_dict(), "opt": opt.state_dict(),
                        "data": data.state_dict(), "step": step}, tmp)
            os.replace(tmp, path)
            log("checkpoint", step=step, data=data.state_dict())

    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=0)
    t0 = time.monotonic()
    steps = train(model, opt, loader, log, first, before, after)
    log("done", steps=steps, secs=round(time.monotonic() - t0, 3), data=data.state_dict(),
        params=digest(*model.module.state_dict().values()), accuracy=accuracy(model.module, a.eval))

    if a.reference:
        ref = Log(a.events, rank, attempt)
        ref.base["run"] = "local"
        model = torch.nn.parallel.DistributedDataParallel(model_of(a.features, a.classes, a.model_seed))
        opt = torch.optim.Adam(model.parameters(), lr=a.lr)
        batches = local_loader(a.reference, a.seed, a.epochs, a.batch_size, world, rank)
        steps = train(model, opt, batches, ref, 0)
        ref("done", steps=steps, params=digest(*model.module.state_dict().values()),
            accuracy=accuracy(model.module, a.eval))
        ref.close()
    log.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
