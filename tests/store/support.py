"""Helpers shared by the store actor tests: a running store subtree with fast settings."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import asyncpg

from actors.store.handle import StoreHandle
from actors.store.outbox import OutboxCounters, OutboxStatus, outbox_status
from actors.store.tree import store_subtree
from messages.settings import StoreSettings
from runtime import ActorSystem
from supervisors import Backoff, Tree

FAST_BACKOFF = Backoff(initial=0.05, maximum=0.2, jitter=0.1, reset_after=30.0)

_streams = itertools.count(1)


def fast_settings(**overrides: Any) -> StoreSettings:
    """Short timeouts and probes, and a stream of the test's own."""
    values: dict[str, Any] = {
        "call_timeout": 1.0,
        "watch_interval": 0.1,
        "outbox_block_ms": 50,
        "outbox_linger_ms": 10,
        "outbox_stream": f"test:outbox:{next(_streams)}",
        "pool_max": 4,
    }
    values.update(overrides)
    return StoreSettings(**values)


@asynccontextmanager
async def running_store(
    handle: StoreHandle,
    settings: StoreSettings,
    *,
    backoff: Backoff = FAST_BACKOFF,
    counters: OutboxCounters | None = None,
) -> AsyncIterator[Tree]:
    spec = store_subtree(handle, settings, backoff=backoff, counters=counters)
    async with Tree(spec, ActorSystem()).running() as tree:
        yield tree


def activity(key: str, n: int = 0) -> dict[str, Any]:
    return {
        "dedup_key": key,
        "actor_kind": "user",
        "actor_id": 1_000 + n % 97,
        "action": "test",
        "detail": {"n": n},
        "at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    }


async def fetch(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


async def settled(
    handle: StoreHandle,
    counters: OutboxCounters,
    stream: str,
    at_least: int,
    timeout: float = 15.0,
) -> OutboxStatus:
    """Wait until the writer drained ``at_least`` rows and the stream is empty.

    Both, because ``drained`` may reach the count a moment before the last trim lands (two
    batches in flight) and duplicates (replays) count as drained too.
    """
    status = None
    with anyio.move_on_after(timeout):
        while True:
            status = await outbox_status(handle, counters, stream=stream)
            if status.pending == 0 and status.drained_total >= at_least:
                return status
            await anyio.sleep(0.01)
    raise AssertionError(f"the outbox did not drain {at_least} rows in {timeout} s: {status}")
