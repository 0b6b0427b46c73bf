"""A flood of 100,000 price updates for 100 tokens through the real socket.io client while
the ingest actor is held up behind a slow target: the mailbox stays bounded (one queued
price per token) and, once it moves, the newest price of every token is what arrives."""

from __future__ import annotations

import anyio
import pytest
from prometheus_client import REGISTRY

from actors.store.handle import StoreHandle
from messages.wire import PriceUpdate, WireEvent
from runtime import ActorSystem
from sandbox.feed import FeedServer
from supervisors import Tree
from tests.helpers import eventually
from tests.ingest.support import Gate, ingest_tree, node, report, until

pytestmark = pytest.mark.anyio

FLOOD = 100_000
TOKENS = 100
CAPACITY = 1_000
BURST = 5_000
"""The flood is sent in bursts the client has taken in before the next: loopback socket
buffers hold tens of thousands of events, and on a slow machine the engine.io heartbeat
queued behind them would arrive after its timeout and cut the connection."""


def received_prices() -> float:
    return REGISTRY.get_sample_value("callwatch_ingest_events_total", {"kind": "price_update"}) or 0


@pytest.mark.timeout(900)
async def test_flood_keeps_newest_price_per_token_and_mailbox_bounded(redis_url: str) -> None:
    feed = FeedServer(rate=0, autostart=False, seed=5, history=2 * FLOOD)
    await feed.start()
    tokens: list[WireEvent] = []
    prices: list[WireEvent] = []
    gate = Gate()
    gate.close()
    spec = ingest_tree(
        StoreHandle(redis_url, ""),
        feed.url,
        tokens,
        prices,
        capacity=CAPACITY,
        token_gate=gate,
        token_capacity=1,
    )
    depth_max = 0
    try:
        async with Tree(spec, ActorSystem()).running() as tree, anyio.create_task_group() as tg:
            await eventually(lambda: feed.clients == 1, timeout=10)
            # Three token events: the first holds the gated target, the second fills its
            # one-slot mailbox, the third keeps the ingest actor waiting to hand it over.
            for i in range(3):
                await feed.publish_token_event(
                    chain="solana", token_address=f"HoLdToken{i}", symbol="HOLD", fdv=1e6
                )
            await until(lambda: node(tree, "tokens").mailbox_depth == 1, timeout=20)

            async def sample() -> None:
                nonlocal depth_max
                while True:
                    depth_max = max(depth_max, node(tree, "ingest").mailbox_depth)
                    await anyio.sleep(0.005)

            tg.start_soon(sample)
            start = received_prices()
            newest: dict[str, PriceUpdate] = {}
            for sent in range(BURST, FLOOD + 1, BURST):
                newest.update(await feed.flood_prices(BURST, TOKENS))
                await until(lambda: received_prices() - start >= sent, timeout=120, interval=0.1)  # noqa: B023
            assert len(newest) == TOKENS
            assert prices == []  # nothing got through while held up
            assert 0 < depth_max <= TOKENS <= CAPACITY
            assert node(tree, "ingest").mailbox_depth == TOKENS

            gate.open()

            def last_fdv() -> dict[str, float]:
                out: dict[str, float] = {}
                for event in prices:
                    assert isinstance(event, PriceUpdate)
                    out[event.token_key] = event.fdv
                return out

            await until(lambda: len(prices) >= TOKENS, timeout=30)
            tg.cancel_scope.cancel()
            assert last_fdv() == {key: update.fdv for key, update in newest.items()}
            assert sorted(e.seq for e in prices) == sorted(u.seq for u in newest.values())
            assert len(tokens) == 3
            status = await report(tree)
            assert status.coalesced == FLOOD - TOKENS
            assert status.events["price_update"] == FLOOD
            assert status.forwarded["price_update"] == TOKENS
            assert status.queued_max <= TOKENS + 1
            assert status.overflowed == 0
            assert node(tree, "ingest").restarts_total == 0
            assert node(tree, "ingest").mailbox_depth <= CAPACITY
    finally:
        await feed.stop()
