"""``await`` from compiled code that hands an exception thrown in on as itself.

When a task throws an exception into a coroutine (its own ``asyncio.timeout`` expiring, a cancellation, a future it
waits on failing), each coroutine in the chain passes it on to what it awaits.  A coroutine compiled with mypyc passes
it on as ``throw(type, value, traceback)``, a signature Python 3.12 deprecated: the coroutine or future below then
warns (``DeprecationWarning``), blamed on the app's line that was waiting, and where warnings are errors (``-W error``,
a test suite's ``filterwarnings = error``) the warning replaces the exception: the app's ``except TimeoutError`` no
longer matches, and its request is answered 500.

So on 3.12 and later, the compiled modules await an app's coroutine, and the futures they wait on, through
:func:`awaiting`, whose wrapper takes the three arguments and passes the exception on alone.  Before 3.12, and in the
pure Python build (whose coroutines pass the exception on alone already), :func:`awaiting` returns what it is given.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable
from typing import Final, TypeVar, cast

from .._build import COMPILED_BUILD
from .one_arg_throw import OneArgThrow

T = TypeVar("T")

#: whether the hot path runs compiled (its modules run compiled together, or not at all)
_COMPILED: Final = COMPILED_BUILD


if sys.version_info >= (3, 12):
    def awaiting(awaitable: Awaitable[T]) -> Awaitable[T]:
        """``awaitable``, wrapped where compiled code awaits it (see the module)."""
        if _COMPILED:
            return cast(Awaitable[T], OneArgThrow(awaitable.__await__()))
        return awaitable
else:
    def awaiting(awaitable: Awaitable[T]) -> Awaitable[T]:
        """``awaitable`` itself: before 3.12 a three-argument ``throw`` is not deprecated."""
        return awaitable
