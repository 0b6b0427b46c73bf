"""The store owners: publish on start, unpublish on stop, StoreUnavailable (fast) while down."""

from __future__ import annotations

import bisect
import os
import signal
import time
from collections.abc import Iterator

import anyio
import pytest

from actors.store.handle import StoreHandle, StoreUnavailable
from actors.store.outbox import append_history
from actors.store.postgres_owner import connect_options
from actors.store.tree import store_backoff, store_intensity, store_subtree
from messages.settings import StoreSettings
from runtime.servers import EmbeddedPostgres, EmbeddedRedis
from supervisors import Backoff, Strategy, SupervisorSpec
from tests.fixtures.storage import PostgresAdmin, unique_name, with_database
from tests.helpers import eventually
from tests.store.support import activity, fast_settings, fetch, running_store

pytestmark = pytest.mark.anyio


@pytest.fixture
def blank_database_url(postgres_admin: PostgresAdmin) -> Iterator[str]:
    """A database with no schema at all."""
    name = unique_name("cw_owner_blank")
    postgres_admin.execute(f'CREATE DATABASE "{name}"')
    yield with_database(postgres_admin.url, name)
    postgres_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_owners_publish_on_start_and_unpublish_on_stop(
    redis_url: str, database_url: str
) -> None:
    handle = StoreHandle(redis_url, database_url, call_timeout=1.0)
    with pytest.raises(StoreUnavailable, match="redis is unavailable"):
        handle.redis()
    with pytest.raises(StoreUnavailable, match="postgres is unavailable"):
        handle.pool()
    async with running_store(handle, fast_settings()) as tree:
        assert handle.redis_up and handle.postgres_up
        client, pool = handle.redis(), handle.pool()
        assert await client.ping()
        assert await pool.fetchval("SELECT 1") == 1
        store = tree.status()
        assert [c.name for c in store.children] == ["redis", "postgres", "outbox"]
        assert all(c.state == "running" for c in store.children)
    assert not handle.redis_up and not handle.postgres_up
    with pytest.raises(StoreUnavailable):
        handle.redis()
    with pytest.raises(StoreUnavailable):
        handle.pool()
    assert pool.is_closing()


async def test_postgres_owner_migrates_a_blank_database(
    redis_url: str, blank_database_url: str
) -> None:
    handle = StoreHandle(redis_url, blank_database_url, call_timeout=1.0)
    async with running_store(handle, fast_settings()):
        assert handle.postgres_up
    rows = await fetch(blank_database_url, "SELECT max(version) AS v FROM schema_migrations")
    assert rows[0]["v"] >= 1


async def test_unreachable_servers_leave_the_store_down_not_hanging(
    redis_url: str, database_url: str
) -> None:
    """Nothing listens on the ports: owners crash and retry; callers get StoreUnavailable."""
    with anyio.fail_after(10):
        closed = "127.0.0.1:9"  # discard port: refused on loopback
        handle = StoreHandle(f"redis://{closed}/0", f"postgresql://x@{closed}/x", call_timeout=0.5)
        async with running_store(handle, fast_settings(call_timeout=0.5)) as tree:
            await eventually(
                lambda: all(c.restarts_total >= 2 for c in tree.status().children), timeout=5
            )
            assert not handle.redis_up and not handle.postgres_up
            began = time.perf_counter()
            with pytest.raises(StoreUnavailable):
                await append_history(handle, "activity_log", activity("a:1"))
            assert time.perf_counter() - began < 0.05
            errors = " ".join(c.last_error or "" for c in tree.status().children)
            assert "redis is unavailable" in errors and "postgres is unavailable" in errors
            assert "x@" not in errors  # no URL in the reasons


@pytest.mark.faults
async def test_redis_down_gives_fast_store_unavailable_and_the_owner_comes_back(
    dedicated_redis: EmbeddedRedis, database_url: str
) -> None:
    settings = fast_settings()
    handle = StoreHandle(dedicated_redis.url, database_url, settings.call_timeout)
    async with running_store(handle, settings):
        await append_history(handle, "activity_log", activity("before"), stream="s")
        await anyio.to_thread.run_sync(dedicated_redis.kill)

        # Before the owner noticed: the client's own error, turned into StoreUnavailable.
        began = time.perf_counter()
        with pytest.raises(StoreUnavailable):
            await append_history(handle, "activity_log", activity("during"), stream="s")
        assert time.perf_counter() - began < settings.call_timeout

        await eventually(lambda: not handle.redis_up, timeout=3)
        began = time.perf_counter()
        for _ in range(100):
            with pytest.raises(StoreUnavailable):
                await append_history(handle, "activity_log", activity("during"), stream="s")
        assert time.perf_counter() - began < 0.1  # a hundred refusals, no waiting

        await anyio.to_thread.run_sync(dedicated_redis.start)
        await eventually(lambda: handle.redis_up, timeout=5)
        await append_history(handle, "activity_log", activity("after"), stream="s")
        assert await handle.redis().xlen("s") == 2  # "before" survived the kill (AOF)


@pytest.mark.faults
async def test_a_frozen_redis_times_out_instead_of_hanging(
    dedicated_redis: EmbeddedRedis, database_url: str
) -> None:
    settings = fast_settings(call_timeout=0.4)
    handle = StoreHandle(dedicated_redis.url, database_url, settings.call_timeout)
    pid = dedicated_redis.pid
    assert pid is not None
    async with running_store(handle, settings):
        os.kill(pid, signal.SIGSTOP)
        try:
            began = time.perf_counter()
            with pytest.raises(StoreUnavailable):
                await append_history(handle, "activity_log", activity("frozen"), stream="s")
            assert time.perf_counter() - began < settings.call_timeout + 0.3
            await eventually(lambda: not handle.redis_up, timeout=3)
        finally:
            os.kill(pid, signal.SIGCONT)
        await eventually(lambda: handle.redis_up, timeout=5)
        await append_history(handle, "activity_log", activity("thawed"), stream="s")


@pytest.mark.faults
async def test_postgres_down_gives_store_unavailable_and_the_owner_comes_back(
    redis_url: str, dedicated_postgres: EmbeddedPostgres
) -> None:
    settings = fast_settings()
    handle = StoreHandle(redis_url, dedicated_postgres.url, settings.call_timeout)
    async with running_store(handle, settings):
        old_pool = handle.pool()
        await anyio.to_thread.run_sync(dedicated_postgres.stop, "immediate")
        await eventually(lambda: not handle.postgres_up, timeout=3)
        with pytest.raises(StoreUnavailable):
            handle.pool()
        began = time.perf_counter()
        with pytest.raises(Exception):  # noqa: B017 - the old pool is closed, whatever it says
            await old_pool.fetchval("SELECT 1")
        assert time.perf_counter() - began < settings.call_timeout + 0.5
        await anyio.to_thread.run_sync(dedicated_postgres.start)
        await eventually(lambda: handle.postgres_up, timeout=5)
        assert await handle.pool().fetchval("SELECT 1") == 1


# --------------------------------------------------------------------------- the subtree spec


def _fastest_restart_times(backoff: Backoff, horizon: float) -> list[float]:
    """When one child restarts if it crashes instantly and every delay is minimal."""
    times, now, attempt = [], 0.0, 0
    while now <= horizon:
        base = min(backoff.maximum, backoff.initial * backoff.multiplier**attempt)
        now += base * (1 - backoff.jitter)
        times.append(now)
        attempt += 1
    return times


@pytest.mark.parametrize(
    "backoff",
    [
        store_backoff(StoreSettings()),
        Backoff(initial=0.05, maximum=0.2, jitter=0.1),
        Backoff(initial=1.0, maximum=30.0, jitter=0.2),
    ],
)
def test_the_store_never_gives_up_during_an_outage(backoff: Backoff) -> None:
    max_restarts, period = store_intensity(backoff, children=3)
    one = _fastest_restart_times(backoff, horizon=120.0)
    all_three = sorted(one * 3)
    worst = max(
        bisect.bisect_left(all_three, start + period) - i for i, start in enumerate(all_three)
    )
    assert worst <= max_restarts


def test_store_subtree_spec() -> None:
    handle = StoreHandle("redis://127.0.0.1:1/0", "postgresql://x@127.0.0.1:1/x")
    settings = StoreSettings()
    spec = store_subtree(handle, settings)
    assert spec.name == "store" and spec.kind == "supervisor"
    sup = spec.args["spec"]
    assert isinstance(sup, SupervisorSpec)
    assert sup.strategy is Strategy.ONE_FOR_ONE
    assert [c.name for c in sup.children] == ["redis", "postgres", "outbox"]
    assert sup.backoff.maximum == settings.backoff_max <= 1.0  # a returned server within ~1 s
    assert sup.backoff.initial == settings.backoff_initial
    custom = store_subtree(handle, settings, backoff=Backoff(initial=0.01, maximum=0.02))
    assert custom.args["spec"].backoff.maximum == 0.02


def test_loopback_connections_skip_tls_negotiation_unless_asked() -> None:
    assert connect_options("postgresql://u@127.0.0.1:5432/db") == {"ssl": False}
    assert connect_options("postgresql://u@localhost/db") == {"ssl": False}
    assert connect_options("postgresql://u@127.0.0.1/db?sslmode=require") == {}
    assert connect_options("postgresql://u@db.internal:5432/db") == {}
