"""A worker process: serve the inherited listeners until the supervisor, a signal or a limit says stop.

Started by the supervisor as ``python -m tidegate.supervisor.worker CONTROL_FD LISTEN_FD...``.  Signals: SIGTERM
stops gracefully (again: no change), after ``--shutdown-delay``; SIGQUIT stops at once (lifespan shutdown still
runs); SIGINT, SIGHUP and SIGUSR2 are the supervisor's business and are ignored here.  If the supervisor goes away, the
worker stops gracefully.  A worker the supervisor replaces (``stop`` on the channel) or that retires
(``--max-requests``, ``--workers-max-rss``, ``--workers-lifetime``) stops gracefully without the delay, its health
path still answering 200: the other workers serve on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from ..config import ConfigError
from ..importer import AppImportError, import_app
from ..log import configure_logging
from ..metrics import Metrics, MetricsMiddleware
from ..runner import (
    EXIT_APP_ERROR,
    EXIT_STARTUP_FAILED,
    EXIT_USAGE,
    add_signal_handlers,
    new_event_loop,
    set_gc_threshold,
)
from ..runtime.context import ServerContext
from ..runtime.lifespan import LifespanFailure
from ..runtime.server import serve
from ..runtime.udp import QuicListeners
from .channel import Channel, Message, decode_config, read_line
from .recycle import Recycler

__all__ = ["main", "request_counter", "run_worker"]

logger = logging.getLogger("tidegate.error")


def request_counter(limit: int, on_limit: Callable[[], None]) -> Callable[[], bool]:
    """A function to call once per request (any protocol): at the ``limit``-th it calls ``on_limit`` and returns
    True (and on every later one)."""
    counter = itertools.count(1)

    def count() -> bool:
        if next(counter) >= limit:
            on_limit()
            return True
        return False

    return count


def run_worker(control: socket.socket, fds: list[int], number: int | None = None,
               quic: QuicListeners | None = None) -> int:
    """Serve as one worker; ``quic``: its HTTP/3 UDP sockets and their slot (``--quic SLOT TAG FD...``)."""
    hello, rest = read_line(control)
    config = decode_config(hello)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    try:
        configure_logging(config.logging, worker=number)
    except ConfigError as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    set_gc_threshold(config.app.gc_threshold)
    try:
        app = import_app(config.app.app, app_dir=config.app.app_dir, factory=config.app.factory)
    except AppImportError as exc:
        logger.error("Error loading the app: %s", exc)
        return EXIT_APP_ERROR
    loop = new_event_loop(config.app.loop)
    asyncio.set_event_loop(loop)
    sockets = [socket.socket(fileno=fd) for fd in fds]
    for sock in sockets:
        sock.setblocking(False)
    stop = asyncio.Event()
    metrics = Metrics() if config.metrics.bind is not None else None
    if metrics is not None:
        app = MetricsMiddleware(app, metrics)
    states: list[ServerContext] = []
    retiring = False
    replaced = False  # told to stop over the channel: the others serve on

    def snapshot() -> dict[str, Any]:
        assert metrics is not None
        return metrics.snapshot(states[0].connections if states else ())

    def on_message(message: Message) -> None:
        nonlocal replaced
        op = message.get("op")
        if op == "ping":
            channel.send({"op": "pong"})
        elif op == "metrics":
            channel.send({"op": "metrics", "id": message.get("id"), "data": snapshot() if metrics else None})
        elif op == "stop":
            replaced = True
            stop.set()

    def on_close() -> None:
        if not stop.is_set():
            logger.warning("worker %d: the supervisor has gone; stopping", os.getpid())
            stop.set()

    channel = Channel(loop, control, on_message, on_close)

    def retire(reason: str = "reached --max-requests") -> None:
        nonlocal retiring
        if not retiring and not stop.is_set():
            retiring = True
            logger.info("worker %d: %s; retiring", os.getpid(), reason)
            channel.send({"op": "retiring", "reason": reason})
            stop.set()

    recycler = Recycler(loop, config.workers, retire)

    max_requests = config.workers.max_requests
    limit = max_requests + random.randint(0, config.workers.max_requests_jitter) if max_requests else 0

    def prepare(ctx: ServerContext) -> None:
        states.append(ctx)

    def on_started(_: list[socket.socket]) -> None:
        channel.send({"op": "ready"})
        recycler.start()

    def announce_shutdown() -> bool:
        recycler.stop()
        return not (retiring or replaced)

    main = loop.create_task(serve(app, config, sockets=sockets, shutdown_trigger=stop.wait, on_started=on_started,
                                  on_request=request_counter(limit, retire) if limit else None, prepare=prepare,
                                  metrics=metrics, announce_shutdown=announce_shutdown, quic=quic))
    add_signal_handlers(loop, {signal.SIGTERM: stop.set, signal.SIGQUIT: main.cancel})
    channel.feed(rest)
    code = 0
    try:
        loop.run_until_complete(main)
    except LifespanFailure as exc:
        logger.error("Application startup failed: %s", exc)
        code = EXIT_STARTUP_FAILED
    except ConfigError as exc:
        # a setting the server cannot use (a TLS file that cannot be loaded...): said once, exit as the command
        # line does for it
        logger.error("%s", exc)
        code = EXIT_USAGE
    except asyncio.CancelledError:
        pass
    finally:
        channel.send({"op": "bye", "metrics": snapshot() if metrics else None})
        channel.flush_blocking()
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        channel.close()
        asyncio.set_event_loop(None)
        loop.close()
        sys.stderr.flush()
    return code


def main() -> None:
    args = sys.argv[1:]
    quic = None
    if "--quic" in args:
        at = args.index("--quic")
        slot, tag, *udp = (int(arg) for arg in args[at + 1:])
        quic = QuicListeners([socket.socket(fileno=fd) for fd in udp], slot, tag)
        args = args[:at]
    number, control_fd, *fds = (int(arg) for arg in args)
    control = socket.socket(fileno=control_fd)
    sys.exit(run_worker(control, fds, number, quic))


if __name__ == "__main__":
    main()
