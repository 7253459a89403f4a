"""The feeder side of gdrx's data service: ``gdrx.Feeder`` streams a dataset's samples to training
ranks over RDMA, finding each rank through a torch-style key-value store (``TCPStore``, which
torchrun's c10d rendezvous already runs; ``FileStore`` and ``HashStore`` work too).

Rendezvous, per rank ``r`` (all keys under ``gdrx/``):

- the rank (``gdrx.torch.RdmaIterableDataset(..., store=store)``) bumps ``gdrx/rank/{r}/gen``
  and sets ``gdrx/rank/{r}`` to JSON ``{"ip", "port", "epoch", "next", "gen"}``: where its
  receiver listens and where it is in the stream (its cursor);
- the feeder serving ``r`` (feeder ``f`` of ``F`` serves the ranks with ``r % F == f``) waits for
  that key, connects and sends from the cursor. When the rank goes away in the middle (it died or
  was restarted), the feeder waits for a newer ``gen`` and resumes from the cursor the restarted
  rank publishes: what the rank consumed is never sent again, nothing it did not consume is lost.

The plan (which rank gets which sample) is ``gdrx.plan``: every sample once per epoch across the
ranks, shuffled by ``(seed, epoch)``, the same on every run.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from . import _gdrx
from ._parts import Parts, is_end
from .errors import ConfigError, ConnectFailed, PeerGone, ProtocolError, Refused, Timeout

__all__ = ["Feeder", "publish", "rank_key", "receive", "main"]


def rank_key(rank: int) -> str:
    return f"gdrx/rank/{rank}"


def publish(store: Any, rank: int, ip: str, port: int, epoch: int, next: int) -> int:
    """What a rank does to be found: bumps its generation and publishes its address and cursor.
    Returns the generation."""
    gen = int(store.add(rank_key(rank) + "/gen", 1))
    store.set(rank_key(rank), json.dumps({"ip": ip, "port": port, "epoch": epoch, "next": next, "gen": gen}))
    return gen


def _done_key(rank: int) -> str:
    return rank_key(rank) + "/done"


def receive(
    rx: "_gdrx.Receiver",
    store: Any,
    rank: int,
    cursor: Callable[[], Tuple[int, int]],
    rejoin_timeout: float = 300.0,
) -> Iterator[Any]:
    """The rank's side of the data service: publishes ``rx``'s address and ``cursor()`` (the
    epoch and the samples of it consumed) in ``store``, and yields the samples the feeder
    serving the rank sends (a ``Tensor``, or a tuple of them for a sample in parts) until the
    feeder's end-of-stream message.

    A feeder connection that goes away without it (the feeder died or was restarted) is not the
    end: the rank publishes its cursor again, so that a feeder (the restarted one, or the old one
    reconnecting) resumes there, and waits up to ``rejoin_timeout`` seconds for it
    (``gdrx.PeerGone`` after that). Samples at or before the last one yielded (a feeder that
    resumed from an older cursor) are dropped, and a sample cut off by the feeder's death is
    sent again whole: none is lost or repeated. The caller counts a sample consumed in
    ``cursor()`` once it takes it."""
    ip, port = rx.address
    epoch, nxt = cursor()
    publish(store, rank, ip, port, epoch, nxt)
    if store.check([_done_key(rank)]):
        store.delete_key(_done_key(rank))  # a new stream for this rank: not done yet
    last: Optional[Tuple[int, int]] = None  # (epoch, index) of the last sample yielded
    parts = Parts()
    lost_since: Optional[float] = None
    while True:
        msgs = rx.poll(timeout=0.25)
        if not msgs:
            st = rx.stats()
            if st["connected"] > 0 and st["gone"] == st["connected"]:
                # Every feeder connection went away before the end of the stream.
                if lost_since is None:
                    lost_since = time.monotonic()
                    # Keep accepting (the stream has not ended), and say where the rank is.
                    rx.expect_senders = st["connected"] + 1
                    epoch, nxt = cursor()
                    publish(store, rank, ip, port, epoch, nxt)
                elif time.monotonic() - lost_since > rejoin_timeout:
                    epoch, nxt = cursor()
                    raise PeerGone(
                        f"rank {rank}: its feeder went away at epoch {epoch} sample {nxt} and no "
                        f"feeder came back within {rejoin_timeout:.0f} s (store key {rank_key(rank)})"
                    )
                time.sleep(0.05)
            else:
                lost_since = None
            continue
        lost_since = None
        for msg in msgs:
            if is_end(msg):
                msg.release()
                epoch, nxt = cursor()
                store.set(_done_key(rank), json.dumps({"epoch": epoch, "next": nxt}))
                return
            try:
                sample = parts.add(msg)
            except ProtocolError as e:
                raise ProtocolError(f"rank {rank}: {e}") from None
            if sample is None:
                continue
            h = (sample[0] if isinstance(sample, tuple) else sample).header
            if last is not None and (h.epoch, h.index) <= last:
                continue  # sent again by a feeder that resumed from an older cursor
            last = (h.epoch, h.index)
            yield sample


def _read(store: Any, rank: int) -> Optional[dict]:
    if not store.check([rank_key(rank)]):
        return None
    raw = store.get(rank_key(rank))
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


class Feeder:
    """Streams ``data`` (a directory of .npy or WebDataset tar shards, or a ``gdrx.Dataset``) to
    ``world`` ranks.

    ``Feeder(data, *, world, seed=0, epochs=1, batch_size=1, device=None, timeout=60.0,
    credits=True)``; ``seed=None`` keeps the dataset's order. ``batch_size=B`` sends collated
    batches: up to ``B`` consecutive samples of a rank's plan stacked into one message per part
    (shape ``[n, ...]``, as torch's ``default_collate`` makes them; an epoch's last batch may be
    shorter), which the rank takes into its training loop zero copy. The feeder sends a rank no
    more than the credits it grants (its free buffers), so a slow rank holds back only its own
    stream, at the source; ``credits=False`` leaves that to RNR NAKs. ``feed(rank, address,
    cursor)`` feeds one rank whose address you know; ``serve(store, ...)`` finds the ranks in a
    store and feeds them, one thread each, resuming ranks that restart.
    """

    def __init__(
        self,
        data: Union[str, "_gdrx.Dataset"],
        *,
        world: int,
        seed: Optional[int] = 0,
        epochs: int = 1,
        batch_size: int = 1,
        device: Optional[str] = None,
        timeout: float = 60.0,
        credits: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size}: a batch holds at least 1 sample")
        self.dataset = data if isinstance(data, _gdrx.Dataset) else _gdrx.Dataset(str(data))
        self.world, self.seed, self.epochs, self.batch_size = world, seed, epochs, batch_size
        self.device, self.timeout, self.credits = device, timeout, credits

    def plan(self, rank: int, epoch: int) -> List[tuple]:
        """Rank ``rank``'s (index, shard, item) of ``epoch``, in the order they are sent."""
        return _gdrx.plan(self.dataset.shard_sizes, seed=self.seed, epoch=epoch, world=self.world, rank=rank)

    def feed(self, rank: int, address: tuple, cursor: tuple = (0, 0),
             done: Optional[Callable[[], bool]] = None) -> Dict[str, Any]:
        """Sends rank ``rank`` (its receiver at ``address``) its samples from ``cursor`` (epoch,
        samples consumed) to the end of the last epoch. Blocks, with the GIL released. With
        ``done``, it then keeps the connection until ``done()`` is true, and raises
        ``gdrx.PeerGone`` when the rank disconnects first (it may have died holding samples it
        had not consumed)."""
        return _gdrx.feed(
            self.dataset, tuple(address), rank=rank, world=self.world, seed=self.seed,
            epochs=self.epochs, cursor=tuple(cursor), device=self.device, timeout=self.timeout,
            credits=self.credits, batch=self.batch_size, done=done,
        )

    def serve(
        self,
        store: Any,
        *,
        feeder: int = 0,
        feeders: int = 1,
        ranks: Optional[Iterable[int]] = None,
        rejoin_timeout: float = 300.0,
    ) -> Dict[int, Dict[str, Any]]:
        """Feeds every rank this feeder serves (``ranks``, default those with
        ``rank % feeders == feeder``) until each has its last epoch, waiting for ranks to publish
        themselves in ``store`` and for restarted ranks to publish again (up to
        ``rejoin_timeout`` seconds each time). Returns each rank's report: its last feed's
        figures, ``"feeds"`` (1 + the resumes) and ``"resumed_at"`` (the cursors it resumed
        from). Raises the first rank's error that was not a restart."""
        mine = list(ranks) if ranks is not None else [r for r in range(self.world) if r % feeders == feeder]
        reports: Dict[int, Dict[str, Any]] = {}
        errors: Dict[int, BaseException] = {}

        def run(rank: int) -> None:
            try:
                reports[rank] = self._serve_rank(store, rank, rejoin_timeout)
            except BaseException as e:  # reported to the caller below
                errors[rank] = e

        threads = [threading.Thread(target=run, args=(r,), name=f"gdrx-feed-{r}") for r in mine]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            rank = min(errors)
            raise errors[rank]
        return reports

    def _serve_rank(self, store: Any, rank: int, rejoin_timeout: float) -> Dict[str, Any]:
        last_gen, feeds, resumed, started = 0, 0, [], None
        while True:
            deadline = time.monotonic() + rejoin_timeout
            while True:
                if store.check([_done_key(rank)]):
                    # The rank has its whole stream (this feeder restarted after it finished).
                    done = json.loads(store.get(_done_key(rank)))
                    return {"rank": rank, "messages": 0, "feeds": feeds, "resumed_at": resumed,
                            "started_at": started, "done": (done["epoch"], done["next"])}
                info = _read(store, rank)
                if info is not None and info["gen"] > last_gen:
                    break
                if time.monotonic() > deadline:
                    what = "publish itself" if last_gen == 0 else f"come back (generation {last_gen} went away)"
                    raise Timeout(f"rank {rank} did not {what} within {rejoin_timeout:.0f} s "
                                  f"(store key {rank_key(rank)})")
                time.sleep(0.05)
            last_gen = info["gen"]
            cursor = (info["epoch"], info["next"])
            if feeds:
                resumed.append(cursor)
            else:
                started = cursor
            feeds += 1

            def done(gen: int = last_gen) -> bool:
                # The rank took the end of its stream, or it came back (restarted) meanwhile.
                if store.check([_done_key(rank)]):
                    return True
                fresh = _read(store, rank)
                return fresh is not None and fresh["gen"] > gen

            try:
                # The rank may hold much of what it was sent when the stream ends: the feed
                # stays connected until the rank is done, so that one that dies first is
                # resumed from the cursor it publishes when it comes back.
                report = self.feed(rank, (info["ip"], info["port"]), cursor, done=done)
            except (PeerGone, ConnectFailed, Refused, Timeout) as e:
                # The rank went away (or its old address is dead): wait for it to publish again,
                # unless a newer generation is already there.
                fresh = _read(store, rank)
                if fresh is not None and fresh["gen"] > last_gen:
                    continue
                if isinstance(e, Refused):
                    raise
                continue
            if not store.check([_done_key(rank)]):
                continue  # a newer generation of the rank published itself: resume it
            report.update(feeds=feeds, resumed_at=resumed, started_at=started)
            return report


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m gdrx.feeder``: serve a dataset to the ranks that publish themselves in a
    TCPStore. Feeder 0 may host the store (``--host-store``); the ranks and the other feeders
    connect to it. Prints one JSON line per rank served."""
    ap = argparse.ArgumentParser(prog="python -m gdrx.feeder", description=main.__doc__)
    ap.add_argument("--data", required=True, help="directory of .npy or WebDataset .tar shards")
    ap.add_argument("--store", required=True, help="HOST:PORT of the TCPStore")
    ap.add_argument("--host-store", action="store_true", help="run the TCPStore here (listen on PORT)")
    ap.add_argument("--world", type=int, required=True, help="ranks in the job")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-shuffle", action="store_true")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=1,
                    help="samples per message: more than 1 sends collated batches")
    ap.add_argument("--feeder", type=int, default=0, help="this feeder's index")
    ap.add_argument("--feeders", type=int, default=1, help="feeders serving the job")
    ap.add_argument("--device", help="RDMA device (default: the route's)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds a message may wait for a rank")
    ap.add_argument("--no-credits", action="store_true",
                    help="ignore the ranks' credits (RNR NAKs alone hold the feeder back)")
    ap.add_argument("--rejoin-timeout", type=float, default=300.0,
                    help="seconds to wait for a rank to publish itself, or to come back")
    a = ap.parse_args(argv)
    from datetime import timedelta

    from torch.distributed import TCPStore  # torch ships the store the ranks use

    host, _, port = a.store.rpartition(":")
    store = TCPStore(host or "0.0.0.0", int(port), is_master=a.host_store, wait_for_workers=False,
                     timeout=timedelta(seconds=a.rejoin_timeout))
    f = Feeder(a.data, world=a.world, seed=None if a.no_shuffle else a.seed, epochs=a.epochs,
               batch_size=a.batch_size, device=a.device, timeout=a.timeout, credits=not a.no_credits)
    print(json.dumps({"listening" if a.host_store else "store": a.store, "samples": len(f.dataset),
                      "ranks": [r for r in range(a.world) if r % a.feeders == a.feeder]}), flush=True)
    reports = f.serve(store, feeder=a.feeder, feeders=a.feeders, rejoin_timeout=a.rejoin_timeout)
    for rank in sorted(reports):
        print(json.dumps(reports[rank], default=list), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
