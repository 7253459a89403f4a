"""Typed samples put together again from their messages, for ``gdrx.tensors`` and
``gdrx.feeder.receive``: a sample sent in parts (an image and its label) arrives as one message
per part, back to back on its sender's connection."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from . import _gdrx
from .errors import ProtocolError


def is_end(msg: "_gdrx.Message") -> bool:
    """Whether ``msg`` is a sender's end-of-stream message (0 bytes, immediate data
    ``END_OF_STREAM``), which gdrx-feed and ``gdrx.Feeder`` send last."""
    return msg.nbytes == 0 and msg.imm == _gdrx.END_OF_STREAM


class Parts:
    """The parts of each sender's sample in progress, keyed by the QP it arrives on."""

    def __init__(self) -> None:
        self.partial: Dict[int, List[Any]] = {}

    def add(self, msg: "_gdrx.Message") -> Optional[Any]:
        """Takes ``msg``'s tensor (releasing the message's own reference: the tensor holds the
        buffer) and returns the sample once it is whole: the ``Tensor``, or a tuple of its parts
        in order; ``None`` while parts are missing. A part out of order raises
        ``ProtocolError``."""
        t = msg.tensor()
        key = msg.qp_num
        msg.release()
        h = t.header
        if h.parts == 1:
            return t
        got = self.partial.setdefault(key, [])
        if h.part != len(got) or (got and got[0].header.index != h.index):
            have = f"index {got[0].header.index} parts 0..{len(got)}" if got else "nothing"
            raise ProtocolError(
                f"sample index {h.index} part {h.part} of {h.parts} arrived after {have} "
                f"(QP {key}): the parts of a sample must be sent back to back, in order"
            )
        got.append(t)
        if len(got) < h.parts:
            return None
        del self.partial[key]
        return tuple(got)

    def left(self) -> Dict[int, tuple]:
        """The samples in progress: QP -> (index, parts seen, parts)."""
        return {k: (v[0].header.index, len(v), v[0].header.parts) for k, v in self.partial.items()}
