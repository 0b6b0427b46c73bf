"""Shared pieces of the health tests: fast settings, a recording sender, a blockable actor,
and stepping the manual clock one sample at a time."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio

from actors.health import Health, HealthBoard
from actors.health_rules import Probe
from messages.delivery import Delivered, Outbound
from messages.settings import HealthSettings
from runtime import Actor, MailboxSpec, ManualClock
from supervisors import ChildSpec, worker
from tests.helpers import eventually

SAMPLE_S = 5.0
ADMINS = (111, 222)


def settings(**changes: Any) -> HealthSettings:
    base: dict[str, Any] = {
        "sample_s": SAMPLE_S,
        "store_down_s": 30.0,
        "feed_silent_s": 60.0,
        "mailbox_full_s": 60.0,
        "memory_s": 20.0,
        "telegram_down_s": 20.0,
        "repeat_s": 3600.0,
    }
    base.update(changes)
    return HealthSettings(**base)


def health_worker(
    board: HealthBoard,
    *,
    probes: Mapping[str, Probe | None] | None = None,
    admins: tuple[int, ...] = ADMINS,
    memory_used: Callable[[], int] = lambda: 1,
    memory_limit: int = 1000,
    defaults: tuple[str, ...] = (),
    **options: Any,
) -> ChildSpec:
    """The health actor with quiet defaults: only the default probes named in ``defaults``
    and those in ``probes`` run."""
    quiet: dict[str, Probe | None] = {
        name: None for name in ("feed", "telegram", "outbox") if name not in defaults
    }
    quiet.update(probes or {})
    options.setdefault("settings", settings())
    return worker(
        "health",
        Health,
        admin_chat_ids=admins,
        board=board,
        probes=quiet,
        memory_limit=memory_limit,
        memory_used=memory_used,
        probe_timeout=1.0,
        **options,
    )


class RecordingSender(Actor):
    """Stands in for the sender where Telegram is not the point: keeps every Outbound."""

    def __init__(self, outbox: list[Outbound]) -> None:
        self.outbox = outbox

    async def receive(self, message: Any) -> Any:
        if isinstance(message, Outbound):
            self.outbox.append(message)
            return Delivered(message.chat_id, len(self.outbox))
        return None


class Blocker(Actor):
    """An actor with a tiny mailbox that stops handling messages until its gate opens."""

    mailbox = MailboxSpec(capacity=4)

    def __init__(self, gate: anyio.Event) -> None:
        self.gate = gate

    async def receive(self, message: Any) -> Any:
        await self.gate.wait()
        return None


class Stepper:
    """Moves the manual clock one sample at a time and waits for the health actor to look."""

    def __init__(self, clock: ManualClock, board: HealthBoard, sample_s: float = SAMPLE_S) -> None:
        self.clock = clock
        self.board = board
        self.sample_s = sample_s

    async def first(self) -> None:
        await eventually(lambda: self.board.samples >= 1, timeout=5)

    async def step(self, times: int = 1) -> None:
        for _ in range(times):
            target = self.board.samples + 1
            await self.clock.advance(self.sample_s)
            await eventually(lambda: self.board.samples >= target, timeout=5)  # noqa: B023

    async def until(self, condition: Callable[[], bool], limit: int = 100) -> int:
        """Step until ``condition`` holds; returns the steps taken (fails after ``limit``)."""
        for taken in range(limit + 1):
            if condition():
                return taken
            await self.step()
        raise AssertionError(f"condition not met within {limit} samples")

    def state(self, rule: str) -> str | None:
        value = self.board.view().get(rule)
        return None if value is None else str(value["state"])
