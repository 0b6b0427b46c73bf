"""A running callwatch slice for end-to-end bot and admin tests.

The real actors (store owners and outbox writer, channel-stats, multipliers, sender, the
users branch, payments, bot, admin, control server) on real Redis and PostgreSQL, talking
to the Telegram Bot API emulator through python-telegram-bot. Limits are enforced by the
emulator; the sender is configured with the same limits (raised where a test says so).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import asyncpg
import httpx
from prometheus_client import CollectorRegistry

from actors.admin import AdminActor, AdminGateway
from actors.bot import STATS, TelegramBot
from actors.channel_stats import ChannelStatsActor
from actors.control import Control
from actors.filter_router import COUNTS as ROUTER_COUNTS
from actors.filter_shard import COUNTS as SHARD_COUNTS
from actors.filter_shard import shard_name
from actors.ingest import Ingest
from actors.multipliers import Multipliers
from actors.notify_gate import GATE_IDLE
from actors.payments import Payments
from actors.sender import Sender
from actors.store.handle import StoreHandle
from actors.store.tree import store_subtree
from actors.user_directory import users_branch
from callwatch.admin_cli import admin_cli
from messages.ingest import IngestStatus
from messages.settings import (
    FeedSettings,
    FilterSettingsSection,
    PaymentsSettings,
    Secret,
    SenderSettings,
    StoreSettings,
    TelegramSettings,
)
from messages.users import GetStatus
from messages.wire import PriceUpdate, TokenEvent
from runtime import ActorSystem
from sandbox.feed.server import FeedServer
from sandbox.telegram import SentMessage, TelegramEmulator
from supervisors import Backoff, ChildSpec, Strategy, Tree, supervisor, worker
from tests.users import support as users_support

TOKEN = "123456:TEST-TOKEN"
CONTROL_TOKEN = "control-test-token-0123456789"
ADMIN = 900_001
WALLET = "1" * 32
GOOD_CHANNEL = 11
POOR_CHANNEL = 12
FAST = Backoff(initial=0.05, maximum=0.2, jitter=0.1, reset_after=30.0)

_seq = itertools.count(1)


def token_event(
    address: str, channels: Sequence[int], *, fdv: float = 500_000.0, symbol: str = "TKN"
) -> TokenEvent:
    """A token event called a minute ago by ``channels``."""
    calls = [(cid, 60.0) for cid in channels]
    return users_support.token_event(address, calls, now=time.time(), fdv=fdv, symbol=symbol)


def price_update(address: str, fdv: float) -> PriceUpdate:
    seq = next(_seq)
    return PriceUpdate(
        v=1,
        event_id=f"p{seq}",
        seq=seq,
        emitted_at=time.time(),
        chain_id="solana",
        token_address=address,
        pair_address=address + "pair",
        price_usd="0.001",
        fdv=fdv,
        market_cap=fdv,
        liquidity_usd=50_000.0,
        volume_h24=10_000.0,
    )


@dataclass
class World:
    emu: TelegramEmulator
    tree: Tree
    handle: StoreHandle
    database_url: str
    control: list[str]
    http: httpx.AsyncClient
    filters: FilterSettingsSection = field(default_factory=FilterSettingsSection)
    feed: FeedServer | None = None
    published: dict[str, int] = field(default_factory=lambda: {"token_event": 0, "price": 0})

    @property
    def control_url(self) -> str:
        return self.control[0]

    def lookup(self, name: str) -> Any:
        return self.tree.lookup(name)

    def sent(self, chat: int) -> list[SentMessage]:
        return self.emu.sent(chat)

    async def say(self, chat: int, text: str, *, timeout: float = 10.0, **kw: Any) -> SentMessage:
        """The user of ``chat`` writes ``text``; returns the next message the bot sends."""
        before = len(self.emu.sent(chat))
        self.emu.push_message(chat, text, **kw)
        got = await self.emu.wait_sent(chat, before + 1, timeout)
        return got[before]

    async def press(self, chat: int, message_id: int, data: str, *, timeout: float = 10.0) -> None:
        """Press a button and wait until the bot answered the press."""
        calls = self._answered()
        self.emu.push_callback(chat, message_id, data)
        await self.emu.wait_until(lambda: self._answered() > calls, timeout)

    def _answered(self) -> int:
        return self.emu.counters.by_method.get("answerCallbackQuery", 0)

    async def wait_text(
        self, chat: int, message_id: int, needle: str, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Wait until message ``message_id`` (after edits) contains ``needle``."""

        def has() -> bool:
            message = self.emu.message(chat, message_id) or {}
            return needle in str(message.get("text", ""))

        await self.emu.wait_until(has, timeout)
        return self.emu.message(chat, message_id) or {}

    async def publish(self, address: str, channels: Sequence[int], symbol: str) -> None:
        """A token event called by ``channels`` one minute ago: from the sandbox feed
        through ingest when the world has one, else told to the router as ingest would."""
        if self.feed is None:
            await self.lookup("filters").tell(token_event(address, channels, symbol=symbol))
            return
        now = time.time()
        await self.feed.publish_token_event(
            chain="solana",
            token_address=address,
            symbol=symbol,
            fdv=500_000.0,
            calls=[
                {"channel_id": c, "username": f"chan{c}", "called_at": now - 60} for c in channels
            ],
        )
        self.published["token_event"] += 1

    async def price(self, address: str, fdv: float) -> None:
        if self.feed is None:
            await self.lookup("multipliers").tell(price_update(address, fdv))
            return
        await self.feed.publish_price("solana", address, fdv)
        self.published["price"] += 1

    async def settle(self, users: Sequence[int] = ()) -> None:
        """Everything published so far went through the filter pipeline."""
        if self.feed is not None:
            ingest = self.lookup("ingest")

            async def forwarded() -> bool:
                report = await ingest.ask(IngestStatus())
                return bool(report.forwarded.get("token_event", 0) >= self.published["token_event"])

            await until(forwarded)
        await self.lookup("filters").ask(ROUTER_COUNTS)
        for index in range(self.filters.shards):
            await self.lookup(shard_name(index)).ask(SHARD_COUNTS)
        for user in users:
            await self.lookup(f"user:{user}").ask(GetStatus(user))
        await self.lookup("notify-gate").ask(GATE_IDLE)

    async def bot_stats(self) -> dict[str, int]:
        stats: dict[str, int] = await self.lookup("bot").ask(STATS)
        return stats

    async def admin(self, command: str, **args: Any) -> dict[str, Any]:
        """An admin command through ``POST /admin``, as ``callwatch admin`` sends it."""
        return await admin_cli(self.control_url, CONTROL_TOKEN, command, args, client=self.http)

    async def sql(self, query: str, *args: Any) -> list[Any]:
        conn = await asyncpg.connect(self.database_url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()


async def seed_history(database_url: str, records: dict[int, tuple[int, int, float]]) -> None:
    """Calls in ``calls_history`` so channel-stats computes known numbers at its first
    refresh: per channel (calls, wins, peak multiple of the winners), all two days old."""
    now = time.time()
    rows = []
    for channel_id, (calls, wins, multiple) in records.items():
        for i in range(calls):
            called = now - 2 * 86400 - i * 60
            won = i < wins
            rows.append(
                (
                    f"seed:{channel_id}:{i}",
                    f"seed-event-{channel_id}-{i}",
                    str(channel_id),
                    f"chan{channel_id}",
                    f"solana:Seed{channel_id}x{i}",
                    "solana",
                    "SEED",
                    datetime.fromtimestamp(called, UTC),
                    100_000.0,
                    100_000.0 * (multiple if won else 1.0),
                    datetime.fromtimestamp(called + 3600, UTC),
                )
            )
    conn = await asyncpg.connect(database_url)
    try:
        await conn.executemany(
            "INSERT INTO calls_history (dedup_key, event_id, channel_id, channel_username,"
            " token_key, chain, symbol, called_at, fdv_at_call, peak_fdv, peak_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            rows,
        )
    finally:
        await conn.close()


DEFAULT_HISTORY: dict[int, tuple[int, int, float]] = {
    GOOD_CHANNEL: (10, 7, 4.0),
    POOR_CHANNEL: (10, 3, 2.0),
}


@asynccontextmanager
async def world(
    redis_url: str,
    database_url: str,
    *,
    admins: Sequence[int] = (ADMIN,),
    global_rate: float = 500.0,
    private_interval: float = 0.1,
    bot_options: dict[str, Any] | None = None,
    history: dict[int, tuple[int, int, float]] | None = None,
    feed: bool = False,
) -> AsyncIterator[World]:
    """Start the emulator and the tree; yield a `World`; stop both."""
    await seed_history(database_url, DEFAULT_HISTORY if history is None else history)
    emu = TelegramEmulator(token=TOKEN, global_rate=global_rate, private_interval=private_interval)
    await emu.start()
    handle = StoreHandle(redis_url, database_url, call_timeout=2.0)
    telegram = TelegramSettings(
        bot_token=Secret(TOKEN),
        api_base_url=emu.base_url,
        admin_chat_ids=tuple(admins),
        poll_timeout=5.0,
    )
    filters = FilterSettingsSection(shards=2)
    gateway = AdminGateway(timeout=30.0)
    bound: list[str] = []
    store = StoreSettings(watch_interval=0.2, outbox_block_ms=50)
    server: FeedServer | None = None
    ingest: list[ChildSpec] = []
    if feed:
        server = FeedServer(rate=0, seed=1)
        await server.start()
        ingest.append(
            worker(
                "ingest",
                Ingest,
                store=handle,
                url=server.url,
                token_targets=("filters",),
                price_targets=("multipliers", "channel-stats"),
                settings=FeedSettings(url=server.url, connect_timeout=5.0),
                save_interval=0.2,
            )
        )
    spec = supervisor(
        "root",
        [
            store_subtree(handle, store, backoff=FAST),
            worker("channel-stats", ChannelStatsActor, store=handle, config=filters),
            worker("multipliers", Multipliers, store=handle),
            worker(
                "sender",
                Sender,
                store=handle,
                settings=SenderSettings(
                    global_rate=global_rate, private_interval=private_interval, in_flight=8
                ),
                telegram=telegram,
                base_url=emu.base_url,
                base_file_url=emu.base_file_url,
            ),
            users_branch(handle, filters),
            worker(
                "payments",
                Payments,
                store=handle,
                settings=PaymentsSettings(wallet=WALLET, solana_rpc_url="http://127.0.0.1:9"),
            ),
            worker(
                "bot",
                TelegramBot,
                telegram=telegram,
                base_url=emu.base_url,
                base_file_url=emu.base_file_url,
                store=handle,
                **(bot_options or {}),
            ),
            worker(
                "admin", AdminActor, store=handle, admin_chat_ids=tuple(admins), gateway=gateway
            ),
            worker(
                "control",
                Control,
                host="127.0.0.1",
                port=0,
                token=Secret(CONTROL_TOKEN),
                admin=gateway.handle,
                on_bound=bound.append,
                registry=CollectorRegistry(),
            ),
            *ingest,
        ],
        strategy=Strategy.ONE_FOR_ONE,
        max_restarts=20,
        period=10,
        backoff=FAST,
    )
    try:
        async with (
            httpx.AsyncClient(timeout=30.0) as http,
            Tree(spec, ActorSystem()).running() as tree,
        ):
            yield World(emu, tree, handle, database_url, bound, http, filters, server)
    finally:
        await emu.stop()
        if server is not None:
            await server.stop()


async def until(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, every: float = 0.02
) -> None:
    """Poll an async condition (a database row, an actor's answer) until it holds."""
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(every)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]
