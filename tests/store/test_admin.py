"""``callwatch db migrate`` / ``db status`` support: one connection, clear errors."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from actors.store.admin import db_migrate, db_status, describe_status
from actors.store.handle import StoreUnavailable
from actors.store.migrate import load_migrations
from tests.fixtures.storage import PostgresAdmin, unique_name, with_database

pytestmark = pytest.mark.anyio


@pytest.fixture
def blank_database_url(postgres_admin: PostgresAdmin) -> Iterator[str]:
    name = unique_name("cw_admin_blank")
    postgres_admin.execute(f'CREATE DATABASE "{name}"')
    yield with_database(postgres_admin.url, name)
    postgres_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_migrate_then_status_then_migrate_again(blank_database_url: str) -> None:
    latest = load_migrations()[-1].version
    before = await db_status(blank_database_url)
    assert (before.current, before.latest, before.up_to_date) == (0, latest, False)
    assert "schema version 0 of" in describe_status(before)[0]
    assert any(line.startswith("  pending  0001") for line in describe_status(before))

    assert await db_migrate(blank_database_url) == list(range(1, latest + 1))
    after = await db_status(blank_database_url)
    assert after.current == latest and after.up_to_date
    lines = describe_status(after)
    assert lines[0] == f"schema version {latest} of {latest} (up to date)"
    assert any(line.startswith("  applied  0001 initial") for line in lines)

    assert await db_migrate(blank_database_url) == []


async def test_unreachable_database_is_a_clear_fast_error_without_the_password() -> None:
    url = "postgresql://callwatch:sekrit-pw@127.0.0.1:9/callwatch"
    began = time.perf_counter()
    with pytest.raises(StoreUnavailable) as caught:
        await db_status(url, timeout=2)
    assert time.perf_counter() - began < 2.5
    assert "postgres is unavailable: cannot connect" in str(caught.value)
    assert "sekrit" not in str(caught.value)
    with pytest.raises(StoreUnavailable):
        await db_migrate(url, timeout=2)


async def test_a_missing_database_is_reported(database_url: str) -> None:
    url = with_database(database_url, "cw_no_such_database")
    with pytest.raises(StoreUnavailable, match="does not exist"):
        await db_status(url)
