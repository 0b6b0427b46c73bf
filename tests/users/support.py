"""Test harness of the users flow: the real users branch on real Redis and PostgreSQL,
with recording stand-ins for ``sender`` and ``multipliers`` (not under test here)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from actors.filter_router import COUNTS as ROUTER_COUNTS
from actors.filter_router import FLUSH as ROUTER_FLUSH
from actors.filter_router import RouterCounts
from actors.filter_shard import COUNTS as SHARD_COUNTS
from actors.filter_shard import ShardCounts, shard_name
from actors.multipliers import Multipliers
from actors.notify_gate import GATE_IDLE
from actors.store.handle import StoreHandle
from actors.store.postgres_owner import PostgresOwner
from actors.store.redis_owner import RedisOwner
from actors.user import user_name
from actors.user_directory import users_branch
from actors.user_store import to_wall
from messages.delivery import Outbound, Outbounds
from messages.filters import ChannelStats, FilterSettings, encode_settings
from messages.settings import FilterSettingsSection, StoreSettings
from messages.tracking import Track, TrackedBy, TrackMany
from messages.users import GetStatus, StatsSnapshot
from messages.wire import ChannelCall, TokenEvent
from runtime import Actor, ActorSystem, ManualClock
from supervisors import NO_BACKOFF, Strategy, Tree, supervisor, worker
from supervisors.spec import ChildSpec

_seq = itertools.count(1)

WALL0 = 1_750_000_000.0
"""ManualClock's wall time at start (its default)."""

QUIET_STORE = StoreSettings(watch_interval=86400.0)
"""Store owners that do not probe under a ManualClock (advancing days would wake them)."""


class Collect(Actor):
    """Stands in for ``sender`` or ``multipliers``: keeps what it is told (the items of a
    batch one by one)."""

    def __init__(self, sink: list[Any]) -> None:
        self.sink = sink

    async def receive(self, message: Any) -> Any:
        if message == "sync":
            return len(self.sink)
        if isinstance(message, Outbounds | TrackMany):
            self.sink.extend(message.items)
        else:
            self.sink.append(message)
        return None


class StatsStub(Actor):
    """Stands in for ``channel-stats`` where it is not under test: takes calls, answers
    nothing (snapshots are told to the router by the test)."""

    def __init__(self, sink: list[Any]) -> None:
        self.sink = sink

    async def receive(self, message: Any) -> Any:
        self.sink.append(message)
        return None


@dataclass
class Harness:
    store: StoreHandle
    clock: ManualClock
    config: FilterSettingsSection
    outbound: list[Outbound] = field(default_factory=list)
    tracks: list[Track] = field(default_factory=list)
    stats_seen: list[Any] = field(default_factory=list)
    tree: Tree | None = None
    real_multipliers: bool = False
    """The real multiplier actor (it answers /tracked) instead of the recording stand-in."""

    def spec(self, extra: Sequence[ChildSpec] = (), stats_stub: bool = True) -> ChildSpec:
        children: list[ChildSpec] = [
            worker("redis", RedisOwner, store=self.store, settings=QUIET_STORE),
            worker("postgres", PostgresOwner, store=self.store, settings=QUIET_STORE),
            worker("sender", Collect, sink=self.outbound),
            worker("multipliers", Multipliers, store=self.store)
            if self.real_multipliers
            else worker("multipliers", Collect, sink=self.tracks),
        ]
        if stats_stub:
            children.append(worker("channel-stats", StatsStub, sink=self.stats_seen))
        children += [*extra, users_branch(self.store, self.config)]
        return supervisor(
            "root", children, strategy=Strategy.REST_FOR_ONE, max_restarts=5, backoff=NO_BACKOFF
        )

    @asynccontextmanager
    async def running(self, **kwargs: Any) -> AsyncIterator[Tree]:
        tree = Tree(self.spec(**kwargs), ActorSystem(self.clock))
        async with tree.running() as running:
            self.tree = running
            try:
                yield running
            finally:
                self.tree = None

    @property
    def now(self) -> float:
        return self.clock.wall()

    def lookup(self, name: str) -> Any:
        assert self.tree is not None
        return self.tree.lookup(name)

    async def stats(self, *channels: ChannelStats, version: int = 1) -> None:
        await self.lookup("filters").ask(
            StatsSnapshot(version=version, computed_at=self.now, stats=channels)
        )

    async def event(self, event: TokenEvent) -> None:
        await self.lookup("filters").tell(event)

    async def settle(self, users: Iterable[int] = ()) -> None:
        """Wait until everything told so far went all the way through the flow."""
        await self.lookup("filters").ask(ROUTER_COUNTS)
        for index in range(self.config.shards):
            await self.lookup(shard_name(index)).ask(SHARD_COUNTS)
        for user in users:
            await self.lookup(user_name(user)).ask(GetStatus(user))
        await self.lookup("notify-gate").ask(GATE_IDLE)
        await self.lookup("sender").ask("sync")
        await self.lookup("multipliers").ask(TrackedBy(0) if self.real_multipliers else "sync")

    async def router_counts(self) -> RouterCounts:
        counts: RouterCounts = await self.lookup("filters").ask(ROUTER_COUNTS)
        return counts

    async def shard_events(self) -> int:
        total = 0
        for index in range(self.config.shards):
            counts: ShardCounts = await self.lookup(shard_name(index)).ask(SHARD_COUNTS)
            total += counts.events
        return total

    async def flush_router(self) -> None:
        await self.lookup("filters").ask(ROUTER_FLUSH)

    def notified(self, user: int | None = None) -> list[tuple[int, str]]:
        """(chat_id, token key) of every notification, in order."""
        out = []
        for o in self.outbound:
            assert o.dedup_key is not None
            token = o.dedup_key.split(":", 2)[2]
            if user is None or o.chat_id == user:
                out.append((o.chat_id, token))
        return out


def channel(
    channel_id: int,
    win_rate: float = 60.0,
    avg_gain: float = 3.0,
    *,
    rated: bool = True,
    resolved: int = 20,
) -> ChannelStats:
    return ChannelStats(
        channel_id=channel_id,
        calls=resolved,
        resolved=resolved,
        win_rate=win_rate,
        avg_gain=avg_gain,
        median_gain=avg_gain,
        rated=rated,
        wins=round(resolved * win_rate / 100),
    )


def token_event(
    address: str,
    calls: Sequence[tuple[int, float]],
    *,
    now: float,
    chain: str = "solana",
    fdv: float = 500_000.0,
    symbol: str = "TKN",
) -> TokenEvent:
    """A token event with calls given as (channel_id, seconds ago)."""
    seq = next(_seq)
    return TokenEvent(
        v=1,
        event_id=f"e{seq}",
        seq=seq,
        emitted_at=now,
        chain_id=chain,
        token_address=address,
        pair_address=address + "pair",
        price_usd="0.0005",
        fdv=fdv,
        market_cap=fdv,
        liquidity_usd=50_000.0,
        volume_h24=10_000.0,
        symbol=symbol,
        name=symbol.title(),
        calls=tuple(
            ChannelCall(
                channel_id=cid,
                username=f"chan{cid}",
                message_id=i + 1,
                called_at=now - ago,
                fdv_at_call=fdv,
            )
            for i, (cid, ago) in enumerate(calls)
        ),
    )


async def add_user(
    database_url: str,
    chat_id: int,
    settings: FilterSettings | None = None,
    *,
    subscribed_until: float | None = WALL0 + 30 * 86400,
    starts_at: float = WALL0 - 86400,
    active: bool = True,
    locked: bool = False,
) -> None:
    """A user row, their settings and (by default) a subscription covering the test."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO users (chat_id, username, active, locked) VALUES ($1, $2, $3, $4)",
                chat_id,
                f"user{chat_id}",
                active,
                locked,
            )
            await conn.execute(
                "INSERT INTO settings (chat_id, filters) VALUES ($1, $2::jsonb)",
                chat_id,
                encode_settings(settings or FilterSettings()).decode(),
            )
            if subscribed_until is not None:
                await add_subscription(conn, chat_id, starts_at, subscribed_until)
    finally:
        await conn.close()


async def add_subscription(
    conn: asyncpg.Connection, chat_id: int, starts_at: float, expires_at: float
) -> None:
    await conn.execute(
        "INSERT INTO subscriptions (chat_id, plan, starts_at, expires_at, source) "
        "VALUES ($1, 'monthly', $2, $3, 'admin')",
        chat_id,
        to_wall(starts_at),
        to_wall(expires_at),
    )
