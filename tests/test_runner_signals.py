"""The server's signal handlers, installed before its loop runs: a signal in between is not lost (uvloop listens for
its handlers' signals only while it runs)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tidegate.runner import add_signal_handlers, new_event_loop


def _blocked() -> set[int]:
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, []))


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_a_signal_before_the_loop_runs_reaches_its_handler(kind: str) -> None:
    loop = new_event_loop(kind)
    heard = asyncio.Event()
    before = _blocked()
    try:
        assert add_signal_handlers(loop, {signal.SIGUSR1: heard.set}) == [signal.SIGUSR1]
        os.kill(os.getpid(), signal.SIGUSR1)  # after the handler is installed, before the loop runs

        async def wait() -> None:
            await asyncio.wait_for(heard.wait(), 5.0)

        loop.run_until_complete(wait())
        assert _blocked() == before  # held only until the loop's first callback
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        loop.close()


def test_a_signal_the_caller_had_blocked_stays_blocked() -> None:
    loop = new_event_loop("uvloop")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    try:
        add_signal_handlers(loop, {signal.SIGUSR2: lambda: None})
        loop.run_until_complete(asyncio.sleep(0))
        assert signal.SIGUSR2 in _blocked()
    finally:
        loop.remove_signal_handler(signal.SIGUSR2)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
        loop.close()
