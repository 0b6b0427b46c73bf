"""Clocks: the only way actors read time or wait for it.

Injecting the clock is what makes backoff, TTLs and health rules testable without real
sleeps: production uses :class:`SystemClock` (which follows the event loop's clock, so
trio's ``MockClock`` works unchanged), tests can use :class:`ManualClock` on any backend.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol

import anyio


class Clock(Protocol):
    """What actors need from time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; for durations and deadlines."""
        ...

    def wall(self) -> float:
        """Unix seconds; for timestamps that are stored or shown."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock."""
        ...


class SystemClock:
    """The event loop's clock and the system's wall time."""

    def monotonic(self) -> float:
        """``anyio.current_time()``; on asyncio the loop is asked directly (cheaper)."""
        loop = asyncio._get_running_loop()
        return loop.time() if loop is not None else anyio.current_time()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


class ManualClock:
    """Virtual time that moves only when a test calls :meth:`advance`.

    Sleepers wake in deadline order as time passes them. ``sleeps`` records every
    requested duration, so a test can assert the exact backoff sequence.
    """

    def __init__(self, start: float = 1_000.0, wall_start: float = 1_750_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), event))
        await event.wait()

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting on this clock."""
        return sum(1 for _, _, event in self._sleepers if not event.is_set())

    def next_deadline(self) -> float | None:
        """The earliest pending wake-up time, if any."""
        return self._sleepers[0][0] if self._sleepers else None

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking sleepers due on the way, each at its own time.

        Between wake-ups it yields to the loop a few times so the woken tasks run (and
        may schedule new sleeps) before time moves on, as they would in real time.
        """
        await settle()
        target = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, event = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            event.set()
            await settle()
        self._now = target
        await settle()


async def settle(rounds: int = 20) -> None:
    """Let every runnable task run until the loop is quiet (bounded, for tests)."""
    for _ in range(rounds):
        await anyio.lowlevel.checkpoint()
