"""The notify gate: one notification per (user, token) however often it is claimed, and
claims that wait out a Redis outage (or are given up, and said so)."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from actors.notify_gate import GATE_COUNTS, GATE_IDLE, NotifyGate
from actors.store.handle import StoreHandle
from actors.user_store import accepted_key
from messages.delivery import Lane, Outbound
from messages.tracking import Track
from messages.users import Claim, ClaimDropped
from runtime import ActorSystem, ManualClock
from supervisors import NO_BACKOFF, Strategy, Tree, supervisor, worker
from tests.users.support import Collect

pytestmark = pytest.mark.anyio

DAY = 86400.0


def claim(user: int, token: str, now: float, reply_to: object = None) -> Claim:
    return Claim(
        user_id=user,
        token_key=token,
        now=now,
        expires_at=now + 14 * DAY,
        outbound=Outbound(
            chat_id=user, text="hi", lane=Lane.ALERT, dedup_key=f"call:{user}:{token}"
        ),
        track=Track(
            token_key=token, user_id=user, fdv_at_notify=1e6, symbol="PEPE", chain="solana"
        ),
        reply_to=reply_to,
    )


def tree(
    store: StoreHandle, clock: ManualClock, sent: list[Any], tracked: list[Any], probe: list[Any]
) -> Tree:
    spec = supervisor(
        "root",
        [
            worker("sender", Collect, sink=sent),
            worker("multipliers", Collect, sink=tracked),
            worker("probe", Collect, sink=probe),
            worker("notify-gate", NotifyGate, store=store, max_wait=30.0, retry_s=0.5),
        ],
        strategy=Strategy.ONE_FOR_ONE,
        backoff=NO_BACKOFF,
    )
    return Tree(spec, ActorSystem(clock))


async def test_duplicate_claims_release_one_notification_each(redis_url: str) -> None:
    store = StoreHandle(redis_url, "")
    client = aioredis.Redis.from_url(redis_url)
    store.publish_redis(client)
    clock = ManualClock()
    sent: list[Any] = []
    tracked: list[Any] = []
    try:
        async with tree(store, clock, sent, tracked, []).running() as t:
            gate = t.lookup("notify-gate")
            now = clock.wall()
            for _ in range(3):
                gate.tell_nowait(claim(1, "solana:AAA", now))
            gate.tell_nowait(claim(2, "solana:AAA", now))
            await gate.ask(GATE_IDLE)
            gate.tell_nowait(claim(1, "solana:AAA", now + 60))  # a later batch, same answer
            await gate.ask(GATE_IDLE)
            await t.lookup("sender").ask("sync")
            await t.lookup("multipliers").ask("sync")
            counts = await gate.ask(GATE_COUNTS)
    finally:
        await client.aclose()
    assert sorted(o.chat_id for o in sent) == [1, 2]
    assert sorted(t.user_id for t in tracked) == [1, 2]
    assert (counts["won"], counts["lost"]) == (2, 3)
    stored = redis.Redis.from_url(redis_url).hget(accepted_key(1), "solana:AAA")
    assert isinstance(stored, bytes)
    expires, fdv, at, symbol = stored.decode().split(" ", 3)
    assert (int(expires), float(fdv), int(at), symbol) == (
        int(now + 14 * DAY),
        1e6,
        int(now),
        "PEPE",
    )


async def test_claims_wait_out_a_redis_outage_or_are_given_up(redis_url: str) -> None:
    store = StoreHandle(redis_url, "")  # nothing published: Redis is "down"
    client = aioredis.Redis.from_url(redis_url)
    clock = ManualClock()
    sent: list[Any] = []
    probe: list[Any] = []
    try:
        async with tree(store, clock, sent, [], probe).running() as t:
            gate = t.lookup("notify-gate")
            reply_to = t.lookup("probe")
            gate.tell_nowait(claim(1, "solana:AAA", clock.wall(), reply_to))
            await clock.advance(5)  # retried ten times, still down
            assert sent == [] and (await gate.ask(GATE_COUNTS))["pending"] == 1

            store.publish_redis(client)  # back
            await clock.advance(0.5)
            await gate.ask(GATE_IDLE)
            await t.lookup("sender").ask("sync")
            assert [o.chat_id for o in sent] == [1]

            store.publish_redis(None)  # down again, for longer than a claim may wait
            gate.tell_nowait(claim(2, "solana:BBB", clock.wall(), reply_to))
            await clock.advance(31)
            await gate.ask(GATE_IDLE)
            await t.lookup("probe").ask("sync")
            assert probe == [ClaimDropped("solana:BBB")]
            counts = await gate.ask(GATE_COUNTS)
            assert (counts["dropped"], counts["pending"]) == (1, 0)

            store.publish_redis(client)
            await clock.advance(1)
            await t.lookup("sender").ask("sync")
            assert [o.chat_id for o in sent] == [1]  # the given-up claim was never sent
    finally:
        await client.aclose()
