"""Every listening socket the settings ask for: ``--bind`` addresses, ``--uds``, ``--fd``, systemd socket
activation, or ``--host``/``--port`` when none of those is given."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import MutableMapping

from ..addresses import Address, parse_address
from ..config import BindSettings, ConfigError
from .sockets import bind_socket

__all__ = ["SD_LISTEN_FDS_START", "bind_address", "bind_all", "systemd_sockets"]

logger = logging.getLogger("tidegate.error")

SD_LISTEN_FDS_START = 3


def systemd_sockets(environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """Sockets passed by systemd socket activation (``LISTEN_FDS`` for ``LISTEN_PID`` = this process).

    The variables are removed once read, so processes started later do not take them for their own."""
    environ = os.environ if environ is None else environ
    count = environ.get("LISTEN_FDS")
    pid = environ.get("LISTEN_PID")
    if count is None or pid is None:
        return []
    names = environ.get("LISTEN_FDNAMES", "")
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        environ.pop(name, None)
    if not pid.isdigit() or int(pid) != os.getpid():
        return []
    if not count.isdigit():
        raise ConfigError(f"LISTEN_FDS must be a number, not {count!r}")
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)):
        sockets.append(_inherit(fd, "systemd socket"))
    if names:  # the sockets' FileDescriptorName= (or --fdname), in the same order
        logger.info("systemd sockets: %s", ", ".join(f"{name} (fd {fd})" for fd, name in enumerate(
            names.split(":")[:len(sockets)], SD_LISTEN_FDS_START)))
    return sockets


def _inherit(fd: int, what: str) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ConfigError(f"{what} fd {fd}: {exc.strerror}") from None
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ConfigError(f"{what} fd {fd} is not a stream socket")
    os.set_inheritable(fd, False)
    sock.setblocking(False)
    return sock


def bind_address(address: Address, bind: BindSettings) -> socket.socket:
    """Bind one parsed ``--bind`` address with the other listener settings of ``bind``."""
    if address.kind == "fd":
        return _inherit(address.fd, "inherited")
    if address.kind == "unix":
        sock = bind_socket(dataclasses.replace(bind, uds=address.path, fd=None, bind=()))
        if bind.uds_permissions is not None:
            os.chmod(address.path, int(bind.uds_permissions, 8))
        return sock
    return bind_socket(dataclasses.replace(bind, host=address.host, port=address.port, uds=None, fd=None, bind=()))


def bind_all(bind: BindSettings, environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """Every listener ``bind`` asks for, in order; all or none (sockets bound so far are closed on an error)."""
    addresses = [parse_address(item) for item in bind.bind]
    if bind.uds is not None:
        addresses.append(Address("unix", path=bind.uds))
    if bind.fd is not None:
        addresses.append(Address("fd", fd=bind.fd))
    sockets: list[socket.socket] = []
    try:
        sockets.extend(systemd_sockets(environ))
        if sockets:
            logger.info("using %d socket(s) from systemd socket activation", len(sockets))
        for address in addresses:
            sockets.append(bind_address(address, bind))
        if not sockets:
            sockets.append(bind_address(Address("tcp", host=bind.host, port=bind.port), bind))
    except BaseException:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        raise
    return sockets
