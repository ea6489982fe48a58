"""Listen addresses as the ``--bind`` setting spells them: ``HOST:PORT``, ``[IPv6]:PORT``, ``unix:PATH``, ``fd://N``.

Pure parsing, no sockets: the configuration validates with it and the runtime binds what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Address", "parse_address"]


@dataclass(frozen=True)
class Address:
    """One listener: a TCP ``host``/``port``, a UNIX socket ``path`` or an inherited file descriptor ``fd``."""

    kind: Literal["tcp", "unix", "fd"]
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _port(text: str, whole: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{whole!r} has no valid port (expected HOST:PORT)")
    port = int(text)
    if port > 65535:
        raise ValueError(f"{whole!r}: port must be between 0 and 65535")
    return port


def parse_address(text: str) -> Address:
    """``text`` → :class:`Address`; ``ValueError`` with a message saying what is wrong."""
    text = text.strip()
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ValueError(f"{text!r} names no path (expected unix:PATH)")
        return Address("unix", path=path)
    if text.startswith("fd://"):
        number = text[5:]
        if not number.isdigit():
            raise ValueError(f"{text!r} names no file descriptor (expected fd://N)")
        return Address("fd", fd=int(number))
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or not host:
            raise ValueError(f"{text!r} is not [IPv6]:PORT")
        return Address("tcp", host=host, port=_port(port, text))
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r} has no port (expected HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N)")
    if ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as [{host}]:{port}")
    return Address("tcp", host=host or "0.0.0.0", port=_port(port, text))
