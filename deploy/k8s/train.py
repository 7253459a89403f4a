"""The trainer the Kubernetes Job runs under torchrun: one rank, its (x, y) batches arriving over
RDMA from gdrx's feeder, a small model trained with DDP, and a checkpoint per rank holding the
model and the data cursor, so a restarted pod resumes its epoch where it stopped.

    torchrun ... train.py --store gdrx-store:29600 [--provider hugepage] [--slot-size 65536]

The samples are what the feeder sends: parts (x, y) of a dataset of .npy shards, x float32
features and y an int64 class. Not run by CI (it is validated with the manifests); the same
pieces (RdmaIterableDataset with a store, state_dict, Feeder.serve) run in python/tests.
"""

import argparse
import os
from datetime import timedelta

import torch
import torch.distributed as dist

import gdrx.torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True, help="HOST:PORT of the feeder's TCPStore")
    ap.add_argument("--provider", default="host")
    ap.add_argument("--slot-size", type=int, default=65536)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--ckpt", default="/ckpt")
    a = ap.parse_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    host, _, port = a.store.rpartition(":")
    store = dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=600))
    data = gdrx.torch.RdmaIterableDataset(
        typed=True, store=store, rank=rank, ip=os.environ["GDRX_RDMA_IP"], provider=a.provider,
        slot_size=a.slot_size, slots=256, header_split=True, timeout=600,
    )
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(a.features, a.classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = os.path.join(a.ckpt, f"rank{rank}.pt")
    if os.path.exists(path):
        ck = torch.load(path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        data.load_state_dict(ck["data"])
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=0)
    with model.join():  # ranks may differ by one batch per epoch
        for step, (x, y) in enumerate(loader):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 100 == 0:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                            "data": data.state_dict()}, path)
                print(f"rank {rank} step {step} loss {loss.item():.4f} {data.state_dict()}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
