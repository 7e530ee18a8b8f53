"""One asyncio event loop per process, on a thread of its own, for the provider calls that are
coroutines: a call waiting on its provider then holds a task on this loop, not a thread. A forked
child starts its own loop (a loop's thread does not survive a fork).

The loop is uvloop's: with a thousand calls on it, the standard loop cost the worker more CPU per run
than a thread per call did (bench/README.md), uvloop less."""

import asyncio
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")
_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid: int | None = None


def loop() -> asyncio.AbstractEventLoop:
    global _loop, _pid
    if _pid == os.getpid() and _loop is not None:
        return _loop
    with _lock:
        if _pid != os.getpid() or _loop is None:
            started = uvloop.new_event_loop()
            threading.Thread(target=started.run_forever, name="provider-loop", daemon=True).start()
            _loop, _pid = started, os.getpid()
        return _loop


def started() -> asyncio.AbstractEventLoop | None:
    """This process's loop, if it has started one (a forked child's copy of its parent's does not count)."""
    return _loop if _pid == os.getpid() else None


def submit(coroutine: Coroutine[Any, Any, T]) -> Future[T]:
    """Run the coroutine on the loop; its future can be waited on from any thread."""
    return asyncio.run_coroutine_threadsafe(coroutine, loop())
