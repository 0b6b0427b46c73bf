"""The ingest actor with the real python-socketio client against the sandbox feed and a
real Redis: cuts and restarts, exactly-once delivery, resume across a whole-tree restart,
malformed input, overflow replay, Redis down."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
import redis
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from actors.ingest import LOG_FIRST, RESUME_KEY
from actors.store.handle import StoreHandle
from messages.wire import REJECT_REASONS, TokenEvent, WireEvent
from runtime import ActorSystem
from sandbox.feed import MALFORMED_KINDS, FeedServer
from supervisors import Tree, terminate_child
from tests.helpers import eventually
from tests.ingest.support import (
    Gate,
    Producer,
    check_exactly_once,
    complete,
    ingest_tree,
    node,
    report,
    until,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def feed() -> AsyncIterator[FeedServer]:
    server = FeedServer(rate=0, autostart=False, seed=11, price_ratio=2.0, history=200_000)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def stored_point(client: redis.Redis) -> int | None:
    raw = client.get(RESUME_KEY)
    return None if raw is None else int(raw)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_three_cuts_every_seq_exactly_once(
    feed: FeedServer, redis_url: str, sync_redis: redis.Redis
) -> None:
    """A live stream is cut three times. Cut 1: abrupt while events flow. Cut 2: graceful
    while ingest is held up behind a slow target with events queued in its mailbox (they
    must be skipped and replayed, not handled twice). Cut 3: abrupt while flowing. Each
    cut is one supervisor restart; every seq reaches the targets exactly once."""
    handle = StoreHandle(redis_url, "")
    tokens: list[WireEvent] = []
    prices: list[WireEvent] = []
    gate = Gate()
    producer = Producer(feed, batch=5)
    spec = ingest_tree(handle, feed.url, tokens, prices, token_gate=gate)

    def handled() -> int:
        return len(tokens) + len(prices)

    async def restarted(times: int) -> None:
        await eventually(lambda: node(tree, "ingest").restarts_total == times, timeout=20)
        await eventually(lambda: feed.clients == 1, timeout=10)

    with capture_logs() as logs:
        async with Tree(spec, ActorSystem()).running() as tree, anyio.create_task_group() as tg:
            await eventually(lambda: feed.clients == 1, timeout=10)
            tg.start_soon(producer.run)

            await eventually(lambda: handled() >= 300, timeout=20)
            await feed.disconnect_all(abrupt=True)
            await restarted(1)

            gate.close()
            await eventually(lambda: node(tree, "ingest").mailbox_depth >= 100, timeout=20)
            await feed.disconnect_all(abrupt=False)
            await eventually(
                lambda: sum(e["event"] == "ingest.disconnected" for e in logs) == 2, timeout=20
            )
            gate.open()
            await restarted(2)
            third = await report(tree)  # answered after the earlier connection's leftovers
            assert third.incarnation == 3
            assert third.stale > 0

            mark = handled()
            await eventually(lambda: handled() >= mark + 300, timeout=20)
            await feed.disconnect_all(abrupt=True)
            await restarted(3)

            mark = handled()
            await eventually(lambda: handled() >= mark + 300, timeout=20)
            producer.stop()
            events = producer.events
            await until(lambda: complete(events, tokens, prices), timeout=90)
            superseded = check_exactly_once(events, tokens, prices)
            assert handled() + superseded == len(events) == feed.last_seq

            final = await report(tree)
            assert final.connected
            assert final.reconnects == 3
            assert node(tree, "ingest").restarts_total == 3
            assert final.last_seq == feed.last_seq
            assert final.lost == 0
            await eventually(lambda: stored_point(sync_redis) == feed.last_seq, timeout=5)


async def test_whole_tree_restart_resumes_from_redis(
    feed: FeedServer, redis_url: str, sync_redis: redis.Redis
) -> None:
    """The tree stops (feed first, mid-stream) while the stream goes on; a new tree on the
    same Redis resumes from the stored seq: nothing twice, nothing missing."""
    tokens: list[WireEvent] = []
    prices: list[WireEvent] = []
    tokens2: list[WireEvent] = []
    prices2: list[WireEvent] = []
    producer = Producer(feed, batch=5)
    async with anyio.create_task_group() as tg:
        spec = ingest_tree(StoreHandle(redis_url, ""), feed.url, tokens, prices)
        async with Tree(spec, ActorSystem()).running() as tree:
            await eventually(lambda: feed.clients == 1, timeout=10)
            tg.start_soon(producer.run)
            await eventually(lambda: len(tokens) + len(prices) >= 300, timeout=20)
            await terminate_child(tree.root, "ingest")
            await eventually(
                lambda: (
                    node(tree, "tokens").mailbox_depth == node(tree, "prices").mailbox_depth == 0
                )
            )
        stored = stored_point(sync_redis)
        assert stored is not None
        point: int = stored
        assert 0 < point <= feed.last_seq
        seen_before = feed.last_seq
        await eventually(lambda: feed.last_seq >= seen_before + 200, timeout=10)

        spec = ingest_tree(StoreHandle(redis_url, ""), feed.url, tokens2, prices2)
        async with Tree(spec, ActorSystem()).running() as tree:
            await eventually(lambda: len(tokens2) + len(prices2) >= 500, timeout=20)
            producer.stop()
            events = producer.events
            await until(lambda: complete(events, tokens + tokens2, prices + prices2), timeout=90)
            again = await report(tree)
            assert again.incarnation == 1
    assert min(e.seq for e in tokens2 + prices2) > point
    check_exactly_once(events, tokens + tokens2, prices + prices2)
    await eventually(lambda: stored_point(sync_redis) == feed.last_seq, timeout=5)


async def test_malformed_events_are_counted_and_the_actor_keeps_running(
    feed: FeedServer, redis_url: str
) -> None:
    kinds = len(MALFORMED_KINDS)
    expected = Counter(reason for _, _, reason in MALFORMED_KINDS.values())
    before: dict[str, float] = {
        r: metric("callwatch_ingest_rejected_total", reason=r) for r in REJECT_REASONS
    }
    tokens: list[WireEvent] = []
    prices: list[WireEvent] = []
    events: list[WireEvent] = []
    handle = StoreHandle(redis_url, "")
    spec = ingest_tree(handle, feed.url, tokens, prices)
    with capture_logs() as logs:
        async with Tree(spec, ActorSystem()).running() as tree:
            await eventually(lambda: feed.clients == 1, timeout=10)
            events += await feed.step(100)
            await feed.send_malformed(kinds * 2)
            events += await feed.step(100)
            await feed.send_malformed(kinds * 3)
            events += await feed.step(100)
            await until(lambda: complete(events, tokens, prices), timeout=30)

            want = {reason: n * 5 for reason, n in expected.items()}
            with anyio.fail_after(10):
                while (await report(tree)).rejected != want:
                    await anyio.sleep(0.01)
            assert node(tree, "ingest").restarts_total == 0
            assert (await report(tree)).connected
            check_exactly_once(events, tokens, prices)
    for reason, n in want.items():
        after = metric("callwatch_ingest_rejected_total", reason=reason)
        assert after - before[reason] == n
    rejected_logs = [e for e in logs if e["event"] == "ingest.rejected"]
    per_reason = Counter(e["reason"] for e in rejected_logs)
    assert per_reason == {reason: min(n, LOG_FIRST) for reason, n in want.items()}
    assert all(e["sample"] and e["detail"] for e in rejected_logs)


async def test_overflow_never_drops_a_token_event(redis_url: str) -> None:
    """A mailbox of 16 behind a stalled target: the refused event is not lost; the actor
    stops reading, restarts once the target moves, and the feed replays it."""
    token_feed = FeedServer(rate=0, autostart=False, seed=3, price_ratio=0.0)
    await token_feed.start()
    try:
        tokens: list[WireEvent] = []
        prices: list[WireEvent] = []
        gate = Gate()
        gate.close()
        handle = StoreHandle(redis_url, "")
        spec = ingest_tree(
            handle, token_feed.url, tokens, prices, capacity=16, token_gate=gate, token_capacity=1
        )
        overflowed = metric("callwatch_ingest_overflowed_total", kind="token_event")
        async with Tree(spec, ActorSystem()).running() as tree:
            await eventually(lambda: token_feed.clients == 1, timeout=10)
            events = await token_feed.step(200)
            assert all(isinstance(e, TokenEvent) for e in events)
            await eventually(
                lambda: (
                    metric("callwatch_ingest_overflowed_total", kind="token_event") > overflowed
                ),
                timeout=10,
            )
            assert node(tree, "ingest").mailbox_depth <= 16
            assert tree.system.dead_letters.by_reason["mailbox_full"] >= 1
            gate.open()
            await until(lambda: complete(events, tokens, prices), timeout=30)
            check_exactly_once(events, tokens, prices)
            assert node(tree, "ingest").restarts_total >= 1
    finally:
        await token_feed.stop()


async def test_redis_down_joins_live_and_keeps_the_feed_flowing(feed: FeedServer) -> None:
    """No Redis client published: the resume point cannot be read or written; the actor
    logs it, joins the feed live and forwards everything without crashing."""
    tokens: list[WireEvent] = []
    prices: list[WireEvent] = []
    handle = StoreHandle("redis://127.0.0.1:1/0", "")
    spec = ingest_tree(handle, feed.url, tokens, prices, with_redis=False)
    with capture_logs() as logs:
        async with Tree(spec, ActorSystem()).running() as tree:
            await eventually(lambda: feed.clients == 1, timeout=10)
            events = await feed.step(500)
            await until(lambda: complete(events, tokens, prices), timeout=30)
            check_exactly_once(events, tokens, prices)
            status = await report(tree)
            assert status.store_errors >= 1
            assert status.saved_seq is None
            assert node(tree, "ingest").restarts_total == 0
    names = {e["event"] for e in logs}
    assert "ingest.resume_point_unavailable" in names
    assert "ingest.store_error" in names


async def test_missing_target_is_counted_not_a_crash(feed: FeedServer, redis_url: str) -> None:
    tokens: list[WireEvent] = []
    prices: list[WireEvent] = []
    handle = StoreHandle(redis_url, "")
    spec = ingest_tree(handle, feed.url, tokens, prices, token_targets=("tokens", "nobody-home"))
    async with Tree(spec, ActorSystem()).running() as tree:
        await eventually(lambda: feed.clients == 1, timeout=10)
        events = await feed.step(200)
        await until(lambda: complete(events, tokens, prices), timeout=30)
        status = await report(tree)
        token_count = sum(1 for e in events if isinstance(e, TokenEvent))
        assert status.missing_targets == {"nobody-home": token_count}
        assert node(tree, "ingest").restarts_total == 0


async def test_price_handled_ahead_of_queued_events_is_not_repeated_after_a_cut(
    feed: FeedServer, redis_url: str, sync_redis: redis.Redis
) -> None:
    """Coalescing puts a newer price in an older slot, so it can be handled while older
    token events still wait. If the connection ends then, the resume point stays below
    those token events, and the replay must skip the price that was already handled."""
    tokens: list[WireEvent] = []
    prices: list[WireEvent] = []
    gate = Gate()
    gate.close()
    spec = ingest_tree(
        StoreHandle(redis_url, ""), feed.url, tokens, prices, token_gate=gate, token_capacity=1
    )

    def depth() -> int:
        return node(tree, "ingest").mailbox_depth

    prices_before = metric("callwatch_ingest_events_total", kind="price_update")

    def metric_delta() -> float:
        return metric("callwatch_ingest_events_total", kind="price_update") - prices_before

    async def token(address: str) -> TokenEvent:
        return await feed.publish_token_event(
            chain="solana", token_address=address, symbol="TKN", fdv=2e6
        )

    with capture_logs() as logs:
        async with Tree(spec, ActorSystem()).running() as tree:
            await eventually(lambda: feed.clients == 1, timeout=10)
            for i in range(3):  # H1 held by the target, H2 in its mailbox, H3 waiting
                await token(f"HoLdToken{i}")
            await eventually(lambda: node(tree, "tokens").mailbox_depth == 1, timeout=10)
            p4 = await feed.publish_price("solana", "PriceToken1", 1e6)
            x5 = await token("QueuedToken5")
            t6 = await token("QueuedToken6")
            p7 = await feed.publish_price("solana", "PriceToken1", 3e6)
            assert (p4.seq, x5.seq, t6.seq, p7.seq) == (4, 5, 6, 7)
            await eventually(lambda: depth() == 3, timeout=10)  # [price slot=7, 5, 6]
            await eventually(lambda: metric_delta() >= 2, timeout=10)

            gate.allow(1)  # H1 recorded; H3 handed over; price 7 handled; waits on token 5
            await eventually(lambda: len(prices) == 1 and depth() == 1, timeout=10)
            await feed.disconnect_all(abrupt=True)
            await eventually(lambda: any(e["event"] == "ingest.disconnected" for e in logs))
            gate.open()
            await eventually(lambda: node(tree, "ingest").restarts_total == 1, timeout=10)
            await eventually(lambda: feed.clients == 1, timeout=10)
            p8 = await feed.publish_price("solana", "PriceToken1", 4e6)
            await eventually(lambda: len(prices) == 2 and len(tokens) == 5, timeout=10)
            again = await report(tree)

    stopped = [e for e in logs if e["event"] == "ingest.stopped"]
    assert stopped[0]["saved_seq"] == 5
    assert stopped[0]["saved_ahead"] == 1
    assert [e.seq for e in prices] == [p7.seq, p8.seq]
    assert [e.seq for e in tokens] == [1, 2, 3, x5.seq, t6.seq]
    assert again.duplicates == 1  # seq 7 from the replay, skipped
    assert again.last_seq == p8.seq


async def test_resume_older_than_the_feed_history_counts_what_was_lost(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    small = FeedServer(rate=0, autostart=False, seed=2, history=50)
    await small.start()
    try:
        await small.step(200)  # seqs 1..150 have left the feed's history
        sync_redis.set(RESUME_KEY, 10)
        tokens: list[WireEvent] = []
        prices: list[WireEvent] = []
        spec = ingest_tree(StoreHandle(redis_url, ""), small.url, tokens, prices)
        with capture_logs() as logs:
            async with Tree(spec, ActorSystem()).running() as tree:
                await eventually(lambda: stored_point(sync_redis) == 200, timeout=20)
                status = await report(tree)
                assert node(tree, "ingest").restarts_total == 0
        assert status.lost == 140
        assert min(e.seq for e in tokens + prices) == 151
        gaps = [e for e in logs if e["event"] == "ingest.resume_gap"]
        assert [(g["since_seq"], g["first_seq"], g["lost"]) for g in gaps] == [(10, 151, 140)]
    finally:
        await small.stop()
