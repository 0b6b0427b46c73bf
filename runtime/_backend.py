"""Cheap one-shot signals and deadline waits, per event-loop backend.

anyio's ``Event`` and cancel scopes are general and cost tens of microseconds on
asyncio; the mailbox and ``ask`` hot paths need only "wake one waiter" and "wait at
most T". This module gives those two operations natively for asyncio and trio, so the
rest of the runtime stays backend-agnostic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import anyio
import anyio.abc
import sniffio


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

    def __init__(self) -> None:
        self._future: asyncio.Future[object] = asyncio.get_running_loop().create_future()

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
    """A signal for the running backend."""
    if sniffio.current_async_library() == "asyncio":
        return _AsyncioSignal()
    return _AnyioSignal()


class Spawner:
    """Starts an actor's tasks, cheaply.

    anyio's ``start_soon`` costs tens of microseconds on asyncio, which dominates
    starting 10,000 user actors; there, tasks are native asyncio tasks tracked here and
    cancelled on :meth:`aclose`. Elsewhere (trio) they go to the task group.
    """

    def __init__(self, group: anyio.abc.TaskGroup) -> None:
        self._group = group
        self._native = sniffio.current_async_library() == "asyncio"
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        if not self._native:
            self._group.start_soon(fn, *args)
            return
        task = asyncio.get_running_loop().create_task(fn(*args))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._group.cancel_scope.cancel()
            raise RuntimeError("actor task failed outside its cell") from task.exception()

    async def aclose(self) -> None:
        """Cancel whatever is still running and wait for it."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
