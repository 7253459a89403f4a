"""PyTorch adapter: ``RdmaIterableDataset`` yields the received messages as torch tensors,
zero copy, through ``torch.from_dlpack``.

Use it with ``DataLoader(ds, num_workers=0, batch_size=None)``: worker processes are forked, and
a fork must not share registered memory with the NIC; batching is the sender's business (send
collated batches).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterator, Optional

import torch
import torch.utils.data

import gdrx
import gdrx.feeder
from gdrx._parts import is_end

__all__ = ["RdmaIterableDataset", "to_tensor", "from_tensor"]


def to_tensor(msg: "gdrx.Message") -> "torch.Tensor":
    """The message's payload as a uint8 torch tensor, zero copy. The buffer goes back to the
    NIC when the tensor (and every view of it) and the message are gone."""
    return torch.from_dlpack(msg)


def from_tensor(t: Any) -> Any:
    """A ``gdrx.Tensor`` (or a tuple of them, from ``gdrx.tensors``) as torch tensors of its
    dtype and shape, zero copy."""
    if isinstance(t, tuple):
        return tuple(torch.from_dlpack(p) for p in t)
    return torch.from_dlpack(t)


class RdmaIterableDataset(torch.utils.data.IterableDataset):
    """Yields one tensor per received message until every sender that connected has left.

    With a store (the data service): ``RdmaIterableDataset(typed=True, store=store, rank=RANK,
    ip=..., **receiver_kwargs)`` publishes its receiver's address and its cursor in ``store``
    (a torch ``TCPStore``; see ``gdrx.feeder``), where the ``gdrx.Feeder`` serving the rank finds
    it. ``state_dict()`` is ``{"rank", "epoch", "next"}``: the epoch and the samples of it
    consumed; ``load_state_dict()`` of a saved one before iterating makes a restarted rank resume
    there, with no sample lost or repeated. ``rank`` defaults to ``$RANK`` (torchrun). A feeder
    that dies or restarts in the middle is waited for (``rejoin_timeout`` seconds) and resumes
    at the rank's cursor (``gdrx.feeder.receive``); the stream ends at the feeder's
    end-of-stream message.

    ``RdmaIterableDataset(receiver=None, transform=None, typed=False, **receiver_kwargs)``: give
    an open ``gdrx.Receiver``, or the keyword arguments to build one (it is then closed when
    iteration ends). Untyped, each message is a uint8 tensor (``transform`` may reinterpret it,
    e.g. ``lambda t: t.view(torch.float32)``); ``typed=True`` reads each message's
    ``SampleHeader`` and yields a tensor of its dtype and shape, or a tuple of tensors for a
    sample sent in parts (``Sender.send_tensor(..., part=, parts=)``, e.g. ``(image, label)``).
    A feeder with ``batch_size=B`` sends collated batches: each item is then a batch (shape
    ``[n, ...]`` per part, n <= B), and the cursor counts its ``n`` samples.
    """

    def __init__(
        self,
        receiver: Optional["gdrx.Receiver"] = None,
        transform: Optional[Callable[[Any], Any]] = None,
        typed: bool = False,
        store: Any = None,
        rank: Optional[int] = None,
        rejoin_timeout: float = 300.0,
        **receiver_kwargs: Any,
    ) -> None:
        super().__init__()
        if receiver is not None and receiver_kwargs:
            raise gdrx.ConfigError("give a receiver or the arguments to build one, not both")
        if store is not None and not typed:
            raise gdrx.ConfigError("a store-fed dataset is typed: pass typed=True")
        self._rx = receiver
        self._kwargs = receiver_kwargs
        self._transform = transform
        self._typed = typed
        self._store, self._rejoin = store, rejoin_timeout
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank
        self._epoch, self._next = 0, 0

    def state_dict(self) -> Dict[str, int]:
        """Where this rank is: ``{"rank", "epoch", "next"}`` (samples of ``epoch`` consumed)."""
        return {"rank": self.rank, "epoch": self._epoch, "next": self._next}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Resume at a saved ``state_dict()`` (applied when iteration starts)."""
        if state.get("rank", self.rank) != self.rank:
            raise gdrx.ConfigError(f"a state of rank {state['rank']} loaded into rank {self.rank}")
        self._epoch, self._next = int(state["epoch"]), int(state["next"])

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        if info is not None:
            raise gdrx.ConfigError(
                "RdmaIterableDataset runs in the main process: use DataLoader(num_workers=0, "
                "batch_size=None); worker processes are forked and must not share registered memory"
            )
        own = self._rx is None
        rx = gdrx.Receiver(**self._kwargs) if own else self._rx
        try:
            if self._store is not None:
                samples = gdrx.feeder.receive(
                    rx, self._store, self.rank, lambda: (self._epoch, self._next), self._rejoin
                )
            elif self._typed:
                samples = gdrx.tensors(rx)
            if self._typed:
                for sample in samples:
                    h = (sample[0] if isinstance(sample, tuple) else sample).header
                    if h.epoch != self._epoch:
                        self._epoch, self._next = h.epoch, 0
                    t = from_tensor(sample)
                    del sample  # the torch tensors keep the buffers now
                    # Counted before the yield: a state_dict() taken while the consumer holds
                    # this sample (or batch: `count` samples) counts it as consumed.
                    self._next += h.count
                    yield self._transform(t) if self._transform else t
                return
            for msg in rx:
                if is_end(msg):
                    msg.release()  # a feeder's end-of-stream message
                    continue
                t = torch.from_dlpack(msg)
                msg.release()  # the tensor keeps the buffer now
                yield self._transform(t) if self._transform else t
        finally:
            if own:
                rx.close()
