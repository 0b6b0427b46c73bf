"""The sender's durable outbox against a real Redis."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from actors.sender_outbox import Outbox, Record
from actors.store.handle import StoreHandle, StoreUnavailable
from messages.delivery import Lane, Outbound
from tests.sender.support import store

pytestmark = pytest.mark.anyio


def record(i: int, **fields: object) -> Record:
    o = Outbound(chat_id=100 + i, text=f"<b>{i}</b>", lane=Lane.ALERT, **fields)  # type: ignore[arg-type]
    return Record(id=f"m{i}", outbound=o, accepted_at=1_000.0 + i, seq=i)


async def test_round_trip_in_order_with_unknown_fate(redis_url: str) -> None:
    async with store(redis_url) as handle:
        box = Outbox(handle, "t:sender")
        photo = record(3, photo=b"\x89PNG\x00\xff", reply_markup={"inline_keyboard": []})
        assert await box.save([record(2), record(1), photo]) == [True, True, True]
        await box.mark_in_flight(["m1", "gone"], 5.0)
        loaded = await box.load()
        assert [r.id for r in loaded.records] == ["m1", "m2", "m3"]
        assert loaded.records[2] == photo
        assert loaded.unknown_fate == frozenset({"m1"})
        client = handle.redis()
        assert await client.hkeys("t:sender:inflight") == [b"m1"]  # the orphan mark is gone
        await box.finish(["m1"], [])
        await box.finish([], ["m2"])
        loaded = await box.load()
        assert [r.id for r in loaded.records] == ["m2", "m3"]
        assert loaded.unknown_fate == frozenset()


async def test_dedup_key_is_claimed_once_and_saving_again_is_harmless(redis_url: str) -> None:
    async with store(redis_url) as handle:
        box = Outbox(handle, "t:sender", dedup_ttl_s=60)
        first = record(1, dedup_key="notify:1:tok")
        again = Record(id="m9", outbound=first.outbound, accepted_at=2_000.0, seq=9)
        assert await box.save([first]) == [True]
        assert await box.save([first]) == [True]  # a batch retried after a lost connection
        assert await box.save([again]) == [False]
        ttl = await handle.redis().ttl("t:sender:dedup:notify:1:tok")
        assert 0 < ttl <= 60
        assert [r.id for r in (await box.load()).records] == ["m1"]


async def test_corrupt_records_are_counted_and_removed(redis_url: str) -> None:
    async with store(redis_url) as handle:
        box = Outbox(handle, "t:sender")
        await box.save([record(1)])
        await handle.redis().hset("t:sender:pending", "bad", "{not json")
        loaded = await box.load()
        assert loaded.corrupt == 1
        assert [r.id for r in loaded.records] == ["m1"]
        assert await handle.redis().hkeys("t:sender:pending") == [b"m1"]


async def test_works_with_a_decoding_client(redis_url: str) -> None:
    client = aioredis.from_url(redis_url, decode_responses=True)
    handle = StoreHandle(redis_url, "")
    handle.publish_redis(client)
    try:
        box = Outbox(handle, "t:sender")
        await box.save([record(1, photo=b"\x00\x01")])
        await box.mark_in_flight(["m1"], 1.0)
        loaded = await box.load()
        assert loaded.records[0].outbound.photo == b"\x00\x01"
        assert loaded.unknown_fate == frozenset({"m1"})
    finally:
        await client.aclose()


async def test_store_down_raises_at_once() -> None:
    box = Outbox(StoreHandle("redis://127.0.0.1:1/0", ""))
    with pytest.raises(StoreUnavailable):
        await box.save([record(1)])
