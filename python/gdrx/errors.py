"""The exceptions gdrx raises. Each carries the Rust error's message and, where the error
knows one, what to do about it (``exc.hint``)."""

from __future__ import annotations

from typing import Optional

__all__ = [
    "GdrxError",
    "NoDevice",
    "Unsupported",
    "MemoryLock",
    "AllocFailed",
    "RegistrationFailed",
    "ConfigError",
    "ConnectFailed",
    "Refused",
    "PeerGone",
    "ProtocolError",
    "Timeout",
    "Closed",
    "Released",
]


class GdrxError(Exception):
    """Base class of gdrx's errors."""

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint and self.hint not in self.message:
            return f"{self.message} (hint: {self.hint})"
        return self.message


class NoDevice(GdrxError):
    """No RDMA device, the named device is missing, its port is down, or no device has the
    address given. The message names the devices present."""


class Unsupported(GdrxError):
    """The device, kernel or build lacks a feature (dma-buf registration, a GPU provider...)."""


class MemoryLock(GdrxError):
    """Registering memory hit the locked-memory limit (``ulimit -l``, RLIMIT_MEMLOCK)."""


class AllocFailed(GdrxError, MemoryError):
    """The memory provider could not allocate the pool's buffers (no huge pages, ...)."""


class RegistrationFailed(GdrxError):
    """No registration path worked for the pool's memory; the message lists each attempt."""


class ConfigError(GdrxError, ValueError):
    """A bad argument: a slot size, a provider name, an address."""


class ConnectFailed(GdrxError, ConnectionError):
    """An RDMA CM connection could not be made (address, route, handshake)."""


class Refused(ConnectFailed):
    """The receiver refused the connection; the message carries its reason."""


class PeerGone(GdrxError, ConnectionError):
    """The peer went away (transport retries exceeded, flushed work requests)."""


class ProtocolError(GdrxError):
    """The peer's handshake bytes are not gdrx's."""


class Timeout(GdrxError, TimeoutError):
    """A wait passed its timeout."""


class Closed(GdrxError):
    """The receiver or sender was closed."""


class Released(GdrxError):
    """The message was released: make arrays from it before ``release()``."""
