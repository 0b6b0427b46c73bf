"""The feed rule end to end: the sandbox feed, the real ingest actor, the health actor's
default feed probe (an IngestStatus ask), a manual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from actors.health import HealthBoard
from actors.ingest import Ingest
from actors.store.handle import StoreHandle
from messages.delivery import Outbound
from messages.ingest import IngestReport, IngestStatus
from runtime import ActorSystem, ManualClock, Ref
from sandbox.feed import FeedServer
from supervisors import Backoff, Tree, supervisor, worker
from tests.health.support import ADMINS, RecordingSender, Stepper, health_worker
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

RATE = 100.0
RECONNECT = Backoff(initial=4.0, maximum=4.0, jitter=0.0, reset_after=1000.0)


@asynccontextmanager
async def feed_tree(
    feed: FeedServer, clock: ManualClock, board: HealthBoard, outbox: list[Outbound]
) -> AsyncIterator[Tree]:
    # No Redis: the ingest actor then joins the feed live (its resume point is not the point).
    handle = StoreHandle("", "")
    spec = supervisor(
        "root",
        [
            worker("sender", RecordingSender, outbox=outbox),
            worker("ingest", Ingest, store=handle, url=feed.url, save_interval=3600.0),
            health_worker(board, defaults=("feed",)),
        ],
        max_restarts=1000,
        period=60,
        backoff=RECONNECT,
    )
    async with Tree(spec, ActorSystem(clock)).running() as tree:
        yield tree


async def report(ingest: Ref) -> IngestReport:
    answer: IngestReport = await ingest.ask(IngestStatus(), timeout=2)
    return answer


class FeedSteps(Stepper):
    """Steps that, while the feed is up, first wait (in real time) for a new event."""

    def __init__(self, clock: ManualClock, board: HealthBoard, ingest: Ref) -> None:
        super().__init__(clock, board)
        self.ingest = ingest

    async def total(self) -> tuple[int, int]:
        if self.ingest.state != "running":
            return (0, -1)
        r = await report(self.ingest)
        return r.incarnation, sum(r.events.values())

    async def live_step(self, times: int = 1) -> None:
        for _ in range(times):
            before = await self.total()
            for _ in range(500):
                now = await self.total()
                if now[1] > 0 and now != before:
                    break
                await anyio.sleep(0.01)
            else:
                raise AssertionError("no feed event arrived")
            await self.step()


def alerts(outbox: list[Outbound]) -> list[str]:
    return [o.text for o in outbox if "recovered" not in o.text]


def recoveries(outbox: list[Outbound]) -> list[str]:
    return [o.text for o in outbox if "recovered" in o.text]


@pytest.mark.faults
async def test_feed_stopped_alerts_once_after_the_duration_and_recovers_once() -> None:
    clock, board = ManualClock(), HealthBoard()
    outbox: list[Outbound] = []
    feed = FeedServer(rate=RATE, seed=7)
    await feed.start()
    port = feed.port
    restarted: FeedServer | None = None
    try:
        async with feed_tree(feed, clock, board, outbox) as tree:
            ingest = tree.lookup("ingest")
            steps = FeedSteps(clock, board, ingest)
            await steps.first()
            await steps.live_step(2)
            assert steps.state("feed") == "ok"

            await feed.stop()
            await eventually(lambda: ingest.state != "running", timeout=5)
            await steps.step()
            assert steps.state("feed") == "pending"
            await steps.step(12)  # 60 s down: not "more than" the 60 s threshold yet
            assert outbox == []
            await steps.step()
            assert steps.state("feed") == "firing"
            assert len(alerts(outbox)) == len(ADMINS)
            assert "Signal feed down or silent" in outbox[0].text
            await steps.step(24)  # two more minutes down: no repeat, no storm
            assert len(outbox) == len(ADMINS)

            restarted = FeedServer(rate=RATE, seed=8)
            await restarted.start(port=port)
            await steps.until(lambda: ingest.state == "running", limit=20)
            await steps.live_step(2)
            assert steps.state("feed") == "ok"
            assert len(alerts(outbox)) == len(ADMINS)
            assert len(recoveries(outbox)) == len(ADMINS)
            assert board.view()["feed"]["last_outage_s"] > 180
            assert (await report(ingest)).reconnects >= 1
    finally:
        if restarted is not None:
            await restarted.stop()


async def test_a_flapping_feed_raises_no_alert_storm_but_a_long_silence_alerts() -> None:
    clock, board = ManualClock(), HealthBoard()
    outbox: list[Outbound] = []
    async with FeedServer(rate=RATE, seed=9) as feed, feed_tree(feed, clock, board, outbox) as tree:
        steps = FeedSteps(clock, board, tree.lookup("ingest"))
        await steps.first()
        await steps.live_step(2)
        pending_seen = 0
        for _ in range(8):  # down 20 s, up 20 s, for more than five minutes
            feed.pause()
            await steps.step(4)
            pending_seen += steps.state("feed") == "pending"
            feed.resume()
            await steps.live_step(4)
            assert steps.state("feed") == "ok"
        assert pending_seen == 8  # the silences were seen, they were just too short
        assert outbox == []
        assert board.view()["feed"]["fired_total"] == 0

        feed.pause()  # now silent for good: one alert after the minute, then quiet
        await steps.step(16)
        assert steps.state("feed") == "firing"
        assert "connected, but no new events" in board.view()["feed"]["detail"]
        assert len(alerts(outbox)) == len(ADMINS)
        feed.resume()
        await steps.live_step()
        assert len(recoveries(outbox)) == len(ADMINS)
        assert len(outbox) == 2 * len(ADMINS)
