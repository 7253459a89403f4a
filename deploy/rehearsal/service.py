"""The data service across separate kernels (deploy/rehearse.sh): one feeder VM, N rank VMs.

    service.py data DIR            (this machine) writes the dataset: .npy shards of known samples
    service.py run DIR             (in every VM of deploy/hosts.sh) host 0 runs the feeder command
                                   with the TCPStore; host i runs rank i-1, which finds the feeder
                                   through the store over its link and receives over RDMA
    service.py check DIR RANKS     (this machine) every sample exactly once per epoch across the
                                   ranks, each rank in its planned order, every image as on disk

Each rank writes DIR/rank<r>.json: what it received, with a checksum per image.
"""

import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

SHARDS, PER_SHARD, SEED, EPOCHS, PORT = 4, 30, 3, 2, 29500


def image(s: int, i: int):
    import numpy as np

    return ((np.arange(3 * 16 * 16, dtype=np.float32).reshape(3, 16, 16) + s * 1000 + i) % 251) / 7


def data(d: Path) -> None:
    import numpy as np

    d.mkdir(parents=True, exist_ok=True)
    for s in range(SHARDS):
        np.save(d / f"{s:03}.image.npy", np.stack([image(s, i) for i in range(PER_SHARD)]))
        np.save(d / f"{s:03}.label.npy", np.array([s * 100 + i for i in range(PER_SHARD)], dtype=np.int64))


def run(out: Path) -> int:
    host, ranks = int(os.environ["GDRX_HOST"]), int(os.environ["GDRX_RANKS"])
    if host == 0:
        with open(out / "feeder.jsonl", "w") as f:
            return subprocess.call(
                [sys.executable, "-m", "gdrx.feeder", "--data", str(out / "data"),
                 "--store", f"0.0.0.0:{PORT}", "--host-store", "--world", str(ranks),
                 "--seed", str(SEED), "--epochs", str(EPOCHS), "--rejoin-timeout", "900"],
                stdout=f,
            )
    import torch.distributed

    import gdrx
    import gdrx.torch

    rank = host - 1
    store = torch.distributed.TCPStore(os.environ["GDRX_FEEDER_IP"], PORT, is_master=False,
                                       timeout=timedelta(seconds=900))
    ds = gdrx.torch.RdmaIterableDataset(typed=True, store=store, rank=rank, ip=os.environ["GDRX_RDMA_IP"],
                                        slot_size=3 * 16 * 16 * 4, slots=64, header_split=True,
                                        timeout=900)
    got, t0 = [], time.monotonic()
    for img, lab in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0):
        s, i = divmod(int(lab), 100)
        got.append([ds.state_dict()["epoch"], s, i, hashlib.sha256(img.numpy().tobytes()).hexdigest()])
    (out / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "samples": got, "secs": time.monotonic() - t0,
        "device": os.environ["GDRX_RDMA_DEV"], "ip": os.environ["GDRX_RDMA_IP"],
        "feeder_ip": os.environ["GDRX_FEEDER_IP"],
    }))
    return 0


def check(out: Path, ranks: int) -> int:
    import gdrx

    sizes = [PER_SHARD] * SHARDS
    every = sorted((s, i) for s in range(SHARDS) for i in range(PER_SHARD))
    want = {(s, i): hashlib.sha256(image(s, i).tobytes()).hexdigest() for s, i in every}
    got = {r: json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)}
    for epoch in range(EPOCHS):
        seen = []
        for r in range(ranks):
            mine = [(s, i) for e, s, i, _ in got[r]["samples"] if e == epoch]
            plan = [(s, i) for _, s, i in gdrx.plan(sizes, seed=SEED, epoch=epoch, world=ranks, rank=r)]
            assert mine == plan, f"rank {r} epoch {epoch}: not its planned order"
            seen += mine
        assert sorted(seen) == every, f"epoch {epoch}: not every sample exactly once"
    for r in range(ranks):
        for e, s, i, h in got[r]["samples"]:
            assert h == want[(s, i)], f"rank {r}: sample ({s}, {i}) of epoch {e} differs from the shard"
    feeder = [json.loads(line) for line in (out / "feeder.jsonl").read_text().splitlines()]
    served = {row["rank"]: row for row in feeder if "rank" in row}
    assert sorted(served) == list(range(ranks)), feeder
    for r in range(ranks):
        g = got[r]
        print(f"rank {r} on {g['device']} {g['ip']} (feeder at {g['feeder_ip']}, another kernel): "
              f"{len(g['samples'])} samples in {g['secs']:.1f} s, verified; feeder: {served[r]}")
    print(f"rehearsal: {ranks} ranks x {EPOCHS} epochs, every sample exactly once per epoch, "
          f"in the planned order, bit-identical to the shards")
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
