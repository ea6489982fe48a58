"""Binding and inheriting listening sockets."""

from __future__ import annotations

import contextlib
import os
import socket
import stat

from ..config import BindSettings, ConfigError

__all__ = ["bind_socket", "describe"]


def bind_socket(bind: BindSettings) -> socket.socket:
    """The listening socket ``bind`` asks for: an inherited fd, a UNIX socket, or host:port."""
    if bind.fd is not None:
        sock = socket.socket(fileno=bind.fd)
        if sock.type != socket.SOCK_STREAM:
            raise ConfigError(f"fd {bind.fd} is not a stream socket")
        sock.setblocking(False)
        return sock
    if bind.uds is not None:
        path = bind.uds
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)  # a stale socket left by a previous run
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot bind UNIX socket {path!r}: {exc.strerror}") from None
        sock.listen(bind.backlog)
        sock.setblocking(False)
        return sock
    host = bind.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind((host.strip("[]"), bind.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind {host}:{bind.port}: {exc.strerror}") from None
    sock.listen(bind.backlog)
    sock.setblocking(False)
    return sock


def describe(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    if sock.family == socket.AF_INET6:
        return f"http://[{name[0]}]:{name[1]}"
    return f"http://{name[0]}:{name[1]}"
