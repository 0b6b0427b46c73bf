"""Small waiting helpers for tests: bounded, no fixed sleeps."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.lowlevel


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` holds, yielding to the loop; fail after ``timeout``."""
    with anyio.fail_after(timeout):
        spins = 0
        while not condition():
            spins += 1
            if spins < 200:
                await anyio.lowlevel.checkpoint()
            else:
                await anyio.sleep(0.002)
