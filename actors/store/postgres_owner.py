"""The PostgreSQL owner: migrates, holds the asyncpg pool, crashes when PostgreSQL goes away.

Its supervisor's backoff restart is the reconnect logic; there is no other. Every pooled
connection has ``command_timeout = call_timeout`` and connecting is bounded by the same, so
no call hangs. Migrations run at every start on a connection of their own without the short
command timeout (a migration may take a while; applied files are skipped in milliseconds).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import asyncpg

from actors.store.handle import StoreHandle, StoreUnavailable
from actors.store.migrate import MigrationError, migrate
from actors.store.owner import StoreOwner, describe
from messages.settings import StoreSettings
from runtime import MailboxSpec

__all__ = ["MIGRATION_TIMEOUT_S", "PostgresOwner", "connect_options"]

MIGRATION_TIMEOUT_S = 600.0
"""A migration that runs longer than this is treated as stuck."""


_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def connect_options(url: str) -> dict[str, Any]:
    """Extra ``asyncpg.connect`` arguments for ``url``.

    On loopback without an explicit ``sslmode``, TLS is off: asyncpg's default ("prefer")
    would first negotiate TLS with a server that has none, which costs a round trip and, when
    a connect is cancelled while the server is going down or coming up, leaves asyncpg's
    negotiation future failing unobserved ("unexpected connection_lost() call").
    """
    parts = urlsplit(url)
    if parts.hostname in _LOOPBACK and "sslmode" not in parse_qs(parts.query):
        return {"ssl": False}
    return {}


class PostgresOwner(StoreOwner):
    """Migrates, opens the pool, publishes it, then probes the server with ``SELECT 1``.

    A failed probe (at start or later) unpublishes the pool and crashes the actor.
    """

    mailbox = MailboxSpec(capacity=100)
    server = "postgres"

    def __init__(
        self, store: StoreHandle, settings: StoreSettings | None = None, migrations: bool = True
    ) -> None:
        self.store = store
        self.settings = settings if settings is not None else StoreSettings()
        self.migrations = migrations
        self.pool: asyncpg.Pool | None = None
        self.probe_conn: asyncpg.Connection | None = None
        self._lost = False

    async def started(self) -> None:
        timeout = self.settings.call_timeout
        try:
            if self.migrations:
                await self._migrate(timeout)
            with anyio.fail_after(timeout * 2):
                self.pool = await asyncpg.create_pool(
                    self.store.database_url,
                    min_size=min(self.settings.pool_min, self.settings.pool_max),
                    max_size=self.settings.pool_max,
                    command_timeout=timeout,
                    timeout=timeout,
                    **connect_options(self.store.database_url),
                )
            # The probe has a connection of its own: a pool busy with slow queries must not
            # look like a dead server (the restart would cut every query in flight).
            self.probe_conn = await asyncpg.connect(
                self.store.database_url,
                timeout=timeout,
                command_timeout=timeout,
                **connect_options(self.store.database_url),
            )
            await self.probe()
        except MigrationError:
            self._lost = True
            raise
        except Exception as exc:
            # Connection refused, "the database system is starting up", timeouts...
            self._lost = True
            raise StoreUnavailable("postgres", f"cannot connect: {describe(exc)}") from exc
        self.store.publish_pool(self.pool)
        self.ctx.log.info("store.postgres_up", incarnation=self.ctx.incarnation)

    async def _migrate(self, connect_timeout: float) -> None:
        url = self.store.database_url
        conn = await asyncpg.connect(url, timeout=connect_timeout, **connect_options(url))
        try:
            with anyio.fail_after(MIGRATION_TIMEOUT_S):
                applied = await migrate(conn)
            if applied:
                self.ctx.log.info("store.migrated", versions=applied)
        finally:
            with anyio.move_on_after(connect_timeout):
                await conn.close()
            if not conn.is_closed():
                conn.terminate()

    async def probe(self) -> None:
        assert self.probe_conn is not None
        with anyio.fail_after(self.settings.call_timeout):
            await self.probe_conn.fetchval("SELECT 1")

    def lost(self) -> None:
        self._lost = True
        self.store.publish_pool(None)

    async def stopped(self) -> None:
        self.store.publish_pool(None)
        probe, self.probe_conn = self.probe_conn, None
        if probe is not None:
            probe.terminate()
        pool, self.pool = self.pool, None
        if pool is None:
            return
        closed = False
        if not self._lost:
            # Graceful: let borrowed connections come back for a moment, then cut them.
            with anyio.move_on_after(self.settings.call_timeout):
                try:
                    await pool.close()
                    closed = True
                except Exception as exc:
                    self.ctx.log.debug("store.postgres_close_failed", error=describe(exc))
        if not closed:
            pool.terminate()
