"""The reports actor end to end: real PostgreSQL and Redis, the real sender, the emulator.

A ManualClock starts ten seconds before 20:00 UTC on 2025-06-15; the report actor's schedule,
the sender's pacing and the emulator's flood limits all read it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator

import anyio
import pytest
import structlog

from actors.reports import ReportsStatus, ReportStats
from messages.delivery import SenderStats, SenderStatus
from runtime import ManualClock
from sandbox.telegram import TelegramEmulator
from tests.helpers import published_store
from tests.reports.support import (
    DAY,
    HEAVY,
    HOLDER,
    LAPSED,
    LOCKED,
    SUBSCRIBERS,
    T20,
    T21,
    TOKEN,
    TRADER,
    BrokenRenderer,
    StampRenderer,
    World,
    advance_until,
    seed_day,
)

pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
async def world(redis_url: str, database_url: str) -> AsyncIterator[World]:
    clock = ManualClock(start=1_000.0, wall_start=T20 - 10)
    emulator = TelegramEmulator(token=TOKEN, clock=clock.monotonic)
    await emulator.start()
    try:
        async with published_store(redis_url, database_url) as store:
            await seed_day(store.pool())
            yield World(clock, emulator, store, [])
    finally:
        await emulator.stop()


def ticks_within(ticks: list[float], start: float, end: float) -> int:
    return sum(1 for t in ticks if start < t < end)


def counts(world: World) -> dict[int, int]:
    return {chat: len(world.emulator.sent(chat)) for chat in SUBSCRIBERS}


async def test_daily_at_20_and_best_at_21_with_charts_while_the_loop_keeps_running(
    world: World,
) -> None:
    clock = world.clock
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.perf_counter())
            await anyio.sleep(0.002)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        async with world.tree(dpi=200).running() as tree:
            reports = tree.lookup("reports")
            await clock.advance(9.0)  # 19:59:59
            await anyio.sleep(0.05)
            assert world.emulator.sent() == []

            await advance_until(clock, lambda: all(world.photos(c) for c in SUBSCRIBERS))
            status: ReportsStatus = await reports.ask(ReportStats(), timeout=10)
            assert status.sent == 3 and status.last == {"daily": DAY}
            daily_spans = list(world.spans)

            await clock.advance(T21 - 1 - clock.wall())  # 20:59:59
            assert all(len(world.photos(c)) == 1 for c in SUBSCRIBERS)
            await advance_until(clock, lambda: all(len(world.photos(c)) == 2 for c in SUBSCRIBERS))
            status = await reports.ask(ReportStats(), timeout=10)
            assert status.sent == 6 and status.last == {"daily": DAY, "best": DAY}
        tg.cancel_scope.cancel()

    # Daily: one photo with a caption per subscriber; the locked and lapsed users got nothing.
    for chat in SUBSCRIBERS:
        data, width, height = world.png(chat, 0)
        assert data.startswith(PNG) and width > 0 and height > 0
        assert world.photos(chat)[0].parse_mode == "HTML"
    assert world.emulator.sent(LOCKED) == [] and world.emulator.sent(LAPSED) == []
    heavy = world.photos(HEAVY)[0].plain_text or ""
    assert heavy.startswith(f"Your calls today · {DAY} (UTC)\n24 tokens, 16 reached 2x or more")
    assert "TOKA02 — 5x" in heavy and "TOKA01 — 2x" in heavy and "TOKA00 — <2x" in heavy
    assert "Old" not in heavy  # told 25 hours before the report: not today
    trader = world.photos(TRADER)[0].plain_text or ""
    assert "PEPE — 10x" in trader  # multiplier alerts in notifications
    assert "DOGE — 20x" in trader  # the multiplier actor's state
    assert "Zq8R..1111 — <2x" in trader  # no symbol known: the short address
    holder = world.photos(HOLDER)[0].plain_text or ""
    assert "WIF — 3.5x" in holder  # recorded peak after the call / FDV when told
    assert "BONK — <2x" in holder  # its peak came before this user was told
    assert world.png(HEAVY, 0)[2] > world.png(TRADER, 0)[2]  # 24 bars: a taller image

    # Rendering ran on the island's thread, took real time, and the loop kept ticking meanwhile.
    assert len(daily_spans) == 3
    assert all(name != threading.current_thread().name for _, _, name in daily_spans)
    start, end, _ = max(daily_spans, key=lambda s: s[1] - s[0])
    assert end - start > 0.05, "the big chart should take measurable time to render"
    assert ticks_within(ticks, start, end) >= 3
    assert all(ticks_within(ticks, s, e) >= 1 for s, e, _ in daily_spans)

    # Best of the day: one chart rendered once, the same image for every subscriber.
    assert len(world.spans) == 4
    images = {world.png(chat, 1)[0] for chat in SUBSCRIBERS}
    assert len(images) == 1 and next(iter(images)).startswith(PNG)
    lines = (world.photos(HEAVY)[1].plain_text or "").splitlines()
    assert lines[0] == f"Best calls of the day · {DAY} (UTC)"
    assert lines[1] == "1. MOON — 50x · 1 user"  # told to a lapsed user: still a call of the day
    assert lines[2] == "2. PEPE — 10x · 2 users"
    assert len(lines) == 6  # top_n = 5
    assert world.emulator.sent(LOCKED) == [] and world.emulator.sent(LAPSED) == []


async def test_a_restart_at_20_00_30_sends_no_report_twice(world: World) -> None:
    clock = world.clock
    async with world.tree(renderer=StampRenderer).running():
        await advance_until(clock, lambda: all(world.photos(c) for c in SUBSCRIBERS))
        await advance_until(clock, lambda: clock.wall() >= T20 + 5)
    sent = counts(world)
    assert sent == dict.fromkeys(SUBSCRIBERS, 1)

    # A fresh tree (a process restart) at 20:00:30 catches up on today's 20:00 report, finds
    # it done and hands nothing to the sender.
    await clock.advance(T20 + 30 - clock.wall())
    with structlog.testing.capture_logs() as logs:
        async with world.tree(renderer=StampRenderer).running() as tree:
            status: ReportsStatus = await tree.lookup("reports").ask(ReportStats(), timeout=10)
            await advance_until(clock, lambda: clock.wall() >= T20 + 40)
            sender: SenderStatus = await tree.lookup("sender").ask(SenderStats(), timeout=5)
    assert status.already_sent == 1 and status.runs == 0 and status.sent == 0
    assert sender.accepted == 0 and sender.duplicates == 0
    assert counts(world) == sent
    assert [e["kind"] for e in logs if e["event"] == "reports.already_sent"] == ["daily"]


async def test_postgres_away_at_20_defers_the_report_until_it_is_back(world: World) -> None:
    clock, store = world.clock, world.store
    pool = store.pool()
    store.publish_pool(None)  # what the Postgres owner does while the server is down
    with structlog.testing.capture_logs() as logs:
        async with world.tree(renderer=StampRenderer).running() as tree:
            reports = tree.lookup("reports")
            await advance_until(clock, lambda: clock.wall() >= T20 + 30, step=1.0)
            status: ReportsStatus = await reports.ask(ReportStats(), timeout=10)
            assert status.deferred == 1 and status.sent == 0
            assert world.emulator.sent() == []

            store.publish_pool(pool)
            await advance_until(clock, lambda: all(world.photos(c) for c in SUBSCRIBERS))
            status = await reports.ask(ReportStats(), timeout=10)
    assert status.sent == 3 and status.last == {"daily": DAY}
    assert clock.wall() >= T20 + 60  # retried a minute later, not in a tight loop
    deferred = [e for e in logs if e["event"] == "reports.deferred"]
    assert len(deferred) == 1 and deferred[0]["will_retry"] is True
    assert [e for e in logs if e["event"] == "reports.resuming"]  # the day key said "started"


async def test_a_failing_chart_island_still_delivers_the_report_as_text(world: World) -> None:
    clock = world.clock
    async with world.tree(renderer=BrokenRenderer).running() as tree:
        await advance_until(clock, lambda: all(world.emulator.sent(c) for c in SUBSCRIBERS))
        status: ReportsStatus = await tree.lookup("reports").ask(ReportStats(), timeout=10)
        island = tree.status().find("root/charts")
    assert status.sent == 3 and status.chart_failures == 3
    assert island is not None and island.restarts_total == 3
    for chat in SUBSCRIBERS:
        (message,) = world.emulator.sent(chat)
        assert message.method == "sendMessage"
        assert (message.plain_text or "").startswith(f"Your calls today · {DAY} (UTC)")
