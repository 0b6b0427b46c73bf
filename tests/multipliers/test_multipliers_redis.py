"""The multiplier actor against a real Redis: alerts, persistence, restarts, floods, faults."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import anyio
import pytest
import redis
import redis.asyncio as aioredis
import structlog
from structlog.testing import capture_logs

from actors.multiplier_index import DEFAULT_THRESHOLDS, MultiplierIndex
from actors.multipliers import KEY_PREFIX, TrackedToken, unpack_value
from actors.store.handle import StoreHandle
from messages.delivery import Lane, Outbound
from messages.tracking import Track, TrackedBy, Untrack
from runtime import ActorSystem, ManualClock
from runtime.servers import EmbeddedRedis
from supervisors import Tree
from tests.helpers import eventually
from tests.multipliers.support import price, status_of, tree_spec

pytestmark = pytest.mark.anyio

TOKEN = "solana:So1aPepeTokenMint1111111111111111111111"
OTHER = "ethereum:0xAbCdEf0000000000000000000000000000001234"
DAY = 86_400.0


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def stored_index(client: redis.Redis, token_key: str) -> tuple[MultiplierIndex, str]:
    """The token as Redis has it: an index holding just that token, and its symbol."""
    index = MultiplierIndex()
    value = client.get(KEY_PREFIX + token_key)
    if value is None:
        return index, ""
    blob, symbol = unpack_value(value)
    index.load_token(token_key, bytes(blob))
    return index, symbol


def stored_level(client: redis.Redis, token_key: str, user_id: int) -> float | None:
    """The highest threshold Redis records as sent to this user (None: none, or no entry)."""
    index, _ = stored_index(client, token_key)
    for entry in index.entries_for(token_key):
        if entry.user_id == user_id and entry.highest_index >= 0:
            return DEFAULT_THRESHOLDS[entry.highest_index]
    return None


def stored_users(client: redis.Redis, token_key: str) -> list[int]:
    index, _ = stored_index(client, token_key)
    return sorted(e.user_id for e in index.entries_for(token_key))


def persisted_before_sent(client: redis.Redis) -> Callable[[Outbound], str | None]:
    """Checked by the recording sender as each alert arrives: Redis must already know."""

    def verify(out: Outbound) -> str | None:
        assert out.dedup_key is not None
        body, user, threshold = out.dedup_key.removeprefix("mult:").rsplit(":", 2)
        level = stored_level(client, body, int(user))
        if level is None or level < float(threshold):
            return f"{out.dedup_key} sent while Redis records {level}"
        return None

    return verify


def thresholds_sent(sink: list[Outbound], user_id: int | None = None) -> list[str]:
    return [
        o.dedup_key.rsplit(":", 1)[1]
        for o in sink
        if o.dedup_key and (user_id is None or o.chat_id == user_id)
    ]


async def test_crossing_2x_then_5x_sends_two_alerts_each_after_persisting(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    sink: list[Outbound] = []
    problems: list[str] = []
    handle = StoreHandle(redis_url, "")
    spec = tree_spec(
        handle,
        sink,
        redis_url=redis_url,
        verify=persisted_before_sent(sync_redis),
        problems=problems,
    )
    async with Tree(spec).running() as tree:
        mult = tree.lookup("multipliers")
        assert await mult.ask(
            Track(token_key=TOKEN, user_id=7, fdv_at_notify=100_000, symbol="PEPE")
        )
        mult.tell_nowait(price(TOKEN, 150_000))
        mult.tell_nowait(price(TOKEN, 200_000))
        await eventually(lambda: len(sink) == 1)
        mult.tell_nowait(price(TOKEN, 300_000))
        mult.tell_nowait(price(TOKEN, 510_000))
        await eventually(lambda: len(sink) == 2)
        await mult.ask(TrackedBy(7))
    assert problems == []
    first, second = sink
    assert first.chat_id == 7 and first.lane is Lane.ALERT and first.kind == "multiplier"
    assert first.dedup_key == f"mult:{TOKEN}:7:2" and first.digest_key == "alerts:7"
    assert "<b>PEPE</b> hit <b>2x</b>" in first.text and "$100K → $200K" in first.text
    assert second.dedup_key == f"mult:{TOKEN}:7:5" and "hit <b>5x</b>" in second.text
    assert f'href="https://dexscreener.com/solana/{TOKEN.split(":")[1]}"' in second.text


async def test_jump_from_1x_to_12x_sends_one_alert_naming_10x(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    sink: list[Outbound] = []
    handle = StoreHandle(redis_url, "")
    async with Tree(tree_spec(handle, sink, redis_url=redis_url)).running() as tree:
        mult = tree.lookup("multipliers")
        await mult.ask(Track(token_key=TOKEN, user_id=1, fdv_at_notify=1_000))
        await mult.ask(Track(token_key=TOKEN, user_id=2, fdv_at_notify=4_000))
        mult.tell_nowait(price(TOKEN, 12_000))
        await eventually(lambda: len(sink) == 2)
        # Same price again and a dip: nothing new.
        mult.tell_nowait(price(TOKEN, 12_000))
        mult.tell_nowait(price(TOKEN, 3_000))
        mult.tell_nowait(price(TOKEN, 20_000))  # user 1: 20x; user 2: 5x
        await eventually(lambda: len(sink) == 4)
    assert [(o.chat_id, o.dedup_key.rsplit(":", 1)[1]) for o in sink if o.dedup_key] == [
        (1, "10"),
        (2, "2"),
        (1, "20"),
        (2, "5"),
    ]
    assert stored_level(sync_redis, TOKEN, 1) == 20 and stored_level(sync_redis, TOKEN, 2) == 5


async def test_redis_holds_one_value_per_token_with_its_symbol_and_a_ttl(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    sink: list[Outbound] = []
    handle = StoreHandle(redis_url, "")
    async with Tree(tree_spec(handle, sink, redis_url=redis_url)).running() as tree:
        mult = tree.lookup("multipliers")
        for user in range(1, 51):
            await mult.tell(Track(token_key=TOKEN, user_id=user, fdv_at_notify=1e6, symbol="PEPE"))
        await mult.ask(Track(token_key=OTHER, user_id=1, fdv_at_notify=5e5))
        await eventually(lambda: sync_redis.exists(KEY_PREFIX + OTHER) == 1)
        keys = sorted(sync_redis.scan_iter(match="*"))
        assert keys == sorted([f"{KEY_PREFIX}{TOKEN}".encode(), f"{KEY_PREFIX}{OTHER}".encode()])
        index, symbol = stored_index(sync_redis, TOKEN)
        assert len(index) == 50 and symbol == "PEPE"
        assert stored_index(sync_redis, OTHER)[1] == ""
        ttl = sync_redis.pttl(KEY_PREFIX + TOKEN) / 1000
        assert 7 * DAY - 60 < ttl <= 7 * DAY
        # Untracking everyone deletes the token's keys.
        for user in range(1, 51):
            assert await mult.ask(Untrack(TOKEN, user))
        await eventually(lambda: sync_redis.exists(KEY_PREFIX + TOKEN) == 0)


async def test_nothing_sent_twice_after_a_crash_and_rebuild(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    sink: list[Outbound] = []
    problems: list[str] = []
    handle = StoreHandle(redis_url, "")
    client = aioredis.Redis.from_url(redis_url)
    handle.publish_redis(client)
    spec = tree_spec(handle, sink, verify=persisted_before_sent(sync_redis), problems=problems)
    try:
        async with Tree(spec).running() as tree:
            mult = tree.lookup("multipliers")
            await mult.ask(Track(token_key=TOKEN, user_id=5, fdv_at_notify=100_000, symbol="PEPE"))
            mult.tell_nowait(price(TOKEN, 230_000))
            await eventually(lambda: thresholds_sent(sink) == ["2"])

            # Redis disappears from the handle; the next write crashes the actor, and every
            # restart fails its rebuild until Redis is back.
            handle.publish_redis(None)
            mult.tell_nowait(Track(token_key=OTHER, user_id=5, fdv_at_notify=1.0))
            await eventually(lambda: status_of(tree, "multipliers").restarts_total >= 2)
            assert "StoreUnavailable" in (status_of(tree, "multipliers").last_error or "")
            handle.publish_redis(client)
            await eventually(lambda: status_of(tree, "multipliers").state == "running")

            assert (TOKEN, "PEPE") in [
                (t.token_key, t.symbol) for t in await mult.ask(TrackedBy(5))
            ]
            mult.tell_nowait(price(TOKEN, 260_000))  # 2x again: already sent
            mult.tell_nowait(price(TOKEN, 1_100_000))  # 11x: one alert, 10x
            await eventually(lambda: "10" in thresholds_sent(sink))
            mult.tell_nowait(price(TOKEN, 1_000_000))
            mult.tell_nowait(price(TOKEN, 1_150_000))
            await mult.ask(TrackedBy(5))
    finally:
        await client.aclose()
    assert thresholds_sent(sink) == ["2", "10"]
    assert problems == []


async def test_nothing_sent_twice_after_the_whole_tree_restarts(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    sink: list[Outbound] = []
    handle = StoreHandle(redis_url, "")
    async with Tree(tree_spec(handle, sink, redis_url=redis_url)).running() as tree:
        mult = tree.lookup("multipliers")
        await mult.ask(Track(token_key=TOKEN, user_id=1, fdv_at_notify=10_000, symbol="PEPE"))
        await mult.ask(Track(token_key=TOKEN, user_id=2, fdv_at_notify=20_000, symbol="PEPE"))
        await mult.ask(Track(token_key=OTHER, user_id=1, fdv_at_notify=1_000, symbol="WOJAK"))
        mult.tell_nowait(price(TOKEN, 45_000))  # user 1: 2x (4.5x); user 2: 2x (2.25x)
        await eventually(lambda: len(sink) == 2)
    assert sorted(thresholds_sent(sink)) == ["2", "2"]

    # A new tree (new system, new actors) on the same Redis.
    handle = StoreHandle(redis_url, "")
    async with Tree(tree_spec(handle, sink, redis_url=redis_url)).running() as tree:
        mult = tree.lookup("multipliers")
        tracked = await mult.ask(TrackedBy(1))
        assert sorted(t[:4] for t in tracked) == sorted(
            [(TOKEN, "PEPE", 10_000, 2.0), (OTHER, "WOJAK", 1_000, None)]
        )
        assert all(t.notified_at > 0 for t in tracked)  # kept across the restart
        mult.tell_nowait(price(TOKEN, 49_000))  # nothing new for anyone
        mult.tell_nowait(price(TOKEN, 105_000))  # user 1: 10x; user 2: 5x
        await eventually(lambda: len(sink) == 4)
        await mult.ask(TrackedBy(1))
    assert thresholds_sent(sink, 1) == ["2", "10"]
    assert thresholds_sent(sink, 2) == ["2", "5"]


async def test_a_flood_of_prices_keeps_only_the_newest_per_token(redis_url: str) -> None:
    sink: list[Outbound] = []
    handle = StoreHandle(redis_url, "")
    tokens = [f"solana:FloodToken{i:02d}xxxxxxxxxxxxxxxxxxxxxxxxxx" for i in range(10)]
    async with Tree(tree_spec(handle, sink, redis_url=redis_url)).running() as tree:
        mult = tree.lookup("multipliers")
        for user, token in enumerate(tokens, 1):
            await mult.ask(Track(token_key=token, user_id=user, fdv_at_notify=1_000))
        before = status_of(tree, "multipliers").processed
        # 1,000 rising prices per token, interleaved, told without yielding: every middle
        # price crosses 2x, only the last reaches 5x. If any but the newest were handled,
        # a 2x alert would be sent.
        accepted = 0
        for step in range(1, 1_001):
            fdv = 1_000 + 4_000 * step / 1_000 + (500 if step == 1_000 else 0)
            for token in tokens:
                accepted += mult.tell_nowait(price(token, fdv))
        depth = status_of(tree, "multipliers").mailbox_depth
        assert accepted == 10_000
        assert depth == 10
        await eventually(lambda: len(sink) == 10)
        await mult.ask(TrackedBy(1))
        processed = status_of(tree, "multipliers").processed - before
    assert sorted(o.chat_id for o in sink) == list(range(1, 11))
    assert set(thresholds_sent(sink)) == {"5"}
    assert processed <= 12
    assert all("FDV $1.00K → $5.50K" in o.text for o in sink)


async def test_tracked_by_lists_a_users_tokens_newest_first(redis_url: str) -> None:
    sink: list[Outbound] = []
    start = time.time()
    clock = ManualClock(wall_start=start)
    handle = StoreHandle(redis_url, "")
    spec = tree_spec(handle, sink, redis_url=redis_url, ping_every=None)
    tree = Tree(spec, ActorSystem(clock))
    async with tree.running():
        mult = tree.lookup("multipliers")
        for i in range(5):
            token = f"base:0xToken{i}"
            assert await mult.ask(
                Track(token_key=token, user_id=9, fdv_at_notify=100, symbol=f"T{i}")
            )
            await mult.ask(Track(token_key=token, user_id=10, fdv_at_notify=100))
            await clock.advance(60)
        assert not await mult.ask(Track(token_key="base:0xToken0", user_id=9, fdv_at_notify=5))
        mult.tell_nowait(price("base:0xToken1", 250))
        await eventually(lambda: len(sink) == 2)
        assert await mult.ask(Untrack("base:0xToken3", 9))
        assert not await mult.ask(Untrack("base:0xToken3", 9))
        tracked = await mult.ask(TrackedBy(9))
        assert await mult.ask(TrackedBy(12345)) == []
    assert tracked == [
        TrackedToken("base:0xToken4", "T4", 100.0, None, start + 240),
        TrackedToken("base:0xToken2", "T2", 100.0, None, start + 120),
        TrackedToken("base:0xToken1", "T1", 100.0, 2.0, start + 60),
        TrackedToken("base:0xToken0", "T0", 100.0, None, start),
    ]


async def test_entries_older_than_seven_days_leave_the_index_and_redis(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    sink: list[Outbound] = []
    clock = ManualClock(wall_start=time.time())
    handle = StoreHandle(redis_url, "")
    spec = tree_spec(handle, sink, redis_url=redis_url, ping_every=None, expire_every_s=3_600)
    tree = Tree(spec, ActorSystem(clock))
    async with tree.running():
        mult = tree.lookup("multipliers")
        await mult.ask(Track(token_key=TOKEN, user_id=1, fdv_at_notify=100))
        await mult.ask(Track(token_key=OTHER, user_id=1, fdv_at_notify=100))
        await eventually(lambda: sync_redis.exists(KEY_PREFIX + OTHER) == 1)
        await clock.advance(3 * DAY)
        await mult.ask(Track(token_key=TOKEN, user_id=2, fdv_at_notify=100))
        await eventually(lambda: stored_users(sync_redis, TOKEN) == [1, 2])
        ttl_before = sync_redis.pttl(KEY_PREFIX + TOKEN)
        await clock.advance(4 * DAY + 2 * 3_600)  # user 1's entries are now 7 days + 2 h old
        await eventually(lambda: sync_redis.exists(KEY_PREFIX + OTHER) == 0)
        assert [t.token_key for t in await mult.ask(TrackedBy(1))] == []
        assert [t.token_key for t in await mult.ask(TrackedBy(2))] == [TOKEN]
        mult.tell_nowait(price(TOKEN, 1_000))
        await eventually(lambda: len(sink) == 1)
    assert sink[0].chat_id == 2
    assert stored_users(sync_redis, TOKEN) == [2]
    # The key's TTL follows the token's newest entry: 7 days from the second track.
    assert ttl_before / 1000 == pytest.approx(7 * DAY, abs=120)


async def test_rebuild_logs_progress_and_total_time(redis_url: str) -> None:
    sink: list[Outbound] = []
    handle = StoreHandle(redis_url, "")
    async with Tree(tree_spec(handle, sink, redis_url=redis_url)).running() as tree:
        mult = tree.lookup("multipliers")
        for t in range(30):
            for user in range(1, 11):
                await mult.tell(
                    Track(token_key=f"solana:Tok{t:03d}", user_id=user, fdv_at_notify=1e5)
                )
        assert len(await mult.ask(TrackedBy(3))) == 30
    with capture_logs() as logs:
        spec = tree_spec(
            StoreHandle(redis_url, ""),
            sink,
            redis_url=redis_url,
            scan_count=5,
            progress_every=100,
        )
        async with Tree(spec).running() as tree:
            assert len(await tree.lookup("multipliers").ask(TrackedBy(3))) == 30
    progress = [e for e in logs if e["event"] == "multipliers.rebuild_progress"]
    done = [e for e in logs if e["event"] == "multipliers.rebuilt"]
    assert len(progress) >= 2 and all(e["entries"] >= 100 for e in progress)
    assert len(done) == 1 and done[0]["entries"] == 300 and done[0]["tokens"] == 30
    assert "seconds" in done[0]


async def test_bad_input_is_refused_and_the_actor_keeps_running(redis_url: str) -> None:
    sink: list[Outbound] = []
    handle = StoreHandle(redis_url, "")
    async with Tree(tree_spec(handle, sink, redis_url=redis_url)).running() as tree:
        mult = tree.lookup("multipliers")
        for bad in (
            Track(token_key="nochain", user_id=1, fdv_at_notify=1.0),
            Track(token_key="solana:has space", user_id=1, fdv_at_notify=1.0),
            Track(token_key="solana:\ud800", user_id=1, fdv_at_notify=1.0),
            Track(token_key=TOKEN, user_id=1, fdv_at_notify=float("nan")),
            Track(token_key=TOKEN, user_id=1, fdv_at_notify=-5.0),
            Track(token_key=TOKEN, user_id=2**70, fdv_at_notify=1.0),
        ):
            assert await mult.ask(bad) is False
        assert await mult.ask("what is this") is None
        assert await mult.ask(TrackedBy("1")) == []
        assert await mult.ask(TrackedBy(2**70)) == []
        assert await mult.ask(Untrack(["not", "a", "key"], 1)) is False
        assert await mult.ask(Untrack(TOKEN, 2**70)) is False
        assert await mult.ask(Track(token_key=TOKEN, user_id=1, fdv_at_notify=10, symbol="<b>"))
        mult.tell_nowait(price(TOKEN, 0.0))
        mult.tell_nowait(price(TOKEN, 25))
        await eventually(lambda: len(sink) == 1)
        assert status_of(tree, "multipliers").restarts_total == 0
    assert "<b>&lt;b&gt;</b> hit" in sink[0].text


@pytest.mark.faults
async def test_redis_killed_the_actor_is_restarted_and_resumes(
    dedicated_redis: EmbeddedRedis,
) -> None:
    sink: list[Outbound] = []
    problems: list[str] = []
    url = dedicated_redis.url
    sync_client = redis.Redis.from_url(url, socket_timeout=2)
    handle = StoreHandle(url, "")
    spec = tree_spec(
        handle, sink, redis_url=url, verify=persisted_before_sent(sync_client), problems=problems
    )
    try:
        async with Tree(spec).running() as tree:
            mult = tree.lookup("multipliers")
            await mult.ask(Track(token_key=TOKEN, user_id=3, fdv_at_notify=1_000, symbol="PEPE"))
            mult.tell_nowait(price(TOKEN, 2_100))
            await eventually(lambda: thresholds_sent(sink) == ["2"])

            dedicated_redis.kill()
            mult.tell_nowait(Track(token_key=OTHER, user_id=4, fdv_at_notify=1_000))
            await eventually(lambda: status_of(tree, "multipliers").restarts_total >= 1)
            await anyio.to_thread.run_sync(dedicated_redis.start)
            await eventually(
                lambda: status_of(tree, "multipliers").state == "running" and handle.redis_up,
                timeout=10,
            )
            mult.tell_nowait(price(TOKEN, 2_500))  # 2x was persisted before it was sent
            mult.tell_nowait(price(TOKEN, 5_200))
            await eventually(lambda: "5" in thresholds_sent(sink), timeout=10)
            await mult.ask(TrackedBy(3))
            restarts = status_of(tree, "multipliers").restarts_total
    finally:
        sync_client.close()
    assert thresholds_sent(sink, 3) == ["2", "5"]
    assert problems == []
    assert restarts >= 1
    structlog.get_logger(__name__).info("multipliers.redis_fault", restarts=restarts)
