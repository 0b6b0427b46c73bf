"""Alerts through the real sender to the Telegram emulator, and the pure pieces that decide
whether Telegram answers, what is full, what gave up and how much memory there is."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis

from actors.health import (
    HealthBoard,
    human_duration,
    mailbox_findings,
    memory_limit_bytes,
    supervisor_findings,
    telegram_verdict,
)
from actors.sender import Sender
from actors.store.handle import StoreHandle
from messages.delivery import DeliveryFailed, SenderStatus
from messages.settings import Secret, SenderSettings, TelegramSettings
from messages.status import ActorStatus
from runtime import ActorSystem, ManualClock
from sandbox.telegram import TelegramEmulator
from supervisors import Tree, supervisor, worker
from tests.health.support import ADMINS, Blocker, Stepper, health_worker, settings

TOKEN = "424242:HEALTH-TEST"


async def advance_until(clock: ManualClock, condition: object, limit: float = 5.0) -> None:
    """Move the clock in small steps (the sender paces on it) until ``condition()``."""
    assert callable(condition)
    with anyio.fail_after(limit):
        while not condition():
            await clock.advance(0.05)
            await anyio.sleep(0.005)


@pytest.mark.anyio
async def test_alerts_and_recoveries_reach_every_admin_chat_through_the_sender(
    redis_url: str,
) -> None:
    clock, board, gate = ManualClock(), HealthBoard(), anyio.Event()
    client = aioredis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    handle = StoreHandle(redis_url, "", 2.0)
    handle.publish_redis(client)
    emu = TelegramEmulator(token=TOKEN, clock=clock.monotonic)
    await emu.start()
    spec = supervisor(
        "root",
        [
            worker(
                "sender",
                Sender,
                store=handle,
                settings=SenderSettings(namespace="test:health:sender"),
                telegram=TelegramSettings(bot_token=Secret(TOKEN)),
                base_url=emu.base_url,
                base_file_url=emu.base_file_url,
            ),
            worker("blocker", Blocker, gate=gate),
            health_worker(board, settings=settings(mailbox_full_s=10)),
        ],
    )
    try:
        async with Tree(spec, ActorSystem(clock)).running() as tree:
            steps = Stepper(clock, board)
            await steps.first()
            blocker = tree.lookup("blocker")
            blocker.tell_nowait("first")
            await anyio.sleep(0.01)
            while blocker.tell_nowait("more"):
                pass
            await steps.step(4)
            assert steps.state("mailbox:root/blocker") == "firing"
            await advance_until(clock, lambda: len(emu.sent()) >= len(ADMINS))
            for chat in ADMINS:
                (sent,) = emu.sent(chat)
                assert sent.parse_mode == "HTML"
                assert sent.plain_text is not None
                assert "Mailbox of root/blocker nearly full" in sent.plain_text
                assert "<b>" not in sent.plain_text  # rendered, not shown as markup

            gate.set()
            await anyio.sleep(0.01)
            await steps.step()
            assert steps.state("mailbox:root/blocker") == "ok"
            await advance_until(clock, lambda: len(emu.sent()) >= 2 * len(ADMINS))
            for chat in ADMINS:
                texts = [s.plain_text or "" for s in emu.sent(chat)]
                assert len(texts) == 2 and "recovered: Mailbox of root/blocker" in texts[1]
            assert emu.violations == {"global": 0, "private": 0, "group": 0}
    finally:
        gate.set()
        await emu.stop()
        await client.delete(*[k async for k in client.scan_iter("test:health:sender*")] or ["x"])
        await client.aclose()


# --- pure pieces ----------------------------------------------------------------------------


def status(**changes: object) -> SenderStatus:
    values: dict[str, object] = {
        "queued": {"interactive": 0, "alert": 0, "bulk": 0},
        "unsaved": 0,
        "in_flight": 0,
        "accepted": 0,
        "paused_until": None,
        "sent": {"interactive": 0, "alert": 0, "bulk": 0},
        "delivered": 0,
        "rate_limited": 0,
        "blocked": 0,
        "dropped": 0,
        "failed": 0,
        "retried": 0,
        "duplicates": 0,
        "coalesced": 0,
        "unknown_fate": 0,
        "store_errors": 0,
    }
    values.update(changes)
    return SenderStatus(**values)  # type: ignore[arg-type]


def test_telegram_verdict() -> None:
    idle = status()
    assert telegram_verdict(None, idle, False) == (True, "idle")
    sent = status(sent={"interactive": 3})
    assert telegram_verdict(idle, sent, True) == (True, "answering")
    retrying = status(sent={"interactive": 3}, retried=2, in_flight=1)
    ok, detail = telegram_verdict(sent, retrying, False)
    assert not ok and "2 retries" in detail
    waiting = status(sent={"interactive": 3}, retried=2, queued={"interactive": 2})
    assert telegram_verdict(retrying, waiting, True)[0] is False  # no news, still waiting
    assert telegram_verdict(retrying, waiting, False)[0] is True
    failure = DeliveryFailed(1, "health", "NetworkError: connection refused")
    gave_up = status(sent={"interactive": 3}, retried=2, failed=1, recent_failures=(failure,))
    ok, detail = telegram_verdict(waiting, gave_up, False)
    assert not ok and "connection refused" in detail
    bad_request = DeliveryFailed(1, "health", "BadRequest: can't parse entities")
    refused = status(sent={"interactive": 3}, retried=2, failed=2, recent_failures=(bad_request,))
    assert telegram_verdict(gave_up, refused, False)[0] is True  # Telegram answered that one
    restarted = status(sent={"interactive": 1})  # a new sender: counters start again
    assert telegram_verdict(refused, restarted, True) == (True, "answering")


def node(path: str, kind: str = "worker", **changes: object) -> ActorStatus:
    values: dict[str, object] = {"name": path.rsplit("/", 1)[-1], "state": "running"}
    values.update(changes)
    return ActorStatus(path=path, kind=kind, **values)  # type: ignore[arg-type]


def test_mailbox_findings_name_the_actor_and_aggregate_dynamic_children() -> None:
    users = node(
        "root/users",
        "dynamic_supervisor",
        mailbox_capacity=10,
        children=tuple(
            node(f"root/users/user:{i}", mailbox_depth=d, mailbox_capacity=10)
            for i, d in enumerate([9, 0, 10, 10, 10, 1])
        ),
    )
    root = node(
        "root",
        "supervisor",
        mailbox_capacity=10,
        children=(node("root/sender", mailbox_depth=81, mailbox_capacity=100), users),
    )
    found = mailbox_findings(root, 0.8)
    assert set(found) == {"mailbox:root/sender", "mailbox:root/users/*"}
    assert found["mailbox:root/sender"] == "81/100 (81%)"
    assert found["mailbox:root/users/*"].startswith(
        "4 of 6 mailboxes above 80%: user:2 10/10 (100%)"
    )
    assert found["mailbox:root/users/*"].endswith("and 1 more")
    assert list(mailbox_findings(root, 0.81)) == ["mailbox:root/users/*"]


def test_supervisor_findings() -> None:
    def tree(sub_state: str, sub_total: int, recent: int) -> ActorStatus:
        sub = node(
            "root/sub",
            "supervisor",
            state=sub_state,
            restarts_total=sub_total,
            restart_limit=5,
            last_error="SupervisorGaveUp: root/sub gave up: 6 restarts within 10 s (last: w)",
            children=(node("root/sub/w", restarts_recent=recent),),
        )
        return node("root", "supervisor", restart_limit=100, children=(sub,))

    found, seen = supervisor_findings(tree("running", 1, 0), {})
    assert found == {}  # an old give-up, seen for the first time: not news
    found, seen = supervisor_findings(tree("crashed", 1, 0), seen)
    assert list(found) == ["gave_up:root/sub"]
    found, seen = supervisor_findings(tree("running", 2, 3), seen)
    assert list(found) == ["gave_up:root/sub"]  # restarted since the last look
    found, seen = supervisor_findings(tree("running", 2, 3), seen)
    assert found == {}
    found, seen = supervisor_findings(tree("running", 2, 4), seen)
    assert list(found) == ["restarts:root/sub"]
    assert found["restarts:root/sub"].startswith("4 restarts recently, limit 5 (most: w, 4")


def test_memory_limit_prefers_the_cgroup(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("536870912\n")
    assert memory_limit_bytes(tmp_path) == 512 * 2**20
    (tmp_path / "memory.max").write_text("max\n")
    v1 = tmp_path / "memory"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text(str(2**63 - 4096))  # v1's "no limit"
    machine = memory_limit_bytes(tmp_path)
    assert machine > 0 and machine != 2**63 - 4096
    (v1 / "memory.limit_in_bytes").write_text("1073741824")
    assert memory_limit_bytes(tmp_path) == 2**30


def test_human_duration() -> None:
    assert [human_duration(s) for s in (0, 59.6, 119, 120, 3599, 7200, 9000)] == [
        "0 s",
        "60 s",
        "119 s",
        "2 min",
        "59 min",
        "2 h 0 min",
        "2 h 30 min",
    ]
