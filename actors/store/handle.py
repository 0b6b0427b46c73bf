"""The store handle: where the store owners publish their live clients.

The Redis and PostgreSQL owner actors hold the connections; every other actor reaches
the servers through this handle, which hands out the current client or raises
:class:`StoreUnavailable` at once while the owner is down or restarting. Calls go
straight to the client (not through the owner's mailbox) so thousands of writes per
second do not queue behind one actor; every client is built with timeouts, so no call
hangs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg
    import redis.asyncio as aioredis


class StoreUnavailable(Exception):
    """The server is down or its owner is restarting; try again later (never a hang)."""

    def __init__(self, which: str, detail: str = "") -> None:
        super().__init__(f"{which} is unavailable" + (f": {detail}" if detail else ""))
        self.which = which


class StoreHandle:
    """Shared handle, written only by the owner actors, read by everyone."""

    def __init__(self, redis_url: str, database_url: str, call_timeout: float = 2.0) -> None:
        self.redis_url = redis_url
        self.database_url = database_url
        self.call_timeout = call_timeout
        self._redis: aioredis.Redis | None = None
        self._pool: asyncpg.Pool | None = None

    def publish_redis(self, client: aioredis.Redis | None) -> None:
        self._redis = client

    def publish_pool(self, pool: asyncpg.Pool | None) -> None:
        self._pool = pool

    @property
    def redis_up(self) -> bool:
        return self._redis is not None

    @property
    def postgres_up(self) -> bool:
        return self._pool is not None

    def redis(self) -> aioredis.Redis:
        """The live Redis client; raises StoreUnavailable while Redis is down."""
        client = self._redis
        if client is None:
            raise StoreUnavailable("redis")
        return client

    def pool(self) -> asyncpg.Pool:
        """The live asyncpg pool; raises StoreUnavailable while PostgreSQL is down."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("postgres")
        return pool
