"""The multiplier actor's logic on asyncio and trio, over an in-memory store.

redis.asyncio runs on asyncio only, so these runs put the index, the actor's write-then-
alert ordering, coalescing and the rebuild on both backends with a dict for a store; the
same behaviours against a real Redis are in test_multipliers_redis.py.
"""

from __future__ import annotations

import anyio
import pytest

from actors.multiplier_index import MultiplierIndex
from actors.multipliers import Multipliers
from messages.delivery import Outbound
from messages.tracking import Track, TrackedBy, TrackMany
from supervisors import Tree
from tests.conftest import BOTH_BACKENDS
from tests.helpers import eventually
from tests.multipliers.support import MemoryStore, price, status_of, tree_spec

pytestmark = [pytest.mark.anyio, BOTH_BACKENDS]

TOKEN = "solana:So1aPepeTokenMint1111111111111111111111"


def sent(sink: list[Outbound]) -> list[tuple[int, str]]:
    return [(o.chat_id, o.dedup_key.rsplit(":", 1)[1]) for o in sink if o.dedup_key]


async def test_index_alerts_2x_then_5x_and_a_jump_to_12x_names_10x() -> None:
    index = MultiplierIndex()
    index.track(TOKEN, 1, 100.0, 0.0)
    index.track(TOKEN, 2, 100.0, 0.0)
    got = []
    for fdv in (150.0, 200.0, 300.0, 510.0):
        got += [(a.user_id, a.threshold) for a in index.on_price(TOKEN, fdv)]
        await anyio.lowlevel.checkpoint()
    assert got == [(1, 2.0), (2, 2.0), (1, 5.0), (2, 5.0)]
    fresh = MultiplierIndex()
    fresh.track(TOKEN, 3, 1_000.0, 0.0)
    assert [(a.user_id, a.threshold) for a in fresh.on_price(TOKEN, 12_000.0)] == [(3, 10.0)]


async def test_actor_alerts_2x_then_5x_and_a_jump_names_the_highest() -> None:
    store, sink = MemoryStore(), []
    async with Tree(tree_spec(store, sink)).running() as tree:
        mult = tree.lookup("multipliers")
        both = TrackMany(
            (
                Track(token_key=TOKEN, user_id=1, fdv_at_notify=100),
                Track(token_key=TOKEN, user_id=2, fdv_at_notify=10),
            )
        )
        assert await mult.ask(both) == 2  # the notify gate's batches
        mult.tell_nowait(price(TOKEN, 200))  # user 1: 2x; user 2: 20x
        await eventually(lambda: len(sink) == 2)
        mult.tell_nowait(price(TOKEN, 500))  # user 1: 5x; user 2: 50x
        await eventually(lambda: len(sink) == 4)
    assert sent(sink) == [(1, "2"), (2, "20"), (1, "5"), (2, "50")]


async def test_an_alert_waits_for_its_write() -> None:
    store, sink = MemoryStore(), []
    async with Tree(tree_spec(store, sink)).running() as tree:
        mult = tree.lookup("multipliers")
        await mult.ask(Track(token_key=TOKEN, user_id=1, fdv_at_notify=100))
        await eventually(lambda: TOKEN in store.data)
        store.gate = anyio.Event()
        mult.tell_nowait(price(TOKEN, 250))
        await mult.ask(TrackedBy(1))
        for _ in range(50):
            await anyio.lowlevel.checkpoint()
        assert sink == []
        store.gate.set()
        await eventually(lambda: len(sink) == 1)
        index = MultiplierIndex()
        index.load_token(TOKEN, store.data[TOKEN][0])
        assert index.entries_for(TOKEN)[0].highest_index == 0


async def test_a_failed_write_crashes_sends_nothing_and_the_rebuild_sends_once() -> None:
    store, sink = MemoryStore(), []
    async with Tree(tree_spec(store, sink)).running() as tree:
        mult = tree.lookup("multipliers")
        await mult.ask(Track(token_key=TOKEN, user_id=1, fdv_at_notify=100, symbol="PEPE"))
        await eventually(lambda: TOKEN in store.data)
        store.fail_writes = 1
        mult.tell_nowait(price(TOKEN, 250))
        await eventually(lambda: status_of(tree, "multipliers").restarts_total == 1)
        await eventually(lambda: status_of(tree, "multipliers").state == "running")
        assert "store went away" in (status_of(tree, "multipliers").last_error or "")
        await mult.ask(TrackedBy(1))
        assert sink == []
        mult.tell_nowait(price(TOKEN, 260))  # the rebuilt index never recorded 2x
        await eventually(lambda: len(sink) == 1)
        mult.tell_nowait(price(TOKEN, 270))
        await mult.ask(TrackedBy(1))
    assert sent(sink) == [(1, "2")]
    assert "PEPE" in sink[0].text


async def test_a_flood_coalesces_to_the_newest_price_per_token() -> None:
    store, sink = MemoryStore(), []
    tokens = [f"base:0xFlood{i}" for i in range(10)]
    async with Tree(tree_spec(store, sink)).running() as tree:
        mult = tree.lookup("multipliers")
        for user, token in enumerate(tokens, 1):
            await mult.ask(Track(token_key=token, user_id=user, fdv_at_notify=1_000))
        before = status_of(tree, "multipliers").processed
        accepted = 0
        for step in range(1, 1_001):  # from step 250 on they cross 2x; the last one is 5.5x
            fdv = 1_000 + 4 * step + (500 if step == 1_000 else 0)
            for token in tokens:
                accepted += mult.tell_nowait(price(token, fdv))
        assert accepted == 10_000 and status_of(tree, "multipliers").mailbox_depth == 10
        await eventually(lambda: len(sink) == 10)
        assert status_of(tree, "multipliers").processed - before == 10
    assert {t for _, t in sent(sink)} == {"5"}


async def test_restart_of_the_whole_tree_rebuilds_and_sends_nothing_twice() -> None:
    store, sink = MemoryStore(), []
    async with Tree(tree_spec(store, sink)).running() as tree:
        mult = tree.lookup("multipliers")
        await mult.ask(Track(token_key=TOKEN, user_id=1, fdv_at_notify=100, symbol="PEPE"))
        mult.tell_nowait(price(TOKEN, 210))
        await eventually(lambda: len(sink) == 1)
    async with Tree(tree_spec(store, sink)).running() as tree:
        mult = tree.lookup("multipliers")
        assert [t.highest_threshold for t in await mult.ask(TrackedBy(1))] == [2.0]
        mult.tell_nowait(price(TOKEN, 230))
        mult.tell_nowait(price(TOKEN, 1_200))
        await eventually(lambda: len(sink) == 2)
    assert sent(sink) == [(1, "2"), (1, "10")]


async def test_thresholds_are_configurable() -> None:
    store, sink = MemoryStore(), []
    spec = tree_spec(store, sink, thresholds=(1.5, 3.0))
    async with Tree(spec).running() as tree:
        mult = tree.lookup("multipliers")
        await mult.ask(Track(token_key=TOKEN, user_id=1, fdv_at_notify=100))
        mult.tell_nowait(price(TOKEN, 160))
        await eventually(lambda: len(sink) == 1)
        mult.tell_nowait(price(TOKEN, 10_000))
        await eventually(lambda: len(sink) == 2)
        mult.tell_nowait(price(TOKEN, 1e9))
        await mult.ask(TrackedBy(1))
    assert sent(sink) == [(1, "1.5"), (1, "3")]
    with pytest.raises(ValueError):
        Multipliers(store, thresholds=(5, 2))
