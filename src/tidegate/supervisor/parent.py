"""The supervisor: bind every listener once, run worker processes on them, keep them healthy.

- Workers are started as ``python -m tidegate.supervisor.worker`` with the listening sockets and one end of a
  socket pair (the control channel) passed as file descriptors; the pickled config is the channel's first message.
- A worker that exits is replaced at once; one that has not answered a health check (over the channel, from its
  event loop) for ``--timeout-worker-healthcheck`` seconds is killed and replaced.
- SIGTERM/SIGINT: graceful stop of every worker (a second one: stop at once).  SIGQUIT: stop at once.
  SIGHUP: the config file (if the settings came from one) is read again, then a rolling restart: new workers
  first, with the new settings, the old ones drained once every new one is ready.  Each changed setting is logged;
  those a restart of workers cannot apply (the listeners, the metrics endpoint, the reload watcher: see
  :mod:`.reconfig`) keep their running value.  A file that cannot be read, or has a bad key or value, is logged
  and changes nothing: the workers keep running.
  SIGTTIN/SIGTTOU: one worker more/less.
- SIGUSR2: binary upgrade (see :mod:`.upgrade`): a new supervisor is started from the same command line on the same
  listening sockets; once all its workers are ready this one stops accepting and drains, as on SIGTERM.  If the
  new one fails to start, this one logs it and serves on.
- ``--reload``: one worker, restarted (new first, as for SIGHUP) when a watched file changes; a worker that fails to
  start (a syntax error...) leaves the supervisor waiting for the next change.
- ``--metrics-bind``: the supervisor serves /metrics, summing what every worker reports.

If the first workers fail to start (the app cannot be imported, its lifespan startup fails), the supervisor stops
and exits with their exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..addresses import parse_address
from ..config import Config, ConfigError
from ..log import configure_logging
from ..metrics import merge, render
from ..runner import EXIT_ADDRESS_IN_USE, EXIT_APP_ERROR, EXIT_OK, EXIT_STARTUP_FAILED, EXIT_USAGE
from ..runtime.listeners import bind_all
from ..runtime.server import serve
from ..runtime.sockets import AddressInUse, describe
from ..sources import Reassembly, reassembly_for
from ..startup import reclaim_pid_file
from .channel import Channel, Message, encode_config
from .quic import QuicWorkers
from .reconfig import applicable, changes
from .upgrade import Inheritance, Successor, announce_ready, take_inheritance

__all__ = ["Supervisor", "supervise"]

logger = logging.getLogger("tidegate.error")

BOOTING, READY, RETIRING, STOPPING = "booting", "ready", "retiring", "stopping"
_PACKAGE_DIR = str(Path(__file__).resolve().parents[2])  # the directory holding the tidegate package


class Worker:
    """The supervisor's view of one worker process."""

    def __init__(self, number: int, process: subprocess.Popen[bytes], channel: Channel) -> None:
        self.number = number
        self.process = process
        self.pid = process.pid
        self.channel = channel
        self.state = BOOTING
        self.started = time.monotonic()
        self.last_seen = self.started
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.metrics: dict[str, Any] | None = None
        self.final_metrics = False
        self.stop_deadline: float | None = None


class Supervisor:
    def __init__(self, config: Config, sources: Reassembly | None = None) -> None:
        """``sources``: how to assemble ``config`` again from its config file, for SIGHUP (None: no file)."""
        self.config = config
        self.sources = sources
        self.reload = config.reload.reload
        self.target = 1 if self.reload else (config.workers.workers or 1)
        self.workers: list[Worker] = []
        self.sockets: list[socket.socket] = []
        self.numbers = itertools.count(1)
        self.loop = asyncio.get_running_loop()
        self.stopping = False
        self.stopped = asyncio.Event()
        self.exit_code = EXIT_OK
        self.booted = False  # the first workers came up: later boot failures are not fatal
        self.rolling = False
        self.restarts = 0
        self.retired_metrics: dict[str, Any] = {}
        self.scrapes = itertools.count(1)
        self.scrape_waiters: dict[int, asyncio.Future[Any]] = {}
        self._health: asyncio.TimerHandle | None = None
        self._hup: asyncio.Task[None] | None = None
        self._hup_pending = False
        self._signals = 0
        self._respawn_delay = 0.0
        self.inheritance: Inheritance | None = None  # the sockets of the previous generation, until handed over
        self.successor: Successor | None = None  # the next generation, while it starts
        self.metrics_socket: socket.socket | None = None
        self.quic: QuicWorkers | None = None  # --http3: the UDP sockets, one per worker slot

    # ------------------------------------------------------------------ life

    async def run(self) -> int:
        try:
            self.inheritance = take_inheritance()
            if self.inheritance is not None:
                self.sockets = self.inheritance.listeners
                logger.info("supervisor %d: new generation, on the listening sockets of supervisor %d",
                            os.getpid(), self.inheritance.parent)
            else:
                self.sockets = bind_all(self.config.bind)
        except ConfigError as exc:
            logger.error("%s", exc)
            return EXIT_ADDRESS_IN_USE if isinstance(exc, AddressInUse) else EXIT_USAGE
        for sock in self.sockets:
            logger.info("supervisor %d listening on %s", os.getpid(),
                        describe(sock, "https" if self.config.tls.certfile else "http"))
        if self.config.h3.http3:
            try:
                self.quic = QuicWorkers(self.loop, self.config, self.sockets)
            except ConfigError as exc:
                logger.error("%s", exc)
                for sock in self.sockets:
                    sock.close()
                return EXIT_USAGE
        metrics_task = None
        if self.config.metrics.bind is not None:
            metrics_task = await self._start_metrics()
        self._install_signals()
        watcher = None
        if self.reload:
            if self.config.workers.workers not in (None, 1):
                logger.warning("--reload runs one worker; --workers is not used")
            from .reload import Watcher

            try:
                watcher = Watcher(self.config.reload, self._on_files_changed)
            except ConfigError as exc:
                logger.error("%s", exc)
                return EXIT_USAGE
            watcher.start()
            logger.info("watching %s for changes", ", ".join(watcher.dirs))
        self._maintain()
        self._schedule_health_check()
        try:
            await self.stopped.wait()
            await self._stop_all()
        finally:
            if watcher is not None:
                watcher.stop()
            if self._health is not None:
                self._health.cancel()
            if metrics_task is not None:
                self._metrics_stop.set()
                await metrics_task
            for sock in self.sockets:
                sock.close()
            if self.quic is not None:
                self.quic.close()
            if self.successor is not None:
                self.successor.close()
            if self.inheritance is not None:  # stopped before every worker was ready
                with contextlib.suppress(OSError):
                    os.close(self.inheritance.ready)
                self.inheritance = None
            self._remove_signals()
        logger.info("supervisor stopped")
        return self.exit_code

    def request_stop(self, code: int = EXIT_OK) -> None:
        if not self.stopping:
            self.stopping = True
            self.exit_code = code
            self.stopped.set()

    async def _stop_all(self, fast: bool = False) -> None:
        grace = self.config.timeouts.graceful_shutdown + self.config.health.shutdown_delay
        for worker in list(self.workers):
            self._terminate(worker, signal.SIGQUIT if fast else signal.SIGTERM)
        deadline = time.monotonic() + grace + 5.0
        for worker in list(self.workers):
            remaining = deadline - time.monotonic()
            try:
                await asyncio.wait_for(asyncio.shield(worker.exited), max(remaining, 0.1))
            except asyncio.TimeoutError:
                logger.warning("worker %d did not stop in time: killing it", worker.pid)
                self._kill(worker)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(worker.exited), 5.0)

    # ------------------------------------------------------------------ signals

    def _install_signals(self) -> None:
        handlers: dict[int, Callable[[], None]] = {
            signal.SIGTERM: self._on_stop_signal,
            signal.SIGINT: self._on_stop_signal,
            signal.SIGQUIT: self._on_quit,
            signal.SIGHUP: self._on_hup,
            signal.SIGTTIN: self._on_ttin,
            signal.SIGTTOU: self._on_ttou,
            signal.SIGUSR2: self._on_usr2,
        }
        for sig, handler in handlers.items():
            self.loop.add_signal_handler(sig, handler)

    def _remove_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU,
                    signal.SIGUSR2):
            self.loop.remove_signal_handler(sig)

    def _on_stop_signal(self) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.info("supervisor: stopping the workers gracefully")
            self.request_stop()
        else:
            self._on_quit()

    def _on_quit(self) -> None:
        logger.warning("supervisor: stopping the workers now")
        for worker in list(self.workers):
            self._terminate(worker, signal.SIGQUIT)
        self.request_stop(self.exit_code)

    def _on_hup(self) -> None:
        if self.stopping:
            return
        if self.rolling or (self._hup is not None and not self._hup.done()):
            if not self._hup_pending:
                logger.info("supervisor: SIGHUP while workers are being replaced; handled once they are")
            self._hup_pending = True
            return
        self._hup = self.loop.create_task(self._reconfigure())

    async def _reconfigure(self) -> None:
        """SIGHUP: read the config file again (if there is one), then replace the workers."""
        try:
            if self.sources is None:
                logger.info("supervisor: SIGHUP, no config file to re-read; rolling restart of %d worker(s)",
                            self.target)
                await self.rolling_restart()
                return
            reread = self.reread()
            if reread is None:
                return
            config, target = reread
            logger.info("supervisor: rolling restart of %d worker(s)", target)
            if not await self.rolling_restart(config, target) and not self.stopping and config != self.config:
                logger.error("config: the new settings were not applied; the running workers keep the previous ones")
        finally:
            self._after_restart()

    def reread(self) -> tuple[Config, int] | None:
        """The settings as the config file says now, with those that need a restart kept at their running values,
        and the number of workers to run; each change is logged.  None (after logging why) if the file cannot be
        read or has a bad key or value."""
        assert self.sources is not None
        file = self.sources.file
        logger.info("supervisor: SIGHUP, re-reading %s", file)
        try:
            new = self.sources.resolve().config
            if not new.app.app:
                raise ConfigError("no APP: it is neither on the command line nor in the file")
            problem = new.tls.problem()  # else checked by each worker as it starts
            if problem is not None:
                raise ConfigError(problem)
        except ConfigError as exc:
            message = str(exc) if str(file) in str(exc) else f"{file}: {exc}"
            logger.error("config: %s; nothing applied, the workers keep running with the settings they have",
                         message)
            return None
        found = changes(self.config, new)
        for change in found:
            (logger.warning if change.needs_restart else logger.info)("config: %s", change.describe())
        if not found:
            logger.info("config: no setting changed")
        config = applicable(self.config, new)
        target = self.target
        if config.workers.workers != self.config.workers.workers and not self.reload:
            target = config.workers.workers or 1
        return config, target

    def _after_restart(self) -> None:
        """Handle a SIGHUP that came while workers were being replaced."""
        if self._hup_pending and not self.stopping:
            self._hup_pending = False
            self.loop.call_soon(self._on_hup)

    def _on_ttin(self) -> None:
        if self.stopping or self.reload:
            return
        self.target += 1
        logger.info("supervisor: SIGTTIN, %d worker(s) now", self.target)
        self._maintain()

    def _on_ttou(self) -> None:
        if self.stopping or self.reload:
            return
        if self.target <= 1:
            logger.info("supervisor: SIGTTOU ignored, one worker is the least")
            return
        self.target -= 1
        logger.info("supervisor: SIGTTOU, %d worker(s) now", self.target)
        self._maintain()

    # ------------------------------------------------------------------ binary upgrade

    def _on_usr2(self) -> None:
        if self.stopping:
            return
        reason = None
        if self.reload:
            reason = "--reload restarts the workers when files change"
        elif self.quic is not None:
            # a new generation could not join the UDP sockets' steering: their connections would break
            reason = ("HTTP/3's UDP sockets are not handed to a new generation; use SIGHUP (a rolling restart, "
                      "new code included) or restart the server")
        elif self.successor is not None:
            reason = f"the new generation (pid {self.successor.pid}) is still starting"
        elif self.inheritance is not None:
            reason = "this generation is still starting"
        elif self.rolling or (self._hup is not None and not self._hup.done()):
            reason = "workers are being replaced; send it again once they are"
        if reason is not None:
            logger.warning("supervisor: SIGUSR2 ignored: %s", reason)
            return
        try:
            self.successor = Successor(self.loop, self.sockets, self.metrics_socket, self._on_successor_ready,
                                       self._on_successor_exit)
        except OSError as exc:
            logger.error("supervisor: SIGUSR2, cannot start a new generation: %s; this one serves on", exc)
            return
        logger.info("supervisor: SIGUSR2, started a new generation (pid %d) on the same listeners; this one serves "
                    "until all its workers are ready", self.successor.pid)

    def _on_successor_ready(self) -> None:
        assert self.successor is not None
        logger.info("supervisor: the new generation (pid %d) is ready; this one (pid %d) stops accepting and drains "
                    "its workers", self.successor.pid, os.getpid())
        for worker in self.active():
            self._terminate(worker, signal.SIGTERM)  # replaced, as in a rolling restart: the new workers serve on
        self.request_stop()

    def _on_successor_exit(self, code: int) -> None:
        successor, self.successor = self.successor, None
        assert successor is not None
        how = f"signal {-code}" if code < 0 else f"code {code}"
        if successor.ready:
            logger.info("supervisor: the new generation (pid %d) exited with %s", successor.pid, how)
            return
        logger.error("supervisor: the new generation (pid %d) exited with %s before it was ready (its log above "
                     "says why); this one (pid %d) serves on", successor.pid, how, os.getpid())
        reclaim_pid_file()

    def _check_handover(self) -> None:
        """The new generation tells the old one once as many workers as wanted are ready."""
        if self.inheritance is None or self.stopping:
            return
        if sum(1 for w in self.workers if w.state == READY) >= self.target:
            logger.info("supervisor: all %d worker(s) ready; telling supervisor %d to drain", self.target,
                        self.inheritance.parent)
            announce_ready(self.inheritance.ready)
            self.inheritance = None

    # ------------------------------------------------------------------ workers

    def active(self) -> list[Worker]:
        return [w for w in self.workers if w.state in (BOOTING, READY)]

    def _maintain(self) -> None:
        """Start or stop workers until as many as wanted are booting or serving."""
        if self.stopping or self.rolling:
            return
        active = self.active()
        for _ in range(self.target - len(active)):
            self.spawn()
        if len(active) > self.target:
            for worker in sorted(active, key=lambda w: w.started)[:len(active) - self.target]:
                self._terminate(worker, signal.SIGTERM)

    def spawn(self, config: Config | None = None) -> Worker:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [sock.fileno() for sock in self.sockets]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_DIR, env.get("PYTHONPATH")) if p)
        number = next(self.numbers)
        command = [sys.executable, "-m", "tidegate.supervisor.worker", str(number), str(child_end.fileno()),
                   *map(str, fds)]
        slot = -1
        if self.quic is not None:
            slot, quic_fds = self.quic.allocate()
            command += self.quic.arguments(slot, quic_fds)
            fds = [*fds, *quic_fds]
        try:
            process = subprocess.Popen(command, pass_fds=(child_end.fileno(), *fds), env=env)
        finally:
            child_end.close()
        parent_end.sendall(Channel.encode(encode_config(config or self.config)))
        holder: list[Worker] = []
        channel = Channel(self.loop, parent_end, lambda m: self._on_message(holder[0], m),
                          lambda: None)
        worker = Worker(number, process, channel)
        holder.append(worker)
        self.workers.append(worker)
        if self.quic is not None:
            self.quic.started(number, slot)
            self._steer_quic()
        self._watch_exit(worker)
        logger.info("supervisor: started worker %d (pid %d)", number, worker.pid)
        return worker

    def _watch_exit(self, worker: Worker) -> None:
        try:
            pidfd = os.pidfd_open(worker.pid)
        except (AttributeError, OSError):  # pragma: no cover - no pidfd (not Linux, or an old kernel)
            def wait() -> None:
                code = worker.process.wait()
                self.loop.call_soon_threadsafe(self._on_exit, worker, code)

            self.loop.run_in_executor(None, wait)
            return

        def readable() -> None:
            self.loop.remove_reader(pidfd)
            os.close(pidfd)
            self._on_exit(worker, worker.process.wait())

        self.loop.add_reader(pidfd, readable)

    def _on_exit(self, worker: Worker, code: int) -> None:
        worker.channel.close()
        if worker in self.workers:
            self.workers.remove(worker)
        if self.quic is not None:
            self.quic.exited(worker.number)
            self._steer_quic()
        if not worker.ready.done():
            worker.ready.set_result(False)
        if not worker.exited.done():
            worker.exited.set_result(code)
        if worker.metrics is not None:
            self.retired_metrics = merge([self.retired_metrics, worker.metrics], counters_only=True)
        how = f"signal {-code}" if code < 0 else f"code {code}"
        planned = worker.state in (STOPPING, RETIRING) or self.stopping
        (logger.info if planned else logger.error)("supervisor: worker %d (pid %d) exited with %s",
                                                   worker.number, worker.pid, how)
        if self.stopping:
            return
        if worker.state == BOOTING:
            # a new generation gives up on any worker that cannot start: the old one serves on
            first = not self.booted or self.inheritance is not None
            if first and not self.reload and code in (EXIT_APP_ERROR, EXIT_STARTUP_FAILED, EXIT_USAGE):
                logger.error("supervisor: the worker could not start; stopping")
                self.request_stop(code)
                return
            if self.reload:
                logger.error("supervisor: the worker could not start; waiting for a file change")
                return
            self._respawn_delay = min(max(self._respawn_delay * 2, 0.1), 5.0)
        else:
            self._respawn_delay = 0.0
        if not planned:
            self.restarts += 1
        if self._respawn_delay:
            self.loop.call_later(self._respawn_delay, self._maintain)
        else:
            self._maintain()

    def _on_message(self, worker: Worker, message: Message) -> None:
        worker.last_seen = time.monotonic()
        op = message.get("op")
        if op == "ready":
            if worker.state == BOOTING:
                worker.state = READY
            self.booted = True
            self._respawn_delay = 0.0
            if not worker.ready.done():
                worker.ready.set_result(True)
            logger.info("supervisor: worker %d (pid %d) ready", worker.number, worker.pid)
            self._steer_quic()
            self._check_handover()
        elif op == "retiring":
            if worker.state in (BOOTING, READY):
                worker.state = RETIRING
                self._draining(worker)
                self._steer_quic()
                logger.info("supervisor: worker %d (pid %d) retiring (%s)", worker.number, worker.pid,
                            message.get("reason") or "reached --max-requests")
                self._maintain()
        elif op == "metrics":
            worker.metrics = message.get("data")
            waiter = self.scrape_waiters.pop(int(message.get("id") or 0), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(message.get("data"))
        elif op == "bye" and message.get("metrics") is not None:
            worker.metrics = message["metrics"]

    def _draining(self, worker: Worker) -> None:
        timeouts = self.config.timeouts
        worker.stop_deadline = time.monotonic() + self.config.health.shutdown_delay + timeouts.graceful_shutdown + 5.0

    def _terminate(self, worker: Worker, sig: int) -> None:
        if worker.state not in (STOPPING,) or sig == signal.SIGQUIT:
            worker.state = STOPPING
            self._draining(worker)
            self._steer_quic()
            if sig == signal.SIGTERM and not self.stopping and not worker.channel.closed:
                # replaced while the others serve on: a graceful stop without --shutdown-delay, its health path
                # still answering 200
                worker.channel.send({"op": "stop"})
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, sig)

    def _steer_quic(self) -> None:
        """--http3: each worker keeps its connections' datagrams until it exits; the ready ones take new
        connections."""
        if self.quic is not None:
            self.quic.steer([w.number for w in self.workers], [w.number for w in self.workers if w.state == READY])

    def _kill(self, worker: Worker) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGKILL)

    # ------------------------------------------------------------------ health

    def _schedule_health_check(self) -> None:
        timeout = self.config.timeouts.worker_healthcheck
        self._health = self.loop.call_later(min(1.0, timeout / 4), self._health_check)

    def _health_check(self) -> None:
        now = time.monotonic()
        timeout = self.config.timeouts.worker_healthcheck
        for worker in list(self.workers):
            if worker.stop_deadline is not None and now > worker.stop_deadline:
                logger.error("supervisor: worker %d (pid %d) is still draining after --timeout-graceful-shutdown: "
                             "killing it", worker.number, worker.pid)
                worker.stop_deadline = None
                self._kill(worker)
                continue
            if worker.state != READY:
                continue
            if now - worker.last_seen > timeout:
                logger.error("supervisor: worker %d (pid %d) has not answered for %.1fs: killing it",
                             worker.number, worker.pid, now - worker.last_seen)
                worker.state = STOPPING
                self._kill(worker)
                self.restarts += 1
                self.loop.call_soon(self._maintain_after_kill)
            else:
                worker.channel.send({"op": "ping"})
        self._steer_quic()
        if not self.stopping:
            self._schedule_health_check()

    def _maintain_after_kill(self) -> None:
        self._maintain()

    # ------------------------------------------------------------------ rolling restart and reload

    async def rolling_restart(self, config: Config | None = None, target: int | None = None) -> bool:
        """Start a new set of workers; once all are ready, drain the old ones.  If one fails, keep the old.

        ``config`` and ``target`` (how many workers) are the new workers'; they become the supervisor's once every
        new worker is ready, and are forgotten if one fails."""
        if self.rolling or self.stopping:
            return False
        config = self.config if config is None else config
        target = self.target if target is None else target
        self.rolling = True
        asked = self.target
        try:
            old = self.active()
            new = [self.spawn(config) for _ in range(target)]
            results = await asyncio.gather(*(w.ready for w in new))
            if self.stopped.is_set():
                return False
            if not all(results):
                logger.error("supervisor: a new worker failed to start; keeping the running ones")
                for worker in new:
                    self._terminate(worker, signal.SIGTERM)
                return False
            for worker in old:
                self._terminate(worker, signal.SIGTERM)
            self._adopt(config, max(1, target + self.target - asked))  # with any SIGTTIN/SIGTTOU meanwhile
            logger.info("supervisor: rolling restart done")
            return True
        finally:
            self.rolling = False
            self._maintain()
            self._after_restart()

    def _adopt(self, config: Config, target: int) -> None:
        """Make ``config`` and ``target`` the supervisor's own; its logging follows the new logging settings."""
        previous, self.config, self.target = self.config, config, target
        if config.logging != previous.logging:
            try:
                configure_logging(config.logging)
            except ConfigError as exc:
                logger.error("config: the supervisor keeps its logging set-up: %s", exc)

    def _on_files_changed(self, paths: list[str]) -> None:
        def restart() -> None:
            if self.stopping:
                return
            shown = ", ".join(os.path.relpath(p) for p in paths[:5]) + (" ..." if len(paths) > 5 else "")
            logger.info("supervisor: change detected in %s; restarting", shown)
            if self.active():
                self.loop.create_task(self.rolling_restart())
            else:
                self._maintain()

        self.loop.call_soon_threadsafe(restart)

    # ------------------------------------------------------------------ metrics

    async def _start_metrics(self) -> asyncio.Task[None]:
        assert self.config.metrics.bind is not None
        address = parse_address(self.config.metrics.bind)
        config = Config.from_flat(app="tidegate:metrics", host=address.host, port=address.port, lifespan="off",
                                  access_log=False, log_level=self.config.logging.log_level)
        if self.inheritance is not None and self.inheritance.metrics is not None:
            sock = [self.inheritance.metrics]
        else:
            sock = bind_all(config.bind)
        self.metrics_socket = sock[0]
        self._metrics_stop = asyncio.Event()
        started = self.loop.create_future()
        task = self.loop.create_task(serve(self.metrics_app, config, sockets=sock,
                                           shutdown_trigger=self._metrics_stop.wait,
                                           on_started=lambda s: started.set_result(None)))
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        logger.info("supervisor: Prometheus metrics endpoint (not the app) at %s/metrics", describe(sock[0]))
        return task

    async def scrape(self, timeout: float = 2.0) -> str:
        """Ask every worker for its metrics and sum them with those of the workers that have exited."""
        waiters = []
        for worker in self.workers:
            if worker.state == BOOTING or worker.channel.closed:
                continue
            scrape_id = next(self.scrapes)
            waiter: asyncio.Future[Any] = self.loop.create_future()
            self.scrape_waiters[scrape_id] = waiter
            waiters.append((worker, waiter))
            worker.channel.send({"op": "metrics", "id": scrape_id})
        if waiters:
            await asyncio.wait([w for _, w in waiters], timeout=timeout)
        live = [worker.metrics for worker in self.workers if worker.metrics is not None]
        total = merge([self.retired_metrics], counters_only=True)
        total = merge([total, *live])
        extra = [
            ("tidegate_workers", "gauge", "Worker processes serving.", float(len(self.active()))),
            ("tidegate_worker_restarts_total", "counter", "Workers replaced after dying or failing the health "
             "check.", float(self.restarts)),
        ]
        return render(total, extra)

    async def metrics_app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/metrics":
            await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        body = (await self.scrape()).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def supervise(config: Config) -> int:
    """Run the supervisor until it is told to stop; return the exit code."""
    try:
        configure_logging(config.logging)
    except ConfigError as exc:
        sys.stderr.write(f"tidegate: {exc}\n")
        return EXIT_USAGE
    loop = asyncio.new_event_loop()
    try:
        async def main() -> int:
            return await Supervisor(config, reassembly_for(config)).run()

        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        sys.stderr.flush()
