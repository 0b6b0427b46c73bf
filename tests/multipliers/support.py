"""Test actors and helpers for the multiplier actor: a Redis owner, a recording sender,
an in-memory store (for the trio runs, where redis.asyncio cannot go), price updates."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from actors.multipliers import Multipliers, StoredToken, TokenWrite
from actors.store.handle import StoreHandle
from messages.delivery import Outbound
from messages.status import ActorStatus
from messages.wire import PriceUpdate
from runtime import Actor
from supervisors import Backoff, Strategy, Tree, supervisor, worker
from supervisors.spec import ChildSpec

_seq = itertools.count(1)

FAST_RESTARTS = Backoff(initial=0.02, maximum=0.2, jitter=0.0, reset_after=5.0)


def price(token_key: str, fdv: float) -> PriceUpdate:
    chain, address = token_key.split(":", 1)
    seq = next(_seq)
    return PriceUpdate(
        v=1,
        event_id=f"p{seq}",
        seq=seq,
        emitted_at=1_700_000_000.0,
        chain_id=chain,
        token_address=address,
        pair_address=address + "pair",
        price_usd="1.0",
        fdv=fdv,
        market_cap=fdv,
        liquidity_usd=10_000.0,
        volume_h24=1_000.0,
    )


class RedisOwner(Actor):
    """What the store's Redis owner does: publish a client, crash when Redis goes away."""

    def __init__(self, handle: StoreHandle, url: str, ping_every: float | None = 0.05) -> None:
        self.handle = handle
        self.url = url
        self.ping_every = ping_every
        self.client: aioredis.Redis | None = None

    async def started(self) -> None:
        client = aioredis.Redis.from_url(
            self.url, socket_timeout=2, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        self.client = client
        await client.ping()
        self.handle.publish_redis(client)

    async def run(self) -> None:
        if self.ping_every is None:  # under a ManualClock: no watch, it would spin
            await self.ctx.process(self)
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch)
            await self.ctx.process(self)
            tg.cancel_scope.cancel()

    async def _watch(self) -> None:
        assert self.client is not None
        while True:
            assert self.ping_every is not None
            await self.ctx.clock.sleep(self.ping_every)
            await self.client.ping()

    async def stopped(self) -> None:
        self.handle.publish_redis(None)
        if self.client is not None:
            await self.client.aclose()


class Recorder(Actor):
    """Stands in for the sender: keeps every Outbound; ``verify`` may check each one."""

    def __init__(
        self,
        sink: list[Outbound],
        verify: Callable[[Outbound], str | None] | None = None,
        problems: list[str] | None = None,
    ) -> None:
        self.sink = sink
        self.verify = verify
        self.problems = problems if problems is not None else []

    async def receive(self, message: Any) -> Any:
        if isinstance(message, Outbound):
            if self.verify is not None:
                problem = self.verify(message)
                if problem:
                    self.problems.append(problem)
            self.sink.append(message)
        return None


class MemoryStore:
    """A MultiplierStore in a dict; ``gate`` holds writes back, ``fail_writes`` breaks them."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, str, float]] = {}
        self.gate: anyio.Event | None = None
        self.fail_writes = 0
        self.writes = 0

    async def scan(self, count: int) -> AsyncIterator[list[StoredToken]]:
        items = [StoredToken(k, blob, sym) for k, (blob, sym, _) in self.data.items()]
        for start in range(0, len(items), max(1, count)):
            await anyio.lowlevel.checkpoint()
            yield items[start : start + count]

    async def write(self, writes: Sequence[TokenWrite]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_writes:
            self.fail_writes -= 1
            raise ConnectionError("store went away")
        for w in writes:
            if w.blob:
                self.data[w.token_key] = (w.blob, w.symbol, w.ttl_s)
            else:
                self.data.pop(w.token_key, None)
        self.writes += 1


def status_of(tree: Tree, name: str) -> ActorStatus:
    """The status snapshot of the actor called ``name`` in the tree."""

    def walk(node: ActorStatus) -> ActorStatus | None:
        if node.name == name:
            return node
        for child in node.children:
            found = walk(child)
            if found is not None:
                return found
        return None

    found = walk(tree.status())
    assert found is not None, name
    return found


def tree_spec(
    store: StoreHandle | MemoryStore,
    sink: list[Outbound],
    *,
    redis_url: str | None = None,
    verify: Callable[[Outbound], str | None] | None = None,
    problems: list[str] | None = None,
    ping_every: float | None = 0.05,
    **multipliers: Any,
) -> ChildSpec:
    children = []
    if redis_url is not None:
        assert isinstance(store, StoreHandle)
        children.append(
            worker("redis", RedisOwner, handle=store, url=redis_url, ping_every=ping_every)
        )
    children += [
        worker("sender", Recorder, sink=sink, verify=verify, problems=problems),
        worker("multipliers", Multipliers, store=store, **multipliers),
    ]
    return supervisor(
        "root",
        children,
        strategy=Strategy.ONE_FOR_ONE,
        max_restarts=200,
        period=10.0,
        backoff=FAST_RESTARTS,
    )
