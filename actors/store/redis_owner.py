"""The Redis owner: holds the one Redis client and crashes when Redis goes away.

Its supervisor's backoff restart is the reconnect logic; there is no other. The client is
built with socket timeouts of ``call_timeout`` and with redis-py's own retries switched off,
so a caller never waits longer than one timeout and never behind a hidden retry loop. While
the owner is down (or restarting) the handle answers :class:`StoreUnavailable` at once.
"""

from __future__ import annotations

import anyio
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from actors.store.handle import StoreHandle, StoreUnavailable
from actors.store.owner import StoreOwner, describe
from messages.settings import StoreSettings
from runtime import MailboxSpec

__all__ = ["HEALTH_CHECK_INTERVAL_S", "RedisOwner", "make_redis_client"]

HEALTH_CHECK_INTERVAL_S = 30
"""redis-py PINGs a pooled connection idle this long before reusing it."""


def make_redis_client(url: str, call_timeout: float) -> aioredis.Redis:
    """A client whose every call ends within ``call_timeout`` and never retries by itself."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        url,
        socket_timeout=call_timeout,
        socket_connect_timeout=call_timeout,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=Retry(NoBackoff(), 0),
        client_name="callwatch",
    )
    return client


class RedisOwner(StoreOwner):
    """Connects, PINGs, publishes the client to the handle, then PINGs it periodically.

    A failed PING (at start or later) unpublishes the client and crashes the actor.
    """

    mailbox = MailboxSpec(capacity=100)
    server = "redis"

    def __init__(self, store: StoreHandle, settings: StoreSettings | None = None) -> None:
        self.store = store
        self.settings = settings if settings is not None else StoreSettings()
        self.client: aioredis.Redis | None = None

    async def probe(self) -> None:
        assert self.client is not None
        with anyio.fail_after(self.settings.call_timeout):
            await self.client.ping()

    def lost(self) -> None:
        self.store.publish_redis(None)

    async def started(self) -> None:
        client = make_redis_client(self.store.redis_url, self.settings.call_timeout)
        self.client = client
        try:
            await self.probe()
        except Exception as exc:
            raise StoreUnavailable("redis", f"cannot connect: {describe(exc)}") from exc
        self.store.publish_redis(client)
        self.ctx.log.info("store.redis_up", incarnation=self.ctx.incarnation)

    async def stopped(self) -> None:
        self.store.publish_redis(None)
        client, self.client = self.client, None
        if client is not None:
            with anyio.move_on_after(1.0):
                try:
                    await client.aclose()
                except Exception as exc:  # closing a dead connection may complain; it is gone
                    self.ctx.log.debug("store.redis_close_failed", error=describe(exc))
