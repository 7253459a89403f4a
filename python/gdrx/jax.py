"""JAX adapter: received messages as JAX arrays through ``jax.dlpack.from_dlpack`` (zero copy on
CPU when the buffer's alignment suits XLA; XLA may copy otherwise)."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import jax
import jax.dlpack

import gdrx

__all__ = ["to_array", "iterate", "iterate_tensors"]


def to_array(msg: "gdrx.Message") -> "jax.Array":
    """The message's payload as a uint8 JAX array."""
    return jax.dlpack.from_dlpack(msg)


def iterate(
    rx: "gdrx.Receiver", transform: Optional[Callable[["jax.Array"], Any]] = None
) -> Iterator[Any]:
    """Yields one JAX array per message of ``rx`` until every sender that connected has left."""
    for msg in rx:
        a = jax.dlpack.from_dlpack(msg)
        msg.release()
        yield transform(a) if transform else a


def iterate_tensors(
    rx: "gdrx.Receiver", transform: Optional[Callable[[Any], Any]] = None
) -> Iterator[Any]:
    """Yields the typed messages of ``rx`` (see ``gdrx.tensors``) as JAX arrays of their
    header's dtype and shape, a tuple of arrays for a sample sent in parts."""
    for sample in gdrx.tensors(rx):
        if isinstance(sample, tuple):
            a: Any = tuple(jax.dlpack.from_dlpack(p) for p in sample)
        else:
            a = jax.dlpack.from_dlpack(sample)
        del sample
        yield transform(a) if transform else a
