"""The TCP baseline's sender for feed_bench.py (its own process, without torch, which takes
minutes to import under emulation): every sample of a dataset of .npy shards, in the order
gdrx-feed sends them (rank 0 of 1, seed 0), each part as a 64-byte gdrx sample header and the
part's bytes, over one TCP connection.

    python tcp_sender.py DATA IP PORT
"""

import socket
import sys

import gdrx


def main(data: str, ip: str, port: int) -> int:
    ds = gdrx.Dataset(data)
    order = gdrx.plan(ds.shard_sizes, seed=0, epoch=0, world=1, rank=0)
    with socket.create_connection((ip, port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for k, shard, item in order:
            parts = ds.read(shard, item)
            for p, a in enumerate(parts):
                h = gdrx.SampleHeader(a.dtype.name, list(a.shape), index=k, shard=shard, item=item,
                                      part=p, parts=len(parts))
                s.sendall(h.encode() + a.tobytes())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
