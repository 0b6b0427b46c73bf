"""Decision rules through the actors: router -> shards -> user actors -> gate -> sender.

Hand-made users and events on real Redis and PostgreSQL, time from a ManualClock.
"""

from __future__ import annotations

import asyncpg
import pytest

from actors.filter_logic import EventFacts, decide_one
from actors.notify_gate import GATE_COUNTS
from actors.store.handle import StoreHandle
from messages.delivery import Lane
from messages.filters import FilterSettings
from messages.settings import FilterSettingsSection
from messages.users import RefreshUser
from runtime import ManualClock
from tests.users.support import (
    WALL0,
    Harness,
    add_subscription,
    add_user,
    channel,
    token_event,
)

pytestmark = pytest.mark.anyio

STRONG, MEDIUM, WEAK, UNRATED, UNKNOWN = 1, 2, 3, 4, 5
CHANNELS = (
    channel(STRONG, 70.0, 4.0),
    channel(MEDIUM, 50.0, 2.0),
    channel(WEAK, 30.0, 1.5),
    channel(UNRATED, 90.0, 10.0, rated=False, resolved=2),
)

USERS: dict[int, FilterSettings] = {
    101: FilterSettings(min_win_rate=60.0),
    102: FilterSettings(min_avg_gain=3.0),
    103: FilterSettings(fdv_min=1_000_000.0),
    104: FilterSettings(fdv_max=200_000.0),
    105: FilterSettings(chains=frozenset({"base"})),
    106: FilterSettings(min_channels=2),
    107: FilterSettings(lookback=600),
    108: FilterSettings(),
}

# token: (chain, fdv, calls as (channel, seconds ago), users expected to be told)
EVENTS: dict[str, tuple[str, float, list[tuple[int, float]], set[int]]] = {
    "medium-only": ("solana", 500_000.0, [(MEDIUM, 60)], {107, 108}),
    "strong-only": ("solana", 500_000.0, [(STRONG, 60)], {101, 102, 107, 108}),
    "base-2m-two": ("base", 2_000_000.0, [(STRONG, 60), (MEDIUM, 120)], set(USERS) - {104}),
    "cheap-older": ("solana", 100_000.0, [(STRONG, 1200)], {101, 102, 104, 108}),
    "unrated-only": ("solana", 500_000.0, [(UNRATED, 60), (UNKNOWN, 60)], set()),
    "too-old": ("solana", 500_000.0, [(STRONG, 4000)], set()),
    "weak-and-unrated": ("solana", 500_000.0, [(WEAK, 60), (UNRATED, 60)], {107, 108}),
}


def config() -> FilterSettingsSection:
    return FilterSettingsSection(shards=3)


async def test_each_rule_on_hand_made_cases(redis_url: str, database_url: str) -> None:
    for user, settings in USERS.items():
        await add_user(database_url, user, settings)
    h = Harness(StoreHandle(redis_url, database_url), ManualClock(), config())
    async with h.running():
        await h.stats(*CHANNELS)
        for token, (chain, fdv, calls, _) in EVENTS.items():
            await h.event(token_event(token, calls, now=h.now, chain=chain, fdv=fdv))
        await h.settle(USERS)

        got = {token: {u for u, t in h.notified() if t.endswith(":" + token)} for token in EVENTS}
        assert got == {token: expected for token, (_, _, _, expected) in EVENTS.items()}

        # The hand-made table agrees with the reference rule, case by case.
        stats = {c.channel_id: c for c in CHANNELS}
        for _token, (chain, fdv, calls, expected) in EVENTS.items():
            facts = EventFacts.from_calls(
                chain, fdv, [(cid, h.now - ago) for cid, ago in calls], stats, h.now
            )
            assert {u for u, s in USERS.items() if decide_one(s, facts)} == expected

        # Every notification is an alert with a dedup key, and each is tracked once.
        assert all(o.lane is Lane.ALERT and o.kind == "notification" for o in h.outbound)
        assert len({o.dedup_key for o in h.outbound}) == len(h.outbound)
        assert sorted((t.user_id, t.token_key) for t in h.tracks) == sorted(h.notified())
        assert all(t.fdv_at_notify > 0 for t in h.tracks)


async def test_rejected_token_is_accepted_when_a_better_channel_calls_it_and_told_once(
    redis_url: str, database_url: str
) -> None:
    await add_user(database_url, 101, USERS[101])
    h = Harness(StoreHandle(redis_url, database_url), ManualClock(), config())
    async with h.running():
        await h.stats(*CHANNELS)
        await h.event(token_event("tok", [(MEDIUM, 300)], now=h.now))
        await h.settle([101])
        assert h.notified() == []  # rejected: the only channel is below 60 %

        await h.event(token_event("tok", [(MEDIUM, 300), (STRONG, 10)], now=h.now))
        await h.settle([101])
        assert h.notified() == [(101, "solana:tok")]  # upgraded to accepted

        # More channels later: evaluated again, still passes, never told twice.
        await h.event(token_event("tok", [(MEDIUM, 300), (STRONG, 10), (WEAK, 5)], now=h.now))
        await h.event(
            token_event("tok", [(MEDIUM, 300), (STRONG, 10), (WEAK, 5), (9, 1)], now=h.now)
        )
        await h.settle([101])
        assert h.notified() == [(101, "solana:tok")]
        assert len(h.tracks) == 1


async def test_paused_unsubscribed_expired_and_blocked_users_get_nothing(
    redis_url: str, database_url: str
) -> None:
    await add_user(database_url, 1, FilterSettings())  # control: gets everything
    await add_user(database_url, 2, FilterSettings(paused=True))
    await add_user(database_url, 3, FilterSettings(), subscribed_until=None)
    await add_user(database_url, 4, FilterSettings(), subscribed_until=WALL0 - 10)
    await add_user(database_url, 5, FilterSettings(), subscribed_until=WALL0 + 100)
    await add_user(database_url, 6, FilterSettings(), active=False)  # blocked the bot
    clock = ManualClock()
    h = Harness(StoreHandle(redis_url, database_url), clock, config())
    users = [1, 2, 3, 4, 5]
    async with h.running():
        await h.stats(*CHANNELS)
        await h.event(token_event("first", [(STRONG, 10)], now=h.now))
        await h.settle(users)
        assert sorted(h.notified()) == [(1, "solana:first"), (5, "solana:first")]

        await clock.advance(200)  # user 5's subscription has run out now
        await h.event(token_event("second", [(STRONG, 10)], now=h.now))
        await h.settle(users)
        assert [n for n in h.notified() if n[1] == "solana:second"] == [(1, "solana:second")]

        conn = await asyncpg.connect(database_url)  # renewed: alerts again from now on
        try:
            await add_subscription(conn, 5, h.now - 1, h.now + 86400)
        finally:
            await conn.close()
        await h.lookup("user:5").ask(RefreshUser(5))
        await h.event(token_event("third", [(STRONG, 10)], now=h.now))
        await h.settle(users)
        assert sorted(n for n in h.notified() if n[1] == "solana:third") == [
            (1, "solana:third"),
            (5, "solana:third"),
        ]


async def test_a_token_is_never_told_twice_across_a_whole_tree_restart(
    redis_url: str, database_url: str
) -> None:
    await add_user(database_url, 108, USERS[108])
    clock = ManualClock()
    first = Harness(StoreHandle(redis_url, database_url), clock, config())
    async with first.running():
        await first.stats(*CHANNELS)
        await first.event(token_event("tok", [(STRONG, 10)], now=first.now))
        await first.settle([108])
    assert first.notified() == [(108, "solana:tok")]

    # A new process: new actors, new clients, the same Redis and PostgreSQL.
    second = Harness(StoreHandle(redis_url, database_url), clock, config())
    async with second.running():
        await second.stats(*CHANNELS)
        await second.event(token_event("tok", [(STRONG, 10)], now=second.now))
        await second.settle([108])
        counts = await second.router_counts()
        assert counts.repeats_skipped == 1  # the checked channels came back from Redis

        await second.event(token_event("tok", [(STRONG, 10), (MEDIUM, 5)], now=second.now))
        await second.settle([108])
        gate = await second.lookup("notify-gate").ask(GATE_COUNTS)
        assert gate["lost"] == 1 and gate["won"] == 0  # evaluated, passed, refused by Redis
    assert second.notified() == []


async def test_a_new_candidate_after_fourteen_days_is_told_again(
    redis_url: str, database_url: str
) -> None:
    await add_user(database_url, 108, USERS[108], subscribed_until=WALL0 + 60 * 86400)
    clock = ManualClock()
    h = Harness(StoreHandle(redis_url, database_url), clock, config())
    async with h.running():
        await h.stats(*CHANNELS)
        await h.event(token_event("tok", [(STRONG, 10)], now=h.now))
        await h.settle([108])
        await clock.advance(13 * 86400)
        await h.event(token_event("tok", [(STRONG, 10), (MEDIUM, 5)], now=h.now))
        await h.settle([108])
        assert len(h.notified()) == 1  # day 13: still remembered

        await clock.advance(1 * 86400 + 1)
        await h.event(token_event("tok", [(STRONG, 10), (MEDIUM, 5), (WEAK, 1)], now=h.now))
        await h.settle([108])
        assert len(h.notified()) == 2  # day 14: the memory has expired
