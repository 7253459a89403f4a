"""Typed stubs of the gdrx extension module."""

from types import TracebackType
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Type

__version__: str

END_OF_STREAM: int
"""The immediate data of the 0-byte message that ends a typed stream (gdrx-feed sends it last)."""

def devices() -> List[str]:
    """The RDMA device names present."""

class SampleHeader:
    """The 64-byte header of a typed message: the payload's dtype and shape, and where it comes
    from in the dataset (epoch, shard, item, index; a sample in several parts)."""

    def __init__(
        self,
        dtype: str,
        shape: Sequence[int],
        *,
        index: int = 0,
        epoch: int = 0,
        shard: int = 0,
        item: int = 0,
        count: Optional[int] = None,
        part: int = 0,
        parts: int = 1,
        batch: bool = False,
    ) -> None: ...
    @staticmethod
    def decode(data: bytes) -> "SampleHeader": ...
    def encode(self) -> bytes: ...
    @property
    def dtype(self) -> str: ...
    @property
    def shape(self) -> List[int]: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def index(self) -> int: ...
    @property
    def epoch(self) -> int: ...
    @property
    def shard(self) -> int: ...
    @property
    def item(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def part(self) -> int: ...
    @property
    def parts(self) -> int: ...
    @property
    def batch(self) -> bool: ...

class Tensor:
    """A typed, zero-copy view of a message's payload (``Message.tensor()``); it keeps the
    buffer lent until it and every array made from it are gone."""

    @property
    def dtype(self) -> str: ...
    @property
    def shape(self) -> List[int]: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def address(self) -> int: ...
    @property
    def header(self) -> SampleHeader: ...
    def numpy(self) -> Any: ...
    def __dlpack__(
        self,
        *,
        stream: Optional[Any] = None,
        max_version: Optional[Tuple[int, int]] = None,
        dl_device: Optional[Tuple[int, int]] = None,
        copy: Optional[bool] = None,
    ) -> Any: ...
    def __dlpack_device__(self) -> Tuple[int, int]: ...

class Message:
    """One received message, owning its receive buffer until it and every array made from it
    are gone."""

    @property
    def nbytes(self) -> int: ...
    @property
    def imm(self) -> Optional[int]: ...
    @property
    def peer(self) -> Optional[int]:
        """The sender's connection tag."""
    @property
    def qp_num(self) -> int: ...
    @property
    def slot(self) -> int: ...
    @property
    def address(self) -> int:
        """The payload's address: every zero-copy view points here."""
    @property
    def released(self) -> bool: ...
    @property
    def memoryview(self) -> memoryview: ...
    def release(self) -> bool:
        """Gives the message's own reference back; False when already released."""
    def numpy(self) -> Any:
        """A zero-copy uint8 numpy view."""
    def tobytes(self) -> bytes: ...
    @property
    def header(self) -> SampleHeader:
        """The sample header (ProtocolError when the message has none)."""
    def tensor(self) -> Tensor:
        """The payload with the header's dtype and shape, zero copy."""
    def __dlpack__(
        self,
        *,
        stream: Optional[Any] = None,
        max_version: Optional[Tuple[int, int]] = None,
        dl_device: Optional[Tuple[int, int]] = None,
        copy: Optional[bool] = None,
    ) -> Any: ...
    def __dlpack_device__(self) -> Tuple[int, int]: ...
    def __len__(self) -> int: ...

class Receiver:
    """Receives messages from gdrx senders into a pool of registered buffers."""

    def __init__(
        self,
        ip: Optional[str] = None,
        port: int = 0,
        *,
        device: Optional[str] = None,
        provider: str = "host",
        slot_size: int = 65536,
        slots: int = 256,
        max_peers: int = 64,
        events: bool = True,
        timeout: Optional[float] = None,
        expect_senders: Optional[int] = None,
        header_split: bool = False,
        credits: bool = True,
        handshake_timeout: float = 10.0,
    ) -> None: ...
    @property
    def address(self) -> Tuple[str, int]: ...
    @property
    def expect_senders(self) -> int: ...
    @expect_senders.setter
    def expect_senders(self, n: int) -> None: ...
    @property
    def ended(self) -> bool: ...
    def poll(self, timeout: Optional[float] = None, max: Optional[int] = None) -> List[Message]: ...
    def __iter__(self) -> Iterator[Message]: ...
    def __next__(self) -> Message: ...
    def stats(self) -> Dict[str, Any]: ...
    def report(self) -> Dict[str, Any]: ...
    def close(self) -> int:
        """Closes; returns the number of messages still alive (they stay readable)."""
    def __enter__(self) -> "Receiver": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

class Sender:
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
    ) -> None: ...
    def send(self, data: bytes, imm: Optional[int] = None) -> None: ...
    def send_parts(self, header: bytes, payload: bytes, imm: Optional[int] = None) -> None: ...
    @property
    def sent(self) -> int: ...
    @property
    def credits(self) -> Optional[Dict[str, int]]: ...
    @property
    def recv_buf(self) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Sender": ...
    def __exit__(self, *args: object) -> bool: ...

class Dataset:
    """A dataset of .npy shards or WebDataset tar shards, indexed when opened."""

    def __init__(self, path: str) -> None: ...
    @property
    def shard_sizes(self) -> List[int]: ...
    @property
    def parts(self) -> List[str]: ...
    def read(self, shard: int, item: int) -> List[Any]:
        """The sample's parts as numpy arrays."""
    def __len__(self) -> int: ...

def plan(
    shard_sizes: Sequence[int], *, seed: Optional[int], epoch: int, world: int, rank: int
) -> List[Tuple[int, int, int]]:
    """A rank's (index, shard, item) of one epoch, in order."""

def feed(
    dataset: Dataset,
    address: Tuple[str, int],
    *,
    rank: int,
    world: int,
    seed: Optional[int],
    epochs: int,
    cursor: Tuple[int, int] = (0, 0),
    device: Optional[str] = None,
    timeout: float = 60.0,
    credits: bool = True,
    batch: int = 1,
    done: Optional[Callable[[], bool]] = None,
) -> Dict[str, Any]:
    """Feeds one rank over RDMA from ``cursor``; blocks with the GIL released."""
