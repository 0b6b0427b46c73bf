"""Periodic ticks for actors, on the actor's own clock."""

from __future__ import annotations

from collections.abc import Callable

from runtime.clock import Clock


async def every(
    clock: Clock, interval: float, tick: Callable[[], None], *, immediately: bool = False
) -> None:
    """Call ``tick`` every ``interval`` seconds of ``clock`` until cancelled.

    Periodic work must go through the actor's mailbox (the mailbox is the lock), so
    ``tick`` usually tells the actor a message unless the previous one is still queued:
    a slow actor then never piles up ticks. Using the injected clock keeps the period
    under a test's control.
    """
    if immediately:
        tick()
    while True:
        await clock.sleep(interval)
        tick()
