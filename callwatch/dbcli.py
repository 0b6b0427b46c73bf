"""``callwatch db migrate`` and ``callwatch db status``."""

from __future__ import annotations

import asyncpg
import click

from actors.store.migrate import migrate, status
from callwatch.service import storage
from messages.settings import Settings


async def migrate_command(settings: Settings) -> int:
    async with storage(settings) as store:
        conn = await asyncpg.connect(store.database_url)
        try:
            applied = await migrate(conn)
        finally:
            await conn.close()
    if applied:
        click.echo(f"applied migrations: {', '.join(str(v) for v in applied)}")
    else:
        click.echo("database is up to date")
    return 0


async def status_command(settings: Settings) -> int:
    async with storage(settings) as store:
        conn = await asyncpg.connect(store.database_url)
        try:
            state = await status(conn)
        finally:
            await conn.close()
    click.echo(f"current version: {state.current} (latest {state.latest})")
    for pending in state.pending:
        click.echo(f"pending: {pending.version} {pending.name}")
    return 0 if state.up_to_date else 3
