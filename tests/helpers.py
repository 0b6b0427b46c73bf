"""Small helpers for tests: bounded waits (no fixed sleeps), a published store handle."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import asyncpg
import redis.asyncio as aioredis

from actors.store.handle import StoreHandle


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


@asynccontextmanager
async def published_store(
    redis_url: str, database_url: str, *, pool_max: int = 4
) -> AsyncIterator[StoreHandle]:
    """A `StoreHandle` with a Redis client and a pool published, as the store owners would
    publish them, for tests of actors that only use the handle (Redis only when
    ``database_url`` is empty)."""
    handle = StoreHandle(redis_url, database_url)
    pool = (
        await asyncpg.create_pool(database_url, min_size=1, max_size=pool_max)
        if database_url
        else None
    )
    client = aioredis.Redis.from_url(redis_url)
    handle.publish_pool(pool)
    handle.publish_redis(client)
    try:
        yield handle
    finally:
        handle.publish_pool(None)
        handle.publish_redis(None)
        await client.aclose()
        if pool is not None:
            await pool.close()
