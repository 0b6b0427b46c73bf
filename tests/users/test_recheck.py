"""The re-check rule: a token is evaluated again only when new channels call it, for an
hour after the last check; the memory lives in Redis and survives a restart."""

from __future__ import annotations

import pytest
import redis

from actors.filter_router import SEEN_KEY, decode_seen
from actors.store.handle import StoreHandle
from messages.filters import FilterSettings
from messages.settings import FilterSettingsSection
from messages.users import CallsSeen
from runtime import ManualClock
from tests.users.support import WALL0, Harness, add_user, channel, token_event

pytestmark = pytest.mark.anyio

SHARDS = 2
STATS = (channel(1, 40.0, 2.0), channel(2, 70.0, 4.0), channel(3, 45.0, 2.0))


def harness(redis_url: str, database_url: str, clock: ManualClock) -> Harness:
    return Harness(
        StoreHandle(redis_url, database_url), clock, FilterSettingsSection(shards=SHARDS)
    )


def stored(redis_url: str, token: str) -> tuple[float, frozenset[int]] | None:
    raw = redis.Redis.from_url(redis_url).hget(SEEN_KEY, token)
    return None if raw is None else decode_seen(raw)


async def test_repeats_without_new_channels_cost_nothing_new_channels_are_checked(
    redis_url: str, database_url: str
) -> None:
    await add_user(database_url, 9, FilterSettings(min_win_rate=60.0))
    clock = ManualClock()
    h = harness(redis_url, database_url, clock)
    async with h.running():
        await h.stats(*STATS)
        await h.event(token_event("t", [(1, 30)], now=h.now))
        await h.settle([9])
        assert await h.shard_events() == SHARDS
        assert h.notified() == []

        for _ in range(3):  # the same channel again (even a newer call): nothing happens
            await h.event(token_event("t", [(1, 5)], now=h.now))
        await h.settle([9])
        assert await h.shard_events() == SHARDS
        assert (await h.router_counts()).repeats_skipped == 3

        await h.event(token_event("t", [(1, 30), (2, 5)], now=h.now))
        await h.settle([9])
        assert await h.shard_events() == 2 * SHARDS
        assert h.notified() == [(9, "solana:t")]

        # channel-stats heard of each channel once, when it was new.
        seen = [m for m in h.stats_seen if isinstance(m, CallsSeen)]
        assert [sorted(c.channel_id for c in m.calls) for m in seen] == [[1], [2]]

        await h.flush_router()
        assert stored(redis_url, "solana:t") == (WALL0 + 3600.0, frozenset({1, 2}))


async def test_after_an_hour_the_same_channels_are_checked_again(
    redis_url: str, database_url: str
) -> None:
    await add_user(database_url, 9, FilterSettings(min_win_rate=60.0, lookback=7200))
    clock = ManualClock()
    h = harness(redis_url, database_url, clock)
    async with h.running():
        await h.stats(*STATS)
        await h.event(token_event("t", [(1, 30)], now=h.now))
        await h.settle([9])
        await clock.advance(3599)
        await h.event(token_event("t", [(1, 3629)], now=h.now))
        await h.settle([9])
        assert await h.shard_events() == SHARDS  # 59:59 later: still remembered

        await clock.advance(2)
        await h.stats(*STATS[1:], channel(1, 65.0, 2.0), version=2)  # channel 1 improved
        await h.event(token_event("t", [(1, 3631)], now=h.now))
        await h.settle([9])
        assert await h.shard_events() == 2 * SHARDS  # forgotten after the hour
        assert h.notified() == [(9, "solana:t")]


async def test_the_memory_survives_a_restart_with_its_expiry(
    redis_url: str, database_url: str
) -> None:
    await add_user(database_url, 9, FilterSettings(min_win_rate=60.0))
    clock = ManualClock()
    first = harness(redis_url, database_url, clock)
    async with first.running():
        await first.stats(*STATS)
        await first.event(token_event("t", [(1, 30), (3, 20)], now=first.now))
        await first.settle([9])
    # Written on the way down without an explicit flush.
    assert stored(redis_url, "solana:t") == (WALL0 + 3600.0, frozenset({1, 3}))

    await clock.advance(1800)
    second = harness(redis_url, database_url, clock)
    async with second.running():
        await second.stats(*STATS)
        await second.event(token_event("t", [(3, 1)], now=second.now))
        await second.settle([9])
        assert await second.shard_events() == 0
        assert (await second.router_counts()).repeats_skipped == 1

        await clock.advance(1801)  # the hour since the check is over
        await second.event(token_event("t", [(3, 1)], now=second.now))
        await second.settle([9])
        assert await second.shard_events() == SHARDS


async def test_events_before_the_first_statistics_are_not_remembered(
    redis_url: str, database_url: str
) -> None:
    await add_user(database_url, 9)
    h = harness(redis_url, database_url, ManualClock())
    async with h.running():
        await h.event(token_event("t", [(2, 30)], now=h.now))
        await h.settle([9])
        assert h.notified() == []  # no statistics yet: every channel is unrated

        await h.stats(*STATS)
        await h.event(token_event("t", [(2, 30)], now=h.now))
        await h.settle([9])
        assert h.notified() == [(9, "solana:t")]
