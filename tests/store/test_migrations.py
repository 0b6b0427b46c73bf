"""Schema migrations against a real PostgreSQL: fresh, repeated, failing, concurrent."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import asyncpg
import pytest

from actors.store.migrate import (
    MIGRATIONS_DIR,
    MigrationError,
    load_migrations,
    migrate,
    status,
)
from tests.fixtures.storage import PostgresAdmin, unique_name, with_database

LATEST = max(m.version for m in load_migrations())
SIGNATURE = "5" * 88


@pytest.fixture
def blank_database_url(postgres_admin: PostgresAdmin) -> Iterator[str]:
    """An empty database: no schema, no schema_migrations."""
    name = unique_name("cw_blank")
    postgres_admin.execute(f'CREATE DATABASE "{name}"')
    yield with_database(postgres_admin.url, name)
    postgres_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def blank(blank_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(blank_database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def _tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


# --------------------------------------------------------------------------- the real files


@pytest.mark.anyio
async def test_fresh_database_reaches_latest_and_rerun_is_a_no_op(
    blank: asyncpg.Connection,
) -> None:
    before = await status(blank)
    assert before.current == 0 and len(before.pending) == LATEST

    assert await migrate(blank) == list(range(1, LATEST + 1))
    after = await status(blank)
    assert after.current == after.latest == LATEST and after.up_to_date
    expected = {
        "schema_migrations", "users", "settings", "settings_changes", "presets",
        "subscriptions", "orders", "payments", "coupons", "coupon_redemptions",
        "notifications", "calls_history", "activity_log",
    }  # fmt: skip
    assert expected <= await _tables(blank)

    stamps = await blank.fetch("SELECT version, applied_at FROM schema_migrations")
    assert await migrate(blank) == []
    assert await blank.fetch("SELECT version, applied_at FROM schema_migrations") == stamps


@pytest.mark.anyio
async def test_database_url_fixture_is_migrated(db: asyncpg.Connection) -> None:
    state = await status(db)
    assert state.current == LATEST and state.up_to_date
    assert await db.fetchval("SELECT count(*) FROM users") == 0


@pytest.mark.anyio
async def test_two_migrators_at_once_apply_each_file_once(blank_database_url: str) -> None:
    results: list[list[int]] = []

    async def one() -> None:
        conn = await asyncpg.connect(blank_database_url)
        try:
            results.append(await migrate(conn))
        finally:
            await conn.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(one)
        tg.start_soon(one)
    assert sorted(results) == [[], list(range(1, LATEST + 1))]


# --------------------------------------------------------------------------- a scratch directory


def _write(directory: Path, name: str, sql: str) -> None:
    (directory / name).write_text(sql)


@pytest.mark.anyio
async def test_failing_migration_rolls_back_to_previous_version(
    blank: asyncpg.Connection, tmp_path: Path
) -> None:
    _write(tmp_path, "0001_first.sql", "CREATE TABLE first (id int PRIMARY KEY);")
    _write(
        tmp_path,
        "0002_broken.sql",
        "CREATE TABLE second (id int);\nINSERT INTO first VALUES (1);\nSELEC oops;\n",
    )
    with pytest.raises(MigrationError, match=re.escape("0002_broken.sql")) as err:
        await migrate(blank, directory=tmp_path)
    assert err.value.filename == "0002_broken.sql"

    state = await status(blank, directory=tmp_path)
    assert state.current == 1 and [m.version for m in state.pending] == [2]
    assert await _tables(blank) == {"schema_migrations", "first"}
    assert await blank.fetchval("SELECT count(*) FROM first") == 0
    # the lock was released: the fixed file goes in
    _write(tmp_path, "0002_broken.sql", "CREATE TABLE second (id int);\n")
    assert await migrate(blank, directory=tmp_path) == [2]
    assert (await status(blank, directory=tmp_path)).current == 2


@pytest.mark.anyio
async def test_editing_an_applied_migration_is_refused(
    blank: asyncpg.Connection, tmp_path: Path
) -> None:
    _write(tmp_path, "0001_first.sql", "CREATE TABLE first (id int);")
    assert await migrate(blank, directory=tmp_path) == [1]
    _write(tmp_path, "0001_first.sql", "CREATE TABLE first (id bigint);")
    assert (await status(blank, directory=tmp_path)).modified == (1,)
    with pytest.raises(MigrationError, match=re.escape("0001_first.sql")):
        await migrate(blank, directory=tmp_path)


def test_bad_file_names_and_duplicate_versions_are_refused(tmp_path: Path) -> None:
    _write(tmp_path, "0001_first.sql", "")
    _write(tmp_path, "1_second.sql", "")
    with pytest.raises(MigrationError, match=re.escape("1_second.sql")):
        load_migrations(tmp_path)
    (tmp_path / "1_second.sql").unlink()
    _write(tmp_path, "0001_again.sql", "")
    with pytest.raises(MigrationError, match="appears twice"):
        load_migrations(tmp_path)


def test_shipped_migrations_are_numbered_from_one_without_gaps() -> None:
    versions = [m.version for m in load_migrations(MIGRATIONS_DIR)]
    assert versions == list(range(1, len(versions) + 1))


# --------------------------------------------------------------------------- constraints


async def _user(db: asyncpg.Connection, chat_id: int = 42) -> None:
    await db.execute("INSERT INTO users (chat_id, username) VALUES ($1, 'trader')", chat_id)


async def _order(db: asyncpg.Connection, reference: str = "ref-1") -> str:
    now = datetime.now(UTC)
    order_id: str = await db.fetchval(
        "INSERT INTO orders (chat_id, plan, method, amount_lamports, reference_key, expires_at)"
        " VALUES (42, 'month', 'sol', 500000000, $1, $2) RETURNING id::text",
        reference,
        now + timedelta(minutes=30),
    )
    return order_id


@pytest.mark.anyio
async def test_a_transaction_signature_pays_once(db: asyncpg.Connection) -> None:
    await _user(db)
    first, second = await _order(db, "ref-1"), await _order(db, "ref-2")
    insert = (
        "INSERT INTO payments (order_id, method, tx_signature, amount_lamports, status)"
        " VALUES ($1::uuid, 'sol', $2, 500000000, 'confirmed')"
    )
    await db.execute(insert, first, SIGNATURE)
    with pytest.raises(asyncpg.UniqueViolationError, match="tx_signature"):
        await db.execute(insert, second, SIGNATURE)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(insert, second, "not base58: 0OIl")


@pytest.mark.anyio
async def test_notifications_are_unique_per_user_token_and_alert(db: asyncpg.Connection) -> None:
    insert = (
        "INSERT INTO notifications (dedup_key, chat_id, token_key, kind, threshold)"
        " VALUES ($1, 42, 'solana:AbC', $2, $3)"
    )
    await db.execute(insert, "n1", "call", 0)
    await db.execute(insert, "n2", "multiplier", 2)
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(insert, "n3", "multiplier", 2)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(insert, "n4", "multiplier", 1)
    # the token key keeps its case: another address, another row
    await db.execute(insert.replace("AbC", "abc"), "n5", "multiplier", 2)


@pytest.mark.anyio
async def test_replaying_a_history_batch_inserts_nothing_twice(db: asyncpg.Connection) -> None:
    rows = [(f"act-{i}", "user", 42, "settings.update", json.dumps({"i": i})) for i in range(50)]
    insert = (
        "INSERT INTO activity_log (dedup_key, actor_kind, actor_id, action, detail)"
        " VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT DO NOTHING"
    )
    await db.executemany(insert, rows)
    await db.executemany(insert, rows)
    assert await db.fetchval("SELECT count(*) FROM activity_log") == 50

    call = (
        "INSERT INTO calls_history (dedup_key, event_id, channel_id, token_key, chain,"
        " called_at, fdv_at_call) VALUES ($1, 'e1', 'chan', 'solana:X1', 'solana', now(), 1e6)"
        " ON CONFLICT DO NOTHING"
    )
    await db.execute(call, "c1")
    await db.execute(call, "c2")  # same channel and token under another key: still one call
    assert await db.fetchval("SELECT count(*) FROM calls_history") == 1


@pytest.mark.anyio
async def test_coupons_redeem_once_per_user_and_never_past_their_limit(
    db: asyncpg.Connection,
) -> None:
    await _user(db, 1)
    await _user(db, 2)
    coupon = await db.fetchval(
        "INSERT INTO coupons (code, kind, value, max_uses) VALUES ('Summer24', 'percent', 20, 1)"
        " RETURNING id"
    )
    await db.execute("INSERT INTO coupon_redemptions (coupon_id, chat_id) VALUES ($1, 1)", coupon)
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(
            "INSERT INTO coupon_redemptions (coupon_id, chat_id) VALUES ($1, 1)", coupon
        )
    await db.execute("UPDATE coupons SET uses = 1 WHERE id = $1", coupon)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE coupons SET uses = 2 WHERE id = $1", coupon)
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("INSERT INTO coupons (code, kind, value) VALUES ('SUMMER24', 'fixed', 5)")
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "INSERT INTO coupons (code, kind, value) VALUES ('TOOMUCH', 'percent', 150)"
        )


@pytest.mark.anyio
async def test_a_paid_order_credits_one_subscription(db: asyncpg.Connection) -> None:
    await _user(db)
    order = await _order(db)
    now = datetime.now(UTC)
    insert = (
        "INSERT INTO subscriptions (chat_id, plan, starts_at, expires_at, source, order_id)"
        " VALUES (42, 'month', $1, $2, 'payment', $3::uuid)"
    )
    await db.execute(insert, now, now + timedelta(days=30), order)
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(insert, now, now + timedelta(days=30), order)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "INSERT INTO subscriptions (chat_id, plan, starts_at, expires_at, source)"
            " VALUES (42, 'month', $1, $2, 'payment')",
            now,
            now + timedelta(days=30),
        )
