"""Cheap one-shot signals and deadline waits, per event-loop backend.

anyio's ``Event`` and cancel scopes are general and cost tens of microseconds on
asyncio; the mailbox and ``ask`` hot paths need only "wake one waiter" and "wait at
most T". This module gives those two operations natively for asyncio and trio, so the
rest of the runtime stays backend-agnostic; likewise for starting actors' tasks, and
the garbage-collector pause around a bulk start.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import anyio
import anyio.abc


class Signal(Protocol):
    """Set once; awaited by one task."""

    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    async def wait(self) -> None: ...

    async def wait_for(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds; True if set. Only one task may wait."""
        ...


class _AsyncioSignal:
    __slots__ = ("_future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._future: asyncio.Future[object] = loop.create_future()

    def set(self) -> None:
        if not self._future.done():
            self._future.set_result(True)

    def is_set(self) -> bool:
        future = self._future
        return future.done() and not future.cancelled() and future.result() is True

    async def wait(self) -> None:
        await self._future

    async def wait_for(self, timeout: float) -> bool:
        future = self._future
        if not future.done():
            handle = asyncio.get_running_loop().call_later(max(0.0, timeout), _expire, future)
            try:
                await future
            finally:
                handle.cancel()
        return self.is_set()


def _expire(future: asyncio.Future[object]) -> None:
    if not future.done():
        future.set_result(False)


class _AnyioSignal:
    """Generic fallback (trio): anyio's Event and cancel scopes are cheap there."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    async def wait_for(self, timeout: float) -> bool:
        with anyio.move_on_after(timeout):
            await self._event.wait()
        return self._event.is_set()


def new_signal() -> Signal:
    """A signal for the running backend.

    A running asyncio loop means the asyncio backend (trio runs none): cheaper to ask
    than sniffio, and this runs for every message wait and every ask.
    """
    loop = asyncio._get_running_loop()
    if loop is not None:
        return _AsyncioSignal(loop)
    return _AnyioSignal()


class Spawner:
    """Starts an actor's tasks, cheaply.

    anyio's ``start_soon`` costs tens of microseconds on asyncio, which dominates
    starting 10,000 user actors; there, tasks are native asyncio tasks tracked here and
    cancelled on :meth:`aclose`. Elsewhere (trio) they go to the task group.
    """

    def __init__(self, group: anyio.abc.TaskGroup) -> None:
        self._group = group
        self._loop = asyncio._get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_done = self._done
        self.closed = False
        """Set by :meth:`aclose`: a parked actor woken later has no one to run it."""

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            self._group.start_soon(fn, *args)
            return
        task = loop.create_task(fn(*args))
        self._tasks.add(task)
        task.add_done_callback(self._on_done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._group.cancel_scope.cancel()
            raise RuntimeError("actor task failed outside its cell") from task.exception()

    async def aclose(self) -> None:
        """Cancel whatever is still running and wait for it."""
        self.closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


_gc_pauses = 0
_gc_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a burst of allocation (nestable).

    Starting 10,000 actors allocates a few hundred thousand long-lived objects. With
    the collector on, every young collection on the way rescans them and the full ones
    dominate the start. Reference counting still frees everything acyclic meanwhile.

    At the end the survivors are moved straight to the oldest generation (``gc.freeze``
    then ``gc.unfreeze``, unless something else keeps objects frozen): rescanning them
    in the young generations would only cost the same time once the collector is back.
    Cyclic garbage made during the burst is then freed by the next full collection.
    Keep the block short: synchronous work and single loop passes only.
    """
    global _gc_pauses, _gc_was_enabled
    if _gc_pauses == 0:
        _gc_was_enabled = gc.isenabled()
        gc.disable()
    _gc_pauses += 1
    try:
        yield
    finally:
        _gc_pauses -= 1
        if _gc_pauses == 0:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            if _gc_was_enabled:
                gc.enable()
