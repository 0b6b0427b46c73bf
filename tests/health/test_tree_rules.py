"""The health actor on a live tree with a manual clock: mailboxes, restarts, give-ups, memory,
alerts to admins, Telegram down, metrics and the status view."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import structlog
from prometheus_client import REGISTRY

from actors.health import HealthBoard, HealthQuery, SampleNow
from actors.store.outbox import OutboxStats, OutboxStatus
from messages.delivery import Lane, Outbound
from runtime import Actor, ActorSystem, ManualClock
from supervisors import Backoff, Restart, Tree, dynamic_supervisor, start_child, supervisor, worker
from tests.health.support import (
    ADMINS,
    Blocker,
    RecordingSender,
    Stepper,
    health_worker,
    settings,
)
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

SLOW_BACKOFF = Backoff(initial=1.0, maximum=1.0, jitter=0.0, reset_after=1000.0)


def metric(name: str, rule: str) -> float:
    return REGISTRY.get_sample_value(name, {"rule": rule}) or 0.0


def health_texts(outbox: list[Outbound]) -> list[tuple[int, str]]:
    assert all(o.lane is Lane.INTERACTIVE and o.kind == "health" for o in outbox)
    return [(o.chat_id, o.text) for o in outbox]


async def fill(ref: Any) -> None:
    """Fill a Blocker's mailbox: the first message blocks it, the rest queue up."""
    ref.tell_nowait("first")
    await eventually(lambda: ref._cell.mailbox.__len__() == 0)
    while ref.tell_nowait("more"):
        pass


async def test_a_full_mailbox_alerts_once_naming_the_actor_and_recovers() -> None:
    clock, board, gate = ManualClock(), HealthBoard(), anyio.Event()
    outbox: list[Outbound] = []
    rule = "mailbox:root/blocker"
    alerts_before = metric("callwatch_health_alerts_total", rule)
    spec = supervisor(
        "root",
        [
            worker("sender", RecordingSender, outbox=outbox),
            worker("blocker", Blocker, gate=gate),
            health_worker(board),
        ],
    )
    async with Tree(spec, ActorSystem(clock)).running() as tree:
        steps = Stepper(clock, board)
        await steps.first()
        await fill(tree.lookup("blocker"))
        await steps.step()
        assert steps.state(rule) == "pending"
        await steps.step(11)  # 55 s full: not yet ("more than 60 s")
        assert outbox == []
        await steps.step(2)  # 65 s
        assert steps.state(rule) == "firing"
        texts = health_texts(outbox)
        assert [chat for chat, _ in texts] == list(ADMINS)
        assert "Mailbox of root/blocker nearly full" in texts[0][1]
        assert "4/4 (100%)" in texts[0][1]
        assert metric("callwatch_health_alerts_total", rule) == alerts_before + 1
        assert metric("callwatch_health_firing", rule) == 1
        view = await tree.lookup("health").ask(HealthQuery())
        assert view[rule]["state"] == "firing" and view[rule]["notified"] is True

        await steps.step(20)  # still full, well within the hour: no repeat
        assert len(outbox) == len(ADMINS)

        gate.set()
        await eventually(lambda: len(tree.lookup("blocker")._cell.mailbox) == 0)
        await steps.step()
        assert steps.state(rule) == "ok"
        texts = health_texts(outbox)
        assert len(texts) == 2 * len(ADMINS)
        assert all("recovered: Mailbox of root/blocker" in t for _, t in texts[2:])
        assert metric("callwatch_health_firing", rule) == 0
        assert board.view()[rule]["last_outage_s"] >= 60


async def test_a_full_mailbox_under_a_dynamic_supervisor_is_one_rule() -> None:
    clock, board = ManualClock(), HealthBoard()
    outbox: list[Outbound] = []
    gates = [anyio.Event() for _ in range(3)]
    spec = supervisor(
        "root",
        [
            worker("sender", RecordingSender, outbox=outbox),
            dynamic_supervisor("users"),
            health_worker(board, settings=settings(mailbox_full_s=10)),
        ],
    )
    async with Tree(spec, ActorSystem(clock)).running() as tree:
        for i, gate in enumerate(gates):
            await start_child(tree.lookup("users"), worker(f"user:{i}", Blocker, gate=gate))
        steps = Stepper(clock, board)
        await steps.first()
        await fill(tree.lookup("user:1"))
        await steps.step(4)
        assert steps.state("mailbox:root/users/*") == "firing"
        assert not any(name.startswith("mailbox:root/users/user") for name in board.view())
        detail = board.view()["mailbox:root/users/*"]["detail"]
        assert detail.startswith("1 of 3 mailboxes above 80%: user:1 4/4")
        for gate in gates:
            gate.set()


class Flaky(Actor):
    async def receive(self, message: Any) -> Any:
        raise RuntimeError("boom")


async def test_restart_intensity_near_the_limit_alerts() -> None:
    clock, board = ManualClock(), HealthBoard()
    outbox: list[Outbound] = []
    spec = supervisor(
        "root",
        [
            worker("sender", RecordingSender, outbox=outbox),
            supervisor(
                "sub", [worker("flaky", Flaky)], max_restarts=3, period=60, backoff=SLOW_BACKOFF
            ),
            health_worker(board),
        ],
        max_restarts=10,
        period=60,
        backoff=SLOW_BACKOFF,
    )
    async with Tree(spec, ActorSystem(clock)).running() as tree:
        steps = Stepper(clock, board)
        await steps.first()
        flaky = tree.lookup("flaky")
        flaky.tell_nowait("crash")
        await clock.advance(1.0)  # backoff: restart 1
        await eventually(lambda: flaky.state == "running")
        await steps.step()
        assert steps.state("restarts:root/sub") is None  # 1 of 3: fine
        flaky.tell_nowait("crash")
        await clock.advance(1.0)
        await eventually(lambda: flaky.state == "running")
        await steps.step()
        assert steps.state("restarts:root/sub") == "firing"  # 2 of 3: one more and it gives up
        assert "2 restarts recently, limit 3" in board.view()["restarts:root/sub"]["detail"]
        assert "root/sub near its restart limit" in outbox[0].text
        await steps.step(13)  # the restarts age out of the 60 s period
        assert steps.state("restarts:root/sub") == "ok"
        assert "recovered" in outbox[-1].text


async def test_a_supervisor_that_gave_up_alerts() -> None:
    clock, board = ManualClock(), HealthBoard()
    outbox: list[Outbound] = []
    long_backoff = Backoff(initial=30.0, maximum=30.0, jitter=0.0, reset_after=1000.0)
    spec = supervisor(
        "root",
        [
            worker("sender", RecordingSender, outbox=outbox),
            supervisor("sub", [worker("flaky", Flaky)], max_restarts=0, period=60),
            health_worker(board),
        ],
        max_restarts=10,
        period=60,
        backoff=long_backoff,
    )
    async with Tree(spec, ActorSystem(clock)).running() as tree:
        steps = Stepper(clock, board)
        await steps.first()
        tree.lookup("flaky").tell_nowait("crash")
        sub = tree.lookup("sub")
        await eventually(lambda: sub.state != "running")
        await steps.step()
        view = board.view()["gave_up:root/sub"]
        assert view["state"] == "firing" and "gave up" in view["detail"]
        assert "Supervisor root/sub gave up" in outbox[0].text
        await steps.until(lambda: sub.state == "running")  # root restarts it after 30 s
        await steps.step()
        assert steps.state("gave_up:root/sub") == "ok"
        assert "recovered" in outbox[-1].text
        assert len(outbox) == 2 * len(ADMINS)


async def test_memory_above_the_ratio_alerts_after_its_duration() -> None:
    clock, board = ManualClock(), HealthBoard()
    outbox: list[Outbound] = []
    used = [100]
    spec = supervisor(
        "root",
        [
            worker("sender", RecordingSender, outbox=outbox),
            health_worker(board, memory_limit=1000 * 2**20, memory_used=lambda: used[0] * 2**20),
        ],
    )
    async with Tree(spec, ActorSystem(clock)).running():
        steps = Stepper(clock, board)
        await steps.first()
        assert steps.state("memory") == "ok"
        used[0] = 850
        await steps.step(4)  # 15 s above: memory_s is 20
        assert steps.state("memory") == "pending"
        await steps.step(2)
        assert steps.state("memory") == "firing"
        assert "850 MiB of 1000 MiB (85%)" in outbox[0].text
        used[0] = 500
        await steps.step()
        assert steps.state("memory") == "ok"
        assert len(outbox) == 2 * len(ADMINS)


async def test_when_telegram_is_down_alerts_go_to_the_log_then_follow_when_it_returns() -> None:
    clock, board = ManualClock(), HealthBoard()
    outbox: list[Outbound] = []
    telegram_ok, feed_ok = [False], [True]

    async def telegram() -> tuple[bool, str]:
        return telegram_ok[0], "answering" if telegram_ok[0] else "requests fail"

    async def feed() -> tuple[bool, str]:
        return feed_ok[0], "connected" if feed_ok[0] else "disconnected from the feed"

    spec = supervisor(
        "root",
        [
            worker("sender", RecordingSender, outbox=outbox),
            health_worker(
                board,
                probes={"telegram": telegram, "feed": feed},
                settings=settings(feed_silent_s=10, telegram_down_s=10),
            ),
        ],
    )
    async with Tree(spec, ActorSystem(clock)).running():
        steps = Stepper(clock, board)
        with structlog.testing.capture_logs() as logs:
            await steps.first()
            feed_ok[0] = False
            await steps.step(3)
            assert steps.state("feed") == "pending"  # 10 s: not more than feed_silent_s
            await steps.step()
        assert steps.state("telegram") == "firing" and steps.state("feed") == "firing"
        assert outbox == []  # nothing tried on the broken path
        alerts = [e for e in logs if e["event"] == "health.alert"]
        assert {e["rule"] for e in alerts} == {"telegram", "feed"}
        assert all(e["to_admins"] is False for e in alerts)
        assert board.view()["feed"]["notified"] is False

        telegram_ok[0] = True
        await steps.step()
        texts = [o.text for o in outbox]
        assert any("recovered: Telegram not answering" in t for t in texts)
        assert any("Signal feed down or silent" in t and "recovered" not in t for t in texts)
        assert len(texts) == 2 * len(ADMINS)  # telegram's recovery and the held feed alert
        assert board.view()["feed"]["notified"] is True

        feed_ok[0] = True
        await steps.step()
        assert "recovered: Signal feed down or silent" in outbox[-1].text
        assert len(outbox) == 3 * len(ADMINS)


async def test_no_recovery_is_sent_for_an_alert_the_admins_never_got() -> None:
    clock, board = ManualClock(), HealthBoard()
    outbox: list[Outbound] = []
    telegram_ok, feed_ok = [False], [False]

    async def telegram() -> tuple[bool, str]:
        return telegram_ok[0], ""

    async def feed() -> tuple[bool, str]:
        return feed_ok[0], ""

    spec = supervisor(
        "root",
        [
            worker("sender", RecordingSender, outbox=outbox),
            health_worker(
                board,
                probes={"telegram": telegram, "feed": feed},
                settings=settings(feed_silent_s=5, telegram_down_s=60),
            ),
        ],
    )
    async with Tree(spec, ActorSystem(clock)).running():
        steps = Stepper(clock, board)
        await steps.first()
        await steps.step(2)
        assert steps.state("feed") == "firing" and steps.state("telegram") == "pending"
        feed_ok[0] = True
        await steps.step()
        telegram_ok[0] = True
        await steps.step()
        assert outbox == []  # neither the feed alert nor its recovery: Telegram never fired


class FakeOutbox(Actor):
    """Answers OutboxStats with a chosen backlog (the real writer needs PostgreSQL down)."""

    def __init__(self, lag: list[float]) -> None:
        self.lag = lag

    async def receive(self, message: Any) -> Any:
        assert isinstance(message, OutboxStats)
        return OutboxStatus(
            pending=1234,
            lag_s=self.lag[0],
            drained_total=0,
            inserted_total=0,
            duplicates_total=0,
            dead_lettered_total=0,
            batches_total=0,
            last_batch=0,
            incarnation=1,
        )


async def test_outbox_backlog_older_than_store_down_s_alerts_and_sample_now_answers() -> None:
    clock, board = ManualClock(), HealthBoard()
    outbox: list[Outbound] = []
    lag = [0.0]
    spec = supervisor(
        "root",
        [
            worker("sender", RecordingSender, outbox=outbox),
            worker("outbox", FakeOutbox, lag=lag),
            health_worker(board, defaults=("outbox",)),
        ],
    )
    async with Tree(spec, ActorSystem(clock)).running() as tree:
        health = tree.lookup("health")
        await Stepper(clock, board).first()
        view = await health.ask(SampleNow())
        assert view["outbox"]["state"] == "ok"
        lag[0] = 31.0
        view = await health.ask(SampleNow())
        assert view["outbox"]["state"] == "firing"
        assert "1234 rows waiting, oldest 31 s" in view["outbox"]["detail"]
        assert board.view() == view


async def test_without_a_sender_or_admins_alerts_are_logged_only() -> None:
    clock, board = ManualClock(), HealthBoard()

    async def down() -> tuple[bool, str]:
        return False, "down"

    spec = supervisor(
        "root",
        [health_worker(board, probes={"feed": down}, settings=settings(feed_silent_s=1))],
        restart=Restart.PERMANENT,
    )
    async with Tree(spec, ActorSystem(clock)).running():
        steps = Stepper(clock, board)
        with structlog.testing.capture_logs() as logs:
            await steps.first()
            await steps.step()
        assert steps.state("feed") == "firing"
        assert [e["rule"] for e in logs if e["event"] == "health.alert"] == ["feed"]
