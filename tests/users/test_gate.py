"""The notify gate: one notification per (user, token) however often it is claimed, its
history row recorded with the claim, and claims that wait out a Redis outage (or are given
up, and counted)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from actors.notify_gate import GATE_COUNTS, GATE_IDLE, NotifyGate
from actors.store.handle import StoreHandle
from actors.store.outbox import GROUP_MARK, expand_groups
from actors.user_store import notified_key
from messages.delivery import Lane, Outbound
from messages.tracking import Track
from messages.users import Passed, Passes
from messages.wire import TokenEvent
from runtime import ActorSystem, ManualClock
from supervisors import NO_BACKOFF, Strategy, Tree, supervisor, worker
from tests.helpers import published_store
from tests.users.support import Collect, token_event

pytestmark = pytest.mark.anyio

DAY = 86400.0


STREAM = "test:history"


def event(address: str, now: float) -> TokenEvent:
    return token_event(address, [(1, 10)], now=now, fdv=1e6, symbol="PEPE")


def passes(now: float, *claims: tuple[int, str]) -> Passes:
    """The shards' message: (user, token address) pairs, one `Passed` per token."""
    by_token: dict[str, list[int]] = {}
    for user, address in claims:
        by_token.setdefault(address, []).append(user)
    return Passes(
        passed=tuple(
            Passed(
                token_event(address, [(1, 10)], now=now, fdv=1e6, symbol="PEPE"), "hi", tuple(users)
            )
            for address, users in by_token.items()
        ),
        now=now,
        routed_at=0.0,
    )


def tree(
    store: StoreHandle,
    clock: ManualClock,
    sent: list[Any],
    tracked: list[Any],
    max_batch: int = 256,
) -> Tree:
    spec = supervisor(
        "root",
        [
            worker("sender", Collect, sink=sent),
            worker("multipliers", Collect, sink=tracked),
            worker(
                "notify-gate",
                NotifyGate,
                store=store,
                history_stream=STREAM,
                max_wait=30.0,
                retry_s=0.5,
                max_batch=max_batch,
            ),
        ],
        strategy=Strategy.ONE_FOR_ONE,
        backoff=NO_BACKOFF,
    )
    return Tree(spec, ActorSystem(clock))


async def test_duplicate_claims_release_one_notification_each(redis_url: str) -> None:
    clock = ManualClock()
    sent: list[Any] = []
    tracked: list[Any] = []
    async with (
        published_store(redis_url, "") as store,
        tree(store, clock, sent, tracked).running() as t,
    ):
        gate = t.lookup("notify-gate")
        now = clock.wall()
        for _ in range(3):
            gate.tell_nowait(passes(now, (1, "AAA")))
        gate.tell_nowait(passes(now, (2, "AAA"), (1, "AAA"), (2, "AAA")))
        await gate.ask(GATE_IDLE)
        gate.tell_nowait(passes(now + 60, (1, "AAA")))  # a later batch, same answer
        await gate.ask(GATE_IDLE)
        await t.lookup("sender").ask("sync")
        await t.lookup("multipliers").ask("sync")
        counts = await gate.ask(GATE_COUNTS)
    assert sorted(o.chat_id for o in sent) == [1, 2]
    assert all(isinstance(o, Outbound) and o.lane is Lane.ALERT for o in sent)
    assert sent[0].dedup_key == f"call:{sent[0].chat_id}:solana:AAA"
    assert sorted(t.user_id for t in tracked) == [1, 2]
    assert tracked[0] == Track(
        token_key="solana:AAA",
        user_id=tracked[0].user_id,
        fdv_at_notify=1e6,
        symbol="PEPE",
        chain="solana",
    )
    assert (counts["won"], counts["lost"]) == (2, 5)  # user 2 named twice in one event: told once
    sync = redis.Redis.from_url(redis_url)
    # the raw fields: an entry holds one batch, a "g" group of rows per event
    raw = sync.eval(
        "local out = {} for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do "
        "for i = 1, #e[2] do out[#out + 1] = e[2][i] end end return out",
        1,
        STREAM,
    )
    assert set(raw[0::2]) == {b"g"}
    raw = expand_groups([GROUP_MARK + group for group in raw[1::2]])
    history = [json.loads(row.split(b"\t", 2)[2]) for row in raw]
    assert sorted((h["chat_id"], h["token_key"], h["kind"]) for h in history) == [
        (1, "solana:AAA", "call"),
        (2, "solana:AAA", "call"),
    ]  # one row per notification, recorded with its claim
    # the processed-token memory: who was told about the token, until when
    stored = sync.zrange(notified_key("solana:AAA"), 0, -1, withscores=True)
    assert stored == [(b"1", int(now + 14 * DAY)), (b"2", int(now + 14 * DAY))]
    assert 14 * DAY < sync.ttl(notified_key("solana:AAA")) <= 14 * DAY + 1


async def test_a_token_for_many_users_across_small_batches(redis_url: str) -> None:
    """One token passing 40 users, claimed seven at a time among other tokens' claims: each
    user is told once; 14 days later the same users are told again and the expired members
    leave the token's set."""
    clock = ManualClock()
    sent: list[Any] = []
    tracked: list[Any] = []
    key = notified_key("solana:MANY")
    async with published_store(redis_url, "") as store:
        client = store.redis()
        async with tree(store, clock, sent, tracked, max_batch=7).running() as t:
            gate = t.lookup("notify-gate")
            now = clock.wall()
            gate.tell_nowait(passes(now, *((u, "MANY") for u in range(1, 11))))
            gate.tell_nowait(
                passes(now, *((u, "MANY") for u in range(1, 41)), (7, "OTHER"), (8, "OTHER"))
            )
            await gate.ask(GATE_IDLE)
            first = await gate.ask(GATE_COUNTS)
            members = await client.zrange(key, 0, -1, withscores=True)

            await clock.advance(14 * DAY)
            later = clock.wall()
            gate.tell_nowait(passes(later, (3, "MANY"), (41, "MANY")))
            await gate.ask(GATE_IDLE)
            await t.lookup("sender").ask("sync")
            second = await gate.ask(GATE_COUNTS)
            after = await client.zrange(key, 0, -1, withscores=True)
    assert (first["won"], first["lost"]) == (42, 10)
    assert sorted(int(m) for m, _ in members) == list(range(1, 41))
    assert {score for _, score in members} == {int(now + 14 * DAY)}
    assert (second["won"], second["lost"]) == (44, 10)  # both told: 3's claim had expired
    assert sorted((int(m), score) for m, score in after) == [
        (3, int(later + 14 * DAY)),
        (41, int(later + 14 * DAY)),
    ]
    keys = [(o.chat_id, o.dedup_key) for o in sent]
    assert len(keys) == 44 and len(set(keys[:42])) == 42


async def test_claims_wait_out_a_redis_outage_or_are_given_up(redis_url: str) -> None:
    store = StoreHandle(redis_url, "")  # nothing published: Redis is "down"
    client = aioredis.Redis.from_url(redis_url)
    clock = ManualClock()
    sent: list[Any] = []
    try:
        async with tree(store, clock, sent, []).running() as t:
            gate = t.lookup("notify-gate")
            gate.tell_nowait(passes(clock.wall(), (1, "AAA")))
            await clock.advance(5)  # retried ten times, still down
            assert sent == [] and (await gate.ask(GATE_COUNTS))["pending"] == 1

            store.publish_redis(client)  # back
            await clock.advance(0.5)
            await gate.ask(GATE_IDLE)
            await t.lookup("sender").ask("sync")
            assert [o.chat_id for o in sent] == [1]

            store.publish_redis(None)  # down again, for longer than a claim may wait
            gate.tell_nowait(passes(clock.wall(), (2, "BBB")))
            await clock.advance(31)
            await gate.ask(GATE_IDLE)
            counts = await gate.ask(GATE_COUNTS)
            assert (counts["dropped"], counts["pending"]) == (1, 0)

            store.publish_redis(client)
            await clock.advance(1)
            await t.lookup("sender").ask("sync")
            assert [o.chat_id for o in sent] == [1]  # the given-up claim was never sent
    finally:
        await client.aclose()
