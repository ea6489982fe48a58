"""How the compiled modules await an app's coroutine or a future: an exception thrown in with the three-argument
``throw`` (as mypyc's coroutines pass one on) reaches the awaited coroutine as itself, and nothing warns (warnings
are errors here: Python 3.12 deprecated the three-argument form)."""

from __future__ import annotations

import sys
from collections.abc import Generator
from typing import Any

import pytest

from tidegate._build import COMPILED_BUILD
from tidegate.asgi.awaiting import awaiting
from tidegate.asgi.one_arg_throw import OneArgThrow


class Step:
    """An awaitable that yields once (as a pending future does) and returns what it is sent."""

    def __await__(self) -> Generator[str, Any, Any]:
        return (yield "waiting")


async def waits(log: list[Any]) -> str:
    try:
        await Step()
    except LookupError as exc:
        log.append(exc)
        return "caught"
    finally:
        log.append("finally")
    return "finished"


def test_a_thrown_exception_reaches_the_coroutine_as_itself_from_three_arguments() -> None:
    log: list[Any] = []
    wrapper = OneArgThrow(waits(log).__await__())
    assert iter(wrapper) is wrapper and wrapper.__await__() is wrapper
    assert next(wrapper) == "waiting"
    error = LookupError("thrown")
    with pytest.raises(StopIteration) as stop:
        wrapper.throw(LookupError, error, error.__traceback__)
    assert stop.value.value == "caught"
    assert log == [error, "finally"]


def test_a_thrown_exception_type_alone_is_raised_in_the_coroutine() -> None:
    log: list[Any] = []
    wrapper = OneArgThrow(waits(log).__await__())
    next(wrapper)
    with pytest.raises(StopIteration) as stop:
        wrapper.throw(LookupError)
    assert stop.value.value == "caught"
    assert isinstance(log[0], LookupError)


def test_send_and_close_reach_the_coroutine() -> None:
    log: list[Any] = []
    wrapper = OneArgThrow(waits(log).__await__())
    assert wrapper.send(None) == "waiting"
    with pytest.raises(StopIteration) as stop:
        wrapper.send("resumed")
    assert stop.value.value == "finished"
    assert log == ["finally"]
    closed: list[Any] = []
    closing = OneArgThrow(waits(closed).__await__())
    next(closing)
    closing.close()
    assert closed == ["finally"]


def test_awaiting_wraps_only_where_compiled_code_would_pass_three_arguments() -> None:
    step = Step()
    wrapped = awaiting(step)
    if sys.version_info >= (3, 12) and COMPILED_BUILD:
        assert isinstance(wrapped, OneArgThrow)
    else:
        assert wrapped is step
