"""Database administration for the CLI: ``callwatch db migrate`` and ``callwatch db status``.

Each call opens one connection of its own (no pool, no actors), so they work against a
database that the running service is not using, and before it ever started. An unreachable
server raises :class:`StoreUnavailable` with a reason that never includes the URL (it may
hold a password).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import asyncpg

from actors.store.handle import StoreUnavailable
from actors.store.migrate import MigrationStatus, migrate, status
from actors.store.owner import describe
from actors.store.postgres_owner import connect_options

__all__ = ["db_migrate", "db_status", "describe_status"]

CONNECT_TIMEOUT_S = 10.0


@asynccontextmanager
async def _connection(url: str, timeout: float) -> AsyncIterator[asyncpg.Connection]:
    try:
        conn = await asyncpg.connect(url, timeout=timeout, **connect_options(url))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StoreUnavailable("postgres", f"cannot connect: {describe(exc)}") from exc
    try:
        yield conn
    finally:
        with anyio.move_on_after(timeout, shield=True):
            await conn.close()
        if not conn.is_closed():
            conn.terminate()


async def db_migrate(url: str, *, timeout: float = CONNECT_TIMEOUT_S) -> list[int]:
    """Apply the pending migrations; the versions applied (empty: already up to date).

    Raises :class:`~actors.store.migrate.MigrationError` naming the file that failed (the
    database then stays at the version before it).
    """
    async with _connection(url, timeout) as conn:
        return await migrate(conn)


async def db_status(url: str, *, timeout: float = CONNECT_TIMEOUT_S) -> MigrationStatus:
    """Where the database stands against the migration files (reads only)."""
    async with _connection(url, timeout) as conn:
        return await status(conn)


def describe_status(state: MigrationStatus) -> list[str]:
    """Human-readable lines for ``callwatch db status``."""
    lines = [
        f"schema version {state.current} of {state.latest}"
        + (" (up to date)" if state.up_to_date else "")
    ]
    lines += [
        f"  applied  {a.version:04d} {a.name}  {a.applied_at:%Y-%m-%d %H:%M:%S %Z}"
        for a in state.applied
    ]
    lines += [f"  pending  {m.version:04d} {m.name}" for m in state.pending]
    if state.modified:
        lines.append(f"  EDITED after being applied: {', '.join(map(str, state.modified))}")
    if state.unknown:
        lines.append(
            f"  applied by a newer callwatch (no file here): {', '.join(map(str, state.unknown))}"
        )
    return lines
