"""Run a server in this process: pick the loop, import the app, handle signals, map failures to exit codes."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

from .config import Config, ConfigError
from .importer import AppImportError, import_app
from .log import configure_logging
from .runtime.lifespan import LifespanFailure
from .runtime.server import serve
from .runtime.sockets import AddressInUse

__all__ = ["EXIT_ADDRESS_IN_USE", "EXIT_APP_ERROR", "EXIT_STARTUP_FAILED", "add_signal_handlers", "new_event_loop",
           "run_config"]

logger = logging.getLogger("tidegate.error")

EXIT_OK = 0
EXIT_APP_ERROR = 1
EXIT_USAGE = 2
EXIT_STARTUP_FAILED = 3
#: a listener's address is already in use
EXIT_ADDRESS_IN_USE = 4


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop for 'uvloop' (and for 'auto' where it is installed), else asyncio's."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise ConfigError("loop 'uvloop' was asked for, but uvloop is not installed") from None
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


def add_signal_handlers(loop: asyncio.AbstractEventLoop, handlers: Mapping[int, Callable[[], object]]) -> list[int]:
    """Install ``handlers`` on ``loop``, which is about to run, so that no signal that comes before it runs is lost;
    return the signals installed (none where the loop cannot take them: not the main thread).

    uvloop listens for the signals of its handlers only while it runs (it points Python's wakeup descriptor at its
    own when a run starts): a signal that comes after ``add_signal_handler()`` and before the run is taken by Python
    and never dispatched, and a worker the supervisor stops at that moment would never stop.  The signals are held
    blocked from here to the loop's first callback, which lets one that came meanwhile through to its handler.
    """
    wanted = set(handlers)
    held = wanted - signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    installed = []
    try:
        for sig, handler in handlers.items():
            try:
                loop.add_signal_handler(sig, handler)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (uvloop: ValueError)
                pass
    finally:
        loop.call_soon(signal.pthread_sigmask, signal.SIG_UNBLOCK, held)
    return installed


def set_gc_threshold(threshold: int) -> None:
    """``--gc-threshold``: the cyclic collector's first-generation threshold (0: leave Python's own).

    A young collection runs each time that many more container objects are alive than at the last one.  A server
    with many connections keeps a whole loop pass of requests alive at once (each read's request, scope and task
    wait for the pass that runs its app), so with Python's 700 the collector ran many times a pass, and every
    request caught in flight was promoted to the older generations, which were then walked in full: at a thousand
    connections, the collector took a seventh of the process's CPU.
    """
    if threshold > 0:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(threshold, middle, old)


def run_config(config: Config, app: Any = None) -> int:
    """Serve as ``config`` says; return the process exit code."""
    try:
        configure_logging(config.logging)
    except ConfigError as exc:
        sys.stderr.write(f"tidegate: {exc}\n")
        return EXIT_USAGE
    set_gc_threshold(config.app.gc_threshold)
    if app is None:
        try:
            app = import_app(config.app.app, app_dir=config.app.app_dir, factory=config.app.factory)
        except AppImportError as exc:
            logger.error("Error loading the app: %s", exc, exc_info=exc if logger.isEnabledFor(logging.DEBUG)
                         else None)
            return EXIT_APP_ERROR
    loop = new_event_loop(config.app.loop)
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    serving = False

    def on_started(sockets: list[Any]) -> None:
        nonlocal serving
        serving = True

    main = loop.create_task(serve(app, config, shutdown_trigger=stop.wait, on_started=on_started))
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1 and serving:
            stop.set()
        elif signals == 1:
            # still in lifespan startup, which may never end: nothing to drain yet
            logger.info("stopping before the server started")
            main.cancel()
        else:
            logger.warning("second signal: stopping now")
            main.cancel()

    def on_hangup() -> None:
        # re-reading the config file and replacing the server is the supervisor's work; here SIGHUP does not stop
        logger.warning("SIGHUP ignored: re-reading the config file needs the supervisor (run with --workers 1); "
                       "still serving with the same settings")

    def on_upgrade() -> None:
        # starting a new generation on the same sockets is the supervisor's work; here SIGUSR2 does not stop
        logger.warning("SIGUSR2 ignored: a binary upgrade needs the supervisor (run with --workers 1); still "
                       "serving")

    installed = add_signal_handlers(loop, {signal.SIGINT: on_signal, signal.SIGTERM: on_signal,
                                           signal.SIGHUP: on_hangup, signal.SIGUSR2: on_upgrade})
    try:
        loop.run_until_complete(main)
        return EXIT_OK
    except LifespanFailure as exc:
        logger.error("Application startup failed: %s", exc)
        return EXIT_STARTUP_FAILED
    except AddressInUse as exc:
        logger.error("%s", exc)
        return EXIT_ADDRESS_IN_USE
    except ConfigError as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    except asyncio.CancelledError:
        return EXIT_OK
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        _cancel_all(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()
        sys.stderr.flush()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
