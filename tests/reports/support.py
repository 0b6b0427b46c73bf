"""Shared pieces of the report tests: the store, the seeded day, the tree under a ManualClock.

The day is 2025-06-15 (UTC). The clock starts ten seconds before 20:00; the Telegram emulator
reads the same clock, so its flood limits and the sender's pacing agree.
"""

from __future__ import annotations

import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import asyncpg

from actors.charts import ChartRenderer
from actors.multipliers import TrackedToken
from actors.reports import Reports
from actors.sender import Sender
from actors.store.handle import StoreHandle
from messages.settings import ReportsSettings, Secret, SenderSettings, TelegramSettings
from messages.tracking import TrackedBy
from runtime import Actor, ActorSystem, ManualClock
from runtime.island import ThreadIsland
from sandbox.telegram import TelegramEmulator
from supervisors import NO_BACKOFF, Tree, supervisor, worker

TOKEN = "123456:REPORTS-TEST"
DAY = "2025-06-15"
AT_20 = datetime(2025, 6, 15, 20, 0, tzinfo=UTC)
T20 = AT_20.timestamp()
T21 = T20 + 3600.0

HEAVY = 1001
"""24 tokens today: the big chart."""
TRADER = 1002
"""PEPE (10x by multiplier alerts), DOGE (20x by the multiplier actor), an unnamed token."""
HOLDER = 1003
"""WIF (3.5x by the recorded peak), BONK (peak before the call: not counted), PEPE."""
LOCKED = 1004
"""Subscribed but locked by an admin: no reports."""
LAPSED = 1005
"""Subscription ended: no reports, but the call MOON (50x) counts in the best of the day."""
SUBSCRIBERS = (HEAVY, TRADER, HOLDER)

UNNAMED = "sol:Zq8RrVxW4f9QmUnnamedTokenAddr1111"
DOGE = "sol:DoGe1111111111111111111111111111"


async def seed_day(pool: asyncpg.Pool) -> None:
    """Users, subscriptions, call and multiplier notifications and channel calls for DAY."""
    now = AT_20
    users = [HEAVY, TRADER, HOLDER, LOCKED, LAPSED]
    await pool.executemany(
        "INSERT INTO users (chat_id, locked) VALUES ($1, $2)",
        [(u, u == LOCKED) for u in users],
    )
    subs = [(u, now - timedelta(days=3), now + timedelta(days=27)) for u in users[:4]]
    subs.append((LAPSED, now - timedelta(days=10), now - timedelta(hours=2)))
    await pool.executemany(
        "INSERT INTO subscriptions (chat_id, plan, starts_at, expires_at, source)"
        " VALUES ($1, 'monthly', $2, $3, 'admin')",
        subs,
    )
    calls: list[tuple[int, str, datetime, float]] = []
    mults: list[tuple[int, str, int]] = []
    history: list[tuple[str, str, datetime, float, float | None, datetime | None]] = []
    for i in range(24):
        key = f"sol:HeavyToken{i:02d}xxxxxxxxxxxxxxxxxxxx"
        calls.append((HEAVY, key, now - timedelta(minutes=30 * (i + 1)), 1000.0))
        history.append((key, f"TOKA{i:02d}", now - timedelta(hours=13), 900.0, None, None))
        for threshold in (2, 5)[: i % 3]:
            mults.append((HEAVY, key, threshold))
    calls.append((HEAVY, "sol:OldTokenYesterdayxxxxxxxxxxxxx", now - timedelta(hours=25), 10.0))
    pepe, wif, bonk, moon = (
        f"sol:{s}Mint1111111111111111111111" for s in ("Pepe", "Wif", "Bonk", "Moon")
    )
    calls += [
        (TRADER, pepe, now - timedelta(hours=5), 1000.0),
        (TRADER, DOGE, now - timedelta(hours=4), 1000.0),
        (TRADER, UNNAMED, now - timedelta(hours=3), 1000.0),
        (HOLDER, wif, now - timedelta(hours=6), 2000.0),
        (HOLDER, bonk, now - timedelta(hours=6), 2000.0),
        (HOLDER, pepe, now - timedelta(hours=2), 4000.0),
        (LOCKED, wif, now - timedelta(hours=6), 2000.0),
        (LAPSED, moon, now - timedelta(hours=8), 100.0),
    ]
    mults += [(TRADER, pepe, 2), (TRADER, pepe, 5), (TRADER, pepe, 10)]
    mults += [(LAPSED, moon, t) for t in (2, 5, 10, 20, 50)]
    history += [
        (pepe, "PEPE", now - timedelta(hours=6), 900.0, None, None),
        (DOGE, "DOGE", now - timedelta(hours=5), 900.0, None, None),
        (wif, "WIF", now - timedelta(hours=7), 1500.0, 7000.0, now - timedelta(hours=1)),
        (bonk, "BONK", now - timedelta(hours=7), 1500.0, 9000.0, now - timedelta(hours=6.5)),
        (moon, "MOON", now - timedelta(hours=9), 90.0, None, None),
    ]
    await pool.executemany(
        "INSERT INTO notifications (dedup_key, chat_id, token_key, kind, threshold, fdv, sent_at)"
        " VALUES ($1, $2, $3, 'call', 0, $5, $4)",
        [(f"call:{chat}:{key}", chat, key, at, fdv) for chat, key, at, fdv in calls],
    )
    await pool.executemany(
        "INSERT INTO notifications (dedup_key, chat_id, token_key, kind, threshold, sent_at)"
        " VALUES ($1, $2, $3, 'multiplier', $4, $5)",
        [
            (f"mult:{chat}:{key}:{t}", chat, key, t, now - timedelta(minutes=10))
            for chat, key, t in mults
        ],
    )
    await pool.executemany(
        "INSERT INTO calls_history (dedup_key, event_id, channel_id, token_key, chain, symbol,"
        " called_at, fdv_at_call, peak_fdv, peak_at)"
        " VALUES ('ch:' || $1, 'ev:' || $1, 'chan1', $1, 'solana', $2, $3, $4, $5, $6)",
        history,
    )


class MultipliersStub(Actor):
    """Answers TrackedBy as the multiplier actor would: DOGE reached 20x for TRADER."""

    async def receive(self, message: Any) -> Any:
        if isinstance(message, TrackedBy) and message.user_id == TRADER:
            return [TrackedToken(DOGE, "DOGE", 1000.0, 20.0)]
        return []


class TimedRenderer(ChartRenderer):
    """The real renderer, recording when (real time) each rendering ran and on which thread."""

    def __init__(self, spans: list[tuple[float, float, str]], **options: Any) -> None:
        super().__init__(**options)
        self.spans = spans

    def on_receive(self, message: Any) -> Any:
        start = time.perf_counter()
        try:
            return super().on_receive(message)
        finally:
            self.spans.append((start, time.perf_counter(), threading.current_thread().name))


def tiny_png() -> bytes:
    """A valid 1x1 PNG, made by hand (no rendering cost)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\x00"))
        + chunk(b"IEND", b"")
    )


class StampRenderer(TimedRenderer):
    """Answers every chart request with the same tiny PNG (for tests that are not about
    rendering), still on the island's thread."""

    def on_receive(self, message: Any) -> Any:
        start = time.perf_counter()
        self.spans.append((start, start, threading.current_thread().name))
        return tiny_png()


class BrokenRenderer(TimedRenderer):
    """A renderer whose thread fails every time (the island crashes and is restarted)."""

    def on_receive(self, message: Any) -> Any:
        raise RuntimeError("matplotlib blew up")


@dataclass
class World:
    clock: ManualClock
    emulator: TelegramEmulator
    store: StoreHandle
    spans: list[tuple[float, float, str]]

    def tree(
        self, *, dpi: int = 110, top_n: int = 5, renderer: type[ChartRenderer] = TimedRenderer
    ) -> Tree:
        spec = supervisor(
            "root",
            [
                worker(
                    "sender",
                    Sender,
                    store=self.store,
                    settings=SenderSettings(),
                    telegram=TelegramSettings(bot_token=Secret(TOKEN)),
                    base_url=self.emulator.base_url,
                    base_file_url=self.emulator.base_file_url,
                ),
                worker("multipliers", MultipliersStub),
                worker(
                    "charts",
                    ThreadIsland,
                    worker=renderer,
                    worker_args={"spans": self.spans, "dpi": dpi},
                ),
                worker(
                    "reports",
                    Reports,
                    store=self.store,
                    settings=ReportsSettings(daily_at="20:00", best_at="21:00", top_n=top_n),
                ),
            ],
            max_restarts=10,
            period=10,
            backoff=NO_BACKOFF,
        )
        return Tree(spec, ActorSystem(self.clock))

    def photos(self, chat_id: int) -> list[Any]:
        return [s for s in self.emulator.sent(chat_id) if s.method == "sendPhoto"]

    def png(self, chat_id: int, index: int = -1) -> tuple[bytes, int, int]:
        """The image Telegram keeps for a photo the bot sent: (bytes, width, height)."""
        sent = self.photos(chat_id)[index]
        message = self.emulator.message(chat_id, sent.message_id)
        assert message is not None
        photo = message["photo"][-1]
        return self.emulator.files[photo["file_id"]].data, photo["width"], photo["height"]


async def advance_until(
    clock: ManualClock, condition: Callable[[], bool], *, step: float = 0.1, timeout: float = 30
) -> None:
    """Move virtual time in small steps (the sender paces on it) until ``condition`` holds."""
    with anyio.fail_after(timeout):
        while not condition():
            await clock.advance(step)
            await anyio.sleep(0.005)
