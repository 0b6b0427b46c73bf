"""The channel-statistics actor on real PostgreSQL and Redis, time from a ManualClock."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from actors.channel_stats import ChannelStatsActor
from actors.store.handle import StoreHandle
from actors.store.postgres_owner import PostgresOwner
from actors.store.redis_owner import RedisOwner
from actors.user_store import to_wall
from messages.settings import FilterSettingsSection
from messages.users import CallSeen, CallsSeen, LeaderboardRequest, LeaderboardView, StatsSnapshot
from messages.wire import PriceUpdate
from runtime import ActorSystem, ManualClock
from supervisors import NO_BACKOFF, Strategy, Tree, supervisor, worker
from tests.helpers import eventually
from tests.users.support import QUIET_STORE, WALL0, Collect

pytestmark = pytest.mark.anyio

HOUR = 3600.0
CONFIG = FilterSettingsSection(stats_refresh_s=300.0, stats_window_days=30.0, stats_min_sample=5)


def tree(store: StoreHandle, clock: ManualClock, pushed: list[Any]) -> Tree:
    spec = supervisor(
        "root",
        [
            worker("redis", RedisOwner, store=store, settings=QUIET_STORE),
            worker("postgres", PostgresOwner, store=store, settings=QUIET_STORE),
            worker("channel-stats", ChannelStatsActor, store=store, config=CONFIG, flush_s=10.0),
            worker("filters", Collect, sink=pushed),
        ],
        strategy=Strategy.ONE_FOR_ONE,
        backoff=NO_BACKOFF,
    )
    return Tree(spec, ActorSystem(clock))


async def add_calls(
    database_url: str, rows: list[tuple[int, str, float, float, float | None]]
) -> None:
    """(channel, token, hours ago, fdv at call, peak fdv or None)."""
    conn = await asyncpg.connect(database_url)
    try:
        for channel_id, token, ago, fdv, peak in rows:
            called = WALL0 - ago * HOUR
            await conn.execute(
                """INSERT INTO calls_history (dedup_key, event_id, channel_id, channel_username,
                       token_key, chain, symbol, called_at, fdv_at_call, peak_fdv, peak_at)
                   VALUES ($1, 'e', $2, $3, $4, 'solana', 'T', $5, $6, $7, $8)""",
                f"call:{channel_id}:{token}",
                str(channel_id),
                f"chan{channel_id}",
                token,
                to_wall(called),
                fdv,
                peak,
                None if peak is None else to_wall(called + HOUR),
            )
    finally:
        await conn.close()


def snapshots(pushed: list[Any]) -> list[StatsSnapshot]:
    return [m for m in pushed if isinstance(m, StatsSnapshot)]


async def test_statistics_from_history_pushed_cached_and_ranked(
    redis_url: str, database_url: str
) -> None:
    rows: list[tuple[int, str, float, float, float | None]] = []
    # Channel 1: 5 resolved calls, 3 reached 2x (win rate 60 %).
    for i, peak in enumerate([300.0, 250.0, 210.0, 150.0, None]):
        rows.append((1, f"solana:a{i}", 48 + i, 100.0, peak))
    # Channel 2: 6 resolved, 1 win, plus one fresh call that is not resolved yet.
    for i, peak in enumerate([500.0, 120.0, 110.0, 100.0, 105.0, 101.0]):
        rows.append((2, f"solana:b{i}", 30 + i, 100.0, peak))
    rows.append((2, "solana:b-fresh", 2, 100.0, 150.0))
    # Channel 3: two calls only: unrated. Channel 4: outside the 30-day window.
    rows += [(3, "solana:c0", 40, 100.0, 900.0), (3, "solana:c1", 41, 100.0, 900.0)]
    rows += [(4, f"solana:d{i}", 31 * 24 + i, 100.0, 900.0) for i in range(6)]
    await add_calls(database_url, rows)

    clock = ManualClock()
    pushed: list[Any] = []
    store = StoreHandle(redis_url, database_url)
    async with tree(store, clock, pushed).running() as t:
        await eventually(lambda: bool(snapshots(pushed)))
        stats = {s.channel_id: s for s in snapshots(pushed)[-1].stats}
        assert set(stats) == {1, 2, 3}
        assert (stats[1].win_rate, stats[1].resolved, stats[1].rated) == (60.0, 5, True)
        assert stats[1].avg_gain == pytest.approx((3 + 2.5 + 2.1 + 1.5 + 1) / 5)
        assert (stats[2].calls, stats[2].resolved) == (7, 6)
        assert stats[2].win_rate == pytest.approx(100 / 6)
        assert not stats[3].rated

        board = await t.lookup("channel-stats").ask(LeaderboardRequest(limit=5))
        assert isinstance(board, LeaderboardView)
        assert [(e.rank, e.channel_id, e.username) for e in board.entries] == [
            (1, 1, "chan1"),
            (2, 2, "chan2"),
        ]
        assert board.computed_at == WALL0
        again = await t.lookup("channel-stats").ask(LeaderboardRequest(limit=5))
        assert again is board  # served from the TTL cache until the next refresh
        version = snapshots(pushed)[-1].version

    # Restarted: the cached snapshot is pushed before PostgreSQL is read again.
    pushed.clear()
    async with tree(StoreHandle(redis_url, database_url), clock, pushed).running():
        await eventually(lambda: bool(snapshots(pushed)))
        assert snapshots(pushed)[0].version == version


async def test_new_calls_are_recorded_and_their_peaks_followed(
    redis_url: str, database_url: str
) -> None:
    await add_calls(database_url, [(7, f"solana:old{i}", 30 + i, 100.0, 100.0) for i in range(4)])
    clock = ManualClock()
    pushed: list[Any] = []
    store = StoreHandle(redis_url, database_url)
    async with tree(store, clock, pushed).running() as t:
        await eventually(lambda: bool(snapshots(pushed)))
        assert {s.channel_id for s in snapshots(pushed)[-1].stats} == {7}
        stats_ref = t.lookup("channel-stats")
        stats_ref.tell_nowait(
            CallsSeen(
                event_id="e1",
                token_key="solana:NEW",
                chain="solana",
                symbol="NEW",
                calls=(
                    CallSeen(channel_id=7, username="chan7", called_at=WALL0 - 60, fdv_at_call=1e5),
                ),
            )
        )
        for fdv in (150_000.0, 260_000.0, 180_000.0):  # one by one: the mailbox coalesces
            await stats_ref.ask(price("solana:NEW", fdv))
        await stats_ref.ask(price("solana:UNTRACKED", 1e9))
        await clock.advance(10)  # the flush
        await clock.advance(290)  # the next refresh
        await eventually(lambda: len(snapshots(pushed)) >= 2)
        seven = {s.channel_id: s for s in snapshots(pushed)[-1].stats}[7]
        assert (seven.calls, seven.wins, seven.resolved) == (5, 1, 5)
        assert seven.win_rate == 20.0

    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT peak_fdv::float8 AS peak, channel_username FROM calls_history "
            "WHERE token_key = 'solana:NEW'"
        )
        assert row is not None and row["peak"] == 260_000.0 and row["channel_username"] == "chan7"
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM calls_history WHERE token_key = 'solana:UNTRACKED'"
            )
            == 0
        )
    finally:
        await conn.close()


def price(token_key: str, fdv: float) -> PriceUpdate:
    chain, address = token_key.split(":", 1)
    return PriceUpdate(
        v=1,
        event_id=f"p-{address}-{fdv}",
        seq=1,
        emitted_at=WALL0,
        chain_id=chain,
        token_address=address,
        pair_address=address + "pair",
        price_usd="1",
        fdv=fdv,
        market_cap=fdv,
        liquidity_usd=1.0,
        volume_h24=1.0,
    )
