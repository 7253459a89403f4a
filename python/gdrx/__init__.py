"""gdrx: RDMA receive buffers as zero-copy DLPack tensors for numpy, PyTorch and JAX.

A ``Receiver`` keeps receive buffers posted to the NIC from a pool of registered memory. Each
message a sender delivers is a ``Message`` that owns its buffer: ``numpy.from_dlpack(msg)``,
``torch.from_dlpack(msg)`` and ``jax.dlpack.from_dlpack(msg)`` view it without a copy, and the
buffer goes back to the NIC when the message and the last array made from it are gone.

    import numpy as np
    import gdrx

    with gdrx.Receiver(ip="10.0.0.1", port=7471, slot_size=4096, slots=256) as rx:
        for msg in rx:              # until every sender that connected has left
            x = np.from_dlpack(msg) # uint8, msg.nbytes long, zero copy
            ...                     # the buffer is reposted when x and msg are gone

Typed messages carry a 64-byte ``SampleHeader`` (dtype, shape, epoch, shard, index):
``Sender.send_tensor(array, index=...)`` writes it, ``msg.tensor()`` is the payload with that
dtype and shape (zero copy), and ``gdrx.tensors(rx)`` yields them, a sample of several parts (an
image and its label) as a tuple. ``Receiver(..., header_split=True)`` lands the header in its own
host memory, so the buffer holds the tensor alone.

Rules:

- Do not ``fork()`` while a receiver or sender is open: the child would share registered
  memory with the NIC. With ``torch.utils.data.DataLoader`` use ``num_workers=0`` and
  ``batch_size=None`` (``gdrx.torch.RdmaIterableDataset`` yields ready tensors).
- A consumer that keeps every buffer stops the senders (RNR back-pressure); nothing is lost.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Tuple, Union

from . import errors
from ._gdrx import END_OF_STREAM, Dataset, Message, Receiver, SampleHeader, Tensor, __version__, devices, plan
from ._gdrx import Sender as _RawSender
from .errors import *  # noqa: F401,F403 (the exceptions: errors.__all__)
from ._parts import Parts, is_end
from .errors import ProtocolError

__all__ = [
    "Receiver",
    "Sender",
    "Message",
    "Tensor",
    "SampleHeader",
    "tensors",
    "END_OF_STREAM",
    "Dataset",
    "plan",
    "Feeder",
    "devices",
    "errors",
    "__version__",
    *errors.__all__,
]


def _bytes(data: Any) -> bytes:
    """``data`` as bytes: bytes as they are, any other C-contiguous buffer copied."""
    return data if isinstance(data, bytes) else memoryview(data).cast("B").tobytes()


class Sender:
    """Sends messages to a gdrx receiver over RDMA.

    ``Sender(ip, port, *, max_msg=65536, device=None, tag=0, depth=16, timeout=20.0, credits=True)``

    Each message is copied into one of ``depth`` registered buffers and sent (SEND, or
    SEND_WITH_IMM when ``imm`` is given). A receiver whose consumer holds every buffer makes
    ``send`` wait, never drop: for the credits a gdrx receiver grants (no more messages in
    flight than it has buffers posted), or with ``credits=False`` for RNR NAKs and their
    retries; ``timeout`` seconds bound that wait and the connection handshake
    (``gdrx.Timeout``). ``tag`` is what the receiver reports as
    ``Message.peer``. ``device`` defaults to the one the route to the receiver leaves by.
    """

    def __init__(
        self,
        ip: str,
        port: int,
        *,
        max_msg: int = 65536,
        device: Optional[str] = None,
        tag: int = 0,
        depth: int = 16,
        timeout: Optional[float] = 20.0,
        credits: bool = True,
    ) -> None:
        self._tx = _RawSender(
            ip, port, max_msg=max_msg, device=device, tag=tag, depth=depth, timeout=timeout,
            credits=credits,
        )

    def send(self, data: Union[bytes, bytearray, memoryview, "object"], imm: Optional[int] = None) -> None:
        """Sends ``data``: bytes, or any C-contiguous buffer (bytearray, memoryview, a numpy
        array), with immediate data ``imm`` (a 32-bit unsigned int) when given."""
        self._tx.send(_bytes(data), imm)

    def send_tensor(
        self,
        array: Any,
        *,
        index: int = 0,
        epoch: int = 0,
        shard: int = 0,
        item: int = 0,
        count: Optional[int] = None,
        part: int = 0,
        parts: int = 1,
        batch: bool = False,
        imm: Optional[int] = None,
    ) -> SampleHeader:
        """Sends ``array`` (anything ``numpy.asarray`` takes: a numpy array, a CPU torch
        tensor, a list) as a typed message: a ``SampleHeader`` with its dtype and shape and the
        dataset fields given here, then its bytes (C order, native byte order). Returns the
        header. ``batch=True`` says the first dimension is the batch (``count`` defaults to
        its length). The message is ``64 + array.nbytes`` bytes; it must fit the receiver's
        buffers (``recv_buf``; 64 more with ``header_split``)."""
        import numpy as np

        a = np.asarray(array)  # (ascontiguousarray would make a 0-d array 1-d)
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        if not a.dtype.isnative:
            a = a.astype(a.dtype.newbyteorder("="))
        header = SampleHeader(
            a.dtype.name,
            list(a.shape),
            index=index,
            epoch=epoch,
            shard=shard,
            item=item,
            count=count,
            part=part,
            parts=parts,
            batch=batch,
        )
        self._tx.send_parts(header.encode(), a.tobytes(), imm)
        return header

    def send_parts(self, header: Any, payload: Any, imm: Optional[int] = None) -> None:
        """Sends one message made of ``header`` then ``payload`` (bytes or any buffer): what
        ``send_tensor`` does with a ``SampleHeader``'s ``encode()`` and an array's bytes."""
        self._tx.send_parts(_bytes(header), _bytes(payload), imm)

    @property
    def sent(self) -> int:
        """Messages sent so far."""
        return self._tx.sent

    @property
    def credits(self) -> Optional[Dict[str, int]]:
        """What the receiver's credits did: ``{"grant", "reads", "waits"}`` (messages granted
        in all, credit reads, sends that waited for credit); ``None`` when the receiver grants
        none or ``credits=False``."""
        return self._tx.credits

    @property
    def recv_buf(self) -> int:
        """The receiver's buffer size, from its Welcome."""
        return self._tx.recv_buf

    def close(self) -> None:
        """Waits for every message to complete, then disconnects. Closing twice is harmless."""
        self._tx.close()

    def __enter__(self) -> "Sender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tensors(rx: Receiver) -> Iterator[Union[Tensor, Tuple[Tensor, ...]]]:
    """Yields the typed messages of ``rx`` as ``Tensor``s until the stream ends: one per
    message, or for a sample sent in ``parts`` (an image and its label) a tuple of its parts in
    order. Each message's own reference is released: the tensors hold the buffers. A part out
    of order (a sender that skipped one) raises ``ProtocolError``. A sender's end-of-stream
    message (``END_OF_STREAM``: 0 bytes, that immediate data; ``gdrx-feed`` and ``gdrx.Feeder``
    send it last) is not yielded."""
    parts = Parts()
    for msg in rx:
        if is_end(msg):
            msg.release()
            continue
        sample = parts.add(msg)
        if sample is not None:
            yield sample
    if parts.partial:
        raise ProtocolError(f"the stream ended inside samples (QP: (index, parts seen, parts)): {parts.left()}")


def __getattr__(name: str) -> Any:
    # gdrx.Feeder is imported on first use, so that `python -m gdrx.feeder` runs the module
    # fresh (runpy warns about a module the package imported already).
    if name == "Feeder":
        from .feeder import Feeder

        return Feeder
    raise AttributeError(f"module 'gdrx' has no attribute {name!r}")
