"""Shared pieces of the sender tests: the emulator, a Redis-backed store handle, a sender tree."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import redis.asyncio as aioredis

from actors.sender import Sender
from actors.store.handle import StoreHandle
from messages.delivery import SenderStats, SenderStatus
from messages.settings import Secret, SenderSettings, TelegramSettings
from runtime import Actor, ActorSystem, Ref
from sandbox.telegram import SentMessage, TelegramEmulator
from supervisors import NO_BACKOFF, ChildSpec, Restart, Tree, supervisor, worker

TOKEN = "123456:TEST-TOKEN"


@asynccontextmanager
async def emulator(**options: Any) -> AsyncIterator[TelegramEmulator]:
    """A Bot API emulator enforcing the limits (unless told otherwise)."""
    emu = TelegramEmulator(token=TOKEN, **options)
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()


@asynccontextmanager
async def store(redis_url: str) -> AsyncIterator[StoreHandle]:
    """A store handle with a live Redis client, as the Redis owner actor would publish it."""
    client = aioredis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    handle = StoreHandle(redis_url, "", 2.0)
    handle.publish_redis(client)
    try:
        yield handle
    finally:
        handle.publish_redis(None)
        await client.aclose()


def sender_spec(
    handle: StoreHandle,
    emu: TelegramEmulator,
    *,
    restart: Restart = Restart.PERMANENT,
    extra: Iterable[ChildSpec] = (),
    **settings: Any,
) -> ChildSpec:
    return supervisor(
        "root",
        [
            *extra,
            worker(
                "sender",
                Sender,
                restart=restart,
                store=handle,
                settings=SenderSettings(**{"start_quiet_s": 0.0, **settings}),
                telegram=TelegramSettings(bot_token=Secret(TOKEN)),
                base_url=emu.base_url,
                base_file_url=emu.base_file_url,
            ),
        ],
        max_restarts=10,
        period=10,
        backoff=NO_BACKOFF,
    )


@asynccontextmanager
async def sender_tree(
    handle: StoreHandle,
    emu: TelegramEmulator,
    *,
    restart: Restart = Restart.PERMANENT,
    system: ActorSystem | None = None,
    extra: Iterable[ChildSpec] = (),
    **settings: Any,
) -> AsyncIterator[tuple[Tree, Ref]]:
    spec = sender_spec(handle, emu, restart=restart, extra=extra, **settings)
    async with Tree(spec, system or ActorSystem()).running() as tree:
        yield tree, tree.lookup("sender")


class Recorder(Actor):
    """Stands in for a user actor: keeps what it is told."""

    def __init__(self, box: list[object]) -> None:
        self.box = box

    async def receive(self, message: Any) -> None:
        self.box.append(message)


async def stats(ref: Ref) -> SenderStatus:
    status: SenderStatus = await ref.ask(SenderStats(), timeout=5)
    return status


async def stats_when(
    ref: Ref, predicate: Callable[[SenderStatus], bool], timeout: float = 10.0
) -> SenderStatus:
    """Poll the sender's stats until ``predicate`` holds (fail after ``timeout``)."""
    with anyio.fail_after(timeout):
        while not predicate(status := await stats(ref)):
            await anyio.sleep(0.02)
    return status


def min_gap_per_chat(sent: Iterable[SentMessage]) -> float:
    """The smallest time between two messages delivered to one chat (inf if none)."""
    last: dict[int, float] = {}
    gap = float("inf")
    for s in sorted(sent, key=lambda s: s.t):
        if s.chat_id in last:
            gap = min(gap, s.t - last[s.chat_id])
        last[s.chat_id] = s.t
    return gap


def max_in_window(times: Iterable[float], window: float = 1.0) -> int:
    """The most timestamps found in any half-open window (t - window, t]."""
    ordered = sorted(times)
    best = 0
    lo = 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best
